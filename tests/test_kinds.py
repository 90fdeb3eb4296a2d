"""Data kinds and presets (cog_pipeline/raster/kinds.py) on small generated rasters, and the pixel digest
(cog_pipeline/raster/header.py)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from cog_pipeline.core import config
from cog_pipeline.core.conversion import CogOptions
from cog_pipeline.raster import kinds
from cog_pipeline.raster.header import PixelHasher, pixel_digest, read_header
from cog_pipeline.raster.kinds import DataKind, ErrorBound
from rasters import make_tif


NIR = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]


def rgb(n=64, bands=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (bands, n, n), dtype=np.uint8)


@pytest.fixture
def cfg():
    return config.load(run={"presets": {"enabled": True}})  # presets are opt-in


# --------------------------------------------------------------------------------------------- detection


def test_kinds_are_detected_from_header_and_decimated_read(tmp_path):
    cases = {
        "rgb": (make_tif(tmp_path / "rgb.tif", rgb()), DataKind.IMAGERY),
        "rgbnir": (make_tif(tmp_path / "rgbnir.tif", rgb(bands=4), colorinterp=NIR), DataKind.IMAGERY),
        "rgba": (
            make_tif(
                tmp_path / "rgba.tif",
                rgb(bands=4),
                colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha],
            ),
            DataKind.IMAGERY,
        ),
        "dem": (
            make_tif(
                tmp_path / "dem.tif", np.linspace(0, 900, 64 * 64, dtype=np.float32).reshape(64, 64), nodata=-9999
            ),
            DataKind.ELEVATION,
        ),
        "palette": (
            make_tif(
                tmp_path / "pal.tif",
                (np.arange(64 * 64) % 200).astype(np.uint8).reshape(64, 64),
                colormap={i: (i, 255 - i, 0, 255) for i in range(200)},
            ),
            DataKind.CATEGORICAL,
        ),
        "classes": (
            make_tif(tmp_path / "cls.tif", (np.arange(64 * 64) % 7).astype(np.int16).reshape(64, 64)),
            DataKind.CATEGORICAL,
        ),
        "gray": (
            make_tif(tmp_path / "gray.tif", (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)),
            DataKind.OTHER,
        ),
        "uint16x3": (make_tif(tmp_path / "u16.tif", rgb().astype(np.uint16) * 200), DataKind.OTHER),
    }
    got = {name: kinds.detect(read_header(path)) for name, (path, _) in cases.items()}
    assert got == {name: kind for name, (_, kind) in cases.items()}
    assert "RGBNIR" in kinds.classify(read_header(cases["rgbnir"][0])).reason
    assert "+ alpha" in kinds.classify(read_header(cases["rgba"][0])).reason


def test_categorical_threshold_counts_valid_values_only(tmp_path):
    data = (np.arange(64 * 64) % 5).astype(np.uint8).reshape(64, 64)
    data[:, :8] = 200  # a fill declared as nodata: not a class
    header = read_header(make_tif(tmp_path / "c.tif", data, nodata=200))
    assert kinds.classify(header, max_values=5).kind is DataKind.CATEGORICAL
    assert kinds.classify(header, max_values=4).kind is DataKind.OTHER


# --------------------------------------------------------------------------------------------- presets


def test_default_presets_per_kind(tmp_path, cfg):
    dem = read_header(make_tif(tmp_path / "dem.tif", np.ones((32, 32), np.float32)))
    p = kinds.preset_for(dem, cfg)
    assert (p.kind, p.options.compress, p.options.predictor, p.check) == (
        DataKind.ELEVATION,
        "ZSTD",
        "FLOATING_POINT",
        "lossless",
    )
    assert p.options.blocksize == cfg["cog"]["blocksize"]  # the cog: section gives the rest
    img = kinds.preset_for(read_header(make_tif(tmp_path / "rgb.tif", rgb())), cfg)
    assert (img.options.compress, img.options.predictor, img.extra_creation) == ("WEBP", "NO", {})
    cat = kinds.preset_for(read_header(make_tif(tmp_path / "c.tif", np.zeros((32, 32), np.uint8))), cfg)
    assert (cat.kind, cat.options.overview_resampling) == (DataKind.CATEGORICAL, "mode")
    other = kinds.preset_for(read_header(make_tif(tmp_path / "g.tif", rgb(bands=1)[0].astype(np.int16) * 9)), cfg)
    assert (other.kind, other.options.compress, other.options.predictor) == (DataKind.OTHER, "LZW", "STANDARD")
    assert "LZW STANDARD" in other.summary() and other.summary().endswith("lossless")


def test_webp_falls_back_to_zstd_for_what_webp_cannot_hold(tmp_path, cfg):
    p = kinds.preset_for(read_header(make_tif(tmp_path / "nir.tif", rgb(bands=4), colorinterp=NIR)), cfg)
    assert (p.kind, p.options.compress, p.options.predictor) == (DataKind.IMAGERY, "ZSTD", "STANDARD")
    assert "WEBP takes 3-band uint8 only" in p.notes[0]


def test_auto_predictor_suits_the_data_type():
    base = config.load(run={"presets": {"enabled": True}})
    assert kinds.cog_options_for(DataKind.OTHER, base).predictor == "YES"  # no header: GDAL picks per image
    assert kinds.cog_options_for(DataKind.OTHER, base).compress == "LZW"  # the original's codec


def test_presets_can_be_disabled_and_overridden(tmp_path):
    header = read_header(make_tif(tmp_path / "dem.tif", np.ones((32, 32), np.float32)))
    off = kinds.preset_for(header, config.load(run={"presets": {"enabled": False}}))
    assert off.options == CogOptions() and off.notes == ("presets disabled",)
    lerc = config.load(
        run={
            "presets": {
                "enabled": True,
                "elevation": {"compress": "LERC_ZSTD", "max_z_error": 0.01, "max_abs_error": 0.01},
            }
        }
    )
    p = kinds.preset_for(header, lerc)
    assert (p.options.compress, p.extra_creation, p.check, p.bound) == (
        "LERC_ZSTD",
        {"MAX_Z_ERROR": "0.01"},
        "bounded",
        ErrorBound(max_abs_error=0.01),
    )
    assert "bounded (max abs error <= 0.01)" in p.summary()
    lossless_lerc = config.load(
        run={"presets": {"enabled": True, "elevation": {"compress": "LERC", "predictor": "NO"}}}
    )
    q = kinds.preset_for(header, lossless_lerc)
    assert (q.options.compress, q.check, q.extra_creation) == ("LERC", "lossless", {})


@pytest.mark.parametrize(
    "section, message",
    [
        ({"elevation": {"compress": "LERC", "max_z_error": 0.5}}, "is lossy, so the lossless check cannot pass"),
        ({"imagery": {"compress": "WEBP", "quality": 90}}, "WEBP with quality 90 is lossy"),
        ({"elevation": {"compress": "LERC", "max_z_error": 0.5, "max_abs_error": 0.1}}, "is below max_z_error"),
        ({"categorical": {"overview_resampling": "average"}}, "would average class codes"),
        ({"elevation": {"compress": "ZSTD", "max_z_error": 0.1}}, "max_z_error is only for LERC"),
        ({"imagery": {"compress": "JPEG"}}, "JPEG is not offered"),
        ({"other": {"compress": "LZW", "max_abs_error": 1}}, "this one is lossless"),
        ({"other": {"compress": "LZW", "level": 3}}, "presets.other.level 3"),
        ({"landcover": {}}, "unknown key(s) landcover"),
    ],
)
def test_bad_presets_are_refused_naming_the_key(section, message):
    with pytest.raises(ValueError, match=None) as exc:
        kinds.presets_from_config({"presets": section})
    assert message in str(exc.value)


def test_the_schema_refuses_what_the_typed_check_refuses():
    with pytest.raises(Exception, match=r"presets\.categorical\.overview_resampling"):
        config.load(run={"presets": {"categorical": {"overview_resampling": "cubic"}}})


def test_lossy_webp_with_a_bound_is_allowed(tmp_path):
    cfg = config.load(run={"presets": {"enabled": True, "imagery": {"quality": 90, "min_psnr_db": 40}}})
    p = kinds.preset_for(read_header(make_tif(tmp_path / "rgb.tif", rgb())), cfg)
    assert (p.extra_creation, p.check, p.bound.min_psnr_db) == ({"QUALITY": "90"}, "bounded", 40.0)


# --------------------------------------------------------------------------------------------- bounded error


def test_measure_error_and_bound():
    ref = np.arange(100, dtype=np.uint8).reshape(1, 10, 10)
    same = kinds.measure_error(ref, ref.copy())
    assert (same.max_abs_error, same.psnr_db) == (0.0, math.inf)
    off = ref.copy()
    off[0, 0, 0] += 4
    stats = kinds.measure_error(ref, off)
    assert stats.max_abs_error == 4 and stats.values == 100
    assert stats.psnr_db == pytest.approx(20 * math.log10(255 / math.sqrt(16 / 100)))
    assert ErrorBound(max_abs_error=4).violation(stats) is None
    assert "exceeds the bound 3" in ErrorBound(max_abs_error=3).violation(stats)
    assert "below the bound" in ErrorBound(min_psnr_db=60).violation(stats)
    valid = np.ones((10, 10), bool)
    valid[0, 0] = False
    assert kinds.measure_error(ref, off, valid).max_abs_error == 0


def test_measure_error_nan_on_one_side_breaks_any_bound():
    ref = np.zeros((1, 4, 4), np.float32)
    cand = ref.copy()
    cand[0, 1, 1] = np.nan
    stats = kinds.measure_error(ref, cand)
    assert ErrorBound(max_abs_error=1e9).violation(stats) is not None
    both = kinds.measure_error(cand, cand.copy())
    assert both.max_abs_error == 0


# --------------------------------------------------------------------------------------------- pixel digest


def _reference_digest(data: np.ndarray) -> str:
    """The definition in docs/delivery.md, written out on a whole array."""
    dtype = data.dtype.newbyteorder("<")
    count, height, width = data.shape
    sha = hashlib.sha256(f"cog-pipeline-pixels/1 {dtype.str} {count} {height} {width}\n".encode())
    sha.update(np.transpose(data, (1, 2, 0)).astype(dtype).tobytes())
    return "1220" + sha.hexdigest()


def test_pixel_digest_matches_its_definition_and_survives_recompression(tmp_path):
    data = np.random.default_rng(1).normal(100, 30, (2, 37, 53)).astype(np.float32)
    src = make_tif(tmp_path / "a.tif", data)
    zstd = make_tif(tmp_path / "b.tif", data, compress="ZSTD", predictor=3, tiled=True, blockxsize=16, blockysize=16)
    assert pixel_digest(src) == pixel_digest(zstd) == _reference_digest(data)
    changed = data.copy()
    changed[1, 36, 52] += 1e-3  # the last value of the last band
    assert pixel_digest(make_tif(tmp_path / "c.tif", changed)) != pixel_digest(src)
    # Same bytes, other shape: the header line tells them apart.
    assert _reference_digest(data.reshape(2, 53, 37)) != _reference_digest(data)


def test_pixel_hasher_takes_split_rows_in_order_and_refuses_others():
    data = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    hasher = PixelHasher("uint16", 2, 3, 4)
    hasher.update(data[:, :1, :], Window(0, 0, 4, 1))
    hasher.update(data[:, 1:2, :3], Window(0, 1, 3, 1))
    hasher.update(data[:, 1:2, 3:], Window(3, 1, 1, 1))
    with pytest.raises(ValueError, match="only 2 of 3 rows"):
        hasher.hexdigest()
    hasher.update(data[:, 2:, :], Window(0, 2, 4, 1))
    assert hasher.hexdigest() == _reference_digest(data)
    other = PixelHasher("uint16", 2, 3, 4)
    with pytest.raises(ValueError, match="not the next one"):
        other.update(data[:, 1:, :], Window(0, 1, 4, 2))
