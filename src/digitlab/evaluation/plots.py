"""Figures for a run: training curves, confusion matrix, misclassified gallery, reliability diagram."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Figure objects on the Agg canvas: no pyplot global state and no GUI backend, so safe in servers and threads.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from digitlab.core.atomic import atomic_write_bytes

DPI = 120


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: Path) -> Path:
    """Render to PNG in memory, then write it atomically: a stopped or failed run never leaves half an image."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    return atomic_write_bytes(out, buf.getbuffer())


def _read_history(history_csv: Path) -> dict[str, np.ndarray]:
    """Columns of history.csv as float arrays; empty cells (epochs not validated) become NaN."""
    with Path(history_csv).open(newline="") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, np.ndarray] = {}
    for key in rows[0].keys() if rows else []:
        vals = []
        for r in rows:
            try:
                vals.append(float(r[key]))
            except (TypeError, ValueError):
                vals.append(math.nan)
        cols[key] = np.array(vals)
    return cols


def plot_curves(history_csv: Path, out: Path) -> Path:
    """Loss, accuracy (train and validation) and learning rate per epoch from history.csv."""
    h = _read_history(history_csv)
    fig = _new_figure(13, 3.8)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    if not h or "epoch" not in h:
        for ax in (ax_loss, ax_acc, ax_lr):
            ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
        fig.suptitle("Training curves")
        return _save(fig, out)
    epoch = h["epoch"]

    def pair(ax: Any, key: str, scale: float = 1.0) -> None:
        for split, style in (("train", {"marker": "o", "ms": 3}), ("val", {"marker": "s", "ms": 5})):
            y = h.get(f"{split}_{key}")
            if y is None or np.isnan(y).all():
                continue
            ok = ~np.isnan(y)  # validation may run only on some epochs: draw the points it has
            ax.plot(epoch[ok], y[ok] * scale, label="validation" if split == "val" else "train", **style)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()

    pair(ax_loss, "loss")
    ax_loss.set_title("Loss")
    ax_loss.set_ylabel("cross-entropy")
    accs = np.concatenate([h.get("train_accuracy", np.array([])), h.get("val_accuracy", np.array([]))])
    accs = accs[np.isfinite(accs)]
    as_fraction = accs.size == 0 or accs.max() <= 1.0  # history may hold fractions or percentages
    pair(ax_acc, "accuracy", 100.0 if as_fraction else 1.0)
    ax_acc.set_title("Accuracy")
    ax_acc.set_ylabel("accuracy (%)")
    if "lr" in h and not np.isnan(h["lr"]).all():
        ax_lr.plot(epoch, h["lr"], marker="o", ms=3, color="tab:green")
        if np.nanmin(h["lr"]) > 0:
            ax_lr.set_yscale("log")
    ax_lr.set_title("Learning rate (end of epoch)")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("lr")
    ax_lr.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"Training curves ({len(epoch)} epochs)")
    return _save(fig, out)


def plot_confusion(confusion: Sequence[Sequence[int]] | np.ndarray, out: Path) -> Path:
    """Confusion matrix with the count in every cell; colour is the share of the true class's images."""
    cm = np.asarray(confusion, dtype=np.int64)
    k = len(cm)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = _new_figure(7, 6.2)
    ax = fig.subplots()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if cm[i, j] == 0:
                continue
            # Mistakes in red so they stand out against the near-empty off-diagonal.
            color = "white" if rates[i, j] > 0.5 else ("firebrick" if i != j else "black")
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    n, errors = int(cm.sum()), int(cm.sum() - np.trace(cm))
    ax.set_title(f"Confusion matrix ({n:,} images, {errors:,} errors)")
    fig.colorbar(im, ax=ax, shrink=0.85, label="share of the true digit's images")
    return _save(fig, out)


