"""Nothing claimed is forgotten: resume the unfinished run directories of a working directory, adopt
processing objects whose run directory is gone, and keep live runs' processing objects fresh.

Every tick first looks at the run directories of its working directory (for the same endpoint and
input bucket). One that is unfinished, whose run lock is free, in which no process works (and, for
HTCondor runs, of which no job is queued) is resumed. A run directory a crash left while claiming
(no ``run.yaml``) is repaired from its claim journal. A ``processing`` object whose run directory
does not exist here is adopted into a new run directory: at once if it was claimed from this working
directory, after ``adopt_after`` seconds without a heartbeat otherwise. Live runs refresh their
processing objects (the heartbeat).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import botocore.exceptions

from cog_pipeline.control.claims import (
    CLAIM_META,
    HEARTBEAT_META,
    OWNER_META,
    RAW_ETAG_META,
    RUN_META,
    Claim,
    Marker,
    delete_version,
    processing_metadata,
    raw_key_of,
    read_state_object,
    release_marker,
    rewrite_if_unchanged,
    roll_back,
    take_marker,
)
from cog_pipeline.control.options import TickOptions
from cog_pipeline.control.rundirs import RUN_LOCK, RunLock, write_run, write_synced
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import PROCESSING_KEY, RUN_DIR_PREFIX, ManifestKeys, claim_marker_key
from cog_pipeline.core.processes import busy, owner_id, process_cwds, process_identity
from cog_pipeline.core.rundir import CLAIMS_DIR, ClaimedManifest, RunConfig, RunDir, RunState, summary_finished
from cog_pipeline.storage import s3
from cog_pipeline.storage.endpoint import Semantics, remove_versions
from cog_pipeline.storage.s3 import S3_ERRORS

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ heartbeat


def heartbeat(client: Any, bucket: str, run: RunDir, every: float, sem: Semantics) -> None:
    """Refresh the processing objects of a live run that are older than ``every`` (a conditional rewrite:
    a processing object deleted meanwhile is not brought back). A heartbeat that cannot be written is a
    WARNING, also kept in the run directory for ``status``."""
    problems: list[str] = []
    written = 0
    for manifest in run.manifests:
        if summary_finished(run.outcome(manifest.id)):
            continue
        key = manifest.key
        try:
            head = s3.head(client, bucket, key)
            if head is None or s3.server_age(head) < every:
                continue
            if sem.rewrite == "none":
                problems.append(
                    f"heartbeat of {key} not sent: the server cannot do If-Match on PutObject "
                    f"({sem.caps.put_if_match}) and the bucket is not versioned"
                )
                continue
            meta = dict(head.get("Metadata", {}))
            meta[HEARTBEAT_META] = str(int(time.time()))
            if rewrite_if_unchanged(client, bucket, key, head, run.manifest_csv(manifest).read_bytes(), meta, sem):
                written += 1
        except (OSError, *S3_ERRORS) as exc:
            if isinstance(exc, botocore.exceptions.ClientError) and s3.is_missing(exc):
                continue  # finished meanwhile
            problems.append(f"heartbeat of {key} failed: {s3.describe_error(exc)}")
    warning_file = run.heartbeat_warning
    for text in problems:
        log.warning("%s: %s", run.name, text)
    try:
        if problems:
            warning_file.parent.mkdir(exist_ok=True)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            warning_file.write_text("".join(f"{stamp} {text}\n" for text in problems), encoding="utf-8")
        elif written:
            warning_file.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def heartbeat_while_driven(opts: TickOptions, sem: Semantics, run: RunDir) -> Iterator[None]:
    """While a run is driven in the foreground, keep its processing objects fresh (a thread)."""
    stop = threading.Event()

    def beat() -> None:
        client = s3.make_client(opts.settings)
        while not stop.wait(opts.heartbeat):
            heartbeat(client, opts.input_bucket, run, opts.heartbeat, sem)

    thread = threading.Thread(target=beat, name="cog-pipeline-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


# ------------------------------------------------------------------------------------------ resume


def _same_source(config: RunConfig, opts: TickOptions) -> bool:
    return config.s3.get("input_bucket") == opts.input_bucket and config.endpoint_url == s3.normalize_endpoint(
        opts.settings.endpoint_url
    )


def _queued_on_pool(run_id: str) -> bool:
    """True when the pool still has a job of this run, or when that cannot be known."""
    try:
        from cog_pipeline import htcondor

        return htcondor.run_has_jobs(run_id)
    except Exception as exc:  # noqa: BLE001 - unknown means "do not touch"
        log.info("cannot ask the pool about run %s (%s); not resuming it now", run_id, exc)
        return True


def repair(client: Any, opts: TickOptions, run: RunDir) -> RunConfig | None:
    """A run directory left without run.yaml by a crash while claiming: keep its committed claims, roll
    back the others; returns the config written (None when nothing was committed)."""
    pending = run.pending_config
    journals = run.journal_entries()
    if pending is None or not journals:
        return None
    bucket = opts.input_bucket
    manifests: list[ClaimedManifest] = []
    data: dict[str, bytes] = {}
    for path in journals:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        head = s3.head(client, bucket, rec["processing_key"])
        ours = head is not None and head.get("Metadata", {}).get(CLAIM_META) == rec["token"]
        if ours:
            raw = s3.head(client, bucket, rec["raw_key"])
            if raw is not None and raw["ETag"] == rec["etag"]:  # never committed
                ours = not roll_back(client, bucket, rec["processing_key"], rec["token"])
        held = read_state_object(client, bucket, rec["marker"])
        if held is not None and held.record.get("token") == rec["token"]:
            release_marker(client, bucket, Marker(rec["marker"], held.etag, held.version_id))
        if not ours:
            log.info("%s: the claim of %s was not committed; it is left for claiming", run.name, rec["raw_key"])
            continue
        manifest = ClaimedManifest(
            id=f"m{len(manifests) + 1}",
            csv=rec["csv"],
            key=rec["processing_key"],
            raw_key=rec["raw_key"],
            stem=rec["stem"],
            timestamp=rec["timestamp"],
        )
        data[manifest.id] = run.manifest_csv(manifest).read_bytes()
        manifests.append(manifest)
        log.info("%s: recovered the committed claim %s -> %s", run.name, rec["raw_key"], rec["processing_key"])
    if not manifests:
        return None
    write_run(run, {**pending.data, "manifests": [m.to_dict() for m in manifests]}, data)
    return run.config


def _leftover(run: RunDir) -> bool:
    """A run directory a tick made and left before writing any config or journal entry (safe to remove)."""
    names = {p.name for p in run.path.iterdir()}
    return names <= {RUN_LOCK, CLAIMS_DIR, "manifests", "logs"} and not run.journal_entries()


def recover(client: Any, opts: TickOptions, sem: Semantics) -> list[tuple[RunDir, RunLock]]:
    """Unfinished run directories of this working directory that nobody drives any more, each locked
    for this tick; also repairs the ones a crash left while claiming and refreshes live ones."""
    todo: list[tuple[RunDir, RunLock]] = []
    cwds: set[str] | None = None
    for run in RunDir.all_in(opts.workdir):
        state = run.state
        if state is RunState.FINISHED:
            continue
        config = run.config_or_pending()
        if config is not None and not _same_source(config, opts):
            continue  # another pipeline's run: its own ticks look after it
        try:
            lock = RunLock.acquire(run)
        except OSError as exc:
            log.warning("cannot lock %s: %s", run.path, exc.strerror)
            continue
        if lock is None:
            if state in (RunState.CONFIGURED, RunState.AGGREGATED):
                heartbeat(client, opts.input_bucket, run, opts.heartbeat, sem)
            continue
        keep = False
        try:
            if state is RunState.INVALID:
                log.warning("%s is left alone: %s", run.name, run.problem())
                continue
            if config is None:  # nothing written yet (or an unreadable pending config)
                if _leftover(run):
                    shutil.rmtree(run.path, ignore_errors=True)
                continue
            cwds = process_cwds() if cwds is None else cwds
            pool_run = config.executor == "htcondor"
            if busy(run.path, cwds) or (pool_run and _queued_on_pool(config.run_id)):
                if state is not RunState.CLAIMING:
                    heartbeat(client, opts.input_bucket, run, opts.heartbeat, sem)
                continue
            if state is RunState.CLAIMING and repair(client, opts, run) is None:
                log.info("%s: a tick died there before committing any claim; removed", run.name)
                shutil.rmtree(run.path, ignore_errors=True)
                continue
            if run.state is RunState.AGGREGATED:
                run.mark_finished()
                continue
            log.warning("%s is unfinished and nothing drives it any more: resuming it", run.name)
            todo.append((run, lock))
            keep = True
        except S3_ERRORS as exc:
            log.error("cannot recover %s now: %s (the next tick retries)", run.name, s3.describe_error(exc))
        finally:
            if not keep:
                lock.release()
    return todo


# ------------------------------------------------------------------------------------------ adopt


def find_orphans(
    client: Any, opts: TickOptions, sem: Semantics, processing: list[dict[str, Any]]
) -> list[tuple[dict, dict]]:
    """Processing objects (with their HEAD) that no run directory of this working directory covers and
    that are ours to adopt; leftovers of finished or uncommitted claims are deleted on the way."""
    owner = owner_id(opts.workdir)
    out = []
    for obj in processing:
        key = obj["Key"]
        try:
            head = s3.head(client, opts.input_bucket, key)
            if head is None:
                continue
            meta = head.get("Metadata", {})
            mine = meta.get(OWNER_META) == owner
            run_name = meta.get(RUN_META, "")
            if mine and run_name.startswith(RUN_DIR_PREFIX) and (opts.workdir / run_name).is_dir():
                if RunDir(opts.workdir / run_name).state is RunState.FINISHED:
                    log.info("%s belongs to a finished run; deleting the leftover", key)
                    if sem.versioned:
                        remove_versions(client, opts.input_bucket, key)
                    else:
                        delete_version(client, opts.input_bucket, key, head["ETag"], None)
                continue  # its run directory is here: recover() looks after it
            raw_key = raw_key_of(key, meta)
            if not fnmatch.fnmatchcase(raw_key, opts.pattern):
                continue  # another pipeline's manifest
            if not mine and s3.server_age(head) < opts.adopt_after:
                continue
            if RAW_ETAG_META in meta:
                raw = s3.head(client, opts.input_bucket, raw_key)
                if raw is not None and raw["ETag"].strip('"') == meta[RAW_ETAG_META]:
                    roll_back(client, opts.input_bucket, key, meta.get(CLAIM_META))  # never committed
                    continue
            out.append((obj, head))
        except S3_ERRORS as exc:
            log.warning("cannot check %s now: %s", key, s3.describe_error(exc))
    return out


def adopt(client: Any, opts: TickOptions, sem: Semantics, obj: dict, head: dict, run: RunDir, csv: str) -> Claim | None:
    """Take over an orphaned processing object: it becomes a manifest of ``run`` (same timestamp, so the
    same outcome keys), its CSV written at ``csv`` in the run directory."""
    key, bucket = obj["Key"], opts.input_bucket
    match = PROCESSING_KEY.match(key)
    if match is None:
        raise PipelineError(f"{key} is not a processing object (<stem>processing-<TS>.csv)")
    meta = dict(head.get("Metadata", {}))
    raw_key = raw_key_of(key, meta)
    keys = ManifestKeys(raw=raw_key, stem=match.group("stem"), ts=match.group("ts"))
    token = secrets.token_hex(8)
    marker = claim_marker_key(key, head["ETag"])
    record = {
        **process_identity(),
        "owner": owner_id(opts.workdir),
        "token": token,
        "adopting": key,
        "time": time.time(),
    }
    taken = take_marker(client, bucket, marker, record, opts.claim_lease, sem)
    if taken is None:
        return None
    try:
        try:
            data = s3.get_bytes(client, bucket, key, if_match=head["ETag"])
            meta.update(processing_metadata(token, record["owner"], run.name, raw_key, meta.get(RAW_ETAG_META, "")))
            if sem.rewrite == "none":  # the server cannot: a HEAD right before the rewrite instead
                log.warning(
                    "adopting %s without If-Match on PutObject (%s): checked by a HEAD first",
                    key,
                    sem.caps.put_if_match,
                )
                now = s3.head(client, bucket, key)
                if now is None or now["ETag"] != head["ETag"]:
                    return None
                client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="text/csv", Metadata=meta)
            elif not rewrite_if_unchanged(client, bucket, key, head, data, meta, sem):
                return None  # finished or changed meanwhile
        except botocore.exceptions.ClientError as exc:
            if s3.is_missing(exc) or s3.is_precondition_failed(exc):
                return None  # finished or changed meanwhile
            raise
        log.warning(
            "adopted %s (claimed %s, no live run found for it)",
            key,
            "from this working directory"
            if head.get("Metadata", {}).get(OWNER_META) == record["owner"]
            else f"elsewhere, no heartbeat for {s3.server_age(head):.0f} s",
        )
        write_synced(run.path / csv, data)
        return Claim(keys, csv, data)
    finally:
        release_marker(client, bucket, taken[0])
