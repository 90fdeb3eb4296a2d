"""``cog-pipeline status``: manifests by state in the bucket, local runs, and the pipeline's HTCondor jobs."""

from __future__ import annotations

import calendar
import fnmatch
import json
import re
import time
from pathlib import Path
from typing import Any

from . import s3
from .errors import PipelineError
from .naming import RUN_CONFIG, RUN_DIR_PREFIX, TIMESTAMP_FORMAT, is_pipeline_object, outcome_path

_STATE_KEY = re.compile(r"^(?P<stem>.*)(?P<state>processing|processed|failed)-(?P<ts>\d{8}-\d{6})\.csv$", re.DOTALL)


def _age(ts: str, now: float) -> float:
    """Seconds since a UTC ``YYYYmmdd-HHMMSS`` timestamp."""
    return now - calendar.timegm(time.strptime(ts, TIMESTAMP_FORMAT))


def bucket_state(client: Any, bucket: str, pattern: str = "*raw.csv", recent: int = 20) -> dict[str, Any]:
    """Manifests waiting (raw), in progress (processing, with age), and the ``recent`` latest outcomes."""
    raw, processing, outcomes = [], [], {}
    now = time.time()
    for obj in s3.iter_objects(client, bucket):
        key = obj["Key"]
        match = _STATE_KEY.match(key)
        if match and match["state"] == "processing":
            processing.append({"key": key, "since": match["ts"], "age_s": round(_age(match["ts"], now))})
        elif match:
            entry = outcomes.setdefault((match["stem"], match["ts"]), {"stem": match["stem"], "ts": match["ts"]})
            entry[match["state"]] = key
        elif fnmatch.fnmatchcase(key, pattern) and not is_pipeline_object(key):
            raw.append({"key": key, "uploaded": obj["LastModified"].isoformat()})
    latest = sorted(outcomes.values(), key=lambda e: e["ts"], reverse=True)[:recent]
    for entry in latest:
        for state in ("processed", "failed"):
            key = entry.get(state)
            entry[f"{state}_rows"] = _count_rows(client, bucket, key) if key else None
    return {"raw": raw, "processing": processing, "finished": latest}


def _count_rows(client: Any, bucket: str, key: str) -> int | None:
    try:
        return sum(1 for line in s3.get_bytes(client, bucket, key).splitlines() if line.strip())
    except Exception:  # noqa: BLE001 - a count is best effort
        return None


def local_runs(workdir: Path) -> list[dict[str, Any]]:
    """Every ``workflow-run-*`` directory of ``workdir``: per-run done / failed / pending and elapsed time."""
    import yaml

    from .batch import manifest_entries, read_status_records

    runs = []
    for run_dir in sorted(Path(workdir).glob(f"{RUN_DIR_PREFIX}*")):
        config_path = run_dir / RUN_CONFIG
        if not config_path.is_file():
            runs.append({"run_dir": str(run_dir), "state": "incomplete (no run.yaml)"})
            continue
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        done = failed = total = 0
        finished = True
        last = config_path.stat().st_mtime
        for manifest in config.get("manifests", []):
            total += len(manifest_entries(run_dir, manifest))
            for record in read_status_records(run_dir, manifest["id"]).values():
                if record["status"] == "failed":
                    failed += 1
                else:
                    done += 1
            outcome = outcome_path(run_dir, manifest["id"])
            finished = finished and outcome.is_file()
            if outcome.is_file():
                last = max(last, outcome.stat().st_mtime)
        started = config_path.stat().st_mtime
        runs.append({"run_dir": str(run_dir), "state": "finished" if finished else "unfinished",
                     "manifests": [m["raw_key"] for m in config.get("manifests", [])],
                     "done": done, "failed": failed, "pending": max(total - done - failed, 0),
                     "elapsed_s": round((last if finished else time.time()) - started)})
    return runs


def pool_jobs() -> dict[str, Any]:
    """The pipeline's HTCondor jobs, or why they cannot be shown."""
    try:
        from . import htcondor

        return {"reachable": True, "jobs": htcondor.pipeline_jobs()}
    except PipelineError as exc:
        return {"reachable": False, "reason": str(exc)}
    except ImportError as exc:
        return {"reachable": False, "reason": f"HTCondor bindings not installed: {exc}"}


def collect(client: Any | None, bucket: str | None, workdir: Path, pattern: str = "*raw.csv") -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-friendly dict."""
    state: dict[str, Any] = {"workdir": str(workdir)}
    if client is not None and bucket:
        try:
            state["bucket"] = {"name": bucket, **bucket_state(client, bucket, pattern)}
        except Exception as exc:  # noqa: BLE001
            raise PipelineError(f"cannot list bucket '{bucket}': {s3.describe_error(exc)}") from None
    state["runs"] = local_runs(workdir)
    state["htcondor"] = pool_jobs()
    return state


def render_text(state: dict[str, Any]) -> str:
    """A plain-text view of :func:`collect`'s result."""
    out = []
    bucket = state.get("bucket")
    if bucket:
        out.append(f"Bucket {bucket['name']}:")
        out.append(f"  waiting (raw): {len(bucket['raw'])}" + "".join(f"\n    {r['key']}" for r in bucket["raw"]))
        out.append(f"  processing: {len(bucket['processing'])}" + "".join(
            f"\n    {p['key']} (since {p['since']} UTC, {p['age_s'] // 60} min)" for p in bucket["processing"]))
        out.append(f"  finished (latest {len(bucket['finished'])}):")
        for f in bucket["finished"]:
            out.append(f"    {f['stem']}*-{f['ts']}: {f.get('processed_rows')} processed, {f.get('failed_rows')} failed"
                       + (f"  -> {f['failed']}" if f.get("failed_rows") else ""))
    out.append(f"Runs in {state['workdir']}: {len(state['runs'])}")
    for run in state["runs"]:
        if "done" not in run:
            out.append(f"  {Path(run['run_dir']).name}: {run['state']}")
            continue
        out.append(f"  {Path(run['run_dir']).name}: {run['state']}, {run['done']} done, {run['failed']} failed, "
                   f"{run['pending']} pending, {run['elapsed_s']} s")
    pool = state["htcondor"]
    if pool["reachable"]:
        out.append(f"HTCondor jobs of this pipeline: {len(pool['jobs'])}")
        for job in pool["jobs"]:
            out.append(f"  {job['cluster']} {job['batch_name']} {job['role']} {job['status']}"
                       + (f" ({job['hold_reason']})" if job["hold_reason"] else ""))
    else:
        out.append(f"HTCondor: {pool['reason']}")
    return "\n".join(out)


def render_json(state: dict[str, Any]) -> str:
    """The JSON view for scripts."""
    return json.dumps(state, indent=2, ensure_ascii=False, default=str)
