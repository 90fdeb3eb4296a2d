"""End to end: manifest in the input bucket -> tick (local Snakemake) -> outputs + outcome CSVs. The batch's and the
aggregate's own behaviour (sorting rows, skipping finished images) is tested on runs driven in-process
(tests/inprocess.py); the tick's (claiming, ticks.log, the command) on real ticks."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from cog_pipeline.core.errors import PipelineError
from cog_pipeline.control.tick import tick
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects, one_manifest_config, s3_cli_flags
from inprocess import claim_and_run, tick_options

GOOD = {
    "imagery/rgb.tif": "RGB.byte.tif",
    "imagery/county scans/shade é.tif": "shade.tif",
    "imagery/small/byte.tif": "byte.tif",
}


def upload_samples(seed, samples, mapping=GOOD):
    for key, name in mapping.items():
        seed.upload_file(str(samples / name), INPUT_BUCKET, key)


def run_tick(settings, tmp_path, **kw):
    """A real tick (Snakemake, local executor) in the working directory ``tmp_path/work``."""
    return tick(tick_options(settings, tmp_path / "work", **kw))


def outcome_files(seed, stem="batch-"):
    objs = all_objects(seed, INPUT_BUCKET)

    def one(kind):
        keys = [k for k in objs if k.startswith(stem + kind + "-")]
        assert len(keys) == 1, (kind, sorted(objs))
        return keys[0], objs[keys[0]].decode("utf-8")

    return objs, one("processed"), one("failed"), one("errors")


def rows(text):
    return [r for r in csv.reader(io.StringIO(text)) if r]


@pytest.mark.slow
def test_mixed_batch_sorts_every_row_and_loses_nothing(seed, buckets, settings, samples, tmp_path):
    upload_samples(seed, samples)
    seed.put_object(Bucket=INPUT_BUCKET, Key="imagery/empty.tif", Body=b"")
    seed.put_object(Bucket=INPUT_BUCKET, Key="imagery/notatiff.tif", Body=b"\x89PNG\r\n\x1a\nnot a tiff at all")
    truncated = (samples / "shade.tif").read_bytes()[:200_000]
    seed.put_object(Bucket=INPUT_BUCKET, Key="imagery/truncated.tif", Body=truncated)
    manifest = (
        "\ufeffkey,bands\r\n"
        "imagery/rgb.tif,3\r\n"
        "imagery/county scans/shade é.tif,1\r\n"
        "\r\n"
        "imagery/small/byte.tif,3\r\n"  # wrong band count: the file (1) wins, row processed
        "/imagery/rgb.tif,3\r\n"  # leading slash
        "imagery/rgb.png,3\r\n"  # not .tif
        "imagery/nobands.tif\r\n"  # missing band count
        "imagery/x.tif,three\r\n"  # non-integer
        "imagery/zero.tif,0\r\n"  # zero bands
        "imagery/extra.tif,3,oops\r\n"  # extra column
        "imagery/rgb.tif,3\r\n"  # duplicate
        "imagery/../../etc/passwd.tif,1\r\n"  # path traversal
        "imagery/missing.tif,3\r\n"  # no such object
        "imagery/empty.tif,1\r\n"  # zero-byte object
        "imagery/notatiff.tif,1\r\n"  # not a TIFF
        "imagery/truncated.tif,1\r\n"  # truncated TIFF
    ).encode("utf-8")
    seed.put_object(Bucket=INPUT_BUCKET, Key="batch-raw.csv", Body=manifest)
    inputs_before = {k: v for k, v in all_objects(seed, INPUT_BUCKET).items() if k.endswith(".tif")}

    _run, summaries = claim_and_run(tick_options(settings, tmp_path / "work"))  # batch and aggregate in-process

    assert [(m["raw_key"], m["processed"], m["failed"]) for m in summaries] == [("batch-raw.csv", 3, 12)]
    objs, (pkey, processed), (fkey, failed), (_ekey, errors) = outcome_files(seed)
    assert "batch-raw.csv" not in objs
    assert not [k for k in objs if "processing" in k], "processing file must be deleted"
    assert pkey.removeprefix("batch-processed-") == fkey.removeprefix("batch-failed-")
    assert rows(processed) == [
        ["imagery/rgb.tif", "3"],
        ["imagery/county scans/shade é.tif", "1"],
        ["imagery/small/byte.tif", "3"],
    ]
    reasons = {r[0]: r[2] for r in rows(errors)[1:]}
    assert rows(errors)[0] == ["key", "bands", "reason"]
    expected_reasons = {
        "/imagery/rgb.tif": "/",
        "imagery/rgb.png": ".tif",
        "imagery/nobands.tif": "band",
        "imagery/x.tif": "integer",
        "imagery/zero.tif": "positive",
        "imagery/extra.tif": "column",
        "imagery/rgb.tif": "duplicate",
        "imagery/../../etc/passwd.tif": "..",
        "imagery/missing.tif": "not found",
        "imagery/empty.tif": "empty",
        "imagery/notatiff.tif": "TIFF",
        "imagery/truncated.tif": "open: file is truncated or corrupt",
    }
    assert set(reasons) == set(expected_reasons)
    for key, fragment in expected_reasons.items():
        assert fragment in reasons[key], (key, reasons[key])
    # Failed rows keep the original two columns, so the file can be renamed back to -raw.csv.
    assert all(len(r) == 2 for r in rows(failed)) and len(rows(failed)) == len(expected_reasons)
    # Union of processed + failed = every data row (blank line and header excluded).
    data_lines = [line for line in manifest.decode("utf-8-sig").splitlines()[1:] if line.strip()]
    assert len(rows(processed)) + len(rows(failed)) == len(data_lines)
    # Inputs untouched; outputs only for the good rows, each a valid COG with the input's pixels.
    after = all_objects(seed, INPUT_BUCKET)
    assert all(after[k] == v for k, v in inputs_before.items())
    out = all_objects(seed, OUTPUT_BUCKET)
    # COG, JPEG (with its world file and .aux.xml: georeferenced samples) and STAC Item per good row.
    assert sorted(out) == sorted(
        k[:-4] + ext for k in GOOD for ext in (".tif", ".jpg", ".jgw", ".jpg.aux.xml", ".json")
    )
    for key, name in GOOD.items():
        cog = tmp_path / "check.tif"
        cog.write_bytes(out[key])
        assert cog_validate(str(cog), quiet=True)[0]
        with rasterio.open(cog) as c, rasterio.open(samples / name) as s:
            assert np.array_equal(c.read(), s.read())
            assert c.profile["compress"].lower() == "lzw"
    # Nothing escaped the run's temp dirs.
    assert not (tmp_path / "etc").exists()


def cli_tick(settings, workdir, *flags):
    """``cog-pipeline tick`` as a command on the test buckets (its own Python, as cron or a Crondor runs it)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cog_pipeline.ui.cli",
            "tick",
            *s3_cli_flags(settings),
            *flags,
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_a_command_tick_then_a_rerun_of_its_manifest_skips_finished_images(seed, buckets, settings, samples, tmp_path):
    """Two real ticks of one manifest (in a folder) in one working directory: the first as the command, the second
    skips every finished image and rewrites no output; ticks.log keeps every claim and every run's outcome."""
    upload_samples(seed, samples)
    body = b"imagery/rgb.tif,3\nimagery/small/byte.tif,1\n"
    seed.put_object(Bucket=INPUT_BUCKET, Key="x/run1-raw.csv", Body=body)
    proc = cli_tick(settings, tmp_path / "work", "-p", "*raw.csv")
    assert proc.returncode == 0, proc.stderr
    assert "x/run1-raw.csv: 2 processed, 0 failed" in proc.stdout
    assert [k for k in all_objects(seed, INPUT_BUCKET) if k.startswith("x/run1-processed-")]
    first = {o["Key"]: o["LastModified"] for o in seed.list_objects_v2(Bucket=OUTPUT_BUCKET)["Contents"]}

    seed.put_object(Bucket=INPUT_BUCKET, Key="x/run1-raw.csv", Body=body)
    second = run_tick(settings, tmp_path)
    assert second.exit_code == 0 and second.manifests[0]["processed"] == 2
    status = (second.run_dir / "status" / "m1" / "batch-00000.jsonl").read_text()
    assert status.count('"status": "skipped"') == 2
    again = {o["Key"]: o["LastModified"] for o in seed.list_objects_v2(Bucket=OUTPUT_BUCKET)["Contents"]}
    assert again == first, "finished outputs must not be rewritten"

    # every tick that claimed something left a line in ticks.log (crondor_<cluster>.out keeps only the last tick)
    lines = (tmp_path / "work" / "ticks.log").read_text().splitlines()
    claimed = [line for line in lines if ": Claimed x/run1-raw.csv -> x/run1-processing-" in line]
    assert len(claimed) == 2 and all(line.endswith(".csv") and " UTC pid " in line for line in claimed)
    assert sum(f"Run directory: {second.run_dir}" in line for line in lines) == 1
    # ...and every run its outcome, from the driver's final step: counts, manifests, report
    finished = [line for line in lines if " finished: " in line]
    assert finished == [line for line in finished if " UTC " in line] and len(finished) == 2, lines
    run_id = second.run_dir.name.removeprefix("workflow-run-")
    assert finished[1].endswith(
        f" {run_id} finished: 2 processed, 0 failed (x/run1-raw.csv) report {second.run_dir / 'report.html'}"
    ), finished[1]
    assert lines.index(finished[1]) > next(i for i, line in enumerate(lines) if str(second.run_dir) in line)


