"""Where a recipe's training time goes on this CPU: augmentation, forward, backward, optimizer step, per operator.

    python bench/profile_train.py --preset fast                 # this CPU, the precision digitlab chooses
    python bench/profile_train.py --preset fast --isa AVX2      # as an fp32-only (AVX2) CPU would run it

Runs `--steps` training steps of the preset (its model, batch size, augmentation, optimizer and precision) on
MNIST training images after a warm-up, timing each phase with a wall clock and the whole under torch.profiler
for the per-operator table. Also the achieved GFLOP/s of forward + backward (counted from the convolution and
linear shapes: backward is twice the forward's multiply-adds) against the CPU's fp32 peak (cores x clock x
FMA lanes x 2). Writes bench/results/profile-<preset>-<isa>.json. `--isa` must be set before PyTorch starts,
so the script re-runs itself with ONEDNN_MAX_CPU_ISA set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_gflops(flags: frozenset[str], threads: int) -> dict[str, float]:
    """fp32 peak: threads x clock x (vector lanes x FMA units x 2 flops). Zen 4 runs AVX-512 on two 256-bit
    halves, so 512-bit vectors are counted as 16 lanes on one unit, which equals 8 lanes on two."""
    mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("cpu MHz"))  # fmt: skip
    per_cycle = 32 if "avx2" in flags and "fma" in flags else 8  # 2 FMA units x 8 fp32 lanes x 2, or SSE
    return {"clock_ghz": mhz / 1000, "flops_per_cycle": per_cycle, "threads": threads,
            "peak_gflops": threads * mhz / 1000 * per_cycle}  # fmt: skip


def conv_ceiling_gflops(repeats: int = 20) -> float:
    """What oneDNN's convolution reaches on this CPU at its best: a large 1x1 convolution (a matrix product,
    256 -> 256 channels on 64x64, channels_last, fp32). The nominal peak assumes the clock /proc/cpuinfo reports,
    which a cloud VM gives as its base clock; this is the ceiling the training kernels can actually approach."""
    import torch

    x = torch.rand(8, 256, 64, 64).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(256, 256, 1, bias=False).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(3):
            conv(x)
        t = time.perf_counter()
        for _ in range(repeats):
            conv(x)
        seconds = time.perf_counter() - t
    return 2 * 8 * 64 * 64 * 256 * 256 * repeats / seconds / 1e9


def forward_macs(model, x) -> int:
    """Multiply-adds of one forward pass, from the shapes conv and linear layers see (hooks)."""
    import torch
    from torch import nn

    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def profile(preset: str, steps: int, sets: list[str], variant: str = "") -> dict:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from digitlab.cli.train import parse_sets
    from digitlab.core.config import get_preset
    from digitlab.core.hardware import cpu_info
    from digitlab.data.datasets import load_dataset
    from digitlab.model.forward import to_tensor
    from digitlab.model.networks import build_model
    from digitlab.training.augment import augment_batch
    from digitlab.training.optim import make_optimizer, make_scheduler, precision_choice

    config = get_preset(preset, variant).set(**parse_sets(sets))
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device("cpu")
    cpu = cpu_info()
    precision = precision_choice(config.precision, device, cpu)
    amp = None if precision.dtype is None else getattr(torch, precision.dtype)
    x_all = to_tensor(load_dataset(config.data).train.images[:20_000])
    y_all = torch.from_numpy(load_dataset(config.data).train.labels[:20_000].astype("int64"))
    model = build_model(config.model, **config.model_args).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, config)
    sched = make_scheduler(opt, config, steps + 10)
    gen = torch.Generator().manual_seed(0)
    b = config.batch_size
    phases: dict[str, float] = defaultdict(float)

    def step(i: int, timed: bool) -> None:
        t = time.perf_counter()
        idx = torch.randint(len(x_all), (b,), generator=gen)
        # the loop's augmentation chain at its last epoch's image size; restroke's pen pool is not built here
        x, y = augment_batch(x_all[idx], y_all[idx], config, None, gen, done_epochs=config.epochs)
        x = x.contiguous(memory_format=torch.channels_last)
        marks = [("augmentation", time.perf_counter())]
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=config.label_smoothing)
        marks.append(("forward", time.perf_counter()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(("backward", time.perf_counter()))
        opt.step()
        sched.step()
        marks.append(("optimizer", time.perf_counter()))
        if timed:
            for name, m in marks:
                phases[name] += m - t
                t = m

    model.train()
    for i in range(10):  # warm-up: oneDNN picks and caches its kernels on the first calls
        step(i, False)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i, True)
    seconds = time.perf_counter() - t0
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(min(steps, 20)):
            step(i, False)
    table = prof.key_averages()
    top = sorted(table, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    macs = forward_macs(model.eval(), x_all[:1].contiguous(memory_format=torch.channels_last))
    images_per_s = steps * b / seconds
    achieved = 3 * 2 * macs * images_per_s / 1e9  # forward + backward (2x forward), 2 flops per multiply-add
    peak = peak_gflops(cpu.flags, torch.get_num_threads())
    ceiling = conv_ceiling_gflops()
    return {
        "preset": preset, "variant": variant, "set": sets, "cpu": cpu.describe(), "precision": precision.line(),
        "isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA"), "torch": torch.__version__, "batch_size": b,
        "steps": steps, "images_per_second": round(images_per_s),
        "seconds_per_epoch_55k": round(55_000 / images_per_s, 1),
        "phases_share": {k: round(v / seconds, 3) for k, v in phases.items()},
        "forward_macs_per_image": macs, "achieved_gflops": round(achieved, 2), **peak,
        "share_of_peak": round(achieved / peak["peak_gflops"], 4), "conv_ceiling_gflops": round(ceiling, 1),
        "share_of_ceiling": round(achieved / ceiling, 4),
        "top_operators": [{"name": e.key, "self_share": round(e.self_cpu_time_total / sum(
            x.self_cpu_time_total for x in table), 3), "calls": e.count} for e in top],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--isa", default=None, help="cap oneDNN's ISA, e.g. AVX2 (an fp32-only CPU)")
    ap.add_argument("--variant", default="", help="the preset's variant, e.g. fp32 (default: as defined)")
    ap.add_argument("--name", default=None, help="results file tag (default: the preset)")
    args = ap.parse_args()
    if args.isa and os.environ.get("ONEDNN_MAX_CPU_ISA") != args.isa:
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": args.isa}
        raise SystemExit(subprocess.call([sys.executable, *sys.argv], env=env))
    r = profile(args.preset, args.steps, args.set, args.variant)
    print(f"{r['cpu']}; {r['precision']}")
    print(
        f"{r['images_per_second']:,} images/s ({r['seconds_per_epoch_55k']} s per 55k-image epoch); "
        f"{r['achieved_gflops']} GFLOP/s of {r['peak_gflops']:.0f} nominal peak ({r['share_of_peak']:.1%}), of "
        f"{r['conv_ceiling_gflops']:.0f} reached by a large 1x1 convolution ({r['share_of_ceiling']:.1%})"
    )
    print("time: " + ", ".join(f"{k} {v:.0%}" for k, v in r["phases_share"].items()))
    for op in r["top_operators"][:10]:
        print(f"  {op['self_share']:6.1%}  {op['name']}")
    tag = f"{args.name or args.preset}-{(args.isa or 'native').lower()}"
    out = REPO / "bench" / "results" / f"profile-{tag}.json"
    out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
