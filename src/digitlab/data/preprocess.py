"""Turn any user image into a 28x28 MNIST-style digit, the way MNIST itself was made.

The steps, one module each: `decode` (any source to grey), `clean` (paper, polarity, contrast, noise), `measure`
(stroke width, "empty"), `frame` (fit and centre in 28x28); `segment` splits a number into its digits. A blocky
upscale or a tiny image is made smooth first (`lowres`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from digitlab.core.errors import ImageError
from digitlab.data.clean import clean_ink, gray_of, light_background, load_gray, prepare
from digitlab.data.decode import DEFAULT_PIXEL_LIMIT, ImageSource, load_image
from digitlab.data.frame import BOX_SIDE, SIDE, THIN_ABOVE, crop_to_ink, frame_ink, is_mnist_format
from digitlab.data.lowres import restore, restore_array
from digitlab.data.measure import InkStats, ink_stats_of, stroke_width
from digitlab.data.pixels import Box, resize, to_u8, unit_float

__all__ = ["Preprocessed", "naive_resize", "preprocess", "preprocess_array"]

# A first, cheaper pass works at this size (a 280x280 canvas: 5x fewer float pixels after the PNG decode); it is
# kept when the ink's box is at least COARSE_MIN_INK px there (~3x the 20 px the digit is shrunk to), else the
# image is done again at full working size (a small digit on a big photo).
# A first, cheaper pass works at this size (a 280x280 canvas: 5x fewer float pixels after the PNG decode); it is
# kept when the ink's box is at least COARSE_MIN_INK px there (~3x the 20 px the digit is shrunk to), else the
# image is done again at WORK_PIXELS (a small digit on a big photo).
COARSE_PIXELS = 128 * 128
COARSE_MIN_INK = 56


def _fast_path(a: np.ndarray, thin: bool, copy: bool) -> Preprocessed | None:
    """`a` (uint8 28x28) as its own model input when it is in MNIST format, with the statistics the general
    path would measure; None when the general path must run (not MNIST format, specks to remove, or a fat
    pen to thin)."""
    if not is_mnist_format(a):
        return None
    # The general path's cleanup, minus what cannot apply to a black border (polarity, uneven paper): the
    # same ink, so the same statistics and the same "empty" verdict.
    prep = clean_ink(unit_float(a), 1.0)
    if prep.specks:
        return None  # the general path would erase them; the model must not see them
    if thin and prep.ink.any():
        crop = crop_to_ink(prep.ink)
        if stroke_width(crop) * BOX_SIDE / max(crop.shape) > THIN_ABOVE:
            return None  # as `_thin` decides: a fat pen, which the general path slims
    stats = ink_stats_of(prep.ink, prep.contrast, prep.n_components)
    return Preprocessed.build(a.copy() if copy else a, stats, (SIDE, SIDE))


@dataclass(frozen=True, eq=False)
class Preprocessed:
    """A model-ready digit: `image` is meaningful only when `status` is "ok"."""

    image: np.ndarray  # uint8 (28, 28), white ink on black, read-only
    status: str  # "ok" | "empty"
    stats: InkStats  # in source pixels
    source_size: tuple[int, int]  # (width, height) of the input

    @classmethod
    def build(cls, image: np.ndarray, stats: InkStats, size: tuple[int, int]) -> Preprocessed:
        """The result for framed `image` (made read-only) with its `stats` and the source's `size`."""
        image.setflags(write=False)
        return cls(image, stats.status, stats, size)


def in_source_pixels(stats: InkStats, scale: float, size: tuple[int, int]) -> InkStats:
    """Stats measured at working resolution, with bbox and stroke width converted to source pixels."""
    if stats.bbox is None:
        return stats
    box = _box_to_source(stats.bbox, scale, size)
    return replace(
        stats, bbox=box, bbox_size=(box[2] - box[0], box[3] - box[1]), stroke_width=stats.stroke_width / scale
    )


def _box_to_source(box: Box, scale: float, size: tuple[int, int]) -> Box:
    w, h = size
    x0, y0, x1, y1 = box
    return (
        max(0, math.floor(x0 / scale)),
        max(0, math.floor(y0 / scale)),
        min(w, math.ceil(x1 / scale)),
        min(h, math.ceil(y1 / scale)),
    )


