"""One predictor for CLI, API and demo: images in, calibrated digits (or 'empty' / 'not a digit') out.

    p = Predictor.from_run("runs/fast")                 # or backend="onnx" / "onnx-int8" after `digitlab export`
    p.predict(["a.png", png_bytes, pil_image])          # -> [Prediction, ...], one per input, never raises
    p.read("number.jpg").text                           # a number written on one line -> "2024"

Every input goes through `digitlab.data.preprocess` (the same MNIST framing for every caller), then one batched
forward pass (with the run's test-time augmentation unless `tta` says otherwise), the run's temperature
(calibration.json), and its "not a digit" rule. A bad input gives a Prediction with status "error" and a
one-line message, not an exception.

Test-time augmentation (TTA: the mean logits over the image and four 1-pixel shifts) runs the model five
times. For the bundled model it buys nothing measurable (docs/serving.md; tests/test_pretrained.py): serving
(`digitlab serve`, `predict`, `read`; the API's `tta` setting, $DIGITLAB_TTA) runs without it unless asked (`--tta`),
while `Predictor.from_run` and `digitlab evaluate` follow the run's config.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitlab.core.calibration import load_calibration
from digitlab.core.errors import ConfigError, DigitlabError, DigitlabWarning, RunDirError
from digitlab.core.rundir import RunDir
from digitlab.core.summary import run_facts
from digitlab.data.decode import ImageSource
from digitlab.data.pixels import Box
from digitlab.data.preprocess import Preprocessed, preprocess
from digitlab.data.segment import segment_digits
from digitlab.model.scoring import OodRule, rule_of, softmax
from digitlab.model.tta import tta_logits

if TYPE_CHECKING:  # torch is imported only by the torch backend: ONNX serving runs without it
    from torch import nn

__all__ = ["BACKENDS", "Prediction", "Predictor", "ReadDigit", "ReadResult"]

BACKENDS = ("torch", "onnx", "onnx-int8")
BATCH_SIZE = 256


@dataclass(frozen=True)
class Prediction:
    """One input's answer. `digit` is None unless status is "ok"; `confidence` is the probability of `digit`
    (0.0 when there is none); `probabilities` are the 10 calibrated class probabilities of the framed image, refused
    ones included (status "ok", "empty" or "not_a_digit"; empty only for "error"); `message` says in one line
    why an image was refused; `input` is the 28x28 uint8 image the model saw."""

    digit: int | None
    probabilities: list[float]
    confidence: float
    status: str  # "ok" | "empty" | "not_a_digit" | "error"
    message: str | None = None
    input: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self, include_input: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"digit": self.digit, "confidence": self.confidence, "status": self.status,
                             "message": self.message, "probabilities": self.probabilities}  # fmt: skip
        if include_input:
            d["input"] = None if self.input is None else self.input.tolist()
        return d


@dataclass(frozen=True)
class ReadDigit:
    """One segment of a multi-digit image: its box (x0, y0, x1, y1) in source pixels and its prediction."""

    box: Box
    prediction: Prediction

    @property
    def digit(self) -> int | None:
        return self.prediction.digit

    @property
    def confidence(self) -> float:
        return self.prediction.confidence

    @property
    def status(self) -> str:
        return self.prediction.status

    @property
    def char(self) -> str:
        """The digit, or "?" for a segment the model would not read as one."""
        return str(self.digit) if self.digit is not None else "?"

    def to_dict(self, include_input: bool = False) -> dict[str, Any]:
        return {"box": list(self.box), **self.prediction.to_dict(include_input)}


@dataclass(frozen=True)
class ReadResult:
    """A number read left to right: `text` has one character per segment ("?" where it is not a digit;
    marks judged empty are left out); status "empty" when no ink was found, "error" when unreadable."""

    text: str
    digits: list[ReadDigit]
    status: str  # "ok" | "empty" | "error"
    message: str | None = None

    def to_dict(self, include_input: bool = False) -> dict[str, Any]:
        return {"text": self.text, "status": self.status, "message": self.message,
                "digits": [d.to_dict(include_input) for d in self.digits]}  # fmt: skip


def _is_batch(images: Any) -> bool:
    if isinstance(images, (list, tuple)):
        return True
    # (N, 28, 28) or (N, H, W, C) arrays are batches; (H, W), (H, W, 1|3|4) arrays are one image.
    return isinstance(images, np.ndarray) and (images.ndim == 4 or (images.ndim == 3 and images.shape[2] > 4))


class Predictor:
    """A run's model, temperature and OOD rule behind one thread-safe `predict`. Build it with `from_run`."""

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        *,
        backend: str,
        tta: bool = False,
        temperature: float = 1.0,
        ood: OodRule | None = None,
        info: dict[str, Any] | None = None,
        thin: bool = False,
        model: nn.Module | None = None,
        model_lock: threading.Lock | None = None,
    ) -> None:
        """`forward` maps uint8 (N, 28, 28) MNIST-format images to logits (N, 10), TTA included. `model`: the
        torch module behind it (None for ONNX), for what needs gradients (the demo's saliency), used only under
        `model_lock`, the lock `forward` holds: the checkpoint is then loaded once for both."""
        if not (temperature > 0 and math.isfinite(temperature)):
            raise RunDirError(f"temperature must be a positive number, not {temperature}")
        self._forward = forward
        self.backend = backend
        self.tta = tta
        self.temperature = float(temperature)
        self.ood = ood
        self.thin = thin
        self.model = model
        self.model_lock = model_lock if model_lock is not None else threading.Lock()
        self._info = {**(info or {}), "backend": backend, "temperature": self.temperature, "tta": tta,
                      "ood": None if ood is None else ood.to_dict()}  # fmt: skip

    # ------------------------------------------------------------------------------------------- building

    @classmethod
    def from_run(
        cls,
        path: str | Path,
        backend: str = "torch",
        device: str = "cpu",
        threads: int | None = None,
        tta: bool | None = None,
        allow_uncalibrated: bool = False,
    ) -> Predictor:
        """Load RUN's model (checkpoint/best.pt, or model.onnx / model.int8.onnx), calibration.json (temperature
        and OOD rule) and metrics.json (for `info`). Every file is checked; a broken one is a RunDirError.

        Without calibration.json (or without its "not a digit" rule) the confidences are raw softmax and nothing
        is ever refused as not a digit: that is an error unless `allow_uncalibrated`, which then serves T=1
        and no rule, and says so in `info["calibrated"]` (False) and a warning.

        `threads`: intra-op threads (ONNX Runtime: this session only; torch: the process-wide setting).
        `tta`: test-time augmentation, five forward passes per image; None follows the run's config. What it
        buys the bundled model: nothing measurable (docs/serving.md), for five times the model's cost.
        """
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        rd = RunDir(Path(path))
        if not rd.root.is_dir():
            raise RunDirError(f"no run directory at {rd.root}")
        config = rd.read_config() if rd.config.exists() else None
        if tta is None:
            tta = bool(config.tta) if config is not None else False
        model = lock = None
        if backend == "torch":
            forward, device_name, model, lock = _torch_forward(rd, device, threads, tta)
        else:
            forward, device_name = _onnx_forward(rd, backend, threads, tta)
        temperature, ood = _calibration(rd, allow_uncalibrated)
        facts = run_facts(rd)
        info = {
            "run": rd.root.resolve().name,
            "path": str(rd.root),
            "preset": facts.preset,
            "model": facts.model,
            "params": facts.params,
            "test_accuracy": facts.test_accuracy,
            "device": device_name,
            "calibrated": ood is not None,
        }
        return cls(forward, backend=backend, tta=tta, temperature=temperature, ood=ood, info=info, model=model,
                   model_lock=lock)  # fmt: skip

    @property
    def info(self) -> dict[str, Any]:
        """What an API's /v1/model shows: run id, preset, params, test accuracy, temperature, backend, OOD rule."""
        return dict(self._info)

    # ------------------------------------------------------------------------------------------- predicting

    def logits_array(self, images: np.ndarray) -> np.ndarray:
        """Raw logits (N, 10) for uint8 (N, 28, 28) MNIST-format images (no preprocessing)."""
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, 28, 28) images, got {images.dtype} {images.shape}")
        if len(images) == 0:
            return np.zeros((0, 10), np.float32)
        return self._forward(images)

    def predict_array(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, 10) for uint8 (N, 28, 28) images already in MNIST format (batch
        evaluation: no preprocessing, no OOD rule)."""
        return softmax(self.logits_array(images), self.temperature)

    def classify(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions for digits already preprocessed elsewhere (each the uint8 (28, 28) `Preprocessed.image`
        of an "ok" result, e.g. from worker processes): model, temperature and OOD rule exactly as `predict`."""
        return self._classify(list(images))

    def predict(self, images: ImageSource | Sequence[ImageSource]) -> list[Prediction]:
        """Predict one image or many (a list, or an (N, H, W) array); always returns a list, one per input."""
        sources = list(images) if _is_batch(images) else [images]
        results: list[Prediction | None] = [None] * len(sources)
        prepared: list[tuple[int, Preprocessed]] = []
        for i, src in enumerate(sources):
            try:
                prepared.append((i, preprocess(src, thin=self.thin)))
            except DigitlabError as e:
                results[i] = Prediction(None, [], 0.0, "error", str(e))
        preds = self._classify([p.image for _, p in prepared], [_empty_reason(p) for _, p in prepared])
        for (i, _), pred in zip(prepared, preds, strict=True):
            results[i] = pred
        return [r for r in results if r is not None]

    def _classify(self, images: list[np.ndarray], empty: Sequence[str | None] | None = None) -> list[Prediction]:
        """Predictions for framed images; `empty[k]`, when given and not None, is why image k holds no digit
        (it is refused as "empty", with the model's probabilities all the same)."""
        if not images:
            return []
        batch = np.stack(images)
        logits = self.logits_array(batch)
        probs = softmax(logits, self.temperature)
        rule = self.ood
        accepted = np.ones(len(batch), bool) if rule is None else rule.accepts(logits, batch)
        out = []
        digits = probs.argmax(axis=1).tolist()
        for k, (image, p) in enumerate(zip(images, probs.tolist(), strict=True)):  # tolist: Python floats at once
            if empty is not None and empty[k] is not None:
                out.append(Prediction(None, p, 0.0, "empty", empty[k], image))
                continue
            if accepted[k]:
                d = digits[k]
                out.append(Prediction(d, p, p[d], "ok", None, image))
                continue
            why = rule.why_refused(logits[k : k + 1], image) if rule is not None else "refused"
            out.append(Prediction(None, p, 0.0, "not_a_digit", f"not a digit: {why}", image))
        return out

    def read(self, image: ImageSource) -> ReadResult:
        """Read a number written on one line: segment it into digits, left to right, and predict each."""
        try:
            parts = segment_digits(image, thin=self.thin)
        except DigitlabError as e:
            return ReadResult("", [], "error", str(e))
        if not parts:
            return ReadResult("", [], "empty", "no ink found")
        preds = self._classify([prep.image for _, prep in parts], [_empty_reason(prep) for _, prep in parts])
        digits = [ReadDigit(tuple(int(v) for v in box), p) for (box, _), p in zip(parts, preds, strict=True)]
        text = "".join(d.char for d in digits if d.status != "empty")
        return ReadResult(text, digits, "ok" if text else "empty", None if text else "no digit-sized marks")


