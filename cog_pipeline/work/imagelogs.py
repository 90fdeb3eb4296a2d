"""Per-image logs: one file per image, named after it, in ``workflow-run-<TS>/logs/images/``.

While a batch job converts an image, :func:`capture` collects every log line written meanwhile into
the image's status record (so the lines come back with the record even from an HTCondor execute
point, where only the batch's declared files are transferred). At the end of the run, on the machine
holding the run directory, :func:`write_image_logs` writes ``logs/images/<key without .tif>.log`` for
every manifest row: the key, the manifest line, the outcome, the failing step and reason, **what to
do about it**, sizes, timings, notes and the captured lines.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cog_pipeline.core.logs import FORMAT
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.core.naming import key_stem

log = logging.getLogger(__name__)

IMAGE_LOG_DIR = Path("logs") / "images"
#: At most this many captured lines per image go into its status record.
MAX_LINES = 200
_MAX_PART_BYTES = 200
_BAD_NAME_CHAR = re.compile(r"[\x00-\x1f\x7f\\]")


class _Collector(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(logging.INFO)
        self.lines = lines
        self.dropped = 0
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) >= MAX_LINES:
            self.dropped += 1
            return
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a log line must never fail an image
            self.dropped += 1


@contextmanager
def capture(record: dict[str, Any]) -> Iterator[None]:
    """Collect the log lines written while one image is processed into ``record["log"]``."""
    lines: list[str] = []
    handler = _Collector(lines)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        if handler.dropped:
            lines.append(f"... {handler.dropped} more line(s) in the batch log")
        if lines:
            record["log"] = lines


def log_name(key: str) -> str:
    """The image log's path under ``logs/images/`` for a key: ``a/b/tile.tif`` -> ``a/b/tile.log``.

    Never leaves the directory (no empty, ``.`` or ``..`` parts, no control characters) and keeps
    every part within file-name limits.
    """
    name = key_stem(key)
    if len(name) * 4 <= _MAX_PART_BYTES and not _BAD_NAME_CHAR.search(name):  # nothing to replace or shorten
        parts = name.split("/")
        if "" in parts or "." in parts or ".." in parts:
            parts = [part for part in parts if part not in ("", ".", "..")]
        return ("/".join(parts) or "_") + ".log"
    parts = []
    for part in name.split("/"):
        if part in ("", ".", ".."):
            continue
        part = _BAD_NAME_CHAR.sub("_", part)
        raw = part.encode("utf-8", "surrogateescape")
        if len(raw) > _MAX_PART_BYTES:
            digest = hashlib.sha1(raw).hexdigest()[:12]
            part = raw[:100].decode("utf-8", "ignore") + "~" + digest
        parts.append(part)
    return "/".join(parts or ["_"]) + ".log"


def image_log_path(key: str) -> str:
    """The image log of ``key``, relative to the run directory."""
    return f"{IMAGE_LOG_DIR.as_posix()}/{log_name(key)}"


# ----------------------------------------------------------------------------------- what to do

_S3_FAILED = (
    "S3 failed for this image (network or server): retry the failed rows; if it keeps failing, check the "
    "endpoint and buckets"
)
_REPORT_IT = (
    "this should not happen with a readable GeoTIFF: keep the input, and report it with this log file to "
    "the pipeline's maintainers"
)

#: What an operator should do about a failed row, by its failure code.
ADVICE: dict[FailureCode, str] = {
    FailureCode.INPUT_MISSING: "upload the image to the input bucket under exactly this key, then run "
    "`cog-pipeline retry` on the failed CSV",
    FailureCode.INPUT_EMPTY: "the object in the input bucket has 0 bytes: upload the complete file again, then retry "
    "the failed rows",
    FailureCode.INPUT_CHANGED: _S3_FAILED,
    FailureCode.NOT_A_TIFF: "only GeoTIFFs are accepted: export the image as GeoTIFF (e.g. gdal_translate -of GTiff), "
    "upload it under this key, then retry",
    FailureCode.CORRUPT: "the upload is incomplete or damaged: upload the file again (check it opens with gdalinfo "
    "first), then retry",
    FailureCode.TOO_LARGE: "if the image is genuine, raise cog.max_pixels in config/config.yaml (and the job's "
    "memory), or split it into tiles; then retry",
    FailureCode.DISK_FULL: "the job's temp disk is full: set tmp_dir to a larger disk or raise disk_mb_per_job in the "
    "config, then retry",
    FailureCode.JPEG_TOO_LARGE: "the image is too large for a single JPEG preview: split it into tiles, then upload "
    "those with a new manifest",
    FailureCode.S3_DENIED: "the pipeline's S3 keys may not read the input or write the output bucket: ask the storage "
    "admin, then retry",
    FailureCode.S3_FAILED: _S3_FAILED,
    FailureCode.BATCH_DID_NOT_FINISH: "the batch job stopped before this image finished (killed, out of memory or "
    "time): see the batch log named in the reason, raise mem_mb_per_job if it ran "
    "out of memory, then retry",
    FailureCode.BATCH_REMOVED: "the batch job was removed from the pool (condor_rm, or by the pool's policy) before "
    "this image finished: see logs/snakemake.log for who removed it, then retry the "
    "failed rows",
    FailureCode.BATCH_HELD: "the pool held the batch job (the hold reason is in the reason): fix what it names (often "
    "memory or disk: mem_mb_per_job, disk_mb_per_job), then retry the failed rows",
    FailureCode.OUTPUT_MISSING: "the outputs disappeared after conversion (deleted or lost on upload): retry the "
    "failed rows",
    FailureCode.VERIFY_FAILED: _REPORT_IT,
    FailureCode.INTERNAL: _REPORT_IT,
    FailureCode.GDAL_FAILED: "GDAL could not read or convert the file: check it with gdalinfo, fix or re-export it, "
    "upload it again, then retry",
    FailureCode.URLS_EXPIRED: "the batch job started after its presigned URLs expired (it waited too long in the "
    "pool's queue): run `cog-pipeline retry` on the failed CSV (new URLs are signed); "
    "raise s3.presign_expiry_s if queues are long",
    FailureCode.MANIFEST_ROW: "the manifest row itself is wrong: fix the row as the reason says and upload it in a new "
    "manifest (cog-pipeline retry leaves such rows out)",
    FailureCode.QA_FAILED: "delivery QA found the image inconsistent with the rest of its delivery (the reason names "
    "the check and what differs; all findings are in the QA CSV beside the outcome CSVs): fix "
    "or re-export the image, upload it under the same key, then retry the failed rows (or set "
    "that check to warn under qa.checks in the config)",
}
GENERIC_ADVICE = "see this image's log for details; fix the cause, then retry the failed rows"


def advice(code: FailureCode | str | None) -> str:
    """What an operator should do about a failed row with this failure code (a generic text without one)."""
    if isinstance(code, FailureCode):
        return ADVICE[code]
    return _ADVICE_BY_VALUE.get(code, GENERIC_ADVICE) if isinstance(code, str) else GENERIC_ADVICE


#: :data:`ADVICE` by each code's value (what a summary or record holds).
_ADVICE_BY_VALUE: dict[str, str] = {code.value: text for code, text in ADVICE.items()}


# ----------------------------------------------------------------------------------- writing


def format_size(n: Any, unknown: str = "?") -> str:
    """A byte count as text (``736 B``, ``1.2 MB``); ``unknown`` when ``n`` is not a number."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return unknown
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return unknown


