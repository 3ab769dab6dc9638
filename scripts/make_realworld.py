"""Regenerate digitlab's non-MNIST evaluation sets in data/realworld/ (deterministic for given seeds).

Usage (from the repository root):

    python scripts/make_realworld.py                       # all three sets, default sizes and seeds
    python scripts/make_realworld.py --sets canvas photo   # only some
    python scripts/make_realworld.py --canvas 2000 --photo 1000 --out data/realworld

Writes canvas.npz (MNIST test digits re-drawn as 280x280 browser-canvas exports), photo.npz (the same kind of
digits photographed on paper, as JPEG bytes) and fonts.npz (digits 0-9 from the fonts in
digitlab.realworld.FONTS, each with `--font-variants` images per digit). The fonts come from Debian
packages; install them first, or the fonts set holds only the fonts this machine has (it says which):

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
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from digitlab.data import load_dataset
from digitlab.realworld import FONTS, SET_NAMES, canvas_set, find_fonts, font_set, photo_set, save_realworld

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", choices=SET_NAMES, default=list(SET_NAMES))
    ap.add_argument("--out", type=Path, default=REPO / "data" / "realworld")
    ap.add_argument("--canvas", type=int, default=2000, help="number of canvas images")
    ap.add_argument("--photo", type=int, default=1000, help="number of photo images")
    ap.add_argument("--font-variants", type=int, default=4, help="images per font and digit")
    ap.add_argument("--seed", type=int, default=0, help="base seed: canvas uses it, photo +1, fonts +2")
    args = ap.parse_args(argv)

    libs = {lib: version(lib) for lib in ("numpy", "scipy", "pillow")}
    mnist = load_dataset("mnist").test
    for name in args.sets:
        t0 = time.perf_counter()
        meta: dict = {"seed": args.seed, "libraries": libs, "script": "scripts/make_realworld.py"}
        if name == "canvas":
            ds = canvas_set(mnist, args.canvas, args.seed)
        elif name == "photo":
            ds = photo_set(mnist, args.photo, args.seed + 1)
        else:
            fonts = find_fonts()
            missing = sorted({pkg for pkg, file, _ in FONTS if file not in {f for f, _, _ in fonts}})
            if missing:
                print(f"fonts: not installed here, left out: {', '.join(missing)}", file=sys.stderr)
            ds = font_set(args.seed + 2, fonts=fonts, variants=args.font_variants)
            used = sorted({o.removeprefix("font:") for o in ds.origins})
            meta["fonts"] = used
            meta["font_packages"] = sorted({pkg for pkg, file, _ in FONTS if file in used})
        meta["seed"] = {"canvas": args.seed, "photo": args.seed + 1, "fonts": args.seed + 2}[name]
        path = save_realworld(ds, args.out / f"{name}.npz", meta)
        counts = np.bincount(ds.labels, minlength=10).tolist()
        print(f"{name}: {len(ds):,} images, per digit {counts}, {path.stat().st_size / 1e6:.2f} MB -> {path} "
              f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
