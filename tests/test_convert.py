"""Tests of cog_pipeline.raster.convert on synthetic rasters (made here with numpy + rasterio) and the samples."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from cog_pipeline import SAMPLES_DIR
from cog_pipeline.raster import convert, sniff
from cog_pipeline.raster.convert import (
    CogOptions,
    ConversionResult,
    JpegOptions,
    RasterInfo,
    cog_options_from_config,
    convert_file,
    inspect_input,
    jpeg_options_from_config,
    validate_cog,
    verify_pixels,
    write_cog,
    write_jpeg,
)
from cog_pipeline.core.errors import ImageError

RGB = SAMPLES_DIR / "RGB.byte.tif"
RGBA = SAMPLES_DIR / "RGBA.byte.tif"
SHADE = SAMPLES_DIR / "shade.tif"
BYTE = SAMPLES_DIR / "byte.tif"
FLOAT = SAMPLES_DIR / "float.tif"

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


# --------------------------------------------------------------------------------------------- helpers


def make_tif(
    path: Path,
    data: np.ndarray,
    *,
    nodata=None,
    crs="EPSG:32618",
    colormap=None,
    colorinterp=None,
    mask=None,
    **profile,
) -> Path:
    """Write ``data`` (bands, rows, cols) as a GeoTIFF; optional colour map, colour interpretation, internal mask."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[np.newaxis]
    kw = dict(
        driver="GTiff",
        count=data.shape[0],
        height=data.shape[1],
        width=data.shape[2],
        dtype=data.dtype.name,
        nodata=nodata,
    )
    if crs:
        kw.update(crs=crs, transform=Affine(10, 0, 500000, 0, -10, 4000000))
    kw.update(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **kw) as dst:
            dst.write(data)
            if colormap:
                dst.write_colormap(1, colormap)
            if colorinterp:
                dst.colorinterp = colorinterp
            if mask is not None:
                dst.write_mask(mask)
    return path


def gradient(height: int, width: int, low: float, high: float, dtype) -> np.ndarray:
    """A smooth diagonal ramp from ``low`` to ``high`` (JPEG-friendly)."""
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (xx / max(width - 1, 1) + yy / max(height - 1, 1)) / 2
    return (low + ramp * (high - low)).astype(dtype)


