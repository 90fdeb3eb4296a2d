"""The aggregate's existence check (skip-scan listing) against the moto server: exact answers and
the number of ListObjectsV2 calls it makes."""

from __future__ import annotations

import math
import random

import pytest

from cog_pipeline.storage import s3
from cog_pipeline.storage.s3 import existing_keys

from conftest import OUTPUT_BUCKET


@pytest.fixture
def client(settings, buckets):
    return s3.make_client(settings)


def counting(client) -> dict[str, int]:
    """Count the requests ``client`` makes, by operation."""
    counts: dict[str, int] = {}

    def count(model, **_):
        counts[model.name] = counts.get(model.name, 0) + 1

    client.meta.events.register("before-call.s3", count)
    return counts


def put_all(seed, keys) -> None:
    for key in keys:
        seed.put_object(Bucket=OUTPUT_BUCKET, Key=key, Body=b"x")


def brute_force(seed, wanted) -> set[str]:
    listed = {
        o["Key"]
        for page in seed.get_paginator("list_objects_v2").paginate(Bucket=OUTPUT_BUCKET)
        for o in page.get("Contents", [])
    }
    return listed & set(wanted)


@pytest.mark.slow
def test_rows_spread_over_many_folders_cost_pages_not_folders(seed, client):
    """60 folders, older outputs beside them: calls = pages of wanted keys + a few, not one per folder."""
    rows = [f"county-{'ab'[i % 2]}/2026/f{i % 60:03d}/tile_{i:04d}.tif" for i in range(300)]
    wanted = [k for key in rows for k in (key, key[:-4] + ".jpg")]
    older = [f"county-a/2025/f{i % 50:03d}/tile_{i:04d}.tif" for i in range(150)]
    put_all(seed, wanted + older)
    counts = counting(client)
    assert existing_keys(client, OUTPUT_BUCKET, wanted, page_size=50) == set(wanted)
    pages = math.ceil(len(wanted) / 50)
    assert counts == {"ListObjectsV2": pages}  # the older outputs sort before and are never listed


@pytest.mark.slow
def test_gaps_between_runs_are_jumped_not_paged(seed, client):
    """Two wanted runs with 400 unwanted keys between them: one jump, not 8 pages of strangers."""
    first = [f"a/x{i:03d}.tif" for i in range(30)]
    between = [f"a/y{i:03d}.tif" for i in range(400)]
    last = [f"a/z{i:03d}.tif" for i in range(30)]
    put_all(seed, first + between + last)
    counts = counting(client)
    assert existing_keys(client, OUTPUT_BUCKET, first + last, page_size=50) == set(first + last)
    assert counts["ListObjectsV2"] <= 3


def test_missing_keys_are_reported_missing_and_pagination_settles_every_key(seed, client):
    present = [f"p/k{i:03d}.tif" for i in range(0, 120, 2)]
    absent = [f"p/k{i:03d}.tif" for i in range(1, 120, 2)] + ["p/zzz.tif", "a.tif", "p/k000.tif.jpg"]
    put_all(seed, [*present, "p/k001.tif.aux.xml", "p/k0011.tif"])
    counts = counting(client)
    assert existing_keys(client, OUTPUT_BUCKET, present + absent, page_size=7) == set(present)
    assert counts["ListObjectsV2"] <= math.ceil(len(present) * 2 / 7) + 3


def test_special_characters_in_keys(seed, client):
    keys = [
        "imagery/county scans/shade é.tif",
        "imagery/county scans/shade é.jpg",
        "日本/画像.tif",
        "日本/画像.jpg",
        "a+b/c%20d.tif",
        "a+b/c%20d.jpg",
        "q?/h#.tif",
        "sp ace/ .tif",
        "é/z.tif",
        "z/é.tif",
        "~/x.tif",
        "a/b\u00a0c.tif",
        "a/emoji-\U0001f600.tif",
        "x/a.tif",
        "x/a.tif.jpg",
    ]
    put_all(seed, keys[::2])
    assert existing_keys(client, OUTPUT_BUCKET, keys, page_size=3) == set(keys[::2])
    assert existing_keys(client, OUTPUT_BUCKET, keys) == set(keys[::2])


