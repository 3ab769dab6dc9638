"""ONNX export of the tiny run: fp32 parity with PyTorch, dynamic batch, metadata, int8, the ONNX predictor, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from digitlab.inference.export import export_onnx
from digitlab.inference.predict import Predictor

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

EXPORT_KEYS = {"onnx_bytes", "onnx_int8_bytes", "onnx_max_abs_diff", "int8_test_accuracy", "torch_test_accuracy"}


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[Path, dict]:
    run = shutil.copytree(tiny_run, tmp_path_factory.mktemp("export") / "run")
    return run, export_onnx(run, int8=True)


def session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_fp32_parity_with_pytorch(exported, mnist):
    from digitlab.core.calibration import read_temperature
    from digitlab.model.forward import load_model, predict_logits
    from digitlab.model.scoring import softmax

    run, entry = exported
    assert entry["onnx_max_abs_diff"] <= 1e-4 and entry["parity_n"] == 300
    images = mnist.test.images[300:600]  # other images than the export's own check
    t = read_temperature(run)
    ref = softmax(predict_logits(load_model(run), images), t)
    s = session(run / "model.onnx")
    got = s.run(["logits"], {"image": images.astype(np.float32)[:, None] / 255})[0]
    assert np.abs(softmax(got, t) - ref).max() <= 1e-4


def test_graph_io_dynamic_batch_and_metadata(exported):
    run, _ = exported
    s = session(run / "model.onnx")
    [inp], [out] = s.get_inputs(), s.get_outputs()
    assert (inp.name, out.name, inp.type) == ("image", "logits", "tensor(float)")
    assert inp.shape[1:] == [1, 28, 28] and not isinstance(inp.shape[0], int)
    for n in (1, 7):
        assert s.run(None, {"image": np.zeros((n, 1, 28, 28), np.float32)})[0].shape == (n, 10)
    props = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
    cal = json.loads((run / "calibration.json").read_text())
    assert float(props["digitlab.temperature"]) == cal["temperature"]
    assert json.loads(props["digitlab.ood"])["threshold"] == cal["ood"]["threshold"]
    assert props["digitlab.run"] == "run" and json.loads(props["digitlab.tta"]) is True


def test_int8_model_and_recorded_figures(exported):
    run, entry = exported
    assert (run / "model.int8.onnx").stat().st_size == entry["onnx_int8_bytes"] < entry["onnx_bytes"]
    assert entry["test_n"] == 300  # the tiny run's test_limit
    # The tiny model is barely trained; int8 must still agree with it on nearly everything.
    assert abs(entry["int8_test_accuracy"] - entry["torch_test_accuracy"]) <= 0.05
    assert entry["int8_agreement"] >= 0.9
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["export"]) >= EXPORT_KEYS and metrics["export"] == json.loads(json.dumps(entry))
    assert "test" in metrics and "val" in metrics  # the rest of metrics.json is kept


def test_onnx_predictor_matches_torch(exported, mnist):
    run, _ = exported
    images = mnist.test.images[:64]
    torch_p = Predictor.from_run(run)
    onnx_p = Predictor.from_run(run, backend="onnx", threads=1)
    assert onnx_p.info["backend"] == "onnx" and onnx_p.temperature == torch_p.temperature
    assert np.abs(onnx_p.predict_array(images) - torch_p.predict_array(images)).max() <= 1e-4  # TTA included
    a, b = torch_p.predict(list(images[:5])), onnx_p.predict(list(images[:5]))
    assert [r.digit for r in a] == [r.digit for r in b] and [r.status for r in a] == [r.status for r in b]
    int8 = Predictor.from_run(run, backend="onnx-int8")
    agree = (int8.predict_array(images).argmax(1) == torch_p.predict_array(images).argmax(1)).mean()
    assert agree >= 0.9


def test_cli_export(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    r = run_cli("export", run, "--format", "onnx")
    assert r.returncode == 0, r.stderr
    assert "model.onnx" in r.stdout and "bytes" in r.stdout
    assert (run / "model.onnx").is_file() and not (run / "model.int8.onnx").exists()
    assert json.loads((run / "metrics.json").read_text())["export"]["onnx_max_abs_diff"] <= 1e-4
    r = run_cli("export", run, "--format", "tflite")
    assert r.returncode != 0 and "tflite" in r.stderr


def test_training_exports_model_onnx_so_serve_answers_with_onnx(tiny_run, tmp_path):
    from digitlab.serving.settings import ApiSettings

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert (tiny_run / "model.onnx").stat().st_size == metrics["export"]["onnx_bytes"]  # the pipeline's last step
    assert metrics["export"]["onnx_max_abs_diff"] <= 1e-4 and not (tiny_run / "model.int8.onnx").exists()
    served = ApiSettings(run=tiny_run)
    assert served.resolved_backend == "onnx" and served.backend_reason() == "onnx backend: the run has model.onnx"
    bare = ApiSettings(run=tmp_path)
    assert bare.resolved_backend == "torch" and f"digitlab export {tmp_path}" in bare.backend_reason()
