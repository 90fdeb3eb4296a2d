"""The STAC of a delivery, written by the aggregate (docs/delivery.md, "STAC"): every processed image's Item
in the output bucket, the delivery's Collection and capture area beside the outcome CSVs.

The batch job builds each converted image's Item (:func:`cog_pipeline.work.stac.item_for`: checksums of the
bytes it uploaded) and records it in the image's outcome; :func:`publish_stac` gives each Item its links
(``self``: its own object, ``collection``/``parent``/``root``: the Collection) and PUTs it at
``<key without .tif>.json`` (:func:`cog_pipeline.work.stac.item_key`) from a pool of :data:`THREADS`
threads. A row skipped because its outputs were already made keeps the Item in the bucket as it is (it is
not rewritten and never deleted); it is read back (GET) to be linked from the Collection and counted in its
extent and capture area. Then the capture area (the union of the Items' valid-data outlines in their CRS,
simplified to the delivery's pixel size) and the Collection (extent, license and providers from the
``stac:`` config, a link to every Item, the capture area as an asset) are PUT to the input bucket and
copied to the run directory's ``outcome/<m>/``.

Nothing here raises for S3: what could not be written or read is in the :class:`StacResult`
(``failed``, ``errors``); the aggregate keeps the processing file for those, so a resume retries.
Rows that cannot have an Item (no CRS, no valid pixel) are listed in ``without_item`` and do not.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import rasterio.crs
import rasterio.errors

from cog_pipeline.core.naming import ManifestKeys
from cog_pipeline.storage import s3
from cog_pipeline.work import stac

__all__ = ["THREADS", "StacRow", "StacResult", "s3_url", "link_item", "footprint_of", "publish_stac"]

log = logging.getLogger(__name__)

#: Item PUTs (and GETs of kept Items) in flight at once: 100k small objects must not take hours.
THREADS = 8
#: At most this many failed or Item-less rows are named in the summary's notes (``stac`` in the summary has all).
MAX_NAMED = 20
GEOJSON = "application/geo+json"
#: How the reason of a skipped row without an Item begins.
SKIPPED_WITHOUT_ITEM = "skipped (outputs already made)"
JSON = "application/json"


@dataclass(frozen=True)
class StacRow:
    """A processed row: its key, the Item its batch job recorded (a dict, or None) and whether it was skipped
    (outputs already made by an earlier run: the Item in the bucket is kept)."""

    key: str
    item: Mapping[str, Any] | None = None
    skipped: bool = False


@dataclass
class StacResult:
    """What the STAC step wrote: Items uploaded and kept, the Collection's and capture area's keys (None when
    not written), and what is missing: ``failed`` (key, reason) Items that could not be written or read back
    and ``errors`` for the Collection or capture area (both S3 failures: a rerun retries them), and
    ``without_item`` (key, why) rows that have no Item to publish (not retried)."""

    collection_key: str | None = None
    capture_area_key: str | None = None
    uploaded: int = 0
    kept: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    without_item: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """Every S3 write and read of the step worked (rows without an Item aside)."""
        return not self.failed and not self.errors

    def to_summary(self) -> dict[str, Any]:
        """The ``stac`` section of the aggregate's summary."""
        return {
            "complete": self.complete,
            "collection_key": self.collection_key,
            "capture_area_key": self.capture_area_key,
            "items_uploaded": self.uploaded,
            "items_kept": self.kept,
            "failed": [{"key": k, "reason": r} for k, r in self.failed],
            "without_item": [{"key": k, "reason": r} for k, r in self.without_item],
            "errors": self.errors,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }

    def summary_notes(self) -> list[str]:
        """Lines for the summary's notes (the report lists them): what is incomplete, and why."""
        lines = []
        if not self.complete:
            what = [f"{len(self.failed)} Item(s) not written" if self.failed else "", *self.errors]
            lines.append(
                "STAC incomplete: "
                + "; ".join(w for w in what if w)
                + " (the processing file stays, so the next tick's resume writes them again)"
            )
            lines += [f"STAC Item of {key} not written: {reason}" for key, reason in self.failed[:MAX_NAMED]]
            if len(self.failed) > MAX_NAMED:
                lines.append(f"... and {len(self.failed) - MAX_NAMED} more (outcome/<m>.json, 'stac')")
        # A converted row without an Item already has the batch job's note saying why.
        kept = [(key, why) for key, why in self.without_item if why.startswith(SKIPPED_WITHOUT_ITEM)]
        lines += [f"no STAC Item for {key}: {reason}" for key, reason in kept[:MAX_NAMED]]
        if len(kept) > MAX_NAMED:
            lines.append(f"... and {len(kept) - MAX_NAMED} more skipped rows without a STAC Item")
        lines += [f"STAC: {note}" for note in self.notes]
        return lines


