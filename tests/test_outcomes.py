"""Typed image outcomes (work/outcomes.py): the record format, the one reader, the streaming counter,
failure codes given where failures happen, advice keyed by code, and the aggregate's order."""

from __future__ import annotations

import json

import pytest
import yaml

from cog_pipeline.core.errors import PipelineError
from cog_pipeline.work.imagelogs import ADVICE, GENERIC_ADVICE, advice
from cog_pipeline.work.outcomes import (
    FailureCode,
    ImageOutcome,
    OutcomeCounter,
    Status,
    failure_codes,
    legacy_code,
    manifest_finished,
    read_outcomes,
    write_outcomes,
)

from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects, one_manifest_config


def test_a_record_round_trips_and_keeps_todays_field_names(tmp_path):
    ok = ImageOutcome(
        key="a/b.tif",
        status=Status.OK,
        line=3,
        bands="3",
        file_bands=3,
        dtype="uint8",
        width=10,
        height=20,
        input_bytes=100,
        cog_bytes=90,
        jpeg_bytes=5,
        notes=("n1",),
        step_seconds={"cog": 0.5},
        thumbnail="data:image/jpeg;base64,AAAA",
        log=("l1", "l2"),
        seconds=1.25,
    )
    failed = ImageOutcome(
        key="c.tif",
        status=Status.FAILED,
        line=4,
        bands="1",
        code=FailureCode.NOT_A_TIFF,
        step="open",
        reason="not a TIFF file",
        seconds=0.1,
    )
    skipped = ImageOutcome(
        key="d.tif",
        status=Status.SKIPPED,
        line=5,
        bands="1",
        reason="outputs already made from this input",
        input_bytes=7,
        seconds=0.2,
    )
    for outcome in (ok, failed, skipped):
        record = json.loads(json.dumps(outcome.to_record()))
        assert ImageOutcome.from_record(record) == outcome
    assert failed.to_record() == {
        "key": "c.tif",
        "line": 4,
        "bands": "1",
        "status": "failed",
        "code": "not-a-tiff",
        "step": "open",
        "reason": "not a TIFF file",
        "seconds": 0.1,
    }
    assert set(ok.to_record()) == {
        "key",
        "line",
        "bands",
        "status",
        "file_bands",
        "dtype",
        "width",
        "height",
        "input_bytes",
        "cog_bytes",
        "jpeg_bytes",
        "notes",
        "step_seconds",
        "thumbnail",
        "log",
        "seconds",
    }
    assert failed.csv_reason == "open: not a TIFF file"


@pytest.mark.parametrize(
    "record, code",
    [
        ({"step": "download", "reason": "input object not found in bucket 'in'; upload it"}, FailureCode.INPUT_MISSING),
        ({"step": "open", "reason": "not a TIFF file (it looks like a PNG image)"}, FailureCode.NOT_A_TIFF),
        ({"step": "open", "reason": "file is truncated or corrupt: only 9 bytes"}, FailureCode.CORRUPT),
        ({"step": "cog", "reason": "TIFFWrite failed; most likely no space left on the device"}, FailureCode.DISK_FULL),
        ({"step": "upload", "reason": "PutObject failed: AccessDenied"}, FailureCode.S3_DENIED),
        ({"step": "upload", "reason": "PutObject failed: InternalError"}, FailureCode.S3_FAILED),
        ({"step": "verify", "reason": "band 1 differs"}, FailureCode.VERIFY_FAILED),
        ({"step": "internal", "reason": "KeyError: 'x'"}, FailureCode.INTERNAL),
        ({"step": "jpeg", "reason": "the JPEG format is limited to 65500 pixels"}, FailureCode.JPEG_TOO_LARGE),
        ({"step": "cog", "reason": "GDAL: something new"}, FailureCode.GDAL_FAILED),
        ({"step": "frobnicate", "reason": "something new"}, None),
    ],
)
def test_a_record_of_an_older_version_gets_its_code_from_its_reason(record, code):
    outcome = ImageOutcome.from_record({"key": "k.tif", "status": "failed", **record})
    assert outcome.code is code


