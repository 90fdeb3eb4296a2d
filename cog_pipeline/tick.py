"""One trigger tick: resume this working directory's unfinished runs, claim new manifests, run them.

Claiming one version (ETag) of ``X-raw.csv`` (docs/reliability.md has the full argument):

1. create the claim marker ``.cog-pipeline/claims/X-raw.csv@<etag>`` with a conditional write
   (If-None-Match: *): one tick, on any host, gets it. A marker whose writer is dead (same host) or
   older than the claim lease (any host) is taken over; one this tick wrote itself (its response
   was lost and boto3 retried) is recognised by its token;
2. read the manifest pinned to that ETag (If-Match);
3. journal the claim in the run directory (the CSV and ``claims/<n>-<token>.json``, fsynced);
4. write ``X-processing-<TS>.csv`` (If-None-Match), tagged with the claim token and its owner;
5. delete ``X-raw.csv`` only if it is still that version (If-Match): **the commit point**;
6. delete the marker.

Before claiming, the tick checks once that the endpoint honours If-None-Match (a probe object):
it warns if it is ignored (claims are then exclusive per working directory only) and stops if it is
refused. A crash before 5 leaves ``X-raw.csv`` in place: the next tick rolls back the provisional
processing object and claims it again. A crash after 5 leaves a committed claim in the journal:
the next tick in this working directory writes the run's ``run.yaml`` from it and runs it.

Resume: every tick first looks at the run directories of its working directory (for the same
endpoint and input bucket). One that is unfinished, whose run lock is free, in which no process
works (and, for HTCondor runs, of which no job is queued) is resumed: Snakemake redoes what is
missing (finished images are skipped), then the final aggregate. After ``MAX_RESUMES`` resumes only
the aggregate runs, so every row is accounted for even if some image keeps killing its job.
A ``processing`` object whose run directory does not exist here is adopted into a new run
directory: at once if it was claimed from this working directory, after ``adopt_after`` seconds
without a heartbeat otherwise. Live runs refresh their processing objects (the heartbeat).
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import botocore.exceptions
import yaml

from . import s3
from .crash import crash_point
from .errors import PipelineError
from .manifest import batch_slices, parse_manifest
from .naming import (RUN_CONFIG, RUN_DIR_PREFIX, STATE_PREFIX, ManifestKeys, claim_marker_key, is_pipeline_object,
                     outcome_path, timestamp)

log = logging.getLogger(__name__)

S3_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)

#: A claim marker older than this is stale whoever wrote it; a claim is abandoned past half of it.
CLAIM_LEASE = 3600.0
#: A processing object claimed elsewhere is adopted after this long without a heartbeat.
ADOPT_AFTER = 6 * 3600.0
#: Live runs refresh their processing objects when older than this.
HEARTBEAT = 1800.0
#: Snakemake reruns of one run directory before only its aggregate is run.
MAX_RESUMES = 3
#: Free space needed in the working directory and the temp dir before anything is claimed.
MIN_FREE_BYTES = 64 * 1024 * 1024

RUN_LOCK = ".cog-pipeline-run.lock"
FINISHED = ".cog-pipeline-finished"
RESUMES = ".cog-pipeline-resumes"
CLAIMS_DIR = "claims"
PENDING_CONFIG = "claims/run-config.yaml"

CLAIM_META = "cog-pipeline-claim"
OWNER_META = "cog-pipeline-owner"
RUN_META = "cog-pipeline-run"
RAW_META = "cog-pipeline-raw-key"
RAW_ETAG_META = "cog-pipeline-raw-etag"
HEARTBEAT_META = "cog-pipeline-heartbeat"

PROCESSING_KEY = re.compile(r"^(?P<stem>.*)processing-(?P<ts>\d{8}-\d{6})\.csv$", re.DOTALL)


@dataclass(frozen=True)
class TickOptions:
    """Everything a tick needs; mirrors the command-line flags."""

    input_bucket: str
    output_bucket: str
    settings: s3.S3Settings = field(default_factory=s3.S3Settings)
    pattern: str = "*raw.csv"
    executor: str = "local"
    cores: int = 2
    dry_run: bool = False
    workdir: Path = field(default_factory=Path.cwd)
    #: Config values written into run.yaml (they win over config/config.yaml), e.g. batch_size, tmp_dir.
    run_overrides: dict[str, Any] = field(default_factory=dict)
    claim_lease: float = CLAIM_LEASE
    adopt_after: float = ADOPT_AFTER
    heartbeat: float = HEARTBEAT


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


def find_manifests(client: Any, bucket: str, pattern: str) -> list[dict[str, Any]]:
    """Objects whose full key matches ``pattern`` (fnmatch), excluding the pipeline's own objects."""
    return scan(client, bucket, pattern).matches


