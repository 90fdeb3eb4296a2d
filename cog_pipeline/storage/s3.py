"""S3 access: endpoint and key-file handling, a configured boto3 client, listing, transfers, claims.

Secrets are read from key *files* here and nowhere else; they never reach argv, logs or errors.
Retries are boto3's own (``standard`` mode with a bounded attempt count), not hand-rolled loops.
"""

from __future__ import annotations

import base64
import contextlib
import bisect
import email.utils
import hashlib
import logging
import os
import random
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, Literal, cast

import boto3
import botocore.exceptions
import botocore.retries.standard
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from s3transfer.subscribers import BaseSubscriber
from s3transfer.utils import ChunksizeAdjuster

from cog_pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)

#: Objects above this size are uploaded/downloaded in parts, several at a time.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 32 * 1024 * 1024
#: Keys per ListObjectsV2 page (S3's maximum).
LIST_PAGE_SIZE = 1000


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is and how to authenticate; key files are paths, never key values."""

    endpoint_url: str | None = None
    access_key_file: str | None = None
    secret_key_file: str | None = None
    region: str = "us-east-1"
    max_attempts: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_concurrency: int = 4
    multipart_threshold: int = MULTIPART_THRESHOLD
    multipart_chunksize: int = MULTIPART_CHUNKSIZE
    #: PEM file of the CA that signed the endpoint's certificate (a site CA); None: AWS_CA_BUNDLE, else certifi.
    ca_bundle: str | None = None
    #: Data-integrity checksums on requests: ``auto`` (only where an operation requires one, on any custom
    #: endpoint; see CHECKSUM_MODES), ``when_required`` or ``when_supported`` (boto3's default on AWS).
    checksums: str = "auto"
    #: What to do on an unversioned bucket whose server ignores If-Match on DeleteObject (endpoint.semantics).
    delete_fallback: str = "refuse"

    @classmethod
    def from_config(cls, s3: dict[str, Any]) -> S3Settings:
        """Build from the ``s3:`` section of a run config (unknown keys are ignored)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in s3.items() if k in names})


def normalize_endpoint(endpoint: str | None) -> str | None:
    """``s3.example.org`` -> ``https://s3.example.org`` (as the original tool); full URLs are kept."""
    if not endpoint:
        return None
    endpoint = endpoint.strip()
    if "://" in endpoint:
        return endpoint.rstrip("/")
    return "https://" + endpoint.rstrip("/")


