"""One config model (cog_pipeline/config.py): the schema's defaults and rules, one loader for the tick,
the workflow, ``convert`` and the demo, and a bad config refused before anything is claimed."""

from __future__ import annotations

import pytest
import rasterio
import yaml

from cog_pipeline import WORKFLOW_DIR
from cog_pipeline.core import config
from cog_pipeline.ui.cli import main
from cog_pipeline.core.conversion import RESAMPLINGS, cog_options_from_config
from cog_pipeline.control.driver import load_run_config
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import RUN_CONFIG
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects, s3_cli_flags


def test_the_workflow_config_states_exactly_the_schema_defaults():
    stated = yaml.safe_load((WORKFLOW_DIR / "config" / "config.yaml").read_text())
    assert stated == config.schema_defaults()


def test_schema_enums_are_the_conversion_options_lists():
    cog = config.schema()["properties"]["cog"]["properties"]
    assert tuple(cog["overview_resampling"]["enum"]) == RESAMPLINGS
    assert set(config.load()["cog"]) == set(cog)


@pytest.mark.parametrize(
    ("run", "key", "rule"),
    [
        ({"cog": {"blocksize": 100}}, "cog.blocksize", "multiple of 16"),
        ({"cog": {"level": 5}}, "cog.level", "LZW has no compression level"),
        ({"cog": {"compress": "JPEG"}}, "cog.compress", "is not one of"),
        ({"cog": {"overview_resampling": "sideways"}}, "cog.overview_resampling", "is not one of"),
        ({"jpeg": {"quality": 0}}, "jpeg.quality", "minimum"),
        ({"batchsize": 10}, "(top level)", "'batchsize' was unexpected"),
        ({"cog": {"blocksise": 512}}, "cog", "'blocksise' was unexpected"),
        ({"batch_size": "20"}, "batch_size", "is not of type 'integer'"),
    ],
)
def test_bad_values_are_one_line_naming_the_key_and_the_rule(run, key, rule):
    with pytest.raises(PipelineError) as caught:
        config.load(run=run)
    message = str(caught.value)
    assert key in message and rule in message and "\n" not in message


def test_names_gdal_takes_in_any_case_are_accepted_and_normalised():
    loaded = config.load(
        run={"cog": {"compress": "lzw", "overview_resampling": "GAUSS", "predictor": "standard", "num_threads": 2}}
    )
    assert (loaded["cog"]["compress"], loaded["cog"]["overview_resampling"]) == ("LZW", "gauss")
    assert (loaded["cog"]["predictor"], loaded["cog"]["num_threads"]) == ("STANDARD", "2")
    cog_options_from_config(loaded["cog"])  # and the conversion options agree


