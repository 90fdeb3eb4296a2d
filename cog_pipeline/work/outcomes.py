"""The outcome of one image, typed: what a batch job records per manifest row and everything else reads.

A batch job writes one :class:`ImageOutcome` per row it owns as a JSON line to
``status/<m>/batch-<n>.jsonl`` (:func:`write_outcomes`: appended to ``.tmp`` as images finish, renamed
when the batch is complete). :func:`read_outcomes` is the one reader of finished batches (aggregate,
report, image logs); :class:`OutcomeCounter` counts finished and in-progress batches for the progress
bar and ``status``. A failed outcome carries a :class:`FailureCode` given where the failure was raised
or recorded; records written by older versions (no ``code``) are mapped once, in :meth:`ImageOutcome.from_record`.

The aggregate's summary ``outcome/<m>.json`` is written twice: once with ``"finished": false`` before
the report (which reads it), and again with ``"finished": true`` as the very last step, after the
processing file is gone; :func:`manifest_finished` is the test for "this manifest is done".
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.core.naming import outcome_path
from cog_pipeline.core.rundir import summary_finished

if TYPE_CHECKING:
    from cog_pipeline.work.manifest import Entry, Rejected

__all__ = [
    "FailureCode",
    "ImageOutcome",
    "OutcomeCounter",
    "Status",
    "count_outcomes",
    "failure_codes",
    "legacy_code",
    "manifest_finished",
    "read_outcomes",
    "recorded_failures",
    "read_summary",
    "write_outcomes",
]


class Status(str, Enum):
    """How a row's conversion ended (``skipped``: its outputs were already made from this input)."""

    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class ImageOutcome:
    """One manifest row's outcome. ``step`` and ``reason`` say where and why a row failed (``reason`` of a
    skipped row says why it was skipped); ``batch`` is the batch that recorded it (set by the reader)."""

    key: str
    status: Status
    line: int | None = None
    bands: str = ""
    code: FailureCode | None = None
    step: str | None = None
    reason: str = ""
    file_bands: int | None = None
    dtype: str | None = None
    width: int | None = None
    height: int | None = None
    input_bytes: int | None = None
    cog_bytes: int | None = None
    jpeg_bytes: int | None = None
    notes: tuple[str, ...] = ()
    step_seconds: Mapping[str, float] = field(default_factory=dict)
    thumbnail: str | None = None
    log: tuple[str, ...] = ()
    seconds: float | None = None
    #: What the report shows of a converted image (work/footprints.py): CRS (``EPSG:<code>`` or its name),
    #: pixel size (x, y) in ``pixel_unit``, overview decimation factors, the COG's and the input's codecs, and
    #: the valid pixels' footprint (a GeoJSON Polygon/MultiPolygon in lon/lat, a few vertices).
    crs: str | None = None
    pixel_size: tuple[float, float] | None = None
    pixel_unit: str | None = None
    overviews: tuple[int, ...] = ()
    codec: str | None = None
    input_codec: str | None = None
    footprint: Mapping[str, Any] | None = None
    #: The delivery standard (docs/delivery.md): the data kind detected, the preset's summary, the check its COG
    #: passed (``lossless`` or ``bounded``) with the measured error of a bounded one (``psnr_db`` may be inf:
    #: written as ``"inf"``), the pixel digests of the input and the COG, the output keys of the files uploaded
    #: beside the JPEG (world files, ``.aux.xml``, smaller previews) and the image's STAC Item (a dict).
    kind: str | None = None
    preset: str | None = None
    check: str | None = None
    max_abs_error: float | None = None
    rmse: float | None = None
    psnr_db: float | None = None
    input_pixel_digest: str | None = None
    cog_pixel_digest: str | None = None
    sidecars: tuple[str, ...] = ()
    stac_item: Mapping[str, Any] | None = None
    batch: str | None = field(default=None, compare=False)

    @property
    def failed(self) -> bool:
        return self.status is Status.FAILED

    @property
    def done(self) -> bool:
        """Converted now or before (``ok`` or ``skipped``)."""
        return self.status is not Status.FAILED

    @property
    def csv_reason(self) -> str:
        """The reason as the errors CSV states it: ``step: message``, or the message alone when no step ran."""
        return f"{self.step}: {self.reason}" if self.step else self.reason

    def replace(self, **changes: Any) -> ImageOutcome:
        return dataclasses.replace(self, **changes)

    def to_record(self) -> dict[str, Any]:
        """The JSON record (fields without a value left out; ``batch`` is not written)."""
        record: dict[str, Any] = {"key": self.key}
        if self.line is not None:
            record["line"] = self.line
        record["bands"] = self.bands
        record["status"] = self.status.value
        if self.code is not None:
            record["code"] = self.code.value
        if self.step is not None:
            record["step"] = self.step
        if self.reason or self.status is not Status.OK:
            record["reason"] = self.reason
        for name in ("file_bands", "dtype", "width", "height", "input_bytes", "cog_bytes", "jpeg_bytes"):
            value = getattr(self, name)
            if value is not None:
                record[name] = value
        if self.status is Status.OK:
            record["notes"] = list(self.notes)
            record["step_seconds"] = dict(self.step_seconds)
        elif self.notes:
            record["notes"] = list(self.notes)
        if self.thumbnail is not None:
            record["thumbnail"] = self.thumbnail
        if self.log:
            record["log"] = list(self.log)
        if self.seconds is not None:
            record["seconds"] = self.seconds
        for name in ("crs", "pixel_unit", "codec", "input_codec"):
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        if self.pixel_size is not None:
            record["pixel_size"] = list(self.pixel_size)
        if self.overviews:
            record["overviews"] = list(self.overviews)
        if self.footprint is not None:
            record["footprint"] = dict(self.footprint)
        for name in ("kind", "preset", "check", "input_pixel_digest", "cog_pixel_digest"):
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        for name in ("max_abs_error", "rmse", "psnr_db"):
            if getattr(self, name) is not None:
                record[name] = _json_float(getattr(self, name))
        if self.sidecars:
            record["sidecars"] = list(self.sidecars)
        if self.stac_item is not None:
            record["stac_item"] = dict(self.stac_item)
        return record

    @classmethod
    def failure_of(cls, row: Entry | Rejected, code: FailureCode, reason: str, step: str | None = None) -> ImageOutcome:
        """The failed outcome of a manifest row (accepted or rejected), at ``step`` when one is known."""
        return cls(
            key=row.key, status=Status.FAILED, line=row.line, bands=row.bands_text, code=code, step=step, reason=reason
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ImageOutcome:
        """Read a record; one written before failure codes existed gets its code from its reason, here only."""
        key = record.get("key")
        if not isinstance(key, str):
            raise ValueError(f"record without a key: {dict(record)!r:.200}")
        try:
            status = Status(record.get("status"))
        except ValueError:
            raise ValueError(f"{key}: unknown status {record.get('status')!r}") from None
        step = record.get("step")
        reason = str(record.get("reason") or "")
        code: FailureCode | None = None
        if status is Status.FAILED:
            step = str(step) if step is not None else "?"
            reason = reason or "unknown error"
            if record.get("code") is not None:
                try:
                    code = FailureCode(record["code"])
                except ValueError:
                    code = None  # written by a newer version: advice falls back to the generic text
            else:
                code = legacy_code(f"{step}: {reason}")
        seconds = record.get("seconds")
        return cls(
            key=key,
            status=status,
            line=_int(record.get("line")),
            bands=str(record.get("bands", "")),
            code=code,
            step=str(step) if step is not None else None,
            reason=reason,
            file_bands=_int(record.get("file_bands")),
            dtype=_str(record.get("dtype")),
            width=_int(record.get("width")),
            height=_int(record.get("height")),
            input_bytes=_int(record.get("input_bytes")),
            cog_bytes=_int(record.get("cog_bytes")),
            jpeg_bytes=_int(record.get("jpeg_bytes")),
            notes=tuple(str(n) for n in record.get("notes") or ()),
            step_seconds={str(k): float(v) for k, v in (record.get("step_seconds") or {}).items()},
            thumbnail=_str(record.get("thumbnail")),
            log=tuple(str(x) for x in record.get("log") or ()),
            seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
            crs=_str(record.get("crs")),
            pixel_size=_pair(record.get("pixel_size")),
            pixel_unit=_str(record.get("pixel_unit")),
            overviews=tuple(v for v in record.get("overviews") or () if _int(v) is not None),
            codec=_str(record.get("codec")),
            input_codec=_str(record.get("input_codec")),
            footprint=_polygon(record.get("footprint")),
            kind=_str(record.get("kind")),
            preset=_str(record.get("preset")),
            check=_str(record.get("check")),
            max_abs_error=_float(record.get("max_abs_error")),
            rmse=_float(record.get("rmse")),
            psnr_db=_float(record.get("psnr_db")),
            input_pixel_digest=_str(record.get("input_pixel_digest")),
            cog_pixel_digest=_str(record.get("cog_pixel_digest")),
            sidecars=tuple(k for k in record.get("sidecars") or () if isinstance(k, str)),
            stac_item=_item(record.get("stac_item")),
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _json_float(value: float) -> float | str:
    """A float as strict JSON holds it: inf and nan as the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    return value if math.isfinite(value) else str(value)


def _float(value: Any) -> float | None:
    """A number as recorded (``"inf"``, ``"-inf"``, ``"nan"`` too); anything else is none."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if value in ("inf", "-inf", "nan"):
        return float(value)
    return None


def _item(value: Any) -> dict[str, Any] | None:
    """A STAC Item as recorded (a mapping of type Feature); anything else is no Item."""
    if isinstance(value, Mapping) and value.get("type") == "Feature":
        return dict(value)
    return None


def _pair(value: Any) -> tuple[float, float] | None:
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return (float(value[0]), float(value[1]))
    return None


def _polygon(value: Any) -> dict[str, Any] | None:
    """A GeoJSON Polygon or MultiPolygon as recorded; anything else (unreadable) is no footprint."""
    if (
        isinstance(value, Mapping)
        and value.get("type") in ("Polygon", "MultiPolygon")
        and isinstance(value.get("coordinates"), list)
    ):
        return dict(value)
    return None


# --------------------------------------------------------------------------- records of older versions

#: How a reason written before failure codes existed maps to its code (first match wins). Used only for
#: such records (and summaries); new failures get their code where they are raised.
_LEGACY: list[tuple[re.Pattern[str], FailureCode]] = [
    (re.compile(p, re.IGNORECASE | re.DOTALL), c)
    for p, c in [
        (r"input object not found", FailureCode.INPUT_MISSING),
        (r"input object is empty|file is empty", FailureCode.INPUT_EMPTY),
        (r"not a TIFF file", FailureCode.NOT_A_TIFF),
        (r"truncated or corrupt", FailureCode.CORRUPT),
        (r"exceeds max_pixels", FailureCode.TOO_LARGE),
        (r"no space left|not enough space|disk full", FailureCode.DISK_FULL),
        (r"JPEG format is limited", FailureCode.JPEG_TOO_LARGE),
        (r"AccessDenied|Forbidden|InvalidAccessKeyId|SignatureDoesNotMatch", FailureCode.S3_DENIED),
        (r"^(download|upload|check-output):", FailureCode.S3_FAILED),
        (r"no outcome recorded", FailureCode.BATCH_DID_NOT_FINISH),
        (r"output missing from the output bucket", FailureCode.OUTPUT_MISSING),
        (r"^internal:", FailureCode.INTERNAL),
        (r"^(validate|verify):", FailureCode.VERIFY_FAILED),
        (r"^(open|cog|jpeg):", FailureCode.GDAL_FAILED),
        (r"^line \d+:", FailureCode.MANIFEST_ROW),
    ]
]


def legacy_code(reason: str) -> FailureCode | None:
    """The code of a failure recorded by an older version, from its reason (``step: message``)."""
    for pattern, code in _LEGACY:
        if pattern.search(reason or ""):
            return code
    return None


# ----------------------------------------------------------------------------------- files


def _batch_files(run_dir: Path, manifest_id: str, pattern: str = "batch-*.jsonl") -> list[Path]:
    return sorted((Path(run_dir) / "status" / manifest_id).glob(pattern))


def read_outcomes(run_dir: Path, manifest_id: str) -> dict[str, ImageOutcome]:
    """Every outcome of a manifest's finished batches, by key (a later batch's record of a key wins)."""
    outcomes: dict[str, ImageOutcome] = {}
    for path in _batch_files(run_dir, manifest_id):
        batch = path.stem.removeprefix("batch-")
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    outcome = ImageOutcome.from_record(json.loads(line))
                except (ValueError, TypeError, AttributeError) as exc:
                    raise PipelineError(f"{path}, line {number}: not an image outcome record ({exc})") from None
                outcomes[outcome.key] = outcome.replace(batch=batch)
    return outcomes


def write_outcomes(status_file: Path, outcomes: Iterable[ImageOutcome]) -> list[ImageOutcome]:
    """Write ``outcomes`` (consumed as they come) to ``status_file``: each line appended and flushed to
    ``<status_file>.tmp`` as it arrives, the file renamed to ``status_file`` once all are written."""
    status_file = Path(status_file)
    status_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = status_file.with_name(status_file.name + ".tmp")
    written: list[ImageOutcome] = []
    with open(tmp, "w", encoding="utf-8") as fh:
        for outcome in outcomes:
            fh.write(json.dumps(outcome.to_record(), ensure_ascii=False) + "\n")
            fh.flush()
            written.append(outcome)
        os.fsync(fh.fileno())
    os.replace(tmp, status_file)
    return written


def recorded_failures(run_dir: Path, manifest_id: str) -> dict[str, bool]:
    """Key -> failed? for every outcome recorded so far (finished batches and those in progress, a later
    record of a key wins); lines still being written and files renamed meanwhile are left for the next look."""
    recorded: dict[str, bool] = {}
    for path in _batch_files(run_dir, manifest_id, "batch-*.jsonl*"):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "key" in record:
                recorded[str(record["key"])] = record.get("status") == Status.FAILED.value
    return recorded


class OutcomeCounter:
    """Counts recorded outcomes (finished batches and those in progress) without rereading what it has
    counted: each batch file is followed from where the last poll stopped, across its ``.tmp`` -> final rename."""

    def __init__(self) -> None:
        #: batch file (without ``.tmp``) -> (bytes consumed, records, failed)
        self._seen: dict[Path, tuple[int, int, int]] = {}

    def count(self, run_dir: Path) -> tuple[int, int]:
        """(outcomes recorded so far, of which failed)."""
        current: dict[Path, Path] = {}
        for path in Path(run_dir).glob("status/*/batch-*.jsonl*"):
            if path.name.endswith(".jsonl"):
                current[path] = path
            elif path.name.endswith(".jsonl.tmp"):
                current.setdefault(path.with_name(path.name[: -len(".tmp")]), path)
        for batch in list(self._seen):
            if batch not in current:
                del self._seen[batch]
        for batch, path in current.items():
            self._seen[batch] = self._follow(path, *self._seen.get(batch, (0, 0, 0)))
        return sum(s[1] for s in self._seen.values()), sum(s[2] for s in self._seen.values())

    @staticmethod
    def _follow(path: Path, offset: int, done: int, failed: int) -> tuple[int, int, int]:
        try:
            with open(path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < offset:  # rewritten (a batch run again): start over
                    offset, done, failed = 0, 0, 0
                fh.seek(offset)
                for line in _complete_lines(fh):
                    offset += len(line)
                    if not line.strip():
                        continue
                    try:
                        status = json.loads(line).get("status")
                    except (ValueError, AttributeError):
                        continue
                    done += 1
                    failed += status == Status.FAILED.value
        except OSError:  # renamed between the listing and the open: followed at the next poll
            pass
        return offset, done, failed


def _complete_lines(fh: Any) -> Iterator[bytes]:
    """The newline-terminated lines from the current position (a line still being written is left)."""
    for line in fh:
        if not line.endswith(b"\n"):
            return
        yield line


def count_outcomes(run_dir: Path) -> tuple[int, int]:
    """(outcomes recorded so far, of which failed) in a run directory: finished and in-progress batches."""
    return OutcomeCounter().count(run_dir)


# ----------------------------------------------------------------------------------- summaries


def read_summary(run_dir: Path, manifest_id: str) -> dict[str, Any] | None:
    """The aggregate's summary of a manifest (``outcome/<m>.json``), None when there is none (or unreadable)."""
    try:
        data = json.loads(outcome_path(run_dir, manifest_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def manifest_finished(run_dir: Path, manifest_id: str) -> bool:
    """True once a manifest's aggregate completed: outcome CSVs, report and image logs written and uploaded,
    processing file deleted (:func:`cog_pipeline.core.rundir.summary_finished`, what the run's state uses)."""
    return summary_finished(outcome_path(run_dir, manifest_id))


#: Each failure code by its value (a FailureCode is a str: it finds itself too).
_CODES: dict[str, FailureCode] = {code.value: code for code in FailureCode}


def failure_codes(summary: Mapping[str, Any], reasons: list[str]) -> list[FailureCode | None]:
    """The failure code of each row of a manifest's errors CSV (``reasons``, in its order): from the summary's
    ``failures``, or, for a summary written before codes existed, from each reason."""
    failures = summary.get("failures")
    if isinstance(failures, list) and len(failures) == len(reasons):
        codes: list[FailureCode | None] = []
        for failure in failures:
            code = failure.get("code") if isinstance(failure, dict) else None
            codes.append(_CODES.get(code) if isinstance(code, str) else None)
        return codes
    return [legacy_code(reason) for reason in reasons]
