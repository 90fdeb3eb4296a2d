"""S3 errors on every call type, through the fault proxy: boto3's configured retries (standard mode,
bounded attempts, backoff) carry the run through, and the outcome is exactly the fault-free one."""

from __future__ import annotations

import time

import boto3
import botocore.exceptions
import botocore.retries.standard
import pytest
from botocore.config import Config

from cog_pipeline.storage import s3
from cog_pipeline.core.errors import PipelineError

MiB = 1024 * 1024
#: Every S3 operation the pipeline makes (the proxy's names); it makes no CopyObject call.
OPERATIONS = [
    "head_bucket",
    "list",
    "head",
    "get",
    "put",
    "delete",
    "create_multipart",
    "upload_part",
    "complete_multipart",
]
SMALL_PARTS = {"s3": {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB}, "batch_size": 2}


def scenario(world):
    """Two small images, one over the (lowered) multipart threshold, a missing one; a manifest."""
    world.put("a/one.tif", _sample("byte.tif"))
    world.image("a/two.tif", width=64, height=48, count=3, seed=2)
    world.image("big/multi.tif", width=1900, height=1100, count=3, seed=3)  # ~6 MB: 2 parts up, ranged GETs down
    world.manifest("s3/faults-raw.csv", ["a/one.tif,1", "a/two.tif,3", "big/multi.tif,3", "a/missing.tif,1"])
    world.snapshot()
    return {
        "s3/faults-": {
            "processed": ["a/one.tif", "a/two.tif", "big/multi.tif"],
            "failed": {"a/missing.tif": "not found"},
        }
    }


def _sample(name):
    from cog_pipeline import SAMPLES_DIR

    return SAMPLES_DIR / name


