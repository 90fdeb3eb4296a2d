"""An S3 server on loopback (moto's ThreadedMotoServer) for the demo, the tests and the benchmarks.

moto (with flask, its server) is the optional extra ``demo``: nothing else of the pipeline needs it.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from cog_pipeline.core.errors import PipelineError

#: Credentials the local server accepts (it accepts any); never real secrets.
LOCAL_ACCESS_KEY = "local-access-key"
LOCAL_SECRET_KEY = "local-secret-key"


@contextmanager
def local_s3_server() -> Iterator[str]:
    """Start an S3 server on 127.0.0.1 at a free port; yields its endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # moto, or flask (moto[server]), not installed
        raise PipelineError(
            f"the demo's local S3 server needs moto[server] ({exc}): pip install 'cog-pipeline[demo]'"
        ) from None

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request access log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def reset(endpoint: str) -> None:
    """Forget every bucket and object on a local server (between tests)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