def resolve_key_file(path: str) -> Path:
    """The key file at ``path``; on an HTCondor execute point, its transferred copy in the job's directory."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    transferred = Path.cwd() / candidate.name
    if transferred.is_file():
        return transferred
    raise PipelineError(f"key file not found: {path}")


def read_key_file(path: str) -> str:
    """Return the single secret stored in a key file, warning when others may read it."""
    resolved = resolve_key_file(path)
    mode = resolved.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("key file %s is readable by other users; run: chmod 600 %s", resolved, resolved)
    try:
        value = resolved.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read key file {resolved}: {type(exc).__name__}") from None
    if not value or "\n" in value:
        raise PipelineError(f"key file {resolved} must hold exactly one non-empty line")
    return value


#: Values of ``s3.checksums``. boto3 >= 1.36 sends every upload as ``aws-chunked`` with a CRC32 trailer
#: and no Content-Length when checksums are ``when_supported``; S3-compatible servers that predate it
#: answer 411 (Ceph RGW before Squid, older MinIO) or store the chunk framing inside the object
#: (boto/boto3#4435). ``when_required`` sends plain bodies with a Content-Length; uploads are then
#: checked after the fact (``verify_upload``).
CHECKSUM_MODES = ("auto", "when_required", "when_supported")


ChecksumMode = Literal["when_supported", "when_required"]


def checksum_mode(settings: S3Settings) -> ChecksumMode:
    """boto3's request/response checksum setting for ``settings``: ``auto`` is ``when_supported`` on AWS
    (no endpoint given) and ``when_required`` on any other endpoint."""
    if settings.checksums not in CHECKSUM_MODES:
        raise PipelineError(f"s3.checksums must be one of {', '.join(CHECKSUM_MODES)}, not {settings.checksums!r}")
    if settings.checksums == "auto":
        return "when_supported" if not settings.endpoint_url else "when_required"
    return cast(ChecksumMode, settings.checksums)


def ca_bundle(settings: S3Settings) -> str | None:
    """The CA bundle HTTPS connections verify against: ``settings.ca_bundle``, else ``AWS_CA_BUNDLE``, else
    None (botocore's own, certifi's bundle); a missing file is a clear error."""
    path = settings.ca_bundle or os.environ.get("AWS_CA_BUNDLE") or None
    if not path:
        return None
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return str(candidate)
    transferred = Path.cwd() / candidate.name  # on an HTCondor execute point: the copy in the job's directory
    if settings.ca_bundle and transferred.is_file():
        return str(transferred)
    source = "--ca-bundle / s3.ca_bundle" if settings.ca_bundle else "AWS_CA_BUNDLE"
    raise PipelineError(f"CA bundle not found: {path} (given by {source})")


_SESSION_LOCK = threading.Lock()
_SESSIONS: list[boto3.session.Session] = []


def _session() -> boto3.session.Session:
    """This process's one boto3 session (under ``_SESSION_LOCK``): a new session loads and parses the S3 service
    model again, most of a client's cost (~0.1 CPU-second); the credentials are each client's own."""
    if not _SESSIONS:
        _SESSIONS.append(boto3.session.Session())
    return _SESSIONS[0]


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client with bounded retries/timeouts; credentials from key files if given."""
    kwargs: dict[str, Any] = {}
    if settings.access_key_file or settings.secret_key_file:
        if not (settings.access_key_file and settings.secret_key_file):
            raise PipelineError("give both an access key file (-a) and a secret key file (-s), or neither")
        kwargs["aws_access_key_id"] = read_key_file(settings.access_key_file)
        kwargs["aws_secret_access_key"] = read_key_file(settings.secret_key_file)
    checksums = checksum_mode(settings)
    config = Config(
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
    )
    bundle = ca_bundle(settings)
    if bundle:
        kwargs["verify"] = bundle
    with _SESSION_LOCK:  # a Session is not thread-safe; the clients it makes are
        client = _session().client(
            "s3",
            endpoint_url=normalize_endpoint(settings.endpoint_url),
            region_name=settings.region,
            config=config,
            **kwargs,
        )
    if NEEDS_429_SHIM:
        client.meta.events.register("needs-retry.s3", _retry_429(settings.max_attempts))
    if checksums == "when_required":
        client.meta.events.register("before-call.s3.DeleteObjects", _content_md5)
    return client


def _content_md5(params: dict[str, Any], **_: Any) -> None:
    """DeleteObjects with a Content-MD5 header as well (older MinIO and RGW refuse it without one,
    minio/minio#20849; boto3 >= 1.36 sends only a CRC32)."""
    body = params.get("body")
    headers = params.setdefault("headers", {})
    if isinstance(body, bytes) and "Content-MD5" not in headers:
        headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode("ascii")


#: botocore without ThrottlingStatusCodeChecker (1.40 has none, 1.44 has it; boto3>=1.34 allows both) only takes
#: a 429 for throttling when the body names a code it knows.
NEEDS_429_SHIM = not hasattr(botocore.retries.standard, "ThrottlingStatusCodeChecker")


def _retry_429(max_attempts: int) -> Any:
    """For such botocore only: retry HTTP 429 whatever its error code, as newer standard mode does.

    S3-compatible stores answer 429 'TooManyRequests' (or no body at all, to a HEAD), which older
    standard mode does not retry. Same full-jitter exponential backoff (cap 20 s) and bound: botocore's
    ``max_attempts`` counts retries, so at most 1 + max_attempts requests.
    """

    def needs_retry(response: Any = None, attempts: int = 1, **_: Any) -> float | None:
        if response is None or getattr(response[0], "status_code", None) != 429 or attempts > max_attempts:
            return None
        return min(random.random() * 2 ** (attempts - 1), 20.0)

    return needs_retry


def transfer_config(settings: S3Settings) -> TransferConfig:
    """Multipart above MULTIPART_THRESHOLD, with ``max_concurrency`` parts in flight."""
    return TransferConfig(
        multipart_threshold=settings.multipart_threshold,
        multipart_chunksize=settings.multipart_chunksize,
        max_concurrency=settings.max_concurrency,
        use_threads=settings.max_concurrency > 1,
    )


