"""Cleanup: working size, polarity, the paper's level (flat or unevenly lit), contrast, noise and specks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from digitlab.data.decode import ImageSource, contrasting, load_image, to_gray
from digitlab.data.lowres import restore
from digitlab.data.measure import MIN_CONTRAST, stroke_width
from digitlab.data.pixels import EIGHT_CONNECTED, ink_box, median, resize, unit_float

# All intensities are fractions of full scale.
WORK_PIXELS = 512 * 512  # downscale bigger inputs first: all later steps cost O(pixels), 20x20 needs little
BORDER_FRAC = 0.04  # border strip used to estimate the background colour
BG_SIDE = 64  # the background envelope is estimated on an image this big: strokes are a few px wide there
BG_FLAT = 0.06  # background variation along the border below this is treated as a flat (constant) background
BG_CLEAN = 0.02  # a border varying less than this (a clean canvas or scan) is flat without estimating anything
MIN_SNR = 6.0  # ... nor ink that is less than this many noise sigmas above the paper
COHERENT_SNR = 3.5  # ... unless, averaged over 3x3 pixels, it is this many (noise alone: under 2)
NOISE_FLOOR = 0.15  # after stretching ink to 1, values below this (or 4 noise sigmas) become 0
SPECK_KEEP = 0.15  # components with at least this share of the largest one's ink mass are always kept
SPECK_NEAR = 0.02  # smaller ones down to this share are kept when they sit next to the digit (broken strokes)
NEAR_MARGIN = 0.15  # "next to": inside the digit's box grown by this fraction of its longer side
# Side bands: two opposite edges of the picture covered by something of one level that is not the paper (a dark
# desk either side of a photographed page, inverted strips): each at least BAND_MIN of the side, its outer line
# at least BAND_FULL within BAND_TOL of its level, that level at least BAND_CONTRAST from the middle's, where the
# middle's level is that of its ends on the other two edges (paper reaching them, BAND_FULL uniform).
BAND_MIN = 0.05
BAND_TOL = 0.15
BAND_FULL = 0.95
BAND_CONTRAST = 0.4
BAND_MIDDLE = 0.3  # ... and at least this share of the side left between them
BAND_EDGE = 0.02  # a band's soft edge is at most this share of the side wide


def _border(a: np.ndarray) -> np.ndarray:
    b = max(1, round(BORDER_FRAC * min(a.shape)))
    return np.concatenate([a[:b].ravel(), a[-b:].ravel(), a[:, :b].ravel(), a[:, -b:].ravel()])


def _band(a: np.ndarray, levels: np.ndarray, order: range) -> tuple[int, float]:
    """Width and level of the band of columns of `a` taken in `order` (from one edge inwards); 0 if none."""
    first = a[:, order[0]]
    level = median(first)
    if float(np.mean(np.abs(first - level) <= BAND_TOL)) < BAND_FULL:
        return 0, level
    width = 0
    for j in order:  # inwards while a column's typical level is nearer the band's than the other extreme
        if abs(float(levels[j]) - level) > 0.5:
            break
        width += 1
    return width, level


def _level_bands(a: np.ndarray) -> None:
    """Reflect `a`'s left and right side bands (in place) so that their level becomes the middle's."""
    w = a.shape[1]
    levels = np.median(a, axis=0)
    left, lv = _band(a, levels, range(w))
    right, rv = _band(a, levels, range(w - 1, -1, -1))
    least = max(2, math.ceil(BAND_MIN * w))
    if left < least or right < least or abs(lv - rv) > BAND_TOL or w - left - right < BAND_MIDDLE * w:
        return
    # The middle's level is that of its ends on the other two edges, which must be uniform: paper reaching
    # them. A fat digit between two margins of paper has the margins' level there, and is left alone.
    ends = np.concatenate([a[0, left : w - right], a[-1, left : w - right]])
    middle = median(ends)
    if float(np.mean(np.abs(ends - middle) <= BAND_TOL)) < BAND_FULL or abs(middle - (lv + rv) / 2) < BAND_CONTRAST:
        return
    # A reflection about the midpoint of the two levels: the band's level goes to the paper's and whatever lies
    # on the band (a stroke crossing an inverted strip) keeps its contrast, the other way round.
    for cols, level in ((slice(0, left), lv), (slice(w - right, w), rv)):
        np.clip(level + middle - a[:, cols], 0, 1, out=a[:, cols])
    # The band's soft edge (a blurred desk-to-page boundary) would reflect onto itself as a faint line of ink:
    # up to BAND_EDGE of the width next to each band, columns not yet at the middle's level become paper.
    edge = max(1, math.ceil(BAND_EDGE * w))
    for cols in (range(left, min(left + edge, w - right)), range(w - right - 1, max(w - right - 1 - edge, left), -1)):
        for j in cols:
            if abs(float(levels[j]) - middle) <= BAND_TOL:
                break
            a[:, j] = middle


def level_side_bands(g: np.ndarray) -> np.ndarray:
    """`g` with bands along two opposite sides (left and right, then top and bottom) brought to the level of the
    picture between them, so that the border's colour is the paper's when the polarity is decided."""
    out = g.copy()
    _level_bands(out)
    _level_bands(out.T)
    return out


def light_background(g: np.ndarray) -> bool:
    """Whether the ink is darker than the paper: the extreme farther from the border's colour is the ink."""
    bg = median(_border(g))
    # A border at the image's darkest (lightest) value decides without the filter: then every 3x3 mean lies
    # on one side of it, so only the other extreme can differ from it (clean canvases, scans, MNIST itself).
    lo, hi = float(g.min()), float(g.max())
    if bg <= lo:
        return False
    if bg >= hi:
        return True  # (lo < bg here: the 3x3 mean around the darkest pixel is below the paper)
    f = ndi.uniform_filter(g, 3, mode="nearest")  # 3x3 mean: single noisy pixels do not decide
    return bg - float(f.min()) > float(f.max()) - bg


