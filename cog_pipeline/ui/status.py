"""``cog-pipeline status``: manifests by state in the bucket, local runs, and the pipeline's HTCondor jobs.

Read-only and cheap: one listing of the input bucket (as a tick does), one small GET per recent
outcome to count its rows, the run directories' own files, and one schedd query when a schedd is
reachable. Works on an empty bucket, without a working directory and without HTCondor.
"""

from __future__ import annotations

import calendar
import fcntl
import fnmatch
import json
import re
import shlex
import time
from collections import Counter
from pathlib import Path
from typing import Any

from cog_pipeline.storage import endpoint, s3
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import (HEARTBEAT_WARNING, RUN_CONFIG, RUN_DIR_PREFIX, TIMESTAMP_FORMAT, is_pipeline_object,
                     outcome_path)
from cog_pipeline.control.options import HEARTBEAT

_STATE_KEY = re.compile(r"^(?P<stem>.*)(?P<state>processing|processed|failed|report)-(?P<ts>\d{8}-\d{6})"
                        r"\.(?P<ext>csv|html)$", re.DOTALL)
#: A processing object not refreshed for this long has probably lost its run (live runs refresh it
#: every options.HEARTBEAT seconds).
STALE_AFTER = 2 * HEARTBEAT


def _epoch(ts: str) -> float:
    """Seconds since the epoch of a UTC ``YYYYmmdd-HHMMSS`` timestamp."""
    return calendar.timegm(time.strptime(ts, TIMESTAMP_FORMAT))


def ago(seconds: float | None) -> str:
    """``42 s``, ``3 min``, ``2 h 5 min``, ``3 d 4 h``."""
    if seconds is None:
        return "?"
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _stem_matches(stem: str, pattern: str) -> bool:
    """Whether a manifest stem (``X-`` of ``X-processing-<TS>.csv``) came from a raw key matching ``pattern``.

    The raw key is ``<stem>raw.csv`` or, for a manifest not named ``...raw.csv``, ``<stem minus "-">.csv``
    (:func:`~cog_pipeline.core.naming.manifest_stem`); either matching is enough.
    """
    candidates = [stem + "raw.csv"] + ([stem[:-1] + ".csv"] if stem.endswith("-") else [])
    return any(fnmatch.fnmatchcase(c, pattern) for c in candidates)


def bucket_state(client: Any, bucket: str, pattern: str = "*raw.csv", recent: int = 20) -> dict[str, Any]:
    """Manifests waiting (raw), in progress (processing: since when, last refreshed, stale?), and the
    ``recent`` latest outcomes with their processed / failed row counts."""
    raw, processing, outcomes = [], [], {}
    now = time.time()
    for obj in s3.iter_objects(client, bucket):
        key = obj["Key"]
        match = _STATE_KEY.match(key)
        if match and not _stem_matches(match["stem"], pattern):
            continue  # another pipeline's manifest (another -p pattern on the same bucket)
        if match and match["state"] == "processing" and match["ext"] == "csv":
            touched = now - obj["LastModified"].timestamp()
            processing.append({"key": key, "since": match["ts"], "age_s": round(now - _epoch(match["ts"])),
                               "last_refresh_s": round(touched), "stale": touched > STALE_AFTER})
        elif match and (match["ext"] == "html") == (match["state"] == "report"):
            entry = outcomes.setdefault((match["stem"], match["ts"]), {"stem": match["stem"], "ts": match["ts"]})
            entry[match["state"]] = key
        elif fnmatch.fnmatchcase(key, pattern) and not is_pipeline_object(key):
            raw.append({"key": key, "uploaded": obj["LastModified"].isoformat(),
                        "age_s": round(now - obj["LastModified"].timestamp())})
    latest = sorted((e for e in outcomes.values() if "processed" in e or "failed" in e),
                    key=lambda e: e["ts"], reverse=True)[:recent]
    for entry in latest:
        for state in ("processed", "failed"):
            key = entry.get(state)
            entry[f"{state}_rows"] = _count_rows(client, bucket, key) if key else None
    return {"name": bucket, "pattern": pattern, "raw": raw, "processing": processing, "finished": latest}


def _count_rows(client: Any, bucket: str, key: str) -> int | None:
    try:
        return sum(1 for line in s3.get_bytes(client, bucket, key).splitlines() if line.strip())
    except Exception:  # noqa: BLE001 - a count is best effort
        return None