def read_all(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def jpeg_sof(path: Path) -> tuple[int, int, int, int, int]:
    """(SOF marker, precision, height, width, components) from a JPEG's frame header."""
    data = Path(path).read_bytes()
    assert data[:2] == b"\xff\xd8", "not a JPEG (no SOI marker)"
    i = 2
    while i < len(data):
        assert data[i] == 0xFF, f"bad marker at {i}"
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            seg = data[i + 4 : i + 2 + length]
            return marker, seg[0], int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"), seg[5]
        i += 2 + length
    raise AssertionError("no SOF marker")


def check_jpeg(path: Path, count: int, width: int, height: int) -> np.ndarray:
    """Assert a baseline 8-bit JPEG of the given shape (as viewers expect) and return its pixels."""
    marker, precision, h, w, comps = jpeg_sof(path)
    assert marker in (0xC0, 0xC1, 0xC2), f"unexpected JPEG frame type {marker:#x}"
    assert precision == 8, "JPEG must be 8-bit (12-bit JPEGs are unreadable by most viewers)"
    assert (w, h, comps) == (width, height, count)
    with rasterio.open(path) as ds:
        assert ds.driver == "JPEG"
        assert ds.count == count and ds.dtypes[0] == "uint8"
        assert (ds.width, ds.height) == (width, height)
        return ds.read()


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(set(os.listdir(directory)) - keep)


# --------------------------------------------------------------------------------------------- options


def test_config_sections_give_the_defaults():
    cog = cog_options_from_config(
        {
            "compress": "LZW",
            "predictor": "NO",
            "level": None,
            "blocksize": 512,
            "overview_resampling": "average",
            "num_threads": "ALL_CPUS",
            "gdal_cache_mb": 128,
            "max_pixels": 2000000000,
        }
    )
    assert cog == CogOptions()
    assert jpeg_options_from_config({"quality": 80, "stretch_percentiles": [2, 98]}) == JpegOptions()
    assert cog_options_from_config({}) == CogOptions()
    assert jpeg_options_from_config({}) == JpegOptions()


def test_config_normalises_yaml_values():
    opts = cog_options_from_config(
        {"predictor": False, "num_threads": 2, "compress": "deflate", "level": 6, "overview_resampling": "NEAREST"}
    )
    assert (opts.predictor, opts.num_threads, opts.compress, opts.level, opts.overview_resampling) == (
        "NO",
        "2",
        "DEFLATE",
        6,
        "nearest",
    )
    assert cog_options_from_config({"predictor": True}).predictor == "YES"
    assert jpeg_options_from_config({"stretch_percentiles": [1, 99.5]}).stretch_percentiles == (1.0, 99.5)


@pytest.mark.parametrize(
    "func, section, bad",
    [
        (cog_options_from_config, {"compress": "LZW", "compres": "LZW", "zzz": 1}, ["compres", "zzz"]),
        (jpeg_options_from_config, {"quality": 80, "qualty": 90}, ["qualty"]),
    ],
)
def test_config_unknown_keys_are_named(func, section, bad):
    with pytest.raises(ValueError) as err:
        func(section)
    for key in bad:
        assert key in str(err.value)


@pytest.mark.parametrize(
    "section, text",
    [
        ({"compress": "JPEG"}, "lossy"),
        ({"compress": "BZIP"}, "not one of"),
        ({"level": 5}, "has no compression level"),
        ({"compress": "DEFLATE", "level": 40}, "out of range"),
        ({"predictor": "MAYBE"}, "predictor"),
        ({"blocksize": 500}, "multiple of 16"),
        ({"num_threads": "lots"}, "num_threads"),
        ({"overview_resampling": "fancy"}, "overview_resampling"),
        ({"max_pixels": 0}, "max_pixels"),
    ],
)
def test_config_bad_cog_values(section, text):
    with pytest.raises(ValueError, match=text):
        cog_options_from_config(section)


@pytest.mark.parametrize(
    "section", [{"quality": 0}, {"quality": 101}, {"stretch_percentiles": [98, 2]}, {"stretch_percentiles": [2]}]
)
def test_config_bad_jpeg_values(section):
    with pytest.raises(ValueError, match="jpeg"):
        jpeg_options_from_config(section)


def test_gdal_cache_is_set_in_bytes():
    # rasterio hands an integer GDAL_CACHEMAX to GDALSetCacheMax64, which takes bytes, not MB.
    with sniff.gdal_env(64):
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == 64 * 1024 * 1024
        assert rasterio.env.getenv()["GDAL_PAM_ENABLED"] == "NO"
        with sniff.gdal_env():  # steps without options keep the caller's cache
            assert rasterio.env.getenv()["GDAL_CACHEMAX"] == 64 * 1024 * 1024
    with sniff.gdal_env():  # standalone: the default 128 MB, not GDAL's 5% of RAM
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == 128 * 1024 * 1024


# --------------------------------------------------------------------------------------------- inspect


def test_inspect_sample():
    info = inspect_input(RGB)
    assert info == RasterInfo(
        width=791,
        height=718,
        count=3,
        dtype="uint8",
        has_palette=False,
        nodata=0.0,
        crs="EPSG:32618",
        size_bytes=RGB.stat().st_size,
    )


def test_inspect_no_georeference_is_fine():
    info = inspect_input(FLOAT)
    assert (info.width, info.height, info.dtype, info.crs) == (3, 2, "float64", None)


def test_inspect_palette(tmp_path):
    path = make_tif(
        tmp_path / "pal.tif", np.zeros((1, 8, 8), np.uint8), colormap={0: (255, 0, 0, 255)}, photometric="palette"
    )
    assert inspect_input(path).has_palette
    assert not inspect_input(BYTE).has_palette


# --------------------------------------------------------------------------------------------- errors


def png_bytes(tmp_path: Path) -> bytes:
    out = tmp_path / "x.png"
    rasterio.shutil.copy(BYTE, out, driver="PNG")
    return out.read_bytes()


def jpeg_bytes(tmp_path: Path) -> bytes:
    out = tmp_path / "x.jpg"
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        rasterio.shutil.copy(BYTE, out, driver="JPEG")
    return out.read_bytes()


def truncated_tiff(tmp_path: Path, **profile) -> bytes:
    rng = np.random.default_rng(1)
    src = make_tif(tmp_path / "whole.tif", rng.integers(0, 255, (3, 300, 400), dtype=np.uint8), **profile)
    data = src.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "content, text",
    [
        (lambda tmp: b"", "file is empty (0 bytes)"),
        (png_bytes, "not a TIFF file (it looks like a PNG image"),
        (jpeg_bytes, "not a TIFF file (it looks like a JPEG image"),
        (lambda tmp: b"<html>Access denied</html>", "not a TIFF file"),
        (truncated_tiff, "file is truncated or corrupt"),
        (
            lambda tmp: truncated_tiff(tmp, tiled=True, blockxsize=128, blockysize=128, compress="lzw"),
            "file is truncated or corrupt",
        ),
        (lambda tmp: b"II*\x00\x08\x00", "file is truncated or corrupt"),
        (lambda tmp: b"II*\x00" + b"\xff" * 60, "file is truncated or corrupt"),
    ],
    ids=["empty", "png", "jpeg", "html", "truncated-strips", "truncated-tiles", "header-only", "garbage-ifd"],
)
def test_bad_inputs_are_refused_with_a_clear_message(tmp_path, content, text):
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = src_dir / "input.tif"
    src.write_bytes(content(tmp_path))
    with pytest.raises(ImageError) as err:
        inspect_input(src)
    assert err.value.step == "open"
    assert text in err.value.message
    assert "Traceback" not in err.value.message

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ImageError) as err:
        convert_file(src, out / "cog.tif", out / "preview.jpg")
    assert err.value.step == "open" and text in err.value.message
    assert os.listdir(out) == []
    assert os.listdir(src_dir) == ["input.tif"]  # no .aux.xml or other side files


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="file not found") as err:
        inspect_input(tmp_path / "nope.tif")
    assert err.value.step == "open"


