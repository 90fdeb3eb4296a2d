"""The JPEG preview (the product spec) and the rendering rules the report's thumbnails share.

Full resolution, baseline 8-bit JPEG, quality 80 by default, 1 band (grey) or 3 bands (RGB):

* band choice (:func:`jpeg_bands`): 1 or 2 bands -> band 1; 3 or more -> the bands whose colour
  interpretation is red, green and blue, in that order (a BGR(A) file is shown as RGB), else bands
  1, 2, 3; a single paletted band (colour map) is expanded to RGB through its colour map.
* masking: a pixel of an output band is drawn in the nodata colour (``JpegOptions.nodata_color``,
  black by default as the original) where GDAL's mask for that source band says "invalid" (nodata
  value, alpha band, or the file's internal mask), where the value is NaN, or where it is an
  undeclared fill value (below). A grey preview with a colour that is not a grey is written as RGB.
* uint8 values are used as they are. Any other type (uint16, int16, int32, float32, float64, ...)
  is stretched per band: the low and high percentiles (``JpegOptions.stretch_percentiles``,
  default 2 and 98) of the band's valid, finite pixels are estimated from a decimated read (at
  most 1024 pixels on the longer side, nearest neighbour), values are mapped linearly so that low
  -> 0 and high -> 255, rounded and clipped to 0..255 (+inf -> 255, -inf -> 0). When the two
  percentiles are equal the band's sampled min and max are used instead; when those are equal too
  (a constant band) or no valid pixel was sampled, valid pixels become mid-grey 128.
* undeclared fill (``JpegOptions.detect_fill``): a non-8-bit, non-complex image that declares no
  nodata and has no mask is searched for a fill value along its edges in the same decimated read
  (:func:`cog_pipeline.raster.fill.edge_fill`, QA's detector); a fill found is left out of the
  percentiles, drawn as nodata, and said in the image's notes. 8-bit images are not searched: 0 and
  255 are too often real values, and their rendering has no stretch to wash out.
* complex data (SAR: complex_int16, complex64, complex128): the amplitude ``|z|`` is shown, with
  the same percentile stretch.
* encoding: strip by strip (a whole number of MCU rows each) with Pillow's libjpeg-turbo, baseline,
  standard Huffman tables, IJG quantisation tables for the quality, 4:2:0 chroma subsampling, joined
  into one JPEG with restart markers (:mod:`cog_pipeline.raster.jpegstrips`): no temporary rendering,
  and memory for one strip only. The JPEG format is limited to 65500 pixels per side.
* smaller previews (``JpegOptions.sizes``): ``<name>.<size>.jpg``, at most ``size`` pixels on the
  longer side (never enlarged), made in the same pass from the rendered strips (nearest pixel, so
  the same colours as the full preview), each encoded strip by strip too.
* georeference (``JpegOptions.georeference``): every preview of an image with a CRS gets a world
  file and a GDAL ``.aux.xml`` (:mod:`cog_pipeline.raster.georef`), so GIS software opens it in place.

:func:`verify_and_write_jpeg` shares one pass over the source with the pixel check (verify.py): each
window is read once, compared with the COG, then rendered. :func:`render_plan` and
:func:`render_window` are the rules themselves; thumbnail.py applies them to a COG's overview.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from cog_pipeline.core.conversion import JPEG_MAX_SIDE, JpegOptions
from cog_pipeline.core.errors import ImageError
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.raster import sniff
from cog_pipeline.raster.fill import edge_fill
from cog_pipeline.raster.gdalerrors import gdal_failure
from cog_pipeline.raster.georef import Georef, pam_xml, source_georef, world_file_suffix, world_file_text
from cog_pipeline.raster.jpegstrips import StripJpegWriter, strip_rows
from cog_pipeline.raster.sniff import gdal_env, has_mask, is_palette, numpy_dtype, open_tiff
from cog_pipeline.raster.tempfiles import atomic_output, remove_temp, temp_beside
from cog_pipeline.raster.verify import PixelCheck, VerifyPass

__all__ = [
    "JPEG_MAX_SIDE",
    "STATS_MAX_SIDE",
    "PreviewFile",
    "Previews",
    "RenderPlan",
    "jpeg_bands",
    "preview_content_type",
    "preview_key",
    "render_plan",
    "render_window",
    "verify_and_render_previews",
    "verify_and_write_jpeg",
    "write_jpeg",
]

#: Longer side of the decimated read used to estimate stretch percentiles.
STATS_MAX_SIDE = 1024
#: Budget of one strip of a smaller preview (rendered 8-bit pixels).
_SMALL_STRIP_BYTES = 4 * 1024 * 1024


@dataclass
class RenderPlan:
    """How the source bands become the 8-bit output bands (see :func:`render_plan`)."""

    bands: list[int]
    out_count: int
    lut: np.ndarray | None  # palette: (N, 3) uint8 lookup table
    stretch: list[tuple[float, float] | None] | None  # per band (low, high); None = constant band
    masked: bool
    fill: float | None = None  # an undeclared fill value, drawn as nodata
    nodata_color: tuple[int, int, int] = (0, 0, 0)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PreviewFile:
    """A file written beside the JPEG preview: its temporary name, its name, and ``suffix``, what replaces the
    JPEG's ``.jpg`` in its name (and in its key: :func:`preview_key`)."""

    tmp: Path
    path: Path
    suffix: str


