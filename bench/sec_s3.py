"""Section 5: S3 economy. The CPU of an S3 client (the first of a process, each further one); requests
counted by operation at the server (every process included): per tick and per claimed CSV, the aggregate for N
rows, multipart uploads, and the original's post script (one whole-bucket listing per expected object) emulated
request for request."""

from __future__ import annotations

import fnmatch
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import common
import proc
import synth
from report import Report
from s3count import CountingS3Server, summarize


class _LoadReport:
    """Adds the current load average to every figure of this section."""

    def __init__(self, rep: Report):
        self.rep = rep

    def add(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("load", proc.load())
        return self.rep.add(*args, **kwargs)

    def detail(self, *args: Any) -> None:
        self.rep.detail(*args)


def _tick(srv: CountingS3Server, keys: tuple[Path, Path], pattern: str, w: Path) -> dict[str, Any]:
    srv.reset_counts()
    cmd = common.cli(
        *common.tick_args(keys, srv.endpoint, pattern),
        "--cores",
        "2",
        "--workdir",
        str(w / "ticks"),
    )
    res = proc.run(cmd, cwd=w, env=common.python_env())
    if res["returncode"] != 0:
        raise RuntimeError(f"tick failed:\n{res['output'][-3000:]}")
    return srv.counts()["counts"]


def _per_tick(rep: Report, srv: CountingS3Server, client: Any, keys: tuple[Path, Path], w: Path) -> None:
    """Ticks over 1 CSV of 10 rows, 1 CSV of 40 rows, 2 CSVs of 10 rows: split per image / per CSV / per tick."""
    image = synth.write_raster(w / "small.tif", "ortho", 128, seed=7)
    for i in range(40):
        client.upload_file(str(image), common.INPUT_BUCKET, f"t/img_{i:03d}.tif")

    def manifest(name: str, lo: int, hi: int) -> None:
        body = "".join(f"t/img_{i:03d}.tif,4\n" for i in range(lo, hi))
        client.put_object(Bucket=common.INPUT_BUCKET, Key=name, Body=body.encode())

    def clean_outputs() -> None:
        import sec_pipeline

        sec_pipeline.empty_bucket(client, common.OUTPUT_BUCKET)

    clean_outputs()
    manifest("a/one10-raw.csv", 0, 10)
    a = _tick(srv, keys, "a/*raw.csv", w)
    clean_outputs()
    manifest("b/one40-raw.csv", 0, 40)
    b = _tick(srv, keys, "b/*raw.csv", w)
    clean_outputs()
    manifest("c/x10-raw.csv", 0, 10)
    manifest("c/y10-raw.csv", 10, 20)
    c = _tick(srv, keys, "c/*raw.csv", w)
    ops = sorted(set(a) | set(b) | set(c))
    per_image = {op: (b.get(op, 0) - a.get(op, 0)) / 30 for op in ops}
    fixed_a = {op: a.get(op, 0) - 10 * per_image[op] for op in ops}
    fixed_b = {op: b.get(op, 0) - 40 * per_image[op] for op in ops}
    per_csv = {op: c.get(op, 0) - a.get(op, 0) - 10 * per_image[op] for op in ops}
    per_tick = {op: fixed_a[op] - per_csv[op] for op in ops}
    clean = lambda d: {k: round(v, 2) for k, v in d.items() if abs(v) > 1e-9}  # noqa: E731
    constant = all(abs(fixed_a[op] - fixed_b[op]) < 1e-9 for op in ops)
    rep.add(
        "5",
        "tick: requests per image (from 40-row minus 10-row tick)",
        sum(per_image.values()),
        "requests",
        note=f"{clean(per_image)}",
    )
    rep.add(
        "5",
        "tick: requests per claimed CSV, not per image (same for 10 and 40 rows = constant)",
        sum(per_csv.values()),
        "requests",
        note=f"{clean(per_csv)}; constant in N: {constant}",
    )
    rep.add(
        "5",
        "tick: per-CSV requests independent of the row count (1 = yes)",
        1 if constant else 0,
        "",
        ">= 1",
        note=f"fixed part with 10 rows {clean(fixed_a)}, with 40 rows {clean(fixed_b)}",
    )
    rep.add(
        "5", "tick: requests per tick, whatever the CSVs", sum(per_tick.values()), "requests", note=f"{clean(per_tick)}"
    )
    rep.detail(
        "section5.ticks",
        {"one10": a, "one40": b, "two10": c, "per_image": per_image, "per_csv": per_csv, "per_tick": per_tick},
    )


def _aggregate(
    rep: Report,
    srv: CountingS3Server,
    client: Any,
    keys: tuple[Path, Path],
    w: Path,
    n: int,
    folders: int,
    previous: int,
    interleaved: bool = False,
) -> None:
    """aggregate_manifest for N rows whose outputs all exist, in a bucket holding ``previous`` older outputs
    (in other folders, or ``interleaved`` with the new tiles in the same folders: the listing's worst case)."""
    from cog_pipeline.control import driver
    from cog_pipeline.work.aggregate import aggregate_manifest
    from cog_pipeline.work.manifest import jpeg_key

    srv.reset_all()
    client.create_bucket(Bucket=common.INPUT_BUCKET)
    client.create_bucket(Bucket=common.OUTPUT_BUCKET)
    tops = ["county-a", "county-b"] if folders > 1 else ["county-a"]
    rows = [
        (f"{tops[i % len(tops)]}/2026/" + (f"f{i % folders:03d}/" if folders > 1 else "") + f"tile_{i:06d}.tif", 4)
        for i in range(n)
    ]
    outputs = [k for key, _ in rows for k in (key, jpeg_key(key))]
    older = [f"county-a/2025/f{i % 50:03d}/tile_{i:06d}.{'tif' if i % 2 else 'jpg'}" for i in range(previous)]
    if interleaved:  # older tiles of the same folders, sorting between the new ones
        older = [
            f"{key[:-4]}-{j:02d}-2025.{ext}"
            for key, _ in rows
            for j in range(previous // (2 * n))
            for ext in ("tif", "jpg")
        ]
    srv.seed(common.OUTPUT_BUCKET, outputs + older)
    run_dir = w / f"agg-{n}-{folders}"
    data = "".join(f"{k},{b}\n" for k, b in rows).encode()
    common.prepare_run_dir(run_dir, data, srv.endpoint, keys, raw_key="agg/bench-raw.csv")
    config = driver.load_run_config(run_dir)
    manifest = config["manifests"][0]
    client.put_object(Bucket=common.INPUT_BUCKET, Key=manifest["key"], Body=data)
    status = run_dir / "status" / "m1"
    status.mkdir(parents=True, exist_ok=True)
    (status / "batch-00000.jsonl").write_text(
        "".join(
            json.dumps({"key": k, "line": i + 1, "bands": str(b), "status": "ok", "notes": []}) + "\n"
            for i, (k, b) in enumerate(rows)
        )
    )
    srv.reset_counts()
    summary = aggregate_manifest(config, run_dir, "m1")
    counts = srv.counts()
    groups = summarize(counts)
    list_head = groups.get("list", 0) + groups.get("head", 0)
    limit = n / 1000 + 10
    layout = f"{folders} folder{'s' if folders > 1 else ''}"
    where = "interleaved with the new ones" if interleaved else "in other folders"
    rep.add(
        "5",
        f"aggregate, {n:,} rows in {layout}, bucket also holding {len(older):,} older outputs {where}: "
        f"list + head calls",
        list_head,
        "calls",
        f"<= {limit:g}" if not interleaved else "",
        note=f"{counts['counts']}; processed {summary['processed']}/{n}; skip-scan listing; floor for checking 2 "
        f"outputs per row by listing (1000 keys a page): ceil(2N/1000) = {math.ceil(2 * n / 1000)}",
    )
    rep.detail(f"section5.aggregate.{n}.{folders}", {"package": counts})


def original_post(client: Any, output_bucket: str, input_bucket: str, processing_key: str, rows: list[str]) -> None:
    """The original post script's S3 calls (minio list_objects recursive == paginated ListObjectsV2):
    for each row, list the whole output bucket for the .tif and, if found, again for the .jpg; then
    list the whole input bucket to find the processing file, put the outcome CSV(s), delete it."""

    def matching(bucket: str, pattern: str) -> list[str]:
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys += [o["Key"] for o in page.get("Contents", []) if fnmatch.fnmatch(o["Key"], pattern)]
        return keys

    ok, failed = [], []
    for row in rows:
        tif = row.split(",")[0]
        if matching(output_bucket, tif) and matching(output_bucket, tif.replace(".tif", ".jpg")):
            ok.append(row)
        else:
            failed.append(row)
    remote = matching(input_bucket, "*" + processing_key.rpartition("/")[2])[0]
    if ok:
        client.put_object(
            Bucket=input_bucket, Key=remote.replace("processing", "processed"), Body="\n".join(ok).encode()
        )
    if failed:
        client.put_object(
            Bucket=input_bucket, Key=remote.replace("processing", "failed"), Body="\n".join(failed).encode()
        )
    client.delete_object(Bucket=input_bucket, Key=remote)


def _original(rep: Report, srv: CountingS3Server, client: Any, n: int, previous: int) -> None:
    from cog_pipeline.work.manifest import jpeg_key

    srv.reset_all()
    client.create_bucket(Bucket=common.INPUT_BUCKET)
    client.create_bucket(Bucket=common.OUTPUT_BUCKET)
    rows = [f"county-a/2026/tile_{i:06d}.tif,4" for i in range(n)]
    outputs = [k for r in rows for k in (r.split(",")[0], jpeg_key(r.split(",")[0]))]
    older = [f"county-a/2025/tile_{i:06d}.tif" for i in range(previous)]
    srv.seed(common.OUTPUT_BUCKET, outputs + older)
    processing = "agg/bench-processing-20260101-000000.csv"
    client.put_object(Bucket=common.INPUT_BUCKET, Key=processing, Body="\n".join(rows).encode())
    srv.reset_counts()
    original_post(client, common.OUTPUT_BUCKET, common.INPUT_BUCKET, processing, rows)
    counts = srv.counts()
    lists = summarize(counts).get("list", 0)
    bucket = len(outputs) + len(older)
    rep.add(
        "5",
        f"original post script, {n:,} rows, output bucket of {bucket:,} objects: list calls (emulated)",
        lists,
        "calls",
        note=f"{counts['counts']}; = 2 x rows x ceil(bucket/1000) + input-bucket listing",
    )
    for big in (10_000, 100_000):
        pages = math.ceil((2 * big + previous) / 1000)
        rep.add(
            "5",
            f"original post script, {big:,} rows (bucket {2 * big + previous:,} objects): list calls "
            f"(2 x rows x pages, computed)",
            2 * big * pages,
            "calls",
            note="ours for the same rows: see the aggregate figures above (about 2 x rows / 1000 pages)",
        )


def _multipart(rep: Report, srv: CountingS3Server, client: Any, keys: tuple[Path, Path], w: Path) -> None:
    from cog_pipeline.storage import s3

    srv.reset_all()
    client.create_bucket(Bucket=common.OUTPUT_BUCKET)
    size = s3.MULTIPART_THRESHOLD + 36 * 1024 * 1024
    big = w / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(size)
    settings = common.settings(srv.endpoint, keys)
    srv.reset_counts()
    s3.upload_file(client, common.OUTPUT_BUCKET, "big.tif", big, settings, "image/tiff")
    counts = srv.counts()
    parts = counts["counts"].get("UploadPart", 0)
    rep.add(
        "5",
        f"upload of {size / 2**20:.0f} MiB (threshold {s3.MULTIPART_THRESHOLD / 2**20:.0f} MiB): parts uploaded",
        parts,
        "parts",
        ">= 2",
        note=f"{counts['counts']}",
    )
    rep.add(
        "5",
        "multipart upload: peak concurrent UploadPart requests at the server",
        counts["peak_in_flight"].get("UploadPart", 0),
        "requests",
        ">= 2",
        note=f"max_concurrency {settings.max_concurrency}, chunk {s3.MULTIPART_CHUNKSIZE / 2**20:.0f} MiB",
    )
    big.unlink()


#: A fresh process times its first S3 client and the next 20 (CPU: time.process_time).
_CLIENT_COST = """
import json, sys, time
from cog_pipeline.storage import s3
settings = s3.S3Settings(endpoint_url=sys.argv[1], access_key_file=sys.argv[2], secret_key_file=sys.argv[3])
t0 = time.process_time(); s3.make_client(settings); t1 = time.process_time()
for _ in range(20):
    s3.make_client(settings)
print(json.dumps({"first_ms": (t1 - t0) * 1000, "next_ms": (time.process_time() - t1) * 1000 / 20}))
"""


def _client_cost(rep: Report, endpoint: str, keys: tuple[Path, Path]) -> None:
    """CPU of ``s3.make_client``: the first client of a process (its boto3 session parses the S3 service model)
    and each further one (the session reused: every tick, aggregate and heartbeat makes several)."""
    res = proc.run([sys.executable, "-c", _CLIENT_COST, endpoint, str(keys[0]), str(keys[1])], env=common.python_env())
    if res["returncode"] != 0:
        raise RuntimeError(f"client cost probe failed:\n{res['output'][-2000:]}")
    got = json.loads(res["output"].strip().splitlines()[-1])
    rep.add("5", "S3 client, the first of a process: CPU", round(got["first_ms"], 1), "ms")
    rep.add(
        "5",
        "S3 client, each further one (one boto3 session per process): CPU",
        round(got["next_ms"], 1),
        "ms",
        "<= 20",
        note="a new session per client cost about as much as the first, every time",
    )


def section5(rep: Report, work: Path, cfg: dict[str, Any]) -> None:
    rep = _LoadReport(rep)  # type: ignore[assignment]
    w = work / "s5"
    common.fresh_dir(w)
    keys = common.key_files(w / "keys")
    with CountingS3Server(w / "server") as srv:
        client = common.client(srv.endpoint, keys)
        client.create_bucket(Bucket=common.INPUT_BUCKET)
        client.create_bucket(Bucket=common.OUTPUT_BUCKET)
        _client_cost(rep, srv.endpoint, keys)
        t = time.time()
        _per_tick(rep, srv, client, keys, w)
        print(f"   ticks: {time.time() - t:.0f} s", flush=True)
        previous = 20_000 if not cfg.get("quick") else 2_000
        for n in cfg["agg_rows"]:
            for folders in (1, 60):
                t = time.time()
                _aggregate(rep, srv, client, keys, w, n, folders, previous)
                print(f"   aggregate {n} rows, {folders} folders: {time.time() - t:.0f} s", flush=True)
        t = time.time()
        _aggregate(rep, srv, client, keys, w, cfg["agg_rows"][0], 60, previous, interleaved=True)
        print(f"   aggregate, older outputs interleaved: {time.time() - t:.0f} s", flush=True)
        t = time.time()
        _original(rep, srv, client, 30, 900)
        print(f"   original post script: {time.time() - t:.0f} s", flush=True)
        _multipart(rep, srv, client, keys, w)
    shutil.rmtree(w, ignore_errors=True)
