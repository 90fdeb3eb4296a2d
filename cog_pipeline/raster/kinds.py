"""The kind of data an image holds (imagery, elevation, categorical, other) and the COG preset for it.

:func:`detect` reads only an :class:`~cog_pipeline.raster.header.ImageHeader` (header + decimated read).
:func:`preset_for` turns the ``presets:`` config section into the options for one image: the ``cog:``
section's blocksize, threads, cache and pixel limit, with the kind's codec, predictor, level and overview
resampling, the creation options CogOptions has no field for (LERC ``MAX_Z_ERROR``, WEBP ``QUALITY``), and
the check the conversion must pass: ``lossless`` (pixels identical) or ``bounded`` (max absolute error and/or
PSNR within the preset's bound). A lossy preset without a bound is refused. docs/delivery.md explains each.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cog_pipeline.core.conversion import LEVEL_RANGES, RESAMPLINGS, CogOptions, cog_options_from_config
from cog_pipeline.raster.header import ImageHeader

__all__ = [
    "DataKind",
    "Detection",
    "ErrorBound",
    "ErrorMeter",
    "ErrorStats",
    "KindPreset",
    "Preset",
    "PresetRules",
    "classify",
    "detect",
    "presets_from_config",
    "preset_for",
    "cog_options_for",
    "measure_error",
]

#: At most this many distinct values in the decimated read of a one-band integer image: categorical.
CATEGORICAL_MAX_VALUES = 32
#: Codecs a preset may name: the lossless ones of CogOptions (LERC* and WEBP become lossy by their settings).
PRESET_CODECS = ("NONE", "LZW", "DEFLATE", "ZSTD", "LZMA", "LERC", "LERC_DEFLATE", "LERC_ZSTD", "WEBP")
PRESET_PREDICTORS = ("auto", "NO", "STANDARD", "FLOATING_POINT")
#: Overview resamplings that never average class codes.
CATEGORICAL_RESAMPLINGS = ("nearest", "mode")
_NO_PREDICTOR = ("NONE", "WEBP", "LERC")


class DataKind(str, enum.Enum):
    """What an image holds, which decides its preset."""

    IMAGERY = "imagery"
    ELEVATION = "elevation"
    CATEGORICAL = "categorical"
    OTHER = "other"


@dataclass(frozen=True)
class Detection:
    """A kind and the reason, in words, for the QA report and the image's log."""

    kind: DataKind
    reason: str


def _data_bands(header: ImageHeader) -> int:
    return sum(1 for ci in header.colorinterp if ci != "alpha")


def classify(header: ImageHeader, max_values: int = CATEGORICAL_MAX_VALUES) -> Detection:
    """The kind of ``header``'s image, with the reason."""
    dtype = np.dtype(header.dtype)
    bands = _data_bands(header)
    if header.has_palette:
        return Detection(DataKind.CATEGORICAL, f"paletted ({header.palette_size} colours)")
    if dtype == np.uint8 and bands in (3, 4):
        layout = "RGB" if bands == 3 else "RGBNIR"
        alpha = " + alpha" if header.has_alpha else ""
        return Detection(DataKind.IMAGERY, f"uint8 {layout}{alpha}")
    if np.issubdtype(dtype, np.floating) and bands == 1:
        return Detection(DataKind.ELEVATION, f"one {dtype.name} band")
    if np.issubdtype(dtype, np.integer) and bands == 1 and header.sample.size:
        band = header.colorinterp.index(next(ci for ci in header.colorinterp if ci != "alpha"))
        values = header.sample[band][header.sample_valid]
        distinct = np.unique(values).size if values.size else 0
        if 0 < distinct <= max_values:
            return Detection(
                DataKind.CATEGORICAL, f"one {dtype.name} band with {distinct} distinct values in a decimated read"
            )
    return Detection(DataKind.OTHER, f"{bands} {dtype.name} band(s)")


def detect(header: ImageHeader, max_values: int = CATEGORICAL_MAX_VALUES) -> DataKind:
    """The kind of ``header``'s image (:func:`classify` without the reason)."""
    return classify(header, max_values).kind


