"""What a COG and a JPEG preview should be: the ``cog:`` and ``jpeg:`` config sections as typed,
checked options. No GDAL here: the config model checks a config with them before anything runs, and
the raster layer (``cog_pipeline.raster.convert``) writes files by them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = [
    "JPEG_MAX_SIDE",
    "LOSSLESS_CODECS",
    "LEVEL_RANGES",
    "MIN_PREVIEW_SIZE",
    "NODATA_COLORS",
    "PREDICTORS",
    "RESAMPLINGS",
    "CogOptions",
    "JpegOptions",
    "cog_options_from_config",
    "jpeg_options_from_config",
]

#: Codecs of the COG driver that give back the exact pixels (JPEG is lossy and always refused;
#: WEBP is written lossless, QUALITY=100, and only takes uint8 RGB or RGBA images).
LOSSLESS_CODECS = ("NONE", "LZW", "DEFLATE", "ZSTD", "LZMA", "LERC", "LERC_DEFLATE", "LERC_ZSTD", "WEBP")
#: Codecs with a compression level, and the range GDAL accepts.
LEVEL_RANGES = {"DEFLATE": (1, 12), "ZSTD": (1, 22), "LZMA": (0, 9), "LERC_DEFLATE": (1, 12), "LERC_ZSTD": (1, 22)}
PREDICTORS = ("NO", "STANDARD", "FLOATING_POINT", "YES")
RESAMPLINGS = ("nearest", "average", "bilinear", "cubic", "cubicspline", "lanczos", "mode", "rms", "gauss")


@dataclass(frozen=True)
class CogOptions:
    """How COGs are written (the ``cog:`` config section). Values are checked and normalised on creation.

    ``compress`` must be lossless (pixels are verified against the source): NONE, LZW, DEFLATE, ZSTD,
    LZMA, LERC*, or WEBP (written lossless; uint8 RGB/RGBA only). ``level`` only for DEFLATE, ZSTD, LZMA,
    LERC_DEFLATE, LERC_ZSTD. ``predictor`` FLOATING_POINT is refused on integer images: use YES (GDAL
    picks STANDARD or FLOATING_POINT per image) for batches of mixed types.
    """

    compress: str = "LZW"
    predictor: str = "NO"
    level: int | None = None
    blocksize: int = 512
    overview_resampling: str = "average"
    num_threads: str = "ALL_CPUS"
    gdal_cache_mb: int = 128
    max_pixels: int = 2_000_000_000

    def __post_init__(self) -> None:
        compress = str(self.compress).upper()
        if compress == "JPEG":
            raise ValueError(
                "cog.compress JPEG is lossy, so every COG would fail the pixel check; "
                f"use one of {', '.join(LOSSLESS_CODECS)}"
            )
        if compress not in LOSSLESS_CODECS:
            raise ValueError(f"cog.compress {self.compress!r} is not one of {', '.join(LOSSLESS_CODECS)}")
        predictor = self.predictor
        if isinstance(predictor, bool):  # YAML 1.1 reads an unquoted NO/YES as a boolean
            predictor = "YES" if predictor else "NO"
        predictor = str(predictor).upper()
        if predictor not in PREDICTORS:
            raise ValueError(f"cog.predictor {self.predictor!r} is not one of {', '.join(PREDICTORS)}")
        if self.level is not None:
            if isinstance(self.level, bool) or not isinstance(self.level, int):
                raise ValueError(f"cog.level must be an integer or null, not {self.level!r}")
            if compress not in LEVEL_RANGES:
                raise ValueError(
                    f"cog.level is set but {compress} has no compression level "
                    f"(only {', '.join(LEVEL_RANGES)} do); set it to null"
                )
            low, high = LEVEL_RANGES[compress]
            if not low <= self.level <= high:
                raise ValueError(f"cog.level {self.level} is out of range for {compress} ({low}..{high})")
        if (
            isinstance(self.blocksize, bool)
            or not isinstance(self.blocksize, int)
            or not 64 <= self.blocksize <= 4096
            or self.blocksize % 16
        ):
            raise ValueError(f"cog.blocksize {self.blocksize!r} must be a multiple of 16 between 64 and 4096")
        resampling = str(self.overview_resampling).lower()
        if resampling not in RESAMPLINGS:
            raise ValueError(
                f"cog.overview_resampling {self.overview_resampling!r} is not one of {', '.join(RESAMPLINGS)}"
            )
        threads = str(self.num_threads).strip().upper()
        if threads != "ALL_CPUS" and not (threads.isdigit() and int(threads) >= 1):
            raise ValueError(f"cog.num_threads {self.num_threads!r} must be ALL_CPUS or a positive integer")
        for name in ("gdal_cache_mb", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"cog.{name} must be a positive integer, not {value!r}")
        object.__setattr__(self, "compress", compress)
        object.__setattr__(self, "predictor", predictor)
        object.__setattr__(self, "overview_resampling", resampling)
        object.__setattr__(self, "num_threads", threads)


#: Names ``jpeg.nodata_color`` takes besides ``[r, g, b]``.
NODATA_COLORS = {"black": (0, 0, 0), "white": (255, 255, 255)}
#: The JPEG format's limit on each side (the largest ``jpeg.sizes`` entry).
JPEG_MAX_SIDE = 65500
#: The smallest ``jpeg.sizes`` entry.
MIN_PREVIEW_SIZE = 16


@dataclass(frozen=True)
class JpegOptions:
    """How JPEG previews are written (the ``jpeg:`` config section); the rules: cog_pipeline.raster.preview.

    ``nodata_color``: what nodata, masked and fill pixels are drawn in, ``[r, g, b]`` or ``black``/``white``
    (default black, as the original). ``sizes``: longer sides of smaller previews written besides the
    full-resolution one (default none). ``georeference``: a world file and ``.aux.xml`` beside each preview
    of a georeferenced image. ``detect_fill``: an undeclared fill value (raster/fill.py) is left out of the
    stretch and drawn as nodata.
    """

    quality: int = 80
    stretch_percentiles: tuple[float, float] = (2.0, 98.0)
    nodata_color: tuple[int, int, int] = (0, 0, 0)
    sizes: tuple[int, ...] = ()
    georeference: bool = True
    detect_fill: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise ValueError(f"jpeg.quality {self.quality!r} must be an integer from 1 to 100")
        try:
            low, high = (float(v) for v in self.stretch_percentiles)
        except (TypeError, ValueError):
            raise ValueError(
                f"jpeg.stretch_percentiles must be two numbers, e.g. [2, 98], not {self.stretch_percentiles!r}"
            ) from None
        if not 0 <= low < high <= 100:
            raise ValueError(
                f"jpeg.stretch_percentiles {list(self.stretch_percentiles)} must satisfy 0 <= low < high <= 100"
            )
        object.__setattr__(self, "stretch_percentiles", (low, high))
        object.__setattr__(self, "nodata_color", _nodata_color(self.nodata_color))
        object.__setattr__(self, "sizes", _sizes(self.sizes))
        for name in ("georeference", "detect_fill"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"jpeg.{name} must be true or false, not {getattr(self, name)!r}")


def _nodata_color(value: Any) -> tuple[int, int, int]:
    """``[r, g, b]`` (0..255 each) or a name of NODATA_COLORS, as a tuple."""
    if isinstance(value, str):
        if value.lower() in NODATA_COLORS:
            return NODATA_COLORS[value.lower()]
        raise ValueError(f"jpeg.nodata_color {value!r} is not one of {', '.join(NODATA_COLORS)} or [r, g, b]")
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise ValueError(
        f"jpeg.nodata_color {value!r} must be [r, g, b] with each from 0 to 255, or one of {', '.join(NODATA_COLORS)}"
    )


def _sizes(value: Any) -> tuple[int, ...]:
    """Distinct longer sides from MIN_PREVIEW_SIZE to JPEG_MAX_SIDE, ascending."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"jpeg.sizes {value!r} must be a list of longer sides in pixels, e.g. [512, 2048]")
    for size in value:
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_PREVIEW_SIZE <= size <= JPEG_MAX_SIDE:
            raise ValueError(
                f"jpeg.sizes: {size!r} must be an integer from {MIN_PREVIEW_SIZE} to {JPEG_MAX_SIDE} "
                "(the longer side of a smaller preview, in pixels)"
            )
    if len(set(value)) != len(value):
        raise ValueError(f"jpeg.sizes {list(value)} lists a size twice")
    return tuple(sorted(value))


def _options_from_config(cls: type, section: str, d: dict[str, Any] | None) -> Any:
    d = dict(d or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) in the {section}: section: {', '.join(map(str, unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )
    return cls(**d)


def cog_options_from_config(d: dict[str, Any]) -> CogOptions:
    """CogOptions from the ``cog:`` config section (missing keys take defaults; unknown keys -> ValueError)."""
    d = dict(d or {})
    if d.get("num_threads") is not None and not isinstance(d["num_threads"], bool):
        d["num_threads"] = str(d["num_threads"])
    return _options_from_config(CogOptions, "cog", d)


def jpeg_options_from_config(d: dict[str, Any]) -> JpegOptions:
    """JpegOptions from the ``jpeg:`` config section (missing keys take defaults; unknown keys -> ValueError)."""
    d = dict(d or {})
    for key in ("stretch_percentiles", "nodata_color", "sizes"):
        if isinstance(d.get(key), list):
            d[key] = tuple(d[key])
    return _options_from_config(JpegOptions, "jpeg", d)
