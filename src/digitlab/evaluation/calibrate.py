"""Honest confidence: temperature scaling and the out-of-distribution ('not a digit') threshold.

    digitlab calibrate runs/fast        # the CLI edge; training calls `calibrate_split` on every new run

Both are fitted on the run's *validation* split, never on the test set:

- Temperature scaling (Guo et al., 2017): one scalar T divides the logits; T minimises the validation NLL, so
  the argmax (and accuracy) never changes but the confidences mean what they say.
- "Not a digit": a score from the logits (energy `T * logsumexp(logits / T)`, Liu et al., 2020, or the max
  logit; each run keeps whichever rejects more of the out-of-distribution fitting sets) is combined with an ink
  statistic of the 28x28 input the model sees (the share of bright pixels: uniform noise fills half the image,
  and networks are often *more* confident on noise than on digits, so no logit score can catch it). The
  threshold keeps SOURCE_TPR (99.7%) of the validation digits *and* of each other digit source users send
  (canvas, photo, fonts, low-resolution scans, thin and thick pens, small digits on big pages: the
  validation-digit sets of `digitlab.evaluation.refusal`); the ink gate sits above the digits of every source. The
  out-of-distribution sets used while fitting (Fashion-MNIST *train* images, uniform noise, letters rendered
  from a font) only choose between the two scores and document how much each rule rejects; the test-set
  AUROCs in metrics.json["ood"] are a report.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from digitlab.core.errors import DataError, RunDirError

OOD_SCORES = ("energy", "max_logit")
TARGET_TPR = 0.99  # share of validation digits the OOD rule must keep
INK_QUANTILE = 0.999  # the ink gate sits at this quantile of the validation digits' bright-pixel share
INK_LEVEL = 128  # a pixel of the 28x28 input is "bright" at or above this
INK_PENALTY = 1e6  # subtracted from the score of an image failing the ink gate (a finite -inf, for AUROCs)
TEMPERATURE_BOUNDS = (0.05, 20.0)

# Out-of-distribution sets: sizes while training finishes (seconds count) and for `digitlab calibrate`.
# "digits": images per digit source (`refusal.digit_sources`; None: all).
QUICK_SIZES = {"fashion_mnist": 500, "noise": 100, "letters": 100, "digits": 200}
FULL_SIZES = {"fashion_mnist": 5000, "noise": 500, "letters": 500, "digits": None}
TEST_SIZE = 2000  # MNIST test and Fashion-MNIST test images for the AUROC report

# Letters whose glyphs are not also a digit's shape (no O/o, I/l, S/s, Z/z, B, G, b, g, q, D ...).
LETTERS = "ACEFHKLMNPRUVWXYacefhkmnprtuvwxy"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FIT_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")
TEST_FONTS = ("DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf", "DejaVuSans-ExtraLight.ttf")


# --------------------------------------------------------------------------------------------- temperature


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

    Fit it on the validation split: fitted on the test set, the test NLL and ECE would flatter the model.
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


def ece(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Expected calibration error (the same 15 equal-width bins as the report) at `temperature`."""
    from digitlab.evaluation.evaluate import expected_calibration_error, reliability_bins

    probs = softmax(logits, temperature)
    return expected_calibration_error(reliability_bins(probs.max(1), probs.argmax(1) == np.asarray(labels)))


# --------------------------------------------------------------------------------------------- OOD rule


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OodRule:
        ink = d.get("ink_max")
        return cls(str(d.get("score", "energy")), float(d["threshold"]), float(d.get("temperature", 1.0)),
                   None if ink is None else float(ink))  # fmt: skip


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


def _font(name: str, size: int):
    from PIL import ImageFont

    path = FONT_DIR / name
    if path.is_file():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the fonts package is not installed


def render_letters(n: int, seed: int = 0, fonts: tuple[str, ...] = FIT_FONTS) -> np.ndarray:
    """`n` letters rendered from a font, rotated a little and framed like MNIST digits: uint8 (n, 28, 28)."""
    from PIL import Image, ImageDraw

    from digitlab.data.preprocess import preprocess_array

    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        font = _font(fonts[int(rng.integers(len(fonts)))], int(rng.integers(40, 72)))
        im = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(im).text((48, 48), LETTERS[int(rng.integers(len(LETTERS)))], fill=255, font=font,
                                anchor="mm")  # fmt: skip
        im = im.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
        out[i] = preprocess_array(np.asarray(im)).image
    return out


