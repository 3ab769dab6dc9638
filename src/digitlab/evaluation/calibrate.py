"""Honest confidence, fitted: the temperature and the out-of-distribution ('not a digit') rule of a run.

    digitlab calibrate runs/fast        # the CLI edge; the run pipeline calls `calibrate_split` on every new run

Both are fitted on the run's *validation* split, never on the test set:

- Temperature scaling (`digitlab.model.scoring.fit_temperature`): one scalar T divides the logits; T minimises
  the validation NLL.
- "Not a digit" (`digitlab.model.scoring.OodRule`): each run keeps whichever logit score (energy or max logit)
  rejects more of the out-of-distribution fitting sets (`digitlab.evaluation.ood_sets`), with an ink gate. The
  threshold keeps SOURCE_TPR of the validation digits *and* of each other digit source users send (canvas,
  photo, fonts, low-resolution scans, thin and thick pens, small digits on big pages: the validation-digit sets
  of `digitlab.evaluation.refusal`), scored with the run's test-time augmentation and without it (as served);
  the ink gate sits above the digits of every source. The out-of-distribution sets only choose between the two
  scores and document how much each rule rejects; the test-set AUROCs in metrics.json["ood"] are a report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.core.calibration import OOD_SCORES, write_calibration
from digitlab.core.config import TrainConfig
from digitlab.core.errors import RunDirError
from digitlab.core.rundir import RunDir
from digitlab.data.datasets import Split, load_dataset, load_eval_split, split_data
from digitlab.evaluation.evaluate import evaluate_run
from digitlab.evaluation.metrics import expected_calibration_error, reliability_bins
from digitlab.evaluation.ood_sets import FULL_SIZES, QUICK_SIZES, ood_images
from digitlab.evaluation.refusal import SOURCE_TPR, digit_sources
from digitlab.model.forward import load_model, pick_device, predict_logits, predict_logits_pair
from digitlab.model.scoring import OodRule, fit_temperature, ink_fraction, logit_score, nll, softmax

TARGET_TPR = 0.99  # share of validation digits the OOD rule must keep
INK_QUANTILE = 0.999  # the ink gate sits at this quantile of the validation digits' bright-pixel share

TEST_SIZE = 2000  # MNIST test and Fashion-MNIST test images for the AUROC report


# --------------------------------------------------------------------------------------------- temperature


def ece(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Expected calibration error (the same 15 equal-width bins as the report) at `temperature`."""
    probs = softmax(logits, temperature)
    return expected_calibration_error(reliability_bins(probs.max(1), probs.argmax(1) == np.asarray(labels)))


# --------------------------------------------------------------------------------------------- OOD rule


def _keeping(scores: np.ndarray, tpr: float) -> float:
    """The highest threshold that `scores` (higher: more digit-like) meet for at least `tpr` of them."""
    s = np.sort(scores)[::-1]
    keep = min(len(s), math.ceil(tpr * len(s) - 1e-9))
    return float(s[keep - 1]) if keep > 0 else float(s[0]) + 1.0


def _auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


