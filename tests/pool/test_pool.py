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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from rio_cogeo.cogeo import cog_validate

from cog_pipeline import SAMPLES_DIR
from cog_pipeline.storage.local_s3 import reset
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects
from pool.conftest import PoolUser, make_pool_user

pytestmark = pytest.mark.slow

#: Sample images (cog_pipeline/samples) and the keys they get; spaces and non-ASCII on purpose.
IMAGES = {
    "imagery/rgb.tif": ("RGB.byte.tif", 3),
    "imagery/county scans/shade é.tif": ("shade.tif", 1),
    "imagery/small/byte.tif": ("byte.tif", 1),
}
MISSING = "imagery/missing.tif"
#: An object that is no TIFF beyond its first bytes: its row fails at conversion (open), in the batch job.
CORRUPT = "imagery/corrupt.tif"
CORRUPT_BYTES = b"II*\x00" + b"not a TIFF past its header " * 4
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
    """{'processed': text, 'failed': text, 'errors': text} of the manifest with ``stem``, when all three exist.

    Lists the keys first and reads only the outcome CSVs: the aggregate may delete the processing object
    between the listing and a read (seen as NoSuchKey when every object was read)."""
    keys = [
        o["Key"]
        for page in seed.get_paginator("list_objects_v2").paginate(Bucket=INPUT_BUCKET, Prefix=stem)
        for o in page.get("Contents", [])
    ]
    found = {}
    for kind in ("processed", "failed", "errors"):
        matching = [k for k in keys if k.startswith(f"{stem}{kind}-")]
        if len(matching) == 1:
            found[kind] = seed.get_object(Bucket=INPUT_BUCKET, Key=matching[0])["Body"].read().decode("utf-8")
    return found


def run_constraint(run_id: str) -> str:
    return f'CogPipelineRun =?= "{run_id}"'


def tail(path: Path, lines: int = 40) -> str:
    try:
        return f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"--- {path}: missing"


def diagnostics(pool, run_dir: Path | None) -> str:
    parts = [
        pool.condor("condor_q", "-allusers", "-nobatch", check=False).stdout,
        pool.condor("condor_q", "-allusers", "-hold", check=False).stdout,
    ]
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
    ads = (
        pool.condor("condor_q", "-allusers", "-long", check=False).stdout
        + pool.condor("condor_history", "-long", check=False).stdout
    )
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


def seed_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="seed",
        aws_secret_access_key="seed",
        config=Config(s3={"addressing_style": "path"}),
    )


def batch_jobs_of(pool, run_id: str, manifest_id: str) -> list[dict[str, Any]]:
    """Queued batch jobs of one manifest of a run (their TransferOutput names logs/convert/<m>/batch-...)."""
    ads = pool.query(
        f'{run_constraint(run_id)} && CogPipelineRole =?= "job"',
        [
            "ClusterId",
            "JobStatus",
            "TransferOutput",
            "HoldReasonCode",
            "NumHolds",
            "PeriodicRelease",
            "PeriodicRemove",
            "CogPipelineHoldPolicy",
            "RequestMemory",
            "RequestDisk",
            "RequestCpus",
        ],
    )
    return [ad for ad in ads if f"logs/convert/{manifest_id}/batch-" in str(ad.get("TransferOutput", ""))]


def manifest_ids(run_dir: Path) -> dict[str, str]:
    """{raw manifest key: manifest id} of a run (run.yaml)."""
    import yaml

    config = yaml.safe_load((run_dir / "run.yaml").read_text(encoding="utf-8"))
    return {m["raw_key"]: m["id"] for m in config["manifests"]}


@dataclass
class E2ERun:
    """One tick on the pool with two manifests: ``batch`` (good, missing and corrupt rows) and ``removed``
    (one row whose batch job, and Snakemake's resubmission of it, the test removes with condor_rm)."""

    user: PoolUser
    seed: Any
    pattern: str
    tick_stdout: str
    tick_seconds: float
    run_dir: Path
    run_id: str
    ids: dict[str, str]
    status_text: str
    status_json: dict[str, Any]
    removed_clusters: list[int] = field(default_factory=list)


PATTERN_E2E = "pool-e2e/*raw.csv"