#: One kind per way the pipeline meets a fault: a plain server error (500), a throttling one (503 SlowDown:
#: botocore's throttling path, as a bare 429 takes, whose classification test_throttling_429... proves, and the
#: mixed test below injects), a connection reset before and after the server applied the call (lost answer),
#: and a 500 after it applied the call.
EVERY_OPERATION_KINDS = ["500", "503", "reset", "reset-after", "500-after"]
#: The kinds whose tick runs real Snakemake and its job processes; the others run the workflow's steps in the
#: test's process (the same clients and retry settings, built from the same run config, without the start-ups).
SNAKEMAKE_KINDS = {"503", "reset-after"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", EVERY_OPERATION_KINDS)
def test_fault_kind_on_every_operation_run_completes_exactly(world, kind, request):
    if kind not in SNAKEMAKE_KINDS:
        request.getfixturevalue("in_process_workflow")
    expected = scenario(world)
    for op in OPERATIONS:
        world.proxy.add(kind, op, nth=[1, 2])  # the first calls: the tick's own (claim, listing...)
    world.proxy.add(kind, OPERATIONS, probability=0.08)  # and some of everyone's (batch jobs, aggregate)

    result = world.tick(overrides=SMALL_PARTS)

    assert result.exit_code == 0
    world.check(expected)
    injected = {op for op, k in world.proxy.injected}
    assert injected >= set(OPERATIONS), f"not injected on: {set(OPERATIONS) - injected}"
    assert world.proxy.calls["upload_part"] >= 2 and world.proxy.calls["complete_multipart"] >= 1


@pytest.mark.slow
def test_mixed_faults_at_random_on_every_call(world):
    """All kinds at once, each call having a 1-in-5 chance of some fault (fixed seed)."""
    expected = scenario(world)
    for kind in ("500", "503", "429", "reset", "reset-after", "500-after"):
        world.proxy.add(kind, OPERATIONS, probability=0.04)
    result = world.tick(overrides=SMALL_PARTS)
    assert result.exit_code == 0
    world.check(expected)
    assert world.proxy.total_injected() >= 10


def test_retries_are_bounded_and_nothing_is_claimed_when_s3_keeps_failing(world):
    expected_manifest = b"a/one.tif,1\n"
    world.manifest("s3/down-raw.csv", expected_manifest)
    world.proxy.add("503", "head_bucket")
    settings = s3.S3Settings(
        endpoint_url=world.proxy.endpoint,
        access_key_file=world.settings.access_key_file,
        secret_key_file=world.settings.secret_key_file,
        max_attempts=3,
    )
    started = time.monotonic()
    with pytest.raises(PipelineError, match="input bucket 'test-input': HeadBucket failed: 503"):
        world.tick(settings=settings)
    # boto3's retries "max_attempts" counts retries: the first request plus 3, no more.
    assert world.proxy.calls["head_bucket"] == 4
    assert time.monotonic() - started < 15
    assert world.body(world.input_bucket, "s3/down-raw.csv") == expected_manifest
    assert not [k for k in world.objects(world.input_bucket) if k != "s3/down-raw.csv"]


@pytest.mark.slow
@pytest.mark.usefixtures("in_process_workflow")
def test_lost_answer_to_the_last_upload_attempt_is_recognised(world):
    """boto3 gives up on a PUT whose every answer was lost, though the object landed: the row is
    processed anyway (the object carries this upload's token), not failed. (The batch is the subject: it runs
    in the test's process.)"""
    world.image("a/lost.tif", seed=5)
    world.manifest("s3/lost-raw.csv", ["a/lost.tif,1"])
    world.snapshot()
    world.proxy.add("reset-after", "put", key_contains="a/lost.tif", times=9)  # all 1 + 8 attempts of the COG PUT
    result = world.tick()
    assert result.exit_code == 0
    world.check({"s3/lost-": {"processed": ["a/lost.tif"]}})
    logs = "".join(
        p.read_text(errors="replace")
        for d in ("logs", "status")
        for p in (result.run_dir / d).rglob("*")
        if p.is_file()
    )
    assert "the object is there, complete" in logs


@pytest.mark.slow
def test_output_listing_denied_then_the_next_tick_finishes_the_run(world):
    """The aggregate cannot list the output bucket: the tick exits 1 and leaves the processing file;
    the next tick (nothing else changed) notices the unfinished run and finishes it."""
    world.image("a/one.tif", seed=1)
    world.image("a/two.tif", seed=2)
    world.manifest("s3/deny-raw.csv", ["a/one.tif,1", "a/two.tif,1"])
    world.snapshot()
    rule = world.proxy.add("forbidden", "list", bucket=world.output_bucket)
    first = world.tick()
    assert first.exit_code == 1
    assert [k for k in world.objects(world.input_bucket) if "processing-" in k]
    world.proxy.rules.remove(rule)

    second = world.tick()
    assert second.exit_code == 0 and second.resumed == [first.run_dir] and second.run_dir is None
    world.check({"s3/deny-": {"processed": ["a/one.tif", "a/two.tif"]}})


@pytest.mark.slow
def test_throttling_429_without_a_known_code_is_retried(world, monkeypatch):
    """A bare 429 (HEAD: no body; or code 'TooManyRequests') is retried: by botocore's own
    ThrottlingStatusCodeChecker, or by s3's shim where botocore predates it."""
    world.put("k.tif", b"x")
    for shim in (False, True):
        if shim:  # as with botocore 1.40: no status-code check, only known codes
            monkeypatch.setattr(
                botocore.retries.standard.ThrottlingStatusCodeChecker, "is_retryable", lambda self, context: False
            )
            monkeypatch.setattr(s3, "NEEDS_429_SHIM", True)
        client = s3.make_client(world.settings)
        world.proxy.reset()
        world.proxy.add("429", "head", nth=[1, 2])
        world.proxy.add("429", "get", nth=[1, 2])
        assert client.head_object(Bucket=world.input_bucket, Key="k.tif")["ContentLength"] == 1
        assert client.get_object(Bucket=world.input_bucket, Key="k.tif")["Body"].read() == b"x"
        assert world.proxy.calls["head"] == 3 and world.proxy.calls["get"] == 3
    plain = boto3.client(
        "s3",
        endpoint_url=world.proxy.endpoint,
        region_name="us-east-1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )
    world.proxy.reset()
    world.proxy.add("429", "head", nth=[1])
    # What the shim is for: without it this botocore gives up on the first bare 429 (no retry at all).
    with pytest.raises(botocore.exceptions.ClientError) as err:
        plain.head_object(Bucket=world.input_bucket, Key="k.tif")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert err.value.response["Error"]["Code"] == "429"  # HEAD: no body, so botocore names it by the status
    assert world.proxy.calls["head"] == 1


@pytest.mark.parametrize(
    "op,key", [("put", ".cog-pipeline/claims/"), ("put", "processing-"), ("delete", "s3/claim-raw.csv")]
)
@pytest.mark.slow
@pytest.mark.usefixtures("in_process_workflow")
def test_lost_answer_to_a_claim_step_still_claims_the_manifest_once(world, op, key):
    """The conditional marker / processing write or the conditional delete of the raw manifest is applied
    but its answer is lost: boto3's retry then meets 412 (or 404). The tick must see its own write, not
    'another tick', claim the manifest in this very tick, and leave no marker behind. (The claim is the
    subject: the run's steps are in the test's process.)"""
    world.image("a/one.tif", seed=1)
    world.manifest("s3/claim-raw.csv", ["a/one.tif,1"])
    world.snapshot()
    world.proxy.add("reset-after", op, key_contains=key, nth=[1])
    result = world.tick()
    assert result.exit_code == 0 and result.run_dir is not None and world.proxy.total_injected() == 1
    world.check({"s3/claim-": {"processed": ["a/one.tif"]}})
