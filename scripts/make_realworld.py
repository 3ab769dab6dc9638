"""Regenerate digitlab's non-MNIST evaluation sets in data/realworld/ (deterministic for given seeds).

Usage (from the repository root):

    python scripts/make_realworld.py                       # every set, default sizes and seeds
    python scripts/make_realworld.py --sets canvas photo   # only some
    python scripts/make_realworld.py --sets lowres-tune --out /tmp/sets  # elsewhere

Writes canvas.npz (MNIST test digits re-drawn as 280x280 browser-canvas exports), photo.npz (the same kind of
digits photographed on paper, as JPEG bytes), fonts.npz (digits 0-9 from the fonts in
digitlab.data.fonts.FONTS, each with `--font-variants` images per digit), and from `digitlab.data.synth`: lowres.npz
(low-resolution scans shown enlarged), pen.npz (thin and thick pens; every other image a glyph of a handwriting
font) and page.npz (a small digit on a big page). Each `NAME-tune.npz` is the same kind of set made from the
validation digits of the bundled run's split (MNIST training images; other fonts, other seeds): what
`digitlab calibrate` fits the "not a digit" rule on. The test-digit sets are only ever reported.

The fonts come from Debian packages; install them first, or the font sets hold only the fonts this machine has
(it says which):

    apt-get install fonts-breip fonts-bwht fonts-comic-neue fonts-dancingscript fonts-dkg-handwriting \\
        fonts-havana fonts-humor-sans fonts-kaushanscript fonts-klee \\
        fonts-kristi fonts-rufscript fonts-sjfonts fonts-tlwg-purisa-ttf fonts-tomsontalks fonts-urw-base35 \\
        fonts-yusei-magic fonts-dejavu-core fonts-dejavu-extra fonts-freefont-ttf fonts-liberation2 \\
        fonts-gnutypewriter fonts-jura fonts-opendyslexic

The same seeds, sizes, fonts and library versions (Pillow's JPEG encoder and FreeType, NumPy, SciPy) give
byte-identical images. Evaluation reads only the .npz files: `digitlab evaluate RUN --realworld`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from digitlab.core.config import TrainConfig
from digitlab.data.datasets import Split, load_dataset, stratified_split
from digitlab.data.fonts import FONTS, find_fonts, font_set, handwriting_fonts
from digitlab.data.realworld import SET_NAMES, save_realworld
from digitlab.data.synth import canvas_set, lowres_set, page_set, pen_set, photo_set, relabel
from digitlab.evaluation.refusal import TUNE_SETS

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "src" / "digitlab" / "pretrained" / "default"
SIZES = {"canvas": 2000, "photo": 1000, "lowres": 800, "pen": 500, "page": 400,
         "canvas-tune": 300, "photo-tune": 200, "lowres-tune": 800, "pen-tune": 500, "page-tune": 400}  # fmt: skip
TUNE_SEED = 100  # added to the base seed for the -tune sets


def validation_digits() -> tuple[Split, np.ndarray]:
    """The bundled run's validation split of MNIST's training images (made as `train.split_data` makes it; the
    run uses all the images, no `limit`), and each digit's index among those images."""
    config = TrainConfig.load(BUNDLE / "config.json")
    train = load_dataset(config.data).train
    _, index = stratified_split(train.labels, config.val_fraction, config.effective_split_seed)
    return train.subset(index), index


def make(name: str, seed: int, font_variants: int) -> tuple[object, dict]:
    """Set `name` (one of SET_NAMES or TUNE_SETS) and extra metadata."""
    base = name.removesuffix("-tune")
    tune = name != base
    split, index = validation_digits() if tune else (load_dataset("mnist").test, None)
    seed += TUNE_SEED if tune else 0
    n = SIZES.get(name, 0)
    meta: dict = {}
    if base == "canvas":
        ds = canvas_set(split, n, seed)
    elif base == "photo":
        ds = photo_set(split, n, seed + 1)
    elif base == "lowres":
        ds = lowres_set(split, n, seed + 10)
    elif base == "pen":
        fonts = handwriting_fonts("tune" if tune else "report")
        ds = pen_set(split, n, seed + 11, fonts)
        meta["fonts"] = [f for f, _, _ in fonts]
    elif base == "page":
        ds = page_set(split, n, seed + 12)
    else:
        fonts = find_fonts()
        missing = sorted({pkg for pkg, file, _ in FONTS if file not in {f for f, _, _ in fonts}})
        if missing:
            print(f"fonts: not installed here, left out: {', '.join(missing)}", file=sys.stderr)
        ds = font_set(seed + 2, fonts=fonts, variants=1 if tune else font_variants)
        used = sorted({o.removeprefix("font:") for o in ds.origins})
        meta["fonts"] = used
        meta["font_packages"] = sorted({pkg for pkg, file, _ in FONTS if file in used})
    if tune:
        ds = relabel(ds, "mnist-train", index, name) if index is not None else dataclasses.replace(ds, name=name)
    return ds, meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [*SET_NAMES, *TUNE_SETS]
    ap.add_argument("--sets", nargs="+", choices=names, default=names)
    ap.add_argument("--out", type=Path, default=REPO / "data" / "realworld")
    ap.add_argument("--font-variants", type=int, default=4, help="images per font and digit (fonts set)")
    ap.add_argument("--seed", type=int, default=0, help="base seed: canvas uses it, photo +1, fonts +2, ...")
    args = ap.parse_args(argv)

    libs = {lib: version(lib) for lib in ("numpy", "scipy", "pillow")}
    for name in args.sets:
        t0 = time.perf_counter()
        ds, meta = make(name, args.seed, args.font_variants)
        meta = {"seed": args.seed, "libraries": libs, "script": "scripts/make_realworld.py", **meta}
        path = save_realworld(ds, args.out / f"{name}.npz", meta)
        counts = np.bincount(ds.labels, minlength=10).tolist()
        print(f"{name}: {len(ds):,} images, per digit {counts}, {path.stat().st_size / 1e6:.2f} MB -> {path} "
              f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
