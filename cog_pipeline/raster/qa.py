"""Delivery QA before anything is converted: each image's header and a decimated read, checked alone and
against the rest of the delivery: its SRS against the whole delivery; its pixel size, bands, data type and
colour interpretation against the images of its data kind (raster/kinds.py), so orthoimagery, elevation and
land cover may come in one delivery. Findings are typed (key, check, severity, detail); the ``qa:`` config
section gives each check its severity: ``fail`` (the row fails), ``warn``, ``info`` or ``off``.
docs/delivery.md says what each check means to GIS staff.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError

from cog_pipeline.core.errors import ImageError
from cog_pipeline.raster.fill import DEFAULT_FILL_VALUES, edge_fill
from cog_pipeline.raster.header import SAMPLE_MAX_SIDE, ImageHeader, read_header
from cog_pipeline.raster.kinds import CATEGORICAL_MAX_VALUES, DataKind, classify

__all__ = [
    "CHECKS",
    "SEVERITIES",
    "Finding",
    "QaRules",
    "qa_rules_from_config",
    "read_header",
    "read_headers",
    "check_image",
    "check_delivery",
    "failing_keys",
    "qa_csv_name",
    "write_qa_csv",
    "QA_CSV_FIELDS",
    "DEFAULT_THREADS",
]

SEVERITIES = ("fail", "warn", "info", "off")
#: Every check and its default severity (the ``qa.checks`` defaults of config/config.schema.yaml).
CHECKS: dict[str, str] = {
    "unreadable": "fail",
    "crs_missing": "fail",
    "srs_mismatch": "fail",
    "gsd_mismatch": "fail",
    "pixel_not_square": "warn",
    "band_count_mismatch": "fail",
    "dtype_mismatch": "fail",
    "colorinterp_mismatch": "warn",
    "undeclared_fill": "warn",
    "alpha_and_nodata": "warn",
    "no_nodata": "off",
    "paletted": "info",
    "categorical": "info",
}
QA_CSV_FIELDS = ("key", "check", "severity", "detail")
#: Headers read at once by default (``qa.threads``).
DEFAULT_THREADS = 8


@dataclass(frozen=True)
class Finding:
    """One QA finding about one image (``key``) of a delivery."""

    key: str
    check: str
    severity: str
    detail: str

    @property
    def fails_row(self) -> bool:
        return self.severity == "fail"


@dataclass(frozen=True)
class QaRules:
    """The ``qa:`` config section, checked."""

    severities: Mapping[str, str]
    sample_max_side: int = SAMPLE_MAX_SIDE
    #: Pixel sizes within this fraction of the delivery's are the same.
    gsd_tolerance: float = 0.001
    fill_values: tuple[float, ...] = DEFAULT_FILL_VALUES
    #: A fill's run along one edge must cover at least this fraction of it.
    min_fill_run: float = 0.1
    categorical_max_values: int = CATEGORICAL_MAX_VALUES
    #: True: the run has a QA step (``qa.enabled``, off by default); the checks run whenever called.
    enabled: bool = False
    #: Headers read at once (``qa.threads``): each is a few range requests, so mostly waiting.
    threads: int = DEFAULT_THREADS

    def severity(self, check: str) -> str:
        return self.severities.get(check, CHECKS[check])


def qa_rules_from_config(config: Mapping[str, Any]) -> QaRules:
    """QaRules from a whole config (``qa:``, and ``presets.categorical_max_values``); ValueError naming the key."""
    section = dict(config.get("qa") or {})
    known = {"enabled", "threads", "checks", "sample_max_side", "gsd_tolerance", "fill_values", "min_fill_run"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"qa: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    checks = dict(section.get("checks") or {})
    for check, severity in checks.items():
        if check not in CHECKS:
            raise ValueError(f"qa.checks: unknown check {check!r} (known: {', '.join(CHECKS)})")
        if severity not in SEVERITIES:
            raise ValueError(f"qa.checks.{check} {severity!r} is not one of {', '.join(SEVERITIES)}")
    side = section.get("sample_max_side", SAMPLE_MAX_SIDE)
    if isinstance(side, bool) or not isinstance(side, int) or not 16 <= side <= 8192:
        raise ValueError(f"qa.sample_max_side {side!r} must be an integer from 16 to 8192")
    tolerance = section.get("gsd_tolerance", 0.001)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ValueError(f"qa.gsd_tolerance {tolerance!r} must be a fraction from 0 to below 1")
    fills = section.get("fill_values", list(DEFAULT_FILL_VALUES))
    if not isinstance(fills, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in fills):
        raise ValueError(f"qa.fill_values {fills!r} must be a list of numbers")
    run = section.get("min_fill_run", 0.1)
    if isinstance(run, bool) or not isinstance(run, (int, float)) or not 0 < run <= 1:
        raise ValueError(f"qa.min_fill_run {run!r} must be a fraction above 0, at most 1")
    enabled = section.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ValueError(f"qa.enabled {enabled!r} must be true or false")
    threads = section.get("threads", DEFAULT_THREADS)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
        raise ValueError(f"qa.threads {threads!r} must be an integer from 1 to 64")
    max_values = (config.get("presets") or {}).get("categorical_max_values", CATEGORICAL_MAX_VALUES)
    return QaRules(
        {**CHECKS, **checks},
        side,
        float(tolerance),
        tuple(float(v) for v in fills),
        float(run),
        int(max_values),
        enabled,
        threads,
    )


def read_headers(
    paths: Mapping[str, str | Path], rules: QaRules, gdal_options: Mapping[str, str] | None = None
) -> tuple[list[ImageHeader], list[Finding]]:
    """The headers of ``paths`` (key -> local path or GDAL virtual path), ``rules.threads`` at a time, each
    under ``gdal_options`` (GDAL config options, e.g. for /vsicurl/), and an ``unreadable`` finding for each
    one that cannot be read; both in the order of ``paths``."""
    options = dict(gdal_options or {})

    def read(item: tuple[str, str | Path]) -> ImageHeader | Finding:
        key, path = item
        try:
            with rasterio.Env(**options):  # GDAL's config options are per thread
                return read_header(path, key=key, sample_max_side=rules.sample_max_side)
        except ImageError as exc:
            return Finding(key, "unreadable", rules.severity("unreadable"), exc.message)

    items = list(paths.items())
    if rules.threads > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=min(rules.threads, len(items)), thread_name_prefix="qa") as pool:
            results = list(pool.map(read, items))
    else:
        results = [read(item) for item in items]
    headers = [r for r in results if isinstance(r, ImageHeader)]
    findings = [r for r in results if isinstance(r, Finding) and r.severity != "off"]
    return headers, findings


# --------------------------------------------------------------------------------------------- one image


def _edge_fill(header: ImageHeader, rules: QaRules) -> tuple[float, list[str], float] | None:
    """(value, edges it runs along, share of the sample) of an undeclared fill, or None (raster/fill.py)."""
    found = edge_fill(header.sample, header.dtype, rules.fill_values, rules.min_fill_run)
    return None if found is None else (found.value, list(found.edges), found.share)


def check_image(header: ImageHeader, rules: QaRules) -> list[Finding]:
    """The checks of one image on its own."""
    out: list[Finding] = []

    def add(check: str, detail: str) -> None:
        severity = rules.severity(check)
        if severity != "off":
            out.append(Finding(header.key, check, severity, detail))

    if header.crs_wkt is None:
        add("crs_missing", "no CRS: the image has no georeference, so GIS software cannot place it")
    gx, gy = header.gsd
    if gx > 0 and abs(gx - gy) > rules.gsd_tolerance * max(gx, gy):
        add("pixel_not_square", f"pixel size {gx:g} x {gy:g} is not square")
    if header.has_alpha and header.nodata is not None:
        add(
            "alpha_and_nodata",
            f"both an alpha band and nodata {header.nodata:g} are declared: software that "
            "honours one may show the other's pixels; keep one",
        )
    if header.nodata is None and not header.has_mask:
        fill = _edge_fill(header, rules)
        if fill is not None:
            value, edges, share = fill
            factor = header.width / max(1, header.sample.shape[2])
            add(
                "undeclared_fill",
                f"value {value:g} runs along the {', '.join(edges)} edge(s) and covers "
                f"{share:.0%} of a 1/{factor:.0f} read, but no nodata is declared: declare it "
                f"(gdal_edit -a_nodata {value:g}) or it counts as data in previews and statistics",
            )
        else:
            add("no_nodata", "no nodata, alpha band or mask: every pixel is data")
    found = classify(header, rules.categorical_max_values)
    if found.kind is DataKind.CATEGORICAL:
        check = "paletted" if header.has_palette else "categorical"
        add(check, f"{found.reason}: overviews by nearest/mode, never averaged")
    return out


# --------------------------------------------------------------------------------------------- a delivery

T = TypeVar("T")


def _majority(images: Sequence[ImageHeader], value: Callable[[ImageHeader], T]) -> tuple[T, int]:
    """The most common value (the first image's on a tie) and how many images have it."""
    counts = Counter(value(h) for h in images)
    top = max(counts.values())
    first = next(value(h) for h in images if counts[value(h)] == top)
    return first, top


def _crs_label(header: ImageHeader) -> str:
    if header.epsg is not None:
        return f"EPSG:{header.epsg}"
    name = (header.crs_wkt or "").split('"')
    return f"WKT {name[1]!r}" if len(name) > 1 else "a WKT CRS"


def _srs_groups(images: Sequence[ImageHeader]) -> dict[str, int]:
    """Each image's key -> index of its SRS group (rasterio CRS equality: the same SRS written two ways is one)."""
    groups: list[CRS] = []
    out: dict[str, int] = {}
    for h in images:
        if h.crs_wkt is None:
            continue
        try:
            crs = CRS.from_wkt(h.crs_wkt)
        except CRSError:
            out[h.key] = -1 - len(out)
            continue
        for i, other in enumerate(groups):
            if crs == other:
                out[h.key] = i
                break
        else:
            groups.append(crs)
            out[h.key] = len(groups) - 1
    return out


#: Kinds compared as one: an image of no known kind (16-bit RGB, a 5-band scan) among orthoimagery is most
#: likely an odd ortho tile, so it is compared with them rather than left alone of its kind.
_COMPARED_AS = {DataKind.OTHER: DataKind.IMAGERY}


def _kind_groups(images: Sequence[ImageHeader], rules: QaRules) -> dict[str, list[ImageHeader]]:
    """The images compared with each other, by data kind (raster/kinds.py; imagery and other as one), in image
    order; each group named by the kinds in it ("elevation", "imagery/other")."""
    kinds: dict[DataKind, set[DataKind]] = {}
    members: dict[DataKind, list[ImageHeader]] = {}
    for h in images:
        kind = classify(h, rules.categorical_max_values).kind
        group = _COMPARED_AS.get(kind, kind)
        kinds.setdefault(group, set()).add(kind)
        members.setdefault(group, []).append(h)
    return {"/".join(sorted(k.value for k in kinds[g])): hs for g, hs in members.items()}


def check_delivery(images: Iterable[ImageHeader], rules: QaRules) -> list[Finding]:
    """Every image's own checks, its SRS against the delivery's majority, then its pixel size (within its SRS),
    band count, data type and colour interpretation against the majority of the images of its data kind
    (imagery with other, elevation, categorical: a delivery may mix them). Findings in image order."""
    images = list(images)
    by_key: dict[str, list[Finding]] = {h.key: check_image(h, rules) for h in images}

    def add(h: ImageHeader, check: str, detail: str) -> None:
        severity = rules.severity(check)
        if severity != "off":
            by_key[h.key].append(Finding(h.key, check, severity, detail))

    n = len(images)
    groups = _srs_groups(images)
    located = [h for h in images if h.key in groups]
    if located:
        group, count = _majority(located, lambda h: groups[h.key])
        label = _crs_label(next(h for h in located if groups[h.key] == group))
        for h in located:
            if groups[h.key] != group:
                add(h, "srs_mismatch", f"SRS {_crs_label(h)}, while {count} of {n} images are {label}")
    for kinds, members in _kind_groups(images, rules).items():
        if len(members) < 2:
            continue  # nothing of its kind to compare with
        name = f"{kinds} images"
        by_srs: dict[int, list[ImageHeader]] = {}
        for h in members:
            if h.key in groups:
                by_srs.setdefault(groups[h.key], []).append(h)
        for same_srs in by_srs.values():
            if len(same_srs) < 2:
                continue
            label = _crs_label(same_srs[0])
            (ref_x, ref_y), count = _majority(same_srs, lambda h: (round(h.gsd[0], 9), round(h.gsd[1], 9)))
            for h in same_srs:
                gx, gy = h.gsd
                if abs(gx - ref_x) > rules.gsd_tolerance * ref_x or abs(gy - ref_y) > rules.gsd_tolerance * ref_y:
                    add(
                        h,
                        "gsd_mismatch",
                        f"pixel size {gx:g} x {gy:g}, while {count} of {len(same_srs)} {name} in "
                        f"{label} are {ref_x:g} x {ref_y:g}",
                    )
        for check, what, value in (
            ("band_count_mismatch", "band(s)", lambda h: str(h.count)),
            ("dtype_mismatch", "data type", lambda h: ",".join(sorted(set(h.dtypes)))),
            ("colorinterp_mismatch", "colour interpretation", lambda h: ",".join(h.colorinterp)),
        ):
            ref, count = _majority(members, value)
            for h in members:
                if value(h) != ref:
                    add(h, check, f"{what} {value(h)}, while {count} of {len(members)} {name} have {ref}")
    return [f for h in images for f in by_key[h.key]]


def failing_keys(findings: Iterable[Finding]) -> set[str]:
    """The keys of the rows a finding fails."""
    return {f.key for f in findings if f.fails_row}


def qa_csv_name(stem: str, timestamp: str) -> str:
    """``<stem>qa-<TS>.csv`` beside the outcome CSVs (the stem ends in its separator: ``county-``, as
    ``ManifestKeys.stem``), so ``county-raw.csv`` gets ``county-qa-<TS>.csv``."""
    return f"{stem}qa-{timestamp}.csv"


def write_qa_csv(findings: Iterable[Finding], path: str | Path) -> Path:
    """Write the findings as CSV (key, check, severity, detail), whole or not at all (temp file renamed)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(QA_CSV_FIELDS)
            for finding in findings:
                writer.writerow([finding.key, finding.check, finding.severity, finding.detail])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