@pytest.fixture(scope="module")
def e2e(pool, s3_endpoint) -> E2ERun:
    """Run the scenario once for the tests below (pool time is precious)."""
    reset(s3_endpoint)
    seed = seed_client(s3_endpoint)
    seed.create_bucket(Bucket=INPUT_BUCKET)
    seed.create_bucket(Bucket=OUTPUT_BUCKET)
    user = make_pool_user(pool, s3_endpoint, "e2e")
    upload_images(seed, SAMPLES_DIR)
    seed.put_object(Bucket=INPUT_BUCKET, Key=CORRUPT, Body=CORRUPT_BYTES)
    rows = [(k, b) for k, (_n, b) in IMAGES.items()] + [(MISSING, 3), (CORRUPT, 1)]
    seed.put_object(Bucket=INPUT_BUCKET, Key="pool-e2e/batch-raw.csv", Body=manifest(rows))
    seed.put_object(Bucket=INPUT_BUCKET, Key="pool-e2e/removed-raw.csv", Body=manifest([("imagery/small/byte.tif", 1)]))

    started = time.monotonic()
    tick = user.cli(
        "tick",
        "--executor",
        "htcondor",
        *user.bucket_flags(PATTERN_E2E),
        "--config",
        str(user.config_file),
        "--workdir",
        str(user.workdir),
    )
    tick_seconds = time.monotonic() - started
    assert "Submitted the run's driver as HTCondor cluster" in tick.stdout, tick.stdout + tick.stderr
    run_dirs = sorted(user.workdir.glob("workflow-run-*"))
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    run_id = run_dir.name.removeprefix("workflow-run-")
    ids = manifest_ids(run_dir)
    removed_id = ids["pool-e2e/removed-raw.csv"]
    run = E2ERun(user, seed, PATTERN_E2E, tick.stdout, tick_seconds, run_dir, run_id, ids, "", {})

    # condor_rm every batch job of the "removed" manifest as soon as it is queued (Snakemake resubmits a
    # failed batch once: retries 1), until that manifest's aggregate has run. The live status is taken
    # once, right after the first removal, while the run's driver and jobs are in the queue: in a thread,
    # so that the loop keeps watching (two `status` commands take seconds on a loaded machine, time enough
    # for the resubmitted job to run to its end unremoved, as seen once).
    status_errors: list[str] = []  # what went wrong in the thread, for the assertion below

    def take_status() -> None:
        try:
            run.status_text = user.cli("status", "-p", PATTERN_E2E, "--workdir", str(user.workdir)).stdout
            run.status_json = json.loads(
                user.cli("status", "--json", "-p", PATTERN_E2E, "--workdir", str(user.workdir)).stdout
            )
        except Exception as exc:  # noqa: BLE001 - reported by the fixture, not lost in the thread
            status_errors.append(f"{type(exc).__name__}: {str(exc)[-4000:]}")  # PoolError carries the output

    status_thread = threading.Thread(target=take_status, daemon=True)
    outcome = run_dir / "outcome" / f"{removed_id}.json"
    deadline = time.monotonic() + DRIVER_WAIT
    while not outcome.is_file():
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out waiting for the aggregate of the removed batch\n{diagnostics(pool, run_dir)}", pytrace=False
            )
        for ad in batch_jobs_of(pool, run_id, removed_id):
            cluster = int(ad["ClusterId"])
            if cluster not in run.removed_clusters and int(ad["JobStatus"]) not in (3, 4):
                pool.condor("condor_rm", str(cluster))
                run.removed_clusters.append(cluster)
        if run.removed_clusters and status_thread.ident is None:
            status_thread.start()
        time.sleep(0.5)
    if status_thread.ident is not None:  # not started when nothing was removed (its test says so)
        status_thread.join(timeout=120)
        assert not status_errors, f"the live status taken after the first removal failed: {status_errors[0]}"
        assert run.status_json, "the live status taken after the first removal did not finish in 120 s"

    def finished():
        return len(list((run_dir / "outcome").glob("*.json"))) == 2 and not pool.query(
            run_constraint(run_id), ["ClusterId"]
        )

    wait_for(
        finished,
        DRIVER_WAIT,
        "the driver to write both outcomes and leave the queue",
        lambda: diagnostics(pool, run_dir),
    )
    return run