def render_image_log(row: dict[str, Any], config: dict[str, Any]) -> str:
    """The text of one image's log section (``row`` as made by report.report_rows)."""
    s3cfg = config.get("s3", {})
    lines = [
        f"image:      {row['key']}",
        f"manifest:   {row.get('manifest', '?')}" + (f", line {row['line']}" if row.get("line") else ""),
        f"run:        {config.get('run_id', '?')}",
    ]
    if row["outcome"] == "failed":
        code = row.get("code")
        step = row.get("step") or ("manifest row" if code == FailureCode.MANIFEST_ROW else "?")
        lines += [
            f"outcome:    FAILED at step '{step}'",
            f"reason:     {row.get('reason', '')}",
            f"what to do: {advice(code)}",
        ]
    else:
        lines.append(f"outcome:    {row['outcome']}")
        if row.get("reason"):
            lines.append(f"notes:      {row['reason']}")
    for finding in row.get("qa_findings") or []:  # the delivery QA's warnings and notes (report.report_rows)
        lines.append(f"qa:         {finding.severity} {finding.check}: {finding.detail}")
    if row.get("width"):
        lines.append(
            f"input:      {format_size(row.get('input_bytes'))}, {row['width']}x{row['height']} px, "
            f"{row.get('file_bands', '?')} band(s) {row.get('dtype', '?')} (manifest said {row['bands']})"
        )
    if row["outcome"] != "failed":
        from cog_pipeline.work.manifest import jpeg_key

        bucket = s3cfg.get("output_bucket", "?")
        cog = f" ({format_size(row['cog_bytes'])})" if row.get("cog_bytes") else ""
        lines.append(f"outputs:    s3://{bucket}/{row['key']}{cog}, s3://{bucket}/{jpeg_key(row['key'])}")
    if row.get("seconds") is not None:
        steps = ", ".join(f"{k} {v:.2f}" for k, v in (row.get("step_seconds") or {}).items())
        lines.append(f"seconds:    {row['seconds']}" + (f" ({steps})" if steps else ""))
    if row.get("batch_log"):
        lines.append(f"batch log:  {row['batch_log']}")
    captured = row.get("log") or []
    if captured:
        lines.append("--- log ---")
        lines += [str(line) for line in captured]
    return "\n".join(lines) + "\n"


