"""The endpoint probe (cog_pipeline/endpoint.py) against moto through the fault proxy, which emulates
the behaviours of servers that cannot be installed here (MinIO) and of Ceph RGW 16.2: what each
semantic is found to be, what the tick then does, and that the probe's answers are cached."""

from __future__ import annotations

import dataclasses
import time

import pytest

from cog_pipeline.control import claims
from cog_pipeline.storage import endpoint, s3
from cog_pipeline.core.errors import PipelineError


def probe(world, **settings):
    client = s3.make_client(dataclasses.replace(world.settings, **settings))
    return endpoint.probe(client, dataclasses.replace(world.settings, **settings), world.input_bucket)


def version_keys(world, prefix: str = ".cog-pipeline/") -> list[str]:
    """Every version and delete marker under ``prefix`` in the input bucket."""
    page = world.seed.list_object_versions(Bucket=world.input_bucket, Prefix=prefix)
    return [v["Key"] for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]


def versioned(world) -> None:
    world.seed.put_bucket_versioning(Bucket=world.input_bucket, VersioningConfiguration={"Status": "Enabled"})


def test_moto_honours_every_semantic_and_the_probe_leaves_nothing(world):
    caps = probe(world)
    assert (
        caps.put_if_none_match,
        caps.put_if_match,
        caps.put_if_match_missing_key,
        caps.delete_if_match,
        caps.get_if_match,
    ) == (endpoint.HONOURED,) * 5
    assert caps.checksum_trailers == endpoint.ACCEPTED and caps.versioning == "Off"
    assert "Werkzeug" in caps.server
    sem = endpoint.semantics(caps, world.settings)
    assert (sem.commit, sem.put_if_match, sem.exclusive, sem.fallbacks) == ("if-match", "quoted", True, ())
    assert version_keys(world) == []


def test_versioned_bucket_commits_by_version_id_and_probe_versions_are_removed(world):
    versioned(world)
    caps = probe(world)
    assert caps.versioning == "Enabled"
    assert endpoint.semantics(caps, world.settings).commit == "version-id"
    assert version_keys(world) == [], "the probe left versions or delete markers behind"


def test_delete_ignoring_if_match_is_found_and_refused_on_an_unversioned_bucket(world):
    world.proxy.add("ignore-if", "delete")
    caps = probe(world)
    assert caps.delete_if_match == endpoint.IGNORED and caps.put_if_match == endpoint.HONOURED
    with pytest.raises(PipelineError, match="If-Match on DeleteObject is ignored and the bucket is not versioned"):
        endpoint.semantics(caps, world.settings)
    sem = endpoint.semantics(caps, world.settings, "verify-first")
    assert sem.commit == "verify-first" and any("verify-first" in f for f in sem.fallbacks)


def test_delete_ignoring_if_match_on_a_versioned_bucket_falls_back_to_version_ids(world):
    versioned(world)
    world.proxy.add("ignore-if", "delete")
    caps = probe(world)
    sem = endpoint.semantics(caps, world.settings)
    assert caps.delete_if_match == endpoint.IGNORED and sem.commit == "version-id"
    assert any("VersionId" in f for f in sem.fallbacks)
    assert version_keys(world) == []


def test_rgw_quoted_if_match_quirk_is_found_and_heartbeats_send_the_etag_unquoted(world):
    world.proxy.add("if-match-unquoted")
    caps = probe(world)
    assert caps.put_if_match == endpoint.UNQUOTED
    sem = endpoint.semantics(caps, world.settings)
    assert sem.put_etag('"abc"') == "abc" and any("unquoted" in f for f in sem.fallbacks)


def test_if_match_ignored_on_a_missing_key_is_found(world):
    world.proxy.add("ignore-if-missing")
    caps = probe(world)
    assert caps.put_if_match_missing_key == endpoint.IGNORED and caps.put_if_match == endpoint.HONOURED
    assert any("missing key" in f for f in endpoint.semantics(caps, world.settings).fallbacks)
    assert version_keys(world) == [], "the key the server wrongly created was not removed"


def test_checksum_trailers_stored_inside_the_object_are_found_and_when_supported_is_refused(world):
    world.proxy.add("store-framing")
    caps = probe(world)
    assert caps.checksum_trailers == endpoint.CORRUPTS
    with pytest.raises(PipelineError, match="checksum trailers"):
        endpoint.semantics(caps, dataclasses.replace(world.settings, checksums="when_supported"))
    assert endpoint.semantics(caps, world.settings).commit == "if-match"  # auto: when_required here