def _calibration(rd: RunDir, allow_uncalibrated: bool) -> tuple[float, OodRule | None]:
    """The run's temperature and "not a digit" rule; a missing one is an error unless `allow_uncalibrated`."""
    cal = load_calibration(rd)
    if cal is not None and cal.ood is not None:
        return cal.temperature, rule_of(cal)
    if cal is None:
        what = f"{rd.root}: no calibration.json: confidences would be uncalibrated and nothing refused as not a digit"
    else:
        what = f'{rd.calibration}: no "not a digit" rule ("ood"): nothing would be refused as not a digit'
    if not allow_uncalibrated:
        raise RunDirError(f"{what} — run `digitlab calibrate {rd.root}`, or allow it explicitly (--allow-uncalibrated)")
    warnings.warn(f"{what}: serving it so, as allowed", DigitlabWarning, stacklevel=3)
    return (1.0 if cal is None else cal.temperature), None


def _empty_reason(prep: Preprocessed) -> str | None:
    """None for a framed digit, else the one-line reason it is refused as empty."""
    if prep.status == "ok":
        return None
    return prep.stats.reason or "no digit found"  # as `batch` says it too


# --------------------------------------------------------------------------------------------- backends


def _torch_forward(
    rd: RunDir, device: str, threads: int | None, tta: bool
) -> tuple[Callable, str, nn.Module, threading.Lock]:
    import torch

    from digitlab.model.forward import load_model, pick_device, predict_logits

    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    model = load_model(rd, device=dev)
    lock = threading.Lock()  # one forward at a time: a module is not re-entrant across threads in eval mode

    def forward(images: np.ndarray) -> np.ndarray:
        with lock:
            return predict_logits(model, images, batch_size=BATCH_SIZE, tta=tta, device=dev)

    return forward, str(dev), model, lock


