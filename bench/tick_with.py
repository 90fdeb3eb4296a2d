"""``cog-pipeline`` with run-config overrides: ``python bench/tick_with.py '{"batch_size": 50}' tick ...``.

The tick API has no config override, so this wraps ``cog_pipeline.control.tick.run_config`` to add the given
keys to the run.yaml it writes (run.yaml is read after config/config.yaml, so its values win for
Snakemake, the batch jobs and the aggregate alike). Used by the benchmark only.
"""

import json
import sys
import time

T_START = time.time()

from cog_pipeline.ui import cli  # noqa: E402
from cog_pipeline.control import driver, tick  # noqa: E402

overrides = json.loads(sys.argv[1])
# "__daemon_timers": run Snakemake through bench/snakemake_daemon_timers.py (what-if, see that file).
if overrides.pop("__daemon_timers", False):
    from pathlib import Path

    _command = driver.snakemake_command
    _wrapper = str(Path(__file__).with_name("snakemake_daemon_timers.py"))

    def snakemake_command(*args, **kwargs):
        cmd = _command(*args, **kwargs)
        i = cmd.index("-m")
        return [*cmd[:i], _wrapper, *cmd[i + 2 :]]

    driver.snakemake_command = snakemake_command
_original = tick.run_config


def run_config(*args, **kwargs):
    config = _original(*args, **kwargs)
    config.update(overrides)
    return config


tick.run_config = run_config

# Timestamps for the benchmark's breakdown: imports done, Snakemake start/end, finish (aggregate) end.
TIMES = {"process_start": T_START}
_run_snakemake, _finish = driver.run_snakemake, driver.finish


def run_snakemake(*args, **kwargs):
    TIMES["snakemake_start"] = time.time()
    try:
        return _run_snakemake(*args, **kwargs)
    finally:
        TIMES["snakemake_end"] = time.time()


def finish(*args, **kwargs):
    try:
        return _finish(*args, **kwargs)
    finally:
        TIMES["finish_end"] = time.time()


driver.run_snakemake, driver.finish = run_snakemake, finish
TIMES["imports_done"] = time.time()
code = cli.main(sys.argv[2:])
TIMES["main_end"] = time.time()
print("BENCH_TIMES " + json.dumps(TIMES), flush=True)
sys.exit(code)
