"""Every upload is confirmed once stored (s3.verify_upload: size and ETag, single PUT or multipart): an
object that is short, or holds the aws-chunked framing inside it (boto/boto3#4435), fails its row with
a reason and is removed; an opaque ETag (SSE-KMS, SSE-C, other servers) is checked by size only."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path

import pytest

from cog_pipeline.work import batch
from cog_pipeline.storage import s3
from cog_pipeline.core.errors import ImageError
from cog_pipeline.work.manifest import jpeg_key
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, one_manifest_config
from faults.proxy import FaultProxy, classify

MiB = 1024 * 1024


class RewritingProxy(FaultProxy):
    """The fault proxy, plus what a misbehaving server does to a request that it answers as a success:
    ``rewrite_body`` changes the bytes of matching requests before they reach the server (what it stores
    is not what was sent), ``rewrite_headers`` changes the headers of matching answers (what it reports
    is not what it stores). Other rules (``reset-after``...) still apply on top.

    Kept in this module rather than as rule kinds of faults/proxy.py, which is being reworked elsewhere.
    """

    def __init__(self, upstream: str):
        super().__init__(upstream)
        self.body_rewrites: list[tuple[str, str, object]] = []
        self.header_rewrites: list[tuple[str, str, dict[str, str]]] = []
        owner, base = self, self.server.RequestHandlerClass

        class Handler(base):
            def _forward(self, body, *args, **kwargs):
                op, _bucket, key = classify(kwargs.get("method") or self.command, self.path, self.headers)
                for want_op, key_contains, transform in owner.body_rewrites:
                    if op == want_op and key_contains in key:
                        body = transform(body)
                status, reason, headers, data = super()._forward(body, *args, **kwargs)
                for want_op, key_contains, replace in owner.header_rewrites:
                    if op == want_op and key_contains in key:
                        names = {name.lower() for name in replace}
                        headers = [(n, v) for n, v in headers if n.lower() not in names] + list(replace.items())
                return status, reason, headers, data

        self.server.RequestHandlerClass = Handler

    def rewrite_body(self, op: str, key_contains: str, transform) -> None:
        self.body_rewrites.append((op, key_contains, transform))

    def rewrite_headers(self, op: str, key_contains: str, headers: dict[str, str]) -> None:
        self.header_rewrites.append((op, key_contains, headers))


def aws_chunked(body: bytes) -> bytes:
    """``body`` in aws-chunked framing, as a server that does not decode it stores it (boto/boto3#4435)."""
    signature = "0" * 64
    return (
        f"{len(body):x};chunk-signature={signature}\r\n".encode()
        + body
        + f"\r\n0;chunk-signature={signature}\r\n\r\n".encode()
    )


@pytest.fixture(scope="module")
def rewriting_proxy(s3_endpoint):
    proxy = RewritingProxy(s3_endpoint).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxy(rewriting_proxy, s3_server):
    rewriting_proxy.reset()
    rewriting_proxy.body_rewrites.clear()
    rewriting_proxy.header_rewrites.clear()
    yield rewriting_proxy
    rewriting_proxy.reset()
    rewriting_proxy.body_rewrites.clear()
    rewriting_proxy.header_rewrites.clear()


@pytest.fixture
def proxied(settings, proxy):
    """Settings for the code under test, through the proxy (one retry: lost answers are quick to give up on)."""
    return dataclasses.replace(settings, endpoint_url=proxy.endpoint, max_attempts=1)


def random_file(path: Path, size: int, seed: int = 1) -> Path:
    path.write_bytes(hashlib.shake_256(str(seed).encode()).digest(size))
    return path


def upload(client, key: str, src: Path, settings: s3.S3Settings) -> None:
    s3.upload_file(client, OUTPUT_BUCKET, key, src, settings, "application/octet-stream")


def count_heads(client) -> list[str]:
    """The keys of the HeadObject calls ``client`` makes from now on."""
    keys: list[str] = []
    client.meta.events.register("before-call.s3.HeadObject", lambda params, **_: keys.append(params["url_path"]))
    return keys


def context(settings: s3.S3Settings) -> batch.ImageContext:
    return batch.ImageContext(
        {"s3": {**dataclasses.asdict(settings), "input_bucket": INPUT_BUCKET, "output_bucket": OUTPUT_BUCKET}}
    )


# --- verify_upload on what the server really stored --------------------------------------------------------


def test_single_part_upload_verifies_with_one_head(buckets, seed, settings, tmp_path):
    src = random_file(tmp_path / "one.bin", 300_000)
    client = s3.make_client(settings)
    upload(client, "out/one.bin", src, settings)
    heads = count_heads(client)
    s3.verify_upload(client, OUTPUT_BUCKET, "out/one.bin", src, settings)
    assert len(heads) == 1
    assert (
        seed.head_object(Bucket=OUTPUT_BUCKET, Key="out/one.bin")["ETag"].strip('"')
        == hashlib.md5(src.read_bytes()).hexdigest()
        == s3.expected_etag(src, None)
    )

    other = tmp_path / "other.bin"  # same size, one byte different: only the ETag can tell
    data = bytearray(src.read_bytes())
    data[150_000] ^= 1
    other.write_bytes(data)
    with pytest.raises(
        s3.UploadMismatch,
        match=r"out/one\.bin.*ETag [0-9a-f]{32} expected \(single PUT\), "
        r"[0-9a-f]{32} found; the object was removed",
    ) as info:
        s3.verify_upload(client, OUTPUT_BUCKET, "out/one.bin", other, settings)
    assert "size" not in info.value.detail


def test_multipart_upload_verifies_and_its_etag_counts_the_parts(buckets, seed, settings, tmp_path):
    small_parts = dataclasses.replace(settings, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    src = random_file(tmp_path / "big.bin", 12 * MiB)
    client = s3.make_client(small_parts)
    upload(client, "out/big.bin", src, small_parts)
    etag = seed.head_object(Bucket=OUTPUT_BUCKET, Key="out/big.bin")["ETag"].strip('"')
    assert etag.endswith("-3") and etag == s3.expected_etag(src, 5 * MiB)
    s3.verify_upload(client, OUTPUT_BUCKET, "out/big.bin", src, small_parts)

    # Expecting other parts (or a single PUT) than were sent is a mismatch: the parts are really counted.
    for wrong in (
        dataclasses.replace(small_parts, multipart_chunksize=6 * MiB),
        dataclasses.replace(small_parts, multipart_threshold=64 * MiB),
    ):
        with pytest.raises(s3.UploadMismatch, match=r"ETag .* expected"):
            s3.verify_upload(client, OUTPUT_BUCKET, "out/big.bin", src, wrong)


def test_expected_etag_cuts_parts_that_are_no_multiple_of_the_read_size(tmp_path):
    part = MiB + 3
    data = hashlib.shake_256(b"x").digest(3 * part + 7)
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    digests = b"".join(hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part))
    assert s3.expected_etag(src, part) == f"{hashlib.md5(digests).hexdigest()}-4"
    exact = tmp_path / "exact.bin"
    exact.write_bytes(data[: 2 * part])
    assert s3.expected_etag(exact, part).endswith("-2")
    assert s3.expected_etag(src, None) == hashlib.md5(data).hexdigest()


def test_part_size_is_the_one_s3transfer_uses():
    settings = s3.S3Settings(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)
    assert s3.upload_part_size(settings, 8 * MiB - 1) is None  # below the threshold: one PUT
    assert s3.upload_part_size(settings, 8 * MiB) == 8 * MiB  # at it: multipart
    assert s3.upload_part_size(settings, 10_000 * 8 * MiB) == 8 * MiB  # 10000 parts: kept
    assert s3.upload_part_size(settings, 10_000 * 8 * MiB + 1) == 16 * MiB  # more: doubled
    assert s3.upload_part_size(settings, 40_001 * 8 * MiB) == 64 * MiB  # doubled until <= 10000 parts
    tiny = s3.S3Settings(multipart_threshold=MiB, multipart_chunksize=MiB)
    assert s3.upload_part_size(tiny, 3 * MiB) == 5 * MiB  # S3's 5 MiB minimum part


def test_aws_chunked_framing_stored_inside_the_object_is_a_mismatch(buckets, seed, proxied, proxy, tmp_path):
    src = random_file(tmp_path / "framed.bin", 200_000)
    proxy.rewrite_body("put", "out/framed.bin", aws_chunked)
    client = s3.make_client(proxied)
    upload(client, "out/framed.bin", src, proxied)  # the server answers 200: only a check can tell
    stored = seed.get_object(Bucket=OUTPUT_BUCKET, Key="out/framed.bin")["Body"].read()
    assert stored.startswith(b"30d40;chunk-signature=") and stored != src.read_bytes()
    with pytest.raises(s3.UploadMismatch) as info:
        s3.verify_upload(client, OUTPUT_BUCKET, "out/framed.bin", src, proxied)
    message = str(info.value)
    assert "out/framed.bin" in message and f"size 200000 bytes expected, {len(stored)} found" in message
    assert f"ETag {hashlib.md5(src.read_bytes()).hexdigest()} expected" in message


def test_framed_bytes_uploaded_by_another_client_are_a_mismatch(buckets, seed, settings, tmp_path):
    src = random_file(tmp_path / "a.bin", 70_000)
    seed.put_object(Bucket=OUTPUT_BUCKET, Key="out/a.bin", Body=aws_chunked(src.read_bytes()))
    with pytest.raises(s3.UploadMismatch, match=r"out/a\.bin.*size 70000 bytes expected, 70\d{3} found"):
        s3.verify_upload(s3.make_client(settings), OUTPUT_BUCKET, "out/a.bin", src, settings)


def test_missing_object_is_a_mismatch(buckets, settings, tmp_path):
    src = random_file(tmp_path / "a.bin", 10)
    with pytest.raises(s3.UploadMismatch, match=r"no object at out/none\.bin") as info:
        s3.verify_upload(s3.make_client(settings), OUTPUT_BUCKET, "out/none.bin", src, settings)
    assert info.value.missing and "removed" not in str(info.value)


@pytest.mark.parametrize(
    "etag,extra",
    [
        ('"opaque/Zm9vYmFy=="', {}),  # no MD5 form at all
        ('"1b2cf535f27731c974343645a3985328-ff"', {}),  # nor this (the part count is no number)
        ('"' + "a" * 32 + '"', {"x-amz-server-side-encryption": "aws:kms"}),  # MD5-like, but SSE-KMS
        ('"' + "b" * 32 + '"', {"x-amz-server-side-encryption-customer-algorithm": "AES256"}),  # SSE-C
    ],
)
def test_opaque_etag_is_checked_by_size_only(buckets, proxied, proxy, tmp_path, caplog, etag, extra):
    src = random_file(tmp_path / "o.bin", 50_000)
    client = s3.make_client(proxied)
    upload(client, "out/o.bin", src, proxied)
    proxy.rewrite_headers("head", "out/o.bin", {"ETag": etag, **extra})
    with caplog.at_level(logging.INFO, logger="cog_pipeline.storage.s3"):
        s3.verify_upload(client, OUTPUT_BUCKET, "out/o.bin", src, proxied)
    assert "checked the size only" in caplog.text and "out/o.bin" in caplog.text

    proxy.rewrite_headers("head", "out/o.bin", {"Content-Length": "49999"})  # the size is still checked
    with pytest.raises(s3.UploadMismatch, match="size 50000 bytes expected, 49999 found"):
        s3.verify_upload(client, OUTPUT_BUCKET, "out/o.bin", src, proxied)


def test_md5_etag_without_encryption_is_compared(buckets, proxied, proxy, tmp_path):
    """The counterpart of the SSE cases above: the same MD5-like ETag, not encrypted, is a mismatch."""
    src = random_file(tmp_path / "o.bin", 50_000)
    client = s3.make_client(proxied)
    upload(client, "out/o.bin", src, proxied)
    proxy.rewrite_headers("head", "out/o.bin", {"ETag": '"' + "a" * 32 + '"'})
    with pytest.raises(s3.UploadMismatch, match=r"a{32} found"):
        s3.verify_upload(client, OUTPUT_BUCKET, "out/o.bin", src, proxied)


# --- batch._upload: a mismatch fails the image and leaves nothing at the key ----------------------------------


def test_upload_of_a_framed_object_fails_and_removes_it(buckets, seed, proxied, proxy, tmp_path):
    src = random_file(tmp_path / "c.tif", 100_000)
    proxy.rewrite_body("put", "out/c.tif", aws_chunked)
    ctx = context(proxied)
    heads = count_heads(ctx.client)
    with pytest.raises(ImageError) as info:
        batch._upload(ctx, "out/c.tif", src, "image/tiff", {})
    assert info.value.step == "upload"
    assert "out/c.tif" in info.value.message and "size 100000 bytes expected" in info.value.message
    assert info.value.message.endswith("the object was removed")
    assert "Contents" not in seed.list_objects_v2(Bucket=OUTPUT_BUCKET)
    assert len(heads) == 1


def test_upload_that_verifies_keeps_the_object_with_one_head(buckets, seed, proxied, proxy, tmp_path):
    src = random_file(tmp_path / "c.tif", 100_000)
    ctx = context(proxied)
    heads = count_heads(ctx.client)
    batch._upload(ctx, "out/c.tif", src, "image/tiff", {"k": "v"})
    assert seed.get_object(Bucket=OUTPUT_BUCKET, Key="out/c.tif")["Body"].read() == src.read_bytes()
    assert len(heads) == 1 and proxy.calls["put"] == 1 and proxy.calls["delete"] == 0


def test_lost_answer_is_verified_with_the_same_head(buckets, seed, proxied, proxy, tmp_path, caplog):
    src = random_file(tmp_path / "c.tif", 100_000)
    proxy.add("reset-after", "put", key_contains="out/c.tif")  # every attempt lands, no answer arrives
    ctx = context(proxied)
    heads = count_heads(ctx.client)
    with caplog.at_level(logging.INFO, logger="cog_pipeline.work.batch"):
        batch._upload(ctx, "out/c.tif", src, "image/tiff", {})
    assert "the object is there, complete" in caplog.text
    assert proxy.calls["put"] == 2 and len(heads) == 1
    assert seed.get_object(Bucket=OUTPUT_BUCKET, Key="out/c.tif")["Body"].read() == src.read_bytes()


def test_lost_answer_to_a_short_upload_fails_and_removes_it(buckets, seed, proxied, proxy, tmp_path):
    """The object landed (with this upload's token) but short: not accepted as 'there, complete'."""
    src = random_file(tmp_path / "c.tif", 100_000)
    proxy.add("reset-after", "put", key_contains="out/c.tif")
    proxy.rewrite_body("put", "out/c.tif", lambda body: body[:60_000])
    ctx = context(proxied)
    heads = count_heads(ctx.client)
    with pytest.raises(ImageError, match=r"out/c\.tif.*size 100000 bytes expected, 60000 found.*removed"):
        batch._upload(ctx, "out/c.tif", src, "image/tiff", {})
    assert "Contents" not in seed.list_objects_v2(Bucket=OUTPUT_BUCKET)
    assert len(heads) == 1


def test_object_replaced_by_another_upload_is_left_in_place(buckets, seed, proxied, proxy, tmp_path):
    """A mismatch on an object that is not this upload's (no token of ours) is not removed."""
    src = random_file(tmp_path / "c.tif", 100_000)
    proxy.rewrite_headers(
        "head", "out/c.tif", {"x-amz-meta-cog-pipeline-upload": "someone-else", "Content-Length": "5"}
    )
    ctx = context(proxied)
    with pytest.raises(ImageError, match="replaced by another upload"):
        batch._upload(ctx, "out/c.tif", src, "image/tiff", {})
    assert seed.head_object(Bucket=OUTPUT_BUCKET, Key="out/c.tif")["ContentLength"] == 100_000
    assert proxy.calls["delete"] == 0


# --- end to end: one batch row ---------------------------------------------------------------------------------


def test_short_cog_fails_its_row_with_the_reason_and_leaves_nothing_at_its_key(
    buckets, seed, proxied, proxy, samples, tmp_path
):
    key = "imagery/short.tif"
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, key)
    seed.upload_file(str(samples / "byte.tif"), INPUT_BUCKET, "imagery/fine.tif")
    run_dir = tmp_path / "run"
    (run_dir / "manifests").mkdir(parents=True)
    (run_dir / "manifests" / "m.csv").write_bytes(f"{key},1\nimagery/fine.tif,1\n".encode())
    config = one_manifest_config({k: v for k, v in dataclasses.asdict(proxied).items() if v is not None})
    proxy.rewrite_body("put", key, lambda body: body[: len(body) // 2])  # the COG only (the JPEG is .jpg)

    records = batch.run_batch(config, run_dir, "m1", 0, run_dir / "status" / "b0.jsonl", threads=1)

    status = {r["key"]: r for r in map(json.loads, (run_dir / "status" / "b0.jsonl").read_text().splitlines())}
    assert [r.status for r in records] == ["failed", "ok"] and status[key]["status"] == "failed"
    row = status[key]
    assert row["step"] == "upload"
    assert key in row["reason"] and "bytes expected" in row["reason"] and "the object was removed" in row["reason"]
    sizes = [int(n) for n in re.findall(r"size (\d+) bytes expected, (\d+) found", row["reason"])[0]]
    assert sizes[1] == sizes[0] // 2
    listed = {o["Key"] for o in seed.list_objects_v2(Bucket=OUTPUT_BUCKET).get("Contents", [])}
    assert key not in listed
    assert jpeg_key(key) in listed  # uploaded (and confirmed) before the COG: it stays
    assert {"imagery/fine.tif", "imagery/fine.jpg"} <= listed
    # per image: the input's HeadObject and one per output (JPEG, its world file and .aux.xml, COG; the short COG
    # too: its own, no more); deleted: the short COG and the failed image's two files beside its JPEG
    assert proxy.calls["head"] == 2 * (1 + 4) and proxy.calls["delete"] == 1 + 2
    assert {"imagery/short.jgw", "imagery/short.jpg.aux.xml"}.isdisjoint(listed)
