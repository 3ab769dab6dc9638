"""Measures of cleaned ink: stroke width, its box and pieces, and whether anything digit-like is there at all."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from digitlab.core.errors import ImageError
from digitlab.data.pixels import EIGHT_CONNECTED, Box, ink_box, max3x3, resize

MIN_CONTRAST = 0.08  # ink fainter than this against the paper is not ink (sensor noise, paper texture)
SW_SIDE = 96  # ink_stats measures the stroke width on a copy shrunk to this many px when the ink is bigger
SW_MIN_PX = 10.0  # ... but no further than to strokes this wide

# --- "empty" detection, so the model is not asked to classify a blank canvas or a stray mark.
EMPTY_MIN_SIDE_PX = 3
EMPTY_MIN_SIDE_FRAC = 0.04  # ink box's longer side vs the image's shorter side
EMPTY_MIN_FRACTION = 0.0005  # ink pixels vs the square of the image's shorter side
DIGIT_MIN_PX = 16  # ... but a mark this many source px long is never too small: a small digit on a big page
DOT_RATIO = 2.0  # a mark no longer than this many stroke widths is a dot (a blob has no strokes)
DOT_MAX_FRAC = 0.5  # ... when it is also shorter than this share of the picture: a digit-sized blob (a fat
# marker filling every loop) goes to the model, which may say "not a digit", instead of being called empty
LINE_STRAIGHT = 0.2  # minor/major spread of the ink below this: a straight stroke
LINE_MAX_TILT = 60.0  # a straight stroke tilted more than this from vertical is a line, not a "1"


def stroke_width(image: np.ndarray) -> float:
    """Typical stroke width in pixels of a white-on-black image: twice the ink depth along centre lines."""
    a = np.asarray(image, dtype=np.float32)
    top = float(a.max()) if a.size else 0.0
    if top <= 0:
        return 0.0
    return _mask_stroke_width(a >= 0.5 * top)  # half-maximum: the anti-aliased edge counts half, as coverage would


def _mask_stroke_width(mask: np.ndarray) -> float:
    box = ink_box(mask)
    if box is None:
        return 0.0
    x0, y0, x1, y1 = box
    return _crop_stroke_width(mask[y0:y1, x0:x1], _ring(box, mask.shape))


def _ring(box: Box, shape: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding that puts a background ring around `box` except where it touches the image's edge."""
    x0, y0, x1, y1 = box
    return (int(y0 > 0), int(y1 < shape[0])), (int(x0 > 0), int(x1 < shape[1]))


def _crop_stroke_width(crop: np.ndarray, ring: tuple[tuple[int, int], tuple[int, int]]) -> float:
    """Stroke width of a mask cropped to (a box around) its ink; `ring` pads it as `_ring` says.

    The distance transform costs O(pixels), hence the crop. It is exact: every pixel outside the box is
    background, so the nearest background of a pixel inside is inside or on the ring; beyond the image's
    edge the transform sees no background, hence no ring there.
    """
    if not crop.any():
        return 0.0
    (top, bottom), (left, right) = ring
    h, w = crop.shape
    m = np.zeros((h + top + bottom, w + left + right), bool)  # np.pad, without its ~20 us of Python
    m[top : top + h, left : left + w] = crop
    depth = ndi.distance_transform_edt(m)
    ridge = m & (depth >= max3x3(depth))
    # A stroke w px wide has centre depth (w+1)/2 for odd w and w/2 for even w; -0.5 splits the difference.
    return float(max(2 * depth[ridge].mean() - 0.5, 0.0))


def _quick_stroke_width(a: np.ndarray, box: Box) -> float:
    """stroke_width of `a` with its ink in `box`; measured on a copy shrunk to SW_SIDE px when the box is bigger."""
    x0, y0, x1, y1 = box
    crop = a[y0:y1, x0:x1]
    top = float(crop.max())
    mask = crop >= 0.5 * top
    h, w = crop.shape
    if max(h, w) > SW_SIDE:
        # Shrink by at most enough to fit SW_SIDE, and only so far that strokes stay >= SW_MIN_PX wide, judged
        # by the mask's area over half its perimeter (a stroke w wide and L long: wL / L).
        edges = np.count_nonzero(mask[1:] != mask[:-1]) + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
        k = max(SW_SIDE / max(h, w), SW_MIN_PX * edges / (2 * max(1, np.count_nonzero(mask))))
        if k < 0.75:
            nw, nh = max(1, round(w * k)), max(1, round(h * k))
            small = resize(crop, (nw, nh), Image.Resampling.BOX)
            return _crop_stroke_width(small >= 0.5 * top, _ring(box, a.shape)) * (w + h) / (nw + nh)
    return _crop_stroke_width(mask, _ring(box, a.shape))


