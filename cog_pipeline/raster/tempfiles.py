"""Outputs under a temporary name beside the destination, renamed when complete: a failure never leaves
a partial file at the destination, and never a temporary one beside it."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from cog_pipeline.core.errors import ImageError
from cog_pipeline.raster.gdalerrors import gdal_failure

__all__ = ["atomic_output", "check_output_folder", "remove_temp", "temp_beside"]


def temp_beside(dst: Path, suffix: str = ".part") -> Path:
    """A hidden, unique name in ``dst``'s folder."""
    return dst.with_name(f".{dst.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def remove_temp(tmp: Path) -> None:
    """Remove a temp file and whatever GDAL put beside it (e.g. ``<tmp>.ovr.tmp``)."""
    for name in glob.glob(glob.escape(str(tmp)) + "*"):
        with contextlib.suppress(OSError):
            os.remove(name)


def check_output_folder(dst: Path, step: str) -> None:
    """ImageError(step, ...) naming ``dst``'s folder when it is missing, not a folder or not writable
    (else GDAL's error would name a temporary file in it)."""
    folder = dst.parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise ImageError(step, f"output folder {folder} {problem} (for {dst.name}); create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImageError(step, f"output folder {folder} is not writable (for {dst.name})")


@contextlib.contextmanager
def atomic_output(dst: Path, step: str) -> Iterator[Path]:
    """Yield a temp path beside ``dst``, renamed to ``dst`` on success and removed on any failure."""
    check_output_folder(dst, step)
    tmp = temp_beside(dst)
    try:
        yield tmp
        os.replace(tmp, dst)
    except ImageError:
        remove_temp(tmp)
        raise
    except OSError as exc:
        remove_temp(tmp)
        raise gdal_failure(step, exc) from None
    except BaseException:
        remove_temp(tmp)
        raise
