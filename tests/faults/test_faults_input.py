"""Hostile or odd input beyond the core's list, all in one tick (three manifests): each bad row gets a
specific reason, the fine ones are processed, and the run stays within bounded memory and time."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest
import rasterio
import rasterio.errors
import rasterio.shutil

from cog_pipeline import SAMPLES_DIR
from faults.harness import make_tif, rows

LONG_KEY = "h/long/" + "k" * (1024 - len("h/long/") - len(".tif")) + ".tif"
TOO_LONG_KEY = "h/long/" + "k" * (1025 - len("h/long/") - len(".tif")) + ".tif"
TEN_MB_KEY = "h/" + "x" * (10 * 1024 * 1024) + ".tif"


def tiff_bomb_header(path, width=65536, height=65536):
    """A 200-byte TIFF that declares width x height pixels in one strip it does not have."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 200),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHI", tag, typ, count) + (
            struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        )
    ifd += struct.pack("<I", 0)
    data = b"II*\x00" + struct.pack("<I", 8) + ifd
    path.write_bytes(data + b"\x00" * (216 - len(data)))
    return path


def sparse_bomb(path):
    """GDAL's own kind of bomb: 100000 x 100000 declared, no tile written (a few hundred kB)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return _sparse_bomb(path)


def _sparse_bomb(path):
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=100_000,
        height=100_000,
        count=1,
        dtype="uint8",
        tiled=True,
        blockxsize=1024,
        blockysize=1024,
        compress="deflate",
        SPARSE_OK=True,
        BIGTIFF="YES",
    ) as dst:
        dst.write(np.zeros((1, 1, 1), dtype="uint8"), window=rasterio.windows.Window(0, 0, 1, 1))
    return path


def jpeg_file(scratch):
    """A real JPEG (made by GDAL from a small GeoTIFF)."""
    jpg = scratch / "real.jpg"
    with rasterio.open(make_tif(scratch / "for-jpeg.tif", count=3, seed=11)) as src:
        rasterio.shutil.copy(src, jpg, driver="JPEG")
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"
    return jpg


@pytest.mark.slow
def test_hostile_and_odd_input_specific_reasons_bounded_memory_and_time(world):
    s = world.scratch
    good = SAMPLES_DIR / "byte.tif"
    for key in ("h/good.tif", "h/good2.tif", "h/good3.tif", "h/%2e%2e/pct.tif", LONG_KEY):
        world.put(key, good)
    world.put("h/jpeg-renamed.tif", jpeg_file(s))
    world.put("h/bomb-header.tif", tiff_bomb_header(s / "bomb-header.tif"))
    world.put("h/bomb-sparse.tif", sparse_bomb(s / "bomb-sparse.tif"))
    world.put("h/bands200.tif", make_tif(s / "b200.tif", width=20, height=20, count=200, seed=4))
    cog = s / "cog.tif"
    with rasterio.open(good) as src:
        rasterio.shutil.copy(src, cog, driver="COG", compress="LZW")
    world.put("h/already-cog.tif", cog)
    world.put("h/nogeo.tif", make_tif(s / "nogeo.tif", georef=False, seed=9))
    assert (s / "bomb-header.tif").stat().st_size < 1024 and (s / "bomb-sparse.tif").stat().st_size < 1_000_000

    mixed_rows = "".join(
        f"{row}\n"
        for row in (
            "h/good.tif,1",
            "h/../escape.tif,1",
            "h/%2e%2e/pct.tif,1",
            "h\\back.tif,1",
            "h/ctl\x01.tif,1",
            "h/tab\tkey.tif,1",
            f"{LONG_KEY},1",
            f"{TOO_LONG_KEY},1",
            "h/jpeg-renamed.tif,3",
            "h/bomb-header.tif,1",
            "h/bomb-sparse.tif,1",
            "h/bands200.tif,200",
            "h/already-cog.tif,1",
            "h/nogeo.tif,1",
            f"{TEN_MB_KEY},1",
            "h/good2.tif,1",
            "h/good3.tif,1",
        )
    )
    # and invalid UTF-8 in the same file (a 10 MB line above): only their rows fail.
    world.manifest("h/mixed-raw.csv", mixed_rows.encode() + b"h/\xff\xfebad.tif,1\n")
    world.manifest("h/empty-raw.csv", b"")
    # Duplicates at scale (the 100k-row scale is test_peak_memory_of_a_100k_row_manifest_is_bounded's).
    world.manifest("h/rows10k-raw.csv", b"h/good.tif,1\n" * 10_000)
    world.snapshot()

    proc, elapsed, peak_mb = world.run_measured(overrides={"batch_size": 20})
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = {
        "h/mixed-": {
            "processed": [
                "h/good.tif",
                "h/%2e%2e/pct.tif",
                LONG_KEY,
                "h/bands200.tif",
                "h/already-cog.tif",
                "h/nogeo.tif",
                "h/good2.tif",
                "h/good3.tif",
            ],
            "failed": {
                "h/../escape.tif": "'..' path segment",
                "h\\back.tif": "backslash",
                "h/ctl\x01.tif": "control character (U+0001)",
                "h/tab\tkey.tif": "control character (U+0009 tab)",
                TOO_LONG_KEY: "longer than the 1024-byte limit",
                "h/jpeg-renamed.tif": "not a TIFF file (it looks like a JPEG image",
                "h/bomb-header.tif": "exceeds max_pixels",
                "h/bomb-sparse.tif": "exceeds max_pixels",
                TEN_MB_KEY: "longer than the 1024-byte limit",
                "h/\ufffd\ufffdbad.tif": "not valid UTF-8",
            },
        },
        "h/empty-": {"processed": [], "failed": {}},
        "h/rows10k-": {"processed": ["h/good.tif"], "failed": [("h/good.tif", "duplicate of line 1")] * 9_999},
    }
    found = world.check(expected)
    for name in (
        "dotdot",
        "percent-dotdot",
        "backslash",
        "control-character",
        "1024-byte-key",
        "1025-byte-key",
        "empty-csv",
        "10k-duplicate-rows",
        "10MB-line",
        "invalid-utf8",
        "jpeg-as-tif",
        "tiff-bomb-header",
        "tiff-bomb-sparse",
        "200-bands",
        "already-cog",
        "no-georeference",
    ):
        world.figures.kind("input", name)
    assert rows(found["h/empty-"]["errors"]) == [["key", "bands", "reason"]]
    # Nothing was written outside the run's own temp dirs, whatever the keys said.
    # (The per-image logs are named after their keys, inside the run's logs/images/: "h/%2e%2e/pct.tif" is
    # logged as logs/images/h/%2e%2e/pct.log, a literal folder name, which is where it belongs.)
    image_logs = [d for d in world.tmp.rglob("logs/images") if d.parent.parent.name.startswith("workflow-run-")]
    strays = [
        p
        for p in world.tmp.rglob("*")
        if p.name.startswith(("escape", "pct", "back")) and not any(d in p.parents for d in image_logs)
    ]
    assert not strays
    assert any((d / "h" / "%2e%2e" / "pct.log").is_file() for d in image_logs)
    out_keys = set(world.objects(world.output_bucket))
    assert "h/%2e%2e/pct.tif" in out_keys and "pct.tif" not in out_keys and "h/../pct.tif" not in out_keys
    assert elapsed < 300, f"hostile input took {elapsed:.0f} s"
    assert peak_mb < 1024, f"peak RSS {peak_mb:.0f} MB"
    world.figures.bounds["hostile_input_tick"] = {"seconds": round(elapsed, 1), "peak_rss_mb": round(peak_mb)}


@pytest.mark.slow
def test_peak_memory_of_a_100k_row_manifest_is_bounded(world):
    """Parsing, planning and aggregating 100k rows (none of them convertible: all missing) in a subprocess
    tree whose largest process stays under 1 GB."""
    world.manifest("m/big-raw.csv", b"".join(b"/m/img%06d.tif,1\n" % i for i in range(100_000)))
    world.snapshot()
    proc, elapsed, peak_mb = world.run_measured()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert peak_mb < 1024 and elapsed < 120, f"peak RSS {peak_mb:.0f} MB, {elapsed:.0f} s"
    world.check(
        {"m/big-": {"processed": [], "failed": [(f"/m/img{i:06d}.tif", "starts with '/'") for i in range(100_000)]}}
    )
    world.figures.bounds["manifest_100k_rows_tick"] = {"seconds": round(elapsed, 1), "peak_rss_mb": round(peak_mb)}
