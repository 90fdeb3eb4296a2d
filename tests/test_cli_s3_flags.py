"""The S3 settings a site with a private CA needs (--ca-bundle, --checksums, --delete-fallback): parsed by every
command that talks to S3, passed on by ``start`` to the Crondor's tick, written into run.yaml. Fast: no schedd,
no S3 server (a missing CA bundle fails before any request)."""

from __future__ import annotations

import argparse

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from cog_pipeline import WORKFLOW_DIR
from cog_pipeline.ui import cli
from cog_pipeline.storage import endpoint, s3
from cog_pipeline.core.config import merge
from cog_pipeline.control.rundirs import run_config
from cog_pipeline.storage.s3 import S3Settings
from cog_pipeline.control.tick import TickOptions

SCHEMA = WORKFLOW_DIR / "config" / "config.schema.yaml"
CA_TEXT = "-----BEGIN CERTIFICATE-----\nSENTINEL-CA-CONTENTS\n-----END CERTIFICATE-----\n"
S3_FLAGS = ("--ca-bundle", "--checksums", "--delete-fallback")


@pytest.fixture(autouse=True)
def no_ambient_ca(monkeypatch):
    """The developer's own AWS_CA_BUNDLE must not leak into these tests."""
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)


@pytest.fixture
def ca_file(tmp_path):
    path = tmp_path / "tls" / "site-ca.pem"
    path.parent.mkdir()
    path.write_text(CA_TEXT)
    return path


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options_of(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def command_args(command: str, *extra: str) -> list[str]:
    buckets = {
        "tick": ["--input-bucket", "in-bucket", "--output-bucket", "out-bucket"],
        "start": ["--input-bucket", "in-bucket", "--output-bucket", "out-bucket"],
        "status": ["--input-bucket", "in-bucket"],
        "retry": ["--input-bucket", "in-bucket", "m-failed-20260101-000000.csv"],
    }[command]
    return [command, "-e", "http://127.0.0.1:9", *buckets, *extra]


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------


def test_every_command_that_talks_to_s3_has_the_flags():
    with_s3 = {name for name, p in subcommands().items() if "--endpoint" in options_of(p)}
    assert with_s3 >= {"tick", "start", "status", "retry"}
    for name in with_s3:
        assert set(S3_FLAGS) <= options_of(subcommands()[name]), name


@pytest.mark.parametrize("command", ["tick", "start", "status", "retry"])
def test_flags_parse_into_s3_settings(command, ca_file):
    args = cli.build_parser().parse_args(
        command_args(
            command, "--ca-bundle", str(ca_file), "--checksums", "when_supported", "--delete-fallback", "verify-first"
        )
    )
    settings = cli._settings(args)
    assert (settings.ca_bundle, settings.checksums, settings.delete_fallback) == (
        str(ca_file),
        "when_supported",
        "verify-first",
    )
    assert settings.endpoint_url == "http://127.0.0.1:9"


@pytest.mark.parametrize("command", ["tick", "start", "status", "retry"])
def test_flag_defaults_are_the_settings_defaults(command):
    settings = cli._settings(cli.build_parser().parse_args(command_args(command)))
    default = S3Settings()
    assert (
        (settings.ca_bundle, settings.checksums, settings.delete_fallback)
        == (default.ca_bundle, default.checksums, default.delete_fallback)
        == (None, "auto", "refuse")
    )


def test_choices_are_the_modules_values(capsys):
    actions = {opt: a for a in subcommands()["tick"]._actions for opt in a.option_strings}
    assert tuple(actions["--checksums"].choices) == s3.CHECKSUM_MODES
    assert tuple(actions["--delete-fallback"].choices) == endpoint.DELETE_FALLBACKS
    for flag, bad in (("--checksums", "always"), ("--delete-fallback", "yolo")):
        with pytest.raises(SystemExit) as exc:
            cli.build_parser().parse_args(command_args("tick", flag, bad))
        assert exc.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# a missing CA bundle: exit 2, a message naming the path and where it came from
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["tick", "start", "status", "retry"])
def test_missing_ca_bundle_is_a_clear_error(command, tmp_path, capsys):
    missing = tmp_path / "no-such-ca.pem"
    code = cli.main(command_args(command, "--ca-bundle", str(missing)))
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: CA bundle not found: {missing} (given by --ca-bundle / s3.ca_bundle)" in err
    assert "Traceback" not in err


