"""Talking to the schedd: queue the Crondor and drivers, list and remove the pipeline's jobs.

Every function here raises :class:`~cog_pipeline.core.errors.PipelineError` with :data:`NO_SCHEDD` when
no schedd answers (the command line prints it without a traceback).
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Iterable

from cog_pipeline.core.errors import PipelineError
from .descriptions import (
    CRONDOR_BATCH_PREFIX,
    DRIVER_BATCH_PREFIX,
    HELD,
    IDLE,
    REMOVED,
    ROLE_CRONDOR,
    ROLE_DRIVER,
    RUNNING,
    STILL_QUEUED,
    SUSPENDED,
    TRANSFERRING,
    bindings,
    check_pattern,
    classad_literal,
    crondor_submit,
    driver_submit,
    exception_text,
    pattern_constraint,
    role_constraint,
    run_constraint,
)
from .settings import load_settings, software_plan
from .staging import stage_workflow

if TYPE_CHECKING:  # pragma: no cover - typing only
    import htcondor2

log = logging.getLogger(__name__)

NO_SCHEDD = "No HTCondor schedd reachable (is this an access point? is CONDOR_CONFIG set?)"


def connect() -> Any:
    """The local schedd (``htcondor2.Schedd``)."""
    htcondor2 = bindings()
    try:
        return htcondor2.Schedd()
    except Exception as exc:  # noqa: BLE001 - the bindings raise several exception types
        raise PipelineError(f"{NO_SCHEDD}: {exception_text(exc)}") from None


def check_schedd() -> None:
    """Raise PipelineError unless a schedd answers (call before claiming work meant for the pool)."""
    query(connect(), "false", ["ClusterId"])


def query(schedd: Any, constraint: str, projection: list[str]) -> list[Any]:
    """Job ads of the queue matching ``constraint``, with the ``projection`` attributes."""
    try:
        return list(schedd.query(constraint=constraint, projection=projection))
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"{NO_SCHEDD}: query failed: {exception_text(exc)}") from None


JOB_STATUS = {1: "idle", 2: "running", 3: "removed", 4: "completed", 5: "held", 6: "transferring", 7: "suspended"}


#: Status shown for a Crondor between ticks: HTCondor keeps a deferred job Running while its starter
#: waits for ``DeferralTime`` (seen on a pool), which would read as "a tick is running".
WAITING = "waiting for its next tick"
#: Status shown for a Crondor whose tick is due but not started yet: idle past its ``DeferralTime``, in the
#: moments before the schedd starts it (seen on a pool at a minute boundary).
STARTING = "starting its tick"


def _job_status(ad: Any, now: float) -> tuple[str, int | None]:
    """(status text, next start as epoch seconds or None) of a job ad."""
    status = JOB_STATUS.get(int(ad.get("JobStatus", 0)), "unknown")
    try:
        deferral = int(ad.get("DeferralTime"))
    except (TypeError, ValueError):
        return status, None
    if status in ("idle", "running") and deferral > now:
        return WAITING, deferral
    if status == "idle":
        return STARTING, None
    return status, None


def pipeline_jobs() -> list[dict[str, Any]]:
    """This pipeline's queued jobs (any pattern): cluster, batch name, role, run, status, hold reason,
    and for a Crondor between ticks the time of its next one (``next_run``)."""
    projection = [
        "ClusterId",
        "ProcId",
        "JobBatchName",
        "CogPipelineRole",
        "CogPipelineRun",
        "JobStatus",
        "HoldReason",
        "QDate",
        "DeferralTime",
    ]
    ads = query(connect(), "CogPipeline =?= true", projection)
    now = time.time()
    jobs = []
    for ad in ads:
        status, next_run = _job_status(ad, now)
        jobs.append(
            {
                "cluster": int(ad.get("ClusterId", 0)),
                "batch_name": str(ad.get("JobBatchName", "")),
                "role": str(ad.get("CogPipelineRole", "")),
                "run": str(ad.get("CogPipelineRun", "")),
                "status": status,
                "next_run": next_run,
                "hold_reason": str(ad.get("HoldReason", "")),
                "queued": int(ad.get("QDate", 0)),
            }
        )
    return jobs


def job_ids(ads: Iterable[Any]) -> list[str]:
    """``"cluster.proc"`` ids of job ads, as the schedd's actions take them."""
    return [f"{int(ad['ClusterId'])}.{int(ad['ProcId'])}" for ad in ads]


