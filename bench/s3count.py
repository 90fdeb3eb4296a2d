"""A local S3 server (moto, as ``cog_pipeline.storage.local_s3``) that counts every request by S3 operation.

It runs in its own process (``CountingS3Server``), so the benchmark's Python never shares a GIL with
it and requests from every process (tick, Snakemake jobs, the aggregate) are counted in one place.
Counting is a WSGI middleware in front of moto's app: operation name from method + query + headers,
requests per operation, server-side seconds per operation, bytes in/out, peak concurrent requests.

Extra endpoints (not S3): ``GET /__bench__/counts``, ``POST /__bench__/reset-counts`` and
``POST /__bench__/seed`` (``{"bucket", "keys", "size"}``: create objects straight in moto's backend,
uncounted, to build large buckets fast).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

LIST_OPS = {"ListObjectsV2", "ListObjects", "ListBuckets", "ListMultipartUploads", "ListParts"}
HEAD_OPS = {"HeadObject", "HeadBucket"}


def operation(method: str, path: str, query: str, headers: dict[str, str]) -> str:
    """The S3 API operation of a path-style request."""
    q = parse_qs(query, keep_blank_values=True)
    parts = path.lstrip("/").split("/", 1)
    has_key = len(parts) == 2 and parts[1] != ""
    if path in ("", "/"):
        return "ListBuckets"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "GET":
        if has_key:
            return "ListParts" if "uploadId" in q else "GetObject"
        if "uploads" in q:
            return "ListMultipartUploads"
        if q.get("list-type") == ["2"]:
            return "ListObjectsV2"
        if "location" in q:
            return "GetBucketLocation"
        return "ListObjects"
    if method == "PUT":
        if not has_key:
            return "CreateBucket"
        if "partNumber" in q:
            return "UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart"
        return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
        if "delete" in q:
            return "DeleteObjects"
        return "PostObject"
    if method == "DELETE":
        if "uploadId" in q:
            return "AbortMultipartUpload"
        return "DeleteObject" if has_key else "DeleteBucket"
    return f"{method}?"


class Counter:
    """Thread-safe per-operation counts (the middleware's state)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.counts: dict[str, int] = defaultdict(int)
            self.seconds: dict[str, float] = defaultdict(float)
            self.bytes_in = 0
            self.bytes_out = 0
            self.in_flight = 0
            self.peak_in_flight: dict[str, int] = defaultdict(int)
            self.first = self.last = None

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "counts": dict(self.counts),
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "peak_in_flight": dict(self.peak_in_flight),
                "total": sum(self.counts.values()),
            }


def make_app() -> tuple[Any, Counter]:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    moto_app = DomainDispatcherApplication(create_backend_app)
    counter = Counter()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/__bench__/"):
            return _control(environ, start_response, counter)
        if path.startswith("/moto-api/"):
            return moto_app(environ, start_response)
        headers = {k[5:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
        op = operation(environ["REQUEST_METHOD"], path, environ.get("QUERY_STRING", ""), headers)
        started = time.perf_counter()
        with counter.lock:
            counter.counts[op] += 1
            counter.in_flight += 1
            counter.peak_in_flight[op] = max(counter.peak_in_flight[op], counter.in_flight)
            counter.bytes_in += int(environ.get("CONTENT_LENGTH") or 0)
        try:
            body = list(moto_app(environ, start_response))
        finally:
            with counter.lock:
                counter.in_flight -= 1
                counter.seconds[op] += time.perf_counter() - started
        with counter.lock:
            counter.bytes_out += sum(len(b) for b in body)
        return body

    return app, counter


def _control(environ: dict[str, Any], start_response: Any, counter: Counter) -> list[bytes]:
    path = environ["PATH_INFO"]
    body: Any = {"ok": True}
    if path == "/__bench__/counts":
        body = counter.snapshot()
    elif path == "/__bench__/reset-counts":
        counter.reset()
    elif path == "/__bench__/seed":
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        length = int(environ.get("CONTENT_LENGTH") or 0)
        req = json.loads(environ["wsgi.input"].read(length))
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        value = b"x" * int(req.get("size", 1))
        for key in req["keys"]:
            backend.put_object(req["bucket"], key, value)
        body = {"ok": True, "seeded": len(req["keys"])}
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def serve(port_file: str) -> None:
    """Serve on 127.0.0.1 (free port, written to ``port_file``) until killed."""
    import logging

    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app, _counter = make_app()
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    tmp = port_file + ".tmp"
    Path(tmp).write_text(str(server.server_address[1]))
    os.replace(tmp, port_file)
    server.serve_forever()


class CountingS3Server:
    """Context manager: the counting server in a child process; ``endpoint``, ``counts()``, ``reset()``."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    def __enter__(self) -> CountingS3Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        port_file = self.workdir / "s3count.port"
        port_file.unlink(missing_ok=True)
        log = open(self.workdir / "s3count.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "serve", str(port_file)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 60
        while not port_file.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"counting S3 server did not start; see {self.workdir / 's3count.log'}")
            time.sleep(0.05)
        self.endpoint = f"http://127.0.0.1:{port_file.read_text().strip()}"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _call(self, path: str, payload: Any = None, method: str = "POST") -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.endpoint + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read() or b"{}")

    def counts(self) -> dict[str, Any]:
        return self._call("/__bench__/counts", method="GET")

    def reset_counts(self) -> None:
        self._call("/__bench__/reset-counts")

    def reset_all(self) -> None:
        """Forget every bucket and object (moto reset) and the counts."""
        urllib.request.urlopen(
            urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST"), timeout=30
        ).close()
        self.reset_counts()

    def seed(self, bucket: str, keys: list[str], size: int = 1) -> None:
        for i in range(0, len(keys), 20000):
            self._call("/__bench__/seed", {"bucket": bucket, "keys": keys[i : i + 20000], "size": size})


def summarize(counts: dict[str, Any]) -> dict[str, int]:
    """Requests grouped: list, head, get, put (incl. parts), delete, other."""
    groups: dict[str, int] = defaultdict(int)
    for op, n in counts.get("counts", {}).items():
        if op in LIST_OPS:
            groups["list"] += n
        elif op in HEAD_OPS:
            groups["head"] += n
        elif op == "GetObject":
            groups["get"] += n
        elif op in ("PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload", "CopyObject"):
            groups["put"] += n
        elif op.startswith("Delete"):
            groups["delete"] += n
        else:
            groups["other"] += n
    return dict(groups)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