def _shapes(n: int, seed: int) -> np.ndarray:
    """Filled, textured shapes (a stand-in for Fashion-MNIST's garments when that dataset is not installed)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        im = Image.new("L", (28, 28), 0)
        d = ImageDraw.Draw(im)
        x0, y0 = rng.integers(1, 8, 2)
        x1, y1 = rng.integers(20, 27, 2)
        fill = int(rng.integers(100, 256))
        [d.ellipse, d.rectangle][int(rng.integers(2))]((int(x0), int(y0), int(x1), int(y1)), fill=fill)
        a = np.asarray(im, np.float32) * rng.uniform(0.6, 1.0, (28, 28))
        out[i] = np.clip(a, 0, 255).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=4)
def ood_images(split: str = "fit", sizes: tuple[tuple[str, int], ...] = tuple(QUICK_SIZES.items()),
               seed: int = 0) -> tuple[dict[str, np.ndarray], str]:  # fmt: skip
    """Out-of-distribution images (uint8 (N, 28, 28) per set) and a description of them.

    split="fit": Fashion-MNIST *train* images, noise and letters in FIT_FONTS (used to fit); "test":
    Fashion-MNIST *test* images, other noise and letters in TEST_FONTS (only for the report). Without
    Fashion-MNIST installed, filled shapes stand in for it. Cached: training many runs pays once.
    """
    if split not in ("fit", "test"):
        raise ValueError(f"split must be 'fit' or 'test', not {split!r}")
    want = dict(sizes)
    rng = np.random.default_rng(seed + (0 if split == "fit" else 1000))
    sets: dict[str, np.ndarray] = {}
    parts = []
    if want.get("fashion_mnist"):
        from digitlab.data.datasets import load_dataset

        try:
            fm = load_dataset("fashion-mnist")
            pool = fm.train if split == "fit" or fm.test is None else fm.test
            k = min(want["fashion_mnist"], len(pool))
            sets["fashion_mnist"] = pool.images[np.sort(rng.choice(len(pool), k, replace=False))]
            parts.append(f"{k:,} Fashion-MNIST {'train' if pool is fm.train else 'test'} images")
        except DataError:
            sets["shapes"] = _shapes(want["fashion_mnist"], seed + (0 if split == "fit" else 1000))
            parts.append(f"{want['fashion_mnist']:,} synthetic filled shapes (Fashion-MNIST not installed)")
    if want.get("noise"):
        sets["noise"] = rng.integers(0, 256, (want["noise"], 28, 28), dtype=np.uint8)
        parts.append(f"{want['noise']:,} uniform-noise images")
    if want.get("letters"):
        fonts = FIT_FONTS if split == "fit" else TEST_FONTS
        sets["letters"] = render_letters(want["letters"], seed + (1 if split == "fit" else 1001), fonts)
        fonts_used = ", ".join(f.removesuffix(".ttf") for f in fonts) if (FONT_DIR / fonts[0]).is_file() else "PIL"
        parts.append(f"{want['letters']:,} letters ({fonts_used})")
    for a in sets.values():
        a.setflags(write=False)
    return sets, "; ".join(parts)


# --------------------------------------------------------------------------------------------- a run


def _logits_fn(model: Any, config: Any, device: Any) -> Callable[[np.ndarray], np.ndarray]:
    from digitlab.evaluation.evaluate import predict_logits

    return lambda images: predict_logits(model, images, tta=config.tta, device=device)


def calibrate_split(
    run: Path | Any,
    model: Any,
    val: Any,
    val_logits: np.ndarray,
    config: Any,
    device: Any = "cpu",
    sizes: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Fit temperature and OOD rule on a validation split (its logits already computed, with the run's TTA)
    and write RUN/calibration.json; returns what was written. Used by training and by `calibrate_run`."""
    from digitlab.core.rundir import RunDir

    rd = run if isinstance(run, RunDir) else RunDir(Path(run))
    t0 = time.perf_counter()
    val_logits = np.asarray(val_logits, dtype=np.float64)
    labels = np.asarray(val.labels)
    temperature = fit_temperature(val_logits, labels)
    from digitlab.evaluation.refusal import SOURCE_TPR, digit_sources

    sizes = {**QUICK_SIZES, **(sizes or {})}
    sets, described = ood_images("fit", tuple(sizes.items()))
    logits_of = _logits_fn(model, config, device)
    ood = {name: (logits_of(images), images) for name, images in sets.items()}
    found, used = digit_sources(val, config.data, sizes.get("digits"))
    sources = {name: (logits_of(images), images) for name, images in found.items()}
    _, ood_report = fit_ood(val_logits, val.images, ood, temperature, SOURCE_TPR, sources)
    kinds = ", ".join(f"{k} {v:,}" for k, v in used.items() if isinstance(v, int)) or "none"
    ood_report["fitted_on"] = (f"{len(labels):,} validation digits of {config.data} and validation-digit "
                               f"sources ({kinds}) vs {described}")  # fmt: skip
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
    rd.write_json(rd.calibration, cal)
    return cal


