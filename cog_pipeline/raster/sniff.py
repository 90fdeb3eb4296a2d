"""Opening an input: its signature (only GeoTIFF is accepted), GDAL's settings for every step, and the
facts the steps need about an open dataset (colour map, masks, numpy type, read windows)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.env
from rasterio._err import CPLE_BaseError
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from cog_pipeline.core.conversion import CogOptions
from cog_pipeline.core.errors import ImageError
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.raster.gdalerrors import gdal_message

__all__ = [
    "FILE_KINDS",
    "TIFF_MAGICS",
    "WINDOW_BYTES",
    "check_tiff_file",
    "gdal_env",
    "has_mask",
    "is_palette",
    "numpy_dtype",
    "open_tiff",
    "windows",
]

#: Budget for one array read in a window (read at call time: tests lower it).
WINDOW_BYTES = 32 * 1024 * 1024
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: What a file that is not a TIFF looks like, by its first bytes.
FILE_KINDS = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"<", "text (HTML or XML?)"),
    (b"{", "text (JSON?)"),
)


def gdal_env(cache_mb: int | None = None) -> rasterio.Env:
    """GDAL settings for every step: no .aux.xml side files, no sibling-file probing, a bounded block cache.

    Without ``cache_mb`` an enclosing Env's GDAL_CACHEMAX is kept, else CogOptions' default is used
    (GDAL's own default, 5% of RAM, made standalone calls take over 1 GB on an 8000x8000 image).
    """
    opts: dict[str, Any] = {"GDAL_PAM_ENABLED": "NO", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    if cache_mb is None and not (rasterio.env.hasenv() and "GDAL_CACHEMAX" in rasterio.env.getenv()):
        cache_mb = CogOptions.gdal_cache_mb
    if cache_mb:
        # rasterio passes an integer GDAL_CACHEMAX to GDALSetCacheMax64: it is in BYTES (256 = 256 bytes).
        opts["GDAL_CACHEMAX"] = int(cache_mb) * 1024 * 1024
    return rasterio.Env(**opts)


def check_tiff_file(path: Path) -> int:
    """Existence, emptiness and the TIFF signature; returns the size in bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        raise ImageError("open", f"file not found: {path}") from None
    except IsADirectoryError:
        raise ImageError("open", f"not a file but a directory: {path}") from None
    except OSError as exc:
        raise ImageError("open", f"cannot read the file: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageError("open", "file is empty (0 bytes)", code=FailureCode.INPUT_EMPTY)
    if not head.startswith(TIFF_MAGICS):
        kind = next((k for magic, k in FILE_KINDS if head.startswith(magic)), None)
        looks = f"it looks like {kind}" if kind else f"it starts with bytes {head[:8].hex(' ')}"
        raise ImageError(
            "open", f"not a TIFF file ({looks}; only GeoTIFF input is accepted)", code=FailureCode.NOT_A_TIFF
        )
    if size < 16:
        raise ImageError("open", f"file is truncated or corrupt: only {size} bytes", code=FailureCode.CORRUPT)
    return size


@contextlib.contextmanager
def open_tiff(path: Path, threads: str | None = None) -> Iterator[rasterio.DatasetReader]:
    """Open as GeoTIFF only, with user-facing errors; the absence of georeferencing is not a warning here.

    ``threads`` (``ALL_CPUS`` or a number) lets GDAL decode several compressed blocks of one read at once.
    """
    path = Path(path)
    check_tiff_file(path)
    extra = {"NUM_THREADS": threads} if threads and threads != "1" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            ds = rasterio.open(path, driver="GTiff", **extra)
        except (RasterioError, CPLE_BaseError) as exc:
            message = gdal_message(exc, path)
            if "not recognized" in message or "not a tiff" in message.lower():
                raise ImageError(
                    "open",
                    f"file is truncated or corrupt: it starts like a TIFF but GDAL's "
                    f"GeoTIFF driver cannot read it (GDAL: {message})",
                    code=FailureCode.CORRUPT,
                ) from None
            raise ImageError(
                "open", f"file is truncated or corrupt (GDAL: {message})", code=FailureCode.CORRUPT
            ) from None
        with ds:
            yield ds


def is_palette(ds: rasterio.DatasetReader) -> bool:
    """True when band 1 is paletted and carries a colour map."""
    if ds.colorinterp[0] != ColorInterp.palette:
        return False
    try:
        return bool(ds.colormap(1))
    except ValueError:
        return False


def has_mask(ds: rasterio.DatasetReader, bands: list[int]) -> bool:
    """True when any of the bands has a nodata value, an alpha band or an internal mask."""
    return any(ds.mask_flag_enums[b - 1] != [MaskFlags.all_valid] for b in bands)


def numpy_dtype(name: str) -> np.dtype:
    """numpy's type of the arrays rasterio reads for a data type name (``complex_int16`` is read as complex64)."""
    return np.dtype(np.complex64) if name == "complex_int16" else np.dtype(name)


def windows(
    width: int, height: int, bytes_per_pixel: int, align: int = 512, budget: int | None = None
) -> Iterator[Window]:
    """Row-major windows covering the image, each about ``budget`` bytes (default WINDOW_BYTES) at
    ``bytes_per_pixel``."""
    budget = WINDOW_BYTES if budget is None else budget
    row_bytes = max(1, width * bytes_per_pixel)
    rows = budget // row_bytes
    if rows >= 1:
        rows = min(rows, height)
        if align <= rows < height:
            rows -= rows % align
        cols = width
    else:
        rows, cols = 1, max(1, budget // max(1, bytes_per_pixel))
    for row in range(0, height, rows):
        for col in range(0, width, cols):
            yield Window(col, row, min(cols, width - col), min(rows, height - row))