def test_tick_runs_a_manifest_on_the_pool(pool, e2e):
    """tick --executor htcondor queues a driver; the pool runs it and the batch jobs; outcome, COGs, clean queue.
    A row that fails conversion in the batch job (a corrupt TIFF) fails with its reason; the aggregate ran."""
    pattern, run_id, seed = e2e.pattern, e2e.run_id, e2e.seed
    assert e2e.tick_seconds < 30, f"the tick only queues a driver; it took {e2e.tick_seconds:.1f} s"
    batch_id = e2e.ids["pool-e2e/batch-raw.csv"]

    # The driver: one local-universe job with the original's batch name, finished with status 0.
    drivers = pool.history(
        f'{run_constraint(run_id)} && CogPipelineRole =?= "driver"',
        ["ClusterId", "JobBatchName", "JobUniverse", "JobStatus", "ExitCode", "Owner"],
    )
    assert len(drivers) == 1, drivers
    driver = drivers[0]
    assert driver["JobBatchName"] == f"COG-Pipeline-DAG-{pattern}"
    assert (driver["JobUniverse"], driver["JobStatus"], driver["ExitCode"]) == (LOCAL_UNIVERSE, 4, 0), driver
    assert driver["Owner"] == pool.user
    # The batch jobs of the first manifest: vanilla jobs matched to the startd's slot, 5 rows in batches
    # of 2 = 3 clusters, each sized to its images (far below the config's caps of 1000 MB / 2000 MB).
    jobs = [
        j
        for j in pool.history(
            f'{run_constraint(run_id)} && CogPipelineRole =?= "job"',
            [
                "ClusterId",
                "JobBatchName",
                "JobUniverse",
                "JobStatus",
                "ExitCode",
                "LastRemoteHost",
                "CogPipelinePattern",
                "TransferOutput",
                "RequestMemory",
                "RequestDisk",
                "RequestCpus",
            ],
        )
        if f"logs/convert/{batch_id}/batch-" in j.get("TransferOutput", "")
    ]
    assert len(jobs) == 3, jobs
    for job in jobs:
        assert (job["JobUniverse"], job["JobStatus"], job["ExitCode"]) == (VANILLA_UNIVERSE, 4, 0), job
        assert job["JobBatchName"].startswith("convert_batch-") and job["CogPipelinePattern"] == pattern, job
        assert "@" in job.get("LastRemoteHost", ""), job
        assert job["RequestCpus"] == 1, job
        assert 200 <= job["RequestMemory"] < 1000, job
        assert job["RequestDisk"] < 2000 * 1024, job  # KiB

    # The outcome CSVs: 3 processed; the missing object and the corrupt one failed with their reasons.
    out = outcome_objects(seed, "pool-e2e/batch-")
    assert set(out) == {"processed", "failed", "errors"}, out
    assert sorted(csv_rows(out["processed"])) == sorted([k, str(b)] for k, (_n, b) in IMAGES.items())
    assert sorted(csv_rows(out["failed"])) == sorted([[MISSING, "3"], [CORRUPT, "1"]])
    errors = {row[0]: row[2] for row in csv_rows(out["errors"])[1:]}
    assert csv_rows(out["errors"])[0] == ["key", "bands", "reason"] and len(errors) == 2
    assert "not found" in errors[MISSING], errors
    assert "corrupt" in errors[CORRUPT] and "did not finish" not in errors[CORRUPT], errors
    objs = all_objects(seed, INPUT_BUCKET)
    assert "pool-e2e/batch-raw.csv" not in objs and not [k for k in objs if "processing" in k]
    summary = json.loads((e2e.run_dir / "outcome" / f"{batch_id}.json").read_text())
    assert (summary["processed"], summary["failed"]) == (3, 2), summary

    # The COGs (made on the pool's execute side) are valid; each has its JPEG.
    outputs = all_objects(seed, OUTPUT_BUCKET)
    beside = [k[:-4] + suffix for k in IMAGES for suffix in (".jgw", ".jpg.aux.xml")]  # the JPEGs' georeference
    assert (
        sorted(k for k in outputs if not k.endswith(".json"))
        == sorted(  # .json: the STAC Items
            [*IMAGES, *(k[:-4] + ".jpg" for k in IMAGES), *beside]
        )
    )
    for i, key in enumerate(IMAGES):
        cog = e2e.user.workdir.parent / f"check-{i}.tif"
        cog.write_bytes(outputs[key])
        valid, errs, _warnings = cog_validate(str(cog), quiet=True)
        assert valid, (key, errs)

    # Nothing of the run (or of the pipeline) left in the queue; no secret in ads, spool, logs, run files.
    assert pool.query(run_constraint(run_id)) == []
    assert pool.query("CogPipeline =?= true") == []
    assert secret_places(pool, e2e.user) == []


