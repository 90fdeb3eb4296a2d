"""The report's map of a delivery: every image's footprint as an inline SVG path, coloured by its outcome.

Footprints (lon/lat, recorded per image by work/footprints.py) are projected here, in Python, to Web
Mercator (EPSG:3857, what tiled basemaps use) and written as SVG coordinates relative to the view, so the
page needs no tile server, no network and no mapping library. With ``report.basemap_url`` (an XYZ template,
``https://tile.example.org/{z}/{x}/{y}.png``) the tiles covering the view are drawn under the footprints as
SVG ``<image>`` elements, the only remote content the page then loads (its Content-Security-Policy names
that origin and nothing else). Rows without a footprint (refused by the manifest, input missing, failed
before conversion, no CRS, skipped) are listed beside the map. The small script (:data:`SCRIPT`, allowed by
its hash in the page's policy) links map and table: a click on a footprint selects and scrolls to its row,
a click on a row highlights its footprint; the wheel zooms, a drag pans.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "MAP_WIDTH",
    "MAX_TILES",
    "MAX_UNMAPPED",
    "SCRIPT",
    "SCRIPT_HASH",
    "MapView",
    "BasemapError",
    "basemap_origin",
    "check_basemap_url",
    "mercator",
    "render_map",
    "map_view",
    "tiles",
]

#: Width of the map's SVG coordinate system (its viewBox); the height follows the footprints' extent.
MAP_WIDTH = 1000
MIN_HEIGHT, MAX_HEIGHT = 300, 520
#: At most this many basemap tiles are drawn (the zoom level is lowered until they fit).
MAX_TILES = 48
#: At most this many rows without a footprint are listed beside the map.
MAX_UNMAPPED = 200
_MAX_LAT = 85.0511287798
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")

#: Map <-> table: select a row and its footprint, zoom and pan the SVG's viewBox.
SCRIPT = """(function () {
  var svg = document.getElementById('map'), chosen = [];
  function select(i, scroll) {
    chosen.forEach(function (e) {  // back where it was drawn (a selected footprint is drawn on top)
      e.classList.remove('selected');
      if (e.home) { e.home[0].insertBefore(e, e.home[1]); e.home = null; }
    });
    chosen = Array.prototype.slice.call(document.querySelectorAll('[data-i="' + i + '"]'));
    chosen.forEach(function (e) {
      e.classList.add('selected');
      if (e.tagName.toLowerCase() === 'path') { e.home = [e.parentNode, e.nextSibling]; e.parentNode.appendChild(e); }
    });
    var row = document.getElementById('row-' + i);
    if (scroll && row) { row.scrollIntoView({block: 'center'}); }
  }
  var drag = null, moved = false;
  document.addEventListener('click', function (ev) {
    var hit = ev.target.closest ? ev.target.closest('[data-i]') : null;
    if (!hit || moved) { return; }
    select(hit.getAttribute('data-i'), hit.tagName.toLowerCase() !== 'tr');
  });
  document.addEventListener('keydown', function (ev) {
    var hit = ev.target.closest ? ev.target.closest('[data-i]') : null;
    if (hit && (ev.key === 'Enter' || ev.key === ' ')) {
      ev.preventDefault(); select(hit.getAttribute('data-i'), true);
    }
  });
  if (!svg) { return; }
  var home = svg.getAttribute('viewBox').split(' ').map(Number), box = home.slice();
  function show() { svg.setAttribute('viewBox', box.join(' ')); }
  function zoom(f, cx, cy) {
    var w = Math.min(home[2] * 4, Math.max(home[2] / 4096, box[2] * f)), g = w / box[2];
    box = [cx - (cx - box[0]) * g, cy - (cy - box[1]) * g, box[2] * g, box[3] * g]; show();
  }
  function point(ev) {
    var r = svg.getBoundingClientRect();
    return [box[0] + (ev.clientX - r.left) / r.width * box[2], box[1] + (ev.clientY - r.top) / r.height * box[3]];
  }
  svg.addEventListener('wheel', function (ev) {
    ev.preventDefault(); var p = point(ev); zoom(ev.deltaY > 0 ? 1.25 : 0.8, p[0], p[1]);
  }, {passive: false});
  svg.addEventListener('pointerdown', function (ev) {
    drag = [ev.clientX, ev.clientY, box[0], box[1]]; moved = false;
  });
  window.addEventListener('pointerup', function () { drag = null; setTimeout(function () { moved = false; }, 0); });
  svg.addEventListener('pointermove', function (ev) {
    if (!drag) { return; }
    var r = svg.getBoundingClientRect(), dx = ev.clientX - drag[0], dy = ev.clientY - drag[1];
    if (Math.abs(dx) + Math.abs(dy) > 3) { moved = true; }
    box[0] = drag[2] - dx / r.width * box[2]; box[1] = drag[3] - dy / r.height * box[3]; show();
  });
  function centre() { return [box[0] + box[2] / 2, box[1] + box[3] / 2]; }
  document.getElementById('map-in').addEventListener('click', function () { var c = centre(); zoom(0.5, c[0], c[1]); });
  document.getElementById('map-out').addEventListener('click', function () { var c = centre(); zoom(2, c[0], c[1]); });
  document.getElementById('map-fit').addEventListener('click', function () { box = home.slice(); show(); });
})();"""
#: The script's CSP source (``script-src 'sha256-...'``): the page runs this script and no other.
SCRIPT_HASH = "'sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii") + "'"

_OUTCOME_CLASS = {"processed": "processed", "failed": "failed"}


class BasemapError(ValueError):
    """``report.basemap_url`` is not an http(s) XYZ template."""


def check_basemap_url(url: Any) -> str | None:
    """The basemap template of ``report.basemap_url`` (None when unset); BasemapError naming the key and the rule."""
    if url is None or url == "":
        return None
    if not isinstance(url, str):
        raise BasemapError(f"report.basemap_url {url!r} must be a string (an XYZ tile URL template) or null")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not _HOST.match(parts.netloc):
        raise BasemapError(
            f"report.basemap_url {url!r} must be an http(s) URL with a plain host name "
            "(e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png)"
        )
    missing = [p for p in ("{z}", "{x}", "{y}") if p not in url]
    if missing or re.search(r"[\s\"'<>\\]", url):
        raise BasemapError(
            f"report.basemap_url {url!r} must contain {{z}}, {{x}} and {{y}} "
            f"(missing: {', '.join(missing) or 'none'}) and no spaces, quotes or angle brackets"
        )
    return url


def basemap_origin(url: str) -> str:
    """``scheme://host[:port]`` of a checked template: the one remote origin the page's policy allows."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def mercator(lon: float, lat: float) -> tuple[float, float]:
    """Web Mercator in world units (0..1 from the antimeridian west to east, 0..1 from north to south)."""
    lat = max(-_MAX_LAT, min(_MAX_LAT, lat))
    y = (1 - math.log(math.tan(math.radians(lat)) + 1 / math.cos(math.radians(lat))) / math.pi) / 2
    return (lon + 180) / 360, y


