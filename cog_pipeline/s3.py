"""S3 access: endpoint and key-file handling, a configured boto3 client, listing, transfers, claims.

Secrets are read from key *files* here and nowhere else; they never reach argv, logs or errors.
Retries are boto3's own (``standard`` mode with a bounded attempt count), not hand-rolled loops.
"""

from __future__ import annotations

import bisect
import email.utils
import logging
import os
import random
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import boto3
import botocore.exceptions
import botocore.retries.standard
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from s3transfer.subscribers import BaseSubscriber

from .errors import PipelineError

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

    @classmethod
    def from_config(cls, s3: dict[str, Any]) -> "S3Settings":
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


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client with bounded retries/timeouts; credentials from key files if given."""
    kwargs: dict[str, Any] = {}
    if settings.access_key_file or settings.secret_key_file:
        if not (settings.access_key_file and settings.secret_key_file):
            raise PipelineError("give both an access key file (-a) and a secret key file (-s), or neither")
        kwargs["aws_access_key_id"] = read_key_file(settings.access_key_file)
        kwargs["aws_secret_access_key"] = read_key_file(settings.secret_key_file)
    config = Config(
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        s3={"addressing_style": "path"},
        signature_version="s3v4",
    )
    session = boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=normalize_endpoint(settings.endpoint_url),
        region_name=settings.region,
        config=config,
        **kwargs,
    )
    if NEEDS_429_SHIM:
        client.meta.events.register("needs-retry.s3", _retry_429(settings.max_attempts))
    return client


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
        try:
            now = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            pass
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
    """A string sorting before ``key`` (and after nearly everything else that does): ``key`` minus its last character."""
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
    prefix = os.path.commonprefix([todo[0], todo[-1]])  # of a sorted list: the common prefix of all
    found: set[str] = set()
    i = 0
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size,
                              "StartAfter": _just_before(todo[0])}
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
        raise PipelineError(f"listing '{bucket}': the S3 server returned a truncated page without a "
                            "continuation token")
    return token


def _paged_on(client: Any, kwargs: dict[str, Any], token: str, targets: set[str]) -> set[str]:
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


def put_bytes(client: Any, bucket: str, key: str, body: bytes, *, if_none_match: bool = False,
              content_type: str = "text/csv") -> str:
    """Write a small object in one request (atomic on S3); returns its ETag."""
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


def download_file(client: Any, bucket: str, key: str, dest: Path, settings: S3Settings,
                  size: int | None = None, etag: str | None = None) -> None:
    """Download ``key`` to ``dest`` (ranged GETs, several at a time, for large objects).

    ``size`` and ``etag`` (from a HeadObject the caller already made) save the HeadObject s3transfer
    would send, and pin the download to that object (a replaced object fails with PreconditionFailed).
    """
    if size is None:
        client.download_file(bucket, key, str(dest), Config=transfer_config(settings))
        return
    with create_transfer_manager(client, transfer_config(settings)) as manager:
        manager.download(bucket, key, str(dest), subscribers=[_KnownObject(size, etag)]).result()


def upload_file(client: Any, bucket: str, key: str, src: Path, settings: S3Settings,
                content_type: str, metadata: dict[str, str] | None = None) -> None:
    """Upload ``src`` to ``key``: one PUT, or a multipart upload that boto3 aborts if any part fails."""
    extra = {"ContentType": content_type, "Metadata": metadata or {}}
    client.upload_file(str(src), bucket, key, ExtraArgs=extra, Config=transfer_config(settings))


def head(client: Any, bucket: str, key: str) -> dict | None:
    """HeadObject, or None when the object does not exist."""
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        if is_missing(exc):
            return None
        raise


def quiet_boto_logs() -> None:
    """Keep botocore's debug chatter (which can include signed headers) out of our logs."""
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))


os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never probe cloud metadata endpoints
