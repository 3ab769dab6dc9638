"""The digits the "not a digit" rule must keep: validation-digit versions of every real-world source, framed.

A rule fitted on MNIST's validation digits alone refuses 1 in 100 of them by construction, and more of the
digits users actually send (canvas strokes, photos, fonts, low-resolution scans, thick pens), whose scores sit
lower. `calibrate.fit_ood` therefore sets the threshold so that it keeps SOURCE_TPR of *each* source: MNIST
validation and the `*-tune` sets in data/realworld/ (made by scripts/make_realworld.py from the validation digits
of the bundled run's split, and from fonts the reported sets do not use), and the run's validation digits under the
robustness suite's corruptions (validation seed; each corruption its own source when it has MIN_SOURCE digits),
framed by `preprocess` as served. Only digits in the run's own validation split are used (matched by their
pixels), so a run never fits its rule on images it trained on.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import numpy as np

from digitlab.core.errors import DataError
from digitlab.data.datasets import Split

__all__ = [
    "CORRUPTED",
    "MIN_SOURCE",
    "SOURCE_TPR",
    "TUNE_SETS",
    "corrupted_source",
    "corrupted_sources",
    "digit_sources",
]

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
    parts = list(corrupted_sources(val, limit).values())
    return np.concatenate(parts) if parts else np.zeros((0, 28, 28), np.uint8)


def corrupted_sources(val: Split, limit: int | None = None) -> dict[str, np.ndarray]:
    """`corrupted_source` by corruption: {corruption name: its framed model inputs}, in the suite's order."""
    from digitlab.data.corruptions import CORRUPTIONS, VALIDATION_SEED, corrupt
    from digitlab.data.preprocess import preprocess_array

    images = val.images[:limit]
    out = {}
    for k, name in enumerate(CORRUPTIONS):
        framed = [p.image for p in map(preprocess_array, corrupt(images[k :: len(CORRUPTIONS)], name, VALIDATION_SEED))
                  if p.status == "ok"]  # fmt: skip
        out[name] = np.stack(framed) if framed else np.zeros((0, 28, 28), np.uint8)
    return out


def _corrupted(val: Split, limit: int | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The corrupted digit sources: one per corruption when each has MIN_SOURCE digits (the rule then keeps
    SOURCE_TPR of the hardest, zigzags), else all of them pooled as one, or none."""
    per = corrupted_sources(val, limit)
    if min(len(v) for v in per.values()) >= MIN_SOURCE:
        named = {f"{CORRUPTED}:{name}": images for name, images in per.items()}
        return named, {k: len(v) for k, v in named.items()}
    pooled = np.concatenate(list(per.values()))
    if len(pooled) < MIN_SOURCE:
        return {}, {CORRUPTED: f"left out: only {len(pooled)} validation digits framed"}
    return {CORRUPTED: pooled}, {CORRUPTED: len(pooled)}


def digit_sources(val: Split, data: str, limit: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Model inputs (uint8 (N, 28, 28)) of each digit source: the run's corrupted validation digits
    (`_corrupted`: by corruption, or pooled when there are few) and each tune set, keeping only digits of `val`
    (images from the MNIST training split that are in the run's validation split; font glyphs always), at most
    `limit` per source.

    Returns ({name: inputs}, report); sets missing, or with fewer than MIN_SOURCE digits, are left out and
    said so in the report. Runs on other data than MNIST get no tune sets (they are MNIST digits)."""
    sources, report = _corrupted(val, limit)
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
