"""What a driver job runs (``python -m cog_pipeline.htcondor supervise``): the driver command, the
hold policy kept on the run's jobs while it runs, and the removal of the run's leftovers afterwards.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from cog_pipeline.core.errors import PipelineError
from . import schedd
from .descriptions import REMOVED, ROLE_JOB, STILL_QUEUED, exception_text, role_constraint, run_constraint
from .settings import HoldPolicy, load_settings
import contextlib

log = logging.getLogger(__name__)


def apply_hold_policy(run_id: str, policy: HoldPolicy | None = None) -> int:
    """Put PeriodicRelease/PeriodicRemove on the run's jobs that lack them; returns how many jobs.

    The schedd then evaluates them itself, as it did the original DAG's submit commands, even if
    this driver dies.
    """
    policy = policy or load_settings().hold_policy
    conn = schedd.connect()
    constraint = (
        f"{run_constraint(run_id)} && {role_constraint(ROLE_JOB)} && CogPipelineHoldPolicy =!= true && {STILL_QUEUED}"
    )
    ads = schedd.query(conn, constraint, ["ClusterId", "ProcId"])
    ids = schedd.job_ids(ads)
    if not ids:
        return 0
    try:
        conn.edit(ids, "PeriodicRelease", policy.release_expression())
        conn.edit(ids, "PeriodicRemove", policy.remove_expression())
        conn.edit(ids, "CogPipelineHoldPolicy", "true")
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"could not set the hold policy on {', '.join(ids)}: {exception_text(exc)}") from None
    return len(ids)


def _watch_holds(run_id: str, policy: HoldPolicy, stop: threading.Event) -> None:
    while not stop.wait(policy.poll_seconds):
        try:
            count = apply_hold_policy(run_id, policy)
            if count:
                log.info("hold policy set on %d new job(s) of run %s", count, run_id)
        except PipelineError as exc:
            log.warning("%s", exc)


def own_job_id() -> tuple[int, int] | None:
    """(ClusterId, ProcId) of the HTCondor job this process runs in, from the starter's job ad; None outside one."""
    path = os.environ.get("_CONDOR_JOB_AD")
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    ids: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() in ("ClusterId", "ProcId"):
            with contextlib.suppress(ValueError):
                ids[name.strip()] = int(value.strip())
    return (ids["ClusterId"], ids["ProcId"]) if len(ids) == 2 else None


def driver_removed(job: tuple[int, int] | None) -> bool:
    """Whether the SIGTERM a driver got means "remove this run" rather than "the schedd is going away".

    condor_rm (and ``cog-pipeline stop``) marks the driver's job Removed before signalling it; a schedd
    shutdown or restart signals it while the job stays Running, and the schedd reconnects to the run's
    running batch jobs afterwards. Removing those then orphans their claims: seen on a real pool, the
    starter of a removed job kept its slot for the job lease (40 min) and the restarted driver's jobs
    idled behind it. Outside HTCondor (``job`` None: run by hand, Ctrl-C) a signal means stop.
    """
    if job is None:
        return True
    try:
        ads = schedd.query(schedd.connect(), f"ClusterId == {int(job[0])} && ProcId == {int(job[1])}", ["JobStatus"])
    except PipelineError:
        return False  # no schedd answering: it is shutting down; leave running jobs to be reconnected
    return not ads or any(int(ad.get("JobStatus", 0)) == REMOVED for ad in ads)


def supervise(run_id: str, command: list[str]) -> int:
    """Run ``command`` (the driver), keep the hold policy on the run's jobs, then remove leftovers.

    Leftovers are the run's idle and held jobs; running ones too only when the driver itself was
    removed (:func:`driver_removed`), not when the schedd shuts down or restarts.
    """
    try:
        policy: HoldPolicy | None = load_settings().hold_policy
    except PipelineError as exc:
        log.error("%s; running without the hold policy", exc)
        policy = None
    job = own_job_id()  # read now: the starter may delete its scratch directory before we are done
    terminated = threading.Event()
    received: list[int] = []
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: Any) -> None:
        terminated.set()
        received.append(signum)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)

    # The handlers before the driver starts: a signal in between would kill the supervisor and orphan the driver.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    child = subprocess.Popen(command, start_new_session=True)
    if received:  # signalled while the driver was starting: it gets the signal now
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, received[-1])
    stop = threading.Event()
    watcher = None
    if policy is not None:
        watcher = threading.Thread(target=_watch_holds, args=(run_id, policy, stop), name="hold-policy", daemon=True)
        watcher.start()
    code = child.wait()
    stop.set()
    if watcher is not None:
        watcher.join(timeout=10)
    include_running = False
    if terminated.is_set():
        include_running = driver_removed(job)
        log.info(
            "driver %s: %s",
            "removed" if include_running else "stopped by the schedd (shutdown, restart or eviction)",
            "removing the run's running jobs too" if include_running else "leaving the run's running jobs to finish",
        )
    try:
        removed = schedd.cleanup_run(run_id, include_running=include_running)
        if removed:
            log.info("removed %d job(s) of run %s left in the queue", removed, run_id)
    except PipelineError as exc:
        log.warning("%s", exc)
    return 128 + signal.SIGTERM if terminated.is_set() and code < 0 else code


#: The supervisor's messages, appended in the run's logs/ (HTCondor truncates driver_<cluster>.err
#: when a schedd restart re-runs the driver job, so the messages of the first start would be lost).
SUPERVISOR_LOG = "supervisor.log"


def append_log_to(path: Path) -> None:
    """Also append this process's log records to ``path`` when its directory exists (the run's logs/)."""
    if not path.parent.is_dir():
        return
    try:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError as exc:
        log.warning("cannot append to %s: %s", path, exc.strerror)
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s pid %(process)d: %(message)s"))
    logging.getLogger().addHandler(handler)
