"""Outlier exposure: letters appended to the batch, their loss towards a uniform softmax, and a run trained with it."""

import json

import pytest
import torch
import torch.nn.functional as F

from digitlab.training.outliers import OUTLIER, add_outliers, exposure_loss, letter_pool


def test_letters_are_appended_with_the_outlier_label():
    x, y = torch.zeros(8, 1, 28, 28), torch.arange(8)
    pool = torch.ones(5, 1, 28, 28)
    bx, by = add_outliers(x, y, pool, 0.25, torch.Generator().manual_seed(0))
    assert bx.shape == (10, 1, 28, 28) and by.tolist() == [*range(8), OUTLIER, OUTLIER]
    assert (bx[8:] == 1).all() and (bx[:8] == 0).all()
    assert add_outliers(x, y, None, 0.25, None)[0] is x  # off: the batch is untouched
    assert add_outliers(x, y, pool, 0.0, None)[0] is x


def test_exposure_loss_is_digit_cross_entropy_plus_the_uniform_term():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 10), torch.tensor([1, 2, 3, 4, OUTLIER, OUTLIER])
    digit_ce = F.cross_entropy(logits[:4], y[:4])
    uniform_ce = -F.log_softmax(logits[4:], 1).mean()
    assert exposure_loss(logits, y, 0.0, 0.5) == pytest.approx((digit_ce + 0.5 * uniform_ce).item())
    assert exposure_loss(logits[:4], y[:4], 0.0, 0.5) == pytest.approx(digit_ce.item())
    # A uniform softmax on the outliers is the minimum of their term: flat logits score lower than peaked ones.
    flat, peaked = torch.zeros(1, 10), torch.eye(10)[:1] * 8
    label = torch.tensor([OUTLIER])
    assert exposure_loss(flat, label, 0.0, 1.0) < exposure_loss(peaked, label, 0.0, 1.0)


def test_letter_pool_is_deterministic_and_off_at_zero():
    assert letter_pool(0.0, 0, torch.device("cpu")) is None
    a = letter_pool(0.2, 3, torch.device("cpu"), n=40)
    assert a is not None and a.shape == (40, 1, 28, 28) and a.min() >= 0 and a.max() == 1
    assert torch.equal(a, letter_pool(0.2, 3, torch.device("cpu"), n=40))


def test_a_run_trains_with_outlier_exposure(tmp_path, mnist):
    from digitlab.core.config import get_preset
    from digitlab.training.loop import run_training

    config = get_preset("fast").override(limit=600, epochs=1, batch_size=64, outliers=0.25,
                                         model_args={"widths": [8, 16, 32]})  # fmt: skip
    run_training(config, tmp_path / "run", dataset=mnist)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["outliers"] == 0.25
    row = (tmp_path / "run" / "history.csv").read_text().splitlines()[1].split(",")
    assert 0 <= float(row[2]) <= 1  # train accuracy counts digits only, never above 1
