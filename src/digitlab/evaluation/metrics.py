"""Metrics of predictions on a labelled split: accuracy with its interval, per-class scores, NLL, calibration."""

from __future__ import annotations

from typing import Any

import numpy as np

from digitlab.core.errors import DataError

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
