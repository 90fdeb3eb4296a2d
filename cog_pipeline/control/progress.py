"""A progress bar for a foreground run: images done / total, failures, rate and ETA.

Counted from the per-batch status files while Snakemake runs (each batch appends one outcome record per
finished image to ``status/<m>/batch-<n>.jsonl.tmp``, renamed when the batch ends) by
:class:`cog_pipeline.work.outcomes.OutcomeCounter`: one directory listing per second and only the lines
written since the last poll, nothing more. Shown only when standard output is a
terminal (rich); quiet in logs, cron jobs, HTCondor jobs and tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from cog_pipeline.core.rundir import RunDir
from cog_pipeline.work.manifest import read_manifest
from cog_pipeline.work.outcomes import OutcomeCounter, count_outcomes

POLL_SECONDS = 1.0


def images_total(run_dir: Path) -> int:
    """Rows to convert in a run (accepted rows of every claimed manifest)."""
    run = RunDir(run_dir)
    return sum(len(read_manifest(run.manifest_csv(m)).entries) for m in run.manifests)


def count_records(run_dir: Path) -> tuple[int, int]:
    """(images recorded so far, of which failed): finished batches plus the ones in progress."""
    return count_outcomes(run_dir)


def _columns() -> list[Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
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

    return [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TextColumn("{task.fields[failed]}", style="red"),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]


def wait_with_progress(process: subprocess.Popen, run_dir: Path, show: bool | None = None) -> int:
    """Wait for ``process``; meanwhile draw a progress bar when stdout is a terminal. Returns its exit code."""
    show = sys.stdout.isatty() if show is None else show
    if not show:
        return process.wait()
    from rich.progress import Progress

    counter = OutcomeCounter()

    def update() -> None:
        done, failed = counter.count(run_dir)
        bar.update(
            task,
            completed=done,
            failed=f"{failed} failed" if failed else "",
            description="converting" if done < total else "converted",
        )

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
