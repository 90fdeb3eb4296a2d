"""One trigger tick: find new manifests, claim them, make a run directory, start the workflow.

Claiming ``X-raw.csv`` is: create a claim marker with a conditional write (only one tick, on any
host, wins a given version of the manifest), read the manifest pinned to the listed ETag, write
``X-processing-<TS>.csv``, delete ``X-raw.csv`` only if it is still that version, drop the marker.
Nothing is claimed until both buckets are known to be reachable with the given credentials.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import botocore.exceptions
import yaml

from . import s3
from .errors import PipelineError
from .manifest import batch_slices, parse_manifest
from .naming import RUN_CONFIG, RUN_DIR_PREFIX, ManifestKeys, claim_marker_key, is_pipeline_object, timestamp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickOptions:
    """Everything a tick needs; mirrors the command-line flags."""

    input_bucket: str
    output_bucket: str
    settings: s3.S3Settings = field(default_factory=s3.S3Settings)
    pattern: str = "*raw.csv"
    executor: str = "local"
    cores: int = 2
    dry_run: bool = False
    workdir: Path = field(default_factory=Path.cwd)


@dataclass
class TickResult:
    """What a tick did: the run directory (None if nothing matched) and per-manifest summaries."""

    run_dir: Path | None = None
    manifests: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int = 0


def find_manifests(client: Any, bucket: str, pattern: str) -> list[dict[str, Any]]:
    """Objects whose full key matches ``pattern`` (fnmatch), excluding the pipeline's own objects."""
    matches = []
    for obj in s3.iter_objects(client, bucket):
        key = obj["Key"]
        if fnmatch.fnmatchcase(key, pattern) and not is_pipeline_object(key):
            matches.append(obj)
    return matches


@contextmanager
def local_lock(workdir: Path) -> Iterator[None]:
    """Serialise ticks started in the same working directory on this host."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / ".cog-pipeline-tick.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def claim(client: Any, bucket: str, obj: dict[str, Any], keys: ManifestKeys) -> bytes | None:
    """Claim one listed manifest; returns its bytes, or None if another tick got it first."""
    marker = claim_marker_key(keys.raw, obj["ETag"])
    who = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "claimed_as": keys.processing})
    try:
        s3.put_bytes(client, bucket, marker, who.encode(), if_none_match=True, content_type="application/json")
    except botocore.exceptions.ClientError as exc:
        if s3.error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
            log.info("%s is being claimed by another tick; skipping", keys.raw)
            return None
        raise
    try:
        try:
            data = s3.get_bytes(client, bucket, keys.raw, if_match=obj["ETag"])
        except botocore.exceptions.ClientError as exc:
            if s3.is_missing(exc) or s3.error_code(exc) in {"PreconditionFailed", "412"}:
                log.info("%s changed or vanished since it was listed; skipping", keys.raw)
                return None
            raise
        s3.put_bytes(client, bucket, keys.processing, data, if_none_match=True)
        client.delete_object(Bucket=bucket, Key=keys.raw, IfMatch=obj["ETag"])
        return data
    finally:
        client.delete_object(Bucket=bucket, Key=marker)


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


def run_config(opts: TickOptions, ts: str, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's config (no secret values: key *file* paths only)."""
    settings = opts.settings
    return {
        "run_id": ts,
        "pattern": opts.pattern,
        "s3": {
            "endpoint_url": s3.normalize_endpoint(settings.endpoint_url),
            "region": settings.region,
            "input_bucket": opts.input_bucket,
            "output_bucket": opts.output_bucket,
            "access_key_file": str(Path(settings.access_key_file).resolve()) if settings.access_key_file else None,
            "secret_key_file": str(Path(settings.secret_key_file).resolve()) if settings.secret_key_file else None,
        },
        "manifests": manifests,
    }


