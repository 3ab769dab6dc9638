"""The generic degradations for robust training: each does what it says, only to its share of the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digitlab.augment import ROBUST_AUGMENTATIONS, robust_augment


@pytest.fixture(scope="module")
def batch(mnist) -> torch.Tensor:
    return torch.from_numpy(mnist.test.images[:64].copy()).float().div(255).unsqueeze(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list(ROBUST_AUGMENTATIONS))
def test_range_share_and_seed(name, batch):
    fn = ROBUST_AUGMENTATIONS[name]
    out = fn(batch, 1.0, gen())
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(fn(batch, 1.0, gen()), out)  # same generator seed, same batch
    assert not torch.equal(fn(batch, 1.0, gen(1)), out)
    assert torch.equal(fn(batch, 0.0, gen()), batch)
    changed = (fn(batch, 0.5, gen()) != batch).flatten(1).any(1).float().mean().item()
    assert 0.25 < changed < 0.75  # about half the images


def test_lighting_lifts_the_background_and_lowers_contrast(batch):
    out = ROBUST_AUGMENTATIONS["lighting"](batch, 1.0, gen())
    ground, ink = batch == 0, batch == 1
    assert out[ground].mean() > 0.1
    assert (out[ink].mean() - out[ground].mean()) < 0.8 * (batch[ink].mean() - batch[ground].mean())


def test_noise_changes_pixel_statistics(batch):
    out = ROBUST_AUGMENTATIONS["noise"](batch, 1.0, gen())
    assert (out[batch == 0] > 0).float().mean() > 0.05  # specks and noise on the black background
    assert (out[batch == 1] < 1).float().mean() > 0.05  # dropped and noisy ink


def test_erasing_changes_one_rectangle_per_image(batch):
    out = ROBUST_AUGMENTATIONS["erasing"](batch, 1.0, gen())
    for a, b in zip(batch[:, 0], out[:, 0], strict=True):
        rows, cols = np.nonzero((a != b).numpy())
        if len(rows) == 0:
            continue  # a grey fill equal to what was there, or an inversion of nothing: rare
        box = (a != b)[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.float().mean() > 0.5  # the changes fill their bounding box (a rectangle, not scattered)


def test_strokes_only_add_ink(batch):
    out = ROBUST_AUGMENTATIONS["strokes"](batch, 1.0, gen())
    assert (out >= batch).all()
    assert ((out - batch).flatten(1).sum(1) > 3).all()  # every image got at least a short stroke


def test_blur_lowers_high_frequency_energy(batch):
    out = ROBUST_AUGMENTATIONS["blur"](batch, 1.0, gen())
    for axis in (2, 3):
        assert (out.diff(dim=axis) ** 2).mean() < 0.7 * (batch.diff(dim=axis) ** 2).mean()
    assert abs(out.mean() - batch.mean()) < 0.02  # the ink is spread, not lost


def test_robust_augment_applies_only_what_is_named(batch):
    assert torch.equal(robust_augment(batch, {}, gen()), batch)
    out = robust_augment(batch, {"strokes": 1.0}, gen())
    assert torch.equal(out, ROBUST_AUGMENTATIONS["strokes"](batch, 1.0, gen()))