def _background(g: np.ndarray) -> np.ndarray | float:
    """Background (paper) level of white-on-black `g`: a constant, or a smooth map when lighting is uneven."""
    border = _border(g)
    if float(np.ptp(border)) < BG_CLEAN:  # a clean canvas or scan: no lighting to model
        return median(border)
    h, w = g.shape
    k = BG_SIDE / max(h, w)
    small = resize(g, (max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BOX) if k < 1 else g
    # Grey opening (min then max filter) erases bright structures narrower than its window, i.e. strokes,
    # and keeps the slowly varying paper, which a linear gradient passes through unchanged. A wide window
    # is safe but flattens curved lighting (a hand's shadow), so a second pass uses a window of three
    # stroke widths (junctions are up to twice as thick as strokes), measured on what the first removed.
    size = max(3, max(small.shape) // 3)
    env = ndi.grey_opening(small, size=(size, size), mode="nearest")
    strokes = small - env
    sw = stroke_width(np.where(strokes > 0.5 * float(strokes.max()), strokes, 0)) if strokes.max() > 0 else 0.0
    size = int(np.clip(math.ceil(3 * sw), 3, size))
    env = ndi.grey_opening(small, size=(size, size), mode="nearest")
    env = ndi.gaussian_filter(env, size / 4, mode="nearest")
    # Judge flatness on the border only: a thick digit in the middle may survive the opening, and subtracting
    # it would punch holes in clean canvases. Uneven lighting always shows along the border.
    if float(np.ptp(_border(env))) < BG_FLAT:
        return median(_border(g))
    return resize(env, (w, h), Image.Resampling.BILINEAR) if k < 1 else env


@dataclass(frozen=True, eq=False)
class Ink:
    ink: np.ndarray  # float32 white-on-black in [0, 1] at working resolution, cleaned
    scale: float  # working pixels per source pixel
    contrast: float  # ink level above the paper, as a fraction of the paper-to-full-ink range
    n_components: int  # 8-connected pieces of ink
    specks: int = 0  # pieces removed as noise


def _working_size(size: tuple[int, int], pixels: int = WORK_PIXELS) -> tuple[tuple[int, int], float]:
    """Size (width, height) to work at, and its scale: at most `pixels`, never enlarged."""
    w, h = size
    scale = min(1.0, math.sqrt(pixels / (w * h)))
    return (max(1, round(w * scale)), max(1, round(h * scale))), scale


def load_gray(source: ImageSource, pixel_limit: int, smooth: bool = False) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Working-size greyscale of `source`, its scale (working px per source px), and the source size; `smooth`:
    a blocky (nearest-neighbour) upscale or a tiny image made smooth first (`lowres.restore`)."""
    im = load_image(source, pixel_limit=pixel_limit)
    size = im.size
    im, k = restore(im) if smooth else (im, 1.0)
    g, scale, _ = gray_of(im)
    return g, scale * k, size


def gray_of(im: Image.Image, pixels: int = WORK_PIXELS) -> tuple[np.ndarray, float, tuple[int, int]]:
    """`load_gray` of a loaded image, at most `pixels` big."""
    work, scale = _working_size(im.size, pixels)
    if scale < 1:
        # Shrink in 8 bits before going to float: a 36 MP photo would take ~0.4 GB as float RGB. Colour goes to
        # grey first (a third of the pixels to shrink; PIL's luma is the same ITU-R 601 as `_luma`); with alpha
        # too, as LA: luma is linear, so it commutes with the premultiplied-alpha shrink PIL does for LA and RGBA
        # (transparent pixels' colour must not bleed), at 0.37 instead of 0.6 ms for a 280x280 canvas.
        size = im.size
        if im.mode == "RGB":
            im = im.convert("L")
        elif im.mode in ("RGBA", "LA"):
            luma, alpha = im.convert("L"), im.getchannel("A")
            lo, hi = luma.getextrema()
            if lo == hi:  # one colour under all the ink: a canvas export
                return _one_colour(alpha.resize(work, Image.Resampling.BOX), lo / 255), scale, size
            im = Image.merge("LA", (luma, alpha))
        return to_gray(im.resize(work, Image.Resampling.BOX)), scale, size
    return to_gray(im), 1.0, im.size


def _one_colour(alpha: Image.Image, colour: float) -> np.ndarray:
    """`to_gray` of an image whose every pixel has grey `colour`, from its alpha alone.

    Compositing is then a linear function of alpha, so shrinking alpha alone gives the same result as shrinking
    the image (0.05 instead of 0.37 ms for a 280x280 canvas); `to_gray` would find no background of the picture's
    own and composite over the one that contrasts with the ink.
    """
    a = unit_float(np.asarray(alpha))
    if not a.any():
        return a  # nothing drawn at all, as `to_gray` says
    background = contrasting(colour)
    a *= colour - background
    a += background
    return a


def prepare(gray: np.ndarray, scale: float = 1.0) -> Ink:
    """Clean white-on-black ink at working size; `scale` says how much `gray` was already shrunk."""
    h, w = gray.shape
    work, shrink = _working_size((w, h))
    g = resize(gray, work, Image.Resampling.BOX) if shrink < 1 else gray
    scale *= shrink
    g = level_side_bands(g)
    if light_background(g):
        g = 1 - g
    bg = _background(g)
    if isinstance(bg, float) and bg == 0:
        r = g  # black paper (a canvas, MNIST): the division below would change nothing
    else:
        # Ink darkens paper by a factor (reflectance), so lighting gradients scale the ink's contrast too:
        # divide by the locally available range rather than only subtracting the background.
        r = g - bg
        r /= np.maximum(1 - np.asarray(bg, np.float32), 0.05)
    return clean_ink(r, scale)


def clean_ink(r: np.ndarray, scale: float) -> Ink:
    """`prepare` from the ink's rise above the paper `r` (white-on-black, paper at 0) on."""
    sigma = _noise(r)
    sigma = min(sigma, _step_noise(r)) if sigma > 0 else sigma
    contrast = _contrast(r)
    if contrast < MIN_CONTRAST or (contrast < MIN_SNR * sigma and not _coherent(r)):
        return Ink(np.zeros_like(r), scale, max(contrast, 0.0), 0)
    # Stretch so the typical strong ink is 1 (MNIST's cores are saturated), then cut the paper's noise.
    x = r / contrast
    np.clip(x, 0, 1, out=x)
    x[x < min(0.5, max(NOISE_FLOOR, 4 * sigma / contrast))] = 0
    ink, n_components, specks = _remove_specks(x)
    return Ink(ink, scale, contrast, n_components, specks)


def _coherent(r: np.ndarray) -> bool:
    """Whether ink too faint for its noise pixel by pixel stands out of the paper once averaged over 3x3 pixels:
    strokes are wider than a pixel and keep their level, independent noise drops to a third (a digit in heavy
    noise). The paper's level is the averaged image's median, so noise alone, however bright, does not."""
    s = ndi.uniform_filter(r, size=3, mode="nearest")
    s -= median(s)
    contrast = _contrast(s)
    # (`_noise`, not `_step_noise`: neighbours of an averaged image differ by little whatever the noise)
    return contrast >= MIN_CONTRAST and contrast >= COHERENT_SNR * _noise(s)


def _contrast(r: np.ndarray) -> float:
    """The typical strong ink of `r` above the paper (0): the median of what reaches half its peak."""
    peak = float(r.max())
    return median(r[r >= 0.5 * peak]) if peak > 0 else 0.0


def _noise(r: np.ndarray) -> float:
    """Robust noise level of `r` (ink is a minority): 1.4826 times its median absolute deviation."""
    # Clean canvases and scans are mostly exactly paper (r == 0): then both medians are 0, no sorting needed.
    if r.size - np.count_nonzero(r) > r.size // 2:
        return 0.0
    return 1.4826 * median(np.abs(r - median(r)))


def _step_noise(r: np.ndarray) -> float:
    """Noise level of 2-D `r` from the differences between horizontal neighbours (on up to 64 rows). Where ink
    covers half the picture or more (a tight crop, an enlarged small image) `_noise` measures the ink, not the
    noise; this measures the noise as long as edges are a minority."""
    step = np.abs(np.diff(r[:: max(1, r.shape[0] // 64)], axis=1))
    return 1.4826 / math.sqrt(2) * median(step)


def _remove_specks(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """`x` without noise specks, its number of 8-connected components, and how many specks went."""
    mask = x > 0
    box = ink_box(mask)
    if box is None:
        return x, 0, 0
    bx0, by0, bx1, by1 = box  # labelled on the ink's box only: every component lies inside it
    lab, n = ndi.label(mask[by0:by1, bx0:bx1], structure=EIGHT_CONNECTED)
    if n <= 1:
        return x, n, 0
    sub = x[by0:by1, bx0:bx1]
    mass = np.asarray(ndi.sum_labels(sub, lab, index=np.arange(1, n + 1)))
    big = mass >= SPECK_KEEP * mass.max()
    objs = ndi.find_objects(lab)
    y0 = min(objs[i][0].start for i in np.flatnonzero(big))
    y1 = max(objs[i][0].stop for i in np.flatnonzero(big))
    x0 = min(objs[i][1].start for i in np.flatnonzero(big))
    x1 = max(objs[i][1].stop for i in np.flatnonzero(big))
    m = NEAR_MARGIN * max(y1 - y0, x1 - x0)
    keep = big.copy()
    for i in np.flatnonzero(~big & (mass >= SPECK_NEAR * mass.max())):
        sy, sx = objs[i]
        # Broken strokes (a 5's flag, a 7's bar) sit next to the digit; noise specks anywhere else go.
        keep[i] = sy.start < y1 + m and sy.stop > y0 - m and sx.start < x1 + m and sx.stop > x0 - m
    if keep.all():
        return x, n, 0
    out = np.zeros_like(x)
    out[by0:by1, bx0:bx1] = np.where(np.concatenate([[False], keep])[lab], sub, 0)
    return out, int(keep.sum()), int(n - keep.sum())
