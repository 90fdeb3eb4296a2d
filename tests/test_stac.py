"""STAC Items, Collections and capture areas (cog_pipeline/work/stac.py), validated offline: pystac's own
validator with the STAC core schemas pystac ships and the extension schemas in tests/data/stac-schemas/
(README there); any schema it would fetch from the network fails the test instead."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pystac
import pystac.validation
import pytest
import rasterio
import shapely.geometry
from affine import Affine
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from cog_pipeline.core import config
from cog_pipeline.raster.header import pixel_digest, read_header
from cog_pipeline.work import stac
from rasters import TRANSFORM, make_tif

SCHEMAS = Path(__file__).parent / "data" / "stac-schemas"
EXTENSION_URIS = {
    "projection-v2.0.0.json": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster-v1.1.0.json": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "file-v2.1.0.json": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "eo-v1.1.0.json": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "processing-v1.2.0.json": stac.PROCESSING_SCHEMA,
}


def offline_validator(monkeypatch) -> JsonSchemaSTACValidator:
    """pystac's JSON-schema validator, offline: every schema it needs is local (tests/data/stac-schemas), and a
    schema wanted from the network fails the test. The STAC tests of other files use it too."""

    def no_network(self, source, *args, **kwargs):
        raise AssertionError(f"validation wanted a schema from the network: {source}")

    monkeypatch.setattr(pystac.StacIO, "read_text", no_network)
    v = JsonSchemaSTACValidator()
    for name, uri in EXTENSION_URIS.items():
        v.schema_cache[uri] = json.loads((SCHEMAS / name).read_text())
    return v


@pytest.fixture
def validator(monkeypatch):
    return offline_validator(monkeypatch)


def valid(obj: pystac.STACObject, validator) -> list[str]:
    """Validate ``obj`` (core and every extension it names) and return the schemas used."""
    return pystac.validation.validate_dict(obj.to_dict(include_self_link=False), validator=validator)


def sha256_multihash(path: Path) -> str:
    return "1220" + hashlib.sha256(path.read_bytes()).hexdigest()


def ortho(tmp_path: Path, name="tile.tif", transform=TRANSFORM, n=128) -> Path:
    data = np.random.default_rng(5).integers(1, 255, (3, n, n), dtype=np.uint8)
    data[:, :, n // 2 :] = 0  # right half is nodata
    return make_tif(tmp_path / name, data, nodata=0, transform=transform)


def test_an_item_for_an_ortho_tile_validates_and_carries_its_checksums(tmp_path, validator):
    cog = ortho(tmp_path)
    jpeg = tmp_path / "tile.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff not really a jpeg")
    header = read_header(cog)
    digest = pixel_digest(cog)
    item = stac.item_for(
        "county/tile.tif",
        header,
        stac.file_info(cog),
        stac.file_info(jpeg),
        collection_id="county",
        collection_href="s3://in/county-collection.json",
        pixel_digests={"input": digest, "cog": digest},
    )
    used = valid(item, validator)
    assert set(EXTENSION_URIS.values()) <= set(used)
    d = item.to_dict(include_self_link=False)
    assert [link["href"] for link in d["links"] if link["rel"] == "collection"] == ["s3://in/county-collection.json"]
    assert d["id"] == "county/tile" and stac.item_key("county/tile.tif") == "county/tile.json"
    props = d["properties"]
    assert props["proj:code"] == "EPSG:2193" and props["proj:shape"] == [128, 128]
    assert props["proj:transform"] == [0.5, 0.0, 1_750_000.0, 0.0, -0.5, 5_430_000.0]
    assert props["processing:software"]["GDAL"] == rasterio.__gdal_version__
    assert props["cog_pipeline:input_pixel_digest"] == props["cog_pipeline:cog_pixel_digest"] == digest
    image, preview = d["assets"]["image"], d["assets"]["preview"]
    assert (image["href"], preview["href"]) == ("./tile.tif", "./tile.jpg")
    assert image["file:checksum"] == sha256_multihash(cog) and image["file:size"] == cog.stat().st_size
    assert preview["file:checksum"] == sha256_multihash(jpeg)
    assert [b["common_name"] for b in image["eo:bands"]] == ["red", "green", "blue"]
    band = image["raster:bands"][0]
    assert (band["data_type"], band["nodata"], band["spatial_resolution"]) == ("uint8", 0, 0.5)
    assert band["statistics"]["valid_percent"] == pytest.approx(50, abs=1)
    # The footprint is the valid left half, not the whole tile, in NZTM and in lon/lat.
    native = shapely.geometry.shape(props["proj:geometry"])
    assert native.area == pytest.approx(64 * 128 * 0.25, rel=0.02)
    assert native.bounds == pytest.approx((1_750_000, 5_430_000 - 64, 1_750_032, 5_430_000), abs=1)
    lon_min, lat_min, lon_max, lat_max = d["bbox"]
    assert 174 < lon_min < lon_max < 176 and -42 < lat_min < lat_max < -40
    again = pystac.Item.from_dict(d)
    assert again.to_dict(include_self_link=False) == d


def test_an_elevation_item_in_a_crs_without_epsg_code(tmp_path, validator):
    crs = "+proj=tmerc +lat_0=0 +lon_0=172.5 +k=0.9996 +x_0=1600000 +y_0=10000000 +ellps=GRS80 +units=m +no_defs"
    data = np.linspace(0, 500, 64 * 64, dtype=np.float32).reshape(64, 64)
    data[:4] = np.nan
    path = make_tif(tmp_path / "dem.tif", data, nodata=float("nan"), crs=crs)
    item = stac.item_for("dem.tif", read_header(path), stac.file_info(path), None)
    valid(item, validator)
    d = item.to_dict(include_self_link=False)
    assert "proj:code" not in d["properties"] and "TRANSVERSE" in d["properties"]["proj:wkt2"].upper()
    band = d["assets"]["image"]["raster:bands"][0]
    assert band["nodata"] == "nan" and band["data_type"] == "float32"
    assert band["statistics"]["minimum"] > 0 and band["statistics"]["maximum"] == pytest.approx(500, rel=0.01)
    assert "eo:bands" not in d["assets"]["image"] and "preview" not in d["assets"]
    assert d["properties"]["cog_pipeline:datetime_source"] == "processed"


def test_a_broken_item_fails_validation(tmp_path, validator):
    cog = ortho(tmp_path)
    item = stac.item_for("tile.tif", read_header(cog), stac.FileInfo(10, "not-a-multihash"), None)
    with pytest.raises(pystac.STACValidationError):
        valid(item, validator)


def test_no_valid_pixel_no_item(tmp_path):
    path = make_tif(tmp_path / "empty.tif", np.zeros((1, 16, 16), np.uint8), nodata=0)
    with pytest.raises(ValueError, match="no footprint"):
        stac.item_for("empty.tif", read_header(path), stac.file_info(path), None)


def test_the_tiff_datetime_is_the_item_datetime(tmp_path):
    path = make_tif(tmp_path / "t.tif", np.ones((1, 16, 16), np.uint8))
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2024:02:29 10:30:00")
    item = stac.item_for("t.tif", read_header(path), stac.file_info(path), None)
    assert item.datetime.isoformat() == "2024-02-29T10:30:00+00:00"
    assert item.properties["cog_pipeline:datetime_source"] == "TIFFTAG_DATETIME"


def test_a_collection_validates_with_license_providers_extent_and_links(tmp_path, validator):
    cfg = config.load(
        run={
            "stac": {
                "license": "CC-BY-4.0",
                "providers": [
                    {
                        "name": "Wellington Region Cartography",
                        "roles": ["producer", "licensor"],
                        "url": "https://example.org",
                    }
                ],
            }
        }
    )
    items = {}
    for i in range(2):
        path = ortho(tmp_path, f"t{i}.tif", transform=TRANSFORM @ Affine.translation(0, 128 * i))
        item = stac.item_for(
            f"county/t{i}.tif",
            read_header(path),
            stac.file_info(path),
            None,
            collection_id="county",
            collection_href="s3://in/county-collection.json",
        )
        valid(item, validator)
        items[f"s3://out/county/t{i}.json"] = item
    collection = stac.collection_for(
        "county", items, stac.stac_settings_from_config(cfg), capture_area_href="./county-capture-area.geojson"
    )
    valid(collection, validator)
    d = collection.to_dict(include_self_link=False)
    assert d["license"] == "CC-BY-4.0" and d["providers"][0]["roles"] == ["producer", "licensor"]
    assert [link["href"] for link in d["links"] if link["rel"] == "item"] == list(items)
    boxes = [it.bbox for it in items.values()]
    assert d["extent"]["spatial"]["bbox"][0] == pytest.approx(
        [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
    )
    assert d["assets"]["capture_area"]["href"] == "./county-capture-area.geojson"
    assert pystac.Collection.from_dict(d).to_dict(include_self_link=False) == d
    with pytest.raises(ValueError, match=r"stac.providers\[0\].roles"):
        stac.stac_settings_from_config({"stac": {"providers": [{"name": "x", "roles": ["owner"]}]}})


def test_capture_area_is_the_union_of_valid_footprints(tmp_path):
    footprints = []
    for i in range(3):  # three tiles one above the other, each with its right half nodata
        path = ortho(tmp_path, f"t{i}.tif", transform=TRANSFORM @ Affine.translation(0, 128 * i))
        footprints.append(stac.footprint(read_header(path)))
    area = stac.capture_area(footprints, gsd=0.5)
    geom = shapely.geometry.shape(area["geometry"])
    assert geom.geom_type == "Polygon"  # adjacent tiles merge, no slivers
    native = shapely.ops.unary_union([shapely.geometry.shape(f.native) for f in footprints])
    assert native.area == pytest.approx(3 * 64 * 128 * 0.25, rel=0.02)
    assert area["properties"] == {"images": 3, "source_crs": "EPSG:2193", "simplified_to": 0.5}
    # Reprojected, the area still covers each item's footprint (within a tiny tolerance).
    for f in footprints:
        assert geom.buffer(1e-7).contains(shapely.geometry.shape(f.wgs84))
    utm = ortho(tmp_path, "utm.tif")
    with rasterio.open(utm, "r+") as ds:
        ds.crs = "EPSG:32760"
    with pytest.raises(ValueError, match="not in the CRS of"):
        stac.capture_area([*footprints, stac.footprint(read_header(utm))], gsd=0.5)


def test_footprint_leaves_out_an_undeclared_fill(tmp_path):
    data = np.full((1, 64, 64), 7, np.int16)
    data[0, :, 32:] = -9999
    header = read_header(make_tif(tmp_path / "f.tif", data))
    whole = shapely.geometry.shape(stac.footprint(header).native)
    left = shapely.geometry.shape(stac.footprint(header, fill_value=-9999).native)
    assert left.area == pytest.approx(whole.area / 2)


def test_write_json_refuses_nan_and_leaves_no_part_file(tmp_path):
    path = stac.write_json({"a": 1}, tmp_path / "x.json")
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(ValueError):
        stac.write_json({"a": float("nan")}, tmp_path / "y.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_an_item_of_a_collection_links_it(tmp_path):
    cog = ortho(tmp_path)
    with pytest.raises(ValueError, match="needs the collection's href"):
        stac.item_for("tile.tif", read_header(cog), stac.file_info(cog), None, collection_id="county")
