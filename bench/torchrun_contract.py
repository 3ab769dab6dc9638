"""The torchrun contract: two gloo ranks train the `fast` preset for one epoch and pass the bar.

    python bench/torchrun_contract.py --out-json bench/results/torchrun.json

Runs exactly the README's command, with this environment's torchrun and digitlab,

    torchrun --standalone --nproc-per-node 2 $(which digitlab) train --preset fast --epochs 1 --out DIR

into a temporary DIR (or --run DIR), then checks DIR/metrics.json: official test accuracy >= 98% and
`distributed.weights_identical` true. Prints the test accuracy, training seconds and wall seconds; exit code 1
when the command or a check fails. Needs the machine to itself: on 2 CPU cores each rank gets one. For a quick
smoke run, append arguments with e.g. `--extra "--limit 2000 --test-limit 500" --min-accuracy 0.5` (recorded
in the JSON, which then no longer describes the contract).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def contract_command(run_dir: Path, extra: list[str]) -> list[str]:
    """The README's command line, with the torchrun and digitlab installed next to this Python (the venv's)."""
    bin_dir = Path(sys.executable).parent
    torchrun, digitlab = bin_dir / "torchrun", bin_dir / "digitlab"
    for exe in (torchrun, digitlab):
        if not exe.exists():
            sys.exit(f"error: {exe} not found; run this with the project's venv Python (.venv/bin/python)")
    return [str(torchrun), "--standalone", "--nproc-per-node", "2", str(digitlab), "train", "--preset", "fast",
            "--epochs", "1", "--out", str(run_dir), *extra]  # fmt: skip


def check(metrics: dict[str, Any] | None, returncode: int, min_accuracy: float) -> list[str]:
    """The contract's failures (empty when it holds)."""
    if returncode != 0:
        return [f"torchrun exited with code {returncode}"]
    if metrics is None:
        return ["no metrics.json in the run directory"]
    failures = []
    accuracy = metrics.get("test", {}).get("accuracy")
    if accuracy is None or accuracy < min_accuracy:
        failures.append(f"test accuracy {accuracy} < {min_accuracy}")
    if metrics.get("distributed", {}).get("weights_identical") is not True:
        failures.append(f"distributed.weights_identical is not true: {metrics.get('distributed')}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-json", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--run", type=Path, default=None, help="run directory to create (default: temporary)")
    parser.add_argument("--min-accuracy", type=float, default=0.98, help="the bar for official test accuracy")
    parser.add_argument("--extra", default="", help="arguments appended to `digitlab train` (smoke runs only)")
    args = parser.parse_args()
    extra = shlex.split(args.extra)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or Path(tmp) / "ddp"
        cmd = contract_command(run_dir, extra)
        print("$ " + shlex.join(cmd), flush=True)
        t0 = time.perf_counter()
        returncode = subprocess.run(cmd).returncode  # progress streams through, as in a terminal
        wall = time.perf_counter() - t0
        path = run_dir / "metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else None

    failures = check(metrics, returncode, args.min_accuracy)
    m = metrics or {}
    summary = {
        "command": shlex.join(cmd),
        "extra": extra,  # non-empty: a smoke run, not the contract
        "min_accuracy": args.min_accuracy,
        "test_accuracy": m.get("test", {}).get("accuracy"),
        "train_seconds": m.get("train_seconds"),
        "wall_seconds": round(wall, 1),
        "distributed": m.get("distributed"),
        "device": m.get("device"),
        "torch": m.get("torch"),
        "machine": platform.machine(),
        "passed": not failures,
        "failures": failures,
    }
    acc = summary["test_accuracy"]
    print(f"torchrun contract: test {acc:.4%}" if acc is not None else "torchrun contract: no test accuracy",
          f"  train {summary['train_seconds']} s  wall {summary['wall_seconds']} s"
          f"  weights identical: {(summary['distributed'] or {}).get('weights_identical')}", sep="")  # fmt: skip
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(summary, indent=2) + "\n")
    if failures:
        print("FAIL: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main()
