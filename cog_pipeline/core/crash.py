"""Crash points for the fault tests: ``COG_PIPELINE_CRASH_AT=<step>[:<n>]`` kills the process group.

A no-op (one string test) unless the variable is set. When it names ``step``, the ``n``-th time this
process reaches that step (default the first) the whole process group is SIGKILLed, as if the host
died there: the tick, Snakemake and its jobs together. Only the fault tests set it, on ticks they
start in their own session. The steps are listed in docs/reliability.md.
"""

from __future__ import annotations

import os
import signal

_AT = os.environ.get("COG_PIPELINE_CRASH_AT", "")
_seen: dict[str, int] = {}


def crash_point(step: str) -> None:
    """SIGKILL this process group here if COG_PIPELINE_CRASH_AT names ``step`` (tests only)."""
    if _AT and _AT.partition(":")[0] == step:
        _seen[step] = _seen.get(step, 0) + 1
        if _seen[step] == int(_AT.partition(":")[2] or 1):
            os.killpg(0, signal.SIGKILL)