def test_status_shows_the_runs_jobs_from_the_live_schedd(e2e):
    """status while the run is on the pool: its pool section lists the run's driver and batch jobs."""
    state = e2e.status_json
    assert state["htcondor"]["reachable"], state["htcondor"]
    mine = [j for j in state["htcondor"]["jobs"] if j["run"] == e2e.run_id]
    assert {j["role"] for j in mine} >= {"driver"}, state["htcondor"]
    groups = {g["batch_name"]: g for g in state["htcondor"]["by_batch_name"]}
    assert f"COG-Pipeline-DAG-{e2e.pattern}" in groups, groups
    assert e2e.run_id in groups[f"COG-Pipeline-DAG-{e2e.pattern}"]["runs"], groups
    runs = [r for r in state["runs"] if r.get("run_id") == e2e.run_id]
    assert len(runs) == 1 and runs[0]["state"] == "running on the pool", state["runs"]
    assert f"COG-Pipeline-DAG-{e2e.pattern}" in e2e.status_text, e2e.status_text


def test_removed_batch_rows_fail_with_the_removal_as_reason(pool, e2e):
    """condor_rm of a batch job (and of its resubmission): its rows fail with a reason naming the removal,
    the aggregate still runs and the manifest gets its outcome CSVs."""
    assert len(e2e.removed_clusters) == 2, e2e.removed_clusters  # the job and Snakemake's one retry
    removed = pool.history(" || ".join(f"ClusterId == {c}" for c in e2e.removed_clusters), ["ClusterId", "JobStatus"])
    assert sorted(j["JobStatus"] for j in removed) == [3, 3], removed
    out = outcome_objects(e2e.seed, "pool-e2e/removed-")
    assert set(out) == {"processed", "failed", "errors"}, out
    assert csv_rows(out["processed"]) == []
    assert csv_rows(out["failed"]) == [["imagery/small/byte.tif", "1"]]
    reason = csv_rows(out["errors"])[1][2]
    # The real cause, not only "did not finish" pointing at a batch log a removed job never brings back.
    assert re.search(r"remov|abort", reason, re.IGNORECASE), reason


#: Hold policy for the hold test: release after 2 s (then 4 s), remove after 10 min (the test stops first).
FAST_HOLD_POLICY = """\
hold_policy:
  max_holds: 5
  backoff_seconds: 2
  backoff_cap_seconds: 4
  jitter_slots: 1
  jitter_seconds: 0
  remove_after_held_seconds: 600
  poll_seconds: 1
"""