def write_image_logs(
    run_dir: Path, rows: list[dict[str, Any]], config: dict[str, Any], manifests: Collection[str] | None = None
) -> Path:
    """Write ``logs/images/<name>.log`` for every row (sections appended when a key occurs twice), or only the
    logs that have a row of ``manifests`` (raw keys; each log still whole, with its other manifests' sections).

    Each folder is made once, and each file written with one open, write and close (a large run has a file
    per row).
    """
    base = Path(run_dir) / IMAGE_LOG_DIR
    rows_of: dict[str, list[int]] = {}  # a log's rows: each log is rendered as it is written, one text held at a time
    wanted: set[str] = set()
    for index, row in enumerate(rows):
        name = log_name(row["key"])
        rows_of.setdefault(name, []).append(index)
        if manifests is None or row.get("manifest") in manifests:
            wanted.add(name)
    folders: set[str] = set()  # made (or found) already
    root = str(base)
    for name, indexes in rows_of.items():
        if name not in wanted:
            continue
        data = "\n".join(render_image_log(rows[i], config) for i in indexes).encode("utf-8", "backslashreplace")
        path = os.path.join(root, name)
        try:
            _write_file(path, data, folders)
        except OSError as exc:  # e.g. a key that is both a folder and a file name: fall back to a flat name
            flat = os.path.join(root, "_other", hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:16])
            try:
                _write_file(flat + ".log", data, folders)
            except OSError:
                log.warning("cannot write the image log %s: %s", path, exc)
    return base


def _write_file(path: str, data: bytes, folders: set[str]) -> None:
    """Write ``data`` to ``path`` (created or truncated, mode 0o666 less the umask, as ``open(path, "w")``), making
    its folder first unless ``folders`` has it; a folder made (or found) is added to ``folders``."""
    folder = os.path.dirname(path)
    if folder not in folders:
        os.makedirs(folder, exist_ok=True)
        folders.add(folder)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # not inherited (PEP 446)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
