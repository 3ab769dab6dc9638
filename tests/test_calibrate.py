"""Temperature scaling on synthetic logits, the out-of-distribution rule, and calibrating a real tiny run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from digitlab.data.letters import DEJAVU, render_letters, training_fonts
from digitlab.evaluation.calibrate import calibrate_run, ece, fit_ood
from digitlab.evaluation.refusal import SOURCE_TPR
from digitlab.model.scoring import INK_PENALTY, OodRule, fit_temperature, ink_fraction, logit_score, nll

CAL_KEYS = {"temperature", "nll_before", "nll_after", "ece_before", "ece_after", "ood"}
OOD_KEYS = {"score", "threshold", "tpr_in", "fitted_on", "ink_max", "rejected"}
SMALL = {"fashion_mnist": 200, "noise": 50, "letters": 40}


def calibrated_logits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated at T = 1 by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, 10))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return logits, labels


@pytest.mark.parametrize("true_t", [0.4, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    logits, labels = calibrated_logits(20_000)
    t = fit_temperature(logits * true_t, labels)  # over/under-confident by a factor: T undoes it
    assert t == pytest.approx(true_t, rel=0.04)
    assert nll(logits * true_t, labels, t) <= nll(logits * true_t, labels) + 1e-12
    if true_t != 1.0:
        assert ece(logits * true_t, labels, t) < ece(logits * true_t, labels)


def test_fit_temperature_rejects_bad_input():
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((0, 10)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3, 10)), np.zeros(2, dtype=int))


def test_scores_and_ink_fraction():
    logits = np.array([[10.0, 0, 0], [1.0, 1, 1]])
    assert logit_score(logits, "max_logit").tolist() == [10.0, 1.0]
    energy = logit_score(logits, "energy", temperature=1.0)
    assert energy[1] == pytest.approx(1 + np.log(3)) and energy[0] > 10
    with pytest.raises(ValueError):
        logit_score(logits, "entropy")
    images = np.zeros((2, 28, 28), np.uint8)
    images[1, :14] = 200  # half the image bright
    assert ink_fraction(images).tolist() == [0.0, 0.5]
    # the energy is scipy's logsumexp to the last bit (the OOD threshold was fitted with it)
    from scipy.special import logsumexp

    z = np.random.default_rng(0).normal(0, 8, (500, 10))
    z[0] = 3.0  # ties for the maximum
    assert np.array_equal(logit_score(z, "energy", 0.4), 0.4 * logsumexp(z / 0.4, axis=1))


def test_fit_ood_keeps_the_target_share_of_digits_and_rejects_noise():
    rng = np.random.default_rng(1)
    n = 1000
    digits = np.zeros((n, 28, 28), np.uint8)
    digits[:, 8:20, 12:16] = 255  # a "1": ~6% bright pixels
    val_logits = rng.normal(0, 1, (n, 10))
    val_logits[np.arange(n), rng.integers(0, 10, n)] += 8  # confident
    flat = rng.normal(0, 1, (300, 10))  # unconfident: out of distribution
    noise = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    confident = val_logits[:300] + 2  # as confident as digits, or more: only the ink gate can catch noise
    rule, report = fit_ood(val_logits, digits, {"flat": (flat, digits[:300]), "noise": (confident, noise)})
    assert report["tpr_in"] == pytest.approx(0.99, abs=1e-3)
    assert rule.accepts(val_logits, digits).mean() == pytest.approx(0.99, abs=1e-3)
    assert report["rejected"]["flat"] > 0.95 and report["rejected"]["noise"] == 1.0
    assert report["auroc_fit"]["noise"] > 0.99
    assert set(report["candidates"]) == {"energy", "max_logit"}
    assert rule.ink_max == pytest.approx(ink_fraction(digits[:1])[0])
    # The combined score folds the ink gate in; the rule survives a round trip through JSON.
    assert (rule.digit_score(confident, noise) < -INK_PENALTY / 2).all()
    again = OodRule.from_dict(json.loads(json.dumps(rule.to_dict())))
    assert again == rule


def test_rendered_letters_are_mnist_framed():
    letters = render_letters(12, seed=3, fonts=[DEJAVU / "DejaVuSans.ttf"])
    assert letters.shape == (12, 28, 28) and letters.dtype == np.uint8
    assert (letters.reshape(12, -1).max(1) == 255).all()  # stretched like MNIST digits
    for letter in letters:  # fitted into the 20x20 box, like MNIST digits
        ys, xs = np.nonzero(letter)
        assert max(np.ptp(ys), np.ptp(xs)) + 1 in (19, 20, 21)
    assert np.array_equal(letters, render_letters(12, seed=3, fonts=[DEJAVU / "DejaVuSans.ttf"]))


def test_training_letters_come_from_other_fonts_than_the_refusal_sets():
    fonts = training_fonts()
    assert len(fonts) >= 10 and not any("dejavu" in str(f).lower() for f in fonts)


def test_training_writes_calibration_json(tiny_run):
    cal = json.loads((tiny_run / "calibration.json").read_text())
    assert set(cal) >= CAL_KEYS and set(cal["ood"]) >= OOD_KEYS
    assert cal["temperature"] > 0 and cal["n"] == 100  # the tiny run's validation split
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9
    test = json.loads((tiny_run / "metrics.json").read_text())["test"]
    assert test["temperature"] == pytest.approx(cal["temperature"])  # the report is after calibration


def test_calibrate_run_on_a_copy_of_the_tiny_run(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "calibration.json").unlink()
    result = calibrate_run(run, sizes=SMALL, test_size=300)
    cal = json.loads((run / "calibration.json").read_text())
    assert set(cal) >= CAL_KEYS and set(cal["ood"]) >= OOD_KEYS
    assert cal == json.loads(json.dumps(result["calibration"]))
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9
    assert cal["ood"]["score"] in ("energy", "max_logit")
    assert cal["ood"]["tpr_in"] >= 0.98 and "validation digits" in cal["ood"]["fitted_on"]
    # The run evaluates with TTA and is served without it: the threshold keeps its digits both ways.
    assert cal["tta"] and "each with and without TTA" in cal["ood"]["fitted_on"]
    assert cal["ood"]["kept"]["validation (no TTA)"] >= SOURCE_TPR - 0.01
    assert "Fashion-MNIST train" in cal["ood"]["fitted_on"] or "synthetic" in cal["ood"]["fitted_on"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["temperature"] == pytest.approx(cal["temperature"])
    auroc = metrics["ood"]["auroc"]
    assert set(auroc) >= {"noise", "letters"} and ("fashion_mnist" in auroc or "shapes" in auroc)
    assert all(0 <= v <= 1 for v in auroc.values())
    assert auroc["noise"] > 0.9  # the ink gate, whatever the tiny model's logits say
    assert f"temperature {cal['temperature']:g}" in (run / "report.md").read_text()


def test_fit_ood_keeps_the_target_share_of_every_digit_source():
    rng = np.random.default_rng(2)
    digits = np.zeros((1000, 28, 28), np.uint8)
    digits[:, 8:20, 12:16] = 255
    val_logits = rng.normal(0, 1, (1000, 10))
    val_logits[np.arange(1000), rng.integers(0, 10, 1000)] += 8
    hard = rng.normal(0, 1, (400, 10))  # digits users send: less confident than validation digits
    hard[np.arange(400), rng.integers(0, 10, 400)] += 4
    thick = np.zeros((400, 28, 28), np.uint8)
    thick[:, 6:22, 10:18] = 255  # a fat pen: more bright ink than any validation digit
    flat = rng.normal(0, 1, (300, 10))
    sources = {"hard": (hard, thick)}
    alone, _ = fit_ood(val_logits, digits, {"flat": (flat, digits[:300])}, target_tpr=0.997)
    assert alone.accepts(hard, thick).mean() < 0.9  # fitted on validation digits only, it refuses them
    rule, report = fit_ood(val_logits, digits, {"flat": (flat, digits[:300])}, target_tpr=0.997, sources=sources)
    assert rule.accepts(hard, thick).mean() >= 0.997 and rule.accepts(val_logits, digits).mean() >= 0.997
    assert rule.ink_max >= ink_fraction(thick[:1])[0]
    assert report["kept"]["hard"] >= 0.997 and report["n_sources"] == {"validation": 1000, "hard": 400}


def test_digit_sources_keep_only_the_runs_validation_digits(mnist):
    from digitlab.data.datasets import stratified_split
    from digitlab.data.realworld import load_realworld
    from digitlab.evaluation.refusal import digit_sources

    tune = load_realworld("page-tune")
    index = [int(o.split(":")[1]) for o in tune.origins[:60]]
    val = mnist.train.subset(np.array(index[:55]))  # a "split" holding 55 of the set's digits
    found, report = digit_sources(val, "mnist", limit=None)
    assert len(found["page-tune"]) <= 55 and "left out" in report["lowres-tune"]  # (none of its digits)
    assert len(found["fonts-tune"]) >= 50  # font glyphs belong to no split
    _, val_idx = stratified_split(mnist.train.labels, 0.1, 0)
    assert set(index) <= set(val_idx.tolist())  # the tune sets are the bundled run's validation digits
    assert set(digit_sources(val, "fashion-mnist")[0]) == {"corrupted"}  # no tune sets: not MNIST digits


def test_corrupted_source_is_the_splits_digits_under_every_corruption_as_served(mnist):
    from digitlab.data.corruptions import CORRUPTIONS, VALIDATION_SEED, corrupt
    from digitlab.data.preprocess import preprocess_array
    from digitlab.evaluation.refusal import corrupted_source

    val = mnist.train.subset(np.arange(90))
    framed = corrupted_source(val, limit=60)
    assert framed.dtype == np.uint8 and 55 <= len(framed) <= 60  # (a corruption may leave a digit empty)
    assert np.array_equal(framed, corrupted_source(val, limit=60))  # seeded: the same every time
    names = list(CORRUPTIONS)
    stripe = names.index("stripe")  # digit k gets corruption k mod 15, framed as `preprocess_array` does
    expected = preprocess_array(corrupt(val.images[stripe :: len(names)][:4], "stripe", VALIDATION_SEED)[0]).image
    assert any(np.array_equal(expected, im) for im in framed)
    assert not any(np.array_equal(expected, im) for im in corrupted_source(val, limit=stripe))  # only the first


def test_corrupted_digits_are_one_source_per_corruption_when_each_has_enough(mnist, monkeypatch):
    from digitlab.data.corruptions import CORRUPTIONS
    from digitlab.evaluation import refusal

    val = mnist.train.subset(np.arange(150))
    monkeypatch.setattr(refusal, "MIN_SOURCE", 5)
    per, report = refusal._corrupted(val, None)  # 10 digits a corruption: each its own source
    assert list(per) == [f"corrupted:{name}" for name in CORRUPTIONS]
    assert report == {k: len(v) for k, v in per.items()} and min(report.values()) >= 5
    assert np.array_equal(np.concatenate(list(per.values())), refusal.corrupted_source(val))
    pooled, report = refusal._corrupted(val, 45)  # 3 a corruption: too few apart, pooled
    assert list(pooled) == ["corrupted"] and 40 <= report["corrupted"] <= 45
    monkeypatch.setattr(refusal, "MIN_SOURCE", 100)
    assert refusal._corrupted(val, 45) == (
        {},
        {"corrupted": f"left out: only {report['corrupted']} validation digits framed"},
    )
