"""A run directory (``workflow-run-<TS>/``) as one typed object: its config, its claimed manifests, its
files and where it is in its life cycle.

A run directory goes through these states (:class:`RunState`, decided by :meth:`RunDir.state` alone):

- ``NEW``: made by a tick, nothing claimed into it yet (no config written);
- ``CLAIMING``: the run config without manifests (``claims/run-config.yaml``) and the claim journal are
  written while claims are made; a crash here leaves it so, and ``recovery.repair`` turns the committed
  claims into ``run.yaml``;
- ``CONFIGURED``: ``run.yaml`` names the claimed manifests, some without an outcome yet (being driven:
  :meth:`RunDir.locked`; or stalled, resumed by the next tick, ``.cog-pipeline-resumes`` counting how often);
- ``AGGREGATED``: every manifest has its outcome (``outcome/<m>.json``), the run not marked finished yet
  (its driver is finishing, or died before it could: the next tick marks it);
- ``FINISHED``: marked by ``.cog-pipeline-finished`` once nothing drives it any more;
- ``INVALID``: a ``run.yaml`` that cannot be read or does not pass the schema (left alone, shown by status).

Creating run directories, their locks and claim journals is the control layer's (``control.rundirs``,
``control.claims``); this module only names and reads them, so work, control and ui share one reading.
"""

from __future__ import annotations

import enum
import fcntl
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from cog_pipeline.core import config as config_model
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import (
    HEARTBEAT_WARNING,
    RUN_CONFIG,
    RUN_DIR_PREFIX,
    ManifestKeys,
    batch_log_path,
    outcome_path,
    status_path,
)


