"""The pixel check: a COG's full-resolution pixels against its source, window by window.

Lossless (the default): bitwise for integers and floats (NaN == NaN, -0.0 != 0.0), by value for complex
data. Bounded (a lossy preset, :class:`PixelCheck` with a bound): the max absolute error and PSNR over the
valid pixels (:class:`~cog_pipeline.raster.kinds.ErrorMeter`) must keep the bound, and every pixel must stay
data or nodata as it was. Either way the size, band count, data type, nodata value and (for an internal
per-dataset mask) the mask must match too, and the same pass feeds the pixel digests of the source and the
COG (:class:`~cog_pipeline.raster.header.PixelHasher`); for a lossless check they must be equal.
:class:`VerifyPass` is the check one window at a time, so the JPEG preview (preview.py) can share the
source's reads with it; the whole-image verdict comes with the last window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from cog_pipeline.core.errors import ImageError
from cog_pipeline.raster.gdalerrors import describe, gdal_failure
from cog_pipeline.raster.header import PixelHasher
from cog_pipeline.raster.kinds import ErrorBound, ErrorMeter, ErrorStats
from cog_pipeline.raster.sniff import gdal_env, has_mask, numpy_dtype, open_tiff, windows

__all__ = ["PixelCheck", "VerifyPass", "VerifyResult", "verify_pixels", "window_text"]


@dataclass(frozen=True)
class VerifyResult:
    """What a verification pass found: the check it ran, both pixel digests, and (bounded) the error."""

    check: str
    input_pixel_digest: str | None
    cog_pixel_digest: str | None
    error: ErrorStats | None = None


@dataclass
class PixelCheck:
    """How a verification pass checks the COG, and (``result``, set with its last window) what it found.

    ``bound`` None: lossless; else the bounded-error check of a lossy preset. ``digests``: hash the pixels of
    the source and the COG in the same pass."""

    bound: ErrorBound | None = None
    digests: bool = True
    result: VerifyResult | None = None


def verify_pixels(src: str | Path, cog: str | Path, check: PixelCheck | None = None) -> VerifyResult:
    """Compare full-resolution pixels of ``cog`` with ``src`` window by window (lossless: bitwise, NaN == NaN;
    or within ``check.bound``); returns what the pass found (ImageError("verify") when the check fails)."""
    src, cog = Path(src), Path(cog)
    check = PixelCheck() if check is None else check
    with gdal_env(), open_tiff(src) as a, open_tiff(cog) as b:
        verify = VerifyPass(a, b, src, cog, check)
        for window in windows(a.width, a.height, a.count * numpy_dtype(a.dtypes[0]).itemsize, align=verify.block_rows):
            verify.window(verify.read_source(window), window)
    assert check.result is not None  # set by the last window
    return check.result


class VerifyPass:
    """The COG-against-source check: whole-dataset facts at creation, then one window at a time (row-major, as
    :func:`~cog_pipeline.raster.sniff.windows` or full-width strips give them); the last window (bottom right)
    gives the verdict, in ``check.result``."""

    def __init__(
        self,
        a: rasterio.DatasetReader,
        b: rasterio.DatasetReader,
        src: Path,
        cog: Path,
        check: PixelCheck | None = None,
    ):
        if (a.width, a.height, a.count) != (b.width, b.height, b.count):
            raise ImageError(
                "verify", f"COG is {b.width}x{b.height}x{b.count}, source is {a.width}x{a.height}x{a.count}"
            )
        if a.dtypes[0] != b.dtypes[0]:
            raise ImageError("verify", f"COG data type {b.dtypes[0]} differs from the source's {a.dtypes[0]}")
        if not _same_nodata(a.nodata, b.nodata):
            raise ImageError("verify", f"COG nodata {b.nodata} differs from the source's {a.nodata}")
        dtype = numpy_dtype(a.dtypes[0])
        self.is_float = np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating)
        flags = a.mask_flag_enums[0]
        self.compare_mask = MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags
        self.block_rows = b.block_shapes[0][0]
        self.a, self.b, self.src, self.cog = a, b, src, cog
        self.check = PixelCheck() if check is None else check
        self.check.result = None
        self.meter = ErrorMeter() if self.check.bound is not None else None
        self.masked = has_mask(a, list(range(1, a.count + 1)))
        self.flipped = [0, 0]  # bounded: pixels that became nodata, and nodata that became data
        self.hashers: tuple[PixelHasher, PixelHasher] | None = None
        if self.check.digests:
            self.hashers = (
                PixelHasher(dtype.str, a.count, a.height, a.width),
                PixelHasher(dtype.str, b.count, b.height, b.width),
            )

    def read_source(self, window: Window) -> np.ndarray:
        """Every band of the source in ``window`` (ImageError("verify") when it cannot be read)."""
        try:
            return self.a.read(window=window)
        except (RasterioError, CPLE_BaseError) as exc:
            raise gdal_failure("verify", exc, self.src, what="input file") from None

    def window(self, x: np.ndarray, window: Window) -> None:
        """Check one window; ``x`` is the source's pixels there (every band). The last window (bottom right)
        finishes the pass: ImageError("verify") when the whole image breaks the check, else ``check.result``."""
        try:
            y = self.b.read(window=window)
        except (RasterioError, CPLE_BaseError) as exc:
            raise ImageError("verify", "cannot read the COG back: " + describe(exc, self.cog, what="COG")) from None
        if self.meter is None:
            _compare_window(x, y, window, self.is_float)
        else:
            valid = None
            if self.masked:
                try:
                    valid = self.a.dataset_mask(window=window) != 0
                    kept = self.b.dataset_mask(window=window) != 0
                except (RasterioError, CPLE_BaseError) as exc:
                    raise ImageError("verify", "cannot read the masks: " + describe(exc, self.cog)) from None
                self.flipped[0] += int(np.count_nonzero(valid & ~kept))
                self.flipped[1] += int(np.count_nonzero(~valid & kept))
            self.meter.add(x, y, valid)
        if self.compare_mask and not np.array_equal(
            self.a.read_masks(1, window=window), self.b.read_masks(1, window=window)
        ):
            raise ImageError("verify", f"mask differs in window {window_text(window)}")
        if self.hashers is not None:
            self.hashers[0].update(x, window)
            self.hashers[1].update(y, window)
        if int(window.row_off + window.height) == self.a.height and int(window.col_off + window.width) == self.a.width:
            self._finish()

    def _finish(self) -> None:
        digests = (None, None) if self.hashers is None else (self.hashers[0].hexdigest(), self.hashers[1].hexdigest())
        if self.meter is None:
            if digests[0] != digests[1]:
                raise ImageError(
                    "verify",
                    f"pixel digests differ ({digests[0]} for the source, {digests[1]} for "
                    "the COG) though every value compares equal: NaN payloads or the sign "
                    "of a zero changed",
                )
            self.check.result = VerifyResult("lossless", digests[0], digests[1])
            return
        stats = self.meter.stats()
        assert self.check.bound is not None
        if any(self.flipped):
            raise ImageError(
                "verify",
                f"the lossy COG changes what is data: {self.flipped[0]:,} pixel(s) of data "
                f"became nodata and {self.flipped[1]:,} nodata pixel(s) became data "
                f"(measured: {stats.text()}); use a lossless preset for images with a "
                "nodata value",
            )
        broken = self.check.bound.violation(stats)
        if broken is not None:
            raise ImageError("verify", f"lossy COG out of bounds: {broken}; measured: {stats.text()}")
        self.check.result = VerifyResult("bounded", digests[0], digests[1], stats)


def _same_nodata(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is y
    return x == y or (np.isnan(x) and np.isnan(y))


def window_text(w: Window) -> str:
    """``rows A-B, cols C-D`` of a window (inclusive, 0-based)."""
    return (
        f"rows {int(w.row_off)}-{int(w.row_off + w.height) - 1}, cols {int(w.col_off)}-{int(w.col_off + w.width) - 1}"
    )


def _compare_window(x: np.ndarray, y: np.ndarray, window: Window, is_float: bool) -> None:
    if x.dtype.itemsize in (1, 2, 4, 8) and not np.issubdtype(x.dtype, np.complexfloating):
        unsigned = np.dtype(f"u{x.dtype.itemsize}")
        equal = x.view(unsigned) == y.view(unsigned)
    else:
        equal = x == y
    if is_float:
        equal |= np.isnan(x) & np.isnan(y)
    if equal.all():
        return
    for band in range(x.shape[0]):
        bad = ~equal[band]
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            raise ImageError(
                "verify",
                f"band {band + 1} differs in window {window_text(window)}: {int(bad.sum())} pixel(s) differ, "
                f"first at row {int(window.row_off) + row}, col {int(window.col_off) + col} "
                f"(source {x[band, row, col].item()!r}, COG {y[band, row, col].item()!r})",
            )
