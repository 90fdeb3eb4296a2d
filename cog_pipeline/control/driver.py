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
from cog_pipeline.core import config as config_model
from cog_pipeline.work.aggregate import aggregate_manifest
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import RUN_CONFIG, ManifestKeys, outcome_path
from cog_pipeline.control.progress import wait_with_progress

log = logging.getLogger(__name__)

SNAKEFILE = WORKFLOW_DIR / "Snakefile"
DEFAULT_CONFIG = WORKFLOW_DIR / "config" / "config.yaml"


def default_config() -> dict[str, Any]:
    """The workflow's defaults (the schema's, as config/config.yaml states them), validated."""
    return config_model.load()


def load_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's config: the defaults deep-merged with its run.yaml (run values win), validated, exactly as
    Snakemake sees it."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise PipelineError(f"{path} not found: is {run_dir} a workflow-run directory?")
    return config_model.load(run=config_model.read_file(path, "run config"), source=str(path))


def snakemake_command(run_dir: Path, executor: str, cores: int, extra: list[str] | None = None) -> list[str]:
    """The Snakemake command line for a run directory (never carries secrets)."""
    if not SNAKEFILE.is_file():
        raise PipelineError(f"workflow not found at {WORKFLOW_DIR}: reinstall cog-pipeline (pip install . from "
                            "its source tree, or its wheel; both ship the workflow)")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(run_dir),
           "--cores", str(cores), "--keep-going", "--rerun-incomplete", "--nocolor"]
    if executor == "htcondor":
        from cog_pipeline import htcondor

        config = load_run_config(run_dir)
        cmd += htcondor.snakemake_args(Path(run_dir), config["run_id"], config.get("pattern", ""))
    elif executor != "local":
        raise PipelineError(f"unknown executor {executor!r} (use local or htcondor)")
    return cmd + list(extra or [])


def drive_argv(run_dir: Path, executor: str) -> list[str]:
    """Arguments of ``cog-pipeline`` that drive this run directory (what an HTCondor driver job runs)."""
    return ["drive", str(Path(run_dir).resolve()), "--executor", executor]


def snakemake_env(executor: str) -> dict[str, str]:
    """Snakemake's environment: this one, plus ``CONDOR_CONFIG=/dev/null`` for a local run on a machine
    without HTCondor (Snakemake loads every installed executor plugin, and the htcondor bindings
    otherwise warn that no HTCondor configuration was found)."""
    env = dict(os.environ)
    if executor == "local" and "CONDOR_CONFIG" not in env:
        env["CONDOR_CONFIG"] = os.devnull
    return env


def run_snakemake(run_dir: Path, executor: str, cores: int, extra: list[str] | None = None) -> int:
    """Run Snakemake in the run directory, its output appended to logs/snakemake.log."""
    cmd = snakemake_command(run_dir, executor, cores, extra)
    log_path = Path(run_dir) / "logs" / "snakemake.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=run_dir,
                                   env=snakemake_env(executor))
        return wait_with_progress(process, Path(run_dir))


def finish(run_dir: Path) -> tuple[int, list[dict[str, Any]]]:
    """Aggregate every manifest the workflow left without an outcome; return (exit code, summaries)."""
    config = load_run_config(run_dir)
    summaries, code = [], 0
    for manifest in config.get("manifests", []):
        path = outcome_path(run_dir, manifest["id"])
        if not path.is_file():
            log.info("aggregating %s after the workflow (final step)", manifest["raw_key"])
            try:
                aggregate_manifest(config, run_dir, manifest["id"])
            except PipelineError as exc:
                log.error("%s", exc)
                code = 1
                continue
        summaries.append(json.loads(path.read_text(encoding="utf-8")))
    if summaries:
        publish_report(run_dir, config)
    return code, summaries


def publish_report(run_dir: Path, config: dict[str, Any]) -> None:
    """Write report.html and logs/images/ (one log per image), and upload the report beside each manifest's
    outcome CSVs (best effort: never fatal)."""
    from cog_pipeline.storage import s3
    from cog_pipeline.work.report import write_report

    try:
        report = write_report(run_dir, config).read_bytes()
        client = s3.make_client(s3.S3Settings.from_config(config["s3"]))
        for manifest in config.get("manifests", []):
            keys = ManifestKeys.from_run(manifest)
            s3.put_bytes(client, config["s3"]["input_bucket"], keys.report, report, content_type="text/html")
    except Exception as exc:  # noqa: BLE001 - the outcome CSVs are what counts
        log.warning("run report not published: %s", s3.describe_error(exc))


def drive(run_dir: Path, executor: str = "local", cores: int = 2) -> tuple[int, list[dict[str, Any]]]:
    """Run the workflow then the final aggregate; exit code 0 when every manifest has its outcome CSVs."""
    run_dir = Path(run_dir).resolve()
    status = run_snakemake(run_dir, executor, cores)
    if status != 0:
        log.warning("Snakemake exited with %d (see %s); aggregating what was done", status,
                    run_dir / "logs" / "snakemake.log")
    try:
        code, summaries = finish(run_dir)
    finally:
        if executor == "htcondor":
            from cog_pipeline import htcondor

            htcondor.cleanup_run(load_run_config(run_dir)["run_id"])
    return code, summaries


def dry_run(run_dir: Path, executor: str = "local", cores: int = 2) -> int:
    """Print Snakemake's job plan for the run directory without running anything."""
    cmd = snakemake_command(run_dir, executor, cores, ["--dry-run", "--quiet", "rules"])
    return subprocess.run(cmd, cwd=run_dir, check=False, env=snakemake_env(executor)).returncode
