"""Section 7 (optional, ``--sections 7``): proposed convert.py changes, measured before anyone edits
convert.py. Each variant is ``convert_file`` rebuilt from the package's own steps with one change
(``bench/tasks.py whatif``), run in a fresh process, interleaved with the original's path, best of N.

Variants: the package as it is; JPEG through a band-subset VRT for plain 8-bit sources (no temp
render) + ``malloc_trim`` between steps; the same with a 128 / 64 MB GDAL cache; the JPEG overlapped
with COG+validate+verify in a second thread; multi-threaded decoding in verification.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import common
import proc
import synth
from report import Report
from sec_convert import KINDS, original

VARIANTS: dict[str, dict[str, Any]] = {
    "package as is": {},
    "A: JPEG via VRT + malloc_trim": {"jpeg_mode": "vrt", "trim": True},
    "B: A + cache 128 MB": {"jpeg_mode": "vrt", "trim": True, "options": {"gdal_cache_mb": 128}},
    "C: A + cache 64 MB": {"jpeg_mode": "vrt", "trim": True, "options": {"gdal_cache_mb": 64}},
    "D: A + JPEG overlapped with COG/validate/verify": {"jpeg_mode": "vrt", "trim": True, "overlap": True},
    "E: D + cache 128 MB": {"jpeg_mode": "vrt", "trim": True, "overlap": True, "options": {"gdal_cache_mb": 128}},
    "F: A + GDAL_NUM_THREADS=ALL_CPUS (threaded decode)": {
        "jpeg_mode": "vrt",
        "trim": True,
        "extra_env": {"GDAL_NUM_THREADS": "ALL_CPUS"},
    },
}


def section7(rep: Report, cache: Path, work: Path, size: int, repeats: int) -> None:
    for kind, bands in KINDS.items():
        src = synth.cached_raster(cache, kind, size)
        w = work / f"s7-{kind}"
        common.fresh_dir(w)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
        origs = []
        for i in range(repeats):
            origs.append(original(src, w, bands))
            names = list(VARIANTS) if i % 2 == 0 else list(reversed(VARIANTS))
            for name in names:
                kw = dict(VARIANTS[name])
                extra_env = kw.pop("extra_env", None)
                runs[name].append(
                    proc.run_task(
                        "whatif",
                        src=str(src),
                        cog=str(w / "v.tif"),
                        jpeg=str(w / "v.jpg"),
                        bands=bands,
                        extra_env=extra_env,
                        **kw,
                    )
                )
        o = min(origs, key=lambda r: r["seconds"])
        rep.add(
            "7",
            f"{kind} {size}: original, best of {repeats}",
            o["seconds"],
            "s",
            load=o["load"],
            note=f"steps {o['steps']}",
        )
        for name, rs in runs.items():
            best = min(rs, key=lambda r: r["seconds"])
            rep.add(
                "7",
                f"{kind} {size}: {name}: ours / original",
                best["seconds"] / o["seconds"],
                "",
                "<= 0.75",
                load=best["load"],
                note=f"{best['seconds']:.2f} s, steps {best['steps']}",
            )
            rep.add(
                "7",
                f"{kind} {size}: {name}: peak RSS",
                best["rss_mb"],
                "MB",
                "<= 500" if kind == "ortho" else "",
                load=best["load"],
                note=f"per-step peaks {best.get('step_peak_rss_mb')}",
            )
        rep.detail(
            f"section7.{kind}",
            {k: [{kk: vv for kk, vv in r.items() if kk != "output"} for r in v] for k, v in runs.items()},
        )
        shutil.rmtree(w, ignore_errors=True)
