"""Concurrency: ticks started at the same moment from different working directories (= hosts) on one
bucket claim each manifest exactly once; several manifests in one tick; one image in two manifests;
stale claims and orphaned processing files are taken over, live ones are left alone."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import yaml

from cog_pipeline import SAMPLES_DIR
from cog_pipeline.control import recovery
from cog_pipeline.storage import s3
from cog_pipeline.control.claims import CLAIM_META, OWNER_META, RUN_META
from cog_pipeline.storage.endpoint import Semantics
from cog_pipeline.core.naming import RUN_CONFIG, claim_marker_key
from cog_pipeline.core.rundir import RunDir
from faults.harness import rows


def _claimed(proc) -> list[str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    result = json.loads(last) if last.startswith("{") else {"manifests": []}
    return [m["raw_key"] for m in result["manifests"]]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ticks", "executor"), [(3, "in-process"), (2, "snakemake")], ids=["3-in-process", "2-snakemake"]
)
def test_ticks_at_the_same_moment_on_two_hosts_claim_each_manifest_once(world, ticks, executor, request):
    """Each tick a process of its own: tickproc.py with Snakemake, or a fork running its steps in-process (the
    claims are the subject; Snakemake's part is the same as one tick's: the three-way race runs in-process, a
    real tick costs about 4 CPU-seconds per host, most of it Python and Snakemake start-up)."""
    in_process = executor == "in-process"
    if in_process:
        request.getfixturevalue("in_process_workflow")
    manifests = {f"race/m{i}-raw.csv": f"race/img{i}.tif" for i in range(2 * ticks)}
    for raw, image in manifests.items():
        world.put(image, SAMPLES_DIR / "byte.tif")
        world.manifest(raw, [f"{image},1", "shared/both.tif,1"])  # and one image in every manifest
    world.put("shared/both.tif", SAMPLES_DIR / "byte.tif")
    world.snapshot()
    # Every tick lists before any claims; their first claim attempts hit the server together.
    world.proxy.add("barrier", "list", nth=range(1, ticks + 1), parties=ticks, bucket=world.input_bucket)
    world.proxy.add("barrier", "put", key_contains=".cog-pipeline/claims/", nth=range(1, ticks + 1), parties=ticks)
    start = world.fork_tick if in_process else world.spawn
    procs = [start(workdir=world.tmp / f"host{i}") for i in range(ticks)]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(type("P", (), {"returncode": proc.returncode, "stdout": out, "stderr": err}))
    claimed = [_claimed(p) for p in done]
    flat = [raw for c in claimed for raw in c]
    assert sorted(flat) == sorted(manifests), f"each manifest claimed exactly once: {claimed}"
    world.figures.kind("concurrency", f"{ticks}-ticks-same-moment")
    world.check({raw[: -len("raw.csv")]: {"processed": [image, "shared/both.tif"]} for raw, image in manifests.items()})


@pytest.mark.slow
@pytest.mark.usefixtures("in_process_workflow")  # claims and adoption: the subject
def test_two_manifests_in_one_tick_same_image_and_same_name_in_two_folders(world):
    """Two manifests named alike in two folders (their run-directory copies must not collide), both listing
    the same image: each gets its own, correct outcome."""
    world.put("img/shared.tif", SAMPLES_DIR / "byte.tif")
    world.image("img/only-a.tif", seed=1)
    world.image("img/only-b.tif", seed=2)
    world.manifest("a/x-raw.csv", ["img/shared.tif,1", "img/only-a.tif,1"])
    world.manifest("b/x-raw.csv", ["img/only-b.tif,1", "img/shared.tif,1", "img/missing.tif,1"])
    world.snapshot()
    result = world.tick()
    assert result.exit_code == 0 and len(result.manifests) == 2
    world.figures.kind("concurrency", "two-manifests-one-tick")
    world.figures.kind("concurrency", "same-image-two-manifests")
    world.check(
        {
            "a/x-": {"processed": ["img/shared.tif", "img/only-a.tif"]},
            "b/x-": {"processed": ["img/only-b.tif", "img/shared.tif"], "failed": {"img/missing.tif": "not found"}},
        }
    )


@pytest.mark.slow
@pytest.mark.usefixtures("in_process_workflow")  # claims and adoption: the subject
def test_live_claim_elsewhere_is_respected_and_a_stale_one_taken_over(world):
    world.image("a/one.tif", seed=1)
    world.manifest("s/stale-raw.csv", ["a/one.tif,1"])
    world.snapshot()
    etag = world.seed.head_object(Bucket=world.input_bucket, Key="s/stale-raw.csv")["ETag"]
    marker = claim_marker_key("s/stale-raw.csv", etag)
    other = {
        "host": "another-host",
        "pid": 4242,
        "token": "0123456789abcdef",
        "claimed_as": "s/stale-processing-20200101-000000.csv",
    }
    world.seed.put_object(Bucket=world.input_bucket, Key=marker, Body=json.dumps(other).encode())

    first = world.tick()  # default lease (1 h): the claim in progress elsewhere is left alone
    assert first.run_dir is None
    assert "s/stale-raw.csv" in world.objects(world.input_bucket)

    time.sleep(1.5)
    second = world.tick(claim_lease=1.0)  # the other host has been silent longer than the lease
    assert second.exit_code == 0 and second.run_dir is not None
    world.figures.kind("concurrency", "stale-claim-marker")
    world.check({"s/stale-": {"processed": ["a/one.tif"]}})


@pytest.mark.slow
@pytest.mark.usefixtures("in_process_workflow")  # claims and adoption: the subject
def test_processing_file_whose_run_directory_is_gone_is_adopted(world):
    """A tick claimed the manifest, then its run directory was lost (disk wiped): the next tick in the
    same working directory adopts the processing file at once; the outcome keeps its timestamp."""
    world.image("a/one.tif", seed=1)
    world.manifest("s/lost-raw.csv", ["a/one.tif,1", "a/missing.tif,1"])
    world.snapshot()
    proc = world.run_proc(crash_at="tick.launch")
    assert proc.returncode == -9
    (run_dir,) = world.workdir.glob("workflow-run-*")
    processing = [k for k in world.objects(world.input_bucket) if "processing-" in k]
    import shutil

    shutil.rmtree(run_dir)
    result = world.tick()
    assert result.exit_code == 0 and not result.resumed
    world.figures.kind("crash", "run-directory-lost")
    found = world.check({"s/lost-": {"processed": ["a/one.tif"], "failed": {"a/missing.tif": "not found"}}})
    assert processing == [f"s/lost-processing-{found['s/lost-']['ts']}.csv"]


@pytest.mark.slow
@pytest.mark.usefixtures("in_process_workflow")  # claims and adoption: the subject
def test_foreign_processing_file_is_adopted_only_after_its_heartbeat_stops(world):
    world.image("a/one.tif", seed=1)
    key = "s/far-processing-20260101-000000.csv"
    world.seed.put_object(
        Bucket=world.input_bucket,
        Key=key,
        Body=b"a/one.tif,1\n",
        Metadata={OWNER_META: "feedfacefeedface", RUN_META: "workflow-run-x"},
    )
    world.snapshot()
    assert world.tick().run_dir is None, "fresh: its owner may be running it"
    time.sleep(1.5)
    result = world.tick(adopt_after=1.0)
    assert result.exit_code == 0 and result.run_dir is not None
    world.figures.kind("concurrency", "orphaned-processing-file")
    found = world.check({"s/far-": {"processed": ["a/one.tif"]}})
    assert found["s/far-"]["ts"] == "20260101-000000"


def test_heartbeat_refreshes_a_live_run_and_never_resurrects_a_finished_one(world, tmp_path):
    key = "s/hb-processing-20260101-000000.csv"
    world.seed.put_object(Bucket=world.input_bucket, Key=key, Body=b"a.tif,1\n", Metadata={CLAIM_META: "t"})
    run_dir = tmp_path / "workflow-run-20260101-000000"
    (run_dir / "manifests").mkdir(parents=True)
    (run_dir / "manifests" / "hb.csv").write_bytes(b"a.tif,1\n")
    (run_dir / RUN_CONFIG).write_text(
        yaml.safe_dump(
            {
                "manifests": [
                    {
                        "id": "m1",
                        "csv": "manifests/hb.csv",
                        "key": key,
                        "raw_key": "s/hb-raw.csv",
                        "stem": "s/hb-",
                        "timestamp": "20260101-000000",
                    }
                ]
            }
        )
    )
    run = RunDir(run_dir)
    client = s3.make_client(world.settings)
    before = world.seed.head_object(Bucket=world.input_bucket, Key=key)
    time.sleep(1.1)
    recovery.heartbeat(client, world.input_bucket, run, every=0, sem=Semantics.assumed())
    after = world.seed.head_object(Bucket=world.input_bucket, Key=key)
    assert after["LastModified"] > before["LastModified"] and after["Metadata"][CLAIM_META] == "t"
    assert world.body(world.input_bucket, key) == b"a.tif,1\n"
    # The aggregate deletes it between the heartbeat's HEAD and its write: the write must not bring it back.
    real_head = s3.head

    def head_then_delete(c, bucket, k):
        found = real_head(c, bucket, k)
        world.seed.delete_object(Bucket=bucket, Key=k)
        return found

    s3.head = head_then_delete
    try:
        recovery.heartbeat(client, world.input_bucket, run, every=0, sem=Semantics.assumed())
    finally:
        s3.head = real_head
    assert key not in world.objects(world.input_bucket)


@pytest.mark.slow
@pytest.mark.usefixtures("in_process_workflow")
def test_outcome_rows_of_same_image_in_two_concurrent_ticks(world):
    """The same image in two manifests claimed by two ticks at once: both rows processed, one valid COG. (Two
    forked ticks, each running its batch and aggregate in its own process.)"""
    world.put("img/shared.tif", SAMPLES_DIR / "byte.tif")
    world.manifest("c/one-raw.csv", ["img/shared.tif,1"])
    world.manifest("c/two-raw.csv", ["img/shared.tif,1"])
    world.snapshot()
    world.proxy.add("barrier", "list", nth=[1, 2], parties=2, bucket=world.input_bucket)
    procs = [world.fork_tick(workdir=world.tmp / f"host{i}") for i in range(2)]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    found = world.check({"c/one-": {"processed": ["img/shared.tif"]}, "c/two-": {"processed": ["img/shared.tif"]}})
    assert all(rows(t["failed"]) == [] for t in found.values())


def test_endpoint_refusing_conditional_writes_is_a_clear_error_before_claiming(world):
    world.image("a/one.tif", seed=1)
    world.manifest("e/refuse-raw.csv", ["a/one.tif,1"])
    before = {k: o["ETag"] for k, o in world.objects(world.input_bucket).items()}
    world.proxy.add("reject-if")
    proc = world.run_proc()
    assert proc.returncode == 2 and "refuses conditional writes" in proc.stderr and "nothing was claimed" in proc.stderr
    assert {k: o["ETag"] for k, o in world.objects(world.input_bucket).items()} == before
    world.figures.kind("concurrency", "endpoint-refuses-conditional-writes")


def test_endpoint_ignoring_conditional_deletes_on_an_unversioned_bucket_is_refused_before_claiming(world):
    """DeleteObject ignoring If-Match (MinIO, Ceph RGW before Squid) on an unversioned bucket: a manifest
    re-uploaded during a claim would be deleted unprocessed, so the tick refuses, naming the behaviour
    and the remedies, and changes nothing."""
    world.image("a/one.tif", seed=1)
    world.manifest("e/del-raw.csv", ["a/one.tif,1"])
    before = {k: o["ETag"] for k, o in world.objects(world.input_bucket).items()}
    world.proxy.add("ignore-if", "delete")
    proc = world.run_proc()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "If-Match on DeleteObject is ignored" in proc.stderr and "nothing was claimed" in proc.stderr
    assert "put-bucket-versioning" in proc.stderr and "delete_fallback: verify-first" in proc.stderr
    assert {k: o["ETag"] for k, o in world.objects(world.input_bucket).items()} == before
    world.figures.kind("concurrency", "endpoint-ignores-conditional-deletes")


@pytest.mark.slow
@pytest.mark.usefixtures("in_process_workflow")
def test_endpoint_ignoring_conditional_writes_is_warned_about_and_loses_nothing(world):
    """The documented limit: where If-None-Match / If-Match are silently ignored (and the operator opted
    in to verify-first deletes), two hosts ticking at one instant may both claim a manifest. The tick
    says so; nothing is lost or corrupted (outputs are idempotent), at worst a manifest is processed
    twice and has two outcome triples."""
    world.settings = dataclasses.replace(world.settings, delete_fallback="verify-first")
    manifests = {f"e/m{i}-raw.csv": f"e/img{i}.tif" for i in range(3)}
    for raw, image in manifests.items():
        world.put(image, SAMPLES_DIR / "byte.tif")
        world.manifest(raw, [f"{image},1"])
    world.snapshot()
    world.proxy.add("ignore-if")
    world.proxy.add("barrier", "list", nth=[1, 2], parties=2, bucket=world.input_bucket)
    world.proxy.add("barrier", "put", key_contains=".cog-pipeline/claims/", nth=[1, 2], parties=2)
    procs = [world.fork_tick(workdir=world.tmp / f"host{i}") for i in range(2)]  # forks: steps in-process
    claimed = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "ignores conditional writes" in err and "s3.delete_fallback: verify-first" in err
        claimed += json.loads(out.strip().splitlines()[-1])["manifests"]
    outcomes = world.outcomes()
    for raw, image in manifests.items():
        triples = outcomes[raw[: -len("raw.csv")]]
        assert triples and all(rows(t["processed"]) == [[image, "1"]] and rows(t["failed"]) == [] for t in triples)
    world.figures.kind("concurrency", "endpoint-ignores-conditional-writes")
    world.figures.bounds["duplicate_claims_without_conditional_writes"] = {
        "manifests": len(manifests),
        "claims": len(claimed),
    }
    world.check({}, leftovers_ok=False)
