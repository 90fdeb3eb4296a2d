"""Sections 1 (per image vs the original), 2 (memory) and 6 (1 vs 2 threads)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

import common
import proc
import synth
from report import Report

KINDS = {"ortho": 4, "dem": 1}


def _best(runs: list[dict[str, Any]], key: str = "seconds") -> dict[str, Any]:
    return min(runs, key=lambda r: r[key])


def original(src: Path, work: Path, bands: int) -> dict[str, Any]:
    """The original's two gdal_translate steps, each in a fresh process."""
    cog, jpg = work / "orig.tif", work / "orig.jpg"
    a = proc.run_task("original_cog", src=str(src), dst=str(cog))
    b = proc.run_task("original_jpeg", src=str(cog), dst=str(jpg), bands=bands)
    for side in work.glob("orig.jpg.aux.xml"):
        side.unlink()  # generate_cogs.sh ends with rm *.xml
    return {
        "seconds": a["seconds"] + b["seconds"],
        "wall": a["wall"] + b["wall"],
        "rss_mb": max(a["rss_mb"], b["rss_mb"]),
        "steps": {"cog": round(a["seconds"], 3), "jpeg": round(b["seconds"], 3)},
        "load": max(a["load"], b["load"]),
        "cog": str(cog),
    }


def ours(src: Path, work: Path, bands: int, options: dict | None = None) -> dict[str, Any]:
    cog, jpg = work / "ours.tif", work / "ours.jpg"
    r = proc.run_task("ours", src=str(src), cog=str(cog), jpeg=str(jpg), bands=bands, options=options)
    r["cog"] = str(cog)
    return r


def compare_cogs(a: str, b: str) -> dict[str, Any]:
    """Full-resolution pixels block by block; overview levels and how close their pixels are."""
    import rasterio

    out: dict[str, Any] = {}
    with rasterio.open(a) as x, rasterio.open(b) as y:
        same_shape = (x.width, x.height, x.count, x.dtypes[0]) == (y.width, y.height, y.count, y.dtypes[0])
        differing = 0
        if same_shape:
            for _ij, win in x.block_windows(1):
                differing += int(np.count_nonzero(x.read(window=win) != y.read(window=win)))
        out["full_res_identical"] = same_shape and differing == 0
        out["full_res_differing_values"] = differing
        out["overviews"] = [x.overviews(1), y.overviews(1)]
        out["compression"] = [
            x.compression.value if x.compression else None,
            y.compression.value if y.compression else None,
        ]
    # Overviews: the original uses the COG driver's default resampling (CUBIC), ours the configured one.
    diffs = []
    for level in range(min(len(out["overviews"][0]), len(out["overviews"][1]))):
        with rasterio.open(a, overview_level=level) as x, rasterio.open(b, overview_level=level) as y:
            dx = x.read().astype(np.int32)
            dy = y.read().astype(np.int32)
            diffs.append(round(float(np.abs(dx - dy).mean()), 3))
    out["overview_mean_abs_diff"] = diffs
    return out


def validate(path: str) -> bool:
    from rio_cogeo.cogeo import cog_validate

    return bool(cog_validate(path, quiet=True)[0])


def section1(rep: Report, cache: Path, work: Path, size: int, repeats: int) -> dict[str, Any]:
    """Per-image conversion: ours / original, pixel identity, cog_validate; returns runs for section 2."""
    results = {}
    for kind, bands in KINDS.items():
        src = synth.cached_raster(cache, kind, size)
        w = work / f"s1-{kind}"
        common.fresh_dir(w)
        orig_runs, our_runs = [], []
        for i in range(repeats):  # alternate the order so drift does not favour one side
            if i % 2 == 0:
                orig_runs.append(original(src, w, bands))
                our_runs.append(ours(src, w, bands))
            else:
                our_runs.append(ours(src, w, bands))
                orig_runs.append(original(src, w, bands))
        o, u = _best(orig_runs), _best(our_runs)
        load = max(o["load"], u["load"])
        label = f"{kind} {size}x{size} {bands}-band {'uint8' if kind == 'ortho' else 'uint16'}"
        rep.add(
            "1",
            f"{label}: original (COG 1 thread + JPEG from COG), best of {repeats}",
            o["seconds"],
            "s",
            load=o["load"],
            note=f"steps {o['steps']}, wall incl. process start {o['wall']:.2f} s, peak RSS {o['rss_mb']:.0f} MB",
        )
        rep.add(
            "1",
            f"{label}: ours (convert_file defaults), best of {repeats}",
            u["seconds"],
            "s",
            load=u["load"],
            note=f"steps {u.get('steps')}, wall incl. process start {u['wall']:.2f} s, peak RSS {u['rss_mb']:.0f} MB",
        )
        rep.add(
            "1",
            f"{label}: time ours / original",
            u["seconds"] / o["seconds"],
            "",
            "<= 0.75",
            load=load,
            note=f"process wall ratio {u['wall'] / o['wall']:.2f}",
        )
        cmp_ = compare_cogs(o["cog"], u["cog"])
        rep.add(
            "1",
            f"{label}: COG full-resolution pixels differing from the original's",
            cmp_["full_res_differing_values"],
            "values",
            "<= 0",
            note=f"overviews {cmp_['overviews'][0]} vs {cmp_['overviews'][1]}; overview mean |diff| "
            f"{cmp_['overview_mean_abs_diff']} (original: CUBIC, ours: configured resampling)",
        )
        valid = validate(u["cog"]) and validate(o["cog"])
        rep.add("1", f"{label}: cog_validate (ours and original)", 1 if valid else 0, "valid", ">= 1")
        rep.detail(
            f"section1.{kind}",
            {
                "original_runs": _strip(orig_runs),
                "our_runs": _strip(our_runs),
                "compare": cmp_,
                "input": str(src),
                "input_bytes": src.stat().st_size,
                "cog_bytes": [Path(o["cog"]).stat().st_size, Path(u["cog"]).stat().st_size],
            },
        )
        results[kind] = {"original": o, "ours": u}
        shutil.rmtree(w, ignore_errors=True)
    return results


