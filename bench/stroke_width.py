"""Fat pens: thinning at preprocessing time vs stroke-width augmentation at training time — which works?

    python bench/stroke_width.py runs/ens/fast-0 runs/abl/fast-thicken-0 --out bench/results/stroke_width.json

Each run is scored with `preprocess(thin=False)` and `preprocess(thin=True)` on digits of the runs' shared
validation split (never the test set: this chooses a default), three ways: as they are (MNIST format), re-drawn
as 280x280 canvas exports with the stored canvas set's 12-28 px pens, and re-drawn with a fat marker (36-56 px
pens); and glyphs of the handwriting fonts the `-tune` sets use (scripts/make_realworld.py), re-drawn with a
thick pen (8-24% of the height, `synth.thick_font_set`). "thick-font-choose" draws only the tune fonts that the
`glyphs` option never trains on (`data.fonts.handwriting_fonts("choose")`): the fair one for a `glyphs` run.
Give runs trained with `--set thicken=...`, `--set restroke=...` or `--set glyphs=...` beside the same recipe
without them (same seed and split).

    python bench/stroke_width.py runs/robust/fast-c30w24e10-0 runs/robust/robust-fat15-0 \
        runs/robust/robust-fat30-0 runs/robust/robust-rs15-0 --no-thin --out bench/results/stroke_width_robust.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from digitlab.core.rundir import RunDir
from digitlab.data.datasets import load_dataset, split_data
from digitlab.data.fonts import handwriting_fonts
from digitlab.data.preprocess import preprocess_array
from digitlab.data.synth import canvas_set, thick_font_set
from digitlab.evaluation.realworld import score_realworld
from digitlab.model.forward import load_model, predict_logits
from digitlab.training.ensemble import split_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=1000, help="digits per re-drawn set")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-thin", action="store_true", help="score without preprocess(thin=True) only")
    args = parser.parse_args()

    configs = [RunDir(r).read_config() for r in args.runs]
    if any(split_key(c) != split_key(configs[0]) for c in configs):
        raise SystemExit("the runs must share their validation split (same data, limit, val_fraction, split seed)")
    _, val = split_data(load_dataset(configs[0].data), configs[0])
    sets = {"canvas": canvas_set(val, args.n, seed=7), "fat-marker": canvas_set(val, args.n, seed=8, pen=(36, 56)),
            "thick-font": thick_font_set(handwriting_fonts("tune"), args.n, seed=501),
            "thick-font-choose": thick_font_set(handwriting_fonts("choose"), args.n, seed=502)}  # fmt: skip
    rows = []
    for run, config in zip(args.runs, configs, strict=True):
        model = load_model(RunDir(run))
        for thin in (False,) if args.no_thin else (False, True):
            row = {"run": str(run), "thicken": config.thicken, "thicken_reach": config.thicken_reach,
                   "restroke": config.restroke, "glyphs": config.glyphs, "thin": thin}  # fmt: skip
            x = np.stack([preprocess_array(im, thin=thin).image for im in val.images])
            row["mnist_val"] = float((predict_logits(model, x).argmax(1) == val.labels).mean())
            for name, ds in sets.items():
                row[name] = score_realworld(model, ds, thin=thin)["accuracy"]
            rows.append(row)
            print(f"{run.name:>18} thin={thin!s:<5}  MNIST val {row['mnist_val']:.2%}  canvas {row['canvas']:.2%}  "
                  f"fat-marker {row['fat-marker']:.2%}  thick-font {row['thick-font']:.2%}  "
                  f"unseen fonts {row['thick-font-choose']:.2%}", flush=True)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
