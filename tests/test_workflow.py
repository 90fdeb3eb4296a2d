"""The Snakemake workflow itself: lint, config validation, and the batch plan."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from cog_pipeline import WORKFLOW_DIR

SNAKEFILE = str(WORKFLOW_DIR / "Snakefile")


def snakemake(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", SNAKEFILE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def make_run_dir(path, rows, extra=None, manifests=1):
    (path / "manifests").mkdir(parents=True)
    entries = []
    for i in range(1, manifests + 1):
        name = f"set{i}-processing-20261125-000000.csv"
        (path / "manifests" / name).write_text("".join(f"img/{i}/{n}.tif,3\n" for n in range(rows)))
        entries.append(
            {
                "id": f"m{i}",
                "csv": f"manifests/{name}",
                "key": name,
                "raw_key": f"set{i}-raw.csv",
                "stem": f"set{i}-",
                "timestamp": "20261125-000000",
            }
        )
    config = {
        "run_id": "20261125-000000",
        "pattern": "*raw.csv",
        "s3": {"endpoint_url": "http://127.0.0.1:9", "input_bucket": "in-bucket", "output_bucket": "out-bucket"},
        "manifests": entries,
        **(extra or {}),
    }
    (path / "run.yaml").write_text(yaml.safe_dump(config))
    return path


def test_lint_is_clean(tmp_path):
    proc = snakemake(tmp_path, "--lint")
    assert proc.returncode == 0, proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("rows,batch_size,batches", [(0, 20, 0), (1, 20, 1), (40, 20, 2), (45, 20, 3)])
def test_plan_has_one_job_per_batch(tmp_path, rows, batch_size, batches):
    run = make_run_dir(tmp_path / "run", rows, {"batch_size": batch_size})
    proc = snakemake(run, "-n", "--cores", "2", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in proc.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert counts.get("convert_batch", 0) == batches
    assert counts["aggregate"] == 1


def test_plan_covers_every_manifest_of_a_run(tmp_path):
    run = make_run_dir(tmp_path / "run", 5, {"batch_size": 2}, manifests=2)
    proc = snakemake(run, "-n", "--cores", "2", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr
    assert "convert_batch        6" in proc.stdout and "aggregate            2" in proc.stdout


def test_invalid_config_is_refused_with_a_clear_message(tmp_path):
    run = make_run_dir(tmp_path / "run", 1, {"cog": {"compress": "WINZIP"}})
    proc = snakemake(run, "-n", "--cores", "1")
    assert proc.returncode != 0
    assert "WINZIP" in proc.stdout + proc.stderr


def test_shipped_config_and_schema_defaults_agree():
    """config/config.yaml and the schema's defaults state the same job sizing (one core per batch job,
    20 images per batch: see docs/performance.md)."""
    config = yaml.safe_load((WORKFLOW_DIR / "config" / "config.yaml").read_text())
    schema = yaml.safe_load((WORKFLOW_DIR / "config" / "config.schema.yaml").read_text())
    defaults = {k: v["default"] for k, v in schema["properties"].items() if "default" in v}
    assert {k: config[k] for k in defaults} == defaults
    assert (config["threads_per_job"], config["batch_size"]) == (1, 20)
