"""What a delivery check needs from one image without reading it whole: its header and a decimated read.

:func:`read_header` opens a local path or a GDAL virtual path (``/vsicurl/https://...``, ``/vsis3/...``):
GDAL reads the TIFF directory and, for the decimated read, the smallest overview that is at least as large
as the sample (the image itself only when it has no overviews), so a COG costs a few range requests.
:func:`pixel_digest` is the other end: a hash of every decoded full-resolution pixel (docs/delivery.md).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import CRSError, NodataShadowWarning, RasterioError
from rasterio.windows import Window

from cog_pipeline.core.errors import ImageError
from cog_pipeline.raster.sniff import numpy_dtype

__all__ = ["SAMPLE_MAX_SIDE", "PIXEL_DIGEST_VERSION", "ImageHeader", "read_header", "PixelHasher", "pixel_digest"]

#: Longer side of the decimated read (the ``qa.sample_max_side`` default).
SAMPLE_MAX_SIDE = 512
#: Version of the pixel digest's definition (its header line starts with it; docs/delivery.md).
PIXEL_DIGEST_VERSION = 1
_DIGEST_WINDOW_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, eq=False)
class ImageHeader:
    """One image's header and a decimated read of it (``sample``: bands x rows x cols, nearest resampling;
    ``sample_valid``: True where GDAL's dataset mask says the pixel holds data, same rows x cols)."""

    key: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    crs_wkt: str | None
    epsg: int | None
    #: Affine coefficients (a, b, c, d, e, f) of the full-resolution grid.
    transform: tuple[float, float, float, float, float, float]
    nodata: float | None
    colorinterp: tuple[str, ...]
    palette_size: int
    #: Per band: GDAL mask flags (``all_valid``, ``per_dataset``, ``alpha``, ``nodata``).
    mask_flags: tuple[tuple[str, ...], ...]
    overviews: tuple[int, ...]
    compression: str | None
    tags: dict[str, str] = field(default_factory=dict)
    sample: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))
    sample_valid: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))

    @property
    def dtype(self) -> str:
        """The data type of the first band (GeoTIFF bands share one)."""
        return self.dtypes[0]

    @property
    def gsd(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, positive; rotation terms included."""
        a, b, _, d, e, _ = self.transform
        return (math.hypot(a, d), math.hypot(b, e))

    @property
    def has_alpha(self) -> bool:
        return "alpha" in self.colorinterp

    @property
    def has_palette(self) -> bool:
        return self.palette_size > 0

    @property
    def has_mask(self) -> bool:
        """True when nodata, an alpha band or an internal mask marks some pixels as not data."""
        return any(flags != ("all_valid",) for flags in self.mask_flags)

    @property
    def sample_transform(self) -> tuple[float, float, float, float, float, float]:
        """Affine coefficients of the decimated read's grid."""
        a, b, c, d, e, f = self.transform
        rows, cols = self.sample_valid.shape
        sx, sy = self.width / max(cols, 1), self.height / max(rows, 1)
        return (a * sx, b * sy, c, d * sx, e * sy, f)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the image's four corners in its CRS."""
        a, b, c, d, e, f = self.transform
        xs, ys = [], []
        for col, row in ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height)):
            xs.append(a * col + b * row + c)
            ys.append(d * col + e * row + f)
        return (min(xs), min(ys), max(xs), max(ys))


