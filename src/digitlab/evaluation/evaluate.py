"""Evaluation: model outputs on a split, metrics (accuracy, per-class, calibration), and the run's report."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.core.atomic import atomic_write_text
from digitlab.core.config import TrainConfig
from digitlab.core.errors import DataError
from digitlab.core.rundir import RunDir, load_model, read_json_object
from digitlab.data.datasets import KNOWN_DATASETS, load_eval_split
from digitlab.evaluation.calibrate import load_calibration, softmax
from digitlab.model.tta import TTA_SHIFTS, shift_batch


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) white-on-black -> float (N, 1, 28, 28) in [0, 1]."""
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # IDX arrays are read-only np.frombuffer views; torch warns on those
        images = images.copy()
    return torch.from_numpy(images).unsqueeze(1).float().div_(255)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 1000,
    tta: bool = False,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Logits (N, 10) in eval mode; with `tta`, the mean logits over the image and four 1-pixel shifts."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size]).to(device)
        shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
        logits = torch.stack([model(shift_batch(x, dx, dy)) for dx, dy in shifts]).mean(0)
        out.append(logits.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 10), np.float32)


# --------------------------------------------------------------------------------------------- metrics

ECE_BINS = 15


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (no continuity correction)."""
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def reliability_bins(confidences: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """Equal-width confidence bins (lo, hi]: mean confidence, accuracy and count per bin (None when empty)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted on the inner edges puts conf in bin i when edges[i] < conf <= edges[i + 1].
    idx = np.searchsorted(edges[1:-1], confidences, side="left")
    bins = []
    for i in range(n_bins):
        mask = idx == i
        count = int(mask.sum())
        bins.append({
            "lo": float(edges[i]), "hi": float(edges[i + 1]), "count": count,
            "confidence": float(confidences[mask].mean()) if count else None,
            "accuracy": float(correct[mask].mean()) if count else None,
        })  # fmt: skip
    return bins


def expected_calibration_error(bins: list[dict]) -> float:
    """ECE: the count-weighted mean of |accuracy - confidence| over the bins."""
    n = sum(b["count"] for b in bins)
    if n == 0:
        return 0.0
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / n)


