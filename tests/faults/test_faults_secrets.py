"""Secrets: with sentinel values in the key files, the values appear in no process's argv or environment
(sampled from /proc during the runs), no log, no file of the working/run directory, no object or metadata
in either bucket, no error message, no HTCondor submit description. World-readable key files are
warned about, by path."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

from cog_pipeline import SAMPLES_DIR
from cog_pipeline.storage.s3 import S3Settings
from conftest import s3_cli_flags, write_key_files

ACCESS = "AKIASENTINEL7ACCESS42"
SECRET = "SeNtInEl/secret+Key=9f8e7d6c5b4a3210XYZ"
NEEDLES = [v.encode() for s in (ACCESS, SECRET) for v in {s, urllib.parse.quote(s, safe=""), urllib.parse.quote(s)}]


class ProcSampler(threading.Thread):
    """Reads every process's argv and environment from /proc until stopped; remembers any sentinel."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.leaks: list[str] = []
        self.seen: set[str] = set()
        self.samples = 0

    def run(self):
        me = str(os.getpid())
        while not self.stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid == me:
                    continue
                for what in ("cmdline", "environ"):
                    try:
                        data = Path(f"/proc/{pid}/{what}").read_bytes()
                    except OSError:
                        continue
                    if what == "cmdline":
                        words = data.split(b"\0")
                        self.seen.update(w.decode(errors="replace").rsplit("/", 1)[-1] for w in words[:4] if w)
                    for needle in NEEDLES:
                        if needle in data:
                            self.leaks.append(f"/proc/{pid}/{what}: {data[:200]!r}")
            self.samples += 1
            self.stop.wait(0.02)


def scan_tree(root: Path) -> tuple[int, list[str]]:
    checked, leaks = 0, []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            checked += 1
            data = path.read_bytes()
            leaks += [f"{path}" for n in NEEDLES if n in data]
    return checked, leaks


def scan_buckets(world) -> tuple[int, list[str]]:
    checked, leaks = 0, []
    for bucket in (world.input_bucket, world.output_bucket):
        for key in world.objects(bucket):
            checked += 1
            head = world.seed.head_object(Bucket=bucket, Key=key)
            blob = world.body(bucket, key) + key.encode() + repr(head.get("Metadata")).encode()
            leaks += [f"s3://{bucket}/{key}" for n in NEEDLES if n in blob]
    return checked, leaks


@pytest.fixture
def sentinel_keys(tmp_path):
    return write_key_files(tmp_path / "sentinel-keys", ACCESS, SECRET, mode=0o644)  # readable by others: warned about


def cli_tick(world, keys, sampler_runs: list, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    settings = S3Settings(endpoint_url=world.proxy.endpoint, access_key_file=str(keys[0]), secret_key_file=str(keys[1]))
    flags = s3_cli_flags(settings, world.input_bucket, world.output_bucket)
    args = [sys.executable, "-m", "cog_pipeline.ui.cli", "tick", *flags, "--workdir", str(world.workdir), *extra]
    sampler = ProcSampler()
    sampler.start()
    world.figures.runs += 1
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300, start_new_session=True)
    finally:
        sampler.stop.set()
        sampler.join()
    sampler_runs.append(sampler)
    return proc


@pytest.mark.slow
def test_sentinel_secrets_never_leak(world, sentinel_keys):
    world.put("a/one.tif", SAMPLES_DIR / "byte.tif")
    world.image("a/two.tif", seed=2)
    world.manifest("sec/jobs-raw.csv", ["a/one.tif,1", "a/two.tif,1", "a/missing.tif,1", "/bad.tif,1"])
    world.snapshot()
    world.proxy.add("500", None, probability=0.1)
    world.proxy.add("reset", None, probability=0.05)
    samplers: list[ProcSampler] = []

    proc = cli_tick(world, sentinel_keys, samplers)  # 1: a normal run, with S3 faults and failed rows
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ACCESS in world.proxy.access_keys, "the sentinel credentials were really used"
    for key_file in sentinel_keys:
        assert f"key file {key_file} is readable by other users; run: chmod 600 {key_file}" in proc.stderr
    world.check(
        {
            "sec/jobs-": {
                "processed": ["a/one.tif", "a/two.tif"],
                "failed": {"a/missing.tif": "not found", "/bad.tif": "starts with '/'"},
            }
        }
    )
    outputs = [proc.stdout + proc.stderr]

    world.proxy.reset()  # 2: uploads refused for these credentials mid-run: failed rows with the S3 error
    world.manifest("sec/denied-raw.csv", ["a/one.tif,1"])
    world.seed.delete_object(Bucket=world.output_bucket, Key="a/one.tif")
    world.proxy.add("forbidden", ["put", "create_multipart"], access_key=ACCESS, bucket=world.output_bucket)
    proc = cli_tick(world, sentinel_keys, samplers)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = world.outcomes()["sec/denied-"][0]["errors"]
    assert "InvalidAccessKeyId" in errors
    outputs.append(proc.stdout + proc.stderr)

    world.proxy.reset()  # 3: refused outright: a clear error, nothing claimed
    world.manifest("sec/refused-raw.csv", ["a/one.tif,1"])
    world.proxy.add("forbidden", access_key=ACCESS)
    proc = cli_tick(world, sentinel_keys, samplers)
    assert proc.returncode == 2 and "denied: check the key files" in proc.stderr
    outputs.append(proc.stdout + proc.stderr)

    # HTCondor submit descriptions built for these key files and this run (no schedd needed).
    from cog_pipeline import htcondor

    run_dir = sorted(world.workdir.glob("workflow-run-*"))[0]
    tick_argv = [
        "tick",
        "--input-bucket",
        world.input_bucket,
        "--output-bucket",
        world.output_bucket,
        "-p",
        "*raw.csv",
        "-a",
        str(sentinel_keys[0]),
        "-s",
        str(sentinel_keys[1]),
        "-e",
        world.proxy.endpoint,
    ]
    descriptions = [
        str(htcondor.crondor_submit(tick_argv=tick_argv, pattern="*raw.csv", workdir=world.workdir)),
        str(
            htcondor.driver_submit(
                run_dir=run_dir,
                pattern="*raw.csv",
                run_id=run_dir.name[-15:],
                drive_argv=["drive", str(run_dir), "--executor", "htcondor"],
            )
        ),
        " ".join(htcondor.snakemake_args(run_dir, run_dir.name[-15:], "*raw.csv")),
    ]
    assert str(sentinel_keys[0]) in descriptions[0], "the key file *path* is what travels"

    leaks = [f"/proc sample: {leak}" for s in samplers for leak in s.leaks]
    checked = sum(s.samples for s in samplers)
    assert any("snakemake" in name or "python" in name for s in samplers for name in s.seen)
    n, found = scan_tree(world.workdir)  # run dirs: run.yaml, manifests, status, logs, .snakemake, staging
    checked += n
    leaks += found
    n, found = scan_buckets(world)  # outcome CSVs (error messages), outputs and their metadata
    checked += n
    leaks += found
    for i, text in enumerate(outputs + descriptions):
        checked += 1
        leaks += [f"stdout/stderr or submit description #{i}" for n in NEEDLES if n in text.encode()]
    world.figures.secret_checks += checked
    world.figures.secret_leaks += len(leaks)
    for kind in ("argv-environ", "logs", "run-dir-files", "bucket-objects", "error-messages", "submit-descriptions"):
        world.figures.kind("secrets", kind)
    assert not leaks, "\n".join(leaks[:20])


