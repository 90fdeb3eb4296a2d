"""Section 8: the pool. (a) The job-sizing model's figures: peak RSS and peak temporary disk of one
``convert_file`` (input + COG + overview temp + JPEG) for a few image sizes, each in a fresh process, and
the straight lines fitted to them (cog_pipeline/htcondor/sizing.py holds the coefficients). (b) Scale on
a real personal pool (tests/pool/condor.py, the startd told NUM_CPUS = 32), only when the HTCondor
tarball is there: N tiny images through ``cog-pipeline tick --executor htcondor``; per-job overhead of
Snakemake and the plugin, submission rate, time from the last batch to the outcome CSVs, the driver's
peak RSS.

  python bench/run.py --sections 8                     # both parts (scale: 2000 images, batches of 20)
  python bench/sec_pool.py sizing                      # (a) only
  python bench/sec_pool.py scale --images 2000 --batch-size 20 [--cpus 32]   # (b) only
  python bench/sec_pool.py measure '{"src": ..., "bands": 4}'   # one measurement (what (a) runs per size)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _p in (str(BENCH), str(REPO), str(REPO / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

#: (kind, size in pixels): ortho is 4-band uint8, dem 1-band uint16 (bench/synth.py); all striped, uncompressed.
SIZING_INPUTS = [
    ("ortho", 1000),
    ("ortho", 2000),
    ("ortho", 4000),
    ("ortho", 8000),
    ("dem", 2000),
    ("dem", 4000),
    ("dem", 8000),
]
QUICK_SIZING_INPUTS = [("ortho", 1000), ("ortho", 2000), ("dem", 2000)]
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------ (a) sizing


def _tree_bytes(root: Path) -> int:
    """Apparent bytes of every file under ``root`` (files may vanish while we look)."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        else:
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        pass
        except OSError:
            pass
    return total


def measure(src: str, bands: int, threads: str = "1") -> dict[str, Any]:
    """In this (fresh) process: copy ``src`` into a private temp dir (as the batch downloads it), run
    convert_file there with the workflow's options and ``threads``, and sample the dir's bytes every 5 ms."""
    import dataclasses

    from cog_pipeline.core.config import load as load_config
    from cog_pipeline.core.conversion import cog_options_from_config, jpeg_options_from_config
    from cog_pipeline.raster import convert

    config = load_config(None, {})
    cog_options = dataclasses.replace(cog_options_from_config(config["cog"]), num_threads=threads)
    jpeg_options = jpeg_options_from_config(config["jpeg"])
    work = Path(tempfile.mkdtemp(prefix="cog-size-"))
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_bytes(work))
            stop.wait(0.005)

    try:
        local_in = work / "input.tif"
        shutil.copyfile(src, local_in)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        result = convert.convert_file(
            local_in, work / "cog.tif", work / "preview.jpg", cog_options, jpeg_options, expected_bands=bands
        )
        seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], _tree_bytes(work))
        info = result.info
        return {
            "input_bytes": local_in.stat().st_size,
            "cog_bytes": result.cog_bytes,
            "jpeg_bytes": result.jpeg_bytes,
            "peak_temp_bytes": peak[0],
            "seconds": round(seconds, 2),
            "width": info.width,
            "height": info.height,
            "count": info.count,
        }
    finally:
        stop.set()
        shutil.rmtree(work, ignore_errors=True)


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ys on xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def sizing(rep: Any, cache: Path, inputs: list[tuple[str, int]]) -> dict[str, Any]:
    """Measure each input in a fresh process (peak RSS via wait4), fit mem and disk lines on input MB."""
    import proc
    import synth
    from cog_pipeline.htcondor import sizing as model

    rows = []
    for kind, size in inputs:
        src = synth.cached_raster(cache, kind, size)
        bands = 4 if kind == "ortho" else 1
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        res = proc.run(
            [sys.executable, str(Path(__file__).resolve()), "measure", json.dumps({"src": str(src), "bands": bands})],
            env=env,
        )
        if res["returncode"] != 0:
            raise RuntimeError(f"measure {kind} {size} failed:\n{res['output'][-3000:]}")
        row = json.loads([x for x in res["output"].splitlines() if x.startswith("{")][-1])
        row.update(kind=kind, size=size, rss_mb=round(res["rss_mb"], 1), load=res["load"])
        predicted = model.image_need(row["input_bytes"])
        row.update(model_mem_mb=predicted.mem_mb, model_disk_mb=predicted.disk_mb)
        rows.append(row)
        print(
            f"   {kind} {size}x{size}: input {row['input_bytes'] / MB:.0f} MB, peak RSS {row['rss_mb']:.0f} MB "
            f"(model {predicted.mem_mb}), peak temp {row['peak_temp_bytes'] / MB:.0f} MB "
            f"(model {predicted.disk_mb}), {row['seconds']} s",
            flush=True,
        )
        rep.add(
            "8",
            f"convert {kind} {size}^2 ({row['input_bytes'] / MB:.0f} MB in): peak RSS",
            row["rss_mb"],
            "MB",
            target=f"<= {predicted.mem_mb}",
            load=row["load"],
            note="model",
        )
        rep.add(
            "8",
            f"convert {kind} {size}^2: peak temp disk",
            round(row["peak_temp_bytes"] / MB, 1),
            "MB",
            target=f"<= {predicted.disk_mb}",
            load=row["load"],
            note="model",
        )
    xs = [r["input_bytes"] / MB for r in rows]
    mem = fit(xs, [r["rss_mb"] for r in rows])
    disk = fit(xs, [r["peak_temp_bytes"] / MB for r in rows])
    fitted = {
        "mem_mb": {"intercept": round(mem[0], 1), "per_input_mb": round(mem[1], 3)},
        "disk_mb": {"intercept": round(disk[0], 1), "per_input_mb": round(disk[1], 3)},
        "rows": rows,
    }
    print(
        f"   fitted: RSS MB = {mem[0]:.0f} + {mem[1]:.3f} x input MB; temp MB = {disk[0]:.1f} + {disk[1]:.3f} x "
        f"input MB",
        flush=True,
    )
    rep.detail("sizing", fitted)
    return fitted


