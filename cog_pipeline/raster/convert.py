"""Local-file conversion of one GeoTIFF: inspect it, write a COG, validate and verify it, write a JPEG preview.

Nothing here touches S3. Every per-image failure is raised as :class:`~cog_pipeline.core.errors.ImageError`
with a user-facing message; ``step`` is one of ``open`` (inspection), ``cog``, ``validate``, ``verify``
or ``jpeg``.

COG
    GDAL's COG driver through ``rasterio.shutil.copy`` (not rio-cogeo's ``cog_translate``, which needs
    2-3x the memory). Lossless codecs only, so the COG's full-resolution pixels can be checked against
    the source. Paletted images always get nearest-neighbour overviews. ``BIGTIFF=IF_SAFER``.

JPEG preview (the product spec)
    Full resolution, baseline 8-bit JPEG, quality 80 by default, 1 band (grey) or 3 bands (RGB):

    * band choice: 1 or 3 bands are used as they are; 2 bands -> band 1; 4 or more -> bands 1, 2, 3;
      a single paletted band (colour map) is expanded to RGB through its colour map.
    * masking: a pixel of an output band is black (0) where GDAL's mask for that source band says
      "invalid" (nodata value, alpha band, or the file's internal mask) or where the value is NaN.
    * uint8 values are used as they are. Any other type (uint16, int16, int32, float32, float64, ...)
      is stretched per band: the low and high percentiles (``JpegOptions.stretch_percentiles``,
      default 2 and 98) of the band's valid, finite pixels are estimated from a decimated read (at
      most 1024 pixels on the longer side, nearest neighbour), values are mapped linearly so that low
      -> 0 and high -> 255, rounded and clipped to 0..255 (+inf -> 255, -inf -> 0). When the two
      percentiles are equal the band's sampled min and max are used instead; when those are equal too
      (a constant band) or no valid pixel was sampled, valid pixels become mid-grey 128.
      Complex data types are refused.
    * encoding: strip by strip (a whole number of MCU rows each) with Pillow's libjpeg-turbo, baseline,
      standard Huffman tables, IJG quantisation tables for the quality, 4:2:0 chroma subsampling, joined
      into one JPEG with restart markers (:mod:`cog_pipeline.raster.jpegstrips`): no temporary rendering, and
      memory for one strip only. GDAL's JPEG driver (optimised Huffman tables) needed ~3 bytes per
      pixel; the files are ~5% larger. The JPEG format is limited to 65500 pixels per side.

In :func:`convert_file` the pixel check and the preview share one pass over the source
(:func:`verify_and_write_jpeg`): each window is read once, compared with the COG, then rendered.

Memory stays bounded: pixels are only ever read window by window (about 32-64 MB at a time) plus
GDAL's block cache (``CogOptions.gdal_cache_mb``). Outputs are written under a temporary name beside the
destination and renamed when complete, so a failure never leaves a partial file at the destination.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import rasterio
import rasterio.env
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from cog_pipeline.core.conversion import CogOptions, JpegOptions, cog_options_from_config, jpeg_options_from_config
from cog_pipeline.core.errors import ImageError

__all__ = [
    "CogOptions",
    "JpegOptions",
    "RasterInfo",
    "ConversionResult",
    "inspect_input",
    "write_cog",
    "validate_cog",
    "verify_pixels",
    "write_jpeg",
    "verify_and_write_jpeg",
    "convert_file",
    "cog_options_from_config",
    "jpeg_options_from_config",
]

#: The JPEG format's limit on each side.
JPEG_MAX_SIDE = 65500
#: Longer side of the decimated read used to estimate stretch percentiles.
STATS_MAX_SIDE = 1024

_WINDOW_BYTES = 32 * 1024 * 1024  # budget for one array read in a window
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_FILE_KINDS = (
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


# --------------------------------------------------------------------------------------------- results

@dataclass
class RasterInfo:
    """What :func:`inspect_input` found in the file."""

    width: int
    height: int
    count: int
    dtype: str
    has_palette: bool
    nodata: float | None
    crs: str | None
    size_bytes: int


@dataclass
class ConversionResult:
    """Outcome of :func:`convert_file`."""

    info: RasterInfo
    cog_bytes: int
    jpeg_bytes: int
    jpeg_bands: list[int]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- helpers

def _gdal_env(cache_mb: int | None = None) -> rasterio.Env:
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


def _gdal_message(exc: BaseException, path: Path | None = None) -> str:
    """The distinct messages of a rasterio/GDAL exception chain, joined, without rasterio's filler."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip()
        if path is not None:
            text = text.replace(str(path), path.name)
        if (text and "See previous exception" not in text and text not in parts
                and not any(text in p for p in parts)):
            parts.append(text)
        current = current.__cause__ or current.__context__
    message = "; ".join(parts) or type(exc).__name__
    return message if len(message) <= 400 else message[:397] + "..."


