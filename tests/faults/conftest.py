"""Fixtures of the fault suite: the fault proxy in front of the session's S3 server, a World per test,
and the figures collector that writes tests/.fault-figures.json at the end of the session (of each
worker under pytest-xdist: the workers of one run add up their figures there)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from cog_pipeline.storage.s3 import S3Settings
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, write_key_files
from faults.harness import Figures, World
from inprocess import workflow_in_process
from faults.proxy import FaultProxy

FIGURES_FILE = Path(__file__).resolve().parent.parent / ".fault-figures.json"


@pytest.fixture(scope="session")
def figures(request):
    """The suite's figures; each pytest-xdist worker adds its share to the file of the run."""
    collected = Figures()
    yield collected
    workerinput = getattr(request.config, "workerinput", None)
    collected.write(FIGURES_FILE, run=workerinput["testrunuid"] if workerinput else None)


@pytest.fixture(scope="session")
def fault_proxy(s3_endpoint):
    proxy = FaultProxy(s3_endpoint).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxy(fault_proxy, s3_server, figures):
    """The fault proxy with no rules (and a freshly reset server behind it)."""
    fault_proxy.reset()
    yield fault_proxy
    figures.s3_faults_injected.update(fault_proxy.injected)
    for kind in fault_proxy.kinds_injected():
        figures.kind("s3", kind)
    fault_proxy.reset()


@pytest.fixture
def test_tmpdir(tmp_path, monkeypatch):
    """The test's own temporary directory for everything it runs (``TMPDIR`` for its processes, tempfile's for
    this one and its forks): a tick killed on purpose leaves its batch's image folders there, not in /tmp."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture
def world(seed, buckets, proxy, key_files, tmp_path, figures, test_tmpdir):
    figures.tests += 1
    return World(seed, proxy, key_files, tmp_path, figures, INPUT_BUCKET, OUTPUT_BUCKET)


@pytest.fixture
def server_world(s3_target, tmp_path, figures, test_tmpdir):
    """A World on each real S3 server in turn (moto, Ceph RGW over HTTPS, unversioned and versioned), with
    no fault proxy: the code under test talks to the server itself, with the server's own keys."""
    figures.tests += 1
    keys = write_key_files(tmp_path / "server-keys", s3_target.access_key, s3_target.secret_key)
    settings = S3Settings(
        endpoint_url=s3_target.endpoint,
        access_key_file=str(keys[0]),
        secret_key_file=str(keys[1]),
        ca_bundle=s3_target.ca_bundle,
    )
    world = World(s3_target.client(), None, keys, tmp_path, figures, INPUT_BUCKET, OUTPUT_BUCKET, settings)
    world.target = s3_target
    return world


@pytest.fixture
def in_process_workflow():
    """Ticks run their workflow's jobs in the test's process (tests/inprocess.py) instead of starting Snakemake:
    for tests whose subject is the tick, the claims, a batch or the aggregate, not Snakemake."""
    with workflow_in_process():
        yield
