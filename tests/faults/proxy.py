"""A fault-injecting HTTP proxy in front of the test S3 server (moto over HTTP).

Every request the code under test makes goes through it; rules decide, per S3 operation, which
requests get a fault instead of (or after) the real answer:

==============  ===================================================================================
kind            what the client sees
==============  ===================================================================================
``500``         500 InternalError (request not applied)
``503``         503 SlowDown, S3's own throttling answer (not applied)
``429``         429 TooManyRequests, what some S3-compatible stores send when throttling (not applied)
``reset``       the connection reset (RST) before any answer (not applied)
``reset-after`` the request IS applied upstream, then the connection is reset: the client cannot
                know it succeeded and retries (lost response; tests idempotency)
``500-after``   applied upstream, then answered 500 (same ambiguity, with an answer)
``forbidden``   403 InvalidAccessKeyId (for requests signed with ``access_key``, or all)
``ignore-if``   forwarded without its If-Match / If-None-Match headers: an endpoint without
                conditional writes that silently ignores them
``reject-if``   501 NotImplemented to a request carrying If-Match / If-None-Match: an endpoint that
                refuses them
``delay``       answered normally after ``delay`` seconds
``barrier``     held until ``parties`` matching requests are waiting, then all forwarded together
==============  ===================================================================================

Server behaviours: kinds that emulate documented quirks of real S3-compatible servers that cannot be
installed here, so the endpoint probe and its fallbacks can be tested against them. Like ``ignore-if``
and ``reject-if`` they count as injected faults, but only on the requests they apply to (the others
are neither seen by the rule nor changed); emulated errors are S3 XML (``<Error><Code>``...):

=====================  ============================================================================
kind                   what the client sees
=====================  ============================================================================
``if-match-unquoted``  Ceph RGW 16.2 PutObject: a ``put`` whose ``If-Match`` is a quoted ETag
                       (``"..."``) is answered 412 PreconditionFailed, not forwarded; an unquoted
                       one is forwarded re-quoted (so the server evaluates it normally; ``*`` as is)
``ignore-if-missing``  MinIO before Aug 2025 (minio/minio#21526): a ``put`` with ``If-Match`` to a key
                       that does not exist (the proxy HEADs it upstream with the request's headers,
                       no body, no conditions) is forwarded WITHOUT ``If-Match``, so it creates the
                       object; with the key present it is forwarded unchanged (and the rule does not
                       fire)
``require-md5``        older MinIO (minio/minio#20849): a ``delete_objects`` without ``Content-MD5`` is
                       answered 400 MissingContentMD5, not forwarded
``reject-trailer``     Ceph RGW before Squid, MinIO before RELEASE.2025-01-20: any request with
                       ``x-amz-trailer``, a ``Content-Encoding`` containing ``aws-chunked`` or
                       ``x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER`` is answered 411
                       MissingContentLength (RGW's answer), not forwarded
``store-framing``      a server that stores aws-chunked framing as data (boto/boto3#4435): a PUT with
                       an ``x-amz-checksum-<algorithm>`` header and no trailer is forwarded with its
                       body in aws-chunked framing, the header as the trailer
                       (``<hexlen>\\r\\n<body>\\r\\n0\\r\\nx-amz-checksum-crc32:<b64>\\r\\n\\r\\n``,
                       Content-Length adjusted): the answer is a success, but what is stored is not
                       what was sent
=====================  ============================================================================

A rule matches an operation (``list``, ``get``, ``head``, ``put``, ``copy``, ``delete``,
``create_multipart``, ``upload_part``, ``complete_multipart``, ``abort_multipart``,
``head_bucket``, ...) and optionally a key substring or an access key; it fires on the ``nth``
matching calls (1-based), or with a ``probability`` drawn from a seeded RNG, at most ``times`` times.
"""

from __future__ import annotations

import http.client
import http.server
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: Kinds that emulate a real server's behaviour (the second table); faults, like ignore-if and reject-if.
QUIRK_KINDS = ("if-match-unquoted", "ignore-if-missing", "require-md5", "reject-trailer", "store-framing")
KINDS = (
    "500",
    "503",
    "429",
    "reset",
    "reset-after",
    "500-after",
    "forbidden",
    "ignore-if",
    "reject-if",
    "delay",
    "barrier",
    *QUIRK_KINDS,
)
#: Kinds that are faults (counted as injected); delay and barrier only shape timing.
FAULT_KINDS = (
    "500",
    "503",
    "429",
    "reset",
    "reset-after",
    "500-after",
    "forbidden",
    "ignore-if",
    "reject-if",
    *QUIRK_KINDS,
)

