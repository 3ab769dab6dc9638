"""Training speed options, measured rather than assumed: precision x channels_last x torch.compile.

    python bench/train_options.py [--device auto] [--epochs 2] [--out bench/results/train_options.json]

Each combination trains the `fast` preset for `--epochs` epochs on the full training set (the test set is not
read) and reports the last epoch's training images/s — after the first epoch, so torch.compile's compile time
and allocator warm-up are excluded — and the first epoch's extra seconds (compile time, mostly). `precision`
"auto" is bf16 autocast on CPUs with native bf16 and fp16 AMP on CUDA. On a CUDA machine this is the
"AMP, channels_last, torch.compile where it pays" measurement; on CPU it checks the defaults `fast` uses.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

from digitlab.core.config import TrainConfig, get_preset
from digitlab.evaluation.pipeline import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="train on fewer images (smoke runs)")
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    combos = itertools.product(["fp32", "auto"], [False, True], [c == "on" for c in args.compile])
    with tempfile.TemporaryDirectory() as tmp:
        for i, (precision, channels_last, compiled) in enumerate(combos):
            config = get_preset("fast").override(
                epochs=args.epochs, device=args.device, precision=precision, limit=args.limit,
                eval_every=10**6, tta=False,
            ).set(channels_last=channels_last, compile=compiled)  # fmt: skip
            result = train(config, Path(tmp) / str(i), evaluate_test=False)
            secs = [float(r["seconds"]) for r in result.history]
            last = secs[-1] - (secs[-2] if len(secs) > 1 else 0.0)
            images = _images_per_epoch(config)
            rows.append({
                "precision": precision, "channels_last": channels_last, "compile": compiled,
                "device": result.metrics["device"], "last_epoch_seconds": round(last, 2),
                "images_per_s": round(images / last, 1), "first_epoch_extra_s": round(secs[0] - last, 2),
                "val_accuracy": result.metrics["val"]["accuracy"],
            })  # fmt: skip
            r = rows[-1]
            print(f"precision={precision:<4} channels_last={channels_last!s:<5} compile={compiled!s:<5} "
                  f"{r['images_per_s']:>8,.0f} images/s  first epoch +{r['first_epoch_extra_s']:.1f} s  "
                  f"val {r['val_accuracy']:.2%}  ({r['device']})", flush=True)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


def _images_per_epoch(config: TrainConfig) -> int:
    """Images one epoch trains on: whole batches of the training split (the loop drops the ragged last one)."""
    from digitlab.data.datasets import load_dataset, split_data

    n = len(split_data(load_dataset(config.data), config)[0])
    return n // config.batch_size * config.batch_size


if __name__ == "__main__":
    main()
