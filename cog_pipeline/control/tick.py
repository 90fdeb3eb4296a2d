"""One trigger tick: resume this working directory's unfinished runs, claim new manifests, run them.

A tick lists the input bucket once (``scan``), checks that it can do its job (``preflight``), then,
under the working directory's lock, picks up unfinished runs and orphaned processing objects
(``recovery``), claims new manifests into a new run directory (``claims``, ``rundirs``) and drives
each run: Snakemake with the local executor, or a driver job on HTCondor (``launch``). A run resumed
more than ``MAX_RESUMES`` times only gets its aggregate, so every row is accounted for even if some
image keeps killing its job. ``plan`` is the dry run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cog_pipeline.control import tickslog
from cog_pipeline.control.claims import Claim, claim
from cog_pipeline.control.options import TickOptions
from cog_pipeline.control.preflight import check_endpoint, check_local_resources, connect
from cog_pipeline.control.recovery import adopt, find_orphans, heartbeat_while_driven, recover
from cog_pipeline.control.rundirs import (
    RUN_LOCK,
    RunLock,
    local_lock,
    new_run_dir,
    run_config,
    unfinished_runs_exist,
    write_pending,
    write_run,
)
from cog_pipeline.core.crash import crash_point
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import PROCESSING_KEY, STATE_PREFIX, ManifestKeys, is_pipeline_object, plural, timestamp
from cog_pipeline.core.rundir import ClaimedManifest, RunDir, RunState
from cog_pipeline.storage import s3
from cog_pipeline.storage.endpoint import Semantics
from cog_pipeline.storage.s3 import S3_ERRORS
from cog_pipeline.work.manifest import batch_slices, parse_manifest

__all__ = [
    "MAX_RESUMES",
    "Listing",
    "TickResult",
    "launch",
    "plan",
    "scan",
    "tick",
    # defined elsewhere, imported from here by cli, demo, status, bench and tests (bench/tick_with.py
    # replaces tick.run_config, which _claim_new and plan look up here):
    "RUN_LOCK",
    "RunLock",
    "TickOptions",
    "connect",
    "run_config",
    "write_run",
]

log = logging.getLogger(__name__)

#: Snakemake reruns of one run directory before only its aggregate is run.
MAX_RESUMES = 3


@dataclass
class TickResult:
    """What a tick did: its new run directory (None if it claimed nothing) and per-manifest summaries."""

    run_dir: Path | None = None
    manifests: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int = 0
    resumed: list[Path] = field(default_factory=list)


@dataclass
class Listing:
    """One listing of the input bucket: new manifests and processing objects."""

    matches: list[dict[str, Any]] = field(default_factory=list)
    processing: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ listing


def scan(client: Any, bucket: str, pattern: str) -> Listing:
    """New manifests matching ``pattern`` (fnmatch, full key; never the pipeline's own objects) and
    every ``processing`` object."""
    listing = Listing()
    for obj in s3.iter_objects(client, bucket):
        key = obj["Key"]
        if key.startswith(STATE_PREFIX):
            continue
        if PROCESSING_KEY.match(key):
            listing.processing.append(obj)
        elif fnmatch.fnmatchcase(key, pattern) and not is_pipeline_object(key):
            listing.matches.append(obj)
    return listing


# ------------------------------------------------------------------------------------------ the tick


def tick(opts: TickOptions) -> TickResult:
    """Run one tick; returns once the outcome CSVs are written (local executor) or the drivers are queued."""
    config = run_config(opts, timestamp(), [])  # a bad config stops the tick here, before anything is claimed
    client = connect(opts)
    try:
        listing = scan(client, opts.input_bucket, opts.pattern)
    except S3_ERRORS as exc:
        raise PipelineError(f"cannot list input bucket '{opts.input_bucket}': {s3.describe_error(exc)}") from None
    crash_point("tick.listed")
    if opts.dry_run:
        if not listing.matches:
            print(f"No new manifest matches '{opts.pattern}' in bucket '{opts.input_bucket}'; nothing to do.")
            return TickResult()
        return plan(client, opts, listing.matches, config)
    if not (listing.matches or listing.processing or unfinished_runs_exist(opts.workdir)):
        print(f"No new manifest matches '{opts.pattern}' in bucket '{opts.input_bucket}'; nothing to do.")
        return TickResult()
    if opts.executor == "htcondor":
        from cog_pipeline import htcondor

        htcondor.check_schedd()  # before claiming: a claimed manifest needs a driver to finish it
    else:
        check_local_resources(opts, config)
    sem = check_endpoint(client, opts)

    new: tuple[RunDir, RunLock] | None = None
    with local_lock(opts.workdir):
        resumable = recover(client, opts, sem)
        orphans = find_orphans(client, opts, sem, listing.processing)
        if listing.matches or orphans:
            new = _claim_new(client, opts, sem, listing.matches, orphans)
    if not resumable and new is None:
        if not listing.matches:
            print(f"No new manifest matches '{opts.pattern}' in bucket '{opts.input_bucket}'; nothing to do.")
        else:
            print("Every matching manifest was claimed by another tick; nothing to do.")
        return TickResult()

    result = TickResult(run_dir=new[0].path if new else None, resumed=[run.path for run, _ in resumable])
    for run, lock in resumable:
        _announce(opts.workdir, f"Resuming {run.path}")
        _absorb(result, _drive_locked(run, lock, opts, sem, resumed=True))
    if new is not None:
        run, lock = new
        _announce(opts.workdir, f"Run directory: {run.path}")
        _absorb(result, _drive_locked(run, lock, opts, sem, resumed=False))
    return result


def _announce(workdir: Path, message: str) -> None:
    """Print ``message`` and append it, timestamped, to the working directory's ticks.log."""
    print(message)
    tickslog.append(workdir, f"pid {os.getpid()}: {message}")


def _absorb(result: TickResult, part: TickResult) -> None:
    result.manifests.extend(part.manifests)
    result.exit_code = max(result.exit_code, part.exit_code)


def _claim_new(
    client: Any, opts: TickOptions, sem: Semantics, matches: list[dict[str, Any]], orphans: list[tuple[dict, dict]]
) -> tuple[RunDir, RunLock] | None:
    """Create this tick's run directory, adopt orphans and claim new manifests into it (under the local lock)."""
    ts, run = new_run_dir(opts.workdir)
    lock = RunLock.acquire(run)
    assert lock is not None
    write_pending(run, run_config(opts, ts, []))
    crash_point("tick.run-dir")
    claims: list[Claim] = []

    for obj, head in orphans:
        csv = f"manifests/{len(claims) + 1:05d}-adopted-{obj['Key'].rpartition('/')[2]}"
        try:
            adopted = adopt(client, opts, sem, obj, head, run, csv)
        except S3_ERRORS as exc:
            log.error("could not adopt %s: %s (the next tick retries)", obj["Key"], s3.describe_error(exc))
            continue
        if adopted is not None:
            claims.append(adopted)
            _announce(opts.workdir, f"Adopted {adopted.keys.processing}")
    for obj in matches:
        keys = ManifestKeys.for_raw(obj["Key"], ts)
        try:
            claimed = claim(client, opts.input_bucket, obj, keys, run, opts, sem)
        except S3_ERRORS as exc:
            log.error("could not claim %s: %s (left as is; the next tick retries)", keys.raw, s3.describe_error(exc))
            continue
        if claimed is None:
            continue
        claims.append(claimed)
        _announce(opts.workdir, f"Claimed {keys.raw} -> {keys.processing}")
        crash_point("claim.done")
    if not claims:
        lock.release()
        shutil.rmtree(run.path, ignore_errors=True)
        return None
    manifests = [c.manifest(f"m{i}") for i, c in enumerate(claims, start=1)]
    write_run(run, run_config(opts, ts, manifests), {m.id: c.body for m, c in zip(manifests, claims, strict=True)})
    crash_point("tick.run-written")
    return run, lock


def _drive_locked(run: RunDir, lock: RunLock, opts: TickOptions, sem: Semantics, resumed: bool) -> TickResult:
    """Launch (or resume) a run directory whose run lock we hold; release it afterwards."""
    from cog_pipeline.control import driver

    try:
        config = run.config
        if resumed:
            shutil.rmtree(run.path / ".snakemake" / "locks", ignore_errors=True)  # left by a dead Snakemake
            count = run.count_resume()
            if count > MAX_RESUMES:
                log.warning(
                    "%s was resumed %d times already: writing its outcome with what is done", run.name, count - 1
                )
                code, summaries = driver.finish(run.path)
                result = TickResult(run_dir=run.path, manifests=summaries, exit_code=code)
            else:
                with heartbeat_while_driven(opts, sem, run):  # on the executor it was started with
                    result = launch(run, dataclasses.replace(opts, executor=config.executor))
        else:
            with heartbeat_while_driven(opts, sem, run):
                result = launch(run, opts)
        if run.state is RunState.AGGREGATED:
            run.mark_finished()
        return result
    except PipelineError as exc:
        log.error("%s: %s (the next tick resumes it)", run.name, exc)
        return TickResult(run_dir=run.path, exit_code=1)
    finally:
        lock.release()


def launch(run: RunDir, opts: TickOptions) -> TickResult:
    """Start the workflow for a prepared run directory with the chosen executor."""
    from cog_pipeline.control import driver

    crash_point("tick.launch")
    if opts.executor == "htcondor":
        from cog_pipeline import htcondor

        argv = driver.drive_argv(run.path, executor="htcondor")
        cluster = htcondor.submit_driver(run.path, opts.pattern, run.config.run_id, argv)
        _announce(
            opts.workdir,
            f"Submitted the run's driver as HTCondor cluster {cluster} (batch name COG-Pipeline-DAG-{opts.pattern})",
        )
        return TickResult(run_dir=run.path)
    code, summaries = driver.drive(run.path, executor=opts.executor, cores=opts.cores)
    return TickResult(run_dir=run.path, manifests=summaries, exit_code=code)


def plan(client: Any, opts: TickOptions, matches: list[dict[str, Any]], config: dict[str, Any]) -> TickResult:
    """Dry run: show what would be claimed and the workflow's job plan; change nothing remote."""
    from cog_pipeline.control import driver

    batch_size = int(config["batch_size"])
    ts = timestamp()
    with tempfile.TemporaryDirectory(prefix="cog-pipeline-plan-") as tmp:
        run = RunDir(tmp)
        manifests: list[ClaimedManifest] = []
        data: dict[str, bytes] = {}
        for i, obj in enumerate(matches, start=1):
            keys = ManifestKeys.for_raw(obj["Key"], ts)
            body = s3.get_bytes(client, opts.input_bucket, keys.raw)
            parsed = parse_manifest(body)
            batches = len(batch_slices(len(parsed.entries), batch_size))
            print(
                f"Would claim {keys.raw} -> {keys.processing}: {plural(len(parsed.entries), 'row')} to convert "
                f"in {plural(batches, 'batch', 'batches')}, {plural(len(parsed.rejected), 'rejected row')}"
            )
            for rejected in parsed.rejected:
                print(f"  rejected: {rejected.reason}")
            for note in parsed.notes:
                print(f"  note: {note}")
            if parsed.entries:  # the inputs (one listing) and the delivery QA, as the run would do them
                from cog_pipeline.work import qa_step  # here: rasterio (image headers), which only a plan needs

                verdict = qa_step.run_qa(config, f"m{i}", [e.key for e in parsed.entries], client)
                print(
                    "\n".join(
                        qa_step.summary_lines(verdict, parsed.entries, opts.input_bucket, qa_step.qa_enabled(config))
                    )
                )
            manifest = ClaimedManifest.of(f"m{i}", f"manifests/{i:05d}-{keys.processing.rpartition('/')[2]}", keys)
            data[manifest.id] = body
            manifests.append(manifest)
        write_run(run, run_config(opts, ts, manifests), data)
        code = driver.dry_run(run.path, executor=opts.executor, cores=opts.cores)
    print("Dry run: nothing was renamed or written.")
    return TickResult(exit_code=code)
