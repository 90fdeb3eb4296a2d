"""The delivery standard in a batch (direct mode, against moto): presets per data kind passed to the conversion and
recorded, the files beside each JPEG uploaded before the COG (and removed when the image fails), the STAC Item of
each image in its outcome, validated offline, with checksums of the very objects in the bucket."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from cog_pipeline.core.conversion import JpegOptions
from cog_pipeline.raster.convert import convert_file
from cog_pipeline.raster.header import pixel_digest
from cog_pipeline.storage import s3
from cog_pipeline.work import batch
from cog_pipeline.work.manifest import jpeg_key
from cog_pipeline.work.outcomes import ImageOutcome, Status, read_outcomes
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects
from rasters import make_tif
from test_stac import offline_validator, valid

MANIFEST = {
    "id": "m1",
    "csv": "manifests/m.csv",
    "key": "m-processing-20261201-000000.csv",
    "raw_key": "m-raw.csv",
    "stem": "m-",
    "timestamp": "20261201-000000",
}


def run_config(settings: s3.S3Settings, **extra) -> dict:
    return {
        "batch_size": 20,
        "cog": {},
        "jpeg": {},
        "manifests": [MANIFEST],
        **extra,
        "s3": {
            **{k: v for k, v in dataclasses.asdict(settings).items() if v is not None},
            "input_bucket": INPUT_BUCKET,
            "output_bucket": OUTPUT_BUCKET,
        },
    }


def run_batch(config: dict, tmp_path: Path, rows: list[str]) -> dict[str, ImageOutcome]:
    """One direct batch of ``rows``; the outcomes as read back from its status file, by key."""
    run_dir = tmp_path / "run"
    (run_dir / "manifests").mkdir(parents=True, exist_ok=True)
    (run_dir / "manifests" / "m.csv").write_text("".join(f"{r}\n" for r in rows))
    batch.run_batch(config, run_dir, "m1", 0, run_dir / "status" / "m1" / "batch-00000.jsonl", threads=1)
    return read_outcomes(run_dir, "m1")


def dem(n=192) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n]
    data = (800 + 200 * np.sin(x / 30) * np.cos(y / 25) + np.random.default_rng(0).normal(0, 0.5, (n, n))).astype(
        np.float32
    )
    data[:16, :16] = -9999
    return data


def ortho(n=160) -> np.ndarray:
    data = np.random.default_rng(2).integers(1, 255, (3, n, n), dtype=np.uint8)
    data[:, :, n - 20 :] = 0
    return data


def landcover(n=128) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n]
    return ((x // 32 + y // 32) % 4 + 1).astype(np.uint8)


@pytest.fixture
def delivery(buckets, seed, tmp_path):
    """An elevation tile, an ortho tile and a land-cover tile in the input bucket."""
    rasters = {
        "county/dem.tif": make_tif(tmp_path / "dem.tif", dem(), nodata=-9999),
        "county/ortho.tif": make_tif(tmp_path / "ortho.tif", ortho(), nodata=0),
        "county/landcover.tif": make_tif(tmp_path / "landcover.tif", landcover()),
    }
    for key, path in rasters.items():
        seed.upload_file(str(path), INPUT_BUCKET, key)
    return rasters


@pytest.fixture
def validator(monkeypatch):
    return offline_validator(monkeypatch)


def sha256_multihash(data: bytes) -> str:
    return "1220" + hashlib.sha256(data).hexdigest()


def test_presets_are_passed_per_kind_and_recorded(delivery, seed, settings, tmp_path):
    config = run_config(
        settings,
        presets={"enabled": True, "elevation": {"compress": "LERC_ZSTD", "max_z_error": 0.01, "max_abs_error": 0.01}},
    )
    outcomes = run_batch(config, tmp_path, ["county/dem.tif,1", "county/ortho.tif,3", "county/landcover.tif,1"])
    assert {k: o.status for k, o in outcomes.items()} == dict.fromkeys(delivery, Status.OK)
    dem_out, ortho_out, lc_out = (outcomes[k] for k in ("county/dem.tif", "county/ortho.tif", "county/landcover.tif"))

    assert (dem_out.kind, dem_out.check) == ("elevation", "bounded")
    assert dem_out.preset.startswith("elevation: LERC_ZSTD") and "max abs error <= 0.01" in dem_out.preset
    assert 0 < dem_out.max_abs_error <= 0.01 + 1e-3 and dem_out.rmse > 0 and math.isfinite(dem_out.psnr_db)
    assert dem_out.input_pixel_digest == pixel_digest(delivery["county/dem.tif"]) != dem_out.cog_pixel_digest
    assert (ortho_out.kind, ortho_out.check, ortho_out.max_abs_error) == ("imagery", "lossless", None)
    assert ortho_out.preset.startswith("imagery: WEBP")
    assert ortho_out.input_pixel_digest == ortho_out.cog_pixel_digest == pixel_digest(delivery["county/ortho.tif"])
    assert lc_out.kind == "categorical" and lc_out.preset.startswith("categorical: LZW")

    # The COGs in the bucket were written with those presets.
    for key, codec in (("county/dem.tif", "lerc"), ("county/ortho.tif", "webp"), ("county/landcover.tif", "lzw")):
        local = tmp_path / f"got-{codec}.tif"
        seed.download_file(OUTPUT_BUCKET, key, str(local))
        with rasterio.open(local) as ds:
            assert ds.compression.name.lower().startswith(codec), (key, ds.compression)
        if key == "county/dem.tif":
            assert pixel_digest(local) == dem_out.cog_pixel_digest


def test_with_presets_off_the_cog_section_is_used_and_the_kind_still_recorded(delivery, seed, settings, tmp_path):
    outcomes = run_batch(run_config(settings), tmp_path, ["county/dem.tif,1", "county/ortho.tif,3"])
    dem_out, ortho_out = outcomes["county/dem.tif"], outcomes["county/ortho.tif"]
    assert (dem_out.kind, ortho_out.kind) == ("elevation", "imagery")
    assert dem_out.preset.startswith("cog section (presets disabled): LZW") and dem_out.check == "lossless"
    assert dem_out.input_pixel_digest == dem_out.cog_pixel_digest == pixel_digest(delivery["county/dem.tif"])
    local = tmp_path / "got.tif"
    seed.download_file(OUTPUT_BUCKET, "county/dem.tif", str(local))
    with rasterio.open(local) as ds:
        assert ds.compression.name == "lzw"


def test_an_infinite_psnr_is_recorded_as_json_and_read_back():
    outcome = ImageOutcome("a.tif", Status.OK, check="bounded", max_abs_error=0.0, rmse=0.0, psnr_db=math.inf)
    text = json.dumps(outcome.to_record(), allow_nan=False)  # strict JSON: no Infinity
    assert json.loads(text)["psnr_db"] == "inf"
    back = ImageOutcome.from_record(json.loads(text))
    assert back.psnr_db == math.inf and back == outcome


def test_the_files_beside_each_jpeg_are_uploaded_and_recorded(delivery, seed, settings, tmp_path):
    config = run_config(settings, jpeg={"sizes": [64]})
    outcomes = run_batch(config, tmp_path, ["county/ortho.tif,3"])
    outcome = outcomes["county/ortho.tif"]
    want = {f"county/ortho{suffix}" for suffix in (".jgw", ".jpg.aux.xml", ".64.jpg", ".64.jgw", ".64.jpg.aux.xml")}
    assert set(outcome.sidecars) == want
    stored = all_objects(seed, OUTPUT_BUCKET)
    assert set(stored) == {"county/ortho.tif", "county/ortho.jpg"} | want
    types = {k: seed.head_object(Bucket=OUTPUT_BUCKET, Key=k)["ContentType"] for k in want}
    assert types["county/ortho.jgw"] == "text/plain" and types["county/ortho.64.jpg"] == "image/jpeg"
    assert types["county/ortho.jpg.aux.xml"] == "application/xml"
    source_etag = seed.head_object(Bucket=INPUT_BUCKET, Key="county/ortho.tif")["ETag"]
    assert {seed.head_object(Bucket=OUTPUT_BUCKET, Key=k)["Metadata"][batch.SOURCE_ETAG_META] for k in want} == {
        source_etag
    }
    # The world file places the JPEG: its first line is the pixel size, its fifth the upper-left pixel's centre.
    world = stored["county/ortho.jgw"].decode().split()
    assert float(world[0]) == 0.5 and float(world[4]) == 1_750_000.25
    assert b"EPSG" in stored["county/ortho.jpg.aux.xml"] or b"2193" in stored["county/ortho.jpg.aux.xml"]
    # A rerun skips the image (the COG carries the input's ETag), its files stay.
    again = run_batch(config, tmp_path, ["county/ortho.tif,3"])
    assert again["county/ortho.tif"].status is Status.SKIPPED
    assert set(all_objects(seed, OUTPUT_BUCKET)) == set(stored)


@pytest.mark.parametrize(
    "options",
    [
        JpegOptions(),
        JpegOptions(sizes=(64, 100)),
        JpegOptions(georeference=False),
        JpegOptions(sizes=(64,), georeference=False),
    ],
)
def test_the_suffixes_the_access_point_signs_are_those_the_previews_write(samples, tmp_path, options):
    """sidecar_suffixes (what presign_batch signs) is exactly what a georeferenced image's previews write."""
    result = convert_file(samples / "byte.tif", tmp_path / "c.tif", tmp_path / "p.jpg", jpeg_options=options)
    assert sorted(suffix for _, suffix in result.preview_sidecars) == sorted(batch.sidecar_suffixes(options))
    plain = make_tif(tmp_path / "plain.tif", np.ones((1, 8, 8), np.uint8), crs=None)
    result = convert_file(plain, tmp_path / "d.tif", tmp_path / "q.jpg", jpeg_options=options)
    assert {s for _, s in result.preview_sidecars} == {f".{n}.jpg" for n in options.sizes}  # no CRS: no georef


