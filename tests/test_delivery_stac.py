"""The STAC of a delivery as the aggregate writes it (cog_pipeline/work/delivery.py): Items in the output bucket
beside the COGs, the Collection and capture area beside the outcome CSVs (and in the run directory), against
the moto S3 server; validated offline with tests/test_stac.py's validator."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pystac.validation
import pytest
import shapely.geometry
import yaml
from affine import Affine

from cog_pipeline.core import config as config_module
from cog_pipeline.core.errors import PipelineError
from cog_pipeline.core.naming import ManifestKeys, is_pipeline_object
from cog_pipeline.raster.header import read_header
from cog_pipeline.storage import s3
from cog_pipeline.work import aggregate, delivery, stac
from cog_pipeline.work.outcomes import ImageOutcome, Status, manifest_finished, read_summary, write_outcomes

from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects
from rasters import TRANSFORM, make_tif
from test_stac import offline_validator

TS = "20261125-000000"
KEYS = ManifestKeys(raw="county/ortho-raw.csv", stem="county/ortho-", ts=TS)


def run_config(settings, run_dir, keys, **extra):
    """A run directory's config (schema defaults, a CC-BY licence) for one manifest of ``keys``."""
    (run_dir / "manifests").mkdir(parents=True, exist_ok=True)
    (run_dir / "manifests" / "m.csv").write_bytes("".join(f"{k},3\n" for k in keys).encode())
    cfg = config_module.load(
        run={
            "batch_size": 20,
            "run_id": TS,
            "s3": {
                "endpoint_url": settings.endpoint_url,
                "access_key_file": settings.access_key_file,
                "secret_key_file": settings.secret_key_file,
                "input_bucket": INPUT_BUCKET,
                "output_bucket": OUTPUT_BUCKET,
            },
            "stac": {
                "license": "CC-BY-4.0",
                "providers": [{"name": "Wellington Region Cartography", "roles": ["producer", "licensor"]}],
            },
            **extra,
        }
    )
    cfg["manifests"] = [
        {
            "id": "m1",
            "csv": "manifests/m.csv",
            "key": KEYS.processing,
            "raw_key": KEYS.raw,
            "stem": KEYS.stem,
            "timestamp": KEYS.ts,
        }
    ]
    (run_dir / "run.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def tile(path, row):
    """A 128 x 128 RGB tile of NZTM, the ``row``-th one down, its right half nodata."""
    data = np.random.default_rng(row).integers(1, 255, (3, 128, 128), dtype=np.uint8)
    data[:, :, 64:] = 0
    return make_tif(path, data, nodata=0, transform=TRANSFORM @ Affine.translation(0, 128 * row))


@pytest.fixture
def offline(monkeypatch):
    return offline_validator(monkeypatch)


def valid(data, validator):
    """Validate a STAC dict exactly as it was uploaded (core and every extension it names), offline."""
    return pystac.validation.validate_dict(data, validator=validator)


def sha256_multihash(body: bytes) -> str:
    return "1220" + hashlib.sha256(body).hexdigest()


def get_json(seed, bucket, key):
    return json.loads(seed.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_a_delivery_gets_its_items_collection_and_capture_area(seed, buckets, settings, tmp_path, offline):
    """The batch jobs record each image's Item; the aggregate uploads them with their links, and the
    Collection and capture area beside the outcome CSVs; checksums match the objects in the bucket."""
    from cog_pipeline.work import batch

    keys = [f"county/t{i}.tif" for i in range(3)]
    for i, key in enumerate(keys):
        seed.upload_file(str(tile(tmp_path / f"t{i}.tif", i)), INPUT_BUCKET, key)
    run_dir = tmp_path / f"workflow-run-{TS}"
    cfg = run_config(settings, run_dir, keys)
    seed.put_object(Bucket=INPUT_BUCKET, Key=KEYS.processing, Body=b"x")
    outcomes = batch.run_batch(cfg, run_dir, "m1", 0, run_dir / "status" / "m1" / "batch-00000.jsonl", threads=1)
    assert [o.status for o in outcomes] == [Status.OK] * 3 and all(o.stac_item for o in outcomes)

    summary = aggregate.aggregate_manifest(cfg, run_dir, "m1")
    assert summary["finished"] and summary["stac"]["complete"]
    assert (summary["stac"]["items_uploaded"], summary["stac"]["items_kept"]) == (3, 0)
    out, inp = all_objects(seed, OUTPUT_BUCKET), all_objects(seed, INPUT_BUCKET)
    collection_href = f"s3://{INPUT_BUCKET}/{KEYS.collection}"
    footprints = []
    for key in keys:
        item = json.loads(out[stac.item_key(key)])
        assert len(valid(item, offline)) >= 6
        links = {link["rel"]: link["href"] for link in item["links"]}
        assert links == {
            "self": f"s3://{OUTPUT_BUCKET}/{stac.item_key(key)}",
            "collection": collection_href,
            "parent": collection_href,
            "root": collection_href,
        }
        assert item["collection"] == "county/ortho"
        image, preview = item["assets"]["image"], item["assets"]["preview"]
        assert image["file:checksum"] == sha256_multihash(out[key]) and image["file:size"] == len(out[key])
        jpg = key.replace(".tif", ".jpg")
        assert preview["file:checksum"] == sha256_multihash(out[jpg]) and preview["file:size"] == len(out[jpg])
        footprints.append(shapely.geometry.shape(item["geometry"]))

    assert KEYS.collection in inp and KEYS.capture_area in inp and KEYS.processing not in inp
    collection = json.loads(inp[KEYS.collection])
    assert collection == json.loads((run_dir / "outcome" / "m1" / "ortho-collection-20261125-000000.json").read_bytes())
    valid(collection, offline)
    assert collection["id"] == "county/ortho" and collection["license"] == "CC-BY-4.0"
    assert [link["href"] for link in collection["links"] if link["rel"] == "item"] == [
        f"s3://{OUTPUT_BUCKET}/{stac.item_key(k)}" for k in keys
    ]
    assert collection["assets"]["capture_area"]["href"] == "./ortho-capture-area-20261125-000000.geojson"
    area = json.loads(inp[KEYS.capture_area])
    assert area == json.loads((run_dir / "outcome" / "m1" / "ortho-capture-area-20261125-000000.geojson").read_bytes())
    geom = shapely.geometry.shape(area["geometry"])
    assert geom.geom_type == "Polygon" and area["properties"]["images"] == 3  # adjacent tiles merge
    for fp in footprints:
        assert geom.buffer(1e-7).contains(fp)
    lon0, lat0, lon1, lat1 = collection["extent"]["spatial"]["bbox"][0]
    assert geom.bounds == pytest.approx((lon0, lat0, lon1, lat1), abs=1e-6)
    # None of the new objects is ever taken for a manifest.
    assert is_pipeline_object(KEYS.collection) and is_pipeline_object(KEYS.capture_area)


def recorded_item(tmp_path, key, row):
    """The Item a batch job records for ``key`` (a tile converted as is), with the files it describes."""
    path = tile(tmp_path / f"{row}.tif", row)
    jpeg = tmp_path / f"{row}.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff" + bytes([row]) * 100)
    item = stac.item_for(key, read_header(path), stac.file_info(path), stac.file_info(jpeg))
    return item.to_dict(include_self_link=False), path, jpeg


def seed_converted(seed, tmp_path, keys):
    """Outputs in the output bucket and the recorded Items of ``keys``."""
    items = {}
    for row, key in enumerate(keys):
        items[key], cog, jpeg = recorded_item(tmp_path, key, row)
        seed.upload_file(str(cog), OUTPUT_BUCKET, key)
        seed.upload_file(str(jpeg), OUTPUT_BUCKET, key.replace(".tif", ".jpg"))
    return items


def write_batch(run_dir, outcomes):
    write_outcomes(run_dir / "status" / "m1" / "batch-00000.jsonl", outcomes)


def test_a_failing_item_put_is_reported_keeps_the_outcomes_and_the_processing_file(
    seed, buckets, settings, tmp_path, monkeypatch
):
    keys = ["county/a.tif", "county/b.tif", "county/c.tif"]
    items = seed_converted(seed, tmp_path, keys)
    run_dir = tmp_path / f"workflow-run-{TS}"
    cfg = run_config(settings, run_dir, keys)
    seed.put_object(Bucket=INPUT_BUCKET, Key=KEYS.processing, Body=b"x")
    write_batch(
        run_dir,
        [ImageOutcome(key=k, status=Status.OK, line=i + 1, bands="3", stac_item=items[k]) for i, k in enumerate(keys)],
    )
    put_bytes = s3.put_bytes

    def refuse_b(client, bucket, key, body, **kwargs):
        if key == "county/b.json":
            raise s3.botocore.exceptions.ClientError(
                {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, "PutObject"
            )
        return put_bytes(client, bucket, key, body, **kwargs)

    monkeypatch.setattr(delivery.s3, "put_bytes", refuse_b)
    with pytest.raises(
        PipelineError,
        match=r"STAC is incomplete \(1 Item\(s\).*county/b.tif: cannot write "
        r"county/b.json.*SlowDown.*county/ortho-processing-20261125-000000.csv "
        r"was left in place",
    ):
        aggregate.aggregate_manifest(cfg, run_dir, "m1")
    inp, out = all_objects(seed, INPUT_BUCKET), all_objects(seed, OUTPUT_BUCKET)
    assert inp[KEYS.processed] == b"county/a.tif,3\ncounty/b.tif,3\ncounty/c.tif,3\n"  # no outcome lost
    assert KEYS.processing in inp and not manifest_finished(run_dir, "m1")
    assert "county/a.json" in out and "county/c.json" in out and "county/b.json" not in out
    summary = read_summary(run_dir, "m1")
    assert summary["stac"]["complete"] is False
    assert [f["key"] for f in summary["stac"]["failed"]] == ["county/b.tif"]
    assert any(n.startswith("STAC incomplete: 1 Item(s) not written") for n in summary["notes"])
    report = (run_dir / "report.html").read_text()
    assert "STAC incomplete" in report and "STAC Item of county/b.tif not written" in report
    # The Collection links the Items that are there; the resume writes the missing one.
    collection = json.loads(inp[KEYS.collection])
    assert [lk["href"].rsplit("/", 1)[1] for lk in collection["links"] if lk["rel"] == "item"] == ["a.json", "c.json"]

    monkeypatch.undo()
    summary = aggregate.aggregate_manifest(cfg, run_dir, "m1")
    assert summary["finished"] and summary["stac"]["complete"] and summary["stac"]["items_uploaded"] == 3
    inp = all_objects(seed, INPUT_BUCKET)
    assert KEYS.processing not in inp and "county/b.json" in all_objects(seed, OUTPUT_BUCKET)
    assert len([lk for lk in json.loads(inp[KEYS.collection])["links"] if lk["rel"] == "item"]) == 3


def test_a_rerun_keeps_the_item_of_a_skipped_row_and_links_it(seed, buckets, settings, tmp_path, offline):
    """A row skipped because its outputs are already made keeps its Item in the bucket byte for byte (read back
    with a GET, never rewritten or deleted) and is in the new Collection's links, extent and capture area."""
    keys = ["county/a.tif", "county/b.tif"]
    items = seed_converted(seed, tmp_path, keys)
    first = tmp_path / f"workflow-run-{TS}"
    cfg = run_config(settings, first, keys)
    seed.put_object(Bucket=INPUT_BUCKET, Key=KEYS.processing, Body=b"x")
    write_batch(
        first,
        [ImageOutcome(key=k, status=Status.OK, line=i + 1, bands="3", stac_item=items[k]) for i, k in enumerate(keys)],
    )
    aggregate.aggregate_manifest(cfg, first, "m1")
    kept = seed.get_object(Bucket=OUTPUT_BUCKET, Key="county/a.json")
    kept_body = kept["Body"].read()

    later = ManifestKeys(raw=KEYS.raw, stem=KEYS.stem, ts="20261126-000000")
    second = tmp_path / "workflow-run-20261126-000000"
    cfg2 = run_config(settings, second, keys)
    cfg2["manifests"][0].update(key=later.processing, timestamp=later.ts)
    seed.put_object(Bucket=INPUT_BUCKET, Key=later.processing, Body=b"x")
    (tmp_path / "again").mkdir()
    b_again, _, _ = recorded_item(tmp_path / "again", "county/b.tif", 1)  # b converted again
    write_batch(
        second,
        [
            ImageOutcome(
                key="county/a.tif",
                status=Status.SKIPPED,
                line=1,
                bands="3",
                reason="outputs already made from this input",
            ),
            ImageOutcome(key="county/b.tif", status=Status.OK, line=2, bands="3", stac_item=b_again),
        ],
    )
    summary = aggregate.aggregate_manifest(cfg2, second, "m1")
    assert (summary["stac"]["items_uploaded"], summary["stac"]["items_kept"]) == (1, 1)
    again = seed.get_object(Bucket=OUTPUT_BUCKET, Key="county/a.json")
    assert again["Body"].read() == kept_body and again["ETag"] == kept["ETag"]
    collection = get_json(seed, INPUT_BUCKET, later.collection)
    valid(collection, offline)
    assert [lk["href"] for lk in collection["links"] if lk["rel"] == "item"] == [
        f"s3://{OUTPUT_BUCKET}/county/a.json",
        f"s3://{OUTPUT_BUCKET}/county/b.json",
    ]
    area = shapely.geometry.shape(get_json(seed, INPUT_BUCKET, later.capture_area)["geometry"])
    assert area.buffer(1e-7).contains(shapely.geometry.shape(json.loads(kept_body)["geometry"]))
    assert get_json(seed, INPUT_BUCKET, KEYS.collection)["id"] == collection["id"]  # the first run's stays


def test_rows_without_an_item_are_named_but_do_not_hold_the_manifest(seed, buckets, settings, tmp_path):
    keys = ["county/a.tif", "county/nocrs.tif", "county/old.tif"]
    items = seed_converted(seed, tmp_path, keys)
    run_dir = tmp_path / f"workflow-run-{TS}"
    cfg = run_config(settings, run_dir, keys)
    seed.put_object(Bucket=INPUT_BUCKET, Key=KEYS.processing, Body=b"x")
    write_batch(
        run_dir,
        [
            ImageOutcome(key="county/a.tif", status=Status.OK, line=1, bands="3", stac_item=items["county/a.tif"]),
            ImageOutcome(key="county/nocrs.tif", status=Status.OK, line=2, bands="3"),
            ImageOutcome(key="county/old.tif", status=Status.SKIPPED, line=3, bands="3"),
        ],
    )
    summary = aggregate.aggregate_manifest(cfg, run_dir, "m1")
    assert summary["finished"] and summary["stac"]["complete"]
    assert [(w["key"], w["reason"].split(" (")[0].split(":")[0]) for w in summary["stac"]["without_item"]] == [
        ("county/nocrs.tif", "its batch job recorded no STAC Item"),
        ("county/old.tif", "skipped"),
    ]
    assert "no STAC Item for county/old.tif: skipped (outputs already made) and no county/old.json" in "\n".join(
        summary["notes"]
    )
    assert sorted(k for k in all_objects(seed, OUTPUT_BUCKET) if k.endswith(".json")) == ["county/a.json"]


def test_items_in_two_crss_get_a_collection_but_no_capture_area(seed, buckets, settings, tmp_path):
    keys = ["a.tif", "utm.tif"]
    items = seed_converted(seed, tmp_path, keys)
    utm = make_tif(
        tmp_path / "utm.tif",
        np.ones((1, 32, 32), np.uint8),
        crs="EPSG:32760",
        transform=Affine(10, 0, 300_000, 0, -10, 5_500_000),
    )
    items["utm.tif"] = stac.item_for("utm.tif", read_header(utm), stac.file_info(utm), None).to_dict()
    client = s3.make_client(settings)
    rows = [delivery.StacRow(k, items[k]) for k in keys]
    result = delivery.publish_stac(client, run_config(settings, tmp_path / "run", keys), KEYS, rows, tmp_path)
    assert result.complete and result.uploaded == 2 and result.capture_area_key is None
    assert result.collection_key == KEYS.collection
    assert any("no capture area" in n and "not in the CRS of a" in n for n in result.notes)
    assert "capture_area" not in get_json(seed, INPUT_BUCKET, KEYS.collection).get("assets", {})


def test_the_new_objects_are_the_pipelines_own():
    assert (KEYS.collection, KEYS.capture_area) == (
        "county/ortho-collection-20261125-000000.json",
        "county/ortho-capture-area-20261125-000000.geojson",
    )
    assert KEYS.collection_id == "county/ortho"
    assert is_pipeline_object("x-collection-20261125-000000.json")
    assert is_pipeline_object("x-capture-area-20261125-000000.geojson")
    assert not is_pipeline_object("x-collection.json") and not is_pipeline_object("county/t1.json")
