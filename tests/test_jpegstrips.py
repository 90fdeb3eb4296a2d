"""Strip-by-strip baseline JPEG: joined strips decode exactly as one encode of the whole image, with
Pillow and with GDAL, and the markers are those of a valid baseline JPEG with restart intervals."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from cog_pipeline.raster.jpegstrips import MAX_RESTART_INTERVAL, StripJpegWriter, strip_rows


def image(height: int, width: int, components: int, seed: int = 1) -> np.ndarray:
    """Smooth gradients plus noise and sharp edges (what a preview looks like, and hard for JPEG)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    planes = [
        ((x * 255 // max(1, width - 1) + y * (c + 1)) % 256 + rng.integers(-20, 20, (height, width))).clip(0, 255)
        for c in range(components)
    ]
    out = np.stack(planes, axis=-1).astype(np.uint8)
    out[height // 3 : height // 2, width // 4 : width // 2] = 255
    return out[..., 0] if components == 1 else out


def strips(pixels: np.ndarray, rows: int, quality: int = 80) -> bytes:
    components = 1 if pixels.ndim == 2 else 3
    buf = io.BytesIO()
    writer = StripJpegWriter(buf, pixels.shape[1], pixels.shape[0], components, quality, rows)
    for row in range(0, pixels.shape[0], rows):
        writer.write(pixels[row : row + rows])
    writer.close()
    return buf.getvalue()


def one_shot(pixels: np.ndarray, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality, optimize=False, subsampling=2)
    return buf.getvalue()


def pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.format == "JPEG"
        return np.asarray(im)


def gdal_pixels(data: bytes, tmp_path) -> np.ndarray:
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            assert ds.driver == "JPEG"
            out = ds.read()
    return out[0] if out.shape[0] == 1 else out.transpose(1, 2, 0)


def markers(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every segment before the scan, then the RSTn markers found in the scan."""
    pos, out = 2, []
    while data[pos + 1] != 0xDA:
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        out.append((data[pos + 1], data[pos + 4 : pos + 2 + length]))
        pos += 2 + length
    scan = data[pos:]
    out += [
        (0xD0 + n, b"")
        for i in range(len(scan) - 1)
        if scan[i] == 0xFF and 0xD0 <= scan[i + 1] <= 0xD7
        for n in [scan[i + 1] - 0xD0]
    ]
    return out


@pytest.mark.parametrize(
    "components, height, width, rows",
    [
        (3, 203, 157, 16),  # odd sizes: partial MCU column, partial last strip
        (3, 256, 320, 64),  # strips end exactly at the bottom
        (3, 150, 40, 144),  # one full strip and a short one
        (1, 203, 157, 8),
        (1, 77, 1000, 24),
        (3, 40, 40, 48),  # a single strip, shorter than the strip height
    ],
)
def test_strips_decode_exactly_as_one_encode(tmp_path, components, height, width, rows):
    pixels = image(height, width, components)
    joined, whole = strips(pixels, rows), one_shot(pixels)
    assert np.array_equal(pillow_pixels(joined), pillow_pixels(whole))
    assert np.array_equal(gdal_pixels(joined, tmp_path), gdal_pixels(whole, tmp_path))
    assert np.abs(pillow_pixels(joined).astype(int) - pixels).mean() < 20  # and it is the image (random: ~85)


def test_headers_give_the_full_height_and_the_restart_interval():
    pixels = image(203, 157, 3)
    data = strips(pixels, 32)
    found = markers(data)
    sof = next(p for m, p in found if m == 0xC0)
    assert struct.unpack(">HH", sof[1:5]) == (203, 157)
    dri = [p for m, p in found if m == 0xDD]
    assert dri == [struct.pack(">H", 10 * 2)]  # 10 MCUs a row (157 / 16), 2 MCU rows a strip
    rst = [m for m, p in found if 0xD0 <= m <= 0xD7]
    assert rst == [0xD0 + i % 8 for i in range(6)]  # 7 strips (203 / 32): 6 restarts, numbered mod 8
    assert data.endswith(b"\xff\xd9") and data.count(b"\xff\xd8") == 1


def test_a_single_strip_has_no_restart_interval():
    """One strip has no RSTn markers, so it must not declare an interval (over 65535 MCUs it could not)."""
    found = markers(strips(image(40, 40, 3), 48))
    assert not [m for m, p in found if m == 0xDD or 0xD0 <= m <= 0xD7]


def test_quality_is_the_encoders():
    pixels = image(64, 64, 3)
    assert len(strips(pixels, 16, quality=30)) < len(strips(pixels, 16, quality=95)) / 1.5


def test_strip_rows_respects_mcus_alignment_and_the_restart_field():
    assert strip_rows(8000, 3, 300) == 288
    assert strip_rows(8000, 3, 1000, align=512) == 512
    assert strip_rows(8000, 1, 100) == 96
    assert strip_rows(8000, 3, 5) == 16  # at least one MCU row
    for width in (65500, 40000, 20000):
        rows = strip_rows(width, 3, 10_000)
        assert rows % 16 == 0 and -(-width // 16) * rows // 16 <= MAX_RESTART_INTERVAL


def test_misuse_is_refused():
    buf = io.BytesIO()
    writer = StripJpegWriter(buf, 32, 40, 3, 80, 16)
    with pytest.raises(ValueError):
        writer.write(np.zeros((8, 32, 3), np.uint8))  # not the last strip, wrong height
    writer.write(np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="only 16 of 40"):
        writer.close()
    with pytest.raises(ValueError):
        StripJpegWriter(buf, 32, 40, 3, 80, 10)  # not whole MCU rows
    with pytest.raises(ValueError):
        StripJpegWriter(buf, 32, 40, 4, 80, 16)