def summary_finished(path: Path) -> bool:
    """True when the aggregate's summary at ``path`` (``outcome/<m>.json``) marks its manifest finished: outcome
    CSVs, report and image logs written and uploaded, processing file deleted. The aggregate writes it with
    ``"finished": false`` before the report and rewrites it last; an older version's summary (no such key,
    written once at the end) counts as finished."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("finished", True) is True


#: Held (flock) by whoever drives a run directory.
RUN_LOCK = ".cog-pipeline-run.lock"
#: Present once every manifest of the run has its outcome.
FINISHED = ".cog-pipeline-finished"
#: How many times the run was resumed.
RESUMES = ".cog-pipeline-resumes"
#: The claim journal (claimed CSV names and tokens) of a run directory.
CLAIMS_DIR = "claims"
#: The run config without manifests, written before claiming (``run.yaml`` comes once claims commit).
PENDING_CONFIG = f"{CLAIMS_DIR}/run-config.yaml"
#: The claimed manifests' CSVs, relative to the run directory.
MANIFESTS_DIR = "manifests"
#: Snakemake's output, appended by every drive of the run.
SNAKEMAKE_LOG = "logs/snakemake.log"
#: The run's HTML report.
REPORT = "report.html"


@dataclass(frozen=True)
class ClaimedManifest:
    """One manifest claimed into a run (an entry of ``run.yaml``'s ``manifests:``)."""

    id: str  #: ``m<n>``, the manifest's id in the run (status, outcome and log paths)
    csv: str  #: the claimed CSV, relative to the run directory
    key: str  #: its processing key in the input bucket
    raw_key: str  #: the raw manifest it was claimed from
    stem: str  #: ``folder/X-`` of ``folder/X-raw.csv``
    timestamp: str  #: the claim's ``<TS>`` (in every outcome key)

    @classmethod
    def of(cls, id: str, csv: str, keys: ManifestKeys) -> ClaimedManifest:  # noqa: A002 - the field's name
        """The entry for a claim of ``keys`` whose CSV is ``csv`` in the run directory."""
        return cls(id=id, csv=csv, key=keys.processing, raw_key=keys.raw, stem=keys.stem, timestamp=keys.ts)

    @classmethod
    def from_dict(cls, entry: dict[str, Any], source: str = "run config") -> ClaimedManifest:
        """An entry of ``manifests:`` (PipelineError naming the entry and the field when one is missing)."""
        try:
            return cls(**{name: str(entry[name]) for name in ("id", "csv", "key", "raw_key", "stem", "timestamp")})
        except (KeyError, TypeError) as exc:
            raise PipelineError(f"{source}: manifests entry {entry!r} lacks {exc}") from None

    def to_dict(self) -> dict[str, str]:
        """The entry as ``run.yaml`` holds it."""
        return {
            "id": self.id,
            "csv": self.csv,
            "key": self.key,
            "raw_key": self.raw_key,
            "stem": self.stem,
            "timestamp": self.timestamp,
        }

    @property
    def keys(self) -> ManifestKeys:
        """Every key this manifest uses in the input bucket (processing, outcome CSVs, report)."""
        return ManifestKeys(raw=self.raw_key, stem=self.stem, ts=self.timestamp)


class RunConfig:
    """A run's validated config (the whole mapping, as ``run.yaml`` and Snakemake hold it) with typed
    access to what the pipeline reads from it."""

    def __init__(self, data: dict[str, Any], source: str = "run config") -> None:
        self.data = data
        self.source = source

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        """The config of a ``run.yaml``: the defaults deep-merged with it (its values win) and validated,
        exactly as Snakemake sees it (PipelineError naming the file otherwise)."""
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"{path} not found: is {path.parent} a workflow-run directory?")
        return cls(config_model.load(run=config_model.read_file(path, "run config"), source=str(path)), str(path))

    def __repr__(self) -> str:
        return f"RunConfig({self.source!r})"

    @property
    def run_id(self) -> str:
        return str(self.data.get("run_id", ""))

    @property
    def executor(self) -> str:
        """``local`` or ``htcondor`` (the executor the run was started with)."""
        return str(self.data.get("executor") or "local")

    @property
    def pattern(self) -> str:
        return str(self.data.get("pattern") or "")

    @property
    def batch_size(self) -> int:
        return int(self.data["batch_size"])

    @property
    def tmp_dir(self) -> str | None:
        return self.data.get("tmp_dir") or None

    @property
    def max_running(self) -> Any:
        return self.data.get("max_running")

    @property
    def s3(self) -> dict[str, Any]:
        """The ``s3:`` section (endpoint, buckets, key *file* paths, CA bundle path); empty if absent."""
        return dict(self.data.get("s3") or {})

    def _bucket(self, which: str) -> str:
        name = self.s3.get(which)
        if not name:
            raise PipelineError(f"{self.source}: s3.{which} is not set")
        return str(name)

    @property
    def input_bucket(self) -> str:
        return self._bucket("input_bucket")

    @property
    def output_bucket(self) -> str:
        return self._bucket("output_bucket")

    @property
    def endpoint_url(self) -> str | None:
        return self.s3.get("endpoint_url") or None

    @cached_property
    def manifests(self) -> tuple[ClaimedManifest, ...]:
        """The claimed manifests, in claim order."""
        return tuple(ClaimedManifest.from_dict(m, self.source) for m in self.data.get("manifests") or [])

    def manifest(self, manifest_id: str) -> ClaimedManifest:
        """The claimed manifest with this id (PipelineError if the run has none)."""
        for manifest in self.manifests:
            if manifest.id == manifest_id:
                return manifest
        raise PipelineError(f"{self.source}: no manifest with id {manifest_id!r}")


class RunState(enum.Enum):
    """Where a run directory is in its life cycle (see the module docstring)."""

    NEW = "new"
    CLAIMING = "claiming"
    CONFIGURED = "configured"
    AGGREGATED = "aggregated"
    FINISHED = "finished"
    INVALID = "invalid"


