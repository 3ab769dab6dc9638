"""Scores on logits: calibrated softmax, NLL and the temperature that minimises it, and the "not a digit" rule.

The rule combines a logit score (energy `T * logsumexp(logits / T)`, Liu et al., 2020, or the max logit) with
an ink statistic of the 28x28 input the model sees (the share of bright pixels: uniform noise fills half the
image, and networks are often *more* confident on noise than on digits, so no logit score can catch it). How
the rule and the temperature are fitted is `digitlab.evaluation.calibrate`; the file they live in is
`digitlab.core.calibration`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import logsumexp

from digitlab.core.calibration import OOD_SCORES, Calibration

__all__ = ["OOD_SCORES", "OodRule", "fit_temperature", "ink_fraction", "logit_score", "nll", "rule_of", "softmax"]

INK_LEVEL = 128  # a pixel of the 28x28 input is "bright" at or above this
INK_PENALTY = 1e6  # subtracted from the score of an image failing the ink gate (a finite -inf, for AUROCs)
TEMPERATURE_BOUNDS = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities (N, K) in float64 from logits (N, K), with the logits divided by `temperature`."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, not {temperature}")
    # scipy.special.softmax's own three steps, without its array-API dispatch (it runs on every served image)
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    labels = np.asarray(labels, dtype=np.int64)
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(z)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature T minimising the NLL of softmax(logits / T): a bounded 1-D search over log T.

    Temperature scaling (Guo et al., 2017): the argmax (and accuracy) never changes but the confidences mean what
    they say. Fit it on the validation split: fitted on the test set, the test NLL and ECE would flatter the model.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) == 0 or len(logits) != len(labels):
        raise ValueError(f"expected logits (N, K) and labels (N,) with N > 0, got {logits.shape}, {labels.shape}")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(lambda lt: nll(logits, labels, math.exp(lt)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})  # fmt: skip
    return float(math.exp(res.x))


def logit_score(logits: np.ndarray, kind: str = "energy", temperature: float = 1.0) -> np.ndarray:
    """How digit-like each row of logits looks (higher: more): negative energy or the max logit."""
    z = np.asarray(logits, dtype=np.float64)
    if kind == "energy":
        return temperature * _logsumexp_rows(z / temperature)
    if kind == "max_logit":
        return z.max(axis=1)
    raise ValueError(f"unknown OOD score {kind!r}; choose one of: {', '.join(OOD_SCORES)}")


def _logsumexp_rows(z: np.ndarray) -> np.ndarray:
    """`scipy.special.logsumexp(z, axis=1)` for finite real (N, K) `z`, the same operations in the same order
    (so the same bits), without its ~0.1 ms of array-API dispatch per call: it runs on every served image."""
    top = z.max(axis=1, keepdims=True)
    is_top = z == top
    count = is_top.sum(axis=1, keepdims=True, dtype=z.dtype)
    rest = np.exp(np.where(is_top, -np.inf, z) - top).sum(axis=1, keepdims=True)  # the maxima kept apart
    rest = np.where(rest == 0, rest, rest / count)
    return (np.log1p(rest) + np.log(count) + top)[:, 0]


def ink_fraction(images: np.ndarray) -> np.ndarray:
    """Share of bright pixels (>= 128) in each uint8 (N, 28, 28) model input: ~0.13 for digits, 0.5 for noise."""
    a = np.asarray(images)
    if a.ndim == 2:
        a = a[None]
    return (a >= INK_LEVEL).reshape(len(a), -1).mean(axis=1)


@dataclass(frozen=True)
class OodRule:
    """Not a digit: the logit score below `threshold`, or more bright ink than `ink_max` allows."""

    score: str
    threshold: float
    temperature: float = 1.0
    ink_max: float | None = None

    def digit_score(self, logits: np.ndarray, images: np.ndarray | None = None) -> np.ndarray:
        """One continuous score (higher: more digit-like) with the ink gate folded in as a large penalty."""
        s = logit_score(logits, self.score, self.temperature)
        if images is not None and self.ink_max is not None:
            s = s - INK_PENALTY * (ink_fraction(images) > self.ink_max)
        return s

    def accepts(self, logits: np.ndarray, images: np.ndarray | None = None) -> np.ndarray:
        """Boolean (N,): True where the input passes as a digit (the ink gate applies whatever the threshold)."""
        ok = logit_score(logits, self.score, self.temperature) >= self.threshold
        if images is not None and self.ink_max is not None:
            ok &= ink_fraction(images) <= self.ink_max
        return ok

    def why_refused(self, logits: np.ndarray, image: np.ndarray) -> str:
        """One line saying why one refused image (its logits (1, K) and uint8 (28, 28) input) is not a digit."""
        if self.ink_max is not None and ink_fraction(image)[0] > self.ink_max:
            return "more bright ink than any digit has (a picture, a filled shape or noise?)"
        score = float(logit_score(logits, self.score, self.temperature)[0])
        return (f"unlike the digits it knows ({self.score} score {score:.3g} is below the threshold "
                f"{self.threshold:.3g})")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OodRule:
        ink = d.get("ink_max")
        return cls(str(d.get("score", "energy")), float(d["threshold"]), float(d.get("temperature", 1.0)),
                   None if ink is None else float(ink))  # fmt: skip


def rule_of(calibration: Calibration | None) -> OodRule | None:
    """The "not a digit" rule of a run's calibration (None: uncalibrated, or calibrated without a rule)."""
    if calibration is None or calibration.ood is None:
        return None
    return OodRule.from_dict(calibration.ood)
