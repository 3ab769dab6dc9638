"""Export a run for the edge: ONNX fp32 (dynamic batch) and int8 (static quantisation).

    digitlab export runs/fast --format onnx --int8     # RUN/model.onnx and RUN/model.int8.onnx

The graph takes "image", float32 (N, 1, 28, 28) in [0, 1], white ink on black, MNIST-framed (run user images
through `digitlab.data.preprocess` first; normalisation is inside the graph) and returns "logits" (N, 10). The
probabilities are softmax(logits / T) with T from calibration.json beside the file (also in the model's
metadata_props, with the "not a digit" rule). Every export checks itself and records in metrics.json["export"]:
fp32 parity with PyTorch (max abs difference of probabilities) and int8 accuracy against PyTorch's.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from digitlab.core.atomic import atomic_write_bytes
from digitlab.core.calibration import load_calibration
from digitlab.core.config import TrainConfig
from digitlab.core.rundir import RunDir
from digitlab.data.datasets import Split, load_dataset, load_eval_split, split_data
from digitlab.model.forward import load_model, predict_logits
from digitlab.model.scoring import softmax
from digitlab.model.tta import tta_logits

OPSET = 17
PARITY_IMAGES = 300  # test images for the fp32 parity check
CALIBRATION_IMAGES = 1000  # training images that set the int8 activation ranges
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]  # the compute; BatchNorm left alone (SeedNet has some after ReLUs)


def _export_graph(model: Any, path: Path, metadata: dict[str, str]) -> None:
    """Write `model` as ONNX with a dynamic batch axis and `metadata` in metadata_props, atomically."""
    import onnx
    import torch

    # The TorchScript exporter (dynamo=False), on purpose: for these plain feed-forward CNNs it gives the same
    # graph and parity as the torch.export-based one (both measured at ~1e-8 on the logits), but exports in
    # ~0.3 s instead of ~5 s, takes dynamic_axes as they are (no torch.export.Dim constraints), and needs no
    # onnxscript. torch is pinned (2.13), where it is still shipped; it warns that it is deprecated.
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(), (torch.rand(2, 1, 28, 28),), buf, dynamo=False, opset_version=OPSET,
            input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    proto = onnx.load_from_string(buf.getvalue())
    _save_with_metadata(proto, path, metadata)


def _save_with_metadata(proto: Any, path: Path, metadata: dict[str, str]) -> None:
    import onnx

    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **metadata})
    proto.doc_string = metadata.get("digitlab.description", proto.doc_string)
    atomic_write_bytes(path, proto.SerializeToString())


def _session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _quantize(fp32: Path, out: Path, images: np.ndarray, metadata: dict[str, str]) -> None:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations with MinMax ranges)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            x = images.astype(np.float32)[:, None] / np.float32(255)
            self._batches = iter([{"image": x[i : i + 100]} for i in range(0, len(x), 100)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="digitlab-quant-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # shape inference + graph cleanup
        quantize_static(
            str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS,
        )  # fmt: skip
        _save_with_metadata(onnx.load(str(q)), out, {**metadata, "digitlab.precision": "int8 (QDQ, static)"})


def _metadata(rd: RunDir, config: TrainConfig, ood: dict[str, Any] | None, temperature: float) -> dict[str, str]:
    import digitlab

    return {
        "digitlab.version": digitlab.__version__,
        "digitlab.run": rd.root.resolve().name,
        "digitlab.preset": str(config.preset),
        "digitlab.model": str(config.model),
        "digitlab.temperature": repr(float(temperature)),
        "digitlab.tta": json.dumps(bool(config.tta)),
        "digitlab.ood": json.dumps(ood),
        "digitlab.precision": "fp32",
        "digitlab.description": "input 'image': float32 (N, 1, 28, 28) in [0, 1], white-on-black MNIST-framed "
        "digits; output 'logits' (N, 10); probabilities = softmax(logits / temperature)",
    }


def export_onnx(
    run: Path | RunDir,
    int8: bool = False,
    *,
    parity_n: int = PARITY_IMAGES,
    calibration_n: int = CALIBRATION_IMAGES,
    full_test: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write RUN/model.onnx (and with `int8` RUN/model.int8.onnx), check them, record metrics.json["export"].

    Parity: fp32 ONNX vs PyTorch probabilities (at the run's temperature, no TTA) on the first `parity_n` test
    images. int8: accuracy of both on the run's test split as `evaluate_run` uses it (first `test_limit`
    images, or all of them with `full_test`), with the run's TTA. Returns the "export" entry written.
    """
    say = progress or (lambda msg: None)
    rd = (run if isinstance(run, RunDir) else RunDir(Path(run))).require()
    config = rd.read_config()
    model = load_model(rd, device="cpu")
    cal = load_calibration(rd)
    temperature = 1.0 if cal is None else cal.temperature
    metadata = _metadata(rd, config, cal.ood if cal is not None else None, temperature)
    fp32_path, int8_path = rd.model_file("onnx"), rd.model_file("onnx-int8")

    say(f"exporting {fp32_path}")
    t0 = time.perf_counter()
    _export_graph(model, fp32_path, metadata)
    entry: dict[str, Any] = {"onnx_bytes": fp32_path.stat().st_size, "opset": OPSET,
                             "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                             "onnx_seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip

    test = load_eval_split(config.data)
    say(f"checking fp32 parity on {min(parity_n, len(test)):,} test images")
    images = test.images[:parity_n]
    ref = softmax(predict_logits(model, images), temperature)
    got = softmax(tta_logits(_session(fp32_path), images, tta=False), temperature)
    entry.update(onnx_max_abs_diff=float(np.abs(ref - got).max()) if len(images) else 0.0, parity_n=len(images))

    if int8:
        entry.update(_export_int8(model, config, test, metadata, calibration_n, full_test, rd, say))

    metrics = rd.read_metrics(required=False)
    if not int8 and int8_path.exists():  # an earlier int8 export of the same checkpoint stays, and its figures
        entry = {**{k: v for k, v in (metrics.get("export") or {}).items() if k not in entry}, **entry}
    rd.write_json(rd.metrics, {**metrics, "export": entry})
    return entry


def _export_int8(model: nn.Module, config: TrainConfig, test: Split, metadata: dict[str, str], calibration_n: int,
                 full_test: bool, rd: RunDir, say: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """RUN/model.int8.onnx quantised on `calibration_n` training images, and its test accuracy next to PyTorch's."""
    fp32_path, int8_path = rd.model_file("onnx"), rd.model_file("onnx-int8")
    train_split, _ = split_data(load_dataset(config.data), config)
    rng = np.random.default_rng(config.seed)
    pick = np.sort(rng.choice(len(train_split), min(calibration_n, len(train_split)), replace=False))
    say(f"quantising to int8 on {len(pick):,} training images")
    t0 = time.perf_counter()
    _quantize(fp32_path, int8_path, train_split.images[pick], metadata)
    entry: dict[str, Any] = {"onnx_int8_bytes": int8_path.stat().st_size, "int8_calibration_n": len(pick),
                             "int8_seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    split = test if full_test or not config.test_limit else test.subset(slice(0, config.test_limit))
    say(f"comparing int8 and PyTorch accuracy on {len(split):,} test images")
    torch_pred = predict_logits(model, split.images, tta=config.tta).argmax(1)
    int8_pred = tta_logits(_session(int8_path), split.images, tta=config.tta).argmax(1)
    entry.update(
        torch_test_accuracy=float(np.mean(torch_pred == split.labels)),
        int8_test_accuracy=float(np.mean(int8_pred == split.labels)),
        int8_agreement=float(np.mean(torch_pred == int8_pred)),
        test_n=len(split), tta=bool(config.tta),
    )  # fmt: skip
    return entry
