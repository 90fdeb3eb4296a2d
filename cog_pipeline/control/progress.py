"""A progress bar for a foreground run: images done / total, failures, rate and ETA.

Counted from the per-batch status files while Snakemake runs (each batch appends one JSON line per
finished image to ``status/<m>/batch-<n>.jsonl.tmp``, renamed when the batch ends): one directory
listing and a few small reads per second, nothing more. Shown only when standard output is a
terminal (rich); quiet in logs, cron jobs, HTCondor jobs and tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cog_pipeline.core.naming import RUN_CONFIG

POLL_SECONDS = 1.0
_FAILED = b'"status": "failed"'


def images_total(run_dir: Path) -> int:
    """Rows to convert in a run (accepted rows of every claimed manifest)."""
    from cog_pipeline.work.batch import manifest_entries

    config = yaml.safe_load((Path(run_dir) / RUN_CONFIG).read_text(encoding="utf-8")) or {}
    return sum(len(manifest_entries(run_dir, m)) for m in config.get("manifests", []))


def count_records(run_dir: Path) -> tuple[int, int]:
    """(images recorded so far, of which failed): finished batches plus the ones in progress."""
    done = failed = 0
    for path in Path(run_dir).glob("status/*/batch-*.jsonl*"):
        try:
            with open(path, "rb") as fh:
                for line in fh:
                    if line.strip():
                        done += 1
                        failed += _FAILED in line
        except OSError:  # renamed between the listing and the open: counted at the next poll
            continue
    return done, failed


def _columns() -> list[Any]:
    from rich.progress import (BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Images per second (or per minute when slow), from rich's moving estimate."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if not speed:
                return Text("-- img/s", style="progress.data.speed")
            if speed < 0.1:
                return Text(f"{speed * 60:.1f} img/min", style="progress.data.speed")
            return Text(f"{speed:.2f} img/s", style="progress.data.speed")

    return [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
            TextColumn("{task.fields[failed]}", style="red"), RateColumn(), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn()]


def wait_with_progress(process: subprocess.Popen, run_dir: Path, show: bool | None = None) -> int:
    """Wait for ``process``; meanwhile draw a progress bar when stdout is a terminal. Returns its exit code."""
    show = sys.stdout.isatty() if show is None else show
    if not show:
        return process.wait()
    from rich.progress import Progress

    def update() -> None:
        done, failed = count_records(run_dir)
        bar.update(task, completed=done, failed=f"{failed} failed" if failed else "",
                   description="converting" if done < total else "converted")

    try:
        total = images_total(run_dir)
    except Exception:  # noqa: BLE001 - a bar is a nicety: never stop a run for it
        return process.wait()
    with Progress(*_columns(), transient=False) as bar:
        task = bar.add_task("converting", total=total, failed="")
        while True:
            try:
                code = process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                update()
                continue
            update()
            return code
