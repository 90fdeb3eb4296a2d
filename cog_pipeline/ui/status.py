"""``cog-pipeline status``: manifests by state in the bucket, local runs, and the pipeline's HTCondor jobs.

Read-only and cheap: one listing of the input bucket (as a tick does), one small GET per recent
outcome to count its rows, the run directories' own files, and one schedd query when a schedd is
reachable. Works on an empty bucket, without a working directory and without HTCondor. When the
bucket cannot be listed (S3 unreachable, no such bucket) that is one line, the rest is still shown,
and the command exits 1 (:data:`EXIT_BUCKET_UNREADABLE`).
"""

from __future__ import annotations

import calendar
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
from cog_pipeline.core.naming import TIMESTAMP_FORMAT, is_pipeline_object
from cog_pipeline.control.options import HEARTBEAT
from cog_pipeline.core.rundir import ClaimedManifest, RunConfig, RunDir, RunState

_STATE_KEY = re.compile(
    r"^(?P<stem>.*)(?P<state>processing|processed|failed|report)-(?P<ts>\d{8}-\d{6})"
    r"\.(?P<ext>csv|html)$",
    re.DOTALL,
)
#: Exit code of ``status`` when the bucket could not be listed (everything else was still shown).
EXIT_BUCKET_UNREADABLE = 1
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
    raw: list[dict[str, Any]] = []
    processing: list[dict[str, Any]] = []
    outcomes: dict[tuple[str, str], dict[str, Any]] = {}
    now = time.time()
    for obj in s3.iter_objects(client, bucket):
        key = obj["Key"]
        match = _STATE_KEY.match(key)
        if match and not _stem_matches(match["stem"], pattern):
            continue  # another pipeline's manifest (another -p pattern on the same bucket)
        if match and match["state"] == "processing" and match["ext"] == "csv":
            touched = now - obj["LastModified"].timestamp()
            processing.append(
                {
                    "key": key,
                    "since": match["ts"],
                    "age_s": round(now - _epoch(match["ts"])),
                    "last_refresh_s": round(touched),
                    "stale": touched > STALE_AFTER,
                }
            )
        elif match and (match["ext"] == "html") == (match["state"] == "report"):
            entry = outcomes.setdefault((match["stem"], match["ts"]), {"stem": match["stem"], "ts": match["ts"]})
            entry[match["state"]] = key
        elif fnmatch.fnmatchcase(key, pattern) and not is_pipeline_object(key):
            raw.append(
                {
                    "key": key,
                    "uploaded": obj["LastModified"].isoformat(),
                    "age_s": round(now - obj["LastModified"].timestamp()),
                }
            )
    latest = sorted(
        (e for e in outcomes.values() if "processed" in e or "failed" in e), key=lambda e: e["ts"], reverse=True
    )[:recent]
    for entry in latest:
        for state in ("processed", "failed"):
            key = entry.get(state)
            entry[f"{state}_rows"] = _count_rows(client, bucket, key) if key else None
    return {"name": bucket, "pattern": pattern, "raw": raw, "processing": processing, "finished": latest}


def _count_rows(client: Any, bucket: str, key: str) -> int | None:
    """Rows of an outcome CSV (CSV rows, not lines: a quoted key may hold a line break)."""
    try:
        text = s3.get_bytes(client, bucket, key).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a count is best effort
        return None
    from cog_pipeline.work.manifest import csv_reader

    return sum(1 for row in csv_reader(text) if any(field.strip() for field in row))


def _run_state(run: RunDir, config: RunConfig, finished: bool, pool: dict[str, Any]) -> str:
    if finished:
        return "finished"
    if run.locked():
        return "running"
    if config.executor == "htcondor":
        if not pool.get("reachable"):
            return "unfinished (pool run; no schedd to ask)"
        jobs = [j for j in pool["jobs"] if j.get("run") == config.run_id]
        if any(j["status"] == "held" for j in jobs):
            return "held on the pool"
        if jobs:
            return "running on the pool"
    return "stalled (nothing drives it; the next tick in this directory resumes it)"


