"""The aggregate's fast paths write the same bytes as the plain ones (issue 11: a 100,000-row manifest's aggregate
in a fraction of the CPU, its outputs unchanged): the manifest parsed once, the keys broken at slashes, the image
logs' names and files, the failure codes and advice, the collector paused."""

from __future__ import annotations

import gc
import hashlib
import html
import os
import random
import re
from typing import Any

import pytest

from cog_pipeline.core.failures import FailureCode
from cog_pipeline.work import report
from cog_pipeline.work.aggregate import classify, gc_paused
from cog_pipeline.work.imagelogs import (
    ADVICE,
    GENERIC_ADVICE,
    IMAGE_LOG_DIR,
    advice,
    image_log_path,
    log_name,
    render_image_log,
    write_image_logs,
)
from cog_pipeline.work.manifest import parse_manifest
from cog_pipeline.work.outcomes import ImageOutcome, Status, failure_codes


def test_classify_takes_the_parsed_manifest_or_its_bytes():
    data = b"key,bands\na.tif,1\n/b.tif,1\nc.tif,x\n\na.tif,1\nd.tif,2\n"
    records = {"d.tif": ImageOutcome("d.tif", Status.OK, line=7, bands="2")}
    present = {"d.tif", "d.jpg"}
    assert classify(parse_manifest(data), records, present) == classify(data, records, present)
    outcome = classify(data, records, present)
    assert [f.line for f in outcome.failed] == [2, 3, 4, 6] and outcome.processed == [("d.tif", "2")]


def _reference_breakable(text: str) -> str:
    return "/<wbr>".join(html.escape(part) for part in text.split("/"))


def _reference_log_name(key: str) -> str:
    """log_name as it was, part by part."""
    from cog_pipeline.core.naming import key_stem

    parts = []
    for part in key_stem(key).split("/"):
        if part in ("", ".", ".."):
            continue
        part = re.sub(r"[\x00-\x1f\x7f\\]", "_", part)
        raw = part.encode("utf-8", "surrogateescape")
        if len(raw) > 200:
            part = raw[:100].decode("utf-8", "ignore") + "~" + hashlib.sha1(raw).hexdigest()[:12]
        parts.append(part)
    return "/".join(parts or ["_"]) + ".log"


def random_keys(rng: random.Random, n: int) -> list[str]:
    alphabet = ["a", "Z", "/", "/", ".", "..", " ", "é", "日", "\x01", "\\", "<", "&", "'", '"', "\U0001f600"]
    keys = ["", ".tif", "/", "//", "./a.tif", "../x.tif", "a//b.tif", "/m/img000001.tif", "a/.tif", "a/./b/../c.TIF"]
    keys += ["x" * 49 + ".tif", "x" * 51 + ".tif", "é" * 60 + ".tif", "d/" + "y" * 300 + ".tiff", "a/b\x00c.tif"]
    for _ in range(n):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        if rng.random() < 0.3:
            key = key * rng.randint(2, 12)
        keys.append(key + rng.choice(["", ".tif", ".TIFF", ".png"]))
    return keys


def test_log_names_and_broken_keys_are_as_part_by_part():
    for key in random_keys(random.Random(3), 3000):
        assert log_name(key) == _reference_log_name(key), repr(key)
        assert image_log_path(key) == f"{IMAGE_LOG_DIR.as_posix()}/{_reference_log_name(key)}"
        assert report._breakable(key) == _reference_breakable(key), repr(key)