@pytest.mark.slow  # in-process, but `make check` has the same case in test_batch_requests_per_image_and_skip_if_done
def test_changed_input_is_converted_again(seed, buckets, settings, samples, tmp_path):
    opts = tick_options(settings, tmp_path / "work")
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "a.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="batch-raw.csv", Body=b"a.tif,1\n")
    _run, [first] = claim_and_run(opts)
    assert first["processed"] == 1
    seed.upload_file(str(samples / "shade.tif"), INPUT_BUCKET, "a.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="batch-raw.csv", Body=b"a.tif,1\n")
    run, _ = claim_and_run(opts)
    assert '"status": "ok"' in run.status_file("m1", "00000").read_text()
    cog = tmp_path / "a.tif"
    seed.download_file(OUTPUT_BUCKET, "a.tif", str(cog))
    with rasterio.open(cog) as c:
        assert (c.width, c.height) == (1024, 1024)


def test_dry_run_changes_nothing(seed, buckets, settings, samples, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("CONDOR_CONFIG", raising=False)  # a machine without HTCondor
    upload_samples(seed, samples)
    seed.put_object(Bucket=INPUT_BUCKET, Key="batch-raw.csv", Body=b"imagery/rgb.tif,3\n/bad.tif,1\n")
    seed.put_object(
        Bucket=INPUT_BUCKET,
        Key="more-raw.csv",
        Body=b"imagery/rgb.tif,3\nimagery/small/byte.tif,1\n/bad.tif,1\nx.png,1\n",
    )
    before_in, before_out = all_objects(seed, INPUT_BUCKET), all_objects(seed, OUTPUT_BUCKET)

    result = run_tick(settings, tmp_path, dry_run=True, run_overrides={"batch_size": 1})

    assert result.exit_code == 0
    assert all_objects(seed, INPUT_BUCKET) == before_in
    assert all_objects(seed, OUTPUT_BUCKET) == before_out
    assert not list((tmp_path / "work").glob("workflow-run-*"))
    captured = capfd.readouterr()
    out = captured.out
    # counts with their nouns, singular and plural (not "1 rows ... 1 batches")
    assert "Would claim batch-raw.csv" in out and "1 row to convert in 1 batch, 1 rejected row\n" in out
    assert "Would claim more-raw.csv" in out and "2 rows to convert in 2 batches, 2 rejected rows\n" in out
    assert "convert_batch" in out  # Snakemake's own plan is printed
    assert "CONDOR_CONFIG" not in out + captured.err  # no HTCondor warning in a local plan
    # one plan: Snakemake's job counts once, without its banner (host, user, platform)
    assert out.count("Job stats:") == 1, out
    assert "Host:" not in out + captured.err and "User:" not in out + captured.err


def test_pool_dry_run_needs_no_schedd_and_prints_no_htcondor_warning(
    seed, buckets, settings, samples, tmp_path, capfd, monkeypatch
):
    """``tick --executor htcondor --dry-run`` on a machine without HTCondor: the pool's plan, no warning."""
    monkeypatch.delenv("CONDOR_CONFIG", raising=False)
    upload_samples(seed, samples)
    seed.put_object(Bucket=INPUT_BUCKET, Key="batch-raw.csv", Body=b"imagery/rgb.tif,3\n")
    result = run_tick(settings, tmp_path, dry_run=True, executor="htcondor")
    captured = capfd.readouterr()
    assert result.exit_code == 0, captured.out + captured.err
    assert "Would claim batch-raw.csv" in captured.out and "convert_batch" in captured.out
    assert "CONDOR_CONFIG" not in captured.out + captured.err


def test_no_matching_manifest_does_nothing(seed, buckets, settings, tmp_path, capsys):
    seed.put_object(Bucket=INPUT_BUCKET, Key="notes.txt", Body=b"x")
    result = run_tick(settings, tmp_path)
    assert result.run_dir is None and result.exit_code == 0
    assert "nothing to do" in capsys.readouterr().out
    assert not (tmp_path / "work" / "ticks.log").exists()  # a tick that did nothing leaves no line


def test_pipeline_objects_are_never_taken_for_manifests(seed, buckets, settings, tmp_path):
    for key in (
        "a-processed-20260101-000000.csv",
        "a-failed-20260101-000000.csv",
        "a-errors-20260101-000000.csv",
        "a-processing-20260101-000000.csv",
        ".cog-pipeline/claims/a-raw.csv@abc",
    ):
        seed.put_object(Bucket=INPUT_BUCKET, Key=key, Body=b"x.tif,1\n")
    before = all_objects(seed, INPUT_BUCKET)
    result = run_tick(settings, tmp_path, pattern="*")
    assert result.run_dir is None
    assert all_objects(seed, INPUT_BUCKET) == before


def test_missing_output_bucket_fails_before_claiming(seed, settings, tmp_path):
    seed.create_bucket(Bucket=INPUT_BUCKET)
    seed.put_object(Bucket=INPUT_BUCKET, Key="batch-raw.csv", Body=b"a.tif,1\n")
    with pytest.raises(PipelineError, match="output bucket 'test-output' does not exist"):
        run_tick(settings, tmp_path)
    assert list(all_objects(seed, INPUT_BUCKET)) == ["batch-raw.csv"]


def test_unreachable_endpoint_is_a_clear_error(key_files, tmp_path):
    from cog_pipeline.storage.s3 import S3Settings

    settings = S3Settings(
        endpoint_url="http://127.0.0.1:9",
        access_key_file=str(key_files[0]),
        secret_key_file=str(key_files[1]),
        max_attempts=1,
        connect_timeout=1,
    )
    with pytest.raises(PipelineError, match="cannot connect"):
        run_tick(settings, tmp_path)


def test_aggregate_runs_even_when_no_job_finished(seed, buckets, settings, samples, tmp_path):
    """The final step (as the driver runs it after a failed Snakemake) accounts for every row."""
    from cog_pipeline.control import driver

    upload_samples(seed, samples)
    seed.put_object(Bucket=INPUT_BUCKET, Key="batch-raw.csv", Body=b"imagery/rgb.tif,3\n/bad.tif,1\n")
    real = driver.run_snakemake
    driver.run_snakemake = lambda *a, **k: 1  # as if every job had died
    try:
        result = run_tick(settings, tmp_path)
    finally:
        driver.run_snakemake = real
    assert result.exit_code == 0
    _objs, (_, processed), (_, failed), (_, errors) = outcome_files(seed)
    assert processed == ""
    assert rows(failed) == [["imagery/rgb.tif", "3"], ["/bad.tif", "1"]]
    assert "did not finish" in errors


def test_cli_reports_bad_bucket_without_traceback(settings, s3_server, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cog_pipeline.ui.cli",
            "tick",
            *s3_cli_flags(settings, "nope-in", "nope-out"),
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "input bucket 'nope-in' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_batch_requests_per_image_and_skip_if_done(seed, buckets, settings, samples, tmp_path, monkeypatch):
    """One batch: one listing of its outputs, then per image one HeadObject (the input), no
    HeadObject for outputs that do not exist yet and one per output uploaded (to confirm it); a rerun skips
    every image (HeadObject of the COG for its source ETag), and an input replaced since is converted again."""
    import json

    from cog_pipeline.work import batch
    from cog_pipeline.storage import s3

    upload_samples(seed, samples)
    run_dir = tmp_path / "run"
    (run_dir / "manifests").mkdir(parents=True)
    (run_dir / "manifests" / "m.csv").write_bytes("".join(f"{k},1\n" for k in GOOD).encode())
    config = one_manifest_config(
        {
            "endpoint_url": settings.endpoint_url,
            "access_key_file": settings.access_key_file,
            "secret_key_file": settings.secret_key_file,
        }
    )
    counts: dict[str, int] = {}
    real = s3.make_client

    def counting_client(*args, **kwargs):
        client = real(*args, **kwargs)
        client.meta.events.register(
            "before-call.s3", lambda model, **_: counts.__setitem__(model.name, counts.get(model.name, 0) + 1)
        )
        return client

    monkeypatch.setattr(s3, "make_client", counting_client)
    first = batch.run_batch(config, run_dir, "m1", 0, run_dir / "status" / "b0.jsonl", threads=1)
    assert [r.status for r in first] == ["ok"] * 3
    # outputs per image: COG, JPEG and (georeferenced samples) the JPEG's world file and .aux.xml
    assert counts["ListObjectsV2"] == 1 and counts["HeadObject"] == 3 + 3 * 4, counts
    assert counts["PutObject"] == 3 * 4 and counts["GetObject"] == 3, counts

    counts.clear()
    again = batch.run_batch(config, run_dir, "m1", 0, run_dir / "status" / "b1.jsonl", threads=1)
    assert [r.status for r in again] == ["skipped"] * 3
    assert counts == {"ListObjectsV2": 1, "HeadObject": 6}, counts

    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "imagery/rgb.tif")  # a new input object
    third = batch.run_batch(config, run_dir, "m1", 0, run_dir / "status" / "b2.jsonl", threads=1)
    assert [r.status for r in third] == ["ok", "skipped", "skipped"]
    etag = seed.head_object(Bucket=INPUT_BUCKET, Key="imagery/rgb.tif")["ETag"]
    cog = seed.head_object(Bucket=OUTPUT_BUCKET, Key="imagery/rgb.tif")
    assert cog["Metadata"][batch.SOURCE_ETAG_META] == etag
    assert json.loads((run_dir / "status" / "b2.jsonl").read_text().splitlines()[0])["file_bands"] == 1
