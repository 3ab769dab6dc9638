"""MNIST-C's 15 corruptions (Mu & Gilmer 2019) at its severity, seeded, deterministic and batched."""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from digitlab.core.errors import ConfigError, DataError

__all__ = ["CORRUPTIONS", "VALIDATION_SEED", "Corruption", "corrupt", "corruption_rng"]

VALIDATION_SEED = 1  # corrupted validation digits (choosing, fitting) use this seed; the reported test suite uses 0

SIDE = 28
CENTRE = (SIDE - 1) / 2  # MNIST-C's transforms keep the pixel-grid centre (13.5, 13.5) fixed

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _batched(fn: Callable[[np.ndarray, np.random.Generator], np.ndarray]) -> Corruption:
    """Check uint8 (28, 28) or (N, 28, 28) input, run `fn` on floats (N, 28, 28) in [0, 1], give back uint8."""

    @functools.wraps(fn)
    def wrapper(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        a = np.asarray(images)
        if a.dtype != np.uint8 or a.shape[-2:] != (SIDE, SIDE) or a.ndim not in (2, 3):
            raise DataError(f"corruptions take uint8 (28, 28) or (N, 28, 28) images, not {a.dtype} {a.shape}")
        x = a.reshape(-1, SIDE, SIDE).astype(np.float32) / 255
        out = fn(x, rng) if len(x) else x
        return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8).reshape(a.shape)

    return wrapper


def _gaussian(x: np.ndarray, sigma_rows: float, sigma_cols: float) -> np.ndarray:
    """Each image of (N, H, W) blurred as scikit-image's `gaussian` does (edge pixels repeated, 4 sigma)."""
    return ndimage.gaussian_filter(x, (0, sigma_rows, sigma_cols), mode="nearest", truncate=4.0)


