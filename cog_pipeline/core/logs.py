"""Logging set-up for the command line and for Snakemake script jobs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def quiet_boto_logs() -> None:
    """Keep botocore's debug chatter (which can include signed headers) out of our logs."""
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))


def configure_cli(verbose: bool = False) -> None:
    """Log to stderr: INFO by default, DEBUG with -v (boto's own chatter stays at WARNING)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT, stream=sys.stderr)
    quiet_boto_logs()


@contextmanager
def log_to_file(path: str | Path) -> Iterator[logging.Logger]:
    """Send every log record to ``path`` for the duration (a Snakemake rule's ``log:`` file); the root logger's
    level is restored after."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    quiet_boto_logs()
    try:
        yield root
    except BaseException:
        root.exception("step failed")
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
