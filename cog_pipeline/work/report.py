"""The run report: ``workflow-run-<TS>/report.html``, one self-contained page per run.

Summary counts, then one row per image (failed rows first) with its key, sizes, bands, data type,
compression ratio, time, outcome, reason and what to do, and a small thumbnail (made by the batch job
from the COG's overviews, see thumbnail.py) embedded as a data URI. Everything that comes from users
or files (keys, reasons, notes, bucket names) is HTML-escaped, and the page forbids scripts and any
remote content with a Content-Security-Policy, so it is safe to open straight from the bucket.
"""

from __future__ import annotations

import calendar
import csv
import html
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from cog_pipeline.work.imagelogs import advice, format_size, image_log_path, write_image_logs
from cog_pipeline.core.naming import RUN_CONFIG, TIMESTAMP_FORMAT, ManifestKeys, batch_log_path, outcome_path
from cog_pipeline.raster.thumbnail import DATA_URI_PREFIX, THUMBNAIL_SIDE

#: Rows up to this manifest line get a thumbnail (keeps status files and the page small).
MAX_THUMBNAIL_LINE = 1000
#: At most this many processed rows are listed (every failed row always is); the processed CSV has all.
MAX_PROCESSED_ROWS = 5000

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _csv_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [row for row in csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")) if row]


def _records(run_dir: Path, manifest_id: str) -> dict[str, dict[str, Any]]:
    """Per-image records of a manifest by key, each with the path of the batch log that has its lines."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted((run_dir / "status" / manifest_id).glob("batch-*.jsonl")):
        batch_log = batch_log_path(manifest_id, path.stem.removeprefix("batch-"))
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    record = json.loads(line)
                    records[record["key"]] = {**record, "batch_log": batch_log}
    return records


def report_rows(run_dir: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per manifest row (failed first, manifest order kept), joined from the outcome CSVs
    (the truth about each row) and the per-image records (sizes, timings, thumbnails, log lines)."""
    rows: list[dict[str, Any]] = []
    for manifest in config.get("manifests", []):
        summary_path = outcome_path(run_dir, manifest["id"])
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        local = run_dir / "outcome" / manifest["id"]
        records = _records(run_dir, manifest["id"])
        errors = _csv_rows(local / summary["errors_key"].rpartition("/")[2])[1:]
        for key, bands, reason in (r[:3] for r in errors if len(r) >= 3):
            rows.append({**records.get(key, {}), "key": key, "bands": bands, "outcome": "failed", "reason": reason,
                         "manifest": manifest["raw_key"], "log_path": image_log_path(key)})
        for key, bands in (r[:2] for r in _csv_rows(local / summary["processed_key"].rpartition("/")[2])):
            record = records.get(key, {})
            rows.append({**record, "key": key, "bands": bands, "manifest": manifest["raw_key"],
                         "outcome": "skipped (already done)" if record.get("status") == "skipped" else "processed",
                         "reason": "; ".join(record.get("notes", [])), "log_path": image_log_path(key)})
    rows.sort(key=lambda row: row["outcome"] != "failed")
    return rows


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _run_times(run_dir: Path, config: dict[str, Any]) -> tuple[str, str]:
    """(started, took) as text: the run id is its UTC start; the last outcome file marks its end."""
    run_id = str(config.get("run_id", ""))
    try:
        started = calendar.timegm(time.strptime(run_id, TIMESTAMP_FORMAT))
    except ValueError:
        return run_id, ""
    ends = [outcome_path(run_dir, m["id"]).stat().st_mtime for m in config.get("manifests", [])
            if outcome_path(run_dir, m["id"]).is_file()]
    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    return shown, _duration(max(ends) - started) if ends else ""


def _row_html(r: dict[str, Any], show_manifest: bool) -> str:
    esc = html.escape
    failed = r["outcome"] == "failed"
    ratio = f"{r['input_bytes'] / r['cog_bytes']:.2f}" if r.get("input_bytes") and r.get("cog_bytes") else ""
    thumb = str(r.get("thumbnail", ""))
    if thumb.startswith(DATA_URI_PREFIX) and all(c.isalnum() or c in "+/=" for c in thumb[len(DATA_URI_PREFIX):]):
        preview = f'<img alt="preview of {esc(r["key"])}" src="{thumb}">'
    else:
        preview = '<span class="none">no preview</span>' if not failed else ""
    reason = esc(str(r.get("reason", "")))
    if failed:
        reason = (f"{reason}<div class=\"todo\"><b>What to do:</b> {esc(advice(str(r.get('reason', ''))))}</div>")
    sized = isinstance(r.get("width"), int) and isinstance(r.get("height"), int)
    dims = f"{r['width']}&times;{r['height']}" if sized else ""
    bands = esc(str(r["bands"])) + (f"/{esc(str(r['file_bands']))}" if r.get("file_bands") not in (None, "") else "")
    seconds = f"{r['seconds']:.2f}" if isinstance(r.get("seconds"), (int, float)) else ""
    cells = [preview, f'<span class="key">{esc(r["key"])}</span>']
    if show_manifest:
        cells.append(esc(str(r.get("manifest", ""))))
    cells += [f'<span class="outcome">{esc(str(r["outcome"]))}</span>', reason, dims, bands,
              esc(str(r.get("dtype", ""))), format_size(r.get("input_bytes"), ""),
              format_size(r.get("cog_bytes"), ""), ratio, seconds,
              f'<code>{esc(str(r.get("log_path", "")))}</code>']
    return f'<tr class="{"failed" if failed else "ok"}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def render_html(run_dir: Path, rows: list[dict[str, Any]] | None = None,
                config: dict[str, Any] | None = None) -> str:
    """The report page of a run directory."""
    run_dir = Path(run_dir)
    if config is None:
        config = yaml.safe_load((run_dir / RUN_CONFIG).read_text(encoding="utf-8")) or {}
    if rows is None:
        rows = report_rows(run_dir, config)
    esc = html.escape
    failed = [r for r in rows if r["outcome"] == "failed"]
    done = [r for r in rows if r["outcome"] != "failed"]
    skipped = sum(1 for r in done if r["outcome"].startswith("skipped"))
    shown = failed + done[:MAX_PROCESSED_ROWS]
    manifests = config.get("manifests", [])
    show_manifest = len(manifests) > 1
    s3cfg = config.get("s3", {})
    run_id = esc(str(config.get("run_id", "")))
    started, took = _run_times(run_dir, config)
    total_in = sum(r.get("input_bytes") or 0 for r in done if r["outcome"] == "processed")
    total_cog = sum(r.get("cog_bytes") or 0 for r in done)

    retry = ""
    if failed:
        failed_keys = [ManifestKeys.from_run(m).failed for m in manifests if outcome_path(run_dir, m["id"]).is_file()]
        retry = ("<p class=\"retry\">The failed rows are in "
                 + ", ".join(f"<code>{esc(k)}</code>" for k in failed_keys)
                 + ". Fix their cause (see <i>What to do</i>), then queue them again with <code>cog-pipeline retry "
                   "-a KEY -s KEY -e HOST --input-bucket " + esc(str(s3cfg.get("input_bucket", ""))) + " "
                 + esc(failed_keys[0] if failed_keys else "FAILED.csv") + "</code>.</p>")
    more = ""
    if len(done) > MAX_PROCESSED_ROWS:
        more = (f"<p>Only the first {MAX_PROCESSED_ROWS} of {len(done)} processed rows are listed; the processed "
                "CSV lists them all.</p>")
    head = ["preview", "key"] + (["manifest"] if show_manifest else []) + [
        "outcome", "reason / notes", "size (px)", "bands (CSV/file)", "type", "input", "COG", "ratio", "seconds",
        "image log (in the run directory)"]
    body = "\n".join(_row_html(r, show_manifest) for r in shown)
    manifest_keys = ", ".join(esc(str(m.get("raw_key", ""))) for m in manifests)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cog-pipeline run {run_id}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.5em; margin-bottom: 0.2em; }}