@dataclass
class Previews:
    """What a preview pass made: the source bands shown, notes, and the files beside the JPEG (smaller
    previews, world files, ``.aux.xml``), still under their temporary names until :meth:`commit`."""

    bands: list[int]
    notes: list[str] = field(default_factory=list)
    files: list[PreviewFile] = field(default_factory=list)

    def commit(self) -> list[tuple[Path, str]]:
        """Rename every file to its name; (path, suffix) of each."""
        for f in self.files:
            os.replace(f.tmp, f.path)
        return [(f.path, f.suffix) for f in self.files]

    def remove(self) -> None:
        """Remove every file, under its temporary name or its name (after a failure)."""
        for f in self.files:
            remove_temp(f.tmp)
            with contextlib.suppress(OSError):
                os.remove(f.path)


def preview_key(jpeg_key: str, suffix: str) -> str:
    """The key of a file beside the preview: ``a/b.jpg`` + ``.512.jpg`` -> ``a/b.512.jpg``; ``.jgw`` -> ``a/b.jgw``."""
    if not jpeg_key.endswith(".jpg"):
        raise ValueError(f"JPEG key {jpeg_key!r} does not end in '.jpg'")
    return jpeg_key[: -len(".jpg")] + suffix


def preview_content_type(suffix: str) -> str:
    """The Content-Type to upload a file beside the preview with, by its suffix (see :func:`preview_key`)."""
    if suffix.endswith(".aux.xml"):
        return "application/xml"
    if suffix.endswith((".jpg", ".jpeg")):
        return "image/jpeg"
    return "text/plain"  # the world file


def write_jpeg(src: str | Path, dst: str | Path, options: JpegOptions = JpegOptions()) -> list[int]:
    """Write the 8-bit JPEG preview of ``src`` at ``dst`` (and what ``options`` adds beside it: smaller
    previews, georeference); returns the source bands used (1-based).

    The preview is encoded strip by strip (:mod:`cog_pipeline.raster.jpegstrips`), with no temporary rendering.
    """
    src, dst = Path(src), Path(dst)
    previews: Previews | None = None
    try:
        with atomic_output(dst, "jpeg") as tmp_jpeg, gdal_env(), open_tiff(src) as ds:
            previews = _preview_pass(ds, src, tmp_jpeg, dst, options)
        _commit(previews, dst)
    except BaseException:
        if previews is not None:
            previews.remove()
        raise
    return previews.bands


