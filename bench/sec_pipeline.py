"""Section 3: pipeline efficiency. N small images through ``cog-pipeline tick`` (local executor,
local S3 server) vs the floor (same downloads + convert_file + uploads in one tight Python loop), for
several batch sizes, with a breakdown of where the difference goes."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common
import proc
import synth
from report import Report
from s3count import CountingS3Server, summarize

FOLDERS = ("county-a/2026", "county-b/2026")


def make_images(w: Path, n_distinct: int, size: int) -> list[Path]:
    """A few distinct small 4-band orthophoto tiles (cycled over the rows)."""
    return [synth.write_raster(w / f"img{i}.tif", "ortho", size, seed=100 + i) for i in range(n_distinct)]


def upload_inputs(client: Any, images: list[Path], n: int) -> list[tuple[str, int]]:
    rows = [(f"{FOLDERS[i % len(FOLDERS)]}/tile_{i:05d}.tif", 4) for i in range(n)]

    def put(i_row):
        i, (key, _bands) = i_row
        client.upload_file(str(images[i % len(images)]), common.INPUT_BUCKET, key)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, enumerate(rows)))
    return rows


def empty_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objs:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objs})


def run_tick(
    srv: CountingS3Server,
    client: Any,
    keys: tuple[Path, Path],
    rows: list[tuple[str, int]],
    overrides: dict[str, Any],
    w: Path,
) -> dict[str, Any]:
    """One tick over a fresh manifest of ``rows`` with run-config ``overrides``; timings and counts."""
    empty_bucket(client, common.OUTPUT_BUCKET)
    raw_key = "runs/" + "-".join(f"{k}{v}" for k, v in overrides.items()) + "-raw.csv"
    client.put_object(Bucket=common.INPUT_BUCKET, Key=raw_key, Body="".join(f"{k},{b}\n" for k, b in rows).encode())
    srv.reset_counts()
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("tick_with.py")),
        json.dumps(overrides),
        *common.tick_args(keys, srv.endpoint, raw_key),
        "--cores",
        "2",
        "--workdir",
        str(w / "ticks"),
    ]
    res = proc.run(cmd, cwd=w, env=common.python_env())
    counts = srv.counts()
    m = re.search(r"Run directory: (\S+)", res["output"])
    if res["returncode"] != 0 or not m:
        raise RuntimeError(f"tick failed ({res['returncode']}):\n{res['output'][-3000:]}")
    run_dir = Path(m.group(1))
    records = [
        json.loads(line)
        for p in sorted((run_dir / "status").rglob("batch-*.jsonl"))
        for line in p.read_text().splitlines()
        if line.strip()
    ]
    summary = json.loads((run_dir / "outcome" / "m1.json").read_text())
    if summary["processed"] != len(rows):
        log = (run_dir / "logs" / "snakemake.log").read_text()[-3000:]
        raise RuntimeError(f"tick processed {summary['processed']} of {len(rows)} rows:\n{log}")
    # Snakemake's own fixed cost: the same command again on the finished run dir ("nothing to be done").
    from cog_pipeline.control import driver

    srv.reset_counts()
    noop = proc.run(driver.snakemake_command(run_dir, "local", 2), cwd=run_dir, env=common.python_env())
    image_s = sum(r.get("seconds", 0.0) for r in records)
    convert_s = sum(sum(r.get("step_seconds", {}).values()) for r in records)
    status_files = sorted((run_dir / "status").rglob("batch-*.jsonl"), key=lambda p: p.stat().st_mtime)
    out = {
        "wall": res["wall"],
        "rss_mb": res["rss_mb"],
        "load": res["load"],
        "cpu_util": res["cpu_util"],
        "image_seconds": image_s,
        "convert_seconds": convert_s,
        "jobs": len(status_files),
        "snakemake_noop": noop["wall"],
        "counts": counts,
        "run_dir": str(run_dir),
    }
    out.update(timeline(res["started"], res["wall"], status_files, run_dir / "outcome" / "m1.json"))
    m = re.search(r"^BENCH_TIMES (.*)$", res["output"], re.M)
    if m:
        times = json.loads(m.group(1))
        t0 = res["started"]
        out["phases"] = {
            "cli_start_imports": times["imports_done"] - t0,
            "claim_and_run_dir": times["snakemake_start"] - times["imports_done"],
            "snakemake": times["snakemake_end"] - times["snakemake_start"],
            "after_snakemake": (t0 + res["wall"]) - times["snakemake_end"],
        }
        aggregate_end = (run_dir / "outcome" / "m1.json").stat().st_mtime
        out["snakemake_end_after_aggregate"] = times["snakemake_end"] - aggregate_end
    return out


def timeline(started: float, wall: float, status_files: list[Path], outcome: Path) -> dict[str, Any]:
    """Where the time outside the images goes, from file times: before the first batch's first image,
    between batches (job start-up), after the last batch (aggregate job + end of tick).

    A batch status file is written when its last image is done; the batch's images took the sum of
    their ``seconds``, so its job started image work at mtime - sum. With one job at a time
    (threads_per_job = cores) the gaps are exactly the per-job overheads.
    """
    spans = []
    for path in status_files:
        secs = sum(json.loads(line).get("seconds", 0.0) for line in path.read_text().splitlines() if line.strip())
        end = path.stat().st_mtime
        spans.append((end - secs, end))
    first_start = min(s for s, _ in spans)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(spans)]
    last_end = max(e for _, e in spans)
    return {
        "before_first_image": first_start - started,
        "job_gaps": [round(g, 3) for g in gaps],
        "after_last_batch": (started + wall) - last_end,
        "aggregate_done_after_last_batch": outcome.stat().st_mtime - last_end,
    }


def run_floor(
    srv: CountingS3Server, client: Any, keys: tuple[Path, Path], rows: list[tuple[str, int]], w: Path
) -> dict[str, Any]:
    empty_bucket(client, common.OUTPUT_BUCKET)
    srv.reset_counts()
    res = proc.run_task(
        "floor",
        endpoint=srv.endpoint,
        access_key_file=str(keys[0]),
        secret_key_file=str(keys[1]),
        input_bucket=common.INPUT_BUCKET,
        output_bucket=common.OUTPUT_BUCKET,
        rows=[list(r) for r in rows],
        workdir=str(w / "floor"),
    )
    res["counts"] = srv.counts()
    return res


def section3(rep: Report, work: Path, cfg: dict[str, Any]) -> None:
    w = work / "s3"
    common.fresh_dir(w)
    keys = common.key_files(w / "keys")
    n, size = cfg["images"], cfg["image_size"]
    images = make_images(w / "images", 10, size)
    from cog_pipeline.control import driver

    defaults = driver.default_config()
    default_bs = int(defaults["batch_size"])
    variants = [{"batch_size": bs} for bs in sorted(set(cfg["batch_sizes"]) | {default_bs})]
    # The other job shape: one two-thread job at a time instead of two one-thread jobs (the default
    # since threads_per_job 1: overheads of one job overlap with the other's work).
    other_threads = 2 if int(defaults["threads_per_job"]) == 1 else 1
    variants.append({"batch_size": default_bs, "threads_per_job": other_threads})
    # Snakemake exiting without waiting for its 1 s rate-limiter timer (bench/snakemake_daemon_timers.py).
    variants.append({"batch_size": default_bs, "__daemon_timers": True})
    with CountingS3Server(w / "server") as srv:
        client = common.client(srv.endpoint, keys)
        client.create_bucket(Bucket=common.INPUT_BUCKET)
        client.create_bucket(Bucket=common.OUTPUT_BUCKET)
        rows = upload_inputs(client, images, n)
        # Best of N for the ticks as for the floor, rounds interleaved: other work on the machine comes
        # and goes within a minute, and one unlucky tick would otherwise decide a variant's figure.
        floors = [run_floor(srv, client, keys, rows, w)]
        rounds = []
        for _ in range(max(1, int(cfg.get("repeats", 1)))):
            rounds.append([run_tick(srv, client, keys, rows, v, w) for v in variants])
            floors.append(run_floor(srv, client, keys, rows, w))
        ticks = [min(runs, key=lambda r: r["wall"]) for runs in zip(*rounds, strict=True)]  # one per variant
        import_cost = proc.run_task("import_cost")
    floor = min(floors, key=lambda r: r["wall"])
    rep.add(
        "3",
        f"floor: {n} images {size}x{size} 4-band, download + convert_file + upload in one loop (best of {len(floors)})",
        floor["wall"],
        "s",
        load=floor["load"],
        note=f"convert {floor['convert_seconds']:.1f} s, S3 {floor['s3_seconds']:.1f} s, "
        f"requests {summarize(floor['counts'])}",
    )
    for v, t in zip(variants, ticks, strict=True):
        ratio = floor["wall"] / t["wall"]
        label = ", ".join(
            f"{k} {val}" if not k.startswith("__") else "Snakemake exits without its 1 s timer" for k, val in v.items()
        )
        if v == {"batch_size": default_bs}:
            label += " (defaults)"
        s3_and_checks = t["image_seconds"] - t["convert_seconds"]
        gaps = t["job_gaps"]
        if not gaps:
            gap = "none (one job)"
        elif min(gaps) < 0:
            gap = "none: jobs overlap (two at a time)"
        else:
            gap = f"{sorted(gaps)[len(gaps) // 2]:.2f} s median x {len(gaps)}"
        rep.add(
            "3",
            f"tick, {label}: {t['jobs']} batch jobs, wall (best of {len(rounds)})",
            t["wall"],
            "s",
            load=t["load"],
            note=(
                f"images {t['image_seconds']:.1f} s (convert_file {t['convert_seconds']:.1f} s, S3 transfers "
                f"+ HEADs {s3_and_checks:.1f} s); before the first image {t['before_first_image']:.1f} s "
                f"(CLI start, claim, Snakemake start-up + DAG: a no-op rerun takes {t['snakemake_noop']:.1f} s, "
                f"first job start); between batch jobs {gap}; after the last batch "
                f"{t['after_last_batch']:.1f} s (aggregate job done after "
                f"{t['aggregate_done_after_last_batch']:.1f} s, "
                f"Snakemake exits {t.get('snakemake_end_after_aggregate', float('nan')):.1f} s after that); "
                f"requests {summarize(t['counts'])}"
            ),
        )
        rep.add("3", f"floor / pipeline, {label}", ratio, "", ">= 0.7", load=t["load"])
    rep.detail(
        "section3",
        {
            "floors": [{k: v for k, v in f.items() if k != "output"} for f in floors],
            "variants": variants,
            "ticks": ticks,
            "all_rounds": rounds,
            "import_cost": {k: v for k, v in import_cost.items() if k != "output"},
        },
    )
    shutil.rmtree(w, ignore_errors=True)
