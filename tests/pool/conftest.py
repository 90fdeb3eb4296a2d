"""Fixtures of the pool suite: one real HTCondor personal pool per session (tests/pool/condor.py), the
session's moto S3 server (tests/conftest.py) reset per test, key files and a working directory that
the pool user owns, and the ``cog-pipeline`` command run as that user.

Where the pool cannot run the tests skip with "POOL TESTS NOT RUN: <reason>"; with
COG_PIPELINE_REQUIRE_POOL=1 (.ci/run) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import INPUT_BUCKET, OUTPUT_BUCKET
from pool import condor

REQUIRE_POOL = os.environ.get("COG_PIPELINE_REQUIRE_POOL") == "1"
#: Keep the pool's directory (logs, spool, run directories) after the session, for a look by hand.
KEEP_POOL = os.environ.get("COG_PIPELINE_KEEP_POOL") == "1"
_STASH = pytest.StashKey[dict]()


def _summary(config: pytest.Config) -> dict:
    return config.stash.setdefault(_STASH, {"durations": {}})


@pytest.fixture(scope="session")
def pool(request):
    """A running personal pool for the whole session."""
    reason = condor.available()
    if reason:
        message = f"POOL TESTS NOT RUN: {reason}"
        if REQUIRE_POOL:
            pytest.fail(message + " (COG_PIPELINE_REQUIRE_POOL=1)", pytrace=False)
        pytest.skip(message)
    # Not under pytest's tmp_path: as root that is /tmp/pytest-of-root (0700), which the pool user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="cog-pipeline-pool-", dir="/tmp" if os.geteuid() == 0 else None))
    summary = _summary(request.config)
    try:
        with condor.personal_pool(base) as running:
            summary.update(startup=running.startup_seconds, notes=running.notes, user=running.user, base=str(base))
            yield running
            stop_started = time.monotonic()
        summary["stop"] = time.monotonic() - stop_started
    except condor.PoolError as exc:
        pytest.fail(f"POOL FAILED: {exc}", pytrace=False)
    finally:
        if KEEP_POOL:
            print(f"\nCOG_PIPELINE_KEEP_POOL=1: the pool's files are kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def _timed(request):
    started = time.monotonic()
    yield
    _summary(request.config)["durations"][request.node.nodeid] = time.monotonic() - started


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    summary = config.stash.get(_STASH, None)
    if not summary or "startup" not in summary:
        return
    tr = terminalreporter
    tr.section("HTCondor personal pool")
    tr.write_line(
        f"pool user {summary['user']}, in {summary['base']}: up in {summary['startup']:.1f} s"
        + (f", stopped in {summary['stop']:.1f} s" if "stop" in summary else "")
    )
    for note in summary["notes"]:
        tr.write_line(f"set-up: {note}")
    for nodeid, seconds in summary["durations"].items():
        tr.write_line(f"{seconds:7.1f} s  {nodeid}")


@dataclass
class PoolUser:
    """What a test on the pool works with: a working directory, S3 key files with unique sentinel values
    (moto accepts any key) both owned by the pool user, and ``cli()`` running cog-pipeline as that user."""

    pool: condor.Pool
    endpoint: str
    workdir: Path
    access_key_file: Path
    secret_key_file: Path
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    config_file: Path

    def s3_flags(self) -> list[str]:
        return ["-a", str(self.access_key_file), "-s", str(self.secret_key_file), "-e", self.endpoint]

    def bucket_flags(self, pattern: str) -> list[str]:
        return [*self.s3_flags(), "--input-bucket", INPUT_BUCKET, "--output-bucket", OUTPUT_BUCKET, "-p", pattern]

    def cli(self, *args: str, timeout: float = 120, check: bool = True, extra_env: dict[str, str] | None = None) -> Any:
        """``cog-pipeline ARGS`` as the pool user, in the working directory, with the pool's environment
        (+ ``extra_env``)."""
        command = Path(sys.executable).parent / "cog-pipeline"
        extra = {
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            **(extra_env or {}),
        }
        return self.pool.run([str(command), *args], cwd=self.workdir, timeout=timeout, check=check, extra_env=extra)


#: Site config of the pool runs: batches of 2 images (a run of 4 rows is two clusters, side by side on
#: the 4-CPU slot), and a scratch request any CI disk can satisfy (the default is 20 GB).
TEST_CONFIG = "batch_size: 2\ndisk_mb_per_job: 2000\nmem_mb_per_job: 1000\n"


def make_pool_user(pool: condor.Pool, endpoint: str, name: str) -> PoolUser:
    """A fresh working directory and key files for one scenario on the pool, owned by the pool user."""
    home = pool.base_dir / "tests" / f"{name.replace('/', '_')[:60]}-{uuid.uuid4().hex[:6]}"
    workdir = home / "work"
    keys = home / "keys"
    workdir.mkdir(parents=True)
    keys.mkdir()
    access, secret = f"pool-access-{uuid.uuid4().hex}", f"pool-SECRET-{uuid.uuid4().hex}"
    access_file, secret_file = keys / "access.key", keys / "secret.key"
    for path, value in ((access_file, access), (secret_file, secret)):
        path.write_text(value + "\n")
        path.chmod(0o600)
    config_file = home / "site-config.yaml"
    config_file.write_text(TEST_CONFIG)
    for p in (home.parent, home):
        p.chmod(0o755)
    keys.chmod(0o700)
    pool.give(home)
    return PoolUser(pool, endpoint, workdir, access_file, secret_file, access, secret, config_file)


@pytest.fixture
def pool_user(pool, s3_server, buckets, request):
    """A fresh working directory and key files for one test on the pool (S3 reset, buckets created)."""
    return make_pool_user(pool, s3_server, request.node.name)
