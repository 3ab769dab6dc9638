"""Benchmark batch prediction: images/s end to end over a folder of PNGs (decoding and preprocessing included).

    digitlab export RUN --format onnx
    python bench/batch_predict.py RUN                       # 20,000 MNIST test digits as 28x28 PNGs, onnx
    python bench/batch_predict.py RUN --n 2000 --size 256 --pool process thread --tta off --json out.json

Target (batch-prediction issue): >= 2,000 images/s on 2 cores with the ONNX backend. The PNGs are written
first (not timed) into a temporary folder, 1,000 per subfolder, then read back with `predict_files(...,
recursive=True)` into a CSV; the time runs from listing the folder to the last row flushed, pool start-up
included. Each pool runs once per `--tta` mode: off (what `digitlab predict` does unless given `--tta`) and
on (five forward passes per image, the run's test-time augmentation). `--size S` paints each digit dark on
a white SxS canvas (a scan, not an MNIST crop). `--decode-only` replaces preprocessing by decode + resize (a
diagnostic: what the pipeline costs around `preprocess`).
The machine's load average and the CPU time spent (this process and its workers) are printed with the figures:
on a shared machine the throughput moves with the CPU share the job gets; the CPU per image does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from digitlab.data.datasets import load_dataset
from digitlab.inference.batch import default_workers, predict_files


def decode_only(path: str) -> tuple[str, np.ndarray | None, str | None]:
    """Decode and squash to 28x28 greyscale: the pipeline's own cost, without `digitlab.data.preprocess`."""
    with Image.open(path) as im:
        im = im.convert("L")
        if im.size != (28, 28):
            im = im.resize((28, 28), Image.Resampling.BOX)
        return "ok", 255 - np.asarray(im) if im.getpixel((0, 0)) > 127 else np.asarray(im), None


def cpu_seconds() -> float:
    """CPU time of this process, of its children that have ended (workers joined under spawn), and of its live
    descendants with what they reaped (the fork server, whose children the workers are; Linux /proc)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + live_descendants_cpu(os.getpid())


def live_descendants_cpu(pid: int) -> float:
    """Seconds of CPU used by the live descendants of `pid` and by the children they reaped (0 without /proc)."""
    parent_of, ticks = {}, {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent_of[int(entry.name)] = int(fields[1])
            ticks[int(entry.name)] = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    total, todo = 0, [p for p, parent in parent_of.items() if parent == pid]
    while todo:
        p = todo.pop()
        total += ticks[p]
        todo.extend(c for c, parent in parent_of.items() if parent == p)
    return total / os.sysconf("SC_CLK_TCK")


def write_pngs(folder: Path, n: int, size: int) -> np.ndarray:
    """`n` MNIST test digits (cycled) as PNGs in folder/<i // 1000>/<i>.png; returns their labels."""
    test = load_dataset("mnist").test
    labels = np.resize(test.labels, n)
    for i in range(n):
        a = test.images[i % len(test)]
        im = Image.fromarray(a)
        if size != 28:  # a scan: dark ink on white paper, the digit filling a bigger canvas
            im = Image.fromarray(255 - a).resize((size, size), Image.Resampling.BILINEAR)
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        im.save(sub / f"{i:06d}.png")
    return labels


def accuracy(out: Path, labels: np.ndarray) -> float:
    """Share of rows whose digit is the label (a sanity check that the pipeline predicts the right files)."""
    import csv

    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    hits = sum(r["digit"] == str(labels[int(Path(r["file"]).stem)]) for r in rows)
    return hits / max(1, len(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run directory (with model.onnx for the onnx backends)")
    parser.add_argument("--n", type=int, default=20_000, help="number of PNGs")
    parser.add_argument("--size", type=int, default=28, help="canvas side in pixels (28: MNIST crops as they are)")
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--pool", nargs="+", default=["process"], choices=["process", "thread", "auto"])
    parser.add_argument("--workers", type=int, default=None, help=f"default: one per CPU ({default_workers()})")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime / torch intra-op threads")
    parser.add_argument("--tta", nargs="+", default=["off", "on"], choices=["off", "on"],
                        help="test-time augmentation modes to measure (default: both)")  # fmt: skip
    parser.add_argument("--decode-only", action="store_true", help="skip preprocessing (diagnostic)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    from digitlab.inference.predict import Predictor  # imports torch: not at the top, which spawned workers re-import

    workers = default_workers() if args.workers is None else args.workers
    with tempfile.TemporaryDirectory(prefix="digitlab-bench-") as tmp:
        folder = Path(tmp) / "png"
        t0 = time.perf_counter()
        labels = write_pngs(folder, args.n, args.size)
        print(f"wrote {args.n:,} {args.size}x{args.size} PNGs in {time.perf_counter() - t0:.1f} s", flush=True)
        results = []
        for k, (tta, pool) in enumerate((t, p) for t in args.tta for p in args.pool):
            t0 = time.perf_counter()
            predictor = Predictor.from_run(args.run, backend=args.backend, threads=args.threads, tta=tta == "on")
            load_s = time.perf_counter() - t0
            out = Path(tmp) / f"results-{k}-{pool}-tta-{tta}.csv"
            load_before = os.getloadavg()[0]
            prepare = decode_only if args.decode_only else None
            marks: list[tuple[float, int]] = []  # (time, rows done) after each batch: start-up vs steady state
            cpu0 = cpu_seconds()
            s = predict_files(predictor, [folder], out, recursive=True, workers=workers, pool=pool,
                              batch_size=args.batch_size, prepare=prepare,
                              progress=lambda done, total, m=marks: m.append((time.perf_counter(), done)))  # fmt: skip
            cpu = cpu_seconds() - cpu0  # this process and its (joined) workers
            (t_first, n_first), (t_last, n_last) = marks[1], marks[-1]
            steady = (n_last - n_first) / (t_last - t_first) if t_last > t_first else float("nan")
            first_batch_s = t_first - marks[0][0]
            row = {"pool": pool, "tta": tta == "on", "workers": workers, "n": s.written, "size": args.size,
                   "backend": args.backend, "batch_size": args.batch_size, "decode_only": args.decode_only,
                   "seconds": round(s.seconds, 2),
                   "images_per_second": round(s.images_per_second, 1), "first_batch_seconds": round(first_batch_s, 2),
                   "steady_images_per_second": round(steady, 1), "cpu_ms_per_image": round(cpu / s.written * 1e3, 3),
                   "cores_used": round(cpu / s.seconds, 2), "statuses": s.counts,
                   "accuracy_vs_label": round(accuracy(out, labels), 4), "model_load_seconds": round(load_s, 2),
                   "cpus": os.cpu_count(), "affinity": default_workers(),
                   "max_rss_mb_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                   "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}  # fmt: skip
            results.append(row)
            print(f"{pool:>7} x{workers}, TTA {tta:>3}: {s.written:,} images in {s.seconds:.2f} s = "
                  f"{s.images_per_second:,.0f} images/s end to end (first batch after {first_batch_s:.1f} s, then "
                  f"{steady:,.0f} images/s; "
                  f"{row['cpu_ms_per_image']:.2f} ms CPU per image, {row['cores_used']:.2f} cores busy; "
                  f"{args.backend}, {args.size}px, statuses {s.counts}, accuracy vs label "
                  f"{row['accuracy_vs_label']:.2%}; load avg {row['loadavg_1min_before_after']})",
                  flush=True)  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
