"""The fault proxy's emulations of real S3-compatible servers' behaviours (faults/proxy.py, second table):
each does what it documents to the requests it applies to, and leaves every other request untouched."""

from __future__ import annotations

import base64
import hashlib
import http.client
import urllib.parse
import zlib

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, FlexibleChecksumError

from cog_pipeline.storage.local_s3 import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY
from conftest import OUTPUT_BUCKET
from faults.proxy import FAULT_KINDS, KINDS, QUIRK_KINDS

BUCKET = OUTPUT_BUCKET


def client(proxy, checksums: str = "when_required", trailer: bool = False):
    """A boto3 client through the proxy, without retries; ``trailer``: its PutObject checksums go in an
    aws-chunked trailer even over plain HTTP (which boto3 only does over HTTPS by itself)."""
    s3 = boto3.client(
        "s3",
        endpoint_url=proxy.endpoint,
        region_name="us-east-1",
        aws_access_key_id=LOCAL_ACCESS_KEY,
        aws_secret_access_key=LOCAL_SECRET_KEY,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation=checksums,
            retries={"mode": "standard", "max_attempts": 1},
        ),
    )
    if trailer:

        def to_trailer(params, **_kwargs):
            algorithm = params["context"].get("checksum", {}).get("request_algorithm")
            if isinstance(algorithm, dict):
                algorithm["in"] = "trailer"

        s3.meta.events.register("before-call.s3.PutObject", to_trailer)
    return s3


def error(exc_info) -> tuple[int, str]:
    response = exc_info.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def forwarded(proxy, method: str, key: str) -> list[dict[str, str]]:
    """Headers (lower-cased names) of the requests of ``method`` on ``key`` the proxy sent upstream."""
    path = f"/{BUCKET}/{urllib.parse.quote(key)}"
    return [
        {k.lower(): v for k, v in headers.items()}
        for m, target, headers in proxy.forwarded
        if m == method and urllib.parse.urlsplit(target).path == path
    ]


def stored(seed, key: str) -> bytes | None:
    try:
        return seed.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise


def raw_put(proxy, key: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """A bare PUT through the proxy (moto does not check signatures), as (status, body)."""
    host, port = urllib.parse.urlsplit(proxy.endpoint).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("PUT", f"/{BUCKET}/{key}", body=body, headers={"Content-Length": str(len(body)), **headers})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_quirks_are_kinds_and_faults_and_timing_kinds_are_not():
    assert set(QUIRK_KINDS) <= set(KINDS) and set(QUIRK_KINDS) <= set(FAULT_KINDS)
    assert {"500", "503", "429", "reset", "reset-after", "500-after", "forbidden", "ignore-if", "reject-if"} <= set(
        FAULT_KINDS
    )
    assert "delay" not in FAULT_KINDS and "barrier" not in FAULT_KINDS
    assert set(FAULT_KINDS) <= set(KINDS)


# ------------------------------------------------------------------------------------ if-match-unquoted
def test_if_match_unquoted_refuses_a_quoted_etag_without_forwarding(proxy, seed, buckets):
    etag = seed.put_object(Bucket=BUCKET, Key="k", Body=b"old")["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    s3 = client(proxy)
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"new", IfMatch=etag)  # without the rule: a match, written
    assert stored(seed, "k") == b"new"
    etag = seed.head_object(Bucket=BUCKET, Key="k")["ETag"]

    rule = proxy.add("if-match-unquoted")
    proxy.forwarded.clear()
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"newer", IfMatch=etag)
    assert error(exc) == (412, "PreconditionFailed")
    assert stored(seed, "k") == b"new"
    assert forwarded(proxy, "PUT", "k") == []
    assert rule.fired == 1 and proxy.injected[("put", "if-match-unquoted")] == 1


def test_if_match_unquoted_forwards_an_unquoted_etag_requoted(proxy, seed, buckets):
    etag = seed.put_object(Bucket=BUCKET, Key="k", Body=b"old")["ETag"]
    proxy.add("if-match-unquoted")
    s3 = client(proxy)
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"new", IfMatch=etag.strip('"'))
    assert stored(seed, "k") == b"new"
    assert [h["if-match"] for h in forwarded(proxy, "PUT", "k")] == [etag]
    with pytest.raises(ClientError) as exc:  # still evaluated upstream: a stale unquoted ETag fails there
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"newer", IfMatch=etag.strip('"'))
    assert error(exc) == (412, "PreconditionFailed")
    assert stored(seed, "k") == b"new"


def test_if_match_unquoted_leaves_other_requests_alone(proxy, seed, buckets):
    etag = seed.put_object(Bucket=BUCKET, Key="k", Body=b"old")["ETag"]
    rule = proxy.add("if-match-unquoted")
    s3 = client(proxy)
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"new")  # no If-Match
    s3.put_object(Bucket=BUCKET, Key="n", Body=b"x", IfNoneMatch="*")
    etag = seed.head_object(Bucket=BUCKET, Key="k")["ETag"]
    assert s3.head_object(Bucket=BUCKET, Key="k", IfMatch=etag)["ETag"] == etag  # not a put
    s3.delete_object(Bucket=BUCKET, Key="k", IfMatch=etag)  # a quoted ETag on a delete
    assert stored(seed, "k") is None and stored(seed, "n") == b"x"
    assert rule.seen == 0 and proxy.total_injected() == 0


