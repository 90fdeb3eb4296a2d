"""``ticks.log``: one timestamped line per thing the pipeline did in a working directory (claims, adoptions,
resumes, run directories, driver clusters, and each run's outcome), appended by ticks and drivers alike:
``crondor_<cluster>.out`` only keeps the latest tick's output."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cog_pipeline.core.naming import plural
from cog_pipeline.core.rundir import RunDir

log = logging.getLogger(__name__)

#: The log's name in the working directory.
TICKS_LOG = "ticks.log"


def append(workdir: Path, text: str) -> None:
    """Append ``<UTC time> <text>`` as one line to the working directory's :data:`TICKS_LOG` (a failure to
    write it is a warning: the log never stops a tick or a driver)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    path = Path(workdir) / TICKS_LOG
    line = " ".join(f"{stamp} {text}".splitlines())  # one line, whatever a key holds
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError as exc:
        log.warning("cannot append to %s: %s", path, exc.strerror)


def outcome_line(run: RunDir, summaries: Sequence[Mapping[str, Any]]) -> str:
    """What a driven run ended with: ``<run_id> finished: N processed, M failed (<raw manifest keys>) report
    <path>``, or ``<run_id> unfinished: ...`` naming the manifests still without an outcome."""
    config = run.config
    done = {str(s.get("raw_key")) for s in summaries}
    missing = [m.raw_key for m in config.manifests if m.raw_key not in done]
    processed = sum(int(s.get("processed") or 0) for s in summaries)
    failed = sum(int(s.get("failed") or 0) for s in summaries)
    keys = ", ".join(str(s.get("raw_key")) for s in summaries)
    report = str(run.report) if run.report.is_file() else "none"
    text = (
        f"{config.run_id} {'unfinished' if missing else 'finished'}: {processed} processed, {failed} failed "
        f"({keys or 'no manifest aggregated'}) report {report}"
    )
    if missing:
        text += (
            f"; {plural(len(missing), 'manifest')} without outcome: {', '.join(missing)} "
            f"(see {run.snakemake_log}; the next tick resumes it)"
        )
    return text


def record_outcome(run: RunDir, summaries: Sequence[Mapping[str, Any]]) -> None:
    """Append the run's :func:`outcome_line` to the ticks.log of its working directory (its parent)."""
    append(run.path.parent, outcome_line(run, summaries))
