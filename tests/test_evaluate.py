"""Metrics on hand-made probabilities, evaluate_run on a synthetic run, and the evaluate / runs commands."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from digitlab.core.errors import DataError
from digitlab.evaluation.evaluate import evaluate_run
from digitlab.evaluation.metrics import compute_metrics
from digitlab.model.scoring import softmax

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("curves", "confusion", "errors", "reliability")
TRAIN_KEYS = {"preset", "seed", "params", "train_seconds", "torch", "device", "val", "epochs", "best_epoch"}


def probs_with_confidence(labels: np.ndarray, preds: np.ndarray, conf: np.ndarray, k: int = 10) -> np.ndarray:
    """Rows with probability `conf` on `preds` and the rest spread evenly over the other classes."""
    conf = np.broadcast_to(np.asarray(conf, dtype=float), labels.shape)
    p = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)
    p[np.arange(len(preds)), preds] = conf
    return p


# --------------------------------------------------------------------------------------------- metrics


def test_accuracy_errors_and_wilson_interval():
    labels = np.arange(100) % 10
    preds = labels.copy()
    preds[:5] = (labels[:5] + 1) % 10  # 5 mistakes: accuracy 0.95
    m = compute_metrics(probs_with_confidence(labels, preds, 0.95), labels)
    assert m["n"] == 100 and m["errors"] == 5
    assert m["accuracy"] == pytest.approx(0.95)
    lo, hi = m["accuracy_ci95"]
    assert lo < m["accuracy"] < hi
    # Wilson score interval by its formula: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    z, n, p = 1.959963984540054, 100, 0.95
    centre, half = p + z**2 / (2 * n), z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert lo == pytest.approx((centre - half) / (1 + z**2 / n), abs=1e-9)
    assert hi == pytest.approx((centre + half) / (1 + z**2 / n), abs=1e-9)
    assert (lo, hi) == pytest.approx((0.88825, 0.97846), abs=1e-5)
    # 95% confidence on every image and 95% right: perfectly calibrated.
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)


def test_per_class_and_confusion_sum_to_n():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    probs = rng.dirichlet(np.ones(10), 200)
    m = compute_metrics(probs, labels)
    assert set(m["per_class"]) == {str(d) for d in range(10)}
    assert set(m["per_class"]["3"]) == {"precision", "recall", "f1", "support"}
    assert sum(c["support"] for c in m["per_class"].values()) == 200
    cm = np.array(m["confusion"])
    assert cm.shape == (10, 10) and cm.sum() == 200
    assert np.trace(cm) == 200 - m["errors"]
    assert cm.sum(1).tolist() == [m["per_class"][str(d)]["support"] for d in range(10)]
    assert m["macro_avg"]["recall"] == pytest.approx(np.mean([c["recall"] for c in m["per_class"].values()]))
    assert sum(b["count"] for b in m["reliability"]) == 200 and len(m["reliability"]) == 15
    assert "precision" in m["classification_report"] and "macro avg" in m["classification_report"]


def test_perfect_confident_predictions():
    labels = np.arange(30) % 10
    m = compute_metrics(np.eye(10)[labels], labels)
    assert m["accuracy"] == 1.0 and m["errors"] == 0
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["nll"] == pytest.approx(0.0, abs=1e-9)
    assert m["accuracy_ci95"][1] == pytest.approx(1.0)
    assert all(c["f1"] == 1.0 for c in m["per_class"].values())


def test_ece_and_nll_known_values():
    labels = np.array([0, 1, 2, 3])
    preds = np.array([0, 5, 2, 3])  # one mistake, in the 0.9-confidence pair
    conf = np.array([0.9, 0.9, 0.6, 0.6])
    m = compute_metrics(probs_with_confidence(labels, preds, conf), labels)
    # bin of 0.9: accuracy 0.5, gap 0.4; bin of 0.6: accuracy 1.0, gap 0.4 -> ECE = (2*0.4 + 2*0.4) / 4
    assert m["ece"] == pytest.approx(0.4)
    filled = [b for b in m["reliability"] if b["count"]]
    assert [b["count"] for b in filled] == [2, 2]
    assert [b["confidence"] for b in filled] == pytest.approx([0.6, 0.9])
    assert [b["accuracy"] for b in filled] == pytest.approx([1.0, 0.5])
    expected_nll = -np.mean(np.log([0.9, 0.1 / 9, 0.6, 0.6]))
    assert m["nll"] == pytest.approx(expected_nll)
    # Half right at 50% confidence is also perfectly calibrated; NLL is then ln 2 for the right half.
    labels = np.arange(10)
    preds = np.where(labels % 2 == 0, labels, (labels + 1) % 10)
    assert compute_metrics(probs_with_confidence(labels, preds, 0.5), labels)["ece"] == pytest.approx(0.0)


def test_softmax_and_temperature():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    p = softmax(logits)
    assert p.sum(1) == pytest.approx([1.0, 1.0])
    assert p[1] == pytest.approx([1 / 3] * 3)
    assert softmax(2 * logits, temperature=2.0) == pytest.approx(p)
    assert softmax(logits, temperature=100.0)[0].max() < p[0].max()  # a higher temperature softens
    with pytest.raises(ValueError):
        softmax(logits, temperature=0.0)
    from scipy.special import softmax as scipy_softmax

    z = np.random.default_rng(0).normal(0, 8, (500, 10))
    assert np.array_equal(softmax(z, 0.4), scipy_softmax(z / 0.4, axis=1))  # the same bits as scipy's


def test_bad_inputs_raise_user_errors():
    with pytest.raises(DataError):
        compute_metrics(np.zeros((0, 10)), np.zeros(0, dtype=np.int64))
    with pytest.raises(DataError):
        compute_metrics(np.full((2, 10), 0.1), np.array([0, 10]))


# --------------------------------------------------------------------------------------------- a run


def make_run(root: Path, test_limit: int = 200) -> Path:
    """An untrained `fast` model saved as a finished run: config, checkpoint, 2-epoch history, metrics."""
    from digitlab.core.config import TrainConfig
    from digitlab.core.rundir import RunDir, save_weights
    from digitlab.model.networks import build_model, count_params

    rd = RunDir(root)
    config = TrainConfig(preset="fast", model="fast", test_limit=test_limit)
    model = build_model("fast")
    save_weights(rd.best, model, config)
    rd.config.write_text(config.to_json())
    rd.history.write_text(
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds\n"
        "1,1.20,0.61,,,0.2,3.1\n"
        "2,0.45,0.88,0.40,0.90,0.02,3.0\n"
    )
    metrics = {"preset": "fast", "seed": 42, "params": count_params(model), "train_seconds": 6.1,
               "torch": "test", "device": "cpu", "val": {"accuracy": 0.9, "loss": 0.4}, "epochs": 2,
               "best_epoch": 2}  # fmt: skip
    rd.write_json(rd.metrics, metrics)
    return root


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("runs") / "tiny")
    evaluate_run(run)
    return run


def assert_pngs(plot_dir: Path, names=PLOTS) -> None:
    for name in names:
        data = (plot_dir / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name


def test_evaluate_run_writes_metrics_report_and_plots(evaluated_run: Path):
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    assert set(metrics) >= TRAIN_KEYS  # training's keys are kept
    test = metrics["test"]
    assert 0.0 <= test["accuracy"] <= 1.0
    assert test["n"] == 200  # config.test_limit
    assert set(test["per_class"]) == {str(d) for d in range(10)}
    assert test["dataset"] == "mnist" and test["temperature"] == 1.0
    report = (evaluated_run / "report.md").read_text()
    assert "used only for this final report" in report and "chosen on the validation split" in report
    assert "Test accuracy" in report and "precision" in report and "| true \\ pred |" in report
    for name in PLOTS:
        assert f"plots/{name}.png" in report
    assert_pngs(evaluated_run / "plots")


def test_evaluate_run_honours_calibration_temperature(evaluated_run: Path, tmp_path: Path):
    run = shutil.copytree(evaluated_run, tmp_path / "calibrated")
    (run / "calibration.json").write_text(json.dumps({"temperature": 0.05}))
    test = evaluate_run(run)["test"]
    before = json.loads((evaluated_run / "metrics.json").read_text())["test"]
    assert test["temperature"] == 0.05
    assert test["accuracy"] == before["accuracy"]  # a temperature never changes the argmax
    assert test["nll"] != pytest.approx(before["nll"])
    report = (run / "report.md").read_text()
    assert "temperature 0.05" in report
    assert test["uncalibrated"]["nll"] == pytest.approx(before["nll"])  # the same logits at T = 1
    assert f"before temperature scaling: {before['nll']:.4f}" in report


def write_idx_dir(directory: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    directory.mkdir(parents=True)
    n = len(images)
    for prefix in ("train", "t10k"):
        header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
        header = (0x801).to_bytes(4, "big") + n.to_bytes(4, "big")
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + labels.tobytes()))
    return directory


def test_evaluate_on_another_dataset_writes_eval_dir(evaluated_run: Path, tmp_path: Path):
    # A tiny IDX copy (the full Fashion-MNIST test split would take ~15 s on 2 CPU cores).
    fashion = Path("/usr/share/datasets/fashion-mnist")
    if fashion.is_dir():
        from digitlab.data.datasets import load_eval_split

        split = load_eval_split(str(fashion))
        images, labels = split.images[:60], split.labels[:60].astype(np.uint8)
    else:
        rng = np.random.default_rng(0)
        images, labels = (
            rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
            np.arange(60, dtype=np.uint8) % 10,
        )
    data = write_idx_dir(tmp_path / "fashion-mini", np.ascontiguousarray(images), labels)
    own_before = (evaluated_run / "metrics.json").read_bytes()

    result = evaluate_run(evaluated_run, data=str(data))

    out = evaluated_run / "eval" / "fashion-mini"
    assert (evaluated_run / "metrics.json").read_bytes() == own_before  # the run's own metrics untouched
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["n"] == 60 and saved["test"]["dataset"] == "fashion-mini"
    assert saved["test"]["own_test_set"] is False and result["test"] == saved["test"]
    assert "a dataset other than the one this model was trained on" in (out / "report.md").read_text()
    assert_pngs(out / "plots")


# --------------------------------------------------------------------------------------------- CLI


def test_cli_evaluate(evaluated_run: Path):
    r = run_cli("evaluate", evaluated_run)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and "report.md" in r.stdout


def test_cli_evaluate_missing_run_is_one_line(tmp_path: Path):
    # A relative path keeps the message short: Rich wraps stderr at 80 columns when it is not a terminal.
    r = run_cli("evaluate", "nope", cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and "no run directory" in r.stderr


def fake_run(root: Path, preset: str, acc: float) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"preset": preset, "model": preset}))
    (root / "metrics.json").write_text(json.dumps({
        "preset": preset, "params": 1000, "epochs": 3, "train_seconds": 12.5, "val": {"accuracy": acc},
        "test": {"accuracy": acc, "accuracy_ci95": [acc - 0.01, acc + 0.005], "nll": 0.05, "ece": 0.01,
                 "errors": 3, "n": 100},
    }))  # fmt: skip
    return root


def test_cli_runs_compare_and_list(tmp_path: Path):
    a = fake_run(tmp_path / "runs" / "runA", "seed", 0.991)
    b = fake_run(tmp_path / "runs" / "runB", "fast", 0.987)
    r = run_cli("runs", "compare", a, b)
    assert r.returncode == 0, r.stderr
    assert "runA" in r.stdout and "runB" in r.stdout
    assert "99.10%" in r.stdout and "98.70%" in r.stdout and "ECE" in r.stdout
    r = run_cli("runs", "list", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    assert "runA" in r.stdout and "runB" in r.stdout and "fast" in r.stdout


def test_cli_runs_compare_rejects_non_run(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    r = run_cli("runs", "compare", "empty", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not a run directory" in r.stderr
