"""``python -m snakemake`` with daemon ``threading.Timer``s (benchmark what-if only).

Snakemake's scheduler arms a 1 s non-daemon Timer (``_schedule_reevalutation`` for the default
``--max-jobs-per-timespan 100/1s``) after every scheduling pass, so the interpreter waits up to 1 s in
``threading._shutdown`` after the workflow is done. ``--max-jobs-per-timespan`` cannot shorten it:
"100/100ms" is parsed as 100 minutes (the unit regex tries "m" before "ms"). Daemon timers let the
process exit at once.
"""

import runpy
import sys
import threading


class _DaemonTimer(threading.Timer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.daemon = True


threading.Timer = _DaemonTimer
sys.argv = ["snakemake", *sys.argv[1:]]
runpy.run_module("snakemake", run_name="__main__", alter_sys=True)
