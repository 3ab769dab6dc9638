"""Corruption robustness: a run scored on the MNIST-C-style suite, raw and through digitlab's own pipeline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.core.errors import ConfigError, DataError, DigitlabError
from digitlab.core.formatting import pct
from digitlab.core.rundir import RunDir
from digitlab.data.corruptions import CORRUPTIONS, corrupt
from digitlab.data.datasets import Split, load_dataset, load_eval_split, split_data
from digitlab.data.preprocess import preprocess
from digitlab.evaluation import plots
from digitlab.evaluation.report import write_report
from digitlab.evaluation.sections import PLOT_NAMES, suite_rows
from digitlab.inference.predict import Predictor

__all__ = ["SPLITS", "SUITE_SEEDS", "evaluate_robustness", "score_images", "suite_split"]

SPLITS = ("test", "val")
# The test suite is drawn with seed 0, the validation-derived one with seed 1: recipes chosen on the
# validation suite never saw the test suite's draws (nor its digits).
SUITE_SEEDS = {"test": 0, "val": 1}
METRICS_KEYS = {"test": "robustness", "val": "robustness_val"}
CHUNK = 500  # images per progress step
EXAMPLE_INDEX = 0  # the digit shown under every corruption in the plot

Progress = Callable[[str, int, int], None]  # (stage, images done, images in all)


def suite_split(run: Path | RunDir, split: str = "test", limit: int | None = None) -> Split:
    """The clean images the suite corrupts: the run's official test split (the first `limit`, else the run's
    `test_limit` when set) or its own validation split (`data.datasets.split_data` with the run's config)."""
    rd = (run if isinstance(run, RunDir) else RunDir(Path(run))).require()
    config = rd.read_config()
    if split == "test":
        images = load_eval_split(config.data)
        limit = limit or config.test_limit
    elif split == "val":
        _, images = split_data(load_dataset(config.data), config)
    else:
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit must be a positive number of images, not {limit}")
        images = images.subset(slice(0, limit))
    if images.labels is None or len(images) == 0:
        raise DataError(f"the {split} split of {config.data} has no labelled images")
    return images


def score_images(predictor: Any, images: np.ndarray, labels: np.ndarray,
                 progress: Callable[[int], None] | None = None) -> dict[str, float]:  # fmt: skip
    """Accuracy and refusals of `predictor` (a `digitlab.inference.predict.Predictor`) on uint8 (N, 28, 28) images.

    Raw: the images straight into the model, as MNIST-C scores them; `accuracy` is the share whose arg-max
    is right whatever the "not a digit" rule says, `refused` the share that rule would refuse. Preprocessed:
    each image through `digitlab.data.preprocess` and the calibrated predictor, statuses exactly as
    `Predictor.predict` answers them; `accuracy_preprocessed` is the share answered "ok" with the right digit
    (refusals count against it), `refused_preprocessed` the share answered "empty" or "not_a_digit", of which
    `empty_preprocessed` the "empty" ones. `progress` receives the number of images done after each chunk.
    """
    parts = [_score_chunk(predictor, images[s : s + CHUNK], labels[s : s + CHUNK], progress)
             for s in range(0, len(images), CHUNK)]  # fmt: skip
    right, refused, right_pp, refused_pp, empty = (np.concatenate(col) for col in zip(*parts, strict=True))
    return {
        "accuracy": float(right.mean()),
        "refused": float(refused.mean()),
        "accuracy_preprocessed": float(right_pp.mean()),
        "refused_preprocessed": float(refused_pp.mean()),
        "empty_preprocessed": float(empty.mean()),
    }


def _score_chunk(predictor: Any, images: np.ndarray, labels: np.ndarray,
                 progress: Callable[[int], None] | None) -> tuple[np.ndarray, ...]:  # fmt: skip
    """Boolean columns (right, refused, right_pp, refused_pp, empty_pp) for one chunk of images."""
    logits = predictor.logits_array(images)
    rule = predictor.ood
    accepted = np.ones(len(images), bool) if rule is None else rule.accepts(logits, images)
    prepared = np.zeros_like(images)
    ok = np.zeros(len(images), bool)
    for i, image in enumerate(images):
        try:
            prep = preprocess(image, thin=predictor.thin)
        except DigitlabError:  # answered "error", a refusal too (a uint8 28x28 array never is one)
            continue
        if prep.status == "ok":
            prepared[i], ok[i] = prep.image, True
    # MNIST-format digits pass `preprocess` unchanged: their logits are the raw ones, no second forward pass
    changed = ok & (prepared != images).any(axis=(1, 2))
    logits_pp = logits.copy()
    if changed.any():
        logits_pp[changed] = predictor.logits_array(prepared[changed])
    accepted_pp = ok.copy()
    if rule is not None and ok.any():
        accepted_pp[ok] = rule.accepts(logits_pp[ok], prepared[ok])
    if progress:
        progress(len(images))
    right, right_pp = logits.argmax(1) == labels, logits_pp.argmax(1) == labels
    return right, ~accepted, accepted_pp & right_pp, ~accepted_pp, ~ok


def evaluate_robustness(
    run: Path | RunDir,
    split: str = "test",
    limit: int | None = None,
    seed: int | None = None,
    corruptions: Iterable[str] | None = None,
    tta: bool | None = False,
    progress: Progress | None = None,
    write: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Score a run on the clean images and on each corruption of `digitlab.data.corruptions` applied to them.

    `split`: "test" (the official test set: the reported figure) or "val" (the run's validation split, for
    choosing recipes). `limit`: the first N images only (else the run's `test_limit` for the test set).
    `seed`: the suite's seed (default SUITE_SEEDS[split]). `tta`: off by default, as MNIST-C scores one
    forward pass and the API serves without it (None: as the run's config). With `write`, the result goes
    into RUN/metrics.json under "robustness" ("robustness_val" for the validation suite), a table into
    RUN/report.md and a figure into RUN/plots/. Returns that result: "mean_accuracy" (the mean over the
    corruptions of the raw `accuracy`), "clean_accuracy", "corruptions" ({name: `score_images` figures}),
    "clean" (the same figures for the uncorrupted images) and what was run (split, seed, n, limit, tta).
    `progress(stage, images done, images in all)` is called as it goes; `device` runs the model (the
    corruptions and `preprocess` run on the CPU).
    """
    rd = (run if isinstance(run, RunDir) else RunDir(Path(run))).require()
    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ConfigError(f"unknown corruption(s) {', '.join(unknown)}; choose from: {', '.join(CORRUPTIONS)}")
    seed = SUITE_SEEDS.get(split, 0) if seed is None else int(seed)
    data = suite_split(rd, split, limit)
    predictor = Predictor.from_run(rd.root, tta=tta, device=device)
    n, total = len(data), len(data) * (len(names) + 1)
    done = 0

    def step(stage: str) -> Callable[[int], None]:
        def tick(k: int) -> None:
            nonlocal done
            done += k
            if progress:
                progress(stage, done, total)

        return tick

    t0 = time.perf_counter()
    clean = score_images(predictor, data.images, data.labels, step("clean"))
    scores, examples = {}, {"clean": data.images[EXAMPLE_INDEX]}
    for name in names:
        images = corrupt(data.images, name, seed)
        examples[name] = images[EXAMPLE_INDEX]
        scores[name] = score_images(predictor, images, data.labels, step(name))
    result = _summary(clean, scores, split=split, seed=seed, n=n, limit=limit, tta=predictor.tta,
                      seconds=time.perf_counter() - t0)  # fmt: skip
    if write:
        _write(rd, result, examples, split)
    return result


def _summary(clean: dict[str, float], scores: dict[str, dict[str, float]], **info: Any) -> dict[str, Any]:
    raw = [s["accuracy"] for s in scores.values()]
    pp = [s["accuracy_preprocessed"] for s in scores.values()]
    worst = min(scores, key=lambda k: scores[k]["accuracy"]) if scores else None
    return {
        "mean_accuracy": float(np.mean(raw)) if raw else None,
        "mean_accuracy_preprocessed": float(np.mean(pp)) if pp else None,
        "min_accuracy": scores[worst]["accuracy"] if worst else None,
        "worst": worst,
        "clean_accuracy": clean["accuracy"],
        "clean": clean,
        "corruptions": scores,
        "split": info["split"], "seed": info["seed"], "n": info["n"], "limit": info["limit"], "tta": info["tta"],
        "seconds": round(info["seconds"], 1),
    }  # fmt: skip


def _write(rd: RunDir, result: dict[str, Any], examples: dict[str, np.ndarray], split: str) -> None:
    where = "test set" if split == "test" else "validation split"
    title = (
        f"Corruption robustness on the {where} ({result['n']:,} images): mean over the corruptions "
        f"{pct(result['mean_accuracy'])} raw, {pct(result['mean_accuracy_preprocessed'])} preprocessed"
    )
    plots.plot_robustness(examples, suite_rows(result), rd.plots / PLOT_NAMES[split], title)
    metrics = {**rd.read_metrics(required=False), METRICS_KEYS[split]: result}
    rd.write_json(rd.metrics, metrics)
    write_report(rd, metrics)
