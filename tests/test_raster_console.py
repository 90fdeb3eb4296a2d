"""GDAL's chatter goes to the logs once per message, not to the console; the ``convert`` command's wording,
options and errors (issue 14, "convert and the CLI" and "console noise")."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp

from cog_pipeline.core.errors import ImageError
from cog_pipeline.raster.convert import convert_file, write_cog, write_jpeg
from cog_pipeline.raster.gdalerrors import GDAL_LOGGER, quiet_gdal

#: EPSG:4326 with another ellipsoid: GDAL warns that the GeoTIFF keys differ from the EPSG registry,
#: once per dataset opened (several times in one conversion).
ODD_4326 = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378000,298.257223563]],PRIMEM["Greenwich",0],'
    'UNIT["degree",0.0174532925199433],AUTHORITY["EPSG","4326"]]'
)


def odd_datum_tif(path: Path) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=1,
        dtype="uint8",
        crs=CRS.from_wkt(ODD_4326),
        transform=Affine(0.01, 0, 10, 0, -0.01, 50),
    ) as ds:
        ds.write(np.arange(64 * 64, dtype=np.uint32).reshape(1, 64, 64).astype(np.uint8))
    return path


def rgba_with_nodata_tif(path: Path) -> Path:
    """Nodata and an alpha band: rasterio warns NodataShadowWarning on every read of the masks."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=4,
        dtype="uint8",
        nodata=0,
        crs="EPSG:32618",
        transform=Affine(10, 0, 0, 0, -10, 0),
    ) as ds:
        ds.write(np.random.default_rng(1).integers(1, 255, (4, 64, 64), dtype=np.uint8))
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return path


def plain_tif(path: Path, count: int = 1) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=40,
        height=30,
        count=count,
        dtype="uint8",
        crs="EPSG:32618",
        transform=Affine(10, 0, 0, 0, -10, 0),
    ) as ds:
        ds.write(np.full((count, 30, 40), 9, np.uint8))
    return path


def gdal_records(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= level]


# --------------------------------------------------------------------------------------------- in the logs, once


def test_a_repeated_gdal_warning_is_logged_once_with_its_count(tmp_path, caplog):
    src = odd_datum_tif(tmp_path / "odd.tif")
    caplog.set_level(logging.INFO)
    convert_file(src, tmp_path / "odd.cog.tif", tmp_path / "odd.jpg")
    records = gdal_records(caplog)
    assert [r.name for r in records] == [GDAL_LOGGER]
    (record,) = records
    assert record.levelno == logging.INFO  # in the batch log and the image's own log, not a console warning
    assert record.getMessage().startswith(
        "GDAL warning: CPLE_AppDefined in The definition of geographic CRS "
        "EPSG:4326 got from GeoTIFF keys is not the same as the one from the "
        "EPSG registry"
    )
    assert "(repeated " in record.getMessage()


def test_a_python_warning_of_rasterio_is_logged_not_printed(tmp_path, caplog):
    src = rgba_with_nodata_tif(tmp_path / "rgba.tif")
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as printed:
        warnings.simplefilter("always")
        convert_file(src, tmp_path / "rgba.cog.tif", tmp_path / "rgba.jpg")
    assert [w.category.__name__ for w in printed] == []
    messages = [r.getMessage() for r in gdal_records(caplog) if r.name == GDAL_LOGGER]
    assert (
        len(
            [
                m
                for m in messages
                if m.startswith("NodataShadowWarning: The dataset's nodata attribute is shadowing the alpha band")
            ]
        )
        == 1
    )
    assert not any(str(tmp_path) in m for m in messages)  # no source path of a Python warning


def test_the_echo_of_a_raised_gdal_error_is_debug_only(tmp_path, caplog):
    src = tmp_path / "garbage.tif"
    src.write_bytes(b"II*\x00\x08\x00\x00\x00" + bytes(24))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        convert_file(src, tmp_path / "g.tif", tmp_path / "g.jpg")
    echoes = [r for r in caplog.records if "GDAL signalled an error" in r.getMessage()]
    assert echoes and {r.levelno for r in echoes} == {logging.DEBUG} and {r.name for r in echoes} == {GDAL_LOGGER}
    assert len(echoes) == len({r.getMessage() for r in echoes})  # each once


def test_quiet_gdal_restores_rasterio_logging(caplog):
    caplog.set_level(logging.INFO)
    rasterio_log = logging.getLogger("rasterio")
    before = (rasterio_log.propagate, list(rasterio_log.handlers))
    with quiet_gdal(), quiet_gdal():  # nested: the inner one leaves the collecting to the outer
        logging.getLogger("rasterio._env").warning("CPLE_AppDefined in once")
        logging.getLogger("rasterio._env").warning("CPLE_AppDefined in once")
    assert (rasterio_log.propagate, list(rasterio_log.handlers)) == before
    assert [r.getMessage() for r in caplog.records if r.name == GDAL_LOGGER] == [
        "GDAL warning: CPLE_AppDefined in once (repeated 2 times)"
    ]


# --------------------------------------------------------------------------------------------- output folders