.meta {{ color: #555; margin-top: 0; }}
.counts {{ display: flex; gap: 1em; flex-wrap: wrap; margin: 1em 0; }}
.count {{ border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 1em; min-width: 7em; }}
.count b {{ display: block; font-size: 1.6em; }}
.count.bad {{ border-color: #e0a39b; background: #fdecea; }}
.retry {{ background: #fff8e1; border: 1px solid #f0d68a; padding: 0.6em 1em; border-radius: 6px; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.88em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left; vertical-align: middle; }}
th {{ background: #f5f5f5; position: sticky; top: 0; }}
tr.failed td {{ background: #fdecea; }}
tr.failed .outcome {{ color: #b3261e; font-weight: bold; }}
.key {{ font-family: ui-monospace, monospace; overflow-wrap: anywhere; }}
td:nth-child(2) {{ min-width: 14em; }}
.todo {{ margin-top: 0.3em; color: #5f370e; }}
.none {{ color: #999; font-size: 0.85em; }}
code {{ font-size: 0.9em; overflow-wrap: anywhere; }}
img {{ display: block; min-width: 48px; max-width: {THUMBNAIL_SIDE}px; max-height: {THUMBNAIL_SIDE}px;
       image-rendering: pixelated; }}
</style></head>
<body>
<h1>cog-pipeline run {run_id}</h1>
<p class="meta">Manifest{'s' if len(manifests) != 1 else ''}: {manifest_keys}
&middot; input bucket <code>{esc(str(s3cfg.get('input_bucket', '')))}</code>
&middot; output bucket <code>{esc(str(s3cfg.get('output_bucket', '')))}</code>
<br>Started {esc(started)}{(' &middot; took ' + esc(took)) if took else ''}
&middot; report made {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}</p>
<div class="counts">
<div class="count">rows<b id="total-count">{len(rows)}</b></div>
<div class="count">processed<b id="processed-count">{len(done)}</b></div>
<div class="count">of which already done<b id="skipped-count">{skipped}</b></div>
<div class="count{' bad' if failed else ''}">failed<b id="failed-count">{len(failed)}</b></div>
<div class="count">input converted<b>{format_size(total_in, '') or '0 B'}</b></div>
<div class="count">COGs written<b>{format_size(total_cog, '') or '0 B'}</b></div>
</div>
{retry}
{more}
<table>
<thead><tr>{''.join(f'<th>{esc(h)}</th>' for h in head)}</tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
"""


def write_report(run_dir: Path, config: dict[str, Any] | None = None) -> Path:
    """Write the per-image logs and ``report.html`` of a finished run directory; returns the report's path."""
    run_dir = Path(run_dir)
    if config is None:
        config = yaml.safe_load((run_dir / RUN_CONFIG).read_text(encoding="utf-8")) or {}
    rows = report_rows(run_dir, config)
    write_image_logs(run_dir, rows, config)
    path = run_dir / "report.html"
    tmp = path.with_name(f".report.html.{os.getpid()}.tmp")
    tmp.write_text(render_html(run_dir, rows, config), encoding="utf-8")
    os.replace(tmp, path)
    return path