def test_a_failed_image_leaves_no_file_beside_its_jpeg(delivery, seed, settings, tmp_path, monkeypatch):
    """The COG's upload fails after the JPEG and its files were stored: those files are removed, the row fails at
    upload saying so (the JPEG, confirmed, stays as before), and the next image is not affected."""
    real = s3.upload_file

    def failing_cog(client, bucket, key, *args, **kwargs):
        if key == "county/ortho.tif":
            raise s3.boto3.exceptions.S3UploadFailedError("Failed to upload: connection reset (test)")
        return real(client, bucket, key, *args, **kwargs)

    monkeypatch.setattr(s3, "upload_file", failing_cog)
    outcomes = run_batch(
        run_config(settings, jpeg={"sizes": [64]}), tmp_path, ["county/ortho.tif,3", "county/landcover.tif,1"]
    )
    failed = outcomes["county/ortho.tif"]
    assert failed.failed and failed.step == "upload" and "connection reset" in failed.reason
    assert "the files beside the JPEG stored before were removed" in failed.reason
    assert "county/ortho.64.jpg" in failed.reason and failed.stac_item is None and failed.sidecars == ()
    stored = set(all_objects(seed, OUTPUT_BUCKET))
    assert {k for k in stored if k.startswith("county/ortho")} == {"county/ortho.jpg"}
    assert outcomes["county/landcover.tif"].status is Status.OK
    assert {"county/landcover.tif", "county/landcover.jgw", "county/landcover.64.jpg"} <= stored


