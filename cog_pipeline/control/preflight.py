"""Checks made before anything is claimed: both buckets reachable, what the endpoint honours
(``endpoint``), the working directory and temp dir are writable and have room. Each failure is a
``PipelineError`` (exit 2) and leaves the buckets untouched."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cog_pipeline.control.options import TickOptions
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.storage import endpoint, s3
from cog_pipeline.storage.s3 import S3_ERRORS

log = logging.getLogger(__name__)

#: Free space needed in the working directory and the temp dir before anything is claimed.
MIN_FREE_BYTES = 64 * 1024 * 1024


def connect(opts: TickOptions) -> Any:
    """A client after checking that both buckets exist and are reachable (else PipelineError)."""
    client = s3.make_client(opts.settings)
    s3.check_bucket(client, opts.input_bucket, "input")
    s3.check_bucket(client, opts.output_bucket, "output")
    return client


def check_local_resources(opts: TickOptions, config: dict[str, Any]) -> None:
    """Before claiming anything for the local executor: the working directory and the temp dir (of the
    run ``config``) are writable and have room (PipelineError otherwise)."""
    tmp_dir = config.get("tmp_dir") or tempfile.gettempdir()
    for what, path in (("working directory", Path(opts.workdir)), ("temp dir (tmp_dir)", Path(tmp_dir))):
        try:
            if what == "working directory":
                path.mkdir(parents=True, exist_ok=True)
            os.rmdir(tempfile.mkdtemp(prefix=".cog-pipeline-probe-", dir=path))
            free = shutil.disk_usage(path).free
        except OSError as exc:
            raise PipelineError(f"{what} {path} is not writable ({exc.strerror}); nothing was claimed") from None
        if free < MIN_FREE_BYTES:
            raise PipelineError(
                f"only {free // 2**20} MiB free in the {what} {path} (at least "
                f"{MIN_FREE_BYTES // 2**20} MiB needed); nothing was claimed"
            )


def check_endpoint(client: Any, opts: TickOptions) -> endpoint.Semantics:
    """What the endpoint honours (probed, or cached in the working directory) and what the tick does
    about it: every fallback is a WARNING; a server the pipeline cannot claim on safely is a
    PipelineError, before anything is claimed."""
    try:
        caps = endpoint.capabilities(client, opts.settings, opts.input_bucket, opts.workdir, every=opts.probe_every)
    except S3_ERRORS as exc:
        raise PipelineError(
            f"cannot write to input bucket '{opts.input_bucket}': {s3.describe_error(exc)}; nothing was claimed"
        ) from None
    sem = endpoint.semantics(caps, opts.settings, opts.settings.delete_fallback)
    for text in sem.fallbacks:
        log.warning("S3 fallback (%s): %s", caps.server or caps.endpoint, text)
    return sem