def test_matches_a_full_listing_on_random_buckets(seed, client):
    """Property check against a brute-force listing: random keys (shared prefixes, non-ASCII, special
    characters), random present / wanted subsets, small pages."""
    rng = random.Random(5)
    alphabet = ["a", "b", "/", ".", "-", " ", "é", "z", "0", "9", "+", "日"]
    universe = sorted(
        {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))).lstrip("/") or "k" for _ in range(400)}
    )
    present = [k for k in universe if rng.random() < 0.5]
    put_all(seed, present)
    for trial in range(6):
        wanted = [k for k in universe if rng.random() < (0.05, 0.3, 0.9)[trial % 3]]
        page = (1, 4, 25)[trial % 3]
        assert existing_keys(client, OUTPUT_BUCKET, wanted, page_size=page) == brute_force(seed, wanted), trial


class IgnoresStartAfter:
    """A client whose server ignores StartAfter (some S3-compatible stores): every call lists from the start."""

    def __init__(self, client, truncate_without_token=False):
        self.client, self.calls, self.truncate_without_token = client, 0, truncate_without_token

    def list_objects_v2(self, **kwargs):
        self.calls += 1
        assert self.calls < 100, "the listing does not move forward"
        kwargs.pop("StartAfter", None)
        page = self.client.list_objects_v2(**kwargs)
        if self.truncate_without_token:
            page.pop("NextContinuationToken", None)
        return page


def test_a_server_ignoring_start_after_is_paged_through_not_looped(seed, client):
    keys = [f"d/k{i:03d}.tif" for i in range(40)]
    put_all(seed, keys[::2] + [f"c/older{i}.tif" for i in range(10)])
    stub = IgnoresStartAfter(client)
    assert existing_keys(stub, OUTPUT_BUCKET, keys, page_size=7) == set(keys[::2])
    assert stub.calls <= math.ceil(20 / 7) + 2


def test_a_truncated_page_without_a_token_is_a_clear_error(seed, client):
    from cog_pipeline.core.errors import PipelineError

    keys = [f"d/k{i:03d}.tif" for i in range(20)]
    put_all(seed, keys)
    with pytest.raises(PipelineError, match="truncated page without a continuation token"):
        existing_keys(IgnoresStartAfter(client, truncate_without_token=True), OUTPUT_BUCKET, keys, page_size=5)


def test_empty_wanted_makes_no_request(client):
    counts = counting(client)
    assert existing_keys(client, OUTPUT_BUCKET, []) == set()
    assert counts == {}


def _entries(keys):
    from cog_pipeline.work.manifest import parse_manifest

    return parse_manifest("".join(f"{k},1\n" for k in keys).encode()).entries


