"""Shared fixtures: one real S3 server (moto over HTTP on loopback) per session, reset per test,
seeded through a separate boto3 client, as s3fs's tests do."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from cog_pipeline import SAMPLES_DIR
from cog_pipeline.storage.local_s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, local_s3_server, reset
from cog_pipeline.storage.s3 import S3Settings

# Never let any code path reach a real cloud during tests.
for _var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_var, None)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull

INPUT_BUCKET = "test-input"
OUTPUT_BUCKET = "test-output"


@pytest.fixture(scope="session")
def s3_endpoint():
    with local_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_server(s3_endpoint):
    """The endpoint of a freshly reset server."""
    reset(s3_endpoint)
    return s3_endpoint


@pytest.fixture
def seed(s3_server):
    """A separate boto3 client for seeding and inspecting buckets (not the code under test)."""
    return boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="seed",
        aws_secret_access_key="seed",
        config=Config(s3={"addressing_style": "path"}),
    )


def write_key_files(
    folder: Path, access_key: str, secret_key: str, names: tuple[str, str] = ("access", "secret"), mode: int = 0o600
) -> tuple[Path, Path]:
    """Create ``folder`` with two one-line key files (access, secret) of permissions ``mode``."""
    folder.mkdir()
    paths = (folder / names[0], folder / names[1])
    for path, value in zip(paths, (access_key, secret_key), strict=True):
        path.write_text(value + "\n")
        path.chmod(mode)
    return paths


@pytest.fixture
def key_files(tmp_path):
    """Key files for the local S3 server."""
    return write_key_files(tmp_path / "keys", LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY)


@pytest.fixture
def settings(s3_server, key_files):
    return S3Settings(endpoint_url=s3_server, access_key_file=str(key_files[0]), secret_key_file=str(key_files[1]))


@pytest.fixture
def buckets(seed):
    seed.create_bucket(Bucket=INPUT_BUCKET)
    seed.create_bucket(Bucket=OUTPUT_BUCKET)
    return INPUT_BUCKET, OUTPUT_BUCKET


@pytest.fixture
def samples() -> Path:
    return SAMPLES_DIR


def s3_cli_flags(
    settings: S3Settings, input_bucket: str = INPUT_BUCKET, output_bucket: str | None = OUTPUT_BUCKET
) -> list[str]:
    """The command line's S3 options for ``settings`` (key files, endpoint) and the buckets (no output bucket
    with None), as an operator types them after ``cog-pipeline tick`` / ``status`` / ``retry``."""
    flags = ["-a", str(settings.access_key_file), "-s", str(settings.secret_key_file), "-e", str(settings.endpoint_url)]
    flags += ["--input-bucket", input_bucket]
    return flags + (["--output-bucket", output_bucket] if output_bucket else [])


def one_manifest_config(s3_section: dict, timestamp: str = "20261125-000000", **extra) -> dict:
    """The run config of an in-process batch on one claimed manifest, ``manifests/m.csv`` (id m1), with the
    given S3 settings (endpoint, key files) and the test buckets."""
    return {
        "batch_size": 20,
        "cog": {},
        "jpeg": {},
        "s3": {**s3_section, "input_bucket": INPUT_BUCKET, "output_bucket": OUTPUT_BUCKET},
        "manifests": [
            {
                "id": "m1",
                "csv": "manifests/m.csv",
                "key": f"m-processing-{timestamp}.csv",
                "raw_key": "m-raw.csv",
                "stem": "m-",
                "timestamp": timestamp,
            }
        ],
        **extra,
    }


def all_objects(client, bucket: str) -> dict[str, bytes]:
    """Every object of a bucket with its bytes (small test buckets only)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


# ---------------------------------------------------------------------------------------- pytest-xdist


