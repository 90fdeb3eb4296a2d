"""`cog-pipeline status` and `cog-pipeline retry` against the real local S3 server."""

from __future__ import annotations

import json

import pytest

from cog_pipeline.cli import main
from cog_pipeline.errors import PipelineError
from cog_pipeline.retry import plan_retry, queue_retry
from cog_pipeline.s3 import make_client
from cog_pipeline.tick import TickOptions, tick
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects


def s3_flags(settings):
    return ["-a", settings.access_key_file, "-s", settings.secret_key_file, "-e", settings.endpoint_url]


def test_status_on_an_empty_bucket_and_no_schedd(buckets, settings, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONDOR_CONFIG", "/dev/null")
    assert main(["status", *s3_flags(settings), "--input-bucket", INPUT_BUCKET, "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "waiting (raw): 0" in out and "processing: 0" in out and "Runs in" in out
    assert "No HTCondor schedd reachable" in out


def test_status_counts_manifests_and_runs(seed, buckets, settings, samples, tmp_path, capsys):
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "a.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="set1-raw.csv", Body=b"a.tif,1\nmissing.tif,1\n")
    work = tmp_path / "work"
    tick(TickOptions(input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, settings=settings, workdir=work))
    seed.put_object(Bucket=INPUT_BUCKET, Key="set2-raw.csv", Body=b"a.tif,1\n")
    seed.put_object(Bucket=INPUT_BUCKET, Key="set3-processing-20260101-000000.csv", Body=b"a.tif,1\n")
    capsys.readouterr()

    assert main(["status", *s3_flags(settings), "--input-bucket", INPUT_BUCKET, "--workdir", str(work), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in state["bucket"]["raw"]] == ["set2-raw.csv"]
    assert [p["key"] for p in state["bucket"]["processing"]] == ["set3-processing-20260101-000000.csv"]
    assert state["bucket"]["processing"][0]["age_s"] > 0
    finished = state["bucket"]["finished"]
    assert len(finished) == 1 and finished[0]["processed_rows"] == 1 and finished[0]["failed_rows"] == 1
    run = state["runs"][0]
    assert (run["state"], run["done"], run["failed"], run["pending"]) == ("finished", 1, 1, 0)


def test_retry_requeues_failed_rows_once_inputs_exist(seed, buckets, settings, samples, tmp_path, capsys):
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "a.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="set-raw.csv", Body=b"a.tif,1\nlate.tif,1\n/bad.tif,1\n")
    tick(TickOptions(input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, settings=settings,
                     workdir=tmp_path / "work"))
    failed_key = next(k for k in all_objects(seed, INPUT_BUCKET) if k.startswith("set-failed-"))
    client = make_client(settings)

    with pytest.raises(PipelineError, match="still missing.*\n  late.tif"):
        plan_retry(client, INPUT_BUCKET, failed_key)
    assert main(["retry", *s3_flags(settings), "--input-bucket", INPUT_BUCKET, failed_key]) == 2
    assert not [k for k in all_objects(seed, INPUT_BUCKET) if "retry" in k]

    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "late.tif")
    plan = plan_retry(client, INPUT_BUCKET, failed_key)
    assert plan.rows == [("late.tif", "1")] and "starts with '/'" in plan.left_out[0]
    queue_retry(client, INPUT_BUCKET, plan)
    assert all_objects(seed, INPUT_BUCKET)[plan.key] == b"late.tif,1\n"
    assert plan.key.startswith("set-retry-") and plan.key.endswith("-raw.csv")

    result = tick(TickOptions(input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, settings=settings,
                              workdir=tmp_path / "work"))
    assert [m["processed"] for m in result.manifests] == [1]


def test_retry_refuses_a_key_that_is_not_a_failed_csv(buckets, settings):
    with pytest.raises(PipelineError, match="not a failed-rows file"):
        plan_retry(make_client(settings), INPUT_BUCKET, "set-processed-20260101-000000.csv")