def test_refused_conditional_writes_are_found(world):
    world.proxy.add("reject-if")
    caps = probe(world)
    assert caps.put_if_none_match == endpoint.REFUSED
    with pytest.raises(PipelineError, match="refuses conditional writes"):
        endpoint.semantics(caps, world.settings)


def test_probe_answers_are_cached_per_endpoint_and_bucket_and_refreshed(world):
    client = s3.make_client(world.settings)
    first = endpoint.capabilities(client, world.settings, world.input_bucket, world.workdir)
    puts = world.proxy.calls["put"]
    again = endpoint.capabilities(client, world.settings, world.input_bucket, world.workdir)
    assert again == first and world.proxy.calls["put"] == puts, "a cached answer sent requests"
    other = endpoint.capabilities(client, world.settings, world.output_bucket, world.workdir)
    assert other.bucket == world.output_bucket and world.proxy.calls["put"] > puts
    puts = world.proxy.calls["put"]
    time.sleep(0.05)
    stale = endpoint.capabilities(client, world.settings, world.input_bucket, world.workdir, every=0.01)
    assert stale.probed_at > first.probed_at and world.proxy.calls["put"] > puts
    endpoint.forget(world.workdir, world.settings, world.input_bucket, "test")
    assert endpoint.cached(world.workdir, world.settings, world.input_bucket) is None


def test_delete_objects_carries_content_md5_for_servers_that_require_it(world):
    world.proxy.add("require-md5")
    client = s3.make_client(world.settings)
    world.seed.put_object(Bucket=world.output_bucket, Key="x", Body=b"x")
    answer = client.delete_objects(Bucket=world.output_bucket, Delete={"Objects": [{"Key": "x"}]})
    assert [d["Key"] for d in answer.get("Deleted", [])] == ["x"] and not answer.get("Errors")


def _redeliver_during_claim(monkeypatch, world, key: str, body: bytes) -> None:
    """Upload a new version of ``key`` right before the claim's commit point (once)."""
    real = claims.crash_point
    done = []

    def redeliver(step: str) -> None:
        if step == "claim.processing" and not done:
            done.append(step)
            world.seed.put_object(Bucket=world.input_bucket, Key=key, Body=body)
        real(step)

    monkeypatch.setattr(claims, "crash_point", redeliver)


@pytest.mark.usefixtures("in_process_workflow")  # the claim is the subject: the runs' steps in-process
@pytest.mark.parametrize("bucket_kind", ["versioned", "verify-first"])
def test_manifest_redelivered_during_a_claim_is_processed_never_lost(world, monkeypatch, bucket_kind):
    """The issue's reproduction: DeleteObject ignores If-Match and a manifest is re-uploaded under the
    same key while a tick claims the previous version. It must end processed (this or the next tick)."""
    world.image("a/one.tif", seed=1)
    world.image("a/two.tif", seed=2)
    if bucket_kind == "versioned":
        versioned(world)
    settings = dataclasses.replace(
        world.settings, delete_fallback="verify-first" if bucket_kind != "versioned" else "refuse"
    )
    world.proxy.add("ignore-if", "delete")
    world.manifest("r/again-raw.csv", ["a/one.tif,1"])
    _redeliver_during_claim(monkeypatch, world, "r/again-raw.csv", b"a/two.tif,1\n")
    first = world.tick(settings=settings)
    assert first.exit_code == 0
    assert "r/again-raw.csv" in world.objects(world.input_bucket), "the re-delivered version was deleted"
    time.sleep(1.1)  # the next tick's timestamp differs
    second = world.tick(settings=settings)
    assert second.exit_code == 0 and second.run_dir is not None
    triples = world.outcomes()["r/again-"]
    processed = sorted(row for t in triples for row in t["processed"].splitlines())
    # versioned: the claimed version was deleted by its VersionId and processed, the new one next;
    # verify-first: the HEAD saw the new version, the claim was rolled back, the next tick took the new one.
    want = ["a/one.tif,1", "a/two.tif,1"] if bucket_kind == "versioned" else ["a/two.tif,1"]
    assert processed == want
    assert "r/again-raw.csv" not in world.objects(world.input_bucket)
    if bucket_kind == "versioned":
        assert version_keys(world) == [], "bookkeeping versions piled up"
        assert version_keys(world, "r/again-processing") == []
