"""What the report's map and columns need of one converted image, read from its COG (docs/operations.md).

:func:`map_facts` reads the COG's header and a decimated read of one of its overviews (raster/header.py: a
few hundred pixels a side) and returns the outcome fields the report shows: the CRS, the pixel size and its
unit, the overview levels, the codec, and the footprint of the valid pixels (work/stac.py's, in lon/lat)
simplified to a few vertices so thousands of them keep the status files and the report small.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import shapely
import shapely.geometry
from rasterio.crs import CRS
from rasterio.errors import CRSError

from cog_pipeline.raster.header import ImageHeader, read_header
from cog_pipeline.work.stac import footprint

__all__ = ["MAX_VERTICES", "MAX_PARTS", "map_facts", "header_facts", "crs_label", "simplify_lonlat"]

#: At most this many vertices per footprint (all its parts together), after simplification.
MAX_VERTICES = 48
#: At most this many parts of a multi-part footprint are kept (the largest).
MAX_PARTS = 8
#: Longer side of the decimated read the footprint is traced on (an overview of the COG).
SAMPLE_SIDE = 256
_WKT_NAME = re.compile(r'^\s*\w+\[\s*"([^"]*)"')


def crs_label(crs_wkt: str | None, epsg: int | None) -> str | None:
    """``EPSG:<code>`` when the CRS has one, else the name in its WKT (``PROJCS["name", ...``)."""
    if epsg is not None:
        return f"EPSG:{epsg}"
    if not crs_wkt:
        return None
    match = _WKT_NAME.match(crs_wkt)
    return match.group(1) if match and match.group(1) else "custom CRS (no EPSG code)"


def _pixel_unit(crs_wkt: str) -> str | None:
    try:
        unit = CRS.from_wkt(crs_wkt).units_factor[0]
    except (CRSError, ValueError, IndexError):
        return None
    return str(unit) if unit else None


def _exteriors(geom: shapely.geometry.base.BaseGeometry) -> list[shapely.geometry.Polygon]:
    polygons = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, shapely.geometry.Polygon) and not g.is_empty]
    polygons.sort(key=lambda p: p.area, reverse=True)
    return [shapely.geometry.Polygon(p.exterior) for p in polygons[:MAX_PARTS]]


def _vertices(polygons: list[shapely.geometry.Polygon]) -> int:
    return sum(len(p.exterior.coords) - 1 for p in polygons)


def _simplified(polygon: shapely.geometry.Polygon, tolerance: float) -> shapely.geometry.Polygon:
    simpler = polygon.simplify(tolerance, preserve_topology=False)
    if isinstance(simpler, shapely.geometry.Polygon) and not simpler.is_empty and len(simpler.exterior.coords) >= 4:
        return simpler
    rectangle = polygon.minimum_rotated_rectangle  # simplified away: its smallest enclosing rectangle
    return rectangle if isinstance(rectangle, shapely.geometry.Polygon) else polygon


def simplify_lonlat(geometry: dict[str, Any], max_vertices: int = MAX_VERTICES) -> dict[str, Any] | None:
    """A GeoJSON Polygon or MultiPolygon (lon/lat) with at most ``max_vertices`` vertices: outer rings only,
    the ``MAX_PARTS`` largest parts, simplified until it fits, coordinates rounded to 1e-6 degree (~0.1 m).
    None when nothing is left."""
    originals = _exteriors(shapely.geometry.shape(geometry))[: max(1, max_vertices // 4)]
    if not originals:
        return None
    minx, miny, maxx, maxy = shapely.geometry.MultiPolygon(originals).bounds
    tolerance = max(maxx - minx, maxy - miny, 1e-9) / 1000
    polygons = originals
    for _ in range(40):  # tolerance doubles up to 1e9 times the first: every part is then a rectangle
        if _vertices(polygons) <= max_vertices:
            break
        polygons = [_simplified(p, tolerance) for p in originals]
        tolerance *= 2
    rings = [[[round(x, 6), round(y, 6)] for x, y in p.exterior.coords] for p in polygons]
    if len(rings) == 1:
        return {"type": "Polygon", "coordinates": [rings[0]]}
    return {"type": "MultiPolygon", "coordinates": [[ring] for ring in rings]}


def map_facts(cog_path: str | Path, key: str) -> dict[str, Any]:
    """The outcome fields of a converted image read from its COG: ``crs``, ``pixel_size`` (x, y), ``pixel_unit``,
    ``overviews`` (decimation factors), ``codec`` and ``footprint`` (lon/lat, absent without a CRS or a valid
    pixel). ImageError("qa", ...) if the COG cannot be read."""
    return header_facts(read_header(cog_path, key, sample_max_side=SAMPLE_SIDE))


def header_facts(header: ImageHeader) -> dict[str, Any]:
    """:func:`map_facts` of a COG header already read (the batch reads it once, for the Item too)."""
    facts: dict[str, Any] = {"overviews": tuple(header.overviews)}
    if header.compression:
        facts["codec"] = header.compression.upper()
    if header.crs_wkt is None:
        return facts
    facts["crs"] = crs_label(header.crs_wkt, header.epsg)
    facts["pixel_size"] = header.gsd
    unit = _pixel_unit(header.crs_wkt)
    if unit:
        facts["pixel_unit"] = unit
    found = footprint(header)
    if found is not None:
        simplified = simplify_lonlat(found.wgs84)
        if simplified is not None:
            facts["footprint"] = simplified
    return facts