def sparse_bomb(path: Path, width: int, height: int, count: int) -> Path:
    """A GeoTIFF declaring a huge size but holding no tiles (tiny on disk)."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype="uint8",
        tiled=True,
        blockxsize=4096,
        blockysize=4096,
        SPARSE_OK=True,
        BIGTIFF="YES",
        crs="EPSG:4326",
        transform=Affine(1, 0, 0, 0, -1, 0),
    ):
        pass
    return path


def test_tiff_bomb_is_refused_before_reading(tmp_path):
    bomb = sparse_bomb(tmp_path / "bomb.tif", 100_000, 100_000, 3)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(ImageError) as err:
        inspect_input(bomb)
    assert err.value.step == "open"
    assert err.value.message.startswith(
        "declared size 100000x100000x3 exceeds max_pixels 2,000,000,000 (30,000,000,000 values)"
    )
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ImageError, match="declared size"):
        convert_file(bomb, out / "c.tif", out / "p.jpg")
    assert os.listdir(out) == []


def test_max_pixels_option(tmp_path):
    with pytest.raises(ImageError, match="declared size 20x20x1 exceeds max_pixels 399 "):
        inspect_input(BYTE, CogOptions(max_pixels=399))
    assert inspect_input(BYTE, CogOptions(max_pixels=400)).width == 20


def test_jpeg_side_limit(tmp_path):
    wide = sparse_bomb(tmp_path / "wide.tif", 70_000, 16, 1)
    with pytest.raises(ImageError) as err:
        write_jpeg(wide, tmp_path / "p.jpg")
    assert err.value.step == "jpeg" and "65500 pixels per side" in err.value.message
    assert not (tmp_path / "p.jpg").exists()


def test_cog_failure_leaves_nothing_at_dst(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # WEBP only takes 3 or 4 bands: GDAL fails after it has started writing the file.
    with pytest.raises(ImageError) as err:
        write_cog(BYTE, out / "c.tif", CogOptions(compress="WEBP", num_threads="1"))
    assert err.value.step == "cog" and "WEBP driver doesn't support 1 bands" in err.value.message
    assert os.listdir(out) == []
    # With NUM_THREADS > 1 the same compression error happens in a worker thread and GDAL's copy
    # "succeeds" with empty tiles (still a valid COG): only the pixel check catches it.
    with pytest.raises(ImageError) as err:
        convert_file(BYTE, out / "c.tif", out / "p.jpg", CogOptions(compress="WEBP", num_threads="2"))
    assert err.value.step in ("cog", "verify")
    assert os.listdir(out) == []
    with pytest.raises(ImageError) as err:
        convert_file(BYTE, out / "c.tif", out / "p.jpg", CogOptions(predictor="FLOATING_POINT"))
    assert err.value.step == "cog" and "predictor YES" in err.value.message
    assert os.listdir(out) == []


def test_band_mismatch_and_georeference_notes(tmp_path):
    result = convert_file(FLOAT, tmp_path / "c.tif", tmp_path / "p.jpg", expected_bands=4)
    assert "manifest says 4 bands, file has 1; using the file's count" in result.notes
    assert any("no georeference" in n for n in result.notes)
    same = convert_file(RGB, tmp_path / "c2.tif", tmp_path / "p2.jpg", expected_bands=3)
    assert same.notes == []


# --------------------------------------------------------------------------------------------- COG

COG_CASES = {
    "uint8-rgb-nodata": lambda: (gradient(300, 400, 0, 255, np.uint8)[None].repeat(3, 0), {"nodata": 0}),
    "uint16": lambda: (gradient(300, 400, 0, 60000, np.uint16), {}),
    "int16-neg": lambda: (gradient(300, 400, -3000, 3000, np.int16), {"nodata": -9999}),
    "float32-nan": lambda: (
        np.where(np.eye(300, 400, dtype=bool), np.nan, gradient(300, 400, -1, 1, np.float32)).astype(np.float32),
        {},
    ),
    "float64-tiled": lambda: (
        gradient(300, 400, -1e9, 1e9, np.float64),
        {"tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate"},
    ),
}


@pytest.mark.parametrize("case", sorted(COG_CASES))
def test_cog_is_valid_and_identical(tmp_path, case):
    data, profile = COG_CASES[case]()
    src = make_tif(tmp_path / "src.tif", data, **profile)
    cog = tmp_path / "cog.tif"
    write_cog(src, cog)
    valid, errors, _ = cog_validate(str(cog), quiet=True)
    assert valid, errors
    validate_cog(cog)
    verify_pixels(src, cog)
    np.testing.assert_array_equal(read_all(cog), read_all(src))  # NaN == NaN for assert_array_equal
    with rasterio.open(cog) as ds, rasterio.open(src) as s:
        assert ds.profile["compress"] == "lzw"
        assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
        assert ds.nodata == s.nodata and ds.crs == s.crs and ds.transform == s.transform
    assert sorted(os.listdir(tmp_path)) == ["cog.tif", "src.tif"]  # no temp or .aux.xml left


@pytest.mark.parametrize("sample", [RGB, RGBA, SHADE, BYTE, FLOAT], ids=lambda p: p.name)
def test_cog_of_samples(tmp_path, sample):
    cog = tmp_path / "cog.tif"
    write_cog(sample, cog)
    validate_cog(cog)
    verify_pixels(sample, cog)
    np.testing.assert_array_equal(read_all(cog), read_all(sample))
    with rasterio.open(cog) as ds, rasterio.open(sample) as s:
        assert ds.colorinterp == s.colorinterp  # RGBA keeps its alpha band


def test_cog_overviews_and_blocksize(tmp_path):
    src = make_tif(tmp_path / "src.tif", gradient(1024, 1024, 0, 255, np.uint8))
    write_cog(src, tmp_path / "a.tif")
    write_cog(
        src,
        tmp_path / "b.tif",
        CogOptions(blocksize=256, compress="DEFLATE", level=9, predictor="STANDARD", num_threads="1"),
    )
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert a.overviews(1) == [2]
        assert a.block_shapes[0] == (512, 512)
        assert b.overviews(1) == [2, 4]
        assert b.block_shapes[0] == (256, 256)
        assert b.profile["compress"] == "deflate"
        assert b.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
    for name in ("a.tif", "b.tif"):
        validate_cog(tmp_path / name)
        verify_pixels(src, tmp_path / name)


def test_paletted_overviews_are_nearest(tmp_path):
    checker = (np.indices((1024, 1024)).sum(axis=0) % 2 * 10).astype(np.uint8)  # indices 0 and 10 only
    cmap = {0: (255, 0, 0, 255), 10: (0, 0, 255, 255)}
    src = make_tif(tmp_path / "pal.tif", checker, colormap=cmap, photometric="palette")
    cog = tmp_path / "cog.tif"
    write_cog(src, cog, CogOptions(overview_resampling="average"))
    with rasterio.open(cog) as ds:
        assert ds.overviews(1) == [2]
        overview = ds.read(1, out_shape=(512, 512))
        assert set(np.unique(overview)) <= {0, 10}  # average would give 5
        assert ds.colormap(1)[10][:3] == (0, 0, 255)
    # a non-paletted image with the same pixels does get averaged overviews
    plain = make_tif(tmp_path / "plain.tif", checker)
    write_cog(plain, tmp_path / "plain_cog.tif")
    with rasterio.open(tmp_path / "plain_cog.tif") as ds:
        assert 5 in np.unique(ds.read(1, out_shape=(512, 512)))


def test_validate_refuses_a_plain_geotiff(tmp_path):
    src = make_tif(tmp_path / "src.tif", gradient(1024, 1024, 0, 255, np.uint8))  # stripped, no overviews
    with pytest.raises(ImageError) as err:
        validate_cog(src)
    assert err.value.step == "validate" and "not a valid COG" in err.value.message


def test_verify_finds_a_changed_pixel(tmp_path):
    data = gradient(300, 400, 0, 255, np.uint8)[None].repeat(3, 0)
    src = make_tif(tmp_path / "src.tif", data)
    changed = data.copy()
    changed[1, 250, 333] ^= 1
    other = make_tif(tmp_path / "other.tif", changed, tiled=True, blockxsize=128, blockysize=128)
    with pytest.raises(ImageError) as err:
        verify_pixels(src, other)
    assert err.value.step == "verify"
    assert err.value.message.startswith(
        "band 2 differs in window rows 0-299, cols 0-399: 1 pixel(s) differ, first at row 250, col 333"
    )


@pytest.mark.parametrize("threads", ["1", "ALL_CPUS"])
def test_verify_with_the_preview_finds_a_changed_pixel_and_makes_no_jpeg(tmp_path, threads, monkeypatch):
    """The one-pass check + preview of convert_file: same verdict as verify_pixels, with several
    strips (the changed pixel is in the last one) and with the COG decoded in threads."""
    data = gradient(300, 400, 0, 255, np.uint8)[None].repeat(4, 0)
    src = make_tif(tmp_path / "src.tif", data)
    same = make_tif(tmp_path / "same.tif", data, tiled=True, blockxsize=128, blockysize=128)
    changed = data.copy()
    changed[3, 290, 333] ^= 4  # band 4 is not in the preview, and is still checked
    other = make_tif(tmp_path / "other.tif", changed, tiled=True, blockxsize=128, blockysize=128)
    monkeypatch.setattr(sniff, "WINDOW_BYTES", 100_000)
    assert convert.verify_and_write_jpeg(src, same, tmp_path / "ok.jpg", num_threads=threads) == [1, 2, 3]
    check_jpeg(tmp_path / "ok.jpg", 3, 400, 300)
    with pytest.raises(ImageError) as err:
        convert.verify_and_write_jpeg(src, other, tmp_path / "bad.jpg", num_threads=threads)
    assert err.value.step == "verify" and "band 4 differs" in err.value.message
    assert "first at row 290, col 333" in err.value.message
    assert not (tmp_path / "bad.jpg").exists()
    assert leftovers(tmp_path, {"src.tif", "same.tif", "other.tif", "ok.jpg", "ok.jgw", "ok.jpg.aux.xml"}) == []


def test_verify_with_the_preview_on_rows_too_wide_for_one_pass(tmp_path, monkeypatch):
    """When 16 rows of every band would not fit the budget, the check runs in its own (column-split)
    windows first: same verdicts, same preview pixels."""
    data = gradient(40, 300, 0, 255, np.uint8)[None].repeat(4, 0)
    src = make_tif(tmp_path / "src.tif", data)
    same = make_tif(tmp_path / "same.tif", data, tiled=True, blockxsize=64, blockysize=64)
    convert.verify_and_write_jpeg(src, same, tmp_path / "one-pass.jpg")
    changed = data.copy()
    changed[3, 30, 250] ^= 1
    other = make_tif(tmp_path / "other.tif", changed, tiled=True, blockxsize=64, blockysize=64)
    monkeypatch.setattr(sniff, "WINDOW_BYTES", 2000)  # 16 x 300 x 4 x 2 bytes > 4 x 2000
    seconds: dict[str, float] = {}
    assert convert.verify_and_write_jpeg(src, same, tmp_path / "two-pass.jpg", seconds=seconds) == [1, 2, 3]
    assert set(seconds) == {"verify", "jpeg"}
    assert np.array_equal(
        check_jpeg(tmp_path / "one-pass.jpg", 3, 300, 40), check_jpeg(tmp_path / "two-pass.jpg", 3, 300, 40)
    )
    with pytest.raises(ImageError) as err:
        convert.verify_and_write_jpeg(src, other, tmp_path / "bad.jpg")
    assert err.value.step == "verify" and "band 4 differs" in err.value.message and "col 250" in err.value.message


def test_verify_nan_and_shape_and_dtype(tmp_path):
    data = np.full((2, 40, 50), np.nan, np.float32)
    data[:, :, :10] = 1.5
    a = make_tif(tmp_path / "a.tif", data)
    b = make_tif(tmp_path / "b.tif", data.copy(), tiled=True, blockxsize=16, blockysize=16)
    verify_pixels(a, b)  # NaN == NaN
    data2 = data.copy()
    data2[1, 39, 49] = 0.0
    c = make_tif(tmp_path / "c.tif", data2)
    with pytest.raises(ImageError, match=r"band 2 differs .* first at row 39, col 49"):
        verify_pixels(a, c)
    with pytest.raises(ImageError, match="COG is 50x40x1, source is 50x40x2"):
        verify_pixels(a, make_tif(tmp_path / "d.tif", data[:1]))
    with pytest.raises(ImageError, match="data type float64"):
        verify_pixels(a, make_tif(tmp_path / "e.tif", data.astype(np.float64)))


def test_verify_in_small_windows(tmp_path, monkeypatch):
    data = np.random.default_rng(2).integers(0, 65535, (3, 301, 407), dtype=np.uint16)
    src = make_tif(tmp_path / "src.tif", data)
    changed = data.copy()
    changed[2, 300, 406] += 1
    other = make_tif(tmp_path / "other.tif", changed)
    monkeypatch.setattr(sniff, "WINDOW_BYTES", 1000)  # one row no longer fits: windows split columns
    windows = list(sniff.windows(407, 301, 6))
    assert len(windows) > 301 and sum(int(w.width * w.height) for w in windows) == 407 * 301
    verify_pixels(src, make_tif(tmp_path / "same.tif", data, tiled=True, blockxsize=64, blockysize=64))
    with pytest.raises(ImageError, match=r"band 3 differs in window rows 300-300, cols .*406: 1 pixel"):
        verify_pixels(src, other)


# --------------------------------------------------------------------------------------------- JPEG


@pytest.mark.parametrize("count, bands", [(1, [1]), (2, [1]), (3, [1, 2, 3]), (4, [1, 2, 3]), (5, [1, 2, 3])])
def test_jpeg_band_rules_uint8(tmp_path, count, bands):
    levels = [40, 200, 120, 250, 10]
    data = np.stack([np.full((64, 96), levels[i], np.uint8) for i in range(count)])
    src = make_tif(tmp_path / "src.tif", data)
    used = write_jpeg(src, tmp_path / "p.jpg")
    assert used == bands
    out = check_jpeg(tmp_path / "p.jpg", len(bands), 96, 64)
    for i, band in enumerate(bands):
        assert abs(float(out[i].mean()) - levels[band - 1]) < 4


def test_jpeg_straight_copy_matches_source(tmp_path):
    data = gradient(64, 96, 0, 255, np.uint8)
    src = make_tif(tmp_path / "src.tif", data)
    write_jpeg(src, tmp_path / "p.jpg", JpegOptions(quality=95))
    out = check_jpeg(tmp_path / "p.jpg", 1, 96, 64)
    assert np.abs(out[0].astype(int) - data).max() <= 3


@pytest.mark.parametrize(
    "dtype, low, high",
    [
        ("uint16", 1000, 5000),
        ("int16", -2000, 2000),
        ("int32", -(10**8), 10**8),
        ("float32", -0.5, 0.5),
        ("float64", 1e6, 1e6 + 1),
    ],
)
def test_jpeg_stretches_other_types(tmp_path, dtype, low, high):
    data = gradient(256, 320, low, high, dtype)
    if np.dtype(dtype).kind == "f":
        data[:64, :64] = np.nan  # a NaN block in the top-left corner
    src = make_tif(tmp_path / "src.tif", data)
    assert write_jpeg(src, tmp_path / "p.jpg") == [1]
    out = check_jpeg(tmp_path / "p.jpg", 1, 320, 256)[0].astype(int)
    assert out.std() > 40, "preview should not be flat"
    assert out[:, 64:].min() <= 8 and out.max() >= 247  # 2..98 % mapped to the full range
    # the documented stretch, computed here independently (image small enough to sample every pixel)
    values = data.astype(np.float64)
    low, high = np.percentile(values[~np.isnan(values)], [2, 98])
    expected = np.clip(np.round((values - low) / (high - low) * 255), 0, 255)
    expected[np.isnan(values)] = 0
    assert np.abs(out - expected).mean() < 1.5
    if np.dtype(dtype).kind == "f":
        assert out[4:60, 4:60].max() <= 3, "NaN pixels must be black"


def test_jpeg_uint16_is_not_written_as_12_bit(tmp_path):
    src = make_tif(tmp_path / "src.tif", gradient(64, 64, 0, 4095, np.uint16)[None].repeat(3, 0))
    write_jpeg(src, tmp_path / "p.jpg")
    check_jpeg(tmp_path / "p.jpg", 3, 64, 64)  # asserts 8-bit precision


def test_jpeg_stretch_percentiles_and_outliers(tmp_path):
    data = gradient(200, 200, 0, 1000, np.float32)
    data[0, 0] = 1e30  # one outlier must not flatten the picture
    data[0, 1] = np.inf
    src = make_tif(tmp_path / "src.tif", data)
    write_jpeg(src, tmp_path / "p.jpg")
    out = check_jpeg(tmp_path / "p.jpg", 1, 200, 200)[0].astype(int)
    assert out.std() > 50
    # a wider percentile window compresses the contrast
    write_jpeg(src, tmp_path / "q.jpg", JpegOptions(stretch_percentiles=(0, 100)))
    wide = check_jpeg(tmp_path / "q.jpg", 1, 200, 200)[0].astype(int)
    assert wide[100:, 100:].max() < 60  # 1e30 is the max: everything else is near black


def test_jpeg_constant_and_all_masked_bands(tmp_path):
    data = np.stack(
        [np.full((48, 64), 7.25, np.float32), np.full((48, 64), np.nan, np.float32), gradient(48, 64, 0, 1, np.float32)]
    )
    src = make_tif(tmp_path / "src.tif", data)
    assert write_jpeg(src, tmp_path / "p.jpg") == [1, 2, 3]
    out = check_jpeg(tmp_path / "p.jpg", 3, 64, 48).astype(int)
    # JPEG's colour transform blurs bands together a little: check the order of magnitude only
    assert abs(out[0].mean() - 128) < 12
    assert out[1].mean() < 20
    assert out[2].std() > 40


def test_jpeg_alpha_pixels_are_black(tmp_path):
    rgb = np.stack([np.full((64, 128), v, np.uint8) for v in (200, 150, 100)])
    alpha = np.zeros((1, 64, 128), np.uint8)
    alpha[:, :, 64:] = 255
    src = make_tif(
        tmp_path / "src.tif",
        np.concatenate([rgb, alpha]),
        colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha],
    )
    with rasterio.open(src) as ds:
        assert ds.colorinterp[3] == ColorInterp.alpha
    assert write_jpeg(src, tmp_path / "p.jpg") == [1, 2, 3]
    out = check_jpeg(tmp_path / "p.jpg", 3, 128, 64).astype(int)
    assert out[:, :, :56].max() <= 4
    assert np.abs(out[:, 8:56, 72:].mean(axis=(1, 2)) - [200, 150, 100]).max() < 5


def test_jpeg_grey_alpha_two_bands(tmp_path):
    grey = np.full((64, 64), 180, np.uint8)
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[32:] = 0
    src = make_tif(tmp_path / "src.tif", np.stack([grey, alpha]), ALPHA="YES")
    with rasterio.open(src) as ds:
        assert ds.colorinterp[1] == ColorInterp.alpha
    assert write_jpeg(src, tmp_path / "p.jpg") == [1]
    out = check_jpeg(tmp_path / "p.jpg", 1, 64, 64)[0].astype(int)
    assert abs(out[:24].mean() - 180) < 3 and out[40:].max() <= 3


def test_jpeg_nodata_pixels_are_black(tmp_path):
    data = np.full((64, 64), 200, np.uint8)
    data[:, 32:] = 90
    src = make_tif(tmp_path / "src.tif", data, nodata=200)
    write_jpeg(src, tmp_path / "p.jpg")
    out = check_jpeg(tmp_path / "p.jpg", 1, 64, 64)[0].astype(int)
    assert out[:, :24].max() <= 3  # nodata 200 -> black (a straight copy would keep 200)
    assert abs(out[:, 40:].mean() - 90) < 3


def test_jpeg_nodata_excluded_from_stretch(tmp_path):
    data = gradient(128, 128, 100, 200, np.int16)
    data[:, :32] = -32768
    src = make_tif(tmp_path / "src.tif", data, nodata=-32768)
    write_jpeg(src, tmp_path / "p.jpg")
    out = check_jpeg(tmp_path / "p.jpg", 1, 128, 128)[0].astype(int)
    assert out[:, :24].max() <= 3
    assert out[:, 40:].max() >= 240 and out[:, 40:].std() > 40  # stretch from the valid 100..200 only


def test_jpeg_internal_mask_pixels_are_black(tmp_path):
    data = np.full((64, 64), 150, np.uint8)
    mask = np.full((64, 64), 255, np.uint8)
    mask[:32] = 0
    src = make_tif(tmp_path / "src.tif", data, mask=mask)
    with rasterio.open(src) as ds:
        assert ds.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]
    write_jpeg(src, tmp_path / "p.jpg")
    out = check_jpeg(tmp_path / "p.jpg", 1, 64, 64)[0].astype(int)
    assert out[:24].max() <= 3 and abs(out[40:].mean() - 150) < 3
    write_cog(src, tmp_path / "c.tif")
    verify_pixels(src, tmp_path / "c.tif")  # the mask is kept and compared


def test_jpeg_palette_expands_to_rgb(tmp_path):
    data = np.zeros((64, 128), np.uint8)
    data[:, 64:] = 7
    data[:16, :16] = 3  # one 16x16 JPEG MCU
    cmap = {0: (255, 0, 0, 255), 3: (0, 255, 0, 255), 7: (0, 0, 255, 255)}
    src = make_tif(tmp_path / "src.tif", data, colormap=cmap, photometric="palette")
    assert write_jpeg(src, tmp_path / "p.jpg") == [1]
    out = check_jpeg(tmp_path / "p.jpg", 3, 128, 64).astype(int)
    red = out[:, 24:56, 24:56].mean(axis=(1, 2))
    blue = out[:, 8:56, 72:120].mean(axis=(1, 2))
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    assert blue[2] > 240 and blue[0] < 15 and blue[1] < 15
    green = out[:, 4:12, 4:12].mean(axis=(1, 2))
    assert green[1] > 200 and green[0] < 40 and green[2] < 40


def test_jpeg_quality_changes_size(tmp_path):
    data = np.random.default_rng(3).integers(0, 255, (3, 256, 256), dtype=np.uint8)
    src = make_tif(tmp_path / "src.tif", data)
    write_jpeg(src, tmp_path / "low.jpg", JpegOptions(quality=20))
    write_jpeg(src, tmp_path / "high.jpg", JpegOptions(quality=95))
    assert (tmp_path / "high.jpg").stat().st_size > 1.5 * (tmp_path / "low.jpg").stat().st_size


def decoded(path: Path) -> np.ndarray:
    """A JPEG's pixels as Pillow decodes them, (rows, cols[, 3])."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def test_jpeg_in_many_strips_decodes_as_one(tmp_path, monkeypatch):
    """Strip size changes the bytes (restart intervals), never the pixels."""
    data = np.random.default_rng(4).normal(1000, 300, (4, 203, 157)).astype(np.float32)
    data[:, 50:60, 50:60] = np.nan
    src = make_tif(tmp_path / "src.tif", data)
    write_jpeg(src, tmp_path / "one.jpg")
    monkeypatch.setattr(sniff, "WINDOW_BYTES", 3000)  # one MCU row (16 rows) per strip
    write_jpeg(src, tmp_path / "many.jpg")
    assert (tmp_path / "one.jpg").read_bytes() != (tmp_path / "many.jpg").read_bytes()
    assert np.array_equal(decoded(tmp_path / "one.jpg"), decoded(tmp_path / "many.jpg"))
    assert np.array_equal(check_jpeg(tmp_path / "one.jpg", 3, 157, 203), check_jpeg(tmp_path / "many.jpg", 3, 157, 203))
    assert sorted(os.listdir(tmp_path)) == [
        "many.jgw",
        "many.jpg",
        "many.jpg.aux.xml",
        "one.jgw",
        "one.jpg",
        "one.jpg.aux.xml",
        "src.tif",
    ]  # nothing temporary left


