"""Time `digitlab.data.preprocess.preprocess` per input type, and check its outputs against a saved reference.

    OMP_NUM_THREADS=1 python bench/preprocess_speed.py --save-ref /tmp/preprocess_ref.npz   # before a change
    OMP_NUM_THREADS=1 python bench/preprocess_speed.py --compare /tmp/preprocess_ref.npz    # after it

Timing (p50 / p99 over --calls calls, one warm-up first) on: a 280x280 RGBA browser-canvas PNG with a thick
stroke (the REST API's usual request), a 28x28 greyscale MNIST digit PNG (batch prediction), a 1000x800
photo-like JPEG (uneven light, noise), and the same MNIST digit as a uint8 array (in-process calls).
The reference holds the outputs for the first --n images of data/realworld/{canvas,photo,fonts}.npz and --n
MNIST test digits as PNG bytes; --compare reports the max and mean abs pixel difference, the images whose
status changed and those that changed by more than --grey levels anywhere.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from digitlab.data.preprocess import preprocess


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def _mnist_test(n: int) -> np.ndarray:
    from digitlab.data.datasets import load_dataset

    test = load_dataset("mnist").test
    assert test is not None
    return test.images[:n]


def canvas_png() -> bytes:
    """A browser canvas: transparent everywhere except a thick black anti-aliased stroke (a '2')."""
    im = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.arc((70, 40, 210, 160), 200, 20, fill=(0, 0, 0, 255), width=22)
    d.line([(200, 110), (80, 240), (220, 240)], fill=(0, 0, 0, 255), width=22, joint="curve")
    return _png(np.asarray(im.filter(ImageFilter.GaussianBlur(1))))


def photo_jpeg() -> bytes:
    """A 1000x800 photo of a digit on paper: lighting gradient, noise, dark ink, JPEG quality 85."""
    rng = np.random.default_rng(0)
    h, w = 800, 1000
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paper = 200 - 40 * xx / w - 25 * yy / h
    ink = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(ink)
    d.line([(420, 200), (600, 200), (470, 620)], fill=255, width=30, joint="curve")
    cov = np.asarray(ink.filter(ImageFilter.GaussianBlur(2)), np.float32) / 255
    g = paper * (1 - 0.75 * cov) + rng.normal(0, 4, (h, w))
    rgb = np.stack([g * 1.02, g, g * 0.93], -1).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def timing(calls: int) -> dict[str, dict[str, float]]:
    digit = _mnist_test(1)[0]
    inputs = {
        "canvas_png_280": canvas_png(),
        "mnist_png_28": _png(digit),
        "mnist_array_28": digit,
        "photo_jpeg_1000x800": photo_jpeg(),
    }
    out = {}
    for name, src in inputs.items():
        n = calls if name != "photo_jpeg_1000x800" else max(20, calls // 5)
        preprocess(src)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            preprocess(src)
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        p50, p99 = statistics.median(times), times[min(n - 1, int(0.99 * n))]
        out[name] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "calls": n}
        print(f"{name:22s} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   ({n} calls)", flush=True)
    return out


def reference_inputs(n: int) -> dict[str, list]:
    from digitlab.data.realworld import load_realworld

    sets = {name: list(load_realworld(name).images[:n]) for name in ("canvas", "photo", "fonts")}
    sets["mnist_png"] = [_png(a) for a in _mnist_test(n)]
    return sets


def outputs(n: int) -> dict[str, np.ndarray]:
    res = {}
    for name, images in reference_inputs(n).items():
        t0 = time.perf_counter()
        preps = [preprocess(src) for src in images]
        dt = time.perf_counter() - t0
        print(f"{name:10s} {len(images)} images in {dt:.2f} s ({1e3 * dt / len(images):.2f} ms/image)", flush=True)
        res[f"{name}_images"] = np.stack([p.image for p in preps])
        res[f"{name}_status"] = np.array([p.status for p in preps])
        res[f"{name}_sw"] = np.array([p.stats.stroke_width for p in preps], np.float64)
    return res


def compare(new: dict[str, np.ndarray], ref_path: Path, grey: int) -> dict[str, dict[str, float]]:
    summary = {}
    with np.load(ref_path) as ref:
        for name in sorted({k.rsplit("_", 1)[0] for k in ref.files if k.endswith("_images")}):
            a = ref[f"{name}_images"].astype(np.int16)
            b = new[f"{name}_images"].astype(np.int16)
            sa, sb = ref[f"{name}_status"], new[f"{name}_status"]
            ok = (sa == "ok") & (sb == "ok")
            d = np.abs(a - b)
            per_image = d.reshape(len(d), -1).max(axis=1)
            changed_status = np.flatnonzero(sa != sb)
            big = np.flatnonzero(ok & (per_image > grey))
            sw_rel = np.abs(new[f"{name}_sw"] - ref[f"{name}_sw"]) / np.maximum(ref[f"{name}_sw"], 1e-6)
            summary[name] = {
                "images": len(a),
                "max_abs_diff": int(d[ok].max()) if ok.any() else 0,
                "mean_abs_diff": round(float(d[ok].mean()), 4) if ok.any() else 0.0,
                "identical": int((per_image[ok] == 0).sum()),
                "status_changed": changed_status.tolist(),
                f"changed_over_{grey}": big.tolist(),
                "stroke_width_max_rel_diff": round(float(sw_rel.max()), 4),
            }
            s = summary[name]
            print(
                f"{name:10s} max |diff| {s['max_abs_diff']:3d}  mean {s['mean_abs_diff']:.4f}  "
                f"identical {s['identical']}/{ok.sum()}  status changed {len(changed_status)} "
                f"{changed_status[:10].tolist()}  >{grey} levels: {len(big)} {big[:10].tolist()}  "
                f"stroke width rel {s['stroke_width_max_rel_diff']}"
            )
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=300, help="timed calls per input type")
    p.add_argument("--n", type=int, default=300, help="images per reference set")
    p.add_argument("--save-ref", type=Path, help="write the outputs here (before changing the code)")
    p.add_argument("--compare", type=Path, help="compare the outputs with this reference")
    p.add_argument("--grey", type=int, default=8, help="report images with a pixel changed by more than this")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args()
    result: dict[str, object] = {}
    if not args.no_timing:
        result["timing"] = timing(args.calls)
    if args.save_ref or args.compare:
        new = outputs(args.n)
        if args.save_ref:
            args.save_ref.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.save_ref, **new)
            print(f"reference written to {args.save_ref}")
        if args.compare:
            result["compare"] = compare(new, args.compare, args.grey)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
