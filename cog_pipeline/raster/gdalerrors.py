"""GDAL's errors and messages in a user's words.

:func:`describe` turns an exception raised while GDAL read or wrote an image into a one-line reason
(truncated or corrupt file, disk full, GDAL's own text without rasterio's filler); :func:`run_step`
makes any fault of a step an :class:`~cog_pipeline.core.errors.ImageError` of that step.

:func:`quiet_gdal` keeps GDAL's chatter off the console: while an image is converted, rasterio's log
records (GDAL warnings such as a GeoTIFF's datum differing from the EPSG registry, repeated once per
dataset opened, and the "GDAL signalled an error" echo of errors that are raised anyway; rasterio's
debug records pass through) and Python
warnings (``NodataShadowWarning`` ...) are collected, and each distinct message is logged once, with
its count, on the ``cog_pipeline.raster.gdal`` logger: warnings at INFO (so they land in the batch
log and the image's own log), echoes of raised errors at DEBUG.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from cog_pipeline.core.errors import ImageError
from cog_pipeline.core.failures import FailureCode

__all__ = ["GDAL_LOGGER", "describe", "failure_code", "gdal_failure", "gdal_message", "quiet_gdal", "run_step"]

#: The logger that gets GDAL's (deduplicated) messages; the ``convert`` command shows it only with -v.
GDAL_LOGGER = "cog_pipeline.raster.gdal"

_CORRUPT_HINTS = (
    "tiffread",
    "tifffill",
    "read error",
    "ireadblock",
    "decode",
    "premature",
    "truncat",
    "corrupt",
    "not enough data",
    "cannot read",
    "failed to read",
    "tiffscanline",
)
_NOSPACE_HINTS = ("no space left", "disk space", "disk full")

T = TypeVar("T")


def gdal_message(exc: BaseException, path: Path | None = None) -> str:
    """The distinct messages of a rasterio/GDAL exception chain, joined, without rasterio's filler."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if path is not None:
            text = text.replace(str(path), path.name)
        if text and "See previous exception" not in text and text not in parts and not any(text in p for p in parts):
            parts.append(text)
        current = current.__cause__ or current.__context__
    message = "; ".join(parts) or type(exc).__name__
    return message if len(message) <= 400 else message[:397] + "..."


def describe(exc: BaseException, path: Path | None = None, what: str = "file") -> str:
    """A user-facing reason for an exception raised while GDAL read or wrote an image."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device ({exc.strerror}: {exc.filename or ''})"
    message = gdal_message(exc, path)
    lower = message.lower()
    if any(h in lower for h in _NOSPACE_HINTS):
        return f"no space left on the device (GDAL: {message})"
    if isinstance(exc, (RasterioError, CPLE_BaseError)) and any(h in lower for h in _CORRUPT_HINTS):
        return f"{what} is truncated or corrupt (GDAL: {message})"
    if isinstance(exc, (RasterioError, CPLE_BaseError)):
        return f"GDAL: {message}"
    return f"{type(exc).__name__}: {message}"


def failure_code(exc: BaseException) -> FailureCode | None:
    """The failure code an exception of GDAL or the OS implies (disk full, corrupt input), else None (the
    batch then takes the step's)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return FailureCode.DISK_FULL
    lower = gdal_message(exc).lower()
    if any(h in lower for h in _NOSPACE_HINTS):
        return FailureCode.DISK_FULL
    if isinstance(exc, (RasterioError, CPLE_BaseError)) and any(h in lower for h in _CORRUPT_HINTS):
        return FailureCode.CORRUPT
    return None


def gdal_failure(step: str, exc: BaseException, path: Path | None = None, what: str = "file") -> ImageError:
    """ImageError(step, :func:`describe`, code=:func:`failure_code`) for an exception GDAL or the OS raised."""
    return ImageError(step, describe(exc, path, what), code=failure_code(exc))


def run_step(step: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one step; anything but an ImageError becomes ImageError(step, ...)."""
    try:
        return func(*args, **kwargs)
    except ImageError:
        raise
    except Exception as exc:  # every per-image fault is reported as an ImageError
        raise gdal_failure(step, exc) from exc


class _Collector(logging.Handler):
    """Counts distinct (level, message) pairs of INFO and above, in the order first seen; passes rasterio's
    own debug records (seen only with -v) on to the root logger as they come."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: dict[tuple[int, str], int] = {}

    def add(self, level: int, text: str) -> None:
        key = (level, text)
        self.counts[key] = self.counts.get(key, 0) + 1

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.INFO:
            logging.getLogger().handle(record)
            return
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a badly formatted record must not fail an image
            text = str(record.msg)
        self.add(record.levelno, f"GDAL warning: {text}" if record.levelno >= logging.WARNING else text)


_active = 0  # nesting depth: only the outermost quiet_gdal collects


@contextlib.contextmanager
def quiet_gdal() -> Iterator[None]:
    """Collect rasterio's log records and Python warnings meanwhile; log each distinct one once at the end."""
    global _active
    if _active:
        yield
        return
    rasterio_log = logging.getLogger("rasterio")
    collector = _Collector()
    propagate = rasterio_log.propagate
    rasterio_log.addHandler(collector)
    rasterio_log.propagate = False
    _active += 1
    try:
        with warnings.catch_warnings(record=True) as caught:
            try:
                yield
            finally:
                for w in caught:
                    collector.add(logging.WARNING, f"{w.category.__name__}: {w.message}")
    finally:
        _active -= 1
        rasterio_log.removeHandler(collector)
        rasterio_log.propagate = propagate
        out = logging.getLogger(GDAL_LOGGER)
        for (level, text), count in collector.counts.items():
            repeated = f" (repeated {count} times)" if count > 1 else ""
            out.log(logging.INFO if level >= logging.WARNING else logging.DEBUG, "%s%s", text, repeated)
