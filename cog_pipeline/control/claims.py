"""Claiming a manifest in S3: claim markers, the processing object and its metadata, the local claim
journal, and rolling back a claim that was not committed.

Claiming one version (ETag) of ``X-raw.csv`` (docs/reliability.md has the full argument):

1. create the claim marker ``.cog-pipeline/claims/X-raw.csv@<etag>`` with a conditional write
   (If-None-Match: *): one tick, on any host, gets it. A marker whose writer is dead (same host) or
   older than the claim lease (any host) is taken over; one this tick wrote itself (its response
   was lost and boto3 retried) is recognised by its token;
2. read the manifest pinned to that ETag (If-Match);
3. journal the claim in the run directory (the CSV and ``claims/<n>-<token>.json``, fsynced);
4. write ``X-processing-<TS>.csv`` (If-None-Match), tagged with the claim token and its owner;
5. delete exactly that version of ``X-raw.csv``: **the commit point** (by its VersionId on a versioned
   bucket, else with If-Match, else, where the server ignores If-Match and the operator opted in,
   right after a HEAD shows it unchanged: ``endpoint.Semantics.commit``);
6. delete the marker (on a versioned bucket, its version: no noncurrent versions pile up).

A crash before 5 leaves ``X-raw.csv`` in place: the next tick rolls back the provisional processing
object and claims it again. A crash after 5 leaves a committed claim in the journal, which
``recovery`` turns into the run's ``run.yaml``.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions

from cog_pipeline.control.options import TickOptions
from cog_pipeline.control.rundirs import write_synced
from cog_pipeline.core.crash import crash_point
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import PROCESSING_KEY, ManifestKeys, claim_marker_key
from cog_pipeline.core.processes import holder_dead, owner_id, process_identity
from cog_pipeline.core.rundir import ClaimedManifest, RunDir
from cog_pipeline.storage import endpoint, s3
from cog_pipeline.storage.endpoint import Semantics
from cog_pipeline.storage.s3 import S3_ERRORS

log = logging.getLogger(__name__)

# User metadata of a processing object.
CLAIM_META = "cog-pipeline-claim"
OWNER_META = "cog-pipeline-owner"
RUN_META = "cog-pipeline-run"
RAW_META = "cog-pipeline-raw-key"
RAW_ETAG_META = "cog-pipeline-raw-etag"
HEARTBEAT_META = "cog-pipeline-heartbeat"


# ------------------------------------------------------------------------------------------ markers


@dataclass(frozen=True)
class StateObject:
    """A small JSON state object as read: its record, ETag, VersionId (None if unversioned) and age."""

    record: dict[str, Any]
    etag: str
    version_id: str | None
    age: float


@dataclass(frozen=True)
class Marker:
    """A claim marker this tick wrote: where it is and which version of it is ours."""

    key: str
    etag: str
    version_id: str | None = None


def read_state_object(client: Any, bucket: str, key: str) -> StateObject | None:
    """A small state object (its JSON body, ETag, version, age by the server's clock); None if missing."""
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
    return StateObject(
        record if isinstance(record, dict) else {}, resp["ETag"], s3.version_id(resp), s3.server_age(resp)
    )


def delete_version(client: Any, bucket: str, key: str, etag: str, version_id: str | None) -> None:
    """Delete one version of the pipeline's own object: by VersionId when known (exact, and no delete
    marker is left), else conditionally on its ETag (a server ignoring If-Match deletes it anyway)."""
    try:
        if version_id:
            client.delete_object(Bucket=bucket, Key=key, VersionId=version_id)
        else:
            client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
    except botocore.exceptions.ClientError as exc:
        if not (s3.is_missing(exc) or s3.is_precondition_failed(exc)):
            raise


def take_marker(
    client: Any, bucket: str, key: str, record: dict[str, Any], lease: float, sem: Semantics
) -> tuple[Marker, dict[str, Any] | None] | None:
    """Create the marker ``key`` holding ``record``; returns (the marker, the stale record it replaced or
    None), or None when a live claim holds it."""
    if sem.markers == "oldest-version":
        return _take_oldest_version(client, bucket, key, record, lease)
    body = json.dumps(record).encode()
    stale = None
    for _ in range(3):
        try:
            resp = client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
            return Marker(key, resp["ETag"], s3.version_id(resp)), stale
        except botocore.exceptions.ClientError as exc:
            if not s3.is_precondition_failed(exc):
                raise
        held = read_state_object(client, bucket, key)
        if held is None:
            continue  # released meanwhile: try again
        other = held.record
        if other.get("token") == record["token"]:
            return Marker(key, held.etag, held.version_id), stale  # ours: its answer was lost, boto3 retried
        if not _stale(key, other, held.age, lease):
            return None
        stale = other
        delete_version(client, bucket, key, held.etag, held.version_id)
    return None


def _stale(key: str, other: dict[str, Any], age: float, lease: float) -> bool:
    """Whether the marker ``other`` may be taken over (its writer died, or it outlived the lease)."""
    if not (holder_dead(other) or age > lease):
        return False
    log.warning(
        "taking over a stale claim marker %s (written by host %s pid %s, %.0f s ago)",
        key,
        other.get("host", "?"),
        other.get("pid", "?"),
        age,
    )
    return True


def _take_oldest_version(
    client: Any, bucket: str, key: str, record: dict[str, Any], lease: float
) -> tuple[Marker, dict[str, Any] | None] | None:
    """The marker on a versioned bucket whose server ignores If-None-Match: every claimant writes its own
    version, then lists the key's versions (newest first); the oldest live version holds the marker. A
    claimant that does not hold it removes its version and backs off; a stale holder's version is removed."""
    resp = client.put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode(), ContentType="application/json")
    mine = Marker(key, resp["ETag"], s3.version_id(resp))
    stale = None
    for _ in range(3):
        page = client.list_object_versions(Bucket=bucket, Prefix=key)
        versions = [v for v in page.get("Versions", []) if v["Key"] == key]
        if not versions or versions[-1]["VersionId"] == mine.version_id:
            return mine, stale
        oldest = versions[-1]
        try:
            held = client.get_object(Bucket=bucket, Key=key, VersionId=oldest["VersionId"])
            other = json.loads(held["Body"].read())
        except botocore.exceptions.ClientError as exc:
            if s3.is_missing(exc):
                continue  # released meanwhile: list again
            raise
        except ValueError:
            other = {}
        if isinstance(other, dict) and other.get("token") == record["token"]:
            # boto3 retried our write after a lost answer: the oldest one is ours too
            delete_version(client, bucket, key, mine.etag, mine.version_id)
            return Marker(key, oldest["ETag"], oldest["VersionId"]), stale
        if not _stale(key, other if isinstance(other, dict) else {}, s3.server_age(held), lease):
            delete_version(client, bucket, key, mine.etag, mine.version_id)
            return None
        stale = other
        delete_version(client, bucket, key, oldest["ETag"], oldest["VersionId"])
    delete_version(client, bucket, key, mine.etag, mine.version_id)
    return None


