"""REST API image limits: pixels per image and per request read from the headers, and the decoding memory in use."""

# A request's cost is bounded before any pixel is decoded: each image's header gives its size (over
# `pixel_limit`: refused), the pixels a request's images hold together are capped (`request_pixel_limit`), and a
# worker decodes at once only as many images as its estimated decoding memory allows (`DecodeMemory`). JPEGs
# much bigger than the preprocessing needs are decoded at 1/2 to 1/8 size by the decoder itself (DCT scaling,
# `Image.draft`): preprocessing shrinks every image to at most 512x512 anyway. Other formats are decoded at full
# size: their decoders cannot skip pixels, so the limits are what bounds them.

from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
from PIL import Image
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitlab.data.decode import FORMATS, too_many_pixels
from digitlab.serving.errors import BodyTimeout, BodyTooLarge, PixelLimitError, error_json

__all__ = ["DRAFT_MIN_PIXELS", "BodyLimitMiddleware", "DecodeMemory", "ImageHead", "check_request_pixels", "image_head"]

DRAFT_MIN_PIXELS = 1024 * 1024  # a JPEG is decoded reduced only down to this (4x the 512x512 preprocessing uses)
SMALL_BYTES = 16 * 1024 * 1024  # decodes estimated below this never wait for DecodeMemory (the usual canvases)
# Peak bytes per decoded pixel of decoding + preprocessing, by the mode decoded (measured with Pillow 13 on
# 4000x4000 images: L and 1-bit 2.0, P 5.1, RGB PNG 7.0, RGB JPEG 5.1; RGBA, LA, 16-bit, WebP and GIF 13-16).
PEAK_BYTES_PER_PIXEL = {"1": 2, "L": 2, "P": 8, "RGB": 8, "YCbCr": 8}
PEAK_BYTES_DEFAULT = 16


@dataclass(frozen=True)
class ImageHead:
    """What an image's header says it will cost, and what to hand the predictor."""

    source: bytes | Image.Image  # the bytes, or an opened JPEG set to decode at a reduced size
    pixels: int  # pixels the decoder will produce
    scale: float  # source pixels per decoded pixel along each side (1.0: full size)
    peak_bytes: int  # estimated peak memory to decode and preprocess it


def image_head(data: bytes, pixel_limit: int, *, reduce: bool = True) -> ImageHead:
    """The cost of `data` from its header alone; PixelLimitError when it declares more than `pixel_limit` pixels.
    `reduce`: a big JPEG is set to decode at a reduced size. An unreadable header costs nothing here (decoding
    will say why it is refused)."""
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PixelLimitError(too_many_pixels(e, pixel_limit)) from None
    except Exception:
        return ImageHead(data, 0, 1.0, 0)
    w, h = im.size
    if w * h > pixel_limit:
        raise PixelLimitError(f"too many pixels ({w}x{h} = {w * h:,}, limit {pixel_limit:,})")
    source: bytes | Image.Image = data
    if reduce and im.format in ("JPEG", "MPO") and w * h >= 4 * DRAFT_MIN_PIXELS:
        step = min(8, 2 ** int(math.log2(math.sqrt(w * h / DRAFT_MIN_PIXELS))))
        if im.draft("L" if im.mode in ("L", "RGB") else im.mode, (w // step, h // step)) is not None:
            source = im  # grey straight from the decoder: preprocessing only keeps the luma
    dw, dh = im.size
    peak = dw * dh * PEAK_BYTES_PER_PIXEL.get(im.mode, PEAK_BYTES_DEFAULT)
    return ImageHead(source, dw * dh, max(w / dw, h / dh), peak)


def check_request_pixels(heads: Sequence[ImageHead], limit: int) -> None:
    """PixelLimitError when the images of one request would decode to more than `limit` pixels together."""
    total = sum(h.pixels for h in heads)
    if total > limit:
        raise PixelLimitError(f"too many pixels in one request ({len(heads)} images, {total:,} pixels to decode "
                              f"together, limit {limit:,}): send fewer or smaller images per request")  # fmt: skip


def _malloc_trim() -> ctypes._CFuncPtr | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand the memory freed after a big decode back to the OS. glibc keeps what is freed in the heap of the
    thread that freed it, so without this each of a worker's threads keeps as much as its biggest decode took
    (measured: eight parallel 6000x6000 RGBA PNGs, decoded one at a time, still left 1.6 GiB resident)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class DecodeMemory:
    """A worker's budget of estimated decoding memory (a weighted semaphore over threads): a request holds the
    peak of its biggest image while it decodes (images of one request are decoded one after the other), and
    waits while the others hold too much. A request bigger than the whole budget runs once nothing else holds
    any; small ones (under SMALL_BYTES) never wait."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        if amount < SMALL_BYTES:
            yield
            return
        amount = min(amount, self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self.held + amount <= self.capacity)
            self.held += amount
        try:
            yield
        finally:
            release_freed_memory()
            with self._cond:
                self.held -= amount
                self._cond.notify_all()


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: at once from Content-Length, else as soon as the streamed total passes it,
    so an oversized body is never held in memory whole; 408 for a body still arriving `timeout` s after the
    request began (a client trickling its upload holds a connection, not a thread, but not for ever)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            rid = scope.get("state", {}).get("request_id")
            msg = f"request body of {int(declared):,} bytes is over the limit of {limit:,} bytes"
            await error_json(413, BodyTooLarge.code, msg, rid, {"Connection": "close"})(scope, receive, send)
            return
        total, complete = 0, False
        deadline = time.monotonic() + self.timeout

        async def limited() -> Message:
            nonlocal total, complete
            if complete:  # after the body: waiting for a disconnect is not the body's time
                return await receive()
            with anyio.move_on_after(deadline - time.monotonic()) as waited:
                message = await receive()
            if waited.cancelled_caught:
                raise BodyTimeout(f"the request body did not arrive within {self.timeout:g} s", {"Connection": "close"})
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            total += len(message.get("body", b""))
            if total > limit:
                raise BodyTooLarge(f"request body is over the limit of {limit:,} bytes", {"Connection": "close"})
            return message

        await self.app(scope, limited, send)
