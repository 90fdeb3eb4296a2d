"""What a batch job asks the pool for: memory and scratch disk from its images' sizes, cpus from GDAL's threads.

A batch converts its images one after another, each in its own temporary directory removed afterwards
(work/batch.py), so a batch needs what its largest image needs plus the job's fixed footprint. The
per-image figures are straight lines in the input's size fitted to ``convert_file`` measured in fresh
processes (``python bench/sec_pool.py sizing``; the figures are in docs/htcondor.md):

- peak RSS of the conversion process: about ``MEM_INTERCEPT_MB + MEM_PER_INPUT_MB x input MB`` up to
  ``MEM_KNEE_INPUT_MB``, a tenth of that slope beyond (the GDAL cache bounds what is held);
- peak bytes of its temporary directory (input + COG + overview temp + JPEG):
  about ``DISK_INTERCEPT_MB + DISK_PER_INPUT_MB x input MB``.

The job also holds the Snakemake process that runs the batch script (``JOB_MEM_MB``) and its sandbox
(the staged workflow, logs: ``JOB_DISK_MB``). ``MARGIN`` covers what one fit does not see (other
compressions, block layouts, a second thread's buffers). The config's ``mem_mb_per_job`` and
``disk_mb_per_job`` are CAPS: the most a job may ask for (set them to the largest slot you want to
match; a job asking more than any slot has would stay idle for ever). A batch whose model exceeds a
cap asks for the cap and says so (``Request.capped``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Fitted on ``bench/sec_pool.py sizing`` (GDAL 3.10 COG driver, LZW, 1 thread, 128 MB GDAL cache; 4-band uint8
#: and 1-band uint16 inputs of 1000^2 to 8000^2, uncompressed and striped): RSS = 189 + 0.719 x input MB,
#: temp = -5.8 + 2.407 x input MB (the temp intercept is taken as 0). RSS grows slower than the line for big
#: inputs (the GDAL cache bounds the blocks held), so the line is conservative there.
MEM_INTERCEPT_MB = 190.0
MEM_PER_INPUT_MB = 0.72
#: Above this input size RSS hardly grows (a 20000^2 4-band tile, 1526 MB, peaked at 395 MB in bench section 2,
#: docs/performance.md): the line continues with a tenth of the slope, still well above that figure.
MEM_KNEE_INPUT_MB = 250.0
MEM_PER_INPUT_MB_ABOVE_KNEE = 0.1
DISK_INTERCEPT_MB = 0.0
DISK_PER_INPUT_MB = 2.41
#: Snakemake running the batch script on the execute point (measured RSS about 120-150 MB).
JOB_MEM_MB = 200
#: The sandbox besides the images: staged workflow and package copy, manifest, logs, .snakemake.
JOB_DISK_MB = 100
#: Safety factor on the fitted per-image figures.
MARGIN = 1.25
#: Requests are rounded up to this many MB.
ROUND_MB = 50
#: Each Snakemake retry of a batch (attempt 2, 3, ...) asks for this much more than the previous one.
RETRY_FACTOR = 1.5
MB = 1024 * 1024


@dataclass(frozen=True)
class Need:
    """Peak memory and temporary disk of converting one image, in MB (margin included)."""

    mem_mb: int
    disk_mb: int


@dataclass(frozen=True)
class Request:
    """What one batch job asks for, and why."""

    mem_mb: int
    disk_mb: int
    #: The largest input of the batch in bytes (0 when no size was known).
    largest_input_bytes: int
    #: Images of the batch whose size the listing did not give (missing objects: they fail at download).
    unknown: int
    #: Names of the caps that bounded the request ("mem_mb_per_job", "disk_mb_per_job").
    capped: tuple[str, ...] = ()


def _round_up(mb: float) -> int:
    return int(math.ceil(mb / ROUND_MB) * ROUND_MB)


def image_need(input_bytes: int) -> Need:
    """The model's peak RSS and temp disk (MB, with the margin) of converting one input of ``input_bytes``."""
    if input_bytes < 0:
        raise ValueError(f"input size must not be negative, got {input_bytes}")
    size_mb = input_bytes / MB
    mem = (
        MEM_INTERCEPT_MB
        + MEM_PER_INPUT_MB * min(size_mb, MEM_KNEE_INPUT_MB)
        + MEM_PER_INPUT_MB_ABOVE_KNEE * max(0.0, size_mb - MEM_KNEE_INPUT_MB)
    )
    return Need(
        mem_mb=_round_up(MARGIN * mem), disk_mb=_round_up(MARGIN * (DISK_INTERCEPT_MB + DISK_PER_INPUT_MB * size_mb))
    )


