"""Presigned S3 requests: signed on the access point with its keys, sent from an execute point that has none.

A :class:`SignedRequest` is a method, a URL (SigV4 query authentication: the URL names the access key *id*
and carries a signature valid for ``expires`` seconds, never the secret) and the headers it was signed with
(the job must send them exactly: ``If-Match`` pinning an input to its listed ETag, the outputs' Content-Type
and ``x-amz-meta-*``). :func:`download` and :func:`upload` send them with plain HTTPS (``http.client``,
verified against the run's CA bundle), with bounded retries of what S3 answers for a busy server.

Uploads are single PUTs (S3's limit: 5 GiB) with ``Content-MD5``: a server that checks it (AWS, Ceph RGW)
stores the whole body or nothing; the access point confirms the stored object afterwards all the same.
"""

from __future__ import annotations

import base64
import calendar
import dataclasses
import hashlib
import http.client
import logging
import random
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cog_pipeline.core.errors import PipelineError
from cog_pipeline.storage import s3

log = logging.getLogger(__name__)

#: Presigned URLs are valid this long by default (``s3.presign_expiry_s``): a batch's conversion, plus its
#: wait in the pool's queue, must start before they expire.
DEFAULT_EXPIRY_S = 6 * 3600
#: SigV4's longest validity (7 days).
MAX_EXPIRY_S = 7 * 24 * 3600
#: S3's largest single PUT.
SINGLE_PUT_LIMIT = 5 * 1024**3
_BLOCK = 1024 * 1024
#: HTTP statuses retried (with full-jitter backoff, as boto3's standard mode).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class SignedRequest:
    """One presigned request: what to send, to where, with which signed headers."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SignedRequest:
        return cls(
            method=str(data["method"]),
            url=str(data["url"]),
            headers={str(k): str(v) for k, v in (data.get("headers") or {}).items()},
        )

    @property
    def expires_at(self) -> float | None:
        """When the signature runs out (epoch seconds, from X-Amz-Date + X-Amz-Expires), None if unsigned."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.url).query)
        try:
            signed = calendar.timegm(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
            return float(signed + int(query["X-Amz-Expires"][0]))
        except (KeyError, IndexError, ValueError):
            return None

    @property
    def where(self) -> str:
        """The URL without its query (no signature, no key id): for messages and logs."""
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class PresignedError(PipelineError):
    """A presigned request failed: the HTTP status (0: no answer), the S3 error code and message."""

    def __init__(self, request: SignedRequest, status: int, code: str = "", message: str = ""):
        self.request, self.status, self.code, self.message = request, status, code, message
        what = f"HTTP {status} {code} {message}".strip() if status else message
        super().__init__(f"{request.method} {urllib.parse.unquote(request.where)} failed: {what}")

    @property
    def expired(self) -> bool:
        """The URL's validity ran out: AWS answers 403 AccessDenied 'Request has expired'; Ceph RGW a bare 403
        AccessDenied, taken for expiry when the URL's own X-Amz-Date + X-Amz-Expires has passed."""
        if self.status != 403:
            return False
        ends = self.request.expires_at
        return "expired" in f"{self.code} {self.message}".lower() or (ends is not None and time.time() >= ends)

    @property
    def denied(self) -> bool:
        return self.status == 403 and not self.expired

    @property
    def precondition_failed(self) -> bool:
        return self.status == 412

    @property
    def missing(self) -> bool:
        return self.status == 404


# ------------------------------------------------------------------------------------- signing (access point)


def signing_client(settings: s3.S3Settings) -> Any:
    """A client that only signs (no request is sent to presign): checksums ``when_required``, so that no
    checksum of a body not yet made is asked for in a URL."""
    return s3.make_client(dataclasses.replace(settings, checksums="when_required"))


def check_expiry(expires: Any) -> int:
    """``s3.presign_expiry_s`` as seconds (PipelineError unless 60 .. 7 days)."""
    if not isinstance(expires, int) or isinstance(expires, bool) or not 60 <= expires <= MAX_EXPIRY_S:
        raise PipelineError(
            f"s3.presign_expiry_s must be a whole number of seconds from 60 to {MAX_EXPIRY_S} "
            f"(7 days, SigV4's limit), not {expires!r}"
        )
    return expires


def presign_get(client: Any, bucket: str, key: str, expires: int, etag: str | None = None) -> SignedRequest:
    """A GET of ``key``; ``etag`` pins it (a signed ``If-Match``: a replaced object answers 412)."""
    params: dict[str, Any] = {"Bucket": bucket, "Key": key}
    headers: dict[str, str] = {}
    if etag:
        params["IfMatch"] = headers["If-Match"] = etag
    url = client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires, HttpMethod="GET")
    return SignedRequest("GET", url, headers)


def presign_put(
    client: Any, bucket: str, key: str, expires: int, content_type: str, metadata: dict[str, str]
) -> SignedRequest:
    """A PUT of ``key`` with this Content-Type and user metadata (both signed: the job cannot change them)."""
    params = {"Bucket": bucket, "Key": key, "ContentType": content_type, "Metadata": metadata}
    url = client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires, HttpMethod="PUT")
    headers = {"Content-Type": content_type, **{f"x-amz-meta-{k}": v for k, v in metadata.items()}}
    return SignedRequest("PUT", url, headers)


# ------------------------------------------------------------------------------------- sending (execute point)