def test_a_file_beside_the_jpeg_that_is_not_stored_whole_fails_the_image_before_its_cog(
    delivery, seed, settings, tmp_path, monkeypatch
):
    """A world file the server reports as another size is removed, the files before it too, and no COG is sent."""
    real_verify = s3.verify_upload

    def short_world_file(client, bucket, key, path, *args, head, **kwargs):
        if key.endswith(".64.jgw"):
            head = {**head, "ContentLength": head["ContentLength"] - 1}
        return real_verify(client, bucket, key, path, *args, head=head, **kwargs)

    monkeypatch.setattr(s3, "verify_upload", short_world_file)
    outcomes = run_batch(run_config(settings, jpeg={"sizes": [64]}), tmp_path, ["county/ortho.tif,3"])
    failed = outcomes["county/ortho.tif"]
    assert failed.failed and failed.step == "upload" and "county/ortho.64.jgw" in failed.reason
    assert set(all_objects(seed, OUTPUT_BUCKET)) == {"county/ortho.jpg"}


def test_each_image_records_its_stac_item_valid_with_the_checksums_of_the_stored_objects(
    delivery, seed, settings, tmp_path, validator
):
    outcomes = run_batch(run_config(settings), tmp_path, ["county/dem.tif,1", "county/ortho.tif,3"])
    stored = all_objects(seed, OUTPUT_BUCKET)
    for key, outcome in outcomes.items():
        assert outcome.status is Status.OK and outcome.stac_item is not None, outcome.notes
        item = pystac.Item.from_dict(outcome.stac_item)
        assert valid(item, validator)
        assert item.id == key.removesuffix(".tif") and item.assets["image"].href == "./" + key.rsplit("/", 1)[1]
        cog, jpeg = stored[key], stored[jpeg_key(key)]
        image, preview = item.assets["image"].extra_fields, item.assets["preview"].extra_fields
        assert (image["file:size"], image["file:checksum"]) == (len(cog), sha256_multihash(cog))
        assert (preview["file:size"], preview["file:checksum"]) == (len(jpeg), sha256_multihash(jpeg))
        props = item.properties
        assert props["cog_pipeline:input_pixel_digest"] == outcome.input_pixel_digest == pixel_digest(delivery[key])
        assert props["cog_pipeline:cog_pixel_digest"] == outcome.cog_pixel_digest
        assert props["cog_pipeline:kind"] == outcome.kind and props["proj:code"] == "EPSG:2193"
        assert not any(k.endswith(".json") for k in stored)  # the aggregate uploads the Items, not the job
    assert outcomes["county/dem.tif"].stac_item["assets"]["image"]["raster:bands"][0]["nodata"] == -9999