def s3_url(bucket: str, key: str) -> str:
    """The ``s3://bucket/key`` URL of an object: what the STAC links and hrefs name."""
    return f"s3://{bucket}/{key}"


def link_item(item: Mapping[str, Any], self_href: str, collection_href: str, collection_id: str) -> dict[str, Any]:
    """A copy of an Item dict with its ``self`` link and its Collection (``collection``, ``parent``, ``root``
    links and the ``collection`` field); the links it had to anything else are kept."""
    own = {"self", "collection", "parent", "root"}
    links = [dict(link) for link in item.get("links") or () if link.get("rel") not in own]
    links += [{"rel": "self", "href": self_href, "type": GEOJSON}]
    links += [{"rel": rel, "href": collection_href, "type": JSON} for rel in ("collection", "parent", "root")]
    return {**item, "links": links, "collection": collection_id}


def _crs_wkt(properties: Mapping[str, Any], cache: dict[str, str]) -> str:
    code = properties.get("proj:code") or properties.get("proj:wkt2")
    if not isinstance(code, str):
        raise ValueError("no proj:code or proj:wkt2")
    if code not in cache:
        cache[code] = rasterio.crs.CRS.from_user_input(code).to_wkt()
    return cache[code]


def footprint_of(item: Mapping[str, Any], cache: dict[str, str] | None = None) -> stac.Footprint:
    """The footprint an Item records: ``proj:geometry`` in its CRS and ``geometry`` in lon/lat.
    ValueError when the Item lacks them."""
    props = item.get("properties") or {}
    native, wgs84 = props.get("proj:geometry"), item.get("geometry")
    if not isinstance(native, Mapping) or not isinstance(wgs84, Mapping):
        raise ValueError(f"Item {item.get('id')}: no proj:geometry or geometry")
    return stac.Footprint(
        str(item.get("id")), _crs_wkt(props, {} if cache is None else cache), dict(native), dict(wgs84)
    )


def _pixel_size(item: Mapping[str, Any]) -> float | None:
    transform = (item.get("properties") or {}).get("proj:transform")
    if isinstance(transform, list) and len(transform) >= 6:
        sizes = [abs(float(v)) for v in (transform[0], transform[4]) if v]
        return min(sizes) if sizes else None
    return None