@dataclass(frozen=True)
class Transport:
    """How presigned requests are sent: CA bundle (None: the system's), timeouts, attempts."""

    ca_bundle: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 8

    @classmethod
    def from_settings(cls, settings: s3.S3Settings) -> Transport:
        return cls(
            ca_bundle=s3.ca_bundle(settings),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            max_attempts=max(1, settings.max_attempts),
        )

    def connection(self, url: str) -> tuple[http.client.HTTPConnection, str]:
        """A connection to ``url``'s host and the request target (path and query) to send."""
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.scheme == "https":
            context = (
                ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else ssl.create_default_context()
            )
            return http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=self.connect_timeout, context=context, blocksize=_BLOCK
            ), target
        if parts.scheme != "http":
            raise PipelineError(f"presigned URL of unknown scheme {parts.scheme!r}")
        return http.client.HTTPConnection(
            parts.hostname or "", parts.port, timeout=self.connect_timeout, blocksize=_BLOCK
        ), target


_XML_FIELD = re.compile(r"<(Code|Message)>([^<]*)</\1>")


def _error(request: SignedRequest, response: http.client.HTTPResponse) -> PresignedError:
    body = response.read(16384).decode("utf-8", errors="replace") if request.method != "HEAD" else ""
    fields = dict(_XML_FIELD.findall(body))
    return PresignedError(
        request, response.status, fields.get("Code", response.reason or ""), fields.get("Message", "")
    )


def _attempts(transport: Transport, request: SignedRequest, once: Any) -> Any:
    """``once()`` until it succeeds, at most ``max_attempts`` times for a retryable failure (connection
    lost, timeout, 429/5xx), with full-jitter backoff (cap 20 s); the last failure is raised."""
    for attempt in range(1, transport.max_attempts + 1):
        try:
            return once()
        except PresignedError as exc:
            if exc.status not in RETRY_STATUSES or attempt == transport.max_attempts:
                raise
            why = str(exc)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise PresignedError(
                    request,
                    0,
                    message=f"TLS error: the server's certificate is not trusted "
                    f"({exc.verify_message}); give the site CA with "
                    "--ca-bundle FILE",
                ) from None
            if attempt == transport.max_attempts:
                raise PresignedError(request, 0, message=f"{type(exc).__name__}: {exc}") from None
            why = f"{type(exc).__name__}: {exc}"
        delay = min(random.random() * 2 ** (attempt - 1), 20.0)
        log.info(
            "%s %s: %s; attempt %d of %d in %.1f s",
            request.method,
            request.where,
            why,
            attempt + 1,
            transport.max_attempts,
            delay,
        )
        time.sleep(delay)
    raise AssertionError("unreachable")


def _connect(transport: Transport, conn: http.client.HTTPConnection) -> None:
    """Open ``conn`` (within the connect timeout), then allow the read timeout per socket operation."""
    conn.connect()
    if conn.sock is not None:
        conn.sock.settimeout(transport.read_timeout)


def download(
    transport: Transport, request: SignedRequest, dest: Path, size: int | None = None, etag: str | None = None
) -> None:
    """GET ``request`` into ``dest``; the answer's length and ETag must be ``size`` and ``etag`` (a server
    that ignores If-Match is caught here: a single GET, so the body is one version's)."""

    def once() -> None:
        conn, target = transport.connection(request.url)
        try:
            _connect(transport, conn)
            conn.request("GET", target, headers=request.headers)
            response = conn.getresponse()
            if response.status != 200:
                raise _error(request, response)
            got_etag = response.getheader("ETag")
            if etag and got_etag and got_etag.strip('"') != etag.strip('"'):
                raise PresignedError(
                    request, 412, "PreconditionFailed", f"the object's ETag is {got_etag}, not {etag} as listed"
                )
            written = 0
            with open(dest, "wb") as fh:
                while block := response.read(_BLOCK):
                    fh.write(block)
                    written += len(block)
            if size is not None and written != size:
                raise http.client.IncompleteRead(b"", size - written)
        finally:
            conn.close()

    _attempts(transport, request, once)


def md5_of(path: Path) -> str:
    """The hex MD5 of a file (one pass, 1 MiB reads): the ETag S3 gives it as a single PUT."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def upload(transport: Transport, request: SignedRequest, src: Path, md5_hex: str) -> str:
    """PUT ``src`` to ``request`` in one request with ``Content-MD5``; returns the ETag the server answered.

    Larger than S3's single-PUT limit: PipelineError before anything is sent."""
    size = src.stat().st_size
    if size > SINGLE_PUT_LIMIT:
        raise PipelineError(
            f"{src.name} is {size} bytes, more than the {SINGLE_PUT_LIMIT} bytes of one S3 PUT, "
            "the only upload a presigned URL allows here: run it with s3.transfer: direct"
        )
    headers = {
        **request.headers,
        "Content-Length": str(size),
        "Content-MD5": base64.b64encode(bytes.fromhex(md5_hex)).decode("ascii"),
    }

    def once() -> str:
        conn, target = transport.connection(request.url)
        try:
            _connect(transport, conn)
            with open(src, "rb") as body:
                conn.request("PUT", target, body=body, headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                raise _error(request, response)
            response.read()
            return str(response.getheader("ETag") or "")
        finally:
            conn.close()

    return str(_attempts(transport, request, once))
