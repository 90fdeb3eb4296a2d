"""The pipeline's guarantees on each real S3 server: moto over HTTP, and Ceph RGW 16.2 over HTTPS
(self-signed CA) with unversioned and versioned buckets (``s3_target`` in tests/conftest.py).

RGW 16.2 ignores If-Match on DeleteObject, so an unversioned RGW bucket is refused by default and
these tests run it with the opted-in ``verify-first`` fallback; the versioned one commits claims by
VersionId. The end state is checked strictly (``World.check``), as the fault suite does.

Each test says on its parametrisation which servers it runs on and why. The in-process checks (probe,
heartbeat, listing) run on all three; a tick runs only where the server changes the S3 calls the behaviour
rests on (claim markers, commit by If-Match / HEAD first / VersionId, deletes, rewrites): on RGW. Moto is
the server of the rest of the suite (the fault suite reaches it through a transparent proxy), so a tick on
moto here would repeat those tests, but for the one path tested nowhere else (a re-delivery met by If-Match)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import yaml

from cog_pipeline.control import claims, recovery
from cog_pipeline.storage import endpoint, s3
from cog_pipeline.core import processes
from cog_pipeline.ui import status
from cog_pipeline.control.claims import CLAIM_META, OWNER_META, RUN_META
from cog_pipeline.core.naming import HEARTBEAT_WARNING, RUN_CONFIG
from cog_pipeline.core.rundir import RunDir
from cog_pipeline.control.retry import plan_retry, queue_retry
from faults.test_faults_crash import EXPECTED, OVERRIDES, crash, scenario

MIB = 1024 * 1024
#: Ceph RGW unversioned (commit by HEAD first, the opted-in fallback) and versioned (commit by VersionId).
RGW_TARGETS = ["rgw-https", "rgw-https-versioned"]
#: Crash points whose recovery goes through the server's claim, commit or delete path (test_faults_crash runs
#: every step on moto): a processing object written but not committed (deleted and claimed afresh), the raw
#: manifest committed (the run resumed), an outcome CSV written (the processing object deleted after).
SERVER_CRASH_STEPS = ["claim.processing", "claim.renamed", "aggregate.csv:1"]


def tick_settings(world) -> s3.S3Settings:
    """The world's settings, with the opted-in fallback where the server needs it (unversioned RGW)."""
    if world.target.name == "rgw-https":
        return dataclasses.replace(world.settings, delete_fallback="verify-first")
    return world.settings


def no_bookkeeping_versions(world) -> None:
    """On a versioned bucket the pipeline's own objects leave no version or delete marker behind."""
    if not world.target.versioned:
        return
    page = world.seed.list_object_versions(Bucket=world.input_bucket)
    left = [
        (v["Key"], v["VersionId"])
        for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        if v["Key"].startswith(".cog-pipeline/") or "-processing-" in v["Key"]
    ]
    assert left == [], f"bookkeeping versions piled up: {left}"


# All three: what the probe finds is the server's own answer (in process, no tick).
def test_probe_finds_what_each_server_does(server_world):
    world = server_world
    caps = endpoint.probe(s3.make_client(world.settings), world.settings, world.input_bucket)
    assert caps.versioning == ("Enabled" if world.target.versioned else "Off")
    assert caps.get_if_match == endpoint.HONOURED
    if world.target.name == "moto":
        assert caps.put_if_none_match == endpoint.HONOURED
        assert (caps.put_if_match, caps.delete_if_match) == (endpoint.HONOURED, endpoint.HONOURED)
        assert caps.checksum_trailers == endpoint.ACCEPTED  # over HTTP boto3 sends the checksum as a header
    elif world.target.versioned:  # Ceph RGW 16.2.15 on a versioned bucket, measured (docs/reliability.md)
        assert (caps.put_if_none_match, caps.put_if_match) == (endpoint.IGNORED, endpoint.ALWAYS_FAILS)
        assert caps.delete_if_match == endpoint.IGNORED
        sem = endpoint.semantics(caps, world.settings)
        assert (sem.markers, sem.commit, sem.rewrite) == ("oldest-version", "version-id", "version-check")
    else:  # Ceph RGW 16.2.15, unversioned
        assert (caps.put_if_none_match, caps.put_if_match) == (endpoint.HONOURED, endpoint.UNQUOTED)
        assert caps.delete_if_match == endpoint.IGNORED
        assert caps.checksum_trailers.startswith(endpoint.REFUSED) and "MissingContentLength" in caps.checksum_trailers
    assert ("Werkzeug" if world.target.name == "moto" else "Ceph RGW") in caps.server