_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "500-after": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "429": (429, "TooManyRequests", "Too many requests, slow down."),
    "forbidden": (403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."),
    "reject-if": (501, "NotImplemented", "A header you provided implies functionality that is not implemented"),
    "if-match-unquoted": (412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold"),
    "require-md5": (400, "MissingContentMD5", "Missing required header for this request: Content-MD5"),
    "reject-trailer": (411, "MissingContentLength", "You must provide the Content-Length HTTP header."),
}
_CONDITIONS = ("if-match", "if-none-match")
_TRAILER_SHA256 = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
_CHECKSUM_HEADER = re.compile(r"x-amz-checksum-(crc32|crc32c|crc64nvme|sha1|sha256)", re.IGNORECASE)
#: Headers the ignore-if-missing probe (a HEAD) does not copy from the request it probes for.
_PROBE_SKIP = {
    "expect",
    "content-md5",
    "content-type",
    "content-encoding",
    "x-amz-trailer",
    "x-amz-decoded-content-length",
    "x-amz-sdk-checksum-algorithm",
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def classify(method: str, target: str, headers: http.client.HTTPMessage) -> tuple[str, str, str]:
    """(operation, bucket, object key) of a path-style S3 request."""
    parsed = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
    path = parsed.path
    if path.startswith("/moto-api"):
        return "moto-api", "", ""
    bucket, _, key = path.lstrip("/").partition("/")
    key = urllib.parse.unquote(key)
    if not key:
        if method == "GET":
            return ("list_uploads" if "uploads" in query else "list"), bucket, ""
        if method == "POST" and "delete" in query:
            return "delete_objects", bucket, ""
        bucket_op = {"HEAD": "head_bucket", "PUT": "create_bucket", "DELETE": "delete_bucket"}.get(method, method)
        return bucket_op, bucket, ""
    copy = "x-amz-copy-source" in {h.lower() for h in headers}
    if method == "PUT" and "partNumber" in query:
        return ("upload_part_copy" if copy else "upload_part"), bucket, key
    if method == "PUT":
        return ("copy" if copy else "put"), bucket, key
    if method == "POST" and "uploads" in query:
        return "create_multipart", bucket, key
    if method == "POST" and "uploadId" in query:
        return "complete_multipart", bucket, key
    if method == "DELETE" and "uploadId" in query:
        return "abort_multipart", bucket, key
    if method == "GET" and "uploadId" in query:
        return "list_parts", bucket, key
    return {"GET": "get", "HEAD": "head", "DELETE": "delete"}.get(method, method), bucket, key


def has_trailer(headers: http.client.HTTPMessage) -> bool:
    """Whether a request announces an aws-chunked body or a trailer (what ``reject-trailer`` refuses)."""
    return (
        "x-amz-trailer" in headers
        or "aws-chunked" in (headers.get("Content-Encoding") or "").lower()
        or (headers.get("x-amz-content-sha256") or "").upper() == _TRAILER_SHA256
    )


def checksum_header(headers: http.client.HTTPMessage) -> tuple[str, str] | None:
    """The first ``x-amz-checksum-<algorithm>`` header of a request, as (name, value)."""
    return next(((name, value) for name, value in headers.items() if _CHECKSUM_HEADER.fullmatch(name)), None)


def applies(kind: str, method: str, op: str, headers: http.client.HTTPMessage, missing: bool | None = None) -> bool:
    """Whether a rule of ``kind`` has anything to do with a request: the others are neither seen (for ``nth``)
    nor changed by it. ``missing``: whether the request's key is absent upstream (probed for ignore-if-missing)."""
    if kind in ("ignore-if", "reject-if"):
        return any(h.lower() in _CONDITIONS for h in headers)
    if kind == "if-match-unquoted":
        return op == "put" and "If-Match" in headers
    if kind == "ignore-if-missing":
        return op == "put" and "If-Match" in headers and missing is True
    if kind == "require-md5":
        return op == "delete_objects" and "Content-MD5" not in headers
    if kind == "reject-trailer":
        return has_trailer(headers)
    if kind == "store-framing":
        return method == "PUT" and checksum_header(headers) is not None and not has_trailer(headers)
    return True


def aws_chunked(body: bytes, trailer: tuple[str, str]) -> bytes:
    """``body`` in aws-chunked framing, one data chunk (none if empty), then ``trailer`` as the trailer."""
    name, value = trailer
    chunk = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
    return chunk + b"0\r\n%s:%s\r\n\r\n" % (name.lower().encode("ascii"), value.encode("ascii"))


@dataclass
class Rule:
    """One fault rule (see the module docstring)."""

    kind: str
    ops: frozenset[str] | None = None
    nth: frozenset[int] | None = None
    probability: float | None = None
    times: int | None = None
    key_contains: str | None = None
    access_key: str | None = None
    delay: float = 0.0
    parties: int = 2
    bucket: str | None = None
    seen: int = 0
    fired: int = 0
    _waiting: int = 0
    _released: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")

    def matches(self, op: str, bucket: str, key: str, access_key: str | None) -> bool:
        return (
            (self.ops is None or op in self.ops)
            and (self.bucket is None or self.bucket == bucket)
            and (self.key_contains is None or self.key_contains in key)
            and (self.access_key is None or self.access_key == access_key)
        )


class FaultProxy:
    """Threaded HTTP proxy to ``upstream`` (``http://host:port``) with fault rules."""

    def __init__(self, upstream: str, seed: int = 20261125):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.rng = random.Random(seed)
        self.seed = seed
        self.lock = threading.Lock()
        self.rules: list[Rule] = []
        self.calls: Counter[str] = Counter()
        self.injected: Counter[tuple[str, str]] = Counter()
        self.log: list[tuple[str, str, str]] = []
        self.access_keys: set[str] = set()
        #: The latest requests sent upstream, as (method, target, headers): what the server was really asked.
        self.forwarded: deque[tuple[str, str, dict[str, str]]] = deque(maxlen=256)
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self, seed: int | None = None) -> None:
        """No rules, no counts (between tests)."""
        with self.lock:
            self.rules.clear()
            self.calls.clear()
            self.injected.clear()
            self.log.clear()
            self.access_keys.clear()
            self.forwarded.clear()
            self.rng = random.Random(self.seed if seed is None else seed)

    def add(
        self,
        kind: str,
        ops: Iterable[str] | str | None = None,
        *,
        nth: Iterable[int] | int | None = None,
        probability: float | None = None,
        times: int | None = None,
        key_contains: str | None = None,
        access_key: str | None = None,
        delay: float = 0.0,
        parties: int = 2,
        bucket: str | None = None,
    ) -> Rule:
        """Add a rule; with neither ``nth`` nor ``probability`` it fires on every matching call."""
        if isinstance(ops, str):
            ops = [ops]
        if isinstance(nth, int):
            nth = [nth]
        rule = Rule(
            kind,
            frozenset(ops) if ops is not None else None,
            frozenset(nth) if nth is not None else None,
            probability,
            times,
            key_contains,
            access_key,
            delay,
            parties,
            bucket,
        )
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        with self.lock:
            self.rules.clear()

    def kinds_injected(self) -> set[str]:
        return {kind for _op, kind in self.injected}

    def total_injected(self) -> int:
        return sum(self.injected.values())

    def _wants_probe(self, op: str, bucket: str, key: str, access_key: str | None) -> bool:
        """Whether an ignore-if-missing rule could fire on this request (then its key is probed upstream)."""
        with self.lock:
            return any(
                rule.kind == "ignore-if-missing"
                and rule.matches(op, bucket, key, access_key)
                and (rule.times is None or rule.fired < rule.times)
                for rule in self.rules
            )

    def _decide(
        self,
        op: str,
        bucket: str,
        key: str,
        access_key: str | None,
        conditional: bool = False,
        applies: Callable[[str], bool] | None = None,
    ) -> Rule | None:
        with self.lock:
            self.calls[op] += 1
            if access_key:
                self.access_keys.add(access_key)
            for rule in self.rules:
                if not rule.matches(op, bucket, key, access_key):
                    continue
                if rule.kind in ("ignore-if", "reject-if") and not conditional:
                    continue
                if applies is not None and not applies(rule.kind):
                    continue
                rule.seen += 1
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if rule.nth is not None:
                    fire = rule.seen in rule.nth
                elif rule.probability is not None:
                    fire = self.rng.random() < rule.probability
                else:
                    fire = True
                if fire:
                    rule.fired += 1
                    if rule.kind in FAULT_KINDS:
                        self.injected[(op, rule.kind)] += 1
                        self.log.append((op, rule.kind, key))
                    return rule
        return None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class signature
        pass

    def do_GET(self) -> None:  # http.server naming
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._body()
        op, bucket, key = classify(self.command, self.path, self.headers)
        match = _CREDENTIAL.search(self.headers.get("Authorization", ""))
        access_key = match.group(1) if match else None
        conditional = any(h.lower() in _CONDITIONS for h in self.headers)
        missing = None
        if op == "put" and "If-Match" in self.headers and self.owner._wants_probe(op, bucket, key, access_key):
            missing = self._probe_missing()
        rule = (
            None
            if op == "moto-api"
            else self.owner._decide(
                op,
                bucket,
                key,
                access_key,
                conditional,
                lambda kind: applies(kind, self.command, op, self.headers, missing),
            )
        )
        kind = rule.kind if rule else None
        if kind == "reject-if":
            return self._error(kind)
        if kind in ("require-md5", "reject-trailer"):
            return self._error(kind)
        forward: dict = {}
        if kind == "if-match-unquoted":
            value = self.headers["If-Match"].strip()
            if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
                return self._error(kind)
            forward = {"set_headers": {"If-Match": value if value == "*" else f'"{value}"'}}
        if kind == "ignore-if-missing":
            forward = {"drop": ("If-Match",)}
        if kind == "store-framing":
            body = aws_chunked(body, checksum_header(self.headers))
        if kind in ("500", "503", "429", "forbidden"):
            return self._error(kind)
        if kind == "reset":
            return self._reset()
        if kind == "delay":
            time.sleep(rule.delay)
        if kind == "barrier":
            self._barrier(rule)
        status, reason, headers, data = self._forward(body, strip_conditions=kind == "ignore-if", **forward)
        if kind == "reset-after":
            return self._reset()
        if kind == "500-after":
            return self._error(kind)
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            length = next((v for n, v in headers if n.lower() == "content-length"), "0")
            self.send_header("Content-Length", length)
            self.end_headers()
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def _barrier(self, rule: Rule) -> None:
        with self.owner.lock:
            rule._waiting += 1
            if rule._waiting >= rule.parties:
                rule._released.set()
        rule._released.wait(timeout=30)

    def _forward(
        self,
        body: bytes,
        strip_conditions: bool = False,
        *,
        drop: Iterable[str] = (),
        set_headers: dict[str, str] | None = None,
        method: str | None = None,
        target: str | None = None,
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request upstream (``method``/``target`` instead of its own, headers in ``drop`` left out,
        those of ``set_headers`` replaced) and return its answer."""
        method = method or self.command
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=120)
        try:
            skip = (
                _HOP_BY_HOP
                | (set(_CONDITIONS) if strip_conditions else set())
                | {name.lower() for name in drop}
                | {name.lower() for name in set_headers or {}}
            )
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            headers.update(set_headers or {})
            if body or method in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            self.owner.forwarded.append((method, target or self.path, dict(headers)))
            conn.request(method, target or self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _probe_missing(self) -> bool:
        """Whether the request's key is absent upstream: a HEAD of it with the request's own headers (moto
        does not verify signatures), without its body, conditions or body-describing headers."""
        path = urllib.parse.urlsplit(self.path).path
        status, _reason, _headers, _data = self._forward(
            b"",
            strip_conditions=True,
            method="HEAD",
            target=path,
            drop=_PROBE_SKIP | {h for h, _ in self.headers.items() if _CHECKSUM_HEADER.fullmatch(h)},
        )
        return status == 404

    def _error(self, kind: str) -> None:
        status, code, message = _ERRORS[kind]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>FAULT{int(time.time() * 1000)}</RequestId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        if self.command == "HEAD":
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _reset(self) -> None:
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
