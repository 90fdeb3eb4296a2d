"""Checks made before anything is claimed: both buckets reachable, the endpoint honours conditional
writes, the working directory and temp dir are writable and have room. Each failure is a
``PipelineError`` (exit 2) and leaves the buckets untouched."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import botocore.exceptions

from . import s3
from .claims import S3_ERRORS
from .errors import PipelineError
from .naming import STATE_PREFIX
from .options import TickOptions
from .rundirs import merge_config

log = logging.getLogger(__name__)

#: Free space needed in the working directory and the temp dir before anything is claimed.
MIN_FREE_BYTES = 64 * 1024 * 1024


def connect(opts: TickOptions) -> Any:
    """A client after checking that both buckets exist and are reachable (else PipelineError)."""
    client = s3.make_client(opts.settings)
    s3.check_bucket(client, opts.input_bucket, "input")
    s3.check_bucket(client, opts.output_bucket, "output")
    return client


def check_local_resources(opts: TickOptions) -> None:
    """Before claiming anything for the local executor: the working directory and the temp dir are
    writable and have room (PipelineError otherwise)."""
    from . import driver

    tmp_dir = merge_config(driver.default_config(), opts.run_overrides).get("tmp_dir") or tempfile.gettempdir()
    for what, path in (("working directory", Path(opts.workdir)), ("temp dir (tmp_dir)", Path(tmp_dir))):
        try:
            if what == "working directory":
                path.mkdir(parents=True, exist_ok=True)
            os.rmdir(tempfile.mkdtemp(prefix=".cog-pipeline-probe-", dir=path))
            free = shutil.disk_usage(path).free
        except OSError as exc:
            raise PipelineError(f"{what} {path} is not writable ({exc.strerror}); nothing was claimed") from None
        if free < MIN_FREE_BYTES:
            raise PipelineError(f"only {free // 2**20} MiB free in the {what} {path} (at least "
                                f"{MIN_FREE_BYTES // 2**20} MiB needed); nothing was claimed")


def check_conditional_writes(client: Any, bucket: str) -> bool:
    """Whether the endpoint honours If-None-Match on PutObject, which claiming across hosts relies on:
    True if so; False (and a warning) if it silently ignores it; PipelineError if it refuses it."""
    key = f"{STATE_PREFIX}probe/{secrets.token_hex(8)}"
    try:
        for attempt in (1, 2):
            try:
                s3.put_bytes(client, bucket, key, b"probe", if_none_match=True, content_type="text/plain")
            except botocore.exceptions.ClientError as exc:
                if s3.is_precondition_failed(exc):
                    if attempt == 2:
                        return True
                    continue  # a retried first write that had landed
                if s3.error_code(exc) in {"NotImplemented", "501", "InvalidArgument", "InvalidRequest", "400"}:
                    raise PipelineError(f"the S3 endpoint refuses conditional writes (If-None-Match on PutObject: "
                                        f"{s3.describe_error(exc)}); claiming needs them; nothing was claimed") from None
                raise
        log.warning("the S3 endpoint ignores conditional writes (If-None-Match): claims are exclusive only between "
                    "ticks of one working directory; run a single tick (one Crondor) per input bucket")
        return False
    finally:
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except S3_ERRORS:
            pass