def rewrite_if_unchanged(
    client: Any, bucket: str, key: str, head: dict[str, Any], body: bytes, metadata: dict[str, str], sem: Semantics
) -> bool:
    """Rewrite the pipeline's processing file ``key`` only if it is still the object ``head`` describes
    (heartbeats, adoption): True if rewritten, False if it changed or was deleted meanwhile. How depends on
    the server (``Semantics.rewrite``); on a versioned bucket the replaced version is removed."""
    old_version = s3.version_id(head)
    if sem.rewrite == "if-match":
        try:
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType="text/csv",
                Metadata=metadata,
                IfMatch=sem.put_etag(head["ETag"]),
            )
        except botocore.exceptions.ClientError as exc:
            if s3.is_missing(exc) or s3.is_precondition_failed(exc):
                return False
            raise
    elif sem.rewrite == "version-check":
        resp = client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="text/csv", Metadata=metadata)
        page = client.list_object_versions(Bucket=bucket, Prefix=key)
        deleted = any(m["Key"] == key for m in page.get("DeleteMarkers", []))
        still = any(v["Key"] == key and v["VersionId"] == old_version for v in page.get("Versions", []))
        if deleted or not still:  # deleted (or replaced) meanwhile: take our write back
            delete_version(client, bucket, key, resp["ETag"], s3.version_id(resp))
            return False
    else:
        raise PipelineError(
            f"cannot rewrite {key} conditionally on this server (If-Match on PutObject is "
            f"{sem.caps.put_if_match}, the bucket is not versioned)"
        )
    if old_version:
        delete_version(client, bucket, key, head["ETag"], old_version)
    return True