def write_run(run_dir: Path, config: dict[str, Any], manifest_bytes: dict[str, bytes]) -> None:
    """Write run.yaml and the claimed manifests into the run directory."""
    (run_dir / "manifests").mkdir(exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    for manifest in config["manifests"]:
        (run_dir / manifest["csv"]).write_bytes(manifest_bytes[manifest["id"]])
    (run_dir / RUN_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")


def connect(opts: TickOptions) -> Any:
    """A client after checking that both buckets exist and are reachable (else PipelineError)."""
    client = s3.make_client(opts.settings)
    s3.check_bucket(client, opts.input_bucket, "input")
    s3.check_bucket(client, opts.output_bucket, "output")
    return client


def tick(opts: TickOptions) -> TickResult:
    """Run one tick; returns once the outcome CSVs are written (local executor) or the driver is queued."""
    client = connect(opts)
    try:
        matches = find_manifests(client, opts.input_bucket, opts.pattern)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise PipelineError(f"cannot list input bucket '{opts.input_bucket}': {s3.describe_error(exc)}") from None
    if not matches:
        print(f"No new manifest matches '{opts.pattern}' in bucket '{opts.input_bucket}'; nothing to do.")
        return TickResult()
    if opts.dry_run:
        return plan(client, opts, matches)
    if opts.executor == "htcondor":
        from . import htcondor

        htcondor.check_schedd()  # before claiming: a claimed manifest needs a driver to finish it

    with local_lock(opts.workdir):
        ts, run_dir = new_run_dir(opts.workdir)
        manifests, data = [], {}
        for obj in matches:
            keys = ManifestKeys.for_raw(obj["Key"], ts)
            try:
                body = claim(client, opts.input_bucket, obj, keys)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                log.error("could not claim %s: %s (left as is; the next tick retries)", keys.raw, s3.describe_error(exc))
                continue
            if body is None:
                continue
            mid = f"m{len(manifests) + 1}"
            data[mid] = body
            manifests.append({"id": mid, "csv": f"manifests/{keys.processing.rpartition('/')[2]}",
                              "key": keys.processing, "raw_key": keys.raw, "stem": keys.stem, "timestamp": ts})
            print(f"Claimed {keys.raw} -> {keys.processing}")
        if not manifests:
            shutil.rmtree(run_dir, ignore_errors=True)
            print("Every matching manifest was claimed by another tick; nothing to do.")
            return TickResult()
        config = run_config(opts, ts, manifests)
        write_run(run_dir, config, data)
    print(f"Run directory: {run_dir}")
    return launch(run_dir, config, opts)


def launch(run_dir: Path, config: dict[str, Any], opts: TickOptions) -> TickResult:
    """Start the workflow for a prepared run directory with the chosen executor."""
    from . import driver

    if opts.executor == "htcondor":
        from . import htcondor

        argv = driver.drive_argv(run_dir, executor="htcondor")
        cluster = htcondor.submit_driver(run_dir, opts.pattern, config["run_id"], argv)
        print(f"Submitted the run's driver as HTCondor cluster {cluster} (batch name COG-Pipeline-DAG-{opts.pattern})")
        return TickResult(run_dir=run_dir)
    code, summaries = driver.drive(run_dir, executor=opts.executor, cores=opts.cores)
    return TickResult(run_dir=run_dir, manifests=summaries, exit_code=code)


def plan(client: Any, opts: TickOptions, matches: list[dict[str, Any]]) -> TickResult:
    """Dry run: show what would be claimed and the workflow's job plan; change nothing remote."""
    from . import driver

    batch_size = int(driver.default_config()["batch_size"])
    ts = timestamp()
    with tempfile.TemporaryDirectory(prefix="cog-pipeline-plan-") as tmp:
        run_dir = Path(tmp)
        manifests, data = [], {}
        for i, obj in enumerate(matches, start=1):
            keys = ManifestKeys.for_raw(obj["Key"], ts)
            body = s3.get_bytes(client, opts.input_bucket, keys.raw)
            parsed = parse_manifest(body)
            print(f"Would claim {keys.raw} -> {keys.processing}: {len(parsed.entries)} rows to convert in "
                  f"{len(batch_slices(len(parsed.entries), batch_size))} batches, "
                  f"{len(parsed.rejected)} rejected rows")
            for rejected in parsed.rejected:
                print(f"  rejected: {rejected.reason}")
            for note in parsed.notes:
                print(f"  note: {note}")
            mid = f"m{i}"
            data[mid] = body
            manifests.append({"id": mid, "csv": f"manifests/{keys.processing.rpartition('/')[2]}",
                              "key": keys.processing, "raw_key": keys.raw, "stem": keys.stem, "timestamp": ts})
        write_run(run_dir, run_config(opts, ts, manifests), data)
        code = driver.dry_run(run_dir, executor=opts.executor, cores=opts.cores)
    print("Dry run: nothing was renamed or written.")
    return TickResult(exit_code=code)
