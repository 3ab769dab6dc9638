"""What a user gets from a run on every digit source: refused (empty / not a digit), accuracy on answered, read.

    PYTHONPATH=src python bench/refusal.py --label after                   # this checkout's bundled model
    PYTHONPATH=/other/src python bench/refusal.py --label before --run /other/src/digitlab/pretrained/default

Scores the reported real-world sets in data/realworld/ (MNIST *test* digits and fonts: canvas, photo, fonts,
lowres, pen, page), 1,000 glyphs of the reported handwriting fonts drawn with a marker ("thick-font", made here:
`synth.thick_font_set`) and 2,000 MNIST test digits through `Predictor.predict` (the path `digitlab predict` and the
API take, without test-time augmentation), and the AUROC of the run's "not a digit" score, digits (MNIST test,
and every source pooled) against the test-side out-of-distribution sets (Fashion-MNIST test, noise, letters in
other fonts), as 28x28 arrays straight to the model and, as a user uploading them gets them, through
`Predictor.predict` ("ood_served": empty, not a digit, answered and the answers' median confidence). Only public
APIs are used, so the same script measures an older checkout. Each label's figures
go into bench/results/realworld-refusal.json (other labels are kept).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from digitlab.core.rundir import BUNDLED

REPO = Path(__file__).resolve().parents[1]
SETS = ("canvas", "photo", "fonts", "lowres", "pen", "page")
MNIST_N = 2000
THICK_FONT_N = 1000
OOD_N = {"fashion_mnist": 2000, "noise": 500, "letters": 500}


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or "unknown"


def score(predictor, images, labels, kinds) -> tuple[dict, np.ndarray]:
    """Refusals and accuracy of `predictor` on one set (by kind's first part too), and the framed inputs."""
    preds = []
    for start in range(0, len(images), 256):
        preds += predictor.predict([images[i] for i in range(start, min(len(images), start + 256))])
    status = np.array([p.status for p in preds])
    digit = np.array([-1 if p.digit is None else p.digit for p in preds])
    inputs = np.stack([p.input for p in preds])

    def figures(m: np.ndarray) -> dict:
        answered = m & (status == "ok")
        right = answered & (digit == labels)
        return {"n": int(m.sum()), "empty": float((status[m] == "empty").mean()),
                "not_a_digit": float((status[m] == "not_a_digit").mean()),
                "refused": float((status[m] != "ok").mean()),
                "answered_accuracy": float(right.sum() / max(1, answered.sum())),
                "read": float(right.sum() / m.sum())}  # fmt: skip

    out = figures(np.ones(len(preds), bool))
    groups = np.array([str(k).split("/")[0] for k in kinds])
    if len(set(groups)) > 1:
        out["by_kind"] = {g: figures(groups == g) for g in sorted(set(groups))}
    return out, inputs


def auroc(rule, logits_of, digits: np.ndarray, ood: dict[str, np.ndarray]) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    inside = rule.digit_score(logits_of(digits), digits)
    result = {}
    for name, images in ood.items():
        outside = rule.digit_score(logits_of(images), images)
        y = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
        result[name] = float(roc_auc_score(y, np.r_[inside, outside]))
    return result


def served_ood(predictor, rule, digits: np.ndarray, ood: dict[str, np.ndarray]) -> dict[str, dict]:
    """What a user uploading each out-of-distribution set gets: `Predictor.predict`'s answers (framed by
    `preprocess` first, as served), and the AUROC of the rule's score, MNIST test digits as served against
    these (an image found empty scores lowest)."""
    from sklearn.metrics import roc_auc_score

    inside = rule.digit_score(predictor.logits_array(digits), digits)
    out = {}
    for name, images in ood.items():
        preds = predictor.predict(list(images))
        status = np.array([p.status for p in preds])
        inputs = np.stack([p.input for p in preds])
        score = rule.digit_score(predictor.logits_array(inputs), inputs)
        outside = np.where(status == "empty", min(inside.min(), score.min()) - 1.0, score)
        answered = [max(p.probabilities) for p, s in zip(preds, status, strict=True) if s == "ok"]
        y = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
        out[name] = {"empty": float(np.mean(status == "empty")), "not_a_digit": float(np.mean(status == "not_a_digit")),
                     "answered": float(np.mean(status == "ok")),
                     "median_confidence_answered": float(np.median(answered)) if answered else None,
                     "auroc": float(roc_auc_score(y, np.r_[inside, outside]))}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="run directory (default: the bundled fast model)")
    ap.add_argument("--label", default="after")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "realworld")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "realworld-refusal.json")
    args = ap.parse_args(argv)

    from digitlab.data.datasets import load_dataset
    from digitlab.data.fonts import find_fonts
    from digitlab.data.realworld import load_realworld
    from digitlab.data.synth import thick_font_set
    from digitlab.evaluation.ood_sets import ood_images
    from digitlab.inference.predict import Predictor

    run = args.run or BUNDLED
    predictor = Predictor.from_run(run, tta=False, threads=1)
    t0 = time.perf_counter()
    sources, framed = {}, []
    mnist = load_dataset("mnist").test
    sources["mnist_test"], first = score(predictor, list(mnist.images[:MNIST_N]), mnist.labels[:MNIST_N],
                                         np.array(["mnist"] * MNIST_N))  # fmt: skip
    framed.append(first)
    for name in SETS:
        ds = load_realworld(args.data / f"{name}.npz")
        sources[name], inputs = score(predictor, ds.images, ds.labels, ds.kinds)
        framed.append(inputs)
        print(f"{name}: {json.dumps({k: v for k, v in sources[name].items() if k != 'by_kind'})}", flush=True)
    # Handwriting-font glyphs drawn with a marker on a canvas (8-24% of the height), in the reported fonts (every
    # other handwriting font: what `data.fonts.handwriting_fonts("report")` returns, spelt out for older checkouts).
    report_fonts = [f for f in find_fonts() if f[2] == "handwriting"][1::2]
    if report_fonts:
        ds = thick_font_set(report_fonts, THICK_FONT_N, seed=503)
        sources["thick-font"], inputs = score(predictor, ds.images, ds.labels, ds.kinds)
        framed.append(inputs)
        print(f"thick-font: {json.dumps({k: v for k, v in sources['thick-font'].items() if k != 'by_kind'})}")
    ood, described = ood_images("test", tuple(OOD_N.items()))
    rule = predictor.ood
    result = {
        "run": str(run), "rule": rule.to_dict() if rule else None, "sources": sources,
        "max_refused": max(s["refused"] for s in sources.values()),
        "auroc_mnist_test": auroc(rule, predictor.logits_array, framed[0], ood) if rule else None,
        "auroc_all_sources": auroc(rule, predictor.logits_array, np.concatenate(framed), ood) if rule else None,
        "ood_served": served_ood(predictor, rule, framed[0], ood) if rule else None,
        "ood_data": described, "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc.update({"cpu": cpu(), "command": "PYTHONPATH=src OMP_NUM_THREADS=1 python bench/refusal.py --label LABEL"})
    doc.setdefault("labels", {})[args.label] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{args.label}: max refused {result['max_refused']:.2%}; AUROC (MNIST test) {result['auroc_mnist_test']}; "
          f"AUROC (all sources) {result['auroc_all_sources']} -> {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
