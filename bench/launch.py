"""``python bench/launch.py RESULT.json -- CMD ...``: run CMD and write its wall time and rusage; exits with CMD's
exit code (128 + N when signal N ended it).

Why a launcher: on Linux a child's ``ru_maxrss`` starts from the RSS of the process that forked it
(exec records the old address space's high-water mark), so measuring from the benchmark process,
which grows to hundreds of MB, would floor every figure at the benchmark's own size. This launcher
is small (~10 MB), so the peak it reports is the command's own (or that of its largest descendant). The
memory-bound fault tests start their ticks through it too (tests/faults/harness.py).
"""

import json
import os
import subprocess
import sys
import time

result_path, argv = sys.argv[1], sys.argv[3:]
t0 = time.perf_counter()
proc = subprocess.Popen(argv)
_pid, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - t0
code = os.waitstatus_to_exitcode(status)
with open(result_path, "w") as fh:
    json.dump(
        {
            "wall": wall,
            "rss_mb": usage.ru_maxrss / 1024.0,
            "user": usage.ru_utime,
            "sys": usage.ru_stime,
            "returncode": code,
        },
        fh,
    )
sys.exit(128 - code if code < 0 else code)
