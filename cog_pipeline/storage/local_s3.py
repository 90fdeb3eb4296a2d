"""An S3 server on loopback (moto, served as its ThreadedMotoServer does) for the demo, tests and benchmarks.

moto (with flask, its server) is the optional extra ``demo``: nothing else of the pipeline needs it.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cog_pipeline.core.errors import PipelineError

#: Credentials the local server accepts (it accepts any); never real secrets.
LOCAL_ACCESS_KEY = "local-access-key"
LOCAL_SECRET_KEY = "local-secret-key"


@contextmanager
def local_s3_server() -> Iterator[str]:
    """Start an S3 server on 127.0.0.1 at a free port; yields its endpoint URL."""
    try:
        from moto.moto_server.threaded_moto_server import MotoRequestHandler
        from moto.server import create_backend_app
        from werkzeug.serving import make_server
    except ImportError as exc:  # moto, or flask (moto[server]), not installed
        raise PipelineError(
            f"the demo's local S3 server needs moto[server] ({exc}): pip install 'cog-pipeline[demo]'"
        ) from None

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request access log
    # What moto's ThreadedMotoServer does, with the dispatcher below.
    server = make_server("127.0.0.1", 0, _dispatcher(create_backend_app), True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="local-s3", daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join()


def _dispatcher(create_backend_app: Any) -> Any:
    """moto's request dispatcher, without listing moto's package directory on every request to tell a backend's
    name from a host (a stat of each of its ~180 folders: a quarter of the server's CPU per S3 request)."""
    from moto import backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    class Dispatcher(DomainDispatcherApplication):
        modules = frozenset(backends.list_of_moto_modules())

        def get_backend_for_host(self, host: str | None) -> Any:
            if host is None:
                return None
            if host == "moto_api" or host in self.modules:
                return host
            for backend, pattern in self.backend_url_patterns:
                if pattern.match(f"http://{host}"):
                    return backend
            return None

    return Dispatcher(create_backend_app)


def reset(endpoint: str) -> None:
    """Forget every bucket and object on a local server (between tests)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
