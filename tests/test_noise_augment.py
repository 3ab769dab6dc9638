"""Corruption-style training augmentations: deterministic, batched, each doing what its name says."""

import pytest
import torch

from digitlab.core.config import get_preset
from digitlab.training.noise_augment import OPS, corruption_augment


@pytest.fixture(scope="module")
def digits(mnist):
    return torch.from_numpy(mnist.train.images[:64].copy()).unsqueeze(1).float() / 255


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list(OPS))
def test_each_op_is_seeded_shaped_and_changes_the_image(digits, name):
    a, b, c = OPS[name](digits, gen(0)), OPS[name](digits, gen(0)), OPS[name](digits, gen(1))
    assert a.shape == digits.shape and a.dtype == digits.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - digits).abs().mean() > 0.01


def test_ops_do_what_they_say(digits):
    bg = digits < 0.05  # background pixels of the clean digits
    assert OPS["background"](digits, gen())[bg].mean() > 0.1  # the background is lifted
    assert OPS["noise"](digits, gen())[bg].std() > 0.05  # the background is noisy
    hi = lambda x: (x[..., 1:, :] - x[..., :-1, :]).abs().mean()  # noqa: E731
    assert hi(OPS["blur"](digits, gen())) < hi(digits)  # blur lowers high-frequency energy
    assert (OPS["strokes"](digits, gen()) >= digits).all()  # strokes only add ink
    hollow = OPS["outline"](digits, gen())
    assert hollow[digits > 0.9].mean() < 0.2  # the stroke's core is dark: only its outline is drawn
    erased = OPS["erase"](digits, gen())
    assert ((erased != digits).flatten(1).any(1)).float().mean() > 0.5


def test_share_and_op_choice(digits):
    assert torch.equal(corruption_augment(digits, 0.0, list(OPS), gen()), digits)
    out = corruption_augment(digits, 0.5, ["background"], gen())
    changed = (out != digits).flatten(1).any(1).float().mean()
    assert 0.25 < changed < 0.75
    assert torch.equal(out, corruption_augment(digits, 0.5, ["background"], gen()))
    with pytest.raises(ValueError, match="unknown augmentation"):
        corruption_augment(digits, 0.5, ["fog"], gen())


def test_config_round_trips_the_op_list(tmp_path):
    config = get_preset("fast").set(corrupt=0.3, corrupt_ops=["noise", "blur"])
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    assert type(config).load(path) == config
