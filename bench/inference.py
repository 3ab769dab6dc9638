"""In-process inference: single-image latency (preprocess + predict) and batch throughput, per backend.

    python bench/inference.py [RUN] [--calls 300] [--out bench/results/inference.json]

Targets (real-world input issue): single image p50 <= 0.5 ms with onnxruntime on 1 thread; batch throughput
>= 5,000 images/s on 2 cores. RUN defaults to the bundled model and needs model.onnx / model.int8.onnx
(`digitlab export RUN --format onnx --int8`). Single image: a 28x28 MNIST test digit as PNG bytes and a
280x280 canvas PNG, one `Predictor.predict` call each (decode, preprocess, model with the run's TTA,
calibration, "not a digit" rule), 1 thread. Batch: the 10,000 MNIST test digits as arrays, either straight to
the model (`predict_array`, already MNIST-format) or through preprocessing too (`predict`), 2 threads.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import digitlab
from digitlab.data import load_dataset
from digitlab.predict import Predictor

BACKENDS = ("torch", "onnx", "onnx-int8")


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def canvas() -> bytes:
    im = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(im).line([(90, 60), (190, 60), (120, 225)], fill=(0, 0, 0, 255), width=22)
    return png(im)


def latency_ms(predictor: Predictor, data: bytes, calls: int) -> dict[str, float]:
    for _ in range(10):
        predictor.predict(data)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        predictor.predict(data)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50": round(statistics.median(times), 3), "p99": round(times[int(0.99 * (len(times) - 1))], 3)}


def throughput(fn, images: np.ndarray) -> float:
    fn(images[:256])
    t0 = time.perf_counter()
    fn(images)
    return round(len(images) / (time.perf_counter() - t0), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, default=Path(digitlab.__file__).parent / "pretrained" / "fast")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    test = load_dataset("mnist").test
    inputs = {"mnist_png": png(Image.fromarray(test.images[0])), "canvas_png": canvas()}
    results = {}
    for backend in BACKENDS:
        one = Predictor.from_run(args.run, backend=backend, threads=1)
        row = {name: latency_ms(one, data, args.calls) for name, data in inputs.items()}
        two = Predictor.from_run(args.run, backend=backend, threads=2)
        row["batch_model_only_per_s"] = throughput(two.predict_array, test.images)
        row["batch_with_preprocess_per_s"] = throughput(lambda x, p=two: p.predict(list(x)), test.images[:2000])
        results[backend] = row
        print(f"{backend:>10}: 28x28 PNG p50 {row['mnist_png']['p50']} ms p99 {row['mnist_png']['p99']} ms | "
              f"280x280 canvas p50 {row['canvas_png']['p50']} ms p99 {row['canvas_png']['p99']} ms | "
              f"batch {row['batch_model_only_per_s']:,.0f}/s model only, "
              f"{row['batch_with_preprocess_per_s']:,.0f}/s with preprocessing", flush=True)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
