"""Pen-width copies of training digits for the `restroke` training option: each centre line re-drawn with a pen.

MNIST's writers used pens of a narrow range of widths; people drawing on a canvas use anything from a hairline to a
marker a quarter of the digit's height wide, which closes loops (a fat 8 is a blob with a waist). Stroke
dilation (`augment.thicken_strokes`) fattens what is there; re-drawing the skeleton also thins, and it fills
small loops the way a real fat pen does. The copies are made once per run (NumPy/SciPy/scikit-image, ~2.5 ms
each) and framed as `preprocess` frames a drawing, so they look like what the model is served.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from rich.progress import track
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from digitlab.data.frame import frame_ink
from digitlab.model.forward import to_tensor

PEN = (0.02, 0.26)  # pen width as a share of the digit's height: a hairline to a fat marker
POOL = 12_000  # copies made per run (~30 s on 2 cores); each batch draws its `restroke` share from them
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
