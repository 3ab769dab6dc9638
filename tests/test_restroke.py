"""The `restroke` training option: pen-width copies of digits, and swapping them into batches."""

import numpy as np
import torch
from scipy import ndimage as ndi

from digitlab.training.restroke import restroke, restroked_pool, swap_in


def ring() -> np.ndarray:
    """A narrow '0' (a ring 20 px tall, 8 px wide) on a 28x28 black image."""
    yy, xx = np.mgrid[:28, :28]
    r = np.hypot((yy - 14) / 10, (xx - 14) / 4)
    return ((r > 0.7) & (r < 1.0)).astype(np.uint8) * 255


def holes(image: np.ndarray) -> int:
    background, count = ndi.label(image < 64)
    return count - 1  # the outside is one component


def test_a_thin_pen_keeps_the_loop_and_a_fat_pen_fills_it():
    thin, fat = restroke(ring(), 0.05), restroke(ring(), 0.26)
    assert holes(ring()) == 1 and holes(thin) == 1
    assert holes(fat) == 0  # a marker a quarter of the digit's height wide closes it
    for out in (thin, fat):
        assert out.shape == (28, 28) and out.dtype == np.uint8 and out.max() == 255
        rows = np.nonzero(out.max(1) > 0)[0]
        assert 19 <= rows[-1] - rows[0] + 1 <= 21  # framed as MNIST frames a digit: 20 px tall
    assert (fat > 127).sum() > 2 * (thin > 127).sum()


def test_the_pool_is_deterministic_and_swapping_keeps_labels_with_images():
    images = np.stack([ring(), np.zeros((28, 28), np.uint8)])
    a, ia = restroked_pool(images, 6, seed=3)
    b, ib = restroked_pool(images, 6, seed=3)
    assert np.array_equal(a, b) and np.array_equal(ia, ib)
    pool = (torch.ones(4, 1, 28, 28), torch.full((4,), 7))
    x, y = torch.zeros(1000, 1, 28, 28), torch.zeros(1000, dtype=torch.long)
    sx, sy = swap_in(x, y, pool, 0.3, torch.Generator().manual_seed(0))
    swapped = sx.flatten(1).amax(1) > 0
    assert torch.equal(swapped, sy == 7)
    assert 0.25 < swapped.float().mean().item() < 0.35
    assert swap_in(x, y, None, 0.3, None)[0] is x
