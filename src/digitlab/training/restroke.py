"""Pen-width copies of training digits for the `restroke` training option: each centre line re-drawn with a pen.

MNIST's writers used pens of a narrow range of widths; people drawing on a canvas use anything from a hairline to a
marker a quarter of the digit's height wide, which closes loops (a fat 8 is a blob with a waist). Stroke
dilation (`augment.thicken_strokes`) fattens what is there; re-drawing the skeleton also thins, and it fills
small loops the way a real fat pen does. The copies are made once per run (NumPy/SciPy/scikit-image, ~2.5 ms
each) and framed as `preprocess` frames a drawing, so they look like what the model is served.

The `glyphs` option swaps in digits of handwriting fonts the same way (`data.fonts.handwriting_fonts("train")`):
half in the font's own strokes, half re-drawn with a random pen. Fonts give shapes MNIST's writers rarely used
(looped 2s, open 4s, calligraphic 8s). Measured, it teaches the fonts trained on and not fat pens in other fonts
(docs/real-world.md), so it is in no preset.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from rich.progress import track
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from digitlab.data.fonts import font_digits, handwriting_fonts
from digitlab.data.frame import frame_ink
from digitlab.model.forward import to_tensor

PEN = (0.02, 0.26)  # pen width as a share of the digit's height: a hairline to a fat marker
POOL = 12_000  # copies made per run (~30 s on 2 cores); each batch draws its `restroke` share from them
GLYPH_POOL = 4_000  # font-digit copies made per run (~0.5 s): a few fonts' 10 digits each, so fewer are needed
UPSCALE = 2  # the skeleton is traced at 56x56: smoother strokes than at 28x28, still cheap


def restroke(image: np.ndarray, pen_frac: float) -> np.ndarray:
    """`image` (28x28 uint8, MNIST-style) with its centre line re-drawn by a round pen `pen_frac` of its height
    wide, re-framed as MNIST frames a digit (uint8 28x28)."""
    side = image.shape[0] * UPSCALE
    big = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255
    mask = big > 0.4
    if not mask.any():
        return image
    rows = np.nonzero(mask.any(1))[0]
    pen = pen_frac * (rows[-1] - rows[0] + 1)
    cov = np.clip(pen / 2 + 0.5 - ndi.distance_transform_edt(~skeletonize(mask)), 0, 1)  # anti-aliased disc edge
    return frame_ink(cov.astype(np.float32))


def restroked_pool(images: np.ndarray, n: int, seed: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`n` restroked copies of randomly chosen `images` (with replacement if n > len): (copies, source indices)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(images), n, replace=n > len(images))
    pens = rng.uniform(*PEN, size=n)
    pairs = zip(idx, pens, strict=True)
    if progress:
        pairs = track(pairs, total=n, description="pen-width copies", transient=True)
    copies = np.stack([restroke(images[i], p) for i, p in pairs])
    return copies, idx


def pen_pool(
    images: np.ndarray, labels: np.ndarray, share: float, seed: int, progress: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The run's pool of restroked training digits as (float (N, 1, 28, 28) in [0, 1], labels); None when off."""
    if share <= 0:
        return None
    copies, idx = restroked_pool(images, POOL, seed, progress)
    x = to_tensor(copies).to(device)
    return x, torch.from_numpy(np.asarray(labels)[idx]).to(device)


def font_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """The digits of the "train" handwriting fonts framed as MNIST (uint8 (N, 28, 28)), and their labels."""
    framed, labels = [], []
    for _, path, _ in handwriting_fonts("train"):
        for digit, glyph in enumerate(font_digits(path) or []):
            framed.append(frame_ink(glyph))
            labels.append(digit)
    return np.asarray(framed, np.uint8).reshape(-1, 28, 28), np.asarray(labels, np.int64)


def glyph_pool(
    share: float, seed: int, progress: bool, device: torch.device, n: int = GLYPH_POOL
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The run's pool of font digits for the `glyphs` option, as `pen_pool`'s; None when off or no font is here."""
    if share <= 0:
        return None
    glyphs, labels = font_glyphs()
    if not len(glyphs):
        return None
    rng = np.random.default_rng(seed + 11)
    idx = rng.choice(len(glyphs), n)
    pens = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(*PEN, size=n))  # 0: the font's own strokes
    pairs = zip(idx, pens, strict=True)
    if progress:
        pairs = track(pairs, total=n, description="font digits", transient=True)
    copies = np.stack([restroke(glyphs[i], p) if p else glyphs[i] for i, p in pairs])
    return to_tensor(copies).to(device), torch.from_numpy(labels[idx]).to(device)


def swap_in(
    x: torch.Tensor,
    y: torch.Tensor,
    pool: tuple[torch.Tensor, torch.Tensor] | None,
    share: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch with a random `share` of its images (and their labels) swapped for random pool copies."""
    if pool is None:
        return x, y
    swap = torch.rand(len(x), generator=generator, device=x.device) < share
    pick = torch.randint(len(pool[0]), (len(x),), generator=generator, device=x.device)
    return torch.where(swap.view(-1, 1, 1, 1), pool[0][pick], x), torch.where(swap, pool[1][pick], y)
