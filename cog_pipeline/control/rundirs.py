"""Making and locking run directories (``workflow-run-<TS>/``): the working directory's tick lock, a
run's lock, and writing its config (``run.yaml``) and claimed manifests. Reading them is
:class:`cog_pipeline.core.rundir.RunDir`'s."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

from cog_pipeline.control.options import TickOptions
from cog_pipeline.core import config as config_model
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import RUN_DIR_PREFIX, timestamp
from cog_pipeline.core.processes import process_identity
from cog_pipeline.core.rundir import (
    CLAIMS_DIR,
    FINISHED,
    PENDING_CONFIG,
    RESUMES,
    RUN_LOCK,
    ClaimedManifest,
    RunDir,
    RunState,
)
from cog_pipeline.storage import s3

__all__ = [
    "CLAIMS_DIR",
    "FINISHED",
    "PENDING_CONFIG",
    "RESUMES",
    "RUN_LOCK",
    "RunLock",
    "local_lock",
    "new_run_dir",
    "run_config",
    "unfinished_runs_exist",
    "write_pending",
    "write_run",
    "write_synced",
]


@contextmanager
def local_lock(workdir: Path) -> Iterator[None]:
    """Serialise ticks started in the same working directory on this host."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fh = open(workdir / ".cog-pipeline-tick.lock", "w")  # noqa: SIM115 - held across the yield
    except OSError as exc:
        raise PipelineError(
            f"working directory {workdir} is not writable ({exc.strerror}); nothing was claimed"
        ) from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RunLock:
    """An exclusive flock on a run directory, held by whoever drives it (released when it dies)."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    @classmethod
    def acquire(cls, run_dir: Path | RunDir) -> RunLock | None:
        """The lock, or None if a live process holds it."""
        path = run_dir.lock_file if isinstance(run_dir, RunDir) else Path(run_dir) / RUN_LOCK
        fh = open(path, "a+")  # noqa: SIM115 - kept open while the lock is held
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


def new_run_dir(workdir: Path) -> tuple[str, RunDir]:
    """Create ``workflow-run-<TS>/`` (waiting for the next second if that name is taken)."""
    while True:
        ts = timestamp()
        path = workdir / f"{RUN_DIR_PREFIX}{ts}"
        try:
            path.mkdir(parents=True)
            return ts, RunDir(path)
        except FileExistsError:
            time.sleep(0.2)
        except OSError as exc:
            raise PipelineError(
                f"cannot create a run directory in {workdir}: {exc.strerror}; nothing was claimed"
            ) from None


def unfinished_runs_exist(workdir: Path) -> bool:
    """True when the working directory has a run directory not marked finished."""
    return any(run.state is not RunState.FINISHED for run in RunDir.all_in(workdir))


def write_synced(path: Path, data: bytes) -> None:
    """Write ``path`` whole (temp file, fsync, rename), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def run_config(opts: TickOptions, ts: str, manifests: Sequence[ClaimedManifest]) -> dict[str, Any]:
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
        "manifests": [m.to_dict() for m in manifests],
    }
    # The whole config goes into run.yaml (defaults, site file, overrides): driver, jobs and manual reruns
    # all see exactly what the tick validated.
    checked = config_model.load(opts.config_file, config_model.merge(config, opts.run_overrides))
    check_delivery_settings(checked, f"config (with {opts.config_file})" if opts.config_file else "config")
    return checked


def check_delivery_settings(config: dict[str, Any], source: str = "config") -> None:
    """The typed checks of the ``presets:`` and ``qa:`` sections (a lossy preset without a bound, a categorical
    preset that averages, an unknown QA check...), which the schema alone cannot express: run by the tick
    before anything is claimed, so a bad setting never fails the rows of a claimed manifest one by one."""
    from cog_pipeline.raster import kinds, qa

    try:
        kinds.presets_from_config(config)
        qa.qa_rules_from_config(config)
    except ValueError as exc:
        raise PipelineError(f"{source}: {exc}") from None


def _yaml(config: dict[str, Any]) -> bytes:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode("utf-8")


def write_pending(run: RunDir, config: dict[str, Any]) -> None:
    """Write the run config without manifests before anything is claimed into ``run``."""
    write_synced(run.pending_config_file, _yaml(config))
    run.reload()


def write_run(run: RunDir | Path, config: dict[str, Any], manifest_bytes: dict[str, bytes]) -> None:
    """Write run.yaml and the claimed manifests (``manifest_bytes`` by manifest id) into the run directory."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    (run.path / "manifests").mkdir(exist_ok=True)
    (run.path / "logs").mkdir(exist_ok=True)
    for entry in config["manifests"]:
        manifest = ClaimedManifest.from_dict(entry)
        path = run.manifest_csv(manifest)
        if not (path.is_file() and path.read_bytes() == manifest_bytes[manifest.id]):
            path.write_bytes(manifest_bytes[manifest.id])
    write_synced(run.config_file, _yaml(config))
    run.reload()