def verify_and_write_jpeg(
    src: str | Path,
    cog: str | Path,
    dst: str | Path,
    options: JpegOptions = JpegOptions(),
    seconds: dict[str, float] | None = None,
    num_threads: str = "1",
) -> list[int]:
    """:func:`~cog_pipeline.raster.verify.verify_pixels` and :func:`write_jpeg` in one pass over the source
    (each window is read once, compared with the COG, then rendered into the preview); returns the source
    bands used. See :func:`verify_and_render_previews`."""
    dst = Path(dst)
    previews: Previews | None = None
    try:
        with atomic_output(dst, "jpeg") as tmp_jpeg:
            previews = verify_and_render_previews(src, cog, tmp_jpeg, dst, options, seconds, num_threads)
        _commit(previews, dst)
    except BaseException:
        if previews is not None:
            previews.remove()
        raise
    return previews.bands


def _commit(previews: Previews, dst: Path) -> list[tuple[Path, str]]:
    """Rename the files beside the preview ``dst``; on failure none of them, nor ``dst``, is left."""
    try:
        return previews.commit()
    except OSError as exc:
        previews.remove()
        with contextlib.suppress(OSError):
            os.remove(dst)
        raise gdal_failure("jpeg", exc) from None


def verify_and_render_previews(
    src: str | Path,
    cog: str | Path,
    jpeg_path: str | Path,
    dst: str | Path,
    options: JpegOptions = JpegOptions(),
    seconds: dict[str, float] | None = None,
    num_threads: str = "1",
    pixel_check: PixelCheck | None = None,
) -> Previews:
    """The pixel check of ``cog`` against ``src`` and the preview at ``jpeg_path`` (a temporary name) in one
    pass; the files beside it are named after ``dst`` (the preview's name) and left under temporary names
    (:meth:`Previews.commit`; on failure none is left).

    ``seconds`` gets the time spent on each (``verify``: reading the COG and comparing; ``jpeg``:
    rendering and encoding; reading the source is counted in ``verify``). ``num_threads`` other than 1
    decodes the COG's compressed blocks in that many threads. When one MCU row (16 rows) of every band
    of source and COG would exceed 4 window budgets (very wide images with many bands), the check runs
    first in its own smaller windows and the preview then reads only its bands. ``pixel_check``: lossless or
    bounded, and gets the pass's digests and measured error (verify.py).
    """
    src, cog, jpeg_path, dst = Path(src), Path(cog), Path(jpeg_path), Path(dst)
    with gdal_env(), open_tiff(src) as a, open_tiff(cog, num_threads) as b:
        check = VerifyPass(a, b, src, cog, pixel_check)
        itemsize = numpy_dtype(a.dtypes[0]).itemsize
        if 16 * a.width * a.count * itemsize * 2 <= 4 * sniff.WINDOW_BYTES:
            return _preview_pass(a, src, jpeg_path, dst, options, check, seconds)
        started = time.perf_counter()
        for window in sniff.windows(a.width, a.height, a.count * itemsize, align=check.block_rows):
            check.window(check.read_source(window), window)
        checked = time.perf_counter() - started
        previews = _preview_pass(a, src, jpeg_path, dst, options, None, seconds)
        if seconds is not None:
            seconds["verify"] = checked
        return previews