_CORRUPT_HINTS = ("tiffread", "tifffill", "read error", "ireadblock", "decode", "premature", "truncat",
                  "corrupt", "not enough data", "cannot read", "failed to read", "tiffscanline")
_NOSPACE_HINTS = ("no space left", "disk space", "disk full")


def _describe(exc: BaseException, path: Path | None = None, what: str = "file") -> str:
    """A user-facing reason for an exception raised while GDAL read or wrote an image."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device ({exc.strerror}: {exc.filename or ''})"
    message = _gdal_message(exc, path)
    lower = message.lower()
    if any(h in lower for h in _NOSPACE_HINTS):
        return f"no space left on the device (GDAL: {message})"
    if isinstance(exc, (RasterioError, CPLE_BaseError)) and any(h in lower for h in _CORRUPT_HINTS):
        return f"{what} is truncated or corrupt (GDAL: {message})"
    if isinstance(exc, (RasterioError, CPLE_BaseError)):
        return f"GDAL: {message}"
    return f"{type(exc).__name__}: {message}"


def _temp_beside(dst: Path, suffix: str = ".part") -> Path:
    return dst.with_name(f".{dst.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _remove_temp(tmp: Path) -> None:
    """Remove a temp file and whatever GDAL put beside it (e.g. ``<tmp>.ovr.tmp``)."""
    for name in glob.glob(glob.escape(str(tmp)) + "*"):
        with contextlib.suppress(OSError):
            os.remove(name)


@contextlib.contextmanager
def _atomic_output(dst: Path, step: str) -> Iterator[Path]:
    """Yield a temp path beside ``dst``, renamed to ``dst`` on success and removed on any failure."""
    tmp = _temp_beside(dst)
    try:
        yield tmp
        os.replace(tmp, dst)
    except ImageError:
        _remove_temp(tmp)
        raise
    except OSError as exc:
        _remove_temp(tmp)
        raise ImageError(step, _describe(exc)) from None
    except BaseException:
        _remove_temp(tmp)
        raise


@contextlib.contextmanager
def _open_tiff(path: Path, threads: str | None = None) -> Iterator[rasterio.DatasetReader]:
    """Open as GeoTIFF only, with user-facing errors; the absence of georeferencing is not a warning here.

    ``threads`` (``ALL_CPUS`` or a number) lets GDAL decode several compressed blocks of one read at once.
    """
    path = Path(path)
    _check_tiff_file(path)
    extra = {"NUM_THREADS": threads} if threads and threads != "1" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            ds = rasterio.open(path, driver="GTiff", **extra)
        except (RasterioError, CPLE_BaseError) as exc:
            message = _gdal_message(exc, path)
            if "not recognized" in message or "not a tiff" in message.lower():
                raise ImageError("open", f"file is truncated or corrupt: it starts like a TIFF but GDAL's "
                                         f"GeoTIFF driver cannot read it (GDAL: {message})") from None
            raise ImageError("open", f"file is truncated or corrupt (GDAL: {message})") from None
        with ds:
            yield ds


def _check_tiff_file(path: Path) -> int:
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
        raise ImageError("open", "file is empty (0 bytes)")
    if not head.startswith(_TIFF_MAGICS):
        kind = next((k for magic, k in _FILE_KINDS if head.startswith(magic)), None)
        looks = f"it looks like {kind}" if kind else f"it starts with bytes {head[:8].hex(' ')}"
        raise ImageError("open", f"not a TIFF file ({looks}; only GeoTIFF input is accepted)")
    if size < 16:
        raise ImageError("open", f"file is truncated or corrupt: only {size} bytes")
    return size


def _is_palette(ds: rasterio.DatasetReader) -> bool:
    if ds.colorinterp[0] != ColorInterp.palette:
        return False
    try:
        return bool(ds.colormap(1))
    except ValueError:
        return False


def _has_mask(ds: rasterio.DatasetReader, bands: list[int]) -> bool:
    """True when any of the bands has a nodata value, an alpha band or an internal mask."""
    return any(ds.mask_flag_enums[b - 1] != [MaskFlags.all_valid] for b in bands)


def _windows(width: int, height: int, bytes_per_pixel: int, align: int = 512,
             budget: int | None = None) -> Iterator[Window]:
    """Row-major windows covering the image, each about ``budget`` bytes at ``bytes_per_pixel``."""
    budget = _WINDOW_BYTES if budget is None else budget
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


T = TypeVar("T")


def _step(step: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one step; anything but an ImageError becomes ImageError(step, ...)."""
    try:
        return func(*args, **kwargs)
    except ImageError:
        raise
    except Exception as exc:  # every per-image fault is reported as an ImageError
        raise ImageError(step, _describe(exc)) from exc


