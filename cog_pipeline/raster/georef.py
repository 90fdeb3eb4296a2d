"""The georeference of a preview, in the side files GIS software reads beside a JPEG.

* a world file (``<name>.jgw`` beside ``<name>.jpg``): six lines, the pixel size in x, the two rotation
  terms, the pixel size in y (negative for north-up) and the x, y of the CENTRE of the upper-left pixel
  (ArcGIS, QGIS and GDAL read it; it carries no CRS);
* a GDAL PAM file (``<name>.jpg.aux.xml``): the SRS as WKT and the GeoTransform (upper-left CORNER), or the
  ground control points with their SRS for an image georeferenced by GCPs only.

A preview smaller than its source (``jpeg.sizes``) covers the same extent with fewer pixels: its grid is
the source's scaled by ``source width / preview width`` and ``source height / preview height``
(:meth:`Georef.scaled`). Only images with a CRS get side files: without one a GIS cannot place them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError

__all__ = ["Georef", "pam_xml", "source_georef", "world_file_suffix", "world_file_text"]


@dataclass(frozen=True)
class Georef:
    """A grid's georeference: the SRS (WKT), the affine (a, b, c, d, e, f) of the grid or None, and ground
    control points (pixel, line, x, y, z) used when there is no affine."""

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float] | None
    gcps: tuple[tuple[float, float, float, float, float], ...] = ()

    def scaled(self, sx: float, sy: float) -> Georef:
        """The georeference of the same extent with pixels ``sx`` x ``sy`` times as large."""
        transform = None
        if self.transform is not None:
            a, b, c, d, e, f = self.transform
            transform = (a * sx, b * sy, c, d * sx, e * sy, f)
        gcps = tuple((pixel / sx, line / sy, x, y, z) for pixel, line, x, y, z in self.gcps)
        return Georef(self.crs_wkt, transform, gcps)


def _wkt(crs: CRS) -> str:
    """WKT1 (what ArcGIS and older GDAL read), or WKT2 for a CRS that WKT1 cannot express."""
    try:
        return crs.to_wkt()
    except CRSError:
        return crs.to_wkt(version="WKT2_2019")


def source_georef(ds: rasterio.DatasetReader) -> Georef | None:
    """The georeference of an open image, or None when it has no CRS (a plain image stays plain)."""
    if ds.crs is not None:
        t = ds.transform
        return Georef(_wkt(ds.crs), (t.a, t.b, t.c, t.d, t.e, t.f))
    points, crs = ds.gcps
    if points and crs is not None:
        return Georef(_wkt(crs), None, tuple((p.col, p.row, p.x, p.y, p.z or 0.0) for p in points))
    return None


def world_file_suffix(jpeg_suffix: str = ".jpg") -> str:
    """The world file's extension for an image extension: first and last letter + ``w`` (``.jpg`` -> ``.jgw``)."""
    ext = jpeg_suffix.lstrip(".") or "jpg"
    return f".{ext[0]}{ext[-1]}w"


def world_file_text(georef: Georef) -> str | None:
    """The six lines of a world file (None for a GCP-only georeference)."""
    if georef.transform is None:
        return None
    a, b, c, d, e, f = georef.transform
    lines = (a, d, b, e, c + a / 2 + b / 2, f + d / 2 + e / 2)
    return "".join(f"{v!r}\n" for v in lines)


def pam_xml(georef: Georef) -> str:
    """A GDAL PAM ``.aux.xml`` with the SRS and the GeoTransform (or the GCPs)."""
    root = ET.Element("PAMDataset")
    if georef.transform is not None:
        ET.SubElement(root, "SRS").text = georef.crs_wkt
        a, b, c, d, e, f = georef.transform
        ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in (c, a, b, f, d, e))
    else:
        gcps = ET.SubElement(root, "GCPList", Projection=georef.crs_wkt)
        for i, (pixel, line, x, y, z) in enumerate(georef.gcps, 1):
            ET.SubElement(gcps, "GCP", Id=str(i), Pixel=repr(pixel), Line=repr(line), X=repr(x), Y=repr(y), Z=repr(z))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"
