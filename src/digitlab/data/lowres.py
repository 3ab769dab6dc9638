"""Low-resolution input: undo nearest-neighbour upscaling and enlarge tiny images smoothly before MNIST framing.

A digit scanned at 8x8 and shown at 112x112 arrives as 14-pixel blocks; framed as it is, the model sees a blocky
shape unlike any pen stroke, and an 8x8 file gives the cleanup one pixel per stroke. Both are turned into the
smooth picture a pen would have made: the source grid is recovered (one pixel per block), then enlarged with
Lanczos interpolation to ENLARGED_SIDE px, at the displayed aspect ratio.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["ENLARGED_SIDE", "TINY_SIDE", "restore", "restore_array", "source_grid"]

TINY_SIDE = 24  # an image whose longer side is below this many px is a tiny source in itself (MNIST's is 28)
# Nearest-neighbour blocks at least this many px a side count as upscaling: with 2 px, a grid can be read into
# the few edges of a plain drawing (a bar 2 px thick), and 2x blocks frame well as they are.
MIN_BLOCK = 3.0
MIN_RUNS = 3  # ... and at least this many runs of identical rows and of columns, so that there is a grid to see
MAX_SOURCE = 64  # ... of a source grid at most this many px on its longer side (finer grids frame well as they are)
ENLARGED_SIDE = 112  # the source grid is enlarged to this many px on the picture's longer side
ENLARGE = Image.Resampling.LANCZOS  # read slightly better than bilinear or bicubic on blocky 8x8 MNIST digits
PRECHECK_STEP = 8  # columns are first compared on every 8th row only: any difference there rules blocks out


def _runs(changes: np.ndarray) -> np.ndarray:
    """Lengths of the runs of identical lines, from `changes[j]`: line j+1 differs from line j."""
    edges = np.flatnonzero(changes) + 1
    return np.diff(np.concatenate([[0], edges, [len(changes) + 1]]))


def _changes(a: np.ndarray, axis: int) -> np.ndarray:
    """Whether each column (axis=1) or row (axis=0) of `a` differs from the previous one, in any channel."""
    d = np.diff(a, axis=axis) != 0
    other = tuple(k for k in range(d.ndim) if k != axis)
    return d.any(axis=other)


def _block(runs: np.ndarray, total: int) -> float | None:
    """The largest block size s >= MIN_BLOCK (total / n for a whole n) with every edge between runs at a multiple
    of s, within the half pixel that rounding moves an edge (PIL, most tools), else within the one pixel that
    truncating does; None when there is none or the grid is finer than MAX_SOURCE px."""
    if len(runs) < MIN_RUNS or runs.min() < MIN_BLOCK:
        return None
    n = np.arange(2, min(MAX_SOURCE, int(total / MIN_BLOCK)) + 1)
    s = total / n[:, None]
    edges = np.cumsum(runs)[None, :-1]
    off = np.abs(edges - np.round(edges / s) * s).max(axis=1)
    for tolerance in (0.5 + 1e-6, 1 - 1e-6):
        if (off <= tolerance).any():
            return float(total / n[np.argmax(off <= tolerance)])
    return None


def source_grid(a: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows and columns, one inside each block, of the source pixels of a nearest-neighbour upscale `a` ((H, W)
    or (H, W, C)), so that `a[rows][:, cols]` is the source; None when `a` is not one."""
    h, w = a.shape[:2]
    for axis, sample in ((1, a[::PRECHECK_STEP]), (0, a[:, ::PRECHECK_STEP])):
        if _runs(_changes(sample, axis)).min() < MIN_BLOCK:
            return None
    sx = _block(_runs(_changes(a, 1)), w)
    sy = _block(_runs(_changes(a, 0)), h) if sx is not None else None
    if sx is None or sy is None:
        return None
    rows = np.minimum(((np.arange(round(h / sy)) + 0.5) * sy).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(round(w / sx)) + 0.5) * sx).astype(np.int64), w - 1)
    return rows, cols


def _target(size: tuple[int, int]) -> tuple[tuple[int, int], float]:
    w, h = size
    k = ENLARGED_SIDE / max(w, h)
    return (max(1, round(w * k)), max(1, round(h * k))), k


def restore(im: Image.Image) -> tuple[Image.Image, float]:
    """`im` as a smooth picture when it is a nearest-neighbour upscale or tiny, with its scale (new px per px
    of `im`); `im` itself and 1.0 otherwise. Modes L, LA, RGB and RGBA (PIL enlarges RGBA premultiplied)."""
    if max(im.size) < TINY_SIDE:
        size, k = _target(im.size)
        return im.resize(size, ENLARGE), k
    a = np.asarray(im)
    grid = source_grid(a)
    if grid is None:
        return im, 1.0
    rows, cols = grid
    small = Image.fromarray(np.ascontiguousarray(a[rows][:, cols]), im.mode)
    size, k = _target(im.size)
    return small.resize(size, ENLARGE), k


def restore_array(g: np.ndarray) -> tuple[np.ndarray, float]:
    """`restore` for a float32 greyscale array (H, W)."""
    src = Image.fromarray(np.ascontiguousarray(g, dtype=np.float32), "F")
    im, k = restore(src)
    return (g, 1.0) if im is src else (np.asarray(im, dtype=np.float32), k)
