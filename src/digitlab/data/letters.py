"""Letters drawn from fonts and framed like MNIST digits: "not a digit" images for refusal sets and training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digitlab.data.fonts import find_fonts
from digitlab.data.preprocess import preprocess_array

# Letters whose glyphs are not also a digit's shape (no O/o, I/l, S/s, Z/z, B, G, b, g, q, D ...).
LETTERS = "ACEFHKLMNPRUVWXYacefhkmnprtuvwxy"
DEJAVU = Path("/usr/share/fonts/truetype/dejavu")  # the refusal sets' letters (evaluation.ood_sets) come from here


def _font(path: Path, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path.is_file():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the fonts package is not installed


def render_letters(n: int, seed: int, fonts: Sequence[Path]) -> np.ndarray:
    """`n` letters from random `fonts`, 40-72 px, rotated +-15 degrees, framed like MNIST digits: uint8 (n, 28, 28)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        font = _font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(40, 72)))
        im = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(im).text((48, 48), LETTERS[int(rng.integers(len(LETTERS)))], fill=255, font=font,
                                anchor="mm")  # fmt: skip
        im = im.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
        out[i] = preprocess_array(np.asarray(im)).image
    return out


def training_fonts() -> list[Path]:
    """The installed handwriting and print fonts of `data.fonts.FONTS` except DejaVu, whose letters the refusal
    sets hold: letters seen in training never stand in for the rule's own fit or report."""
    return [path for name, path, _ in find_fonts() if not name.startswith("dejavu/")]
