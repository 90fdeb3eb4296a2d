"""Local state of a working directory: the tick lock, run directories (``workflow-run-<TS>/``), their
run lock, marker files and run config (``run.yaml``)."""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from cog_pipeline.core import config as config_model
from cog_pipeline.storage import s3
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import RUN_CONFIG, RUN_DIR_PREFIX, outcome_path, timestamp
from cog_pipeline.control.options import TickOptions
from cog_pipeline.core.processes import process_identity

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


@contextmanager
def local_lock(workdir: Path) -> Iterator[None]:
    """Serialise ticks started in the same working directory on this host."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fh = open(workdir / ".cog-pipeline-tick.lock", "w")
    except OSError as exc:
        raise PipelineError(f"working directory {workdir} is not writable ({exc.strerror}); nothing was claimed") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RunLock:
    """An exclusive flock on a run directory, held by whoever drives it (released when it dies)."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock | None":
        """The lock, or None if a live process holds it."""
        fh = open(Path(run_dir) / RUN_LOCK, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps(process_identity()) + "\n")
        fh.flush()
        return cls(fh)

    def release(self) -> None:
        """Unlock and close (idempotent)."""
        if not self.fh.closed:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


def new_run_dir(workdir: Path) -> tuple[str, Path]:
    """Create ``workflow-run-<TS>/`` (waiting for the next second if that name is taken)."""
    while True:
        ts = timestamp()
        run_dir = workdir / f"{RUN_DIR_PREFIX}{ts}"
        try:
            run_dir.mkdir(parents=True)
            return ts, run_dir
        except FileExistsError:
            time.sleep(0.2)
        except OSError as exc:
            raise PipelineError(f"cannot create a run directory in {workdir}: {exc.strerror}; "
                                "nothing was claimed") from None


def unfinished_runs_exist(workdir: Path) -> bool:
    """True when the working directory has a run directory not marked finished."""
    return any(p.is_dir() and not (p / FINISHED).exists() for p in workdir.glob(f"{RUN_DIR_PREFIX}*"))


def write_synced(path: Path, data: bytes) -> None:
    """Write ``path`` whole (temp file, fsync, rename), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def run_config(opts: TickOptions, ts: str, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's whole validated config (no secret values: key *file* paths only; the CA bundle as a path
    too); PipelineError naming the key and the rule for a bad value."""
    settings = opts.settings
    # The bundle this tick verifies against (--ca-bundle, else AWS_CA_BUNDLE): drivers and batch jobs do not
    # inherit the environment, so it is written here as a path (HTCondor jobs receive the file itself).
    bundle = s3.ca_bundle(settings)
    config = {
        "run_id": ts,
        "pattern": opts.pattern,
        "executor": opts.executor,
        "s3": {
            "endpoint_url": s3.normalize_endpoint(settings.endpoint_url),
            "region": settings.region,
            "input_bucket": opts.input_bucket,
            "output_bucket": opts.output_bucket,
            "access_key_file": str(Path(settings.access_key_file).resolve()) if settings.access_key_file else None,
            "secret_key_file": str(Path(settings.secret_key_file).resolve()) if settings.secret_key_file else None,
            "ca_bundle": str(Path(bundle).resolve()) if bundle else None,
            "checksums": settings.checksums,
            "delete_fallback": settings.delete_fallback,
        },
        "manifests": manifests,
    }
    # The whole config goes into run.yaml (defaults, site file, overrides): driver, jobs and manual reruns
    # all see exactly what the tick validated.
    return config_model.load(opts.config_file, config_model.merge(config, opts.run_overrides))


def write_run(run_dir: Path, config: dict[str, Any], manifest_bytes: dict[str, bytes]) -> None:
    """Write run.yaml and the claimed manifests into the run directory."""
    (run_dir / "manifests").mkdir(exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    for manifest in config["manifests"]:
        path = run_dir / manifest["csv"]
        if not (path.is_file() and path.read_bytes() == manifest_bytes[manifest["id"]]):
            path.write_bytes(manifest_bytes[manifest["id"]])
    write_synced(run_dir / RUN_CONFIG, yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode("utf-8"))


def read_yaml(path: Path) -> dict[str, Any] | None:
    """A YAML mapping, or None if the file is missing, unreadable or not a mapping."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_finished(run_dir: Path, config: dict[str, Any]) -> bool:
    """True when every manifest of the run has its outcome."""
    return all(outcome_path(run_dir, m["id"]).is_file() for m in config.get("manifests", []))