def test_rows_of_an_unfinished_batch_name_their_batch_and_the_wrappers_reason(tmp_path):
    """Seen on a pool: a batch job whose Python was missing failed every row with a generic reason;
    the job wrapper's line in the batch log says why, and the reason now carries it."""
    from cog_pipeline.work.aggregate import classify, unfinished_outcomes
    from cog_pipeline.work.outcomes import FailureCode, ImageOutcome, Status

    log_dir = tmp_path / "logs" / "convert" / "m1"
    log_dir.mkdir(parents=True)
    (log_dir / "batch-00001.log").write_text(
        "converting c.tif\n"
        "job-wrapper on ep7: Python interpreter '/x/python3' not found on ep7 (software mode shared)\n"
    )
    keys = ["a.tif", "b.tif", "c.tif", "d.tif", "e.tif"]
    failures = unfinished_outcomes(tmp_path, "m1", _entries(keys), batch_size=2, recorded={"a.tif", "b.tif", "c.tif"})
    assert set(failures) == {"d.tif", "e.tif"}  # c.tif has a record; batch 0 is complete
    assert failures["d.tif"].reason == (
        "no outcome recorded: batch job batch-00001 did not finish: job-wrapper on ep7: "
        "Python interpreter '/x/python3' not found on ep7 (software mode shared) "
        "(see logs/convert/m1/batch-00001.log)"
    )
    # no log came back at all: the reason says so instead of pointing at a file that is not there
    assert failures["e.tif"].reason == (
        "no outcome recorded: batch job batch-00002 did not finish (no log came back "
        "from the job: logs/convert/m1/batch-00002.log is absent)"
    )
    assert {f.code for f in failures.values()} == {FailureCode.BATCH_DID_NOT_FINISH}
    assert (failures["d.tif"].line, failures["e.tif"].line) == (4, 5)

    manifest = "".join(f"{k},1\n" for k in keys).encode()
    records = {k: ImageOutcome(key=k, status=Status.OK) for k in ("a.tif", "b.tif", "c.tif")}
    present = {k for r in records for k in (r, r[:-4] + ".jpg")}
    outcome = classify(manifest, records, present, failures)
    assert [k for k, _ in outcome.processed] == ["a.tif", "b.tif", "c.tif"]
    assert [(f.key, f.csv_reason) for f in outcome.failed] == [(k, failures[k].reason) for k in ("d.tif", "e.tif")]


#: What Snakemake 9 writes to its output for a job the HTCondor executor plugin (0.3.0) reports as failed:
#: snakemake/logging.py (_format_job_error) around the plugin's report_job_error message.
SNAKEMAKE_REMOVED = """\
[Tue Dec  1 14:20:35 2026]
Error in rule convert:
    message: Job 2 with HTCondor Cluster ID 41 was removed/aborted.
    jobid: 2
    input: manifests/m1.csv
    output: status/m1/batch-00001.jsonl
    log: logs/convert/m1/batch-00001.log (check log file(s) for error details)
    external_jobid: 41
"""
SNAKEMAKE_HELD = """\
[Tue Dec  1 14:21:02 2026]
Error in rule convert:
    message: Job 3 with HTCondor Cluster ID 42 is held: Error from slot1@ep: Job has gone over cgroup memory limit \
of 2048 megabytes.
    jobid: 3
    input: manifests/m1.csv
    output: status/m1/batch-00002.jsonl
    log: logs/convert/m1/batch-00002.log (check log file(s) for error details)
    external_jobid: 42
Shutting down, this might take some time.
Exiting because a job execution failed. Look below for error messages
"""


def test_a_removed_batch_says_it_was_removed_and_points_at_a_log_that_exists(tmp_path):
    """Issue 12: after condor_rm of a batch job its rows said 'did not finish' and pointed at a batch log a
    removed job never brings back; the cause was only in logs/snakemake.log."""
    from cog_pipeline.work.aggregate import snakemake_job_errors, unfinished_outcomes
    from cog_pipeline.work.outcomes import FailureCode

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "snakemake.log").write_text(
        "Building DAG of jobs...\n" + SNAKEMAKE_REMOVED + "Select jobs to execute...\n" + SNAKEMAKE_HELD
    )
    errors = snakemake_job_errors(tmp_path)
    assert errors == {
        "status/m1/batch-00001.jsonl": "Job 2 with HTCondor Cluster ID 41 was removed/aborted.",
        "status/m1/batch-00002.jsonl": "Job 3 with HTCondor Cluster ID 42 is held: Error from "
        "slot1@ep: Job has gone over cgroup memory limit of 2048 "
        "megabytes.",
    }
    keys = ["a.tif", "b.tif", "c.tif", "d.tif", "e.tif"]
    failures = unfinished_outcomes(tmp_path, "m1", _entries(keys), batch_size=2, recorded={"a.tif", "b.tif"})
    removed, held = failures["c.tif"], failures["e.tif"]
    assert removed.code is FailureCode.BATCH_REMOVED and failures["d.tif"] == removed.replace(key="d.tif", line=4)
    assert removed.reason == (
        "no outcome recorded: batch job batch-00001 was removed from the pool before it "
        "finished (Job 2 with HTCondor Cluster ID 41 was removed/aborted) (see "
        "logs/snakemake.log; the job's own log logs/convert/m1/batch-00001.log never came back)"
    )
    assert held.code is FailureCode.BATCH_HELD
    assert "was held on the pool" in held.reason and "cgroup memory limit of 2048 megabytes" in held.reason
    assert "logs/convert/m1/batch-00001.log)" not in removed.reason.replace("never came back)", "")