@dataclass(frozen=True)
class ErrorBound:
    """The bounded-error check a lossy preset gets instead of the lossless one (None: not bounded that way)."""

    max_abs_error: float | None = None
    min_psnr_db: float | None = None

    def violation(self, stats: ErrorStats) -> str | None:
        """Why ``stats`` break the bound, or None when they keep it. For floating-point data the absolute bound
        allows ``stats.rounding`` (one unit in the last place) more: storing a decoded value in its type rounds it
        (LERC decodes in double precision, so a float32 value may move by max_z_error and its rounding)."""
        if self.max_abs_error is not None and not stats.max_abs_error <= self.max_abs_error + stats.rounding:
            return f"max absolute error {stats.max_abs_error:g} exceeds the bound {self.max_abs_error:g}" + (
                f" (+ {stats.rounding:.3g} for the rounding of floating-point data)" if stats.rounding else ""
            )
        if self.min_psnr_db is not None and not stats.psnr_db >= self.min_psnr_db:
            return f"PSNR {stats.psnr_db:.2f} dB is below the bound {self.min_psnr_db:g} dB"
        return None


@dataclass(frozen=True)
class ErrorStats:
    """How far a lossy COG is from its source (over the valid pixels)."""

    max_abs_error: float
    rmse: float
    psnr_db: float
    #: Values compared (pixels x bands).
    values: int
    #: Floats: one unit in the last place of the largest valid magnitude in the source's type; 0 for integers.
    rounding: float = 0.0

    def text(self) -> str:
        """``max abs error 0.0098, PSNR 71.3 dB over 1,000,000 values`` (for reasons and logs)."""
        return f"max abs error {self.max_abs_error:g}, PSNR {self.psnr_db:.2f} dB over {self.values:,} values"


