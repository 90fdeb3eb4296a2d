"""The pipeline on a real HTCondor pool (a personal 25.13.2 pool on loopback, tests/pool/condor.py): the
driver, the batch jobs, the Crondor, status and stop, run by HTCondor itself. No schedd is faked; the
offline checks of the same code are in tests/test_htcondor.py.

Everything the pipeline runs here runs as the pool user (see condor.py): ``cog-pipeline`` through
``PoolUser.cli``, the driver and the Crondor as local-universe jobs, the batch jobs as vanilla jobs on
the pool's startd, all talking to the session's moto server on 127.0.0.1.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import pytest
from rio_cogeo.cogeo import cog_validate

from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects

pytestmark = pytest.mark.slow

#: Sample images (cog_pipeline/samples) and the keys they get; spaces and non-ASCII on purpose.
IMAGES = {
    "imagery/rgb.tif": ("RGB.byte.tif", 3),
    "imagery/county scans/shade é.tif": ("shade.tif", 1),
    "imagery/small/byte.tif": ("byte.tif", 1),
}
MISSING = "imagery/missing.tif"
DRIVER_WAIT = 300
CRON_WAIT = 150
LOCAL_UNIVERSE, VANILLA_UNIVERSE = 12, 5


def manifest(rows: list[tuple[str, int]]) -> bytes:
    return ("key,bands\n" + "".join(f"{k},{b}\n" for k, b in rows)).encode("utf-8")


def upload_images(seed, samples: Path) -> None:
    for key, (name, _bands) in IMAGES.items():
        seed.upload_file(str(samples / name), INPUT_BUCKET, key)


def csv_rows(text: str) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(text)) if r]


def outcome_objects(seed, stem: str) -> dict[str, str]:
    """{'processed': text, 'failed': text, 'errors': text} of the manifest with ``stem``, when all three exist."""
    objs = all_objects(seed, INPUT_BUCKET)
    found = {}
    for kind in ("processed", "failed", "errors"):
        keys = [k for k in objs if k.startswith(f"{stem}{kind}-")]
        if len(keys) == 1:
            found[kind] = objs[keys[0]].decode("utf-8")
    return found


def run_constraint(run_id: str) -> str:
    return f'CogPipelineRun =?= "{run_id}"'


def tail(path: Path, lines: int = 40) -> str:
    try:
        return f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"--- {path}: missing"


def diagnostics(pool, run_dir: Path | None) -> str:
    parts = [pool.condor("condor_q", "-allusers", "-nobatch", check=False).stdout,
             pool.condor("condor_q", "-allusers", "-hold", check=False).stdout]
    if run_dir is not None:
        logs = run_dir / "logs"
        parts += [tail(p) for p in sorted(logs.glob("driver_*.err"))]
        parts += [tail(logs / "supervisor.log"), tail(logs / "snakemake.log", 60)]
        parts += [tail(p, 20) for p in sorted(logs.glob("htcondor/*/convert_batch/*.err"))]
    parts.append(pool.log_tails(15))
    return "\n".join(parts)


def wait_for(predicate, timeout: float, what: str, on_timeout=lambda: "", interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{on_timeout()}", pytrace=False)
        time.sleep(interval)


def secret_places(pool, user) -> list[str]:
    """Where the secret key value (or the access key value) appears: job ads in the queue and history,
    and every file of the pool (spool with the job queue log and history, logs, execute dirs) and of the
    working directory (run directories, staged workflow, job.env, driver/Crondor/Snakemake logs)."""
    hits = []
    ads = (pool.condor("condor_q", "-allusers", "-long", check=False).stdout
           + pool.condor("condor_history", "-long", check=False).stdout)
    assert "CogPipeline" in ads, "the job ads searched must include the pipeline's jobs"
    for label, value in (("secret key", user.secret_key), ("access key", user.access_key)):
        if value in ads:
            hits.append(f"{label} in job ads")
        for root in (pool.local_dir, user.workdir):
            for path in root.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    try:
                        if value.encode() in path.read_bytes():
                            hits.append(f"{label} in {path}")
                    except OSError:
                        pass
    return hits


# ---------------------------------------------------------------------------------------------- tests

def test_tick_runs_a_manifest_on_the_pool(pool, pool_user, seed, samples):
    """tick --executor htcondor queues a driver; the pool runs it and the batch jobs; outcome, COGs, clean queue."""
    pattern = "pool-e2e/*raw.csv"
    upload_images(seed, samples)
    rows = [(k, b) for k, (_n, b) in IMAGES.items()] + [(MISSING, 3)]
    seed.put_object(Bucket=INPUT_BUCKET, Key="pool-e2e/batch-raw.csv", Body=manifest(rows))

    started = time.monotonic()
    tick = pool_user.cli("tick", "--executor", "htcondor", *pool_user.bucket_flags(pattern),
                         "--config", str(pool_user.config_file), "--workdir", str(pool_user.workdir))
    tick_seconds = time.monotonic() - started
    assert "Submitted the run's driver as HTCondor cluster" in tick.stdout, tick.stdout + tick.stderr
    assert tick_seconds < 30, f"the tick only queues a driver; it took {tick_seconds:.1f} s"
    run_dirs = sorted(pool_user.workdir.glob("workflow-run-*"))
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    run_id = run_dir.name.removeprefix("workflow-run-")

    def finished():
        done = list((run_dir / "outcome").glob("*.json"))
        return done and not pool.query(run_constraint(run_id), ["ClusterId"])

    wait_for(finished, DRIVER_WAIT, "the driver to write the outcome and leave the queue",
             lambda: diagnostics(pool, run_dir))

    # The driver: one local-universe job with the original's batch name, finished with status 0.
    drivers = pool.history(f'{run_constraint(run_id)} && CogPipelineRole =?= "driver"',
                           ["ClusterId", "JobBatchName", "JobUniverse", "JobStatus", "ExitCode", "Owner"])
    assert len(drivers) == 1, drivers
    driver = drivers[0]
    assert driver["JobBatchName"] == f"COG-Pipeline-DAG-{pattern}"
    assert (driver["JobUniverse"], driver["JobStatus"], driver["ExitCode"]) == (LOCAL_UNIVERSE, 4, 0), driver
    assert driver["Owner"] == pool.user
    # The batch jobs: vanilla jobs matched to the startd's slot, 4 rows in batches of 2 = 2 clusters.
    jobs = pool.history(f'{run_constraint(run_id)} && CogPipelineRole =?= "job"',
                        ["ClusterId", "JobBatchName", "JobUniverse", "JobStatus", "ExitCode", "LastRemoteHost",
                         "CogPipelinePattern"])
    assert len(jobs) == 2, jobs
    for job in jobs:
        assert (job["JobUniverse"], job["JobStatus"], job["ExitCode"]) == (VANILLA_UNIVERSE, 4, 0), job
        assert job["JobBatchName"].startswith("convert_batch-") and job["CogPipelinePattern"] == pattern, job
        assert "@" in job.get("LastRemoteHost", ""), job

    # The outcome CSVs: 3 processed, the missing object failed with its reason.
    out = outcome_objects(seed, "pool-e2e/batch-")
    assert set(out) == {"processed", "failed", "errors"}, out
    assert sorted(csv_rows(out["processed"])) == sorted([k, str(b)] for k, (_n, b) in IMAGES.items())
    assert csv_rows(out["failed"]) == [[MISSING, "3"]]
    errors = csv_rows(out["errors"])
    assert errors[0] == ["key", "bands", "reason"] and len(errors) == 2
    assert errors[1][0] == MISSING and "not found" in errors[1][2], errors
    objs = all_objects(seed, INPUT_BUCKET)
    assert "pool-e2e/batch-raw.csv" not in objs and not [k for k in objs if "processing" in k]
    summary = json.loads(next((run_dir / "outcome").glob("*.json")).read_text())
    assert (summary["processed"], summary["failed"]) == (3, 1), summary

    # The COGs (made on the pool's execute side) are valid; each has its JPEG.
    outputs = all_objects(seed, OUTPUT_BUCKET)
    assert sorted(outputs) == sorted([*IMAGES, *(k[:-4] + ".jpg" for k in IMAGES)])
    for i, key in enumerate(IMAGES):
        cog = pool_user.workdir.parent / f"check-{i}.tif"
        cog.write_bytes(outputs[key])
        valid, errs, _warnings = cog_validate(str(cog), quiet=True)
        assert valid, (key, errs)

    # Nothing of the run (or of the pipeline) left in the queue; no secret in ads, spool, logs, run files.
    assert pool.query(run_constraint(run_id)) == []
    assert pool.query("CogPipeline =?= true") == []
    assert secret_places(pool, pool_user) == []


def test_crondor_ticks_by_itself_then_stop_empties_the_queue(pool, pool_user, seed, samples):
    """start --every 1 queues the Crondor; a manifest uploaded afterwards is processed by its next tick
    (nobody calls tick); status shows the Crondor; stop leaves nothing in the queue."""
    pattern = "pool-cron/*raw.csv"
    upload_images(seed, samples)
    start = pool_user.cli("start", "--every", "1", *pool_user.bucket_flags(pattern),
                          "--config", str(pool_user.config_file), "--workdir", str(pool_user.workdir))
    match = re.search(r"cluster (\d+)", start.stdout)
    assert match, start.stdout + start.stderr
    cluster = int(match.group(1))
    try:
        crondor = pool.query(f"ClusterId == {cluster}", ["JobBatchName", "JobUniverse", "CronMinute", "OnExitRemove",
                                                         "CogPipelineRole", "Environment"])
        assert len(crondor) == 1, crondor
        ad = crondor[0]
        assert ad["JobBatchName"] == f"COG-Pipeline-Crondor-{pattern}"
        assert (ad["JobUniverse"], ad["CronMinute"], ad["OnExitRemove"], ad["CogPipelineRole"]) == \
            (LOCAL_UNIVERSE, "*/1", False, "crondor"), ad
        assert pool_user.secret_key not in json.dumps(ad)

        status = pool_user.cli("status", *pool_user.s3_flags(), "--input-bucket", INPUT_BUCKET, "-p", pattern,
                               "--workdir", str(pool_user.workdir))
        assert f"COG-Pipeline-Crondor-{pattern}" in status.stdout, status.stdout
        state = json.loads(pool_user.cli("status", "--json", "-p", pattern, "--workdir",
                                         str(pool_user.workdir)).stdout)
        assert state["htcondor"]["reachable"], state["htcondor"]
        groups = {g["batch_name"]: g for g in state["htcondor"]["by_batch_name"]}
        group = groups[f"COG-Pipeline-Crondor-{pattern}"]
        assert group["roles"] == ["crondor"], groups
        # Between ticks it shows as waiting, with the time of its next tick (running if one just started).
        assert set(group["states"]) <= {"waiting for its next tick", "running"}, group
        if "waiting for its next tick" in group["states"]:
            assert 0 < group["next_run"] - time.time() <= 61, group

        # Uploaded after start: only the Crondor's next tick can pick it up.
        rows = [("imagery/small/byte.tif", 1), (MISSING, 1)]
        seed.put_object(Bucket=INPUT_BUCKET, Key="pool-cron/late-raw.csv", Body=manifest(rows))
        uploaded = time.monotonic()

        def run_dir():
            dirs = sorted(pool_user.workdir.glob("workflow-run-*"))
            return dirs[0] if dirs else None

        out = wait_for(lambda: (lambda o: o if len(o) == 3 else None)(outcome_objects(seed, "pool-cron/late-")),
                       CRON_WAIT, "the Crondor's tick to process the manifest uploaded after start",
                       lambda: tail(pool_user.workdir / "ticks.log") + "\n"
                       + tail(pool_user.workdir / f"crondor_{cluster}.err") + "\n" + diagnostics(pool, run_dir()))
        processed_after = time.monotonic() - uploaded
        assert csv_rows(out["processed"]) == [["imagery/small/byte.tif", "1"]]
        assert csv_rows(out["failed"]) == [[MISSING, "1"]]
        # Let the run's driver finish (the aggregate has written the CSVs; it then cleans up and exits), so
        # that stop below removes an idle Crondor, not a driver in its last second.
        run_id = run_dir().name.removeprefix("workflow-run-")
        wait_for(lambda: not pool.query(run_constraint(run_id), ["ClusterId"]), 60,
                 "the Crondor's run to leave the queue", lambda: diagnostics(pool, run_dir()))
        drivers = pool.history(f'{run_constraint(run_id)} && CogPipelineRole =?= "driver"',
                               ["JobBatchName", "ExitCode"])
        assert [(d["JobBatchName"], d["ExitCode"]) for d in drivers] == [(f"COG-Pipeline-DAG-{pattern}", 0)]
        ticks = (pool_user.workdir / "ticks.log").read_text()
        assert "Submitted the run's driver as HTCondor cluster" in ticks, ticks
        assert len(list(pool_user.workdir.glob("workflow-run-*"))) == 1
        # The Crondor is still queued (OnExitRemove = false) after its tick.
        assert pool.query(f"ClusterId == {cluster}", ["ClusterId"]), "the Crondor left the queue after one tick"
        print(f"manifest uploaded after start processed by the Crondor's tick in {processed_after:.0f} s")
    finally:
        stop = pool_user.cli("stop", "-p", pattern, check=False)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "Removed" in stop.stdout, stop.stdout

    wait_for(lambda: not pool.query("CogPipeline =?= true", ["ClusterId"]), 60,
             "the pipeline's jobs to leave the queue after stop", lambda: diagnostics(pool, None), interval=1)
    assert pool.query(f"ClusterId == {cluster}") == []
    assert secret_places(pool, pool_user) == []