def test_layers_deep_merge_site_file_then_run_values(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("batch_size: 5\ncog:\n  compress: DEFLATE\n  level: 6\n")
    loaded = config.load(site, {"cog": {"level": 9}})
    assert loaded["batch_size"] == 5 and loaded["cog"]["compress"] == "DEFLATE" and loaded["cog"]["level"] == 9
    assert loaded["cog"]["blocksize"] == 512 and loaded["jpeg"]["quality"] == 80  # untouched defaults stay


def test_a_run_config_is_deep_merged_as_snakemake_does(tmp_path):
    """The driver used a shallow update: a run.yaml with one cog key lost every other cog default."""
    (tmp_path / RUN_CONFIG).write_text(yaml.safe_dump({"cog": {"compress": "ZSTD"}, "batch_size": 3}))
    loaded = load_run_config(tmp_path)
    assert loaded["cog"]["compress"] == "ZSTD" and loaded["cog"]["overview_resampling"] == "average"
    assert loaded["batch_size"] == 3


def tick_flags(settings, workdir):
    return ["tick", *s3_cli_flags(settings), "--workdir", str(workdir)]


def test_a_bad_site_config_is_refused_before_claiming(seed, buckets, settings, samples, tmp_path, capsys):
    """The issue's reproduction: blocksize 100 used to claim the manifest and fail every row."""
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "a/byte.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="m-raw.csv", Body=b"a/byte.tif,1\n")
    site = tmp_path / "site.yaml"
    site.write_text("cog:\n  blocksize: 100\n")
    before = all_objects(seed, INPUT_BUCKET)
    code = main([*tick_flags(settings, tmp_path / "work"), "--config", str(site)])
    err = capsys.readouterr().err
    assert code == 2 and "cog.blocksize: 100 is not a multiple of 16" in err and str(site) in err
    assert all_objects(seed, INPUT_BUCKET) == before, "something was claimed or written"
    assert not list((tmp_path / "work").glob("workflow-run-*"))


def test_a_lossy_preset_without_a_bound_is_refused_before_claiming(seed, buckets, settings, samples, tmp_path, capsys):
    """The presets' typed rules (beyond the schema) run in the tick too, before anything is claimed."""
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "a/byte.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="m-raw.csv", Body=b"a/byte.tif,1\n")
    site = tmp_path / "site.yaml"
    site.write_text("presets:\n  enabled: true\n  imagery: {compress: WEBP, quality: 80}\n")
    before = all_objects(seed, INPUT_BUCKET)
    code = main([*tick_flags(settings, tmp_path / "work"), "--config", str(site)])
    err = capsys.readouterr().err
    assert code == 2 and "presets" in err and "imagery" in err and str(site) in err, err
    assert all_objects(seed, INPUT_BUCKET) == before, "something was claimed or written"
    assert not list((tmp_path / "work").glob("workflow-run-*"))


def test_a_missing_config_file_is_a_clear_error(settings, tmp_path, capsys):
    assert main([*tick_flags(settings, tmp_path), "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_the_site_config_reaches_run_yaml_and_the_outputs(seed, buckets, settings, samples, tmp_path):
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "a/byte.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="m-raw.csv", Body=b"a/byte.tif,1\n")
    site = tmp_path / "site.yaml"
    site.write_text("batch_size: 7\ncog:\n  compress: deflate\n")
    assert main([*tick_flags(settings, tmp_path / "work"), "--config", str(site)]) == 0
    run_yaml = yaml.safe_load(next((tmp_path / "work").glob(f"workflow-run-*/{RUN_CONFIG}")).read_text())
    assert run_yaml["batch_size"] == 7 and run_yaml["cog"]["compress"] == "DEFLATE"
    assert run_yaml["cog"]["blocksize"] == 512, "run.yaml must hold the whole config, not only the site's keys"
    cog = tmp_path / "out.tif"
    cog.write_bytes(seed.get_object(Bucket=OUTPUT_BUCKET, Key="a/byte.tif")["Body"].read())
    with rasterio.open(cog) as src:
        assert src.compression.name.upper() == "DEFLATE"


def test_convert_uses_the_same_loader_and_flags_win(samples, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("cog:\n  compress: ZSTD\njpeg:\n  quality: 50\n")
    out = tmp_path / "a.tif"
    assert (
        main(
            [
                "convert",
                str(samples / "byte.tif"),
                "--cog",
                str(out),
                "--jpeg",
                str(tmp_path / "a.jpg"),
                "--config",
                str(site),
            ]
        )
        == 0
    )
    with rasterio.open(out) as src:
        assert src.compression.name.upper() == "ZSTD"
    assert (
        main(
            [
                "convert",
                str(samples / "byte.tif"),
                "--cog",
                str(out),
                "--jpeg",
                str(tmp_path / "a.jpg"),
                "--config",
                str(site),
                "--compress",
                "lzw",
            ]
        )
        == 0
    )
    with rasterio.open(out) as src:
        assert src.compression.name.upper() == "LZW"
    bad = tmp_path / "bad.yaml"
    bad.write_text("cog:\n  blocksize: 100\n")
    assert (
        main(
            [
                "convert",
                str(samples / "byte.tif"),
                "--cog",
                str(out),
                "--jpeg",
                str(tmp_path / "a.jpg"),
                "--config",
                str(bad),
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--quality", "150"], "jpeg.quality: 150 is greater than the maximum of 100"),
        (["--blocksize", "100"], "cog.blocksize: 100 is not a multiple of 16"),
    ],
)
def test_bad_convert_flags_are_one_line_not_a_traceback(samples, tmp_path, capsys, flags, message):
    code = main(
        [
            "convert",
            str(samples / "byte.tif"),
            "--cog",
            str(tmp_path / "a.tif"),
            "--jpeg",
            str(tmp_path / "a.jpg"),
            *flags,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_convert_codec_names_take_any_case_and_unknown_ones_are_refused_by_argparse(samples, tmp_path, capsys):
    out = tmp_path / "a.tif"
    assert (
        main(
            [
                "convert",
                str(samples / "byte.tif"),
                "--cog",
                str(out),
                "--jpeg",
                str(tmp_path / "a.jpg"),
                "--compress",
                "deflate",
                "--predictor",
                "standard",
            ]
        )
        == 0
    )
    with rasterio.open(out) as src:
        assert src.compression.name.upper() == "DEFLATE"
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "convert",
                str(samples / "byte.tif"),
                "--cog",
                str(out),
                "--jpeg",
                str(tmp_path / "a.jpg"),
                "--compress",
                "FOO",
            ]
        )
    assert exited.value.code == 2 and "invalid choice: 'FOO'" in capsys.readouterr().err