class ErrorMeter:
    """:func:`measure_error` over an image fed window by window (any order): bounded memory, the same figures."""

    def __init__(self) -> None:
        self.dtype: np.dtype | None = None
        self.max_abs = 0.0
        self.squares = 0.0
        self.values = 0
        self.low, self.high, self.magnitude = math.inf, -math.inf, 0.0

    def add(self, reference: np.ndarray, candidate: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add one window: ``reference`` and ``candidate`` (bands x rows x cols, same shape), ``valid`` (rows x
        cols, or the same shape) True where the reference holds data. NaN in both at a value counts as equal."""
        if reference.shape != candidate.shape:
            raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
        if np.issubdtype(reference.dtype, np.complexfloating):
            raise ValueError("complex data has no lossy codec (LERC and WEBP cannot store it): check it lossless")
        if self.dtype is None:
            self.dtype = reference.dtype
        ref = reference.astype(np.float64)
        cand = candidate.astype(np.float64)
        mask = np.ones(ref.shape, dtype=bool) if valid is None else np.broadcast_to(valid, ref.shape)
        mask = mask & ~(np.isnan(ref) & np.isnan(cand))
        diff = np.abs(ref - cand)[mask]
        if diff.size == 0:
            return
        worst = float(np.max(diff))  # NaN on one side only: NaN, which no bound accepts
        self.max_abs = worst if math.isnan(worst) or math.isnan(self.max_abs) else max(self.max_abs, worst)
        self.squares += float(np.sum(diff**2))
        self.values += int(diff.size)
        finite = ref[mask & np.isfinite(ref)]
        if finite.size:
            self.low, self.high = min(self.low, float(finite.min())), max(self.high, float(finite.max()))
            self.magnitude = max(self.magnitude, float(np.abs(finite).max()))

    def stats(self) -> ErrorStats:
        """The figures so far. PSNR's peak: the type's range for integers, the reference's value range for
        floats; infinite when identical."""
        if self.values == 0 or self.dtype is None:
            return ErrorStats(0.0, 0.0, math.inf, 0)
        rmse = math.sqrt(self.squares / self.values)
        rounding = 0.0
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            peak = float(info.max) - float(info.min)
        else:
            peak = self.high - self.low if self.high >= self.low else 0.0
            rounding = float(np.spacing(self.dtype.type(self.magnitude)))
        if rmse == 0:
            psnr = math.inf
        elif math.isnan(rmse) or peak == 0:
            psnr = -math.inf if not math.isnan(rmse) else math.nan
        else:
            psnr = 20 * math.log10(peak / rmse)
        return ErrorStats(self.max_abs, rmse, psnr, self.values, rounding)


def measure_error(reference: np.ndarray, candidate: np.ndarray, valid: np.ndarray | None = None) -> ErrorStats:
    """Max absolute error, RMSE and PSNR of ``candidate`` against ``reference`` (same shape), over the pixels
    where ``valid`` (broadcast over bands) is True (:class:`ErrorMeter` on one window)."""
    meter = ErrorMeter()
    meter.add(reference, candidate, valid)
    return meter.stats()


@dataclass(frozen=True)
class KindPreset:
    """One kind's entry of the ``presets:`` section, checked."""

    compress: str
    predictor: str = "auto"
    level: int | None = None
    overview_resampling: str = "average"
    max_z_error: float = 0.0
    quality: int = 100
    bound: ErrorBound = field(default_factory=ErrorBound)

    @property
    def lossy(self) -> bool:
        return (self.compress.startswith("LERC") and self.max_z_error > 0) or (
            self.compress == "WEBP" and self.quality < 100
        )


def _kind_preset(kind: DataKind, d: Mapping[str, Any]) -> KindPreset:
    where = f"presets.{kind.value}"
    known = {
        "compress",
        "predictor",
        "level",
        "overview_resampling",
        "max_z_error",
        "quality",
        "max_abs_error",
        "min_psnr_db",
    }
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    compress = str(d.get("compress", "LZW")).upper()
    if compress not in PRESET_CODECS:
        raise ValueError(
            f"{where}.compress {d.get('compress')!r} is not one of {', '.join(PRESET_CODECS)} "
            "(JPEG is not offered: use WEBP with a quality below 100 and a bound)"
        )
    predictor = d.get("predictor", "auto")
    if isinstance(predictor, bool):  # YAML 1.1 reads an unquoted NO as False
        predictor = "STANDARD" if predictor else "NO"
    predictor = "auto" if str(predictor).lower() == "auto" else str(predictor).upper()
    if predictor not in PRESET_PREDICTORS:
        raise ValueError(f"{where}.predictor {d.get('predictor')!r} is not one of {', '.join(PRESET_PREDICTORS)}")
    level = d.get("level")
    if level is not None:
        if isinstance(level, bool) or not isinstance(level, int) or compress not in LEVEL_RANGES:
            raise ValueError(f"{where}.level {level!r}: only an integer, and only for {', '.join(LEVEL_RANGES)}")
        low, high = LEVEL_RANGES[compress]
        if not low <= level <= high:
            raise ValueError(f"{where}.level {level} is out of range for {compress} ({low}..{high})")
    resampling = str(d.get("overview_resampling", "average")).lower()
    if resampling not in RESAMPLINGS:
        raise ValueError(f"{where}.overview_resampling {resampling!r} is not one of {', '.join(RESAMPLINGS)}")
    if kind is DataKind.CATEGORICAL and resampling not in CATEGORICAL_RESAMPLINGS:
        raise ValueError(
            f"{where}.overview_resampling {resampling} would average class codes: use "
            f"{' or '.join(CATEGORICAL_RESAMPLINGS)}"
        )
    max_z_error = d.get("max_z_error", 0)
    if isinstance(max_z_error, bool) or not isinstance(max_z_error, (int, float)) or not max_z_error >= 0:
        raise ValueError(f"{where}.max_z_error {max_z_error!r} must be a number >= 0")
    if max_z_error > 0 and not compress.startswith("LERC"):
        raise ValueError(f"{where}.max_z_error is only for LERC, LERC_DEFLATE, LERC_ZSTD (compress is {compress})")
    quality = d.get("quality", 100)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"{where}.quality {quality!r} must be an integer from 1 to 100 (100: lossless)")
    if quality < 100 and compress != "WEBP":
        raise ValueError(f"{where}.quality is only for WEBP (compress is {compress}); leave it at 100")
    bound = ErrorBound(
        max_abs_error=_number_or_none(where, "max_abs_error", d.get("max_abs_error")),
        min_psnr_db=_number_or_none(where, "min_psnr_db", d.get("min_psnr_db")),
    )
    preset = KindPreset(compress, predictor, level, resampling, float(max_z_error), quality, bound)
    if preset.lossy:
        if bound.max_abs_error is None and bound.min_psnr_db is None:
            setting = f"max_z_error {max_z_error:g}" if compress.startswith("LERC") else f"quality {quality}"
            raise ValueError(
                f"{where}: {compress} with {setting} is lossy, so the lossless check cannot pass; set "
                f"{where}.max_abs_error and/or min_psnr_db for a bounded-error check instead"
            )
        if bound.max_abs_error is not None and compress.startswith("LERC") and bound.max_abs_error < max_z_error:
            raise ValueError(
                f"{where}.max_abs_error {bound.max_abs_error:g} is below max_z_error "
                f"{max_z_error:g}: every image would fail its check"
            )
    elif bound != ErrorBound():
        raise ValueError(f"{where}: max_abs_error / min_psnr_db bound a lossy preset, and this one is lossless")
    return preset


