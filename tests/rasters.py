"""Small GeoTIFFs for the delivery tests (test_kinds, test_qa, test_stac)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

#: New Zealand Transverse Mercator, half-metre pixels near Wellington.
TRANSFORM = Affine(0.5, 0, 1_750_000, 0, -0.5, 5_430_000)


def make_tif(
    path: Path,
    data: np.ndarray,
    *,
    nodata=None,
    crs="EPSG:2193",
    colormap=None,
    colorinterp=None,
    transform=None,
    **profile,
) -> Path:
    """``data`` (bands, rows, cols) as a GeoTIFF."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[np.newaxis]
    kw = dict(
        driver="GTiff",
        count=data.shape[0],
        height=data.shape[1],
        width=data.shape[2],
        dtype=data.dtype.name,
        nodata=nodata,
        crs=crs,
        transform=transform or TRANSFORM,
    )
    kw.update(profile)
    with rasterio.open(path, "w", **kw) as ds:
        if colorinterp:  # before the pixels: GDAL fixes a 4th band's ExtraSamples (alpha) at the first write
            ds.colorinterp = colorinterp
        ds.write(data)
        if colormap:
            ds.write_colormap(1, colormap)
    return path
