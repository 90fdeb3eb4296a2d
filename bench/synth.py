"""Synthetic but realistic benchmark inputs, generated strip by strip (never a whole image in memory).

* ``ortho``: 4-band uint8 (R, G, B, NIR) orthophoto-like tile: agricultural parcels with their own
  colour and crop-row texture, warped parcel boundaries, a few roads, tree clumps (value noise) and
  sensor noise (sigma 1.5 DN, so that LZW keeps ~84% of the raw size, as on real 4-band imagery
  where LZW gains little; sigma 3 made LZW expand the data). Written like real deliveries:
  uncompressed, striped (GDAL's default rows per strip), pixel-interleaved, UTM georeferencing.
* ``dem``: 1-band uint16 DEM-like tile (decimetres): multi-octave smooth terrain plus a river valley
  and a little noise, striped and uncompressed.
* ``small``: small 4-band uint8 orthophoto tiles for the pipeline benchmark (same generator).

Every pixel is a deterministic function of its position and the seed (for the fixed generation strip
height), and files are cached by their parameters.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

STRIP_ROWS = 256
PARCEL = 700.0  # mean parcel size in pixels (0.6 m pixels -> ~400 m fields)


class _ValueNoise:
    """Bilinearly interpolated random lattice (one octave), evaluated on arbitrary rows."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, cell: float):
        self.cell = cell
        self.grid = rng.random((int(height / cell) + 3, int(width / cell) + 3), dtype=np.float32)

    def rows(self, y0: int, y1: int, width: int) -> np.ndarray:
        ys = (np.arange(y0, y1, dtype=np.float32) / self.cell)[:, None]
        xs = (np.arange(width, dtype=np.float32) / self.cell)[None, :]
        iy, ix = ys.astype(np.int32), xs.astype(np.int32)
        fy, fx = ys - iy, xs - ix
        fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep
        g = self.grid
        top = g[iy, ix] * (1 - fx) + g[iy, ix + 1] * fx
        bottom = g[iy + 1, ix] * (1 - fx) + g[iy + 1, ix + 1] * fx
        return top * (1 - fy) + bottom * fy


