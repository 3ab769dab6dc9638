"""The model bundled in the package: its recorded figures are true, and the CLI uses it when no run is given."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

import digitlab
from conftest import run_cli
from digitlab.core.config import TrainConfig
from digitlab.model.forward import load_model, predict_logits

BUNDLE = Path(digitlab.__file__).parent / "pretrained" / "fast"


def test_bundled_metrics_match_a_fresh_evaluation_on_the_embedded_test_set(mnist):
    metrics = json.loads((BUNDLE / "metrics.json").read_text())
    config = TrainConfig.load(BUNDLE / "config.json")
    logits = predict_logits(load_model(BUNDLE), mnist.test.images, tta=config.tta)
    accuracy = float((logits.argmax(1) == mnist.test.labels).mean())
    assert metrics["test"]["n"] == 10_000 and config.preset == "robust"
    assert abs(accuracy - metrics["test"]["accuracy"]) < 1e-9
    assert accuracy >= 0.996
    assert (BUNDLE / "model.onnx").stat().st_size == metrics["export"]["onnx_bytes"]
    assert (BUNDLE / "calibration.json").exists() and not (BUNDLE / "checkpoint" / "last.pt").exists()


def test_predict_without_a_run_uses_the_bundled_model(tmp_path, mnist):
    paths = []
    for i in range(3):
        path = tmp_path / f"d{i}.png"
        Image.fromarray(mnist.test.images[i]).save(path)
        paths.append(str(path))
    res = run_cli("predict", *paths, "--format", "json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [o["file"] for o in out] == paths
    assert [o["digit"] for o in out] == mnist.test.labels[:3].tolist()
    assert all(o["status"] == "ok" and o["confidence"] > 0.9 for o in out)
    assert np.allclose([sum(o["probabilities"]) for o in out], 1, atol=1e-4)


def test_tta_buys_nothing_measurable_for_the_bundled_model(mnist):
    """Why serving runs without test-time augmentation by default (docs/serving.md)."""
    from digitlab.inference.predict import Predictor

    model = load_model(BUNDLE)
    with_tta = (predict_logits(model, mnist.test.images, tta=True).argmax(1) == mnist.test.labels).mean()
    without = (predict_logits(model, mnist.test.images, tta=False).argmax(1) == mnist.test.labels).mean()
    assert abs(with_tta - without) <= 0.0005  # at most 5 of the 10,000 test digits
    onnx = Predictor.from_run(BUNDLE, backend="onnx", threads=1, tta=False)
    assert (onnx.predict_array(mnist.test.images).argmax(1) == mnist.test.labels).mean() == without