def _onnx_forward(rd: RunDir, backend: str, threads: int | None, tta: bool) -> tuple[Callable, str]:
    path = rd.model_file(backend)
    if not path.is_file():
        flag = " --int8" if backend == "onnx-int8" else ""
        raise RunDirError(f"no {path.name} in {rd.root} — run `digitlab export {rd.root} --format onnx{flag}` first")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # a corrupt or truncated file
        raise RunDirError(f"cannot load {path}: {' '.join(str(e).split())}") from None
    _check_onnx_signature(session, path, rd)
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:  # InferenceSession.run is thread-safe
        return session.run(None, {input_name: x})[0]

    return (lambda images: tta_logits(run, images, tta, BATCH_SIZE)), "cpu (onnxruntime)"


def _check_onnx_signature(session: Any, path: Path, rd: RunDir) -> None:
    """The graph must take one float32 [N, 1, 28, 28] input and give [N, 10] logits, as `digitlab export` writes."""

    def fits(shape: list, want: list[int]) -> bool:  # the batch axis may be named or of any size
        return len(shape) == len(want) + 1 and shape[1:] == want

    inputs, outputs = session.get_inputs(), session.get_outputs()
    ok = (len(inputs) == 1 and inputs[0].type == "tensor(float)" and fits(list(inputs[0].shape), [1, 28, 28])
          and len(outputs) >= 1 and fits(list(outputs[0].shape), [10]))  # fmt: skip
    if not ok:
        got = ", ".join(f"{i.name} {i.type} {list(i.shape)}" for i in inputs)
        out = ", ".join(f"{o.name} {list(o.shape)}" for o in outputs[:1])
        raise RunDirError(
            f"{path}: takes {got} -> {out}; a digitlab model takes one float [N, 1, 28, 28] image "
            f"and gives [N, 10] logits — re-export it: `digitlab export {rd.root} --format onnx`"
        )
