"""The report's map (work/reportmap.py), the facts it is drawn from (work/footprints.py), and the new columns."""

from __future__ import annotations

import base64
import hashlib
import math
import re

import numpy as np
import pytest
import rasterio
import shapely.geometry
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from cog_pipeline.raster.convert import convert_file, inspect_input
from cog_pipeline.work.footprints import MAX_PARTS, MAX_VERTICES, crs_label, map_facts, simplify_lonlat
from cog_pipeline.work.outcomes import ImageOutcome, Status
from cog_pipeline.work.report import CSP, render_html
from cog_pipeline.work.reportmap import (
    MAX_TILES,
    BasemapError,
    check_basemap_url,
    map_view,
    mercator,
    render_map,
    tiles,
)

TILES = "https://tile.example.org/{z}/{x}/{y}.png"


def square(lon: float, lat: float, d: float = 0.01) -> dict:
    return {
        "type": "Polygon",
        "coordinates": [[[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]],
    }


def rows() -> list[dict]:
    """The table's rows as report_rows makes them: failed first, then processed."""
    return [
        {
            "key": "county/verify-failed.tif",
            "bands": "3",
            "outcome": "failed",
            "code": "verify-failed",
            "step": "verify",
            "reason": "verify: pixels differ",
            "footprint": square(172.60, -43.55),
        },
        {
            "key": "county/missing.tif",
            "bands": "3",
            "outcome": "failed",
            "code": "input-missing",
            "step": "download",
            "reason": "download: input object not found",
        },
        {
            "key": "county/dup.tif",
            "bands": "3",
            "outcome": "failed",
            "code": "manifest-row",
            "reason": "line 4: duplicate of line 2",
        },
        {
            "key": "county/<b>ortho</b>.tif",
            "bands": "3",
            "outcome": "processed",
            "input_bytes": 1_000_000,
            "cog_bytes": 9_400_000,
            "input_codec": "JPEG",
            "codec": "LZW",
            "crs": "EPSG:2193",
            "pixel_size": [0.5, 0.5],
            "pixel_unit": "metre",
            "overviews": [2, 4, 8],
            "footprint": square(172.62, -43.53),
        },
        {
            "key": "county/dem.tif",
            "bands": "1",
            "outcome": "processed",
            "input_bytes": 4_000_000,
            "cog_bytes": 2_000_000,
            "codec": "ZSTD",
            "crs": "EPSG:2193",
            "pixel_size": [1.0, 1.0],
            "pixel_unit": "metre",
            "overviews": [2],
            "footprint": square(172.64, -43.51),
        },
        {"key": "county/old.tif", "bands": "1", "outcome": "skipped (already done)", "input_bytes": 10},
    ]


def page_of(tmp_path, table: list[dict], config: dict | None = None) -> str:
    config = {
        "run_id": "20260101-000000",
        "manifests": [],
        "s3": {"input_bucket": "in", "output_bucket": "out"},
        **(config or {}),
    }
    return render_html(tmp_path, table, config)


# ---------------------------------------------------------------------------------------- projection


def test_web_mercator_of_known_points():
    assert mercator(0, 0) == pytest.approx((0.5, 0.5))
    assert mercator(-180, 85.0511287798) == pytest.approx((0.0, 0.0), abs=1e-9)
    assert mercator(90, 45)[0] == pytest.approx(0.75)
    assert mercator(0, 45)[1] == pytest.approx(0.5 - math.log(math.tan(math.radians(67.5))) / (2 * math.pi))
    assert mercator(0, 89.9) == mercator(0, 85.0511287798), "the poles are clamped, not infinite"


def test_the_view_fits_every_footprint_with_a_margin():
    rings = [square(172.6, -43.6)["coordinates"][0], square(173.0, -43.2)["coordinates"][0]]
    view = map_view(rings)
    points = [view.project(lon, lat) for ring in rings for lon, lat in ring]
    assert all(0 < x < view.width and 0 < y < view.height for x, y in points)
    xs = [x for x, _ in points]
    assert (
        max(xs) - min(xs) > 0.8 * view.width
        or max(y for _, y in points) - min(y for _, y in points) > 0.8 * view.height
    ), "the footprints fill the view"
    west, north = view.project(172.6, -43.2)
    east, south = view.project(173.01, -43.6)
    assert west < east and north < south, "east is right, north is up"


def test_basemap_tiles_cover_the_view_and_stay_few():
    view = map_view([square(172.6, -43.6, 0.4)["coordinates"][0]])
    found = tiles(view, TILES)
    assert 0 < len(found) <= MAX_TILES
    zooms = {re.match(r"https://tile\.example\.org/(\d+)/\d+/\d+\.png$", url).group(1) for url, *_ in found}
    assert len(zooms) == 1
    left = min(x for _, x, _, _ in found)
    top = min(y for _, _, y, _ in found)
    right = max(x + s for _, x, _, s in found)
    bottom = max(y + s for _, _, y, s in found)
    assert left <= 0 and top <= 0 and right >= view.width and bottom >= view.height
    z = int(zooms.pop())
    assert 128 <= found[0][3] <= 512 or z == 0, "a tile is drawn at about its own size"


def test_basemap_url_is_checked():
    assert check_basemap_url(None) is None and check_basemap_url("") is None
    assert check_basemap_url(TILES) == TILES
    for bad in (
        "ftp://x.org/{z}/{x}/{y}",
        "https://x.org/{z}/{x}.png",
        'https://x.org/{z}/{x}/{y}"onload=1',
        "https://user:pw@x.org/{z}/{x}/{y}",
        42,
    ):
        with pytest.raises(BasemapError, match=r"report\.basemap_url"):
            check_basemap_url(bad)


# ---------------------------------------------------------------------------------------- the map in the page


def test_every_footprint_is_a_path_coloured_by_outcome_and_linked_to_its_row(tmp_path):
    page = page_of(tmp_path, rows())
    paths = re.findall(r'<path class="fp (\w+)" data-i="(\d+)"', page)
    assert paths == [("processed", "3"), ("processed", "4"), ("failed", "0")], "failed footprints drawn on top"
    for _, i in paths:
        assert f'<tr id="row-{i}" data-i="{i}"' in page
    unmapped = re.search(r'<ul id="unmapped".*?</ul>', page, re.S).group(0)
    assert re.findall(r'data-i="(\d+)"', unmapped) == ["1", "2", "5"]
    assert "input object missing" in unmapped and "refused by the manifest parser" in unmapped
    assert "already done" in unmapped
    assert 'id="unmapped-count">3<' in page
    assert "&lt;b&gt;ortho&lt;/b&gt;" in page and "<b>ortho</b>" not in page


def test_the_page_loads_nothing_without_a_basemap_and_runs_only_its_own_script(tmp_path):
    page = page_of(tmp_path, rows())
    assert "http://" not in page and "https://" not in page and "<image" not in page
    assert f'content="{CSP}"' in page and "img-src data:;" in CSP
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 1 and "<script " not in page
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in CSP, "the policy allows exactly the embedded script"
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", re.sub(r"<script>.*?</script>", "", page, flags=re.S)), (
        "no inline event handler attributes (the policy would block them)"
    )