@pytest.mark.parametrize("which", ["cog", "jpeg"])
def test_an_output_in_a_missing_folder_names_the_folder(tmp_path, which):
    src = plain_tif(tmp_path / "x.tif")
    missing = tmp_path / "nodir"
    cog = (missing if which == "cog" else tmp_path) / "x.cog.tif"
    jpeg = (missing if which == "jpeg" else tmp_path) / "x.jpg"
    with pytest.raises(ImageError) as err:
        convert_file(src, cog, jpeg)
    assert err.value.step == which
    name = (cog if which == "cog" else jpeg).name
    assert err.value.message == f"output folder {missing} does not exist (for {name}); create it first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]  # nothing made, no temp name anywhere


def test_single_steps_name_a_missing_output_folder_too(tmp_path):
    src = plain_tif(tmp_path / "x.tif")
    with pytest.raises(ImageError, match=r"^cog: output folder .*nodir does not exist \(for c\.tif\)") as err:
        write_cog(src, tmp_path / "nodir" / "c.tif")
    assert err.value.step == "cog" and ".part" not in err.value.message
    (tmp_path / "file").write_text("")
    with pytest.raises(ImageError, match=r"^jpeg: output folder .*file is not a folder \(for p\.jpg\)"):
        write_jpeg(src, tmp_path / "file" / "p.jpg")


# --------------------------------------------------------------------------------------------- the convert command


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cog_pipeline.ui.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_convert_command_is_quiet_words_its_notes_and_names_a_missing_folder(tmp_path):
    """In a real process, where the command's own stderr log handler is in place."""
    odd_datum_tif(tmp_path / "odd.tif")
    run = cli("convert", "odd.tif", "--cog", "odd.cog.tif", "--jpeg", "odd.jpg", "--bands", "3", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # no GDAL warning, no INFO line
    assert "odd.tif: 64x64, 1 band uint8 -> " in run.stdout
    assert "note: the --bands option says 3 bands, file has 1; using the file's count" in run.stdout
    assert "manifest" not in run.stdout

    verbose = cli("-v", "convert", "odd.tif", "--cog", "odd.cog.tif", "--jpeg", "odd.jpg", cwd=tmp_path)
    assert verbose.returncode == 0
    assert verbose.stderr.count("not the same as the one from the EPSG registry") == 1

    missing = cli("convert", "odd.tif", "--cog", "nodir/x.tif", "--jpeg", "x.jpg", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr == "error: odd.tif: cog: output folder nodir does not exist (for x.tif); create it first\n"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--quality", "150"], "jpeg.quality"),
        (["--blocksize", "100"], "cog.blocksize"),
        (["--level", "30", "--compress", "ZSTD"], "cog.level 30 is out of range for ZSTD (1..22)"),
        (["--bands", "0"], "argument --bands: 0 is not a positive integer"),
        (["--compress", "FOO"], "argument --compress: invalid choice: 'FOO'"),
        (["--predictor", "MAYBE"], "argument --predictor: invalid choice: 'MAYBE'"),
    ],
)
def test_convert_command_refuses_bad_values_in_one_line(tmp_path, args, words, capsys, monkeypatch):
    from cog_pipeline.ui.cli import main

    plain_tif(tmp_path / "x.tif")
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["convert", "x.tif", "--cog", "c.tif", "--jpeg", "p.jpg", *args])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and words in error_lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]


def test_convert_command_passes_predictor_blocksize_and_level(tmp_path, capsys, monkeypatch):
    from cog_pipeline.ui.cli import main

    plain_tif(tmp_path / "x.tif", count=3)
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "convert",
                "x.tif",
                "--cog",
                "c.tif",
                "--jpeg",
                "p.jpg",
                "--compress",
                "deflate",
                "--predictor",
                "standard",
                "--blocksize",
                "256",
                "--level",
                "9",
            ]
        )
        == 0
    )
    assert "3 bands uint8" in capsys.readouterr().out
    with rasterio.open(tmp_path / "c.tif") as cog:
        assert cog.profile["compress"] == "deflate" and cog.block_shapes[0] == (256, 256)
        assert cog.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"


def test_convert_help_explains_every_option(capsys):
    from cog_pipeline.ui.cli import main

    with pytest.raises(SystemExit) as done:
        main(["convert", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in (
        "--compress",
        "--predictor",
        "--level",
        "--blocksize",
        "--overview-resampling",
        "--threads",
        "--quality",
        "--bands",
        "--config",
    ):
        assert option in text
    assert "the GeoTIFF to convert" in text and "a multiple of 16 from 64 to 4096" in text


def test_the_image_log_of_a_batch_gets_each_gdal_warning_once(tmp_path, caplog):
    """What the batch collects into an image's own log (logs/images/<key>.log) while converting it."""
    from cog_pipeline.work.imagelogs import capture

    src = odd_datum_tif(tmp_path / "odd.tif")
    caplog.set_level(logging.INFO)
    record: dict = {}
    with capture(record):
        convert_file(src, tmp_path / "odd.cog.tif", tmp_path / "odd.jpg")
    lines = [line for line in record["log"] if "EPSG registry" in line]
    assert len(lines) == 1 and f"INFO {GDAL_LOGGER}: GDAL warning: CPLE_AppDefined" in lines[0]
