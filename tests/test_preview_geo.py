"""Previews a GIS user can use (issue 13, point 4): georeference beside every preview (world file, .aux.xml),
band order from the colour interpretation, a configurable nodata colour, undeclared fill values kept out of
the stretch, and smaller previews."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning

from cog_pipeline import SAMPLES_DIR
from cog_pipeline.core.conversion import JpegOptions, jpeg_options_from_config
from cog_pipeline.core.errors import ImageError
from cog_pipeline.raster.convert import (
    convert_file,
    preview_content_type,
    preview_key,
    verify_and_write_jpeg,
    write_jpeg,
)
from cog_pipeline.raster.preview import jpeg_bands
from cog_pipeline.raster.thumbnail import thumbnail_array

RGB = SAMPLES_DIR / "RGB.byte.tif"
TRANSFORM = Affine(2.5, 0, 500000, 0, -2.5, 4100000)


def make_tif(
    path: Path, data: np.ndarray, *, nodata=None, crs="EPSG:32618", transform=TRANSFORM, colorinterp=None, gcps=None
) -> Path:
    """A GeoTIFF of ``data``: georeferenced by ``transform`` or ``gcps`` in ``crs`` (None: a plain image)."""
    data = data[np.newaxis] if data.ndim == 2 else data
    kw = dict(
        driver="GTiff",
        count=data.shape[0],
        height=data.shape[1],
        width=data.shape[2],
        dtype=data.dtype.name,
        nodata=nodata,
    )
    if crs:
        kw.update(crs=crs, **({"gcps": gcps} if gcps else {"transform": transform}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **kw) as dst:
            dst.write(data)
            if colorinterp:
                dst.colorinterp = colorinterp
    return path


def pixels(path: Path) -> np.ndarray:
    """A JPEG's pixels as Pillow decodes them, (rows, cols[, 3])."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def convert(tmp_path: Path, src: Path, options: JpegOptions = JpegOptions(), name: str = "x"):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return convert_file(src, out / f"{name}.tif", out / f"{name}.jpg", jpeg_options=options), out


# --------------------------------------------------------------------------------------------- georeference


def assert_in_place(jpeg: Path, src: Path) -> None:
    """GDAL (through rasterio) places the JPEG on the source: same CRS, bounds within half a preview pixel."""
    with rasterio.open(src) as s, rasterio.open(jpeg) as j:
        assert j.crs == s.crs
        half_x, half_y = abs(j.transform.a) / 2, abs(j.transform.e) / 2
        for got, want, tol in zip(j.bounds, s.bounds, (half_x, half_y, half_x, half_y), strict=True):
            assert abs(got - want) <= tol, (jpeg.name, j.bounds, s.bounds)
        assert (j.width, j.height) != (0, 0)


def test_full_and_smaller_previews_open_in_place(tmp_path):
    result, out = convert(tmp_path, RGB, JpegOptions(sizes=(200, 512)))
    assert sorted(suffix for _, suffix in result.preview_sidecars) == [
        ".200.jgw",
        ".200.jpg",
        ".200.jpg.aux.xml",
        ".512.jgw",
        ".512.jpg",
        ".512.jpg.aux.xml",
        ".jgw",
        ".jpg.aux.xml",
    ]
    for path, suffix in result.preview_sidecars:
        assert path.is_file() and path.name == "x" + suffix
        assert preview_key("a/b.jpg", suffix) == "a/b" + suffix
    assert [preview_content_type(s) for s in (".jgw", ".512.jpg", ".jpg.aux.xml")] == [
        "text/plain",
        "image/jpeg",
        "application/xml",
    ]
    assert sorted(os.listdir(out)) == sorted(["x.tif", "x.jpg"] + [p.name for p, _ in result.preview_sidecars])
    for name, size in (("x.jpg", (791, 718)), ("x.512.jpg", (512, 465)), ("x.200.jpg", (200, 182))):
        with rasterio.open(out / name) as ds:
            assert (ds.width, ds.height) == size
        assert_in_place(out / name, RGB)
    # the world file alone (no .aux.xml) gives the same grid: pixel size and the upper-left pixel's centre
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("x.200.jpg", "x.200.jgw"):
        shutil.copy(out / name, alone / name)
    with rasterio.open(out / "x.200.jpg") as both, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(alone / "x.200.jpg") as world:
            assert world.crs is None  # a world file carries no CRS: the .aux.xml does
            assert world.transform.almost_equals(both.transform)
    lines = [float(v) for v in (out / "x.200.jgw").read_text().split()]
    with rasterio.open(out / "x.200.jpg") as ds:
        t = ds.transform
    assert lines == pytest.approx([t.a, t.d, t.b, t.e, t.c + t.a / 2, t.f + t.e / 2])


