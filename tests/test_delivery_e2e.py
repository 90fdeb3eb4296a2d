"""Issue 13's "Done when", in one real tick (Snakemake, local executor, moto): a county delivery mixing
orthoimagery, an elevation model and a paletted land-cover raster, plus one ortho tile QA must catch, comes
back with a valid COG per preset, the QA finding where it belongs (and none across kinds), valid STAC Items
and Collection whose checksums match the uploaded objects, previews georeferenced in place, and a report
whose map draws every image (the one QA failed from its QA read)."""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import re
from pathlib import Path

import numpy as np
import pystac
import pystac.validation
import pytest
import rasterio
import shapely.geometry
import yaml
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from cog_pipeline.control.tick import TickOptions, tick
from cog_pipeline.raster import header as header_module
from cog_pipeline.work import batch, footprints
from cog_pipeline.work.outcomes import read_outcomes
from conftest import INPUT_BUCKET, OUTPUT_BUCKET, all_objects
from rasters import make_tif
from test_stac import EXTENSION_URIS, offline_validator

#: NZTM, near Wellington: the orthos' grid (0.5 m pixels), 128 x 128 pixels a tile.
ORIGIN = (1_750_000.0, 5_430_000.0)
SIDE = 128
ORTHOS = ("county/ortho/t0.tif", "county/ortho/t1.tif", "county/ortho/t2.tif")
ODD = "county/ortho/t3-1m.tif"  # an ortho tile at 1 m among 0.5 m ones: QA's gsd_mismatch
DEM = "county/dem/dem.tif"
LANDCOVER = "county/landcover/lc.tif"
CONVERTED = (*ORTHOS, DEM, LANDCOVER)
#: The land cover's classes; in its palette 9's colour is the mean of 1's and 5's, so overviews averaged by
#: colour (GDAL's average on a paletted band) turn a checkerboard of 1 and 5 into 9.
CLASSES = (1, 5, 9)
#: The codec (and TIFF predictor) of each kind's preset in config/config.yaml.
CODECS = {"imagery": ("WEBP", None), "elevation": ("ZSTD", "3"), "categorical": ("LZW", None)}
KINDS = {**dict.fromkeys(ORTHOS, "imagery"), DEM: "elevation", LANDCOVER: "categorical"}
PREVIEW_SIDE = 48


def grid(pixel: float, col: int = 0) -> Affine:
    return Affine(pixel, 0, ORIGIN[0] + col * SIDE * 0.5, 0, -pixel, ORIGIN[1])


def ortho(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 255, (3, SIDE, SIDE), dtype=np.uint8)


def write_delivery(folder: Path) -> dict[str, Path]:
    """The delivery's GeoTIFFs by key, each 128 x 128: three adjacent 0.5 m RGB tiles, a 1 m one beside them, a
    float32 DEM at 2 m (nodata -9999 in its top rows) and a paletted land cover at 1 m over the same ground."""
    folder.mkdir()
    files = {
        key: make_tif(folder / f"t{i}.tif", ortho(i), transform=grid(0.5, i), photometric="RGB")
        for i, key in enumerate(ORTHOS)
    }
    files[ODD] = make_tif(folder / "odd.tif", ortho(9), transform=grid(1.0, 3), photometric="RGB")
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    elevation = (300 + 40 * np.sin(x / 9) * np.cos(y / 7)).astype(np.float32)
    elevation[:8] = -9999
    files[DEM] = make_tif(folder / "dem.tif", elevation, nodata=-9999, transform=grid(2.0))
    palette = {i: (0, 0, 0, 255) for i in range(256)}
    palette.update({1: (200, 0, 0, 255), 5: (0, 0, 200, 255), 9: (100, 0, 100, 255)})  # 9: the mean of 1 and 5
    classes = np.tile(np.array([[1, 5], [5, 1]], np.uint8), (64, 64))
    classes[:16, :16] = 9
    files[LANDCOVER] = make_tif(folder / "lc.tif", classes, colormap=palette, transform=grid(1.0))
    return files


def rows(body: bytes) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(body.decode("utf-8"))) if r]


def multihash(body: bytes) -> str:
    return "1220" + hashlib.sha256(body).hexdigest()