def test_an_image_without_a_crs_has_no_item_and_a_note(buckets, seed, settings, tmp_path):
    plain = make_tif(tmp_path / "plain.tif", np.arange(64, dtype=np.uint8).reshape(1, 8, 8), crs=None)
    seed.upload_file(str(plain), INPUT_BUCKET, "plain.tif")
    outcome = run_batch(run_config(settings), tmp_path, ["plain.tif,1"])["plain.tif"]
    assert outcome.status is Status.OK and outcome.stac_item is None and outcome.sidecars == ()
    assert "no STAC Item: the image has no CRS" in outcome.notes


def test_an_unreadable_input_fails_at_open_with_presets_on(buckets, seed, settings, tmp_path):
    """Reading the header for the preset does not hide the conversion's own failure (step and code)."""
    seed.put_object(Bucket=INPUT_BUCKET, Key="junk.tif", Body=b"this is not a tiff at all" * 10)
    outcome = run_batch(run_config(settings, presets={"enabled": True}), tmp_path, ["junk.tif,1"])["junk.tif"]
    plain = run_batch(run_config(settings), tmp_path / "off", ["junk.tif,1"])["junk.tif"]
    assert outcome.failed and (outcome.step, outcome.code, outcome.reason) == (plain.step, plain.code, plain.reason)
    assert outcome.step == "open" and outcome.code is not None
