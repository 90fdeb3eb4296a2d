"""The run report (content, escaping, thumbnails from the COG's overviews) and the per-image logs."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from cog_pipeline.raster.convert import convert_file
from cog_pipeline.work.imagelogs import advice, capture, log_name
from cog_pipeline.work.report import CSP
from cog_pipeline.raster.thumbnail import _overview_level, thumbnail_array
from cog_pipeline.control.tick import TickOptions, tick
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects


def run_mixed(seed, settings, samples, tmp_path):
    seed.upload_file(str(samples / "RGB.byte.tif"), INPUT_BUCKET, "imagery/rgb.tif")
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "imagery/<b>bold</b>.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="set-raw.csv",
                    Body=b"imagery/rgb.tif,3\nimagery/<b>bold</b>.tif,2\nimagery/missing.tif,1\n/bad.tif,1\n")
    return tick(TickOptions(input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, settings=settings,
                            workdir=tmp_path / "work"))


@pytest.mark.slow
def test_report_is_written_uploaded_and_escaped(seed, buckets, settings, samples, tmp_path):
    result = run_mixed(seed, settings, samples, tmp_path)
    page = (result.run_dir / "report.html").read_text(encoding="utf-8")
    assert re.search(r'id="total-count">4<', page)
    assert re.search(r'id="processed-count">2<', page) and re.search(r'id="failed-count">2<', page)
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert f'content="{CSP}"' in page and "<script" not in page and "http://" not in page
    assert page.count('src="data:image/jpeg;base64,') == 2  # one thumbnail per converted image
    assert page.index("missing.tif") < page.index("imagery/rgb.tif"), "failed rows come first"
    assert "What to do:" in page and "cog-pipeline retry" in page and "set-failed-" in page
    assert "manifest says 2 bands, file has 1" in page  # the band-count note of a processed row
    reports = [k for k in all_objects(seed, INPUT_BUCKET) if k.startswith("set-report-") and k.endswith(".html")]
    assert len(reports) == 1 and all_objects(seed, INPUT_BUCKET)[reports[0]].decode() == page


@pytest.mark.slow
def test_every_row_gets_a_log_named_after_its_image(seed, buckets, settings, samples, tmp_path):
    result = run_mixed(seed, settings, samples, tmp_path)
    logs = result.run_dir / "logs" / "images"
    assert sorted(p.relative_to(logs).as_posix() for p in logs.rglob("*.log")) == [
        "bad.log", "imagery/<b>bold</b>.log", "imagery/missing.log", "imagery/rgb.log"]

    missing = (logs / "imagery" / "missing.log").read_text()
    assert "image:      imagery/missing.tif" in missing and "line 3" in missing
    assert "FAILED at step 'download'" in missing and "input object not found" in missing
    assert "what to do: upload the image" in missing and "batch log:  logs/convert/m1/batch-00000.log" in missing
    bad = (logs / "bad.log").read_text()
    assert "FAILED at step 'manifest row'" in bad and "fix the row" in bad
    ok = (logs / "imagery" / "rgb.log").read_text()
    assert "outcome:    processed" in ok and "791x718 px, 3 band(s) uint8" in ok
    assert f"s3://{OUTPUT_BUCKET}/imagery/rgb.tif" in ok and "validate" in ok
    assert "logs/images/imagery/missing.log" in (result.run_dir / "report.html").read_text()


def test_log_names_stay_inside_the_log_directory():
    assert log_name("a/b/tile_001.tif") == "a/b/tile_001.log"
    assert log_name("/lead.tif") == "lead.log"
    assert log_name("../../etc/passwd") == "etc/passwd.log"
    assert log_name("a//./b\x00c.tif") == "a/b_c.log"
    assert log_name("..") == "_.log"
    long = log_name("x" * 600 + ".tif")
    assert len(long.encode()) < 200 and long.endswith(".log")


def test_captured_lines_go_into_the_record_and_are_bounded():
    record: dict = {}
    with capture(record):
        logging.getLogger("cog_pipeline.test").warning("GDAL said something about %s", "tile.tif")
    assert len(record["log"]) == 1
    assert "WARNING cog_pipeline.test: GDAL said something about tile.tif" in record["log"][0]
    quiet: dict = {}
    with capture(quiet):
        pass
    assert "log" not in quiet
    many: dict = {}
    with capture(many):
        for i in range(250):
            logging.getLogger("cog_pipeline.test").warning("line %d", i)
    assert len(many["log"]) == 201 and many["log"][-1] == "... 50 more line(s) in the batch log"


@pytest.mark.parametrize("reason, expected", [
    ("download: input object not found in bucket 'in'; upload it", "upload the image"),
    ("open: not a TIFF file (it looks like a PNG image)", "export the image as GeoTIFF"),
    ("open: file is truncated or corrupt: only 9 bytes", "upload the file again"),
    ("cog: TIFFWrite failed; most likely no space left on the device", "temp disk is full"),
    ("no outcome recorded: the conversion job for this row did not finish", "mem_mb_per_job"),
    ("line 4: band count 'x' is not an integer", "fix the row"),
    ("upload: PutObject failed: AccessDenied", "S3 keys may not"),
    ("verify: band 1 differs", "report it"),
    ("something new", "see this image's log"),
])
def test_every_failure_says_what_to_do(reason, expected):
    assert expected in advice(reason)


def write_cog(tmp_path, name, data, **profile):
    src = tmp_path / f"{name}.tif"
    bands, height, width = data.shape
    with rasterio.open(src, "w", driver="GTiff", width=width, height=height, count=bands, dtype=data.dtype,
                       crs="EPSG:32616", transform=from_origin(0, 0, 1, 1), tiled=True, **profile) as dst:
        dst.write(data)
        return src, dst


def test_thumbnails_are_read_from_the_smallest_sufficient_overview(tmp_path):
    y, x = np.mgrid[0:2048, 0:2048]
    data = np.stack([(x * 30).astype("uint16"), (y * 30).astype("uint16"), ((x + y) * 15).astype("uint16")])
    src, _ = write_cog(tmp_path, "u16", data)
    cog = tmp_path / "u16.cog.tif"
    convert_file(src, cog, tmp_path / "u16.jpg")
    with rasterio.open(cog) as ds:
        factors = ds.overviews(1)
    level = _overview_level(cog, 128)
    sizes = [2048 // f for f in factors]
    assert level is not None and sizes[level] >= 128 and all(size < 128 for size in sizes[level + 1:]), sizes
    thumb = thumbnail_array(cog)
    assert thumb.shape == (3, 128, 128) and thumb.dtype == np.uint8
    assert thumb.min() <= 5 and thumb.max() >= 250, "16-bit data is stretched like the preview"
    assert thumb[0, :, -1].mean() > thumb[0, :, 0].mean(), "band 1 grows to the east"


def test_thumbnails_follow_the_preview_rules_for_palettes_and_masks(tmp_path):
    classes = np.zeros((1, 64, 64), dtype="uint8")
    classes[0, :, 32:] = 1
    src = tmp_path / "pal.tif"
    with rasterio.open(src, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(0, 0, 1, 1), nodata=None) as dst:
        dst.write(classes)
        dst.write_colormap(1, {0: (255, 0, 0, 255), 1: (0, 0, 255, 255)})
    thumb = thumbnail_array(src)
    assert thumb.shape == (3, 64, 64)
    assert tuple(thumb[:, 0, 0]) == (255, 0, 0) and tuple(thumb[:, 0, 63]) == (0, 0, 255)

    values = np.full((1, 64, 64), 200, dtype="uint8")
    values[0, :8, :8] = 7
    nodata_src, _ = write_cog(tmp_path, "nodata", values, nodata=7)
    thumb = thumbnail_array(nodata_src)
    assert thumb[0, 0, 0] == 0 and thumb[0, 40, 40] == 200
