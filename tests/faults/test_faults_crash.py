"""Crash at every step: the tick's whole process tree (tick, Snakemake, its jobs) is SIGKILLed at a named
point (COG_PIPELINE_CRASH_AT), as if the host died there. The next tick must reach exactly the outcome
of a run without the crash: every row once, nothing at an output key but complete objects, no input
touched, no processing file, raw manifest or claim marker left behind.

Each step runs with one of two executors. ``snakemake``: the real local executor, one step for each kind of
state a crash leaves Snakemake (a committed run it never started, mid batch, a finished batch, mid aggregate).
A crash before the launch leaves it nothing else: the next tick claims afresh (a normal run) or resumes a run
directory without .snakemake, as tick.launch's does; one later in the aggregate (after the report) leaves it
the same incomplete job as aggregate.csv:1's. ``in-process``: the run's steps in the test's own process
(tests/inprocess.py), for the other steps, whose resumption Snakemake handles the same way: the subject there
is what the tick, the claim, the batch and the aggregate leave behind and pick up, at a fraction of the cost
(a real tick is about 4 CPU-seconds, most of it Python and Snakemake start-up)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from cog_pipeline import SAMPLES_DIR
from cog_pipeline.control import tick as tick_module
from cog_pipeline.control.tick import MAX_RESUMES
from cog_pipeline.core.processes import busy, process_cwds
from faults.harness import die_in_fork

PACKAGE = Path(tick_module.__file__).resolve().parents[1]
OVERRIDES = {"batch_size": 2}
EXPECTED = {
    "crash/jobs-": {
        "processed": ["a/one.tif", "a/two.tif", "b/three.tif"],
        "failed": {"a/missing.tif": "not found", "/bad.tif": "starts with '/'"},
    }
}

#: step -> (True when the claim was committed before the crash (the run directory is resumed), executor).
STEPS = {
    "tick.listed": (False, "in-process"),
    "tick.run-dir": (False, "in-process"),
    "claim.marker": (False, "in-process"),
    "claim.downloaded": (False, "in-process"),
    "claim.journaled": (False, "in-process"),
    "claim.processing": (False, "in-process"),
    "claim.renamed": (True, "in-process"),
    "claim.done": (True, "in-process"),
    "tick.run-written": (True, "in-process"),
    "tick.launch": (True, "snakemake"),
    "batch.downloaded": (True, "in-process"),
    "batch.converted:1": (True, "snakemake"),
    "batch.converted:2": (True, "in-process"),
    "batch.uploaded-jpeg": (True, "in-process"),
    "batch.uploaded": (True, "in-process"),
    "batch.status": (True, "snakemake"),
    "aggregate.listed": (True, "in-process"),
    "aggregate.csv:1": (True, "snakemake"),
    "aggregate.csv:3": (True, "in-process"),
    "aggregate.report": (True, "in-process"),  # outcome CSVs and report uploaded, processing file not yet deleted
    "aggregate.deleted": (True, "in-process"),
}


def scenario(world):
    world.put("a/one.tif", SAMPLES_DIR / "byte.tif")
    world.image("a/two.tif", seed=2)
    world.image("b/three.tif", count=3, seed=3)
    world.manifest(
        "crash/jobs-raw.csv", ["a/one.tif,1", "a/two.tif,1", "b/three.tif,3", "a/missing.tif,1", "/bad.tif,1"]
    )
    world.snapshot()


def crash(world, step, **options):
    """Run a tick that dies at ``step`` (a forked child: no Python start-up); wait until nothing of it is left.
    ``options``: TickOptions fields (world.options), OVERRIDES as the run overrides unless given."""
    options.setdefault("overrides", OVERRIDES)
    world.figures.runs += 1
    die_in_fork(step, lambda: tick_module.tick(world.options(**options)))
    world.figures.kind("crash", step.partition(":")[0])
    deadline = time.monotonic() + 10
    while any(busy(d, process_cwds()) for d in world.workdir.glob("workflow-run-*")):
        assert time.monotonic() < deadline, "processes of the crashed tick still alive"
        time.sleep(0.1)


def _params():
    for step, (_committed, executor) in STEPS.items():
        yield pytest.param(step, executor, id=f"{step}-{executor}", marks=[pytest.mark.slow])  # in-process: 3-5 s


@pytest.mark.parametrize(("step", "executor"), list(_params()))
def test_crash_at_step_then_next_tick_reaches_the_same_outcome(world, step, executor, request, test_tmpdir):
    if executor == "in-process":
        request.getfixturevalue("in_process_workflow")  # for the crashed tick too (a fork of this process)
    scenario(world)
    crash(world, step)
    runs_before = sorted(world.workdir.glob("workflow-run-*"))

    result = world.tick(overrides=OVERRIDES)

    assert result.exit_code == 0
    world.check(EXPECTED)
    if STEPS[step][0]:
        assert [str(p) for p in result.resumed] == [str(p) for p in runs_before], "the crashed run is resumed"
    else:
        assert not result.resumed and result.run_dir is not None, "the manifest is claimed afresh"
        assert [p for p in world.workdir.glob("workflow-run-*")] == [result.run_dir], (
            "the crashed tick's run directory (nothing committed) is cleaned away"
        )
    again = world.tick(overrides=OVERRIDES)
    assert again.run_dir is None and not again.resumed and not again.manifests, "nothing left to do"
    # The killed batch's image folders (input and COG) are removed by the next batch job on this host.
    assert not list(test_tmpdir.glob("cog-pipeline-*")), list(test_tmpdir.iterdir())


def test_every_crash_point_of_the_code_is_in_the_matrix():
    """A crash point added to the code without a step in STEPS (or a step whose point was removed) fails here."""
    in_code = set()
    for path in PACKAGE.rglob("*.py"):
        in_code.update(re.findall(r'crash_point\("([^"]+)"\)', path.read_text(encoding="utf-8")))
    assert {step.partition(":")[0] for step in STEPS} == in_code
    assert {executor for _committed, executor in STEPS.values()} == {"snakemake", "in-process"}
    batch_or_later = [s for s in STEPS if s.startswith(("batch.", "aggregate."))]
    assert {STEPS[s][1] for s in batch_or_later} == {"snakemake", "in-process"}


@pytest.mark.slow
def test_crash_during_the_resume_too(world):
    scenario(world)
    crash(world, "batch.uploaded")
    crash(world, "batch.converted:1")  # the resume dies as well (its first conversion)
    assert world.tick(overrides=OVERRIDES).exit_code == 0
    world.check(EXPECTED)


@pytest.mark.slow
@pytest.mark.usefixtures("in_process_workflow")
def test_a_run_that_keeps_crashing_ends_with_every_row_accounted(world):
    """A poison image that kills its job's host every time: after MAX_RESUMES resumes only the aggregate
    runs, and every row is accounted for (the unfinished ones failed with the reason). The tick's resume count
    is the subject: the runs' steps are in-process (Snakemake's resume is the matrix's and the test above's)."""
    scenario(world)
    for _ in range(1 + MAX_RESUMES):
        crash(world, "batch.converted:1")
    result = world.tick(overrides=OVERRIDES)
    assert result.exit_code == 0 and len(result.resumed) == 1
    unfinished = "did not finish"
    world.check(
        {
            "crash/jobs-": {
                "processed": [],
                "failed": {
                    "a/one.tif": unfinished,
                    "a/two.tif": unfinished,
                    "b/three.tif": unfinished,
                    "a/missing.tif": unfinished,
                    "/bad.tif": "starts with '/'",
                },
            }
        }
    )


@pytest.mark.slow
def test_snakemake_killed_alone_every_row_accounted_and_retry_completes(world):
    """SIGKILL of Snakemake only (the tick survives): the tick writes the outcome at once with the rows
    of unfinished batches failed ('did not finish'); renaming the failed file to -raw.csv retries them."""
    scenario(world)
    proc = world.spawn(overrides={"batch_size": 1})
    deadline = time.monotonic() + 120
    killed = False
    while proc.poll() is None and time.monotonic() < deadline:
        status = list(world.workdir.glob("workflow-run-*/status/m1/batch-*.jsonl"))
        if status and not killed:
            for pid in _snakemake_pids(world.workdir):
                os.kill(pid, signal.SIGKILL)
                killed = True
        time.sleep(0.05)
    _out, err = proc.communicate(timeout=120)
    assert killed and proc.returncode == 0, err[-3000:]
    world.figures.kind("crash", "snakemake-killed")
    outcome = world.outcomes()["crash/jobs-"][0]
    from faults.harness import rows

    processed = [r[0] for r in rows(outcome["processed"])]
    failed = {r[0]: r[2] for r in rows(outcome["errors"])[1:]}
    assert sorted(processed + list(failed)) == sorted(
        ["a/one.tif", "a/two.tif", "b/three.tif", "a/missing.tif", "/bad.tif"]
    ), "every row exactly once"
    retry = [k for k, reason in failed.items() if "did not finish" in reason]
    assert retry, "Snakemake was killed before every batch finished"
    world.figures.rows_processed += len(processed)
    world.figures.rows_failed += len(failed)
    # The user's retry: the failed file renamed to -raw.csv (here: its rows that did not finish).
    for key in list(world.objects(world.input_bucket)):
        if key.startswith("crash/jobs-") and key.endswith(".csv"):
            world.seed.delete_object(Bucket=world.input_bucket, Key=key)
    bands = {"a/one.tif": "1", "a/two.tif": "1", "b/three.tif": "3", "a/missing.tif": "1"}
    world.manifest("crash/retry-raw.csv", [f"{k},{bands[k]}" for k in retry])
    time.sleep(1.1)  # a new timestamp for the outcome names
    assert world.tick().exit_code == 0
    want = [k for k in retry if k != "a/missing.tif"]
    world.check({"crash/retry-": {"processed": want, "failed": {k: "not found" for k in retry if k not in want}}})


def _snakemake_pids(workdir: Path) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"snakemake" in argv and any(str(workdir).encode() in a for a in argv) and b"-m" in argv:
            pids.append(int(name))
    return pids


@pytest.mark.slow
def test_crash_in_the_middle_of_a_multipart_upload_leaves_no_partial_object(world):
    """The host dies while the COG's parts are being uploaded: nothing appears at its key (an upload
    that is never completed is invisible), and the next tick uploads it whole."""
    world.image("big/multi.tif", width=1900, height=1100, count=3, seed=3)  # ~6 MB: 2 parts of 5 MiB
    world.manifest("crash/mp-raw.csv", ["big/multi.tif,3"])
    world.snapshot()
    mib = 1024 * 1024
    overrides = {"s3": {"multipart_threshold": 5 * mib, "multipart_chunksize": 5 * mib}}
    world.proxy.add("delay", "upload_part", bucket=world.output_bucket, delay=1.0)
    proc = world.spawn(overrides=overrides)
    deadline = time.monotonic() + 120
    while world.proxy.calls["upload_part"] == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the tick ended before uploading"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    world.figures.kind("crash", "multipart-upload")
    time.sleep(1.5)  # parts in flight reach the server
    assert "big/multi.tif" not in world.objects(world.output_bucket), "no partial object at the key"
    assert world.seed.list_multipart_uploads(Bucket=world.output_bucket).get("Uploads"), "an upload was in flight"
    world.proxy.clear_rules()
    deadline = time.monotonic() + 10
    while any(busy(d, process_cwds()) for d in world.workdir.glob("workflow-run-*")):
        assert time.monotonic() < deadline
        time.sleep(0.1)

    result = world.tick(overrides=overrides)
    assert result.exit_code == 0 and len(result.resumed) == 1
    world.check({"crash/mp-": {"processed": ["big/multi.tif"]}})
