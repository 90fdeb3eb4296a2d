"""Writing a COG and validating it.

GDAL's COG driver through ``rasterio.shutil.copy`` (not rio-cogeo's ``cog_translate``, which needs
2-3x the memory). The ``cog:`` section's codecs are lossless, so the COG's full-resolution pixels can be
checked against the source; a preset (:mod:`.kinds`, docs/delivery.md) may add lossy settings
(``MAX_Z_ERROR`` for LERC*, ``QUALITY`` below 100 for WEBP), checked within its bound instead. Paletted
images get nearest-neighbour overviews, and so does any categorical image under a preset unless the preset
says ``mode``: class codes are never averaged. ``BIGTIFF=IF_SAFER``.

Complex data (SAR: complex_int16, complex64, complex128) is written as it is with NONE, LZW,
DEFLATE, ZSTD or LZMA; LERC and WEBP cannot store it and are refused with the reason. TIFF's
floating-point predictor does not take complex samples, so predictor YES means STANDARD for
complex_int16 and complex64 and NO for complex128 (whose 64-bit halves STANDARD cannot difference).
The validation is rio-cogeo's ``cog_validate``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from cog_pipeline.core.conversion import CogOptions
from cog_pipeline.core.errors import ImageError
from cog_pipeline.raster.gdalerrors import describe, gdal_failure
from cog_pipeline.raster.kinds import CATEGORICAL_RESAMPLINGS, DataKind, Preset
from cog_pipeline.raster.sniff import gdal_env, is_palette, numpy_dtype, open_tiff
from cog_pipeline.raster.tempfiles import atomic_output

__all__ = ["cog_creation_options", "validate_cog", "write_cog"]

#: Codecs of the COG driver that cannot store complex samples.
_NO_COMPLEX = ("LERC", "LERC_DEFLATE", "LERC_ZSTD", "WEBP")
#: The extra creation options a preset may add, and the codecs each belongs to.
_EXTRA_FOR = {"MAX_Z_ERROR": ("LERC", "LERC_DEFLATE", "LERC_ZSTD"), "QUALITY": ("WEBP",)}


def cog_creation_options(
    ds: rasterio.DatasetReader, options: CogOptions, preset: Preset | None = None
) -> dict[str, str]:
    """The COG driver's creation options for ``ds`` (ImageError("cog") when the options cannot fit its data).
    With ``preset``, its options replace ``options`` and its extra creation options are merged in."""
    if preset is not None:
        options = preset.options
    dtype = ds.dtypes[0]
    kind = numpy_dtype(dtype).kind
    if options.predictor == "FLOATING_POINT" and kind != "f":
        raise ImageError(
            "cog",
            f"predictor FLOATING_POINT only works on float data and this image is {dtype} "
            "(use predictor YES for batches of mixed data types)",
        )
    predictor = options.predictor
    if kind == "c":
        if options.compress in _NO_COMPLEX:
            raise ImageError(
                "cog",
                f"compress {options.compress} cannot store complex data ({dtype}); "
                "use LZW, DEFLATE, ZSTD, LZMA or NONE",
            )
        wide = numpy_dtype(dtype).itemsize > 8  # complex128: two 64-bit halves
        if predictor == "STANDARD" and wide:
            raise ImageError(
                "cog", f"predictor STANDARD does not work on {dtype} data (64-bit halves); use predictor YES or NO"
            )
        if predictor == "YES":
            predictor = "NO" if wide else "STANDARD"
    resampling = "nearest" if is_palette(ds) else options.overview_resampling
    if preset is not None and preset.applied and preset.kind is DataKind.CATEGORICAL:
        resampling = (
            options.overview_resampling if options.overview_resampling in CATEGORICAL_RESAMPLINGS else "nearest"
        )
    creation = {
        "COMPRESS": options.compress,
        "BLOCKSIZE": str(options.blocksize),
        "OVERVIEW_RESAMPLING": resampling.upper(),
        "NUM_THREADS": options.num_threads,
        "BIGTIFF": "IF_SAFER",
    }
    if options.compress not in ("NONE", "WEBP", "LERC"):
        creation["PREDICTOR"] = predictor
    if options.level is not None:
        creation["LEVEL"] = str(options.level)
    if options.compress == "WEBP":
        creation["QUALITY"] = "100"  # lossless WEBP
    for key, value in (preset.extra_creation if preset is not None else {}).items():
        if options.compress not in _EXTRA_FOR.get(key, ()):
            raise ImageError(
                "cog",
                f"the preset's creation option {key}={value} does not apply to "
                f"{options.compress} (MAX_Z_ERROR is for LERC*, QUALITY for WEBP)",
            )
        creation[key] = value
    return creation


def write_cog(
    src: str | Path, dst: str | Path, options: CogOptions = CogOptions(), preset: Preset | None = None
) -> None:
    """Write ``src`` as a COG at ``dst`` (GDAL COG driver; temp file beside ``dst`` renamed when complete).
    With ``preset`` (:func:`~cog_pipeline.raster.kinds.preset_for`), its options and extra creation options."""
    src, dst = Path(src), Path(dst)
    if preset is not None:
        options = preset.options
    # COG_TMP_COMPRESSION: the driver's temporary overview file is not compressed (GDAL's default is
    # LZW): the same COG, byte for byte, 15-40% sooner, for scratch space of a third of the raw image.
    with (
        atomic_output(dst, "cog") as tmp,
        gdal_env(options.gdal_cache_mb),
        rasterio.Env(COG_TMP_COMPRESSION="NONE"),
        open_tiff(src) as ds,
    ):
        creation = cog_creation_options(ds, options, preset)
        try:
            rasterio.shutil.copy(ds, str(tmp), driver="COG", **creation)
        except (RasterioError, CPLE_BaseError) as exc:
            raise gdal_failure("cog", exc, src, what="input file") from None


def validate_cog(path: str | Path) -> None:
    """Check ``path`` with ``rio_cogeo.cog_validate``; raises ImageError("validate", <its errors>)."""
    from rio_cogeo.cogeo import cog_validate

    with gdal_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            valid, errors, _warnings = cog_validate(str(path), quiet=True)
        except Exception as exc:  # noqa: BLE001
            raise ImageError("validate", f"cannot validate the COG: {describe(exc, Path(path))}") from None
    if not valid:
        raise ImageError("validate", "not a valid COG: " + ("; ".join(errors) or "no reason given"))
