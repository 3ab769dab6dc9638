"""Benchmark ensembles: the first 3, 5, 10 runs of a preset (in seed order, nothing chosen on test) averaged.

    python bench/ensembles.py runs/ens/accurate-{0..9} --sizes 3 5 10 --out bench/results/ensembles-accurate.json
    python bench/ensembles.py runs/ens/*-? --select 10 --out bench/results/ensembles-selected.json

With `--select K` the members are instead chosen from all the runs given, up to K, by greedy forward selection on
the shared validation split (`digitlab ensemble --select K`); the test set is still read once, at the end.

The runs must share their validation split (`bench/fast.py --split-seed 0 --runs runs/ens`). Each ensemble is a
`digitlab ensemble` run directory (under --keep, default a temporary folder): calibrated on the shared validation
split, then evaluated once on the official test set. Target: >= 99.80% with <= 10 members. The 2-core
training time of an ensemble is the sum of its members' `train_seconds` (they train one after another).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from digitlab.evaluation.pipeline import make_ensemble
from digitlab.training.ensemble import select_members


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="member run directories, in the order they are taken")
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--keep", type=Path, default=None, help="keep the ensemble run directories here")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument(
        "--select",
        type=int,
        default=None,
        metavar="K",
        help="choose up to K members from all the runs on validation (ignores --sizes)",
    )
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        if args.select:
            chosen, selection = select_members(args.runs, args.select, progress=print)
            plans = [(len(chosen), chosen, selection)]
        else:
            plans = [(k, args.runs[:k], None) for k in args.sizes if k <= len(args.runs)]
        for k, members, selection in plans:
            name = f"selected-{k}" if selection else f"ensemble-{k}"
            m = make_ensemble(members, root / name, selection=selection)
            rows.append({
                "members": k, "runs": [str(r) for r in members], "selection": selection,
                "val_accuracy": m["val"]["accuracy"],
                "test_accuracy": m["test"]["accuracy"], "test_ece": m["test"].get("ece"),
                "member_test_accuracy": [r.get("test_accuracy") for r in m["members"]],
                "train_seconds": m["train_seconds"], "params": m["params"],
            })  # fmt: skip
            r = rows[-1]
            print(f"ensemble of {k}: test {r['test_accuracy']:.4%}  val {r['val_accuracy']:.4%}  "
                  f"training {r['train_seconds']:.0f} s (members' sum)  {r['params']:,} params",
                  flush=True)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
