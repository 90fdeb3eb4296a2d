"""An undeclared fill value: a value (-9999, the type's minimum, NaN, ...) that runs along the edges of an
image declaring no nodata. One detector, on a decimated read, for delivery QA (qa.py, the ``undeclared_fill``
check) and the JPEG preview (preview.py: the fill is left out of the stretch and drawn as nodata).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_FILL_VALUES", "DEFAULT_MIN_FILL_RUN", "EdgeFill", "edge_fill", "fill_candidates"]

#: Values taken for a fill when they run along the border of an image that declares no nodata (besides the
#: type's minimum and maximum for integers, and NaN and the float32 lowest for floats).
DEFAULT_FILL_VALUES = (-9999.0, -32768.0, -32767.0, 0.0)
#: A fill's run along one edge must cover at least this fraction of it.
DEFAULT_MIN_FILL_RUN = 0.1
_FLOAT32_LOWEST = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class EdgeFill:
    """A fill found in a decimated read: its value, the edges it runs along, the share of the read it covers."""

    value: float
    edges: tuple[str, ...]
    share: float


def fill_candidates(dtype: np.dtype, values: tuple[float, ...] = DEFAULT_FILL_VALUES) -> list[float]:
    """The values tried for a ``dtype`` image: ``values`` the type can hold, and its extremes (integers) or
    NaN and the float32 lowest (floats)."""
    out = list(values)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = [v for v in out if info.min <= v <= info.max] + [float(info.min), float(info.max)]
    else:
        out += [math.nan, _FLOAT32_LOWEST]
    return list(dict.fromkeys(out))


def _longest_run(equal: np.ndarray) -> int:
    """Longest run of True in a 1-D boolean array."""
    best = run = 0
    for value in equal.tolist():
        run = run + 1 if value else 0
        best = max(best, run)
    return best


def edge_fill(
    sample: np.ndarray,
    dtype: str | np.dtype,
    values: tuple[float, ...] = DEFAULT_FILL_VALUES,
    min_run: float = DEFAULT_MIN_FILL_RUN,
) -> EdgeFill | None:
    """The fill of a decimated read ``sample`` (bands x rows x cols): the candidate whose pixels (every band
    equal to it) run along the most edges, each run at least ``min_run`` of its edge; None if there is none."""
    if sample.ndim != 3 or sample.shape[1] < 2 or sample.shape[2] < 2:
        return None
    edges = {"top": sample[:, 0, :], "bottom": sample[:, -1, :], "left": sample[:, :, 0], "right": sample[:, :, -1]}
    best: EdgeFill | None = None
    for value in fill_candidates(np.dtype(dtype), values):
        hits = []
        for name, edge in edges.items():
            same = np.all(np.isnan(edge), axis=0) if math.isnan(value) else np.all(edge == value, axis=0)
            if _longest_run(same) >= max(2, math.ceil(min_run * edge.shape[1])):
                hits.append(name)
        if hits:
            every = np.all(np.isnan(sample), axis=0) if math.isnan(value) else np.all(sample == value, axis=0)
            share = float(np.mean(every))
            if best is None or (len(hits), share) > (len(best.edges), best.share):
                best = EdgeFill(value, tuple(hits), share)
    return best
