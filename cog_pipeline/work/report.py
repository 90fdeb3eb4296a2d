"""The run report: ``workflow-run-<TS>/report.html``, one self-contained page per run.

Summary counts, a map of the delivery (every image's footprint, coloured by outcome: work/reportmap.py), a
delivery QA summary per manifest where the run had a QA step (work/qa_step.py: headers read, rows failed,
findings per severity and check, the QA CSV's key), then one row per image (failed rows first) with its key,
sizes, bands, data type, CRS, pixel size, overview levels, codec, COG / input size (with a warning where the
COG is the larger), time, outcome, reason and what to do, its QA warnings and notes, and a small thumbnail
(made by the batch job from the COG's overviews, see thumbnail.py) embedded as a data URI. Everything that
comes from users or files (keys, reasons, notes, QA findings, bucket names) is HTML-escaped, and the page's
Content-Security-Policy allows one script (the map's, by its hash) and no remote content (except the tiles
of ``report.basemap_url`` when it is set), so it is safe to open straight from the bucket.
"""

from __future__ import annotations

import calendar
import html
import json
import os
import re
import time
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import plural
from cog_pipeline.raster.qa import Finding

from cog_pipeline.work.imagelogs import advice, format_size, image_log_path, write_image_logs
from cog_pipeline.work.outcomes import failure_codes, read_outcomes
from cog_pipeline.work.manifest import csv_reader
from cog_pipeline.core.naming import RUN_CONFIG, TIMESTAMP_FORMAT, ManifestKeys, batch_log_path, outcome_path
from cog_pipeline.work.reportmap import (
    MAP_CSS,
    SCRIPT,
    SCRIPT_HASH,
    BasemapError,
    basemap_origin,
    check_basemap_url,
    render_map,
)
from cog_pipeline.raster.thumbnail import DATA_URI_PREFIX, THUMBNAIL_SIDE
from cog_pipeline.work.qa_step import QaVerdict, read_verdict

#: At most this many processed rows are listed (every failed row always is); the processed CSV has all.
MAX_PROCESSED_ROWS = 5000

CSP = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {SCRIPT_HASH}"
#: Inputs with these codecs are lossy: a lossless COG of their decoded pixels is usually several times larger.
LOSSY_CODECS = frozenset({"JPEG", "WEBP", "JPEG2000", "JXL"})
#: A COG larger than its input by less than this is not warned of (a tiny image's COG headers and overviews).
MIN_LARGER_BYTES = 256 * 1024


def content_security_policy(basemap_url: str | None = None) -> str:
    """The page's policy: :data:`CSP`, with the basemap's origin added to ``img-src`` when there is one."""
    if not basemap_url:
        return CSP
    return CSP.replace("img-src data:", f"img-src data: {basemap_origin(basemap_url)}", 1)


#: The reason of a row the manifest parser refused (cog_pipeline.work.manifest: "line N: ...").
_REFUSED_ROW = re.compile(r"line \d+: ")
#: At most this many manifest notes are listed (outcome/<m>.json has them all).
MAX_NOTES = 200


def _breakable(text: str) -> str:
    """HTML-escaped text that a narrow column wraps after a '/' (``<wbr>``), not in the middle of a name."""
    return html.escape(text).replace("/", "/<wbr>")  # the same as escaping each part: no escape has a '/'