def xdist_group(nodeid: str) -> str | None:
    """The worker group of a test whose session or module fixture is too costly to build on every worker: the
    HTCondor pool (tests/pool), a Ceph RGW cluster (one per RGW target of ``s3_target``: two clusters, so the
    RGW tests take two workers, not one nor all) and the built wheel (tests/test_packaging.py); and the secrets
    tests, which must not run beside each other (one starts processes holding the sentinel on purpose)."""
    path, _, name = nodeid.partition("::")
    if path.startswith("tests/pool/"):
        return "pool"
    if path == "tests/faults/test_servers.py" and "[" in name:
        params = name[name.index("[") + 1 :]
        for target in ("rgw-https-versioned", "rgw-https"):
            if target in params:
                return target
    if path == "tests/test_packaging.py":
        return "packaging"
    if path == "tests/faults/test_faults_secrets.py":
        return "secrets"  # its /proc sampler would take the leak-detector test's own sentinel process for a leak
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the grouped tests (``xdist_group``, for the record: the scheduler below reads the node ids); on an
    xdist worker also put the slow tests first (every worker collects the same order), so that the run ends on
    short tests instead of waiting for one long one."""
    for item in items:
        group = xdist_group(item.nodeid)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


if importlib.util.find_spec("xdist") is not None:
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """``--dist loadgroup`` by :func:`xdist_group`: each group is one unit of work on one worker (the largest
        first), every other test a unit of its own. pytest-xdist's own loadgroup renames the items
        (``item._nodeid``), which pytest 9.2 no longer reads: it would silently spread the groups."""

        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):  # pytest-xdist's own suffix, where it takes
                nodeid = nodeid.rsplit("@", 1)[0]
            return xdist_group(nodeid) or nodeid

    @pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown under -p no:xdist
    def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
        """The scheduler of ``--dist loadgroup`` (``make test``); pytest-xdist's own for the other modes."""
        return GroupScheduling(config, log) if config.getvalue("dist") == "loadgroup" else None


# ---------------------------------------------------------------------------------------- real S3 servers

#: Set in CI (.ci/run): a server that cannot start there fails the suite instead of skipping.
REQUIRE_REAL_S3 = os.environ.get("COG_PIPELINE_REQUIRE_REAL_S3") == "1"


@pytest.fixture(scope="session")
def rgw(tmp_path_factory):
    """A real Ceph RADOS Gateway (HTTP and HTTPS on loopback) for the whole session; skipped loudly where
    Ceph is not installed, and a failure where CI requires it."""
    from servers import rgw as rgw_server

    reason = rgw_server.available()
    if reason:
        message = (
            f"REAL S3 SERVER NOT AVAILABLE: Ceph RGW: {reason}. Install it with: apt-get install -y "
            "radosgw ceph-mon ceph-osd ceph-common openssl (as .ci/run does)"
        )
        if REQUIRE_REAL_S3:
            pytest.fail(message + " (COG_PIPELINE_REQUIRE_REAL_S3=1)", pytrace=False)
        pytest.skip(message)
    try:
        with rgw_server.rgw_server(tmp_path_factory.mktemp("rgw")) as server:
            yield server
    except rgw_server.RGWUnavailable as exc:
        pytest.fail(f"Ceph RGW did not start: {exc}", pytrace=False)


@dataclass
class S3Target:
    """One S3 server under test: its endpoint, keys, CA, whether buckets are versioned, and its reset."""

    name: str
    endpoint: str
    access_key: str
    secret_key: str
    ca_bundle: str | None
    versioned: bool
    reset: Callable[[], None]

    def client(self) -> Any:
        """A seeding client (not the code under test)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            verify=self.ca_bundle if self.ca_bundle else None,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


#: moto over HTTP, and Ceph RGW over HTTPS with unversioned and versioned buckets.
SERVER_TARGETS = ("moto", "rgw-https", "rgw-https-versioned")


@pytest.fixture(params=SERVER_TARGETS)
def s3_target(request) -> S3Target:
    """Each real S3 server in turn, reset, with the input and output buckets created."""
    name = request.param
    if name == "moto":
        endpoint = request.getfixturevalue("s3_endpoint")
        target = S3Target(name, endpoint, LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, None, False, lambda: reset(endpoint))
    else:
        server = request.getfixturevalue("rgw")
        target = S3Target(
            name,
            server.https_url,
            server.access_key,
            server.secret_key,
            str(server.ca_bundle),
            name.endswith("-versioned"),
            server.reset,
        )
    target.reset()
    client = target.client()
    for bucket in (INPUT_BUCKET, OUTPUT_BUCKET):
        client.create_bucket(Bucket=bucket)
        if target.versioned:
            client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return target
