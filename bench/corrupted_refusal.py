"""Corrupted digits on the served path: how many the "not a digit" rule refuses, and what keeping them would cost.

    python bench/corrupted_refusal.py [RUN] [--n 600] [--out bench/results/corrupted-refusal.json]

The rule (`digitlab calibrate`) keeps 99.7% of every digit source it is fitted on, corrupted validation digits
pooled among them; per corruption the share varies. This takes RUN's first --n validation digits (never the test
set), applies each of the suite's 15 corruptions with the validation-derived seed (as bench/robust_recipe.py does),
sends them through `preprocess` and the model without TTA (as `digitlab serve` does), and reports per corruption
the share refused and the share read right. Then, for the corrupted digits pooled, the logit threshold that would
keep 97-99.7% of them and what the rule would still refuse of the fitting sets (Fashion-MNIST train, noise,
letters) at that threshold (never stricter than RUN's own): what keeping more of them would cost. A report: it
chooses nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from digitlab.core.calibration import load_calibration
from digitlab.core.rundir import BUNDLED, RunDir
from digitlab.data.corruptions import CORRUPTIONS, VALIDATION_SEED, corrupt
from digitlab.data.datasets import load_dataset, split_data
from digitlab.data.preprocess import preprocess_array
from digitlab.evaluation.ood_sets import FULL_SIZES, ood_images
from digitlab.model.forward import load_model, predict_logits
from digitlab.model.scoring import logit_score, rule_of

KEEP = (0.97, 0.98, 0.99, 0.995, 0.997)


def served(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model inputs, logits, not-empty mask) of `images` through `preprocess`, without TTA."""
    prepared = [preprocess_array(im) for im in images]
    x = np.stack([p.image for p in prepared])
    return x, predict_logits(model, x), np.array([p.status == "ok" for p in prepared])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, default=BUNDLED)
    parser.add_argument("--n", type=int, default=600, help="validation digits per corruption")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    t0 = time.perf_counter()
    rd = RunDir(args.run).require()
    model, rule = load_model(rd), rule_of(load_calibration(rd))
    _, val = split_data(load_dataset("mnist"), rd.read_config())
    images, labels = val.images[: args.n], val.labels[: args.n]
    per, pooled = {}, []
    for name in CORRUPTIONS:
        x, logits, ok = served(model, corrupt(images, name, VALIDATION_SEED))
        kept = rule.accepts(logits, x) & ok
        per[name] = {"refused": float(1 - kept.mean()), "read": float((kept & (logits.argmax(1) == labels)).mean())}
        pooled.append((x[ok], logits[ok]))
        print(f"{name:15s} refused {per[name]['refused']:6.2%}  read {per[name]['read']:6.2%}", flush=True)
    x = np.concatenate([p[0] for p in pooled])
    scores = logit_score(np.concatenate([p[1] for p in pooled]), rule.score, rule.temperature)
    fit, _ = ood_images("fit", tuple(FULL_SIZES.items()))
    ood = {k: (predict_logits(model, v), v) for k, v in fit.items() if k != "digits"}

    def refused_ood(r) -> dict[str, float]:
        return {k: float(1 - r.accepts(lg, im).mean()) for k, (lg, im) in ood.items()}

    now = {"threshold": rule.threshold, "ood_refused": refused_ood(rule),
           "corrupted_refused": float(1 - rule.accepts(np.concatenate([p[1] for p in pooled]), x).mean())}  # fmt: skip
    lax = []
    for keep in KEEP:
        threshold = min(rule.threshold, float(np.quantile(scores, 1 - keep)))
        lax.append({"keep": keep, "threshold": threshold,
                    "ood_refused": refused_ood(dataclasses.replace(rule, threshold=threshold))})  # fmt: skip
        print(f"keep {keep:.1%} of corrupted digits: threshold {threshold:.3f}, refuses {lax[-1]['ood_refused']}")
    print(
        f"now: threshold {rule.threshold:.3f}, refuses {now['ood_refused']}, corrupted {now['corrupted_refused']:.2%}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out = {"command": "python bench/corrupted_refusal.py", "run": str(args.run), "n": args.n,
               "seconds": round(time.perf_counter() - t0, 1), "corruptions": per, "now": now,
               "keeping": lax}  # fmt: skip
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