def saved(folder: Path, objects: dict[str, bytes], *keys: str) -> Path:
    """``keys`` from ``objects`` written side by side in ``folder`` (as GIS software finds them); the first's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for key in keys:
        (folder / key.rsplit("/", 1)[-1]).write_bytes(objects[key])
    return folder / keys[0].rsplit("/", 1)[-1]


@pytest.mark.slow
def test_a_mixed_delivery_in_one_tick(seed, buckets, settings, tmp_path, monkeypatch):
    files = write_delivery(tmp_path / "delivery")
    for key, path in files.items():
        seed.upload_file(str(path), INPUT_BUCKET, key)
    manifest = [*ORTHOS[:2], ODD, ORTHOS[2], DEM, LANDCOVER]  # (d) on line 3
    seed.put_object(
        Bucket=INPUT_BUCKET, Key="county/mixed-raw.csv", Body="".join(f"{k},3\n" for k in manifest).encode()
    )
    site = tmp_path / "site.yaml"  # what a site gives with --config FILE
    site.write_text(
        yaml.safe_dump(
            {
                "presets": {"enabled": True},
                "qa": {"enabled": True},
                "cog": {"blocksize": 64},  # overviews on 128-pixel images
                "jpeg": {"sizes": [PREVIEW_SIDE]},
                "stac": {"license": "CC-BY-4.0", "providers": [{"name": "County GIS", "roles": ["producer"]}]},
            }
        )
    )
    opts = TickOptions(
        input_bucket=INPUT_BUCKET,
        output_bucket=OUTPUT_BUCKET,
        settings=settings,
        workdir=tmp_path / "work",
        config_file=site,
    )

    result = tick(opts)

    assert result.exit_code == 0 and result.run_dir is not None
    [summary] = result.manifests
    ts = result.run_dir.name.removeprefix("workflow-run-")
    assert summary["finished"] and summary["stac"]["complete"]
    inp, out = all_objects(seed, INPUT_BUCKET), all_objects(seed, OUTPUT_BUCKET)

    # --- QA: one finding that fails, for (d); nothing across kinds; (d) failed, not converted.
    qa_key = f"county/mixed-qa-{ts}.csv"
    assert qa_key in inp and summary["processed_key"] == f"county/mixed-processed-{ts}.csv"
    findings = rows(inp[qa_key])
    assert findings[0] == ["key", "check", "severity", "detail"]
    failing = [f for f in findings[1:] if f[2] in ("fail", "warn")]
    assert [(f[0], f[1], f[2]) for f in failing] == [(ODD, "gsd_mismatch", "fail")], findings
    notes = {(f[0], f[1]) for f in findings[1:] if f[2] == "info"}
    assert (LANDCOVER, "paletted") in notes and {k for k, _ in notes} == {LANDCOVER}, findings
    assert "imagery" in failing[0][3], failing  # compared within its kind: "... of 4 imagery images ..."
    assert summary["failures"] == [{"line": 3, "key": ODD, "code": "qa-failed"}]
    assert rows(inp[summary["failed_key"]]) == [[ODD, "3"]]
    [[key, _, reason]] = rows(inp[summary["errors_key"]])[1:]
    assert (key, reason) == (ODD, f"qa: gsd_mismatch: {failing[0][3]}")
    assert rows(inp[summary["processed_key"]]) == [[k, "3"] for k in manifest if k != ODD]
    records = read_outcomes(result.run_dir, "m1")
    assert {k: records[k].kind for k in CONVERTED} == KINDS
    assert "overviews mode" in str(records[LANDCOVER].preset), records[LANDCOVER].preset
    stem = ODD.removesuffix(".tif")
    assert not [k for k in out if k.startswith(stem)]  # no COG, JPEG, side file or Item of (d)

    # --- COGs: valid, each with its kind's codec; categorical overviews are classes, never averages.
    stac = offline_validator(monkeypatch)
    item_footprints = []
    for key in CONVERTED:
        cog = saved(tmp_path / "cogs" / key.rsplit("/", 1)[0], out, key)
        is_valid, errors, _ = cog_validate(str(cog), quiet=True)
        assert is_valid, (key, errors)
        codec, predictor = CODECS[KINDS[key]]
        with rasterio.open(cog) as ds:
            structure = ds.tags(ns="IMAGE_STRUCTURE")
            assert (structure.get("COMPRESSION"), structure.get("PREDICTOR")) == (codec, predictor), (key, structure)
            assert ds.overviews(1) == [2], key
            transform, width, height, crs, bounds = ds.transform, ds.width, ds.height, ds.crs, ds.bounds
            if KINDS[key] == "imagery":
                assert structure.get("COMPRESSION_REVERSIBILITY") == "LOSSLESS"
            if KINDS[key] == "categorical":
                assert ds.colormap(1)[9] == (100, 0, 100, 255)
                blocks = ds.read(1).reshape(height // 2, 2, width // 2, 2)
        if KINDS[key] == "categorical":  # every overview pixel is a class of its 2 x 2 block: never a blend
            with rasterio.open(cog, overview_level=0) as ov:
                overview = ov.read(1)
            assert set(np.unique(overview).tolist()) <= set(CLASSES)
            assert (blocks == overview[:, None, :, None]).any(axis=(1, 3)).all()

        # --- its STAC Item, valid offline, checksums of the very objects in the bucket.
        item_key = key.removesuffix(".tif") + ".json"
        item = json.loads(out[item_key])
        checked = set(pystac.validation.validate_dict(item, validator=stac))
        wanted = {uri for name, uri in EXTENSION_URIS.items() if KINDS[key] == "imagery" or not name.startswith("eo-")}
        assert checked - wanted == {"https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"}, key
        assert wanted <= checked, key  # every extension it uses (eo: the orthos' red, green, blue) validated
        jpg = key.removesuffix(".tif") + ".jpg"
        assets = item["assets"]
        assert (assets["image"]["file:checksum"], assets["image"]["file:size"]) == (multihash(out[key]), len(out[key]))
        assert (assets["preview"]["file:checksum"], assets["preview"]["file:size"]) == (
            multihash(out[jpg]),
            len(out[jpg]),
        )
        assert item["properties"]["cog_pipeline:kind"] == KINDS[key] and item["properties"]["proj:code"] == "EPSG:2193"
        digests = (
            item["properties"]["cog_pipeline:input_pixel_digest"],
            item["properties"]["cog_pipeline:cog_pixel_digest"],
        )
        assert digests[0] == digests[1] and digests[0].startswith("1220")  # lossless, provably
        item_footprints.append(shapely.geometry.shape(item["geometry"]))

        # --- each preview (full size and the smaller one) opens in place: world file and .aux.xml beside it.
        for preview in (jpg, key.removesuffix(".tif") + f".{PREVIEW_SIDE}.jpg"):
            base = preview.removesuffix(".jpg")
            world, aux = base + ".jgw", preview + ".aux.xml"
            assert world in out and aux in out, (preview, sorted(k for k in out if k.startswith(base)))
            local = saved(tmp_path / "previews" / base, out, preview, world, aux)
            with rasterio.open(local) as jp:
                scale_x, scale_y = width / jp.width, height / jp.height
                assert max(jp.width, jp.height) == (max(width, height) if preview == jpg else PREVIEW_SIDE)
                assert jp.crs == crs, preview
                assert tuple(jp.bounds) == pytest.approx(tuple(bounds), abs=0.5 * transform.a * scale_x), preview
            a, d, b, e, c, f = (float(v) for v in out[world].decode().split())
            assert (a, e, b, d) == pytest.approx((transform.a * scale_x, transform.e * scale_y, 0, 0)), preview
            # a world file names the centre of the upper-left pixel: half a preview pixel in from the corner
            assert (c - a / 2, f - e / 2) == pytest.approx((transform.c, transform.f)), preview

    # --- the Collection and the capture area beside the outcome CSVs.
    collection = json.loads(inp[f"county/mixed-collection-{ts}.json"])
    pystac.validation.validate_dict(collection, validator=stac)
    assert collection["license"] == "CC-BY-4.0" and collection["providers"][0]["name"] == "County GIS"
    assert sorted(link["href"] for link in collection["links"] if link["rel"] == "item") == sorted(
        f"s3://{OUTPUT_BUCKET}/{k.removesuffix('.tif')}.json" for k in CONVERTED
    )
    area = json.loads(inp[f"county/mixed-capture-area-{ts}.geojson"])
    assert area["properties"]["images"] == len(CONVERTED)
    outline = shapely.geometry.shape(area["geometry"])
    for fp in item_footprints:
        assert outline.buffer(1e-6).contains(fp)

    # --- the report beside the outcome CSVs: every image's footprint on its map, (d)'s from its QA read.
    report = inp[summary["report_key"]].decode()
    assert summary["report_key"] == f"county/mixed-report-{ts}.html"
    assert "6 headers read, 1 row failed by QA" in report and f"<code>{qa_key}</code>" in report  # its QA section
    assert "QA info: paletted" in report
    drawn = re.findall(r'<path class="fp (\w+)" data-i="\d+"[^>]*><title>([^<]*) \(', report)
    expected = [("processed", html.escape(k)) for k in CONVERTED] + [("failed", html.escape(ODD))]
    assert sorted(drawn) == sorted(expected), drawn
    assert "Every image is on the map." in report
    assert 'aria-label="footprints of 6 images"' in report


def test_each_cog_header_is_read_once(seed, buckets, settings, tmp_path, monkeypatch):
    """The batch reads a finished COG's header (and decimated read) once, for its STAC Item and the report's map
    facts both; the outcome still has both."""
    from test_batch_delivery import run_batch, run_config

    reads: list[str] = []
    read = header_module.read_header

    def counted(path, *args, **kwargs):
        reads.append(Path(str(path)).name)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(batch, "read_header", counted)
    monkeypatch.setattr(footprints, "read_header", counted)
    files = write_delivery(tmp_path / "delivery")
    for key in (ORTHOS[0], DEM):
        seed.upload_file(str(files[key]), INPUT_BUCKET, key)
    outcomes = run_batch(run_config(settings, presets={"enabled": True}), tmp_path, [f"{ORTHOS[0]},3", f"{DEM},1"])
    assert reads.count("cog.tif") == 2, reads  # one per image
    for key in (ORTHOS[0], DEM):
        outcome = outcomes[key]
        assert outcome.stac_item and outcome.footprint and outcome.crs == "EPSG:2193" and outcome.overviews == ()
        assert outcome.codec == CODECS[KINDS[key]][0] and outcome.pixel_size == (
            (0.5, 0.5) if key != DEM else (2.0, 2.0)
        )