# ------------------------------------------------------------------------------------------ (b) scale


def _tiny_tiff() -> bytes:
    """A 16x16 one-band GeoTIFF (enough for the pipeline: COG, JPEG, verification)."""
    import numpy as np
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    data = np.arange(256, dtype=np.uint8).reshape(16, 16)
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            width=16,
            height=16,
            count=1,
            dtype="uint8",
            crs="EPSG:26916",
            transform=from_origin(500000, 5000000, 1, 1),
        ) as ds:
            ds.write(data, 1)
        return bytes(mem.read())


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class DriverSampler(threading.Thread):
    """Peak RSS of a run's driver job on the access point: the supervisor (found by the run id on its
    command line) and every process under it (cog-pipeline drive, Snakemake), sampled every 0.5 s."""

    def __init__(self, run_id: str) -> None:
        super().__init__(daemon=True)
        self.run_id = run_id
        self.peak_total_mb = 0.0
        self.peak_single_mb = 0.0
        self.stop = threading.Event()

    def _roots(self) -> list[int]:
        roots = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                        cmd = fh.read()
                except OSError:
                    continue
                if b"supervise" in cmd and self.run_id.encode() in cmd:
                    roots.append(int(entry.name))
        return roots

    def run(self) -> None:
        while not self.stop.wait(0.5):
            tree = _children()
            todo, seen = self._roots(), set()
            while todo:
                pid = todo.pop()
                if pid not in seen:
                    seen.add(pid)
                    todo += tree.get(pid, [])
            sizes = [_rss_mb(p) for p in seen]
            if sizes:
                self.peak_total_mb = max(self.peak_total_mb, sum(sizes))
                self.peak_single_mb = max(self.peak_single_mb, max(sizes))