def batch_request(sizes: Sequence[int | None], *, mem_cap_mb: int, disk_cap_mb: int, attempt: int = 1) -> Request:
    """The request of a batch whose inputs have ``sizes`` (bytes; None = not listed).

    Memory and disk: the job's fixed part plus the largest image's need, times ``RETRY_FACTOR`` per retry,
    bounded by the caps (the config's mem_mb_per_job / disk_mb_per_job).
    """
    if mem_cap_mb < 1 or disk_cap_mb < 1:
        raise ValueError(f"caps must be positive, got mem {mem_cap_mb} MB and disk {disk_cap_mb} MB")
    known = [s for s in sizes if s is not None]
    unknown = len(sizes) - len(known)
    largest = max(known, default=0)
    need = image_need(largest)
    factor = RETRY_FACTOR ** max(0, attempt - 1)
    mem = _round_up((JOB_MEM_MB + need.mem_mb) * factor)
    disk = _round_up((JOB_DISK_MB + need.disk_mb) * factor)
    capped = tuple(
        name
        for name, value, cap in (("mem_mb_per_job", mem, mem_cap_mb), ("disk_mb_per_job", disk, disk_cap_mb))
        if value > cap
    )
    return Request(
        mem_mb=min(mem, mem_cap_mb),
        disk_mb=min(disk, disk_cap_mb),
        largest_input_bytes=largest,
        unknown=unknown,
        capped=capped,
    )


def batch_sizes(keys: Iterable[str], listed: Mapping[str, int] | None) -> list[int | None] | None:
    """Each key's size from ``listed`` (None per key not listed); None when no listing was recorded."""
    if listed is None:
        return None
    return [listed.get(k) for k in keys]


def sizes_under(keys: Iterable[str], listing: Iterable[tuple[str, int]]) -> dict[str, int]:
    """{key: size} of the ``keys`` found in ``listing`` ((key, size) pairs of one bucket listing)."""
    wanted = set(keys)
    return {key: int(size) for key, size in listing if key in wanted}


#: A run directory's record of one manifest's input sizes (written by the driver, read at DAG build).
SIZES_FILE = "manifests/sizes-{manifest}.json"


def sizes_path(run_dir: Path | str, manifest_id: str) -> Path:
    return Path(run_dir) / SIZES_FILE.format(manifest=manifest_id)


def write_sizes(run_dir: Path | str, manifest_id: str, sizes: Mapping[str, int]) -> Path:
    """Record ``sizes`` for the manifest (atomically: a reader sees the old file or the whole new one)."""
    path = sizes_path(run_dir, manifest_id)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(sizes), ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_sizes(run_dir: Path | str, manifest_id: str) -> dict[str, int] | None:
    """The recorded sizes of a manifest's inputs, or None when none were recorded (or the file is unusable)."""
    try:
        data = json.loads(sizes_path(run_dir, manifest_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(v, int) and v >= 0 for v in data.values()):
        return None
    return {str(k): v for k, v in data.items()}


def threads_for_pool(num_threads: str, threads_per_job: int) -> int:
    """``request_cpus`` of a batch job: ``cog.num_threads`` when it is a number, else (ALL_CPUS)
    ``threads_per_job``: under cgroups GDAL's ALL_CPUS counts the whole machine (OSGeo/gdal#6669)."""
    value = str(num_threads).strip().upper()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    if value != "ALL_CPUS":
        raise ValueError(f"cog.num_threads {num_threads!r} must be ALL_CPUS or a positive integer")
    if threads_per_job < 1:
        raise ValueError(f"threads_per_job must be at least 1, got {threads_per_job}")
    return threads_per_job