def test_a_code_in_the_record_wins_over_the_wording_and_an_unknown_one_is_not_fatal():
    record = {"key": "k.tif", "status": "failed", "step": "open", "reason": "not a TIFF file", "code": "corrupt"}
    assert ImageOutcome.from_record(record).code is FailureCode.CORRUPT
    assert ImageOutcome.from_record({**record, "code": "from-the-future"}).code is None


def test_every_code_has_its_advice_and_the_old_texts_are_kept():
    assert set(ADVICE) == set(FailureCode)
    assert "upload the image" in advice(FailureCode.INPUT_MISSING)
    assert "export the image as GeoTIFF" in advice(FailureCode.NOT_A_TIFF)
    assert "upload the file again" in advice(FailureCode.CORRUPT)
    assert "temp disk is full" in advice(FailureCode.DISK_FULL)
    assert "mem_mb_per_job" in advice(FailureCode.BATCH_DID_NOT_FINISH)
    assert "logs/snakemake.log" in advice(FailureCode.BATCH_REMOVED)
    assert "fix the row" in advice(FailureCode.MANIFEST_ROW)
    assert "S3 keys may not" in advice("s3-denied")  # as read back from a record or a summary
    assert advice(None) == advice("no-such-code") == GENERIC_ADVICE


def write_batch(run_dir, manifest_id, batch, outcomes):
    return write_outcomes(run_dir / "status" / manifest_id / f"batch-{batch}.jsonl", outcomes)


def test_one_reader_by_key_with_the_batch_that_recorded_it(tmp_path):
    a = ImageOutcome(key="a.tif", status=Status.OK, line=1, bands="1")
    b = ImageOutcome(
        key="b.tif", status=Status.FAILED, line=2, bands="1", code=FailureCode.CORRUPT, step="open", reason="x"
    )
    write_batch(tmp_path, "m1", "00000", [a])
    write_batch(tmp_path, "m1", "00001", [b])
    (tmp_path / "status" / "m1" / "batch-00002.jsonl.tmp").write_text('{"key": "c.tif", "status": "ok"}\n')
    outcomes = read_outcomes(tmp_path, "m1")
    assert outcomes == {"a.tif": a, "b.tif": b}  # an unfinished batch (.tmp) is not read
    assert (outcomes["a.tif"].batch, outcomes["b.tif"].batch) == ("00000", "00001")
    (tmp_path / "status" / "m1" / "batch-00003.jsonl").write_text('{"key": "d.tif", "status": "ok"}\n{"key": \n')
    with pytest.raises(PipelineError, match=r"batch-00003.jsonl, line 2: not an image outcome record"):
        read_outcomes(tmp_path, "m1")


def test_the_counter_parses_records_instead_of_matching_bytes(tmp_path):
    """The progress bar counted failures by matching '"status": "failed"' in raw bytes and counted a line
    still being written: a compact record's failure was missed and a half-written line counted as done."""
    status = tmp_path / "status" / "m1"
    status.mkdir(parents=True)
    compact = json.dumps({"key": "b.tif", "status": "failed", "reason": "x"}, separators=(",", ":"))
    (status / "batch-00000.jsonl").write_text('{"key": "a.tif", "status": "ok"}\n' + compact + "\n")
    tmp = status / "batch-00001.jsonl.tmp"
    tmp.write_text('{"key": "c.tif", "status": "ok"}\n{"key": "d.tif", "sta')  # d.tif is being written
    counter = OutcomeCounter()
    assert counter.count(tmp_path) == (3, 1)
    with open(tmp, "a") as fh:
        fh.write('tus": "failed"}\n')
    assert counter.count(tmp_path) == (4, 2)
    tmp.rename(status / "batch-00001.jsonl")  # the batch ends: counted once, not twice
    assert counter.count(tmp_path) == (4, 2)
    (status / "batch-00001.jsonl").write_text('{"key": "c.tif", "status": "ok"}\n')  # run again, shorter
    assert counter.count(tmp_path) == (3, 1)

    from cog_pipeline.control.progress import count_records

    assert count_records(tmp_path) == (3, 1)


