"""work/scratch.py: each image's temp dir is named after its host and process, and a batch job removes those
that killed batch jobs of this host left behind, nothing else."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from cog_pipeline.work import scratch


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_an_image_dir_is_private_and_named_after_host_and_process(tmp_path):
    path = scratch.private_dir(tmp_path)
    assert path.parent == tmp_path and path.is_dir()
    assert path.name.startswith(f"cog-pipeline-{scratch._host()}-{os.getpid()}-")
    assert "-" not in scratch._host() and scratch._host().endswith(f"_{os.stat('/proc/self/ns/pid').st_ino}")
    assert path.stat().st_mode & 0o077 == 0


def test_the_sweep_removes_only_dead_processes_dirs_of_this_host(tmp_path, caplog):
    host, gone = scratch._host(), dead_pid()
    left = tmp_path / f"cog-pipeline-{host}-{gone}-abc123"
    (left / "sub").mkdir(parents=True)
    (left / "input.tif").write_bytes(b"x" * 1000)
    (left / "sub" / "cog.tif").write_bytes(b"y")
    kept = {
        "live": tmp_path / f"cog-pipeline-{host}-{os.getppid()}-def456",  # a process that is running
        "own": scratch.private_dir(tmp_path),
        "other host": tmp_path / f"cog-pipeline-{host}2-{gone}-ghi789",  # another host's or namespace's
        "old name": tmp_path / "cog-pipeline-jkl012",  # no host or process in the name: whose is unknown
        "not a pid": tmp_path / f"cog-pipeline-{host}-x{gone}-mno345",
        "huge pid": tmp_path / f"cog-pipeline-{host}-{'9' * 20}-pqr678",
        "other tool": tmp_path / f"other-{host}-{gone}-stu901",
    }
    for path in kept.values():
        path.mkdir(exist_ok=True)
    a_file = tmp_path / f"cog-pipeline-{host}-{gone}-file"
    a_file.write_text("not a directory")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").write_text("kept")
    link = tmp_path / f"cog-pipeline-{host}-{gone}-link"
    link.symlink_to(target)

    with caplog.at_level(logging.WARNING, logger="cog_pipeline.work.scratch"):
        removed = scratch.sweep(tmp_path)

    assert removed == [left] and not left.exists()
    assert all(path.is_dir() for path in kept.values()), {k: p.exists() for k, p in kept.items()}
    assert a_file.is_file() and link.is_symlink() and (target / "precious").read_text() == "kept"
    assert f"removed 1 temp dir(s) in {tmp_path} left by batch jobs that were killed: {left.name}" in caplog.text
    caplog.clear()
    assert scratch.sweep(tmp_path) == [] and not caplog.text  # nothing more to say


def test_the_sweep_of_a_missing_root_does_nothing(tmp_path):
    assert scratch.sweep(tmp_path / "not-made-yet") == []
