"""The typed run directory (core/rundir.py): one loader of run.yaml, typed claimed manifests, the life cycle
decided in one place; claims return what they claimed; a dry run prints one plan."""

from __future__ import annotations

import json

import pytest
import yaml

from cog_pipeline.control.claims import Claim, claim
from cog_pipeline.control.driver import job_stats
from cog_pipeline.control.rundirs import new_run_dir, run_config, unfinished_runs_exist, write_pending, write_run
from cog_pipeline.control.tick import TickOptions
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import ManifestKeys
from cog_pipeline.core.rundir import ClaimedManifest, RunConfig, RunDir, RunState
from cog_pipeline.storage import s3
from cog_pipeline.storage.endpoint import Semantics
from cog_pipeline.work.manifest import read_manifest
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects

KEYS = ManifestKeys.for_raw("county/a-raw.csv", "20260101-000000")
M1 = ClaimedManifest.of("m1", "manifests/a-processing-20260101-000000.csv", KEYS)


def options(workdir, **kw):
    return TickOptions(input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, workdir=workdir, **kw)


def test_the_life_cycle_is_one_state(tmp_path):
    opts = options(tmp_path)
    ts, run = new_run_dir(tmp_path)
    assert run.state is RunState.NEW
    write_pending(run, run_config(opts, ts, []))
    assert run.state is RunState.CLAIMING and run.pending_config is not None
    write_run(run, run_config(opts, ts, [M1]), {"m1": b"a.tif,1\nb.tif,2\n"})
    assert run.state is RunState.CONFIGURED
    assert unfinished_runs_exist(tmp_path)
    run.outcome("m1").parent.mkdir()
    run.outcome("m1").write_text('{"finished": false}')  # CSVs written, report or processing delete pending
    assert run.state is RunState.CONFIGURED
    run.outcome("m1").write_text("{}")  # a summary of an older version (written once, at the end)
    assert run.state is RunState.AGGREGATED and run.done
    assert unfinished_runs_exist(tmp_path), "only the finished marker ends a run (nothing may still drive it)"
    run.mark_finished()
    assert run.state is RunState.FINISHED and not unfinished_runs_exist(tmp_path)
    assert run.resumes == 0 and run.count_resume() == 1 and RunDir(run.path).resumes == 1


def test_an_unreadable_or_invalid_run_yaml_is_its_own_state(tmp_path):
    run = RunDir(tmp_path / "workflow-run-20260101-000000")
    run.path.mkdir()
    run.config_file.write_text(yaml.safe_dump({"cog": {"compress": "WINZIP"}}))
    assert run.state is RunState.INVALID
    problem = run.problem()
    assert problem is not None and "cog.compress" in problem and "WINZIP" in problem
    assert run.config_or_pending() is None
    run.config_file.write_text("manifests: [unclosed\n")
    run.reload()
    assert run.state is RunState.INVALID and "not valid YAML" in str(run.problem())


def test_config_is_loaded_once_deep_merged_and_typed(tmp_path):
    run = RunDir(tmp_path)
    run.config_file.write_text(
        yaml.safe_dump(
            {
                "run_id": "20260101-000000",
                "executor": "htcondor",
                "cog": {"compress": "zstd"},
                "batch_size": 3,
                "s3": {"input_bucket": "in-bucket", "output_bucket": "out-bucket"},
                "manifests": [M1.to_dict()],
            }
        )
    )
    config = run.config
    assert config.data["cog"]["compress"] == "ZSTD" and config.data["cog"]["blocksize"] == 512  # deep merge
    assert (config.run_id, config.executor, config.batch_size) == ("20260101-000000", "htcondor", 3)
    assert (config.input_bucket, config.output_bucket) == ("in-bucket", "out-bucket")
    assert run.manifests == (M1,) and config.manifest("m1").keys.processed == KEYS.processed
    with pytest.raises(PipelineError, match="no manifest with id 'm7'"):
        config.manifest("m7")
    run.config_file.write_text(yaml.safe_dump({"batch_size": 9}))
    assert run.config is config, "read once"
    run.reload()
    assert run.config.batch_size == 9 and run.manifests == ()
    with pytest.raises(PipelineError, match=r"s3\.input_bucket is not set"):
        _ = run.config.input_bucket


def test_a_missing_run_yaml_names_the_directory(tmp_path):
    with pytest.raises(PipelineError, match=r"run\.yaml not found: is .* a workflow-run directory"):
        RunDir(tmp_path).config  # noqa: B018


def test_a_run_config_of_snakemake_is_read_the_same_way():
    config = RunConfig({"batch_size": 4, "manifests": [M1.to_dict()]})
    assert config.manifests == (M1,) and config.executor == "local" and config.batch_size == 4


def test_a_manifest_is_parsed_once_while_unchanged(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"a.tif,1\n")
    first = read_manifest(path)
    assert read_manifest(path) is first
    path.write_bytes(b"a.tif,1\nb.tif,3\n")
    assert [e.key for e in read_manifest(path).entries] == ["a.tif", "b.tif"]


