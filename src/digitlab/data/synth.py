"""The MNIST-derived real-world sets: canvases, photos, low-resolution scans, thick and thin pens, digits on pages.

A model that scores 99.6% on MNIST reads far fewer of the digits people draw in a browser or photograph when
the picture is simply squashed to 28x28. These sets (`digitlab.data.realworld.RealWorldSet`, with the fonts set
of `digitlab.data.fonts`) measure that gap, on input made the way users send it:

- `canvas_set`: MNIST *test* digits re-drawn as a 280x280 browser canvas exports them. Each digit is
  re-stroked with a constant-width anti-aliased pen (12-28 px) along its centre line, scaled to 120-250 px
  height (aspect jitter +-10%), rotated +-15 degrees and placed anywhere on the canvas (off-centre), then
  exported as transparent RGBA (untouched pixels (0,0,0,0), black or white ink in alpha) or opaque
  white-on-black / black-on-white RGB, a quarter each.
- `photo_set`: MNIST test digits written in dark ink on paper and photographed: ballpoint-to-marker pen,
  uneven lighting (a gradient and a soft shadow), paper texture and sensor noise, slight defocus blur, a
  warm tint, JPEG compression (quality 40-90); colour or greyscale JPEG bytes, 128-256 px a side.
- `lowres_set`: MNIST digits scanned at 7-16 px (area-averaged, from grey or from a binary bitmap as optical
  scanners do, sometimes 17 grey levels), placed off-centre on the scan's grid, then shown 4-16x bigger by
  nearest-neighbour (blocky) or 4-8x by bilinear upscaling, or left as the tiny file itself; white-on-black or
  black-on-white; PNG or JPEG (quality 60-95) bytes.
- `pen_set`: MNIST digits and handwriting-font glyphs re-drawn along their centre line with a thin (2-5% of
  the digit's height) or thick (10-26%) round pen, on a 280x280 canvas, off-centre, exported as a canvas does.
- `page_set`: a small digit (3-7% of the page's shorter side) anywhere on a page of 600-1200 px.

Everything is deterministic for a given seed (and library versions); image i depends only on the seed and i.
`scripts/make_realworld.py` writes test-digit versions (reported by `digitlab evaluate --realworld`) and
validation-digit versions (`*-tune`, which `digitlab.evaluation.refusal` fits the "not a digit" rule on) to
data/realworld/.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from digitlab.data.datasets import Split
from digitlab.data.drawing import (
    CANVAS_SIDE,
    digit_set,
    export_canvas,
    item_rng,
    param_columns,
    pick_digits,
    place,
    redraw,
)
from digitlab.data.fonts import font_digits
from digitlab.data.realworld import CANVAS_MODES, RealWorldSet, Source

__all__ = ["canvas_set", "lowres_set", "page_set", "pen_set", "photo_set", "relabel", "thick_font_set"]

LOWRES_GRID = (7, 16)  # the scan's longer side, px
LOWRES_ZOOM = (4.0, 16.0)  # how much bigger it is shown
THIN_PEN = (0.02, 0.05)  # pen width / digit height
THICK_PEN = (0.10, 0.26)
PAGE_SIDE = (600, 1200)
PAGE_DIGIT = (0.03, 0.07)  # digit height / the page's shorter side


def canvas_set(split: Split, n: int = 2000, seed: int = 0, pen: tuple[float, float] = (12, 28)) -> RealWorldSet:
    """`n` MNIST test digits re-drawn as 280x280 browser-canvas exports (see the module docstring).

    `pen`: the range of pen widths in px (the stored set's 12-28; wider for a fat-marker stress set).
    """

    def draw(image: np.ndarray, rng: np.random.Generator, i: int) -> tuple[Source, str, dict[str, float]]:
        p = {"height": rng.uniform(120, 250), "aspect": rng.uniform(0.9, 1.1), "angle": rng.uniform(-15, 15),
             "pen": rng.uniform(*pen)}  # fmt: skip
        mode = CANVAS_MODES[i % len(CANVAS_MODES)]
        cov = redraw(image, p["height"], p["aspect"], p["angle"], p["pen"])
        return export_canvas(place(cov, (CANVAS_SIDE, CANVAS_SIDE), rng), mode), mode, p

    return digit_set("canvas", split, n, seed, draw)


def _jpeg(a: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _photo(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str, dict[str, float]]:
    w, h = (int(v) for v in rng.integers(128, 257, size=2))
    height = rng.uniform(0.4, 0.75) * min(w, h)
    pen = height * rng.uniform(0.05, 0.14)  # ballpoint to felt-tip, relative to the digit's height
    p = {"height": height, "aspect": rng.uniform(0.9, 1.1), "angle": rng.uniform(-15, 15), "pen": pen}
    cov = redraw(digit, p["height"], p["aspect"], p["angle"], p["pen"])
    cov = place(cov, (h, w), rng, margin=max(4, min(w, h) // 12))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Lighting: a gradient in a random direction, plus a soft shadow (a hand or a phone) somewhere.
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * (xx / w - 0.5) + np.sin(theta) * (yy / h - 0.5)) * rng.uniform(0.1, 0.45)
    cx, cy, sr = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h, rng.uniform(0.3, 0.8) * max(w, h)
    shadow = rng.uniform(0, 0.3) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sr**2))
    light = np.clip(1 + ramp - shadow, 0.3, 1.2)
    paper = rng.uniform(0.7, 0.95)
    ink = rng.uniform(0.05, 0.35)
    texture = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(1, 3)) * rng.uniform(0.01, 0.04)
    p["blur"] = rng.uniform(0.3, 1.2)
    cov = ndi.gaussian_filter(cov, p["blur"])  # defocus
    gray = light * (paper + texture) * (1 - cov) + light * ink * cov
    tint = np.array([1.0, rng.uniform(0.95, 1.0), rng.uniform(0.85, 1.0)], np.float32)
    rgb = gray[..., None] * tint + rng.normal(0, rng.uniform(0.005, 0.025), (h, w, 1))  # sensor noise
    a = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    p["quality"] = int(rng.integers(40, 91))
    if rng.random() < 0.25:
        grey = np.round(a @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
        return _jpeg(grey, p["quality"]), "jpeg/l", p
    return _jpeg(a, p["quality"]), "jpeg/rgb", p


def photo_set(split: Split, n: int = 1000, seed: int = 1) -> RealWorldSet:
    """`n` MNIST test digits in dark ink on paper, photographed: JPEG bytes (see the module docstring)."""
    return digit_set("photo", split, n, seed, lambda image, rng, _: _photo(image, rng))


def relabel(ds: RealWorldSet, prefix: str, index: np.ndarray, name: str | None = None) -> RealWorldSet:
    """`ds` made from a subset of a dataset: origins "mnist-test:j" become "<prefix>:<index[j]>"."""
    origins = np.array([f"{prefix}:{int(index[int(o.rsplit(':', 1)[1])])}" if o.startswith("mnist-") else o
                        for o in ds.origins])  # fmt: skip
    return dataclasses.replace(ds, origins=origins, name=name or ds.name)


def _encode(a: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _scan(digit: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """A digit as a low-resolution scan: float32 in [0, 1] on its (off-centre) grid."""
    g = digit.astype(np.float32) / 255
    ys, xs = np.nonzero(g > 0.1)
    g = g[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    side = int(rng.integers(LOWRES_GRID[0], LOWRES_GRID[1] + 1))
    k = side / max(g.shape)
    size = (max(1, round(g.shape[1] * k)), max(1, round(g.shape[0] * k)))
    binary = bool(rng.random() < 0.5)
    im = Image.fromarray(g)
    if binary:  # an optical scanner's bitmap, 4x finer than the grid, counted per cell
        bitmap = np.asarray(im.resize((4 * size[0], 4 * size[1]), Image.Resampling.BILINEAR)) > 0.5
        im = Image.fromarray(bitmap.astype(np.float32))
    small = np.clip(np.asarray(im.resize(size, Image.Resampling.BOX), np.float32), 0, 1)
    levels = 16 if rng.random() < 0.5 else 255
    small = np.round(small * levels) / levels
    pad = [int(v) for v in rng.integers(0, max(1, side // 3) + 1, 4)]  # not centred
    small = np.pad(small, ((pad[0], pad[1]), (pad[2], pad[3])))
    return small, {"grid": float(side), "binary": float(binary), "levels": float(levels)}


def _lowres(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str, dict[str, float]]:
    small, p = _scan(digit, rng)
    h, w = small.shape
    r = rng.random()
    method = "tiny" if r < 0.15 else "nearest" if r < 0.75 else "bilinear"
    zoom = LOWRES_ZOOM if method == "nearest" else (LOWRES_ZOOM[0], LOWRES_ZOOM[0] * 2)  # smooth PNGs are big
    p["zoom"] = 1.0 if method == "tiny" else float(rng.uniform(*zoom))
    im = Image.fromarray(np.round(small * 255).astype(np.uint8))
    if method != "tiny":
        size = (round(w * p["zoom"]), round(h * p["zoom"]))
        im = im.resize(size, Image.Resampling.NEAREST if method == "nearest" else Image.Resampling.BILINEAR)
    a = np.asarray(im)
    polarity = "white-on-black" if rng.random() < 0.5 else "black-on-white"
    if polarity == "black-on-white":
        a = 255 - a
    fmt = "JPEG" if rng.random() < 0.25 else "PNG"
    p["quality"] = float(rng.integers(60, 96)) if fmt == "JPEG" else 0.0
    return _encode(a, fmt, int(p["quality"])), f"{method}/{polarity}/{fmt.lower()}", p


def lowres_set(split: Split, n: int = 1000, seed: int = 10) -> RealWorldSet:
    """`n` digits of `split` as low-resolution scans shown enlarged (see the module docstring): encoded bytes."""
    return digit_set("lowres", split, n, seed, lambda image, rng, _: _lowres(image, rng))


def _glyphs(fonts: Sequence[tuple[str, Path, str]]) -> list[tuple[str, list[np.ndarray]]]:
    """(name, ten uint8 digit glyphs) of each usable font."""
    out = []
    for name, path, _ in fonts:
        glyphs = font_digits(path)
        if glyphs is not None:
            out.append((name, [np.round(g * 255).astype(np.uint8) for g in glyphs]))
    return out


def _pen_params(rng: np.random.Generator, pen: tuple[float, float]) -> dict[str, float]:
    """A drawing's size, aspect, slant and pen (a share of the height drawn from `pen`), in this draw order."""
    return {"height": rng.uniform(110, 250), "aspect": rng.uniform(0.9, 1.1), "angle": rng.uniform(-12, 12),
            "pen_frac": rng.uniform(*pen)}  # fmt: skip


def _on_canvas(source: np.ndarray, p: dict[str, float], mode: str, rng: np.random.Generator) -> np.ndarray:
    """`source` re-drawn as `p` says, placed on a 280x280 canvas and exported in canvas `mode`; adds p["pen"]."""
    p["pen"] = max(2.0, p["pen_frac"] * p["height"])
    cov = redraw(source, p["height"], p["aspect"], p["angle"], p["pen"])
    return export_canvas(place(cov, (CANVAS_SIDE, CANVAS_SIDE), rng), mode)


def pen_set(split: Split, n: int = 1000, seed: int = 11, fonts: Sequence[tuple[str, Path, str]] = ()) -> RealWorldSet:
    """`n` digits re-drawn with a thin or a thick pen on a 280x280 canvas: MNIST digits of `split`, and every
    other image a glyph of one of `fonts` (handwriting fonts) when given. Kinds "<thin|thick>/<mode>"."""
    idx = pick_digits(split, n, seed)
    glyphs = _glyphs(fonts)
    images, labels, kinds, origins, rows = [], [], [], [], []
    for i, j in enumerate(idx):
        rng = item_rng(seed, i)
        thick = bool(i % 4 >= 2)
        p = _pen_params(rng, THICK_PEN if thick else THIN_PEN)
        if glyphs and i % 2:
            font, digits = glyphs[int(rng.integers(len(glyphs)))]
            label = int(rng.integers(10))
            source, origin = digits[label], f"font:{font}"
        else:
            label, source, origin = int(split.labels[j]), split.images[j], f"mnist-test:{j}"
        mode = CANVAS_MODES[(i // 4) % len(CANVAS_MODES)]
        images.append(_on_canvas(source, p, mode, rng))
        labels.append(label)
        kinds.append(f"{'thick' if thick else 'thin'}/{mode}")
        origins.append(origin)
        rows.append(p)
    return RealWorldSet("pen", images, np.array(labels, np.int64), np.array(kinds), np.array(origins),
                        param_columns(rows))  # fmt: skip


def thick_font_set(
    fonts: Sequence[tuple[str, Path, str]], n: int = 1000, seed: int = 13, pen: tuple[float, float] = (0.08, 0.24)
) -> RealWorldSet:
    """`n` glyphs of `fonts` re-drawn with a thick pen (`pen`: width / height) on 280x280 canvases, off-centre,
    every canvas mode in turn: how a handwriting-font digit drawn with a marker reaches the app. Kinds
    "<mid|fat>/<mode>" (fat: a pen over 16% of the height, which closes small loops)."""
    glyphs = _glyphs(fonts)
    images, labels, kinds, origins, rows = [], [], [], [], []
    for i in range(n):
        rng = item_rng(seed, i)
        p = _pen_params(rng, pen)
        font, digits = glyphs[int(rng.integers(len(glyphs)))]
        label = int(rng.integers(10))
        mode = CANVAS_MODES[i % len(CANVAS_MODES)]
        images.append(_on_canvas(digits[label], p, mode, rng))
        labels.append(label)
        kinds.append(f"{'fat' if p['pen_frac'] > 0.16 else 'mid'}/{mode}")
        origins.append(f"font:{font}")
        rows.append(p)
    return RealWorldSet("thick-font", images, np.array(labels, np.int64), np.array(kinds), np.array(origins),
                        param_columns(rows))  # fmt: skip


def page_set(split: Split, n: int = 500, seed: int = 12) -> RealWorldSet:
    """`n` digits of `split`, each small on a big page (see the module docstring); kinds "page/<mode>"."""

    def draw(image: np.ndarray, rng: np.random.Generator, i: int) -> tuple[Source, str, dict[str, float]]:
        w, h = (int(v) for v in rng.integers(PAGE_SIDE[0], PAGE_SIDE[1] + 1, size=2))
        p = {"height": rng.uniform(*PAGE_DIGIT) * min(w, h), "aspect": rng.uniform(0.9, 1.1),
             "angle": rng.uniform(-10, 10)}  # fmt: skip
        p["pen"] = max(1.5, p["height"] * rng.uniform(0.08, 0.16))
        mode = CANVAS_MODES[i % len(CANVAS_MODES)]
        cov = redraw(image, p["height"], p["aspect"], p["angle"], p["pen"])
        return export_canvas(place(cov, (h, w), rng), mode), f"page/{mode}", p

    return digit_set("page", split, n, seed, draw)
