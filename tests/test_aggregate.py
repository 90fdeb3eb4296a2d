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
    listed = {o["Key"] for page in seed.get_paginator("list_objects_v2").paginate(Bucket=OUTPUT_BUCKET)
              for o in page.get("Contents", [])}
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
    keys = ["imagery/county scans/shade é.tif", "imagery/county scans/shade é.jpg", "日本/画像.tif", "日本/画像.jpg",
            "a+b/c%20d.tif", "a+b/c%20d.jpg", "q?/h#.tif", "sp ace/ .tif", "é/z.tif", "z/é.tif", "~/x.tif",
            "a/b\u00a0c.tif", "a/emoji-\U0001F600.tif", "x/a.tif", "x/a.tif.jpg"]
    put_all(seed, keys[::2])
    assert existing_keys(client, OUTPUT_BUCKET, keys, page_size=3) == set(keys[::2])
    assert existing_keys(client, OUTPUT_BUCKET, keys) == set(keys[::2])


def test_matches_a_full_listing_on_random_buckets(seed, client):
    """Property check against a brute-force listing: random keys (shared prefixes, non-ASCII, special
    characters), random present / wanted subsets, small pages."""
    rng = random.Random(5)
    alphabet = ["a", "b", "/", ".", "-", " ", "é", "z", "0", "9", "+", "日"]
    universe = sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))).lstrip("/") or "k"
                       for _ in range(400)})
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


def test_rows_of_an_unfinished_batch_name_their_batch_and_the_wrappers_reason(tmp_path):
    """Seen on a pool: a batch job whose Python was missing failed every row with a generic reason;
    the job wrapper's line in the batch log says why, and the reason now carries it."""
    from cog_pipeline.work.aggregate import classify, unfinished_reasons

    log_dir = tmp_path / "logs" / "convert" / "m1"
    log_dir.mkdir(parents=True)
    (log_dir / "batch-00001.log").write_text(
        "converting c.tif\n"
        "job-wrapper on ep7: Python interpreter '/x/python3' not found on ep7 (software mode shared)\n")
    keys = ["a.tif", "b.tif", "c.tif", "d.tif", "e.tif"]
    reasons = unfinished_reasons(tmp_path, "m1", keys, batch_size=2, recorded={"a.tif", "b.tif", "c.tif"})
    assert set(reasons) == {"d.tif", "e.tif"}  # c.tif has a record; batch 0 is complete
    assert reasons["d.tif"] == ("no outcome recorded: batch job batch-00001 did not finish: job-wrapper on ep7: "
                                "Python interpreter '/x/python3' not found on ep7 (software mode shared) "
                                "(see logs/convert/m1/batch-00001.log)")
    assert reasons["e.tif"] == ("no outcome recorded: batch job batch-00002 did not finish "
                                "(see logs/convert/m1/batch-00002.log)")  # no log came back at all

    manifest = "".join(f"{k},1\n" for k in keys).encode()
    records = {k: {"key": k, "status": "ok"} for k in ("a.tif", "b.tif", "c.tif")}
    present = {k for r in records for k in (r, r[:-4] + ".jpg")}
    outcome = classify(manifest, records, present, reasons)
    assert [k for k, _ in outcome.processed] == ["a.tif", "b.tif", "c.tif"]
    assert [(k, r) for k, _, r in outcome.failed] == [(k, reasons[k]) for k in ("d.tif", "e.tif")]
