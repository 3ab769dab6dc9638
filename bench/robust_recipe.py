"""Choose a robust training recipe on validation: each variant trained, then scored on clean validation digits and
on the corruption suite applied to those same validation digits (never the test-derived suite).

    python bench/robust_recipe.py --variant base: --variant all30:corrupt=0.3 --variant all50:corrupt=0.5 \
        --runs runs/robust --out bench/results/robust_recipe.json

A variant is NAME:KEY=VALUE;KEY=VALUE (TrainConfig fields, as `digitlab train --set` takes them) on top of
`--preset` with `--seed` and `--split-seed`. Runs are trained without reading the test set; an existing run
directory is reused, so the script can be stopped and started again.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from digitlab.cli.train import parse_sets
from digitlab.core.config import get_preset
from digitlab.core.rundir import RunDir
from digitlab.data.corruptions import CORRUPTIONS, VALIDATION_SEED, corrupt
from digitlab.data.datasets import load_dataset, split_data
from digitlab.evaluation.pipeline import train
from digitlab.model.forward import load_model, predict_logits


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    flags = out.split("Flags:", 1)[-1].split()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name or platform.processor()} ({', '.join(isa)})"


def score(run: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    model = load_model(run)
    clean = float((predict_logits(model, images).argmax(1) == labels).mean())
    per = {}
    for name in CORRUPTIONS:
        x = corrupt(images, name, VALIDATION_SEED)
        per[name] = float((predict_logits(model, x).argmax(1) == labels).mean())
    return {"clean": clean, "mean_corrupted": float(np.mean(list(per.values()))), "corruptions": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--variant", action="append", required=True, help="NAME:KEY=VALUE;...")
    ap.add_argument("--runs", type=Path, default=Path("runs/robust"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/robust_recipe.json"))
    args = ap.parse_args()

    ds = load_dataset("mnist")
    results = json.loads(args.out.read_text()) if args.out.exists() else {"cpu": cpu(), "variants": {}}
    for spec in args.variant:
        name, _, sets = spec.partition(":")
        changes = parse_sets([s for s in sets.split(";") if s])
        config = get_preset(args.preset).set(seed=args.seed, split_seed=args.split_seed, **changes)
        run = args.runs / f"{args.preset}-{name}-{args.seed}"
        t0 = time.perf_counter()
        if not RunDir(run).best.exists():
            train(config, run, dataset=ds, evaluate_test=False)
        seconds = json.loads(RunDir(run).metrics.read_text()).get("train_seconds")
        _, val = split_data(ds, config)
        row = {"set": changes, "train_seconds": seconds, **score(run, val.images, val.labels)}
        results["variants"][name] = row
        print(f"{name}: clean val {row['clean']:.2%}, corrupted val mean {row['mean_corrupted']:.2%} "
              f"(min {min(row['corruptions'].values()):.2%}), {time.perf_counter() - t0:.0f} s")  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
