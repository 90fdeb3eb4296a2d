"""The final step of a run: sort every manifest row into processed or failed and publish the outcome.

A row is processed when its conversion was recorded as done (``ok`` or ``skipped``) *and* both the
COG and the JPEG are in the output bucket; otherwise it is failed, with a reason and a failure code.
Existence is checked with one skip-scan listing over the wanted keys
(:func:`cog_pipeline.storage.s3.existing_keys`), not one request per row.

The order (each step only after the one before it, so a stop at any point is finished by a rerun):
the three outcome CSVs -> the STAC (:func:`cog_pipeline.work.delivery.publish_stac`: each processed image's
Item in the output bucket, ``<stem>capture-area-<TS>.geojson`` and ``<stem>collection-<TS>.json`` beside
the CSVs) -> ``outcome/<m>.json`` with ``"finished": false`` -> ``report.html``, the per-image logs and
``<stem>report-<TS>.html`` uploaded -> the ``processing`` manifest deleted -> ``outcome/<m>.json`` with
``"finished": true`` (:func:`cog_pipeline.work.outcomes.manifest_finished`). A STAC object that could not be
written loses no outcome: the CSVs, the summary (``stac``, and a note per failed Item) and the report are
written, then the aggregate fails with the processing file left in place, so the next tick's resume
writes the STAC again (the Items from the records in ``status/``).
The Snakemake rule runs it (scripts/aggregate.py), and so does the driver for a manifest the workflow
left unfinished: a tick, a manual ``snakemake`` rerun and ``cog-pipeline aggregate`` give the same files.
"""

from __future__ import annotations

import gc
import json
import logging
import re
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any
from collections.abc import Collection, Iterator
from contextlib import contextmanager

from cog_pipeline.storage import endpoint, s3
from cog_pipeline.core.crash import crash_point
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.core.naming import ManifestKeys, batch_id, batch_log_path, outcome_path
from cog_pipeline.core.rundir import RunConfig
from cog_pipeline.work.delivery import StacResult, StacRow, publish_stac
from cog_pipeline.work.manifest import (
    Entry,
    Manifest,
    batch_slices,
    jpeg_key,
    parse_manifest,
    write_errors_csv,
    write_rows_csv,
)
from cog_pipeline.work.presigned import discard_urls
from cog_pipeline.work.qa_step import qa_outcomes
from cog_pipeline.work.outcomes import ImageOutcome, Status, read_outcomes, read_summary

log = logging.getLogger(__name__)

#: Where the driver appends Snakemake's output (relative to the run directory).
SNAKEMAKE_LOG = "logs/snakemake.log"


