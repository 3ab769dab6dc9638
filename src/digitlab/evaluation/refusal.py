"""The digits the "not a digit" rule must keep: validation-digit versions of every real-world source, framed.

A rule fitted on MNIST's validation digits alone refuses 1 in 100 of them by construction, and more of the
digits users actually send (canvas strokes, photos, fonts, low-resolution scans, thick pens), whose scores sit
lower. `calibrate.fit_ood` therefore sets the threshold so that it keeps SOURCE_TPR of *each* source: MNIST
validation and the `*-tune` sets in data/realworld/ (made by scripts/make_realworld.py from the validation digits
of the bundled run's split, and from fonts the reported sets do not use), and the run's validation digits under the
robustness suite's corruptions (validation seed), framed by `preprocess` as served. Only digits in the run's own
validation split are used (matched by their pixels), so a run never fits its rule on images it trained on.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import numpy as np

from digitlab.core.errors import DataError
from digitlab.data.datasets import Split

__all__ = ["CORRUPTED", "MIN_SOURCE", "SOURCE_TPR", "TUNE_SETS", "corrupted_source", "digit_sources"]

TUNE_SETS = ("canvas-tune", "photo-tune", "fonts-tune", "lowres-tune", "pen-tune", "page-tune")
SOURCE_TPR = 0.997  # share of every digit source the rule keeps while fitting: >= 99.5% on held-out digits
CORRUPTED = "corrupted"  # the source of validation digits under the suite's corruptions
MIN_SOURCE = 50  # a source with fewer usable digits than this (a small run's split) is left out of the fit


def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(image, dtype=np.uint8).tobytes(), digest_size=16).digest()


@functools.lru_cache(maxsize=8)
def _load(name: str) -> Any:
    from digitlab.data.realworld import load_realworld

    return load_realworld(name)


def _framed(name: str, index: np.ndarray) -> np.ndarray:
    """Model inputs of the images `index` of tune set `name` that `preprocess` frames as a digit (cached on disk)."""
    from digitlab.data.framed import framed_inputs

    images, ok = framed_inputs(name, index)
    return images[ok]


def _train_images(data: str) -> np.ndarray:
    from digitlab.data.datasets import load_dataset

    return load_dataset(data).train.images


def corrupted_source(val: Split, limit: int | None = None) -> np.ndarray:
    """Model inputs of the first `limit` digits of `val`, digit i under the suite's corruption i mod 15 (seeded
    with VALIDATION_SEED), as `preprocess_array` frames them (those it finds empty are left out): what the API
    is sent when a scan is noisy, blurred, smudged or crossed by lines."""
    from digitlab.data.corruptions import CORRUPTIONS, VALIDATION_SEED, corrupt
    from digitlab.data.preprocess import preprocess_array

    images = val.images[:limit]
    out = []
    for k, name in enumerate(CORRUPTIONS):
        for im in corrupt(images[k :: len(CORRUPTIONS)], name, VALIDATION_SEED):
            prep = preprocess_array(im)
            if prep.status == "ok":
                out.append(prep.image)
    return np.stack(out) if out else np.zeros((0, 28, 28), np.uint8)


def digit_sources(val: Split, data: str, limit: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Model inputs (uint8 (N, 28, 28)) of each digit source: the run's corrupted validation digits
    (`corrupted_source`) and each tune set, keeping only digits of `val` (images from the MNIST training split
    that are in the run's validation split; font glyphs always), at most `limit` per source.

    Returns ({name: inputs}, report); sets missing, or with fewer than MIN_SOURCE digits, are left out and
    said so in the report. Runs on other data than MNIST get no tune sets (they are MNIST digits)."""
    corrupted = corrupted_source(val, limit)
    if len(corrupted) < MIN_SOURCE:
        sources, report = {}, {CORRUPTED: f"left out: only {len(corrupted)} validation digits framed"}
    else:
        sources, report = {CORRUPTED: corrupted}, {CORRUPTED: len(corrupted)}
    if data != "mnist":
        return sources, {**report, "skipped": f"tune sets are MNIST digits; the run's data is {data}"}
    wanted = {_digest(im) for im in val.images}
    train: np.ndarray | None = None
    for name in TUNE_SETS:
        try:
            origins = _load(name).origins
        except DataError as e:
            report[name] = f"left out: {e}"
            continue
        keep = np.ones(len(origins), bool)
        for k, origin in enumerate(origins):
            if origin.startswith("mnist-train:"):
                train = _train_images(data) if train is None else train
                keep[k] = _digest(train[int(origin.split(":")[1])]) in wanted
        picked = _framed(name, np.flatnonzero(keep)[:limit])
        if len(picked) < MIN_SOURCE:
            report[name] = f"left out: {len(picked)} of its digits are in this run's validation split"
            continue
        sources[name] = picked
        report[name] = len(picked)
    return sources, report
