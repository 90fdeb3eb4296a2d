"""Delivery QA (cog_pipeline/raster/qa.py) on small generated deliveries, and the header read over HTTP range
requests (cog_pipeline/raster/header.py)."""

from __future__ import annotations

import csv
import threading
import warnings
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio.shutil
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning

from cog_pipeline.core import config
from cog_pipeline.raster import qa
from cog_pipeline.raster.qa import Finding
from rasters import TRANSFORM, make_tif


def rgb(n=64, seed=0, bands=3):
    return np.random.default_rng(seed).integers(1, 255, (bands, n, n), dtype=np.uint8)


@pytest.fixture
def rules():
    return qa.qa_rules_from_config(config.load())


def run_qa(paths: dict[str, Path], rules) -> list[Finding]:
    headers, findings = qa.read_headers(paths, rules)
    return findings + qa.check_delivery(headers, rules)


def checks(findings) -> set[tuple[str, str, str]]:
    return {(f.key, f.check, f.severity) for f in findings}


def test_a_consistent_delivery_has_no_finding(tmp_path, rules):
    paths = {
        f"t{i}.tif": make_tif(tmp_path / f"t{i}.tif", rgb(seed=i), transform=TRANSFORM @ Affine.translation(64 * i, 0))
        for i in range(3)
    }
    assert run_qa(paths, rules) == []


def test_each_odd_image_is_named_with_its_check(tmp_path, rules):
    paths = {f"ok{i}.tif": make_tif(tmp_path / f"ok{i}.tif", rgb(seed=i)) for i in range(3)}
    paths["utm.tif"] = make_tif(tmp_path / "utm.tif", rgb(), crs="EPSG:32760")
    paths["coarse.tif"] = make_tif(tmp_path / "coarse.tif", rgb(), transform=Affine(1, 0, 1_750_000, 0, -1, 5_430_000))
    paths["four.tif"] = make_tif(
        tmp_path / "four.tif",
        rgb(bands=4),
        colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined],
    )
    paths["u16.tif"] = make_tif(tmp_path / "u16.tif", rgb().astype(np.uint16))
    paths["bgr.tif"] = make_tif(
        tmp_path / "bgr.tif", rgb(), colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        paths["nocrs.tif"] = make_tif(tmp_path / "nocrs.tif", rgb(), crs=None)
    found = run_qa(paths, rules)
    assert checks(found) == {
        ("utm.tif", "srs_mismatch", "fail"),
        ("coarse.tif", "gsd_mismatch", "fail"),
        ("four.tif", "band_count_mismatch", "fail"),
        ("four.tif", "colorinterp_mismatch", "warn"),
        # 16-bit RGB is kind "other", compared with the orthoimagery all the same
        ("u16.tif", "dtype_mismatch", "fail"),
        ("u16.tif", "colorinterp_mismatch", "warn"),  # GDAL says gray,undefined,undefined for 16-bit
        ("bgr.tif", "colorinterp_mismatch", "warn"),
        ("nocrs.tif", "crs_missing", "fail"),
    }
    by = {(f.key, f.check): f.detail for f in found}
    assert by["utm.tif", "srs_mismatch"] == "SRS EPSG:32760, while 7 of 9 images are EPSG:2193"
    assert by["coarse.tif", "gsd_mismatch"] == (
        "pixel size 1 x 1, while 6 of 7 imagery/other images in EPSG:2193 are 0.5 x 0.5"
    )
    assert by["u16.tif", "dtype_mismatch"] == "data type uint16, while 8 of 9 imagery/other images have uint8"
    assert "colour interpretation blue,green,red" in by["bgr.tif", "colorinterp_mismatch"]
    assert qa.failing_keys(found) == {"utm.tif", "coarse.tif", "four.tif", "u16.tif", "nocrs.tif"}


#: Half-metre grid origin, with other pixel sizes: 0.1 m orthoimagery, 1 m elevation, 2 m land cover.
def at(size: float, col: int = 0) -> Affine:
    return Affine(size, 0, 1_750_000 + 64 * size * col, 0, -size, 5_430_000)


def dem(seed: int = 0, n: int = 64) -> np.ndarray:
    return (np.linspace(10, 900, n * n, dtype=np.float32) + seed).reshape(n, n)


def land_cover(n: int = 64) -> np.ndarray:
    return (np.arange(n * n) % 6).astype(np.uint8).reshape(n, n) + 1


PALETTE = {i: (i * 40, 100, 0, 255) for i in range(7)}


def mixed_delivery(tmp_path: Path) -> dict[str, Path]:
    """A county delivery of three kinds: 0.1 m uint8 RGB orthos, 1 m float32 elevation, a paletted land cover."""
    paths = {}
    for i in range(3):
        paths[f"ortho/{i}.tif"] = make_tif(tmp_path / f"ortho{i}.tif", rgb(seed=i), transform=at(0.1, i))
        paths[f"dem/{i}.tif"] = make_tif(tmp_path / f"dem{i}.tif", dem(i), transform=at(1, i))
    paths["landcover.tif"] = make_tif(tmp_path / "lc.tif", land_cover(), colormap=PALETTE, transform=at(2))
    return paths


def test_a_delivery_of_three_kinds_is_compared_kind_by_kind(tmp_path, rules):
    found = run_qa(mixed_delivery(tmp_path), rules)
    assert checks(found) == {("landcover.tif", "paletted", "info")}, [(f.key, f.check, f.detail) for f in found]


def test_an_odd_image_within_its_kind_is_found_and_named_by_kind(tmp_path, rules):
    paths = mixed_delivery(tmp_path)
    paths["ortho/coarse.tif"] = make_tif(tmp_path / "coarse.tif", rgb(seed=7), transform=at(0.5, 3))
    paths["ortho/rgba.tif"] = make_tif(
        tmp_path / "rgba.tif",
        rgb(seed=8, bands=4),
        transform=at(0.1, 4),
        colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha],
    )
    paths["dem/coarse.tif"] = make_tif(tmp_path / "dem-coarse.tif", dem(9), transform=at(2, 3))
    paths["dem/f64.tif"] = make_tif(tmp_path / "dem-f64.tif", dem(5).astype(np.float64), transform=at(1, 4))
    found = run_qa(paths, rules)
    assert checks(found) == {
        ("landcover.tif", "paletted", "info"),
        ("ortho/coarse.tif", "gsd_mismatch", "fail"),
        ("ortho/rgba.tif", "band_count_mismatch", "fail"),
        ("ortho/rgba.tif", "colorinterp_mismatch", "warn"),
        ("dem/coarse.tif", "gsd_mismatch", "fail"),
        ("dem/f64.tif", "dtype_mismatch", "fail"),
    }
    by = {(f.key, f.check): f.detail for f in found}
    assert by["ortho/coarse.tif", "gsd_mismatch"] == (
        "pixel size 0.5 x 0.5, while 4 of 5 imagery images in EPSG:2193 are 0.1 x 0.1"
    )
    assert by["ortho/rgba.tif", "band_count_mismatch"] == "band(s) 4, while 4 of 5 imagery images have 3"
    assert (
        by["dem/coarse.tif", "gsd_mismatch"] == "pixel size 2 x 2, while 4 of 5 elevation images in EPSG:2193 are 1 x 1"
    )
    assert by["dem/f64.tif", "dtype_mismatch"] == "data type float64, while 4 of 5 elevation images have float32"