def test_a_failed_local_job_keeps_pointing_at_its_batch_log(tmp_path):
    """A job that ran and failed (its log is there): the batch log stays the pointer; no message, no code change."""
    from cog_pipeline.work.aggregate import unfinished_outcomes
    from cog_pipeline.work.outcomes import FailureCode

    (tmp_path / "logs" / "convert" / "m1").mkdir(parents=True)
    (tmp_path / "logs" / "convert" / "m1" / "batch-00000.log").write_text("Traceback ...\n")
    (tmp_path / "logs" / "snakemake.log").write_text(
        "Error in rule convert:\n    jobid: 1\n    output: status/m1/batch-00000.jsonl\n"
        "    log: logs/convert/m1/batch-00000.log (check log file(s) for error details)\n"
    )
    failures = unfinished_outcomes(tmp_path, "m1", _entries(["a.tif"]), batch_size=2, recorded=set())
    assert failures["a.tif"].code is FailureCode.BATCH_DID_NOT_FINISH
    assert failures["a.tif"].reason == (
        "no outcome recorded: batch job batch-00000 did not finish (see logs/convert/m1/batch-00000.log)"
    )


@pytest.mark.slow
def test_a_manual_snakemake_rerun_gives_the_same_files_as_a_tick(
    seed, buckets, settings, samples, tmp_path, monkeypatch
):
    """Issue 14: the README's manual rerun (snakemake --snakefile .../Snakefile --cores 2 in a run directory)
    wrote the outcome CSVs but no report.html and no per-image logs (the driver wrote those after Snakemake).
    The aggregate rule now writes them itself, before the processing file goes."""
    import os
    import subprocess
    import sys

    from cog_pipeline.control import driver
    from cog_pipeline.control.tick import TickOptions, tick
    from cog_pipeline.work.outcomes import manifest_finished

    from conftest import INPUT_BUCKET, all_objects

    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "imagery/byte.tif")
    seed.put_object(Bucket=INPUT_BUCKET, Key="batch-raw.csv", Body=b"imagery/byte.tif,1\nimagery/missing.tif,1\n")
    monkeypatch.setattr(driver, "drive", lambda *a, **k: (0, []))  # the tick claims; nothing runs the workflow
    result = tick(
        TickOptions(
            input_bucket=INPUT_BUCKET, output_bucket=OUTPUT_BUCKET, settings=settings, workdir=tmp_path / "work"
        )
    )
    run_dir = result.run_dir
    assert run_dir is not None and not (run_dir / "report.html").exists()

    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(driver.SNAKEFILE), "--cores", "2", "--nocolor"],
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CONDOR_CONFIG": os.devnull},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run_dir / "report.html").is_file()
    missing_log = (run_dir / "logs" / "images" / "imagery" / "missing.log").read_text()
    assert "upload the image to the input bucket" in missing_log
    assert (run_dir / "logs" / "images" / "imagery" / "byte.log").is_file()
    objects = all_objects(seed, INPUT_BUCKET)
    assert [k for k in objects if "-report-" in k] and not [k for k in objects if "-processing-" in k]
    assert manifest_finished(run_dir, "m1")