# ------------------------------------------------------------------------------------------ identity

def owner_id(workdir: Path) -> str:
    """Who claims: this host's working directory (ticks in one working directory take turns)."""
    return hashlib.sha256(f"{socket.gethostname()}\0{Path(workdir).resolve()}".encode()).hexdigest()[:16]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def _pid_alive(pid: int, start: str | None) -> bool:
    if Path("/proc/self/stat").exists():
        now = _proc_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_dead(record: dict[str, Any]) -> bool:
    """True when the process that wrote ``record`` ran on this host and is gone (or the host rebooted)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    if record.get("boot") and _boot_id() and record["boot"] != _boot_id():
        return True
    return not _pid_alive(record["pid"], record.get("start"))


# ------------------------------------------------------------------------------------------ markers

def _read_json_object(client: Any, bucket: str, key: str) -> tuple[dict[str, Any], str, float] | None:
    """(JSON body, ETag, age by the server's clock) of a small state object, None if it does not exist."""
    try:
        resp = client.get_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if s3.is_missing(exc):
            return None
        raise
    try:
        record = json.loads(resp["Body"].read())
    except ValueError:
        record = {}
    return (record if isinstance(record, dict) else {}), resp["ETag"], s3.server_age(resp)


def take_marker(client: Any, bucket: str, key: str, record: dict[str, Any],
                lease: float) -> tuple[str, dict[str, Any] | None] | None:
    """Create the marker ``key`` holding ``record``; returns (its ETag, the stale record it replaced or
    None), or None when a live claim holds it."""
    body = json.dumps(record).encode()
    stale = None
    for _ in range(3):
        try:
            return s3.put_bytes(client, bucket, key, body, if_none_match=True, content_type="application/json"), stale
        except botocore.exceptions.ClientError as exc:
            if not s3.is_precondition_failed(exc):
                raise
        held = _read_json_object(client, bucket, key)
        if held is None:
            continue  # released meanwhile: try again
        other, etag, age = held
        if other.get("token") == record["token"]:
            return etag, stale  # our own write: its response was lost and boto3 retried it
        if not (_holder_dead(other) or age > lease):
            return None
        log.warning("taking over a stale claim marker %s (written by host %s pid %s, %.0f s ago)", key,
                    other.get("host", "?"), other.get("pid", "?"), age)
        stale = other
        try:
            client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
        except botocore.exceptions.ClientError as exc:
            if not (s3.is_missing(exc) or s3.is_precondition_failed(exc)):
                raise
    return None


def release_marker(client: Any, bucket: str, key: str, etag: str) -> None:
    """Delete our marker (only if it is still ours); a failure only leaves a marker that goes stale."""
    try:
        client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
    except botocore.exceptions.ClientError as exc:
        if not (s3.is_missing(exc) or s3.is_precondition_failed(exc)):
            log.warning("could not delete claim marker %s: %s", key, s3.describe_error(exc))
    except botocore.exceptions.BotoCoreError as exc:
        log.warning("could not delete claim marker %s: %s", key, s3.describe_error(exc))


def _roll_back(client: Any, bucket: str, key: str | None, token: str | None) -> bool:
    """Delete the processing object ``key`` if claim ``token`` wrote it; True if it is gone now."""
    if not key or not token:
        return False
    try:
        head = s3.head(client, bucket, key)
        if head is None or head.get("Metadata", {}).get(CLAIM_META) != token:
            return head is None
        client.delete_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])
        log.info("rolled back the unfinished claim %s", key)
        return True
    except S3_ERRORS as exc:
        log.warning("could not roll back %s: %s (the next tick retries)", key, s3.describe_error(exc))
        return False


def _quoted(value: str, limit: int = 1024) -> str | None:
    text = urllib.parse.quote(value, safe="/")
    return text if len(text) <= limit else None


def processing_metadata(token: str, owner: str, run_name: str, raw_key: str, raw_etag: str) -> dict[str, str]:
    """User metadata of a processing object: who claimed it, for which run, from which raw version."""
    meta = {CLAIM_META: token, OWNER_META: owner, RUN_META: run_name, RAW_ETAG_META: raw_etag.strip('"'),
            HEARTBEAT_META: str(int(time.time()))}
    raw = _quoted(raw_key)
    if raw is not None:
        meta[RAW_META] = raw
    return meta


class ClaimConflict(Exception):
    """The processing key exists and another claim wrote it."""


def _put_processing(client: Any, bucket: str, key: str, data: bytes, meta: dict[str, str]) -> None:
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="text/csv", Metadata=meta, IfNoneMatch="*")
    except botocore.exceptions.ClientError as exc:
        if not s3.is_precondition_failed(exc):
            raise
        head = s3.head(client, bucket, key)
        if head is None or head.get("Metadata", {}).get(CLAIM_META) != meta[CLAIM_META]:
            raise ClaimConflict(f"{key} already exists (another claim in the same second)") from None
        # else: our own write, whose response was lost


