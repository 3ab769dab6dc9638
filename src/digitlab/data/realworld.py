"""Non-MNIST evaluation sets: MNIST test digits re-drawn as canvases and photos, and digits from handwriting fonts.

A model that scores 99.6% on MNIST reads far fewer of the digits people draw in a browser or photograph when
the picture is simply squashed to 28x28. These sets measure that gap, on input made the way users send it:

- `canvas_set`: MNIST *test* digits re-drawn as a 280x280 browser canvas exports them. Each digit is
  re-stroked with a constant-width anti-aliased pen (12-28 px) along its centre line, scaled to 120-250 px
  height (aspect jitter +-10%), rotated +-15 degrees and placed anywhere on the canvas (off-centre), then
  exported as transparent RGBA (untouched pixels (0,0,0,0), black or white ink in alpha) or opaque
  white-on-black / black-on-white RGB, a quarter each.
- `photo_set`: MNIST test digits written in dark ink on paper and photographed: ballpoint-to-marker pen,
  uneven lighting (a gradient and a soft shadow), paper texture and sensor noise, slight defocus blur, a
  warm tint, JPEG compression (quality 40-90); colour or greyscale JPEG bytes, 128-256 px a side.
- `font_set`: the digits 0-9 rendered from handwriting-like and ordinary fonts packaged by Debian (see
  FONTS), random size, position and rotation on canvases of 64-280 px, exported like the canvas set.

Everything is deterministic for a given seed (and library versions). In the canvas and photo sets image i
depends only on the seed and i, so a small `n` gives the first images of a large one.
`scripts/make_realworld.py` writes the sets to `data/realworld/{canvas,photo,fonts}.npz` (committed, so
evaluation never needs the fonts), and `evaluate_realworld` scores a run on them with digitlab's `preprocess`
and with the `naive_resize` baseline.
"""

from __future__ import annotations

import io
import json
import lzma
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from digitlab.core.errors import DataError
from digitlab.data.datasets import Split

__all__ = [
    "CANVAS_MODES",
    "FONTS",
    "SET_NAMES",
    "RealWorldSet",
    "canvas_set",
    "find_fonts",
    "font_set",
    "load_realworld",
    "photo_set",
    "realworld_dir",
    "save_realworld",
]

SET_NAMES = ("canvas", "photo", "fonts", "lowres", "pen", "page")
CANVAS_SIDE = 280
# How a canvas leaves the browser: (0,0,0,0) background with black or white ink in alpha, or filled first.
CANVAS_MODES = ("rgba/black-ink", "rgba/white-ink", "rgb/white-on-black", "rgb/black-on-white")
FORMAT_VERSION = 1
RESTROKE_LEVEL = 0.4  # the shape whose centre line is re-drawn: the enlarged digit above this share of its peak

