"""In-process inference: single-image latency (preprocess + predict) and batch throughput, per backend and TTA mode.

    python bench/inference.py [RUN] [--calls 300] [--backends onnx] [--tta off on] [--out bench/results/inference.json]

Targets (real-world input issue): single image p50 <= 0.5 ms with onnxruntime on 1 thread; batch throughput
>= 5,000 images/s on 2 cores. RUN defaults to the bundled model and needs model.onnx / model.int8.onnx
(`digitlab export RUN --format onnx --int8`).

- `preprocess_ms`: `digitlab.data.preprocess` alone, 1 thread: a 28x28 MNIST test digit as PNG bytes through the
  fast path (already MNIST format: not re-framed) and through the general path (`fast=False`), and a 280x280
  canvas PNG (always the general path).
- Per backend and TTA mode ("tta_off": one forward pass per image, what serving does by default; "tta_on":
  the mean over five shifted copies): single image, one `Predictor.predict` call each (decode, preprocess,
  model, calibration, "not a digit" rule), 1 thread; batch, the 10,000 MNIST test digits as arrays, either
  straight to the model (`predict_array`, already MNIST format) or through preprocessing too (`predict`, on
  2,000 of them; preprocessing runs in the calling thread), model on 2 threads.

Latencies are p50/p99 over `--calls` calls after 10 warm-up calls; compare figures only from the same machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from digitlab.core.rundir import BUNDLED
from digitlab.data.datasets import load_dataset
from digitlab.data.preprocess import preprocess
from digitlab.inference.predict import BACKENDS, Predictor

TARGET_SINGLE_P50_MS, TARGET_BATCH_PER_S = 0.5, 5000.0


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def canvas() -> bytes:
    im = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(im).line([(90, 60), (190, 60), (120, 225)], fill=(0, 0, 0, 255), width=22)
    return png(im)


def latency_ms(fn: Callable[[], object], calls: int) -> dict[str, float]:
    """p50 and p99 of `fn()` in milliseconds, after 10 unmeasured calls."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50": round(statistics.median(times), 3), "p99": round(times[int(0.99 * (len(times) - 1))], 3)}


def throughput(fn: Callable[[np.ndarray], object], images: np.ndarray) -> float:
    fn(images[:256])
    t0 = time.perf_counter()
    fn(images)
    return round(len(images) / (time.perf_counter() - t0), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, default=BUNDLED)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--tta", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--batch", type=int, default=10_000, help="images for the model-only batch figure")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    test = load_dataset("mnist").test
    inputs = {"mnist_png": png(Image.fromarray(test.images[0])), "canvas_png": canvas()}
    prep = {
        "mnist_png_fast": latency_ms(lambda: preprocess(inputs["mnist_png"]), args.calls),
        "mnist_png_general": latency_ms(lambda: preprocess(inputs["mnist_png"], fast=False), args.calls),
        "canvas_png": latency_ms(lambda: preprocess(inputs["canvas_png"]), args.calls),
    }
    print("preprocess only (p50 ms): 28x28 PNG fast path {} / general path {}, 280x280 canvas {}".format(
        *(prep[k]["p50"] for k in ("mnist_png_fast", "mnist_png_general", "canvas_png"))), flush=True)  # fmt: skip
    backends: dict[str, dict[str, Any]] = {}
    for backend in args.backends:
        for mode in args.tta:
            tta = mode == "on"
            one = Predictor.from_run(args.run, backend=backend, threads=1, tta=tta)
            row: dict[str, Any] = {name: latency_ms(lambda d=data, p=one: p.predict(d), args.calls)
                                   for name, data in inputs.items()}  # fmt: skip
            two = Predictor.from_run(args.run, backend=backend, threads=2, tta=tta)
            row["batch_model_only_per_s"] = throughput(two.predict_array, test.images[: args.batch])
            row["batch_with_preprocess_per_s"] = throughput(lambda x, p=two: p.predict(list(x)), test.images[:2000])
            backends.setdefault(backend, {})[f"tta_{mode}"] = row
            print(f"{backend:>10} TTA {mode:>3}: 28x28 PNG p50 {row['mnist_png']['p50']} ms p99 "
                  f"{row['mnist_png']['p99']} ms | 280x280 canvas p50 {row['canvas_png']['p50']} ms p99 "
                  f"{row['canvas_png']['p99']} ms | batch {row['batch_model_only_per_s']:,.0f}/s model only, "
                  f"{row['batch_with_preprocess_per_s']:,.0f}/s with preprocessing", flush=True)  # fmt: skip
    result = {
        "bench": "inference",
        "run": str(args.run),
        "targets": {"single_p50_ms": TARGET_SINGLE_P50_MS, "batch_per_s": TARGET_BATCH_PER_S},
        "preprocess_ms": prep,
        "backends": backends,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },  # fmt: skip
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