def compute_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy (with a 95% Wilson interval), per-class scores, confusion matrix, NLL and calibration.

    `probs` are class probabilities (N, K), `labels` true classes (N,). Accuracies are fractions in [0, 1].
    """
    from sklearn.metrics import classification_report, confusion_matrix, log_loss

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"expected probs (N, K) and labels (N,), got {probs.shape} and {labels.shape}")
    n, k = probs.shape
    if n == 0:
        raise DataError("no labelled images to evaluate")
    if labels.min() < 0 or labels.max() >= k:
        raise DataError(f"labels must be in 0..{k - 1}, found {labels.min()}..{labels.max()}")
    classes = list(range(k))
    preds = probs.argmax(1)
    confidences = probs.max(1)
    correct = preds == labels
    n_correct = int(correct.sum())
    report = classification_report(labels, preds, labels=classes, output_dict=True, zero_division=0)

    def scores(d: dict[str, float]) -> dict[str, Any]:
        return {"precision": float(d["precision"]), "recall": float(d["recall"]), "f1": float(d["f1-score"]),
                "support": int(d["support"])}  # fmt: skip

    bins = reliability_bins(confidences, correct)
    return {
        "n": n,
        "accuracy": n_correct / n,
        "accuracy_ci95": list(wilson_interval(n_correct, n)),
        "errors": n - n_correct,
        "nll": float(log_loss(labels, probs, labels=classes)),
        "ece": expected_calibration_error(bins),
        "ece_bins": len(bins),
        "reliability": bins,
        "per_class": {str(c): scores(report[str(c)]) for c in classes},
        "macro_avg": scores(report["macro avg"]),
        "weighted_avg": scores(report["weighted avg"]),
        "classification_report": classification_report(labels, preds, labels=classes, digits=4, zero_division=0),
        "confusion": confusion_matrix(labels, preds, labels=classes).tolist(),
    }


# --------------------------------------------------------------------------------------------- a run


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA, then Apple MPS, then the CPU; any other name is used as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _dataset_name(spec: str) -> str:
    """`mnist` -> mnist; a path -> its file stem or folder name, made safe for a directory name."""
    if spec in KNOWN_DATASETS:
        return spec
    path = Path(spec)
    name = path.stem if path.is_file() else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "dataset"


def read_temperature(run: Path | RunDir) -> float:
    """The temperature in RUN/calibration.json (validated), or 1.0 when the run is uncalibrated."""
    cal = load_calibration(run if isinstance(run, RunDir) else RunDir(Path(run)))
    return 1.0 if cal is None else cal.temperature


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path) if path.exists() else {}


def _progress_fn(progress: bool | Callable[[str], None]) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda msg: print(f"evaluate: {msg}", file=sys.stderr, flush=True)
    return lambda msg: None


def evaluate_run(
    run: Path | RunDir,
    data: str | None = None,
    progress: bool | Callable[[str], None] = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate a run's best checkpoint and write metrics, report and plots; return the metrics written.

    data=None: the official test split of the run's own dataset (first `test_limit` images when set); the
    result goes into RUN/metrics.json under "test" and RUN/report.md, RUN/plots/. data=<name or path>: that
    dataset's test split, written to RUN/eval/<name>/ (metrics.json, report.md, plots/); the run's own
    metrics.json is left alone. Either way the returned dict is the metrics.json written: the training
    figures plus "test". `progress` is a callable that receives stage messages (True: print them to stderr).
    """
    rd = (run if isinstance(run, RunDir) else RunDir(Path(run))).require()
    say = _progress_fn(progress)
    config = rd.read_config()
    dev = pick_device(device or config.device)
    spec = str(data) if data is not None else config.data
    say(f"loading the model from {rd.best}")
    model = load_model(rd, device=dev)
    say(f"loading the test split of {spec}")
    split = load_eval_split(spec)
    if data is None and config.test_limit:
        split = split.subset(slice(0, config.test_limit))
    temperature = read_temperature(rd)
    say(f"predicting {len(split):,} images" + (" with test-time augmentation" if config.tta else ""))
    t0 = time.perf_counter()
    logits = predict_logits(model, split.images, tta=config.tta, device=dev)
    seconds = time.perf_counter() - t0
    probs = softmax(logits, temperature)
    test = compute_metrics(probs, split.labels)
    if temperature != 1.0:  # what temperature scaling changed, on this same split (the fit used validation)
        raw = compute_metrics(softmax(logits), split.labels)
        test["uncalibrated"] = {"nll": raw["nll"], "ece": raw["ece"]}
    name = _dataset_name(spec)
    out_dir = rd.root if data is None else rd.root / "eval" / name
    test.update({
        "dataset": name, "data": spec, "own_test_set": data is None,
        "test_limit": config.test_limit if data is None else None,
        "checkpoint": "best", "tta": config.tta, "temperature": temperature, "seconds": round(seconds, 3),
        "report": (out_dir / "report.md").relative_to(rd.root).as_posix(),
    })  # fmt: skip

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {**_read_json(rd.metrics), "test": test}
    if data is not None:  # a self-contained copy: the training figures travel with the foreign evaluation
        metrics["run"] = str(rd.root)
    say("drawing plots")
    _write_plots(rd, out_dir, test, split.images, split.labels, probs)
    say("writing the report")
    rd.write_json(out_dir / "metrics.json", metrics)
    write_report(rd, metrics, out_dir=out_dir, config=config)
    return metrics


def _write_plots(rd: RunDir, out_dir: Path, test: dict[str, Any], images: np.ndarray, labels: np.ndarray,
                 probs: np.ndarray) -> None:  # fmt: skip
    from digitlab.evaluation import plots

    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    if rd.history.exists():
        plots.plot_curves(rd.history, plot_dir / "curves.png")
    plots.plot_confusion(test["confusion"], plot_dir / "confusion.png")
    plots.plot_errors(images, labels, probs.argmax(1), probs.max(1), plot_dir / "errors.png")
    plots.plot_reliability(test["reliability"], plot_dir / "reliability.png", ece=test["ece"])


# --------------------------------------------------------------------------------------------- the report

TEST_SET_POLICY = (
    "The official test set was used only for this final report: never to choose checkpoints, learning rates "
    "or anything else. The checkpoint was chosen on the validation split."
)


def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: Any, fmt: str = "{:,}") -> str:
    return "—" if x is None else fmt.format(x)


def _before(test: dict[str, Any], key: str, fmt: str | None) -> str:
    """' (before temperature scaling: X)' when the run is calibrated."""
    raw = test.get("uncalibrated", {}).get(key)
    if raw is None:
        return ""
    return f" (before temperature scaling: {_pct(raw) if fmt is None else fmt.format(raw)})"


