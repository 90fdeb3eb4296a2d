"""``cog-pipeline retry``: put the failed rows of a finished manifest back in the queue.

The rows of ``X-failed-<TS>.csv`` become a new manifest ``X-retry-<NOW>-raw.csv`` that the next
tick claims. Rows that cannot succeed as written (bad key, bad band count) are left out and listed;
the retry is refused while any input object of the remaining rows is still missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import s3
from .errors import PipelineError
from .manifest import parse_manifest, write_rows_csv
from .naming import timestamp

FAILED_KEY = re.compile(r"^(?P<stem>.*)failed-(?P<ts>\d{8}-\d{6})\.csv$", re.DOTALL)


@dataclass
class RetryPlan:
    """What a retry queues: the new manifest's key and rows, and the rows left out with why."""

    key: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


def plan_retry(client: Any, bucket: str, failed_key: str) -> RetryPlan:
    """Read a failed CSV and decide what to re-queue; PipelineError if inputs are still missing."""
    match = FAILED_KEY.match(failed_key)
    if not match:
        raise PipelineError(f"{failed_key} is not a failed-rows file (expected <name>failed-<YYYYmmdd-HHMMSS>.csv)")
    try:
        body = s3.get_bytes(client, bucket, failed_key)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"cannot read {failed_key} from '{bucket}': {s3.describe_error(exc)}") from None
    manifest = parse_manifest(body)
    if not manifest.entries:
        raise PipelineError(f"{failed_key} has no row that can be retried as written"
                            + "".join(f"\n  {r.reason}" for r in manifest.rejected))
    missing = [e.key for e in manifest.entries if s3.head(client, bucket, e.key) is None]
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise PipelineError(f"not retrying: {len(missing)} input object(s) are still missing from '{bucket}' "
                            f"(upload them first, then run retry again):\n  {shown}")
    return RetryPlan(key=f"{match['stem']}retry-{timestamp()}-raw.csv",
                     rows=[(e.key, e.bands_text) for e in manifest.entries],
                     left_out=[r.reason for r in manifest.rejected])


def queue_retry(client: Any, bucket: str, plan: RetryPlan) -> None:
    """Upload the retry manifest (never overwriting an existing object)."""
    try:
        s3.put_bytes(client, bucket, plan.key, write_rows_csv(plan.rows), if_none_match=True)
    except Exception as exc:  # noqa: BLE001
        raise PipelineError(f"cannot write {plan.key} to '{bucket}': {s3.describe_error(exc)}") from None