def _as_gray(gray: np.ndarray) -> np.ndarray:
    a = np.asarray(gray)
    if a.ndim != 2 or a.size == 0:
        raise ImageError(f"expected a 2-D greyscale array, got shape {a.shape}")
    if a.dtype in (np.uint8, np.uint16):
        f = a.astype(np.float32)
        f /= np.iinfo(a.dtype).max
        return f
    if a.dtype != bool and not np.issubdtype(a.dtype, np.floating):
        raise ImageError(f"greyscale array must be float in [0, 1], uint8 or uint16, not {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ImageError("array contains NaN or infinity")
    if a.min() < -1e-3 or a.max() > 1 + 1e-3:  # 0..255 floats would otherwise all clip to white
        raise ImageError(f"float array values must be in [0, 1], got {a.min():.4g}..{a.max():.4g}")
    return np.clip(a, 0, 1)


def preprocess_array(gray: np.ndarray, *, thin: bool = False, fast: bool = True) -> Preprocessed:
    """Preprocess a greyscale array (float in [0, 1], uint8 or uint16; any polarity) into an MNIST digit.

    `fast`: a uint8 array already in MNIST format is passed through as it is (see `preprocess`).
    """
    if fast and isinstance(gray, np.ndarray):  # `_fast_path` checks dtype, shape and the rest
        done = _fast_path(gray, thin, copy=True)
        if done is not None:
            return done
    g = _as_gray(gray)
    if g.size > COARSE_PIXELS:  # the two passes, as `preprocess` does them: in 8 bits, through PIL
        return _preprocess_image(Image.fromarray(to_u8(g)), thin)
    smooth, k = restore_array(g)
    return _preprocess_gray(smooth, k, (g.shape[1], g.shape[0]), thin)


def _preprocess_gray(g: np.ndarray, scale: float, size: tuple[int, int], thin: bool) -> Preprocessed:
    prep = prepare(g, scale)
    stats = ink_stats_of(prep.ink, prep.contrast, prep.n_components, prep.scale)
    stats = in_source_pixels(stats, prep.scale, size)
    return Preprocessed.build(frame_ink(prep.ink, thin), stats, size)


def preprocess(
    source: ImageSource, *, pixel_limit: int = DEFAULT_PIXEL_LIMIT, thin: bool = False, fast: bool = True
) -> Preprocessed:
    """Load any supported image and turn it into a 28x28 MNIST-style digit; bad input raises ImageError.

    `thin` erodes strokes thicker than ~4 px at 20 px digit height (fat markers) towards MNIST's ~2.5 px.

    `fast`: an image that is already an MNIST digit (`is_mnist_format`: 28x28 greyscale, light ink on black,
    fitted and centred as MNIST's were) is passed to the model as it is, not re-framed: that is how MNIST
    itself was made, so re-framing could only move it by a pixel or drop its faintest anti-aliasing. Its
    cleanup and statistics, and so its "empty" verdict, are the same as without `fast`.
    """
    im = load_image(source, pixel_limit=pixel_limit)
    if fast and im.mode == "L" and im.size == (SIDE, SIDE):
        done = _fast_path(np.asarray(im), thin, copy=False)
        if done is not None:
            return done
    return _preprocess_image(im, thin)


def _preprocess_image(im: Image.Image, thin: bool) -> Preprocessed:
    """The general path for a loaded image: a coarse pass first, the full one when its digit came out small.
    A blocky upscale or a tiny image is made smooth first (`lowres.restore`)."""
    size = im.size
    im, k = restore(im)
    if im.width * im.height > COARSE_PIXELS:
        g, scale, _ = gray_of(im, COARSE_PIXELS)
        coarse = _preprocess_gray(g, scale * k, size, thin)
        if coarse.status == "ok" and max(coarse.stats.bbox_size) * scale * k >= COARSE_MIN_INK:
            return coarse
    g, scale, _ = gray_of(im)
    return _preprocess_gray(g, scale * k, size, thin)


def naive_resize(source: ImageSource, *, pixel_limit: int = DEFAULT_PIXEL_LIMIT) -> np.ndarray:
    """The usual demo baseline: greyscale, white-on-black, squashed to 28x28 (uint8). For comparisons."""
    g, _, _ = load_gray(source, pixel_limit)
    if light_background(g):
        g = 1 - g
    out = resize(g, (SIDE, SIDE), Image.Resampling.BICUBIC)  # PIL's default filter for resize
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