# --------------------------------------------------------------------------------------------- inspect

def inspect_input(path: str | Path, options: CogOptions = CogOptions()) -> RasterInfo:
    """Open ``path`` as a GeoTIFF (only), refuse oversize images, check the last row of every band is readable."""
    return _inspect(Path(path), options)[0]


def _inspect(path: Path, options: CogOptions) -> tuple[RasterInfo, list[str]]:
    notes: list[str] = []
    with _gdal_env(options.gdal_cache_mb), _open_tiff(path) as ds:
        size = path.stat().st_size
        pixels = ds.width * ds.height * ds.count
        if pixels > options.max_pixels:
            raise ImageError("open", f"declared size {ds.width}x{ds.height}x{ds.count} exceeds max_pixels "
                                     f"{options.max_pixels:,} ({pixels:,} values); refused before reading any "
                                     "pixel (raise cog.max_pixels if the image is genuine)")
        if ds.width < 1 or ds.height < 1 or ds.count < 1:
            raise ImageError("open", f"image has no pixels ({ds.width}x{ds.height}x{ds.count})")
        dtype = ds.dtypes[0]
        crs = ds.crs
        if crs is None and ds.gcps[0]:
            crs = ds.gcps[1]
            notes.append("georeferenced by ground control points only")
        if crs is None:
            notes.append("no georeference (no CRS); converted as a plain image")
        # A truncated file usually loses its last strips/tiles: read the last row of every band.
        try:
            ds.read(window=Window(0, ds.height - 1, ds.width, 1))
        except (RasterioError, CPLE_BaseError) as exc:
            raise ImageError("open", _describe(exc, path)) from None
        crs_text = None
        if crs is not None:
            crs_text = crs.to_string() or crs.to_wkt()
        info = RasterInfo(width=ds.width, height=ds.height, count=ds.count, dtype=dtype,
                          has_palette=_is_palette(ds), nodata=ds.nodata, crs=crs_text, size_bytes=size)
    return info, notes


# --------------------------------------------------------------------------------------------- COG

def _cog_creation_options(ds: rasterio.DatasetReader, options: CogOptions) -> dict[str, str]:
    dtype = ds.dtypes[0]
    if options.predictor == "FLOATING_POINT" and not np.issubdtype(np.dtype(dtype), np.floating):
        raise ImageError("cog", f"predictor FLOATING_POINT only works on float data and this image is {dtype} "
                                "(use predictor YES for batches of mixed data types)")
    creation = {
        "COMPRESS": options.compress,
        "BLOCKSIZE": str(options.blocksize),
        "OVERVIEW_RESAMPLING": "NEAREST" if _is_palette(ds) else options.overview_resampling.upper(),
        "NUM_THREADS": options.num_threads,
        "BIGTIFF": "IF_SAFER",
    }
    if options.compress not in ("NONE", "WEBP", "LERC"):
        creation["PREDICTOR"] = options.predictor
    if options.level is not None:
        creation["LEVEL"] = str(options.level)
    if options.compress == "WEBP":
        creation["QUALITY"] = "100"  # lossless WEBP
    return creation