# RGW both ways: the plain tick through each commit path (moto: the rest of the suite).
@pytest.mark.parametrize("s3_target", RGW_TARGETS, indirect=True)
def test_end_to_end_tick(server_world):
    world = server_world
    scenario(world)
    result = world.tick(settings=tick_settings(world), overrides=OVERRIDES)
    assert result.exit_code == 0
    world.check(EXPECTED)
    no_bookkeeping_versions(world)


# Unversioned RGW only: the one server that ignores If-Match on DeleteObject without versioning.
@pytest.mark.parametrize("s3_target", ["rgw-https"], indirect=True)
def test_unversioned_rgw_bucket_is_refused_by_default_and_nothing_changes(server_world):
    world = server_world
    scenario(world)
    before = {k: o["ETag"] for k, o in world.objects(world.input_bucket).items()}
    proc = world.run_proc()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "If-Match on DeleteObject is ignored and the bucket is not versioned" in proc.stderr
    assert "nothing was claimed" in proc.stderr
    assert {k: o["ETag"] for k, o in world.objects(world.input_bucket).items()} == before


# All three: the claim sees the new version by If-Match (moto), HEAD first (RGW) or VersionId (versioned RGW).
# The claim is the subject: the runs' steps are in-process (against the same server; Snakemake: end_to_end_tick).
@pytest.mark.usefixtures("in_process_workflow")
def test_manifest_redelivered_during_a_claim_is_never_lost(server_world, monkeypatch):
    """A new version uploaded under the claimed key right before the commit point: processed by this
    or the next tick, never deleted unprocessed (the issue's reproduction, on the real server)."""
    world = server_world
    world.image("a/one.tif", seed=1)
    world.image("a/two.tif", seed=2)
    world.manifest("r/again-raw.csv", ["a/one.tif,1"])
    real, done = claims.crash_point, []

    def redeliver(step: str) -> None:
        if step == "claim.processing" and not done:
            done.append(step)
            world.seed.put_object(Bucket=world.input_bucket, Key="r/again-raw.csv", Body=b"a/two.tif,1\n")
        real(step)

    monkeypatch.setattr(claims, "crash_point", redeliver)
    settings = tick_settings(world)
    assert world.tick(settings=settings).exit_code == 0
    assert done and "r/again-raw.csv" in world.objects(world.input_bucket), "the re-delivered manifest was deleted"
    time.sleep(1.1)
    assert world.tick(settings=settings).exit_code == 0
    processed = sorted(row for t in world.outcomes()["r/again-"] for row in t["processed"].splitlines())
    # If-Match (moto) or HEAD first (unversioned RGW): the claim saw the new version and left it to the next
    # tick; VersionId (versioned RGW): the claimed version was processed, the new one by the next tick.
    want = ["a/one.tif,1", "a/two.tif,1"] if world.target.versioned else ["a/two.tif,1"]
    assert processed == want
    assert "r/again-raw.csv" not in world.objects(world.input_bucket)
    no_bookkeeping_versions(world)


# RGW both ways x the crash points on the claim, commit and delete paths (every step on moto: test_faults_crash),
# the runs' steps in-process (against the same server; Snakemake: end_to_end_tick, and the moto matrix).
@pytest.mark.usefixtures("in_process_workflow")
@pytest.mark.parametrize("s3_target", RGW_TARGETS, indirect=True)
@pytest.mark.parametrize("step", SERVER_CRASH_STEPS)
def test_crash_then_next_tick_reaches_the_same_outcome(server_world, step):
    world = server_world
    scenario(world)
    settings = tick_settings(world)
    crash(world, step, settings=settings)
    result = world.tick(settings=settings, overrides=OVERRIDES)
    assert result.exit_code == 0
    world.check(EXPECTED)
    no_bookkeeping_versions(world)


# RGW both ways: the rewrite is by unquoted If-Match unversioned, by version check versioned (moto: concurrency).
@pytest.mark.usefixtures("in_process_workflow")
@pytest.mark.parametrize("s3_target", RGW_TARGETS, indirect=True)
def test_orphan_claimed_elsewhere_is_adopted(server_world):
    """Adoption rewrites the processing object with If-Match (RGW 16.2: only the unquoted ETag passes)."""
    world = server_world
    world.image("a/one.tif", seed=1)
    key = "s/far-processing-20260101-000000.csv"
    world.seed.put_object(
        Bucket=world.input_bucket,
        Key=key,
        Body=b"a/one.tif,1\n",
        Metadata={OWNER_META: "feedfacefeedface", RUN_META: "workflow-run-x"},
    )
    world.snapshot()
    time.sleep(1.5)
    result = world.tick(settings=tick_settings(world), adopt_after=1.0)
    assert result.exit_code == 0 and result.run_dir is not None
    found = world.check({"s/far-": {"processed": ["a/one.tif"]}})
    assert found["s/far-"]["ts"] == "20260101-000000"
    no_bookkeeping_versions(world)