def _rings(geometry: Mapping[str, Any]) -> list[list[tuple[float, float]]]:
    """The outer rings of a GeoJSON Polygon or MultiPolygon as (lon, lat) lists; [] for anything else."""
    coords = geometry.get("coordinates")
    if not isinstance(coords, list):
        return []
    polygons = (
        [coords] if geometry.get("type") == "Polygon" else coords if geometry.get("type") == "MultiPolygon" else []
    )
    rings = []
    for polygon in polygons:
        try:
            ring = [(float(x), float(y)) for x, y, *_ in polygon[0]]
        except (TypeError, ValueError, IndexError):
            continue
        if len(ring) >= 3 and all(math.isfinite(x) and math.isfinite(y) for x, y in ring):
            rings.append(ring)
    return rings


@dataclass(frozen=True)
class MapView:
    """The part of the world the map shows: its top-left corner (x0, y0) and ``scale`` SVG units per world unit."""

    x0: float
    y0: float
    scale: float
    width: int
    height: int

    def project(self, lon: float, lat: float) -> tuple[float, float]:
        x, y = mercator(lon, lat)
        return (x - self.x0) * self.scale, (y - self.y0) * self.scale


def map_view(rings: Sequence[Sequence[tuple[float, float]]]) -> MapView:
    """The view that fits every ring with a margin, ``MAP_WIDTH`` wide, between MIN_ and MAX_HEIGHT high."""
    points = [mercator(lon, lat) for ring in rings for lon, lat in ring]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span_x, span_y = max(max(xs) - min(xs), 1e-7), max(max(ys) - min(ys), 1e-7)
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    height = round(min(MAX_HEIGHT, max(MIN_HEIGHT, MAP_WIDTH * span_y / span_x)))
    scale = min(MAP_WIDTH / span_x, height / span_y) / 1.1  # a 5 % margin on each side
    return MapView(cx - MAP_WIDTH / 2 / scale, cy - height / 2 / scale, scale, MAP_WIDTH, height)


