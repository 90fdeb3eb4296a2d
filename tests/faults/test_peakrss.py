"""peakrss.py, the peak-RSS measure of the memory-bound tests: the tree's own peak, not its parent's size."""

import subprocess
import sys

from faults.harness import PEAKRSS


def peak_mb(tmp_path, code: str) -> float:
    out = tmp_path / "peak"
    subprocess.run([sys.executable, str(PEAKRSS), str(out), sys.executable, "-c", code], check=True, timeout=60)
    return int(out.read_text()) / 1024


def test_a_small_child_of_a_large_test_process_is_measured_small(tmp_path):
    ballast = bytearray(600 * 1024 * 1024)  # zero pages: touched below, so they are resident in this process
    ballast[::4096] = b"x" * len(range(0, len(ballast), 4096))
    assert peak_mb(tmp_path, "pass") < 200
    del ballast


def test_what_the_child_allocates_is_measured(tmp_path):
    grown = peak_mb(tmp_path, "b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(range(0, len(b), 4096))")
    assert 300 <= grown < 500
