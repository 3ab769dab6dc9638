"""More real-world sets for `digitlab.realworld`: low-resolution scans, thick and thin pens, small digits on big pages.

- `lowres_set`: MNIST digits scanned at 7-16 px (area-averaged, from grey or from a binary bitmap as optical
  scanners do, sometimes 17 grey levels), placed off-centre on the scan's grid, then shown 4-16x bigger by
  nearest-neighbour (blocky) or 4-8x by bilinear upscaling, or left as the tiny file itself; white-on-black or
  black-on-white; PNG or JPEG (quality 60-95) bytes.
- `pen_set`: MNIST digits and handwriting-font glyphs re-drawn along their centre line with a thin (2-5% of
  the digit's height) or thick (10-26%) round pen, on a 280x280 canvas, off-centre, exported as a canvas does.
- `page_set`: a small digit (3-7% of the page's shorter side) anywhere on a page of 600-1200 px.

Image i depends only on the seed and i. `scripts/make_realworld.py` writes test-digit versions (reported by
`digitlab evaluate --realworld`) and validation-digit versions (`*-tune`, which `digitlab.refusal` fits the
"not a digit" rule on) to data/realworld/.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from digitlab.data import Split
from digitlab.realworld import (
    CANVAS_MODES,
    CANVAS_SIDE,
    RealWorldSet,
    Source,
    _export,
    _font_digits,
    _params,
    _pick,
    _place,
    _restroke,
    _rng,
    digit_set,
)

__all__ = ["lowres_set", "page_set", "pen_set", "relabel"]

LOWRES_GRID = (7, 16)  # the scan's longer side, px
LOWRES_ZOOM = (4.0, 16.0)  # how much bigger it is shown
THIN_PEN = (0.02, 0.05)  # pen width / digit height
THICK_PEN = (0.10, 0.26)
PAGE_SIDE = (600, 1200)
PAGE_DIGIT = (0.03, 0.07)  # digit height / the page's shorter side


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
        glyphs = _font_digits(path)
        if glyphs is not None:
            out.append((name, [np.round(g * 255).astype(np.uint8) for g in glyphs]))
    return out


def pen_set(split: Split, n: int = 1000, seed: int = 11, fonts: Sequence[tuple[str, Path, str]] = ()) -> RealWorldSet:
    """`n` digits re-drawn with a thin or a thick pen on a 280x280 canvas: MNIST digits of `split`, and every
    other image a glyph of one of `fonts` (handwriting fonts) when given. Kinds "<thin|thick>/<mode>"."""
    idx = _pick(split, n, seed)
    glyphs = _glyphs(fonts)
    images, labels, kinds, origins, rows = [], [], [], [], []
    for i, j in enumerate(idx):
        rng = _rng(seed, i)
        thick = bool(i % 4 >= 2)
        p = {"height": rng.uniform(110, 250), "aspect": rng.uniform(0.9, 1.1), "angle": rng.uniform(-12, 12),
             "pen_frac": rng.uniform(*(THICK_PEN if thick else THIN_PEN))}  # fmt: skip
        if glyphs and i % 2:
            font, digits = glyphs[int(rng.integers(len(glyphs)))]
            label = int(rng.integers(10))
            source, origin = digits[label], f"font:{font}"
        else:
            label, source, origin = int(split.labels[j]), split.images[j], f"mnist-test:{j}"
        p["pen"] = max(2.0, p["pen_frac"] * p["height"])
        mode = CANVAS_MODES[(i // 4) % len(CANVAS_MODES)]
        cov = _restroke(source, p["height"], p["aspect"], p["angle"], p["pen"])
        images.append(_export(_place(cov, (CANVAS_SIDE, CANVAS_SIDE), rng), mode))
        labels.append(label)
        kinds.append(f"{'thick' if thick else 'thin'}/{mode}")
        origins.append(origin)
        rows.append(p)
    return RealWorldSet("pen", images, np.array(labels, np.int64), np.array(kinds), np.array(origins),
                        _params(rows))  # fmt: skip


def thick_font_set(
    fonts: Sequence[tuple[str, Path, str]], n: int = 1000, seed: int = 13, pen: tuple[float, float] = (0.08, 0.24)
) -> RealWorldSet:
    """`n` glyphs of `fonts` re-drawn with a thick pen (`pen`: width / height) on 280x280 canvases, off-centre,
    every canvas mode in turn: how a handwriting-font digit drawn with a marker reaches the app. Kinds
    "<mid|fat>/<mode>" (fat: a pen over 16% of the height, which closes small loops)."""
    glyphs = _glyphs(fonts)
    images, labels, kinds, origins, rows = [], [], [], [], []
    for i in range(n):
        rng = _rng(seed, i)
        p = {"height": rng.uniform(110, 250), "aspect": rng.uniform(0.9, 1.1), "angle": rng.uniform(-12, 12),
             "pen_frac": rng.uniform(*pen)}  # fmt: skip
        font, digits = glyphs[int(rng.integers(len(glyphs)))]
        label = int(rng.integers(10))
        p["pen"] = max(2.0, p["pen_frac"] * p["height"])
        mode = CANVAS_MODES[i % len(CANVAS_MODES)]
        cov = _restroke(digits[label], p["height"], p["aspect"], p["angle"], p["pen"])
        images.append(_export(_place(cov, (CANVAS_SIDE, CANVAS_SIDE), rng), mode))
        labels.append(label)
        kinds.append(f"{'fat' if p['pen_frac'] > 0.16 else 'mid'}/{mode}")
        origins.append(f"font:{font}")
        rows.append(p)
    return RealWorldSet("thick-font", images, np.array(labels, np.int64), np.array(kinds), np.array(origins),
                        _params(rows))  # fmt: skip


def page_set(split: Split, n: int = 500, seed: int = 12) -> RealWorldSet:
    """`n` digits of `split`, each small on a big page (see the module docstring); kinds "page/<mode>"."""

    def draw(image: np.ndarray, rng: np.random.Generator, i: int) -> tuple[Source, str, dict[str, float]]:
        w, h = (int(v) for v in rng.integers(PAGE_SIDE[0], PAGE_SIDE[1] + 1, size=2))
        p = {"height": rng.uniform(*PAGE_DIGIT) * min(w, h), "aspect": rng.uniform(0.9, 1.1),
             "angle": rng.uniform(-10, 10)}  # fmt: skip
        p["pen"] = max(1.5, p["height"] * rng.uniform(0.08, 0.16))
        mode = CANVAS_MODES[i % len(CANVAS_MODES)]
        cov = _restroke(image, p["height"], p["aspect"], p["angle"], p["pen"])
        return _export(_place(cov, (h, w), rng), mode), f"page/{mode}", p

    return digit_set("page", split, n, seed, draw)