# ------------------------------------------------------------------------------------------ claim

def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _journal(run_dir: Path, keys: ManifestKeys, etag: str, token: str, marker: str, data: bytes) -> Path:
    """Record a claim in the run directory before it is committed (what recovery reads after a crash)."""
    claims = run_dir / CLAIMS_DIR
    claims.mkdir(exist_ok=True)
    seq = len(list(claims.glob("*-*.json"))) + 1
    base = keys.processing.rpartition("/")[2]
    csv = f"manifests/{base}"
    if (run_dir / csv).exists():  # same base name in another folder: keep both
        csv = f"manifests/{seq:05d}-{base}"
    _write_synced(run_dir / csv, data)
    record = {"raw_key": keys.raw, "etag": etag, "processing_key": keys.processing, "stem": keys.stem,
              "timestamp": keys.ts, "token": token, "marker": marker, "csv": csv}
    path = claims / f"{seq:05d}-{token}.json"
    _write_synced(path, json.dumps(record, ensure_ascii=False).encode("utf-8"))
    return path


def _unjournal(run_dir: Path, journal: Path) -> None:
    try:
        record = json.loads(journal.read_text(encoding="utf-8"))
        (run_dir / record["csv"]).unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
    except (OSError, ValueError, KeyError):
        pass


def claim(client: Any, bucket: str, obj: dict[str, Any], keys: ManifestKeys, run_dir: Path,
          opts: TickOptions) -> bytes | None:
    """Claim one listed manifest into ``run_dir`` (journaled there); returns its bytes, or None if
    another tick has it or it changed."""
    workdir, lease = opts.workdir, opts.claim_lease
    etag = obj["ETag"]
    token = secrets.token_hex(8)
    marker = claim_marker_key(keys.raw, etag)
    record = {**_identity(), "owner": owner_id(workdir), "token": token, "claimed_as": keys.processing,
              "run": run_dir.name, "time": time.time()}
    taken = take_marker(client, bucket, marker, record, lease)
    if taken is None:
        log.info("%s is being claimed by another tick; skipping", keys.raw)
        return None
    marker_etag, stale = taken
    started = time.monotonic()
    crash_point("claim.marker")
    journal: Path | None = None
    provisional = committed = False
    try:
        try:
            data = s3.get_bytes(client, bucket, keys.raw, if_match=etag)
        except botocore.exceptions.ClientError as exc:
            if s3.is_missing(exc) or s3.is_precondition_failed(exc):
                log.info("%s changed or vanished since it was listed; skipping", keys.raw)
                return None
            raise
        crash_point("claim.downloaded")
        if stale:  # the stale claimant never committed (the raw manifest is still this version)
            _roll_back(client, bucket, stale.get("claimed_as"), stale.get("token"))
        journal = _journal(run_dir, keys, etag, token, marker, data)
        crash_point("claim.journaled")
        meta = processing_metadata(token, record["owner"], run_dir.name, keys.raw, etag)
        try:
            _put_processing(client, bucket, keys.processing, data, meta)
        except ClaimConflict as exc:
            log.warning("%s; %s is left for the next tick", exc, keys.raw)
            return None
        provisional = True
        crash_point("claim.processing")
        if time.monotonic() - started > lease / 2:
            log.warning("claiming %s took longer than half the claim lease; rolled back", keys.raw)
            return None
        try:
            client.delete_object(Bucket=bucket, Key=keys.raw, IfMatch=etag)
        except botocore.exceptions.ClientError as exc:
            if s3.is_precondition_failed(exc):
                log.info("%s was replaced since it was read; the new version is left for the next tick", keys.raw)
                return None
            if not s3.is_missing(exc):  # missing: our first delete succeeded and its answer was lost
                raise
        committed = True
        crash_point("claim.renamed")
        return data
    finally:
        if not committed:
            if provisional:
                _roll_back(client, bucket, keys.processing, token)
            if journal is not None:
                _unjournal(run_dir, journal)
        release_marker(client, bucket, marker, marker_etag)


# ------------------------------------------------------------------------------------------ run dirs