# Fonts from Debian packages, as (package, file name under /usr/share/fonts/*/, style). Handwriting-like
# fonts first; ordinary print fonts give breadth (serif 1s, open 4s, crossed 7s). Left out: outline fonts
# (hollow strokes: fonts-ecolier-court, fonts-femkeklaver), which nobody draws.
FONTS: tuple[tuple[str, str, str], ...] = (
    ("fonts-breip", "breip/Breip.ttf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeBuild-Regular.otf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeConnect-Regular.otf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeCreate-Regular.otf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeLearn-Regular.otf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeMentor-Regular.otf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeOrganize-Regular.otf", "handwriting"),
    ("fonts-comic-neue", "comic-neue/ComicNeue-Regular.otf", "handwriting"),
    ("fonts-comic-neue", "comic-neue/ComicNeue-Bold.otf", "handwriting"),
    ("fonts-comic-neue", "comic-neue/ComicNeue-Light.otf", "handwriting"),
    ("fonts-comic-neue", "comic-neue/ComicNeue-Italic.otf", "handwriting"),
    ("fonts-dancingscript", "dancingscript/DancingScript-Regular.otf", "handwriting"),
    ("fonts-dancingscript", "dancingscript/DancingScript-Bold.otf", "handwriting"),
    ("fonts-dkg-handwriting", "fifthhorseman/dkg.ttf", "handwriting"),
    ("fonts-dkg-handwriting", "fifthhorseman/dkgBd.ttf", "handwriting"),
    ("fonts-havana", "havana/Havana-Regular.otf", "handwriting"),
    ("fonts-humor-sans", "humor-sans/Humor-Sans.ttf", "handwriting"),
    ("fonts-kaushanscript", "kaushanscript/KaushanScript-Regular.otf", "handwriting"),
    ("fonts-klee", "klee/KleeOne-Regular.ttf", "handwriting"),
    ("fonts-klee", "klee/KleeOne-SemiBold.ttf", "handwriting"),
    ("fonts-kristi", "kristi/Kristi.ttf", "handwriting"),
    ("fonts-rufscript", "rufscript/Rufscript010.ttf", "handwriting"),
    ("fonts-sjfonts", "sjfonts/Delphine.ttf", "handwriting"),
    ("fonts-sjfonts", "sjfonts/SteveHand.ttf", "handwriting"),
    ("fonts-tlwg-purisa-ttf", "tlwg/Purisa.ttf", "handwriting"),
    ("fonts-tlwg-purisa-ttf", "tlwg/Purisa-Oblique.ttf", "handwriting"),
    ("fonts-tomsontalks", "tomsontalks/TomsonTalks.ttf", "handwriting"),
    ("fonts-urw-base35", "urw-base35/Z003-MediumItalic.otf", "handwriting"),
    ("fonts-yusei-magic", "yusei-magic/YuseiMagic-Regular.ttf", "handwriting"),
    ("fonts-dejavu-core", "dejavu/DejaVuSans.ttf", "print"),
    ("fonts-dejavu-core", "dejavu/DejaVuSans-Bold.ttf", "print"),
    ("fonts-dejavu-extra", "dejavu/DejaVuSans-Oblique.ttf", "print"),
    ("fonts-dejavu-core", "dejavu/DejaVuSansMono.ttf", "print"),
    ("fonts-dejavu-core", "dejavu/DejaVuSerif.ttf", "print"),
    ("fonts-dejavu-extra", "dejavu/DejaVuSans-ExtraLight.ttf", "print"),
    ("fonts-dejavu-extra", "dejavu/DejaVuSansCondensed.ttf", "print"),
    ("fonts-freefont-ttf", "freefont/FreeSans.ttf", "print"),
    ("fonts-freefont-ttf", "freefont/FreeSerif.ttf", "print"),
    ("fonts-freefont-ttf", "freefont/FreeSerifItalic.ttf", "print"),
    ("fonts-freefont-ttf", "freefont/FreeMono.ttf", "print"),
    ("fonts-liberation2", "liberation2/LiberationSans-Regular.ttf", "print"),
    ("fonts-liberation2", "liberation2/LiberationSans-Bold.ttf", "print"),
    ("fonts-liberation2", "liberation2/LiberationSerif-Regular.ttf", "print"),
    ("fonts-liberation2", "liberation2/LiberationMono-Regular.ttf", "print"),
    ("fonts-urw-base35", "urw-base35/NimbusSans-Regular.otf", "print"),
    ("fonts-urw-base35", "urw-base35/NimbusRoman-Italic.otf", "print"),
    ("fonts-urw-base35", "urw-base35/URWGothic-Book.otf", "print"),
    ("fonts-urw-base35", "urw-base35/URWBookman-Light.otf", "print"),
    ("fonts-urw-base35", "urw-base35/C059-Roman.otf", "print"),
    ("fonts-urw-base35", "urw-base35/P052-Italic.otf", "print"),
    ("fonts-gnutypewriter", "gnutypewriter/GNUTypewriter.ttf", "print"),
    ("fonts-jura", "jura/Jura-Regular.otf", "print"),
    ("fonts-opendyslexic", "opendyslexic/OpenDyslexic-Regular.otf", "print"),
)
FONT_ROOTS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype"))
FONT_VARIANTS = 4  # images per font and digit: one per export mode, each with its own size, place and angle

