"""`cog-pipeline retry`: failed rows back in the queue, refused while inputs are missing or already queued."""

from __future__ import annotations

import pytest

from cog_pipeline.ui.cli import main
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.control.retry import plan_retry, queue_retry, retry_stem
from cog_pipeline.storage.s3 import make_client
from conftest import INPUT_BUCKET, all_objects, s3_cli_flags
from inprocess import claim_and_run, tick_options


def s3_flags(settings):
    return s3_cli_flags(settings, output_bucket=None)


def failed_run(seed, settings, samples, tmp_path):
    """A run (driven in-process) of a manifest with a missing input and a bad row; its failed-rows key."""
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "folder/a.tif")
    seed.put_object(
        Bucket=INPUT_BUCKET, Key="folder/set-raw.csv", Body=b"folder/a.tif,1\nfolder/late.tif,1\n/bad.tif,1\n"
    )
    _run, [summary] = claim_and_run(tick_options(settings, tmp_path / "work"))
    assert (summary["processed"], summary["failed"]) == (1, 2)
    return summary["failed_key"]


@pytest.mark.slow
def test_retry_requeues_failed_rows_once_inputs_exist(seed, buckets, settings, samples, tmp_path, capsys):
    failed_key = failed_run(seed, settings, samples, tmp_path)
    client = make_client(settings)

    with pytest.raises(PipelineError, match=r"1 of 1 input object\(s\) are still missing.*\n  folder/late.tif"):
        plan_retry(client, INPUT_BUCKET, failed_key)
    assert main(["retry", *s3_flags(settings), failed_key]) == 2
    assert "Upload them under exactly these keys" in capsys.readouterr().err
    assert not [k for k in all_objects(seed, INPUT_BUCKET) if "retry" in k]

    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "folder/late.tif")
    assert main(["retry", *s3_flags(settings), "--dry-run", failed_key]) == 0
    out = capsys.readouterr().out
    assert "Would queue 1 row as" in out and "folder/late.tif,1" in out
    assert "left out (fix the row, then upload it in a new manifest): manifest line 3: key starts with '/'" in out
    assert not [k for k in all_objects(seed, INPUT_BUCKET) if "retry" in k]

    plan = plan_retry(client, INPUT_BUCKET, failed_key)
    assert plan.rows == [("folder/late.tif", "1")] and "starts with '/'" in plan.left_out[0]
    assert plan.key.startswith("folder/set-retry-") and plan.key.endswith("-raw.csv")
    queue_retry(client, INPUT_BUCKET, plan)
    assert all_objects(seed, INPUT_BUCKET)[plan.key] == b"folder/late.tif,1\n"

    with pytest.raises(PipelineError, match="already queued as folder/set-retry-"):
        plan_retry(client, INPUT_BUCKET, failed_key)

    # The next tick (its jobs in this process) picks the retry up as a new manifest.
    _run, summaries = claim_and_run(tick_options(settings, tmp_path / "work"))
    assert [(m["raw_key"], m["processed"], m["failed"]) for m in summaries] == [(plan.key, 1, 0)]


def test_nothing_to_retry_and_wrong_keys(seed, buckets, settings, capsys):
    seed.put_object(Bucket=INPUT_BUCKET, Key="set-failed-20260101-000000.csv", Body=b"")
    assert main(["retry", *s3_flags(settings), "set-failed-20260101-000000.csv"]) == 0
    assert "Nothing to retry" in capsys.readouterr().out

    client = make_client(settings)
    with pytest.raises(PipelineError, match="not a failed-rows file"):
        plan_retry(client, INPUT_BUCKET, "set-processed-20260101-000000.csv")
    with pytest.raises(PipelineError, match=r"cannot read set-failed-20990101-000000.csv.*cog-pipeline status"):
        plan_retry(client, INPUT_BUCKET, "set-failed-20990101-000000.csv")
    seed.put_object(Bucket=INPUT_BUCKET, Key="bad-failed-20260101-000000.csv", Body=b"/x.tif,1\ny.png,0\n")
    with pytest.raises(PipelineError, match=r"no row .* can be retried as written.*\n  line 1.*\n  line 2"):
        plan_retry(client, INPUT_BUCKET, "bad-failed-20260101-000000.csv")


def test_a_retry_of_a_retry_keeps_a_short_name():
    assert retry_stem("county-") == "county-retry-"
    assert retry_stem("county-retry-20261125-101010-") == "county-retry-"
    assert retry_stem("a/b/county-retry-") == "a/b/county-retry-retry-"  # only a timestamped retry is folded


def test_a_listing_error_is_a_clear_message_not_a_traceback(
    seed, buckets, settings, samples, tmp_path, monkeypatch, capsys
):
    """Checking for an identical retry already queued lists the bucket: ListBucket denied must read as such."""
    import botocore.exceptions

    from cog_pipeline.storage import s3

    failed_key = failed_run(seed, settings, samples, tmp_path)
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "folder/late.tif")

    def denied(*args, **kwargs):
        raise botocore.exceptions.ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListObjectsV2"
        )

    monkeypatch.setattr(s3, "iter_objects", denied)
    assert main(["retry", *s3_flags(settings), failed_key]) == 2
    err = capsys.readouterr().err
    assert f"cannot list '{INPUT_BUCKET}'" in err
    assert "AccessDenied" in err and "Traceback" not in err
    assert not [k for k in all_objects(seed, INPUT_BUCKET) if "retry" in k]


def test_left_out_rows_name_their_line_in_the_original_manifest(seed, buckets, settings, samples):
    """The failed CSV's own line numbers mean nothing to the user: the errors CSV beside it names the manifest's."""
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "folder/late.tif")
    failed = "folder/set-failed-20260101-000000.csv"
    seed.put_object(Bucket=INPUT_BUCKET, Key=failed, Body=b"key,bands\nfolder/late.tif,1\n/bad.tif,1\n")
    seed.put_object(
        Bucket=INPUT_BUCKET,
        Key="folder/set-errors-20260101-000000.csv",
        Body=(
            b"key,bands,reason\n"
            b"key,bands,line 5: key 'key' does not end in '.tif' or '.tiff'; band count 'bands' is not an integer\n"
            b"folder/late.tif,1,download: input object not found\n"
            b"/bad.tif,1,line 36: key starts with '/' (remove the leading '/')\n"
        ),
    )
    client = make_client(settings)
    plan = plan_retry(client, INPUT_BUCKET, failed)
    assert plan.rows == [("folder/late.tif", "1")]
    assert sorted(plan.left_out) == [
        "manifest line 36: key starts with '/' (keys are relative to the input bucket; remove the leading '/')",
        "manifest line 5: reads like a column header (key,bands) in a failed CSV, so it cannot be retried as written",
    ]

    # Without the errors CSV (or one that does not match row for row) the failed CSV's lines are named as such.
    seed.delete_object(Bucket=INPUT_BUCKET, Key="folder/set-errors-20260101-000000.csv")
    plan = plan_retry(client, INPUT_BUCKET, failed)
    assert "line 3 of the failed CSV: key starts with '/'" in plan.left_out[0]
