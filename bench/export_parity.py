"""Export a run to ONNX (fp32 and int8) and check it over the full test set: parity, accuracy, size, latency.

    OMP_NUM_THREADS=1 python bench/export_parity.py runs/fast [--max-delta-pp 0.1] [--parity-n 10000]

Pass: fp32 ONNX probabilities within 1e-4 of PyTorch's, and int8 test accuracy within --max-delta-pp percentage
points of PyTorch's, on every test image (the run's test_limit is ignored). Exit code 1 on a failed check. The
figures are also recorded in RUN/metrics.json["export"].
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def latency_ms(forward, x: np.ndarray, repeats: int = 50) -> float:
    """Median wall time of one forward call, in milliseconds."""
    forward(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward(x)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("--max-delta-pp", type=float, default=0.1, help="allowed int8 accuracy loss, in pp")
    parser.add_argument("--parity-n", type=int, default=10_000, help="test images for the fp32 parity check")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from digitlab.inference.export import export_onnx
    from digitlab.model.forward import load_model

    t0 = time.perf_counter()
    e = export_onnx(args.run, int8=True, full_test=True, parity_n=args.parity_n,
                    progress=lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))  # fmt: skip
    delta_pp = 100 * (e["int8_test_accuracy"] - e["torch_test_accuracy"])

    model = load_model(args.run)
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        torch_ms = latency_ms(lambda a: model(torch.from_numpy(a)), x)
    sessions = {}
    for name in ("model.onnx", "model.int8.onnx"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        s = ort.InferenceSession(str(args.run / name), options, providers=["CPUExecutionProvider"])
        sessions[name] = latency_ms(lambda a, s=s: s.run(None, {"image": a}), x)

    parity_ok = e["onnx_max_abs_diff"] <= 1e-4
    int8_ok = delta_pp >= -args.max_delta_pp
    print(f"run                      {args.run}")
    print(f"model.onnx               {e['onnx_bytes']:>12,} bytes")
    print(f"model.int8.onnx          {e['onnx_int8_bytes']:>12,} bytes ({e['onnx_int8_bytes'] / e['onnx_bytes']:.0%})")
    print(f"fp32 max |dp| vs torch   {e['onnx_max_abs_diff']:>12.2e} on {e['parity_n']:,} test images "
          f"({'ok' if parity_ok else 'FAIL'}: <= 1e-4)")  # fmt: skip
    print(f"torch test accuracy      {e['torch_test_accuracy']:>12.4%} ({e['test_n']:,} images, TTA {e['tta']})")
    print(f"int8 test accuracy       {e['int8_test_accuracy']:>12.4%} ({delta_pp:+.2f} pp; "
          f"{'ok' if int8_ok else 'FAIL'}: >= -{args.max_delta_pp} pp)")  # fmt: skip
    print(f"int8 / torch agreement   {e['int8_agreement']:>12.4%}")
    print(f"batch-1 latency (1 thread): torch {torch_ms:.3f} ms, onnx fp32 {sessions['model.onnx']:.3f} ms, "
          f"onnx int8 {sessions['model.int8.onnx']:.3f} ms")  # fmt: skip
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0 if parity_ok and int8_ok else 1


if __name__ == "__main__":
    sys.exit(main())
