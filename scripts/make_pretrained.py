"""Build the model bundled inside the package (src/digitlab/pretrained/default) from a `robust` run.

    python scripts/make_pretrained.py                      # train `digitlab train --preset robust --seed 0`, bundle
    python scripts/make_pretrained.py --run runs/robust-0  # bundle an existing run

The bundle is a slimmed run directory: config, metrics, calibration, history, report, plots, the best
checkpoint (weights only) and both ONNX files — no resumable last.pt. `digitlab predict`, `read`, `serve`
and `app` use it when no run is given. tests/test_pretrained.py re-evaluates it on the embedded test set.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from digitlab.core.config import get_preset
from digitlab.core.rundir import BUNDLED as BUNDLE
from digitlab.core.rundir import RunDir
from digitlab.evaluation.pipeline import train
from digitlab.inference.export import export_onnx

KEEP = ["config.json", "metrics.json", "calibration.json", "history.csv", "report.md", "model.onnx",
        "model.int8.onnx", "checkpoint/best.pt", "plots"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing run (default: train one with --preset and --seed)")
    parser.add_argument("--preset", default="robust")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    run = args.run
    if run is None:
        run = Path("runs") / f"{args.preset}-{args.seed}"
        train(get_preset(args.preset).override(seed=args.seed), run)
    rd = RunDir(run).require()
    if not (rd.root / "model.int8.onnx").exists():
        export_onnx(rd, int8=True, full_test=True)
    if BUNDLE.exists():
        shutil.rmtree(BUNDLE)
    for rel in KEEP:
        src, dst = rd.root / rel, BUNDLE / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        elif src.exists():
            shutil.copy2(src, dst)
    size = sum(f.stat().st_size for f in BUNDLE.rglob("*") if f.is_file())
    print(f"bundled {rd.root} -> {BUNDLE} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
