"""Presets in the conversion (cog.py, verify.py, convert.py): extra creation options, categorical overviews,
the bounded-error check of a lossy preset, and the pixel digests of the verification pass."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import rasterio

from cog_pipeline.core import config
from cog_pipeline.core.errors import ImageError
from cog_pipeline.raster import kinds
from cog_pipeline.raster.cog import write_cog
from cog_pipeline.raster.convert import convert_file
from cog_pipeline.raster.header import pixel_digest, read_header
from cog_pipeline.raster.kinds import DataKind, ErrorBound, ErrorMeter
from cog_pipeline.raster.verify import PixelCheck, verify_pixels
from rasters import make_tif


def on(**section):
    """A whole config with presets enabled and ``section`` merged into ``presets:``."""
    return config.load(run={"presets": {"enabled": True, **section}})


def dem(n=256, nodata=True):
    y, x = np.mgrid[0:n, 0:n]
    data = (1000 + 300 * np.sin(x / 40) * np.cos(y / 30) + np.random.default_rng(0).normal(0, 0.5, (n, n))).astype(
        np.float32
    )
    if nodata:
        data[:20, :20] = -9999
    return data


def photo(n=256):
    """Smooth 8-bit RGB with some texture (a lossy codec changes it, but not wildly)."""
    y, x = np.mgrid[0:n, 0:n]
    noise = np.random.default_rng(1).normal(0, 6, (3, n, n))
    base = np.stack([x, y, (x + y) / 2]) * (255 / (2 * n)) + 60
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def convert(tmp_path, src, preset, name="out"):
    return convert_file(src, tmp_path / f"{name}.tif", tmp_path / f"{name}.jpg", preset=preset)


def outputs(tmp_path, name="out"):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(name + "."))


# --------------------------------------------------------------------------------------------- default: off


def test_presets_are_off_by_default_and_the_cog_section_is_used(tmp_path):
    cfg = config.load()
    assert cfg["presets"]["enabled"] is False
    src = make_tif(tmp_path / "dem.tif", dem())
    preset = kinds.preset_for(read_header(src), cfg)
    assert (preset.applied, preset.kind, preset.options.compress) == (False, DataKind.ELEVATION, "LZW")
    result = convert(tmp_path, src, preset)
    assert result.kind == "elevation" and result.preset.startswith("cog section (presets disabled): LZW")
    assert result.check == "lossless" and "presets disabled" not in result.notes
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert ds.compression.name == "lzw"


# --------------------------------------------------------------------------------------------- lossless + digest


def test_lossless_preset_digests_are_equal_and_match_pixel_digest(tmp_path):
    src = make_tif(tmp_path / "rgb.tif", photo())
    preset = kinds.preset_for(read_header(src), on())
    assert (preset.kind, preset.options.compress, preset.check) == (DataKind.IMAGERY, "WEBP", "lossless")
    result = convert(tmp_path, src, preset)
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert ds.compression.name == "webp"
    assert (
        result.input_pixel_digest == result.cog_pixel_digest == pixel_digest(src) == pixel_digest(tmp_path / "out.tif")
    )
    assert result.input_pixel_digest.startswith("1220") and len(result.input_pixel_digest) == 68
    assert result.check == "lossless" and result.error is None


def test_without_a_preset_the_digests_are_returned_too(tmp_path):
    src = make_tif(tmp_path / "g.tif", (np.arange(300 * 200) % 251).astype(np.uint8).reshape(200, 300))
    result = convert_file(src, tmp_path / "out.tif", tmp_path / "out.jpg")
    assert result.input_pixel_digest == result.cog_pixel_digest == pixel_digest(src)
    assert (result.kind, result.preset) == (None, None)


def test_a_digest_mismatch_fails_the_lossless_check(tmp_path):
    """NaN == NaN passes the value comparison, but another NaN payload changes the bytes: the digests tell."""
    a = np.zeros((16, 16), np.float32)
    a[3, 4] = np.nan
    b = a.copy()
    b.view(np.uint32)[3, 4] = 0x7FC00001  # a NaN with another payload
    src, other = make_tif(tmp_path / "a.tif", a), make_tif(tmp_path / "b.tif", b)
    assert verify_pixels(src, src).input_pixel_digest == pixel_digest(src)
    with pytest.raises(ImageError) as err:
        verify_pixels(src, other)
    assert err.value.step == "verify" and "pixel digests differ" in err.value.message
    unhashed = verify_pixels(src, other, PixelCheck(digests=False))  # the value comparison alone passes
    assert (unhashed.input_pixel_digest, unhashed.cog_pixel_digest) == (None, None)


# --------------------------------------------------------------------------------------------- bounded (lossy)


def test_lerc_with_max_z_error_passes_its_bound_and_records_the_error(tmp_path):
    src = make_tif(tmp_path / "dem.tif", dem(), nodata=-9999)
    preset = kinds.preset_for(
        read_header(src), on(elevation={"compress": "LERC_ZSTD", "max_z_error": 0.01, "max_abs_error": 0.01})
    )
    assert preset.extra_creation == {"MAX_Z_ERROR": "0.01"} and preset.lossy
    result = convert(tmp_path, src, preset)
    assert result.check == "bounded" and result.kind == "elevation"
    err = result.error
    assert 0 < err.max_abs_error <= 0.01 + err.rounding and err.rounding < 1e-3  # float32 rounding only
    assert err.values == 256 * 256 - 20 * 20  # the valid pixels only
    assert math.isfinite(err.psnr_db) and err.psnr_db > 60
    # Lossy: the digests are both there, and differ.
    assert result.input_pixel_digest == pixel_digest(src)
    assert result.cog_pixel_digest == pixel_digest(tmp_path / "out.tif") != result.input_pixel_digest
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert ds.compression.name.startswith("lerc") and ds.nodata == -9999
        assert (ds.read(1)[:20, :20] == -9999).all()  # nodata kept as it was


def test_a_lossy_preset_out_of_its_bound_fails_verify_with_the_measured_error(tmp_path):
    src = make_tif(tmp_path / "dem.tif", dem(nodata=False))
    loose = kinds.preset_for(
        read_header(src), on(elevation={"compress": "LERC", "max_z_error": 0.5, "max_abs_error": 0.5})
    )
    assert convert(tmp_path, src, loose, "loose").error.max_abs_error > 0.1
    tight = dataclasses.replace(loose, bound=ErrorBound(max_abs_error=0.1))  # below max_z_error: fails
    with pytest.raises(ImageError) as err:
        convert(tmp_path, src, tight)
    assert err.value.step == "verify"
    assert "lossy COG out of bounds: max absolute error" in err.value.message
    assert "exceeds the bound 0.1" in err.value.message and "PSNR" in err.value.message
    assert outputs(tmp_path) == []  # neither the COG nor the preview


def test_lossy_webp_is_checked_by_psnr(tmp_path):
    src = make_tif(tmp_path / "rgb.tif", photo())
    preset = kinds.preset_for(read_header(src), on(imagery={"quality": 75, "min_psnr_db": 25}))
    assert preset.extra_creation == {"QUALITY": "75"}
    result = convert(tmp_path, src, preset)
    assert result.check == "bounded" and 25 <= result.error.psnr_db < 60
    assert result.input_pixel_digest != result.cog_pixel_digest
    strict = dataclasses.replace(preset, bound=ErrorBound(min_psnr_db=80))
    with pytest.raises(ImageError, match=r"PSNR \d+\.\d\d dB is below the bound 80 dB"):
        convert(tmp_path, src, strict, "strict")
    assert outputs(tmp_path, "strict") == []


def test_a_lossy_codec_that_moves_pixels_across_nodata_fails(tmp_path):
    """Lossy WEBP rings at the edge of a nodata-0 collar: some collar pixels become data."""
    data = photo()
    data[:, :, :40] = 0
    src = make_tif(tmp_path / "rgb.tif", data, nodata=0)
    preset = kinds.preset_for(read_header(src), on(imagery={"quality": 60, "min_psnr_db": 1}))
    with pytest.raises(ImageError) as err:
        convert(tmp_path, src, preset)
    assert err.value.step == "verify" and "the lossy COG changes what is data" in err.value.message


def test_error_meter_window_by_window_equals_one_measure():
    rng = np.random.default_rng(3)
    ref = rng.normal(500, 100, (2, 60, 50)).astype(np.float32)
    cand = (ref + rng.uniform(-0.2, 0.2, ref.shape)).astype(np.float32)
    valid = rng.random((60, 50)) > 0.1
    meter = ErrorMeter()
    for row in range(0, 60, 7):
        meter.add(ref[:, row : row + 7], cand[:, row : row + 7], valid[row : row + 7])
    whole = kinds.measure_error(ref, cand, valid)
    split = meter.stats()
    assert split.values == whole.values and split.max_abs_error == whole.max_abs_error
    assert split.rmse == pytest.approx(whole.rmse) and split.psnr_db == pytest.approx(whole.psnr_db)
    assert split.rounding == float(np.spacing(np.float32(np.abs(ref[:, valid]).max())))
    ints = kinds.measure_error(np.zeros((1, 2, 2), np.uint8), np.ones((1, 2, 2), np.uint8))
    assert ints.rounding == 0 and ErrorBound(max_abs_error=0.99).violation(ints) is not None


# --------------------------------------------------------------------------------------------- write_cog


def test_categorical_overviews_never_average_class_codes(tmp_path):
    codes = np.where((np.indices((512, 512)).sum(0) % 2) == 0, 1, 5).astype(np.int16)  # average: 3
    src = make_tif(tmp_path / "cls.tif", codes)
    preset = kinds.preset_for(
        read_header(src), config.load(run={"presets": {"enabled": True}, "cog": {"blocksize": 128}})
    )
    assert (preset.kind, preset.options.overview_resampling) == (DataKind.CATEGORICAL, "mode")
    # A hand-made preset that asks for averaging still gets nearest for a categorical image.
    averaging = dataclasses.replace(preset, options=dataclasses.replace(preset.options, overview_resampling="average"))
    plain = dataclasses.replace(averaging, applied=False)  # presets disabled: the cog: section as it is
    found = {}
    for name, p in (("mode", preset), ("forced", averaging), ("plain", plain)):
        write_cog(src, tmp_path / f"{name}.tif", p.options, p)
        with rasterio.open(tmp_path / f"{name}.tif", overview_level=0) as ov:
            found[name] = set(np.unique(ov.read(1)).tolist())
    assert found["mode"] <= {1, 5} and found["forced"] <= {1, 5}
    assert found["plain"] == {3}  # what averaging does to forest=1 and water=5


def test_an_extra_creation_option_for_another_codec_is_refused(tmp_path):
    src = make_tif(tmp_path / "dem.tif", dem(64, nodata=False))
    preset = kinds.preset_for(read_header(src), on())  # ZSTD
    wrong = dataclasses.replace(preset, extra_creation={"MAX_Z_ERROR": "0.1"})
    with pytest.raises(ImageError) as err:
        write_cog(src, tmp_path / "x.tif", wrong.options, wrong)
    assert err.value.step == "cog" and "MAX_Z_ERROR=0.1 does not apply to ZSTD" in err.value.message
    assert not (tmp_path / "x.tif").exists()
