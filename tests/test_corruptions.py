"""The MNIST-C-style corruptions (each does what it says, seeded and deterministic) and `evaluate --robustness`."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from digitlab.core.errors import ConfigError, DataError
from digitlab.data.corruptions import CORRUPTIONS, corrupt, corruption_rng

DETERMINISTIC = {"scale", "brightness", "stripe", "canny_edges"}  # no random draw at all
RANDOM = [n for n in CORRUPTIONS if n not in DETERMINISTIC]


@pytest.fixture(scope="module")
def digits(mnist) -> np.ndarray:
    return np.ascontiguousarray(mnist.test.images[:32])


def bar(vertical: bool = True) -> np.ndarray:
    """A 4 px wide, 20 px long white bar through the centre of a black 28x28 image."""
    a = np.zeros((28, 28), np.uint8)
    a[4:24, 12:16] = 255
    return a if vertical else a.T.copy()


def moments(a: np.ndarray) -> tuple[float, float, float]:
    """(centre row, centre column, angle of the ink's principal axis from vertical in radians, + clockwise)."""
    w = a.astype(np.float64)
    r, c = np.indices(a.shape)
    cy, cx = (w * r).sum() / w.sum(), (w * c).sum() / w.sum()
    mu20, mu02 = (w * (c - cx) ** 2).sum(), (w * (r - cy) ** 2).sum()
    mu11 = (w * (c - cx) * (r - cy)).sum()
    return cy, cx, 0.5 * np.arctan2(2 * mu11, mu02 - mu20)


def diff_energy(a: np.ndarray, axis: int) -> float:
    """Mean squared difference of neighbouring pixels along `axis` (high-frequency energy)."""
    return float((np.diff(a.astype(np.float64), axis=axis) ** 2).mean())


# --------------------------------------------------------------------------------------------- every corruption


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_shape_dtype_and_same_seed_same_bytes(name, digits):
    out = corrupt(digits, name, seed=3)
    assert out.dtype == np.uint8 and out.shape == digits.shape
    assert corrupt(digits, name, seed=3).tobytes() == out.tobytes()
    single = corrupt(digits[0], name, seed=3)
    assert single.dtype == np.uint8 and single.shape == (28, 28)
    assert not np.array_equal(out, digits), f"{name} left the images unchanged"


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_differ_between_seeds(name, digits):
    assert not np.array_equal(corrupt(digits, name, seed=0), corrupt(digits, name, seed=1))


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_corruptions_ignore_the_seed(name, digits):
    assert np.array_equal(corrupt(digits, name, seed=0), corrupt(digits, name, seed=1))


def test_each_corruption_has_its_own_stream(digits):
    """The seed of a corruption comes from (seed, name): the order they run in, or what else runs, changes nothing."""
    alone = corrupt(digits, "zigzag", 5)
    for other in ("fog", "shot_noise"):
        corrupt(digits, other, 5)
    assert np.array_equal(corrupt(digits, "zigzag", 5), alone)
    assert np.array_equal(CORRUPTIONS["zigzag"](digits, corruption_rng(5, "zigzag")), alone)
    assert not np.array_equal(CORRUPTIONS["zigzag"](digits, corruption_rng(5, "dotted_line")), alone)


def test_bad_input_is_one_line_error(digits):
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(digits, "snow")
    with pytest.raises(DataError, match="uint8"):
        corrupt(digits.astype(np.float32), "fog")
    with pytest.raises(DataError, match="28"):
        corrupt(np.zeros((4, 32, 32), np.uint8), "fog")


# Fingerprints of the suite on the first 8 MNIST test digits, seed 0. A change means the suite no longer draws
# what it drew when the bundled model's robustness figures were measured: those figures stop being comparable.
DIGESTS = {
    "shot_noise": "a24fd6d108926d9d", "impulse_noise": "6ad37f1885aa98da", "glass_blur": "a6d3c131780155c2",
    "motion_blur": "b5a27b75fc27b763", "shear": "2790afe9f45bbdbb", "scale": "c42f0221c453d78d",
    "rotate": "89312d510e07397a", "brightness": "7f7872695ed81997", "translate": "e3c7754768f3a8b2",
    "stripe": "7671ff716f301280", "fog": "6ad9517a5dd6a47d", "spatter": "bfebfec4c7b90ff2",
    "dotted_line": "29fddcb4c9e2a448", "zigzag": "cc01cd5c1f89173e", "canny_edges": "aacab8a42633dc43",
}  # fmt: skip


def test_suite_reproduces_its_bytes(digits):
    got = {n: hashlib.sha256(corrupt(digits[:8], n, 0).tobytes()).hexdigest()[:16] for n in CORRUPTIONS}
    assert got == DIGESTS


# --------------------------------------------------------------------------------------------- what each one does


def test_shot_noise_is_poisson_at_three_photons(digits):
    out = corrupt(digits, "shot_noise", 0)
    assert set(np.unique(out).tolist()) <= {0, 85, 170, 255}  # k/3 photons of 3, clipped
    assert not out[digits == 0].any()  # no light, no photons
    full = digits == 255
    assert 0.03 < (out[full] == 0).mean() < 0.08  # P(Poisson(3) = 0) = e^-3 = 5%


def test_impulse_noise_flips_17_percent_to_black_or_white():
    blank = np.zeros((32, 28, 28), np.uint8)
    out = corrupt(blank, "impulse_noise", 0)
    assert set(np.unique(out).tolist()) == {0, 255}
    assert 0.07 < (out == 255).mean() < 0.10  # half of 17% is salt; the pepper is invisible on black


def test_glass_blur_lowers_vertical_detail_and_keeps_the_ink(digits):
    out = corrupt(digits, "glass_blur", 0)
    assert diff_energy(out, 1) < 0.6 * diff_energy(digits, 1)
    assert abs(out.mean() - digits.mean()) < 0.05 * digits.mean()


def test_motion_blur_smears_sideways_and_keeps_the_ink(digits):
    out = corrupt(digits, "motion_blur", 0)
    assert diff_energy(out, 2) < 0.4 * diff_energy(digits, 2)  # angles within ±45°: mostly horizontal
    assert abs(out.mean() - digits.mean()) < 0.05 * digits.mean()


def test_rotate_turns_the_ink_by_0_4_rad_about_the_centre():
    angles = set()
    for seed in range(6):
        cy, cx, angle = moments(corrupt(bar(), "rotate", seed))
        assert abs(cy - 13.5) < 0.05 and abs(cx - 13.5) < 0.05
        assert abs(abs(angle) - 0.4) < 0.02
        angles.add(np.sign(angle))
    assert angles == {-1.0, 1.0}  # both directions occur


def test_shear_slides_rows_sideways_in_proportion_to_their_height():
    slopes = set()
    for seed in range(6):
        out = corrupt(bar(), "shear", seed).astype(np.float64)
        rows = np.arange(7, 21)
        centres = (out[rows] * np.arange(28)).sum(1) / out[rows].sum(1)
        slope, at_centre = np.polyfit(rows - 13.5, centres, 1)
        assert abs(abs(slope) - np.sin(0.4)) < 0.02  # x_in = x - sin(0.4) y about the centre
        assert abs(at_centre - 13.5) < 0.1
        slopes.add(np.sign(slope))
    assert slopes == {-1.0, 1.0}


def test_scale_shrinks_to_70_percent_about_the_centre():
    out = corrupt(bar(), "scale", 0)
    rows = np.flatnonzero(out.max(axis=1) > 127)
    assert abs((rows[-1] - rows[0] + 1) - 0.7 * 20) <= 1
    cy, cx, _ = moments(out)
    assert abs(cy - 13.5) < 0.05 and abs(cx - 13.5) < 0.05


def test_translate_moves_the_ink_3_pixels_on_both_axes(digits):
    small = corrupt(np.stack([bar()] * 16), "translate", 0)
    shifts = {tuple(np.round(np.subtract(moments(a)[:2], (13.5, 13.5))).astype(int)) for a in small}
    assert shifts <= {(-3, -3), (-3, 3), (3, -3), (3, 3)} and len(shifts) > 1
    out = corrupt(digits, "translate", 0)
    assert sorted(np.unique(out).tolist())[-1] == 255 and out.sum() <= digits.sum()  # moved, none added


def test_brightness_raises_the_background_by_half(digits):
    out = corrupt(digits, "brightness", 0)
    assert (out[digits == 0] == 128).all()
    assert (out[digits >= 128] == 255).all()


def test_stripe_inverts_seven_columns_each_side(digits):
    out = corrupt(digits, "stripe", 0)
    assert np.array_equal(out[:, :, :7], 255 - digits[:, :, :7])
    assert np.array_equal(out[:, :, 21:], 255 - digits[:, :, 21:])
    assert np.array_equal(out[:, :, 7:21], digits[:, :, 7:21])


def test_fog_lowers_contrast_over_an_uneven_haze(digits):
    out = corrupt(digits, "fog", 0).astype(np.float64)
    ink, ground = digits >= 200, digits == 0
    assert out[ground].mean() > 40  # 3/4 of a fractal in [0, 1]: the background is lit
    assert out[ground].std() > 10  # unevenly
    assert out[ink].mean() - out[ground].mean() < 0.35 * 255  # the digit stands out a quarter as much


def test_spatter_adds_grey_blotches_and_never_brightens_ink(digits):
    out = corrupt(digits, "spatter", 0)
    ground = digits == 0
    splashed = ground & (out > 0)
    assert splashed.mean() > 0.01
    assert out[splashed].max() <= 63 and out[splashed].min() >= 50  # grey 63 at opacity 0.8 .. 1
    assert (out <= np.maximum(digits, 63)).all()


def test_dotted_line_adds_dashes_only(digits):
    out = corrupt(digits, "dotted_line", 0)
    assert (out >= digits).all() and out.astype(int).sum() > digits.astype(int).sum() + 32 * 5 * 255
    gaps = (np.arange(28) // 2) % 2 == 0
    assert np.array_equal(out[:, :, gaps], digits[:, :, gaps])
    assert np.array_equal(out[:, :, 27], digits[:, :, 27])


def test_zigzag_adds_ink_between_columns_2_and_25(digits):
    out = corrupt(digits, "zigzag", 0)
    assert (out >= digits).all()
    added = (out.astype(int) - digits).sum(axis=(0, 1))
    assert added[:2].sum() == 0 and added[27:].sum() == 0 and (added[3:24] > 0).all()
    blank = corrupt(np.zeros((8, 28, 28), np.uint8), "zigzag", 0)
    direction_changes = np.abs(np.diff(np.sign(np.diff(blank.argmax(axis=1)[:, 3:24].astype(int), axis=1))))
    assert (direction_changes.sum(axis=1) >= 4).all()  # it zigs and zags, not a straight line


def test_canny_edges_keeps_only_edges():
    square = np.zeros((28, 28), np.uint8)
    square[6:22, 6:22] = 255
    out = corrupt(square, "canny_edges", 0)
    assert set(np.unique(out).tolist()) == {0, 255}
    assert not out[9:19, 9:19].any()  # the filled inside is no edge
    assert out[5:8, 6:22].any(axis=0).mean() > 0.8  # its border is
    assert not out[:3].any()


# --------------------------------------------------------------------------------------------- the evaluation


def test_score_images_matches_the_predictor(tiny_run, digits, mnist):
    """The preprocessed figures are what Predictor.predict answers, one image at a time."""
    from digitlab.evaluation.robustness import score_images
    from digitlab.inference.predict import Predictor

    predictor = Predictor.from_run(tiny_run, tta=False)
    labels = mnist.test.labels[:32]
    for name in ("stripe", "fog", "zigzag"):
        images = corrupt(digits, name, 0)
        got = score_images(predictor, images, labels)
        answers = predictor.predict(list(images))
        right = np.array([a.status == "ok" and a.digit == y for a, y in zip(answers, labels, strict=True)])
        refused = np.array([a.status in ("empty", "not_a_digit") for a in answers])
        assert got["accuracy_preprocessed"] == pytest.approx(right.mean())
        assert got["refused_preprocessed"] == pytest.approx(refused.mean())
        raw = predictor.predict_array(images).argmax(1) == labels
        assert got["accuracy"] == pytest.approx(raw.mean())


def test_validation_suite_uses_the_runs_validation_split(tiny_run, tmp_path, mnist):
    from digitlab.core.rundir import RunDir
    from digitlab.data.datasets import split_data
    from digitlab.evaluation.robustness import evaluate_robustness, suite_split

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _, val = split_data(mnist, RunDir(run).read_config())
    assert np.array_equal(suite_split(run, "val").images, val.images)
    result = evaluate_robustness(run, split="val", limit=40, corruptions=["stripe", "rotate"])
    assert result["split"] == "val" and result["seed"] == 1 and result["n"] == 40
    assert set(result["corruptions"]) == {"stripe", "rotate"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["robustness_val"]["mean_accuracy"] == pytest.approx(result["mean_accuracy"])
    assert "robustness" not in metrics  # the test-set figure is another key
    assert (run / "plots" / "robustness-val.png").is_file()
    assert "validation split" in (run / "report.md").read_text()


def test_evaluate_robustness_cli(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    r = run_cli("evaluate", run, "--robustness", "--robustness-limit", "60", timeout=300)
    assert r.returncode == 0, r.stderr
    rob = json.loads((run / "metrics.json").read_text())["robustness"]
    assert set(rob["corruptions"]) == set(CORRUPTIONS)
    assert rob["n"] == 60 and rob["split"] == "test" and rob["seed"] == 0 and rob["limit"] == 60
    for s in [rob["clean"], *rob["corruptions"].values()]:
        assert set(s) >= {"accuracy", "refused", "accuracy_preprocessed", "refused_preprocessed"}
        assert all(0 <= v <= 1 for v in s.values())
    assert rob["mean_accuracy"] == pytest.approx(np.mean([s["accuracy"] for s in rob["corruptions"].values()]))
    assert rob["clean_accuracy"] == rob["clean"]["accuracy"]
    report = (run / "report.md").read_text()
    assert "## Corruption robustness (MNIST-C suite, test set)" in report and "| canny_edges |" in report
    assert (run / "plots" / "robustness.png").stat().st_size > 10_000
    assert "mean over corruptions" in r.stdout

    from digitlab.evaluation.evaluate import evaluate_run

    evaluate_run(run)  # a plain re-evaluation rewrites the report: the section stays (it is in metrics.json)
    assert "| canny_edges |" in (run / "report.md").read_text()