@contextmanager
def local_lock(workdir: Path) -> Iterator[None]:
    """Serialise ticks started in the same working directory on this host."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fh = open(workdir / ".cog-pipeline-tick.lock", "w")
    except OSError as exc:
        raise PipelineError(f"working directory {workdir} is not writable ({exc.strerror}); nothing was claimed") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RunLock:
    """An exclusive flock on a run directory, held by whoever drives it (released when it dies)."""

    def __init__(self, fh: Any):
        self.fh = fh

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock | None":
        """The lock, or None if a live process holds it."""
        fh = open(Path(run_dir) / RUN_LOCK, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(_identity()) + "\n")
        fh.flush()
        return cls(fh)

    def release(self) -> None:
        if not self.fh.closed:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


def new_run_dir(workdir: Path) -> tuple[str, Path]:
    """Create ``workflow-run-<TS>/`` (waiting for the next second if that name is taken)."""
    while True:
        ts = timestamp()
        run_dir = workdir / f"{RUN_DIR_PREFIX}{ts}"
        try:
            run_dir.mkdir(parents=True)
            return ts, run_dir
        except FileExistsError:
            time.sleep(0.2)
        except OSError as exc:
            raise PipelineError(f"cannot create a run directory in {workdir}: {exc.strerror}; "
                                "nothing was claimed") from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_config(opts: TickOptions, ts: str, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's config (no secret values: key *file* paths only)."""
    settings = opts.settings
    config = {
        "run_id": ts,
        "pattern": opts.pattern,
        "executor": opts.executor,
        "s3": {
            "endpoint_url": s3.normalize_endpoint(settings.endpoint_url),
            "region": settings.region,
            "input_bucket": opts.input_bucket,
            "output_bucket": opts.output_bucket,
            "access_key_file": str(Path(settings.access_key_file).resolve()) if settings.access_key_file else None,
            "secret_key_file": str(Path(settings.secret_key_file).resolve()) if settings.secret_key_file else None,
        },
        "manifests": manifests,
    }
    return _merge(config, opts.run_overrides) if opts.run_overrides else config