def _locked(run_dir: Path) -> bool:
    """True when a live process holds the run's lock (it is being driven on this host)."""
    from cog_pipeline.control.rundirs import RUN_LOCK

    try:
        with open(run_dir / RUN_LOCK, "rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def _run_state(run_dir: Path, config: dict[str, Any], finished: bool, pool: dict[str, Any]) -> str:
    if finished:
        return "finished"
    if _locked(run_dir):
        return "running"
    if config.get("executor") == "htcondor":
        if not pool.get("reachable"):
            return "unfinished (pool run; no schedd to ask)"
        jobs = [j for j in pool["jobs"] if j.get("run") == str(config.get("run_id"))]
        if any(j["status"] == "held" for j in jobs):
            return "held on the pool"
        if jobs:
            return "running on the pool"
    return "stalled (nothing drives it; the next tick in this directory resumes it)"


def local_runs(workdir: Path, pool: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every ``workflow-run-*`` directory of ``workdir``: state, done / failed / pending, elapsed time."""
    import yaml

    from cog_pipeline.work.batch import manifest_entries
    from cog_pipeline.control.progress import count_records

    pool = pool or {"reachable": False}
    runs = []
    now = time.time()
    for run_dir in sorted(p for p in Path(workdir).glob(f"{RUN_DIR_PREFIX}*") if p.is_dir()):
        config_path = run_dir / RUN_CONFIG
        try:
            config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            runs.append({"run_dir": str(run_dir), "state": "incomplete (no readable run.yaml: a tick died while "
                                                            "claiming; the next tick repairs it)"})
            continue
        total = 0
        recorded, failed = count_records(run_dir)  # finished batches and the ones in progress
        done = recorded - failed
        finished = bool(config.get("manifests"))
        ends = []
        for manifest in config.get("manifests", []):
            try:
                total += len(manifest_entries(run_dir, manifest))
            except OSError:
                pass
            outcome = outcome_path(run_dir, manifest["id"])
            finished = finished and outcome.is_file()
            if outcome.is_file():
                ends.append(outcome.stat().st_mtime)
        try:
            started = _epoch(str(config.get("run_id")))
        except ValueError:
            started = config_path.stat().st_mtime
        end = max(ends) if finished and ends else now
        report = run_dir / "report.html"
        try:
            warnings = [] if finished else (run_dir / HEARTBEAT_WARNING).read_text(encoding="utf-8").splitlines()
        except OSError:
            warnings = []
        runs.append({"warnings": warnings, "run_dir": str(run_dir), "run_id": config.get("run_id"),
                     "executor": config.get("executor", "local"),
                     "state": _run_state(run_dir, config, finished, pool),
                     "manifests": [m.get("raw_key") for m in config.get("manifests", [])],
                     "done": done, "failed": failed, "pending": max(total - done - failed, 0),
                     "elapsed_s": round(end - started),
                     "report": str(report) if report.is_file() else None})
    return runs


def pool_jobs() -> dict[str, Any]:
    """The pipeline's HTCondor jobs, grouped by batch name, or why they cannot be shown."""
    try:
        from cog_pipeline import htcondor

        jobs = htcondor.pipeline_jobs()
    except PipelineError as exc:
        return {"reachable": False, "reason": str(exc)}
    except ImportError as exc:
        return {"reachable": False, "reason": f"HTCondor bindings not installed: {exc}"}
    except Exception as exc:  # noqa: BLE001 - status must always answer
        return {"reachable": False, "reason": f"cannot query the schedd: {type(exc).__name__}: {exc}"}
    groups: dict[str, dict[str, Any]] = {}
    for job in jobs:
        group = groups.setdefault(job["batch_name"], {"batch_name": job["batch_name"], "roles": set(),
                                                      "runs": set(), "states": Counter(), "held": []})
        group["roles"].add(job["role"])
        if job["run"]:
            group["runs"].add(job["run"])
        group["states"][job["status"]] += 1
        if job["hold_reason"]:
            group["held"].append({"job": job["cluster"], "reason": job["hold_reason"]})
        if job.get("next_run"):
            group["next_run"] = min(group.get("next_run") or job["next_run"], job["next_run"])
    by_batch = [{**g, "roles": sorted(g["roles"]), "runs": sorted(g["runs"]), "states": dict(g["states"])}
                for g in sorted(groups.values(), key=lambda g: g["batch_name"])]
    return {"reachable": True, "jobs": jobs, "by_batch_name": by_batch}


def endpoint_state(settings: s3.S3Settings, bucket: str, workdir: Path) -> dict[str, Any]:
    """The endpoint's probe answers cached in ``workdir`` (no request is sent) and what ticks do with them."""
    caps = endpoint.cached(workdir, settings, bucket)
    if caps is None:
        return {"probed": False}
    try:
        sem, refusal = endpoint.semantics(caps, settings, settings.delete_fallback), None
    except PipelineError as exc:
        sem, refusal = None, str(exc)
    return {"probed": True, "capabilities": caps.as_dict(), "refusal": refusal,
            "commit": sem.commit if sem else None, "fallbacks": list(sem.fallbacks) if sem else [],
            "table": endpoint.table(caps, sem, refusal)}


def collect(client: Any | None, bucket: str | None, workdir: Path, pattern: str = "*raw.csv",
            settings: s3.S3Settings | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-friendly dict."""
    state: dict[str, Any] = {"checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "workdir": str(workdir)}
    if client is not None and bucket:
        try:
            state["bucket"] = bucket_state(client, bucket, pattern)
        except Exception as exc:  # noqa: BLE001
            raise PipelineError(f"cannot list bucket '{bucket}': {s3.describe_error(exc)}") from None
        state["endpoint"] = endpoint_state(settings or s3.S3Settings(), bucket, workdir)
    state["htcondor"] = pool_jobs()
    state["runs"] = local_runs(workdir, state["htcondor"])
    return state


def render_text(state: dict[str, Any]) -> str:
    """A plain-text view of :func:`collect`'s result."""
    out = []
    bucket = state.get("bucket")
    if bucket:
        stale = sum(1 for p in bucket["processing"] if p["stale"])
        failing = sum(1 for f in bucket["finished"] if f.get("failed_rows"))
        out.append(f"Input bucket {bucket['name']} (manifests matching {bucket['pattern']!r}):")
        out.append(f"  waiting (raw):  {len(bucket['raw'])}")
        for r in bucket["raw"]:
            out.append(f"    {r['key']}  (uploaded {ago(r['age_s'])} ago)")
        out.append(f"  processing:     {len(bucket['processing'])}" + (f"  ({stale} STALE)" if stale else ""))
        for p in bucket["processing"]:
            line = f"    {p['key']}  (since {_show_ts(p['since'])}, {ago(p['age_s'])} ago"
            if p["stale"]:
                line += (f"; STALE: not refreshed for {ago(p['last_refresh_s'])}, its run may have died: a tick in "
                         "its working directory resumes it, any tick adopts it after 6 h")
            out.append(line + ")")
        out.append(f"  finished:       {len(bucket['finished'])} most recent" +
                   (f"  ({failing} with failed rows)" if failing else ""))
        for f in bucket["finished"]:
            counts = f"{_count(f.get('processed_rows'))} processed, {_count(f.get('failed_rows'))} failed"
            out.append(f"    {f['stem']}…-{f['ts']}  {counts}")
            if f.get("failed_rows"):
                out.append(f"      failed rows: {f['failed']}  (once fixed: cog-pipeline retry -a KEY -s KEY -e HOST "
                           f"--input-bucket {shlex.quote(bucket['name'])} {shlex.quote(f['failed'])})")
            if f.get("report"):
                out.append(f"      report: {f['report']}")
        if not (bucket["raw"] or bucket["processing"] or bucket["finished"]):
            out.append("  (no manifest in this bucket yet: upload the images, then <name>-raw.csv)")
    probed = state.get("endpoint")
    if probed is not None:
        out.append(probed["table"] if probed["probed"] else
                   "S3 endpoint: not probed from this working directory yet (the next tick probes it; "
                   "or run cog-pipeline check-endpoint)")
    runs = state["runs"]
    out.append(f"Runs in {state['workdir']}: {len(runs)}")
    for run in runs:
        name = Path(run["run_dir"]).name
        if "done" not in run:
            out.append(f"  {name}  {run['state']}")
            continue
        took = "took" if run["state"] == "finished" else "for"
        out.append(f"  {name}  {run['state']}: {run['done']} done, {run['failed']} failed, {run['pending']} pending"
                   f", {took} {ago(run['elapsed_s'])}")
        if run.get("report"):
            out.append(f"      report: {run['report']}")
        for warning in run.get("warnings", []):
            out.append(f"      WARNING {warning}")
    pool = state["htcondor"]
    if pool["reachable"]:
        groups = pool["by_batch_name"]
        out.append(f"HTCondor jobs of this pipeline: {len(pool['jobs'])}" + ("" if groups else " (none queued)"))
        for group in groups:
            states = ", ".join(f"{n} {s}" for s, n in sorted(group["states"].items()))
            runs_text = f" runs {', '.join(group['runs'])}" if group["runs"] else ""
            when = (f" (next at {time.strftime('%H:%M:%S UTC', time.gmtime(group['next_run']))})"
                    if group.get("next_run") else "")
            out.append(f"  {group['batch_name']}  ({'/'.join(group['roles'])}{runs_text}): {states}{when}")
            for held in group["held"][:5]:
                out.append(f"      held {held['job']}: {held['reason']}")
    else:
        out.append(f"HTCondor: {pool['reason']}")
    return "\n".join(out)


def _count(n: int | None) -> str:
    return "?" if n is None else str(n)


def _show_ts(ts: str) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(_epoch(ts)))


def render_json(state: dict[str, Any]) -> str:
    """The JSON view for scripts."""
    return json.dumps(state, indent=2, ensure_ascii=False, default=str)
