"""Small thumbnails for the run report, read from a COG's overviews with the JPEG preview's rules.

A decimated read of a COG is served by GDAL from its closest overview, so a thumbnail of a
multi-gigabyte image costs a few small tile reads. The rendering is the preview's (preview.py):
bands 1-3 or band 1, colour table expanded, masked/nodata/alpha pixels black, non-8-bit data
stretched between percentiles, complex data as its amplitude. The encoder is the preview's too
(jpegstrips.py, one strip). The result is a small JPEG as a ``data:`` URI, so the report page
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

from cog_pipeline.core.conversion import JpegOptions
from cog_pipeline.raster.gdalerrors import quiet_gdal
from cog_pipeline.raster.jpegstrips import encode_jpeg
from cog_pipeline.raster.preview import jpeg_bands, render_plan, render_window
from cog_pipeline.raster.sniff import has_mask, is_palette

__all__ = ["DATA_URI_PREFIX", "THUMBNAIL_QUALITY", "THUMBNAIL_SIDE", "thumbnail_array", "thumbnail_data_uri"]

THUMBNAIL_SIDE = 128
THUMBNAIL_QUALITY = 70
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


def thumbnail_array(
    path: str | Path, max_side: int = THUMBNAIL_SIDE, options: JpegOptions = JpegOptions()
) -> np.ndarray:
    """The 8-bit (bands, rows, cols) thumbnail of a raster, at most ``max_side`` pixels per side.

    The raster is opened at its smallest sufficient overview, so the percentile stretch is computed
    from that overview too (a few thousand pixels, not the full image).
    """
    with quiet_gdal(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        level = _overview_level(path, max_side)
        with rasterio.open(path, **({} if level is None else {"overview_level": level})) as ds:
            scale = max(1.0, max(ds.width, ds.height) / max_side)
            shape = (max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
            bands = jpeg_bands(ds.count, ds.colorinterp)
            plan = render_plan(ds, bands, bands == [1] and is_palette(ds), options)
            out_shape = (len(plan.bands), *shape)
            data = ds.read(plan.bands, out_shape=out_shape, resampling=Resampling.nearest)
            valid = None
            if has_mask(ds, plan.bands):
                valid = ds.read_masks(plan.bands, out_shape=out_shape, resampling=Resampling.nearest) != 0
            return render_window(data, valid, plan)


def thumbnail_data_uri(path: str | Path, max_side: int = THUMBNAIL_SIDE, options: JpegOptions = JpegOptions()) -> str:
    """A small JPEG thumbnail of the raster at ``path`` (a COG: read from its overviews) as a data URI."""
    encoded = base64.b64encode(encode_jpeg(thumbnail_array(path, max_side, options), THUMBNAIL_QUALITY)).decode("ascii")
    return DATA_URI_PREFIX + encoded
