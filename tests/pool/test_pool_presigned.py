"""No key on execute points, on the real pool: with the pool's default (s3.transfer: presigned) the batch jobs
receive the batch's URL file and no key file, convert with presigned URLs, and the access point confirms the
uploads. The job ads and the sandboxes' files hold neither key value nor key file."""

from __future__ import annotations

import json
import time

import pytest

from cog_pipeline import SAMPLES_DIR
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects
from pool.test_pool import (
    DRIVER_WAIT,
    MISSING,
    VANILLA_UNIVERSE,
    csv_rows,
    diagnostics,
    manifest,
    outcome_objects,
    run_constraint,
    secret_places,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_batch_jobs_convert_with_presigned_urls_and_hold_no_key(pool, pool_user, seed):
    pattern = "pool-presigned/*raw.csv"
    seed.upload_file(str(SAMPLES_DIR / "byte.tif"), INPUT_BUCKET, "imagery/p/byte é.tif")
    seed.upload_file(str(SAMPLES_DIR / "RGB.byte.tif"), INPUT_BUCKET, "imagery/p/rgb.tif")
    seed.put_object(
        Bucket=INPUT_BUCKET,
        Key="pool-presigned/p-raw.csv",
        Body=manifest([("imagery/p/byte é.tif", 1), ("imagery/p/rgb.tif", 3), (MISSING, 1)]),
    )
    tick = pool_user.cli(
        "tick",
        "--executor",
        "htcondor",
        *pool_user.bucket_flags(pattern),
        "--config",
        str(pool_user.config_file),
        "--workdir",
        str(pool_user.workdir),
    )
    assert "Submitted the run's driver as HTCondor cluster" in tick.stdout, tick.stdout + tick.stderr
    [run_dir] = sorted(pool_user.workdir.glob("workflow-run-*"))
    run_id = run_dir.name.removeprefix("workflow-run-")

    def finished():
        return list((run_dir / "outcome").glob("*.json")) and not pool.query(run_constraint(run_id), ["ClusterId"])

    started = time.monotonic()
    wait_for(finished, DRIVER_WAIT, "the presigned run to finish", lambda: diagnostics(pool, run_dir))

    out = outcome_objects(seed, "pool-presigned/p-")
    assert sorted(csv_rows(out["processed"])) == [["imagery/p/byte é.tif", "1"], ["imagery/p/rgb.tif", "3"]], out
    assert csv_rows(out["failed"]) == [[MISSING, "1"]]
    outputs = all_objects(seed, OUTPUT_BUCKET)
    assert {"imagery/p/byte é.tif", "imagery/p/byte é.jpg", "imagery/p/rgb.tif", "imagery/p/rgb.jpg"} <= set(outputs)

    snakemake_log = (run_dir / "logs" / "snakemake.log").read_text(encoding="utf-8", errors="replace")
    assert "execute points get presigned URLs, no keys" in snakemake_log
    assert list((run_dir / "logs" / "confirm").rglob("batch-*.log")), "confirm_batch ran on the access point"
    assert not list(run_dir.glob("urls/**/*.json")), "URL files outlived their batches"

    jobs = pool.history(
        f'{run_constraint(run_id)} && CogPipelineRole =?= "job"',
        ["ClusterId", "JobUniverse", "JobStatus", "ExitCode", "TransferInput", "Environment", "TransferOutput"],
    )
    convert = [j for j in jobs if "logs/convert/" in str(j.get("TransferOutput", ""))]
    assert convert, jobs
    for job in convert:
        assert (job["JobUniverse"], job["JobStatus"], job["ExitCode"]) == (VANILLA_UNIVERSE, 4, 0), job
        transfer = str(job.get("TransferInput", ""))
        assert "urls/" in transfer, job  # the batch's URL file goes with the job ...
        assert pool_user.access_key_file.name not in transfer and pool_user.secret_key_file.name not in transfer, job
        assert str(pool_user.access_key_file.parent) not in json.dumps(job), job  # ... no key file, no key path
    assert secret_places(pool, pool_user) == []
    print(f"presigned run on the pool: {time.monotonic() - started:.1f} s after the tick")
