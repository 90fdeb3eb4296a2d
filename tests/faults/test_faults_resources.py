"""Disk full, unwritable temp dir, missing bucket, wrong or missing credentials: a clear error and a
non-zero exit before anything is claimed, or (when the disk fills mid-run) a failed row with the reason
while the other rows complete. Nothing is renamed that cannot be processed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cog_pipeline import SAMPLES_DIR
from cog_pipeline.storage.s3 import S3Settings
from conftest import s3_cli_flags


@contextlib.contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False):
    """A small tmpfs at ``path`` (needs root and mount permission; the test is skipped otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    opts = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, f"cogtest-{uuid.uuid4().hex[:6]}", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def unchanged(world, before):
    after = {k: o["ETag"] for k, o in world.objects(world.input_bucket).items()}
    assert after == before, "nothing may be claimed, renamed or written"


def assert_refused(world, before, proc, *messages: str, kind: str | None = None) -> None:
    """The tick exited 2 with every message (and no traceback) on stderr and changed nothing; ``kind``
    is counted in the fault figures."""
    assert proc.returncode == 2, proc.stderr
    assert all(m in proc.stderr for m in messages) and "Traceback" not in proc.stderr, proc.stderr
    unchanged(world, before)
    if kind:
        world.figures.kind("resources", kind)


def prepare(world):
    world.put("a/one.tif", SAMPLES_DIR / "byte.tif")
    world.manifest("r/jobs-raw.csv", ["a/one.tif,1"])
    return {k: o["ETag"] for k, o in world.objects(world.input_bucket).items()}


def cli(world, *extra, access=None, secret=None, workdir=None, endpoint=None):
    settings = S3Settings(
        endpoint_url=endpoint or world.proxy.endpoint,
        access_key_file=str(access or world.key_files[0]),
        secret_key_file=str(secret or world.key_files[1]),
    )
    flags = s3_cli_flags(settings, world.input_bucket, world.output_bucket)
    args = [
        sys.executable,
        "-m",
        "cog_pipeline.ui.cli",
        "tick",
        *flags,
        "--workdir",
        str(workdir or world.workdir),
        *extra,
    ]
    world.figures.runs += 1
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_working_directory_on_a_full_disk(world):
    before = prepare(world)
    with tmpfs(world.tmp / "full", "1m") as full:
        proc = cli(world, workdir=full / "work")
    assert_refused(
        world, before, proc, "MiB free in the working directory", "nothing was claimed", kind="disk-full-before-claim"
    )


def test_unwritable_temp_dir(world):
    before = prepare(world)
    with tmpfs(world.tmp / "ro", "4m", readonly=True) as ro:
        proc = world.run_proc(overrides={"tmp_dir": str(ro)})
    assert_refused(world, before, proc, "temp dir (tmp_dir)", "not writable", kind="unwritable-temp-dir")


def test_temp_dir_that_is_not_a_directory(world):
    before = prepare(world)
    not_a_dir = world.tmp / "file"
    not_a_dir.write_text("x")
    proc = world.run_proc(overrides={"tmp_dir": str(not_a_dir)})
    assert_refused(world, before, proc, "not writable (Not a directory)")


@pytest.mark.slow
def test_disk_fills_during_a_conversion(world):
    """The temp dir has room for the small images but not for the big one: that row fails with the
    reason, the others are processed, nothing partial is uploaded."""
    world.put("a/one.tif", SAMPLES_DIR / "byte.tif")
    world.image("big/huge.tif", width=3000, height=3000, count=3, seed=7)  # 27 MB: fits, its COG does not
    world.image("big/giant.tif", width=5000, height=5000, count=3, seed=8)  # 75 MB: not even the download fits
    world.image("a/two.tif", seed=2)
    world.manifest("r/disk-raw.csv", ["a/one.tif,1", "big/huge.tif,3", "a/two.tif,1", "big/giant.tif,3"])
    world.snapshot()
    with tmpfs(world.tmp / "small", "72m") as small:
        proc = world.run_proc(overrides={"tmp_dir": str(small), "batch_size": 10})
        leftovers = list(small.iterdir())
    assert proc.returncode == 0, proc.stderr[-3000:]
    world.check(
        {
            "r/disk-": {
                "processed": ["a/one.tif", "a/two.tif"],
                "failed": {"big/huge.tif": "no space left", "big/giant.tif": "no space left"},
            }
        }
    )
    assert leftovers == [], "temp files are removed even after ENOSPC"
    world.figures.kind("resources", "disk-full-mid-run")


def test_missing_output_bucket(world):
    before = prepare(world)
    world.seed.delete_bucket(Bucket=world.output_bucket)
    proc = cli(world)
    assert_refused(world, before, proc, "output bucket 'test-output' does not exist", kind="output-bucket-missing")


def test_wrong_credentials(world):
    before = prepare(world)
    wrong = world.tmp / "wrong-access"
    wrong.write_text("WRONGACCESSKEY000000\n")
    wrong.chmod(0o600)
    world.proxy.add("forbidden", access_key="WRONGACCESSKEY000000")  # as a real S3 answers an unknown key
    proc = cli(world, access=wrong)
    assert "WRONGACCESSKEY000000" not in proc.stderr + proc.stdout
    assert_refused(
        world, before, proc, "access to input bucket 'test-input' denied: check the key files", kind="wrong-credentials"
    )


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "key file not found"),
        ("two\nlines\n", "must hold exactly one non-empty line"),
        ("", "must hold exactly one non-empty line"),
    ],
)
def test_missing_or_malformed_key_file(world, content, message):
    before = prepare(world)
    path = world.tmp / "bad-key"
    if content is not None:
        path.write_text(content)
        path.chmod(0o600)
    proc = cli(world, secret=path)
    assert_refused(world, before, proc, message, kind="bad-key-file")


def test_unwritable_working_directory(world):
    before = prepare(world)
    blocker = world.tmp / "blocker"
    blocker.write_text("x")
    proc = cli(world, workdir=blocker / "work")
    assert_refused(world, before, proc, "working directory", kind="unwritable-working-directory")


@pytest.mark.slow
def test_unreachable_endpoint(world):
    before = prepare(world)
    proc = cli(world, endpoint="http://127.0.0.1:9")
    assert_refused(world, before, proc, "cannot connect to the S3 endpoint", kind="endpoint-unreachable")


def test_read_only_credentials(world):
    """Credentials that may read but not write the input bucket: refused before any claim (they could
    never rename a manifest), not 'could not claim' on every tick."""
    before = prepare(world)
    world.proxy.add("forbidden", ["put", "delete"], bucket=world.input_bucket)
    proc = world.run_proc()
    assert_refused(world, before, proc, "cannot write to input bucket 'test-input'", kind="read-only-credentials")
