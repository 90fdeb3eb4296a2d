"""What an S3 endpoint honours, and what the pipeline does about it.

S3-compatible servers differ exactly where claiming relies on them (docs/reliability.md, "S3 servers"):
Ceph RGW 16.2 ignores ``If-Match`` on DeleteObject and compares ``If-Match`` on PutObject with its
*unquoted* ETag; MinIO ignores ``If-Match`` on DeleteObject and, before Aug 2025, on a missing key;
servers before 2025 refuse boto3's checksum trailers. So nothing is assumed: :func:`probe` tries each
semantic on a throw-away object under ``.cog-pipeline/probe/`` and :class:`Capabilities` records the
answers, cached per endpoint and bucket in the working directory (:func:`capabilities`).
:func:`semantics` turns them into what the pipeline does (:class:`Semantics`): the documented
fallback for each semantic the server lacks, or a refusal before anything is claimed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions

from cog_pipeline.storage import s3
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import STATE_PREFIX

log = logging.getLogger(__name__)

HONOURED = "honoured"
IGNORED = "ignored"
REFUSED = "refused"
#: ``If-Match`` on PutObject works only with the ETag sent without its quotes (Ceph RGW 16.2).
UNQUOTED = "unquoted only"
#: ``If-Match`` on PutObject fails whatever ETag is sent (Ceph RGW 16.2 on a versioned bucket).
ALWAYS_FAILS = "412 even for the current ETag"
ACCEPTED = "accepted"
#: The server stored the ``aws-chunked`` framing inside the object (boto/boto3#4435).
CORRUPTS = "stored inside the object"
UNKNOWN = "unknown"

#: Probe answers are re-used for this long (``s3.probe_every`` overrides it).
PROBE_EVERY = 24 * 3600.0
#: Error codes of a server that does not implement a conditional header (it refuses the request).
REFUSAL_CODES = frozenset({"NotImplemented", "501", "InvalidArgument", "InvalidRequest", "400"})
#: Values of ``s3.delete_fallback``: what to do on an unversioned bucket whose server ignores
#: ``If-Match`` on DeleteObject.
DELETE_FALLBACKS = ("refuse", "verify-first")
CACHE_DIR = ".cog-pipeline/endpoints"
PROBE_PREFIX = f"{STATE_PREFIX}probe/"
_WRONG_ETAG = '"00000000000000000000000000000000"'


@dataclass(frozen=True)
class Capabilities:
    """What one endpoint and bucket did when probed."""

    endpoint: str
    bucket: str
    probed_at: float
    server: str = ""
    put_if_none_match: str = UNKNOWN
    put_if_match: str = UNKNOWN
    put_if_match_missing_key: str = UNKNOWN
    delete_if_match: str = UNKNOWN
    get_if_match: str = UNKNOWN
    checksum_trailers: str = UNKNOWN
    versioning: str = UNKNOWN

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Capabilities:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def versioned(self) -> bool:
        """Versioning is on: a new upload never replaces a version, and a version can be deleted exactly."""
        return self.versioning == "Enabled"


# ------------------------------------------------------------------------------------------ probe


def _code(exc: BaseException) -> str:
    return s3.error_code(exc)


def _attempt(call: Any) -> tuple[str, dict[str, Any] | None]:
    """('ok', response), ('412', None) for a precondition failure, ('refused', None) for a refusal."""
    try:
        return "ok", call()
    except botocore.exceptions.ClientError as exc:
        if s3.is_precondition_failed(exc) or _code(exc) in {"404", "NoSuchKey"}:
            return "412", None
        if _code(exc) in REFUSAL_CODES:
            return "refused", None
        raise


def probe(client: Any, settings: s3.S3Settings, bucket: str) -> Capabilities:
    """Try every semantic the pipeline relies on against ``bucket`` (a few small objects under
    ``.cog-pipeline/probe/``, all of whose versions are removed afterwards)."""
    key = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    found: dict[str, str] = {"endpoint": s3.normalize_endpoint(settings.endpoint_url) or "AWS", "bucket": bucket}
    seen: list[dict[str, str]] = []

    def put(name: str, body: bytes, **kwargs: Any) -> dict[str, Any]:
        response = client.put_object(Bucket=bucket, Key=name, Body=body, ContentType="text/plain", **kwargs)
        seen.append(response.get("ResponseMetadata", {}).get("HTTPHeaders", {}))
        return response

    try:
        found["versioning"] = _versioning(client, bucket)
        # If-None-Match: * on PutObject (a 412 on the first write is boto3 retrying a write that landed).
        first, _ = _attempt(lambda: put(key, b"probe-1", IfNoneMatch="*"))
        if first == "refused":
            found["put_if_none_match"] = REFUSED
            put(key, b"probe-1")
        else:
            again, _ = _attempt(lambda: put(key, b"probe-2", IfNoneMatch="*"))
            found["put_if_none_match"] = {"412": HONOURED, "ok": IGNORED, "refused": REFUSED}[again]
        head = client.head_object(Bucket=bucket, Key=key)
        seen.append(head.get("ResponseMetadata", {}).get("HTTPHeaders", {}))
        etag = head["ETag"]
        # If-Match on GetObject with a wrong ETag.
        got, _ = _attempt(lambda: client.get_object(Bucket=bucket, Key=key, IfMatch=_WRONG_ETAG)["Body"].read())
        found["get_if_match"] = {"412": HONOURED, "ok": IGNORED, "refused": REFUSED}[got]
        found["put_if_match"] = _probe_put_if_match(put, client, bucket, key, etag)
        # If-Match on PutObject to a key that does not exist: must not create it.
        missing = key + "-missing"
        created, _ = _attempt(lambda: put(missing, b"probe", IfMatch=_WRONG_ETAG))
        found["put_if_match_missing_key"] = {"412": HONOURED, "ok": IGNORED, "refused": REFUSED}[created]
        # If-Match on DeleteObject with a wrong ETag: the object must stay.
        deleted, _ = _attempt(lambda: client.delete_object(Bucket=bucket, Key=key, IfMatch=_WRONG_ETAG))
        if deleted == "ok":
            deleted = "412" if s3.head(client, bucket, key) is not None else "ok"
        found["delete_if_match"] = {"412": HONOURED, "ok": IGNORED, "refused": REFUSED}[deleted]
        found["checksum_trailers"] = _probe_trailers(settings, bucket, key + "-trailer")
    finally:
        try:
            remove_versions(client, bucket, key, prefix=True)
        except s3.S3_ERRORS as exc:
            log.warning("could not remove the probe objects %s*: %s", key, s3.describe_error(exc))
    found["server"] = server_name(seen)
    return Capabilities(probed_at=time.time(), **found)


def server_name(headers: list[dict[str, str]]) -> str:
    """The ``Server`` header; else what the answers' other headers reveal (Ceph RGW's beast frontend
    sends none, but ``x-rgw-*`` headers and ``tx…-…-…-<zone>`` request ids)."""
    for h in headers:
        if h.get("server"):
            return h["server"]
    if any(k.startswith("x-rgw-") for h in headers for k in h) or any(
        re.match(r"^tx[0-9a-f]+-[0-9a-f]+-[0-9a-f]+-", h.get("x-amz-request-id", "")) for h in headers
    ):
        return "Ceph RGW (no Server header; known by its x-rgw-* headers and request ids)"
    return ""


def _versioning(client: Any, bucket: str) -> str:
    try:
        return str(client.get_bucket_versioning(Bucket=bucket).get("Status") or "Off")
    except botocore.exceptions.ClientError as exc:
        log.info("cannot read the versioning state of '%s': %s", bucket, s3.describe_error(exc))
        return UNKNOWN


def _probe_put_if_match(put: Any, client: Any, bucket: str, key: str, etag: str) -> str:
    """``If-Match`` on PutObject: honoured (the quoted ETag passes, a wrong one fails), unquoted only,
    ignored (a wrong ETag passes) or refused."""
    quoted, _ = _attempt(lambda: put(key, b"probe-3", IfMatch=etag))
    if quoted == "refused":
        return REFUSED
    if quoted == "412":
        unquoted, _ = _attempt(lambda: put(key, b"probe-3", IfMatch=etag.strip('"')))
        if unquoted != "ok":
            return REFUSED if unquoted == "refused" else ALWAYS_FAILS
    wrong, _ = _attempt(lambda: put(key, b"probe-4", IfMatch=_WRONG_ETAG))
    if wrong == "ok":
        return IGNORED
    return HONOURED if quoted == "ok" else UNQUOTED


def _probe_trailers(settings: s3.S3Settings, bucket: str, key: str) -> str:
    """Whether an upload with boto3's checksum trailer (``aws-chunked``) arrives whole."""
    body = b"cog-pipeline checksum probe\n" * 8
    client = s3.make_client(dataclasses.replace(settings, checksums="when_supported", max_attempts=1))
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    except botocore.exceptions.ClientError as exc:
        return f"{REFUSED} ({_code(exc)})"
    except botocore.exceptions.BotoCoreError as exc:
        return f"{REFUSED} ({type(exc).__name__})"
    try:
        stored = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        stored = b""
    return ACCEPTED if stored == body else CORRUPTS


