"""The delivery QA step of a run (cog_pipeline/work/qa_step.py, rules/qa.smk): headers read through presigned
GETs on the local S3 server, the verdict, the batch leaving QA-failed rows out, the aggregate failing them with
their reason, the QA CSV in the input bucket, and ``tick --dry-run`` naming missing inputs and findings."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from cog_pipeline.control.tick import tick
from cog_pipeline.core import config as config_model
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.work import qa_step
from cog_pipeline.work.aggregate import aggregate_manifest
from cog_pipeline.work.batch import batch_entries, run_batch
from cog_pipeline.work.imagelogs import ADVICE
from cog_pipeline.work.outcomes import read_outcomes
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects
from inprocess import claim_and_run, tick_options
from rasters import TRANSFORM, make_tif

TS = "20260101-000000"
PROCESSING = f"county-processing-{TS}.csv"
QA_KEY = f"county-qa-{TS}.csv"
#: Three NZTM tiles and one in UTM 60S (the odd one out), in manifest order.
TILES = {"d/t0.tif": "EPSG:2193", "d/t1.tif": "EPSG:2193", "d/utm.tif": "EPSG:32760", "d/t2.tif": "EPSG:2193"}
UTM_REASON = "srs_mismatch: SRS EPSG:32760, while 3 of 4 images are EPSG:2193"


def tile(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(1, 255, (3, 64, 64), dtype=np.uint8)


def upload_tiles(seed, tmp_path: Path, tiles: dict[str, str] = TILES) -> None:
    for i, (key, crs) in enumerate(tiles.items()):
        path = make_tif(
            tmp_path / f"tile{i}.tif", tile(i), crs=crs, transform=TRANSFORM @ Affine.translation(64 * i, 0)
        )
        seed.upload_file(str(path), INPUT_BUCKET, key)


def s3_section(settings) -> dict:
    return {
        "endpoint_url": settings.endpoint_url,
        "access_key_file": settings.access_key_file,
        "secret_key_file": settings.secret_key_file,
        "input_bucket": INPUT_BUCKET,
        "output_bucket": OUTPUT_BUCKET,
    }


def make_run(tmp_path: Path, settings, seed, keys, qa=None, transfer="direct") -> tuple[dict, Path]:
    """A claimed run directory (as the tick makes it) of one manifest ``county-raw.csv`` listing ``keys``."""
    run_dir = tmp_path / "run"
    (run_dir / "manifests").mkdir(parents=True)
    body = "".join(f"{k},3\n" for k in keys).encode()
    (run_dir / "manifests" / PROCESSING).write_bytes(body)
    seed.put_object(Bucket=INPUT_BUCKET, Key=PROCESSING, Body=body)
    manifest = {
        "id": "m1",
        "csv": f"manifests/{PROCESSING}",
        "key": PROCESSING,
        "raw_key": "county-raw.csv",
        "stem": "county-",
        "timestamp": TS,
    }
    config = config_model.load(
        run={
            "run_id": TS,
            "pattern": "*raw.csv",
            "manifests": [manifest],
            "s3": {**s3_section(settings), "transfer": transfer},
            "qa": {"enabled": True, **(qa or {})},
        }
    )
    return config, run_dir


def rows(body: bytes) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(body.decode("utf-8"))) if r]


# --------------------------------------------------------------------------------------------- the verdict


def test_a_delivery_mixing_two_srs_fails_the_minority_rows(seed, buckets, settings, tmp_path):
    upload_tiles(seed, tmp_path)
    config = config_model.load(run={"s3": s3_section(settings), "qa": {"enabled": True}})
    verdict = qa_step.run_qa(config, "m1", [*TILES, "d/gone.tif"])
    assert verdict.failing() == {"d/utm.tif": UTM_REASON}
    assert verdict.missing == ("d/gone.tif",)  # not read: the batch fails it input-missing
    assert verdict.checked == 4
    # The failing row is never converted: its place on the report's map comes from this read of its input.
    assert list(verdict.places) == ["d/utm.tif"] and verdict.places["d/utm.tif"]["crs"] == "EPSG:32760"
    assert verdict.places["d/utm.tif"]["footprint"]["type"] == "Polygon"
    assert qa_step.QaVerdict.from_dict(json.loads(json.dumps(verdict.to_dict()))) == verdict


def test_a_consistent_delivery_fails_nothing_with_the_defaults(seed, buckets, settings, tmp_path):
    upload_tiles(seed, tmp_path, {k: "EPSG:2193" for k in TILES})
    config = config_model.load(run={"s3": s3_section(settings), "qa": {"enabled": True}})
    verdict = qa_step.run_qa(config, "m1", list(TILES))
    assert (verdict.checked, verdict.findings, verdict.missing) == (4, (), ())


def test_no_signature_reaches_a_finding_or_a_log(seed, buckets, settings, tmp_path, caplog):
    upload_tiles(seed, tmp_path, {"d/t0.tif": "EPSG:2193"})
    seed.put_object(Bucket=INPUT_BUCKET, Key="d/page.tif", Body=b"<html>not a tiff</html>")
    config = config_model.load(run={"s3": s3_section(settings), "qa": {"enabled": True}})
    with caplog.at_level(logging.INFO):  # what a rule's log file gets (core/logs.log_to_file)
        verdict = qa_step.run_qa(config, "m1", ["d/t0.tif", "d/page.tif"])
    [finding] = verdict.findings
    assert (finding.key, finding.check, finding.severity) == ("d/page.tif", "unreadable", "fail")
    assert "/d/page.tif" in finding.detail and "not recognized" in finding.detail
    assert "d/page.tif" in caplog.text  # GDAL's error was logged, and redacted
    for text in (finding.detail, caplog.text):
        for secret in ("Signature", "X-Amz-", "AWSAccessKeyId", "local-access-key", "Expires="):
            assert secret not in text, (secret, text)


def test_redact_removes_only_the_query():
    text = "'/vsicurl/http://h:9/b/a%20b.tif?X-Amz-Signature=abc&X-Amz-Credential=k%2F1' not recognized"
    assert qa_step.redact(text) == "'/vsicurl/http://h:9/b/a%20b.tif' not recognized"


# --------------------------------------------------------------------------------------------- step, batch, aggregate


def test_qa_failed_rows_are_not_converted_and_fail_with_their_reason(seed, buckets, settings, tmp_path):
    upload_tiles(seed, tmp_path)
    config, run_dir = make_run(tmp_path, settings, seed, [*TILES, "d/gone.tif"])

    qa_step.qa_manifest(config, run_dir, "m1")

    local = rows((run_dir / "qa" / "m1.csv").read_bytes())
    assert local == [["key", "check", "severity", "detail"], ["d/utm.tif", "srs_mismatch", "fail", UTM_REASON[14:]]]
    assert rows(all_objects(seed, INPUT_BUCKET)[QA_KEY]) == local  # beside the outcome CSVs, right away
    verdict = json.loads((run_dir / "qa" / "m1.json").read_text())
    assert verdict["failed"] == [{"key": "d/utm.tif", "reason": UTM_REASON}]
    assert [e.key for e in batch_entries(config, run_dir, "m1", 0)] == [
        "d/t0.tif",
        "d/t1.tif",
        "d/t2.tif",
        "d/gone.tif",
    ]

    run_batch(config, run_dir, "m1", 0, run_dir / "status" / "m1" / "batch-00000.jsonl")
    assert "d/utm.tif" not in read_outcomes(run_dir, "m1")
    converted = all_objects(seed, OUTPUT_BUCKET)
    assert {"d/t0.tif", "d/t1.tif", "d/t2.tif"} <= set(converted)
    assert not {"d/utm.tif", "d/utm.jpg"} & set(converted)

    summary = aggregate_manifest(config, run_dir, "m1")
    objs = all_objects(seed, INPUT_BUCKET)
    assert rows(objs[summary["failed_key"]]) == [["d/utm.tif", "3"], ["d/gone.tif", "3"]]
    errors = {r[0]: r[2] for r in rows(objs[summary["errors_key"]])[1:]}
    assert errors["d/utm.tif"] == f"qa: {UTM_REASON}"
    assert "not found" in errors["d/gone.tif"]
    assert {f["key"]: f["code"] for f in summary["failures"]} == {
        "d/utm.tif": "qa-failed",
        "d/gone.tif": "input-missing",
    }
    assert rows(objs[summary["processed_key"]]) == [["d/t0.tif", "3"], ["d/t1.tif", "3"], ["d/t2.tif", "3"]]
    assert FailureCode.QA_FAILED in ADVICE


def test_a_qa_step_that_did_not_finish_is_named_in_the_reason(tmp_path, settings, seed, buckets):
    config, run_dir = make_run(tmp_path, settings, seed, ["d/t0.tif"])
    entries = batch_entries(config, run_dir, "m1", 0)
    assert qa_step.qa_outcomes(config, run_dir, "m1", entries, set()) == {}  # QA not part of the run
    (run_dir / "logs" / "qa").mkdir(parents=True)
    (run_dir / "logs" / "qa" / "m1.log").write_text("QA of m1: cannot list input bucket\n")
    [outcome] = qa_step.qa_outcomes(config, run_dir, "m1", entries, set()).values()
    assert "the delivery QA step did not finish" in outcome.reason and "logs/qa/m1.log" in outcome.reason
    assert qa_step.qa_outcomes({**config, "qa": {"enabled": False}}, run_dir, "m1", entries, set()) == {}


def test_the_plan_has_the_qa_step_only_when_enabled(tmp_path):
    from test_workflow import make_run_dir, snakemake

    for enabled, transfer in ((True, "direct"), (True, "presigned"), (False, "direct")):
        run = make_run_dir(
            tmp_path / f"run-{enabled}-{transfer}",
            3,
            {
                "qa": {"enabled": enabled},
                "s3": {
                    "endpoint_url": "http://127.0.0.1:9",
                    "input_bucket": "in-bucket",
                    "output_bucket": "out-bucket",
                    "transfer": transfer,
                },
            },
        )
        proc = snakemake(run, "-n", "--cores", "1")
        assert proc.returncode == 0, proc.stderr
        assert ("rule qa_delivery:" in proc.stdout) is enabled
        if enabled:  # every batch (and its signing) waits for the verdict
            for rule in ("convert_batch", "presign_batch") if transfer == "presigned" else ("convert_batch",):
                block = proc.stdout.split(f"rule {rule}:")[1].split("\n\n")[0]
                assert "qa/m1.json" in block.split("output:")[0], block


# --------------------------------------------------------------------------------------------- the tick


def run_tick(settings, tmp_path, **kw):
    """A real tick (Snakemake, local executor) in the working directory ``tmp_path/work``."""
    return tick(tick_options(settings, tmp_path / "work", **kw))


def test_the_dry_run_names_missing_inputs_and_qa_findings_without_claiming(
    seed, buckets, settings, tmp_path, capfd, monkeypatch
):
    monkeypatch.delenv("CONDOR_CONFIG", raising=False)
    upload_tiles(seed, tmp_path)
    manifest = "".join(f"{k},3\n" for k in [*TILES, "d/gone.tif"]).encode()
    seed.put_object(Bucket=INPUT_BUCKET, Key="county-raw.csv", Body=manifest)
    before = all_objects(seed, INPUT_BUCKET)

    result = run_tick(settings, tmp_path, dry_run=True, run_overrides={"qa": {"enabled": True}})

    out = capfd.readouterr().out
    assert result.exit_code == 0, out
    assert all_objects(seed, INPUT_BUCKET) == before and all_objects(seed, OUTPUT_BUCKET) == {}
    assert "inputs: 4 of 5 in bucket 'test-input'; 1 row would fail input-missing:" in out
    assert "    missing: line 5: d/gone.tif\n" in out
    assert "QA: 4 headers read; 1 row would fail QA (srs_mismatch 1)" in out
    assert f"    fails: line 3: d/utm.tif: qa: {UTM_REASON}\n" in out
    assert "qa_delivery" in out  # the run's plan has the QA step


def test_the_dry_run_shows_findings_when_qa_is_off(seed, buckets, settings, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("CONDOR_CONFIG", raising=False)
    upload_tiles(seed, tmp_path)
    seed.put_object(Bucket=INPUT_BUCKET, Key="county-raw.csv", Body="".join(f"{k},3\n" for k in TILES).encode())
    result = run_tick(settings, tmp_path, dry_run=True)
    out = capfd.readouterr().out
    assert result.exit_code == 0, out
    assert "inputs: all 4 in bucket 'test-input'" in out
    assert "1 row would fail QA if qa.enabled were true (it is not: converted)" in out
    assert "qa_delivery" not in out


def check_nothing_qa_failed_is_converted(seed, summary, run_dir):
    """The manifest of ``TILES`` came back with its QA-failed row failed, not converted, its reason in the errors
    CSV and its finding in the QA CSV beside it."""
    assert summary["failures"] == [{"line": 3, "key": "d/utm.tif", "code": "qa-failed"}]
    assert summary["processed"] == 3
    out = all_objects(seed, OUTPUT_BUCKET)
    assert not {"d/utm.tif", "d/utm.jpg"} & set(out) and {"d/t0.tif", "d/t2.jpg"} <= set(out)
    objs = all_objects(seed, INPUT_BUCKET)
    errors = rows(objs[summary["errors_key"]])
    assert errors[1] == ["d/utm.tif", "3", f"qa: {UTM_REASON}"]
    [qa_key] = [k for k in objs if k.startswith("county-qa-")]
    assert rows(objs[qa_key])[1][:3] == ["d/utm.tif", "srs_mismatch", "fail"]
    assert (run_dir / "qa" / "m1.json").is_file()


@pytest.mark.slow  # in-process; `make check` has test_qa_failed_rows_are_not_converted_and_fail_with_their_reason
def test_a_run_converts_nothing_qa_failed(seed, buckets, settings, tmp_path):
    """Direct transfers, the claimed run driven in-process (QA step, batch, aggregate)."""
    upload_tiles(seed, tmp_path)
    seed.put_object(Bucket=INPUT_BUCKET, Key="county-raw.csv", Body="".join(f"{k},3\n" for k in TILES).encode())
    opts = tick_options(
        settings, tmp_path / "work", run_overrides={"qa": {"enabled": True}, "s3": {"transfer": "direct"}}
    )

    run, [summary] = claim_and_run(opts)

    check_nothing_qa_failed_is_converted(seed, summary, run.path)


@pytest.mark.slow
def test_a_tick_converts_nothing_qa_failed_with_presigned_urls(seed, buckets, settings, tmp_path):
    """A real tick: Snakemake runs the QA step before the batches' signing and conversion (rules/qa.smk)."""
    upload_tiles(seed, tmp_path)
    seed.put_object(Bucket=INPUT_BUCKET, Key="county-raw.csv", Body="".join(f"{k},3\n" for k in TILES).encode())

    result = run_tick(settings, tmp_path, run_overrides={"qa": {"enabled": True}, "s3": {"transfer": "presigned"}})

    assert result.exit_code == 0
    [summary] = result.manifests
    check_nothing_qa_failed_is_converted(seed, summary, result.run_dir)


def test_a_replaced_object_is_read_again_under_the_same_url(seed, buckets, settings, tmp_path, monkeypatch):
    """Two URLs signed in the same second for one key are the same string: GDAL must not answer from what it
    read under it before (the image was fixed and uploaded again, say)."""
    signed: dict[str, object] = {}
    sign = qa_step.presign.presign_get

    def same_url(client, bucket, key, expires, etag=None):
        return signed.setdefault(key, sign(client, bucket, key, expires, etag))

    monkeypatch.setattr(qa_step.presign, "presign_get", same_url)
    config = config_model.load(run={"s3": s3_section(settings), "qa": {"enabled": True}})
    upload_tiles(seed, tmp_path)
    assert qa_step.run_qa(config, "m1", list(TILES)).failing() == {"d/utm.tif": UTM_REASON}
    (tmp_path / "fixed").mkdir()
    upload_tiles(seed, tmp_path / "fixed", {k: "EPSG:2193" for k in TILES})  # d/utm.tif fixed, same key
    assert qa_step.run_qa(config, "m1", list(TILES)).failing() == {}