#: What a boto3 call raises when S3 fails (after boto3's own retries).
S3_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError ('NoSuchKey', '404', 'PreconditionFailed', ...), else ''."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def describe_error(exc: BaseException) -> str:
    """A short user-facing description of an S3/botocore error (never includes credentials)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        op = getattr(exc, "operation_name", "request")
        return f"{op} failed: {err.get('Code', '?')} {err.get('Message', '')}".strip()
    if isinstance(exc, botocore.exceptions.SSLError):
        return (
            f"TLS error talking to the S3 endpoint {exc.kwargs.get('endpoint_url', '')}: the server's certificate "
            "is not trusted; give the site CA with --ca-bundle FILE (or AWS_CA_BUNDLE)"
        )
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return f"cannot connect to the S3 endpoint {exc.kwargs.get('endpoint_url', '')}".strip()
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no S3 credentials: give -a ACCESS_KEY_FILE -s SECRET_KEY_FILE"
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def is_missing(exc: BaseException) -> bool:
    """True when the error means 'no such object'."""
    return error_code(exc) in {"NoSuchKey", "404", "NotFound"}


#: Error codes of a conditional request (If-Match / If-None-Match) whose condition did not hold.
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


def is_precondition_failed(exc: BaseException) -> bool:
    """True when a conditional write or delete was refused because its condition did not hold."""
    return error_code(exc) in PRECONDITION_CODES


def server_age(response: dict) -> float:
    """Seconds since ``response``'s object was last modified, by the server's own clock (its Date header)."""
    now = time.time()
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        with contextlib.suppress(TypeError, ValueError):
            now = email.utils.parsedate_to_datetime(date).timestamp()
    modified = response.get("LastModified")
    return max(0.0, now - modified.timestamp()) if modified is not None else 0.0


def check_bucket(client: Any, bucket: str, role: str) -> None:
    """Fail with a clear PipelineError unless ``bucket`` exists and these credentials can reach it."""
    try:
        client.head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        code = error_code(exc)
        if code in {"404", "NoSuchBucket", "NotFound"}:
            raise PipelineError(f"{role} bucket '{bucket}' does not exist") from None
        if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            raise PipelineError(f"access to {role} bucket '{bucket}' denied: check the key files") from None
        raise PipelineError(f"{role} bucket '{bucket}': {describe_error(exc)}") from None


def iter_objects(client: Any, bucket: str, prefix: str = "", delimiter: str | None = None) -> Iterator[dict]:
    """Every object under ``prefix`` (paginated ListObjectsV2, 1000 keys per request)."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
        yield from page.get("Contents", [])


def _just_before(key: str) -> str:
    """A string sorting before ``key`` (and after nearly all else that does): ``key`` minus its last character."""
    return key[:-1]


def existing_keys(client: Any, bucket: str, wanted: Iterable[str], page_size: int = LIST_PAGE_SIZE) -> set[str]:
    """Which of ``wanted`` exist in ``bucket``: one skip-scan over the sorted wanted keys.

    Each ListObjectsV2 call (``Prefix`` = the wanted keys' common prefix) starts right before the first
    wanted key not yet settled (``StartAfter``) and returns up to ``page_size`` keys; every wanted key up
    to the page's last key is settled (listed or absent). Keys between two runs of wanted keys (older
    deliveries, other folders) are jumped over instead of paged through. Calls: at most one per
    ``page_size`` keys of the range from the first to the last wanted key (never more than paging
    through that range), and about ``ceil(present / page_size)`` + the number of gaps between runs of
    wanted keys. S3 lists in UTF-8 byte order, which is Python's order of ``str``.
    """
    todo = sorted(set(wanted))
    if not todo:
        return set()
    targets = set(todo)
    prefix = os.path.commonprefix([todo[0], todo[-1]])  # noqa: RUF071 (a string prefix: all of a sorted list)
    found: set[str] = set()
    i = 0
    kwargs: dict[str, Any] = {
        "Bucket": bucket,
        "Prefix": prefix,
        "MaxKeys": page_size,
        "StartAfter": _just_before(todo[0]),
    }
    while True:
        page = client.list_objects_v2(**kwargs)
        contents = page.get("Contents", [])
        found.update(obj["Key"] for obj in contents if obj["Key"] in targets)
        token = _next_token(page, bucket)
        if token is None:
            return found  # the listing reached the end of the prefix: every other wanted key is absent
        kwargs.pop("ContinuationToken", None)
        if not contents:  # (a server may page without keys) carry on where it stopped
            kwargs["ContinuationToken"] = token
            continue
        last = contents[-1]["Key"]
        i = bisect.bisect_right(todo, last, lo=i)
        if i == len(todo):
            return found
        start_after = max(last, _just_before(todo[i]))
        if start_after <= kwargs["StartAfter"]:
            # The server does not honour StartAfter (the same page would come back forever): page on.
            return found | _paged_on(client, kwargs, token, targets)
        kwargs["StartAfter"] = start_after


