"""bench/launch.py, the peak-RSS measure of the benchmarks and of the memory-bound fault tests: the tree's own
peak, not its parent's size; the command's exit code passed on."""

import json
import subprocess
import sys

from faults.harness import LAUNCHER


def launch(tmp_path, code: str) -> tuple[int, dict]:
    """Run ``python -c code`` through the launcher: (its exit code, the result it wrote)."""
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(LAUNCHER), str(out), "--", sys.executable, "-c", code], timeout=60)
    return proc.returncode, json.loads(out.read_text())


def test_a_small_child_of_a_large_test_process_is_measured_small(tmp_path):
    ballast = bytearray(600 * 1024 * 1024)  # zero pages: touched below, so they are resident in this process
    ballast[::4096] = b"x" * len(range(0, len(ballast), 4096))
    code, result = launch(tmp_path, "pass")
    assert code == 0 and result["returncode"] == 0 and result["rss_mb"] < 200, result
    del ballast


def test_what_the_child_allocates_is_measured(tmp_path):
    _code, result = launch(tmp_path, "b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(range(0, len(b), 4096))")
    assert 300 <= result["rss_mb"] < 500, result


def test_the_commands_exit_code_and_signal_are_passed_on(tmp_path):
    assert launch(tmp_path, "raise SystemExit(3)")[0] == 3
    code, result = launch(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert (code, result["returncode"]) == (128 + 9, -9), result
