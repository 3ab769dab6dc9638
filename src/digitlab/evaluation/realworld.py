"""A run scored on the real-world sets (`digitlab.data.realworld`): digitlab's preprocessing vs a naive resize.

digitlab evaluate runs/fast --realworld        # the CLI edge; `evaluate_realworld` underneath
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.core.atomic import atomic_write_text
from digitlab.core.calibration import load_calibration
from digitlab.core.rundir import RunDir
from digitlab.data.preprocess import naive_resize, preprocess
from digitlab.data.realworld import SET_NAMES, RealWorldSet, load_realworld
from digitlab.evaluation.sections import realworld_markdown, replace_realworld_section
from digitlab.model.forward import load_model, pick_device, predict_logits
from digitlab.model.scoring import OodRule, rule_of


def _accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean()) if len(labels) else 0.0


def score_realworld(
    model: nn.Module,
    ds: RealWorldSet,
    tta: bool = False,
    device: str | torch.device = "cpu",
    thin: bool = False,
    rule: OodRule | None = None,
) -> dict[str, Any]:
    """Accuracy of `model` on a set with digitlab's `preprocess` and with the `naive_resize` baseline.

    Images that `preprocess` calls empty count as errors (the app would answer "no digit"). With the run's
    "not a digit" `rule` (an `OodRule`), also what a user gets: the share refused (empty or not a
    digit), the accuracy on the answered ones, and "read", the share answered correctly. Also broken down by
    format variant ("by_kind") and, for the fonts set, by font ("by_font").
    """
    ours, naive, empty = [], [], []
    for img in ds.images:
        p = preprocess(img, thin=thin)
        ours.append(p.image)
        empty.append(p.status != "ok")
        naive.append(naive_resize(img))
    empty_mask = np.array(empty, bool)
    logits = predict_logits(model, np.stack(ours), tta=tta, device=device)
    pred = logits.argmax(1)
    ood = ~empty_mask & ~(rule.accepts(logits, np.stack(ours)) if rule is not None else True)
    answered = ~empty_mask & ~ood
    read = answered & (pred == ds.labels)
    pred[empty_mask] = -1
    naive_pred = predict_logits(model, np.stack(naive), tta=tta, device=device).argmax(1)
    labels = ds.labels

    def refusals(m: np.ndarray) -> dict[str, Any]:
        if not m.any():
            return {}
        return {"refused": float(1 - answered[m].mean()), "read": float(read[m].mean()),
                "answered_accuracy": float(read[m].sum() / max(1, answered[m].sum()))}  # fmt: skip

    def group(keys: np.ndarray) -> dict[str, dict[str, Any]]:
        return {str(k): {"n": int((keys == k).sum()), "accuracy": _accuracy(pred[keys == k], labels[keys == k]),
                         "naive_accuracy": _accuracy(naive_pred[keys == k], labels[keys == k]),
                         **refusals(keys == k)}
                for k in sorted(set(keys.tolist()))}  # fmt: skip

    out: dict[str, Any] = {
        "n": len(ds),
        "accuracy": _accuracy(pred, labels),
        "naive_accuracy": _accuracy(naive_pred, labels),
        "empty": int(empty_mask.sum()),
        "not_a_digit": int(ood.sum()),
        **refusals(np.ones(len(ds), bool)),
        "by_kind": group(ds.kinds),
    }
    if ds.name == "fonts":
        out["by_font"] = group(np.array([o.removeprefix("font:") for o in ds.origins]))
    return out


def evaluate_realworld(
    run: Path | Any,
    sets: Iterable[str] | Mapping[str, RealWorldSet] | None = None,
    progress: Callable[[str], None] | None = None,
    device: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Score a run's best checkpoint on the real-world sets; write RUN/metrics.json["realworld"] and report.md.

    `sets`: None for all of SET_NAMES from `data/realworld/`, some of those names, or ready sets by name
    (e.g. small subsets in tests). The run config's test-time augmentation is used. Returns
    {set: {"n", "accuracy", "naive_accuracy", "empty", "by_kind"[, "by_font"]}}; other keys of
    metrics.json are kept and the report's "Real-world input" section is added or replaced. With a calibrated
    run, also the refusals by its "not a digit" rule ("not_a_digit", "refused", "answered_accuracy", "read").
    """
    rd = (run if isinstance(run, RunDir) else RunDir(Path(run))).require()
    say = progress or (lambda msg: None)
    config = rd.read_config()
    dev = pick_device(device or config.device)
    model = load_model(rd, device=dev)
    rule = rule_of(load_calibration(rd))
    if sets is None:
        sets = SET_NAMES
    named = dict(sets) if isinstance(sets, Mapping) else {s: None for s in sets}
    results: dict[str, dict[str, Any]] = {}
    for name, ds in named.items():
        if ds is None:
            say(f"loading the {name} set")
            ds = load_realworld(name)
        say(f"scoring {len(ds):,} {name} images")
        results[name] = score_realworld(model, ds, tta=config.tta, device=dev, rule=rule)
    metrics = {**rd.read_metrics(required=False), "realworld": results}
    rd.write_json(rd.metrics, metrics)
    report = rd.report.read_text() if rd.report.exists() else ""
    atomic_write_text(rd.report, replace_realworld_section(report, realworld_markdown(results)))
    return results