def _next_token(page: dict[str, Any], bucket: str) -> str | None:
    """The continuation token of a ListObjectsV2 page; None when the listing is complete."""
    if not page.get("IsTruncated"):
        return None
    token = page.get("NextContinuationToken")
    if not token:
        raise PipelineError(f"listing '{bucket}': the S3 server returned a truncated page without a continuation token")
    return token


def _paged_on(client: Any, kwargs: dict[str, Any], token: str | None, targets: set[str]) -> set[str]:
    """The rest of a listing through continuation tokens only: the keys of ``targets`` it holds."""
    found: set[str] = set()
    kwargs = {k: v for k, v in kwargs.items() if k != "StartAfter"}
    while token:
        page = client.list_objects_v2(**kwargs, ContinuationToken=token)
        found.update(obj["Key"] for obj in page.get("Contents", []) if obj["Key"] in targets)
        token = _next_token(page, kwargs["Bucket"])
    return found


def get_bytes(client: Any, bucket: str, key: str, if_match: str | None = None) -> bytes:
    """The whole body of a small object (manifests); ``if_match`` pins the expected ETag."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if if_match:
        kwargs["IfMatch"] = if_match
    return client.get_object(**kwargs)["Body"].read()


def put_bytes(
    client: Any,
    bucket: str,
    key: str,
    body: bytes | BinaryIO,
    *,
    if_none_match: bool = False,
    content_type: str = "text/csv",
) -> str:
    """Write an object in one request (atomic on S3), from bytes or a file opened for reading (read as it is
    sent, never whole in memory); returns its ETag."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body, "ContentType": content_type}
    if if_none_match:
        kwargs["IfNoneMatch"] = "*"
    return client.put_object(**kwargs)["ETag"]


class _KnownObject(BaseSubscriber):
    """Tells s3transfer the object's size and ETag, so that it sends no HeadObject of its own (its GETs
    then carry ``If-Match: <etag>``: the bytes downloaded are those of that very object version)."""

    def __init__(self, size: int, etag: str | None):
        self._size, self._etag = size, etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)
        if self._etag and hasattr(future.meta, "provide_object_etag"):
            future.meta.provide_object_etag(self._etag)


def download_file(
    client: Any,
    bucket: str,
    key: str,
    dest: Path,
    settings: S3Settings,
    size: int | None = None,
    etag: str | None = None,
) -> None:
    """Download ``key`` to ``dest`` (ranged GETs, several at a time, for large objects).

    ``size`` and ``etag`` (from a HeadObject the caller already made) save the HeadObject s3transfer
    would send, and pin the download to that object (a replaced object fails with PreconditionFailed).
    """
    if size is None:
        client.download_file(bucket, key, str(dest), Config=transfer_config(settings))
        return
    with create_transfer_manager(client, transfer_config(settings)) as manager:
        manager.download(bucket, key, str(dest), subscribers=[_KnownObject(size, etag)]).result()


def upload_file(
    client: Any,
    bucket: str,
    key: str,
    src: Path,
    settings: S3Settings,
    content_type: str,
    metadata: dict[str, str] | None = None,
) -> None:
    """Upload ``src`` to ``key``: one PUT, or a multipart upload that boto3 aborts if any part fails."""
    extra = {"ContentType": content_type, "Metadata": metadata or {}}
    client.upload_file(str(src), bucket, key, ExtraArgs=extra, Config=transfer_config(settings))


class UploadMismatch(PipelineError):
    """The object stored at ``key`` is not the file just uploaded (size or ETag differ, or it is missing).

    ``detail`` says what was expected and what was found; the message adds that the object was removed
    (callers remove it, and build their own message from ``detail`` when that fails)."""

    def __init__(self, key: str, detail: str, missing: bool = False):
        self.key, self.detail, self.missing = key, detail, missing
        super().__init__(detail if missing else f"{detail}; the object was removed")


#: An ETag of the MD5 family: the MD5 of a single PUT, or ``<MD5 of the parts' MD5s>-<parts>`` of a multipart upload.
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-[1-9][0-9]*)?$")
#: Server-side encryption under which the ETag is no MD5 of the data, though it may look like one (AWS, MinIO).
_OPAQUE_SSE = ("aws:kms", "aws:kms:dsse")
_READ_SIZE = 1024 * 1024