def _strip(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "output"} for r in runs]


def section2(rep: Report, cache: Path, work: Path, size: int, big: int, s1: dict[str, Any] | None) -> None:
    """Peak RSS of one conversion (fresh process) on the 8000 tile and on a big tile made on disk."""
    w = work / "s2"
    common.fresh_dir(w)
    if s1 and "ortho" in s1:
        r, o = s1["ortho"]["ours"], s1["ortho"]["original"]
    else:
        src = synth.cached_raster(cache, "ortho", size)
        r, o = ours(src, w, 4), original(src, w, 4)
    rep.add(
        "2",
        f"peak RSS, ours, ortho {size}x{size}",
        r["rss_mb"],
        "MB",
        "<= 500",
        load=r["load"],
        note=f"original's gdal_translate steps peak {o['rss_mb']:.0f} MB (GDAL default cache = 5% of RAM)",
    )
    src = synth.cached_raster(cache, "ortho", big)
    r = ours(src, w, 4)
    rep.add(
        "2",
        f"peak RSS, ours, ortho {big}x{big} 4-band (generated on disk)",
        r["rss_mb"],
        "MB",
        "<= 1000",
        load=r["load"],
        note=f"{r['seconds']:.1f} s, steps {r.get('steps')}, input {src.stat().st_size / 2**30:.2f} GiB",
    )
    rep.detail("section2.big", _strip([r]))
    # What GDAL's JPEG driver alone needs (libjpeg here keeps whole-image coefficient buffers).
    base = proc.run_task("import_cost")["rss_mb"]
    for tile in (synth.cached_raster(cache, "ortho", size), src):
        p = proc.run_task("jpeg_probe", src=str(tile), dst=str(w / "probe.jpg"), cache_mb=64)
        per_px = (p["rss_mb"] - base - 64) * 2**20 / p["pixels"]
        rep.add(
            "2",
            f"GDAL JPEG driver alone, RGB preview of the {tile.stem.split('-')[1]}^2 tile (64 MB cache): peak RSS",
            p["rss_mb"],
            "MB",
            load=p["load"],
            note=f"~{per_px:.1f} bytes/pixel above interpreter ({base:.0f} MB) + cache: full-image buffers in "
            "libjpeg 9 (JPEGMEM below that fails with 'Backing store not supported')",
        )
    shutil.rmtree(w, ignore_errors=True)


def section6(rep: Report, cache: Path, work: Path, size: int, repeats: int) -> None:
    """convert_file with CogOptions(num_threads=1) vs 2 on the ortho tile."""
    w = work / "s6"
    common.fresh_dir(w)
    src = synth.cached_raster(cache, "ortho", size)
    runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
    for i in range(repeats):
        for threads in ("1", "2") if i % 2 == 0 else ("2", "1"):
            runs[threads].append(ours(src, w, 4, {"num_threads": threads}))
    one, two = _best(runs["1"]), _best(runs["2"])
    rep.add(
        "6",
        f"ortho {size}: ours, num_threads=1, best of {repeats}",
        one["seconds"],
        "s",
        load=one["load"],
        note=f"steps {one.get('steps')}",
    )
    rep.add(
        "6",
        f"ortho {size}: ours, num_threads=2, best of {repeats}",
        two["seconds"],
        "s",
        load=two["load"],
        note=f"steps {two.get('steps')}",
    )
    rep.add(
        "6",
        f"ortho {size}: speed-up 2 threads vs 1 (whole convert_file)",
        one["seconds"] / two["seconds"],
        "x",
        load=max(one["load"], two["load"]),
        note=f"COG step alone: {one['steps']['cog'] / two['steps']['cog']:.2f}x" if one.get("steps") else "",
    )
    rep.detail("section6", {k: _strip(v) for k, v in runs.items()})
    shutil.rmtree(w, ignore_errors=True)