def _put(client: Any, bucket: str, key: str, data: Mapping[str, Any], content_type: str) -> bytes:
    body = (json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    s3.put_bytes(client, bucket, key, body, content_type=content_type)
    return body


class _Published(NamedTuple):
    """One row's Item as it is in the bucket (``how``: ``uploaded`` or ``kept``), or why not: ``failure`` (an S3
    request failed: retried by a rerun) or ``missing`` (there is no Item to publish)."""

    item: dict[str, Any] | None = None
    how: str = ""
    failure: str | None = None
    missing: str | None = None


def _publish_item(client: Any, bucket: str, row: StacRow, collection_href: str, collection_id: str) -> _Published:
    """Upload the Item of one row, or read back the kept Item of a skipped row; never raises."""
    key = stac.item_key(row.key)
    if row.skipped:
        try:
            kept = json.loads(s3.get_bytes(client, bucket, key))
            if not isinstance(kept, dict) or kept.get("type") != "Feature":
                raise ValueError("not a GeoJSON Feature")
            return _Published(kept, "kept")
        except s3.S3_ERRORS as exc:
            if not s3.is_missing(exc):
                return _Published(failure=f"cannot read back {key} from '{bucket}': {s3.describe_error(exc)}")
        except ValueError as exc:
            return _Published(missing=f"{key} in '{bucket}' is not a STAC Item ({exc}); convert the image again")
        if row.item is None:  # outputs kept from a version that wrote no Item
            return _Published(
                missing=f"{SKIPPED_WITHOUT_ITEM} and no {key} in '{bucket}': convert the image again to get its Item"
            )
    if row.item is None:
        return _Published(missing="its batch job recorded no STAC Item (no CRS or no valid pixel: see its notes)")
    item = link_item(row.item, s3_url(bucket, key), collection_href, collection_id)
    try:
        _put(client, bucket, key, item, GEOJSON)
    except s3.S3_ERRORS as exc:
        return _Published(failure=f"cannot write {key} to '{bucket}': {s3.describe_error(exc)}")
    except ValueError as exc:  # NaN in the record: not JSON
        return _Published(missing=f"its recorded Item cannot be written as JSON ({exc})")
    return _Published(item, "uploaded")


def _copy(data: Mapping[str, Any], path: Path, result: StacResult) -> None:
    """The run directory's copy of a STAC object; a failure is one of ``result.errors`` (retried)."""
    try:
        stac.write_json(data, path)
    except OSError as exc:
        result.errors.append(f"cannot write {path}: {exc.strerror or exc}")


def publish_stac(
    client: Any,
    config: Mapping[str, Any],
    keys: ManifestKeys,
    rows: Sequence[StacRow],
    local_dir: Path,
    threads: int = THREADS,
) -> StacResult:
    """Publish the STAC of one manifest's processed ``rows``: their Items in the output bucket, then the
    capture area and the Collection in the input bucket and in ``local_dir``. Never raises for S3."""
    started = time.monotonic()
    input_bucket, output_bucket = config["s3"]["input_bucket"], config["s3"]["output_bucket"]
    result = StacResult()
    collection_href = s3_url(input_bucket, keys.collection)
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="stac") as pool:
        done = list(
            pool.map(lambda row: _publish_item(client, output_bucket, row, collection_href, keys.collection_id), rows)
        )
    items: dict[str, Mapping[str, Any]] = {}
    footprints: list[stac.Footprint] = []
    sizes: list[float] = []
    crs_cache: dict[str, str] = {}
    for row, published in zip(rows, done, strict=True):
        if published.failure is not None:
            result.failed.append((row.key, published.failure))
            continue
        if published.item is None:
            result.without_item.append((row.key, published.missing or "no Item"))
            continue
        result.uploaded += published.how == "uploaded"
        result.kept += published.how == "kept"
        try:
            fp = footprint_of(published.item, crs_cache)
            stac.item_facts(published.item)
        except (ValueError, TypeError, rasterio.errors.CRSError) as exc:
            result.notes.append(f"the Item of {row.key} is left out of the Collection: {exc}")
            continue
        items[s3_url(output_bucket, stac.item_key(row.key))] = published.item
        footprints.append(fp)
        if (size := _pixel_size(published.item)) is not None:
            sizes.append(size)
    if result.failed:
        log.error("STAC: %d Item(s) not written, e.g. %s: %s", len(result.failed), *result.failed[0])
    if not items:
        if rows:
            result.notes.append("no image has an Item, so no Collection and no capture area")
        result.seconds = time.monotonic() - started
        return result

    try:
        settings = stac.stac_settings_from_config(config)
    except ValueError as exc:  # the schema let it through; the typed check did not
        result.notes.append(f"no Collection: {exc}")
        result.seconds = time.monotonic() - started
        return result
    area_name = keys.capture_area.rpartition("/")[2]
    area: dict[str, Any] | None = None
    try:
        area = stac.capture_area(footprints, statistics.median_low(sizes) if sizes else 0.0)
    except ValueError as exc:
        result.notes.append(f"no capture area: {exc}")
    if area is not None:
        _copy(area, local_dir / area_name, result)
        try:
            _put(client, input_bucket, keys.capture_area, area, GEOJSON)
            result.capture_area_key = keys.capture_area
        except s3.S3_ERRORS as exc:
            result.errors.append(
                f"capture area {keys.capture_area} not written to '{input_bucket}': {s3.describe_error(exc)}"
            )
    collection = stac.collection_for(
        keys.collection_id,
        items,
        settings,
        title=keys.raw,
        capture_area_href="./" + area_name if area is not None else None,
    )
    data = collection.to_dict(include_self_link=False, transform_hrefs=False)
    data["links"] = [
        {"rel": "self", "href": collection_href, "type": JSON},
        {"rel": "root", "href": collection_href, "type": JSON},
        *(link for link in data["links"] if link.get("rel") not in ("self", "root")),
    ]
    _copy(data, local_dir / keys.collection.rpartition("/")[2], result)
    try:
        _put(client, input_bucket, keys.collection, data, JSON)
        result.collection_key = keys.collection
    except s3.S3_ERRORS as exc:
        result.errors.append(f"Collection {keys.collection} not written to '{input_bucket}': {s3.describe_error(exc)}")
    result.seconds = time.monotonic() - started
    log.info(
        "STAC: %d Item(s) written, %d kept, %d failed, %d without an Item; Collection %s (%.1f s)",
        result.uploaded,
        result.kept,
        len(result.failed),
        len(result.without_item),
        result.collection_key or "not written",
        result.seconds,
    )
    return result