def write_cog(src: str | Path, dst: str | Path, options: CogOptions = CogOptions()) -> None:
    """Write ``src`` as a COG at ``dst`` (GDAL COG driver; temp file beside ``dst`` renamed when complete)."""
    src, dst = Path(src), Path(dst)
    # COG_TMP_COMPRESSION: the driver's temporary overview file is not compressed (GDAL's default is
    # LZW): the same COG, byte for byte, 15-40% sooner, for scratch space of a third of the raw image.
    with (_atomic_output(dst, "cog") as tmp, _gdal_env(options.gdal_cache_mb),
          rasterio.Env(COG_TMP_COMPRESSION="NONE"), _open_tiff(src) as ds):
        creation = _cog_creation_options(ds, options)
        try:
            rasterio.shutil.copy(ds, str(tmp), driver="COG", **creation)
        except (RasterioError, CPLE_BaseError) as exc:
            raise ImageError("cog", _describe(exc, src, what="input file")) from None


# --------------------------------------------------------------------------------------------- validate

def validate_cog(path: str | Path) -> None:
    """Check ``path`` with ``rio_cogeo.cog_validate``; raises ImageError("validate", <its errors>)."""
    from rio_cogeo.cogeo import cog_validate

    with _gdal_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            valid, errors, _warnings = cog_validate(str(path), quiet=True)
        except Exception as exc:  # noqa: BLE001
            raise ImageError("validate", f"cannot validate the COG: {_describe(exc, Path(path))}") from None
    if not valid:
        raise ImageError("validate", "not a valid COG: " + ("; ".join(errors) or "no reason given"))


# --------------------------------------------------------------------------------------------- verify

def verify_pixels(src: str | Path, cog: str | Path) -> None:
    """Compare full-resolution pixels of ``cog`` with ``src`` window by window (bitwise; NaN == NaN)."""
    src, cog = Path(src), Path(cog)
    with _gdal_env(), _open_tiff(src) as a, _open_tiff(cog) as b:
        check = _VerifyPass(a, b, src, cog)
        for window in _windows(a.width, a.height, a.count * np.dtype(a.dtypes[0]).itemsize,
                               align=check.block_rows):
            try:
                x = a.read(window=window)
            except (RasterioError, CPLE_BaseError) as exc:
                raise ImageError("verify", _describe(exc, src, what="input file")) from None
            check.window(x, window)


class _VerifyPass:
    """The COG-against-source check: whole-dataset facts at creation, then one window at a time."""

    def __init__(self, a: rasterio.DatasetReader, b: rasterio.DatasetReader, src: Path, cog: Path):
        if (a.width, a.height, a.count) != (b.width, b.height, b.count):
            raise ImageError("verify", f"COG is {b.width}x{b.height}x{b.count}, source is "
                                       f"{a.width}x{a.height}x{a.count}")
        if a.dtypes[0] != b.dtypes[0]:
            raise ImageError("verify", f"COG data type {b.dtypes[0]} differs from the source's {a.dtypes[0]}")
        if not _same_nodata(a.nodata, b.nodata):
            raise ImageError("verify", f"COG nodata {b.nodata} differs from the source's {a.nodata}")
        dtype = np.dtype(a.dtypes[0])
        self.is_float = np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating)
        flags = a.mask_flag_enums[0]
        self.compare_mask = MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags
        self.block_rows = b.block_shapes[0][0]
        self.a, self.b, self.cog = a, b, cog

    def window(self, x: np.ndarray, window: Window) -> None:
        """Check one window; ``x`` is the source's pixels there (every band)."""
        try:
            y = self.b.read(window=window)
        except (RasterioError, CPLE_BaseError) as exc:
            raise ImageError("verify", "cannot read the COG back: " + _describe(exc, self.cog, what="COG")) from None
        _compare_window(x, y, window, self.is_float)
        if self.compare_mask and not np.array_equal(self.a.read_masks(1, window=window),
                                                     self.b.read_masks(1, window=window)):
            raise ImageError("verify", f"mask differs in window {_window_text(window)}")


