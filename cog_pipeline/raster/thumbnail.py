"""Small thumbnails for the run report, read from a COG's overviews with the JPEG preview's rules.

A decimated read of a COG is served by GDAL from its closest overview, so a thumbnail of a
multi-gigabyte image costs a few small tile reads. The rendering is the preview's (convert.py):
bands 1-3 or band 1, colour table expanded, masked/nodata/alpha pixels black, non-8-bit data
stretched between percentiles. The result is a small JPEG as a ``data:`` URI, so the report page
stands alone (and the batch job can carry it back inside its status record, even from an HTCondor
execute point).
"""

from __future__ import annotations

import base64
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from cog_pipeline.raster.convert import JpegOptions, _has_mask, _is_palette, _jpeg_bands, _plan, _render_window

THUMBNAIL_SIDE = 128
DATA_URI_PREFIX = "data:image/jpeg;base64,"


def _overview_level(path: str | Path, max_side: int) -> int | None:
    """Index of the smallest overview still at least ``max_side`` pixels on its longer side (None: full size)."""
    with rasterio.open(path) as ds:
        longer = max(ds.width, ds.height)
        level = None
        for index, factor in enumerate(ds.overviews(1)):
            if longer / factor >= max_side:
                level = index
        return level


def thumbnail_array(path: str | Path, max_side: int = THUMBNAIL_SIDE,
                    options: JpegOptions = JpegOptions()) -> np.ndarray:
    """The 8-bit (bands, rows, cols) thumbnail of a raster, at most ``max_side`` pixels per side.

    The raster is opened at its smallest sufficient overview, so the percentile stretch is computed
    from that overview too (a few thousand pixels, not the full image).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        level = _overview_level(path, max_side)
        with rasterio.open(path, **({} if level is None else {"overview_level": level})) as ds:
            scale = max(1.0, max(ds.width, ds.height) / max_side)
            shape = (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
            bands = _jpeg_bands(ds.count)
            plan = _plan(ds, bands, bands == [1] and _is_palette(ds), options)
            out_shape = (len(plan.bands), *shape)
            data = ds.read(plan.bands, out_shape=out_shape, resampling=Resampling.nearest)
            valid = None
            if _has_mask(ds, plan.bands):
                valid = ds.read_masks(plan.bands, out_shape=out_shape, resampling=Resampling.nearest) != 0
            return _render_window(data, valid, plan)


def encode_jpeg(rgb: np.ndarray, quality: int = 70) -> bytes:
    """JPEG bytes of an 8-bit (1 or 3, rows, cols) array."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(driver="JPEG", width=rgb.shape[2], height=rgb.shape[1], count=rgb.shape[0],
                          dtype="uint8", QUALITY=str(quality)) as dst:
                dst.write(rgb)
            return mem.read()


def thumbnail_data_uri(path: str | Path, max_side: int = THUMBNAIL_SIDE,
                       options: JpegOptions = JpegOptions()) -> str:
    """A small JPEG thumbnail of the raster at ``path`` (a COG: read from its overviews) as a data URI."""
    encoded = base64.b64encode(encode_jpeg(thumbnail_array(path, max_side, options))).decode("ascii")
    return DATA_URI_PREFIX + encoded
