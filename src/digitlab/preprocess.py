"""Turn any user image into a 28x28 MNIST-style digit, the way MNIST itself was made."""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TypeAlias

import numpy as np
import pyspng
from PIL import Image, ImageOps
from scipy import ndimage as ndi

from digitlab.errors import ImageError
from digitlab.lowres import restore, restore_array

__all__ = [
    "DEFAULT_PIXEL_LIMIT",
    "Box",
    "ImageSource",
    "InkStats",
    "Preprocessed",
    "ink_stats",
    "is_mnist_format",
    "load_image",
    "naive_resize",
    "preprocess",
    "preprocess_array",
    "segment_digits",
    "stroke_width",
    "to_gray",
]

ImageSource: TypeAlias = str | os.PathLike[str] | bytes | bytearray | IO[bytes] | Image.Image | np.ndarray
Box: TypeAlias = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 and y1 exclusive, like PIL's crop box

DEFAULT_PIXEL_LIMIT = 40_000_000
# Decoders we accept (the JPEG opener also returns the MPO files phone cameras write); everything else is
# refused so that rarely used, rarely hardened plugins never see user bytes.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "GIF", "TIFF")
FORMAT_NAMES = "PNG, JPEG, WebP, BMP, GIF or TIFF"

# --- MNIST geometry: digits were fitted into 20x20 keeping the aspect ratio, then pasted into 28x28 with
# their centre of mass at pixel (14, 14) (the mean over the MNIST test set is (13.99, 14.00)).
SIDE = 28
BOX_SIDE = 20
CENTRE = 14.0

# --- cleanup. All intensities are fractions of full scale.
WORK_PIXELS = 512 * 512  # downscale bigger inputs first: all later steps cost O(pixels), 20x20 needs little
# A first, cheaper pass works at this size (a 280x280 canvas: 5x fewer float pixels after the PNG decode); it is
# kept when the ink's box is at least COARSE_MIN_INK px there (~3x the 20 px the digit is shrunk to), else the
# image is done again at WORK_PIXELS (a small digit on a big photo).
COARSE_PIXELS = 128 * 128
COARSE_MIN_INK = 56
BORDER_FRAC = 0.04  # border strip used to estimate the background colour
BG_SIDE = 64  # the background envelope is estimated on an image this big: strokes are a few px wide there
BG_FLAT = 0.06  # background variation along the border below this is treated as a flat (constant) background
BG_CLEAN = 0.02  # a border varying less than this (a clean canvas or scan) is flat without estimating anything
MIN_CONTRAST = 0.08  # ink fainter than this against the paper is not ink (sensor noise, paper texture)
MIN_SNR = 6.0  # ... nor ink that is less than this many noise sigmas above the paper
NOISE_FLOOR = 0.15  # after stretching ink to 1, values below this (or 4 noise sigmas) become 0
SPECK_KEEP = 0.15  # components with at least this share of the largest one's ink mass are always kept
SPECK_NEAR = 0.02  # smaller ones down to this share are kept when they sit next to the digit (broken strokes)
NEAR_MARGIN = 0.15  # "next to": inside the digit's box grown by this fraction of its longer side

# --- thick pens. MNIST strokes are ~2.1 px wide (median; 95th percentile 3.7) at 20 px digit height.
THIN_ABOVE = 4.0
THIN_TARGET = 2.5
SW_SIDE = 96  # ink_stats measures the stroke width on a copy shrunk to this many px when the ink is bigger
SW_MIN_PX = 10.0  # ... but no further than to strokes this wide

# --- "empty" detection, so the model is not asked to classify a blank canvas or a stray mark.
EMPTY_MIN_SIDE_PX = 3
EMPTY_MIN_SIDE_FRAC = 0.04  # ink box's longer side vs the image's shorter side
EMPTY_MIN_FRACTION = 0.0005  # ink pixels vs the square of the image's shorter side
DIGIT_MIN_PX = 16  # ... but a mark this many source px long is never too small: a small digit on a big page
DOT_RATIO = 2.0  # a mark no longer than this many stroke widths is a dot (a blob has no strokes)
LINE_STRAIGHT = 0.2  # minor/major spread of the ink below this: a straight stroke
LINE_MAX_TILT = 60.0  # a straight stroke tilted more than this from vertical is a line, not a "1"

