"""MNIST framing: cleaned ink cropped, thinned when a fat pen drew it, fitted to 20x20 and centred in 28x28."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from digitlab.data.clean import NOISE_FLOOR
from digitlab.data.measure import stroke_width
from digitlab.data.pixels import ink_box, max3x3, resize

# MNIST geometry: digits were fitted into 20x20 keeping the aspect ratio, then pasted into 28x28 with their
# centre of mass at pixel (14, 14) (the mean over the MNIST test set is (13.99, 14.00)).
# their centre of mass at pixel (14, 14) (the mean over the MNIST test set is (13.99, 14.00)).
SIDE = 28
BOX_SIDE = 20
CENTRE = 14.0

# Thick pens. MNIST strokes are ~2.1 px wide (median; 95th percentile 3.7) at 20 px digit height.
THIN_ABOVE = 4.0
THIN_TARGET = 2.5

# The fast path for input already in MNIST format (`is_mnist_format`).
FAST_MIN_PEAK = 250
FAST_MIN_SIDE = 19
FAST_CENTRE_TOL = 1.0
_INDEX = np.arange(SIDE, dtype=np.float64)


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx**2 + yy**2 <= r * r + r  # +r: a rounder disk than the strict circle at small radii


def crop_to_ink(x: np.ndarray) -> np.ndarray:
    box = ink_box(x != 0)
    if box is None:
        raise ValueError("no ink to crop to")
    x0, y0, x1, y1 = box
    return x[y0:y1, x0:x1]


def _thin(crop: np.ndarray) -> np.ndarray:
    longer = max(crop.shape)
    if stroke_width(crop) * BOX_SIDE / longer <= THIN_ABOVE:
        return crop
    # Erode at 4x the output scale: cheap, and still finer than one output pixel.
    k = 4 * BOX_SIDE / longer
    if k < 1:
        h, w = crop.shape
        crop = resize(crop, (max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BOX)
        longer = max(crop.shape)
    radius = round((stroke_width(crop) - THIN_TARGET * longer / BOX_SIDE) / 2)
    if radius < 1:
        return crop
    # Erosion alone would erase every stroke narrower than the eroding disk (pens vary, arcs come out
    # thinner), so each stroke's centre line, grown to the target width, is kept whatever the erosion does.
    mask = crop >= 0.5 * float(crop.max())
    depth = ndi.distance_transform_edt(mask)
    ridge = mask & (depth >= max3x3(depth))
    half = max(1, round(THIN_TARGET * longer / BOX_SIDE / 2))
    guard = ndi.binary_dilation(ridge, structure=_disk(half))
    thinned = np.maximum(ndi.grey_erosion(crop, footprint=_disk(radius)), np.where(guard, crop, 0))
    thinned[thinned < NOISE_FLOOR * float(crop.max())] = 0
    return crop_to_ink(thinned) if thinned.any() else crop


def _centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of mass of float `a`: `ndi.center_of_mass` without its call overhead, same sums."""
    mass = a.sum()
    rows = np.arange(a.shape[0], dtype=np.float64)[:, None]
    cols = np.arange(a.shape[1], dtype=np.float64)[None, :]
    return float((a * rows).sum() / mass), float((a * cols).sum() / mass)


def frame_ink(x: np.ndarray, thin: bool = False) -> np.ndarray:
    """Ink coverage (float, any size, ink > 0) -> a 28x28 uint8 digit framed as MNIST framed them: cropped to the
    ink, the longer side fitted to 20 px, pasted into 28x28 with the centre of mass at (14, 14)."""
    out = np.zeros((SIDE, SIDE), np.float32)
    if not x.any():
        return out.astype(np.uint8)
    crop = crop_to_ink(x)
    if thin:
        crop = _thin(crop)
    h, w = crop.shape
    longer = max(h, w)
    nw, nh = max(1, round(w * BOX_SIDE / longer)), max(1, round(h * BOX_SIDE / longer))
    # BOX averages ink coverage when shrinking (MNIST's anti-aliasing); BILINEAR avoids blocks when growing.
    resample = Image.Resampling.BOX if longer >= BOX_SIDE else Image.Resampling.BILINEAR
    small = np.clip(resize(crop, (nw, nh), resample), 0, None)
    cy, cx = _centre_of_mass(small)
    # Integer placement, as MNIST did (sub-pixel shifts blur); clamped so the whole digit stays in frame.
    oy = int(np.clip(round(CENTRE - cy), 0, SIDE - nh))
    ox = int(np.clip(round(CENTRE - cx), 0, SIDE - nw))
    out[oy : oy + nh, ox : ox + nw] = small
    if out.max() <= 0:
        return out.astype(np.uint8)
    out *= 255 / float(out.max())
    return np.round(out).astype(np.uint8)


def is_mnist_format(image: np.ndarray) -> bool:
    """Whether `image` is already a digit as MNIST made them, which `preprocess` then need not re-frame.

    All of these must hold (every one of MNIST's 70,000 digits meets the last four; 98.9% have the border):

    - uint8, 28x28 (one channel: a greyscale file, or an array);
    - the outermost row and column on every side are 0: a black background with no ink touching the edge,
      so the ink is the light side and there is no paper to flatten;
    - the brightest pixel is at least FAST_MIN_PEAK (MNIST's digits reach 254 or 255): no contrast to stretch;
    - the box around the non-zero pixels is FAST_MIN_SIDE (19) or 20 px on its longer side: fitted to
      20x20 as MNIST's were (a smaller digit is enlarged by the general path; a bigger one does not fit);
    - its centre of mass is within FAST_CENTRE_TOL (1 px) of (14, 14) on both axes (MNIST's are within
      0.5 px; the models are trained with shifts of up to 2.8 px).
    """
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.shape != (SIDE, SIDE):
        return False
    if a[0].any() or a[-1].any() or a[:, 0].any() or a[:, -1].any() or a.max() < FAST_MIN_PEAK:
        return False
    row_mass, col_mass = a.sum(axis=1, dtype=np.int64), a.sum(axis=0, dtype=np.int64)
    rows, cols = np.flatnonzero(row_mass), np.flatnonzero(col_mass)
    longer = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    if not FAST_MIN_SIDE <= longer <= BOX_SIDE:
        return False
    mass = float(row_mass.sum())
    cy, cx = float(row_mass @ _INDEX) / mass, float(col_mass @ _INDEX) / mass
    return abs(cy - CENTRE) <= FAST_CENTRE_TOL and abs(cx - CENTRE) <= FAST_CENTRE_TOL
