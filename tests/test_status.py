"""`cog-pipeline status` against the real local S3 server, local run directories and a fake schedd."""

from __future__ import annotations

import json

import pytest

from cog_pipeline.ui import status as status_module
from cog_pipeline.ui.cli import main
from cog_pipeline.ui.demo import EXAMPLE_FAILURE_KEY, run_demo
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.control.rundirs import RunLock
from cog_pipeline.control.tick import TickOptions, run_config, write_run
from cog_pipeline.core.naming import ManifestKeys
from cog_pipeline.core.rundir import ClaimedManifest
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, s3_cli_flags
from inprocess import claim_and_run, tick_options


def s3_flags(settings):
    return ["-a", settings.access_key_file, "-s", settings.secret_key_file, "-e", settings.endpoint_url]


@pytest.fixture
def no_schedd(monkeypatch):
    monkeypatch.setenv("CONDOR_CONFIG", "/dev/null")


def test_status_on_an_empty_bucket_and_no_schedd(buckets, settings, tmp_path, capsys, no_schedd):
    assert main(["status", *s3_flags(settings), "--input-bucket", INPUT_BUCKET, "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "waiting (raw):  0" in out and "processing:     0" in out and "Runs in" in out
    assert "no manifest in this bucket yet" in out
    assert "No HTCondor schedd reachable" in out

    assert (
        main(["status", *s3_flags(settings), "--input-bucket", INPUT_BUCKET, "--workdir", str(tmp_path), "--json"]) == 0
    )
    state = json.loads(capsys.readouterr().out)
    assert state["bucket"]["raw"] == [] and state["runs"] == [] and state["htcondor"]["reachable"] is False


def test_status_without_a_bucket_and_with_a_missing_one(settings, s3_server, tmp_path, capsys, no_schedd):
    assert main(["status", "--workdir", str(tmp_path)]) == 0
    assert "Input bucket" not in capsys.readouterr().out
    unfinished_run(tmp_path)
    assert main(["status", *s3_flags(settings), "--input-bucket", "no-such-bucket", "--workdir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if "cannot list bucket 'no-such-bucket'" in line]
    assert line.startswith("Input bucket: S3 UNREACHABLE")
    assert "workflow-run-20260102-030405" in out and "HTCondor" in out, "local runs and the pool are still shown"


def test_status_with_s3_unreachable_still_shows_local_runs_and_the_pool(settings, tmp_path, capsys, no_schedd):
    import socket

    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unfinished_run(tmp_path)
    flags = ["-a", settings.access_key_file, "-s", settings.secret_key_file, "-e", f"http://127.0.0.1:{port}"]
    code = main(["status", *flags, "--input-bucket", INPUT_BUCKET, "--workdir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and captured.err == ""
    assert "Input bucket: S3 UNREACHABLE: cannot list bucket" in captured.out
    assert "Runs in" in captured.out and "workflow-run-20260102-030405" in captured.out
    assert "HTCondor" in captured.out
    assert main(["status", *flags, "--input-bucket", INPUT_BUCKET, "--workdir", str(tmp_path), "--json"]) == 1
    state = json.loads(capsys.readouterr().out)
    assert "cannot list bucket" in state["bucket_error"] and len(state["runs"]) == 1


@pytest.mark.slow
def test_status_counts_manifests_and_runs(seed, buckets, settings, samples, tmp_path, capsys, no_schedd):
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "a.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="set1-raw.csv", Body=b"a.tif,1\nmissing.tif,1\n")
    work = tmp_path / "work"
    claim_and_run(tick_options(settings, work))  # a run driven in-process, finished as a tick leaves it
    seed.put_object(Bucket=INPUT_BUCKET, Key="set2-raw.csv", Body=b"a.tif,1\n")
    seed.put_object(Bucket=INPUT_BUCKET, Key="set3-processing-20260101-000000.csv", Body=b"a.tif,1\n")
    capsys.readouterr()

    assert main(["status", *s3_flags(settings), "--input-bucket", INPUT_BUCKET, "--workdir", str(work), "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in state["bucket"]["raw"]] == ["set2-raw.csv"]
    assert [p["key"] for p in state["bucket"]["processing"]] == ["set3-processing-20260101-000000.csv"]
    assert state["bucket"]["processing"][0]["age_s"] > 0 and state["bucket"]["processing"][0]["stale"] is False
    finished = state["bucket"]["finished"]
    assert len(finished) == 1 and finished[0]["processed_rows"] == 1 and finished[0]["failed_rows"] == 1
    assert finished[0]["report"].startswith("set1-report-") and finished[0]["failed"].startswith("set1-failed-")
    run = state["runs"][0]
    assert (run["state"], run["done"], run["failed"], run["pending"]) == ("finished", 1, 1, 0)
    assert run["report"].endswith("report.html") and run["manifests"] == ["set1-raw.csv"]

    assert main(["status", *s3_flags(settings), "--input-bucket", INPUT_BUCKET, "--workdir", str(work)]) == 0
    text = capsys.readouterr().out
    assert "…" not in text and f"{finished[0]['processed']}  1 processed, 1 failed" in text
    assert "(1 with failed rows)" in text
    assert f"cog-pipeline retry -a KEY -s KEY -e HOST --input-bucket {INPUT_BUCKET} {finished[0]['failed']}" in text
    assert "finished: 1 processed, 1 failed, 0 pending, took" in text


def test_a_processing_manifest_without_heartbeat_is_flagged_stale(
    seed, buckets, settings, monkeypatch, tmp_path, capsys, no_schedd
):
    seed.put_object(Bucket=INPUT_BUCKET, Key="old-processing-20260101-000000.csv", Body=b"a.tif,1\n")
    monkeypatch.setattr(status_module, "STALE_AFTER", -1.0)
    assert main(["status", *s3_flags(settings), "--input-bucket", INPUT_BUCKET, "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "processing:     1  (1 STALE)" in out and "its run may have died" in out


def unfinished_run(workdir, run_id="20260102-030405", executor="local"):
    """A run directory as a tick leaves it (run.yaml written by the tick's own run_config / write_run), one
    batch of its manifest recorded: a.tif ok, b.tif failed, c.tif pending."""
    run = workdir / f"workflow-run-{run_id}"
    run.mkdir(parents=True)
    opts = TickOptions(input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, executor=executor, workdir=workdir)
    manifest = ClaimedManifest.of("m1", "manifests/m1.csv", ManifestKeys.for_raw("x-raw.csv", run_id))
    write_run(run, run_config(opts, run_id, [manifest]), {"m1": b"a.tif,1\nb.tif,1\nc.tif,1\n"})
    (run / "status" / "m1").mkdir(parents=True)
    (run / "status" / "m1" / "batch-00000.jsonl").write_text(
        '{"key": "a.tif", "status": "ok"}\n{"key": "b.tif", "status": "failed"}\n'
    )
    return run


def test_local_runs_say_running_or_stalled(tmp_path, no_schedd):
    run = unfinished_run(tmp_path)
    lock = RunLock.acquire(run)
    try:
        [shown] = status_module.local_runs(tmp_path)
        assert (shown["state"], shown["done"], shown["failed"], shown["pending"]) == ("running", 1, 1, 1)
    finally:
        lock.release()
    [shown] = status_module.local_runs(tmp_path)
    assert shown["state"].startswith("stalled") and "next tick" in shown["state"]
    assert shown["elapsed_s"] > 0 and shown["report"] is None


def test_local_runs_count_rows_as_the_bucket_does(tmp_path, no_schedd):
    """Rejected rows are failed rows (as in the failed CSV); a finished manifest has nothing pending, even when a
    removed batch recorded nothing (seen on a pool: "4 done, 1 failed, 2 pending" beside "4 processed, 3 failed")."""
    import json as json_

    run = unfinished_run(tmp_path)
    (run / "manifests" / "m1.csv").write_text("a.tif,1\nb.tif,1\nc.tif,1\n/bad.tif,1\nd.png,1\n")
    [shown] = status_module.local_runs(tmp_path)
    assert (shown["done"], shown["failed"], shown["pending"]) == (1, 3, 1)

    (run / "outcome").mkdir()
    (run / "outcome" / "m1.json").write_text(json_.dumps({"processed": 1, "failed": 4, "notes": []}))
    [shown] = status_module.local_runs(tmp_path)
    assert (shown["state"], shown["done"], shown["failed"], shown["pending"]) == ("finished", 1, 4, 0)


def test_a_run_yaml_the_loader_refuses_is_shown_invalid_with_its_reason(tmp_path, capsys, no_schedd):
    """A hand-made or damaged run.yaml (here: no s3 section, a codec GDAL does not have) is one line naming the
    loader's reason; the other runs are still shown, and status does not fail."""
    import yaml

    unfinished_run(tmp_path)
    bad = tmp_path / "workflow-run-20260103-000000"
    bad.mkdir()
    (bad / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "run_id": "20260103-000000",
                "cog": {"compress": "WINZIP"},
                "manifests": [{"id": "m1", "csv": "manifests/m1.csv"}],
            }
        )
    )
    broken = tmp_path / "workflow-run-20260104-000000"
    broken.mkdir()
    (broken / "run.yaml").write_text("manifests: [unclosed\n")
    claiming = tmp_path / "workflow-run-20260105-000000"
    (claiming / "claims").mkdir(parents=True)

    good, invalid, unreadable, incomplete = status_module.local_runs(tmp_path)
    assert good["state"].startswith("stalled") and (good["done"], good["failed"], good["pending"]) == (1, 1, 1)
    assert invalid["state"].startswith("invalid") and "cog.compress" in invalid["problem"]
    assert "WINZIP" in invalid["state"] and str(bad / "run.yaml") in invalid["problem"]
    assert "done" not in invalid
    assert unreadable["state"].startswith("invalid") and "not valid YAML" in unreadable["problem"]
    assert incomplete["state"].startswith("incomplete") and "problem" not in incomplete

    assert main(["status", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if "workflow-run-20260103-000000" in line]
    assert "invalid (ticks leave it alone; fix or remove its run.yaml)" in line and "cog.compress" in line
    assert "workflow-run-20260102-030405  stalled" in out


def test_pool_jobs_are_grouped_by_batch_name(tmp_path, monkeypatch, capsys):
    from cog_pipeline import htcondor

    jobs = [
        {
            "cluster": 10,
            "batch_name": "COG-Pipeline-Crondor-*raw.csv",
            "role": "crondor",
            "run": "",
            "status": "waiting for its next tick",
            "next_run": 1767323100,
            "hold_reason": "",
            "queued": 0,
        },
        {
            "cluster": 11,
            "batch_name": "COG-Pipeline-DAG-*raw.csv",
            "role": "driver",
            "run": "20260102-030405",
            "status": "running",
            "hold_reason": "",
            "queued": 0,
        },
        {
            "cluster": 12,
            "batch_name": "COG-Pipeline-DAG-*raw.csv",
            "role": "batch",
            "run": "20260102-030405",
            "status": "held",
            "hold_reason": "Memory usage exceeded request_memory",
            "queued": 0,
        },
    ]
    monkeypatch.setattr(htcondor, "pipeline_jobs", lambda: jobs)
    unfinished_run(tmp_path, executor="htcondor")
    assert main(["status", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "HTCondor jobs of this pipeline: 3" in out
    assert "COG-Pipeline-Crondor-*raw.csv  (crondor): 1 waiting for its next tick (next at 03:05:00 UTC)" in out
    assert "COG-Pipeline-DAG-*raw.csv  (batch/driver runs 20260102-030405): 1 held, 1 running" in out
    assert "held 12: Memory usage exceeded request_memory" in out
    assert "held on the pool" in out

    monkeypatch.setattr(htcondor, "pipeline_jobs", lambda: (_ for _ in ()).throw(PipelineError("no schedd here")))
    assert main(["status", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "HTCondor: no schedd here" in out and "pool run; no schedd to ask" in out


@pytest.mark.slow
def test_status_and_retry_work_against_the_demo_bucket(tmp_path, capsys, no_schedd):
    """The demo's own S3 server, while it is still up (what `cog-pipeline demo --serve` offers)."""
    seen = {}

    def operate(settings, result):
        flags = s3_cli_flags(settings, "cog-demo-input", output_bucket=None)
        capsys.readouterr()
        seen["status"] = main(["status", *flags, "--workdir", str(tmp_path), "--json"])
        seen["state"] = json.loads(capsys.readouterr().out)
        seen["retry"] = main(["retry", *flags, "--dry-run", result.manifests[0]["failed_key"]])
        seen["retry_out"] = capsys.readouterr().out

    assert run_demo(tmp_path, after=operate) == 0
    assert seen["status"] == 0 and seen["retry"] == 0
    [finished] = seen["state"]["bucket"]["finished"]
    # The demo's one deliberate failure (not a GeoTIFF), counted the same way in the bucket and the run.
    assert (finished["processed_rows"], finished["failed_rows"]) == (6, 1) and seen["state"]["bucket"]["raw"] == []
    [run] = seen["state"]["runs"]
    assert (run["state"], run["done"], run["failed"], run["pending"]) == ("finished", 6, 1, 0)
    assert "Would queue 1 row as" in seen["retry_out"] and EXAMPLE_FAILURE_KEY in seen["retry_out"]
    assert len(list((tmp_path).glob("workflow-run-*/logs/images/imagery/*/*.log"))) == 7


def test_status_shows_only_the_manifests_of_its_pattern(seed, buckets, settings, tmp_path, capsys, no_schedd):
    """Two pipelines can watch one bucket with different -p patterns (seen on a pool: the other
    pattern's finished manifests were listed too)."""
    for key in (
        "c1-processed-20260101-000000.csv",
        "v1-processed-20260101-000000.csv",
        "c2-processing-20260101-000000.csv",
        "v2-processing-20260101-000000.csv",
        "in-processed-20260101-000000.csv",
    ):
        seed.put_object(Bucket=INPUT_BUCKET, Key=key, Body=b"a.tif,1\n")
    seed.put_object(Bucket=INPUT_BUCKET, Key="c3-raw.csv", Body=b"a.tif,1\n")
    seed.put_object(Bucket=INPUT_BUCKET, Key="v3-raw.csv", Body=b"a.tif,1\n")

    def state(pattern):
        assert (
            main(
                [
                    "status",
                    *s3_flags(settings),
                    "--input-bucket",
                    INPUT_BUCKET,
                    "--workdir",
                    str(tmp_path),
                    "-p",
                    pattern,
                    "--json",
                ]
            )
            == 0
        )
        bucket = json.loads(capsys.readouterr().out)["bucket"]
        return (
            [r["key"] for r in bucket["raw"]],
            [p["key"] for p in bucket["processing"]],
            sorted(f["stem"] for f in bucket["finished"]),
        )

    assert state("c*raw.csv") == (["c3-raw.csv"], ["c2-processing-20260101-000000.csv"], ["c1-"])
    assert state("*raw.csv")[2] == ["c1-", "in-", "v1-"]
    assert state("in.csv") == ([], [], ["in-"])  # a manifest not named ...raw.csv: in.csv -> in-processed-...


@pytest.mark.parametrize(
    "ad, shown",
    [
        ({"JobStatus": 2, "DeferralTime": 10_060}, ("waiting for its next tick", 10_060)),  # starter waiting
        ({"JobStatus": 1, "DeferralTime": 10_060}, ("waiting for its next tick", 10_060)),
        ({"JobStatus": 2, "DeferralTime": 9_940}, ("running", None)),  # the tick itself runs
        ({"JobStatus": 1, "DeferralTime": 9_940}, ("starting its tick", None)),  # due, not started yet
        ({"JobStatus": 1}, ("idle", None)),  # not a deferred job
        ({"JobStatus": 2}, ("running", None)),  # not a deferred job
        ({"JobStatus": 5, "DeferralTime": 10_060}, ("held", None)),
    ],
)
def test_a_crondor_between_ticks_is_shown_waiting(monkeypatch, ad, shown):
    """Seen on a pool: a Crondor stays Running (its starter waits for DeferralTime) between ticks."""
    from cog_pipeline import htcondor

    base = {"ClusterId": 7, "ProcId": 0, "JobBatchName": "COG-Pipeline-Crondor-*raw.csv", "CogPipelineRole": "crondor"}
    monkeypatch.setattr(htcondor.schedd, "connect", lambda: object())
    monkeypatch.setattr(htcondor.schedd, "query", lambda schedd, constraint, projection: [{**base, **ad}])
    monkeypatch.setattr(htcondor.schedd.time, "time", lambda: 10_000.0)
    [job] = htcondor.pipeline_jobs()
    assert (job["status"], job["next_run"]) == shown