def upload_part_size(settings: S3Settings, size: int) -> int | None:
    """The part size s3transfer cuts a ``size``-byte upload into; None for a single PUT.

    Multipart iff ``size >= multipart_threshold``; parts are ``multipart_chunksize``, adjusted as s3transfer
    does (doubled until there are at most 10000 parts, then kept within 5 MiB .. 5 GiB)."""
    if size < settings.multipart_threshold:
        return None
    return ChunksizeAdjuster().adjust_chunksize(settings.multipart_chunksize, size)


def expected_etag(src: Path, part_size: int | None) -> str:
    """The ETag S3 gives ``src`` uploaded in one PUT (``part_size`` None: its MD5) or in parts of
    ``part_size`` bytes (MD5 of the parts' binary MD5s, ``-<parts>``): one streaming pass, 1 MiB reads."""
    with open(src, "rb") as fh:
        if part_size is None:
            whole = hashlib.md5(usedforsecurity=False)
            for block in iter(lambda: fh.read(_READ_SIZE), b""):
                whole.update(block)
            return whole.hexdigest()
        digests = []
        while True:
            part, left = hashlib.md5(usedforsecurity=False), part_size
            while left:
                block = fh.read(min(_READ_SIZE, left))
                if not block:
                    break
                part.update(block)
                left -= len(block)
            if left == part_size:  # nothing read: the end of the file
                break
            digests.append(part.digest())
            if left:
                break
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def verify_upload(
    client: Any, bucket: str, key: str, src: Path, settings: S3Settings, head: dict | None = None
) -> None:
    """Confirm that the object at ``key`` is ``src`` as uploaded by ``upload_file``: its size, and its ETag
    against the one expected from the local file (single PUT or multipart, as ``settings`` split it).

    Catches what a server can do to a plain (``when_required``) upload: the aws-chunked framing stored
    inside the object (boto/boto3#4435), a short object, other bytes. One HeadObject (none when the
    caller gives ``head``). An ETag that is no MD5 (opaque, or under SSE-KMS / SSE-C) is not compared:
    the size only. Raises UploadMismatch; the caller removes the object.
    """
    if head is None:
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if not is_missing(exc):
                raise
            raise UploadMismatch(key, f"no object at {key} after its upload", missing=True) from None
    size = src.stat().st_size
    part_size = upload_part_size(settings, size)
    problems = stored_problems(
        head,
        key,
        size,
        lambda: expected_etag(src, part_size),
        "single PUT" if part_size is None else f"{part_size}-byte parts",
    )
    if problems:
        raise UploadMismatch(key, f"stored object {key} is not the file uploaded: {'; '.join(problems)}")


def stored_problems(
    head: dict[str, Any], key: str, size: int, want_etag: str | Callable[[], str], how: str = "single PUT"
) -> list[str]:
    """How the object ``head`` describes differs from a ``size``-byte upload whose ETag is ``want_etag`` (or
    ``want_etag()``, called only when the server's ETag is an MD5 of the data): [] when it does not."""
    stored_size = head.get("ContentLength")
    problems = []
    if stored_size != size:
        problems.append(f"size {size} bytes expected, {stored_size} found")
    etag = str(head.get("ETag", "")).removeprefix("W/").strip('"').lower()
    sse = head.get("ServerSideEncryption", "")
    opaque = (
        "SSE-C"
        if head.get("SSECustomerAlgorithm")
        else sse
        if sse in _OPAQUE_SSE
        else ""
        if _MD5_ETAG.match(etag)
        else "not of the MD5 form"
    )
    if opaque:
        log.info(
            "%s: the server's ETag %r is no MD5 of the data (%s); checked the size only", key, head.get("ETag"), opaque
        )
    else:
        want = want_etag if isinstance(want_etag, str) else want_etag()
        if etag != want:
            problems.append(f"ETag {want} expected ({how}), {etag} found")
    return problems


def version_id(response: dict[str, Any]) -> str | None:
    """The VersionId of a response, None on an unversioned bucket (where servers say ``null`` or nothing)."""
    version = response.get("VersionId")
    return version if version and version != "null" else None


def head(client: Any, bucket: str, key: str) -> dict | None:
    """HeadObject, or None when the object does not exist."""
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if is_missing(exc):
            return None
        raise


os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never probe cloud metadata endpoints