# ------------------------------------------------------------------------------------ ignore-if-missing
def test_a_conditional_put_to_a_missing_key_fails_without_the_rule(proxy, seed, buckets):
    with pytest.raises(ClientError) as exc:
        client(proxy).put_object(Bucket=BUCKET, Key="absent", Body=b"x", IfMatch='"0123456789abcdef"')
    assert error(exc)[0] == 404
    assert stored(seed, "absent") is None


def test_ignore_if_missing_creates_a_missing_key_despite_if_match(proxy, seed, buckets):
    rule = proxy.add("ignore-if-missing", "put")
    client(proxy).put_object(Bucket=BUCKET, Key="absent", Body=b"x", IfMatch='"0123456789abcdef"')
    assert stored(seed, "absent") == b"x"
    probes = forwarded(proxy, "HEAD", "absent")
    assert len(probes) == 1 and "if-match" not in probes[0]
    assert [("if-match" in h) for h in forwarded(proxy, "PUT", "absent")] == [False]
    assert rule.fired == 1 and proxy.injected[("put", "ignore-if-missing")] == 1


def test_ignore_if_missing_forwards_a_present_key_unchanged(proxy, seed, buckets):
    etag = seed.put_object(Bucket=BUCKET, Key="k", Body=b"old")["ETag"]
    rule = proxy.add("ignore-if-missing")
    s3 = client(proxy)
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"new", IfMatch='"0123456789abcdef"')
    assert error(exc) == (412, "PreconditionFailed")
    assert stored(seed, "k") == b"old"
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"new", IfMatch=etag)
    assert stored(seed, "k") == b"new"
    assert [h["if-match"] for h in forwarded(proxy, "PUT", "k")] == ['"0123456789abcdef"', etag]
    s3.put_object(Bucket=BUCKET, Key="plain", Body=b"p")  # no If-Match: not even probed
    assert forwarded(proxy, "HEAD", "plain") == []
    assert rule.seen == 0 and proxy.total_injected() == 0


# ------------------------------------------------------------------------------------------- require-md5
def _objects(seed, *keys):
    for key in keys:
        seed.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    return {"Objects": [{"Key": key} for key in keys]}


def test_require_md5_refuses_delete_objects_without_content_md5(proxy, seed, buckets):
    delete = _objects(seed, "a", "b")
    rule = proxy.add("require-md5")
    with pytest.raises(ClientError) as exc:  # boto3 1.36+ sends a CRC32 checksum, no Content-MD5
        client(proxy).delete_objects(Bucket=BUCKET, Delete=delete)
    assert error(exc) == (400, "MissingContentMD5")
    assert stored(seed, "a") == b"x" and stored(seed, "b") == b"x"
    assert rule.fired == 1 and proxy.injected[("delete_objects", "require-md5")] == 1


def test_require_md5_accepts_delete_objects_with_content_md5_and_other_requests(proxy, seed, buckets):
    delete = _objects(seed, "a", "b", "c")
    rule = proxy.add("require-md5")
    s3 = client(proxy)

    def add_md5(request, **_kwargs):
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(request.body).digest()).decode()

    s3.meta.events.register("before-sign.s3.DeleteObjects", add_md5)
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": delete["Objects"][:2]})
    s3.delete_object(Bucket=BUCKET, Key="c")
    assert stored(seed, "a") is None and stored(seed, "b") is None and stored(seed, "c") is None
    assert rule.seen == 0 and proxy.total_injected() == 0


