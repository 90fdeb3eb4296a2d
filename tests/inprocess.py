"""A run's workflow driven in this process, for tests whose subject is the tick, the claims or a layer (batch,
aggregate, report, per-image logs, status, retry) rather than Snakemake: the jobs are called as the Snakefile's
scripts call them, each logging to its rule's ``log:`` file, in the run directory. No Snakemake and no Python
per job: a real tick costs about 4 CPU-seconds more (a handful of tests keep real ticks for Snakemake's part, e.g.
tests/test_pipeline.py, tests/faults/test_servers.py::test_end_to_end_tick and the crash matrix's snakemake
steps)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from cog_pipeline.control import driver
from cog_pipeline.control import tick as tick_module
from cog_pipeline.control.options import TickOptions
from cog_pipeline.control.tick import TickResult
from cog_pipeline.core import config as config_model
from cog_pipeline.core import transfer
from cog_pipeline.core.crash import crash_point
from cog_pipeline.core.logs import log_to_file
from cog_pipeline.core.naming import batch_id, batch_log_path, status_path
from cog_pipeline.core.rundir import RunDir
from cog_pipeline.storage.s3 import S3Settings
from cog_pipeline.work.aggregate import aggregate_manifest
from cog_pipeline.work.batch import run_batch
from cog_pipeline.work.manifest import batch_slices, read_manifest
from cog_pipeline.work.qa_step import qa_manifest
from conftest import INPUT_BUCKET, OUTPUT_BUCKET

#: ``--cores`` of a tick (TickOptions.cores): Snakemake gives a job at most this many threads.
CORES = 2


def tick_options(settings: S3Settings, workdir: Path, **kw: Any) -> TickOptions:
    """The options of a tick on the test buckets with the working directory ``workdir``."""
    return TickOptions(input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, settings=settings, workdir=workdir, **kw)


def run_workflow_in_process(run_dir: Path) -> None:
    """The run directory's workflow jobs in this process, in the Snakefile's order: per manifest its QA step
    (``qa.enabled``), each batch whose status file is missing (what a resumed Snakemake reruns: a status file
    appears whole, by rename) and its aggregate; in the run directory (``snakemake --directory``), each job
    logging to its rule's log file. ``s3.transfer`` direct only: the presigned jobs stay with real ticks."""
    run = RunDir(run_dir)
    config = run.config.data
    mode = transfer.transfer_mode(config, run.config.executor)
    if mode != transfer.DIRECT:
        raise ValueError(f"the in-process workflow runs s3.transfer direct only, not {mode!r} (use a real tick)")
    threads = min(int(config["threads_per_job"]), CORES)
    root = logging.getLogger()
    level = root.level
    here = Path(".")  # the jobs run in the run directory and are given "." (as the scripts are)
    try:
        with contextlib.chdir(run.path):
            for manifest in run.manifests:
                mid = manifest.id
                if config_model.qa_enabled(config):
                    with log_to_file(f"logs/qa/{mid}.log"):
                        qa_manifest(config, here, mid)
                entries = read_manifest(manifest.csv).entries
                for index in range(len(batch_slices(len(entries), run.config.batch_size))):
                    batch = batch_id(index)
                    status = status_path(here, mid, batch)
                    if not status.exists():
                        with log_to_file(batch_log_path(mid, batch)):
                            run_batch(config, here, mid, index, status, threads=threads)
                with log_to_file(f"logs/aggregate/{mid}.log"):
                    aggregate_manifest(config, here, mid)
    finally:
        root.setLevel(level)


def launch_in_process(run: RunDir, opts: TickOptions) -> TickResult:
    """A stand-in for ``control.tick.launch`` (local executor): :func:`run_workflow_in_process`, then the
    driver's own final step (``driver.finish``: outcome summaries, the combined report, the ticks.log line)."""
    crash_point("tick.launch")
    run_workflow_in_process(run.path)
    code, summaries = driver.finish(run.path)
    return TickResult(run_dir=run.path, manifests=summaries, exit_code=code)


@contextlib.contextmanager
def workflow_in_process() -> Iterator[None]:
    """Ticks started meanwhile run their workflow with :func:`launch_in_process` instead of Snakemake."""
    with mock.patch.object(tick_module, "launch", launch_in_process):
        yield


def claim_and_run(opts: TickOptions) -> tuple[RunDir, list[dict[str, Any]]]:
    """A real tick (claims, run directory, recovery, the FINISHED marker) whose workflow runs in this process;
    the new run directory and the manifests' summaries (``TickResult.manifests``)."""
    with workflow_in_process():
        result = tick_module.tick(opts)
    assert result.exit_code == 0 and result.run_dir is not None, f"the tick did not run a new claim: {result}"
    return RunDir(result.run_dir), result.manifests