# --- segmentation of a number written on one line.
SEG_MERGE_OVERLAP = 0.5  # merge components whose x-ranges overlap by this share of the narrower one
SEG_SPLIT_ASPECT = 1.3  # a group wider than this times its height holds touching digits (MNIST digits <= 1.0)
SEG_MIN_HEIGHT = 0.3  # groups shorter than this share of the tallest (dots, dashes) are not digits

EIGHT_CONNECTED = np.ones((3, 3), bool)  # diagonal anti-aliased strokes must stay one component

# --- the fast path for input already in MNIST format (`is_mnist_format`).
FAST_MIN_PEAK = 250
FAST_MIN_SIDE = 19
FAST_CENTRE_TOL = 1.0
_INDEX = np.arange(SIDE, dtype=np.float64)


# --------------------------------------------------------------------------------------------- loading


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _shown(path: object) -> str:
    """A path as put in messages: one line, and short even when someone passes a data string as a path."""
    text = " ".join(str(path).split())
    return text if len(text) <= 200 else text[:197] + "..."


def load_image(source: ImageSource, *, pixel_limit: int = DEFAULT_PIXEL_LIMIT) -> Image.Image:
    """Decode a path, bytes, file object, PIL image or array into a loaded image in mode L, LA, RGB or RGBA.

    Multi-frame files give their first frame; EXIF rotation (phone photos) is applied. Raises ImageError.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, pixel_limit)
    if isinstance(source, Image.Image):
        _check_size(source, pixel_limit, "image")
        return _decoded(source, "image", owned=False)
    if isinstance(source, (str, os.PathLike)):
        name = _shown(source)
        try:
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"{name}: {'not a file' if path.exists() else 'no such file'}")
            if path.stat().st_size == 0:
                raise ImageError(f"{name}: empty file (0 bytes)")
            with path.open("rb") as f:
                return _decode(f, pixel_limit, name)
        except (OSError, ValueError) as e:  # permissions, I/O errors, names too long or with NUL bytes
            reason = getattr(e, "strerror", None) or _one_line(e)  # strerror: without the (long) name again
            raise ImageError(f"{name}: cannot read ({reason})") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("<bytes>: empty (0 bytes)")
        return _decode(io.BytesIO(bytes(source)), pixel_limit, "<bytes>")
    if hasattr(source, "read"):
        return _decode(source, pixel_limit, _shown(getattr(source, "name", "<stream>")))
    raise ImageError(f"unsupported image source: {type(source).__name__}")


def _decode(fp: IO[bytes], pixel_limit: int, name: str) -> Image.Image:
    try:
        # Image.open only parses the header. PIL's own bomb guard warns above MAX_IMAGE_PIXELS and raises
        # above twice that; the warning is made an error so it can never pass silently. (catch_warnings is
        # process-global: under threads the worst case is that this filter outlives the call.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: {too_many_pixels(e, pixel_limit)}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a supported image (expected {FORMAT_NAMES})") from None
    except Exception as e:  # plugins raise SyntaxError, ValueError, struct.error ... on malformed headers
        raise ImageError(f"{name}: cannot read image header ({_one_line(e)})") from None
    _check_size(im, pixel_limit, name)  # before any decoder sees the pixels
    return _plain_png(im) or _decoded(im, name, owned=True)


def too_many_pixels(e: Exception, pixel_limit: int) -> str:
    """The message for PIL's decompression-bomb error `e`: our `pixel_limit`, not PIL's own, is the one to quote
    (unless the image is within ours: then PIL's, which only a caller raising our limit past it can meet)."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(e))
    if not found:
        return f"too many pixels (limit {pixel_limit:,})"
    pixels, theirs = int(found.group(1)), int(found.group(2))
    return f"too many pixels ({pixels:,}, limit {pixel_limit if pixels > pixel_limit else theirs:,})"


def _plain_png(im: Image.Image) -> Image.Image | None:
    """Opened `im` decoded by libspng (pyspng) when it is a plain PNG: 8-bit L, RGB or RGBA, one frame. That takes
    half PIL's time (0.25 vs 0.46 ms for a 280x280 canvas, most of a served request's decoding). None for anything
    else (palette, other bit depths, grey + alpha, a transparency key, EXIF, animation) and on any error: PIL
    decodes those. Where both decode, the pixels are the same (tested)."""
    if im.format != "PNG" or im.fp is None:
        return None
    rawmode = im.tile[0][3] if len(im.tile) == 1 else None  # "L;4", "RGB;16B", ... for other bit depths
    if rawmode not in ("L", "RGB", "RGBA") or "transparency" in im.info or getattr(im, "n_frames", 1) != 1:
        return None  # (libspng does not take 8-bit grey + alpha either)
    try:
        im.fp.seek(0)  # where Image.open read the header from
        data = im.fp.read()
        if b"eXIf" in data:  # EXIF orientation, which PIL applies (the chunk may follow the pixel data)
            return None
        a = pyspng.load(data)
    except Exception:
        return None
    w, h = im.size
    if a.dtype != np.uint8 or a.shape != ((h, w) if im.mode == "L" else (h, w, len(im.mode))):
        return None
    return Image.fromarray(a)


def _check_size(im: Image.Image, pixel_limit: int, name: str) -> None:
    w, h = im.size
    if w * h > pixel_limit:  # checked on the header's size, before a single pixel is decoded
        raise ImageError(f"{name}: too many pixels ({w}x{h} = {w * h:,}, limit {pixel_limit:,})")
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")


def _decoded(im: Image.Image, name: str, owned: bool) -> Image.Image:
    """Decode, apply EXIF rotation; returns an image that shares nothing with the caller's `im` (`owned`: `im`
    was opened here, so it may be returned itself)."""
    try:
        im.load()  # a freshly opened multi-frame file sits on frame 0, so only that frame is decoded
        # Phones store "rotate 90" in EXIF instead of rotating pixels. In place when the image is ours,
        # to save a copy of a big photo; never on the caller's image.
        if owned:
            ImageOps.exif_transpose(im, in_place=True)
        else:
            im = ImageOps.exif_transpose(im)
        return _normalise_mode(im, copy=not owned)
    except Exception as e:  # truncated data, corrupt chunks, decoder errors, MemoryError
        raise ImageError(f"{name}: cannot decode image ({_one_line(e)})") from None


def _normalise_mode(im: Image.Image, copy: bool = True) -> Image.Image:
    """An image in mode L, LA, RGB or RGBA (a new one, or `im` itself when already so and not `copy`); 16-bit
    and float greys are scaled, not clipped."""
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return im.copy() if copy else im  # a decoded file is ours: copying it would only cost time
    if mode.startswith("I;16") or mode in ("I", "F"):
        # PIL's convert("L") clips these at 255 instead of scaling, which would turn a 16-bit image white.
        a = np.asarray(im).astype(np.float64)
        top = float(a.max()) if a.size else 0.0
        if mode.startswith("I;16"):
            a /= 65535
        elif mode == "I":
            a /= 65535 if top > 255 else 255
        elif top > 1:
            a /= 255 if top <= 255 else top
        return Image.fromarray(_to_u8(np.clip(a, 0, 1, out=a)))
    if mode == "1":
        return im.convert("L")
    if mode in ("P", "PA"):
        return im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    if mode == "La":
        return im.convert("LA")
    if mode == "RGBa":
        return im.convert("RGBA")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def _from_array(a: np.ndarray, pixel_limit: int) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(f"array of shape {a.shape}: expected HxW, HxWx3 or HxWx4")
    h, w = a.shape[:2]
    if h * w == 0:
        raise ImageError(f"array of shape {a.shape} has no pixels")
    if h * w > pixel_limit:
        raise ImageError(f"array has too many pixels ({w}x{h} = {w * h:,}, limit {pixel_limit:,})")
    if a.dtype == bool:
        u8 = a.astype(np.uint8)
        u8 *= 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError("array contains NaN or infinity")
        lo, hi = float(a.min()), float(a.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ImageError(f"float array values must be in [0, 1], got {lo:.4g}..{hi:.4g}")
        u8 = _to_u8(np.clip(a, 0, 1))
    elif np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        top = 65535 if a.dtype == np.uint16 else 255
        if lo < 0 or hi > top:
            raise ImageError(f"integer array values must be in [0, {top}], got {lo}..{hi}")
        u8 = np.round(a / 257).astype(np.uint8) if top == 65535 else a.astype(np.uint8)
    else:
        raise ImageError(f"unsupported array dtype {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(u8))


def _to_u8(unit: np.ndarray) -> np.ndarray:
    """uint8 of a float array in [0, 1], rounded; `unit` is scaled in place (it must be a scratch array)."""
    # In place throughout, here and in the rest of this module: for a temporary of 256 KiB or more (a 280x280
    # float32 image), `temporary * 255` makes NumPy call backtrace() to see whether it may reuse the
    # temporary, which costs about half a millisecond per operation.
    unit *= 255
    return np.round(unit, out=unit).astype(np.uint8)


def _unit_float(u8: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1] (a new, writable array)."""
    a = u8.astype(np.float32)
    a /= 255
    return a


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's convert("L")


def to_gray(image: Image.Image) -> np.ndarray:
    """Greyscale float32 (H, W) in [0, 1]; transparency is composited over a contrasting background."""
    im = image if image.mode in ("L", "LA", "RGB", "RGBA") else _normalise_mode(image)
    u8 = np.asarray(im)
    a = _unit_float(u8)
    if im.mode == "L":
        return a
    if im.mode == "RGB":
        return _luma(a)
    colour, alpha = (a[..., 0], a[..., 1]) if im.mode == "LA" else (_luma(a[..., :3]), a[..., 3])
    coverage = u8[..., -1]  # alpha in 8 bits: the same tests as on `alpha` (k/255 is 1 for k = 255 only,
    if coverage.min() == 255:  # above 0.5 from k = 128 on), on a quarter of the bytes
        return colour
    if coverage.max() == 0:  # nothing drawn at all
        return np.zeros_like(alpha)
    # A browser canvas stores untouched pixels as (0,0,0,0) and ink with alpha = coverage, so the colour under
    # alpha 0 means nothing. Compositing over a background that contrasts with the ink puts the drawing in
    # alpha whatever the ink colour; polarity is sorted out later. A picture with its own opaque background
    # (a card cut out of a photo: mostly paper, some ink of very different colour) is instead composited
    # over that background, the opaque pixels' median colour.
    opaque = colour[coverage > 127]  # alpha > 0.5
    median = _median(opaque) if opaque.size else 0.0
    out = colour * alpha
    if opaque.size and np.mean(np.abs(opaque - median) > 0.4) >= 0.01:
        background = median
    else:
        background = _contrasting(float(out.sum() / alpha.sum()))  # from the ink's mean colour
    under = 1 - alpha
    under *= background
    out += under
    return out


# --------------------------------------------------------------------------------------------- cleanup


def _resize(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resize a float image to size (width, height) with PIL, which anti-aliases when it shrinks."""
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
    return np.asarray(im.resize(size, resample), dtype=np.float32)


def _median(v: np.ndarray) -> float:
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


def _border(a: np.ndarray) -> np.ndarray:
    b = max(1, round(BORDER_FRAC * min(a.shape)))
    return np.concatenate([a[:b].ravel(), a[-b:].ravel(), a[:, :b].ravel(), a[:, -b:].ravel()])


def _light_background(g: np.ndarray) -> bool:
    """Whether the ink is darker than the paper: the extreme farther from the border's colour is the ink."""
    bg = _median(_border(g))
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
        return _median(border)
    h, w = g.shape
    k = BG_SIDE / max(h, w)
    small = _resize(g, (max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BOX) if k < 1 else g
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
        return _median(_border(g))
    return _resize(env, (w, h), Image.Resampling.BILINEAR) if k < 1 else env


@dataclass(frozen=True, eq=False)
class _Ink:
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


def _load_gray(
    source: ImageSource, pixel_limit: int, smooth: bool = False
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Working-size greyscale of `source`, its scale (working px per source px), and the source size; `smooth`:
    a blocky (nearest-neighbour) upscale or a tiny image made smooth first (`lowres.restore`)."""
    im = load_image(source, pixel_limit=pixel_limit)
    size = im.size
    im, k = restore(im) if smooth else (im, 1.0)
    g, scale, _ = _gray_of(im)
    return g, scale * k, size


def _gray_of(im: Image.Image, pixels: int = WORK_PIXELS) -> tuple[np.ndarray, float, tuple[int, int]]:
    """`_load_gray` of a loaded image, at most `pixels` big."""
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


def _contrasting(ink: float) -> float:
    """The background a transparent image is composited over: white under dark ink, black under light ink."""
    return 1.0 if ink < 0.5 else 0.0


def _one_colour(alpha: Image.Image, colour: float) -> np.ndarray:
    """`to_gray` of an image whose every pixel has grey `colour`, from its alpha alone.

    Compositing is then a linear function of alpha, so shrinking alpha alone gives the same result as shrinking
    the image (0.05 instead of 0.37 ms for a 280x280 canvas); `to_gray` would find no background of the picture's
    own and composite over the one that contrasts with the ink.
    """
    a = _unit_float(np.asarray(alpha))
    if not a.any():
        return a  # nothing drawn at all, as `to_gray` says
    background = _contrasting(colour)
    a *= colour - background
    a += background
    return a


def _prepare(gray: np.ndarray, scale: float = 1.0) -> _Ink:
    """Clean white-on-black ink at working size; `scale` says how much `gray` was already shrunk."""
    h, w = gray.shape
    work, shrink = _working_size((w, h))
    g = _resize(gray, work, Image.Resampling.BOX) if shrink < 1 else gray
    scale *= shrink
    if _light_background(g):
        g = 1 - g
    bg = _background(g)
    if isinstance(bg, float) and bg == 0:
        r = g  # black paper (a canvas, MNIST): the division below would change nothing
    else:
        # Ink darkens paper by a factor (reflectance), so lighting gradients scale the ink's contrast too:
        # divide by the locally available range rather than only subtracting the background.
        r = g - bg
        r /= np.maximum(1 - np.asarray(bg, np.float32), 0.05)
    return _clean(r, scale)


def _clean(r: np.ndarray, scale: float) -> _Ink:
    """`_prepare` from the ink's rise above the paper `r` (white-on-black, paper at 0) on."""
    sigma = _noise(r)
    sigma = min(sigma, _step_noise(r)) if sigma > 0 else sigma
    peak = float(r.max())
    contrast = _median(r[r >= 0.5 * peak]) if peak > 0 else 0.0
    if contrast < MIN_CONTRAST or contrast < MIN_SNR * sigma:
        return _Ink(np.zeros_like(r), scale, max(contrast, 0.0), 0)
    # Stretch so the typical strong ink is 1 (MNIST's cores are saturated), then cut the paper's noise.
    x = r / contrast
    np.clip(x, 0, 1, out=x)
    x[x < min(0.5, max(NOISE_FLOOR, 4 * sigma / contrast))] = 0
    ink, n_components, specks = _remove_specks(x)
    return _Ink(ink, scale, contrast, n_components, specks)


def _noise(r: np.ndarray) -> float:
    """Robust noise level of `r` (ink is a minority): 1.4826 times its median absolute deviation."""
    # Clean canvases and scans are mostly exactly paper (r == 0): then both medians are 0, no sorting needed.
    if r.size - np.count_nonzero(r) > r.size // 2:
        return 0.0
    return 1.4826 * _median(np.abs(r - _median(r)))


def _step_noise(r: np.ndarray) -> float:
    """Noise level of 2-D `r` from the differences between horizontal neighbours (on up to 64 rows). Where ink
    covers half the picture or more (a tight crop, an enlarged small image) `_noise` measures the ink, not the
    noise; this measures the noise as long as edges are a minority."""
    step = np.abs(np.diff(r[:: max(1, r.shape[0] // 64)], axis=1))
    return 1.4826 / math.sqrt(2) * _median(step)


def _remove_specks(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """`x` without noise specks, its number of 8-connected components, and how many specks went."""
    mask = x > 0
    box = _ink_box(mask)
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


# --------------------------------------------------------------------------------------------- measures


def stroke_width(image: np.ndarray) -> float:
    """Typical stroke width in pixels of a white-on-black image: twice the ink depth along centre lines."""
    a = np.asarray(image, dtype=np.float32)
    top = float(a.max()) if a.size else 0.0
    if top <= 0:
        return 0.0
    return _mask_stroke_width(a >= 0.5 * top)  # half-maximum: the anti-aliased edge counts half, as coverage would


def _ink_box(mask: np.ndarray) -> Box | None:
    """Bounding box (x0, y0, x1, y1) of the True pixels, None when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _mask_stroke_width(mask: np.ndarray) -> float:
    box = _ink_box(mask)
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
    ridge = m & (depth >= _max3x3(depth))
    # A stroke w px wide has centre depth (w+1)/2 for odd w and w/2 for even w; -0.5 splits the difference.
    return float(max(2 * depth[ridge].mean() - 0.5, 0.0))


def _max3x3(a: np.ndarray) -> np.ndarray:
    """`ndi.maximum_filter(a, size=3)` (edges repeated, as its default "reflect" mode does at size 3) with
    four NumPy maxima instead of scipy's per-call overhead, which dominates on digit-sized arrays."""
    h, w = a.shape
    p = np.empty((h + 2, w + 2), a.dtype)  # `a` with its edge repeated around it
    p[1:-1, 1:-1] = a
    p[0, 1:-1], p[-1, 1:-1] = a[0], a[-1]
    p[:, 0], p[:, -1] = p[:, 1], p[:, -2]
    rows = np.maximum(np.maximum(p[:-2], p[1:-1]), p[2:])
    return np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


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
            small = _resize(crop, (nw, nh), Image.Resampling.BOX)
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
    area), a dot (no longer than two stroke widths), or one
    straight stroke tilted more than LINE_MAX_TILT degrees from vertical (a line, not a digit; an upright one is a 1).
    """
    a = np.asarray(ink, dtype=np.float32)
    if a.ndim != 2:
        raise ImageError(f"expected a 2-D image, got shape {a.shape}")
    if np.asarray(ink).dtype == np.uint8:
        a = a / 255
    return _ink_stats(a, contrast, None)


def _ink_stats(a: np.ndarray, contrast: float, n_comp: int | None, scale: float = 1.0) -> InkStats:
    """ink_stats of float `a`; `n_comp`, when known, is its number of 8-connected components; `scale`: px of `a`
    per source px."""
    h, w = a.shape
    mask = a > 0
    box = _ink_box(mask)
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
    elif longer <= DOT_RATIO * sw:
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


# --------------------------------------------------------------------------------------------- MNIST framing


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx**2 + yy**2 <= r * r + r  # +r: a rounder disk than the strict circle at small radii


def _crop(x: np.ndarray) -> np.ndarray:
    box = _ink_box(x != 0)
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
        crop = _resize(crop, (max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BOX)
        longer = max(crop.shape)
    radius = round((stroke_width(crop) - THIN_TARGET * longer / BOX_SIDE) / 2)
    if radius < 1:
        return crop
    # Erosion alone would erase every stroke narrower than the eroding disk (pens vary, arcs come out
    # thinner), so each stroke's centre line, grown to the target width, is kept whatever the erosion does.
    mask = crop >= 0.5 * float(crop.max())
    depth = ndi.distance_transform_edt(mask)
    ridge = mask & (depth >= _max3x3(depth))
    half = max(1, round(THIN_TARGET * longer / BOX_SIDE / 2))
    guard = ndi.binary_dilation(ridge, structure=_disk(half))
    thinned = np.maximum(ndi.grey_erosion(crop, footprint=_disk(radius)), np.where(guard, crop, 0))
    thinned[thinned < NOISE_FLOOR * float(crop.max())] = 0
    return _crop(thinned) if thinned.any() else crop


def _centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of mass of float `a`: `ndi.center_of_mass` without its call overhead, same sums."""
    mass = a.sum()
    rows = np.arange(a.shape[0], dtype=np.float64)[:, None]
    cols = np.arange(a.shape[1], dtype=np.float64)[None, :]
    return float((a * rows).sum() / mass), float((a * cols).sum() / mass)


def _to_mnist(x: np.ndarray, thin: bool) -> np.ndarray:
    """Crop to the ink, fit the longer side to 20 px, paste into 28x28 with the centre of mass at (14, 14)."""
    out = np.zeros((SIDE, SIDE), np.float32)
    if not x.any():
        return out.astype(np.uint8)
    crop = _crop(x)
    if thin:
        crop = _thin(crop)
    h, w = crop.shape
    longer = max(h, w)
    nw, nh = max(1, round(w * BOX_SIDE / longer)), max(1, round(h * BOX_SIDE / longer))
    # BOX averages ink coverage when shrinking (MNIST's anti-aliasing); BILINEAR avoids blocks when growing.
    resample = Image.Resampling.BOX if longer >= BOX_SIDE else Image.Resampling.BILINEAR
    small = np.clip(_resize(crop, (nw, nh), resample), 0, None)
    cy, cx = _centre_of_mass(small)
    # Integer placement, as MNIST did (sub-pixel shifts blur); clamped so the whole digit stays in frame.
    oy = int(np.clip(round(CENTRE - cy), 0, SIDE - nh))
    ox = int(np.clip(round(CENTRE - cx), 0, SIDE - nw))
    out[oy : oy + nh, ox : ox + nw] = small
    if out.max() <= 0:
        return out.astype(np.uint8)
    out *= 255 / float(out.max())
    return np.round(out).astype(np.uint8)


def frame_ink(ink: np.ndarray, thin: bool = False) -> np.ndarray:
    """Ink coverage (float, any size, ink > 0) -> a 28x28 uint8 digit framed as MNIST framed them."""
    return _to_mnist(ink, thin)


# --------------------------------------------------------------------------------------------- fast path


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


def _fast_path(a: np.ndarray, thin: bool, copy: bool) -> Preprocessed | None:
    """`a` (uint8 28x28) as its own model input when it is in MNIST format, with the statistics the general
    path would measure; None when the general path must run (not MNIST format, specks to remove, or a fat
    pen to thin)."""
    if not is_mnist_format(a):
        return None
    # The general path's cleanup, minus what cannot apply to a black border (polarity, uneven paper): the
    # same ink, so the same statistics and the same "empty" verdict.
    prep = _clean(_unit_float(a), 1.0)
    if prep.specks:
        return None  # the general path would erase them; the model must not see them
    if thin and prep.ink.any():
        crop = _crop(prep.ink)
        if stroke_width(crop) * BOX_SIDE / max(crop.shape) > THIN_ABOVE:
            return None  # as `_thin` decides: a fat pen, which the general path slims
    stats = _ink_stats(prep.ink, prep.contrast, prep.n_components)
    return _finish(a.copy() if copy else a, stats, (SIDE, SIDE))


# -------------------------------------------------------------------------------------------- public pipeline


@dataclass(frozen=True, eq=False)
class Preprocessed:
    """A model-ready digit: `image` is meaningful only when `status` is "ok"."""

    image: np.ndarray  # uint8 (28, 28), white ink on black, read-only
    status: str  # "ok" | "empty"
    stats: InkStats  # in source pixels
    source_size: tuple[int, int]  # (width, height) of the input


def _in_source_pixels(stats: InkStats, scale: float, size: tuple[int, int]) -> InkStats:
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


def _finish(image: np.ndarray, stats: InkStats, size: tuple[int, int]) -> Preprocessed:
    image.setflags(write=False)
    return Preprocessed(image, stats.status, stats, size)


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
        return _preprocess_image(Image.fromarray(_to_u8(g)), thin)
    smooth, k = restore_array(g)
    return _preprocess_gray(smooth, k, (g.shape[1], g.shape[0]), thin)


def _preprocess_gray(g: np.ndarray, scale: float, size: tuple[int, int], thin: bool) -> Preprocessed:
    prep = _prepare(g, scale)
    stats = _ink_stats(prep.ink, prep.contrast, prep.n_components, prep.scale)
    stats = _in_source_pixels(stats, prep.scale, size)
    return _finish(_to_mnist(prep.ink, thin), stats, size)


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
        g, scale, _ = _gray_of(im, COARSE_PIXELS)
        coarse = _preprocess_gray(g, scale * k, size, thin)
        if coarse.status == "ok" and max(coarse.stats.bbox_size) * scale * k >= COARSE_MIN_INK:
            return coarse
    g, scale, _ = _gray_of(im)
    return _preprocess_gray(g, scale * k, size, thin)


def naive_resize(source: ImageSource, *, pixel_limit: int = DEFAULT_PIXEL_LIMIT) -> np.ndarray:
    """The usual demo baseline: greyscale, white-on-black, squashed to 28x28 (uint8). For comparisons."""
    g, _, _ = _load_gray(source, pixel_limit)
    if _light_background(g):
        g = 1 - g
    out = _resize(g, (SIDE, SIDE), Image.Resampling.BICUBIC)  # PIL's default filter for resize
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- segmentation


def segment_digits(
    source: ImageSource, *, pixel_limit: int = DEFAULT_PIXEL_LIMIT, thin: bool = False
) -> list[tuple[Box, Preprocessed]]:
    """Split a number written on one line into digits, left to right, each with its box in source pixels.

    Components of the ink are merged when they overlap strongly in x (broken strokes) and split at the
    least-ink path near the middle when much wider than tall (touching digits). Marks shorter than 30% of
    the tallest group (dots, dashes) are dropped; each digit carries its own status and stats.
    """
    g, scale, size = _load_gray(source, pixel_limit, smooth=True)
    prep = _prepare(g, scale)
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
        stats = _in_source_pixels(ink_stats(part, contrast=prep.contrast), prep.scale, size)
        box = stats.bbox or (0, 0, 0, 0)  # never None: a part always holds ink
        result.append((box, _finish(_to_mnist(part, thin), stats, stats.bbox_size)))
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