# ---------------------------------------------------------------------------------------- reject-trailer
def test_boto3_sends_checksums_as_headers_over_http_and_a_forced_trailer_is_one(proxy, seed, buckets):
    """What boto3 1.44 sends over plain HTTP with ``when_supported``: the CRC32 as a header, no trailer.
    The forced client (``trailer=True``) really sends one, and moto decodes it (so the rule is what refuses)."""
    client(proxy, "when_supported").put_object(Bucket=BUCKET, Key="h", Body=b"hello")
    (sent,) = forwarded(proxy, "PUT", "h")
    assert sent["x-amz-checksum-crc32"] == base64.b64encode(zlib.crc32(b"hello").to_bytes(4, "big")).decode()
    assert "x-amz-trailer" not in sent and "aws-chunked" not in sent.get("content-encoding", "")
    assert sent["x-amz-content-sha256"] == hashlib.sha256(b"hello").hexdigest()

    client(proxy, "when_supported", trailer=True).put_object(Bucket=BUCKET, Key="t", Body=b"hello")
    (sent,) = forwarded(proxy, "PUT", "t")
    assert sent["x-amz-trailer"] == "x-amz-checksum-crc32"
    assert sent["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert stored(seed, "h") == b"hello" and stored(seed, "t") == b"hello"


def test_reject_trailer_refuses_a_boto3_trailer(proxy, seed, buckets):
    rule = proxy.add("reject-trailer")
    with pytest.raises(ClientError) as exc:
        client(proxy, "when_supported", trailer=True).put_object(Bucket=BUCKET, Key="t", Body=b"hello")
    assert error(exc) == (411, "MissingContentLength")
    assert stored(seed, "t") is None and forwarded(proxy, "PUT", "t") == []
    assert rule.fired == 1 and proxy.injected[("put", "reject-trailer")] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"x-amz-trailer": "x-amz-checksum-crc32"},
        {"Content-Encoding": "gzip, aws-chunked"},
        {"x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER"},
    ],
    ids=["x-amz-trailer", "content-encoding", "content-sha256"],
)
def test_reject_trailer_refuses_each_marker(proxy, seed, buckets, headers):
    proxy.add("reject-trailer")
    status, body = raw_put(proxy, "r", b"0\r\n\r\n", headers)
    assert status == 411
    assert b"<Error><Code>MissingContentLength</Code><Message>" in body
    assert stored(seed, "r") is None


def test_reject_trailer_leaves_requests_without_a_trailer_alone(proxy, seed, buckets):
    rule = proxy.add("reject-trailer")
    client(proxy, "when_supported").put_object(Bucket=BUCKET, Key="h", Body=b"hello")  # checksum as a header
    client(proxy).put_object(Bucket=BUCKET, Key="p", Body=b"plain")
    assert client(proxy).get_object(Bucket=BUCKET, Key="h")["Body"].read() == b"hello"
    assert stored(seed, "p") == b"plain"
    assert rule.seen == 0 and proxy.total_injected() == 0


# ----------------------------------------------------------------------------------------- store-framing
def test_store_framing_stores_the_aws_chunked_framing(proxy, seed, buckets):
    rule = proxy.add("store-framing")
    response = client(proxy, "when_supported").put_object(Bucket=BUCKET, Key="f", Body=b"hello")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200  # the client sees a success
    crc = base64.b64encode(zlib.crc32(b"hello").to_bytes(4, "big")).decode()
    framed = b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:" + crc.encode() + b"\r\n\r\n"
    raw = boto3.client(
        "s3",
        endpoint_url=seed.meta.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="seed",
        aws_secret_access_key="seed",
        config=Config(s3={"addressing_style": "path"}, response_checksum_validation="when_required"),
    )
    assert raw.get_object(Bucket=BUCKET, Key="f")["Body"].read() == framed
    assert seed.head_object(Bucket=BUCKET, Key="f")["ContentLength"] == len(framed)
    # moto keeps the checksum sent (of the real body): a read that validates checksums notices
    with pytest.raises(FlexibleChecksumError):
        seed.get_object(Bucket=BUCKET, Key="f", ChecksumMode="ENABLED")["Body"].read()
    (sent,) = forwarded(proxy, "PUT", "f")
    assert sent["content-length"] == str(len(framed))
    assert rule.fired == 1 and proxy.injected[("put", "store-framing")] == 1


def test_store_framing_leaves_puts_without_a_checksum_header_alone(proxy, seed, buckets):
    rule = proxy.add("store-framing")
    client(proxy).put_object(Bucket=BUCKET, Key="p", Body=b"plain")  # when_required: no checksum at all
    client(proxy, "when_supported", trailer=True).put_object(Bucket=BUCKET, Key="t", Body=b"hello")
    client(proxy, "when_supported").get_object(Bucket=BUCKET, Key="p")
    assert stored(seed, "p") == b"plain" and stored(seed, "t") == b"hello"
    assert rule.seen == 0 and proxy.total_injected() == 0


# ----------------------------------------------------------------------------- ignore-if on DeleteObject
def test_ignore_if_on_delete_emulates_a_delete_that_ignores_if_match(proxy, seed, buckets):
    """MinIO (minio/minio#21677) and RGW 16.2 delete regardless of If-Match: ``ignore-if`` on ``delete``."""
    seed.put_object(Bucket=BUCKET, Key="k", Body=b"x")
    s3 = client(proxy)
    with pytest.raises(ClientError) as exc:  # without the rule a stale ETag protects the object
        s3.delete_object(Bucket=BUCKET, Key="k", IfMatch='"0123456789abcdef"')
    assert error(exc) == (412, "PreconditionFailed")
    assert stored(seed, "k") == b"x"

    proxy.add("ignore-if", "delete")
    with pytest.raises(ClientError) as exc:  # the rule is for deletes only: a put still honours If-Match
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"y", IfMatch='"0123456789abcdef"')
    assert error(exc) == (412, "PreconditionFailed")
    s3.delete_object(Bucket=BUCKET, Key="k", IfMatch='"0123456789abcdef"')
    assert stored(seed, "k") is None
    assert proxy.injected[("delete", "ignore-if")] == 1 and proxy.total_injected() == 1
