"""Corruption robustness of a run: MNIST-C's 15 corruptions, raw 28x28 and through digitlab's pipeline.

    cp -r src/digitlab/pretrained/default /tmp/fast    # the suite writes into the run directory
    python bench/robustness.py /tmp/fast --name fast                 # the official test set: the reported figure
    python bench/robustness.py runs/x --split val --name x-val       # the run's validation split: choose recipes

Writes bench/results/robustness-<name>.json: the CPU (lscpu model name; avx2, avx512f, amx flags), the time each
corruption takes on its own, and `digitlab.evaluation.robustness.evaluate_robustness`'s result (also in
RUN/metrics.json, RUN/report.md and RUN/plots/). Targets for a robust recipe, on the test suite: mean over the
corruptions >= 97%, none below 90%, clean accuracy >= 99.6% (choose recipes on `--split val`, never on the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from digitlab.data.corruptions import CORRUPTIONS, corrupt
from digitlab.evaluation.robustness import SUITE_SEEDS, evaluate_robustness, suite_split

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"mean_accuracy": 0.97, "min_accuracy": 0.90, "clean_accuracy": 0.996}


def cpu() -> dict[str, object]:
    """lscpu's model name and the vector/matrix extensions that decide CPU inference speed."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    return {"model": fields.get("Model name", "").strip() or None, "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags, "amx": sorted(f for f in flags if f.startswith("amx"))}  # fmt: skip


def time_corruptions(run: Path, split: str, limit: int | None, seed: int) -> dict[str, float]:
    """Seconds each corruption takes on the suite's images, on its own (no model)."""
    images = suite_split(run, split, limit).images
    seconds = {}
    for name in CORRUPTIONS:
        t0 = time.perf_counter()
        corrupt(images, name, seed)
        seconds[name] = round(time.perf_counter() - t0, 2)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--limit", type=int, default=None, help="the first N images only (quick looks)")
    parser.add_argument("--seed", type=int, default=None, help="the suite's seed (default: 0 test, 1 val)")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (5x the model's time)")
    parser.add_argument("--name", default=None, help="results file name (default: the run directory's name)")
    parser.add_argument("--no-timing", action="store_true", help="skip timing the corruptions on their own")
    args = parser.parse_args()

    seed = SUITE_SEEDS[args.split] if args.seed is None else args.seed
    timing = None if args.no_timing else time_corruptions(args.run, args.split, args.limit, seed)
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 10 or done == total:
            last[0] = time.perf_counter()
            print(f"  {stage:<14} {done:>7,} / {total:,} images", file=sys.stderr, flush=True)

    result = evaluate_robustness(args.run, split=args.split, limit=args.limit, seed=seed, tta=args.tta,
                                 progress=progress)  # fmt: skip
    name = args.name or args.run.resolve().name
    out = {
        "bench": "robustness",
        "command": "python bench/robustness.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "run": str(args.run),
        "cpu": cpu(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "targets": TARGETS if args.split == "test" else None,
        "corruption_seconds": timing,
        "corruption_seconds_total": None if timing is None else round(sum(timing.values()), 1),
        "result": result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"robustness-{name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    clean = result["clean"]
    print(f"{'images':<14} {'raw':>8} {'refused':>8} {'preproc':>8} {'refused':>8}")
    for key, s in {"clean": clean, **result["corruptions"]}.items():
        print(f"{key:<14} {s['accuracy']:>8.2%} {s['refused']:>8.2%} {s['accuracy_preprocessed']:>8.2%} "
              f"{s['refused_preprocessed']:>8.2%}")  # fmt: skip
    print(f"mean over corruptions {result['mean_accuracy']:.2%} raw, {result['mean_accuracy_preprocessed']:.2%} "
          f"preprocessed; worst {result['worst']} {result['min_accuracy']:.2%}; clean {clean['accuracy']:.2%}"
          f" ({result['seconds']:.0f} s) -> {path}")  # fmt: skip


if __name__ == "__main__":
    main()
