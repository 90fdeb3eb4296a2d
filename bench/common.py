"""Helpers shared by the pipeline, planning and S3 sections: key files, clients, manifests, run dirs."""

from __future__ import annotations

import os
import sys
import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
INPUT_BUCKET = "bench-input"
OUTPUT_BUCKET = "bench-output"


def fresh_dir(path: Path) -> Path:
    """``path`` emptied (removed if it exists, created again); returns it."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def key_files(directory: Path) -> tuple[Path, Path]:
    from cog_pipeline.ui.demo import write_key_files

    return write_key_files(directory)


def settings(endpoint: str | None, keys: tuple[Path, Path] | None):
    from cog_pipeline.storage.s3 import S3Settings

    if keys is None:
        return S3Settings(endpoint_url=endpoint)
    return S3Settings(endpoint_url=endpoint, access_key_file=str(keys[0]), secret_key_file=str(keys[1]))


def client(endpoint: str, keys: tuple[Path, Path]) -> Any:
    from cog_pipeline.storage import s3

    return s3.make_client(settings(endpoint, keys))


def manifest_rows(n: int, prefix: str = "county/2026", bands: int = 4, folders: int = 1) -> list[str]:
    """``n`` manifest rows ``key.tif,<bands>`` spread over ``folders`` folders."""
    return [
        f"{prefix}/f{i % folders:03d}/tile_{i:06d}.tif,{bands}" if folders > 1 else f"{prefix}/tile_{i:06d}.tif,{bands}"
        for i in range(n)
    ]


def manifest_bytes(rows: list[str]) -> bytes:
    return ("\n".join(rows) + "\n").encode()


def prepare_run_dir(
    run_dir: Path,
    manifest: bytes,
    endpoint: str | None,
    keys: tuple[Path, Path] | None,
    batch_size: int | None = None,
    raw_key: str = "bench/plan-raw.csv",
) -> Path:
    """A run directory exactly as ``tick`` writes it (its own functions), without claiming anything."""
    from cog_pipeline.core.naming import ManifestKeys, timestamp
    from cog_pipeline.core.rundir import ClaimedManifest
    from cog_pipeline.control.tick import TickOptions, run_config, write_run

    run_dir.mkdir(parents=True, exist_ok=True)
    ts = timestamp()
    keys_ = ManifestKeys.for_raw(raw_key, ts)
    manifests = [ClaimedManifest.of("m1", f"manifests/{keys_.processing.rpartition('/')[2]}", keys_)]
    opts = TickOptions(
        input_bucket=INPUT_BUCKET,
        output_bucket=OUTPUT_BUCKET,
        settings=settings(endpoint, keys),
        workdir=run_dir.parent,
    )
    config = run_config(opts, ts, manifests)
    if batch_size is not None:
        config["batch_size"] = batch_size  # run.yaml is read after config/config.yaml: it overrides
    write_run(run_dir, config, {"m1": manifest})
    return run_dir


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cog_pipeline.ui.cli", *args]


def tick_args(keys: tuple[Path, Path], endpoint: str, pattern: str) -> list[str]:
    """``cog-pipeline tick``'s arguments for the bench's buckets on ``endpoint`` with the key files ``keys``."""
    return [
        "tick",
        "-a",
        str(keys[0]),
        "-s",
        str(keys[1]),
        "-e",
        endpoint,
        "--input-bucket",
        INPUT_BUCKET,
        "--output-bucket",
        OUTPUT_BUCKET,
        "-p",
        pattern,
    ]
