"""Run a command in a fresh process and measure it: wall time, peak RSS (``os.wait4``), load average.

``ru_maxrss`` from ``wait4`` is the largest resident set of the child *or of any descendant it
waited for* (Linux keeps the maximum, not a sum), so a CLI that starts Snakemake is measured by its
biggest process. Commands are started through ``bench/launch.py`` (a small process): a child's
``ru_maxrss`` starts from the RSS of whoever forked it, and this benchmark process grows large.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def load() -> float:
    """1-minute load average (other engineers run tests on this machine too)."""
    return round(os.getloadavg()[0], 2)


def run(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
    stdout_path: Path | None = None,
) -> dict[str, Any]:
    """Run ``argv``; returns wall seconds, peak RSS in MB, return code, output, load before/after."""
    import tempfile

    load_before = load()
    started_epoch = time.time()
    # SIM115 (not a with block): the child writes to this file until proc.wait(); it is closed right after that
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE  # noqa: SIM115
    fd, result_path = tempfile.mkstemp(prefix="bench-launch-", suffix=".json")
    os.close(fd)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "launch.py"), result_path, "--", *argv],
        cwd=cwd,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    output = b""
    if stdout_path is None:
        # Drain the pipe while waiting (a full pipe would block the child).
        chunks = []
        while True:
            chunk = proc.stdout.read1(1 << 16) if hasattr(proc.stdout, "read1") else proc.stdout.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        output = b"".join(chunks)
    proc.wait()
    outer_wall = time.perf_counter() - t0
    if stdout_path:
        out.close()
    try:
        with open(result_path) as fh:
            res = json.load(fh)
    except (OSError, ValueError):
        res = {"wall": outer_wall, "rss_mb": float("nan"), "user": 0.0, "sys": 0.0, "returncode": proc.returncode}
    finally:
        os.unlink(result_path)
    wall = res["wall"]
    return {
        "wall": wall,
        "started": started_epoch,
        "rss_mb": res["rss_mb"],
        "user": res["user"],
        "sys": res["sys"],
        "cpu_util": (res["user"] + res["sys"]) / wall if wall else 0.0,
        "returncode": res["returncode"],
        "output": output.decode("utf-8", "replace"),
        "load": max(load_before, load()),
    }


def run_task(
    name: str, timeout: float = 1800, extra_env: dict[str, str] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Run ``bench/tasks.py NAME`` in a fresh interpreter; merges the task's own JSON line in."""
    env = dict(os.environ)
    env.update(extra_env or {})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    res = run([sys.executable, str(BENCH_DIR / "tasks.py"), name, json.dumps(kwargs)], env=env, timeout=timeout)
    if res["returncode"] != 0:
        raise RuntimeError(f"task {name} failed ({res['returncode']}):\n{res['output'][-3000:]}")
    last = [line for line in res["output"].splitlines() if line.startswith("{")][-1]
    res.update(json.loads(last))
    return res
