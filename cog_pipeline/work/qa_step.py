"""The delivery QA step of a run (rule ``qa_delivery``, and ``tick --dry-run``): before any row of a manifest
is converted, read every input's header and a decimated overview through a presigned GET (``/vsicurl/``
range reads; GDAL gets a URL, never a key), check the delivery (raster/qa.py) and record which rows fail.

Files, per manifest ``<m>`` of the run directory:

- ``qa/<m>.csv``: every finding (key, check, severity, detail), also uploaded right away as
  ``<stem>qa-<TS>.csv`` beside the outcome CSVs in the input bucket;
- ``qa/<m>.json``: the :class:`QaVerdict`: the rows that fail with their reasons, the findings, and the rows
  whose input was not in the bucket (left to the batch, which fails them ``input-missing``).

A batch leaves the failing rows out (:func:`without_failed`); the aggregate gives them their outcome
(:func:`qa_outcomes`): failed at step ``qa``, code ``qa-failed``, reason ``<check>: <detail>`` (the errors
CSV shows ``qa: <check>: <detail>``). docs/delivery.md says what each check means.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.core.config import qa_enabled
from cog_pipeline.core.naming import plural, qa_verdict_path
from cog_pipeline.core.rundir import RunConfig
from cog_pipeline.raster import qa
from cog_pipeline.raster.header import ImageHeader
from cog_pipeline.raster.qa import Finding, QaRules
from cog_pipeline.storage import presign, s3
from cog_pipeline.storage.presign import DEFAULT_EXPIRY_S
from cog_pipeline.work.manifest import Entry, read_manifest
from cog_pipeline.work.outcomes import ImageOutcome

log = logging.getLogger(__name__)

__all__ = [
    "STEP",
    "QaVerdict",
    "csv_path",
    "gdal_options",
    "qa_enabled",
    "qa_manifest",
    "qa_outcomes",
    "read_verdict",
    "redact",
    "run_qa",
    "summary_lines",
    "without_failed",
]

#: The step a QA-failed row failed at (the errors CSV: ``qa: <check>: <detail>``).
STEP = "qa"
#: Presigned GETs of the QA step live this long at most (they never leave the process).
URL_EXPIRY_S = min(DEFAULT_EXPIRY_S, 3600)
#: The dry run lists this many failing rows and missing inputs, then counts the rest.
SHOW = 20

_URL_QUERY = re.compile(r"(https?://[^\s?'\"]*)\?[^\s'\"]*")


def redact(text: str) -> str:
    """``text`` with the query of every URL removed (a presigned URL's signature and key id)."""
    return _URL_QUERY.sub(r"\1", text)


class _Redact(logging.Filter):
    """Removes URL queries from GDAL's messages (rasterio logs them, with the /vsicurl/ path they name)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


@contextmanager
def _redacted_gdal_logs() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("rasterio._env", "rasterio._base", "rasterio")]
    flt = _Redact()
    for logger in loggers:
        logger.addFilter(flt)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(flt)


def rules_of(config: dict[str, Any]) -> QaRules:
    """The ``qa:`` section checked (PipelineError naming the key)."""
    try:
        return qa.qa_rules_from_config(config)
    except ValueError as exc:
        raise PipelineError(f"config: {exc}") from None


def gdal_options(settings: s3.S3Settings) -> dict[str, str]:
    """GDAL config options for reading a presigned URL with range requests: no directory listing or side-car
    probes (a signed URL names one object), GET instead of HEAD (the URL is signed for GET), the run's CA
    bundle, timeouts and a few retries. No credentials: /vsicurl/ needs none."""
    options = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        # Nothing kept from an earlier open: two URLs signed in the same second for the same key are the same
        # string, and the object may have been replaced since (a retry after a fix).
        "CPL_VSIL_CURL_NON_CACHED": "/vsicurl/",
        "CPL_VSIL_CURL_USE_HEAD": "NO",
        "GDAL_HTTP_TIMEOUT": str(max(1, round(settings.read_timeout))),
        "GDAL_HTTP_CONNECTTIMEOUT": str(max(1, round(settings.connect_timeout))),
        "GDAL_HTTP_MAX_RETRY": "3",
        "GDAL_HTTP_RETRY_DELAY": "0.5",
    }
    bundle = s3.ca_bundle(settings)
    if bundle:
        options["CURL_CA_BUNDLE"] = bundle
    return options


# ------------------------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class QaVerdict:
    """One manifest's QA: the findings, and the rows whose input was not in the bucket (not read)."""

    manifest: str
    checked: int
    findings: tuple[Finding, ...]
    missing: tuple[str, ...] = ()
    #: Key -> the map facts (footprint, CRS, pixel size) of each row QA fails, read from its input: those rows
    #: are never converted, so the report's map has their footprint from here.
    places: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def failing(self) -> dict[str, str]:
        """Key -> the row's reason (``<check>: <detail>``, several joined by ``; ``), in finding order."""
        out: dict[str, list[str]] = {}
        for f in self.findings:
            if f.fails_row:
                out.setdefault(f.key, []).append(f"{f.check}: {f.detail}")
        return {key: "; ".join(reasons) for key, reasons in out.items()}

    def counts(self, severity: str) -> Counter[str]:
        """How many findings of each check have this severity."""
        return Counter(f.check for f in self.findings if f.severity == severity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "checked": self.checked,
            "failed": [{"key": k, "reason": r} for k, r in self.failing().items()],
            "missing": list(self.missing),
            "places": {k: dict(v) for k, v in self.places.items()},
            "findings": [
                {"key": f.key, "check": f.check, "severity": f.severity, "detail": f.detail} for f in self.findings
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QaVerdict:
        return cls(
            manifest=str(data["manifest"]),
            checked=int(data["checked"]),
            findings=tuple(
                Finding(str(f["key"]), str(f["check"]), str(f["severity"]), str(f["detail"]))
                for f in data.get("findings") or []
            ),
            missing=tuple(str(k) for k in data.get("missing") or []),
            places={str(k): dict(v) for k, v in (data.get("places") or {}).items()},
        )


def csv_path(run_dir: Path | str, manifest_id: str) -> Path:
    return Path(run_dir) / "qa" / f"{manifest_id}.csv"


def read_verdict(run_dir: Path | str, manifest_id: str) -> QaVerdict | None:
    """The manifest's verdict, None when its QA did not run (PipelineError naming a damaged file)."""
    path = qa_verdict_path(run_dir, manifest_id)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return QaVerdict.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: not a QA verdict ({exc}); remove it to run the QA again") from None


def _write_verdict(path: Path, verdict: QaVerdict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(verdict.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------- running it


def run_qa(config: dict[str, Any], manifest_id: str, keys: Sequence[str], client: Any = None) -> QaVerdict:
    """List the input bucket once for ``keys`` (the rows' inputs), read the header of each that is there
    through a presigned GET (``qa.threads`` at a time) and check the delivery."""
    rules = rules_of(config)
    settings = s3.S3Settings.from_config(config["s3"])
    bucket = config["s3"]["input_bucket"]
    if client is None:
        client = s3.make_client(settings)
    try:
        present = s3.existing_keys(client, bucket, keys)
    except s3.S3_ERRORS as exc:
        raise PipelineError(
            f"QA of {manifest_id}: cannot list input bucket '{bucket}': {s3.describe_error(exc)}"
        ) from None
    order = {key: i for i, key in enumerate(keys)}
    found = [k for k in keys if k in present]
    missing = tuple(k for k in keys if k not in present)
    signer = presign.signing_client(settings)
    try:
        urls = {k: "/vsicurl/" + presign.presign_get(signer, bucket, k, URL_EXPIRY_S).url for k in found}
    except s3.S3_ERRORS as exc:
        raise PipelineError(f"QA of {manifest_id}: cannot sign GETs of '{bucket}': {s3.describe_error(exc)}") from None
    with _redacted_gdal_logs():
        headers, unreadable = qa.read_headers(urls, rules, gdal_options(settings))
    findings = [Finding(f.key, f.check, f.severity, redact(f.detail)) for f in unreadable]
    findings += qa.check_delivery(headers, rules)
    findings.sort(key=lambda f: order.get(f.key, len(order)))  # stable: each image's own order kept
    failing = qa.failing_keys(findings)
    places = {h.key: _place(h) for h in headers if h.key in failing}
    return QaVerdict(manifest_id, len(found), tuple(findings), missing, {k: v for k, v in places.items() if v})


def _place(header: ImageHeader) -> dict[str, Any]:
    """The report map's facts of an input QA fails (its footprint, CRS and pixel size); empty if none."""
    from cog_pipeline.work.footprints import header_facts  # shapely and pystac: only when a row fails

    try:
        facts = header_facts(header)
    except Exception as exc:  # noqa: BLE001 - a footprint for the map never fails the QA step
        log.warning("%s: no map footprint of the input: %s", header.key, redact(str(exc)))
        return {}
    place = {k: facts[k] for k in ("footprint", "crs", "pixel_size", "pixel_unit") if k in facts}
    return dict(json.loads(json.dumps(place)))  # as the verdict file holds it (lists, not tuples)


def qa_manifest(config: dict[str, Any], run_dir: Path | str, manifest_id: str) -> QaVerdict:
    """The rule: QA one claimed manifest, write ``qa/<m>.csv`` and upload it as ``<stem>qa-<TS>.csv`` beside
    the outcome CSVs, then write ``qa/<m>.json`` (last: the batches wait for it)."""
    run_dir = Path(run_dir)
    manifest = RunConfig(config).manifest(manifest_id)
    entries = read_manifest(run_dir / manifest.csv).entries
    settings = s3.S3Settings.from_config(config["s3"])
    client = s3.make_client(settings)
    verdict = run_qa(config, manifest_id, [e.key for e in entries], client)
    csv_path(run_dir, manifest_id).parent.mkdir(parents=True, exist_ok=True)
    local = qa.write_qa_csv(verdict.findings, csv_path(run_dir, manifest_id))
    key = manifest.keys.qa
    bucket = config["s3"]["input_bucket"]
    try:
        s3.put_bytes(client, bucket, key, local.read_bytes())
    except Exception as exc:  # noqa: BLE001 - reported as a clear PipelineError
        raise PipelineError(
            f"QA of {manifest_id}: cannot write {key} to '{bucket}': {s3.describe_error(exc)}"
        ) from None
    _write_verdict(qa_verdict_path(run_dir, manifest_id), verdict)
    failing = verdict.failing()
    log.info(
        "%s: QA read %s; %s fail (not converted), %s; findings in %s",
        manifest.raw_key,
        plural(verdict.checked, "header"),
        plural(len(failing), "row"),
        plural(len(verdict.missing), "input") + " not in the bucket",
        key,
    )
    for k, reason in failing.items():
        log.info("%s: fails QA: %s", k, reason)
    return verdict


# ------------------------------------------------------------------------------------------- batch, aggregate


def without_failed(config: dict[str, Any], run_dir: Path | str, manifest_id: str, entries: list[Entry]) -> list[Entry]:
    """``entries`` without the rows QA failed (all of them when QA is off or has not run here)."""
    if not entries or not qa_enabled(config):
        return entries
    verdict = read_verdict(run_dir, manifest_id)
    if verdict is None:
        return entries
    failing = verdict.failing()
    return [e for e in entries if e.key not in failing]


def qa_outcomes(
    config: dict[str, Any], run_dir: Path | str, manifest_id: str, entries: Iterable[Entry], recorded: set[str]
) -> dict[str, ImageOutcome]:
    """The outcome of each row QA failed (step ``qa``, code ``qa-failed``); and, when the QA step never finished
    (no verdict, so no batch ran), of each row without a record, saying so."""
    if not qa_enabled(config):
        return {}
    verdict = read_verdict(run_dir, manifest_id)
    out: dict[str, ImageOutcome] = {}
    if verdict is None:
        log_file = Path(run_dir) / "logs" / "qa" / f"{manifest_id}.log"
        if not log_file.is_file():
            return {}  # QA was not part of this run (a run made before it): the batches did not wait for it
        for e in entries:
            if e.key not in recorded:
                out[e.key] = ImageOutcome.failure_of(
                    e,
                    FailureCode.BATCH_DID_NOT_FINISH,
                    f"no outcome recorded: the delivery QA step did not finish, so no batch ran (see "
                    f"logs/qa/{manifest_id}.log and logs/snakemake.log)",
                    STEP,
                )
        return out
    failing = verdict.failing()
    for e in entries:
        if e.key in failing:
            out[e.key] = ImageOutcome.failure_of(e, FailureCode.QA_FAILED, failing[e.key], STEP)
    return out


# ------------------------------------------------------------------------------------------- dry run


def summary_lines(verdict: QaVerdict, entries: Sequence[Entry], bucket: str, enabled: bool) -> list[str]:
    """What the dry run prints of a manifest's inputs and QA (indented under its "Would claim" line); with QA
    off for the run (``enabled`` False) the findings are shown all the same, saying the rows would be converted."""
    lines_of = {e.key: e.line for e in entries}
    total = len(entries)
    lines = []
    if verdict.missing:
        lines.append(
            f"  inputs: {total - len(verdict.missing)} of {total} in bucket '{bucket}'; "
            f"{plural(len(verdict.missing), 'row')} would fail input-missing:"
        )
        lines += [f"    missing: line {lines_of.get(k, '?')}: {k}" for k in verdict.missing[:SHOW]]
        if len(verdict.missing) > SHOW:
            lines.append(f"    ... and {len(verdict.missing) - SHOW} more")
    else:
        lines.append(f"  inputs: all {total} in bucket '{bucket}'")
    failing = verdict.failing()
    would = "would fail QA" if enabled else "would fail QA if qa.enabled were true (it is not: converted)"

    def counted(severity: str) -> str:
        found = verdict.counts(severity)
        return ", ".join(f"{check} {n}" for check, n in sorted(found.items())) or "none"

    lines.append(
        f"  QA: {plural(verdict.checked, 'header')} read; {plural(len(failing), 'row')} {would} "
        f"({counted('fail')}); warnings: {counted('warn')}; info: {counted('info')}"
    )
    for key, reason in list(failing.items())[:SHOW]:
        lines.append(f"    fails: line {lines_of.get(key, '?')}: {key}: qa: {reason}")
    if len(failing) > SHOW:
        lines.append(f"    ... and {len(failing) - SHOW} more")
    for f in verdict.findings:
        if f.severity == "warn" and sum(line.startswith("    warn:") for line in lines) < SHOW:
            lines.append(f"    warn: line {lines_of.get(f.key, '?')}: {f.key}: {f.check}: {f.detail}")
    return lines