@dataclass(frozen=True)
class InkStats:
    """What is on the image, measured after cleanup; `status` is "empty" when nothing digit-like is there."""

    status: str  # "ok" | "empty"
    reason: str  # why "empty" ("" when ok)
    ink_fraction: float  # share of the image's pixels that carry ink
    n_components: int  # 8-connected pieces of ink
    bbox: Box | None  # ink bounding box, (x0, y0, x1, y1)
    bbox_size: tuple[int, int]  # (width, height) of bbox
    stroke_width: float  # pixels
    contrast: float  # ink above paper as a fraction of the available range (0 = invisible, 1 = full)


def ink_stats(ink: np.ndarray, *, contrast: float = 1.0) -> InkStats:
    """Measure a cleaned white-on-black image (float in [0, 1] or uint8) and decide whether it is empty.

    Empty: no ink or too faint, a mark shorter than DIGIT_MIN_PX that is also tiny next to the picture (box or
    area), a dot (no longer than two stroke widths, and under half the picture), or one
    straight stroke tilted more than LINE_MAX_TILT degrees from vertical (a line, not a digit; an upright one is a 1).
    """
    a = np.asarray(ink, dtype=np.float32)
    if a.ndim != 2:
        raise ImageError(f"expected a 2-D image, got shape {a.shape}")
    if np.asarray(ink).dtype == np.uint8:
        a = a / 255
    return ink_stats_of(a, contrast, None)


def ink_stats_of(a: np.ndarray, contrast: float, n_comp: int | None, scale: float = 1.0) -> InkStats:
    """ink_stats of float `a`; `n_comp`, when known, is its number of 8-connected components; `scale`: px of `a`
    per source px."""
    h, w = a.shape
    mask = a > 0
    box = ink_box(mask)
    if box is None or contrast < MIN_CONTRAST:
        return InkStats("empty", "no ink", 0.0, 0, None, (0, 0), 0.0, float(contrast))
    # Everything after this looks at the ink's box only: all ink (and so every component) lies inside it.
    x0, y0, x1, y1 = box
    crop, cmask = a[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    if n_comp is None:
        _, n_comp = ndi.label(cmask, structure=EIGHT_CONNECTED)
    n_ink = int(np.count_nonzero(cmask))
    bw, bh = x1 - x0, y1 - y0
    sw = _quick_stroke_width(a, box)
    longer, short_side = max(bw, bh), min(h, w)
    reason = ""
    small = longer < DIGIT_MIN_PX * scale  # relative to the picture only below a digit's size in the source
    if longer < EMPTY_MIN_SIDE_PX or (small and longer < EMPTY_MIN_SIDE_FRAC * short_side):
        reason = "ink too small"
    elif small and n_ink < EMPTY_MIN_FRACTION * short_side**2:
        reason = "too little ink"
    elif longer <= DOT_RATIO * sw and longer < DOT_MAX_FRAC * short_side:
        reason = "a single dot"
    elif n_ink >= 3 and _is_tilted_line(crop):
        reason = "a single line"
    return InkStats(
        "empty" if reason else "ok", reason, n_ink / (h * w), int(n_comp), box, (bw, bh), sw, float(contrast)
    )


def _is_tilted_line(weights: np.ndarray) -> bool:
    """Whether the ink, `weights` (a crop: 0 off the ink), is one straight stroke tilted from vertical."""
    # The ink-weighted 2x2 covariance of the pixel coordinates from the crop's row and column sums, and its
    # eigen-decomposition in closed form: no per-pixel coordinate lists, no np.cov / eigh call overhead.
    # Its scale does not matter: only ratios and directions are used.
    w = weights.astype(np.float64)
    cols, rows = w.sum(axis=0), w.sum(axis=1)
    total = float(cols.sum())
    dx = np.arange(w.shape[1], dtype=np.float64)
    dx -= float(cols @ dx) / total
    dy = np.arange(w.shape[0], dtype=np.float64)
    dy -= float(rows @ dy) / total
    sxx, syy, sxy = float(cols @ (dx * dx)), float(rows @ (dy * dy)), float(dy @ w @ dx)
    half_sum, root = (sxx + syy) / 2, math.hypot((sxx - syy) / 2, sxy)
    minor, major = math.sqrt(max(half_sum - root, 0.0)), math.sqrt(max(half_sum + root, 0.0))
    if major == 0 or minor > LINE_STRAIGHT * major:
        return False
    angle = 0.5 * math.atan2(2 * sxy, sxx - syy)  # the main direction, from the x axis
    tilt = math.degrees(math.atan2(abs(math.cos(angle)), abs(math.sin(angle))))  # 0 = vertical
    return tilt > LINE_MAX_TILT
