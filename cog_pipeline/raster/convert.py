"""Local-file conversion of one GeoTIFF: inspect it, write a COG, validate and verify it, write a JPEG preview.

Nothing here touches S3. Every per-image failure is raised as :class:`~cog_pipeline.core.errors.ImageError`
with a user-facing message; ``step`` is one of ``open`` (inspection), ``cog``, ``validate``, ``verify``
or ``jpeg``. This module is the orchestration (:func:`convert_file`, :func:`inspect_input`); each job
has its module, whose public names are re-exported here:

* options: :mod:`cog_pipeline.core.conversion` (``CogOptions``, ``JpegOptions``, the config readers);
* GDAL's errors in a user's words, and its console noise kept in the logs: :mod:`.gdalerrors`;
* opening an input (signature, GDAL settings, dataset facts, read windows): :mod:`.sniff`;
* outputs under temporary names: :mod:`.tempfiles`;
* the COG and its validation: :mod:`.cog`; the pixel check: :mod:`.verify`;
* the JPEG preview (the product spec): :mod:`.preview`, encoded by :mod:`.jpegstrips`; the files beside it
  (smaller previews, world files and ``.aux.xml``: :mod:`.georef`) are in ``ConversionResult.preview_sidecars``.

In :func:`convert_file` the pixel check and the preview share one pass over the source
(:func:`~cog_pipeline.raster.preview.verify_and_write_jpeg`): each window is read once, compared with
the COG, then rendered.

Memory stays bounded: pixels are only ever read window by window (about 32-64 MB at a time) plus
GDAL's block cache (``CogOptions.gdal_cache_mb``). Outputs are written under a temporary name beside the
destination and renamed when complete, so a failure never leaves a partial file at the destination.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.windows import Window

from cog_pipeline.core.conversion import CogOptions, JpegOptions, cog_options_from_config, jpeg_options_from_config
from cog_pipeline.core.errors import ImageError
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.core.naming import plural
from cog_pipeline.raster.cog import validate_cog, write_cog
from cog_pipeline.raster.gdalerrors import describe, quiet_gdal, run_step
from cog_pipeline.raster.preview import (
    preview_content_type,
    preview_key,
    verify_and_render_previews,
    verify_and_write_jpeg,
    write_jpeg,
)
from cog_pipeline.raster.sniff import gdal_env, is_palette, numpy_dtype, open_tiff
from cog_pipeline.raster.tempfiles import check_output_folder, remove_temp, temp_beside
from cog_pipeline.raster.kinds import ErrorStats, Preset
from cog_pipeline.raster.verify import PixelCheck, verify_pixels

__all__ = [
    "CogOptions",
    "JpegOptions",
    "RasterInfo",
    "ConversionResult",
    "ImageError",
    "inspect_input",
    "write_cog",
    "validate_cog",
    "verify_pixels",
    "write_jpeg",
    "verify_and_write_jpeg",
    "preview_key",
    "preview_content_type",
    "convert_file",
    "cog_options_from_config",
    "jpeg_options_from_config",
]

T = TypeVar("T")


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
    #: The input's codec as GDAL names it (``jpeg``, ``lzw``, ...), None when uncompressed.
    compression: str | None = None


@dataclass
class ConversionResult:
    """Outcome of :func:`convert_file`.

    ``preview_sidecars``: every file to upload beside the JPEG (smaller previews, world files, ``.aux.xml``),
    as (local path, what replaces the JPEG key's ``.jpg``): its key is ``preview_key(jpeg_key, suffix)``.
    """

    info: RasterInfo
    cog_bytes: int
    jpeg_bytes: int
    jpeg_bands: list[int]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    preview_sidecars: list[tuple[Path, str]] = field(default_factory=list)
    #: The image's data kind and :meth:`Preset.summary` when convert_file was given a preset.
    kind: str | None = None
    preset: str | None = None
    #: ``lossless`` (pixels identical) or ``bounded`` (a lossy preset, within its bound: ``error``).
    check: str = "lossless"
    error: ErrorStats | None = None
    #: Pixel digests (docs/delivery.md) of the input and the COG, from the verification pass.
    input_pixel_digest: str | None = None
    cog_pixel_digest: str | None = None


def inspect_input(path: str | Path, options: CogOptions = CogOptions()) -> RasterInfo:
    """Open ``path`` as a GeoTIFF (only), refuse oversize images, check the last row of every band is readable."""
    with quiet_gdal():
        return _inspect(Path(path), options)[0]


def _inspect(path: Path, options: CogOptions) -> tuple[RasterInfo, list[str]]:
    notes: list[str] = []
    with gdal_env(options.gdal_cache_mb), open_tiff(path) as ds:
        size = path.stat().st_size
        pixels = ds.width * ds.height * ds.count
        if pixels > options.max_pixels:
            raise ImageError(
                "open",
                f"declared size {ds.width}x{ds.height}x{ds.count} exceeds max_pixels "
                f"{options.max_pixels:,} ({pixels:,} values); refused before reading any "
                "pixel (raise cog.max_pixels if the image is genuine)",
                code=FailureCode.TOO_LARGE,
            )
        if ds.width < 1 or ds.height < 1 or ds.count < 1:
            raise ImageError("open", f"image has no pixels ({ds.width}x{ds.height}x{ds.count})")
        dtype = ds.dtypes[0]
        try:
            kind = numpy_dtype(dtype).kind
        except TypeError:
            raise ImageError("open", f"data type {dtype} is not supported (numpy cannot hold it)") from None
        if kind == "c":
            notes.append(f"complex data ({dtype}): the JPEG preview shows the amplitude |z|")
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
            raise ImageError("open", describe(exc, path), code=FailureCode.CORRUPT) from None  # a truncated file
        crs_text = None
        if crs is not None:
            crs_text = crs.to_string() or crs.to_wkt()
        info = RasterInfo(
            width=ds.width,
            height=ds.height,
            count=ds.count,
            dtype=dtype,
            has_palette=is_palette(ds),
            nodata=ds.nodata,
            crs=crs_text,
            size_bytes=size,
            compression=ds.compression.name if ds.compression is not None else None,
        )
    return info, notes


def convert_file(
    src: str | Path,
    cog_dst: str | Path,
    jpeg_dst: str | Path,
    cog_options: CogOptions = CogOptions(),
    jpeg_options: JpegOptions = JpegOptions(),
    expected_bands: int | None = None,
    expected_from: str = "manifest",
    preset: Preset | None = None,
) -> ConversionResult:
    """inspect -> COG -> validate -> verify -> JPEG (from the source) for one local GeoTIFF.

    ``preset`` (:func:`~cog_pipeline.raster.kinds.preset_for` of the image's header): its options replace
    ``cog_options``, its extra creation options are added, and a lossy one is checked within its bound
    instead of pixel for pixel (ImageError("verify") with the measured error when out of bounds).

    Both outputs are made under temporary names and moved to ``cog_dst`` and ``jpeg_dst`` only when
    every step has succeeded; on failure (ImageError) neither is created. ``expected_bands`` (from the
    manifest, or what ``expected_from`` names) only adds a note when it differs: the file's band count
    wins. GDAL's messages go to the ``cog_pipeline.raster.gdal`` logger, once each (see gdalerrors.py).
    """
    src, cog_dst, jpeg_dst = Path(src), Path(cog_dst), Path(jpeg_dst)
    if preset is not None:
        cog_options = preset.options
    pixel_check = PixelCheck(bound=preset.bound if preset is not None and preset.lossy else None)
    check_output_folder(cog_dst, "cog")
    check_output_folder(jpeg_dst, "jpeg")
    seconds: dict[str, float] = {}
    cog_tmp = temp_beside(cog_dst, ".cog.tif")
    jpeg_tmp = temp_beside(jpeg_dst, ".jpg")

    def timed(step: str, key: str, func: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return run_step(step, func, *args)
        finally:
            seconds[key] = time.perf_counter() - started

    previews = None
    try:
        with quiet_gdal(), gdal_env(cog_options.gdal_cache_mb):
            info, notes = timed("open", "inspect", _inspect, src, cog_options)
            if expected_bands is not None and expected_bands != info.count:
                notes.append(
                    f"{expected_from} says {plural(expected_bands, 'band')}, file has {info.count}; "
                    "using the file's count"
                )
            if preset is not None and preset.applied:
                notes.extend(preset.notes)
            timed("cog", "cog", write_cog, src, cog_tmp, cog_options, preset)
            timed("validate", "validate", validate_cog, cog_tmp)
            parts: dict[str, float] = {}
            previews = run_step(
                "jpeg",
                verify_and_render_previews,
                src,
                cog_tmp,
                jpeg_tmp,
                jpeg_dst,
                jpeg_options,
                parts,
                cog_options.num_threads,
                pixel_check,
            )
            verified = pixel_check.result
            if verified is None:
                raise ImageError("verify", "the verification pass did not reach the last window of the image")
            seconds.update(parts)
            notes.extend(previews.notes)
        cog_bytes, jpeg_bytes = cog_tmp.stat().st_size, jpeg_tmp.stat().st_size
        run_step("cog", os.replace, cog_tmp, cog_dst)
        try:
            run_step("jpeg", os.replace, jpeg_tmp, jpeg_dst)
            sidecars = run_step("jpeg", previews.commit)
        except ImageError:
            for done in (cog_dst, jpeg_dst):
                with contextlib.suppress(OSError):
                    os.remove(done)
            raise
    except BaseException:
        if previews is not None:
            previews.remove()
        raise
    finally:
        remove_temp(cog_tmp)
        remove_temp(jpeg_tmp)
    return ConversionResult(
        info=info,
        cog_bytes=cog_bytes,
        jpeg_bytes=jpeg_bytes,
        jpeg_bands=previews.bands,
        notes=notes,
        seconds=seconds,
        preview_sidecars=sidecars,
        kind=preset.kind.value if preset is not None else None,
        preset=preset.summary() if preset is not None else None,
        check=verified.check,
        error=verified.error,
        input_pixel_digest=verified.input_pixel_digest,
        cog_pixel_digest=verified.cog_pixel_digest,
    )