Source = np.ndarray | bytes


# --------------------------------------------------------------------------------------------- the set


@dataclass(frozen=True)
class RealWorldSet:
    """Source images as a user would send them, with their labels.

    `images[i]` is a uint8 array (H, W) L, (H, W, 3) RGB or (H, W, 4) RGBA, or the bytes of a JPEG file;
    `kinds[i]` says which format variant it is (e.g. "rgba/black-ink", "jpeg/rgb"); `origins[i]` where the
    digit came from ("mnist-test:1234", "font:breip/Breip.ttf"); `params` how it was drawn (for analysis:
    "height" and "pen" in px, "angle" in degrees, ...).
    """

    name: str
    images: Sequence[Source]
    labels: np.ndarray  # int64 (N,)
    kinds: np.ndarray  # str (N,)
    origins: np.ndarray  # str (N,)
    params: dict[str, np.ndarray] = field(default_factory=dict)  # how each image was drawn, float (N,) each

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: Sequence[int] | np.ndarray | slice) -> RealWorldSet:
        ids = np.arange(len(self))[idx]
        return RealWorldSet(self.name, [self.images[i] for i in ids], self.labels[ids], self.kinds[ids],
                            self.origins[ids], {k: v[ids] for k, v in self.params.items()})  # fmt: skip


def _rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, i])


def _pick(split: Split, n: int, seed: int) -> np.ndarray:
    if split.labels is None:
        raise DataError("the split has no labels")
    if not 0 < n <= len(split):
        raise DataError(f"n must be in 1..{len(split)}, not {n}")
    return np.random.default_rng([seed, 0x5E7]).permutation(len(split))[:n]


# --------------------------------------------------------------------------------------------- drawing