def tiles(view: MapView, template: str) -> list[tuple[str, float, float, float]]:
    """(url, x, y, size) in SVG units of the basemap tiles covering ``view``: the zoom level at which a tile is
    about 256 units wide, lowered until at most ``MAX_TILES`` cover the view."""
    zoom = max(0, min(19, round(math.log2(max(view.scale / 256, 1)))))
    while True:
        n = 2**zoom
        left, right = math.floor(view.x0 * n), math.floor((view.x0 + view.width / view.scale) * n)
        top = max(0, math.floor(view.y0 * n))
        bottom = min(n - 1, math.floor((view.y0 + view.height / view.scale) * n))
        if (right - left + 1) * (bottom - top + 1) <= MAX_TILES or zoom == 0:
            break
        zoom -= 1
    size = view.scale / n
    found = []
    for ty in range(top, bottom + 1):
        for tx in range(left, right + 1):
            url = template.replace("{z}", str(zoom)).replace("{x}", str(tx % n)).replace("{y}", str(ty))
            found.append((url, (tx / n - view.x0) * view.scale, (ty / n - view.y0) * view.scale, size))
    return found


def _path(view: MapView, rings: list[list[tuple[float, float]]]) -> str:
    parts = []
    for ring in rings:
        points = [view.project(lon, lat) for lon, lat in ring]
        parts.append("M" + " L".join(f"{x:.2f} {y:.2f}" for x, y in points) + " Z")
    return " ".join(parts)


def _area(view: MapView, rings: list[list[tuple[float, float]]]) -> float:
    """Area of the rings' bounding boxes on the map (SVG units squared)."""
    total = 0.0
    for ring in rings:
        points = [view.project(lon, lat) for lon, lat in ring]
        xs, ys = [x for x, _ in points], [y for _, y in points]
        total += (max(xs) - min(xs)) * (max(ys) - min(ys))
    return total


def _why_unmapped(row: Mapping[str, Any]) -> str:
    """Why a row has no footprint, in a few words."""
    code = str(row.get("code") or "")
    if code == "manifest-row":
        return "refused by the manifest parser"
    if code == "input-missing":
        return "input object missing"
    if row["outcome"] == "failed":
        return f"failed at {row['step']}" if row.get("step") else "failed"
    if str(row["outcome"]).startswith("skipped"):
        return "already done (not converted in this run)"
    if row.get("cog_bytes") is not None and row.get("crs") is None and row.get("codec") is not None:
        return "no CRS"
    return "no footprint recorded"


def _kind(row: Mapping[str, Any]) -> str:
    return _OUTCOME_CLASS.get(str(row["outcome"]), "skipped")


def render_map(rows: Sequence[Mapping[str, Any]], basemap_url: str | None = None) -> str:
    """The map section of the report for ``rows`` (in table order: row ``i`` is ``<tr id="row-i">``)."""
    esc = html.escape
    mapped: list[tuple[int, Mapping[str, Any], list[list[tuple[float, float]]]]] = []
    unmapped: list[tuple[int, Mapping[str, Any]]] = []
    for i, row in enumerate(rows):
        footprint = row.get("footprint")
        rings = _rings(footprint) if isinstance(footprint, Mapping) else []
        if rings:
            mapped.append((i, row, rings))
        else:
            unmapped.append((i, row))
    counts = {kind: sum(1 for _, row, _ in mapped if _kind(row) == kind) for kind in ("processed", "skipped", "failed")}
    legend = "".join(
        f'<li><span class="swatch {kind}"></span>{label} <b>{counts[kind]}</b></li>'
        for kind, label in (("processed", "processed"), ("skipped", "already done"), ("failed", "failed"))
        if counts[kind] or kind == "processed"
    )
    listed = "".join(
        f'<li data-i="{i}" tabindex="0" class="{_kind(row)}"><span class="key">{esc(str(row["key"]))}</span> '
        f'<span class="why">{esc(_why_unmapped(row))}</span></li>'
        for i, row in unmapped[:MAX_UNMAPPED]
    )
    more = f"<p>... and {len(unmapped) - MAX_UNMAPPED} more.</p>" if len(unmapped) > MAX_UNMAPPED else ""
    side = f'<ul class="legend">{legend}</ul><h3>Not on the map <b id="unmapped-count">{len(unmapped)}</b></h3>' + (
        f'<ul id="unmapped" class="unmapped">{listed}</ul>{more}' if unmapped else "<p>Every image is on the map.</p>"
    )
    if not mapped:
        return (
            f'<section class="map-section"><h2>Map of the delivery</h2><div class="map-wrap">'
            f'<p class="nomap">No image has a footprint to draw (none was converted with a CRS in this run).</p>'
            f'<div class="map-side">{side}</div></div></section>'
        )
    view = map_view([ring for _, _, rings in mapped for ring in rings])
    # Failed footprints on top, and among the others the larger under the smaller, so none hides another.
    mapped.sort(key=lambda m: (_kind(m[1]) == "failed", -_area(view, m[2])))
    underlay, caption = "", "No basemap (set <code>report.basemap_url</code> for one); Web Mercator."
    if basemap_url:
        underlay = (
            '<g class="basemap">'
            + "".join(
                f'<image href="{esc(url)}" x="{x:.2f}" y="{y:.2f}" width="{s:.2f}" height="{s:.2f}" '
                f'preserveAspectRatio="none"></image>'
                for url, x, y, s in tiles(view, basemap_url)
            )
            + "</g>"
        )
        caption = f"Basemap tiles from <code>{esc(basemap_origin(basemap_url))}</code>; Web Mercator."
    paths = "".join(
        f'<path class="fp {_kind(row)}" data-i="{i}" tabindex="0" d="{_path(view, rings)}">'
        f"<title>{esc(str(row['key']))} ({esc(str(row['outcome']))})</title></path>"
        for i, row, rings in mapped
    )
    return (
        f'<section class="map-section"><h2>Map of the delivery</h2><div class="map-wrap">'
        f'<div class="map-box"><svg id="map" role="img" aria-label="footprints of {len(mapped)} images" '
        f'viewBox="0 0 {view.width} {view.height}" preserveAspectRatio="xMidYMid meet">'
        f'<rect class="sea" x="-100000" y="-100000" width="200000" height="200000"></rect>{underlay}'
        f'<g id="footprints">{paths}</g></svg>'
        f'<div class="map-tools"><button type="button" id="map-in" title="zoom in">+</button>'
        f'<button type="button" id="map-out" title="zoom out">&minus;</button>'
        f'<button type="button" id="map-fit" title="show every footprint">fit</button></div>'
        f'<p class="caption">{caption} Click a footprint to find its row; wheel to zoom, drag to pan.</p></div>'
        f'<div class="map-side">{side}</div></div></section>'
    )


