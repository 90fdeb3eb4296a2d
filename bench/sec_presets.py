"""Section 9: COG size and time per preset (cog_pipeline/raster/kinds.py), against the plain GDAL COG driver.

For each preset, on an input of its kind: ``convert_file`` with the preset (inspect, COG, validate, the
verification pass with both pixel digests, the JPEG preview) and, with the same creation options, the plain
COG driver (``rasterio.shutil.copy(driver="COG", ...)``: what ``gdal_translate -of COG -co ...`` does).
Both in this process, alternately, best of ``repeats``. Inputs (``size`` x ``size``, cached in
bench/results/cache/), made from bench/synth.py's generators:

* ``rgb``: the 4-band orthophoto's first three bands (uint8 RGB), for the default LZW, WEBP and ZSTD;
* ``dem32``: the DEM in metres as float32 (plus centimetre noise), with a nodata (-9999) collar on its first
  64 columns;
* ``classes``: uint8 land cover, 8 classes from the DEM's contour bands and the orthophoto's vegetated parcels.

Run alone: ``python bench/run.py --sections 9`` (``--quick``: 2000 x 2000).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import proc
import synth
from report import Report

#: (name, input, presets: section merged over {enabled: true}; None: presets off, the cog: section).
CASES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("default LZW (presets off)", "rgb", None),
    ("imagery WEBP lossless", "rgb", {}),
    ("imagery ZSTD", "rgb", {"imagery": {"compress": "ZSTD", "predictor": "STANDARD"}}),
    ("default LZW (presets off)", "dem32", None),
    ("elevation ZSTD FLOATING_POINT", "dem32", {}),
    (
        "elevation LERC_ZSTD max_z_error 0.01",
        "dem32",
        {"elevation": {"compress": "LERC_ZSTD", "max_z_error": 0.01, "max_abs_error": 0.01}},
    ),
    ("default LZW (presets off)", "classes", None),
    ("categorical LZW + mode", "classes", {}),
]


def _write(path: Path, size: int, profile: dict[str, Any], rows: Any) -> Path:
    """Write ``rows(y0, y1)`` strip by strip to ``path`` (via a .part name)."""
    import rasterio

    tmp = path.with_name(path.name + ".part")
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(tmp, "w", **profile) as dst:
        for y0 in range(0, size, synth.STRIP_ROWS):
            y1 = min(size, y0 + synth.STRIP_ROWS)
            dst.write(rows(y0, y1), window=((y0, y1), (0, size)))
    os.replace(tmp, path)
    return path


def preset_input(cache: Path, name: str, size: int) -> Path:
    """The cached ``rgb``, ``dem32`` or ``classes`` input (see the module docstring)."""
    import rasterio
    from rasterio.windows import Window

    path = cache / f"presets-{name}-{size}.tif"
    meta = cache / (path.name + ".json")
    version = {"name": name, "size": size, "generator": 2}
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()) == version:
        return path
    ortho, dem = synth.cached_raster(cache, "ortho", size), synth.cached_raster(cache, "dem", size)
    with rasterio.open(ortho) as o, rasterio.open(dem) as d:
        profile = dict(driver="GTiff", width=size, height=size, crs=o.crs, transform=o.transform, tiled=False)

        def window(y0: int, y1: int) -> Window:
            return Window(0, y0, size, y1 - y0)

        if name == "rgb":
            profile.update(count=3, dtype="uint8", photometric="RGB", interleave="pixel")
            _write(path, size, profile, lambda y0, y1: o.read([1, 2, 3], window=window(y0, y1)))
        elif name == "dem32":
            profile.update(count=1, dtype="float32", nodata=-9999.0)

            def metres(y0: int, y1: int) -> np.ndarray:
                z = d.read(1, window=window(y0, y1)).astype(np.float32) / np.float32(10)
                z += np.random.default_rng([7, y0]).normal(0, 0.05, z.shape).astype(np.float32)  # centimetres
                z[:, :64] = -9999.0
                return z[None]

            _write(path, size, profile, metres)
        elif name == "classes":
            profile.update(count=1, dtype="uint8")

            def classes(y0: int, y1: int) -> np.ndarray:
                z = d.read(1, window=window(y0, y1)).astype(np.int32)
                band = (z // 400) % 4  # 4 zones cycling with the 40 m contours
                green = o.read(4, window=window(y0, y1)) > 140  # NIR: vegetated parcels
                return (1 + band * 2 + green).astype(np.uint8)[None]  # classes 1..8

            _write(path, size, profile, classes)
        else:
            raise ValueError(f"unknown preset input {name!r}")
    meta.write_text(json.dumps(version))
    return path


def _plain_gdal(src: Path, dst: Path, creation: dict[str, str]) -> float:
    import rasterio
    import rasterio.shutil

    started = time.perf_counter()
    with rasterio.open(src) as ds:
        rasterio.shutil.copy(ds, str(dst), driver="COG", **creation)
    return time.perf_counter() - started


def section9(rep: Report, cache: Path, work: Path, size: int, repeats: int) -> list[dict[str, Any]]:
    """COG size and time per preset, ours (convert_file) against the plain COG driver; a table in details."""
    import rasterio

    from cog_pipeline.core import config
    from cog_pipeline.raster.cog import cog_creation_options
    from cog_pipeline.raster.convert import convert_file
    from cog_pipeline.raster.header import read_header
    from cog_pipeline.raster.kinds import preset_for

    rows = []
    for name, input_name, section in CASES:
        src = preset_input(cache, input_name, size)
        cfg = config.load() if section is None else config.load(run={"presets": {"enabled": True, **section}})
        preset = preset_for(read_header(src), cfg)
        with rasterio.open(src) as ds:
            creation = cog_creation_options(ds, preset.options, preset)
        ours: dict[str, Any] = {}
        plain_s = float("inf")
        load_max = 0.0
        for _ in range(repeats):
            for path in work.glob("preset-*"):
                path.unlink()
            load_max = max(load_max, proc.load())
            started = time.perf_counter()
            result = convert_file(src, work / "preset-ours.tif", work / "preset-ours.jpg", preset=preset)
            total = time.perf_counter() - started
            if not ours or total < ours["total_s"]:
                ours = {
                    "total_s": total,
                    "seconds": result.seconds,
                    "cog_bytes": result.cog_bytes,
                    "check": result.check,
                    "error": result.error,
                    "equal_digests": result.input_pixel_digest == result.cog_pixel_digest,
                }
            plain_s = min(plain_s, _plain_gdal(src, work / "preset-plain.tif", creation))
            load_max = max(load_max, proc.load())
        plain_bytes = (work / "preset-plain.tif").stat().st_size
        input_bytes = src.stat().st_size
        err = ours["error"]
        row = {
            "preset": name,
            "input": input_name,
            "summary": preset.summary(),
            "creation": creation,
            "input_mb": round(input_bytes / 1e6, 2),
            "cog_mb": round(ours["cog_bytes"] / 1e6, 2),
            "cog_over_input": round(ours["cog_bytes"] / input_bytes, 3),
            "gdal_cog_mb": round(plain_bytes / 1e6, 2),
            "same_size": ours["cog_bytes"] == plain_bytes,
            "ours_total_s": round(ours["total_s"], 2),
            "ours_cog_s": round(ours["seconds"].get("cog", 0.0), 2),
            "ours_verify_s": round(ours["seconds"].get("verify", 0.0), 2),
            "gdal_cog_s": round(plain_s, 2),
            "check": ours["check"],
            "equal_digests": ours["equal_digests"],
            "max_abs_error": None if err is None else err.max_abs_error,
            "psnr_db": None if err is None else round(err.psnr_db, 1),
            "load": load_max,
        }
        rows.append(row)
        label = f"{name} on {input_name}"
        rep.add(
            "9",
            f"{label}: COG / input size",
            row["cog_over_input"],
            load=load_max,
            note=f"{row['cog_mb']} MB ours, {row['gdal_cog_mb']} MB plain GDAL"
            + ("" if row["same_size"] else " (sizes differ)"),
        )
        rep.add(
            "9",
            f"{label}: convert_file total",
            row["ours_total_s"],
            "s",
            load=load_max,
            note=f"COG step {row['ours_cog_s']} s, verification pass {row['ours_verify_s']} s, "
            f"plain GDAL COG {row['gdal_cog_s']} s; check {row['check']}"
            + (
                f", max abs error {row['max_abs_error']:g}, PSNR {row['psnr_db']} dB"
                if err
                else f", digests equal: {row['equal_digests']}"
            ),
        )
    for path in work.glob("preset-*"):
        path.unlink()
    rep.detail("presets", rows)
    print("\n" + table(rows, size), flush=True)
    return rows


def table(rows: list[dict[str, Any]], size: int) -> str:
    """The markdown table for docs/performance.md."""
    lines = [
        f"Inputs {size} x {size}. Times in seconds, best of the repeats; sizes in MB.",
        "",
        "| preset | input (MB) | COG (MB) | COG / input | plain GDAL COG (MB) | convert_file total | "
        "of which COG | plain GDAL COG | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        check = "lossless, digests equal" if r["check"] == "lossless" and r["equal_digests"] else r["check"]
        if r["max_abs_error"] is not None:
            check = f"bounded: max abs error {r['max_abs_error']:.4g}, PSNR {r['psnr_db']} dB"
        lines.append(
            f"| {r['preset']} | {r['input']} {r['input_mb']} | {r['cog_mb']} | {r['cog_over_input']:.2f} | "
            f"{r['gdal_cog_mb']} | {r['ours_total_s']} | {r['ours_cog_s']} | {r['gdal_cog_s']} | {check} |"
        )
    return "\n".join(lines)