def _sample_shape(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = max(width, height) / max_side
    if scale <= 1:
        return height, width
    return max(1, round(height / scale)), max(1, round(width / scale))


def _palette_size(ds: rasterio.DatasetReader) -> int:
    if ds.colorinterp[0] != ColorInterp.palette:
        return 0
    try:
        return len(ds.colormap(1))
    except ValueError:
        return 0


def read_header(path: str | Path, key: str | None = None, sample_max_side: int = SAMPLE_MAX_SIDE) -> ImageHeader:
    """The header and a decimated read (longer side ``sample_max_side``) of ``path``, a local file or a GDAL
    virtual path. ``key`` names the image in findings (the path by default). ImageError("qa", ...) if the
    file cannot be opened or read."""
    name = key if key is not None else str(path)
    try:
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(path) as ds:
            rows, cols = _sample_shape(ds.width, ds.height, sample_max_side)
            sample = ds.read(out_shape=(ds.count, rows, cols), resampling=Resampling.nearest)
            with warnings.catch_warnings():  # alpha and nodata both declared: QA's alpha_and_nodata says so
                warnings.simplefilter("ignore", NodataShadowWarning)
                valid = ds.dataset_mask(out_shape=(rows, cols), resampling=Resampling.nearest) > 0
            crs_wkt = epsg = None
            if ds.crs is not None:
                crs_wkt = ds.crs.to_wkt()
                try:
                    epsg = ds.crs.to_epsg()
                except CRSError:
                    epsg = None
            return ImageHeader(
                key=name,
                width=ds.width,
                height=ds.height,
                count=ds.count,
                dtypes=tuple(ds.dtypes),
                crs_wkt=crs_wkt,
                epsg=epsg,
                transform=tuple(ds.transform)[:6],
                nodata=ds.nodata,
                colorinterp=tuple(ci.name for ci in ds.colorinterp),
                palette_size=_palette_size(ds),
                mask_flags=tuple(tuple(MaskFlags(f).name for f in flags) for flags in ds.mask_flag_enums),
                overviews=tuple(ds.overviews(1)),
                compression=ds.compression.name if ds.compression is not None else None,
                tags={str(k): str(v) for k, v in ds.tags().items()},
                sample=sample,
                sample_valid=valid,
            )
    except (RasterioError, OSError) as exc:
        raise ImageError("qa", f"{name}: cannot read the header and a decimated overview: {exc}") from None


class PixelHasher:
    """The pixel digest fed window by window, in order: each window spans the full width, or lies in one row
    and continues where the previous one stopped (so a verification pass can feed the windows it reads)."""

    def __init__(self, dtype: str, count: int, height: int, width: int) -> None:
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.count, self.height, self.width = count, height, width
        self._sha = hashlib.sha256(
            f"cog-pipeline-pixels/{PIXEL_DIGEST_VERSION} {self.dtype.str} {count} {height} {width}\n".encode()
        )
        self._row, self._col = 0, 0

    def update(self, data: np.ndarray, window: Window) -> None:
        """Add ``data`` (count x rows x cols) read at ``window``; ValueError if it is not the next one."""
        row, col = int(window.row_off), int(window.col_off)
        rows, cols = int(window.height), int(window.width)
        if (
            (row, col) != (self._row, self._col)
            or data.shape != (self.count, rows, cols)
            or (rows > 1 and (col != 0 or cols != self.width))
            or col + cols > self.width
        ):
            raise ValueError(
                f"pixel digest: window {window} of shape {data.shape} is not the next one "
                f"(expected row {self._row}, column {self._col}, all {self.count} bands)"
            )
        self._sha.update(np.ascontiguousarray(np.moveaxis(data, 0, -1), dtype=self.dtype).tobytes())
        self._col = col + cols
        if self._col == self.width:
            self._row, self._col = row + rows, 0

    def hexdigest(self) -> str:
        """The digest as a sha256 multihash (``1220`` + hex); ValueError if pixels are missing."""
        if self._row != self.height:
            raise ValueError(f"pixel digest: only {self._row} of {self.height} rows were added")
        return "1220" + self._sha.hexdigest()


def _digest_windows(width: int, height: int, bytes_per_pixel: int) -> Iterator[Window]:
    rows = max(1, _DIGEST_WINDOW_BYTES // max(1, width * bytes_per_pixel))
    for row in range(0, height, rows):
        yield Window(0, row, width, min(rows, height - row))


def pixel_digest(path: str | Path) -> str:
    """The sha256 multihash of ``path``'s decoded full-resolution pixels (docs/delivery.md, "Pixel digest").
    ImageError("digest", ...) if the bands differ in type or the file cannot be read."""
    try:
        with rasterio.open(path) as ds:
            if len(set(ds.dtypes)) != 1:
                raise ImageError("digest", f"{path}: bands of different data types {sorted(set(ds.dtypes))}")
            dtype = numpy_dtype(ds.dtypes[0])  # complex_int16 is read (and hashed) as complex64
            hasher = PixelHasher(dtype.str, ds.count, ds.height, ds.width)
            per_pixel = ds.count * dtype.itemsize
            for window in _digest_windows(ds.width, ds.height, per_pixel):
                hasher.update(ds.read(window=window), window)
            return hasher.hexdigest()
    except (RasterioError, OSError) as exc:
        raise ImageError("digest", f"{path}: cannot read the pixels: {exc}") from None