def _warp(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Each image warped by a 2x2 (x, y) matrix that maps output to input pixels about the centre; bilinear,
    black outside (scikit-image's `warp` with `inverse_map`, as MNIST-C used it)."""
    m = np.array([[matrix[1, 1], matrix[1, 0]], [matrix[0, 1], matrix[0, 0]]])  # (x, y) -> (row, col)
    offset = CENTRE - m @ np.array([CENTRE, CENTRE])
    full = np.eye(3)
    full[1:, 1:] = m
    return ndimage.affine_transform(x, full, offset=(0, *offset), order=1, mode="grid-constant", cval=0.0)


def _warp_by_sign(x: np.ndarray, rng: np.random.Generator, matrix_of: Callable[[float], np.ndarray]) -> np.ndarray:
    """Warp each image by `matrix_of(+1)` or `matrix_of(-1)`, the direction drawn at random per image."""
    signs = rng.choice([-1.0, 1.0], size=len(x))
    out = np.empty_like(x)
    for s in (-1.0, 1.0):
        pick = signs == s
        if pick.any():
            out[pick] = _warp(x[pick], matrix_of(s))
    return out


# --------------------------------------------------------------------------------------------- noise


@_batched
def shot_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson noise at 3 photons per full-white pixel (MNIST-C's severity 5)."""
    photons = 3.0
    return rng.poisson(x * photons) / photons


@_batched
def impulse_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: 17% of the pixels set to black or white, evenly (severity 4)."""
    hit = rng.random(x.shape) < 0.17
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(np.float32), x)


# --------------------------------------------------------------------------------------------- blur


def _shuffle_neighbours(a: np.ndarray, rng: np.random.Generator, passes: int = 2) -> np.ndarray:
    """Glass blur's local shuffle on uint8 (N, 28, 28): `passes` sweeps from the bottom-right corner, each
    pixel of rows/columns 27..2 swapped, with probability 1/2, with itself or its upper, left or upper-left
    neighbour. The sweep is sequential (a value can travel several pixels), so it loops over pixels and is
    vectorised over the batch."""
    n = len(a)
    flat = np.ascontiguousarray(a.transpose(1, 2, 0)).reshape(-1)  # pixel-major: one pixel of all images is a run
    cols = np.arange(n)
    positions = [(h, w) for h in range(SIDE - 1, 1, -1) for w in range(SIDE - 1, 1, -1)]
    swap = rng.random((passes, len(positions), n)) < 0.5
    delta = rng.integers(-1, 1, size=(passes, len(positions), 2, n))  # -1 or 0 on each axis
    for p in range(passes):
        for k, (h, w) in enumerate(positions):
            here = (h * SIDE + w) * n + cols
            there = ((h + delta[p, k, 0]) * SIDE + (w + delta[p, k, 1])) * n + cols
            mine, theirs = flat[here], flat[there]
            s = swap[p, k]
            flat[here] = np.where(s, theirs, mine)
            flat[there] = np.where(s, mine, theirs)
    return flat.reshape(SIDE, SIDE, n).transpose(2, 0, 1)


@_batched
def glass_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur (sigma 0.7), shuffle neighbouring pixels twice, blur again (severity 1).

    The blurs run down the columns only: MNIST-C's code passed its 2-D images to scikit-image's `gaussian`
    with `multichannel=True`, which leaves the last axis unblurred. Its severity is kept as it was measured.
    """
    sigma = 0.7
    blurred = (np.clip(_gaussian(x, sigma, 0.0), 0, 1) * 255).astype(np.uint8)  # truncated, as MNIST-C's np.uint8
    shuffled = _shuffle_neighbours(blurred, rng).astype(np.float32) / 255
    return _gaussian(shuffled, sigma, 0.0)


MOTION_TAPS = 21  # ImageMagick's kernel width for radius 10: 2 * radius + 1
MOTION_SIGMA = 3.0


@_batched
def motion_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ImageMagick's motion blur (radius 10, sigma 3; severity 1) at an angle uniform in ±45 degrees.

    Each output pixel is a one-sided Gaussian-weighted mean of the 21 pixels along the angle from it
    (offsets rounded to whole pixels, edge pixels repeated beyond the border), as MagickMotionBlurImage does.
    """
    n = len(x)
    taps = np.arange(MOTION_TAPS)
    weights = np.exp(-(taps**2) / (2 * MOTION_SIGMA**2))
    weights /= weights.sum()
    angle = np.deg2rad(rng.uniform(-45, 45, size=n))
    dx = np.ceil(taps[None] * np.cos(angle)[:, None] - 0.5).astype(np.intp)  # (N, taps)
    dy = np.ceil(taps[None] * np.sin(angle)[:, None] - 0.5).astype(np.intp)
    pad = MOTION_TAPS - 1
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    rows = np.arange(SIDE)[None, :, None] + pad
    cols = np.arange(SIDE)[None, None, :] + pad
    idx = np.arange(n)[:, None, None]
    out = np.zeros_like(x)
    for t in taps:
        out += weights[t] * padded[idx, rows + dy[:, t, None, None], cols + dx[:, t, None, None]]
    return out


# --------------------------------------------------------------------------------------------- affine


@_batched
def shear(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shear by 0.4 rad, left or right at random (severity 2), about the centre.

    The matrix is scikit-image's AffineTransform(shear=0.4) as MNIST-C used it (before scikit-image 0.20):
    x' = x - sin(0.4) y, y' = cos(0.4) y, mapping output to input pixels.
    """
    c = 0.4
    return _warp_by_sign(x, rng, lambda s: np.array([[1.0, -math.sin(s * c)], [0.0, math.cos(s * c)]]))


@_batched
def scale(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shrink to 70% about the centre (severity 3: the input is sampled 1/0.7 times as far out)."""
    return _warp(x, np.eye(2) / 0.7)


@_batched
def rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate by 0.4 rad (23 degrees), clockwise or anticlockwise at random (severity 2), about the centre."""
    c = 0.4
    return _warp_by_sign(x, rng, lambda s: np.array([[math.cos(s * c), -math.sin(s * c)],
                                                     [math.sin(s * c), math.cos(s * c)]]))  # fmt: skip


@_batched
def translate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift by 3 pixels on both axes, each direction drawn at random (severity 3); ink shifted out is lost."""
    shift = 3
    signs = rng.choice([-1, 1], size=(len(x), 2))
    out = np.zeros_like(x)
    for sy in (-1, 1):
        for sx in (-1, 1):
            pick = (signs[:, 0] == sy) & (signs[:, 1] == sx)
            dy, dx = sy * shift, sx * shift
            src = x[pick][:, max(0, -dy) : SIDE - max(0, dy), max(0, -dx) : SIDE - max(0, dx)]
            block = out[pick]
            block[:, max(0, dy) : SIDE - max(0, -dy), max(0, dx) : SIDE - max(0, -dx)] = src
            out[pick] = block
    return out


# --------------------------------------------------------------------------------------------- light


@_batched
def brightness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add 0.5 to the HSV value (severity 5): for a grey image, every pixel +128 grey levels, clipped."""
    return x + 0.5


@_batched
def stripe(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Invert the 7 leftmost and 7 rightmost columns."""
    out = x.copy()
    out[:, :, :7] = 1 - x[:, :, :7]
    out[:, :, SIDE - 7 :] = 1 - x[:, :, SIDE - 7 :]
    return out


def plasma_fractal(rng: np.random.Generator, n: int, size: int = 256, decay: float = 1.4) -> np.ndarray:
    """`n` diamond-square height maps (N, size, size) in [0, 1] on a torus (Fournier et al. 1982).

    Each level sets the midpoints of the current grid to the mean of their four neighbours plus uniform
    noise of amplitude w^2, w starting at 100 and divided by `decay` per level (ImageNet-C's plasma fractal).
    """
    m = np.empty((n, size, size), np.float32)
    m[:, 0, 0] = 0
    step, wibble = size, 100.0

    def jitter(total: np.ndarray) -> np.ndarray:
        return total / 4 + np.float32(wibble * wibble) * (2 * rng.random(total.shape, dtype=np.float32) - 1)

    while step >= 2:
        half = step // 2
        corners = m[:, ::step, ::step]
        square = corners + np.roll(corners, -1, axis=1)
        m[:, half::step, half::step] = jitter(square + np.roll(square, -1, axis=2))
        centres = m[:, half::step, half::step]
        m[:, ::step, half::step] = jitter(centres + np.roll(centres, 1, axis=1) + corners
                                          + np.roll(corners, -1, axis=2))  # fmt: skip
        m[:, half::step, ::step] = jitter(centres + np.roll(centres, 1, axis=2) + corners
                                          + np.roll(corners, -1, axis=1))  # fmt: skip
        step, wibble = half, wibble / decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


FOG_CHUNK = 256  # height maps are 256x256: make them this many at a time (64 MiB)


@_batched
def fog(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add 3 times the top-left 28x28 of a plasma fractal (decay 1.4), rescaled to the image's peak (severity 5)."""
    strength = 3.0
    out = np.empty_like(x)
    for start in range(0, len(x), FOG_CHUNK):
        part = x[start : start + FOG_CHUNK]
        haze = plasma_fractal(rng, len(part))[:, :SIDE, :SIDE]
        peak = part.max(axis=(1, 2), keepdims=True)
        out[start : start + FOG_CHUNK] = (part + strength * haze) * peak / (peak + strength)
    return out


@_batched
def spatter(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mud spatter (severity 4): blotches of grey 63 where thresholded, blurred noise is high.

    Noise N(0.65, 0.3) blurred (sigma 1) and kept above 0.65; that mask blurred (sigma 1.5) and kept where
    >= 0.8 is the blotches' opacity m: pixel' = pixel (1 - m) + 63/255 m.
    """
    liquid = _gaussian(rng.normal(0.65, 0.3, size=x.shape).astype(np.float32), 1.0, 1.0)
    mask = _gaussian((liquid > 0.65).astype(np.float32), 1.5, 1.5)
    mask[mask < 0.8] = 0
    return x * (1 - mask) + (63 / 255) * mask


# --------------------------------------------------------------------------------------------- lines

LINE_REACH = 2.3  # a line's ink fades to nothing this many pixels (vertically) from its centre


def _line(c0: np.ndarray, r0: np.ndarray, c1: np.ndarray, r1: np.ndarray) -> np.ndarray:
    """Anti-aliased lines (N, 28, 28), one per image, from (c0, r0) to (c1, r1) (c1 > c0).

    Ink at vertical distance d from the line is 1 + log(1 - d / 2.3), clipped to [0, 1] (full within
    1.45 px), drawn over the columns floor(c0) .. ceil(c1) - 1 only, as MNIST-C's `line_from_points`.
    """
    c0, r0, c1, r1 = (np.asarray(v, np.float64)[:, None, None] for v in (c0, r0, c1, r1))
    cols = np.arange(SIDE)[None, None, :]
    rows = np.arange(SIDE)[None, :, None]
    slope = (r1 - r0) / (c1 - c0)
    dist = np.minimum(np.abs(rows - (slope * (cols - c0) + r0)), LINE_REACH - 1e-10)
    ink = np.clip(np.log(1 - dist / LINE_REACH) + 1, 0, 1)
    inside = (cols >= np.floor(c0)) & (cols < np.ceil(c1))
    return (ink * inside).astype(np.float32)


@_batched
def dotted_line(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dashed line across the image (2 px dashes, 2 px gaps) between random rows 0..26 at either side."""
    n = len(x)
    r0, r1 = rng.integers(0, SIDE - 1, size=(2, n))
    line = _line(np.zeros(n), r0, np.full(n, SIDE - 1.0), r1)
    gaps = (np.arange(SIDE) // 2) % 2 == 0  # columns 0-1, 4-5, ... are gaps
    line[:, :, gaps] = 0
    return x + line


ZIGZAG_STEP = 2.0  # a zigzag's segments advance and swing by this many pixels


def _zigzag_points(length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, K) along a horizontal axis of `length` px: (0, 0), then (2, 2), (6, -2), (10, 2), ...,
    then an end point at `length` as MNIST-C placed it. K is the same for every length in 23 .. 23.6."""
    a = ZIGZAG_STEP
    count = int((length.min() - a) // (2 * a)) + 1
    if count != int((length.max() - a) // (2 * a)) + 1 or np.any(length % (2 * a) == 0):
        raise ValueError("zigzag lengths must give the same number of vertices")
    i = np.arange(count)
    along = np.broadcast_to((2 * i + 1) * a, (len(length), count))
    across = np.broadcast_to((-1.0) ** i * a, (len(length), count))
    last_full = 2 * a * (length // (2 * a))
    end_across = across[:, -1] / (2 * (length - last_full))
    c = np.column_stack([np.zeros(len(length)), along, length])
    r = np.column_stack([np.zeros(len(length)), across, end_across])
    return c, r


@_batched
def zigzag(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A zigzag line from column 2 to column 25, starting at a random row, tilted by up to 5 rows."""
    n = len(x)
    c_start, c_end = 2.0, 25.0
    r_start = rng.integers(0, SIDE - 1, size=n).astype(np.float64)
    rise = rng.integers(-5, 5, size=n)
    theta = np.arctan(rise / (c_end - c_start))
    c, r = _zigzag_points((c_end - c_start) / np.cos(theta))
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    cs, rs = c * cos - r * sin + c_start, c * sin + r * cos + r_start[:, None]
    ink = sum(_line(cs[:, k - 1], rs[:, k - 1], cs[:, k], rs[:, k]) for k in range(1, cs.shape[1]))
    return x + ink


@_batched
def canny_edges(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Canny's edges (scikit-image, sigma 1, hysteresis thresholds 0.1 and 0.2) in white on black."""
    from skimage.feature import canny

    return np.stack([canny(image) for image in x]).astype(np.float32)


# --------------------------------------------------------------------------------------------- the suite

CORRUPTIONS: dict[str, Corruption] = {
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "shear": shear,
    "scale": scale,
    "rotate": rotate,
    "brightness": brightness,
    "translate": translate,
    "stripe": stripe,
    "fog": fog,
    "spatter": spatter,
    "dotted_line": dotted_line,
    "zigzag": zigzag,
    "canny_edges": canny_edges,
}


def corruption_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of corruption `name` under suite seed `seed`: its own stream, whatever else is in the suite."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def corrupt(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """`images` (uint8 (28, 28) or (N, 28, 28)) under corruption `name`, drawn from (seed, name) alone."""
    try:
        fn = CORRUPTIONS[name]
    except KeyError:
        raise ConfigError(f"unknown corruption {name!r}; choose one of: {', '.join(CORRUPTIONS)}") from None
    return fn(images, corruption_rng(seed, name))