def test_hold_policy_then_stop_during_the_run_and_resume(pool, pool_user, seed, samples):
    """A batch job held by a real transfer failure (its software archive unreadable on the access point)
    gets the hold policy and is released by the schedd itself, held again, released again (NumHolds
    grows); ``stop`` during the run empties the queue and keeps the processing object; with working
    settings the next tick resumes the same run directory and finishes it."""
    pattern = "pool-hold/*raw.csv"
    upload_images(seed, samples)
    rows = [("imagery/small/byte.tif", 1), ("imagery/rgb.tif", 3)]
    seed.put_object(Bucket=INPUT_BUCKET, Key="pool-hold/one-raw.csv", Body=manifest(rows))
    home = pool_user.workdir.parent
    archive = home / "unreadable-env.tar.gz"  # exists (the settings check passes) but cannot be transferred
    archive.write_bytes(b"not read")
    held_settings, good_settings = home / "settings-held.yaml", home / "settings-shared.yaml"
    held_settings.write_text(f"software:\n  mode: tarball\n  tarball: {archive}\n" + FAST_HOLD_POLICY)
    good_settings.write_text("software:\n  mode: shared\n" + FAST_HOLD_POLICY)
    for path in (archive, held_settings, good_settings):
        pool.give(path)
    archive.chmod(0o000)
    args = (
        "tick",
        "--executor",
        "htcondor",
        *pool_user.bucket_flags(pattern),
        "--config",
        str(pool_user.config_file),
        "--workdir",
        str(pool_user.workdir),
    )

    tick = pool_user.cli(*args, extra_env={"COG_PIPELINE_HTCONDOR_SETTINGS": str(held_settings)})
    assert "Submitted the run's driver as HTCondor cluster" in tick.stdout, tick.stdout + tick.stderr
    run_dir = next(pool_user.workdir.glob("workflow-run-*"))
    run_id = run_dir.name.removeprefix("workflow-run-")
    mid = manifest_ids(run_dir)["pool-hold/one-raw.csv"]

    def held_twice():
        jobs = batch_jobs_of(pool, run_id, mid)
        return jobs if jobs and int(jobs[0].get("NumHolds", 0)) >= 2 else None

    jobs = wait_for(
        held_twice,
        120,
        "the batch job to be held, released by the policy and held again",
        lambda: diagnostics(pool, run_dir),
        interval=1,
    )
    job = jobs[0]
    assert job["CogPipelineHoldPolicy"] is True, job
    # The schedd stores them as expressions (condor_q -json: "/Expr(...)/", =!= written as isnt).
    release, remove = str(job["PeriodicRelease"]), str(job["PeriodicRemove"])
    assert "NumHolds < 5" in release and "HoldReasonCode isnt 1" in release, release
    assert "NumHolds >= 5" in remove, remove
    history = pool.condor(
        "condor_q",
        "-allusers",
        "-constraint",
        f"ClusterId == {int(job['ClusterId'])}",
        "-af",
        "HoldReasonCode",
        "NumHolds",
        "JobStatus",
    ).stdout.split()
    assert history and history[0] not in ("undefined", "1", "16"), history  # a transfer hold, not a user's

    # stop during the run: the driver and the held job leave the queue; nothing is lost.
    stop = pool_user.cli("stop", "-p", pattern, check=False)
    assert stop.returncode == 0 and "Removed" in stop.stdout, stop.stdout + stop.stderr
    wait_for(
        lambda: not pool.query(run_constraint(run_id), ["ClusterId"]),
        60,
        "the run's jobs to leave the queue after stop",
        lambda: diagnostics(pool, run_dir),
        interval=1,
    )
    assert not list((run_dir / "outcome").glob("*.json")) if (run_dir / "outcome").is_dir() else True
    assert [k for k in all_objects(seed, INPUT_BUCKET) if k.startswith("pool-hold/one-processing-")]

    # The next tick resumes that run (no new claim) with a new driver, which finishes it.
    resume = pool_user.cli(*args, extra_env={"COG_PIPELINE_HTCONDOR_SETTINGS": str(good_settings)})
    assert "Resuming" in resume.stdout and run_dir.name in resume.stdout, resume.stdout + resume.stderr
    assert "Claimed" not in resume.stdout, resume.stdout
    assert len(list(pool_user.workdir.glob("workflow-run-*"))) == 1
    out = wait_for(
        lambda: (lambda o: o if len(o) == 3 else None)(outcome_objects(seed, "pool-hold/one-")),
        DRIVER_WAIT,
        "the resumed run's outcome CSVs",
        lambda: diagnostics(pool, run_dir),
    )
    assert sorted(csv_rows(out["processed"])) == sorted([list(map(str, r)) for r in rows]), out
    assert csv_rows(out["failed"]) == []
    wait_for(
        lambda: not pool.query(run_constraint(run_id), ["ClusterId"]),
        60,
        "the resumed run to leave the queue",
        lambda: diagnostics(pool, run_dir),
    )
    drivers = pool.history(f'{run_constraint(run_id)} && CogPipelineRole =?= "driver"', ["JobStatus", "ExitCode"])
    assert sorted(d["JobStatus"] for d in drivers) == [3, 4], drivers  # the stopped driver, the resumed one