def ood_test_report(model: Any, config: Any, rule: OodRule, device: Any = "cpu", n: int = TEST_SIZE) -> dict:
    """AUROC of the rule's combined score, MNIST test digits vs each test-side OOD set, and how much it rejects.

    A report only: nothing here chooses anything.
    """
    from digitlab.data.datasets import load_eval_split

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
    run: Path | Any,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
    sizes: dict[str, int] | None = None,
    test_report: bool = True,
    test_size: int = TEST_SIZE,
) -> dict[str, Any]:
    """Calibrate a finished run on its own validation split (re-made exactly as in training) and re-evaluate.

    Writes RUN/calibration.json, re-runs `evaluate_run` (metrics.json "test", report.md and plots now with the
    temperature) and, with `test_report`, adds metrics.json["ood"] (AUROCs on test data). Returns
    {"calibration", "test_before", "test_after", "ood"}.
    """
    from digitlab.core.rundir import RunDir, load_model
    from digitlab.data.datasets import load_dataset
    from digitlab.evaluation.evaluate import evaluate_run, pick_device, predict_logits
    from digitlab.training.loop import split_data

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


@dataclass(frozen=True)
class Calibration:
    """A run's calibration.json, validated: the temperature and the "not a digit" rule (None: the file has none)."""

    temperature: float
    ood: OodRule | None
    data: dict[str, Any]  # the whole file (fit figures, provenance), for display


def _number(value: Any) -> float | None:
    """`value` as a finite float, or None when it is not a finite JSON number (strings and booleans are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _check_ood(d: Any, path: Path) -> OodRule:
    where = f"{path}: ood"
    if not isinstance(d, dict):
        raise RunDirError(f"{where} must be a JSON object with a score and a threshold")
    if d.get("score", "energy") not in OOD_SCORES:
        raise RunDirError(f"{where}.score must be one of {', '.join(OOD_SCORES)}, not {d.get('score')!r}")
    if _number(d.get("threshold")) is None:
        raise RunDirError(f"{where}.threshold must be a finite number, not {d.get('threshold')!r}")
    t = _number(d.get("temperature", 1.0))
    if t is None or t <= 0:
        raise RunDirError(f"{where}.temperature must be a finite number above 0, not {d.get('temperature')!r}")
    ink = d.get("ink_max")
    if ink is not None and not (_number(ink) is not None and 0 <= ink <= 1):
        raise RunDirError(f"{where}.ink_max must be null or a number in [0, 1], not {ink!r}")
    return OodRule.from_dict(d)


def load_calibration(run: Path | Any) -> Calibration | None:
    """RUN/calibration.json checked field by field (one-line RunDirError when broken); None when there is none.

    The one reader of the file: the temperature must be a finite number above 0; an "ood" rule, when present,
    needs a known score, a finite threshold and temperature, and an ink_max in [0, 1] or null.
    """
    from digitlab.core.rundir import RunDir, read_json_object

    rd = run if isinstance(run, RunDir) else RunDir(Path(run))
    if not rd.calibration.exists():
        return None
    data = read_json_object(rd.calibration)
    t = _number(data.get("temperature"))
    if t is None or t <= 0:
        got = "nothing" if "temperature" not in data else repr(data["temperature"])
        raise RunDirError(f"{rd.calibration}: temperature must be a finite number above 0, not {got} "
                          f"(refit it: `digitlab calibrate {rd.root}`)")  # fmt: skip
    ood = _check_ood(data["ood"], rd.calibration) if "ood" in data and data["ood"] is not None else None
    return Calibration(t, ood, data)


def read_calibration(run: Path | Any) -> dict[str, Any]:
    """RUN/calibration.json as a dict, validated as `load_calibration` does ({} when the run has none)."""
    cal = load_calibration(run)
    return {} if cal is None else cal.data
