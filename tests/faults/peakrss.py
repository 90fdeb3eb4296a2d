"""Run a command and write the peak RSS of its process tree (KiB, from ``os.wait4``) to a file.

``python peakrss.py OUT CMD...``: exits with CMD's exit code (128 + N when signal N ended it). A process's
peak RSS includes what it was at its exec, and a child's exec starts from its parent's: spawned straight from a
test process (hundreds of MB after earlier tests), the figure would be the test's, not the tick's. This small
process in between is the parent each measured tree starts from (bench/launch.py does the same for the
benchmarks).
"""

import os
import subprocess
import sys


def main() -> int:
    out, command = sys.argv[1], sys.argv[2:]
    child = subprocess.Popen(command)
    _pid, status, usage = os.wait4(child.pid, 0)
    with open(out, "w", encoding="ascii") as fh:
        fh.write(f"{usage.ru_maxrss}\n")
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
