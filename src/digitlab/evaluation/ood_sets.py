"""The out-of-distribution images a "not a digit" rule is fitted against and reported on: garments, noise, letters.

Fitting (split "fit") uses Fashion-MNIST *train* images, uniform noise and letters rendered from FIT_FONTS; the
report (split "test") other draws: Fashion-MNIST *test* images, other noise, letters in TEST_FONTS. Without
Fashion-MNIST installed, filled textured shapes stand in for it.
"""

from __future__ import annotations

import functools

import numpy as np

from digitlab.core.errors import DataError
from digitlab.data.letters import DEJAVU, render_letters

# Out-of-distribution sets: sizes while training finishes (seconds count) and for `digitlab calibrate`.
# "digits": images per digit source (`refusal.digit_sources`; None: all).
QUICK_SIZES = {"fashion_mnist": 500, "noise": 100, "letters": 100, "digits": 200}


FULL_SIZES = {"fashion_mnist": 5000, "noise": 500, "letters": 500, "digits": None}


FIT_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")


TEST_FONTS = ("DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf", "DejaVuSans-ExtraLight.ttf")


def _shapes(n: int, seed: int) -> np.ndarray:
    """Filled, textured shapes (a stand-in for Fashion-MNIST's garments when that dataset is not installed)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        im = Image.new("L", (28, 28), 0)
        d = ImageDraw.Draw(im)
        x0, y0 = rng.integers(1, 8, 2)
        x1, y1 = rng.integers(20, 27, 2)
        fill = int(rng.integers(100, 256))
        [d.ellipse, d.rectangle][int(rng.integers(2))]((int(x0), int(y0), int(x1), int(y1)), fill=fill)
        a = np.asarray(im, np.float32) * rng.uniform(0.6, 1.0, (28, 28))
        out[i] = np.clip(a, 0, 255).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=4)
def ood_images(split: str = "fit", sizes: tuple[tuple[str, int], ...] = tuple(QUICK_SIZES.items()),
               seed: int = 0) -> tuple[dict[str, np.ndarray], str]:  # fmt: skip
    """Out-of-distribution images (uint8 (N, 28, 28) per set) and a description of them.

    split="fit": Fashion-MNIST *train* images, noise and letters in FIT_FONTS (used to fit); "test":
    Fashion-MNIST *test* images, other noise and letters in TEST_FONTS (only for the report). Without
    Fashion-MNIST installed, filled shapes stand in for it. Cached: training many runs pays once.
    """
    if split not in ("fit", "test"):
        raise ValueError(f"split must be 'fit' or 'test', not {split!r}")
    want = dict(sizes)
    rng = np.random.default_rng(seed + (0 if split == "fit" else 1000))
    sets: dict[str, np.ndarray] = {}
    parts = []
    if want.get("fashion_mnist"):
        from digitlab.data.datasets import load_dataset

        try:
            fm = load_dataset("fashion-mnist")
            pool = fm.train if split == "fit" or fm.test is None else fm.test
            k = min(want["fashion_mnist"], len(pool))
            sets["fashion_mnist"] = pool.images[np.sort(rng.choice(len(pool), k, replace=False))]
            parts.append(f"{k:,} Fashion-MNIST {'train' if pool is fm.train else 'test'} images")
        except DataError:
            sets["shapes"] = _shapes(want["fashion_mnist"], seed + (0 if split == "fit" else 1000))
            parts.append(f"{want['fashion_mnist']:,} synthetic filled shapes (Fashion-MNIST not installed)")
    if want.get("noise"):
        sets["noise"] = rng.integers(0, 256, (want["noise"], 28, 28), dtype=np.uint8)
        parts.append(f"{want['noise']:,} uniform-noise images")
    if want.get("letters"):
        fonts = FIT_FONTS if split == "fit" else TEST_FONTS
        sets["letters"] = render_letters(want["letters"], seed + (1 if split == "fit" else 1001),
                                         [DEJAVU / f for f in fonts])  # fmt: skip
        fonts_used = ", ".join(f.removesuffix(".ttf") for f in fonts) if (DEJAVU / fonts[0]).is_file() else "PIL"
        parts.append(f"{want['letters']:,} letters ({fonts_used})")
    for a in sets.values():
        a.setflags(write=False)
    return sets, "; ".join(parts)