def plot_errors(
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    confidences: np.ndarray,
    out: Path,
    max_items: int = 64,
) -> Path:
    """A grid of misclassified images, most confident mistakes first, titled "true→pred (conf%)".

    Pass all evaluated images (only the ones with label != pred are drawn) or only the misclassified ones.
    """
    labels, preds, confidences = np.asarray(labels), np.asarray(preds), np.asarray(confidences)
    wrong = np.flatnonzero(labels != preds)
    wrong = wrong[np.argsort(-confidences[wrong], kind="stable")][:max_items]
    cols = 8
    rows = max(1, math.ceil(len(wrong) / cols))
    fig = _new_figure(cols * 1.25, rows * 1.5 + 0.4)
    ax = fig.subplots()
    ax.axis("off")
    if len(wrong) == 0:
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=14)
        return _save(fig, out)
    # One mosaic image with text labels instead of 64 axes: the same picture, about ten times faster to draw.
    side, pad_x, pad_top = images.shape[1], 8, 12  # pixels; pad_top leaves room for each label
    cell_w, cell_h = side + pad_x, side + pad_top
    mosaic = np.zeros((rows * cell_h, cols * cell_w), dtype=np.uint8)
    for n, i in enumerate(wrong):
        r, c = divmod(n, cols)
        y, x = r * cell_h + pad_top, c * cell_w + pad_x // 2
        mosaic[y : y + side, x : x + side] = images[i]
        ax.text(x + side / 2, y - 2, f"{labels[i]}→{preds[i]} ({100 * confidences[i]:.0f}%)", ha="center",
                va="bottom", fontsize=8)  # fmt: skip
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")  # dark ink on white, like paper
    n_wrong = int((labels != preds).sum())
    ax.set_title(f"Misclassified: {len(wrong)} of {n_wrong:,} shown, most confident first (true→predicted)",
                 fontsize=10)  # fmt: skip
    return _save(fig, out)


def plot_reliability(reliability_bins: Sequence[dict[str, Any]], out: Path, ece: float | None = None) -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration, with the bin counts below."""
    bins = list(reliability_bins)
    lo = np.array([b["lo"] for b in bins], dtype=float)
    hi = np.array([b["hi"] for b in bins], dtype=float)
    count = np.array([b["count"] for b in bins], dtype=float)
    acc = np.array([np.nan if b["accuracy"] is None else b["accuracy"] for b in bins], dtype=float)
    conf = np.array([np.nan if b["confidence"] is None else b["confidence"] for b in bins], dtype=float)
    if ece is None:
        ok = count > 0
        ece = float((count[ok] * np.abs(acc[ok] - conf[ok])).sum() / max(count.sum(), 1))
    width = hi - lo
    fig = _new_figure(6, 6.5)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ok = count > 0
    ax.bar(lo[ok], acc[ok], width=width[ok], align="edge", color="tab:blue", edgecolor="white", label="accuracy")
    gap_bottom = np.minimum(acc, conf)[ok]
    # The gap is hatched, not filled, so it stays readable where it lies over the accuracy bar (acc > conf).
    ax.bar(lo[ok], np.abs(acc - conf)[ok], bottom=gap_bottom, width=width[ok], align="edge",
           facecolor=(0.8, 0.1, 0.1, 0.15), edgecolor="firebrick", hatch="///", linewidth=0.8,
           label="gap to mean confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram — ECE {100 * ece:.2f}% ({len(bins)} bins)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    ax_n.bar(lo, np.maximum(count, 0), width=width, align="edge", color="gray", edgecolor="white")
    if count.max() > 0:
        ax_n.set_yscale("log")
    ax_n.set_xlabel("confidence (max probability)")
    ax_n.set_ylabel("images")
    ax_n.grid(alpha=0.3)
    return _save(fig, out)


def plot_robustness(examples: dict[str, np.ndarray], rows: dict[str, dict[str, float]], out: Path,
                    title: str = "Corruption robustness") -> Path:  # fmt: skip
    """One digit under each corruption (top) and accuracy per corruption, raw 28x28 beside preprocessed (bottom).

    `examples` maps "clean" and each corruption to a uint8 28x28 image; `rows` maps the same names, in the
    order drawn, to their "accuracy" and "accuracy_preprocessed" (fractions; see `digitlab.evaluation.robustness`).
    """
    names = list(rows)
    fig = _new_figure(max(8.0, 0.85 * len(names)), 6.2)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 2.6])
    axes = np.atleast_1d(top.subplots(1, len(names)))
    for ax, name in zip(axes, names, strict=True):
        image = examples.get(name)
        if image is not None:
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name.replace("_", "\n"), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])  # the frame stays: it shows where a white-edged image (stripe) ends
    ax = bottom.subplots()
    x = np.arange(len(names))
    raw = [100 * rows[n]["accuracy"] for n in names]
    prep = [100 * rows[n]["accuracy_preprocessed"] for n in names]
    ax.bar(x - 0.2, raw, width=0.4, label="raw 28x28 (as MNIST-C)", color="tab:blue")
    ax.bar(x + 0.2, prep, width=0.4, label="digitlab.data.preprocess + predictor (refusals count as wrong)",
           color="tab:orange")  # fmt: skip
    ax.set_xticks(x, [n.replace("_", " ") for n in names], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=2, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    return _save(fig, out)
