"""Complex (SAR) data: a lossless, pixel-verified COG and an amplitude preview (issue 14), or a clear refusal
naming the data type where GDAL cannot store it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from cog_pipeline.core.conversion import CogOptions
from cog_pipeline.core.errors import ImageError
from cog_pipeline.raster.convert import convert_file
from cog_pipeline.raster.preview import render_window
from cog_pipeline.raster.thumbnail import thumbnail_array

COMPLEX_TYPES = ["complex_int16", "complex64", "complex128"]


def complex_tif(path: Path, dtype: str, height: int = 120, width: int = 150, count: int = 1) -> np.ndarray:
    """A GTiff of complex ``dtype`` (integer real and imaginary parts, a smooth amplitude and random phases);
    returns what was written."""
    rng = np.random.default_rng(5)
    held = np.complex64 if dtype == "complex_int16" else np.dtype(dtype)
    rows, cols = np.mgrid[0:height, 0:width]
    amplitude = 100 + 20 * rows + 10 * cols + 500 * np.arange(count)[:, None, None]
    z = amplitude * np.exp(1j * rng.uniform(-np.pi, np.pi, (count, height, width)))
    data = (np.round(z.real) + 1j * np.round(z.imag)).astype(held)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=dtype,
        crs="EPSG:32633",
        transform=Affine(10, 0, 400000, 0, -10, 5000000),
    ) as ds:
        ds.write(data)
    return data


def percentile_preview(amplitude: np.ndarray, low_pct: float = 2, high_pct: float = 98) -> np.ndarray:
    """The preview's stretch of one band, computed here independently (the image is under 1024 px: no decimation)."""
    low, high = np.percentile(amplitude.astype(np.float64), [low_pct, high_pct])
    scaled = (amplitude.astype(np.float64) - low) * (255.0 / (high - low))
    return (np.clip(scaled, 0, 255) + 0.5).astype(np.uint8)


@pytest.mark.parametrize("dtype", COMPLEX_TYPES)
def test_complex_data_converts_losslessly_with_an_amplitude_preview(tmp_path, dtype):
    data = complex_tif(tmp_path / "sar.tif", dtype)
    result = convert_file(tmp_path / "sar.tif", tmp_path / "sar.cog.tif", tmp_path / "sar.jpg")
    assert result.info.dtype == dtype and result.jpeg_bands == [1]
    assert f"complex data ({dtype}): the JPEG preview shows the amplitude |z|" in result.notes
    with rasterio.open(tmp_path / "sar.cog.tif") as cog:
        assert cog.dtypes[0] == dtype and cog.overviews(1) == []  # small: no overview needed
        np.testing.assert_array_equal(cog.read(), data)  # the COG holds the very values
    with Image.open(tmp_path / "sar.jpg") as jpeg:
        assert jpeg.mode == "L" and jpeg.size == (150, 120)
        decoded = np.asarray(jpeg).astype(int)
    expected = percentile_preview(np.abs(data[0]))
    assert np.abs(decoded - expected.astype(int)).max() <= 4  # the amplitude stretch, JPEG-encoded


def test_amplitude_rendering_is_the_stretch_of_abs():
    """render_window on complex data gives exactly what it gives on |z| (the thumbnails use it too)."""
    from cog_pipeline.raster.preview import RenderPlan

    z = np.array([[[3 + 4j, 0 + 1j, -6 - 8j, np.nan + 0j]]], dtype=np.complex64)
    plan = RenderPlan([1], 1, None, [(0.0, 10.0)], masked=False)
    out = render_window(z, None, plan)
    assert out.tolist() == [[[128, 26, 255, 0]]]  # |3+4j| = 5 -> 127.5 -> 128; NaN -> black
    assert np.array_equal(out, render_window(np.abs(z), None, plan))


def test_thumbnail_of_a_complex_cog(tmp_path):
    complex_tif(tmp_path / "sar.tif", "complex64", height=300, width=500)
    convert_file(tmp_path / "sar.tif", tmp_path / "sar.cog.tif", tmp_path / "sar.jpg")
    thumb = thumbnail_array(tmp_path / "sar.cog.tif")
    assert thumb.dtype == np.uint8 and thumb.shape == (1, 77, 128) and 0 < thumb.mean() < 255


@pytest.mark.parametrize("dtype", ["complex_int16", "complex64"])
def test_predictor_yes_on_complex_data_uses_the_horizontal_predictor(tmp_path, dtype):
    """GDAL's YES picks the floating-point predictor for complex floats, which TIFF refuses: YES means
    STANDARD for complex data of 32-bit halves."""
    data = complex_tif(tmp_path / "sar.tif", dtype)
    options = CogOptions(compress="ZSTD", predictor="YES")
    convert_file(tmp_path / "sar.tif", tmp_path / "sar.cog.tif", tmp_path / "sar.jpg", options)
    with rasterio.open(tmp_path / "sar.cog.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
        np.testing.assert_array_equal(cog.read(), data)


def test_predictor_yes_on_complex128_writes_without_predictor(tmp_path):
    data = complex_tif(tmp_path / "sar.tif", "complex128")
    convert_file(
        tmp_path / "sar.tif",
        tmp_path / "sar.cog.tif",
        tmp_path / "sar.jpg",
        CogOptions(compress="DEFLATE", predictor="YES"),
    )
    with rasterio.open(tmp_path / "sar.cog.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") in (None, "1")
        np.testing.assert_array_equal(cog.read(), data)


@pytest.mark.parametrize(
    "options, words",
    [
        (CogOptions(compress="LERC"), "compress LERC cannot store complex data (complex64)"),
        (CogOptions(compress="LERC_ZSTD"), "compress LERC_ZSTD cannot store complex data (complex64)"),
        (
            CogOptions(predictor="FLOATING_POINT"),
            "predictor FLOATING_POINT only works on float data and this image is complex64",
        ),
    ],
)
def test_what_cannot_hold_complex_data_is_refused_by_name(tmp_path, options, words):
    complex_tif(tmp_path / "sar.tif", "complex64")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ImageError) as err:
        convert_file(tmp_path / "sar.tif", out / "sar.tif", out / "sar.jpg", options)
    assert err.value.step == "cog" and words in err.value.message
    assert "TypeError" not in err.value.message
    assert list(out.iterdir()) == []


def test_predictor_standard_on_complex128_is_refused_by_name(tmp_path):
    complex_tif(tmp_path / "sar.tif", "complex128")
    with pytest.raises(ImageError, match=r"predictor STANDARD does not work on complex128 data"):
        convert_file(tmp_path / "sar.tif", tmp_path / "c.tif", tmp_path / "c.jpg", CogOptions(predictor="STANDARD"))


def test_a_three_band_complex_image_gives_an_rgb_amplitude_preview(tmp_path):
    complex_tif(tmp_path / "sar.tif", "complex_int16", count=3)
    result = convert_file(tmp_path / "sar.tif", tmp_path / "sar.cog.tif", tmp_path / "sar.jpg")
    assert result.jpeg_bands == [1, 2, 3]
    with Image.open(io.BytesIO((tmp_path / "sar.jpg").read_bytes())) as jpeg:
        assert jpeg.mode == "RGB"
