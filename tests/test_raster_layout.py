"""The raster layer's shape (issue 11 item 4): one module per job, no module using another's private helpers,
one JPEG encoder, and convert.py still offering the names its users import."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cog_pipeline
from cog_pipeline.raster import convert
from cog_pipeline.raster.jpegstrips import encode_jpeg

PACKAGE = Path(cog_pipeline.__file__).resolve().parent


def _private_imports(path: Path) -> list[str]:
    """``module._name`` for every private name a module imports from the raster layer."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cog_pipeline.raster"):
            found += [
                f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
            ]
    return found


def _gdal_jpeg_calls(path: Path) -> list[int]:
    """Lines where GDAL's JPEG driver is asked for (``driver="JPEG"``)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.keyword)
        and node.arg == "driver"
        and isinstance(node.value, ast.Constant)
        and node.value.value == "JPEG"
    ]


def test_no_module_imports_private_helpers_of_the_raster_layer():
    found = {str(p.relative_to(PACKAGE)): _private_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_checks_see_what_they_look_for(tmp_path):
    """Both checks can fail: on the old thumbnail.py's import and encoder."""
    old = tmp_path / "thumbnail.py"
    old.write_text(
        "from cog_pipeline.raster.convert import JpegOptions, _has_mask, _plan\n"
        "def f(mem):\n    return mem.open(driver='JPEG', width=1)\n"
    )
    assert _private_imports(old) == ["cog_pipeline.raster.convert._has_mask", "cog_pipeline.raster.convert._plan"]
    assert _gdal_jpeg_calls(old) == [3]


def test_one_jpeg_encoder():
    """Previews and thumbnails are both written by jpegstrips; nothing asks GDAL's JPEG driver."""
    found = {str(p.relative_to(PACKAGE)): _gdal_jpeg_calls(p) for p in sorted(PACKAGE.rglob("*.py"))}
    assert {k: v for k, v in found.items() if v} == {}


@pytest.mark.parametrize(
    "name",
    [
        "convert_file",
        "ConversionResult",
        "RasterInfo",
        "inspect_input",
        "write_cog",
        "validate_cog",
        "verify_pixels",
        "write_jpeg",
        "verify_and_write_jpeg",
        "ImageError",
        "CogOptions",
        "JpegOptions",
        "cog_options_from_config",
        "jpeg_options_from_config",
    ],
)
def test_convert_still_offers_its_public_names(name):
    assert name in convert.__all__ and getattr(convert, name) is not None


@pytest.mark.parametrize("shape, mode", [((1, 37, 50), "L"), ((3, 37, 50), "RGB")])
def test_encode_jpeg_writes_one_decodable_strip(shape, mode):
    rows, cols = np.mgrid[0 : shape[1], 0 : shape[2]]
    pixels = np.stack([rows * 2 + cols + 40 * b for b in range(shape[0])]).astype(np.uint8)
    data = encode_jpeg(pixels, 90)
    assert b"\xff\xdd" not in data  # one strip: no restart interval
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == mode and img.size == (shape[2], shape[1])
        decoded = np.asarray(img).astype(int)
    expected = pixels[0] if shape[0] == 1 else pixels.transpose(1, 2, 0)
    assert np.abs(decoded - expected.astype(int)).mean() < 3


def test_encode_jpeg_refuses_other_shapes():
    with pytest.raises(ValueError, match=r"1 or 3, rows, cols"):
        encode_jpeg(np.zeros((2, 8, 8), np.uint8), 80)