def test_failure_codes_of_a_summary_and_of_an_older_one():
    reasons = ["line 3: duplicate of line 2", "no outcome recorded: batch job batch-00001 was removed ..."]
    summary = {
        "failures": [
            {"line": 3, "key": "a.tif", "code": "manifest-row"},
            {"line": 5, "key": "b.tif", "code": "batch-removed"},
        ]
    }
    assert failure_codes(summary, reasons) == [FailureCode.MANIFEST_ROW, FailureCode.BATCH_REMOVED]
    assert failure_codes({}, reasons) == [FailureCode.MANIFEST_ROW, FailureCode.BATCH_DID_NOT_FINISH]
    assert legacy_code("") is None


# ------------------------------------------------------------------------------- codes where raised


def batch_config(settings, run_dir, keys):
    (run_dir / "manifests").mkdir(parents=True)
    (run_dir / "manifests" / "m.csv").write_bytes("".join(f"{k},1\n" for k in keys).encode())
    return one_manifest_config(
        {
            "endpoint_url": settings.endpoint_url,
            "access_key_file": settings.access_key_file,
            "secret_key_file": settings.secret_key_file,
        },
        run_id="20261125-000000",
    )


def test_the_batch_gives_each_failure_its_code_where_it_happens(seed, buckets, settings, samples, tmp_path):
    from cog_pipeline.work import batch

    seed.put_object(Bucket=INPUT_BUCKET, Key="empty.tif", Body=b"")
    seed.put_object(Bucket=INPUT_BUCKET, Key="png.tif", Body=b"\x89PNG\r\n\x1a\nnot a tiff at all")
    seed.put_object(Bucket=INPUT_BUCKET, Key="cut.tif", Body=(samples / "shade.tif").read_bytes()[:200_000])
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "good.tif")
    keys = ["missing.tif", "empty.tif", "png.tif", "cut.tif", "good.tif"]
    config = batch_config(settings, tmp_path, keys)
    outcomes = batch.run_batch(config, tmp_path, "m1", 0, tmp_path / "status" / "m1" / "batch-00000.jsonl", threads=1)
    assert [(o.key, o.status, o.code) for o in outcomes] == [
        ("missing.tif", Status.FAILED, FailureCode.INPUT_MISSING),
        ("empty.tif", Status.FAILED, FailureCode.INPUT_EMPTY),
        ("png.tif", Status.FAILED, FailureCode.NOT_A_TIFF),
        ("cut.tif", Status.FAILED, FailureCode.CORRUPT),
        ("good.tif", Status.OK, None),
    ]
    assert read_outcomes(tmp_path, "m1") == {o.key: o for o in outcomes}  # what was written is what is read


def test_an_s3_refusal_is_s3_denied_and_other_s3_errors_s3_failed():
    import botocore.exceptions

    from cog_pipeline.work.batch import _s3_code

    def client_error(code):
        return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}}, "PutObject")

    assert _s3_code(client_error("AccessDenied")) is FailureCode.S3_DENIED
    assert _s3_code(client_error("SignatureDoesNotMatch")) is FailureCode.S3_DENIED
    assert _s3_code(client_error("InternalError")) is FailureCode.S3_FAILED
    try:  # boto3's upload failure wraps the ClientError: its code is found through the chain
        try:
            raise client_error("InvalidAccessKeyId")
        except botocore.exceptions.ClientError as inner:
            raise RuntimeError("Failed to upload") from inner
    except RuntimeError as wrapped:
        assert _s3_code(wrapped) is FailureCode.S3_DENIED
    assert _s3_code(botocore.exceptions.EndpointConnectionError(endpoint_url="x")) is FailureCode.S3_FAILED