@dataclass
class Outcome:
    """Rows of one manifest sorted by outcome, in manifest order: (key, bands) processed, failed outcomes."""

    processed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[ImageOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def classify(
    manifest: Manifest | bytes,
    records: dict[str, ImageOutcome],
    present: set[str],
    unfinished: dict[str, ImageOutcome] | None = None,
) -> Outcome:
    """Sort every row of the manifest (parsed, or its bytes); no row is dropped (blank and header lines are not
    rows).

    ``unfinished`` maps a key to the failure of its batch job, for keys without a record
    (:func:`unfinished_outcomes`).
    """
    if isinstance(manifest, bytes):
        manifest = parse_manifest(manifest)
    outcome = Outcome(notes=list(manifest.notes))
    rows: list[tuple[int, ImageOutcome | tuple[str, str]]] = []
    failure_of, refused = ImageOutcome.failure_of, FailureCode.MANIFEST_ROW
    rows += [(rejected.line, failure_of(rejected, refused, rejected.reason)) for rejected in manifest.rejected]
    for entry in manifest.entries:
        record = records.get(entry.key)
        result: ImageOutcome | tuple[str, str]
        if record is None:
            result = (unfinished or {}).get(entry.key) or ImageOutcome.failure_of(
                entry,
                FailureCode.BATCH_DID_NOT_FINISH,
                "no outcome recorded: the conversion job for this row did not finish (see logs/convert/)",
            )
        elif record.failed:
            result = record.replace(line=entry.line, bands=entry.bands_text)
        elif entry.key not in present or jpeg_key(entry.key) not in present:
            missing = [k for k in (entry.key, jpeg_key(entry.key)) if k not in present]
            result = ImageOutcome.failure_of(
                entry,
                FailureCode.OUTPUT_MISSING,
                f"output missing from the output bucket after conversion: {', '.join(missing)}",
            )
        else:
            result = (entry.key, entry.bands_text)
            for note in record.notes:
                outcome.notes.append(f"line {entry.line} ({entry.key}): {note}")
        rows.append((entry.line, result))
    for _line, result in sorted(rows, key=itemgetter(0)):  # the lines are unique: the same order as by both
        if isinstance(result, ImageOutcome):
            outcome.failed.append(result)
        else:
            outcome.processed.append(result)
    return outcome


# ------------------------------------------------------------------------------ unfinished batches

#: Lines the job wrapper (profiles/htcondor/job-wrapper.sh) appends to a batch log when a job fails.
WRAPPER_LINE_PREFIX = "job-wrapper on "
_ERROR_BLOCK = re.compile(r"^\s*Error in (rule|group) ")
_FIELD = re.compile(r"^\s+(message|output):\s?(.*)$")


def snakemake_job_errors(run_dir: Path) -> dict[str, str]:
    """Output file -> the message of the last Snakemake job error that named it, from logs/snakemake.log.

    Snakemake writes a failed job as a block (``Error in rule convert:`` then indented ``message: ...``,
    ``jobid: ...``, ``output: status/m1/batch-00001.jsonl``, ...); the HTCondor executor plugin's message
    says what happened on the pool (``Job 3 with HTCondor Cluster ID 12 was removed/aborted.``, ``... is
    held: <reason>``, ``... completed but failed with ExitCode 1.``). Blocks without a message map to "".
    """
    errors: dict[str, str] = {}
    message: str | None = None
    outputs: list[str] = []
    in_block = False
    try:
        with open(Path(run_dir) / SNAKEMAKE_LOG, encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                line = raw.rstrip("\n")
                if _ERROR_BLOCK.match(line) or (in_block and not line[:1].isspace()):
                    errors.update((output, message or "") for output in outputs)
                    message, outputs, in_block = None, [], bool(_ERROR_BLOCK.match(line))
                    continue
                found = _FIELD.match(line) if in_block else None
                if found is None:
                    continue
                name, value = found.groups()
                if name == "message" and message is None:
                    message = value.strip()
                elif name == "output":
                    outputs += [v.strip() for v in value.split(",") if v.strip()]
    except OSError:  # no Snakemake log (a run of the aggregate alone): nothing to add
        pass
    errors.update((output, message or "") for output in outputs)
    return errors


def _pool_failure(message: str) -> tuple[FailureCode, str]:
    """The code and wording of a batch job's end as the executor reported it."""
    lower = message.lower()
    if " is held" in lower or " has been held" in lower:  # the plugin's wording (hold reason after it)
        return FailureCode.BATCH_HELD, "was held on the pool"
    if "removed/aborted" in lower or " was removed" in lower:
        return FailureCode.BATCH_REMOVED, "was removed from the pool before it finished"
    return FailureCode.BATCH_DID_NOT_FINISH, "did not finish"


def unfinished_outcomes(
    run_dir: Path, manifest_id: str, entries: list[Entry], batch_size: int, recorded: set[str]
) -> dict[str, ImageOutcome]:
    """The failure of each row without an outcome record: which batch job did not finish and how (the job
    wrapper's line in its batch log, Snakemake's error for it in logs/snakemake.log), and a log that exists."""
    run_dir = Path(run_dir)
    failures: dict[str, ImageOutcome] = {}
    job_errors: dict[str, str] | None = None
    for index, (start, stop) in enumerate(batch_slices(len(entries), batch_size)):
        missing = [e for e in entries[start:stop] if e.key not in recorded]
        if not missing:
            continue
        if job_errors is None:
            job_errors = snakemake_job_errors(run_dir)
        batch = batch_id(index)
        log_path = batch_log_path(manifest_id, batch)
        why, have_log = "", False
        try:
            lines = (run_dir / log_path).read_text(encoding="utf-8", errors="replace").splitlines()
            have_log = True
            wrapper = [line for line in lines if line.startswith(WRAPPER_LINE_PREFIX)]
            why = f": {wrapper[-1]}" if wrapper else ""
        except OSError:
            pass
        status_file = f"status/{manifest_id}/batch-{batch}.jsonl"
        code, what = FailureCode.BATCH_DID_NOT_FINISH, "did not finish"
        pool_message = job_errors.get(status_file)
        if pool_message is None:  # s3.transfer presigned: the batch job's output is its records for confirm_batch
            pool_message = job_errors.get(f"uploads/{manifest_id}/batch-{batch}.jsonl")
        if pool_message:
            code, what = _pool_failure(pool_message)
            why += f" ({pool_message.rstrip('.')})"
        if have_log:
            where = f"see {log_path}"
        elif pool_message is not None:
            where = f"see {SNAKEMAKE_LOG}; the job's own log {log_path} never came back"
        else:
            where = f"no log came back from the job: {log_path} is absent"
        reason = f"no outcome recorded: batch job batch-{batch} {what}{why} ({where})"
        failures.update((e.key, ImageOutcome.failure_of(e, code, reason)) for e in missing)
    return failures


# ------------------------------------------------------------------------------ the aggregate


def _summary(
    manifest_id: str, keys: ManifestKeys, outcome: Outcome, finished: bool, stac: StacResult | None = None
) -> dict[str, Any]:
    summary = {
        "manifest": manifest_id,
        "raw_key": keys.raw,
        "processing_key": keys.processing,
        "processed_key": keys.processed,
        "failed_key": keys.failed,
        "errors_key": keys.errors,
        "report_key": keys.report,
        "processed": len(outcome.processed),
        "failed": len(outcome.failed),
        "notes": outcome.notes,
        # The failed rows in the errors CSV's order, with their manifest line and failure code.
        "failures": [{"line": f.line, "key": f.key, "code": f.code.value if f.code else None} for f in outcome.failed],
        "finished": finished,
    }
    if stac is not None:
        summary["notes"] = [*outcome.notes, *stac.summary_notes()]
        summary["stac"] = stac.to_summary()
    return summary


def _write_summary(run_dir: Path, manifest_id: str, summary: dict[str, Any]) -> None:
    target = outcome_path(run_dir, manifest_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    # One line: json.dumps with indent takes its pure-Python encoder (seconds for a 100,000-row summary).
    tmp.write_text(json.dumps(summary, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(target)


def publish_report(
    run_dir: Path, config: dict[str, Any], client: Any = None, image_logs_of: Collection[str] | None = None
) -> Path:
    """Write ``report.html`` for every manifest aggregated so far, and the image logs of ``image_logs_of`` (raw
    keys; None: of all), and upload the report beside each of their outcome CSVs; a failure is a PipelineError
    naming what could not be written."""
    from cog_pipeline.work.report import write_report

    run_dir = Path(run_dir)
    try:
        path = write_report(run_dir, config, image_logs_of)
    except OSError as exc:
        raise PipelineError(f"cannot write the report in {run_dir}: {exc.strerror or exc}") from None
    if client is None:
        client = s3.make_client(s3.S3Settings.from_config(config["s3"]))
    bucket = config["s3"]["input_bucket"]
    for manifest in config.get("manifests", []):
        if read_summary(run_dir, manifest["id"]) is None:
            continue  # not aggregated yet: its own aggregate uploads the report
        key = ManifestKeys.from_run(manifest).report
        try:
            with open(path, "rb") as body:  # a page of 100,000 failed rows is some 60 MB
                s3.put_bytes(client, bucket, key, body, content_type="text/html")
        except Exception as exc:  # noqa: BLE001 - reported as a clear PipelineError
            raise PipelineError(f"cannot write {key} to '{bucket}': {s3.describe_error(exc)}") from None
    return path


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (as it was after): the aggregate of a large manifest makes a
    few objects per row, all alive to its end, and the collector went over all of them again and again as they
    grew (a quarter of the aggregate's CPU for 100,000 rows); what it frees, reference counting frees anyway."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def aggregate_manifest(config: dict[str, Any], run_dir: Path, manifest_id: str) -> dict[str, Any]:
    """Classify one manifest's rows, upload the outcome CSVs and the report, delete its ``processing`` object,
    then mark the manifest finished; returns its summary."""
    with gc_paused():
        return _aggregate_manifest(config, Path(run_dir), manifest_id)


def _aggregate_manifest(config: dict[str, Any], run_dir: Path, manifest_id: str) -> dict[str, Any]:
    manifest = RunConfig(config).manifest(manifest_id)
    keys = manifest.keys
    parsed = parse_manifest((run_dir / manifest.csv).read_bytes())  # once: classify sorts these rows
    entries = parsed.entries
    client = s3.make_client(s3.S3Settings.from_config(config["s3"]))
    input_bucket, output_bucket = config["s3"]["input_bucket"], config["s3"]["output_bucket"]

    wanted = [k for e in entries for k in (e.key, jpeg_key(e.key))]
    try:
        present = s3.existing_keys(client, output_bucket, wanted)
    except Exception as exc:  # noqa: BLE001 - reported as a clear PipelineError
        raise PipelineError(f"cannot list output bucket '{output_bucket}': {s3.describe_error(exc)}") from None
    crash_point("aggregate.listed")
    records = read_outcomes(run_dir, manifest_id)
    records.update(qa_outcomes(config, run_dir, manifest_id, entries, set(records)))  # rows the QA failed
    unfinished = unfinished_outcomes(run_dir, manifest_id, entries, int(config["batch_size"]), set(records))
    outcome = classify(parsed, records, present, unfinished)
    discard_urls(run_dir, manifest_id)  # presigned URLs a batch that did not finish left (bearer tokens)

    local_dir = run_dir / "outcome" / manifest_id
    local_dir.mkdir(parents=True, exist_ok=True)
    files = {
        keys.processed: write_rows_csv(outcome.processed),
        keys.failed: write_rows_csv((f.key, f.bands) for f in outcome.failed),
        keys.errors: write_errors_csv((f.key, f.bands, f.csv_reason) for f in outcome.failed),
    }
    for key, body in files.items():
        (local_dir / key.rpartition("/")[2]).write_bytes(body)
        try:
            s3.put_bytes(client, input_bucket, key, body)
        except Exception as exc:  # noqa: BLE001
            raise PipelineError(
                f"cannot write {key} to '{input_bucket}': {s3.describe_error(exc)}; {keys.processing} was left in place"
            ) from None
        crash_point("aggregate.csv")
    rows = [
        StacRow(key, records[key].stac_item, records[key].status is Status.SKIPPED) for key, _bands in outcome.processed
    ]
    stac = publish_stac(client, config, keys, rows, local_dir)
    summary = _summary(manifest_id, keys, outcome, finished=False, stac=stac)
    _write_summary(run_dir, manifest_id, summary)  # the report reads it

    try:
        # Only this manifest's image logs: the earlier manifests' aggregates wrote theirs (a run of several
        # large manifests wrote every log again per manifest).
        report = publish_report(run_dir, config, client, image_logs_of={manifest.raw_key})
    except PipelineError as exc:
        raise PipelineError(f"outcome CSVs written, but {exc}; {keys.processing} was left in place") from None
    crash_point("aggregate.report")
    if not stac.complete:
        first = stac.failed[0][0] + ": " + stac.failed[0][1] if stac.failed else stac.errors[0]
        raise PipelineError(
            f"outcome CSVs and report written, but the STAC is incomplete "
            f"({len(stac.failed)} Item(s) and {len(stac.errors)} other object(s) not written; "
            f"first: {first}); {keys.processing} was left in place, so the next tick's resume "
            "writes them again"
        )
    try:
        endpoint.delete_owned(client, input_bucket, keys.processing)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"outcome written, but cannot delete {keys.processing}: {s3.describe_error(exc)}") from None
    crash_point("aggregate.deleted")

    for note in outcome.notes:
        log.info("note: %s", note)
    log.info(
        "%s: %d processed, %d failed -> %s, %s; report %s",
        keys.raw,
        summary["processed"],
        summary["failed"],
        keys.processed,
        keys.failed,
        report,
    )
    summary["finished"] = True
    _write_summary(run_dir, manifest_id, summary)
    return summary