# All three: the heartbeat's rewrite per server (in process, no tick).
def test_heartbeat_refreshes_a_live_run_without_piling_up_versions(server_world, tmp_path):
    world = server_world
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
    sem = endpoint.semantics(
        endpoint.probe(client, world.settings, world.input_bucket),
        tick_settings(world),
        tick_settings(world).delete_fallback,
    )
    before = world.seed.head_object(Bucket=world.input_bucket, Key=key)
    time.sleep(1.1)
    recovery.heartbeat(client, world.input_bucket, run, every=0, sem=sem)
    after = world.seed.head_object(Bucket=world.input_bucket, Key=key)
    assert not (run_dir / HEARTBEAT_WARNING).exists(), (run_dir / HEARTBEAT_WARNING).read_text()
    assert after["LastModified"] > before["LastModified"] and after["Metadata"][CLAIM_META] == "t"
    if world.target.versioned:
        versions = world.seed.list_object_versions(Bucket=world.input_bucket, Prefix=key).get("Versions", [])
        assert [v["VersionId"] for v in versions] == [after["VersionId"]]


# Unversioned RGW: RGW's multipart ETags and ranged GETs (versioning does not change them; moto: test_faults_s3).
@pytest.mark.parametrize("s3_target", ["rgw-https"], indirect=True)
def test_multipart_transfers_are_verified(server_world):
    """Inputs and outputs above the multipart threshold: ranged downloads, multipart uploads whose
    ETag (``-<parts>``) the upload check recomputes."""
    world = server_world
    world.image("big/one.tif", width=2200, height=2200, count=3, seed=5)  # ~14 MiB, incompressible
    world.manifest("big/m-raw.csv", ["big/one.tif,3"])
    world.snapshot()
    parts = {"multipart_threshold": 5 * MIB, "multipart_chunksize": 5 * MIB}
    settings = dataclasses.replace(tick_settings(world), **parts)
    assert world.tick(settings=settings, overrides={"s3": parts}).exit_code == 0  # batch jobs read run.yaml
    world.check({"big/m-": {"processed": ["big/one.tif"]}})
    head = world.seed.head_object(Bucket=world.output_bucket, Key="big/one.tif")
    assert head["ContentLength"] > 5 * MIB and head["ETag"].strip('"').rsplit("-", 1)[1].isdigit()


# All three: each server's paging of ListObjectsV2 with StartAfter (in process, no tick).
def test_listing_skip_scan_pages_correctly(server_world):
    world = server_world
    keys = [f"list/{i:03d}.tif" for i in range(40)]
    for key in keys:
        world.seed.put_object(Bucket=world.output_bucket, Key=key, Body=b"x")
    wanted = keys[2:6] + keys[20:23] + keys[37:] + ["list/absent.tif", "list/015x.tif"]
    client = s3.make_client(world.settings)
    assert s3.existing_keys(client, world.output_bucket, wanted, page_size=3) == set(
        keys[2:6] + keys[20:23] + keys[37:]
    )


# Unversioned RGW: status probes the endpoint and shows the opted-in fallback, retry queues through it
# (moto: test_retry, test_status; the versioned commit path is covered above). The runs' steps in-process.
@pytest.mark.usefixtures("in_process_workflow")
@pytest.mark.parametrize("s3_target", ["rgw-https"], indirect=True)
def test_retry_and_status(server_world):
    world = server_world
    world.image("a/one.tif", seed=1)
    world.manifest("t/first-raw.csv", ["a/one.tif,1", "a/later.tif,1"])
    settings = tick_settings(world)
    assert world.tick(settings=settings).exit_code == 0
    failed = next(k for k in world.objects(world.input_bucket) if k.startswith("t/first-failed-"))
    world.image("a/later.tif", seed=7)
    client = s3.make_client(settings)
    plan = plan_retry(client, world.input_bucket, failed)
    assert plan is not None and [r[0] for r in plan.rows] == ["a/later.tif"]
    queue_retry(client, world.input_bucket, plan)
    state = status.collect(client, world.input_bucket, world.workdir, "*raw.csv", settings)
    assert [r["key"] for r in state["bucket"]["raw"]] == [plan.key]
    assert state["endpoint"]["probed"] and state["endpoint"]["refusal"] is None
    assert "If-Match on DeleteObject" in state["endpoint"]["table"]
    time.sleep(1.1)
    assert world.tick(settings=settings).exit_code == 0
    retried = [t for stem, ts in world.outcomes().items() if "retry" in stem for t in ts]
    assert len(retried) == 1 and retried[0]["processed"].splitlines() == ["a/later.tif,1"]