def confusion_markdown(confusion: list[list[int]]) -> str:
    """A Markdown table: rows are true classes, columns predicted ones; the diagonal in bold."""
    k = len(confusion)
    lines = ["| true \\ pred | " + " | ".join(str(j) for j in range(k)) + " |",
             "|---:|" + "---:|" * k]  # fmt: skip
    for i, row in enumerate(confusion):
        cells = [f"**{c}**" if i == j else ("·" if c == 0 else str(c)) for j, c in enumerate(row)]
        lines.append(f"| **{i}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    run_dir: Path | RunDir,
    metrics: dict[str, Any],
    out_dir: Path | None = None,
    config: TrainConfig | None = None,
) -> Path:
    """Write report.md (into `out_dir`, default the run directory) from a metrics.json-shaped dict."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    out_dir = Path(out_dir) if out_dir is not None else rd.root
    if config is None and rd.config.exists():
        config = rd.read_config()
    test = metrics.get("test") or {}
    val = metrics.get("val") or {}
    model = metrics.get("model") or (config.model if config else None)
    train_data = config.data if config else None
    plot_dir = out_dir / "plots"

    lines = [f"# Run report: `{rd.root.name}`", ""]
    lines += ["| | |", "|---|---|"]
    rows = [
        ("Preset", metrics.get("preset") or (config.preset if config else None)),
        ("Model", model),
        ("Parameters", _num(metrics.get("params"))),
        ("Seed", metrics.get("seed", config.seed if config else None)),
        ("Training data", train_data),
        ("Device", metrics.get("device")),
        ("PyTorch", metrics.get("torch")),
        ("Training time", _num(metrics.get("train_seconds"), "{:,.1f} s")),
        ("Epochs (best)", f"{_num(metrics.get('epochs'))} ({_num(metrics.get('best_epoch'))})"),
        ("Validation accuracy", _pct(val.get("accuracy"))
         + (f" (loss {val['loss']:.4f})" if val.get("loss") is not None else "")),
    ]  # fmt: skip
    ablation = metrics.get("val_ablation") or {}
    for key, label in (("without_tta", "Validation without TTA"), ("without_ema", "Validation without the EMA")):
        if key in ablation:  # what each trick bought, on validation (the test set chose nothing)
            rows.append((label, _pct(ablation[key])))
    lines += [f"| {k} | {'—' if v is None else v} |" for k, v in rows]

    if test:
        lo, hi = test["accuracy_ci95"]
        dataset = test.get("dataset", train_data)
        lines += ["", f"## Test set: {dataset}", ""]
        if test.get("own_test_set", True):
            limit = test.get("test_limit")
            what = f"the first {test['n']:,} images (test_limit)" if limit else f"all {test['n']:,} images"
            lines.append(f"Evaluated on {what} of the official test split of `{test.get('data', dataset)}`.")
        else:
            lines.append(f"Evaluated on `{test.get('data', dataset)}` ({test['n']:,} images), a dataset "
                         f"other than the one this model was trained on (`{train_data}`).")  # fmt: skip
        lines += [
            "", f"> {TEST_SET_POLICY}", "",
            f"**Test accuracy: {_pct(test['accuracy'])}** (95% CI {_pct(lo)}–{_pct(hi)}, Wilson score "
            f"interval); {test['errors']:,} errors out of {test['n']:,}.",
            "",
            f"Checkpoint `checkpoint/{test.get('checkpoint', 'best')}.pt`; test-time augmentation "
            f"{'on' if test.get('tta') else 'off'}; temperature {test.get('temperature', 1.0):g}"
            + (" (from calibration.json)." if test.get("temperature", 1.0) != 1.0 else " (uncalibrated)."),
            "", "### Per class (scikit-learn `classification_report`)", "",
            "```", test["classification_report"].rstrip(), "```",
            "", "### Calibration", "",
            f"- Negative log-likelihood (mean): {test['nll']:.4f}" + _before(test, "nll", "{:.4f}"),
            f"- Expected calibration error ({test.get('ece_bins', ECE_BINS)} equal-width bins): "
            f"{_pct(test['ece'])}" + _before(test, "ece", None),
            *([f"- Temperature T = {test['temperature']:g}, fitted on the validation split after training "
               "(`calibration.json`); the test set played no part in it."] if "uncalibrated" in test else []),
            "", "### Confusion matrix (rows: true digit, columns: predicted digit)", "",
            confusion_markdown(test["confusion"]),
        ]  # fmt: skip

    if metrics.get("members"):  # an ensemble: its members, their own validation and test figures
        from digitlab.training.ensemble import ensemble_markdown

        lines += ["", ensemble_markdown(metrics).rstrip()]
    if metrics.get("realworld"):  # kept across re-evaluations: `evaluate --realworld` stored it in metrics.json
        from digitlab.data.realworld import realworld_markdown

        lines += ["", realworld_markdown(metrics["realworld"]).rstrip()]
    for key in ("robustness", "robustness_val"):  # likewise kept: `evaluate --robustness`, `evaluate_robustness`
        if metrics.get(key):
            from digitlab.evaluation.robustness import robustness_markdown

            lines += ["", robustness_markdown(metrics[key]).rstrip()]

    figures = [("curves", "Training curves"), ("confusion", "Confusion matrix"),
               ("errors", "Misclassified test images"), ("reliability", "Reliability diagram")]  # fmt: skip
    present = [(n, t) for n, t in figures if (plot_dir / f"{n}.png").exists()]
    if present:
        lines += ["", "## Figures", ""]
        for n, t in present:
            lines += [f"### {t}", "", f"![{t}](plots/{n}.png)", ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path
