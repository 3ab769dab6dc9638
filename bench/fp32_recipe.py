"""Choose a preset's fp32 variant: candidate recipes' validation accuracy and training seconds in fp32.

    python bench/fp32_recipe.py --isa AVX2 --seeds 0 1                  # `fast`, as an fp32-only CPU trains it
    python bench/fp32_recipe.py --isa AVX2 --seeds 2 --only fast-5x256 batch-128
    python bench/fp32_recipe.py --preset accurate --isa AVX2 --seeds 0

Each candidate is `digitlab train --preset P --variant none --no-test` plus its `--set` changes, one process per
run (an `--isa` cap must be set before PyTorch starts): the test set is not read, the choice is made on the
6,000-image validation split of each seed. Finished runs in `--runs` (default runs/fp32) are read, not trained again, so
seeds can be added later. Times come from runs one after another on an otherwise idle machine; they are
indicative (the ratio against the reference, bench/vs_reference.py, is the figure to quote). Writes
bench/results/fp32_recipe-<preset>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from digitlab.cli.train import parse_sets
from digitlab.core.config import TrainConfig, get_preset
from digitlab.core.errors import DigitlabError
from digitlab.core.hardware import cpu_info

REPO = Path(__file__).resolve().parents[1]

# preset -> name -> (what it tries, its `--set` changes to the preset)
FAST: dict[str, tuple[str, list[str]]] = {
    "fast-5x256": ("fast as tuned with bf16: 5 epochs at batch 256", []),
    "stride-16": ("stride-2 3x3 stem (no 28x28 map, one 14x14 conv fewer), 16/32/64",
                  ['model_args={"widths": [16, 32, 64], "stem": "stride"}']),
    "stride-16-e4": ("stride-2 stem 16/32/64, 4 epochs", ['model_args={"widths": [16, 32, 64], "stem": "stride"}',
                                                          "epochs=4"]),
    "stride-24-32-48": ("stride-2 stem 24/32/48", ['model_args={"widths": [24, 32, 48], "stem": "stride"}']),
    "stride-24-24-48": ("stride-2 stem 24/24/48", ['model_args={"widths": [24, 24, 48], "stem": "stride"}']),
    "resize-4ep": ("progressive resizing 16, 20, 24, 28 px, 4 epochs", ["image_sizes=[16, 20, 24, 28]", "epochs=4"]),
    "resize-5ep": ("progressive resizing 16, 16, 20, 24, 28 px", ["image_sizes=[16, 16, 20, 24, 28]"]),
    "batch-128-lr0.1": ("3 epochs at batch 128, peak lr 0.1 (linear scaling)", ["epochs=3", "batch_size=128",
                                                                                 "lr=0.1"]),
    "batch-128": ("3 epochs at batch 128, peak lr 0.2 (the fp32 variant)", ["epochs=3", "batch_size=128"]),
    "batch-128-resize20": ("3 epochs at batch 128, the first at 20 px", ["epochs=3", "batch_size=128",
                                                                         "image_sizes=[20, 28]"]),
}  # fmt: skip
ACCURATE: dict[str, tuple[str, list[str]]] = {
    "fast-width-15x128": ("16/32/64 (fast's width), 15 epochs at batch 128, EMA",
                          ['model_args={"widths": [16, 32, 64]}', "batch_size=128"]),
    "width-24-8x128": ("24/48/96, 8 epochs at batch 128, EMA",
                       ['model_args={"widths": [24, 48, 96]}', "batch_size=128", "epochs=8"]),
    "fast-width-18x128": ("16/32/64, 18 epochs at batch 128, EMA",
                          ['model_args={"widths": [16, 32, 64]}', "batch_size=128", "epochs=18"]),
}  # fmt: skip
CANDIDATES = {"fast": FAST, "accurate": ACCURATE}


def run_one(preset: str, sets: list[str], seed: int, run: Path, env: dict[str, str]) -> dict:
    """metrics.json of a finished run of exactly this config in `run`, training it first if there is none."""
    want = get_preset(preset).set(**parse_sets(sets)).override(seed=seed)
    try:  # `variant` only labels a config: an fp32-variant run of the same fields is the same run
        if replace(TrainConfig.load(run / "config.json"), variant="") == want:
            return json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError, DigitlabError):  # none there yet, or an unfinished one: train it
        pass
    cmd = [sys.executable, "-m", "digitlab", "train", "--preset", preset, "--variant", "none", "--no-test",
           "--seed", str(seed), "--out", str(run)] + [a for s in sets for a in ("--set", s)]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((run / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(CANDIDATES), default="fast")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="+", default=None, help="these candidates only (default: all of the preset's)")
    ap.add_argument("--isa", default="AVX2", help="cap oneDNN's ISA (ONEDNN_MAX_CPU_ISA); '' for none")
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "fp32")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/fp32_recipe-<preset>.json")
    args = ap.parse_args()
    candidates = CANDIDATES[args.preset]
    unknown = set(args.only or []) - set(candidates)
    if unknown:
        ap.error(f"unknown candidate(s) {', '.join(sorted(unknown))}; {args.preset} has {', '.join(candidates)}")
    args.out = args.out or REPO / "bench" / "results" / f"fp32_recipe-{args.preset}.json"
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=args.isa) if args.isa else dict(os.environ)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    rows = {r["name"]: r for r in old.get("candidates", [])}
    cpu = cpu_info(isa_cap=args.isa)
    machine = f"{cpu.describe()}, {cpu.family_model or 'unknown'}"  # one results file may hold several machines
    for name in args.only or candidates:
        what, sets = candidates[name]
        seeds = dict(rows.get(name, {}).get("seeds", {}))
        for seed in args.seeds:
            m = run_one(args.preset, sets, seed, args.runs / f"{args.preset}-{name}-s{seed}", env)
            seeds[str(seed)] = {"val_accuracy": m["val"]["accuracy"], "train_seconds": m["train_seconds"],
                                "cpu": machine, "isa_cap": args.isa or None}  # fmt: skip
            print(f"{name} seed {seed}: val {m['val']['accuracy']:.2%}, {m['train_seconds']:.1f} s", flush=True)
        both = [seeds[str(s)] for s in (0, 1) if str(s) in seeds]  # the seeds every candidate has
        rows[name] = {"name": name, "what": what, "set": sets, "seeds": seeds,
                      "val_accuracy_mean_seeds_0_1": statistics.mean(r["val_accuracy"] for r in both) if both else None,
                      "train_seconds_mean": statistics.mean(r["train_seconds"] for r in seeds.values())}  # fmt: skip
    out = {"preset": args.preset, "cpu": machine, "isa_cap": args.isa or None,
           "command": "python bench/fp32_recipe.py " + " ".join(sys.argv[1:]),
           "candidates": [rows[n] for n in candidates if n in rows]}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