def test_jpeg_of_samples(tmp_path):
    assert write_jpeg(RGBA, tmp_path / "rgba.jpg") == [1, 2, 3]
    rgba = check_jpeg(tmp_path / "rgba.jpg", 3, 791, 718)
    with rasterio.open(RGBA) as ds:
        alpha = ds.read(4)
    transparent = alpha == 0
    # pixels well inside the transparent area (away from JPEG block edges) are black
    assert np.median(rgba[:, transparent]) == 0
    assert rgba[:, ~transparent].mean() > 20
    assert write_jpeg(SHADE, tmp_path / "shade.jpg") == [1]
    check_jpeg(tmp_path / "shade.jpg", 1, 1024, 1024)
    assert write_jpeg(FLOAT, tmp_path / "float.jpg") == [1]
    check_jpeg(tmp_path / "float.jpg", 1, 3, 2)
    # georeferenced previews get a world file and .aux.xml (test_preview_geo.py); float.tif has no CRS
    assert sorted(os.listdir(tmp_path)) == [
        "float.jpg",
        "rgba.jgw",
        "rgba.jpg",
        "rgba.jpg.aux.xml",
        "shade.jgw",
        "shade.jpg",
        "shade.jpg.aux.xml",
    ]


# --------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("sample, count", [(RGB, 3), (RGBA, 4)], ids=["RGB", "RGBA"])
def test_convert_file_samples(tmp_path, sample, count):
    out = tmp_path / "out"
    out.mkdir()
    cog, jpg = out / "x.tif", out / "x.jpg"
    started = time.perf_counter()
    result = convert_file(sample, cog, jpg, expected_bands=count)
    elapsed = time.perf_counter() - started
    assert isinstance(result, ConversionResult)
    assert result.info.count == count and result.info.crs == "EPSG:32618"
    assert result.jpeg_bands == [1, 2, 3]
    assert result.notes == []
    assert set(result.seconds) == {"inspect", "cog", "validate", "verify", "jpeg"}
    # Each step was measured (every one does real work, so a duration, not a 0.0 placeholder), and the
    # steps are disjoint parts of the call: together they fit in its wall time (no timestamps, no double counting).
    assert all(v > 0 for v in result.seconds.values()), result.seconds
    assert sum(result.seconds.values()) <= elapsed, (result.seconds, elapsed)
    assert result.cog_bytes == cog.stat().st_size and result.jpeg_bytes == jpg.stat().st_size
    assert sorted(os.listdir(out)) == ["x.jgw", "x.jpg", "x.jpg.aux.xml", "x.tif"]
    assert sorted(suffix for _, suffix in result.preview_sidecars) == [".jgw", ".jpg.aux.xml"]
    assert cog_validate(str(cog), quiet=True)[0]
    np.testing.assert_array_equal(read_all(cog), read_all(sample))
    check_jpeg(jpg, 3, 791, 718)
    with rasterio.open(cog) as ds:
        assert ds.overviews(1) == [2]
        assert ds.profile["compress"] == "lzw"


def test_convert_file_failure_in_jpeg_leaves_no_outputs(tmp_path):
    # (complex data made the preview fail before issue 14; an image wider than JPEG allows still does)
    src = make_tif(tmp_path / "c.tif", np.ones((1, 16, 65501), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ImageError) as err:
        convert_file(src, out / "x.tif", out / "x.jpg")
    assert err.value.step == "jpeg" and "65500 pixels per side" in err.value.message
    assert os.listdir(out) == []


def test_truncated_input_in_later_steps(tmp_path):
    """Steps called without inspect_input still report truncation clearly, and leave nothing behind."""
    src = tmp_path / "cut.tif"
    src.write_bytes(truncated_tiff(tmp_path))
    good = make_tif(tmp_path / "good.tif", np.zeros((3, 300, 400), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    for step, call in [
        ("cog", lambda: write_cog(src, out / "c.tif")),
        ("verify", lambda: verify_pixels(src, good)),
        ("jpeg", lambda: write_jpeg(src, out / "p.jpg")),
    ]:
        with pytest.raises(ImageError) as err:
            call()
        assert err.value.step == step
        assert err.value.message.startswith("input file is truncated or corrupt (GDAL: ")
        assert "See previous exception" not in err.value.message
    assert os.listdir(out) == []