def _number_or_none(where: str, key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{where}.{key} {value!r} must be a number >= 0 or null")
    return float(value)


#: The ``presets:`` defaults (also in config/config.schema.yaml and config/config.yaml).
DEFAULT_PRESETS: dict[str, dict[str, Any]] = {
    "imagery": {"compress": "WEBP", "quality": 100},
    "elevation": {"compress": "ZSTD", "predictor": "FLOATING_POINT"},
    "categorical": {"compress": "LZW", "predictor": "NO", "overview_resampling": "mode"},
    "other": {"compress": "LZW", "predictor": "auto"},
}


@dataclass(frozen=True)
class PresetRules:
    """The ``presets:`` config section, checked: on/off, the categorical threshold, one preset per kind."""

    enabled: bool
    categorical_max_values: int
    kinds: dict[DataKind, KindPreset]


def presets_from_config(config: Mapping[str, Any]) -> PresetRules:
    """PresetRules from a whole config (its ``presets:`` section; missing keys take the defaults).
    ValueError naming the key and the rule for a bad value."""
    section = dict(config.get("presets") or {})
    enabled = section.pop("enabled", False)  # opt-in: the cog: section (LZW, like the original) by default
    if not isinstance(enabled, bool):
        raise ValueError(f"presets.enabled must be true or false, not {enabled!r}")
    max_values = section.pop("categorical_max_values", CATEGORICAL_MAX_VALUES)
    if isinstance(max_values, bool) or not isinstance(max_values, int) or not 1 <= max_values <= 65536:
        raise ValueError(f"presets.categorical_max_values {max_values!r} must be an integer from 1 to 65536")
    unknown = sorted(set(section) - {k.value for k in DataKind})
    if unknown:
        raise ValueError(
            f"presets: unknown key(s) {', '.join(unknown)} (kinds: "
            f"{', '.join(k.value for k in DataKind)}, enabled, categorical_max_values)"
        )
    kinds = {
        kind: _kind_preset(kind, {**DEFAULT_PRESETS[kind.value], **dict(section.get(kind.value) or {})})
        for kind in DataKind
    }
    return PresetRules(enabled, max_values, kinds)


@dataclass(frozen=True)
class Preset:
    """What one image is written with, and the check its COG must pass."""

    kind: DataKind
    reason: str
    options: CogOptions
    #: Creation options CogOptions has no field for (``MAX_Z_ERROR``, ``QUALITY``); empty when lossless.
    extra_creation: dict[str, str]
    #: ``lossless`` (pixels identical) or ``bounded`` (within ``bound``).
    check: str
    bound: ErrorBound
    notes: tuple[str, ...] = ()
    #: False when ``presets.enabled`` is false: ``options`` are the ``cog:`` section's as they are.
    applied: bool = True

    @property
    def lossy(self) -> bool:
        return self.check == "bounded"

    def summary(self) -> str:
        """One line for the report and the image's log, e.g. ``elevation: ZSTD FLOATING_POINT, lossless``."""
        parts = [self.options.compress]
        if self.options.predictor not in ("NO",):
            parts.append(self.options.predictor)
        parts += [f"{k}={v}" for k, v in sorted(self.extra_creation.items())]
        check = "lossless" if self.check == "lossless" else f"bounded ({_bound_text(self.bound)})"
        name = self.kind.value if self.applied else "cog section (presets disabled)"
        return f"{name}: {' '.join(parts)}, overviews {self.options.overview_resampling}, {check}"


def _bound_text(bound: ErrorBound) -> str:
    parts = []
    if bound.max_abs_error is not None:
        parts.append(f"max abs error <= {bound.max_abs_error:g}")
    if bound.min_psnr_db is not None:
        parts.append(f"PSNR >= {bound.min_psnr_db:g} dB")
    return ", ".join(parts)


def _resolve(
    kind: DataKind, preset: KindPreset, base: CogOptions, header: ImageHeader | None
) -> tuple[CogOptions, dict[str, str], list[str]]:
    notes: list[str] = []
    compress, predictor = preset.compress, preset.predictor
    quality, max_z_error = preset.quality, preset.max_z_error
    if header is not None and compress == "WEBP" and not (header.dtype == "uint8" and header.count == 3):
        notes.append(
            f"WEBP takes 3-band uint8 only (this image: {header.count} {header.dtype} band(s)): ZSTD "
            "with the standard predictor instead"
        )
        compress, predictor, quality = "ZSTD", "STANDARD", 100
    is_float = header is not None and np.issubdtype(np.dtype(header.dtype), np.floating)
    if predictor == "FLOATING_POINT" and header is not None and not is_float:
        notes.append(f"FLOATING_POINT predictor needs float data (this image: {header.dtype}): STANDARD instead")
        predictor = "STANDARD"
    if compress in _NO_PREDICTOR:
        predictor = "NO"
    elif predictor == "auto":
        predictor = "YES" if header is None else ("FLOATING_POINT" if is_float else "STANDARD")
    level = preset.level if compress == preset.compress else None
    options = replace(
        base, compress=compress, predictor=predictor, level=level, overview_resampling=preset.overview_resampling
    )
    extra: dict[str, str] = {}
    if compress.startswith("LERC") and max_z_error > 0:
        extra["MAX_Z_ERROR"] = repr(max_z_error)
    if compress == "WEBP" and quality < 100:
        extra["QUALITY"] = str(quality)
    return options, extra, notes


def preset_for(header: ImageHeader, config: Mapping[str, Any]) -> Preset:
    """The preset of ``header``'s image under ``config`` (a whole config: its ``cog:`` and ``presets:``).
    With ``presets.enabled`` false, the ``cog:`` section as it is, lossless."""
    base = cog_options_from_config(dict(config.get("cog") or {}))
    rules = presets_from_config(config)
    found = classify(header, rules.categorical_max_values)
    if not rules.enabled:
        return Preset(
            found.kind, found.reason, base, {}, "lossless", ErrorBound(), ("presets disabled",), applied=False
        )
    preset = rules.kinds[found.kind]
    options, extra, notes = _resolve(found.kind, preset, base, header)
    check = "bounded" if extra else "lossless"
    return Preset(
        found.kind, found.reason, options, extra, check, preset.bound if extra else ErrorBound(), tuple(notes)
    )


def cog_options_for(kind: DataKind, config: Mapping[str, Any], header: ImageHeader | None = None) -> CogOptions:
    """The COG options of ``kind`` under ``config``. Without ``header`` the ``auto`` predictor is ``YES`` (GDAL
    picks STANDARD or FLOATING_POINT per image); with it, the image's type decides, and WEBP falls back to ZSTD
    for what WEBP cannot hold. Lossy settings are in :func:`preset_for`'s ``extra_creation``."""
    base = cog_options_from_config(dict(config.get("cog") or {}))
    rules = presets_from_config(config)
    if not rules.enabled:
        return base
    return _resolve(kind, rules.kinds[kind], base, header)[0]
