"""Drive one run directory to its end, like DAGMan: run Snakemake, then, whatever it returned,
aggregate every manifest that the workflow did not (the FINAL node), so outcome CSVs always appear.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cog_pipeline import WORKFLOW_DIR
from cog_pipeline.control import tickslog
from cog_pipeline.control.progress import wait_with_progress
from cog_pipeline.core import config as config_model
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.rundir import RunDir
from cog_pipeline.work.outcomes import manifest_finished

log = logging.getLogger(__name__)

SNAKEFILE = WORKFLOW_DIR / "Snakefile"
DEFAULT_CONFIG = WORKFLOW_DIR / "config" / "config.yaml"


def default_config() -> dict[str, Any]:
    """The workflow's defaults (the schema's, as config/config.yaml states them), validated."""
    return config_model.load()


def load_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's config as a mapping (``RunDir(run_dir).config.data``: the defaults deep-merged with its
    run.yaml, validated, exactly as Snakemake sees it)."""
    return RunDir(run_dir).config.data


def snakemake_command(run_dir: Path, executor: str, cores: int, extra: list[str] | None = None) -> list[str]:
    """The Snakemake command line for a run directory (never carries secrets)."""
    if not SNAKEFILE.is_file():
        raise PipelineError(
            f"workflow not found at {WORKFLOW_DIR}: reinstall cog-pipeline (pip install . from "
            "its source tree, or its wheel; both ship the workflow)"
        )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(run_dir),
        "--cores",
        str(cores),
        "--keep-going",
        "--rerun-incomplete",
        "--nocolor",
        # The batches are independent and alike: Snakemake's default ILP scheduler only adds a solver run per
        # scheduling round (300 alike jobs on 2 cores: 7.9 s with it, 5.5 s greedy; docs/performance.md).
        "--scheduler",
        "greedy",
    ]
    if executor == "htcondor":
        from cog_pipeline import htcondor

        config = RunDir(run_dir).config
        cmd += htcondor.snakemake_args(Path(run_dir), config.run_id, config.pattern)
    elif executor != "local":
        raise PipelineError(f"unknown executor {executor!r} (use local or htcondor)")
    return cmd + list(extra or [])


def drive_argv(run_dir: Path, executor: str) -> list[str]:
    """Arguments of ``cog-pipeline`` that drive this run directory (what an HTCondor driver job runs)."""
    return ["drive", str(Path(run_dir).resolve()), "--executor", executor]


def snakemake_env(executor: str, dry_run: bool = False) -> dict[str, str]:
    """Snakemake's environment: this one, plus ``CONDOR_CONFIG=/dev/null`` for a local run or any dry run
    (neither talks to a schedd) when none is set (Snakemake loads every installed executor plugin, and the
    htcondor bindings otherwise warn that no HTCondor configuration was found)."""
    env = dict(os.environ)
    if (executor == "local" or dry_run) and "CONDOR_CONFIG" not in env:
        env["CONDOR_CONFIG"] = os.devnull
    return env


def run_snakemake(run_dir: Path, executor: str, cores: int, extra: list[str] | None = None) -> int:
    """Run Snakemake in the run directory, its output appended to logs/snakemake.log."""
    cmd = snakemake_command(run_dir, executor, cores, extra)
    log_path = Path(run_dir) / "logs" / "snakemake.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=run_dir, env=snakemake_env(executor))
        return wait_with_progress(process, Path(run_dir))


def finish(run_dir: Path) -> tuple[int, list[dict[str, Any]]]:
    """Aggregate every manifest the workflow left without an outcome; return (exit code, summaries). The
    run's outcome (counts, manifests, report) is one line of the working directory's ticks.log."""
    run = RunDir(run_dir)
    config = run.config.data
    summaries, code = [], 0
    for manifest in run.manifests:
        path = run.outcome(manifest.id)
        if not manifest_finished(run_dir, manifest.id):  # the rule did not run, or stopped half-way
            log.info("aggregating %s after the workflow (final step)", manifest.raw_key)
            from cog_pipeline.work.aggregate import aggregate_manifest  # here: STAC and rasterio, for this only

            try:
                aggregate_manifest(config, run_dir, manifest.id)
            except PipelineError as exc:
                log.error("%s", exc)
                code = 1
                continue
        summaries.append(json.loads(path.read_text(encoding="utf-8")))
    if len(summaries) > 1:
        publish_report(run_dir, config)
    tickslog.record_outcome(run, summaries)
    return code, summaries


def publish_report(run_dir: Path, config: dict[str, Any]) -> None:
    """Each manifest's aggregate already wrote and uploaded the report of what was aggregated by then; with
    several manifests, upload the complete one beside each of them (best effort: never fatal)."""
    from cog_pipeline.work.aggregate import publish_report as aggregate_report

    try:
        aggregate_report(run_dir, config, image_logs_of=())  # each manifest's aggregate wrote its image logs
    except PipelineError as exc:
        log.warning("combined run report not published: %s", exc)


def drive(run_dir: Path, executor: str = "local", cores: int = 2) -> tuple[int, list[dict[str, Any]]]:
    """Run the workflow then the final aggregate; exit code 0 when every manifest has its outcome CSVs."""
    run_dir = Path(run_dir).resolve()
    status = run_snakemake(run_dir, executor, cores)
    if status != 0:
        log.warning(
            "Snakemake exited with %d (see %s); aggregating what was done", status, run_dir / "logs" / "snakemake.log"
        )
    try:
        code, summaries = finish(run_dir)
    finally:
        if executor == "htcondor":
            from cog_pipeline import htcondor

            htcondor.cleanup_run(RunDir(run_dir).config.run_id)
    return code, summaries


def job_stats(output: str) -> str:
    """The first "Job stats:" table of Snakemake's output (a dry run prints it twice), without the banner."""
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        return ""
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


def dry_run(run_dir: Path, executor: str = "local", cores: int = 2) -> int:
    """Print the workflow's job plan for the run directory once (Snakemake's job counts; no banner with the
    host and user) without running anything. Snakemake's whole output is printed when it fails."""
    cmd = snakemake_command(run_dir, executor, cores, ["--dry-run", "--quiet", "host", "rules"])
    proc = subprocess.run(
        cmd, cwd=run_dir, check=False, env=snakemake_env(executor, dry_run=True), capture_output=True, text=True
    )
    table = job_stats(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0 or not table:
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        return proc.returncode
    print(f"Workflow plan (snakemake --dry-run):\n{table}")
    return 0
