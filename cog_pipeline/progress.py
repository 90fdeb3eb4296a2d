"""A progress bar for a foreground run: images done / total, rate and ETA, from the per-batch status files.

Shown only when standard output is a terminal (rich); quiet in logs, cron jobs and tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .naming import RUN_CONFIG

POLL_SECONDS = 1.0


def images_total(run_dir: Path) -> int:
    """Rows to convert in a run (accepted rows of every claimed manifest)."""
    from .batch import manifest_entries

    config = yaml.safe_load((Path(run_dir) / RUN_CONFIG).read_text(encoding="utf-8")) or {}
    return sum(len(manifest_entries(run_dir, m)) for m in config.get("manifests", []))


def images_done(run_dir: Path) -> int:
    """Per-image records written so far (finished batches plus the ones in progress)."""
    count = 0
    for path in Path(run_dir).glob("status/*/batch-*.jsonl*"):
        try:
            with open(path, "rb") as fh:
                count += sum(1 for line in fh if line.strip())
        except OSError:
            continue
    return count


def wait_with_progress(process: subprocess.Popen, run_dir: Path, show: bool | None = None) -> int:
    """Wait for ``process``; meanwhile draw a progress bar when stdout is a terminal. Returns its exit code."""
    show = sys.stdout.isatty() if show is None else show
    if not show:
        return process.wait()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    columns: list[Any] = [TextColumn("converting"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                          TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("images", total=images_total(run_dir))
        while True:
            try:
                code = process.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                bar.update(task, completed=images_done(run_dir))
                continue
            bar.update(task, completed=images_done(run_dir))
            return code