def _remove(schedd: Any, constraint: str) -> int:
    ids = job_ids(query(schedd, f"({constraint}) && JobStatus =!= {REMOVED}", ["ClusterId", "ProcId"]))
    if not ids:
        return 0
    htcondor2 = bindings()
    try:
        result = schedd.act(htcondor2.JobAction.Remove, ids)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"could not remove jobs {', '.join(ids)}: {exception_text(exc)}") from None
    try:
        return int(result["TotalSuccess"])
    except (KeyError, TypeError, ValueError):
        return len(ids)


def run_has_jobs(run_id: str) -> bool:
    """Whether the queue still holds a job of the run (its driver or a batch job) not removed or completed."""
    constraint = f"{run_constraint(run_id)} && {STILL_QUEUED}"
    return bool(query(connect(), constraint, ["ClusterId"]))


def submit(description: htcondor2.Submit) -> int:
    """Queue ``description``; returns its cluster id."""
    schedd = connect()
    try:
        result = schedd.submit(description)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"HTCondor refused the submission: {exception_text(exc)}") from None
    return int(result.cluster())


def start_crondor(
    *, tick_argv: list[str], pattern: str, workdir: Path, every_minutes: int = 15, max_running: int | None = None
) -> int:
    """Submit the Crondor for ``pattern`` (one per pattern); returns its cluster id."""
    description = crondor_submit(
        tick_argv=tick_argv, pattern=pattern, every_minutes=every_minutes, workdir=workdir, max_running=max_running
    )
    software_plan(load_settings().software)  # a broken settings file fails now, not at every tick
    schedd = connect()
    constraint = f"{pattern_constraint(pattern)} && {role_constraint(ROLE_CRONDOR)} && JobStatus =!= {REMOVED}"
    existing = query(schedd, constraint, ["ClusterId"])
    if existing:
        clusters = ", ".join(str(int(ad["ClusterId"])) for ad in existing)
        raise PipelineError(
            f"a Crondor for pattern {pattern!r} is already queued (cluster {clusters}); "
            f"stop it first: cog-pipeline stop -p {shlex.quote(pattern)}"
        )
    return submit(description)


def stop_pipeline(pattern: str) -> int:
    """Remove the Crondor, the drivers and every job of the pipeline watching ``pattern``; returns how many."""
    check_pattern(pattern)
    mine = (
        f"({pattern_constraint(pattern)}) || JobBatchName =?= {classad_literal(CRONDOR_BATCH_PREFIX + pattern)}"
        f" || JobBatchName =?= {classad_literal(DRIVER_BATCH_PREFIX + pattern)}"
    )
    schedd = connect()
    removed = 0
    # Crondor first (no new tick), then drivers (no new submissions), then whatever they queued.
    crondors = f"{role_constraint(ROLE_CRONDOR)} || JobBatchName =?= {classad_literal(CRONDOR_BATCH_PREFIX + pattern)}"
    drivers = f"{role_constraint(ROLE_DRIVER)} || JobBatchName =?= {classad_literal(DRIVER_BATCH_PREFIX + pattern)}"
    for role in (crondors, drivers, "true"):
        removed += _remove(schedd, f"({mine}) && ({role})")
    return removed


def cleanup_run(run_id: str, *, include_running: bool = False) -> int:
    """Remove the run's jobs left idle or held (also running ones if ``include_running``); returns how many."""
    states = [IDLE, HELD] + ([RUNNING, TRANSFERRING, SUSPENDED] if include_running else [])
    status = " || ".join(f"JobStatus == {s}" for s in states)
    constraint = f"{run_constraint(run_id)} && CogPipelineRole =!= {classad_literal(ROLE_DRIVER)} && ({status})"
    return _remove(connect(), constraint)


def submit_driver(run_dir: Path, pattern: str, run_id: str, drive_argv: list[str]) -> int:
    """Stage the workflow into ``run_dir`` and queue its driver (at most one per run); returns the cluster id."""
    run_dir = Path(run_dir).resolve()
    settings = load_settings()
    stage_workflow(run_dir)
    software_plan(settings.software)  # a missing archive or image fails in the tick, not in every job
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    description = driver_submit(run_dir=run_dir, pattern=pattern, run_id=run_id, drive_argv=drive_argv)
    schedd = connect()
    existing = query(
        schedd, f"{run_constraint(run_id)} && {role_constraint(ROLE_DRIVER)} && {STILL_QUEUED}", ["ClusterId"]
    )
    if existing:
        cluster = int(existing[0]["ClusterId"])
        log.warning("run %s already has a driver (cluster %d); not submitting another", run_id, cluster)
        return cluster
    return submit(description)