def test_crondor_ticks_by_itself_then_stop_empties_the_queue(pool, pool_user, seed, samples):
    """start --every 1 queues the Crondor; a manifest uploaded afterwards is processed by its next tick
    (nobody calls tick); status shows the Crondor; stop leaves nothing in the queue."""
    pattern = "pool-cron/*raw.csv"
    upload_images(seed, samples)
    start = pool_user.cli(
        "start",
        "--every",
        "1",
        *pool_user.bucket_flags(pattern),
        "--config",
        str(pool_user.config_file),
        "--workdir",
        str(pool_user.workdir),
    )
    match = re.search(r"cluster (\d+)", start.stdout)
    assert match, start.stdout + start.stderr
    cluster = int(match.group(1))
    try:
        crondor = pool.query(
            f"ClusterId == {cluster}",
            ["JobBatchName", "JobUniverse", "CronMinute", "OnExitRemove", "CogPipelineRole", "Environment"],
        )
        assert len(crondor) == 1, crondor
        ad = crondor[0]
        assert ad["JobBatchName"] == f"COG-Pipeline-Crondor-{pattern}"
        assert (ad["JobUniverse"], ad["CronMinute"], ad["OnExitRemove"], ad["CogPipelineRole"]) == (
            LOCAL_UNIVERSE,
            "*/1",
            False,
            "crondor",
        ), ad
        assert pool_user.secret_key not in json.dumps(ad)

        status = pool_user.cli(
            "status",
            *pool_user.s3_flags(),
            "--input-bucket",
            INPUT_BUCKET,
            "-p",
            pattern,
            "--workdir",
            str(pool_user.workdir),
        )
        assert f"COG-Pipeline-Crondor-{pattern}" in status.stdout, status.stdout
        state = json.loads(pool_user.cli("status", "--json", "-p", pattern, "--workdir", str(pool_user.workdir)).stdout)
        assert state["htcondor"]["reachable"], state["htcondor"]
        groups = {g["batch_name"]: g for g in state["htcondor"]["by_batch_name"]}
        group = groups[f"COG-Pipeline-Crondor-{pattern}"]
        assert group["roles"] == ["crondor"], groups
        # Between ticks it shows as waiting, with the time of its next tick (starting or running at a minute
        # boundary: idle past its DeferralTime until the schedd starts it, then running).
        assert set(group["states"]) <= {"waiting for its next tick", "starting its tick", "running"}, group
        if "waiting for its next tick" in group["states"]:
            assert 0 < group["next_run"] - time.time() <= 61, group

        # Uploaded after start: only the Crondor's next tick can pick it up.
        rows = [("imagery/small/byte.tif", 1), (MISSING, 1)]
        seed.put_object(Bucket=INPUT_BUCKET, Key="pool-cron/late-raw.csv", Body=manifest(rows))
        uploaded = time.monotonic()

        def run_dir():
            dirs = sorted(pool_user.workdir.glob("workflow-run-*"))
            return dirs[0] if dirs else None

        out = wait_for(
            lambda: (lambda o: o if len(o) == 3 else None)(outcome_objects(seed, "pool-cron/late-")),
            CRON_WAIT,
            "the Crondor's tick to process the manifest uploaded after start",
            lambda: (
                tail(pool_user.workdir / "ticks.log")
                + "\n"
                + tail(pool_user.workdir / f"crondor_{cluster}.err")
                + "\n"
                + diagnostics(pool, run_dir())
            ),
        )
        processed_after = time.monotonic() - uploaded
        assert csv_rows(out["processed"]) == [["imagery/small/byte.tif", "1"]]
        assert csv_rows(out["failed"]) == [[MISSING, "1"]]
        # Let the run's driver finish (the aggregate has written the CSVs; it then cleans up and exits), so
        # that stop below removes an idle Crondor, not a driver in its last second.
        run_id = run_dir().name.removeprefix("workflow-run-")
        wait_for(
            lambda: not pool.query(run_constraint(run_id), ["ClusterId"]),
            60,
            "the Crondor's run to leave the queue",
            lambda: diagnostics(pool, run_dir()),
        )
        drivers = pool.history(
            f'{run_constraint(run_id)} && CogPipelineRole =?= "driver"', ["JobBatchName", "ExitCode"]
        )
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

    wait_for(
        lambda: not pool.query("CogPipeline =?= true", ["ClusterId"]),
        60,
        "the pipeline's jobs to leave the queue after stop",
        lambda: diagnostics(pool, None),
        interval=1,
    )
    assert pool.query(f"ClusterId == {cluster}") == []
    assert secret_places(pool, pool_user) == []