def test_claim_returns_what_it_claimed(seed, buckets, settings, tmp_path):
    seed.put_object(Bucket=INPUT_BUCKET, Key="county/a-raw.csv", Body=b"a.tif,1\n")
    client = s3.make_client(settings)
    (obj,) = [o for o in s3.iter_objects(client, INPUT_BUCKET) if o["Key"] == "county/a-raw.csv"]
    _ts, run = new_run_dir(tmp_path)
    claimed = claim(client, INPUT_BUCKET, obj, KEYS, run, options(tmp_path, settings=settings), Semantics.assumed())
    assert isinstance(claimed, Claim)
    assert claimed.keys == KEYS and claimed.body == b"a.tif,1\n"
    assert (run.path / claimed.csv).read_bytes() == claimed.body and claimed.journal in run.journal_entries()
    assert claimed.manifest("m1") == ClaimedManifest("m1", claimed.csv, KEYS.processing, KEYS.raw, KEYS.stem, KEYS.ts)
    objects = all_objects(seed, INPUT_BUCKET)
    assert "county/a-raw.csv" not in objects and objects[KEYS.processing] == b"a.tif,1\n"


def test_job_stats_is_one_table():
    output = (
        "Assuming unrestricted shared filesystem usage.\nHost: vm\nUser: someone\nBuilding DAG of jobs...\n"
        "Job stats:\njob     count\n-----  -----\nconvert_batch 2\ntotal 2\n\n"
        "Job stats:\njob     count\n-----  -----\nconvert_batch 2\ntotal 2\n\nReasons:\n  x\n"
    )
    table = job_stats(output)
    assert table.startswith("Job stats:") and table.endswith("total 2")
    assert table.count("Job stats:") == 1 and "Host" not in table and "User" not in table
    assert job_stats("Nothing to be done.\n") == ""


def test_recovery_leaves_a_run_with_a_broken_run_yaml_alone(tmp_path, caplog):
    """An invalid run.yaml used to be read as its pending config (no manifests) and marked finished."""
    from cog_pipeline.control.recovery import recover

    opts = options(tmp_path)
    ts, run = new_run_dir(tmp_path)
    write_pending(run, run_config(opts, ts, []))
    run.config_file.write_text("manifests: [unclosed\n")
    assert recover(None, opts, Semantics.assumed()) == []
    assert run.state is RunState.INVALID and not run.finished_marker.exists() and run.path.is_dir()
    assert "is left alone" in caplog.text and "not valid YAML" in caplog.text


def test_max_running_in_a_run_config_is_a_validated_setting(tmp_path):
    """A site file or override may cap a pool run's clusters; run.yaml then carries it (the schema accepts it,
    so Snakemake's validation of the same file does too), and a bad value stops the tick before claiming."""
    opts = options(tmp_path, run_overrides={"max_running": 4})
    ts, run = new_run_dir(tmp_path)
    write_run(run, run_config(opts, ts, [M1]), {"m1": b"a.tif,1\n"})
    assert run.config.max_running == 4 and yaml.safe_load(run.config_file.read_text())["max_running"] == 4
    for bad in (0, "many"):
        with pytest.raises(PipelineError, match="max_running"):
            run_config(options(tmp_path, run_overrides={"max_running": bad}), ts, [])


def finished_run(tmp_path, manifests, summaries):
    """A run directory whose manifests in ``summaries`` (by id) were aggregated."""
    ts, run = new_run_dir(tmp_path / "work")
    write_run(run, run_config(options(tmp_path), ts, manifests), {m.id: b"a.tif,1\n" for m in manifests})
    run.outcome("m1").parent.mkdir()
    for manifest_id, summary in summaries.items():
        run.outcome(manifest_id).write_text(json.dumps({"finished": True, **summary}))
    return ts, run


def test_finish_writes_the_runs_outcome_to_ticks_log(tmp_path):
    """ticks.log recorded claims only: the driver's final step (local ticks, pool drivers, manual drive) adds
    one line per finished run."""
    from cog_pipeline.control import driver
    from cog_pipeline.control.tickslog import TICKS_LOG

    ts, run = finished_run(tmp_path, [M1], {"m1": {"raw_key": M1.raw_key, "processed": 5, "failed": 2}})
    run.report.write_text("<html></html>")
    code, summaries = driver.finish(run.path)
    assert code == 0 and [s["processed"] for s in summaries] == [5]
    [line] = (tmp_path / "work" / TICKS_LOG).read_text().splitlines()
    assert line.endswith(f" UTC {ts} finished: 5 processed, 2 failed (county/a-raw.csv) report {run.report}"), line


def test_an_unfinished_run_names_its_manifests_without_outcome(tmp_path):
    from cog_pipeline.control.tickslog import outcome_line

    m2 = ClaimedManifest.of("m2", "manifests/b.csv", ManifestKeys.for_raw("b-raw.csv", KEYS.ts))
    summary = {"raw_key": M1.raw_key, "processed": 1, "failed": 0}
    ts, run = finished_run(tmp_path, [M1, m2], {"m1": summary})
    line = outcome_line(run, [summary])
    assert line.startswith(f"{ts} unfinished: 1 processed, 0 failed (county/a-raw.csv) report none; ")
    assert "1 manifest without outcome: b-raw.csv" in line and "the next tick resumes it" in line
    assert outcome_line(run, []).startswith(f"{ts} unfinished: 0 processed, 0 failed (no manifest aggregated)")