def _resize(a: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    im = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
    return np.asarray(im.resize(size, resample), dtype=np.float32)


def _crop(a: np.ndarray, level: float = 0.0, pad: int = 0) -> np.ndarray:
    ys, xs = np.nonzero(a > level)
    y0, y1 = max(0, ys.min() - pad), min(a.shape[0], ys.max() + 1 + pad)
    x0, x1 = max(0, xs.min() - pad), min(a.shape[1], xs.max() + 1 + pad)
    return a[y0:y1, x0:x1]


# Zhang-Suen: a pixel goes only if one of these neighbour triples (p2, p4, p6 ... as indices 0..7) has a 0.
ZS_GUARDS = (((0, 2, 4), (2, 4, 6)), ((0, 2, 6), (0, 4, 6)))


def _skeleton(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide, connected centre lines of a binary shape (Zhang-Suen thinning, vectorised)."""
    img = np.pad(mask, 1).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            c = img[1:-1, 1:-1]
            # neighbours p2..p9, clockwise from north
            p = [img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:],
                 img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]]  # fmt: skip
            b = sum(q.astype(np.int8) for q in p)
            a = sum(((p[k] == 0) & (p[(k + 1) % 8] == 1)).astype(np.int8) for k in range(8))
            first, second = ZS_GUARDS[step]
            keep = (p[first[0]] & p[first[1]] & p[first[2]]) | (p[second[0]] & p[second[1]] & p[second[2]])
            remove = (c == 1) & (b >= 2) & (b <= 6) & (a == 1) & (keep == 0)
            if remove.any():
                c[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def _restroke(digit: np.ndarray, height: float, aspect: float, angle: float, pen: float) -> np.ndarray:
    """Ink coverage (float32 in [0, 1], cropped) of an MNIST digit re-drawn with a round pen `pen` px wide.

    The digit is enlarged to `height` px (its width times `aspect`) and rotated by `angle` degrees; its
    centre line (the skeleton of the enlarged shape) is then traced with the pen, whose edge is anti-aliased
    over one pixel, as a browser canvas strokes a path. Where the digit is much thicker than its typical
    stroke (loops filled in, blots), the shape grown or shrunk by the difference between pen and typical
    stroke is kept as well: a small loop must not become a line, or a 9 would turn into a 1.
    """
    from digitlab.data.measure import stroke_width

    g = _crop(digit.astype(np.float32) / 255, 0.1)
    k = height / g.shape[0]
    pad = np.pad(g, 2)
    big = _resize(pad, (max(1, round(pad.shape[1] * k * aspect)), max(1, round(pad.shape[0] * k))),
                  Image.Resampling.BICUBIC)  # fmt: skip
    big = np.asarray(Image.fromarray(big).rotate(angle, Image.Resampling.BICUBIC, expand=True), np.float32)
    big = ndi.gaussian_filter(big, k / 3)  # rounder outlines: fewer spurs on the centre line
    margin = int(np.ceil(pen / 2)) + 2
    mask = np.pad(big > RESTROKE_LEVEL * float(big.max()), margin)
    skeleton = _skeleton(mask)
    pen_cov = np.clip(pen / 2 + 0.5 - ndi.distance_transform_edt(~skeleton), 0, 1)
    inside = ndi.distance_transform_edt(mask) - ndi.distance_transform_edt(~mask)  # signed: > 0 inside
    grow = (pen - stroke_width(mask.astype(np.float32))) / 2
    shape_cov = np.clip(inside + grow + 0.5, 0, 1)
    # Distances on a pixel grid take few distinct values near the edge; a slight blur gives the smooth
    # coverage ramp of a canvas's anti-aliasing.
    return _crop(ndi.gaussian_filter(np.maximum(pen_cov, shape_cov).astype(np.float32), 0.5))


def _place(cov: np.ndarray, size: tuple[int, int], rng: np.random.Generator, margin: int = 3) -> np.ndarray:
    """Paste coverage at a random position on an empty (H, W) = `size` canvas, shrinking it if it is too big."""
    H, W = size
    h, w = cov.shape
    fit = min(1.0, (H - 2 * margin) / h, (W - 2 * margin) / w)
    if fit < 1:
        cov = np.clip(_resize(cov, (max(1, int(w * fit)), max(1, int(h * fit))), Image.Resampling.BOX), 0, 1)
        h, w = cov.shape
    y = int(rng.integers(margin, H - margin - h + 1))
    x = int(rng.integers(margin, W - margin - w + 1))
    out = np.zeros(size, np.float32)
    out[y : y + h, x : x + w] = cov
    return out


def _export(cov: np.ndarray, mode: str) -> np.ndarray:
    """Coverage in [0, 1] -> the uint8 array a canvas export decodes to, for one of CANVAS_MODES."""
    return _export_u8(np.round(np.clip(cov, 0, 1) * 255).astype(np.uint8), mode)


def _export_u8(a: np.ndarray, mode: str) -> np.ndarray:
    if mode == "rgba/black-ink":  # untouched pixels (0,0,0,0); black ink whose alpha is its coverage
        return np.dstack([np.zeros_like(a)] * 3 + [a])
    if mode == "rgba/white-ink":
        rgb = np.where(a > 0, 255, 0).astype(np.uint8)
        return np.dstack([rgb] * 3 + [a])
    if mode == "rgb/white-on-black":
        return np.dstack([a] * 3)
    if mode == "rgb/black-on-white":
        return np.dstack([255 - a] * 3)
    raise ValueError(f"unknown canvas mode {mode!r}")


def _coverage_u8(image: np.ndarray, mode: str) -> np.ndarray:
    """The inverse of `_export_u8`."""
    if mode.startswith("rgba/"):
        return image[..., 3]
    return image[..., 0] if mode == "rgb/white-on-black" else 255 - image[..., 0]


def _params(rows: list[dict[str, float]]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in rows], np.float32) for k in rows[0]} if rows else {}


Draw = Callable[[np.ndarray, np.random.Generator, int], tuple[Source, str, dict[str, float]]]


def digit_set(name: str, split: Split, n: int, seed: int, draw: Draw) -> RealWorldSet:
    """`n` digits of `split` (a seeded, class-balanced pick), each re-made by `draw(image, rng, i)` ->
    (source, kind, params) with its own generator `_rng(seed, i)`: the loop every MNIST-derived set shares."""
    idx = _pick(split, n, seed)
    images, kinds, rows = [], [], []
    for i, j in enumerate(idx):
        data, kind, p = draw(split.images[j], _rng(seed, i), i)
        images.append(data)
        kinds.append(kind)
        rows.append(p)
    return RealWorldSet(name, images, split.labels[idx].astype(np.int64), np.array(kinds),
                        np.array([f"mnist-test:{j}" for j in idx]), _params(rows))  # fmt: skip


def canvas_set(split: Split, n: int = 2000, seed: int = 0, pen: tuple[float, float] = (12, 28)) -> RealWorldSet:
    """`n` MNIST test digits re-drawn as 280x280 browser-canvas exports (see the module docstring).

    `pen`: the range of pen widths in px (the stored set's 12-28; wider for a fat-marker stress set).
    """

    def draw(image: np.ndarray, rng: np.random.Generator, i: int) -> tuple[Source, str, dict[str, float]]:
        p = {"height": rng.uniform(120, 250), "aspect": rng.uniform(0.9, 1.1), "angle": rng.uniform(-15, 15),
             "pen": rng.uniform(*pen)}  # fmt: skip
        mode = CANVAS_MODES[i % len(CANVAS_MODES)]
        cov = _restroke(image, p["height"], p["aspect"], p["angle"], p["pen"])
        return _export(_place(cov, (CANVAS_SIDE, CANVAS_SIDE), rng), mode), mode, p

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
    cov = _restroke(digit, p["height"], p["aspect"], p["angle"], p["pen"])
    cov = _place(cov, (h, w), rng, margin=max(4, min(w, h) // 12))
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


# --------------------------------------------------------------------------------------------- fonts


def find_fonts(roots: Iterable[Path] = FONT_ROOTS) -> list[tuple[str, Path, str]]:
    """The FONTS installed here, as (name, path, style); fonts that are not installed are left out."""
    found = []
    roots = list(roots)
    for _, name, style in FONTS:
        path = next((r / name for r in roots if (r / name).is_file()), None)
        if path is not None:
            found.append((name, path, style))
    return found


def _glyph(font: ImageFont.FreeTypeFont, text: str) -> np.ndarray:
    """Anti-aliased coverage of `text` (float32, cropped; empty when the font draws nothing)."""
    left, top, right, bottom = font.getbbox(text)
    im = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(im).text((4 - left, 4 - top), text, font=font, fill=255)
    a = np.asarray(im, np.float32) / 255
    return _crop(a) if a.any() else np.zeros((0, 0), np.float32)


def _font_digits(path: Path) -> list[np.ndarray] | None:
    """The ten digit glyphs of a font at a large size, or None when it lacks real digits."""
    font = ImageFont.truetype(str(path), 160)
    glyphs = [_glyph(font, str(d)) for d in range(10)]
    notdef = _glyph(font, "\U000f0000")  # a private-use code point: fonts draw their missing-glyph box
    for g in glyphs:
        if g.size == 0 or (g.shape == notdef.shape and np.array_equal(g, notdef)):
            return None
    return glyphs


def font_set(seed: int = 2, fonts: Sequence[tuple[str, Path, str]] | None = None,
             variants: int = FONT_VARIANTS) -> RealWorldSet:  # fmt: skip
    """Digits 0-9 from each installed font in FONTS (or `fonts`), `variants` images per font and digit.

    Each image: a canvas 64-280 px a side (not always square), the glyph 35-85% of its height, rotated
    +-10 degrees, anywhere on it, exported like a canvas (CANVAS_MODES in turn). `kinds` is
    "<style>/<mode>", `origins` "font:<name>". Fonts without digit glyphs are skipped.
    """
    fonts = find_fonts() if fonts is None else list(fonts)
    images, labels, kinds, origins, rows = [], [], [], [], []
    for name, path, style in fonts:
        glyphs = _font_digits(path)
        if glyphs is None:
            continue
        for digit, glyph in enumerate(glyphs):
            for _ in range(variants):
                i = len(images)
                rng = _rng(seed, i)
                w, h = (int(s) for s in rng.integers(64, 281, size=2))
                p = {"angle": rng.uniform(-10, 10), "height": rng.uniform(0.35, 0.85) * h}
                g = np.asarray(Image.fromarray(glyph).rotate(p["angle"], Image.Resampling.BICUBIC, expand=True))
                g = _crop(g, 0.02)
                k = p["height"] / g.shape[0]
                size = (max(1, round(g.shape[1] * k)), max(1, round(g.shape[0] * k)))
                g = np.clip(_resize(g, size, Image.Resampling.BOX if k < 1 else Image.Resampling.BICUBIC), 0, 1)
                mode = CANVAS_MODES[i % len(CANVAS_MODES)]
                images.append(_export(_place(g, (h, w), rng), mode))
                labels.append(digit)
                kinds.append(f"{style}/{mode}")
                origins.append(f"font:{name}")
                rows.append(p)
    if not images:
        raise DataError("no usable fonts installed (see digitlab.data.realworld.FONTS for the Debian packages)")
    return RealWorldSet("fonts", images, np.array(labels, np.int64), np.array(kinds), np.array(origins),
                        _params(rows))  # fmt: skip


# --------------------------------------------------------------------------------------------- storage


def realworld_dir() -> Path:
    """Where the committed sets live: $DIGITLAB_DATA/realworld when it exists, else the repository's copy."""
    env = os.environ.get("DIGITLAB_DATA")
    if env and (Path(env) / "realworld").is_dir():
        return Path(env) / "realworld"
    return Path(__file__).resolve().parents[3] / "data" / "realworld"


def _mode_of(kind: str) -> str:
    mode = next((m for m in CANVAS_MODES if kind.endswith(m)), None)
    if mode is None:
        raise ValueError(f"cannot store an image of kind {kind!r} losslessly (expected one of {CANVAS_MODES})")
    return mode


class _StoredImages(Sequence):
    """A stored set's images, rebuilt one at a time on access: a whole set of arrays would take ~0.5 GB."""

    def __init__(self, z: Mapping[str, np.ndarray], coverage: bytes) -> None:
        self._coverage = coverage
        self._starts = np.asarray(z["coverage_offsets"])
        self._boxes = np.asarray(z["boxes"])  # (y, x, h, w) of the stored ink crop
        self._shapes = np.asarray(z["shapes"])  # (H, W); (0, 0) for JPEG files
        self._modes = [str(m) for m in z["modes"]]
        self._jpeg = z["jpeg"].tobytes()
        self._jpeg_starts = np.asarray(z["jpeg_offsets"])
        self._is_jpeg = np.asarray(z["is_jpeg"])
        self._jpeg_index = np.cumsum(self._is_jpeg) - 1
        self._array_index = np.cumsum(~self._is_jpeg) - 1

    def __len__(self) -> int:
        return len(self._is_jpeg)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        if self._is_jpeg[i]:
            k = self._jpeg_index[i]
            return self._jpeg[self._jpeg_starts[k] : self._jpeg_starts[k + 1]]
        k = self._array_index[i]
        y, x, h, w = (int(v) for v in self._boxes[i])
        cov = np.zeros(tuple(int(v) for v in self._shapes[i]), np.uint8)
        crop = np.frombuffer(self._coverage, np.uint8, h * w, int(self._starts[k])).reshape(h, w)
        cov[y : y + h, x : x + w] = crop
        return _export_u8(cov, self._modes[i])


def save_realworld(ds: RealWorldSet, path: Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a set to one compact .npz; `load_realworld` gives back the identical images.

    Canvas-style arrays are stored as their ink coverage cropped to the ink (the export mode rebuilds them),
    all crops in one LZMA-compressed stream; JPEG files are stored as their bytes.
    """
    crops, jpegs, boxes, shapes, modes = [], [], [], [], []
    for img, kind in zip(ds.images, ds.kinds, strict=True):
        if isinstance(img, bytes):
            jpegs.append(img)
            boxes.append((0, 0, 0, 0))
            shapes.append((0, 0))
            modes.append("")
            continue
        mode = _mode_of(str(kind))
        cov = np.ascontiguousarray(_coverage_u8(img, mode))
        if not np.array_equal(_export_u8(cov, mode), img):
            raise ValueError(f"an image of kind {kind!r} is not a plain export of its coverage")
        ys, xs = np.nonzero(cov)
        y, x = (int(ys.min()), int(xs.min())) if ys.size else (0, 0)
        h, w = (int(ys.max()) + 1 - y, int(xs.max()) + 1 - x) if ys.size else (0, 0)
        crops.append(cov[y : y + h, x : x + w].tobytes())
        boxes.append((y, x, h, w))
        shapes.append(cov.shape)
        modes.append(mode)
    info = {"name": ds.name, "format_version": FORMAT_VERSION, **(meta or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    packed = lzma.compress(b"".join(crops), preset=9 | lzma.PRESET_EXTREME)
    np.savez(
        tmp,
        coverage_xz=np.frombuffer(packed, np.uint8),
        coverage_offsets=np.cumsum([0] + [len(c) for c in crops]).astype(np.int64),
        boxes=np.array(boxes, np.int32).reshape(-1, 4),
        shapes=np.array(shapes, np.int32).reshape(-1, 2),
        modes=np.array(modes, dtype=str),
        jpeg=np.frombuffer(b"".join(jpegs), np.uint8),
        jpeg_offsets=np.cumsum([0] + [len(j) for j in jpegs]).astype(np.int64),
        is_jpeg=np.array([isinstance(img, bytes) for img in ds.images], bool),
        labels=ds.labels.astype(np.uint8),
        kinds=ds.kinds.astype(str),
        origins=ds.origins.astype(str),
        meta=np.array(json.dumps(info, sort_keys=True)),
        **{f"param_{k}": v.astype(np.float32) for k, v in ds.params.items()},
    )
    tmp.replace(path)
    return path


def load_realworld(name: str | Path, directory: Path | None = None) -> RealWorldSet:
    """Read a set written by `save_realworld` (name: canvas, photo, fonts; or a path to an .npz)."""
    path = Path(name) if str(name).endswith(".npz") else (directory or realworld_dir()) / f"{name}.npz"
    if not path.is_file():
        raise DataError(f"no real-world set at {path} — run `python scripts/make_realworld.py`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            z = {k: npz[k] for k in npz.files}
        info = json.loads(str(z["meta"]))
        images = _StoredImages(z, lzma.decompress(z["coverage_xz"].tobytes()))
        params = {k.removeprefix("param_"): v for k, v in z.items() if k.startswith("param_")}
        return RealWorldSet(info.get("name", path.stem), images, z["labels"].astype(np.int64), z["kinds"],
                            z["origins"], params)  # fmt: skip
    except (OSError, KeyError, ValueError, lzma.LZMAError) as e:
        raise DataError(f"{path}: not a real-world set ({e})") from None


# --------------------------------------------------------------------------------------------- scoring