def remove_versions(client: Any, bucket: str, key: str, *, prefix: bool = False, only: set[str] | None = None) -> None:
    """Delete every version and delete marker of ``key`` (or of every key under it, ``prefix``), or only
    the versions ``only``: the pipeline's own objects leave no noncurrent versions behind. On a server
    without ListObjectVersions, a plain delete."""
    try:
        pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key)
        targets = [
            (v["Key"], v["VersionId"])
            for page in pages
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            if (prefix or v["Key"] == key) and (only is None or v["VersionId"] in only)
        ]
    except botocore.exceptions.ClientError as exc:
        if _code(exc) not in REFUSAL_CODES:
            raise
        targets = [(key, "")]
    for name, version in targets:
        kwargs = {"VersionId": version} if version else {}
        try:
            client.delete_object(Bucket=bucket, Key=name, **kwargs)
        except botocore.exceptions.ClientError as exc:
            if not s3.is_missing(exc):
                raise


def delete_owned(client: Any, bucket: str, key: str) -> None:
    """Delete the pipeline's own object ``key`` (a processing file, a marker) leaving nothing behind: on a
    versioned bucket, where a plain delete only adds a delete marker, every version of it and that marker."""
    response = client.delete_object(Bucket=bucket, Key=key)
    if response.get("DeleteMarker"):
        remove_versions(client, bucket, key)


