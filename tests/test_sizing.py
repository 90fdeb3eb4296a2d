"""Batch jobs sized to their images (cog_pipeline/htcondor/sizing.py) and the workflow's use of it
(rules/common.smk, rules/convert.smk): the model covers what bench/sec_pool.py measured, the caps bound it,
the batch's largest image drives it, and Snakemake plans each batch with its own request."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from cog_pipeline.htcondor import sizing

MB = 1024 * 1024
#: bench/sec_pool.py sizing, 2026-12-01 (GDAL 3.10.3, LZW, 1 thread): (input bytes, peak RSS MB, peak temp MB).
MEASURED = [
    (4 * MB, 138, 8.0),  # ortho 1000^2, 4-band uint8
    (15 * MB, 176, 36.7),  # ortho 2000^2
    (61 * MB, 270, 147),  # ortho 4000^2
    (244 * MB, 334, 596),  # ortho 8000^2
    (8 * MB, 195, 17),  # dem 2000^2, 1-band uint16
    (31 * MB, 244, 64),  # dem 4000^2
    (122 * MB, 317, 258),  # dem 8000^2
]


@pytest.mark.parametrize(("input_bytes", "rss_mb", "temp_mb"), MEASURED)
def test_model_covers_every_measured_conversion_without_asking_far_more(input_bytes, rss_mb, temp_mb):
    need = sizing.image_need(input_bytes)
    assert need.mem_mb >= rss_mb and need.disk_mb >= temp_mb, (need, rss_mb, temp_mb)
    # Not wasteful: within twice the measured peak (plus the 50 MB rounding) for every measured size.
    assert need.mem_mb <= 2 * rss_mb + sizing.ROUND_MB and need.disk_mb <= 2 * temp_mb + 2 * sizing.ROUND_MB


def test_a_20000_pixel_tile_fits_the_default_caps_and_gets_more_than_small_ones():
    # 20000^2 RGBA uint8 (1526 MB): peak RSS 395 MB in bench section 2 (docs/performance.md); its temp disk
    # is the measured 2.4 x input.
    assert sizing.image_need(1526 * MB).mem_mb >= 395 * sizing.MARGIN
    big = sizing.batch_request([1526 * MB], mem_cap_mb=2000, disk_cap_mb=20000)  # the config's defaults
    small = sizing.batch_request([2 * MB] * 20, mem_cap_mb=2000, disk_cap_mb=20000)
    assert big.disk_mb >= 2.4 * 1526 and big.mem_mb > small.mem_mb and not big.capped
    assert small.mem_mb <= 500 and small.disk_mb <= 200, small
    assert big.mem_mb % sizing.ROUND_MB == 0 and big.disk_mb % sizing.ROUND_MB == 0


def test_the_largest_image_of_a_batch_drives_its_request():
    alone = sizing.batch_request([100 * MB], mem_cap_mb=8000, disk_cap_mb=50000)
    mixed = sizing.batch_request([1 * MB, 100 * MB, 5 * MB, None], mem_cap_mb=8000, disk_cap_mb=50000)
    assert (mixed.mem_mb, mixed.disk_mb) == (alone.mem_mb, alone.disk_mb)
    assert mixed.largest_input_bytes == 100 * MB and mixed.unknown == 1
    assert mixed.mem_mb == sizing._round_up(sizing.JOB_MEM_MB + sizing.image_need(100 * MB).mem_mb)


def test_caps_bound_the_request_and_say_which():
    request = sizing.batch_request([2000 * MB], mem_cap_mb=600, disk_cap_mb=3000)
    assert (request.mem_mb, request.disk_mb) == (600, 3000)
    assert request.capped == ("mem_mb_per_job", "disk_mb_per_job")
    assert sizing.batch_request([1 * MB], mem_cap_mb=1000, disk_cap_mb=3000).capped == ()
    with pytest.raises(ValueError, match="caps must be positive"):
        sizing.batch_request([1], mem_cap_mb=0, disk_cap_mb=10)


def test_a_retried_batch_asks_for_more():
    first = sizing.batch_request([50 * MB], mem_cap_mb=8000, disk_cap_mb=50000)
    second = sizing.batch_request([50 * MB], mem_cap_mb=8000, disk_cap_mb=50000, attempt=2)
    assert second.mem_mb >= first.mem_mb * sizing.RETRY_FACTOR - sizing.ROUND_MB and second.disk_mb > first.disk_mb


def test_missing_or_unknown_sizes():
    assert sizing.batch_sizes(["a", "b"], None) is None
    assert sizing.batch_sizes(["a", "b"], {"a": 5}) == [5, None]
    request = sizing.batch_request([None, None], mem_cap_mb=2000, disk_cap_mb=20000)
    assert request.unknown == 2 and request.largest_input_bytes == 0 and request.mem_mb < 2000
    with pytest.raises(ValueError, match="negative"):
        sizing.image_need(-1)


def test_sizes_under_keeps_only_the_manifest_keys():
    assert sizing.sizes_under(["a.tif", "b.tif"], [("a.tif", 3), ("c.tif", 9), ("b.tif", 0)]) == {
        "a.tif": 3,
        "b.tif": 0,
    }


@pytest.mark.parametrize(
    ("num_threads", "per_job", "expected"), [("ALL_CPUS", 1, 1), ("all_cpus", 2, 2), ("3", 1, 3), (" 2 ", 4, 2)]
)
def test_request_cpus_is_gdals_thread_count_never_all_cpus(num_threads, per_job, expected):
    assert sizing.threads_for_pool(num_threads, per_job) == expected


def test_bad_thread_settings_are_refused():
    with pytest.raises(ValueError, match="num_threads"):
        sizing.threads_for_pool("0", 1)
    with pytest.raises(ValueError, match="threads_per_job"):
        sizing.threads_for_pool("ALL_CPUS", 0)


def test_sizes_file_round_trip_and_unusable_files(tmp_path):
    (tmp_path / "manifests").mkdir()
    assert sizing.read_sizes(tmp_path, "m1") is None
    path = sizing.write_sizes(tmp_path, "m1", {"é/a b.tif": 12})
    assert path == tmp_path / "manifests" / "sizes-m1.json"
    assert sizing.read_sizes(tmp_path, "m1") == {"é/a b.tif": 12}
    for bad in ("not json", "[1, 2]", '{"a": -1}', '{"a": "12"}'):
        path.write_text(bad)
        assert sizing.read_sizes(tmp_path, "m1") is None, bad


# ------------------------------------------------------------------------------- the workflow's plan


def _run_dir(tmp_path: Path, executor: str, cog: dict | None = None) -> Path:
    run = tmp_path / "workflow-run-20260101-000000"
    (run / "manifests").mkdir(parents=True)
    keys = [f"img_{i}.tif" for i in range(4)]
    (run / "manifests" / "a.csv").write_text("".join(f"{k},3\n" for k in keys))
    config = {
        "run_id": "20260101-000000",
        "pattern": "*raw.csv",
        "executor": executor,
        "batch_size": 2,
        "mem_mb_per_job": 1500,
        "disk_mb_per_job": 20000,
        "s3": {
            "endpoint_url": "http://127.0.0.1:9",
            "region": "us-east-1",
            "input_bucket": "in-bucket",
            "output_bucket": "out-bucket",
            "access_key_file": None,
            "secret_key_file": None,
        },
        "manifests": [
            {
                "id": "m1",
                "csv": "manifests/a.csv",
                "key": "a-processing-20260101-000000.csv",
                "raw_key": "a-raw.csv",
                "stem": "a-",
                "timestamp": "20260101-000000",
            }
        ],
    }
    if cog:
        config["cog"] = cog
    (run / "run.yaml").write_text(yaml.safe_dump(config))
    # batch 00000: two 1 MB images; batch 00001: a 300 MB one and one the listing did not find.
    sizing.write_sizes(run, "m1", {keys[0]: MB, keys[1]: MB, keys[2]: 300 * MB})
    return run


def _planned(run: Path) -> dict[str, dict[str, str]]:
    from cog_pipeline.control import driver

    cmd = driver.snakemake_command(run, "local", 2, ["--dry-run"])
    result = subprocess.run(cmd, cwd=run, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    plans: dict[str, dict[str, str]] = {}
    for block in output.split("rule convert_batch:")[1:]:
        batch = re.search(r"batch=(\d{5})", block)
        resources = re.search(r"resources: (.*)", block)
        threads = re.search(r"threads: (\d+)", block)
        assert batch and resources, block
        values = dict(part.strip().split("=", 1) for part in resources.group(1).split(","))
        values["threads"] = threads.group(1) if threads else "1"
        plans[batch.group(1)] = values
    return plans


@pytest.mark.slow
def test_each_batch_is_planned_with_its_own_request_and_gdal_threads(tmp_path):
    plans = _planned(_run_dir(tmp_path, "htcondor", {"num_threads": "2"}))
    small = sizing.batch_request([MB, MB], mem_cap_mb=1500, disk_cap_mb=20000)
    big = sizing.batch_request([300 * MB, None], mem_cap_mb=1500, disk_cap_mb=20000)
    assert plans["00000"]["htcondor_request_mem_mb"] == str(small.mem_mb), plans
    assert plans["00000"]["htcondor_request_disk_mb"] == str(small.disk_mb), plans
    assert plans["00001"]["htcondor_request_mem_mb"] == str(big.mem_mb) != str(small.mem_mb), plans
    assert plans["00001"]["disk_mb"] == str(big.disk_mb), plans
    assert plans["00000"]["threads"] == plans["00001"]["threads"] == "2"  # cog.num_threads, the plugin's request_cpus