def _same_nodata(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is y
    return x == y or (np.isnan(x) and np.isnan(y))


def _window_text(w: Window) -> str:
    return (f"rows {int(w.row_off)}-{int(w.row_off + w.height) - 1}, "
            f"cols {int(w.col_off)}-{int(w.col_off + w.width) - 1}")


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
                f"band {band + 1} differs in window {_window_text(window)}: {int(bad.sum())} pixel(s) differ, "
                f"first at row {int(window.row_off) + row}, col {int(window.col_off) + col} "
                f"(source {x[band, row, col].item()!r}, COG {y[band, row, col].item()!r})")


# --------------------------------------------------------------------------------------------- JPEG

@dataclass
class _RenderPlan:
    bands: list[int]
    out_count: int
    lut: np.ndarray | None  # palette: (N, 3) uint8 lookup table
    stretch: list[tuple[float, float] | None] | None  # per band (low, high); None = constant band
    masked: bool


def write_jpeg(src: str | Path, dst: str | Path, options: JpegOptions = JpegOptions()) -> list[int]:
    """Write the 8-bit JPEG preview of ``src`` at ``dst``; returns the source bands used (1-based).

    The preview is encoded strip by strip (:mod:`cog_pipeline.raster.jpegstrips`), with no temporary rendering.
    """
    src, dst = Path(src), Path(dst)
    with _atomic_output(dst, "jpeg") as tmp_jpeg, _gdal_env(), _open_tiff(src) as ds:
        return _preview_pass(ds, src, tmp_jpeg, options)


def verify_and_write_jpeg(src: str | Path, cog: str | Path, dst: str | Path, options: JpegOptions = JpegOptions(),
                          seconds: dict[str, float] | None = None, num_threads: str = "1") -> list[int]:
    """:func:`verify_pixels` and :func:`write_jpeg` in one pass over the source (each window is read
    once, compared with the COG, then rendered into the preview); returns the source bands used.

    ``seconds`` gets the time spent on each (``verify``: reading the COG and comparing; ``jpeg``:
    rendering and encoding; reading the source is counted in ``verify``). ``num_threads`` other than 1
    decodes the COG's compressed blocks in that many threads. When one MCU row (16 rows) of every band
    of source and COG would exceed 4 window budgets (very wide images with many bands), the check runs
    first in its own smaller windows and the preview then reads only its bands.
    """
    src, cog, dst = Path(src), Path(cog), Path(dst)
    with _atomic_output(dst, "jpeg") as tmp_jpeg, _gdal_env(), _open_tiff(src) as a, \
            _open_tiff(cog, num_threads) as b:
        check = _VerifyPass(a, b, src, cog)
        if 16 * a.width * a.count * np.dtype(a.dtypes[0]).itemsize * 2 <= 4 * _WINDOW_BYTES:
            return _preview_pass(a, src, tmp_jpeg, options, check, seconds)
        started = time.perf_counter()
        for window in _windows(a.width, a.height, a.count * np.dtype(a.dtypes[0]).itemsize, align=check.block_rows):
            try:
                x = a.read(window=window)
            except (RasterioError, CPLE_BaseError) as exc:
                raise ImageError("verify", _describe(exc, src, what="input file")) from None
            check.window(x, window)
        checked = time.perf_counter() - started
        bands = _preview_pass(a, src, tmp_jpeg, options, None, seconds)
        if seconds is not None:
            seconds["verify"] = checked
        return bands


