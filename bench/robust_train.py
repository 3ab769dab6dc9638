"""Robust training recipes: train `fast` with generic degradations, score it on the VALIDATION corruption suite.

    OMP_NUM_THREADS=2 python bench/robust_train.py --name lighting --shares lighting=0.5
    OMP_NUM_THREADS=2 python bench/robust_train.py --name all --shares lighting=0.3,noise=0.3,erasing=0.3,strokes=0.3

Each `--shares` entry applies one of `augment.ROBUST_AUGMENTATIONS` to that share of every training batch, after
the preset's own augmentation (none of them is a `digitlab.corruptions` function: the suite stays unseen). The
run is validated, calibrated and scored on the run's validation split, clean and under the validation-seeded
suite (`evaluate_robustness(split="val")`); the test set is not read. Writes
bench/results/robust-train-<name>.json. The augmentations reach the training loop by wrapping
`digitlab.train.thicken_strokes` for this process only: a recipe that wins gets a config field instead.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import digitlab.train as train_mod
from digitlab.augment import ROBUST_AUGMENTATIONS, robust_augment
from digitlab.cli import parse_sets
from digitlab.config import get_preset
from digitlab.robustness import evaluate_robustness

RESULTS = Path(__file__).resolve().parent / "results"


def parse_shares(text: str) -> dict[str, float]:
    shares = {k: float(v) for k, v in (item.split("=") for item in text.split(",") if item)} if text else {}
    unknown = set(shares) - set(ROBUST_AUGMENTATIONS)
    if unknown:
        raise SystemExit(f"unknown augmentation(s) {sorted(unknown)}; choose from {list(ROBUST_AUGMENTATIONS)}")
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--shares", default="", help="e.g. lighting=0.5,noise=0.3 (empty: the preset alone)")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config field, as `train --set`")
    parser.add_argument("--out", type=Path, default=Path("/tmp/robust-runs"))
    parser.add_argument("--limit", type=int, default=2000, help="validation images the suite corrupts")
    args = parser.parse_args()

    shares = parse_shares(args.shares)
    base = train_mod.thicken_strokes

    def degrade(x, share, generator=None):  # thicken_strokes' signature, then the degradations
        return robust_augment(base(x, share, generator), shares, generator)

    train_mod.thicken_strokes = degrade
    config = get_preset(args.preset).override(seed=args.seed).set(**parse_sets(args.sets))
    run = args.out / args.name
    t0 = time.perf_counter()
    result = train_mod.train(config, run, evaluate_test=False)
    train_wall = time.perf_counter() - t0
    suite = evaluate_robustness(run, split="val", limit=args.limit)
    row = {
        "bench": "robust_train",
        "command": "python bench/robust_train.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None,
        "name": args.name, "preset": args.preset, "seed": args.seed, "shares": shares, "sets": args.sets,
        "run": str(run), "train_seconds": result.metrics.get("train_seconds"), "wall_seconds": round(train_wall, 1),
        "val_accuracy": result.metrics["val"]["accuracy"],
        "val_suite": {k: suite[k] for k in ("mean_accuracy", "mean_accuracy_preprocessed", "min_accuracy", "worst",
                                            "clean_accuracy", "n", "seed", "tta", "seconds")},
        "val_suite_accuracy": {n: s["accuracy"] for n, s in suite["corruptions"].items()},
        "val_suite_accuracy_preprocessed": {n: s["accuracy_preprocessed"] for n, s in suite["corruptions"].items()},
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"robust-train-{args.name}.json").write_text(json.dumps(row, indent=2) + "\n")
    print(f"{args.name}: val {row['val_accuracy']:.2%}; val suite mean {suite['mean_accuracy']:.2%} raw, "
          f"{suite['mean_accuracy_preprocessed']:.2%} preprocessed; worst {suite['worst']} "
          f"{suite['min_accuracy']:.2%}")  # fmt: skip


if __name__ == "__main__":
    main()
