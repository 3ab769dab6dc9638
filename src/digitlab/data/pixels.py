"""Array helpers the preprocessing steps share: uint8 and float images, PIL resizing, a fast median, ink boxes."""

from __future__ import annotations

import math
from typing import TypeAlias

import numpy as np
from PIL import Image

Box: TypeAlias = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 and y1 exclusive, like PIL's crop box

EIGHT_CONNECTED = np.ones((3, 3), bool)  # diagonal anti-aliased strokes must stay one component


def to_u8(unit: np.ndarray) -> np.ndarray:
    """uint8 of a float array in [0, 1], rounded; `unit` is scaled in place (it must be a scratch array)."""
    # In place throughout, here and in the rest of this module: for a temporary of 256 KiB or more (a 280x280
    # float32 image), `temporary * 255` makes NumPy call backtrace() to see whether it may reuse the
    # temporary, which costs about half a millisecond per operation.
    unit *= 255
    return np.round(unit, out=unit).astype(np.uint8)


def unit_float(u8: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1] (a new, writable array)."""
    a = u8.astype(np.float32)
    a /= 255
    return a


def resize(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resize a float image to size (width, height) with PIL, which anti-aliases when it shrinks."""
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
    return np.asarray(im.resize(size, resample), dtype=np.float32)


def median(v: np.ndarray) -> float:
    """`np.median` of a finite array, the same partition and mean (so the same value) without its ~10 us of
    Python overhead: preprocessing takes four or five medians per image."""
    flat = v.ravel()
    n = flat.size
    if n == 0:
        return math.nan
    k = n // 2
    if n % 2:
        return float(np.partition(flat, k)[k])
    part = np.partition(flat, (k - 1, k))
    return float((part[k - 1] + part[k]) / 2)  # in the array's precision, as np.mean of the two


def ink_box(mask: np.ndarray) -> Box | None:
    """Bounding box (x0, y0, x1, y1) of the True pixels, None when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def max3x3(a: np.ndarray) -> np.ndarray:
    """`ndi.maximum_filter(a, size=3)` (edges repeated, as its default "reflect" mode does at size 3) with
    four NumPy maxima instead of scipy's per-call overhead, which dominates on digit-sized arrays."""
    h, w = a.shape
    p = np.empty((h + 2, w + 2), a.dtype)  # `a` with its edge repeated around it
    p[1:-1, 1:-1] = a
    p[0, 1:-1], p[-1, 1:-1] = a[0], a[-1]
    p[:, 0], p[:, -1] = p[:, 1], p[:, -2]
    rows = np.maximum(np.maximum(p[:-2], p[1:-1]), p[2:])
    return np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])