class _SmallPreview:
    """A smaller preview made from the full preview's rendered strips (nearest pixel), strip by strip."""

    def __init__(self, fh: BinaryIO, size: int, width: int, height: int, components: int, quality: int):
        scale = max(1.0, max(width, height) / size)
        self.width, self.height = max(1, round(width / scale)), max(1, round(height / scale))
        self.scale = (width / self.width, height / self.height)
        # the source row and column of each preview pixel's centre
        self._src_rows = ((np.arange(self.height) + 0.5) * self.scale[1]).astype(np.int64)
        self._src_cols = ((np.arange(self.width) + 0.5) * self.scale[0]).astype(np.intp)
        self._components = components
        self._rows = strip_rows(self.width, components, max(1, _SMALL_STRIP_BYTES // (self.width * components)))
        self._writer = StripJpegWriter(fh, self.width, self.height, components, quality, self._rows)
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._next = 0

    def feed(self, out: np.ndarray, row0: int) -> None:
        """Take what this preview shows of ``out`` (components x rows x width, the rendering from row ``row0``)."""
        stop = int(np.searchsorted(self._src_rows, row0 + out.shape[1]))
        if stop > self._next:
            picked = out[:, self._src_rows[self._next : stop] - row0][:, :, self._src_cols]
            self._pending.append(picked)
            self._pending_rows += picked.shape[1]
            self._next = stop
        while self._pending_rows >= self._rows or (self._next == self.height and self._pending_rows):
            block = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending, axis=1)
            strip, rest = block[:, : self._rows], block[:, self._rows :]
            self._writer.write(strip[0] if self._components == 1 else strip.transpose(1, 2, 0))
            self._pending = [rest] if rest.shape[1] else []
            self._pending_rows = rest.shape[1]

    def close(self) -> None:
        self._writer.close()


def _band_order_note(bands: list[int]) -> list[str]:
    if len(bands) != 3 or bands == [1, 2, 3]:
        return []
    return [
        f"colour interpretation puts red, green and blue in bands {bands[0]}, {bands[1]} and {bands[2]}: "
        "the preview shows them as RGB"
    ]


def _preview_pass(
    ds: rasterio.DatasetReader,
    src: Path,
    jpeg_path: Path,
    dst: Path,
    options: JpegOptions,
    check: VerifyPass | None = None,
    seconds: dict[str, float] | None = None,
) -> Previews:
    """Render ``ds`` strip by strip into a JPEG at ``jpeg_path`` (checking each strip with ``check``), the
    smaller previews and side files beside ``dst`` under temporary names."""
    if ds.width > JPEG_MAX_SIDE or ds.height > JPEG_MAX_SIDE:
        raise ImageError(
            "jpeg",
            f"image is {ds.width}x{ds.height} pixels; the JPEG format is limited to "
            f"{JPEG_MAX_SIDE} pixels per side, so no full-resolution preview can be made",
            code=FailureCode.JPEG_TOO_LARGE,
        )
    dtype = numpy_dtype(ds.dtypes[0])
    bands = jpeg_bands(ds.count, ds.colorinterp)
    palette = bands == [1] and is_palette(ds)
    try:
        plan = render_plan(ds, bands, palette, options)
    except (RasterioError, CPLE_BaseError) as exc:
        raise gdal_failure("jpeg", exc, src, what="input file") from None
    previews = Previews(bands, _band_order_note(bands) + plan.notes)
    read_bands = list(range(1, ds.count + 1)) if check is not None else plan.bands
    # per pixel: source (+ COG) values, masks, one float64 band, the output and its interleaved copy
    per_pixel = (
        len(read_bands) * dtype.itemsize * (2 if check is not None else 1)
        + (len(plan.bands) if plan.masked or plan.fill is not None else 0)
        + 8
        + 2 * plan.out_count
    )
    if dtype.kind == "c":  # the amplitudes of the preview's bands
        per_pixel += len(plan.bands) * dtype.itemsize // 2
    rows = strip_rows(
        ds.width,
        plan.out_count,
        max(1, 2 * sniff.WINDOW_BYTES // (ds.width * per_pixel)),
        align=check.block_rows if check is not None else 256,
    )
    timing = {"verify": 0.0, "jpeg": 0.0}
    stem, ext = dst.name[: len(dst.name) - len(dst.suffix)], dst.suffix or ".jpg"
    try:
        with contextlib.ExitStack() as stack:
            fh = stack.enter_context(open(jpeg_path, "wb"))
            writer = StripJpegWriter(fh, ds.width, ds.height, plan.out_count, options.quality, rows)
            smaller: list[tuple[str, _SmallPreview]] = []
            for size in options.sizes:
                suffix = f".{size}{ext}"
                tmp = _beside(previews, dst.with_name(stem + suffix), suffix)
                small_fh = stack.enter_context(open(tmp, "wb"))
                smaller.append(
                    (f".{size}", _SmallPreview(small_fh, size, ds.width, ds.height, plan.out_count, options.quality))
                )
            for row in range(0, ds.height, rows):
                window = Window(0, row, ds.width, min(rows, ds.height - row))
                started = time.perf_counter()
                step = "verify" if check is not None else "jpeg"
                try:
                    data = ds.read(read_bands, window=window)
                    valid = ds.read_masks(plan.bands, window=window) != 0 if plan.masked else None
                except (RasterioError, CPLE_BaseError) as exc:
                    raise gdal_failure(step, exc, src, what="input file") from None
                if check is not None:
                    check.window(data, window)
                    data = data[[b - 1 for b in plan.bands]]
                middle = time.perf_counter()
                out = render_window(data, valid, plan)
                try:
                    writer.write(out[0] if plan.out_count == 1 else out.transpose(1, 2, 0))
                    for _, small in smaller:
                        small.feed(out, row)
                except (ValueError, OSError) as exc:
                    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                        raise
                    raise ImageError("jpeg", f"cannot encode the preview: {exc}") from None
                timing[step] += middle - started
                timing["jpeg"] += time.perf_counter() - middle
            writer.close()
            for _, small in smaller:
                small.close()
        georef = source_georef(ds) if options.georeference else None
        if georef is not None:
            _write_georef(previews, dst, stem, ext, "", georef)
            for name, small in smaller:
                _write_georef(previews, dst, stem, ext, name, georef.scaled(*small.scale))
    except BaseException:
        previews.remove()
        raise
    if seconds is not None:
        seconds.update(timing)
    return previews


def _beside(previews: Previews, path: Path, suffix: str) -> Path:
    """A temporary name for ``path`` (a file beside the preview), recorded in ``previews``."""
    tmp = temp_beside(path, ".part")
    previews.files.append(PreviewFile(tmp, path, suffix))
    return tmp


def _write_georef(previews: Previews, dst: Path, stem: str, ext: str, size: str, georef: Georef) -> None:
    """The world file (when there is an affine) and the ``.aux.xml`` of the preview ``<stem><size><ext>``."""
    world = world_file_text(georef)
    if world is not None:
        suffix = size + world_file_suffix(ext)
        _beside(previews, dst.with_name(stem + suffix), suffix).write_text(world, encoding="ascii")
    suffix = f"{size}{ext}.aux.xml"
    _beside(previews, dst.with_name(stem + suffix), suffix).write_text(pam_xml(georef), encoding="utf-8")


def jpeg_bands(count: int, colorinterp: Sequence[ColorInterp] | None = None) -> list[int]:
    """The source bands (1-based) a preview of a ``count``-band image shows; with ``colorinterp``, the bands
    interpreted as red, green and blue (each once) in that order, else bands 1-3."""
    if count in (1, 2):
        return [1]
    if colorinterp is not None:
        order = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        found = list(colorinterp)
        if all(found.count(ci) == 1 for ci in order):
            return [found.index(ci) + 1 for ci in order]
    return [1, 2, 3]


def render_plan(ds: rasterio.DatasetReader, bands: list[int], palette: bool, options: JpegOptions) -> RenderPlan:
    """The colour map, or the per-band stretch estimated from a decimated read (without an undeclared fill
    value), for rendering ``bands``."""
    masked = has_mask(ds, bands)
    dtype = numpy_dtype(ds.dtypes[0])
    color = options.nodata_color
    if palette:
        cmap = ds.colormap(1)
        size = 256 if dtype.itemsize == 1 else 65536
        lut = np.zeros((size, 3), dtype=np.uint8)
        for index, rgba in cmap.items():
            if 0 <= index < size:  # (GeoTIFF colour maps carry no alpha: GDAL reports 255)
                lut[index] = rgba[:3]
        return RenderPlan(bands, 3, lut, None, masked, nodata_color=color)
    stretch = fill = None
    notes: list[str] = []
    if dtype != np.uint8:
        sample, valid = _stats_sample(ds, bands, masked)
        if options.detect_fill and dtype.kind in "iuf" and ds.nodata is None and not masked:
            found = edge_fill(sample, dtype)
            if found is not None and not math.isnan(found.value):  # NaN is never data anyway
                fill = found.value
                valid &= sample != fill
                notes.append(
                    f"undeclared fill value {fill:g} along the {', '.join(found.edges)} edge(s) "
                    f"({found.share:.0%} of a decimated read): left out of the preview's stretch and "
                    f"drawn as nodata; declare it (gdal_edit -a_nodata {fill:g})"
                )
        stretch = _stretch_params(sample, valid, options.stretch_percentiles)
    out_count = len(bands)
    grey = color[0] == color[1] == color[2]
    if out_count == 1 and not grey and (masked or fill is not None or dtype.kind in "fc"):
        out_count = 3  # a coloured nodata on a grey image
    return RenderPlan(bands, out_count, None, stretch, masked, fill, color, notes)


def _stats_sample(ds: rasterio.DatasetReader, bands: list[int], masked: bool) -> tuple[np.ndarray, np.ndarray]:
    """The decimated read of ``bands`` (at most STATS_MAX_SIDE on the longer side, nearest; complex data as
    its amplitude) and where it is valid (finite, and unmasked)."""
    scale = max(ds.width, ds.height) / STATS_MAX_SIDE
    out_h, out_w = ds.height, ds.width
    if scale > 1:
        out_h, out_w = max(1, round(ds.height / scale)), max(1, round(ds.width / scale))
    data = np.stack(
        [_amplitude(ds.read(band, out_shape=(out_h, out_w), resampling=Resampling.nearest)) for band in bands]
    )
    valid = np.isfinite(data) if data.dtype.kind == "f" else np.ones(data.shape, dtype=bool)
    if masked:
        for i, band in enumerate(bands):
            valid[i] &= ds.read_masks(band, out_shape=(out_h, out_w), resampling=Resampling.nearest) != 0
    return data, valid


def _stretch_params(
    sample: np.ndarray, valid: np.ndarray, percentiles: tuple[float, float]
) -> list[tuple[float, float] | None]:
    """Per band (low, high) of the valid sampled values; None when the band is constant or has no valid sample."""
    params: list[tuple[float, float] | None] = []
    for data, ok in zip(sample, valid, strict=True):
        values = data[ok].astype(np.float64)
        if values.size == 0:
            params.append(None)
            continue
        low, high = (float(v) for v in np.percentile(values, percentiles))
        if high <= low:
            low, high = float(values.min()), float(values.max())
        params.append((low, high) if high > low else None)
    return params


def _amplitude(data: np.ndarray) -> np.ndarray:
    """``|z|`` of complex data (float32 for complex64, float64 for complex128); other data as it is."""
    return np.abs(data) if data.dtype.kind == "c" else data


def render_window(data: np.ndarray, valid: np.ndarray | None, plan: RenderPlan) -> np.ndarray:
    """The 8-bit (out bands, rows, cols) rendering of the plan's bands ``data``; ``valid``: their masks or None."""
    if plan.fill is not None:
        not_fill = data != plan.fill
        valid = not_fill if valid is None else (valid & not_fill)
    data = _amplitude(data)
    if data.dtype.kind == "f":
        finite_or_inf = ~np.isnan(data)
        valid = finite_or_inf if valid is None else (valid & finite_or_inf)
    color = plan.nodata_color
    if plan.lut is not None:
        out = plan.lut[data[0].astype(np.intp, copy=False)].transpose(2, 0, 1).copy()
        if valid is not None:
            out[:, ~valid[0]] = np.asarray(color, dtype=np.uint8)[:, None]
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
    if plan.out_count > out.shape[0]:  # grey shown as RGB for a coloured nodata
        out = np.repeat(out, plan.out_count, axis=0)
        if valid is not None:
            valid = np.repeat(valid, plan.out_count, axis=0)
    if valid is not None:
        if color == (0, 0, 0):
            out[~valid] = 0
        else:
            for i in range(out.shape[0]):
                out[i][~valid[i]] = color[i] if out.shape[0] == 3 else color[0]
    return out