def test_a_basemap_is_drawn_under_the_footprints_and_allowed_by_the_policy(tmp_path):
    page = page_of(tmp_path, rows(), {"report": {"basemap_url": TILES}})
    assert "img-src data: https://tile.example.org;" in page
    images = re.findall(r'<image href="https://tile\.example\.org/(\d+)/(\d+)/(\d+)\.png"', page)
    assert 0 < len(images) <= MAX_TILES
    assert page.index("<image") < page.index('<g id="footprints">'), "tiles under the footprints"
    z, x, y = (int(v) for v in images[0])
    assert x < 2**z and y < 2**z


def test_a_bad_basemap_is_named_and_left_out(tmp_path):
    page = page_of(tmp_path, rows(), {"report": {"basemap_url": "https://x.org/tiles.png"}})
    assert "No basemap: report.basemap_url" in page and "<image" not in page and f'content="{CSP}"' in page


def test_no_footprint_at_all_says_so_and_lists_every_row(tmp_path):
    table = [{**row, "footprint": None} for row in rows()]
    page = page_of(tmp_path, table)
    assert "<path" not in page and "No image has a footprint" in page and 'id="unmapped-count">6<' in page


# ---------------------------------------------------------------------------------------- columns and warnings


def test_new_columns_and_the_larger_than_input_warning(tmp_path):
    page = page_of(tmp_path, rows())
    head = re.findall(r"<th>(.*?)</th>", page)
    assert {"CRS / pixel size", "codec / overviews", "COG / input size"} <= set(head) and "ratio" not in head
    ortho = re.search(r'<tr id="row-3".*?</tr>', page, re.S).group(0)
    cells = re.findall(r"<td>(.*?)</td>", ortho, re.S)
    column = {name: cells[head.index(name)] for name in ("CRS / pixel size", "codec / overviews", "COG / input size")}
    assert column["CRS / pixel size"] == 'EPSG:2193<div class="sub">0.5 m</div>'
    assert column["codec / overviews"] == (
        'LZW<div class="sub">input JPEG</div><div class="sub">overviews 2, 4, 8</div>'
    )
    assert column["COG / input size"] == '<span class="bigger">9.40</span>'
    assert "COG 9.4&times; its input:" in ortho and "JPEG-compressed" in ortho and "presets.enabled: true" in ortho
    dem = re.search(r'<tr id="row-4".*?</tr>', page, re.S).group(0)
    assert '<span class="smaller">0.50</span>' in dem and "its input:" not in dem
    note = re.search(r'<p class="retry" id="bigger-note">(.*?)</p>', page, re.S).group(1)
    assert "1 COG is larger than its input" in note and "1 from lossy" in note


def test_no_warning_when_every_cog_is_smaller_or_only_a_little_larger(tmp_path):
    table = [row for row in rows() if row["key"] != "county/<b>ortho</b>.tif"]
    table.append({"key": "tiny.tif", "bands": "1", "outcome": "processed", "input_bytes": 736, "cog_bytes": 2048})
    page = page_of(tmp_path, table)
    assert "bigger-note" not in page and "its input:" not in page
    assert '<span class="bigger">2.78</span>' in page, "the column still shows it"