def release_marker(client: Any, bucket: str, marker: Marker) -> None:
    """Delete our marker (only our version of it); a failure only leaves a marker that goes stale."""
    try:
        delete_version(client, bucket, marker.key, marker.etag, marker.version_id)
    except S3_ERRORS as exc:
        log.warning("could not delete claim marker %s: %s", marker.key, s3.describe_error(exc))


# ------------------------------------------------------------------------------------------ processing objects


def roll_back(client: Any, bucket: str, key: str | None, token: str | None) -> bool:
    """Delete the processing object ``key`` if claim ``token`` wrote it; True if it is gone now."""
    if not key or not token:
        return False
    try:
        head = s3.head(client, bucket, key)
        if head is None or head.get("Metadata", {}).get(CLAIM_META) != token:
            return head is None
        delete_version(client, bucket, key, head["ETag"], s3.version_id(head))
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
    meta = {
        CLAIM_META: token,
        OWNER_META: owner,
        RUN_META: run_name,
        RAW_ETAG_META: raw_etag.strip('"'),
        HEARTBEAT_META: str(int(time.time())),
    }
    raw = _quoted(raw_key)
    if raw is not None:
        meta[RAW_META] = raw
    return meta


def raw_key_of(processing_key: str, meta: dict[str, str]) -> str:
    """The raw manifest a processing object was claimed from (its metadata, else its name)."""
    if RAW_META in meta:
        return urllib.parse.unquote(meta[RAW_META])
    match = PROCESSING_KEY.match(processing_key)
    if match is None:
        raise PipelineError(f"{processing_key} is not a processing object (<stem>processing-<TS>.csv)")
    return match.group("stem") + "raw.csv"


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


# ------------------------------------------------------------------------------------------ journal


@dataclass(frozen=True)
class Claim:
    """A committed claim: the manifest's keys, its bytes as claimed and where the run directory keeps them."""

    keys: ManifestKeys
    csv: str  #: the claimed CSV, relative to the run directory
    body: bytes
    journal: Path | None = None  #: its claim journal entry (None for an adopted processing object)

    def manifest(self, manifest_id: str) -> ClaimedManifest:
        """The run config's entry for this claim under ``manifest_id``."""
        return ClaimedManifest.of(manifest_id, self.csv, self.keys)


def journal_claim(run: RunDir, keys: ManifestKeys, etag: str, token: str, marker: str, data: bytes) -> tuple[Path, str]:
    """Record a claim in the run directory before it is committed (what recovery reads after a crash);
    returns the journal entry and the claimed CSV's path relative to the run directory."""
    run.claims_dir.mkdir(exist_ok=True)
    seq = len(run.journal_entries()) + 1
    base = keys.processing.rpartition("/")[2]
    csv = f"manifests/{base}"
    if (run.path / csv).exists():  # same base name in another folder: keep both
        csv = f"manifests/{seq:05d}-{base}"
    write_synced(run.path / csv, data)
    record = {
        "raw_key": keys.raw,
        "etag": etag,
        "processing_key": keys.processing,
        "stem": keys.stem,
        "timestamp": keys.ts,
        "token": token,
        "marker": marker,
        "csv": csv,
    }
    path = run.claims_dir / f"{seq:05d}-{token}.json"
    write_synced(path, json.dumps(record, ensure_ascii=False).encode("utf-8"))
    return path, csv