MAP_CSS = """
.map-section h2 { font-size: 1.15em; margin: 1em 0 0.4em; }
.map-wrap { display: flex; gap: 1em; align-items: flex-start; flex-wrap: wrap; }
.map-box { flex: 3 1 36em; position: relative; }
#map { width: 100%; max-height: 60vh; border: 1px solid #ccc; border-radius: 6px; background: #eef3f7;
       cursor: grab; touch-action: none; display: block; }
#map .sea { fill: #eef3f7; }
.fp { stroke-width: 2.5; vector-effect: non-scaling-stroke; stroke-linejoin: round; fill-opacity: 0.35;
      cursor: pointer; }
.fp.processed { fill: #2e7d32; stroke: #1b5e20; }
.fp.skipped { fill: #1565c0; stroke: #0d47a1; }
.fp.failed { fill: #c62828; stroke: #8e0000; }
.fp.selected { stroke: #ff9800; stroke-width: 5; fill-opacity: 0.6; pointer-events: stroke; }
.fp:focus { outline: none; stroke: #ff9800; }
.map-tools { position: absolute; top: 8px; left: 8px; display: flex; gap: 4px; }
.map-tools button { min-width: 2.2em; padding: 2px 6px; border: 1px solid #999; border-radius: 4px;
                    background: #fff; cursor: pointer; }
.caption { color: #666; font-size: 0.8em; margin: 0.3em 0; }
.map-side { flex: 1 1 16em; font-size: 0.88em; max-height: 60vh; overflow: auto; }
.map-side h3 { font-size: 1em; margin: 0.6em 0 0.3em; }
.legend, .unmapped { list-style: none; padding: 0; margin: 0; }
.legend li { margin: 0.2em 0; }
.swatch { display: inline-block; width: 1em; height: 1em; margin-right: 0.4em; vertical-align: -0.15em;
          border-radius: 3px; }
.swatch.processed { background: #2e7d32; } .swatch.skipped { background: #1565c0; }
.swatch.failed { background: #c62828; }
.unmapped li { padding: 2px 4px; border-left: 4px solid #999; margin: 2px 0; cursor: pointer; }
.unmapped li.failed { border-left-color: #c62828; }
.unmapped li.selected { background: #ffe0b2; }
.unmapped .why { color: #666; }
.nomap { flex: 3 1 36em; color: #666; border: 1px dashed #ccc; padding: 2em; border-radius: 6px; }
tr[data-i] { cursor: pointer; }
tr.selected td { background: #ffe0b2 !important; }
"""