# ------------------------------------------------------------------------------------------ cache


def _cache_path(workdir: Path, endpoint: str, bucket: str) -> Path:
    digest = hashlib.sha256(f"{endpoint}\n{bucket}".encode()).hexdigest()[:16]
    return Path(workdir) / CACHE_DIR / f"{digest}.json"


def cached(workdir: Path, settings: s3.S3Settings, bucket: str) -> Capabilities | None:
    """The cached probe answers of this endpoint and bucket (any age), None if never probed here."""
    endpoint = s3.normalize_endpoint(settings.endpoint_url) or "AWS"
    try:
        data = json.loads(_cache_path(workdir, endpoint, bucket).read_text(encoding="utf-8"))
        return Capabilities.from_dict(data)
    except (OSError, ValueError, TypeError):
        return None


def store(workdir: Path, caps: Capabilities) -> None:
    """Cache ``caps`` in the working directory (written atomically)."""
    path = _cache_path(workdir, caps.endpoint, caps.bucket)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(caps.as_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot cache the endpoint's probe answers in %s: %s", path.parent, exc.strerror)


def forget(workdir: Path, settings: s3.S3Settings, bucket: str, why: str) -> None:
    """Drop the cached answers (a call did what the probe did not predict): the next tick probes again."""
    endpoint = s3.normalize_endpoint(settings.endpoint_url) or "AWS"
    path = _cache_path(workdir, endpoint, bucket)
    if path.exists():
        log.warning("the S3 endpoint did not behave as probed (%s); it is probed again at the next tick", why)
        path.unlink(missing_ok=True)


def capabilities(
    client: Any, settings: s3.S3Settings, bucket: str, workdir: Path, every: float = PROBE_EVERY
) -> Capabilities:
    """The probe answers for this endpoint and bucket: cached ones younger than ``every``, else a new probe."""
    caps = cached(workdir, settings, bucket)
    if caps is not None and 0 <= time.time() - caps.probed_at < every:
        return caps
    caps = probe(client, settings, bucket)
    store(workdir, caps)
    log.info("probed %s bucket '%s' (%s)", caps.endpoint, bucket, caps.server or "no Server header")
    return caps


# ------------------------------------------------------------------------------------------ what the pipeline does


@dataclass(frozen=True)
class Semantics:
    """How the pipeline talks to one bucket, decided from its :class:`Capabilities`.

    ``commit``: how the claimed raw manifest is deleted: ``version-id`` (a versioned bucket: exactly the
    claimed version goes), ``if-match`` (the server refuses to delete a replaced version) or
    ``verify-first`` (opted in: a HEAD right before an unconditional delete). ``markers``: how a claim
    marker is made exclusive: ``if-none-match``, ``oldest-version`` (a versioned bucket whose server
    ignores If-None-Match: every contender writes a version, the oldest live one holds it) or
    ``local-only`` (only the working directory's lock). ``rewrite``: how a processing file is rewritten
    only if unchanged (heartbeat, adoption): ``if-match`` (``put_if_match`` says how the ETag is sent),
    ``version-check`` (write, then keep the write only if the version it replaces is still there and
    nothing deleted the key) or ``none``.
    """

    caps: Capabilities
    commit: str
    put_if_match: str | None
    markers: str = "if-none-match"
    rewrite: str = "if-match"
    fallbacks: tuple[str, ...] = ()

    def put_etag(self, etag: str) -> str | None:
        """``etag`` as this server's If-Match on PutObject compares it; None when it cannot."""
        if self.put_if_match == "quoted":
            return etag if etag.startswith('"') else f'"{etag}"'
        if self.put_if_match == "unquoted":
            return etag.strip('"')
        return None

    @property
    def versioned(self) -> bool:
        return self.caps.versioned

    @property
    def exclusive(self) -> bool:
        """Claims are exclusive across hosts (not only between the ticks of one working directory)."""
        return self.markers != "local-only"

    @classmethod
    def assumed(cls, endpoint: str = "", bucket: str = "") -> Semantics:
        """What AWS S3 and moto do (for callers that do not probe, e.g. unit tests)."""
        caps = Capabilities(
            endpoint=endpoint,
            bucket=bucket,
            probed_at=0.0,
            put_if_none_match=HONOURED,
            put_if_match=HONOURED,
            put_if_match_missing_key=HONOURED,
            delete_if_match=HONOURED,
            get_if_match=HONOURED,
            versioning="Off",
        )
        return cls(caps=caps, commit="if-match", put_if_match="quoted")


def semantics(caps: Capabilities, settings: s3.S3Settings, delete_fallback: str = "refuse") -> Semantics:
    """What the pipeline does on this server; PipelineError (nothing claimed) where no safe fallback exists."""
    where = f"the S3 server at {caps.endpoint} ({caps.server or 'no Server header'}), bucket '{caps.bucket}'"
    fallbacks: list[str] = []
    if caps.put_if_none_match == REFUSED:
        raise PipelineError(
            f"{where} refuses conditional writes (If-None-Match on PutObject), which claiming "
            "needs; nothing was claimed. Use a server that supports them (AWS, Ceph RGW, MinIO)"
        )
    if caps.put_if_none_match == HONOURED:
        markers = "if-none-match"
    elif caps.versioned:
        markers = "oldest-version"
        fallbacks.append(
            "If-None-Match on PutObject is ignored (Ceph RGW 16.2 on a versioned bucket): a claim "
            "marker is held by the oldest of its live versions (each claimant writes one, then lists)"
        )
    else:
        markers = "local-only"
        fallbacks.append(
            "the endpoint ignores conditional writes (If-None-Match on PutObject): claims are "
            "exclusive only between ticks of one working directory; run a single Crondor per input "
            "bucket"
        )
    if caps.get_if_match != HONOURED:
        fallbacks.append(
            f"If-Match on GetObject is {caps.get_if_match}: a claimed manifest is checked by the ETag "
            "of the GET's own answer; an input image replaced during a multipart download could be "
            "read mixed (its row is then wrong: retry it)"
        )
    if caps.versioned:
        commit = "version-id"  # exact whatever the server does with If-Match
        if caps.delete_if_match != HONOURED:
            fallbacks.append(
                f"If-Match on DeleteObject is {caps.delete_if_match}: the bucket is versioned, so a "
                "claimed manifest is deleted by its VersionId and a version uploaded meanwhile stays"
            )
    elif caps.delete_if_match == HONOURED:
        commit = "if-match"
    elif delete_fallback == "verify-first":
        commit = "verify-first"
        fallbacks.append(
            f"If-Match on DeleteObject is {caps.delete_if_match} and the bucket is not versioned: a "
            "claimed manifest is deleted right after a HEAD shows it unchanged (s3.delete_fallback: "
            "verify-first); a manifest re-uploaded within those milliseconds would be lost"
        )
    else:
        raise PipelineError(
            f"{where}: If-Match on DeleteObject is {caps.delete_if_match} and the bucket is not versioned, so a "
            "manifest re-uploaded while it is being claimed would be deleted unprocessed; nothing was claimed. "
            f"Enable versioning (aws s3api put-bucket-versioning --bucket {caps.bucket} --versioning-configuration "
            "Status=Enabled), then run 'cog-pipeline check-endpoint'; or accept a millisecond window with "
            "--delete-fallback verify-first (s3.delete_fallback: verify-first)"
        )
    put_if_match = {HONOURED: "quoted", UNQUOTED: "unquoted"}.get(caps.put_if_match)
    rewrite = "if-match" if put_if_match else "version-check" if caps.versioned else "none"
    if rewrite == "version-check":
        fallbacks.append(
            f"If-Match on PutObject is {caps.put_if_match}: heartbeats and adoptions rewrite the "
            "processing file, then keep the rewrite only if the version it replaces is still there "
            "(the bucket is versioned)"
        )
    elif rewrite == "none":
        fallbacks.append(
            f"If-Match on PutObject is {caps.put_if_match}: processing files get no heartbeat, so "
            "another host adopts a run only by the processing file's age (keep adopt_after above "
            "your longest run)"
        )
    elif caps.put_if_match == UNQUOTED:
        fallbacks.append("If-Match on PutObject matches only the unquoted ETag: heartbeats send it unquoted")
    if caps.put_if_match_missing_key != HONOURED and put_if_match is not None:
        fallbacks.append(
            "If-Match on PutObject to a missing key is ignored: a heartbeat racing the aggregate can "
            "bring a processing file back; the next tick deletes it as a finished run's leftover"
        )
    mode = s3.checksum_mode(settings)
    if mode == "when_supported" and caps.checksum_trailers != ACCEPTED and caps.endpoint != "AWS":
        raise PipelineError(
            f"{where}: checksum trailers (s3.checksums: when_supported) are "
            f"{caps.checksum_trailers}; set s3.checksums: when_required (the default for "
            "custom endpoints); nothing was claimed"
        )
    return Semantics(
        caps=caps,
        commit=commit,
        put_if_match=put_if_match,
        markers=markers,
        rewrite=rewrite,
        fallbacks=tuple(fallbacks),
    )


def table(caps: Capabilities, sem: Semantics | None, refusal: str | None = None) -> str:
    """The probe answers and what the pipeline does, for ``check-endpoint`` and ``status``."""
    age = time.time() - caps.probed_at
    rows = [
        ("Server header", caps.server or "(none)"),
        ("versioning", caps.versioning),
        ("If-None-Match: * on PutObject", caps.put_if_none_match),
        ("If-Match on GetObject", caps.get_if_match),
        ("If-Match on PutObject", caps.put_if_match),
        ("If-Match on PutObject, missing key", caps.put_if_match_missing_key),
        ("If-Match on DeleteObject", caps.delete_if_match),
        ("checksum trailers (aws-chunked)", caps.checksum_trailers),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [
        f"S3 endpoint {caps.endpoint}, bucket '{caps.bucket}' (probed "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(caps.probed_at))}, {int(age // 60)} min ago)"
    ]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    if refusal:
        lines.append(f"  REFUSED: {refusal}")
    elif sem is not None:
        heartbeats = {
            "if-match": f"If-Match ({sem.put_if_match} ETag)",
            "version-check": "version check",
            "none": "off",
        }[sem.rewrite]
        lines.append(f"  claim markers by: {sem.markers}; claims commit by: {sem.commit}; heartbeats: {heartbeats}")
        lines += [f"  FALLBACK: {text}" for text in sem.fallbacks]
        if not sem.fallbacks:
            lines.append("  every semantic the pipeline relies on is honoured")
    return "\n".join(lines)


def check(
    client: Any, settings: s3.S3Settings, bucket: str, workdir: Path
) -> tuple[Capabilities, Semantics | None, str | None]:
    """Probe now (whatever the cache holds), cache the answers; (answers, what ticks do, or why they refuse)."""
    caps = probe(client, settings, bucket)
    store(workdir, caps)
    try:
        return caps, semantics(caps, settings, settings.delete_fallback), None
    except PipelineError as exc:
        return caps, None, str(exc)
