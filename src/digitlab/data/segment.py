"""Segmentation of a number written on one line: its digits left to right, each framed as `preprocess` does."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from digitlab.data.clean import load_gray, prepare
from digitlab.data.decode import DEFAULT_PIXEL_LIMIT, ImageSource
from digitlab.data.frame import frame_ink
from digitlab.data.measure import ink_stats
from digitlab.data.pixels import EIGHT_CONNECTED, Box
from digitlab.data.preprocess import Preprocessed, in_source_pixels

SEG_MERGE_OVERLAP = 0.5  # merge components whose x-ranges overlap by this share of the narrower one
SEG_SPLIT_ASPECT = 1.3  # a group wider than this times its height holds touching digits (MNIST digits <= 1.0)
SEG_MIN_HEIGHT = 0.3  # groups shorter than this share of the tallest (dots, dashes) are not digits


def segment_digits(
    source: ImageSource, *, pixel_limit: int = DEFAULT_PIXEL_LIMIT, thin: bool = False
) -> list[tuple[Box, Preprocessed]]:
    """Split a number written on one line into digits, left to right, each with its box in source pixels.

    Components of the ink are merged when they overlap strongly in x (broken strokes) and split at the
    least-ink path near the middle when much wider than tall (touching digits). Marks shorter than 30% of
    the tallest group (dots, dashes) are dropped; each digit carries its own status and stats.
    """
    g, scale, size = load_gray(source, pixel_limit, smooth=True)
    prep = prepare(g, scale)
    x = prep.ink
    lab, n = ndi.label(x > 0, structure=EIGHT_CONNECTED)
    if n == 0:
        return []
    objs = ndi.find_objects(lab)
    # (labels, [x0, y0, x1, y1]) per component, left to right
    comps = [([i + 1], [s[1].start, s[0].start, s[1].stop, s[0].stop]) for i, s in enumerate(objs) if s]
    comps.sort(key=lambda c: c[1][0])
    groups: list[tuple[list[int], list[int]]] = []
    for labels, box in comps:
        if groups:
            last = groups[-1][1]
            overlap = min(last[2], box[2]) - max(last[0], box[0])
            if overlap >= SEG_MERGE_OVERLAP * min(last[2] - last[0], box[2] - box[0]):
                groups[-1][0].extend(labels)
                last[:] = [*np.minimum(last[:2], box[:2]).tolist(), *np.maximum(last[2:], box[2:]).tolist()]
                continue
        groups.append((labels, box))

    parts: list[np.ndarray] = []  # each: the group's ink alone, full working size
    for labels, (x0, _, x1, _) in groups:
        only = np.where(np.isin(lab, labels), x, 0).astype(np.float32)
        parts.extend(_split(only, x0, x1))
    heights = [int(np.ptp(np.nonzero(p.any(axis=1))[0])) + 1 for p in parts]
    tallest = max(heights)
    result = []
    for part, height in zip(parts, heights, strict=True):
        if height < SEG_MIN_HEIGHT * tallest:
            continue
        stats = in_source_pixels(ink_stats(part, contrast=prep.contrast), prep.scale, size)
        box = stats.bbox or (0, 0, 0, 0)  # never None: a part always holds ink
        result.append((box, Preprocessed.build(frame_ink(part, thin), stats, stats.bbox_size)))
    result.sort(key=lambda r: r[0][0])
    return result


def _split(ink: np.ndarray, x0: int, x1: int) -> list[np.ndarray]:
    """Recursively cut one group's ink (columns x0:x1) along the least-ink path while it is too wide."""
    sub = ink[:, x0:x1]
    rows, cols = np.nonzero(sub.any(axis=1))[0], np.nonzero(sub.any(axis=0))[0]
    if rows.size == 0:
        return []
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, x0 + int(cols[0]), x0 + int(cols[-1]) + 1
    height, width = y1 - y0, x1 - x0
    if width <= SEG_SPLIT_ASPECT * height or width < 4:
        return [ink]
    sub = ink[y0:y1, x0:x1]
    path = _cut_path(sub)
    left_of_path = np.arange(width)[None, :] < path[:, None]
    left, right = np.zeros_like(ink), np.zeros_like(ink)
    left[y0:y1, x0:x1] = np.where(left_of_path, sub, 0)
    right[y0:y1, x0:x1] = np.where(left_of_path, 0, sub)
    if not left.any() or not right.any():
        return [ink]
    return _split(left, x0, x0 + int(path.max())) + _split(right, x0 + int(path.min()), x1)


def _cut_path(sub: np.ndarray) -> np.ndarray:
    """Column per row of the top-to-bottom path through the middle half of `sub` that crosses the least ink.

    A straight column would cut through a digit wherever it has one thin stroke and miss the gap between two
    digits whose boxes overlap; a path that may step one column per row goes around their ink instead.
    """
    h, w = sub.shape
    lo = int(0.25 * w)
    hi = max(int(0.75 * w), lo + 1)
    cols = np.arange(lo, hi)
    # A weak pull to the middle breaks ties (digits are about equally wide); it never outweighs a stroke.
    prior = 0.5 / h * np.abs(cols - w / 2) / max(1.0, 0.25 * w)
    cost = sub[:, lo:hi] / max(float(sub.max()), 1e-6) + prior
    acc = cost[0].copy()
    back = np.zeros(cost.shape, np.int64)
    idx = np.arange(hi - lo)
    for r in range(1, h):
        steps = np.stack([np.r_[np.inf, acc[:-1]], acc, np.r_[acc[1:], np.inf]])  # from c-1, c, c+1
        k = np.argmin(steps, axis=0)
        acc = cost[r] + steps[k, idx]
        back[r] = idx + k - 1
    path = np.empty(h, np.int64)
    path[-1] = int(np.argmin(acc))
    for r in range(h - 1, 0, -1):
        path[r - 1] = back[r, path[r]]
    return path + lo