# ---------------------------------------------------------------------------------------- the facts recorded


def test_outcome_keeps_the_map_facts_through_its_record():
    outcome = ImageOutcome(
        key="a.tif",
        status=Status.OK,
        crs="EPSG:2193",
        pixel_size=(0.5, 0.25),
        pixel_unit="metre",
        overviews=(2, 4),
        codec="LZW",
        input_codec="JPEG",
        footprint=square(1, 2),
    )
    record = outcome.to_record()
    assert record["pixel_size"] == [0.5, 0.25] and record["overviews"] == [2, 4]
    assert ImageOutcome.from_record(record) == outcome
    bare = ImageOutcome.from_record(
        {"key": "b.tif", "status": "ok", "footprint": {"type": "Point"}, "pixel_size": "0.5"}
    )
    assert bare.footprint is None and bare.pixel_size is None and bare.overviews == ()
    assert "footprint" not in ImageOutcome(key="c.tif", status=Status.OK).to_record()


def test_simplified_footprints_have_few_vertices_and_parts():
    circle = shapely.geometry.Point(10, 50).buffer(0.1, quad_segs=64)
    simple = simplify_lonlat(shapely.geometry.mapping(circle))
    ring = simple["coordinates"][0]
    assert simple["type"] == "Polygon" and 4 <= len(ring) - 1 <= MAX_VERTICES
    assert shapely.geometry.shape(simple).area == pytest.approx(circle.area, rel=0.05)
    islands = shapely.geometry.MultiPolygon(
        [shapely.geometry.Point(10 + i * 0.3, 50).buffer(0.1 + i * 0.001, quad_segs=32) for i in range(20)]
    )
    simple = simplify_lonlat(shapely.geometry.mapping(islands))
    assert simple["type"] == "MultiPolygon" and len(simple["coordinates"]) <= MAX_PARTS
    assert sum(len(p[0]) - 1 for p in simple["coordinates"]) <= MAX_VERTICES
    kept = {round(shapely.geometry.Polygon(p[0]).centroid.x, 1) for p in simple["coordinates"]}
    assert round(10 + 19 * 0.3, 1) in kept, "the largest parts are kept"


def test_crs_label_prefers_the_epsg_code():
    assert crs_label(None, None) is None
    assert crs_label('PROJCS["NZGD2000 / New Zealand Transverse Mercator 2000",GEOGCS[...]]', 2193) == "EPSG:2193"
    assert crs_label('PROJCRS["County grid",BASEGEOGCRS[...]]', None) == "County grid"


def test_map_facts_of_a_converted_cog_trace_its_valid_pixels(tmp_path):
    """A 1024 px tile in UTM 33N whose left half is nodata: the footprint covers the right half only."""
    src, size, pixel = tmp_path / "half.tif", 1024, 10.0
    data = np.full((1, size, size), 50, dtype="uint16")
    data[:, :, : size // 2] = 0
    transform = from_origin(500000, 5500000, pixel, pixel)
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=transform,
        nodata=0,
        compress="deflate",
    ) as dst:
        dst.write(data)
    assert inspect_input(src).compression == "deflate"
    convert_file(src, tmp_path / "half.cog.tif", tmp_path / "half.jpg")
    facts = map_facts(tmp_path / "half.cog.tif", "half.tif")
    assert facts["crs"] == "EPSG:32633" and facts["pixel_size"] == pytest.approx((pixel, pixel))
    assert facts["pixel_unit"] == "metre" and facts["codec"] == "LZW" and facts["overviews"] == (2,)
    shape = shapely.geometry.shape(facts["footprint"])
    assert len(facts["footprint"]["coordinates"][0]) - 1 <= MAX_VERTICES
    valid = transform_bounds(
        "EPSG:32633", "EPSG:4326", 500000 + size / 2 * pixel, 5500000 - size * pixel, 500000 + size * pixel, 5500000
    )
    assert shape.bounds == pytest.approx(valid, abs=2 * pixel / 111_000 * 2), "the valid half, not the whole tile"
    whole = transform_bounds("EPSG:32633", "EPSG:4326", 500000, 5500000 - size * pixel, 500000 + size * pixel, 5500000)
    assert shape.bounds[0] > (whole[0] + whole[2]) / 2 - 0.001


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_map_facts_without_a_crs_have_no_footprint(tmp_path):
    src = tmp_path / "plain.tif"
    with rasterio.open(src, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 64, 64), dtype="uint8"))
    convert_file(src, tmp_path / "plain.cog.tif", tmp_path / "plain.jpg")
    facts = map_facts(tmp_path / "plain.cog.tif", "plain.tif")
    assert "footprint" not in facts and "crs" not in facts and facts["codec"] == "LZW"
    page = render_map([{"key": "plain.tif", "outcome": "processed", "cog_bytes": 1, **facts}])
    assert "no CRS" in page