def test_odd_sizes_and_rotated_grid_stay_in_place(tmp_path):
    data = np.random.default_rng(3).integers(0, 4000, (1, 157, 301)).astype(np.uint16)
    rotated = Affine(2.0, 0.5, 500000, 0.4, -2.0, 4100000)
    src = make_tif(tmp_path / "r.tif", data, transform=rotated)
    _, out = convert(tmp_path, src, JpegOptions(sizes=(64, 1000)))
    with rasterio.open(out / "x.1000.jpg") as ds:  # never enlarged: at most 1000 pixels, here the full size
        assert (ds.width, ds.height) == (301, 157) and ds.transform.almost_equals(rotated)
    with rasterio.open(out / "x.64.jpg") as ds:
        assert (ds.width, ds.height) == (64, 33)
        assert ds.crs == CRS.from_epsg(32618)
        # the small grid is the source's scaled by 301/64 and 157/33: every corner maps to the same point
        for col, row, src_col, src_row in ((0, 0, 0, 0), (64, 33, 301, 157), (64, 0, 301, 0)):
            assert ds.transform @ (col, row) == pytest.approx(rotated @ (src_col, src_row))


def test_gcp_only_images_get_their_gcps_scaled(tmp_path):
    gcps = [
        GroundControlPoint(0, 0, 500000, 4000000),
        GroundControlPoint(0, 90, 500900, 4000000),
        GroundControlPoint(60, 0, 500000, 3999400),
        GroundControlPoint(60, 90, 500900, 3999400),
    ]
    src = make_tif(tmp_path / "g.tif", np.full((60, 90), 7, np.uint8), gcps=gcps)
    result, out = convert(tmp_path, src, JpegOptions(sizes=(30,)))
    assert sorted(s for _, s in result.preview_sidecars) == [".30.jpg", ".30.jpg.aux.xml", ".jpg.aux.xml"]  # no jgw
    with rasterio.open(out / "x.30.jpg") as ds:
        points, crs = ds.gcps
    assert crs == CRS.from_epsg(32618)
    assert [(p.row, p.col, p.x) for p in points] == [(0, 0, 500000), (0, 30, 500900), (20, 0, 500000), (20, 30, 500900)]


def test_plain_images_and_georeference_off_get_no_side_files(tmp_path):
    src = make_tif(tmp_path / "plain.tif", np.arange(64 * 48, dtype=np.float32).reshape(48, 64), crs=None)
    result, out = convert(tmp_path, src)
    assert result.preview_sidecars == [] and sorted(os.listdir(out)) == ["x.jpg", "x.tif"]
    result, out = convert(tmp_path, RGB, JpegOptions(georeference=False), name="off")
    assert result.preview_sidecars == [] and not (out / "off.jgw").exists()


def test_a_failed_check_leaves_no_preview_nor_side_file(tmp_path):
    data = np.random.default_rng(5).integers(0, 255, (3, 120, 130)).astype(np.uint8)
    src = make_tif(tmp_path / "src.tif", data)
    other = data.copy()
    other[1, 100, 100] ^= 1
    cog = make_tif(tmp_path / "cog.tif", other)
    with pytest.raises(ImageError) as err:
        verify_and_write_jpeg(src, cog, tmp_path / "bad.jpg", JpegOptions(sizes=(32,)))
    assert err.value.step == "verify"
    assert sorted(os.listdir(tmp_path)) == ["cog.tif", "src.tif"]  # no temp names either


