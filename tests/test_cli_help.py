"""The command line speaks to users: every command and option explains itself; outputs name where things are."""

from __future__ import annotations

import argparse

import pytest

from cog_pipeline.ui import cli

#: `convert`'s options are tested with the converter (tests/test_raster_console.py).
COMMANDS = ["tick", "drive", "aggregate", "demo", "start", "stop", "status", "check-endpoint", "retry"]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_top_level_help_is_for_users(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "argparse" not in out and "typed functions" not in out
    assert "cog-pipeline demo" in out and "COMMAND --help" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_and_option_has_help(command):
    parser = subparsers()[command]
    assert parser.description and len(parser.description) > 20, command
    undocumented = [a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not undocumented, f"{command}: {undocumented}"


def test_aggregate_and_drive_print_the_report_path(tmp_path, monkeypatch, capsys):
    from cog_pipeline.control import driver

    run = tmp_path / "workflow-run-20261201-101010"
    (run / "logs" / "images").mkdir(parents=True)
    (run / "report.html").write_text("<!DOCTYPE html>")
    monkeypatch.setattr(driver, "finish", lambda run_dir: (0, []))
    monkeypatch.setattr(driver, "drive", lambda run_dir, executor, cores: (0, []))
    assert cli.main(["aggregate", "--run-dir", str(run)]) == 0
    assert f"Run report: {run / 'report.html'}" in capsys.readouterr().out
    assert cli.main(["drive", str(run)]) == 0
    assert f"Run report: {run / 'report.html'}" in capsys.readouterr().out