def manifest_counts(run: RunDir, manifest: ClaimedManifest) -> tuple[int, int, int]:
    """(done, failed, pending) rows of one claimed manifest, counted as the bucket's outcome CSVs count them.

    A finished manifest (its outcome written) has the outcome's counts and nothing pending, even when a
    batch of it was removed before it recorded anything. Before that, rejected rows (bad key, bad band
    count, duplicates) count as failed, like the failed CSV will list them; rows without a record yet
    are pending.
    """
    from cog_pipeline.work.manifest import read_manifest
    from cog_pipeline.work.outcomes import read_summary, recorded_failures

    summary = read_summary(run.path, manifest.id)
    if summary is not None:
        return int(summary["processed"]), int(summary["failed"]), 0
    parsed = read_manifest(run.manifest_csv(manifest))
    recorded = recorded_failures(run.path, manifest.id)
    keys = {entry.key for entry in parsed.entries}
    failed = sum(1 for key, bad in recorded.items() if bad and key in keys)
    done = sum(1 for key, bad in recorded.items() if not bad and key in keys)
    return done, failed + len(parsed.rejected), max(len(keys) - done - failed, 0)


#: What status says of a run directory without run.yaml (RunState.NEW or CLAIMING).
INCOMPLETE = (
    "incomplete (no run.yaml yet: a tick is claiming into it, or died while claiming; the next tick repairs it)"
)