def test_image_logs_are_written_as_text_files_one_per_name(tmp_path):
    """Sections of a key listed twice in one file, a key that is a folder too in ``_other``, text that UTF-8
    cannot hold backslash-escaped, each file created with the mode ``open(path, "w")`` gives."""
    config = {"run_id": "r1", "s3": {"output_bucket": "out"}}
    rows = [
        {"key": "a/b.tif", "bands": "1", "outcome": "failed", "reason": "line 1: x", "code": "manifest-row"},
        {"key": "a/b.tif", "bands": "2", "outcome": "processed", "reason": "note \udce9 <é>"},
        {"key": "a/b.tif/c.tif", "bands": "1", "outcome": "failed", "reason": "line 3: y"},
        {"key": "//m//n.tif", "bands": "1", "outcome": "failed", "reason": "z"},
    ]
    for row in rows:
        row["log_path"] = image_log_path(row["key"])
    rows.append({"key": "elsewhere.tif", "bands": "1", "outcome": "failed", "reason": "w", "log_path": "x/y.log"})
    (tmp_path / "logs" / "images" / "a").mkdir(parents=True)
    (tmp_path / "logs" / "images" / "a" / "b.tif").write_text("a file where a folder is wanted")
    base = write_image_logs(tmp_path, rows, config)
    expected = {
        "a/b.log": "\n".join(render_image_log(r, config) for r in rows[:2]),
        "_other/" + hashlib.sha1(b"a/b.tif/c.log").hexdigest()[:16] + ".log": render_image_log(rows[2], config),
        "m/n.log": render_image_log(rows[3], config),
        "elsewhere.log": render_image_log(rows[4], config),  # a log_path outside logs/images/: named by the key
    }
    written = {p.relative_to(base).as_posix(): p for p in base.rglob("*.log")}
    assert sorted(written) == sorted(expected)
    umask = os.umask(0)
    os.umask(umask)
    for name, text in expected.items():
        assert written[name].read_bytes() == text.encode("utf-8", "backslashreplace"), name
        assert written[name].stat().st_mode & 0o777 == 0o666 & ~umask
    assert b"note \\udce9 <\xc3\xa9>" in written["a/b.log"].read_bytes()
    rows[0]["reason"] = "shorter"  # a second run rewrites each file whole (truncated, not appended)
    write_image_logs(tmp_path, rows, config)
    text = "\n".join(render_image_log(r, config) for r in rows[:2])
    assert written["a/b.log"].read_bytes() == text.encode("utf-8", "backslashreplace")


def test_advice_and_failure_codes_by_member_or_value():
    for code, text in ADVICE.items():
        assert advice(code) == advice(code.value) == text
    odd: Any
    for odd in (None, "no-such-code", "", 7, ["input-missing"]):
        assert advice(odd) == GENERIC_ADVICE
    summary = {"failures": [{"code": "input-missing"}, {"code": None}, {"code": "new-code"}, "odd", {"code": 3}, {}]}
    assert failure_codes(summary, ["r"] * 6) == [FailureCode.INPUT_MISSING, None, None, None, None, None]
    assert failure_codes({}, ["download: input object not found"]) == [FailureCode.INPUT_MISSING]


def test_the_collector_is_paused_during_the_aggregate_and_restored_after():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled(), "a collector paused by the caller stays paused"
    finally:
        gc.enable()
    with pytest.raises(ValueError), gc_paused():
        raise ValueError("the aggregate failed")
    assert gc.isenabled()


def test_image_logs_of_some_manifests_are_written_whole_and_the_others_left_alone(tmp_path):
    """The aggregate of a manifest writes only the logs with a row of its own: a log shared with an earlier
    manifest is written again whole (both sections), a log of the earlier manifest alone is not touched."""
    config = {"run_id": "r1", "s3": {"output_bucket": "out"}}
    rows = [
        {"key": "first/only.tif", "bands": "1", "outcome": "failed", "reason": "a", "manifest": "m1-raw.csv"},
        {"key": "shared.tif", "bands": "1", "outcome": "failed", "reason": "b", "manifest": "m1-raw.csv"},
        {"key": "shared.tif", "bands": "1", "outcome": "processed", "reason": "", "manifest": "m2-raw.csv"},
        {"key": "second.tif", "bands": "1", "outcome": "processed", "reason": "", "manifest": "m2-raw.csv"},
    ]
    for row in rows:
        row["log_path"] = image_log_path(row["key"])
    base = write_image_logs(tmp_path, rows[:2], config, {"m1-raw.csv"})
    first = base / "first" / "only.log"
    first.write_text("left as the first aggregate wrote it")
    write_image_logs(tmp_path, rows, config, {"m2-raw.csv"})
    assert first.read_text() == "left as the first aggregate wrote it"
    assert (base / "shared.log").read_text() == "\n".join(render_image_log(r, config) for r in rows[1:3])
    assert (base / "second.log").read_text() == render_image_log(rows[3], config)
    write_image_logs(tmp_path, rows, config, ())
    assert first.read_text() == "left as the first aggregate wrote it"
