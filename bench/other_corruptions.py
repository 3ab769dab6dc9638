"""Corruptions outside the robustness suite, on the served path: what is refused, and why, and what is read.

    python bench/other_corruptions.py --label after [--run RUN] [--n 1000]

The "not a digit" rule is fitted to keep the suite's 15 corruptions (`digitlab calibrate`); these are others,
never fitted on: Gaussian noise (three strengths, on black paper and inverted), speckle, low contrast, faint ink,
Gaussian blur, JPEG at quality 8, pixelation, elastic warps, inversion, thinner and fatter strokes, occlusion, salt,
and a 224x224 RGB upscale. RUN's validation digits (`--n` of them, after the first 1,000, seeded) go through
`Predictor.predict` (no TTA, as `digitlab serve`); per corruption the share answered `empty`, `not_a_digit`, and
read right. A report of how the refusals generalise: it chooses nothing. Each label's figures go into
bench/results/other-corruptions.json (other labels are kept).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from digitlab.core.hardware import cpu_info
from digitlab.core.rundir import BUNDLED, RunDir
from digitlab.data.datasets import load_dataset, split_data
from digitlab.inference.predict import Predictor

OUT = Path(__file__).resolve().parent / "results" / "other-corruptions.json"
Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0, 255).astype(np.uint8)


def _jpeg(im: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def _elastic(im: np.ndarray, rng: np.random.Generator, alpha: float = 34, sigma: float = 4) -> np.ndarray:
    dx, dy = (ndimage.gaussian_filter(rng.uniform(-1, 1, im.shape), sigma) * alpha for _ in range(2))
    yy, xx = np.mgrid[: im.shape[0], : im.shape[1]]
    return _u8(ndimage.map_coordinates(im.astype(float), [yy + dy, xx + dx], order=1))


def _occlude(im: np.ndarray, rng: np.random.Generator, side: int = 6) -> np.ndarray:
    out = im.copy()
    r, c = rng.integers(4, 28 - 4 - side, 2)
    out[r : r + side, c : c + side] = 0
    return out


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian noise 60": lambda im, rng: _u8(im + rng.normal(0, 60, im.shape)),
    "gaussian noise 80": lambda im, rng: _u8(im + rng.normal(0, 80, im.shape)),
    "gaussian noise 100": lambda im, rng: _u8(im + rng.normal(0, 100, im.shape)),
    "gaussian noise 80, dark on white": lambda im, rng: _u8(255 - im + rng.normal(0, 80, im.shape)),
    "speckle": lambda im, rng: _u8(im * (1 + rng.normal(0, 0.5, im.shape))),
    "contrast 0.3": lambda im, rng: _u8(im * 0.3 + 90),
    "faint ink (a quarter)": lambda im, rng: _u8(im * 0.25),
    "gaussian blur 1.5": lambda im, rng: _u8(ndimage.gaussian_filter(im.astype(float), 1.5)),
    "JPEG quality 8": lambda im, rng: _jpeg(im, 8),
    "pixelate to 7x7": lambda im, rng: np.asarray(
        Image.fromarray(im).resize((7, 7), Image.Resampling.BOX).resize((28, 28), Image.Resampling.NEAREST)
    ),
    "elastic": _elastic,
    "inverted": lambda im, rng: 255 - im,
    "thinner (2x2 erosion)": lambda im, rng: ndimage.grey_erosion(im, size=(2, 2)),
    "fatter (3x3 dilation)": lambda im, rng: ndimage.grey_dilation(im, size=(3, 3)),
    "occluded (6x6 square)": _occlude,
    "salt (15%)": lambda im, rng: np.where(rng.random(im.shape) < 0.15, 255, im).astype(np.uint8),
    "224x224 RGB upscale": lambda im, rng: np.asarray(
        Image.fromarray(im).resize((224, 224), Image.Resampling.BILINEAR).convert("RGB")
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=BUNDLED)
    parser.add_argument("--label", default="after")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    _, val = split_data(load_dataset("mnist"), RunDir(args.run).read_config())
    images, labels = val.images[1000 : 1000 + args.n], val.labels[1000 : 1000 + args.n]
    predictor = Predictor.from_run(args.run, tta=False)
    t0, result = time.perf_counter(), {}
    for k, (name, corrupt) in enumerate(CORRUPTIONS.items()):
        rng = np.random.default_rng(1000 + k)
        answers = predictor.predict([corrupt(im, rng) for im in images])
        status = np.array([a.status for a in answers])
        digit = np.array([-1 if a.digit is None else a.digit for a in answers])
        result[name] = {"empty": float(np.mean(status == "empty")),
                        "not_a_digit": float(np.mean(status == "not_a_digit")),
                        "read": float(np.mean((status == "ok") & (digit == labels)))}  # fmt: skip
        r = result[name]
        print(f"{name:34s} empty {r['empty']:6.2%}  not a digit {r['not_a_digit']:6.2%}  read {r['read']:6.2%}")
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc.update({"command": "python bench/other_corruptions.py --label LABEL", "cpu": cpu_info().describe(),
                "n": args.n, "digits": "validation split of the run's config, digits 1,000 on"})  # fmt: skip
    doc.setdefault("labels", {})[args.label] = {"run": str(args.run), "corruptions": result,
                                                 "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
