"""The run report: ``workflow-run-<TS>/report.html``, a single self-contained page per run.

Summary counts, then one row per image (failed rows first) with its key, sizes, bands, data type,
compression ratio, time, outcome and reason, and a small thumbnail of the preview embedded as a
data URI. Everything that comes from users (keys, reasons) is HTML-escaped.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

import yaml

from .naming import RUN_CONFIG, outcome_path

#: Rows up to this manifest line get a thumbnail (keeps status files and the page small).
MAX_THUMBNAIL_LINE = 1000
THUMBNAIL_SIDE = 128


def thumbnail_data_uri(jpeg_path: Path, max_side: int = THUMBNAIL_SIDE) -> str:
    """A small JPEG of a preview as a ``data:`` URI (decoded at reduced resolution: cheap even when huge)."""
    import rasterio
    from rasterio.io import MemoryFile

    with rasterio.open(jpeg_path) as src:
        scale = max(src.width, src.height) / max_side
        width, height = max(1, round(src.width / max(scale, 1))), max(1, round(src.height / max(scale, 1)))
        data = src.read(out_shape=(src.count, height, width))
    with MemoryFile() as mem:
        with mem.open(driver="JPEG", width=width, height=height, count=data.shape[0], dtype="uint8",
                      QUALITY="70") as dst:
            dst.write(data)
        encoded = base64.b64encode(mem.read()).decode("ascii")
    return f"data:image/jpeg;base64,{encoded}"


def _csv_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [row for row in csv.reader(io.StringIO(path.read_text(encoding="utf-8"))) if row]


def report_rows(run_dir: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per manifest row (failed first), joined from the outcome CSVs and per-image records."""
    from .batch import read_status_records  # batch imports this module for thumbnails

    rows: list[dict[str, Any]] = []
    for manifest in config.get("manifests", []):
        summary_path = outcome_path(run_dir, manifest["id"])
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        local = run_dir / "outcome" / manifest["id"]
        records = read_status_records(run_dir, manifest["id"])
        errors = _csv_rows(local / summary["errors_key"].rpartition("/")[2])[1:]
        for key, bands, reason in (r[:3] for r in errors if len(r) >= 3):
            rows.append({**records.get(key, {}), "key": key, "bands": bands, "outcome": "failed", "reason": reason,
                         "manifest": manifest["raw_key"]})
        for key, bands in (r[:2] for r in _csv_rows(local / summary["processed_key"].rpartition("/")[2])):
            record = records.get(key, {})
            rows.append({**record, "key": key, "bands": bands, "manifest": manifest["raw_key"],
                         "outcome": "skipped (already done)" if record.get("status") == "skipped" else "processed",
                         "reason": "; ".join(record.get("notes", []))})
    rows.sort(key=lambda row: row["outcome"] != "failed")  # failed on top, manifest order kept
    return rows


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def render_html(run_dir: Path) -> str:
    """The report page of a run directory."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / RUN_CONFIG).read_text(encoding="utf-8")) or {}
    rows = report_rows(run_dir, config)
    failed = sum(1 for r in rows if r["outcome"] == "failed")
    esc = html.escape
    body = []
    for r in rows:
        ratio = (f"{r['input_bytes'] / r['cog_bytes']:.2f}" if r.get("input_bytes") and r.get("cog_bytes") else "")
        thumb = (f'<img alt="preview of {esc(r["key"])}" src="{r["thumbnail"]}">'
                 if str(r.get("thumbnail", "")).startswith("data:image/jpeg;base64,") else "")
        dims = f"{r['width']}x{r['height']}" if r.get("width") else ""
        body.append(
            f'<tr class="{"failed" if r["outcome"] == "failed" else "ok"}"><td>{thumb}</td>'
            f"<td>{esc(r['key'])}</td><td>{esc(r['manifest'])}</td><td>{esc(str(r['outcome']))}</td>"
            f"<td>{esc(str(r.get('reason', '')))}</td><td>{esc(dims)}</td><td>{esc(str(r['bands']))}"
            f"{'/' + esc(str(r['file_bands'])) if r.get('file_bands') else ''}</td><td>{esc(str(r.get('dtype', '')))}</td>"
            f"<td>{_size(r.get('input_bytes'))}</td><td>{_size(r.get('cog_bytes'))}</td><td>{ratio}</td>"
            f"<td>{r.get('seconds', '')}</td></tr>")
    manifests = ", ".join(esc(m["raw_key"]) for m in config.get("manifests", []))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>cog-pipeline run {esc(str(config.get('run_id', '')))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left; vertical-align: middle; }}
tr.failed td {{ background: #fdecea; }}
img {{ max-width: {THUMBNAIL_SIDE}px; max-height: {THUMBNAIL_SIDE}px; }}
.counts span {{ display: inline-block; margin-right: 2em; font-size: 1.2em; }}
</style></head>
<body>
<h1>cog-pipeline run {esc(str(config.get('run_id', '')))}</h1>
<p>Manifests: {manifests}<br>Input bucket: {esc(str(config.get('s3', {}).get('input_bucket', '')))},
output bucket: {esc(str(config.get('s3', {}).get('output_bucket', '')))}</p>
<p class="counts"><span>rows: <b id="total-count">{len(rows)}</b></span>
<span>processed: <b id="processed-count">{len(rows) - failed}</b></span>
<span>failed: <b id="failed-count">{failed}</b></span></p>
<table>
<thead><tr><th>preview</th><th>key</th><th>manifest</th><th>outcome</th><th>reason / notes</th><th>size (px)</th>
<th>bands (CSV/file)</th><th>type</th><th>input</th><th>COG</th><th>ratio</th><th>seconds</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
</body></html>
"""


def write_report(run_dir: Path) -> Path:
    """Write ``report.html`` in the run directory; returns its path."""
    path = Path(run_dir) / "report.html"
    path.write_text(render_html(Path(run_dir)), encoding="utf-8")
    return path