def test_the_leak_detectors_do_detect(tmp_path):
    """Positive control: a sentinel in a child's argv, in its environment and in a file is found."""
    sampler = ProcSampler()
    sampler.start()
    try:
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3)", ACCESS], check=True)
        subprocess.run(
            [sys.executable, "-c", "import time; time.sleep(0.3)"], env=dict(os.environ, X=SECRET), check=True
        )
    finally:
        sampler.stop.set()
        sampler.join()
    assert any("cmdline" in leak for leak in sampler.leaks) and any("environ" in leak for leak in sampler.leaks)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.log").write_text("x " + urllib.parse.quote(SECRET, safe="") + " y")
    assert scan_tree(tmp_path) == (1, [str(tmp_path / "sub" / "f.log")])


@pytest.mark.slow
def test_presigned_run_gives_batch_jobs_no_key(world, sentinel_keys, tmp_path):
    """s3.transfer: presigned (the pool's default; forced here on the local executor): the access point signs,
    the batch jobs convert with URLs and the access point confirms. No key file is listed for a pool job's
    transfer nor named in its wrapper's settings; no sentinel (the secret, nor the access key id a presigned URL
    names) stays in the run directory, argv, environments or outputs: the URL files are removed after use."""
    world.put("a/one.tif", SAMPLES_DIR / "byte.tif")
    world.image("a/two.tif", seed=2)
    world.manifest("pre/jobs-raw.csv", ["a/one.tif,1", "a/two.tif,1", "a/missing.tif,1"])
    world.snapshot()
    site = tmp_path / "site.yaml"
    site.write_text("s3:\n  transfer: presigned\n  presign_expiry_s: 3600\n")
    samplers: list[ProcSampler] = []
    proc = cli_tick(world, sentinel_keys, samplers, ("--config", str(site)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    world.check({"pre/jobs-": {"processed": ["a/one.tif", "a/two.tif"], "failed": {"a/missing.tif": "not found"}}})
    run_dir = sorted(world.workdir.glob("workflow-run-*"))[-1]
    snakemake_log = (run_dir / "logs" / "snakemake.log").read_text()
    assert "execute points get presigned URLs, no keys" in snakemake_log
    assert "presign_batch" in snakemake_log and "confirm_batch" in snakemake_log
    assert list(run_dir.glob("uploads/*/batch-*.jsonl")), "the batch job wrote its records for confirm_batch"
    assert not list(run_dir.glob("urls/**/*.json")), "the URL files (bearer tokens) outlived their batch"

    from cog_pipeline import htcondor

    args = htcondor.snakemake_args(run_dir, run_dir.name[-15:], "*raw.csv")
    transfer = " ".join(args)
    job_files = transfer.split("htcondor_transfer_input_files")[-1]
    for key_file in sentinel_keys:
        assert str(key_file) not in transfer and key_file.name not in job_files
    job_env = (run_dir / "workflow" / htcondor.JOB_ENV).read_text()
    assert "COG_PIPELINE_PRIVATE_FILES=''" in job_env

    leaks = [f"/proc sample: {leak}" for s in samplers for leak in s.leaks]
    n, found = scan_tree(world.workdir)
    leaks += found
    m, found = scan_buckets(world)
    leaks += found
    said = (proc.stdout + proc.stderr + transfer).encode()
    leaks += ["tick output or Snakemake args" for needle in NEEDLES if needle in said]
    world.figures.secret_checks += n + m
    world.figures.secret_leaks += len(leaks)
    assert not leaks, "\n".join(leaks[:20])