def fit_ood(
    val_logits: np.ndarray,
    val_images: np.ndarray,
    ood: dict[str, tuple[np.ndarray, np.ndarray]],
    temperature: float = 1.0,
    target_tpr: float = TARGET_TPR,
    sources: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[OodRule, dict[str, Any]]:
    """Fit the "not a digit" rule on validation digits; `ood` maps a set's name to its (logits, images), and
    `sources` other digit sources (validation digits drawn as users send them) the same way.

    The ink gate is the highest INK_QUANTILE of the digits' bright-pixel share over the validation digits and
    each source; the logit threshold then keeps at least `target_tpr` of each (exactly that share of the
    hardest one). Of the OOD_SCORES, the one rejecting the larger mean share of the OOD sets wins (with no OOD
    sets: energy). Returns the rule and a report for calibration.json.
    """
    n = len(val_logits)
    if n == 0:
        raise ValueError("no validation digits to fit the OOD threshold on")
    digits = {"validation": (val_logits, val_images), **(sources or {})}
    ink_max = max(float(np.quantile(ink_fraction(im), INK_QUANTILE)) for _, im in digits.values() if len(im))
    candidates: dict[str, dict[str, Any]] = {}
    for kind in OOD_SCORES:
        # The threshold is set on the digits that pass the ink gate: those over it are refused whatever the
        # threshold, and counting them (as a huge penalty) would drag it to where nothing is refused.
        threshold = min(_keeping(logit_score(lg, kind, temperature)[ink_fraction(im) <= ink_max], target_tpr)
                        for lg, im in digits.values() if len(lg))  # fmt: skip
        rule = OodRule(kind, threshold, temperature, ink_max)
        in_scores = rule.digit_score(val_logits, val_images)
        rejected = {k: float(np.mean(~rule.accepts(lg, im))) for k, (lg, im) in ood.items()}
        auroc = {k: _auroc(in_scores, rule.digit_score(lg, im)) for k, (lg, im) in ood.items()}
        candidates[kind] = {
            "rule": rule,
            "tpr_in": float(np.mean(rule.accepts(val_logits, val_images))),
            "rejected": rejected,
            "auroc": auroc,
            "mean_rejected": float(np.mean(list(rejected.values()))) if rejected else 0.0,
            "kept": {k: float(np.mean(rule.accepts(lg, im))) for k, (lg, im) in digits.items() if len(lg)},
        }
    best = max(OOD_SCORES, key=lambda k: (candidates[k]["mean_rejected"], k == "energy"))
    chosen = candidates[best]
    report = {
        **chosen["rule"].to_dict(),
        "tpr_in": chosen["tpr_in"],
        "target_tpr": target_tpr,
        "n_in": n,
        "rejected": chosen["rejected"],
        "kept": chosen["kept"],
        "n_sources": {k: len(lg) for k, (lg, _) in digits.items()},
        "auroc_fit": chosen["auroc"],
        "candidates": {
            k: {"threshold": c["rule"].threshold, "mean_rejected": c["mean_rejected"], "rejected": c["rejected"]}
            for k, c in candidates.items()
        },
    }
    return chosen["rule"], report


# --------------------------------------------------------------------------------------------- OOD sets


# --------------------------------------------------------------------------------------------- a run


def _logits_fn(model: nn.Module, config: TrainConfig, device: str | torch.device) -> Callable[[np.ndarray], np.ndarray]:
    return lambda images: predict_logits(model, images, tta=config.tta, device=device)


def calibrate_split(
    run: Path | RunDir,
    model: nn.Module,
    val: Split,
    val_logits: np.ndarray,
    config: TrainConfig,
    device: str | torch.device = "cpu",
    sizes: dict[str, int | None] | None = None,
    extra_sources: dict[str, np.ndarray] | None = None,
    val_plain_logits: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit temperature and OOD rule on a validation split (its logits already computed, with the run's TTA)
    and write RUN/calibration.json; returns what was written. Used by the run pipeline and by `calibrate_run`.
    `extra_sources`: more digit sources the rule must keep (name -> uint8 (N, 28, 28)), e.g. users' feedback.
    `val_plain_logits`: the validation logits without TTA, when the caller has them (else measured here)."""
    rd = run if isinstance(run, RunDir) else RunDir(Path(run))
    t0 = time.perf_counter()
    val_logits = np.asarray(val_logits, dtype=np.float64)
    labels = np.asarray(val.labels)
    temperature = fit_temperature(val_logits, labels)
    sizes = {**QUICK_SIZES, **(sizes or {})}
    sets, described = ood_images("fit", tuple(sizes.items()))
    logits_of = _logits_fn(model, config, device)
    ood = {name: (logits_of(images), images) for name, images in sets.items()}
    found, used = digit_sources(val, config.data, sizes.get("digits"))
    found, used = {**found, **(extra_sources or {})}, {**used, **{k: len(v) for k, v in (extra_sources or {}).items()}}
    if not config.tta:
        sources = {name: (logits_of(images), images) for name, images in found.items()}
    else:  # the app, API and CLI serve without TTA: the rule must keep the digits either way
        if val_plain_logits is None:
            val_plain_logits = predict_logits(model, val.images, device=device)
        pairs = {name: predict_logits_pair(model, images, device=device) for name, images in found.items()}
        sources = {name: (pairs[name][0], images) for name, images in found.items()}
        sources["validation (no TTA)"] = (np.asarray(val_plain_logits), val.images)
        sources |= {f"{name} (no TTA)": (pairs[name][1], images) for name, images in found.items()}
    _, ood_report = fit_ood(val_logits, val.images, ood, temperature, SOURCE_TPR, sources)
    kinds = ", ".join(f"{k} {v:,}" for k, v in used.items() if isinstance(v, int)) or "none"
    twice = ", each with and without TTA" if config.tta else ""
    ood_report["fitted_on"] = (f"{len(labels):,} validation digits of {config.data} and validation-digit "
                               f"sources ({kinds}){twice} vs {described}")  # fmt: skip
    ood_report["sources"] = used
    cal = {
        "temperature": temperature,
        "nll_before": nll(val_logits, labels),
        "nll_after": nll(val_logits, labels, temperature),
        "ece_before": ece(val_logits, labels),
        "ece_after": ece(val_logits, labels, temperature),
        "accuracy": float(np.mean(val_logits.argmax(1) == labels)),
        "n": len(labels),
        "tta": bool(config.tta),
        "fitted_on": f"validation split of {config.data} ({len(labels):,} images; val_fraction "
        f"{config.val_fraction:g}, seed {config.seed})",
        "ood": ood_report,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_calibration(rd, cal)
    return cal


def ood_test_report(
    model: nn.Module, config: TrainConfig, rule: OodRule, device: str | torch.device = "cpu", n: int = TEST_SIZE
) -> dict[str, Any]:
    """AUROC of the rule's combined score, MNIST test digits vs each test-side OOD set, and how much it rejects.

    A report only: nothing here chooses anything.
    """
    mnist = load_eval_split(config.data)
    k = min(n, len(mnist), config.test_limit or len(mnist))
    digits = mnist.images[:k]
    sets, described = ood_images("test", (("fashion_mnist", n), ("noise", n // 4), ("letters", n // 4)))
    logits_of = _logits_fn(model, config, device)
    in_scores = rule.digit_score(logits_of(digits), digits)
    auroc, rejected = {}, {"mnist_test": float(np.mean(in_scores < rule.threshold))}
    for name, images in sets.items():
        s = rule.digit_score(logits_of(images), images)
        auroc[name] = _auroc(in_scores, s)
        rejected[name] = float(np.mean(s < rule.threshold))
    return {"auroc": auroc, "rejected": rejected, "score": rule.score, "threshold": rule.threshold,
            "n_in": k, "data": f"{k:,} {config.data} test digits vs {described}"}  # fmt: skip


def calibrate_run(
    run: Path | RunDir,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
    sizes: dict[str, int | None] | None = None,
    test_report: bool = True,
    test_size: int = TEST_SIZE,
) -> dict[str, Any]:
    """Calibrate a finished run on its own validation split (re-made exactly as in training) and re-evaluate.

    Writes RUN/calibration.json, re-runs `evaluate_run` (metrics.json "test", report.md and plots now with the
    temperature) and, with `test_report`, adds metrics.json["ood"] (AUROCs on test data). Returns
    {"calibration", "test_before", "test_after", "ood"}.
    """
    say = progress or (lambda msg: None)
    rd = (run if isinstance(run, RunDir) else RunDir(Path(run))).require()
    config = rd.read_config()
    dev = pick_device(device or config.device)
    model = load_model(rd, device=dev)
    say(f"re-making the validation split of {config.data}")
    _, val = split_data(load_dataset(config.data), config)
    if len(val) == 0:
        raise RunDirError(f"{rd.root}: the run has no validation split (val_fraction 0): nothing to calibrate on")
    say(f"predicting {len(val):,} validation images")
    val_logits = predict_logits(model, val.images, tta=config.tta, device=dev)
    say("fitting the temperature and the out-of-distribution threshold")
    cal = calibrate_split(rd, model, val, val_logits, config, dev, sizes or FULL_SIZES)
    old = rd.read_metrics().get("test") if rd.metrics.exists() else None
    test_before = {k: old[k] for k in ("nll", "ece", "accuracy", "temperature") if k in old} if old else None
    say("re-evaluating on the test set with the new temperature")
    metrics = evaluate_run(rd, device=device)
    test_after = {k: metrics["test"][k] for k in ("nll", "ece", "accuracy", "temperature")}
    ood = None
    if test_report:
        say("out-of-distribution report on test data")
        ood = ood_test_report(model, config, OodRule.from_dict(cal["ood"]), dev, test_size)
        metrics = {**rd.read_metrics(), "ood": ood}
        rd.write_json(rd.metrics, metrics)
    return {"calibration": cal, "test_before": test_before, "test_after": test_after, "ood": ood}