def write_run(run_dir: Path, config: dict[str, Any], manifest_bytes: dict[str, bytes]) -> None:
    """Write run.yaml and the claimed manifests into the run directory."""
    (run_dir / "manifests").mkdir(exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    for manifest in config["manifests"]:
        path = run_dir / manifest["csv"]
        if not (path.is_file() and path.read_bytes() == manifest_bytes[manifest["id"]]):
            path.write_bytes(manifest_bytes[manifest["id"]])
    _write_synced(run_dir / RUN_CONFIG, yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode("utf-8"))


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _finished(run_dir: Path, config: dict[str, Any]) -> bool:
    return all(outcome_path(run_dir, m["id"]).is_file() for m in config.get("manifests", []))


def _same_source(config: dict[str, Any], opts: TickOptions) -> bool:
    s3cfg = config.get("s3") or {}
    return (s3cfg.get("input_bucket") == opts.input_bucket
            and s3cfg.get("endpoint_url") == s3.normalize_endpoint(opts.settings.endpoint_url))


def _process_cwds() -> set[str]:
    """Working directories of every process we can see (Linux), other than this one."""
    cwds: set[str] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return cwds
    me = str(os.getpid())
    for name in entries:
        if name.isdigit() and name != me:
            try:
                cwds.add(os.readlink(f"/proc/{name}/cwd"))
            except OSError:
                pass
    return cwds


def _busy(run_dir: Path, cwds: set[str]) -> bool:
    """True when some process (an orphaned Snakemake or job) still works inside the run directory."""
    root = str(Path(run_dir).resolve())
    return any(c == root or c.startswith(root + os.sep) for c in cwds)


def _queued_on_pool(run_id: str) -> bool:
    """True when the pool still has a job of this run, or when that cannot be known."""
    try:
        from . import htcondor

        constraint = f"{htcondor.run_constraint(run_id)} && JobStatus =!= {htcondor.REMOVED} " \
                     f"&& JobStatus =!= {htcondor.COMPLETED}"
        return bool(htcondor._query(htcondor._schedd(), constraint, ["ClusterId"]))
    except Exception as exc:  # noqa: BLE001 - unknown means "do not touch"
        log.info("cannot ask the pool about run %s (%s); not resuming it now", run_id, exc)
        return True


def _repair(client: Any, opts: TickOptions, run_dir: Path) -> dict[str, Any] | None:
    """A run directory left without run.yaml by a crash while claiming: keep its committed claims, roll
    back the others; returns the config written (None when nothing was committed)."""
    pending = _read_yaml(run_dir / PENDING_CONFIG)
    journals = sorted((run_dir / CLAIMS_DIR).glob("*-*.json"))
    if pending is None or not journals:
        return None
    bucket = opts.input_bucket
    manifests, data = [], {}
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
                ours = not _roll_back(client, bucket, rec["processing_key"], rec["token"])
        held = _read_json_object(client, bucket, rec["marker"])
        if held is not None and held[0].get("token") == rec["token"]:
            release_marker(client, bucket, rec["marker"], held[1])
        if not ours:
            log.info("%s: the claim of %s was not committed; it is left for claiming", run_dir.name, rec["raw_key"])
            continue
        mid = f"m{len(manifests) + 1}"
        data[mid] = (run_dir / rec["csv"]).read_bytes()
        manifests.append({"id": mid, "csv": rec["csv"], "key": rec["processing_key"], "raw_key": rec["raw_key"],
                          "stem": rec["stem"], "timestamp": rec["timestamp"]})
        log.info("%s: recovered the committed claim %s -> %s", run_dir.name, rec["raw_key"], rec["processing_key"])
    if not manifests:
        return None
    pending["manifests"] = manifests
    write_run(run_dir, pending, data)
    return pending


def _heartbeat(client: Any, bucket: str, run_dir: Path, config: dict[str, Any], every: float) -> None:
    """Refresh the processing objects of a live run that are older than ``every`` (a conditional rewrite:
    a processing object deleted meanwhile is not brought back)."""
    for manifest in config.get("manifests", []):
        if outcome_path(run_dir, manifest["id"]).is_file():
            continue
        try:
            head = s3.head(client, bucket, manifest["key"])
            if head is None or s3.server_age(head) < every:
                continue
            meta = dict(head.get("Metadata", {}))
            meta[HEARTBEAT_META] = str(int(time.time()))
            client.put_object(Bucket=bucket, Key=manifest["key"], Body=(run_dir / manifest["csv"]).read_bytes(),
                              ContentType="text/csv", Metadata=meta, IfMatch=head["ETag"])
        except (OSError, *S3_ERRORS) as exc:
            log.info("heartbeat of %s skipped: %s", manifest["key"], s3.describe_error(exc))


def recover(client: Any, opts: TickOptions) -> list[tuple[Path, RunLock]]:
    """Unfinished run directories of this working directory that nobody drives any more, each locked
    for this tick; also repairs the ones a crash left while claiming and refreshes live ones."""
    todo: list[tuple[Path, RunLock]] = []
    cwds: set[str] | None = None
    for run_dir in sorted(p for p in opts.workdir.glob(f"{RUN_DIR_PREFIX}*") if p.is_dir()):
        if (run_dir / FINISHED).exists():
            continue
        config = _read_yaml(run_dir / RUN_CONFIG) or _read_yaml(run_dir / PENDING_CONFIG)
        if config is not None and not _same_source(config, opts):
            continue  # another pipeline's run: its own ticks look after it
        try:
            lock = RunLock.acquire(run_dir)
        except OSError as exc:
            log.warning("cannot lock %s: %s", run_dir, exc.strerror)
            continue
        if lock is None:
            if config and (run_dir / RUN_CONFIG).exists():
                _heartbeat(client, opts.input_bucket, run_dir, config, opts.heartbeat)
            continue
        keep = False
        try:
            if config is None:
                if not any(run_dir.iterdir()) or {p.name for p in run_dir.iterdir()} <= {RUN_LOCK, "claims",
                                                                                       "manifests", "logs"}:
                    if not list(run_dir.glob(f"{CLAIMS_DIR}/*.json")):
                        shutil.rmtree(run_dir, ignore_errors=True)
                continue
            cwds = _process_cwds() if cwds is None else cwds
            pool_run = config.get("executor") == "htcondor"
            if _busy(run_dir, cwds) or (pool_run and _queued_on_pool(str(config.get("run_id")))):
                if (run_dir / RUN_CONFIG).exists():
                    _heartbeat(client, opts.input_bucket, run_dir, config, opts.heartbeat)
                continue
            if not (run_dir / RUN_CONFIG).exists():
                config = _repair(client, opts, run_dir)
                if config is None:
                    log.info("%s: a tick died there before committing any claim; removed", run_dir.name)
                    shutil.rmtree(run_dir, ignore_errors=True)
                    continue
            if _finished(run_dir, config):
                (run_dir / FINISHED).touch()
                continue
            log.warning("%s is unfinished and nothing drives it any more: resuming it", run_dir.name)
            todo.append((run_dir, lock))
            keep = True
        except S3_ERRORS as exc:
            log.error("cannot recover %s now: %s (the next tick retries)", run_dir.name, s3.describe_error(exc))
        finally:
            if not keep:
                lock.release()
    return todo


def _orphans(client: Any, opts: TickOptions, processing: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
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
                if (opts.workdir / run_name / FINISHED).exists():
                    log.info("%s belongs to a finished run; deleting the leftover", key)
                    client.delete_object(Bucket=opts.input_bucket, Key=key, IfMatch=head["ETag"])
                continue  # its run directory is here: recover() looks after it
            raw_key = urllib.parse.unquote(meta[RAW_META]) if RAW_META in meta else \
                PROCESSING_KEY.match(key).group("stem") + "raw.csv"
            if not fnmatch.fnmatchcase(raw_key, opts.pattern):
                continue  # another pipeline's manifest
            if not mine and s3.server_age(head) < opts.adopt_after:
                continue
            if RAW_ETAG_META in meta:
                raw = s3.head(client, opts.input_bucket, raw_key)
                if raw is not None and raw["ETag"].strip('"') == meta[RAW_ETAG_META]:
                    _roll_back(client, opts.input_bucket, key, meta.get(CLAIM_META))  # never committed
                    continue
            out.append((obj, head))
        except S3_ERRORS as exc:
            log.warning("cannot check %s now: %s", key, s3.describe_error(exc))
    return out


def adopt(client: Any, opts: TickOptions, obj: dict, head: dict, run_dir: Path) -> tuple[ManifestKeys, bytes] | None:
    """Take over an orphaned processing object: it becomes a manifest of ``run_dir`` (same timestamp,
    so the same outcome keys)."""
    key, bucket = obj["Key"], opts.input_bucket
    match = PROCESSING_KEY.match(key)
    meta = dict(head.get("Metadata", {}))
    raw_key = urllib.parse.unquote(meta[RAW_META]) if RAW_META in meta else match.group("stem") + "raw.csv"
    keys = ManifestKeys(raw=raw_key, stem=match.group("stem"), ts=match.group("ts"))
    token = secrets.token_hex(8)
    marker = claim_marker_key(key, head["ETag"])
    record = {**_identity(), "owner": owner_id(opts.workdir), "token": token, "adopting": key, "time": time.time()}
    taken = take_marker(client, bucket, marker, record, opts.claim_lease)
    if taken is None:
        return None
    try:
        try:
            data = s3.get_bytes(client, bucket, key, if_match=head["ETag"])
            meta.update(processing_metadata(token, record["owner"], run_dir.name, raw_key, meta.get(RAW_ETAG_META, "")))
            client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="text/csv", Metadata=meta,
                              IfMatch=head["ETag"])
        except botocore.exceptions.ClientError as exc:
            if s3.is_missing(exc) or s3.is_precondition_failed(exc):
                return None  # finished or changed meanwhile
            raise
        log.warning("adopted %s (claimed %s, no live run found for it)", key,
                    "from this working directory" if head.get("Metadata", {}).get(OWNER_META) == record["owner"]
                    else "elsewhere, no heartbeat for %.0f s" % s3.server_age(head))
        return keys, data
    finally:
        release_marker(client, bucket, marker, taken[0])


# ------------------------------------------------------------------------------------------ the tick

def connect(opts: TickOptions) -> Any:
    """A client after checking that both buckets exist and are reachable (else PipelineError)."""
    client = s3.make_client(opts.settings)
    s3.check_bucket(client, opts.input_bucket, "input")
    s3.check_bucket(client, opts.output_bucket, "output")
    return client


def check_local_resources(opts: TickOptions) -> None:
    """Before claiming anything for the local executor: the working directory and the temp dir are
    writable and have room (PipelineError otherwise)."""
    from . import driver

    tmp_dir = _merge(driver.default_config(), opts.run_overrides).get("tmp_dir") or tempfile.gettempdir()
    for what, path in (("working directory", Path(opts.workdir)), ("temp dir (tmp_dir)", Path(tmp_dir))):
        try:
            if what == "working directory":
                path.mkdir(parents=True, exist_ok=True)
            os.rmdir(tempfile.mkdtemp(prefix=".cog-pipeline-probe-", dir=path))
            free = shutil.disk_usage(path).free
        except OSError as exc:
            raise PipelineError(f"{what} {path} is not writable ({exc.strerror}); nothing was claimed") from None
        if free < MIN_FREE_BYTES:
            raise PipelineError(f"only {free // 2**20} MiB free in the {what} {path} (at least "
                                f"{MIN_FREE_BYTES // 2**20} MiB needed); nothing was claimed")


def check_conditional_writes(client: Any, bucket: str) -> bool:
    """Whether the endpoint honours If-None-Match on PutObject, which claiming across hosts relies on:
    True if so; False (and a warning) if it silently ignores it; PipelineError if it refuses it."""
    key = f"{STATE_PREFIX}probe/{secrets.token_hex(8)}"
    try:
        for attempt in (1, 2):
            try:
                s3.put_bytes(client, bucket, key, b"probe", if_none_match=True, content_type="text/plain")
            except botocore.exceptions.ClientError as exc:
                if s3.is_precondition_failed(exc):
                    if attempt == 2:
                        return True
                    continue  # a retried first write that had landed
                if s3.error_code(exc) in {"NotImplemented", "501", "InvalidArgument", "InvalidRequest", "400"}:
                    raise PipelineError(f"the S3 endpoint refuses conditional writes (If-None-Match on PutObject: "
                                        f"{s3.describe_error(exc)}); claiming needs them; nothing was claimed") from None
                raise
        log.warning("the S3 endpoint ignores conditional writes (If-None-Match): claims are exclusive only between "
                    "ticks of one working directory; run a single tick (one Crondor) per input bucket")
        return False
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except S3_ERRORS:
            pass


def _has_unfinished_runs(workdir: Path) -> bool:
    return any(p.is_dir() and not (p / FINISHED).exists() for p in workdir.glob(f"{RUN_DIR_PREFIX}*"))


def tick(opts: TickOptions) -> TickResult:
    """Run one tick; returns once the outcome CSVs are written (local executor) or the drivers are queued."""
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
        return plan(client, opts, listing.matches)
    if not (listing.matches or listing.processing or _has_unfinished_runs(opts.workdir)):
        print(f"No new manifest matches '{opts.pattern}' in bucket '{opts.input_bucket}'; nothing to do.")
        return TickResult()
    if opts.executor == "htcondor":
        from . import htcondor

        htcondor.check_schedd()  # before claiming: a claimed manifest needs a driver to finish it
    else:
        check_local_resources(opts)
    if listing.matches or listing.processing:
        try:
            check_conditional_writes(client, opts.input_bucket)
        except S3_ERRORS as exc:
            raise PipelineError(f"cannot write to input bucket '{opts.input_bucket}': {s3.describe_error(exc)}; "
                                "nothing was claimed") from None

    new: tuple[Path, RunLock, dict[str, Any]] | None = None
    with local_lock(opts.workdir):
        resumable = recover(client, opts)
        orphans = _orphans(client, opts, listing.processing)
        if listing.matches or orphans:
            new = _claim_new(client, opts, listing.matches, orphans)
    if not resumable and new is None:
        if not listing.matches:
            print(f"No new manifest matches '{opts.pattern}' in bucket '{opts.input_bucket}'; nothing to do.")
        else:
            print("Every matching manifest was claimed by another tick; nothing to do.")
        return TickResult()

    result = TickResult(run_dir=new[0] if new else None, resumed=[d for d, _ in resumable])
    for run_dir, lock in resumable:
        print(f"Resuming {run_dir}")
        _absorb(result, _drive_locked(run_dir, lock, opts, resumed=True))
    if new is not None:
        run_dir, lock, _config = new
        print(f"Run directory: {run_dir}")
        _absorb(result, _drive_locked(run_dir, lock, opts, resumed=False))
    return result


def _absorb(result: TickResult, part: TickResult) -> None:
    result.manifests.extend(part.manifests)
    result.exit_code = max(result.exit_code, part.exit_code)


def _claim_new(client: Any, opts: TickOptions, matches: list[dict[str, Any]],
               orphans: list[tuple[dict, dict]]) -> tuple[Path, RunLock, dict[str, Any]] | None:
    """Create this tick's run directory, adopt orphans and claim new manifests into it (under the local lock)."""
    ts, run_dir = new_run_dir(opts.workdir)
    lock = RunLock.acquire(run_dir)
    assert lock is not None
    _write_synced(run_dir / PENDING_CONFIG, yaml.safe_dump(run_config(opts, ts, []), sort_keys=False,
                                                            allow_unicode=True).encode("utf-8"))
    crash_point("tick.run-dir")
    manifests: list[dict[str, Any]] = []
    data: dict[str, bytes] = {}

    def add(keys: ManifestKeys, body: bytes, csv: str) -> None:
        mid = f"m{len(manifests) + 1}"
        data[mid] = body
        manifests.append({"id": mid, "csv": csv, "key": keys.processing, "raw_key": keys.raw, "stem": keys.stem,
                          "timestamp": keys.ts})

    for obj, head in orphans:
        try:
            adopted = adopt(client, opts, obj, head, run_dir)
        except S3_ERRORS as exc:
            log.error("could not adopt %s: %s (the next tick retries)", obj["Key"], s3.describe_error(exc))
            continue
        if adopted is not None:
            keys, body = adopted
            csv = f"manifests/{len(manifests) + 1:05d}-adopted-{keys.processing.rpartition('/')[2]}"
            _write_synced(run_dir / csv, body)
            add(keys, body, csv)
            print(f"Adopted {keys.processing}")
    for obj in matches:
        keys = ManifestKeys.for_raw(obj["Key"], ts)
        try:
            body = claim(client, opts.input_bucket, obj, keys, run_dir, opts)
        except S3_ERRORS as exc:
            log.error("could not claim %s: %s (left as is; the next tick retries)", keys.raw, s3.describe_error(exc))
            continue
        if body is None:
            continue
        journals = sorted((run_dir / CLAIMS_DIR).glob("*-*.json"))
        add(keys, body, json.loads(journals[-1].read_text(encoding="utf-8"))["csv"])
        print(f"Claimed {keys.raw} -> {keys.processing}")
        crash_point("claim.done")
    if not manifests:
        lock.release()
        shutil.rmtree(run_dir, ignore_errors=True)
        return None
    config = run_config(opts, ts, manifests)
    write_run(run_dir, config, data)
    crash_point("tick.run-written")
    return run_dir, lock, config


@contextmanager
def _heartbeat_thread(opts: TickOptions, run_dir: Path, config: dict[str, Any]) -> Iterator[None]:
    """While a run is driven in the foreground, keep its processing objects fresh."""
    stop = threading.Event()

    def beat() -> None:
        client = s3.make_client(opts.settings)
        while not stop.wait(opts.heartbeat):
            _heartbeat(client, opts.input_bucket, run_dir, config, opts.heartbeat)

    thread = threading.Thread(target=beat, name="cog-pipeline-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def _drive_locked(run_dir: Path, lock: RunLock, opts: TickOptions, resumed: bool) -> TickResult:
    """Launch (or resume) a run directory whose run lock we hold; release it afterwards."""
    from . import driver

    try:
        config = driver.load_run_config(run_dir)
        if resumed:
            shutil.rmtree(run_dir / ".snakemake" / "locks", ignore_errors=True)  # left by a dead Snakemake
            count_file = run_dir / RESUMES
            count = int(count_file.read_text() or 0) + 1 if count_file.is_file() else 1
            count_file.write_text(str(count))
            if count > MAX_RESUMES:
                log.warning("%s was resumed %d times already: writing its outcome with what is done", run_dir.name,
                            count - 1)
                code, summaries = driver.finish(run_dir)
                result = TickResult(run_dir=run_dir, manifests=summaries, exit_code=code)
            else:
                with _heartbeat_thread(opts, run_dir, config):  # on the executor it was started with
                    result = launch(run_dir, config, dataclasses.replace(opts, executor=config.get("executor",
                                                                                                    opts.executor)))
        else:
            with _heartbeat_thread(opts, run_dir, config):
                result = launch(run_dir, config, opts)
        if _finished(run_dir, config):
            (run_dir / FINISHED).touch()
        return result
    except PipelineError as exc:
        log.error("%s: %s (the next tick resumes it)", run_dir.name, exc)
        return TickResult(run_dir=run_dir, exit_code=1)
    finally:
        lock.release()


def launch(run_dir: Path, config: dict[str, Any], opts: TickOptions) -> TickResult:
    """Start the workflow for a prepared run directory with the chosen executor."""
    from . import driver

    crash_point("tick.launch")
    if opts.executor == "htcondor":
        from . import htcondor

        argv = driver.drive_argv(run_dir, executor="htcondor")
        cluster = htcondor.submit_driver(run_dir, opts.pattern, config["run_id"], argv)
        print(f"Submitted the run's driver as HTCondor cluster {cluster} (batch name COG-Pipeline-DAG-{opts.pattern})")
        return TickResult(run_dir=run_dir)
    code, summaries = driver.drive(run_dir, executor=opts.executor, cores=opts.cores)
    return TickResult(run_dir=run_dir, manifests=summaries, exit_code=code)


def plan(client: Any, opts: TickOptions, matches: list[dict[str, Any]]) -> TickResult:
    """Dry run: show what would be claimed and the workflow's job plan; change nothing remote."""
    from . import driver

    batch_size = int(_merge(driver.default_config(), opts.run_overrides)["batch_size"])
    ts = timestamp()
    with tempfile.TemporaryDirectory(prefix="cog-pipeline-plan-") as tmp:
        run_dir = Path(tmp)
        manifests, data = [], {}
        for i, obj in enumerate(matches, start=1):
            keys = ManifestKeys.for_raw(obj["Key"], ts)
            body = s3.get_bytes(client, opts.input_bucket, keys.raw)
            parsed = parse_manifest(body)
            print(f"Would claim {keys.raw} -> {keys.processing}: {len(parsed.entries)} rows to convert in "
                  f"{len(batch_slices(len(parsed.entries), batch_size))} batches, "
                  f"{len(parsed.rejected)} rejected rows")
            for rejected in parsed.rejected:
                print(f"  rejected: {rejected.reason}")
            for note in parsed.notes:
                print(f"  note: {note}")
            mid = f"m{i}"
            data[mid] = body
            manifests.append({"id": mid, "csv": f"manifests/{i:05d}-{keys.processing.rpartition('/')[2]}",
                              "key": keys.processing, "raw_key": keys.raw, "stem": keys.stem, "timestamp": ts})
        write_run(run_dir, run_config(opts, ts, manifests), data)
        code = driver.dry_run(run_dir, executor=opts.executor, cores=opts.cores)
    print("Dry run: nothing was renamed or written.")
    return TickResult(exit_code=code)