def test_missing_ca_bundle_from_the_environment_names_it(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "env-ca.pem"
    monkeypatch.setenv("AWS_CA_BUNDLE", str(missing))
    assert cli.main(command_args("status")) == 2
    err = capsys.readouterr().err
    assert f"error: CA bundle not found: {missing} (given by AWS_CA_BUNDLE)" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# start: what the Crondor's tick is given
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def started(monkeypatch, tmp_path):
    """Run ``cog-pipeline start ARGS`` with the bucket check and the Crondor's submission recorded, not done;
    returns (exit code, the start_crondor keyword arguments)."""
    from cog_pipeline import htcondor
    from cog_pipeline.control import tick

    calls: dict[str, object] = {}

    def start_crondor(**kwargs):
        calls["crondor"] = kwargs
        return 17

    monkeypatch.setattr(tick, "connect", lambda opts: None)
    monkeypatch.setattr(htcondor, "start_crondor", start_crondor)

    def run(*extra: str) -> tuple[int, dict]:
        code = cli.main(command_args("start", "--workdir", str(tmp_path), *extra))
        return code, calls["crondor"]

    return run


def test_start_passes_the_settings_to_the_tick(started, ca_file, monkeypatch):
    monkeypatch.chdir(ca_file.parent.parent)
    code, crondor = started(
        "--ca-bundle", "tls/site-ca.pem", "--checksums", "when_required", "--delete-fallback", "verify-first"
    )
    assert code == 0
    argv = crondor["tick_argv"]
    assert option(argv, "--ca-bundle") == str(ca_file.resolve())  # absolute: the Crondor runs elsewhere
    assert option(argv, "--checksums") == "when_required"
    assert option(argv, "--delete-fallback") == "verify-first"
    assert not any("SENTINEL-CA-CONTENTS" in a for a in argv)  # the path, never the contents
    # what the tick will make of it: the same settings as start's own
    tick_settings = cli._settings(cli.build_parser().parse_args(argv))
    assert (tick_settings.ca_bundle, tick_settings.checksums, tick_settings.delete_fallback) == (
        str(ca_file.resolve()),
        "when_required",
        "verify-first",
    )


def test_start_turns_aws_ca_bundle_into_a_flag(started, ca_file, monkeypatch):
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_file))
    code, crondor = started()
    assert code == 0
    argv = crondor["tick_argv"]
    assert option(argv, "--ca-bundle") == str(ca_file.resolve())
    assert (option(argv, "--checksums"), option(argv, "--delete-fallback")) == ("auto", "refuse")


def test_start_without_a_ca_bundle_passes_none(started):
    code, crondor = started()
    assert code == 0 and "--ca-bundle" not in crondor["tick_argv"]


# ---------------------------------------------------------------------------------------------
# run.yaml
# ---------------------------------------------------------------------------------------------


def full_config(run: dict) -> dict:
    """run.yaml merged over config/config.yaml, as the workflow validates it."""
    return merge(yaml.safe_load((WORKFLOW_DIR / "config" / "config.yaml").read_text()), run)


def tick_options(**settings) -> TickOptions:
    return TickOptions(
        input_bucket="in-bucket",
        output_bucket="out-bucket",
        settings=S3Settings(endpoint_url="s3.example.org", **settings),
    )


def test_run_config_carries_the_settings(ca_file, monkeypatch):
    monkeypatch.chdir(ca_file.parent)
    config = run_config(
        tick_options(ca_bundle="site-ca.pem", checksums="when_supported", delete_fallback="verify-first"),
        "20260101-000000",
        [],
    )
    section = config["s3"]
    assert section["ca_bundle"] == str(ca_file.resolve())  # absolute
    assert (section["checksums"], section["delete_fallback"]) == ("when_supported", "verify-first")
    text = yaml.safe_dump(config)
    assert "SENTINEL-CA-CONTENTS" not in text
    validate(full_config(yaml.safe_load(text)), str(SCHEMA))
    # batch jobs, drivers and the aggregate build their client from this section
    again = S3Settings.from_config(yaml.safe_load(text)["s3"])
    assert (again.ca_bundle, again.checksums, again.delete_fallback) == (
        str(ca_file.resolve()),
        "when_supported",
        "verify-first",
    )


def test_run_config_records_aws_ca_bundle(ca_file, monkeypatch):
    """Drivers and batch jobs do not inherit the tick's environment: its AWS_CA_BUNDLE goes into run.yaml."""
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca_file))
    assert run_config(tick_options(), "20260101-000000", [])["s3"]["ca_bundle"] == str(ca_file.resolve())


def test_run_config_without_a_ca_bundle():
    config = run_config(tick_options(), "20260101-000000", [])
    assert (config["s3"]["ca_bundle"], config["s3"]["checksums"], config["s3"]["delete_fallback"]) == (
        None,
        "auto",
        "refuse",
    )
    validate(full_config(config), str(SCHEMA))


def test_schema_enums_are_the_modules_values():
    s3_props = yaml.safe_load(SCHEMA.read_text())["properties"]["s3"]["properties"]
    assert tuple(s3_props["checksums"]["enum"]) == s3.CHECKSUM_MODES
    assert tuple(s3_props["delete_fallback"]["enum"]) == endpoint.DELETE_FALLBACKS
    assert "null" in s3_props["ca_bundle"]["type"]


@pytest.mark.parametrize("key, bad", [("checksums", "always"), ("delete_fallback", "yolo"), ("ca_bundle", 5)])
def test_schema_refuses_bad_values(key, bad):
    config = run_config(tick_options(), "20260101-000000", [])
    config["s3"][key] = bad
    with pytest.raises(WorkflowError):
        validate(full_config(config), str(SCHEMA))
