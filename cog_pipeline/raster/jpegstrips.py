"""A baseline JPEG written strip by strip, in bounded memory.

GDAL's JPEG driver turns on libjpeg's ``optimize_coding``, so libjpeg keeps every DCT coefficient of
the image until the end (about 3 bytes per pixel: 1.2 GB for a 20000x20000 RGB preview). Here each
horizontal strip (a whole number of MCU rows) is encoded on its own by Pillow's libjpeg-turbo as a
baseline JPEG with the standard Huffman tables (``optimize=False``) and IJG quantisation tables for
the same quality; the strips' entropy-coded segments are then joined into one JPEG: the first strip's
headers with the full image height in SOF0, a DRI marker (restart interval = MCUs per strip) and an
RSTn marker between strips. A restart resets the DC predictors and starts on a byte boundary, which
is exactly how each strip's segment was coded, so the result decodes to the same pixels as one
libjpeg-turbo encode of the whole image (strips are MCU-aligned: subsampling and DCT blocks never
cross a strip edge). Memory: one strip.

This is the package's only JPEG encoder: the report's thumbnails (thumbnail.py) are one-strip images
written by :func:`encode_jpeg` (GDAL's JPEG driver, which they used before, is no longer needed).
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

import numpy as np

__all__ = ["StripJpegWriter", "encode_jpeg", "strip_rows"]

#: The DRI field is 16 bits.
MAX_RESTART_INTERVAL = 65535
_SOF0, _DHT, _SOS, _DRI, _EOI, _SOI = 0xC0, 0xC4, 0xDA, 0xDD, 0xD9, 0xD8


def _mcu_shape(components: int) -> tuple[int, int]:
    """MCU height and width in pixels: 8x8 for grey, 16x16 for YCbCr 4:2:0 (Pillow's default below 4:4:4)."""
    return (8, 8) if components == 1 else (16, 16)


def strip_rows(width: int, components: int, budget_rows: int, align: int = 1) -> int:
    """Rows per strip: a multiple of the MCU height (and of ``align`` when it fits), at most
    ``budget_rows`` (but at least one MCU row), with a restart interval that fits the DRI field."""
    mcu_h, mcu_w = _mcu_shape(components)
    mcus_per_row = -(-width // mcu_w)
    max_mcu_rows = max(1, MAX_RESTART_INTERVAL // mcus_per_row)
    rows = max(mcu_h, min(budget_rows, max_mcu_rows * mcu_h) // mcu_h * mcu_h)
    if align > 1 and align % mcu_h == 0 and rows >= align:
        rows -= rows % align
    return rows


def _segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Marker segments of a baseline JPEG up to and including SOS, and its entropy-coded data."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("encoder output is not a JPEG (no SOI)")
    pos, segments = 2, []
    while True:
        if data[pos] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segments.append((marker, data[pos : pos + 2 + length]))
        pos += 2 + length
        if marker == _SOS:
            break
    if data[-2:] != b"\xff\xd9":
        raise ValueError("encoder output does not end with EOI")
    return segments, data[pos:-2]


class StripJpegWriter:
    """Write a ``width`` x ``height`` JPEG (1 = grey or 3 = RGB components) to ``fh`` strip by strip.

    Every strip but the last must have exactly ``rows_per_strip`` rows (see :func:`strip_rows`).
    """

    def __init__(self, fh: BinaryIO, width: int, height: int, components: int, quality: int, rows_per_strip: int):
        if components not in (1, 3):
            raise ValueError(f"a JPEG preview has 1 or 3 components, not {components}")
        mcu_h, mcu_w = _mcu_shape(components)
        if rows_per_strip % mcu_h:
            raise ValueError(f"rows per strip {rows_per_strip} is not a multiple of the MCU height {mcu_h}")
        self._interval = (-(-width // mcu_w)) * (rows_per_strip // mcu_h)
        if self._interval > MAX_RESTART_INTERVAL and rows_per_strip < height:
            raise ValueError(
                f"{rows_per_strip} rows of {width} pixels make a restart interval over {MAX_RESTART_INTERVAL}"
            )
        self._fh, self._width, self._height = fh, width, height
        self._components, self._quality, self._rows = components, quality, rows_per_strip
        self._done = 0
        self._strips = 0
        self._tables: list[bytes] | None = None

    def write(self, pixels: np.ndarray) -> None:
        """Append the next strip: uint8 ``(rows, width)`` for grey or ``(rows, width, 3)`` for RGB."""
        from PIL import Image

        rows = pixels.shape[0]
        last = self._done + rows == self._height
        if (
            pixels.dtype != np.uint8
            or pixels.shape[1] != self._width
            or (pixels.ndim == 3) != (self._components == 3)
            or (not last and rows != self._rows)
            or self._done + rows > self._height
            or rows > self._rows
        ):
            raise ValueError(
                f"strip of shape {pixels.shape} does not fit (rows per strip {self._rows}, "
                f"{self._done} of {self._height} rows written)"
            )
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels), "L" if self._components == 1 else "RGB").save(
            buf, "JPEG", quality=self._quality, optimize=False, progressive=False, subsampling=2
        )
        segments, scan = _segments(buf.getvalue())
        tables = [seg for marker, seg in segments if marker not in (_SOF0, _SOS)]
        if self._tables is None:
            self._tables = tables
            self._write_headers(segments)
        elif tables != self._tables:
            raise ValueError("JPEG strips were encoded with different tables")
        else:
            self._fh.write(b"\xff" + bytes([0xD0 + (self._strips - 1) % 8]))  # RSTn before this strip
        self._fh.write(scan)
        self._strips += 1
        self._done += rows

    def _write_headers(self, segments: list[tuple[int, bytes]]) -> None:
        out = [b"\xff\xd8"]
        for marker, seg in segments:
            if marker == _SOF0:
                seg = seg[:5] + struct.pack(">H", self._height) + seg[7:]
            elif marker == _SOS:
                if self._rows < self._height:  # one strip has no restart markers: no interval either
                    out.append(b"\xff\xdd" + struct.pack(">HH", 4, self._interval))
            elif marker not in (0xDB, _DHT) and not 0xE0 <= marker <= 0xEF:
                raise ValueError(f"unexpected JPEG marker 0x{marker:02X} in the encoder output")
            out.append(seg)
        if not any(marker == _SOF0 for marker, _ in segments):
            raise ValueError("encoder output is not a baseline JPEG (no SOF0)")
        self._fh.write(b"".join(out))

    def close(self) -> None:
        """Finish the JPEG (EOI); every row must have been written."""
        if self._done != self._height:
            raise ValueError(f"only {self._done} of {self._height} rows were written")
        self._fh.write(b"\xff\xd9")


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a small 8-bit (1 or 3, rows, cols) array, as one strip."""
    if pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
        raise ValueError(f"an 8-bit (1 or 3, rows, cols) array is needed, not shape {pixels.shape}")
    components, height, width = pixels.shape
    mcu_h = _mcu_shape(components)[0]
    buf = io.BytesIO()
    writer = StripJpegWriter(buf, width, height, components, quality, -(-height // mcu_h) * mcu_h)
    writer.write(pixels[0] if components == 1 else pixels.transpose(1, 2, 0))
    writer.close()
    return buf.getvalue()
