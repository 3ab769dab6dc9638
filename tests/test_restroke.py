"""The `restroke` and `glyphs` training options (pen-width copies, font digits), swapping them into batches, and
fine-tuning's style jitter."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from digitlab.core.errors import DataError
from digitlab.data.fonts import handwriting_fonts
from digitlab.training.augment import style_jitter
from digitlab.training.restroke import font_glyphs, glyph_pool, restroke, restroked_pool, swap_in


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


def test_font_roles_are_disjoint_and_the_tune_fonts_split_into_train_and_choose():
    fonts = [(f"hand{i}", Path(f"/f/hand{i}.ttf"), "handwriting") for i in range(9)]
    fonts += [("print0", Path("/f/print0.ttf"), "print")]
    role = {r: {f[0] for f in handwriting_fonts(r, fonts)} for r in ("tune", "report", "train", "choose")}
    assert role["train"] | role["choose"] == role["tune"] and not role["train"] & role["choose"]
    assert not role["tune"] & role["report"] and len(role["tune"] | role["report"]) == 9
    assert "print0" not in set().union(*role.values())
    with pytest.raises(DataError, match="font role"):
        handwriting_fonts("test", fonts)


@pytest.mark.skipif(not handwriting_fonts("train"), reason="needs the handwriting fonts scripts/test.sh installs")
def test_the_font_digit_pool_holds_framed_glyphs_of_the_training_fonts_only():
    glyphs, labels = font_glyphs()
    assert glyphs.shape[1:] == (28, 28) and np.array_equal(np.bincount(labels), np.full(10, len(labels) // 10))
    rows = np.nonzero(glyphs[0].max(1) > 0)[0]
    assert 19 <= rows[-1] - rows[0] + 1 <= 21  # framed as MNIST frames a digit
    assert glyph_pool(0.0, 0, False, torch.device("cpu")) is None
    x, y = glyph_pool(0.1, 0, False, torch.device("cpu"), n=40)
    x2, y2 = glyph_pool(0.1, 0, False, torch.device("cpu"), n=40)
    assert x.shape == (40, 1, 28, 28) and torch.equal(x, x2) and torch.equal(y, y2)
    assert 0 < x.amax((1, 2, 3)).min().item() <= 1.0


def test_style_jitter_slants_and_resizes_but_never_moves_ink_off_the_digit_row():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 4:24, 13:15] = 1.0  # a vertical bar: a "1"
    assert style_jitter(x, 0.0) is x
    out = style_jitter(x, 0.4, torch.Generator().manual_seed(0))
    assert torch.equal(out, style_jitter(x, 0.4, torch.Generator().manual_seed(0)))
    cols = torch.arange(28.0)
    top = (out[:, 0, 5] * cols).sum(1) / out[:, 0, 5].sum(1)
    bottom = (out[:, 0, 22] * cols).sum(1) / out[:, 0, 22].sum(1)
    slant = (bottom - top).abs()
    assert slant.max() > 3 and slant.min() < slant.max()  # slanted, each image by its own amount
    assert torch.equal(out.amax(3).gt(0.1), x.amax(3).gt(0.1))  # a horizontal jitter: rows keep their ink