def local_runs(workdir: Path, pool: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every ``workflow-run-*`` directory of ``workdir``: state, done / failed / pending, elapsed time. A run
    whose run.yaml the loader refuses is shown ``invalid`` with the loader's reason (ticks leave it alone)."""
    pool = pool or {"reachable": False}
    runs: list[dict[str, Any]] = []
    now = time.time()
    for run in RunDir.all_in(Path(workdir)):
        state = run.state
        if state in (RunState.NEW, RunState.CLAIMING):
            runs.append({"run_dir": str(run.path), "state": INCOMPLETE})
            continue
        try:
            config = run.config  # RunState.INVALID (or a finished run whose run.yaml went bad) raises
        except PipelineError as exc:
            runs.append(
                {
                    "run_dir": str(run.path),
                    "problem": str(exc),
                    "state": f"invalid (ticks leave it alone; fix or remove its run.yaml): {exc}",
                }
            )
            continue
        finished = state in (RunState.AGGREGATED, RunState.FINISHED) and bool(config.manifests)
        done = failed = pending = 0
        ends = []
        for manifest in config.manifests:
            try:
                counts = manifest_counts(run, manifest)
            except (OSError, ValueError, KeyError, PipelineError):
                counts = (0, 0, 0)
            done, failed, pending = done + counts[0], failed + counts[1], pending + counts[2]
            outcome = run.outcome(manifest.id)
            if outcome.is_file():
                ends.append(outcome.stat().st_mtime)
        try:
            started = _epoch(config.run_id)
        except ValueError:
            started = run.config_file.stat().st_mtime
        end = max(ends) if finished and ends else now
        try:
            warnings = [] if finished else run.heartbeat_warning.read_text(encoding="utf-8").splitlines()
        except OSError:
            warnings = []
        runs.append(
            {
                "warnings": warnings,
                "run_dir": str(run.path),
                "run_id": config.run_id,
                "executor": config.executor,
                "state": _run_state(run, config, finished, pool),
                "manifests": [m.raw_key for m in config.manifests],
                "done": done,
                "failed": failed,
                "pending": pending,
                "elapsed_s": round(end - started),
                "report": str(run.report) if run.report.is_file() else None,
            }
        )
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
        group = groups.setdefault(
            job["batch_name"],
            {"batch_name": job["batch_name"], "roles": set(), "runs": set(), "states": Counter(), "held": []},
        )
        group["roles"].add(job["role"])
        if job["run"]:
            group["runs"].add(job["run"])
        group["states"][job["status"]] += 1
        if job["hold_reason"]:
            group["held"].append({"job": job["cluster"], "reason": job["hold_reason"]})
        if job.get("next_run"):
            group["next_run"] = min(group.get("next_run") or job["next_run"], job["next_run"])
    by_batch = [
        {**g, "roles": sorted(g["roles"]), "runs": sorted(g["runs"]), "states": dict(g["states"])}
        for g in sorted(groups.values(), key=lambda g: g["batch_name"])
    ]
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
    return {
        "probed": True,
        "capabilities": caps.as_dict(),
        "refusal": refusal,
        "commit": sem.commit if sem else None,
        "fallbacks": list(sem.fallbacks) if sem else [],
        "table": endpoint.table(caps, sem, refusal),
    }


def collect(
    client: Any | None,
    bucket: str | None,
    workdir: Path,
    pattern: str = "*raw.csv",
    settings: s3.S3Settings | None = None,
) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-friendly dict."""
    state: dict[str, Any] = {"checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "workdir": str(workdir)}
    if client is not None and bucket:
        try:
            state["bucket"] = bucket_state(client, bucket, pattern)
        except Exception as exc:  # noqa: BLE001 - shown in one line; local runs and the pool are still shown
            state["bucket_error"] = f"cannot list bucket '{bucket}': {s3.describe_error(exc)}"
        state["endpoint"] = endpoint_state(settings or s3.S3Settings(), bucket, workdir)
    state["htcondor"] = pool_jobs()
    state["runs"] = local_runs(workdir, state["htcondor"])
    return state


def render_text(state: dict[str, Any]) -> str:
    """A plain-text view of :func:`collect`'s result."""
    out = []
    bucket = state.get("bucket")
    if state.get("bucket_error"):
        out.append(f"Input bucket: S3 UNREACHABLE: {state['bucket_error']} (local runs and HTCondor jobs below)")
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
                line += (
                    f"; STALE: not refreshed for {ago(p['last_refresh_s'])}, its run may have died: a tick in "
                    "its working directory resumes it, any tick adopts it after 6 h"
                )
            out.append(line + ")")
        out.append(
            f"  finished:       {len(bucket['finished'])} most recent"
            + (f"  ({failing} with failed rows)" if failing else "")
        )
        for f in bucket["finished"]:
            counts = f"{_count(f.get('processed_rows'))} processed, {_count(f.get('failed_rows'))} failed"
            out.append(f"    {f.get('processed') or f['failed']}  {counts}")
            if f.get("failed_rows"):
                out.append(
                    f"      failed rows: {f['failed']}  (once fixed: cog-pipeline retry -a KEY -s KEY -e HOST "
                    f"--input-bucket {shlex.quote(bucket['name'])} {shlex.quote(f['failed'])})"
                )
            if f.get("report"):
                out.append(f"      report: {f['report']}")
        if not (bucket["raw"] or bucket["processing"] or bucket["finished"]):
            out.append("  (no manifest in this bucket yet: upload the images, then <name>-raw.csv)")
    probed = state.get("endpoint")
    if probed is not None:
        out.append(
            probed["table"]
            if probed["probed"]
            else "S3 endpoint: not probed from this working directory yet (the next tick probes it; "
            "or run cog-pipeline check-endpoint)"
        )
    runs = state["runs"]
    out.append(f"Runs in {state['workdir']}: {len(runs)}")
    for run in runs:
        name = Path(run["run_dir"]).name
        if "done" not in run:
            out.append(f"  {name}  {run['state']}")
            continue
        took = "took" if run["state"] == "finished" else "for"
        out.append(
            f"  {name}  {run['state']}: {run['done']} processed, {run['failed']} failed, "
            f"{run['pending']} pending, {took} {ago(run['elapsed_s'])}"
        )
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
            when = (
                f" (next at {time.strftime('%H:%M:%S UTC', time.gmtime(group['next_run']))})"
                if group.get("next_run")
                else ""
            )
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
