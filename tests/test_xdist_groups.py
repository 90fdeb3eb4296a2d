"""`make test`'s worker groups (tests/conftest.py): each costly session or module fixture (the HTCondor pool,
a Ceph RGW cluster per RGW target, the built wheel) is built on one pytest-xdist worker only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import xdist_group

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("nodeid", "group"),
    [
        ("tests/pool/test_pool.py::test_tick_runs_a_manifest_on_the_pool", "pool"),
        ("tests/faults/test_servers.py::test_end_to_end_tick[rgw-https]", "rgw-https"),
        (
            "tests/faults/test_servers.py::test_crash_then_next_tick_reaches_the_same_outcome[claim.renamed-rgw-https]",
            "rgw-https",
        ),
        ("tests/faults/test_servers.py::test_end_to_end_tick[rgw-https-versioned]", "rgw-https-versioned"),
        ("tests/faults/test_servers.py::test_probe_finds_what_each_server_does[moto]", None),
        ("tests/test_packaging.py::test_installed_wheel_runs_the_demo", "packaging"),
        ("tests/faults/test_faults_secrets.py::test_the_leak_detectors_do_detect", "secrets"),
        ("tests/faults/test_faults_secrets.py::test_sentinel_secrets_never_leak", "secrets"),
        (
            "tests/test_naming_s3.py::test_pipeline_objects_are_recognised[.cog-pipeline/claims/X-raw.csv@abc-True]",
            None,
        ),
        ("tests/faults/test_faults_crash.py::test_crash_during_the_resume_too", None),
    ],
)
def test_costly_fixtures_are_grouped_by_node_id(nodeid, group):
    assert xdist_group(nodeid) == group


def test_the_scheduler_puts_a_group_in_one_unit_of_work():
    pytest.importorskip("xdist")
    from conftest import GroupScheduling

    split = GroupScheduling._split_scope
    ids = [
        "tests/faults/test_servers.py::test_end_to_end_tick[rgw-https]",
        "tests/faults/test_servers.py::test_retry_and_status[rgw-https]@rgw-https",  # xdist's suffix, where used
        "tests/faults/test_servers.py::test_end_to_end_tick[rgw-https-versioned]",
        "tests/test_layers.py::test_a",
        "tests/test_layers.py::test_b",
    ]
    assert [split(None, nodeid) for nodeid in ids] == [
        "rgw-https",
        "rgw-https",
        "rgw-https-versioned",
        "tests/test_layers.py::test_a",
        "tests/test_layers.py::test_b",
    ]


def test_every_test_on_a_real_rgw_server_is_in_its_servers_group():
    """Every collected test of test_servers.py whose id names an RGW target maps to that target's group (a
    renamed target or file would otherwise spread the RGW tests over every worker, one cluster each)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/faults/test_servers.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ids = [line for line in proc.stdout.splitlines() if line.startswith("tests/faults/test_servers.py::")]
    rgw = [nodeid for nodeid in ids if "[" in nodeid and "rgw" in nodeid.split("[", 1)[1]]
    assert len(rgw) >= 10, ids
    assert {nodeid: xdist_group(nodeid) for nodeid in rgw} == {
        nodeid: "rgw-https-versioned" if "rgw-https-versioned" in nodeid else "rgw-https" for nodeid in rgw
    }


def test_the_workers_of_one_run_add_up_their_fault_figures(tmp_path):
    """Each worker writes its share of tests/.fault-figures.json; those of one run add up, another run starts over."""
    from faults.harness import Figures

    def share(runs: int, kind: str, op: str) -> Figures:
        figures = Figures(runs=runs, rows_processed=2 * runs, tests=1)
        figures.kind("s3", kind)
        figures.s3_faults_injected[(op, kind)] += runs
        figures.bounds[kind] = {"seconds": float(runs)}
        return figures

    path = tmp_path / "figures.json"
    share(3, "503", "put").write(path, run="run-1")
    share(4, "reset", "get").write(path, run="run-1")
    data = json.loads(path.read_text())
    assert (data["runs_executed"], data["rows_processed"], data["tests"]) == (7, 14, 2)
    assert data["fault_kinds"]["s3"] == ["503", "reset"] and data["s3_faults_injected"] == 7
    assert data["s3_faults_by_operation_and_kind"] == {"get/reset": 4, "put/503": 3}
    assert set(data["measured_bounds"]) == {"503", "reset"} and data["run"] == "run-1"
    share(5, "500", "head").write(path, run="run-2")
    assert json.loads(path.read_text())["runs_executed"] == 5
    share(1, "500", "head").write(path)  # no xdist: the file is this session's alone
    assert json.loads(path.read_text())["runs_executed"] == 1