def test_the_srs_is_still_compared_across_the_whole_delivery(tmp_path, rules):
    paths = mixed_delivery(tmp_path)
    paths["landcover.tif"] = make_tif(
        tmp_path / "lc-utm.tif", land_cover(), colormap=PALETTE, crs="EPSG:32760", transform=at(2)
    )
    paths["dem/utm.tif"] = make_tif(tmp_path / "dem-utm.tif", dem(3), crs="EPSG:32760", transform=at(1, 3))
    found = run_qa(paths, rules)
    assert checks(found) == {
        ("landcover.tif", "paletted", "info"),
        ("landcover.tif", "srs_mismatch", "fail"),
        ("dem/utm.tif", "srs_mismatch", "fail"),
    }
    by = {(f.key, f.check): f.detail for f in found}
    assert by["dem/utm.tif", "srs_mismatch"] == "SRS EPSG:32760, while 6 of 8 images are EPSG:2193"


def test_the_same_srs_written_two_ways_is_one(tmp_path, rules):
    wkt = rasterio.crs.CRS.from_epsg(2193).to_wkt()
    paths = {"a.tif": make_tif(tmp_path / "a.tif", rgb()), "b.tif": make_tif(tmp_path / "b.tif", rgb(), crs=wkt)}
    assert run_qa(paths, rules) == []


def dem_with_collar(value=-9999.0, n=128):
    data = np.linspace(10, 900, n * n, dtype=np.float32).reshape(n, n)
    data[:, : n // 4] = value  # a collar along the left edge, reaching the top and bottom edges
    return data


def test_an_undeclared_fill_on_the_edges_is_found(tmp_path, rules):
    found = run_qa({"dem.tif": make_tif(tmp_path / "dem.tif", dem_with_collar())}, rules)
    assert checks(found) == {("dem.tif", "undeclared_fill", "warn")}
    assert "value -9999 runs along the top, bottom, left edge(s)" in found[0].detail
    assert "gdal_edit -a_nodata -9999" in found[0].detail
    declared = run_qa({"dem.tif": make_tif(tmp_path / "dem2.tif", dem_with_collar(), nodata=-9999)}, rules)
    assert declared == []
    zero = np.pad(rgb(48), ((0, 0), (8, 8), (8, 8)))  # black collar all round, no nodata
    found = run_qa({"ortho.tif": make_tif(tmp_path / "ortho.tif", zero)}, rules)
    assert [(f.check, f.detail.split(" runs")[0]) for f in found] == [("undeclared_fill", "value 0")]


def test_data_touching_the_edges_is_no_fill(tmp_path, rules):
    data = np.linspace(10, 900, 128 * 128, dtype=np.float32).reshape(128, 128)
    data[0, 50:58] = -9999  # a short run only (8 of 128 pixels of the top edge: under min_fill_run 10%)
    data[:, -1] = 1234.5  # one value all along the right edge, but no fill value
    found = run_qa({"dem.tif": make_tif(tmp_path / "dem.tif", data)}, rules)
    assert found == []


def test_alpha_and_nodata_both_declared_is_a_warning(tmp_path, rules):
    path = make_tif(
        tmp_path / "rgba.tif",
        rgb(bands=4),
        nodata=0,
        colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha],
    )
    assert checks(run_qa({"rgba.tif": path}, rules)) == {("rgba.tif", "alpha_and_nodata", "warn")}


