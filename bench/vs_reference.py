"""Time a digitlab recipe side by side with the reference CNN on this machine and print the ratio of times.

    python bench/vs_reference.py --preset fast --seeds 0 1 2                 # this CPU as it is
    python bench/vs_reference.py --preset fast --seeds 0 1 2 --isa AVX2      # as an fp32-only (AVX2) CPU

The reference is `../shared/bench/probe_fast.py` (a plain 5-layer BN CNN, 6 epochs, width 16, fp32), run in its
own process before each recipe run (and after the last), so each recipe run sits between two reference runs and
the ratio uses their mean: absolute times drift between machines and from minute to minute, a ratio of
neighbouring runs much less. `--isa AVX2` caps oneDNN's instruction set for both (ONEDNN_MAX_CPU_ISA), which is
how a bf16 machine trains like an AVX2/FMA-only one; digitlab then chooses fp32, as it would there.

Writes bench/results/vs_reference-<preset>-<isa>.json with the CPU, each pair and the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digitlab.core.hardware import cpu_info

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO.parent / "shared" / "bench" / "probe_fast.py"
PROBE_LINE = re.compile(r"train (?P<s>[\d.]+) s, test accuracy (?P<acc>[\d.]+)%")


def environment(isa: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    return env


def reference(data: Path, epochs: int, width: int, env: dict[str, str]) -> dict[str, float]:
    """One reference run: its training seconds (wall clock, as the script measures) and test accuracy."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, str(PROBE), str(data), str(epochs), str(width)], env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    m = PROBE_LINE.search(out)
    if m is None:
        raise SystemExit(f"the reference printed no result line:\n{out}")
    # Its training time (whole seconds; data loading and the test pass excluded, as in metrics.json's
    # train_seconds) is what the ratio uses; the process's wall time is kept beside it.
    return {"train_seconds": float(m["s"]), "wall_seconds": round(time.perf_counter() - t0, 1),
            "test_accuracy": float(m["acc"]) / 100}  # fmt: skip


def recipe(preset: str, seed: int, sets: list[str], run: Path, env: dict[str, str]) -> dict[str, object]:
    """One `digitlab train` run: training seconds, test accuracy, precision and CPU as metrics.json has them."""
    cmd = [sys.executable, "-m", "digitlab", "train", "--preset", preset, "--seed", str(seed), "--out", str(run)]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    m = json.loads((run / "metrics.json").read_text())
    return {"train_seconds": m["train_seconds"], "test_accuracy": m["test"]["accuracy"],
            "precision": m.get("precision"), "recipe": m.get("recipe"), "cpu": m.get("cpu")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as `digitlab train --set`")
    ap.add_argument("--isa", default=None, help="cap oneDNN's ISA for both runs, e.g. AVX2 (an fp32-only CPU)")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "mnist")
    ap.add_argument("--ref-epochs", type=int, default=6)
    ap.add_argument("--ref-width", type=int, default=16)
    ap.add_argument("--name", default=None, help="results file tag (default: the preset)")
    args = ap.parse_args()
    env = environment(args.isa)
    cpu = cpu_info(isa_cap=args.isa or "")
    print(f"{cpu.describe()}{f', oneDNN capped at {args.isa}' if args.isa else ''}", flush=True)

    refs = [reference(args.data, args.ref_epochs, args.ref_width, env)]
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            ours = recipe(args.preset, seed, args.set, Path(tmp) / f"run-{seed}", env)
            refs.append(reference(args.data, args.ref_epochs, args.ref_width, env))
            around = statistics.mean(r["train_seconds"] for r in refs[-2:])
            pairs.append({"seed": seed, **ours, "reference_seconds": around,
                          "ratio": round(ours["train_seconds"] / around, 3)})  # fmt: skip
            print(f"seed {seed}: {ours['train_seconds']:.1f} s, test {ours['test_accuracy']:.2%}; reference "
                  f"{around:.1f} s -> ratio {pairs[-1]['ratio']:.2f}", flush=True)  # fmt: skip
    summary = {
        "preset": args.preset, "set": args.set, "isa_cap": args.isa, "cpu": cpu.describe(),
        "cpu_family_model": cpu.family_model or "unknown",
        "command": "python bench/vs_reference.py " + " ".join(sys.argv[1:]),
        "test_accuracy_mean": statistics.mean(p["test_accuracy"] for p in pairs),
        "train_seconds_mean": statistics.mean(p["train_seconds"] for p in pairs),
        "reference_seconds_mean": statistics.mean(r["train_seconds"] for r in refs),
        "reference_test_accuracy_mean": statistics.mean(r["test_accuracy"] for r in refs),
        "ratio_mean": round(statistics.mean(p["ratio"] for p in pairs), 3),
        "pairs": pairs, "references": refs,
    }  # fmt: skip
    print(f"{args.preset}: test {summary['test_accuracy_mean']:.2%} (mean of {len(pairs)}), "
          f"{summary['train_seconds_mean']:.1f} s vs reference {summary['reference_seconds_mean']:.1f} s: "
          f"ratio {summary['ratio_mean']:.2f}")  # fmt: skip
    out = REPO / "bench" / "results" / f"vs_reference-{args.name or args.preset}-{(args.isa or 'native').lower()}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
