"""Section 4: planning at scale. ``snakemake -n`` on 10k / 100k-row manifests in a run directory
prepared with the package's own functions, and ``cog-pipeline tick --dry-run`` against the local S3
server (fresh processes: wall time and peak RSS)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import common
import proc
from report import Report
from s3count import CountingS3Server


def _jobs(output: str) -> int | None:
    """Total job count from Snakemake's dry-run 'rules' summary ('total  N')."""
    m = re.search(r"^total\s+(\d+)", output, re.M)
    return int(m.group(1)) if m else None


def snakemake_dry_run(run_dir: Path) -> dict[str, Any]:
    from cog_pipeline.control import driver

    cmd = driver.snakemake_command(run_dir, "local", 2, ["--dry-run", "--quiet", "rules"])
    res = proc.run(cmd, cwd=run_dir, env=common.python_env())
    if res["returncode"] != 0:
        raise RuntimeError(f"snakemake -n failed in {run_dir}:\n{res['output'][-3000:]}")
    res["jobs"] = _jobs(res["output"])
    return res


#: A workflow of many independent, alike jobs (as the batches are), each doing next to nothing: what is left
#: is Snakemake's own cost per job, which the scheduler's choice changes.
_ALIKE_JOBS = """
rule all:
    input: expand("o/{i}", i=range(JOBS))
rule one:
    output: "o/{i}"
    shell: "touch {output}"
"""


def scheduler_overhead(rep: Report, work: Path, jobs: int = 300) -> None:
    """A real Snakemake run of ``jobs`` alike jobs on 2 cores, with the ILP scheduler (Snakemake's default: a
    solver run per scheduling round) and with greedy (what the driver and profiles/htcondor use)."""
    common.fresh_dir(work)
    (work / "Snakefile").write_text(_ALIKE_JOBS.replace("JOBS", str(jobs)), encoding="utf-8")
    for scheduler in ("ilp", "greedy"):
        shutil.rmtree(work / "o", ignore_errors=True)
        shutil.rmtree(work / ".snakemake", ignore_errors=True)
        cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--quiet", "--scheduler", scheduler]
        res = proc.run(cmd, cwd=work, env=common.python_env())
        if res["returncode"] != 0:
            raise RuntimeError(f"snakemake --scheduler {scheduler} failed:\n{res['output'][-3000:]}")
        rep.add(
            "4",
            f"Snakemake run of {jobs} alike jobs, --scheduler {scheduler}: time",
            res["wall"],
            "s",
            load=res["load"],
            note="the driver's choice" if scheduler == "greedy" else "Snakemake's default",
        )


def section4(rep: Report, work: Path, cfg: dict[str, Any]) -> None:
    w = work / "s4"
    common.fresh_dir(w)
    keys = common.key_files(w / "keys")
    from cog_pipeline.control import driver

    batch_size = int(driver.default_config()["batch_size"])
    biggest = max(cfg["plan_rows"])
    for n in cfg["plan_rows"]:
        data = common.manifest_bytes(common.manifest_rows(n))
        run_dir = common.prepare_run_dir(w / f"run-{n}", data, "http://127.0.0.1:9", keys)
        best = min((snakemake_dry_run(run_dir) for _ in range(2 if n == biggest else 1)), key=lambda r: r["wall"])
        target_t, target_m = ("<= 15", "<= 500") if n == biggest else ("", "")
        rep.add(
            "4",
            f"snakemake -n, {n:,} rows (batch_size {batch_size}: {best['jobs']} jobs): time",
            best["wall"],
            "s",
            target_t,
            load=best["load"],
        )
        rep.add("4", f"snakemake -n, {n:,} rows: peak RSS", best["rss_mb"], "MB", target_m, load=best["load"])
        rep.detail(f"section4.snakemake.{n}", {k: v for k, v in best.items() if k != "output"})

    # Reference: one Snakemake job per row (batch_size 1), at the smaller size only (it grows fast).
    n = min(cfg["plan_rows"])
    data = common.manifest_bytes(common.manifest_rows(n))
    run_dir = common.prepare_run_dir(w / f"run-{n}-bs1", data, "http://127.0.0.1:9", keys, batch_size=1)
    one = snakemake_dry_run(run_dir)
    rep.add(
        "4",
        f"reference: snakemake -n, {n:,} rows, batch_size 1 ({one['jobs']} jobs): time",
        one["wall"],
        "s",
        load=one["load"],
        note=f"peak RSS {one['rss_mb']:.0f} MB",
    )
    scheduler_overhead(rep, w / "scheduler")

    # The user-facing command: cog-pipeline tick --dry-run against the local S3 server.
    with CountingS3Server(w / "s3") as srv:
        client = common.client(srv.endpoint, keys)
        client.create_bucket(Bucket=common.INPUT_BUCKET)
        client.create_bucket(Bucket=common.OUTPUT_BUCKET)
        for n in cfg["plan_rows"]:
            client.put_object(
                Bucket=common.INPUT_BUCKET,
                Key=f"plan{n}/bench-raw.csv",
                Body=common.manifest_bytes(common.manifest_rows(n)),
            )
        for n in cfg["plan_rows"]:
            srv.reset_counts()
            cmd = common.cli(
                *common.tick_args(keys, srv.endpoint, f"plan{n}/*raw.csv"),
                "--dry-run",
                "--workdir",
                str(w / "tick"),
            )
            res = proc.run(cmd, cwd=w, env=common.python_env())
            if res["returncode"] != 0:
                raise RuntimeError(f"tick --dry-run failed:\n{res['output'][-3000:]}")
            counts = srv.counts()
            target_t, target_m = ("<= 15", "<= 500") if n == biggest else ("", "")
            rep.add(
                "4",
                f"cog-pipeline tick --dry-run, {n:,} rows: time",
                res["wall"],
                "s",
                target_t,
                load=res["load"],
                note=f"S3 requests {counts['counts']}; jobs planned {_jobs(res['output'])}",
            )
            rep.add(
                "4",
                f"cog-pipeline tick --dry-run, {n:,} rows: peak RSS (largest process)",
                res["rss_mb"],
                "MB",
                target_m,
                load=res["load"],
            )
            remaining = [o["Key"] for o in client.list_objects_v2(Bucket=common.INPUT_BUCKET).get("Contents", [])]
            if f"plan{n}/bench-raw.csv" not in remaining:
                raise RuntimeError("tick --dry-run changed the bucket: the raw manifest is gone")
    shutil.rmtree(w, ignore_errors=True)
