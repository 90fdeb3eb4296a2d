"""The final step of a run: sort every manifest row into processed or failed and publish the outcome.

A row is processed when its conversion was recorded as done (``ok`` or ``skipped``) *and* both the
COG and the JPEG are in the output bucket; otherwise it is failed, with a reason. Existence is
checked with one skip-scan listing over the wanted keys (:func:`cog_pipeline.storage.s3.existing_keys`), not
one request per row. The ``processing`` manifest is deleted only after the three outcome CSVs are written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cog_pipeline.storage import endpoint, s3
from cog_pipeline.core.crash import crash_point
from cog_pipeline.work.batch import manifest_config, read_status_records
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.work.manifest import batch_slices, jpeg_key, parse_manifest, write_errors_csv, write_rows_csv
from cog_pipeline.core.naming import ManifestKeys, batch_id, batch_log_path, outcome_path

log = logging.getLogger(__name__)

@dataclass
class Outcome:
    """Rows of one manifest sorted by outcome, in manifest order."""

    processed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)



def classify(manifest_bytes: bytes, records: dict[str, dict[str, Any]], present: set[str],
             unfinished: dict[str, str] | None = None) -> Outcome:
    """Sort every row of the manifest; no row is dropped (blank and header lines are not rows).

    ``unfinished`` maps a key to the reason its batch job did not finish (:func:`unfinished_reasons`).
    """
    manifest = parse_manifest(manifest_bytes)
    outcome = Outcome(notes=list(manifest.notes))
    rows: list[tuple[int, str, str, str | None]] = []
    for rejected in manifest.rejected:
        rows.append((rejected.line, rejected.key, rejected.bands_text, rejected.reason))
    for entry in manifest.entries:
        record = records.get(entry.key)
        if record is None:
            reason = (unfinished or {}).get(entry.key) or \
                "no outcome recorded: the conversion job for this row did not finish (see logs/convert/)"
        elif record["status"] == "failed":
            reason = f"{record.get('step', '?')}: {record.get('reason', 'unknown error')}"
        elif entry.key not in present or jpeg_key(entry.key) not in present:
            missing = [k for k in (entry.key, jpeg_key(entry.key)) if k not in present]
            reason = f"output missing from the output bucket after conversion: {', '.join(missing)}"
        else:
            reason = None
            for note in record.get("notes", []):
                outcome.notes.append(f"line {entry.line} ({entry.key}): {note}")
        rows.append((entry.line, entry.key, entry.bands_text, reason))
    for _line, key, bands, reason in sorted(rows, key=lambda row: row[0]):
        if reason is None:
            outcome.processed.append((key, bands))
        else:
            outcome.failed.append((key, bands, reason))
    return outcome


#: Lines the job wrapper (profiles/htcondor/job-wrapper.sh) appends to a batch log when a job fails.
WRAPPER_LINE_PREFIX = "job-wrapper on "


def unfinished_reasons(run_dir: Path, manifest_id: str, keys: list[str], batch_size: int,
                       recorded: set[str]) -> dict[str, str]:
    """For each key without an outcome record: which batch job did not finish, the job wrapper's
    reason when its batch log has one, and that log's path."""
    reasons: dict[str, str] = {}
    for index, (start, stop) in enumerate(batch_slices(len(keys), batch_size)):
        missing = [k for k in keys[start:stop] if k not in recorded]
        if not missing:
            continue
        log_path = batch_log_path(manifest_id, batch_id(index))
        why = ""
        try:
            lines = (Path(run_dir) / log_path).read_text(encoding="utf-8", errors="replace").splitlines()
            wrapper = [line for line in lines if line.startswith(WRAPPER_LINE_PREFIX)]
            why = f": {wrapper[-1]}" if wrapper else ""
        except OSError:
            pass
        reason = f"no outcome recorded: batch job batch-{batch_id(index)} did not finish{why} (see {log_path})"
        reasons.update((k, reason) for k in missing)
    return reasons


def aggregate_manifest(config: dict[str, Any], run_dir: Path, manifest_id: str) -> dict[str, Any]:
    """Classify one manifest's rows, upload the outcome CSVs, delete its ``processing`` object."""
    run_dir = Path(run_dir)
    manifest = manifest_config(config, manifest_id)
    keys = ManifestKeys.from_run(manifest)
    manifest_bytes = (run_dir / manifest["csv"]).read_bytes()
    entries = parse_manifest(manifest_bytes).entries
    client = s3.make_client(s3.S3Settings.from_config(config["s3"]))
    input_bucket, output_bucket = config["s3"]["input_bucket"], config["s3"]["output_bucket"]

    wanted = [k for e in entries for k in (e.key, jpeg_key(e.key))]
    try:
        present = s3.existing_keys(client, output_bucket, wanted)
    except Exception as exc:  # noqa: BLE001 - reported as a clear PipelineError
        raise PipelineError(f"cannot list output bucket '{output_bucket}': {s3.describe_error(exc)}") from None
    crash_point("aggregate.listed")
    records = read_status_records(run_dir, manifest_id)
    unfinished = unfinished_reasons(run_dir, manifest_id, [e.key for e in entries], int(config["batch_size"]),
                                    set(records))
    outcome = classify(manifest_bytes, records, present, unfinished)

    local_dir = run_dir / "outcome" / manifest_id
    local_dir.mkdir(parents=True, exist_ok=True)
    files = {
        keys.processed: write_rows_csv(outcome.processed),
        keys.failed: write_rows_csv((key, bands) for key, bands, _ in outcome.failed),
        keys.errors: write_errors_csv(outcome.failed),
    }
    for key, body in files.items():
        (local_dir / key.rpartition("/")[2]).write_bytes(body)
        try:
            s3.put_bytes(client, input_bucket, key, body)
        except Exception as exc:  # noqa: BLE001
            raise PipelineError(f"cannot write {key} to '{input_bucket}': {s3.describe_error(exc)}; "
                                f"{keys.processing} was left in place") from None
        crash_point("aggregate.csv")
    try:
        endpoint.delete_owned(client, input_bucket, keys.processing)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"outcome written, but cannot delete {keys.processing}: {s3.describe_error(exc)}") from None
    crash_point("aggregate.deleted")

    summary = {
        "manifest": manifest_id,
        "raw_key": keys.raw,
        "processing_key": keys.processing,
        "processed_key": keys.processed,
        "failed_key": keys.failed,
        "errors_key": keys.errors,
        "processed": len(outcome.processed),
        "failed": len(outcome.failed),
        "notes": outcome.notes,
    }
    for note in outcome.notes:
        log.info("note: %s", note)
    log.info("%s: %d processed, %d failed -> %s, %s", keys.raw, summary["processed"], summary["failed"],
             keys.processed, keys.failed)
    target = outcome_path(run_dir, manifest_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