def manifest_notes(run_dir: Path, config: dict[str, Any]) -> list[tuple[str, str]]:
    """(manifest raw key, note) for every note of the manifests' summaries ("line 1: header row skipped")."""
    notes = []
    for manifest in config.get("manifests", []):
        try:
            summary = json.loads(outcome_path(run_dir, manifest["id"]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        notes += [(str(manifest.get("raw_key", "")), str(note)) for note in summary.get("notes") or []]
    return notes


def _csv_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [row for row in csv_reader(path.read_text(encoding="utf-8")) if row]


def qa_verdicts(run_dir: Path, config: dict[str, Any]) -> dict[str, QaVerdict | str]:
    """Manifest id -> its QA verdict, or why the verdict cannot be read; manifests without QA are left out."""
    out: dict[str, QaVerdict | str] = {}
    for manifest in config.get("manifests", []):
        try:
            verdict = read_verdict(run_dir, manifest["id"])
        except PipelineError as exc:
            out[manifest["id"]] = str(exc)
            continue
        if verdict is not None:
            out[manifest["id"]] = verdict
    return out


def _qa_places(verdict: QaVerdict | str | None) -> Mapping[str, Mapping[str, Any]]:
    """Key -> the map facts QA read from the input of each row it failed (never converted, so no record has them)."""
    return verdict.places if isinstance(verdict, QaVerdict) else {}


def _qa_notes(verdict: QaVerdict | str | None) -> dict[str, list[Finding]]:
    """Key -> its warn and info findings (the fail ones are the row's reason)."""
    out: dict[str, list[Finding]] = {}
    if isinstance(verdict, QaVerdict):
        for f in verdict.findings:
            if f.severity in ("warn", "info"):
                out.setdefault(f.key, []).append(f)
    return out


def _records(run_dir: Path, manifest_id: str) -> dict[str, dict[str, Any]]:
    """Per-image records of a manifest by key, each with the path of the batch log that has its lines."""
    return {
        key: {**outcome.to_record(), "batch_log": batch_log_path(manifest_id, outcome.batch or "")}
        for key, outcome in read_outcomes(run_dir, manifest_id).items()
    }


def report_rows(
    run_dir: Path, config: dict[str, Any], verdicts: Mapping[str, QaVerdict | str] | None = None
) -> list[dict[str, Any]]:
    """One dict per manifest row (failed first, manifest order kept), joined from the outcome CSVs
    (the truth about each row), the per-image records (sizes, timings, thumbnails, log lines) and the QA
    verdicts (a row's warn/info findings under ``qa_findings``)."""
    rows: list[dict[str, Any]] = []
    if verdicts is None:
        verdicts = qa_verdicts(run_dir, config)
    for manifest in config.get("manifests", []):
        summary_path = outcome_path(run_dir, manifest["id"])
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        local = run_dir / "outcome" / manifest["id"]
        records = _records(run_dir, manifest["id"])
        qa_notes = _qa_notes(verdicts.get(manifest["id"]))
        qa_places = _qa_places(verdicts.get(manifest["id"]))
        errors = _csv_rows(local / summary["errors_key"].rpartition("/")[2])[1:]
        failed = [r[:3] for r in errors if len(r) >= 3]
        codes = failure_codes(summary, [r[2] for r in failed])  # one per errors-CSV row
        for (key, bands, reason), code in zip(failed, codes, strict=True):
            # A row refused by the manifest parser ("line N: ...", e.g. a duplicate of a processed key) was
            # never converted: the record under its key, if any, is another row's and is not shown here.
            refused = bool(_REFUSED_ROW.match(reason))
            record = {} if refused else (records.get(key) or dict(qa_places.get(key) or {}))
            found = [] if refused else qa_notes.get(key, [])
            rows.append(
                {
                    **record,
                    **({"qa_findings": found} if found else {}),
                    "key": key,
                    "bands": bands,
                    "outcome": "failed",
                    "reason": reason,
                    "code": code,
                    "manifest": manifest["raw_key"],
                    "log_path": image_log_path(key),
                }
            )
        for key, bands in (r[:2] for r in _csv_rows(local / summary["processed_key"].rpartition("/")[2])):
            record = records.get(key, {})
            found = qa_notes.get(key, [])
            rows.append(
                {
                    **record,
                    **({"qa_findings": found} if found else {}),
                    "key": key,
                    "bands": bands,
                    "manifest": manifest["raw_key"],
                    "outcome": "skipped (already done)" if record.get("status") == "skipped" else "processed",
                    "reason": "; ".join(record.get("notes", [])),
                    "log_path": image_log_path(key),
                }
            )
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
    ends = [
        outcome_path(run_dir, m["id"]).stat().st_mtime
        for m in config.get("manifests", [])
        if outcome_path(run_dir, m["id"]).is_file()
    ]
    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    return shown, _duration(max(ends) - started) if ends else ""


_UNITS = {"metre": "m", "meter": "m", "degree": "\u00b0", "US survey foot": "US ft", "foot": "ft"}


def _pixel_size(r: dict[str, Any]) -> str:
    """``0.5 m``, ``0.0001°``, ``0.5x0.6 m`` (x and y differ, with a multiplication sign); empty when unknown."""
    size = r.get("pixel_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, (int, float)) for v in size)):
        return ""
    unit = str(r.get("pixel_unit") or "")
    unit = _UNITS.get(unit, unit)
    x, y = (f"{v:.4g}" for v in size)
    text = x if x == y else f"{x}\u00d7{y}"
    return html.escape(text + ("" if unit in ("", "\u00b0") else " ") + unit)


def _sub(text: str) -> str:
    """A second line in a cell (already escaped ``text``; nothing when empty)."""
    return f'<div class="sub">{text}</div>' if text else ""


def size_ratio(r: dict[str, Any]) -> float | None:
    """COG bytes / input bytes of a converted row (None when either is unknown)."""
    cog, source = r.get("cog_bytes"), r.get("input_bytes")
    if isinstance(cog, int) and isinstance(source, int) and source > 0 and r["outcome"] == "processed":
        return cog / source
    return None


def larger_warning(r: dict[str, Any]) -> str:
    """What to say of a COG larger than its input (empty when it is not): why, and the preset that helps."""
    ratio = size_ratio(r)
    if ratio is None or ratio <= 1 or r["cog_bytes"] - r["input_bytes"] < MIN_LARGER_BYTES:
        return ""
    source, codec = str(r.get("input_codec") or ""), str(r.get("codec") or "the COG's codec")
    if source in LOSSY_CODECS:
        why = (
            f"the input is {source}-compressed (lossy) and the COG keeps its decoded pixels exactly with "
            f"{codec}, which cannot get near a lossy codec's size. For such imagery enable presets "
            "(<code>presets.enabled: true</code>): <code>imagery: {compress: WEBP, quality: 100}</code> is "
            "lossless and smaller than LZW; a lossy <code>quality</code> below 100 with "
            "<code>min_psnr_db</code> (checked per image) comes near the input's size."
        )
    else:
        why = (
            f"the input ({source or 'its codec unknown'}) was compressed more tightly than {codec}. Try a "
            "predictor (<code>cog.predictor: STANDARD</code>, <code>FLOATING_POINT</code> for floats) or "
            "presets per data kind (<code>presets.enabled: true</code>: ZSTD, WEBP or LERC)."
        )
    return f'<div class="warn"><b>COG {ratio:.1f}&times; its input:</b> {why}</div>'


def qa_row_html(r: dict[str, Any]) -> str:
    """A row's QA warnings and notes (check in bold, detail in small text); empty when it has none."""
    esc = html.escape
    found = [f for f in r.get("qa_findings") or [] if isinstance(f, Finding)]
    return "".join(
        f'<div class="qa qa-{esc(f.severity)}"><b>QA {esc(f.severity)}: {esc(f.check)}</b> '
        f'<span class="qa-detail">{esc(f.detail)}</span></div>'
        for f in found
    )


def _qa_counts(verdict: QaVerdict, severity: str) -> str:
    """``fail 2 (gsd_mismatch 1, srs_mismatch 1)``, ``warn 0``."""
    found = verdict.counts(severity)
    checks = ", ".join(f"{html.escape(check)} {n}" for check, n in sorted(found.items()))
    return f"{severity} {sum(found.values())}" + (f" ({checks})" if checks else "")


def qa_summary_html(verdicts: Mapping[str, QaVerdict | str], config: dict[str, Any]) -> str:
    """The report's QA section (``verdicts`` from :func:`qa_verdicts`): one line per manifest that had a QA step;
    empty when none had."""
    esc = html.escape
    items = []
    for manifest in config.get("manifests", []):
        verdict = verdicts.get(manifest["id"])
        if verdict is None:
            continue
        raw = esc(str(manifest.get("raw_key", "")))
        if isinstance(verdict, str):
            items.append(f'<li class="qa-summary">{raw}: the QA verdict cannot be read: {esc(verdict)}</li>')
            continue
        missing = f", {plural(len(verdict.missing), 'input')} not in the bucket" if verdict.missing else ""
        key = ManifestKeys.from_run(manifest).qa
        items.append(
            f'<li class="qa-summary">{raw}: {plural(verdict.checked, "header")} read, '
            f"{plural(len(verdict.failing()), 'row')} failed by QA (not converted){missing} &middot; findings: "
            + "; ".join(_qa_counts(verdict, severity) for severity in ("fail", "warn", "info"))
            + f" &middot; all findings in <code>{esc(key)}</code> in the input bucket</li>"
        )
    if not items:
        return ""
    return (
        '<section class="qa-section" id="qa"><h2>Delivery QA</h2><ul>'
        + "".join(items)
        + "</ul><p>Rows failed by QA show their checks as the reason; warnings and notes are under each "
        "row's reason. docs/delivery.md says what each check means.</p></section>"
    )


#: The QA section's style, on the page only when it has QA (a run without QA keeps its page as before).
QA_CSS = """
.qa-section { margin: 0.5em 0 1em; }
.qa-section h2 { font-size: 1.1em; margin: 0.3em 0; }
.qa-section ul { margin: 0.3em 0; }
.qa { margin-top: 0.3em; font-size: 0.9em; }
.qa-warn b { color: #6d4c00; }
.qa-info b { color: #1a5e8a; }
.qa-detail { color: #666; }"""


def _row_html(r: dict[str, Any], show_manifest: bool, index: int) -> str:
    esc = html.escape
    failed = r["outcome"] == "failed"
    ratio_value = size_ratio(r)
    ratio = (
        ""
        if ratio_value is None
        else (f'<span class="{"bigger" if ratio_value > 1 else "smaller"}">{ratio_value:.2f}</span>')
    )
    thumb = str(r.get("thumbnail", ""))
    if thumb.startswith(DATA_URI_PREFIX) and all(c.isalnum() or c in "+/=" for c in thumb[len(DATA_URI_PREFIX) :]):
        preview = f'<img alt="preview of {esc(r["key"])}" src="{thumb}">'
    else:
        preview = '<span class="none">no preview</span>' if not failed else ""
    reason = esc(str(r.get("reason", ""))) + larger_warning(r)
    if failed:
        reason = f'{reason}<div class="todo"><b>What to do:</b> {esc(advice(r.get("code")))}</div>'
    reason += qa_row_html(r)
    reason = f'<div class="reason">{reason}</div>'
    overviews = r.get("overviews") or []
    levels = ", ".join(str(v) for v in overviews if isinstance(v, int)) or ("none" if r.get("codec") else "")
    codec = esc(str(r.get("codec") or "")) + _sub(f"input {esc(str(r['input_codec']))}" if r.get("input_codec") else "")
    sized = isinstance(r.get("width"), int) and isinstance(r.get("height"), int)
    dims = f"{r['width']}&times;{r['height']}" if sized else ""
    bands = esc(str(r["bands"])) + (f"/{esc(str(r['file_bands']))}" if r.get("file_bands") not in (None, "") else "")
    seconds = f"{r['seconds']:.2f}" if isinstance(r.get("seconds"), (int, float)) else ""
    cells = [preview, f'<span class="key">{_breakable(str(r["key"]))}</span>']
    if show_manifest:
        cells.append(esc(str(r.get("manifest", ""))))
    cells += [
        f'<span class="outcome">{esc(str(r["outcome"]))}</span>',
        reason,
        dims,
        bands,
        esc(str(r.get("dtype", ""))),
        esc(str(r.get("crs") or "")) + _sub(_pixel_size(r)),
        codec + _sub(esc(levels) and f"overviews {esc(levels)}"),
        format_size(r.get("input_bytes"), ""),
        format_size(r.get("cog_bytes"), ""),
        ratio,
        seconds,
        f"<code>{_breakable(str(r.get('log_path', '')))}</code>",
    ]
    return (
        f'<tr id="row-{index}" data-i="{index}" class="{"failed" if failed else "ok"}">'
        + "".join(f"<td>{c}</td>" for c in cells)
        + "</tr>"
    )


def render_html(
    run_dir: Path,
    rows: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
    verdicts: Mapping[str, QaVerdict | str] | None = None,
) -> str:
    """The report page of a run directory (``rows`` and ``verdicts``, when given, as report_rows and qa_verdicts
    read them)."""
    return "".join(render_html_parts(run_dir, rows, config, verdicts))


def render_html_parts(
    run_dir: Path,
    rows: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
    verdicts: Mapping[str, QaVerdict | str] | None = None,
) -> Iterator[str]:
    """The report page as :func:`render_html` makes it, in parts: the page before the table's rows, each row,
    the rest; written as they come, a page of 100,000 failed rows (60 MB) is never one string."""
    run_dir = Path(run_dir)
    if config is None:
        config = yaml.safe_load((run_dir / RUN_CONFIG).read_text(encoding="utf-8")) or {}
    if verdicts is None:
        verdicts = qa_verdicts(run_dir, config)
    if rows is None:
        rows = report_rows(run_dir, config, verdicts)
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
        retry = (
            '<p class="retry">The failed rows are in '
            + ", ".join(f"<code>{esc(k)}</code>" for k in failed_keys)
            + ". Fix their cause (see <i>What to do</i>), then queue them again with <code>cog-pipeline retry "
            "-a KEY -s KEY -e HOST --input-bucket "
            + esc(str(s3cfg.get("input_bucket", "")))
            + " "
            + esc(failed_keys[0] if failed_keys else "FAILED.csv")
            + "</code>.</p>"
        )
    more = ""
    if len(done) > MAX_PROCESSED_ROWS:
        more = (
            f"<p>Only the first {MAX_PROCESSED_ROWS} of {len(done)} processed rows are listed; the processed "
            "CSV lists them all.</p>"
        )
    notes = manifest_notes(run_dir, config)
    notes_html = ""
    if notes:
        items = "".join(
            f"<li>{(esc(raw) + ': ') if show_manifest else ''}{esc(note)}</li>" for raw, note in notes[:MAX_NOTES]
        )
        extra = (
            (
                f"<p>... and {len(notes) - MAX_NOTES} more (outcome/&lt;manifest&gt;.json in the run directory has "
                "them all).</p>"
            )
            if len(notes) > MAX_NOTES
            else ""
        )
        notes_html = (
            f'<details class="notes" open><summary>Manifest notes ({len(notes)})</summary><ul id="notes">'
            f"{items}</ul>{extra}</details>"
        )
    head = (
        ["preview", "key"]
        + (["manifest"] if show_manifest else [])
        + [
            "outcome",
            "reason / notes",
            "size (px)",
            "bands (CSV/file)",
            "type",
            "CRS / pixel size",
            "codec / overviews",
            "input",
            "COG",
            "COG / input size",
            "seconds",
            "image log (in the run directory)",
        ]
    )
    basemap_note = ""
    try:
        basemap = check_basemap_url((config.get("report") or {}).get("basemap_url"))
    except BasemapError as exc:
        basemap, basemap_note = None, f'<p class="retry">No basemap: {esc(str(exc))}</p>'
    map_html = render_map(shown, basemap)
    bigger = [r for r in done if larger_warning(r)]
    bigger_html = ""
    if bigger:
        lossy = sum(1 for r in bigger if str(r.get("input_codec") or "") in LOSSY_CODECS)
        bigger_html = (
            f'<p class="retry" id="bigger-note"><b>{len(bigger)} COG{"s are" if len(bigger) != 1 else " is"}'
            f" larger than {'their inputs' if len(bigger) != 1 else 'its input'}</b>"
            + (f" ({lossy} from lossy JPEG/WEBP-compressed inputs)" if lossy else "")
            + ": see the <i>COG / input size</i> column and the note in each such row for the preset "
            "that helps.</p>"
        )
    manifest_keys = ", ".join(esc(str(m.get("raw_key", ""))) for m in manifests)
    qa_html = qa_summary_html(verdicts, config)
    qa_css = QA_CSS if qa_html or any(r.get("qa_findings") for r in shown) else ""
    yield f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(content_security_policy(basemap), quote=False)}">
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
.key {{ font-family: ui-monospace, monospace; overflow-wrap: break-word; }}
td:nth-child(2) {{ min-width: 14em; }}
.todo {{ margin-top: 0.3em; color: #5f370e; }}
.none {{ color: #999; font-size: 0.85em; }}
code {{ font-size: 0.9em; overflow-wrap: break-word; }}
.notes {{ margin: 0.5em 0 1em; color: #444; }}
.notes ul {{ margin: 0.3em 0; }}
img {{ display: block; min-width: 48px; max-width: {THUMBNAIL_SIDE}px; max-height: {THUMBNAIL_SIDE}px;
       image-rendering: pixelated; }}
.warn {{ margin-top: 0.3em; color: #6d4c00; background: #fff3cd; padding: 0.2em 0.4em; border-radius: 4px; }}
.bigger {{ color: #b3261e; font-weight: bold; }}
.sub {{ color: #666; font-size: 0.9em; }}
.reason {{ min-width: 16em; }}
td code {{ font-size: 0.8em; }}
{MAP_CSS}{qa_css}
</style></head>
<body>
<h1>cog-pipeline run {run_id}</h1>
<p class="meta">Manifest{"s" if len(manifests) != 1 else ""}: {manifest_keys}
&middot; input bucket <code>{esc(str(s3cfg.get("input_bucket", "")))}</code>
&middot; output bucket <code>{esc(str(s3cfg.get("output_bucket", "")))}</code>
<br>Started {esc(started)}{(" &middot; took " + esc(took)) if took else ""}
&middot; report made {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}</p>
<div class="counts">
<div class="count">rows<b id="total-count">{len(rows)}</b></div>
<div class="count">processed<b id="processed-count">{len(done)}</b></div>
<div class="count">of which already done<b id="skipped-count">{skipped}</b></div>
<div class="count{" bad" if failed else ""}">failed<b id="failed-count">{len(failed)}</b></div>
<div class="count">input converted<b>{format_size(total_in, "") or "0 B"}</b></div>
<div class="count">COGs written<b>{format_size(total_cog, "") or "0 B"}</b></div>
</div>
{retry}
{bigger_html}
{notes_html}{qa_html}
{basemap_note}
{map_html}
{more}
<table>
<thead><tr>{"".join(f"<th>{esc(h)}</th>" for h in head)}</tr></thead>
<tbody>
"""
    for index, row in enumerate(shown):
        yield ("\n" if index else "") + _row_html(row, show_manifest, index)
    yield f"""
</tbody></table>
<script>{SCRIPT}</script>
</body></html>
"""


def write_report(
    run_dir: Path, config: dict[str, Any] | None = None, image_logs_of: Collection[str] | None = None
) -> Path:
    """Write the per-image logs and ``report.html`` of a finished run directory; returns the report's path.
    ``image_logs_of``: the raw keys of the manifests whose image logs are written (None: every manifest's)."""
    run_dir = Path(run_dir)
    if config is None:
        config = yaml.safe_load((run_dir / RUN_CONFIG).read_text(encoding="utf-8")) or {}
    verdicts = qa_verdicts(run_dir, config)  # read once, for the rows and the QA section
    rows = report_rows(run_dir, config, verdicts)
    write_image_logs(run_dir, rows, config, image_logs_of)
    path = run_dir / "report.html"
    tmp = path.with_name(f".report.html.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as page:
        page.writelines(render_html_parts(run_dir, rows, config, verdicts))
    os.replace(tmp, path)
    return path
