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
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

KINDS = ("500", "503", "429", "reset", "reset-after", "500-after", "forbidden", "ignore-if", "reject-if", "delay",
         "barrier")
#: Kinds that are faults (counted as injected); delay and barrier only shape timing.
FAULT_KINDS = KINDS[:9]

_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "500-after": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "429": (429, "TooManyRequests", "Too many requests, slow down."),
    "forbidden": (403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."),
    "reject-if": (501, "NotImplemented", "A header you provided implies functionality that is not implemented"),
}
_CONDITIONS = ("if-match", "if-none-match")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "content-length"}
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
        return {"HEAD": "head_bucket", "PUT": "create_bucket", "DELETE": "delete_bucket"}.get(method, method), bucket, ""
    copy = "x-amz-copy-source" in {h.lower() for h in headers.keys()}
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
        return ((self.ops is None or op in self.ops)
                and (self.bucket is None or self.bucket == bucket)
                and (self.key_contains is None or self.key_contains in key)
                and (self.access_key is None or self.access_key == access_key))


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

    def start(self) -> "FaultProxy":
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
            self.rng = random.Random(self.seed if seed is None else seed)

    def add(self, kind: str, ops: Iterable[str] | str | None = None, *, nth: Iterable[int] | int | None = None,
            probability: float | None = None, times: int | None = None, key_contains: str | None = None,
            access_key: str | None = None, delay: float = 0.0, parties: int = 2, bucket: str | None = None) -> Rule:
        """Add a rule; with neither ``nth`` nor ``probability`` it fires on every matching call."""
        if isinstance(ops, str):
            ops = [ops]
        if isinstance(nth, int):
            nth = [nth]
        rule = Rule(kind, frozenset(ops) if ops is not None else None, frozenset(nth) if nth is not None else None,
                    probability, times, key_contains, access_key, delay, parties, bucket)
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

    def _decide(self, op: str, bucket: str, key: str, access_key: str | None, conditional: bool = False
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

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
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
        conditional = any(h.lower() in _CONDITIONS for h in self.headers.keys())
        rule = None if op == "moto-api" else self.owner._decide(op, bucket, key, access_key, conditional)
        kind = rule.kind if rule else None
        if kind == "reject-if":
            return self._error(kind)
        if kind in ("500", "503", "429", "forbidden"):
            return self._error(kind)
        if kind == "reset":
            return self._reset()
        if kind == "delay":
            time.sleep(rule.delay)
        if kind == "barrier":
            self._barrier(rule)
        status, reason, headers, data = self._forward(body, strip_conditions=kind == "ignore-if")
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

    def _forward(self, body: bytes, strip_conditions: bool = False) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=120)
        try:
            skip = _HOP_BY_HOP | (set(_CONDITIONS) if strip_conditions else set())
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()

    def _error(self, kind: str) -> None:
        status, code, message = _ERRORS[kind]
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>FAULT{int(time.time() * 1000)}</RequestId></Error>").encode()
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
