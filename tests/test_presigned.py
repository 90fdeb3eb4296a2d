"""Presigned transfers (s3.transfer: presigned): URLs signed on the access point, a batch job that holds no key,
uploads confirmed on the access point. Against each real S3 server of ``s3_target`` (moto over HTTP, Ceph RGW
over HTTPS with the test CA, unversioned and versioned), checksums ``auto`` (= when_required on an endpoint)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import pytest

from cog_pipeline import SAMPLES_DIR
from cog_pipeline.core.conversion import JpegOptions
from cog_pipeline.core.failures import FailureCode
from cog_pipeline.storage import presign, s3
from cog_pipeline.work import batch, presigned, signing
from cog_pipeline.work.imagelogs import advice
from cog_pipeline.work.manifest import jpeg_key
from cog_pipeline.work.outcomes import read_outcomes
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects, write_key_files

#: Every server of the suite; the Ceph RGW ones are slow (a cluster per session), so off the quick tier (make check).
SERVERS = pytest.mark.parametrize(
    "s3_target",
    [
        "moto",
        pytest.param("rgw-https", marks=pytest.mark.slow),
        pytest.param("rgw-https-versioned", marks=pytest.mark.slow),
    ],
    indirect=True,
)
MANIFEST = {
    "id": "m1",
    "csv": "manifests/m.csv",
    "key": "m-processing-20261201-000000.csv",
    "raw_key": "m-raw.csv",
    "stem": "m-",
    "timestamp": "20261201-000000",
}


@pytest.fixture
def target_settings(s3_target, tmp_path) -> s3.S3Settings:
    keys = write_key_files(tmp_path / "keys", s3_target.access_key, s3_target.secret_key)
    return s3.S3Settings(
        endpoint_url=s3_target.endpoint,
        access_key_file=str(keys[0]),
        secret_key_file=str(keys[1]),
        ca_bundle=s3_target.ca_bundle,
        max_attempts=2,
    )


def run_config(settings: s3.S3Settings, **s3_extra) -> dict:
    return {
        "batch_size": 20,
        "cog": {},
        "jpeg": {},
        "executor": "htcondor",
        "manifests": [MANIFEST],
        "s3": {
            **{k: v for k, v in dataclasses.asdict(settings).items() if v is not None},
            "input_bucket": INPUT_BUCKET,
            "output_bucket": OUTPUT_BUCKET,
            **s3_extra,
        },
    }


def job_config(config: dict) -> dict:
    """What the job's config says of keys on an execute point: the access point's paths, which do not exist
    there (the job must not need them)."""
    job = json.loads(json.dumps(config))
    job["s3"]["access_key_file"] = "/nonexistent/access"
    job["s3"]["secret_key_file"] = "/nonexistent/secret"
    return job


def make_run(tmp_path: Path, rows: list[str]) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "manifests").mkdir(parents=True)
    (run_dir / "manifests" / "m.csv").write_text("".join(f"{r}\n" for r in rows))
    return run_dir


def run_presigned(config: dict, run_dir: Path) -> list:
    """presign_batch -> the job (no key) -> confirm_batch, as the three rules do."""
    urls = presigned.urls_path(run_dir, "m1", "00000")
    records = presigned.records_path(run_dir, "m1", "00000")
    status = run_dir / "status" / "m1" / "batch-00000.jsonl"
    signing.presign_batch(config, run_dir, "m1", 0, urls)
    batch.run_batch(job_config(config), run_dir, "m1", 0, records, threads=1, urls_file=urls)
    return signing.confirm_batch(config, run_dir, "m1", 0, urls, records, status)


@SERVERS
def test_presigned_get_and_put_on_each_server(s3_target, target_settings, tmp_path):
    """A signed PUT (Content-Type, metadata and Content-MD5) stores the file as it is; a GET pinned to its ETag
    reads it back; pinned to another ETag it answers 412; over HTTPS the test CA is what makes it trusted."""
    signer = presign.signing_client(target_settings)
    transport = presign.Transport.from_settings(target_settings)
    src = tmp_path / "a b é.bin"
    src.write_bytes(b"presigned bytes " * 4096)
    md5 = presign.md5_of(src)
    put = presign.presign_put(signer, OUTPUT_BUCKET, "dir/a b é.bin", 600, "image/tiff", {"cog-pipeline-upload": "t1"})
    assert "X-Amz-Signature" in put.url and "x-amz-meta-cog-pipeline-upload" in put.headers
    answered = presign.upload(transport, put, src, md5)
    assert answered.strip('"') == md5
    head = s3_target.client().head_object(Bucket=OUTPUT_BUCKET, Key="dir/a b é.bin")
    assert head["Metadata"] == {"cog-pipeline-upload": "t1"} and head["ContentType"] == "image/tiff"
    assert s3.stored_problems(head, "dir/a b é.bin", src.stat().st_size, md5) == []

    get = presign.presign_get(signer, OUTPUT_BUCKET, "dir/a b é.bin", 600, head["ETag"])
    presign.download(transport, get, tmp_path / "back", src.stat().st_size, head["ETag"])
    assert (tmp_path / "back").read_bytes() == src.read_bytes()
    stale = presign.presign_get(signer, OUTPUT_BUCKET, "dir/a b é.bin", 600, '"00000000000000000000000000000000"')
    with pytest.raises(presign.PresignedError) as caught:
        presign.download(transport, stale, tmp_path / "stale")
    assert caught.value.precondition_failed, caught.value
    if s3_target.ca_bundle:  # HTTPS: without the test CA the certificate is not trusted, and says so
        untrusted = dataclasses.replace(transport, ca_bundle=None, max_attempts=1)
        with pytest.raises(presign.PresignedError, match="certificate is not trusted"):
            presign.download(untrusted, get, tmp_path / "x")


@pytest.mark.slow
@pytest.mark.parametrize("s3_target", ["rgw-https"], indirect=True)
def test_a_real_server_refuses_an_expired_url_and_a_changed_signed_header(s3_target, target_settings, tmp_path):
    """RGW checks signatures, expiry and Content-MD5 (moto none of them, so this runs on RGW): an expired URL is a
    403 taken for 'expired' (the row's code urls-expired), a metadata header other than the signed one is refused,
    and so is a body that does not match its Content-MD5."""
    signer = presign.signing_client(target_settings)
    transport = presign.Transport.from_settings(target_settings)
    src = tmp_path / "f"
    src.write_bytes(b"x" * 1000)
    put = presign.presign_put(signer, OUTPUT_BUCKET, "k", 1, "image/jpeg", {"cog-pipeline-upload": "t"})
    time.sleep(2.5)
    with pytest.raises(presign.PresignedError) as caught:
        presign.upload(transport, put, src, presign.md5_of(src))
    assert caught.value.status == 403 and caught.value.expired, caught.value
    forged = presign.presign_put(signer, OUTPUT_BUCKET, "k", 600, "image/jpeg", {"cog-pipeline-upload": "t"})
    forged = dataclasses.replace(forged, headers={**forged.headers, "x-amz-meta-cog-pipeline-upload": "other"})
    with pytest.raises(presign.PresignedError) as caught:
        presign.upload(transport, forged, src, presign.md5_of(src))
    assert caught.value.denied, caught.value
    # A body that is not the one whose MD5 the job computed is refused whole (Content-MD5): nothing stored.
    fine = presign.presign_put(signer, OUTPUT_BUCKET, "k", 600, "image/jpeg", {"cog-pipeline-upload": "t"})
    with pytest.raises(presign.PresignedError) as caught:
        presign.upload(transport, fine, src, presign.md5_of(SAMPLES_DIR / "byte.tif"))
    assert caught.value.status == 400 and caught.value.code in {"BadDigest", "InvalidDigest"}, caught.value
    assert s3.head(s3_target.client(), OUTPUT_BUCKET, "k") is None


@SERVERS
def test_a_batch_with_presigned_urls_converts_skips_and_fails_as_direct(s3_target, target_settings, tmp_path):
    """presign_batch -> job without keys -> confirm_batch: converted rows are confirmed and carry the source ETag,
    a missing input fails with its code decided on the access point, and a second batch skips what is done."""
    client = s3_target.client()
    client.upload_file(str(SAMPLES_DIR / "byte.tif"), INPUT_BUCKET, "a/one.tif")
    client.upload_file(str(SAMPLES_DIR / "RGB.byte.tif"), INPUT_BUCKET, "a/two é.tif")
    run_dir = make_run(tmp_path, ["a/one.tif,1", "a/two é.tif,3", "a/missing.tif,1"])
    config = run_config(target_settings)

    outcomes = {o.key: o for o in run_presigned(config, run_dir)}
    assert {k: o.status.value for k, o in outcomes.items()} == {
        "a/one.tif": "ok",
        "a/two é.tif": "ok",
        "a/missing.tif": "failed",
    }
    assert outcomes["a/missing.tif"].code is FailureCode.INPUT_MISSING
    source_etag = client.head_object(Bucket=INPUT_BUCKET, Key="a/one.tif")["ETag"]
    cog = client.head_object(Bucket=OUTPUT_BUCKET, Key="a/one.tif")
    assert cog["Metadata"][batch.SOURCE_ETAG_META] == source_etag
    assert client.head_object(Bucket=OUTPUT_BUCKET, Key=jpeg_key("a/one.tif"))["ContentType"] == "image/jpeg"
    assert set(read_outcomes(run_dir, "m1")) == set(outcomes)

    again = {o.key: o.status.value for o in run_presigned(config, run_dir)}
    assert again == {"a/one.tif": "skipped", "a/two é.tif": "skipped", "a/missing.tif": "failed"}


def test_a_job_that_starts_after_its_urls_expired_fails_its_rows_for_retry(
    s3_endpoint, s3_server, buckets, seed, settings, tmp_path
):
    seed.upload_file(str(SAMPLES_DIR / "byte.tif"), INPUT_BUCKET, "a/one.tif")
    run_dir = make_run(tmp_path, ["a/one.tif,1"])
    config = run_config(settings)
    urls = presigned.urls_path(run_dir, "m1", "00000")
    made = signing.presign_batch(config, run_dir, "m1", 0, urls)
    dataclasses.replace(made, made_at=made.made_at - 7200, expires_at=time.time() - 1).write(urls)
    records = presigned.records_path(run_dir, "m1", "00000")
    batch.run_batch(job_config(config), run_dir, "m1", 0, records, threads=1, urls_file=urls)
    [outcome] = signing.confirm_batch(config, run_dir, "m1", 0, urls, records, run_dir / "status" / "m1" / "b.jsonl")
    assert outcome.failed and outcome.code is FailureCode.URLS_EXPIRED and outcome.step == "download"
    assert "presigned URLs expired" in outcome.reason and "cog-pipeline retry" in outcome.reason
    assert "cog-pipeline retry" in advice(FailureCode.URLS_EXPIRED)
    assert s3.head(seed, OUTPUT_BUCKET, "a/one.tif") is None


def test_confirm_removes_an_object_that_is_not_the_file_the_job_made(buckets, seed, settings, tmp_path):
    """The job reports size and MD5 of what it PUT; a stored object of this batch's token that differs (a server
    that stored other bytes) is removed on the access point and the row fails at upload."""
    seed.upload_file(str(SAMPLES_DIR / "byte.tif"), INPUT_BUCKET, "a/one.tif")
    run_dir = make_run(tmp_path, ["a/one.tif,1"])
    config = run_config(settings)
    urls_file = presigned.urls_path(run_dir, "m1", "00000")
    records = presigned.records_path(run_dir, "m1", "00000")
    urls = signing.presign_batch(config, run_dir, "m1", 0, urls_file)
    batch.run_batch(job_config(config), run_dir, "m1", 0, records, threads=1, urls_file=urls_file)
    stored = seed.head_object(Bucket=OUTPUT_BUCKET, Key="a/one.tif")
    seed.put_object(Bucket=OUTPUT_BUCKET, Key="a/one.tif", Body=b"short", Metadata=stored["Metadata"])
    [outcome] = signing.confirm_batch(config, run_dir, "m1", 0, urls_file, records, run_dir / "status" / "b.jsonl")
    assert outcome.failed and outcome.step == "upload" and outcome.code is FailureCode.S3_FAILED
    assert "a/one.tif is not the file uploaded" in outcome.reason and "the object was removed" in outcome.reason
    assert s3.head(seed, OUTPUT_BUCKET, "a/one.tif") is None
    assert urls.images[0].token == stored["Metadata"][batch.UPLOAD_META]
    # An object someone else uploaded since (another token) is not ours to remove.
    batch.run_batch(job_config(config), run_dir, "m1", 0, records, threads=1, urls_file=urls_file)
    seed.put_object(Bucket=OUTPUT_BUCKET, Key="a/one.tif", Body=b"theirs", Metadata={batch.UPLOAD_META: "other"})
    [outcome] = signing.confirm_batch(config, run_dir, "m1", 0, urls_file, records, run_dir / "status" / "b.jsonl")
    assert outcome.failed and "replaced by another upload (left in place)" in outcome.reason
    assert seed.get_object(Bucket=OUTPUT_BUCKET, Key="a/one.tif")["Body"].read() == b"theirs"


def test_the_transfer_mode_follows_the_executor_unless_set():
    assert presigned.transfer_mode({"executor": "htcondor", "s3": {}}) == "presigned"
    assert presigned.transfer_mode({"executor": "local", "s3": {}}) == "direct"
    assert presigned.transfer_mode({"s3": {"transfer": "auto"}}, "htcondor") == "presigned"
    assert presigned.transfer_mode({"executor": "htcondor", "s3": {"transfer": "direct"}}) == "direct"
    assert presigned.transfer_mode({"executor": "local", "s3": {"transfer": "presigned"}}) == "presigned"
    assert presigned.expiry_s({"s3": {}}) == presign.DEFAULT_EXPIRY_S == 6 * 3600
    with pytest.raises(Exception, match="presign_expiry_s"):
        presigned.expiry_s({"s3": {"presign_expiry_s": 8 * 24 * 3600}})


def test_an_output_larger_than_one_put_is_refused_before_sending(tmp_path, monkeypatch):
    monkeypatch.setattr(presign, "SINGLE_PUT_LIMIT", 10)
    src = tmp_path / "big"
    src.write_bytes(b"x" * 11)
    request = presign.SignedRequest("PUT", "http://127.0.0.1:9/b/k")  # nothing listens: nothing may be sent
    with pytest.raises(presign.PipelineError, match=r"s3\.transfer: direct"):
        presign.upload(presign.Transport(max_attempts=1), request, src, presign.md5_of(src))


@pytest.mark.parametrize(
    "extra,presigned_plan",
    [
        ({"executor": "htcondor"}, True),
        ({}, False),
        (
            {
                "s3": {
                    "endpoint_url": "http://127.0.0.1:9",
                    "input_bucket": "in-bucket",
                    "output_bucket": "out-bucket",
                    "transfer": "presigned",
                }
            },
            True,
        ),
    ],
)
def test_the_plan_signs_and_confirms_each_batch_only_with_presigned_transfers(tmp_path, extra, presigned_plan):
    """Dry run: with presigned transfers each batch is presign_batch -> convert_batch -> confirm_batch (both local
    rules); with direct ones convert_batch alone writes the status file."""
    from test_workflow import make_run_dir, snakemake

    run = make_run_dir(tmp_path / "run", 45, {"batch_size": 20, **extra})
    proc = snakemake(run, "-n", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr
    counts = {
        rule: int(n)
        for rule, n in (
            line.split()[:2]
            for line in proc.stdout.splitlines()
            if line.split()[:1] and line.split()[0] in {"presign_batch", "convert_batch", "confirm_batch", "aggregate"}
        )
    }
    want = {"convert_batch": 3, "aggregate": 1}
    if presigned_plan:
        want.update(presign_batch=3, confirm_batch=3)
    assert counts == want, proc.stdout
    announced = "execute points get presigned URLs, no keys" in proc.stdout + proc.stderr
    assert announced is presigned_plan


# --------------------------------------------------------------------------------- files beside the JPEG, STAC


def sidecar_config(settings: s3.S3Settings) -> dict:
    return {**run_config(settings), "jpeg": {"sizes": [64]}}


SIDECARS = {f"a/one{suffix}" for suffix in (".jgw", ".jpg.aux.xml", ".64.jpg", ".64.jgw", ".64.jpg.aux.xml")}


@SERVERS
def test_presigned_puts_the_files_beside_the_jpeg_and_confirms_them(s3_target, target_settings, tmp_path):
    """Every key the jpeg: settings can produce is signed; the job PUTs those it wrote, the access point confirms
    them like the JPEG; the recorded STAC Item has the checksums of the stored COG and JPEG."""
    client = s3_target.client()
    client.upload_file(str(SAMPLES_DIR / "byte.tif"), INPUT_BUCKET, "a/one.tif")
    run_dir = make_run(tmp_path, ["a/one.tif,1"])
    config = sidecar_config(target_settings)
    [outcome] = run_presigned(config, run_dir)
    assert outcome.status.value == "ok", outcome.reason
    assert set(outcome.sidecars) == SIDECARS
    urls = presigned.BatchUrls.read(presigned.urls_path(run_dir, "m1", "00000"))
    assert {s for s, _ in urls.images[0].sidecar_puts} == set(batch.sidecar_suffixes(JpegOptions(sizes=(64,))))
    records = list(presigned.read_records(presigned.records_path(run_dir, "m1", "00000")))
    assert {u.key for u in records[0].uploads} == {"a/one.tif", "a/one.jpg"} | SIDECARS
    for key in SIDECARS:
        head = client.head_object(Bucket=OUTPUT_BUCKET, Key=key)
        assert head["Metadata"][batch.UPLOAD_META] == urls.images[0].token
    assert client.head_object(Bucket=OUTPUT_BUCKET, Key="a/one.jgw")["ContentType"] == "text/plain"
    image = outcome.stac_item["assets"]["image"]
    cog = client.get_object(Bucket=OUTPUT_BUCKET, Key="a/one.tif")["Body"].read()
    assert image["file:checksum"] == "1220" + hashlib.sha256(cog).hexdigest() and image["file:size"] == len(cog)
    assert outcome.stac_item["properties"]["cog_pipeline:cog_pixel_digest"] == outcome.cog_pixel_digest


def test_presigned_a_failed_cog_put_leaves_no_file_beside_the_jpeg(buckets, seed, settings, tmp_path):
    """The COG's PUT fails (its URL names a bucket that does not exist): the image fails at upload, and the access
    point removes the files beside the JPEG the job had stored (the JPEG stays, as in direct mode)."""
    seed.upload_file(str(SAMPLES_DIR / "byte.tif"), INPUT_BUCKET, "a/one.tif")
    run_dir = make_run(tmp_path, ["a/one.tif,1"])
    config = sidecar_config(settings)
    urls_file = presigned.urls_path(run_dir, "m1", "00000")
    records = presigned.records_path(run_dir, "m1", "00000")
    urls = signing.presign_batch(config, run_dir, "m1", 0, urls_file)
    image = urls.images[0]
    broken = dataclasses.replace(image.cog_put, url=image.cog_put.url.replace(f"/{OUTPUT_BUCKET}/", "/no-such-bucket/"))
    dataclasses.replace(urls, images=(dataclasses.replace(image, cog_put=broken),)).write(urls_file)
    batch.run_batch(job_config(config), run_dir, "m1", 0, records, threads=1, urls_file=urls_file)
    assert {k for k in all_objects(seed, OUTPUT_BUCKET)} == {"a/one.jpg"} | SIDECARS  # before the confirmation
    [outcome] = signing.confirm_batch(config, run_dir, "m1", 0, urls_file, records, run_dir / "status" / "b.jsonl")
    assert outcome.failed and outcome.step == "upload"
    assert "the files beside the JPEG stored before were removed" in outcome.reason and "a/one.64.jpg" in outcome.reason
    assert set(all_objects(seed, OUTPUT_BUCKET)) == {"a/one.jpg"}


def test_presigned_confirm_fails_an_image_whose_world_file_is_not_the_file_made(buckets, seed, settings, tmp_path):
    seed.upload_file(str(SAMPLES_DIR / "byte.tif"), INPUT_BUCKET, "a/one.tif")
    run_dir = make_run(tmp_path, ["a/one.tif,1"])
    config = sidecar_config(settings)
    urls_file = presigned.urls_path(run_dir, "m1", "00000")
    records = presigned.records_path(run_dir, "m1", "00000")
    signing.presign_batch(config, run_dir, "m1", 0, urls_file)
    batch.run_batch(job_config(config), run_dir, "m1", 0, records, threads=1, urls_file=urls_file)
    stored = seed.head_object(Bucket=OUTPUT_BUCKET, Key="a/one.jgw")
    seed.put_object(Bucket=OUTPUT_BUCKET, Key="a/one.jgw", Body=b"1\n0\n0\n-1\n0\n0\n", Metadata=stored["Metadata"])
    [outcome] = signing.confirm_batch(config, run_dir, "m1", 0, urls_file, records, run_dir / "status" / "b.jsonl")
    assert outcome.failed and outcome.step == "upload" and outcome.stac_item is None and outcome.sidecars == ()
    assert "a/one.jgw is not the file uploaded" in outcome.reason
    left = set(all_objects(seed, OUTPUT_BUCKET))
    assert not left & SIDECARS and "a/one.jpg" in left  # the bad one and the others of the failed image removed


def test_presigned_a_file_beside_the_jpeg_without_its_url_fails_before_any_put(buckets, seed, settings, tmp_path):
    """URLs signed for other jpeg: settings than the job's: the image fails (internal) naming the key; nothing sent."""
    seed.upload_file(str(SAMPLES_DIR / "byte.tif"), INPUT_BUCKET, "a/one.tif")
    run_dir = make_run(tmp_path, ["a/one.tif,1"])
    urls_file = presigned.urls_path(run_dir, "m1", "00000")
    records = presigned.records_path(run_dir, "m1", "00000")
    signing.presign_batch(run_config(settings), run_dir, "m1", 0, urls_file)  # no smaller previews signed
    batch.run_batch(job_config(sidecar_config(settings)), run_dir, "m1", 0, records, threads=1, urls_file=urls_file)
    [record] = presigned.read_records(records)
    assert record.outcome.failed and record.outcome.code is FailureCode.INTERNAL
    assert "no presigned URL for a/one.64.jpg" in record.outcome.reason and record.uploads == ()
    assert all_objects(seed, OUTPUT_BUCKET) == {}


def test_presigned_confirm_wants_every_file_the_job_says_it_made(buckets, seed, settings, tmp_path):
    """An outcome naming a file beside the JPEG whose upload the job did not report is not confirmed."""
    seed.upload_file(str(SAMPLES_DIR / "byte.tif"), INPUT_BUCKET, "a/one.tif")
    run_dir = make_run(tmp_path, ["a/one.tif,1"])
    config = sidecar_config(settings)
    urls_file = presigned.urls_path(run_dir, "m1", "00000")
    records = presigned.records_path(run_dir, "m1", "00000")
    signing.presign_batch(config, run_dir, "m1", 0, urls_file)
    batch.run_batch(job_config(config), run_dir, "m1", 0, records, threads=1, urls_file=urls_file)
    [record] = presigned.read_records(records)
    kept = tuple(u for u in record.uploads if u.key != "a/one.64.jgw")
    presigned.write_records(records, [presigned.JobRecord(record.outcome, kept)])
    [outcome] = signing.confirm_batch(config, run_dir, "m1", 0, urls_file, records, run_dir / "status" / "b.jsonl")
    assert outcome.failed and "the job reported no confirmed upload of a/one.64.jgw" in outcome.reason
