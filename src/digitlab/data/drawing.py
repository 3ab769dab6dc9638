"""Digits drawn as people send them: the centre line re-traced with a round pen, placed on a canvas, exported.

The building blocks of the MNIST-derived real-world sets (`digitlab.data.synth`): image i of a set depends only
on the set's seed and i (`item_rng`), so a small `n` gives the first images of a large one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from digitlab.core.errors import DataError
from digitlab.data.datasets import Split
from digitlab.data.measure import stroke_width
from digitlab.data.pixels import resize
from digitlab.data.realworld import RealWorldSet, Source, export_u8

CANVAS_SIDE = 280
RESTROKE_LEVEL = 0.4  # the shape whose centre line is re-drawn: the enlarged digit above this share of its peak


def item_rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, i])


def pick_digits(split: Split, n: int, seed: int) -> np.ndarray:
    if split.labels is None:
        raise DataError("the split has no labels")
    if not 0 < n <= len(split):
        raise DataError(f"n must be in 1..{len(split)}, not {n}")
    return np.random.default_rng([seed, 0x5E7]).permutation(len(split))[:n]


def crop_ink(a: np.ndarray, level: float = 0.0, pad: int = 0) -> np.ndarray:
    ys, xs = np.nonzero(a > level)
    y0, y1 = max(0, ys.min() - pad), min(a.shape[0], ys.max() + 1 + pad)
    x0, x1 = max(0, xs.min() - pad), min(a.shape[1], xs.max() + 1 + pad)
    return a[y0:y1, x0:x1]


# Zhang-Suen: a pixel goes only if one of these neighbour triples (p2, p4, p6 ... as indices 0..7) has a 0.
ZS_GUARDS = (((0, 2, 4), (2, 4, 6)), ((0, 2, 6), (0, 4, 6)))


def _skeleton(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide, connected centre lines of a binary shape (Zhang-Suen thinning, vectorised)."""
    img = np.pad(mask, 1).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            c = img[1:-1, 1:-1]
            # neighbours p2..p9, clockwise from north
            p = [img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:],
                 img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]]  # fmt: skip
            b = sum(q.astype(np.int8) for q in p)
            a = sum(((p[k] == 0) & (p[(k + 1) % 8] == 1)).astype(np.int8) for k in range(8))
            first, second = ZS_GUARDS[step]
            keep = (p[first[0]] & p[first[1]] & p[first[2]]) | (p[second[0]] & p[second[1]] & p[second[2]])
            remove = (c == 1) & (b >= 2) & (b <= 6) & (a == 1) & (keep == 0)
            if remove.any():
                c[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def redraw(digit: np.ndarray, height: float, aspect: float, angle: float, pen: float) -> np.ndarray:
    """Ink coverage (float32 in [0, 1], cropped) of an MNIST digit re-drawn with a round pen `pen` px wide.

    The digit is enlarged to `height` px (its width times `aspect`) and rotated by `angle` degrees; its
    centre line (the skeleton of the enlarged shape) is then traced with the pen, whose edge is anti-aliased
    over one pixel, as a browser canvas strokes a path. Where the digit is much thicker than its typical
    stroke (loops filled in, blots), the shape grown or shrunk by the difference between pen and typical
    stroke is kept as well: a small loop must not become a line, or a 9 would turn into a 1.
    """
    g = crop_ink(digit.astype(np.float32) / 255, 0.1)
    k = height / g.shape[0]
    pad = np.pad(g, 2)
    big = resize(pad, (max(1, round(pad.shape[1] * k * aspect)), max(1, round(pad.shape[0] * k))),
                  Image.Resampling.BICUBIC)  # fmt: skip
    big = np.asarray(Image.fromarray(big).rotate(angle, Image.Resampling.BICUBIC, expand=True), np.float32)
    big = ndi.gaussian_filter(big, k / 3)  # rounder outlines: fewer spurs on the centre line
    margin = int(np.ceil(pen / 2)) + 2
    mask = np.pad(big > RESTROKE_LEVEL * float(big.max()), margin)
    skeleton = _skeleton(mask)
    pen_cov = np.clip(pen / 2 + 0.5 - ndi.distance_transform_edt(~skeleton), 0, 1)
    inside = ndi.distance_transform_edt(mask) - ndi.distance_transform_edt(~mask)  # signed: > 0 inside
    grow = (pen - stroke_width(mask.astype(np.float32))) / 2
    shape_cov = np.clip(inside + grow + 0.5, 0, 1)
    # Distances on a pixel grid take few distinct values near the edge; a slight blur gives the smooth
    # coverage ramp of a canvas's anti-aliasing.
    return crop_ink(ndi.gaussian_filter(np.maximum(pen_cov, shape_cov).astype(np.float32), 0.5))


def place(cov: np.ndarray, size: tuple[int, int], rng: np.random.Generator, margin: int = 3) -> np.ndarray:
    """Paste coverage at a random position on an empty (H, W) = `size` canvas, shrinking it if it is too big."""
    H, W = size
    h, w = cov.shape
    fit = min(1.0, (H - 2 * margin) / h, (W - 2 * margin) / w)
    if fit < 1:
        cov = np.clip(resize(cov, (max(1, int(w * fit)), max(1, int(h * fit))), Image.Resampling.BOX), 0, 1)
        h, w = cov.shape
    y = int(rng.integers(margin, H - margin - h + 1))
    x = int(rng.integers(margin, W - margin - w + 1))
    out = np.zeros(size, np.float32)
    out[y : y + h, x : x + w] = cov
    return out


def export_canvas(cov: np.ndarray, mode: str) -> np.ndarray:
    """Coverage in [0, 1] -> the uint8 array a canvas export decodes to, for one of CANVAS_MODES."""
    return export_u8(np.round(np.clip(cov, 0, 1) * 255).astype(np.uint8), mode)


def param_columns(rows: list[dict[str, float]]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in rows], np.float32) for k in rows[0]} if rows else {}


Draw = Callable[[np.ndarray, np.random.Generator, int], tuple[Source, str, dict[str, float]]]


def digit_set(name: str, split: Split, n: int, seed: int, draw: Draw) -> RealWorldSet:
    """`n` digits of `split` (a seeded, class-balanced pick), each re-made by `draw(image, rng, i)` ->
    (source, kind, params) with its own generator `item_rng(seed, i)`: the loop every MNIST-derived set shares."""
    idx = pick_digits(split, n, seed)
    images, kinds, rows = [], [], []
    for i, j in enumerate(idx):
        data, kind, p = draw(split.images[j], item_rng(seed, i), i)
        images.append(data)
        kinds.append(kind)
        rows.append(p)
    return RealWorldSet(name, images, split.labels[idx].astype(np.int64), np.array(kinds),
                        np.array([f"mnist-test:{j}" for j in idx]), param_columns(rows))  # fmt: skip
