"""Names of things: manifest keys through their life cycle, run directories, per-run files.

``folder/X-raw.csv`` is claimed as ``folder/X-processing-<TS>.csv`` and ends as
``folder/X-processed-<TS>.csv``, ``folder/X-failed-<TS>.csv`` and ``folder/X-errors-<TS>.csv``, with the
report ``folder/X-report-<TS>.html``, the delivery's STAC Collection ``folder/X-collection-<TS>.json`` and its
capture area ``folder/X-capture-area-<TS>.geojson`` beside them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"
RUN_DIR_PREFIX = "workflow-run-"
RUN_CONFIG = "run.yaml"
#: A run directory's last heartbeat warning (status shows it); removed by the next heartbeat that works.
HEARTBEAT_WARNING = "logs/heartbeat-warning.txt"
#: Prefix of the pipeline's own state objects in the input bucket (claim markers).
STATE_PREFIX = ".cog-pipeline/"

#: A processing object: ``<stem>processing-<TS>.csv``.
PROCESSING_KEY = re.compile(r"^(?P<stem>.*)processing-(?P<ts>\d{8}-\d{6})\.csv$", re.DOTALL)

_OWNED = re.compile(
    r"(processing|processed|failed|errors|report|collection|capture-area|qa)-\d{8}-\d{6}"
    r"\.(csv|html|json|geojson)$"
)


#: The GeoTIFF key rule: the original accepted keys ending in ``.tif``; this pipeline also accepts
#: ``.tiff`` in any case (``.TIF``, ``.Tiff``, ... as written by Windows exports).
TIFF_SUFFIXES = (".tif", ".tiff")


def tiff_suffix(key: str) -> str | None:
    """The GeoTIFF extension a key ends in, as written (``.tif``, ``.TIFF``, ...), or None."""
    dot = key.rfind(".")
    if dot < 0 or key[dot:].lower() not in TIFF_SUFFIXES:
        return None
    return key[dot:]


def is_tiff_key(key: str) -> bool:
    """Whether a key ends in a GeoTIFF extension (``.tif`` or ``.tiff``, any case)."""
    return tiff_suffix(key) is not None


def key_stem(key: str) -> str:
    """A GeoTIFF key without its extension: ``a/b.TIFF`` -> ``a/b``; other keys unchanged."""
    suffix = tiff_suffix(key)
    return key[: -len(suffix)] if suffix else key


def jpeg_key(key: str) -> str:
    """Key of the JPEG preview: ``a/b.tif`` or ``a/b.TIFF`` -> ``a/b.jpg`` (only the final extension)."""
    if not is_tiff_key(key):
        raise ValueError(f"key {key!r} does not end in '.tif' or '.tiff'")
    return key_stem(key) + ".jpg"


def plural(n: int, word: str, many: str | None = None) -> str:
    """A count with its noun: ``1 row``, ``2 rows``, ``1 batch``, ``3 batches`` (``many`` when not ``word + s``)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def timestamp(now: float | None = None) -> str:
    """UTC time as ``YYYYmmdd-HHMMSS``."""
    return time.strftime(TIMESTAMP_FORMAT, time.gmtime(time.time() if now is None else now))


def manifest_stem(raw_key: str) -> str:
    """``folder/X-raw.csv`` -> ``folder/X-``; any other ``name.csv`` -> ``name-``."""
    if raw_key.endswith("raw.csv"):
        return raw_key[: -len("raw.csv")]
    if raw_key.endswith(".csv"):
        return raw_key[: -len(".csv")] + "-"
    return raw_key + "-"


def is_pipeline_object(key: str) -> bool:
    """True for objects the pipeline itself writes: never to be taken as a new manifest."""
    return key.startswith(STATE_PREFIX) or bool(_OWNED.search(key))


@dataclass(frozen=True)
class ManifestKeys:
    """Every key one claimed manifest uses in the input bucket."""

    raw: str
    stem: str
    ts: str

    @property
    def processing(self) -> str:
        return f"{self.stem}processing-{self.ts}.csv"

    @property
    def processed(self) -> str:
        return f"{self.stem}processed-{self.ts}.csv"

    @property
    def failed(self) -> str:
        return f"{self.stem}failed-{self.ts}.csv"

    @property
    def errors(self) -> str:
        return f"{self.stem}errors-{self.ts}.csv"

    @property
    def report(self) -> str:
        return f"{self.stem}report-{self.ts}.html"

    @property
    def qa(self) -> str:
        """The delivery QA's findings (cog_pipeline/work/qa_step.py)."""
        return f"{self.stem}qa-{self.ts}.csv"

    @property
    def collection(self) -> str:
        """The delivery's STAC Collection (cog_pipeline/work/delivery.py)."""
        return f"{self.stem}collection-{self.ts}.json"

    @property
    def capture_area(self) -> str:
        """The delivery's capture area, a GeoJSON Feature (cog_pipeline/work/delivery.py)."""
        return f"{self.stem}capture-area-{self.ts}.geojson"

    @property
    def collection_id(self) -> str:
        """The STAC Collection's id: the manifest's name without ``-raw.csv`` (``folder/X``), the same for
        every run of that name, so an Item written by an earlier run still names its Collection."""
        return self.stem.rstrip("-_") or "delivery"

    @classmethod
    def from_run(cls, manifest: dict) -> ManifestKeys:
        """The keys of a ``manifests:`` entry of a run config."""
        return cls(raw=manifest["raw_key"], stem=manifest["stem"], ts=manifest["timestamp"])

    @classmethod
    def for_raw(cls, raw_key: str, ts: str) -> ManifestKeys:
        return cls(raw=raw_key, stem=manifest_stem(raw_key), ts=ts)


def claim_marker_key(raw_key: str, etag: str) -> str:
    """The state object whose conditional creation claims one version of a raw manifest."""
    return f"{STATE_PREFIX}claims/{raw_key}@{etag.strip(chr(34))}"


def batch_id(index: int) -> str:
    """Zero-padded batch number used in file names: 7 -> '00007'."""
    return f"{index:05d}"


def status_path(run_dir: Path, manifest_id: str, batch: str) -> Path:
    """Per-batch JSON-lines file of per-image outcomes."""
    return Path(run_dir) / "status" / manifest_id / f"batch-{batch}.jsonl"


def batch_log_path(manifest_id: str, batch: str) -> str:
    """The batch's log, relative to the run directory (the ``log:`` of rules/convert.smk)."""
    return f"logs/convert/{manifest_id}/batch-{batch}.log"


def qa_verdict_path(run_dir: Path | str, manifest_id: str) -> Path:
    """The QA verdict of a manifest (work/qa_step.py writes it; its batches wait for it)."""
    return Path(run_dir) / "qa" / f"{manifest_id}.json"


def outcome_path(run_dir: Path, manifest_id: str) -> Path:
    """Summary the aggregate writes once the outcome CSVs are safely in the bucket."""
    return Path(run_dir) / "outcome" / f"{manifest_id}.json"