# ------------------------------------------------------------------------------- the aggregate's order


def aggregate_setup(seed, settings, tmp_path):
    """A run directory whose one batch converted a.tif (outputs present) and failed b.tif, its processing file
    in the input bucket."""
    run_dir = tmp_path / "workflow-run-20261125-000000"
    config = batch_config(settings, run_dir, ["a.tif", "b.tif"])
    (run_dir / "run.yaml").write_text(yaml.safe_dump(config))
    seed.put_object(Bucket=INPUT_BUCKET, Key="m-processing-20261125-000000.csv", Body=b"a.tif,1\nb.tif,1\n")
    for key in ("a.tif", "a.jpg"):
        seed.put_object(Bucket=OUTPUT_BUCKET, Key=key, Body=b"x")
    write_batch(
        run_dir,
        "m1",
        "00000",
        [
            ImageOutcome(key="a.tif", status=Status.OK, line=1, bands="1"),
            ImageOutcome(
                key="b.tif",
                status=Status.FAILED,
                line=2,
                bands="1",
                code=FailureCode.CORRUPT,
                step="open",
                reason="file is truncated or corrupt: only 9 bytes",
            ),
        ],
    )
    return run_dir, config


def test_the_aggregate_writes_the_report_before_the_processing_file_goes(
    seed, buckets, settings, tmp_path, monkeypatch
):
    """Issue 12: a stop just after the outcome CSVs appeared lost the report for good (the processing file was
    already deleted, the report was the driver's job afterwards). Issue 14: a manual Snakemake rerun wrote
    no report.html and no per-image logs. The aggregate itself now writes and uploads the report, then
    deletes the processing file, then marks the manifest finished."""
    from cog_pipeline.work import aggregate, report

    run_dir, config = aggregate_setup(seed, settings, tmp_path)

    def stopped(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_report", stopped)  # the report cannot be written: the stop in between
    with pytest.raises(PipelineError, match=r"cannot write the report.*m-processing-20261125-000000\.csv was left"):
        aggregate.aggregate_manifest(config, run_dir, "m1")
    objects = all_objects(seed, INPUT_BUCKET)
    assert "m-processing-20261125-000000.csv" in objects and "m-errors-20261125-000000.csv" in objects
    assert not manifest_finished(run_dir, "m1")  # a resume aggregates it again

    monkeypatch.undo()
    summary = aggregate.aggregate_manifest(config, run_dir, "m1")
    objects = all_objects(seed, INPUT_BUCKET)
    assert "m-processing-20261125-000000.csv" not in objects
    assert b"b.tif" in objects["m-report-20261125-000000.html"]
    assert (run_dir / "report.html").is_file() and (run_dir / "logs" / "images" / "b.log").is_file()
    assert "upload the file again" in (run_dir / "logs" / "images" / "b.log").read_text()  # advice by its code
    assert manifest_finished(run_dir, "m1") and summary["finished"] is True
    assert summary["failures"] == [{"line": 2, "key": "b.tif", "code": "corrupt"}]
    assert objects["m-errors-20261125-000000.csv"] == (
        b"key,bands,reason\nb.tif,1,open: file is truncated or corrupt: only 9 bytes\n"
    )


def test_a_summary_of_an_older_version_counts_as_finished_and_a_half_written_one_not(tmp_path):
    (tmp_path / "outcome").mkdir()
    assert not manifest_finished(tmp_path, "m1")
    (tmp_path / "outcome" / "m1.json").write_text(json.dumps({"manifest": "m1", "processed": 1}))
    assert manifest_finished(tmp_path, "m1")
    (tmp_path / "outcome" / "m1.json").write_text(json.dumps({"manifest": "m1", "finished": False}))
    assert not manifest_finished(tmp_path, "m1")