class OrthoGenerator:
    """Rows of a 4-band orthophoto-like image (see module docstring)."""

    # Parcel palette (R, G, B, NIR): crops, bare soil, pasture, stubble, water.
    PALETTE = np.array(
        [
            [70, 110, 45, 190],
            [95, 130, 55, 210],
            [150, 125, 90, 80],
            [120, 140, 70, 170],
            [185, 170, 120, 110],
            [60, 85, 40, 160],
            [135, 110, 80, 70],
            [40, 60, 75, 20],
        ],
        dtype=np.float32,
    )

    def __init__(self, width: int, height: int, seed: int = 1):
        self.width, self.height = width, height
        rng = np.random.default_rng(seed)
        self.warp = _ValueNoise(rng, width, height, 900.0)
        self.trees = _ValueNoise(rng, width, height, 60.0)
        self.texture = _ValueNoise(rng, width, height, 9.0)
        n_py, n_px = int(height / PARCEL) + 4, int(width / PARCEL) + 4
        weights = np.array([5, 5, 3, 4, 2, 3, 2, 0.3])
        parcel_class = rng.choice(len(self.PALETTE), size=(n_py, n_px), p=weights / weights.sum())
        shift = rng.normal(0, 8, size=(n_py, n_px, 4))
        self.parcel_colour = (self.PALETTE[parcel_class] + shift).astype(np.int16)
        self.parcel_vertical = rng.random((n_py, n_px)) < 0.5
        self.stripe_x = (np.sin(np.arange(width) * 0.9) * 6.0).astype(np.float32)
        self.stripe_y = (np.sin(np.arange(height) * 0.9) * 6.0).astype(np.float32)
        self.noise = rng.normal(0, 1.5, size=(509, width + 1031, 4)).round().astype(np.int16)
        # Roads: (angle, offset, half-width) lines across the tile, plus a regular section-line grid.
        n_roads = max(2, (width + height) // 4000)
        self.roads = [
            (rng.uniform(0, math.pi), rng.uniform(0, width + height) - height / 2, rng.uniform(4, 9))
            for _ in range(n_roads)
        ]
        self.seed = seed

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Bands x rows x width uint8 for rows [y0, y1)."""
        w = self.width
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        xs = np.arange(w, dtype=np.float32)[None, :]
        warp = self.warp.rows(y0, y1, w) * 400.0
        px = ((xs + warp) * (1.0 / PARCEL)).astype(np.int32) + 1
        py = ((ys + warp) * (1.0 / PARCEL)).astype(np.int32) + 1
        img = self.parcel_colour[py, px]  # rows x width x 4, int16
        # Tree clumps where the low-frequency noise is high; roads; a gravel section-line grid.
        img[self.trees.rows(y0, y1, w) > 0.74] = (35, 55, 30, 150)
        for angle_r, offset, half in self.roads:
            dist = np.abs(xs * math.cos(angle_r) + ys * math.sin(angle_r) - offset)
            img[dist < half] = (105, 105, 108, 60)
        grid = (np.abs((xs % 1600) - 800) > 796) | (np.abs((ys % 1600) - 800) > 796)
        img[grid] = (170, 160, 140, 120)
        # Brightness texture shared by the bands: crop rows along the parcel's direction + fine noise.
        shade = (self.texture.rows(y0, y1, w) - 0.5) * 18.0
        shade += np.where(self.parcel_vertical[py, px], self.stripe_x[None, :w], self.stripe_y[y0:y1, None])
        img += shade.astype(np.int16)[..., None]
        # Per-band sensor noise: a fixed noise tile read at a position that depends on the rows.
        shift = int(np.random.default_rng([self.seed, y0]).integers(0, self.noise.shape[1] - w))
        rows = np.arange(y0, y1) % self.noise.shape[0]
        img += self.noise[rows, shift : shift + w]
        return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)


class DemGenerator:
    """Rows of a 1-band uint16 elevation model in decimetres (see module docstring)."""

    def __init__(self, width: int, height: int, seed: int = 2):
        self.width, self.height = width, height
        rng = np.random.default_rng(seed)
        self.octaves = [
            (_ValueNoise(rng, width, height, cell), amp)
            for cell, amp in ((4000.0, 3000.0), (1200.0, 1200.0), (300.0, 300.0), (60.0, 40.0))
        ]
        self.seed = seed

    def rows(self, y0: int, y1: int) -> np.ndarray:
        w = self.width
        z = np.full((y1 - y0, w), 2500.0, dtype=np.float32)
        for noise, amp in self.octaves:
            z += noise.rows(y0, y1, w) * amp
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        xs = np.arange(w, dtype=np.float32)[None, :]
        river = np.abs(xs - (w * 0.45 + np.sin(ys / 900.0) * w * 0.1))
        z -= 800.0 * np.exp(-((river / 400.0) ** 2))
        rng = np.random.default_rng([self.seed, y0, y1])
        z += rng.normal(0.0, 1.5, size=z.shape).astype(np.float32)
        return np.clip(z, 0, 65535).astype(np.uint16)[None]


def write_raster(path: Path, kind: str, size: int, seed: int = 1) -> Path:
    """Write a ``kind`` ('ortho' or 'dem') image of size x size to ``path``, strip by strip."""
    import rasterio
    from rasterio.transform import from_origin

    gen = OrthoGenerator(size, size, seed) if kind == "ortho" else DemGenerator(size, size, seed)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        crs="EPSG:26916",
        tiled=False,
        transform=from_origin(300000.0, 4900000.0, 0.6 if kind == "ortho" else 1.0, 0.6 if kind == "ortho" else 1.0),
    )
    if kind == "ortho":
        profile.update(count=4, dtype="uint8", photometric="RGB", interleave="pixel")
    else:
        profile.update(count=1, dtype="uint16")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(tmp, "w", **profile) as dst:
        for y0 in range(0, size, STRIP_ROWS):
            y1 = min(size, y0 + STRIP_ROWS)
            dst.write(gen.rows(y0, y1), window=((y0, y1), (0, size)))
    os.replace(tmp, path)
    return path


def cached_raster(cache: Path, kind: str, size: int, seed: int = 1) -> Path:
    """The path of a generated raster, generating it only when the cache lacks it."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{kind}-{size}-s{seed}.tif"
    meta = cache / (path.name + ".json")
    version = {"kind": kind, "size": size, "seed": seed, "generator": 4}
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()) == version:
        return path
    write_raster(path, kind, size, seed)
    meta.write_text(json.dumps(version))
    return path


if __name__ == "__main__":  # python bench/synth.py KIND SIZE OUT.tif  (write one image)
    import sys

    write_raster(Path(sys.argv[3]), sys.argv[1], int(sys.argv[2]))