# Versioned RGW only: the one server that ignores If-None-Match (in process).
@pytest.mark.parametrize("s3_target", ["rgw-https-versioned"], indirect=True)
def test_claim_markers_are_exclusive_by_oldest_version_where_if_none_match_is_ignored(server_world):
    """RGW 16.2 ignores If-None-Match on a versioned bucket: the marker is held by its oldest live version."""
    world = server_world
    client = s3.make_client(world.settings)
    sem = endpoint.semantics(endpoint.probe(client, world.settings, world.input_bucket), world.settings)
    assert sem.markers == "oldest-version"
    key = ".cog-pipeline/claims/x-raw.csv@etag"
    alive = {**processes.process_identity(), "time": time.time()}
    first = claims.take_marker(client, world.input_bucket, key, {**alive, "token": "first"}, 3600, sem)
    assert first is not None
    second = claims.take_marker(client, world.input_bucket, key, {**alive, "token": "second"}, 3600, sem)
    assert second is None, "a second claimant got a marker whose holder is alive"
    versions = world.seed.list_object_versions(Bucket=world.input_bucket, Prefix=key).get("Versions", [])
    assert [v["VersionId"] for v in versions] == [first[0].version_id], "the loser's version was not removed"
    claims.release_marker(client, world.input_bucket, first[0])
    third = claims.take_marker(client, world.input_bucket, key, {**alive, "token": "third"}, 3600, sem)
    assert third is not None and third[1] is None
    # A dead holder's version (a process of this host that no longer exists) is taken over.
    claims.release_marker(client, world.input_bucket, third[0])
    world.seed.put_object(
        Bucket=world.input_bucket, Key=key, Body=json.dumps({**alive, "pid": 2**22 + 7, "token": "dead"}).encode()
    )
    taken = claims.take_marker(client, world.input_bucket, key, {**alive, "token": "fourth"}, 3600, sem)
    assert taken is not None and taken[1] is not None and taken[1]["token"] == "dead"
    versions = world.seed.list_object_versions(Bucket=world.input_bucket, Prefix=key).get("Versions", [])
    assert [v["VersionId"] for v in versions] == [taken[0].version_id]


# Versioned RGW: the real race on the markers by oldest version (moto's staged one: test_faults_concurrency).
@pytest.mark.parametrize("s3_target", ["rgw-https-versioned"], indirect=True)
def test_two_hosts_ticking_at_once_claim_each_manifest_once(server_world):
    """Two ticks from two working directories at the same moment on versioned RGW (no fault proxy there:
    the race is real, not staged): every manifest processed exactly once, nothing left behind."""
    world = server_world
    expected = {}
    for i in range(3):
        world.image(f"h/img{i}.tif", seed=10 + i)
        world.manifest(f"h/m{i}-raw.csv", [f"h/img{i}.tif,1"])
        expected[f"h/m{i}-"] = {"processed": [f"h/img{i}.tif"]}
    world.snapshot()
    procs = [world.spawn(workdir=world.tmp / f"host{i}") for i in range(2)]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    world.check(expected)
    no_bookkeeping_versions(world)


# RGW over HTTPS (moto runs plain HTTP): an untrusted CA.
@pytest.mark.parametrize("s3_target", ["rgw-https"], indirect=True)
def test_untrusted_certificate_is_one_clear_line_naming_the_endpoint_and_the_option(server_world, monkeypatch):
    world = server_world
    scenario(world)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    proc = world.run_proc(settings=dataclasses.replace(world.settings, ca_bundle=None))
    assert proc.returncode == 2
    assert f"TLS error talking to the S3 endpoint {world.target.endpoint}" in proc.stderr
    assert "--ca-bundle FILE (or AWS_CA_BUNDLE)" in proc.stderr and "Traceback" not in proc.stderr
