"""``cog-pipeline retry``: put the failed rows of a finished manifest back in the queue.

The rows of ``X-failed-<TS>.csv`` become a new manifest ``X-retry-<NOW>-raw.csv`` that the next
tick claims (a retry of a retry is named ``X-retry-<NOW>-raw.csv`` again, not ``X-retry-..-retry-..``).
Rows that cannot succeed as written (bad key, bad band count) are left out and listed; the retry is
refused while any input object of the remaining rows is still missing, and when the same rows are
already waiting in the queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cog_pipeline.storage import s3
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.work.manifest import csv_reader, parse_manifest, write_rows_csv
from cog_pipeline.core.naming import timestamp

FAILED_KEY = re.compile(r"^(?P<stem>.*)failed-(?P<ts>\d{8}-\d{6})\.csv$", re.DOTALL)
_RETRY_STEM = re.compile(r"retry-\d{8}-\d{6}-$")
_LINE = re.compile(r"line (\d+): ")
#: At most this many missing keys are listed in the refusal.
SHOW_MISSING = 20


@dataclass
class RetryPlan:
    """What a retry queues: the new manifest's key and rows, and the rows left out with why."""

    key: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return write_rows_csv(self.rows)


def retry_stem(stem: str) -> str:
    """``X-`` -> ``X-retry-``; ``X-retry-<TS>-`` (a retry's own stem) -> ``X-retry-`` as well."""
    return _RETRY_STEM.sub("", stem) + "retry-"


def plan_retry(client: Any, bucket: str, failed_key: str) -> RetryPlan | None:
    """Read a failed CSV and decide what to re-queue: None when it has no row at all (nothing failed).

    Raises PipelineError (with what to do) when no row can be retried as written, when inputs are
    still missing, or when the same rows already wait in the queue.
    """
    match = FAILED_KEY.match(failed_key)
    if not match:
        raise PipelineError(
            f"{failed_key} is not a failed-rows file (expected <name>failed-<YYYYmmdd-HHMMSS>.csv, "
            "as written beside the manifest when a run ends)"
        )
    try:
        body = s3.get_bytes(client, bucket, failed_key)
    except Exception as exc:  # noqa: BLE001
        hint = " (check the key: `cog-pipeline status` lists the failed CSVs)" if s3.is_missing(exc) else ""
        raise PipelineError(f"cannot read {failed_key} from '{bucket}': {s3.describe_error(exc)}{hint}") from None
    manifest = parse_manifest(body)
    if not manifest.entries and not manifest.rejected:
        return None
    original = original_lines(client, bucket, f"{match['stem']}errors-{match['ts']}.csv", body)
    rejected = [_in_manifest_terms(r.reason, r.line, original) for r in manifest.rejected]
    # A failed row that reads like a column header ("key,bands") is skipped by the parser: never silently.
    for note in manifest.notes:
        if found := re.match(r"line (\d+): header row skipped", note):
            line = int(found.group(1))
            rejected.append(
                _in_manifest_terms(
                    f"line {line}: reads like a column header (key,bands) in a failed CSV, "
                    "so it cannot be retried as written",
                    line,
                    original,
                )
            )
    if not manifest.entries:
        raise PipelineError(
            f"no row of {failed_key} can be retried as written: fix these rows and upload them in a "
            "new manifest" + "".join(f"\n  {reason}" for reason in rejected)
        )
    missing = []
    for entry in manifest.entries:
        try:
            if s3.head(client, bucket, entry.key) is None:
                missing.append(entry.key)
        except Exception as exc:  # noqa: BLE001
            raise PipelineError(f"cannot check input {entry.key} in '{bucket}': {s3.describe_error(exc)}") from None
    if missing:
        shown = "\n  ".join(missing[:SHOW_MISSING])
        if len(missing) > SHOW_MISSING:
            shown += f"\n  ... and {len(missing) - SHOW_MISSING} more"
        raise PipelineError(
            f"not retrying: {len(missing)} of {len(manifest.entries)} input object(s) are still "
            f"missing from bucket '{bucket}'. Upload them under exactly these keys, then run the same "
            f"retry command again:\n  {shown}"
        )
    stem = retry_stem(match["stem"])
    plan = RetryPlan(
        key=f"{stem}{timestamp()}-raw.csv", rows=[(e.key, e.bands_text) for e in manifest.entries], left_out=rejected
    )
    queued = _already_queued(client, bucket, stem, plan.body)
    if queued:
        raise PipelineError(
            f"these rows are already queued as {queued}: the next tick picks them up "
            "(`cog-pipeline status` shows it waiting or processing)"
        )
    return plan


def original_lines(client: Any, bucket: str, errors_key: str, failed_body: bytes) -> dict[int, int]:
    """Failed-CSV line -> line of the original manifest, for the rows whose reason in the errors CSV written
    beside it names that line (rows the manifest parser refused: "line 36: ..."). The two CSVs list the same
    rows in the same order; an errors CSV that does not match row for row (or is missing) maps nothing."""
    try:
        errors = s3.get_bytes(client, bucket, errors_key).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - without it the failed CSV's own lines are named, said so
        return {}
    reasons = list(csv_reader(errors))[1:]
    starts, line = [], 1
    text = failed_body.decode("utf-8", "replace")
    reader = csv_reader(text)
    rows = []
    for row in reader:
        if row:
            rows.append(row)
            starts.append(line)
        line = reader.line_num + 1
    if len(rows) != len(reasons) or any(a[:1] != b[:1] for a, b in zip(rows, reasons, strict=True)):
        return {}
    mapped = {}
    for start, reason in zip(starts, reasons, strict=True):
        found = _LINE.match(reason[2]) if len(reason) > 2 else None
        if found:
            mapped[start] = int(found.group(1))
    return mapped


def _in_manifest_terms(reason: str, failed_line: int, original: dict[int, int]) -> str:
    """A refusal of a failed-CSV row, naming the row's line in the original manifest where it is known."""
    rest = reason.removeprefix(f"line {failed_line}: ")
    if failed_line in original:
        return f"manifest line {original[failed_line]}: {rest}"
    return f"line {failed_line} of the failed CSV: {rest}"


def _already_queued(client: Any, bucket: str, stem: str, body: bytes) -> str | None:
    """The key of a retry manifest with exactly these rows still waiting (raw) or being processed."""
    pending = re.compile(re.escape(stem) + r"\d{8}-\d{6}-(raw|processing-\d{8}-\d{6})\.csv", re.DOTALL)
    try:
        candidates = [o["Key"] for o in s3.iter_objects(client, bucket, prefix=stem) if pending.fullmatch(o["Key"])]
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(
            f"cannot list '{bucket}' for retries of these rows already queued: {s3.describe_error(exc)}"
        ) from None
    for key in candidates:
        try:
            if s3.get_bytes(client, bucket, key) == body:
                return key
        except Exception:  # noqa: BLE001 - gone meanwhile: not queued
            continue
    return None


def queue_retry(client: Any, bucket: str, plan: RetryPlan) -> None:
    """Upload the retry manifest (never overwriting an existing object)."""
    try:
        s3.put_bytes(client, bucket, plan.key, plan.body, if_none_match=True)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"cannot write {plan.key} to '{bucket}': {s3.describe_error(exc)}") from None
