"""Evaluation of a run on a test split: its predictions, metrics.json "test", report.md and plots."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.core.calibration import read_temperature
from digitlab.core.jsonfile import read_json_object
from digitlab.core.rundir import RunDir
from digitlab.data.catalog import KNOWN_DATASETS
from digitlab.data.datasets import load_eval_split
from digitlab.evaluation.metrics import compute_metrics
from digitlab.evaluation.report import write_report
from digitlab.model.forward import load_model, pick_device, predict_logits
from digitlab.model.scoring import softmax


def _dataset_name(spec: str) -> str:
    """`mnist` -> mnist; a path -> its file stem or folder name, made safe for a directory name."""
    if spec in KNOWN_DATASETS:
        return spec
    path = Path(spec)
    name = path.stem if path.is_file() else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "dataset"


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