def _preview_pass(ds: rasterio.DatasetReader, src: Path, jpeg_path: Path, options: JpegOptions,
                  check: _VerifyPass | None = None, seconds: dict[str, float] | None = None) -> list[int]:
    """Render ``ds`` strip by strip into a JPEG at ``jpeg_path`` (checking each strip with ``check``)."""
    from cog_pipeline.raster.jpegstrips import StripJpegWriter, strip_rows

    if ds.width > JPEG_MAX_SIDE or ds.height > JPEG_MAX_SIDE:
        raise ImageError("jpeg", f"image is {ds.width}x{ds.height} pixels; the JPEG format is limited to "
                                 f"{JPEG_MAX_SIDE} pixels per side, so no full-resolution preview can be made")
    dtype = np.dtype(ds.dtypes[0])
    if np.issubdtype(dtype, np.complexfloating):
        raise ImageError("jpeg", f"complex data ({ds.dtypes[0]}) cannot be rendered as a JPEG preview")
    bands = _jpeg_bands(ds.count)
    palette = bands == [1] and _is_palette(ds)
    try:
        plan = _plan(ds, bands, palette, options)
    except (RasterioError, CPLE_BaseError) as exc:
        raise ImageError("jpeg", _describe(exc, src, what="input file")) from None
    read_bands = list(range(1, ds.count + 1)) if check is not None else plan.bands
    # per pixel: source (+ COG) values, masks, one float64 band, the output and its interleaved copy
    per_pixel = len(read_bands) * dtype.itemsize * (2 if check is not None else 1) \
        + (len(plan.bands) if plan.masked else 0) + 8 + 2 * plan.out_count
    rows = strip_rows(ds.width, plan.out_count, max(1, 2 * _WINDOW_BYTES // (ds.width * per_pixel)),
                      align=check.block_rows if check is not None else 256)
    timing = {"verify": 0.0, "jpeg": 0.0}
    with open(jpeg_path, "wb") as fh:
        writer = StripJpegWriter(fh, ds.width, ds.height, plan.out_count, options.quality, rows)
        for row in range(0, ds.height, rows):
            window = Window(0, row, ds.width, min(rows, ds.height - row))
            started = time.perf_counter()
            step = "verify" if check is not None else "jpeg"
            try:
                data = ds.read(read_bands, window=window)
                valid = ds.read_masks(plan.bands, window=window) != 0 if plan.masked else None
            except (RasterioError, CPLE_BaseError) as exc:
                raise ImageError(step, _describe(exc, src, what="input file")) from None
            if check is not None:
                check.window(data, window)
                data = data[[b - 1 for b in plan.bands]]
            middle = time.perf_counter()
            out = _render_window(data, valid, plan)
            try:
                writer.write(out[0] if plan.out_count == 1 else out.transpose(1, 2, 0))
            except (ValueError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    raise
                raise ImageError("jpeg", f"cannot encode the preview: {exc}") from None
            timing[step] += middle - started
            timing["jpeg"] += time.perf_counter() - middle
        writer.close()
    if seconds is not None:
        seconds.update(timing)
    return bands


def _jpeg_bands(count: int) -> list[int]:
    if count in (1, 2):
        return [1]
    return [1, 2, 3]


def _plan(ds: rasterio.DatasetReader, bands: list[int], palette: bool, options: JpegOptions) -> _RenderPlan:
    masked = _has_mask(ds, bands)
    dtype = np.dtype(ds.dtypes[0])
    if palette:
        cmap = ds.colormap(1)
        size = 256 if dtype.itemsize == 1 else 65536
        lut = np.zeros((size, 3), dtype=np.uint8)
        for index, rgba in cmap.items():
            if 0 <= index < size:  # (GeoTIFF colour maps carry no alpha: GDAL reports 255)
                lut[index] = rgba[:3]
        return _RenderPlan(bands, 3, lut, None, masked)
    stretch = None if dtype == np.uint8 else _stretch_params(ds, bands, options.stretch_percentiles, masked)
    return _RenderPlan(bands, len(bands), None, stretch, masked)


def _stretch_params(ds: rasterio.DatasetReader, bands: list[int], percentiles: tuple[float, float],
                    masked: bool) -> list[tuple[float, float] | None]:
    """Per band (low, high) from a decimated read; None when the band is constant or has no valid sample."""
    scale = max(ds.width, ds.height) / STATS_MAX_SIDE
    out_h, out_w = ds.height, ds.width
    if scale > 1:
        out_h, out_w = max(1, round(ds.height / scale)), max(1, round(ds.width / scale))
    params: list[tuple[float, float] | None] = []
    for band in bands:
        data = ds.read(band, out_shape=(out_h, out_w), resampling=Resampling.nearest)
        valid = np.isfinite(data) if data.dtype.kind == "f" else np.ones(data.shape, dtype=bool)
        if masked:
            valid &= ds.read_masks(band, out_shape=(out_h, out_w), resampling=Resampling.nearest) != 0
        values = data[valid].astype(np.float64)
        if values.size == 0:
            params.append(None)
            continue
        low, high = (float(v) for v in np.percentile(values, percentiles))
        if high <= low:
            low, high = float(values.min()), float(values.max())
        params.append((low, high) if high > low else None)
    return params


def _render_window(data: np.ndarray, valid: np.ndarray | None, plan: _RenderPlan) -> np.ndarray:
    if data.dtype.kind == "f":
        finite_or_inf = ~np.isnan(data)
        valid = finite_or_inf if valid is None else (valid & finite_or_inf)
    if plan.lut is not None:
        out = plan.lut[data[0].astype(np.intp, copy=False)].transpose(2, 0, 1).copy()
        if valid is not None:
            out[:, ~valid[0]] = 0
        return out
    if plan.stretch is None:  # uint8 as it is
        out = data.copy()
    else:
        out = np.empty(data.shape, dtype=np.uint8)
        for i, params in enumerate(plan.stretch):
            if params is None:
                out[i] = 128
                continue
            low, high = params
            values = data[i].astype(np.float64)
            values -= low
            values *= 255.0 / (high - low)
            np.nan_to_num(values, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
            np.clip(values, 0.0, 255.0, out=values)
            values += 0.5
            out[i] = values.astype(np.uint8)
    if valid is not None:
        out[~valid] = 0
    return out


# --------------------------------------------------------------------------------------------- all steps

def convert_file(src: str | Path, cog_dst: str | Path, jpeg_dst: str | Path,
                 cog_options: CogOptions = CogOptions(), jpeg_options: JpegOptions = JpegOptions(),
                 expected_bands: int | None = None) -> ConversionResult:
    """inspect -> COG -> validate -> verify -> JPEG (from the source) for one local GeoTIFF.

    Both outputs are made under temporary names and moved to ``cog_dst`` and ``jpeg_dst`` only when
    every step has succeeded; on failure (ImageError) neither is created. ``expected_bands`` (from the
    manifest) only adds a note when it differs: the file's band count wins.
    """
    src, cog_dst, jpeg_dst = Path(src), Path(cog_dst), Path(jpeg_dst)
    seconds: dict[str, float] = {}
    cog_tmp = _temp_beside(cog_dst, ".cog.tif")
    jpeg_tmp = _temp_beside(jpeg_dst, ".jpg")

    def timed(step: str, key: str, func: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return _step(step, func, *args)
        finally:
            seconds[key] = time.perf_counter() - started

    try:
        with _gdal_env(cog_options.gdal_cache_mb):
            info, notes = timed("open", "inspect", _inspect, src, cog_options)
            if expected_bands is not None and str(expected_bands).strip() != str(info.count):
                notes.append(f"manifest says {expected_bands} bands, file has {info.count}; "
                             "using the file's count")
            timed("cog", "cog", write_cog, src, cog_tmp, cog_options)
            timed("validate", "validate", validate_cog, cog_tmp)
            parts: dict[str, float] = {}
            jpeg_bands = _step("jpeg", verify_and_write_jpeg, src, cog_tmp, jpeg_tmp, jpeg_options, parts,
                               cog_options.num_threads)
            seconds.update(parts)
        cog_bytes, jpeg_bytes = cog_tmp.stat().st_size, jpeg_tmp.stat().st_size
        _step("cog", os.replace, cog_tmp, cog_dst)
        try:
            _step("jpeg", os.replace, jpeg_tmp, jpeg_dst)
        except ImageError:
            with contextlib.suppress(OSError):
                os.remove(cog_dst)
            raise
    finally:
        _remove_temp(cog_tmp)
        _remove_temp(jpeg_tmp)
    return ConversionResult(info=info, cog_bytes=cog_bytes, jpeg_bytes=jpeg_bytes, jpeg_bands=jpeg_bands,
                            notes=notes, seconds=seconds)
