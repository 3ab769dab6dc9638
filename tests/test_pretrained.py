"""The model bundled in the package: its recorded figures are true, and the CLI uses it when no run is given."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from digitlab.core.config import TrainConfig
from digitlab.core.rundir import BUNDLED
from digitlab.model.forward import load_model, predict_logits

BUNDLE = BUNDLED


@pytest.mark.slow
def test_bundled_metrics_match_a_fresh_evaluation_and_tta_buys_nothing_measurable(mnist):
    """The recorded test accuracy is what the bundle scores now; and why serving runs without test-time
    augmentation by default (docs/serving.md). One pass of each kind over the 10,000 digits serves both checks."""
    from digitlab.inference.predict import Predictor

    metrics = json.loads((BUNDLE / "metrics.json").read_text())
    config = TrainConfig.load(BUNDLE / "config.json")
    model = load_model(BUNDLE)
    right = {tta: predict_logits(model, mnist.test.images, tta=tta).argmax(1) == mnist.test.labels
             for tta in (True, False)}  # fmt: skip
    accuracy = float(right[config.tta].mean())
    assert metrics["test"]["n"] == 10_000 and config.preset == "robust"
    assert abs(accuracy - metrics["test"]["accuracy"]) < 1e-9
    assert accuracy >= 0.996
    assert abs(right[True].mean() - right[False].mean()) <= 0.0005  # at most 5 of the 10,000 test digits
    onnx = Predictor.from_run(BUNDLE, backend="onnx", threads=1, tta=False)
    assert (onnx.predict_array(mnist.test.images).argmax(1) == mnist.test.labels).mean() == right[False].mean()
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