class RunDir:
    """One ``workflow-run-<TS>/`` directory: paths, config (loaded once), claimed manifests, state."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def all_in(cls, workdir: Path) -> list[RunDir]:
        """Every run directory of a working directory, oldest first."""
        return [cls(p) for p in sorted(Path(workdir).glob(f"{RUN_DIR_PREFIX}*")) if p.is_dir()]

    @property
    def name(self) -> str:
        return self.path.name

    # ---------------------------------------------------------------------------------- paths

    @property
    def config_file(self) -> Path:
        """``run.yaml``: the whole validated config and the claimed manifests."""
        return self.path / RUN_CONFIG

    @property
    def pending_config_file(self) -> Path:
        """The config without manifests, written before claiming."""
        return self.path / PENDING_CONFIG

    @property
    def claims_dir(self) -> Path:
        return self.path / CLAIMS_DIR

    @property
    def lock_file(self) -> Path:
        return self.path / RUN_LOCK

    @property
    def finished_marker(self) -> Path:
        return self.path / FINISHED

    @property
    def resumes_file(self) -> Path:
        return self.path / RESUMES

    @property
    def snakemake_log(self) -> Path:
        return self.path / SNAKEMAKE_LOG

    @property
    def report(self) -> Path:
        return self.path / REPORT

    @property
    def heartbeat_warning(self) -> Path:
        return self.path / HEARTBEAT_WARNING

    def manifest_csv(self, manifest: ClaimedManifest) -> Path:
        """The claimed CSV of ``manifest``."""
        return self.path / manifest.csv

    def status_dir(self, manifest_id: str) -> Path:
        """Where the batches of a manifest write their per-image records."""
        return self.path / "status" / manifest_id

    def status_file(self, manifest_id: str, batch: str) -> Path:
        return status_path(self.path, manifest_id, batch)

    def batch_log(self, manifest_id: str, batch: str) -> Path:
        return self.path / batch_log_path(manifest_id, batch)

    def outcome(self, manifest_id: str) -> Path:
        """The summary the aggregate writes once a manifest's outcome CSVs are in the bucket."""
        return outcome_path(self.path, manifest_id)

    def outcome_dir(self, manifest_id: str) -> Path:
        """The local copies of a manifest's outcome CSVs."""
        return self.path / "outcome" / manifest_id

    def journal_entries(self) -> list[Path]:
        """The claim journal's entries, oldest first."""
        return sorted(self.claims_dir.glob("*-*.json"))

    # ---------------------------------------------------------------------------------- config

    @cached_property
    def config(self) -> RunConfig:
        """``run.yaml``, deep-merged over the defaults and validated (read once; PipelineError if missing or bad)."""
        return RunConfig.load(self.config_file)

    @cached_property
    def pending_config(self) -> RunConfig | None:
        """The config written before claiming (None when missing or unreadable)."""
        try:
            return RunConfig.load(self.pending_config_file)
        except PipelineError:
            return None

    def config_or_pending(self) -> RunConfig | None:
        """``run.yaml``'s config, else the pending one, else None (unreadable counts as missing)."""
        try:
            return self.config
        except PipelineError:
            return self.pending_config

    def reload(self) -> None:
        """Forget the configs read so far (after ``run.yaml`` was written)."""
        self.__dict__.pop("config", None)
        self.__dict__.pop("pending_config", None)

    @property
    def manifests(self) -> tuple[ClaimedManifest, ...]:
        """The claimed manifests of ``run.yaml``."""
        return self.config.manifests

    # ---------------------------------------------------------------------------------- life cycle

    def all_outcomes(self) -> bool:
        """True when every manifest of ``run.yaml`` has its finished outcome (:func:`summary_finished`)."""
        return all(summary_finished(self.outcome(m.id)) for m in self.manifests)

    @property
    def state(self) -> RunState:
        """The run's state, from its files (the one place that decides it)."""
        if self.finished_marker.exists():
            return RunState.FINISHED
        if self.config_file.exists():
            try:
                return RunState.AGGREGATED if self.all_outcomes() else RunState.CONFIGURED
            except PipelineError:
                return RunState.INVALID
        if self.pending_config_file.exists():
            return RunState.CLAIMING
        return RunState.NEW

    def problem(self) -> str | None:
        """Why the run is ``INVALID`` (the loader's message), None otherwise."""
        try:
            self.config  # noqa: B018 - loading is the check
        except PipelineError as exc:
            return str(exc) if self.config_file.exists() else None
        return None

    @property
    def done(self) -> bool:
        """True when every manifest has its outcome (``AGGREGATED`` or ``FINISHED``)."""
        return self.state in (RunState.AGGREGATED, RunState.FINISHED)

    def mark_finished(self) -> None:
        """Record that every manifest has its outcome and nothing drives the run any more."""
        self.finished_marker.touch()

    @property
    def resumes(self) -> int:
        """How many times the run was resumed."""
        try:
            return int(self.resumes_file.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def count_resume(self) -> int:
        """Record one more resume; returns the new count."""
        count = self.resumes + 1
        self.resumes_file.write_text(str(count))
        return count

    def locked(self) -> bool:
        """True when a live process holds the run lock (the run is being driven on this host)."""
        try:
            with open(self.lock_file, "rb") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(fh, fcntl.LOCK_UN)
        except OSError:
            return False
        return False
