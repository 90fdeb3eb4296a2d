"""STAC for a delivery: an Item per image, a Collection per delivery and its capture area (docs/delivery.md).

An Item describes one COG and its JPEG preview: where the valid pixels are (footprint from the mask of the
header's decimated read, in EPSG:4326 for ``geometry``/``bbox`` and in the image's CRS for ``proj:geometry``),
the grid (projection extension), the bands (raster and, where the colour interpretation names them, eo),
each file's size and sha256 multihash (file extension), the software (processing extension) and, when the
verification pass gives them, the pixel digests of the input and the COG. Items live at
``<key without .tif>.json`` (:func:`item_key`) beside the COG; their asset hrefs are relative to it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import rasterio.features
import rasterio.warp
import shapely
import shapely.geometry
import shapely.ops
from affine import Affine
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, NoDataStrings, RasterBand, RasterExtension, Statistics

from cog_pipeline import __version__
from cog_pipeline.core.naming import jpeg_key, key_stem
from cog_pipeline.raster.header import PIXEL_DIGEST_VERSION, ImageHeader

__all__ = [
    "PROCESSING_SCHEMA",
    "FileInfo",
    "Footprint",
    "ItemFacts",
    "StacSettings",
    "stac_settings_from_config",
    "file_info",
    "footprint",
    "item_key",
    "item_for",
    "item_facts",
    "collection_for",
    "capture_area",
    "software_versions",
    "write_json",
]

PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
#: Colour interpretations that are eo common band names.
_EO_COMMON = {"red": "red", "green": "green", "blue": "blue"}
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileInfo:
    """Size and sha256 multihash (``1220`` + hex, the file extension's ``file:checksum``) of one file."""

    size: int
    checksum: str


def file_info(path: str | Path) -> FileInfo:
    """FileInfo of a local file, read in chunks."""
    sha = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return FileInfo(size, "1220" + sha.hexdigest())


@dataclass(frozen=True)
class StacSettings:
    """The ``stac:`` config section: what every Collection says of its data's terms and makers."""

    license: str = "other"
    providers: tuple[pystac.Provider, ...] = ()
    description: str = "Cloud Optimized GeoTIFFs and JPEG previews made by cog-pipeline"


def stac_settings_from_config(config: Mapping[str, Any]) -> StacSettings:
    """StacSettings from a whole config; ValueError naming the key for a bad value."""
    section = dict(config.get("stac") or {})
    unknown = sorted(set(section) - {"license", "providers", "description"})
    if unknown:
        raise ValueError(f"stac: unknown key(s) {', '.join(unknown)} (known: description, license, providers)")
    license_ = section.get("license", "other")
    if not isinstance(license_, str) or not license_.strip():
        raise ValueError(f"stac.license {license_!r} must be an SPDX identifier (e.g. CC-BY-4.0) or 'other'")
    providers = []
    for i, p in enumerate(section.get("providers") or []):
        if not isinstance(p, Mapping) or not isinstance(p.get("name"), str) or not p["name"]:
            raise ValueError(f"stac.providers[{i}] must be a mapping with a name (and optional roles, url)")
        roles = list(p.get("roles") or [])
        bad = [r for r in roles if r not in ("licensor", "producer", "processor", "host")]
        if bad:
            raise ValueError(f"stac.providers[{i}].roles {bad} are not licensor, producer, processor or host")
        providers.append(
            pystac.Provider(name=p["name"], roles=roles or None, url=p.get("url"), description=p.get("description"))
        )
    description = section.get("description", StacSettings.description)
    return StacSettings(license_.strip(), tuple(providers), str(description))


# --------------------------------------------------------------------------------------------- footprints


@dataclass(frozen=True)
class Footprint:
    """Where one image's valid pixels are: in its own CRS (``native``) and in EPSG:4326 (``wgs84``)."""

    key: str
    crs_wkt: str
    native: dict[str, Any]
    wgs84: dict[str, Any]


def _to_wgs84(geom: shapely.geometry.base.BaseGeometry, crs_wkt: str, tolerance: float) -> dict[str, Any]:
    """``geom`` in EPSG:4326: edges densified before the transformation (a straight edge of a projected CRS is
    curved in lon/lat), then simplified again by ``tolerance`` (CRS units) scaled to degrees."""
    minx, miny, maxx, maxy = geom.bounds
    span = max(maxx - minx, maxy - miny, 1e-9)
    dense = shapely.segmentize(geom, span / 32)
    out = shapely.geometry.shape(rasterio.warp.transform_geom(crs_wkt, "EPSG:4326", shapely.geometry.mapping(dense)))
    lon0, lat0, lon1, lat1 = out.bounds
    degrees = tolerance * max(lon1 - lon0, lat1 - lat0) / span
    mapping: dict[str, Any] = shapely.geometry.mapping(out.simplify(degrees, preserve_topology=True))
    return mapping


def footprint(header: ImageHeader, fill_value: float | None = None) -> Footprint | None:
    """The polygon(s) of ``header``'s valid pixels (its mask at the decimated read's resolution, also leaving
    out ``fill_value``, e.g. an undeclared fill QA found), simplified to that resolution; None if no pixel is
    valid. ValueError if the image has no CRS."""
    if header.crs_wkt is None:
        raise ValueError(f"{header.key}: no CRS, so no footprint")
    valid = header.sample_valid.copy()
    if fill_value is not None:
        fill = np.isnan(header.sample) if np.isnan(fill_value) else header.sample == fill_value
        valid &= ~np.all(fill, axis=0)
    if not valid.any():
        return None
    transform = Affine(*header.sample_transform)
    polygons = [
        shapely.geometry.shape(g)
        for g, _ in rasterio.features.shapes(valid.astype(np.uint8), mask=valid, transform=transform)
    ]
    union = shapely.ops.unary_union(polygons)
    step = min(abs(transform.a) or 1, abs(transform.e) or 1)
    union = union.simplify(step / 2, preserve_topology=True)
    return Footprint(
        header.key, header.crs_wkt, shapely.geometry.mapping(union), _to_wgs84(union, header.crs_wkt, step / 2)
    )


def capture_area(footprints: Sequence[Footprint], gsd: float) -> dict[str, Any]:
    """The capture area of a delivery: the union of its footprints, simplified to ``gsd`` (in the footprints'
    CRS units), as a GeoJSON Feature in EPSG:4326. ValueError if the footprints are in different CRSs (QA's
    srs_mismatch) or there are none."""
    if not footprints:
        raise ValueError("capture area: no footprint (no image with valid pixels)")
    crs = rasterio.crs.CRS.from_wkt(footprints[0].crs_wkt)
    others = {wkt for wkt in {f.crs_wkt for f in footprints} if rasterio.crs.CRS.from_wkt(wkt) != crs}
    other = [f.key for f in footprints if f.crs_wkt in others]
    if other:
        raise ValueError(f"capture area: {', '.join(other[:5])} are not in the CRS of {footprints[0].key}")
    if not gsd > 0:
        raise ValueError(f"capture area: pixel size {gsd!r} must be positive")
    union = shapely.ops.unary_union([shapely.geometry.shape(f.native) for f in footprints])
    union = union.simplify(gsd, preserve_topology=True)
    return {
        "type": "Feature",
        "geometry": _to_wgs84(union, footprints[0].crs_wkt, gsd),
        "properties": {"images": len(footprints), "source_crs": crs.to_string(), "simplified_to": gsd},
    }


# --------------------------------------------------------------------------------------------- items


def item_key(key: str) -> str:
    """Where an image's Item goes: ``a/b.tif`` -> ``a/b.json``."""
    return key_stem(key) + ".json"


def software_versions() -> dict[str, str]:
    """The versions of what wrote the COG (``processing:software``)."""
    out = {"cog-pipeline": __version__, "GDAL": str(rasterio.__gdal_version__), "rasterio": rasterio.__version__}
    for dist in ("rio-cogeo", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _statistics(header: ImageHeader, band: int) -> Statistics:
    values = header.sample[band][header.sample_valid]
    total = header.sample_valid.size
    if np.issubdtype(values.dtype, np.floating):
        values = values[np.isfinite(values)]
    if not values.size:
        return Statistics.create(valid_percent=0.0)
    v = values.astype(np.float64)
    return Statistics.create(
        minimum=float(v.min()),
        maximum=float(v.max()),
        mean=float(v.mean()),
        stddev=float(v.std()),
        valid_percent=round(100.0 * values.size / max(1, total), 3),
    )


def _nodata(value: float | None) -> float | NoDataStrings | None:
    if value is None:
        return None
    if np.isnan(value):
        return NoDataStrings.NAN
    if np.isinf(value):
        return NoDataStrings.INF if value > 0 else NoDataStrings.NINF
    return float(value)


def item_for(
    key: str,
    header: ImageHeader,
    cog: FileInfo,
    jpeg: FileInfo | None,
    *,
    datetime: dt.datetime | None = None,
    collection_id: str | None = None,
    collection_href: str | None = None,
    pixel_digests: Mapping[str, str] | None = None,
    fill_value: float | None = None,
    extra_properties: Mapping[str, Any] | None = None,
) -> pystac.Item:
    """The Item of the COG at ``key`` (``header``: the COG's header; ``cog``/``jpeg``: the uploaded files).
    ``datetime``: the capture time when known; else the file's TIFFTAG_DATETIME, else now (the property
    ``cog_pipeline:datetime_source`` says which). ``collection_id`` needs ``collection_href`` (where the Item
    links its Collection, as STAC requires). ``pixel_digests``: ``{"input": ..., "cog": ...}`` from
    :func:`cog_pipeline.raster.header.pixel_digest`."""
    if collection_id is not None and not collection_href:
        raise ValueError(f"{key}: an Item of collection {collection_id} needs the collection's href (collection_href)")
    fp = footprint(header, fill_value) if header.crs_wkt else None
    if fp is None:
        raise ValueError(f"{key}: no footprint (no CRS or no valid pixel), so no STAC Item")
    geom = shapely.geometry.shape(fp.wgs84)
    source = "given"
    if datetime is None:
        tag = header.tags.get("TIFFTAG_DATETIME")
        try:
            datetime = dt.datetime.strptime(tag or "", "%Y:%m:%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
            source = "TIFFTAG_DATETIME"
        except ValueError:
            datetime, source = dt.datetime.now(dt.timezone.utc).replace(microsecond=0), "processed"
    stem = key_stem(key)
    props: dict[str, Any] = {"cog_pipeline:datetime_source": source, "processing:software": software_versions()}
    if pixel_digests:
        props["cog_pipeline:pixel_digest_version"] = PIXEL_DIGEST_VERSION
        props.update({f"cog_pipeline:{name}_pixel_digest": digest for name, digest in sorted(pixel_digests.items())})
    props.update(extra_properties or {})
    item = pystac.Item(
        id=stem,
        geometry=fp.wgs84,
        bbox=list(geom.bounds),
        datetime=datetime,
        properties=props,
        collection=collection_id,
    )
    item.stac_extensions.append(PROCESSING_SCHEMA)
    if collection_href:
        item.add_link(pystac.Link(pystac.RelType.COLLECTION, collection_href, media_type=pystac.MediaType.JSON))

    proj = ProjectionExtension.ext(item, add_if_missing=True)
    if header.epsg is not None:
        proj.code = f"EPSG:{header.epsg}"
    else:
        proj.wkt2 = header.crs_wkt
    proj.bbox = list(header.bounds)
    proj.geometry = fp.native
    proj.shape = [header.height, header.width]
    proj.transform = list(header.transform)

    image = pystac.Asset(
        href="./" + key.rsplit("/", 1)[-1],
        media_type=pystac.MediaType.COG,
        roles=["data"],
        title="Cloud Optimized GeoTIFF",
    )
    item.add_asset("image", image)
    FileExtension.ext(image, add_if_missing=True).apply(size=cog.size, checksum=cog.checksum)
    bands = [
        RasterBand.create(
            nodata=_nodata(header.nodata),
            data_type=DataType(header.dtypes[i]),
            statistics=_statistics(header, i),
            spatial_resolution=header.gsd[0],
        )
        for i in range(header.count)
    ]
    RasterExtension.ext(image, add_if_missing=True).apply(bands)
    names = [_EO_COMMON.get(ci) for ci in header.colorinterp]
    if any(names):
        eo_bands = [Band.create(name=name or f"b{i + 1}", common_name=name) for i, name in enumerate(names)]
        EOExtension.ext(image, add_if_missing=True).apply(bands=eo_bands)
    if jpeg is not None:
        preview = pystac.Asset(
            href="./" + jpeg_key(key).rsplit("/", 1)[-1],
            media_type=pystac.MediaType.JPEG,
            roles=["overview"],
            title="JPEG preview",
        )
        item.add_asset("preview", preview)
        FileExtension.ext(preview, add_if_missing=True).apply(size=jpeg.size, checksum=jpeg.checksum)
    return item


@dataclass(frozen=True)
class ItemFacts:
    """What a Collection takes from one of its Items: its id, bbox and time(s)."""

    id: str
    bbox: tuple[float, float, float, float]
    times: tuple[dt.datetime, ...]


def item_facts(item: pystac.Item | Mapping[str, Any]) -> ItemFacts:
    """The id, bbox and datetime (or start and end datetimes) of an Item or an Item's dict (read without
    building a pystac.Item: 100k of them cost minutes). ValueError naming the Item if one is missing."""
    if isinstance(item, pystac.Item):
        item = item.to_dict(include_self_link=False, transform_hrefs=False)
    ident, bbox, props = item.get("id"), item.get("bbox"), item.get("properties") or {}
    if not isinstance(bbox, list) or len(bbox) not in (4, 6) or not all(isinstance(v, (int, float)) for v in bbox):
        raise ValueError(f"Item {ident}: no valid bbox ({bbox!r:.80})")
    half = len(bbox) // 2
    try:
        times = tuple(
            pystac.utils.str_to_datetime(props[name])
            for name in ("datetime", "start_datetime", "end_datetime")
            if props.get(name)
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Item {ident}: unreadable datetime ({exc})") from None
    if not times:
        raise ValueError(f"Item {ident}: no datetime")
    return ItemFacts(str(ident), (float(bbox[0]), float(bbox[1]), float(bbox[half]), float(bbox[half + 1])), times)


def collection_for(
    collection_id: str,
    items: Mapping[str, pystac.Item | Mapping[str, Any]],
    settings: StacSettings,
    *,
    title: str | None = None,
    capture_area_href: str | None = None,
) -> pystac.Collection:
    """The Collection of a delivery: ``items`` (href of each Item, as the Collection should link it -> the Item
    or its dict), its extent (union of the Items' bboxes, their first and last datetime), license and providers
    from ``settings``, and optionally the capture-area GeoJSON as an asset. ValueError for an Item without a
    bbox or datetime (:func:`item_facts`)."""
    if not items:
        raise ValueError(f"collection {collection_id}: no items")
    facts = {href: item_facts(item) for href, item in items.items()}
    bboxes = [f.bbox for f in facts.values()]
    bbox = [min(b[0] for b in bboxes), min(b[1] for b in bboxes), max(b[2] for b in bboxes), max(b[3] for b in bboxes)]
    times = sorted(t for f in facts.values() for t in f.times)
    extent = pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[times[0], times[-1]]]))
    collection = pystac.Collection(
        id=collection_id,
        description=settings.description,
        extent=extent,
        title=title,
        license=settings.license,
        providers=list(settings.providers) or None,
    )
    for href, fact in facts.items():
        collection.add_link(pystac.Link(pystac.RelType.ITEM, href, media_type=pystac.MediaType.GEOJSON, title=fact.id))
    if capture_area_href:
        collection.add_asset(
            "capture_area",
            pystac.Asset(
                href=capture_area_href, media_type=pystac.MediaType.GEOJSON, roles=["metadata"], title="Capture area"
            ),
        )
    return collection


def write_json(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``data`` (an Item's or Collection's ``to_dict()``, a capture area) as JSON, whole or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