def _unjournal(run: RunDir, journal: Path) -> None:
    try:
        record = json.loads(journal.read_text(encoding="utf-8"))
        (run.path / record["csv"]).unlink(missing_ok=True)
        journal.unlink(missing_ok=True)
    except (OSError, ValueError, KeyError):
        pass


# ------------------------------------------------------------------------------------------ claim


def claim(
    client: Any, bucket: str, obj: dict[str, Any], keys: ManifestKeys, run: RunDir, opts: TickOptions, sem: Semantics
) -> Claim | None:
    """Claim one listed manifest into ``run`` (journaled there); returns the committed claim, or None if
    another tick has it or it changed."""
    workdir, lease = opts.workdir, opts.claim_lease
    etag = obj["ETag"]
    token = secrets.token_hex(8)
    marker = claim_marker_key(keys.raw, etag)
    record = {
        **process_identity(),
        "owner": owner_id(workdir),
        "token": token,
        "claimed_as": keys.processing,
        "run": run.name,
        "time": time.time(),
    }
    taken = take_marker(client, bucket, marker, record, lease, sem)
    if taken is None:
        log.info("%s is being claimed by another tick; skipping", keys.raw)
        return None
    held, stale = taken
    started = time.monotonic()
    crash_point("claim.marker")
    journal: Path | None = None
    provisional = committed = False
    try:
        try:
            resp = client.get_object(Bucket=bucket, Key=keys.raw, IfMatch=etag)
            data = resp["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if s3.is_missing(exc) or s3.is_precondition_failed(exc):
                log.info("%s changed or vanished since it was listed; skipping", keys.raw)
                return None
            raise
        if resp["ETag"] != etag:  # a server ignoring If-Match on GetObject: its answer names the version
            log.info("%s changed since it was listed; skipping", keys.raw)
            return None
        version_id = s3.version_id(resp)
        crash_point("claim.downloaded")
        if stale:  # the stale claimant never committed (the raw manifest is still this version)
            roll_back(client, bucket, stale.get("claimed_as"), stale.get("token"))
        journal, csv = journal_claim(run, keys, etag, token, held.key, data)
        crash_point("claim.journaled")
        meta = processing_metadata(token, record["owner"], run.name, keys.raw, etag)
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
        if not _commit(client, bucket, keys.raw, etag, version_id, sem, opts):
            log.info("%s was replaced since it was read; the new version is left for the next tick", keys.raw)
            return None
        committed = True
        crash_point("claim.renamed")
        return Claim(keys, csv, data, journal)
    finally:
        if not committed:
            if provisional:
                roll_back(client, bucket, keys.processing, token)
            if journal is not None:
                _unjournal(run, journal)
        release_marker(client, bucket, held)


def _commit(
    client: Any, bucket: str, key: str, etag: str, version_id: str | None, sem: Semantics, opts: TickOptions
) -> bool:
    """Delete exactly the claimed version of the raw manifest (the commit point); False when it was
    replaced since it was read (nothing deleted: the new version is claimed by the next tick)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if sem.commit == "version-id":
        if version_id is None:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "NoVersionId", "Message": "the versioned bucket's GetObject named no VersionId"}},
                "GetObject",
            )
        kwargs["VersionId"] = version_id  # a newer version, if any, stays current
    elif sem.commit == "if-match":
        kwargs["IfMatch"] = etag
    else:  # verify-first (opted in): the server would delete whatever version is there
        head = s3.head(client, bucket, key)
        if head is None:
            return True  # our first delete landed and its answer was lost (we hold the marker)
        if head["ETag"] != etag:
            return False
    try:
        client.delete_object(**kwargs)
    except botocore.exceptions.ClientError as exc:
        if s3.is_precondition_failed(exc):
            return False
        if s3.error_code(exc) in endpoint.REFUSAL_CODES:
            endpoint.forget(opts.workdir, opts.settings, bucket, f"DeleteObject of {key}: {s3.describe_error(exc)}")
        if not s3.is_missing(exc):  # missing: our first delete succeeded and its answer was lost
            raise
    return True