def test_extra_options_leave_the_full_preview_bytes_alone(tmp_path):
    """Where sizes, a nodata colour or fill detection have nothing to do, the full preview is the default one."""
    data = np.random.default_rng(8).integers(1, 255, (3, 90, 110)).astype(np.uint8)
    src = make_tif(tmp_path / "s.tif", data)
    write_jpeg(src, tmp_path / "default.jpg")
    write_jpeg(src, tmp_path / "extra.jpg", JpegOptions(sizes=(40,), nodata_color="white", detect_fill=False))
    assert (tmp_path / "default.jpg").read_bytes() == (tmp_path / "extra.jpg").read_bytes()


# --------------------------------------------------------------------------------------------- band order


def test_jpeg_bands_follow_the_colour_interpretation():
    ci = ColorInterp
    assert jpeg_bands(3, [ci.blue, ci.green, ci.red]) == [3, 2, 1]
    assert jpeg_bands(4, [ci.blue, ci.green, ci.red, ci.alpha]) == [3, 2, 1]
    assert jpeg_bands(4, [ci.red, ci.green, ci.blue, ci.alpha]) == [1, 2, 3]
    assert jpeg_bands(4, [ci.undefined, ci.blue, ci.green, ci.red]) == [4, 3, 2]
    assert jpeg_bands(3, [ci.gray, ci.undefined, ci.undefined]) == [1, 2, 3]  # as before: bands 1-3
    assert jpeg_bands(2, [ci.gray, ci.alpha]) == [1]
    assert jpeg_bands(1, [ci.gray]) == [1]


@pytest.mark.parametrize("alpha", [False, True], ids=["BGR", "BGRA"])
def test_bgr_preview_comes_out_red_where_red_is_high(tmp_path, alpha):
    data = np.full((4 if alpha else 3, 64, 96), 20, np.uint8)
    data[2, :, :48] = 240  # band 3 is red: high on the left half
    interp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    if alpha:
        data[3] = 255
        data[3, 48:] = 0  # the bottom quarter is transparent
        interp.append(ColorInterp.alpha)
    src = make_tif(tmp_path / "bgr.tif", data, colorinterp=interp)
    result, out = convert(tmp_path, src, JpegOptions(nodata_color="white"))
    assert result.jpeg_bands == [3, 2, 1]
    assert any("bands 3, 2 and 1" in note for note in result.notes)
    rgb = pixels(out / "x.jpg").astype(int)
    assert rgb[8:40, 8:40, 0].mean() > 220 and rgb[8:40, 8:40, 1:].mean() < 40  # red where band 3 is high
    assert rgb[8:40, 56:90].mean() < 40  # dark elsewhere
    if alpha:  # alpha is the mask: transparent pixels in the nodata colour
        assert rgb[52:64].min() > 230
    # the report's thumbnail (from the COG) follows the same order
    thumb = thumbnail_array(out / "x.tif")
    assert thumb[0, 10, 10] > 220 and thumb[2, 10, 10] < 40


# --------------------------------------------------------------------------------------------- nodata colour


