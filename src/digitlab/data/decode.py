"""Decoding: any image a user sends (path, bytes, file, PIL image, array) as a loaded image, then as grey.

Only the decoders in FORMATS ever see user bytes; the pixel limit is checked on the header, before decoding.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import IO, TypeAlias

import numpy as np
import pyspng
from PIL import Image, ImageOps

from digitlab.core.errors import ImageError
from digitlab.data.pixels import median, to_u8, unit_float

ImageSource: TypeAlias = str | os.PathLike[str] | bytes | bytearray | IO[bytes] | Image.Image | np.ndarray

DEFAULT_PIXEL_LIMIT = 40_000_000
# Decoders we accept (the JPEG opener also returns the MPO files phone cameras write); everything else is
# refused so that rarely used, rarely hardened plugins never see user bytes.
# Decoders we accept (the JPEG opener also returns the MPO files phone cameras write); everything else is
# refused so that rarely used, rarely hardened plugins never see user bytes.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "GIF", "TIFF")


FORMAT_NAMES = "PNG, JPEG, WebP, BMP, GIF or TIFF"


def one_line(e: BaseException) -> str:
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
            reason = getattr(e, "strerror", None) or one_line(e)  # strerror: without the (long) name again
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
        raise ImageError(f"{name}: cannot read image header ({one_line(e)})") from None
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
        raise ImageError(f"{name}: cannot decode image ({one_line(e)})") from None


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
        return Image.fromarray(to_u8(np.clip(a, 0, 1, out=a)))
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
        u8 = to_u8(np.clip(a, 0, 1))
    elif np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        top = 65535 if a.dtype == np.uint16 else 255
        if lo < 0 or hi > top:
            raise ImageError(f"integer array values must be in [0, {top}], got {lo}..{hi}")
        u8 = np.round(a / 257).astype(np.uint8) if top == 65535 else a.astype(np.uint8)
    else:
        raise ImageError(f"unsupported array dtype {a.dtype}")
    return Image.fromarray(np.ascontiguousarray(u8))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's convert("L")


def to_gray(image: Image.Image) -> np.ndarray:
    """Greyscale float32 (H, W) in [0, 1]; transparency is composited over a contrasting background."""
    im = image if image.mode in ("L", "LA", "RGB", "RGBA") else _normalise_mode(image)
    u8 = np.asarray(im)
    a = unit_float(u8)
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
    paper = median(opaque) if opaque.size else 0.0
    out = colour * alpha
    if opaque.size and np.mean(np.abs(opaque - paper) > 0.4) >= 0.01:
        background = paper
    else:
        background = contrasting(float(out.sum() / alpha.sum()))  # from the ink's mean colour
    under = 1 - alpha
    under *= background
    out += under
    return out


def contrasting(ink: float) -> float:
    """The background a transparent image is composited over: white under dark ink, black under light ink."""
    return 1.0 if ink < 0.5 else 0.0
