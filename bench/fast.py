"""Benchmark a preset: official-test accuracy and training seconds over several seeds.

    python bench/fast.py --seeds 0 1 2 --out bench/results/fast.json
    python bench/fast.py --preset accurate --seeds 0 1 2 --split-seed 0 --runs runs/ens \
        --out bench/results/accurate.json
    python bench/fast.py --preset accurate --set model=strided --name strided --seeds 0 1 2 3 4 --split-seed 0 \
        --runs runs/ens --out bench/results/strided.json

Targets: `fast` >= 99.60% official test accuracy in <= 60 s of training on 2 CPU cores; `accurate`
  >= 99.70%. Each seed is a full `digitlab train --preset P --seed S` run; the test set is only read by
the final evaluation. `--split-seed` gives every run the same validation split, so that the runs (kept with
`--runs`) can be ensembled: `bench/ensembles.py`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from digitlab.cli.train import parse_sets
from digitlab.core.config import TrainConfig, get_preset
from digitlab.core.hardware import cpu_info
from digitlab.evaluation.pipeline import train


def finished(run: Path, config: TrainConfig) -> dict | None:
    """A finished, test-evaluated run of exactly `config` in `run` (kept with --runs), so reruns add seeds only."""
    try:
        m = json.loads((run / "metrics.json").read_text())
        same = TrainConfig.load(run / "config.json") == config
    except (OSError, ValueError):
        return None
    return m if same and "test" in m else None


def summarise(args: argparse.Namespace, changes: dict, rows: list[dict]) -> dict:
    """The JSON written: the runs so far and their mean and spread."""
    acc = [r["test_accuracy"] for r in rows]
    sec = [r["train_seconds"] for r in rows]
    return {
        "preset": args.preset,
        "changes": changes,
        "seeds": [r["seed"] for r in rows],
        "split_seed": args.split_seed,
        "test_accuracy_mean": statistics.mean(acc),
        "test_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "train_seconds_mean": statistics.mean(sec),
        "train_seconds_max": max(sec),
        "cpu": cpu_info().describe(),
        "runs": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--split-seed", type=int, default=None, help="one validation split for all (ensembles)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--runs", type=Path, default=None, help="keep run directories here (default: temporary)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a config field, as `digitlab train --set` (e.g. model=strided)",
    )
    parser.add_argument("--name", default=None, help="run directories are NAME-SEED (default: the preset's name)")
    args = parser.parse_args()
    changes = parse_sets(args.set)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.runs or Path(tmp)
        for seed in args.seeds:
            config = get_preset(args.preset).set(**changes).override(seed=seed, split_seed=args.split_seed)
            run = root / f"{args.name or args.preset}-{seed}"
            t0 = time.perf_counter()
            m = finished(run, config)
            reused = m is not None
            if m is None:
                m = train(config, run).metrics
            rows.append({"seed": seed, "test_accuracy": m["test"]["accuracy"], "val_accuracy": m["val"]["accuracy"],
                         "train_seconds": m["train_seconds"], "params": m["params"], "device": m["device"],
                         "total_seconds": None if reused else round(time.perf_counter() - t0, 1)})  # fmt: skip
            r = rows[-1]
            total = "reused" if reused else f"total {r['total_seconds']:.1f} s"
            print(f"seed {seed}: test {r['test_accuracy']:.4%}  val {r['val_accuracy']:.4%}  "
                  f"train {r['train_seconds']:.1f} s  ({total})", flush=True)  # fmt: skip
            summary = summarise(args, changes, rows)
            if args.out:  # after each seed: a run stopped part-way keeps the seeds it finished
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.preset}: test {summary['test_accuracy_mean']:.4%} ± {summary['test_accuracy_std']:.4%} "
          f"(n={len(rows)}), train {summary['train_seconds_mean']:.1f} s mean, "
          f"{summary['train_seconds_max']:.1f} s max")  # fmt: skip


if __name__ == "__main__":
    main()