def test_paletted_and_categorical_are_reported(tmp_path, rules):
    classes = (np.arange(64 * 64) % 6).astype(np.uint8).reshape(64, 64) + 1
    paths = {
        "pal.tif": make_tif(tmp_path / "pal.tif", classes, colormap={i: (i * 40, 0, 0, 255) for i in range(7)}),
        "cls.tif": make_tif(tmp_path / "cls.tif", classes),
    }
    found = run_qa(paths, rules)
    assert checks(found) == {
        ("pal.tif", "paletted", "info"),
        ("cls.tif", "categorical", "info"),
        ("cls.tif", "colorinterp_mismatch", "warn"),
    }
    assert "never averaged" in found[0].detail


def test_config_says_which_checks_fail_a_row(tmp_path):
    path = make_tif(tmp_path / "dem.tif", dem_with_collar())
    strict = qa.qa_rules_from_config(config.load(run={"qa": {"checks": {"undeclared_fill": "fail"}}}))
    assert qa.failing_keys(run_qa({"dem.tif": path}, strict)) == {"dem.tif"}
    off = qa.qa_rules_from_config(config.load(run={"qa": {"checks": {"undeclared_fill": "off"}}}))
    assert run_qa({"dem.tif": path}, off) == []
    with pytest.raises(ValueError, match="unknown check 'crs'"):
        qa.qa_rules_from_config({"qa": {"checks": {"crs": "fail"}}})
    with pytest.raises(ValueError, match="'fatal' is not one of fail, warn, info, off"):
        qa.qa_rules_from_config({"qa": {"checks": {"crs_missing": "fatal"}}})


def test_an_unreadable_image_is_a_finding_not_a_crash(tmp_path, rules):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"<html>not a tiff</html>")
    found = run_qa({"bad.tif": bad, "ok.tif": make_tif(tmp_path / "ok.tif", rgb())}, rules)
    assert [(f.key, f.check, f.severity) for f in found] == [("bad.tif", "unreadable", "fail")]
    assert "cannot read the header" in found[0].detail


def test_qa_csv_round_trips(tmp_path):
    findings = [
        Finding("a/b.tif", "srs_mismatch", "fail", 'SRS "x", while 2 of 3 images are EPSG:2193'),
        Finding("c.tif", "categorical", "info", "one uint8 band\nwith 3 values"),
    ]
    name = qa.qa_csv_name("county-", "20250101-120000")
    assert name == "county-qa-20250101-120000.csv"
    path = qa.write_qa_csv(findings, tmp_path / name)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(qa.QA_CSV_FIELDS)
    assert [Finding(*r) for r in rows[1:]] == findings
    assert not list(tmp_path.glob(".*part"))


# --------------------------------------------------------------------------------------------- range reads


class _RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single byte ranges (what GDAL's /vsicurl/ asks for); counts the bytes sent."""

    sent: list[int]

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        data = path.read_bytes()
        header = self.headers.get("Range")
        if header and header.startswith("bytes="):
            start_text, end_text = header[6:].split("-")
            start, end = int(start_text), min(int(end_text or len(data) - 1), len(data) - 1)
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        self.sent.append(len(body))

    def do_HEAD(self):
        size = Path(self.translate_path(self.path)).stat().st_size
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()


def test_the_header_of_a_cog_over_http_costs_a_few_range_reads(tmp_path):
    n = 2048
    noise = np.random.default_rng(3).integers(0, 255, (1, n, n), dtype=np.uint8)  # incompressible
    src = make_tif(tmp_path / "src.tif", noise)
    cog = tmp_path / "www" / "big.tif"
    cog.parent.mkdir()
    rasterio.shutil.copy(src, cog, driver="COG", compress="DEFLATE", blocksize=256)
    sent: list[int] = []
    handler = type("H", (_RangeHandler,), {"sent": sent})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(cog.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"/vsicurl/http://127.0.0.1:{server.server_address[1]}/big.tif"
        with rasterio.Env(GDAL_HTTP_MAX_RETRY=0, CPL_VSIL_CURL_CACHE_SIZE=0):
            header = qa.read_header(url, key="big.tif", sample_max_side=256)
    finally:
        server.shutdown()
        server.server_close()
    assert header.sample.shape == (1, 256, 256) and header.overviews == (2, 4, 8)
    assert header.key == "big.tif" and header.epsg == 2193
    assert 0 < sum(sent) < cog.stat().st_size / 10, (sum(sent), cog.stat().st_size)