def _num(value: Any) -> float:
    """A number from a history ad's value (absent, or an expression string, counts as 0)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def scale(rep: Any, images: int, batch_size: int, cpus: int, timeout: float = 3600) -> dict[str, Any] | None:
    """N tiny images through one tick on a personal pool advertising ``cpus`` CPUs; None without a pool."""
    from concurrent.futures import ThreadPoolExecutor

    from pool import condor
    from pool.conftest import make_pool_user

    from cog_pipeline.storage.local_s3 import local_s3_server

    reason = condor.available()
    if reason:
        print(f"   POOL SCALE NOT RUN: {reason}", flush=True)
        rep.add("8", "pool scale run", None, note=f"not run: {reason}")
        return None
    import boto3
    from botocore.config import Config

    base = Path(tempfile.mkdtemp(prefix="cog-bench-pool-", dir="/tmp"))
    result: dict[str, Any] = {"images": images, "batch_size": batch_size, "cpus": cpus}
    try:
        with local_s3_server() as endpoint, condor.personal_pool(base, num_cpus=cpus) as pool:
            seed = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="seed",
                aws_secret_access_key="seed",
                config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
            )
            for bucket in ("bench-input", "bench-output"):
                seed.create_bucket(Bucket=bucket)
            body = _tiny_tiff()
            keys = [f"scale/tiles/t{i:06d}.tif" for i in range(images)]
            with ThreadPoolExecutor(8) as ex:
                list(ex.map(lambda k: seed.put_object(Bucket="bench-input", Key=k, Body=body), keys))
            seed.put_object(
                Bucket="bench-input",
                Key="scale/delivery-raw.csv",
                Body=("key,bands\n" + "".join(f"{k},1\n" for k in keys)).encode(),
            )
            user = make_pool_user(pool, endpoint, "scale")
            user.config_file.write_text(f"batch_size: {batch_size}\nmem_mb_per_job: 1000\ndisk_mb_per_job: 2000\n")
            pool.give(user.config_file)
            flags = [
                *user.s3_flags(),
                "--input-bucket",
                "bench-input",
                "--output-bucket",
                "bench-output",
                "-p",
                "scale/*raw.csv",
            ]
            started = time.time()
            tick = user.cli(
                "tick",
                "--executor",
                "htcondor",
                *flags,
                "--config",
                str(user.config_file),
                "--workdir",
                str(user.workdir),
                timeout=600,
            )
            result["tick_seconds"] = round(time.time() - started, 1)
            run_dir = next(user.workdir.glob("workflow-run-*"))
            run_id = run_dir.name.removeprefix("workflow-run-")
            sampler = DriverSampler(run_id)
            sampler.start()
            constraint = f'CogPipelineRun =?= "{run_id}"'
            deadline = time.time() + timeout
            while not (list((run_dir / "outcome").glob("*.json")) and not pool.query(constraint, ["ClusterId"])):
                if time.time() > deadline:
                    raise RuntimeError(f"scale run not finished after {timeout:.0f} s (tick said {tick.stdout})")
                time.sleep(2)
            finished = time.time()
            sampler.stop.set()
            outcome_json = next((run_dir / "outcome").glob("*.json"))
            summary = json.loads(outcome_json.read_text())
            jobs = pool.history(
                f'{constraint} && CogPipelineRole =?= "job"',
                [
                    "ClusterId",
                    "QDate",
                    "JobCurrentStartDate",
                    "CompletionDate",
                    "TransferOutput",
                    "ResidentSetSize_RAW",
                    "ExitCode",
                    "RequestMemory",
                    "RequestDisk",
                    "RemoteUserCpu",
                    "RemoteSysCpu",
                    "DiskUsage_RAW",
                ],
            )
            driver = pool.history(
                f'{constraint} && CogPipelineRole =?= "driver"',
                ["JobStartDate", "CompletionDate", "RemoteUserCpu", "RemoteSysCpu"],
            )
            image_seconds: dict[str, float] = {}
            for status in (run_dir / "status").rglob("batch-*.jsonl"):
                image_seconds[status.stem] = sum(
                    json.loads(line).get("seconds", 0.0) for line in status.read_text().splitlines() if line.strip()
                )
            overheads = []
            for job in jobs:
                batch = str(job.get("TransferOutput", "")).split("batch-")[-1].split(".")[0]
                wall = job["CompletionDate"] - job["JobCurrentStartDate"]
                overheads.append(wall - image_seconds.get(f"batch-{batch}", 0.0))
            cpu = sorted(_num(j.get("RemoteUserCpu")) + _num(j.get("RemoteSysCpu")) for j in jobs)
            qdates = sorted(j["QDate"] for j in jobs)
            last_job = max(j["CompletionDate"] for j in jobs)
            overheads.sort()
            result.update(
                processed=summary.get("processed"),
                failed=summary.get("failed"),
                jobs=len(jobs),
                wall_seconds=round(finished - started, 1),
                images_per_second=round(images / (finished - started), 2),
                first_submit_after_tick_s=round(qdates[0] - started, 1),
                submission_span_s=qdates[-1] - qdates[0],
                submission_rate_jobs_per_s=round((len(qdates) - 1) / max(1, qdates[-1] - qdates[0]), 2),
                job_overhead_median_s=round(overheads[len(overheads) // 2], 1),
                job_overhead_p90_s=round(overheads[int(len(overheads) * 0.9)], 1),
                image_seconds_mean=round(sum(image_seconds.values()) / images, 3),
                last_batch_to_outcome_s=round(outcome_json.stat().st_mtime - last_job, 1),
                last_batch_to_driver_exit_s=round(driver[0]["CompletionDate"] - last_job, 1) if driver else None,
                driver_peak_rss_mb=round(sampler.peak_total_mb),
                driver_largest_process_mb=round(sampler.peak_single_mb),
                job_cpu_median_s=round(cpu[len(cpu) // 2], 1),
                driver_cpu_s=round(_num(driver[0].get("RemoteUserCpu")) + _num(driver[0].get("RemoteSysCpu")), 1)
                if driver
                else None,
                batch_job_rss_mb_max=round(max(_num(j.get("ResidentSetSize_RAW")) for j in jobs) / 1024),
                batch_job_disk_mb_max=round(max(_num(j.get("DiskUsage_RAW")) for j in jobs) / 1024),
                batch_request_memory_mb=sorted({j.get("RequestMemory") for j in jobs}),
                batch_request_disk_kb=sorted({j.get("RequestDisk") for j in jobs}),
                load=os.getloadavg()[0],
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("   " + json.dumps(result), flush=True)
    for name, unit in (
        ("wall_seconds", "s"),
        ("images_per_second", "img/s"),
        ("submission_rate_jobs_per_s", "jobs/s"),
        ("job_overhead_median_s", "s"),
        ("job_overhead_p90_s", "s"),
        ("last_batch_to_outcome_s", "s"),
        ("driver_peak_rss_mb", "MB"),
        ("job_cpu_median_s", "s"),
        ("batch_job_rss_mb_max", "MB"),
    ):
        rep.add(
            "8",
            f"pool scale {images} images / {batch_size} per job / {cpus} slots: {name}",
            result[name],
            unit,
            load=result["load"],
        )
    rep.detail("pool_scale", result)
    return result


def section8(rep: Any, cache: Path, work: Path, cfg: dict[str, Any]) -> None:
    """bench/run.py --sections 8: the sizing measurements, then the pool scale run (when a pool is there)."""
    sizing(rep, cache, QUICK_SIZING_INPUTS if cfg.get("quick") else SIZING_INPUTS)
    scale(rep, 200 if cfg.get("quick") else 2000, 20, 32)


# ------------------------------------------------------------------------------------------ entry points


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("measure")
    m.add_argument("args")
    s = sub.add_parser("sizing")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--out", default=str(BENCH / "results"))
    c = sub.add_parser("scale")
    c.add_argument("--images", type=int, default=2000)
    c.add_argument("--batch-size", type=int, default=20)
    c.add_argument("--cpus", type=int, default=32)
    c.add_argument("--out", default=str(BENCH / "results"))
    args = parser.parse_args(argv)
    if args.what == "measure":
        sys.stdout.write("\n" + json.dumps(measure(**json.loads(args.args))) + "\n")
        return 0
    from report import Report

    out = Path(args.out)
    rep = Report(out, ["python", "bench/sec_pool.py", *argv], getattr(args, "quick", False))
    if args.what == "sizing":
        sizing(rep, out / "cache", QUICK_SIZING_INPUTS if args.quick else SIZING_INPUTS)
    else:
        scale(rep, args.images, args.batch_size, args.cpus)
    print(f"Results: {rep.save()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