def test_nodata_color_default_black_and_configurable(tmp_path):
    data = np.random.default_rng(2).integers(100, 3000, (1, 80, 96)).astype(np.int16)
    data[:, :, :32] = -9999
    src = make_tif(tmp_path / "nd.tif", data, nodata=-9999)
    write_jpeg(src, tmp_path / "default.jpg")
    write_jpeg(src, tmp_path / "black.jpg", JpegOptions(nodata_color=[0, 0, 0]))
    assert (tmp_path / "default.jpg").read_bytes() == (tmp_path / "black.jpg").read_bytes()
    assert pixels(tmp_path / "default.jpg")[:, :24].max() < 8
    write_jpeg(src, tmp_path / "white.jpg", JpegOptions(nodata_color="white"))
    white = pixels(tmp_path / "white.jpg")
    assert white.ndim == 2 and white[:, :24].min() > 247  # a grey colour keeps a grey preview
    write_jpeg(src, tmp_path / "red.jpg", JpegOptions(nodata_color=(255, 0, 0)))
    red = pixels(tmp_path / "red.jpg").astype(int)
    assert red.ndim == 3  # a colour that is not a grey makes the grey preview RGB
    assert red[:, :24, 0].min() > 230 and red[:, :24, 1:].max() < 25
    assert np.abs(red[:, 40:, 0] - red[:, 40:, 1]).max() < 12  # data stays grey


def test_nodata_color_config_is_checked():
    assert jpeg_options_from_config({"nodata_color": [255, 255, 255], "sizes": [2048, 512]}) == JpegOptions(
        nodata_color="white", sizes=(512, 2048)
    )
    for bad, words in (
        ({"nodata_color": "pink"}, "jpeg.nodata_color 'pink'"),
        ({"nodata_color": [0, 0, 256]}, "each from 0 to 255"),
        ({"sizes": [8]}, "jpeg.sizes: 8"),
        ({"sizes": [64, 64]}, "twice"),
        ({"sizes": 512}, "must be a list"),
        ({"georeference": "yes"}, "jpeg.georeference"),
    ):
        with pytest.raises(ValueError, match=words):
            jpeg_options_from_config(bad)


# --------------------------------------------------------------------------------------------- undeclared fill


def elevation_with_fill(tmp_path: Path) -> Path:
    """Float elevation 100..400 m, with a -9999 collar (40% of the pixels) that the file does not declare."""
    rows, cols = np.mgrid[0:200, 0:250]
    data = (100 + 300 * cols / 249 + rows * 0.01).astype(np.float32)
    data[:, :60] = -9999
    data[:, -40:] = -9999
    return make_tif(tmp_path / "dem.tif", data)


def test_undeclared_fill_is_left_out_of_the_stretch_and_drawn_as_nodata(tmp_path):
    src = elevation_with_fill(tmp_path)
    result, out = convert(tmp_path, src, JpegOptions(nodata_color="white"))
    note = next(n for n in result.notes if "undeclared fill value -9999" in n)
    assert "left, right" in note and "gdal_edit -a_nodata -9999" in note
    grey = pixels(out / "x.jpg").astype(int)
    inner = grey[:, 70:200]
    assert inner.max() - inner.min() > 150  # a real stretch of 100..400 m, not washed out
    assert grey[:, 8:50].min() > 245 and grey[:, -30:].min() > 245  # the fill in the nodata colour
    thumb = thumbnail_array(out / "x.tif")[0]
    assert int(thumb[:, 40:100].max()) - int(thumb[:, 40:100].min()) > 100  # the report's thumbnail too


def test_without_fill_detection_the_preview_washes_out(tmp_path):
    """What the detector prevents (and what the test above would see without it)."""
    src = elevation_with_fill(tmp_path)
    write_jpeg(src, tmp_path / "p.jpg", JpegOptions(detect_fill=False))
    grey = pixels(tmp_path / "p.jpg").astype(int)
    assert grey[:, 70:200].min() > 245  # all data white


def test_eight_bit_and_declared_nodata_are_not_searched_for_fill(tmp_path):
    data = np.full((1, 64, 64), 120, np.uint8)
    data[:, :, :20] = 0
    result, _ = convert(tmp_path, make_tif(tmp_path / "b.tif", data), JpegOptions(nodata_color="white"))
    assert not any("fill" in n for n in result.notes)
    assert pixels(tmp_path / "out" / "x.jpg")[:, :12].max() < 8  # 0 is data in an 8-bit image
