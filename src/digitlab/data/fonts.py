"""The digits 0-9 of installed fonts: which Debian font packages, their glyphs, and the real-world "fonts" set."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digitlab.core.errors import DataError
from digitlab.data.drawing import crop_ink, export_canvas, item_rng, param_columns, place
from digitlab.data.pixels import resize
from digitlab.data.realworld import CANVAS_MODES, RealWorldSet

# Fonts from Debian packages, as (package, file name under /usr/share/fonts/*/, style). Handwriting-like
# fonts first; ordinary print fonts give breadth (serif 1s, open 4s, crossed 7s). Left out: outline fonts
# (hollow strokes: fonts-ecolier-court, fonts-femkeklaver), which nobody draws.
FONTS: tuple[tuple[str, str, str], ...] = (
    ("fonts-breip", "breip/Breip.ttf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeBuild-Regular.otf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeConnect-Regular.otf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeCreate-Regular.otf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeLearn-Regular.otf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeMentor-Regular.otf", "handwriting"),
    ("fonts-bwht", "bwht/BecauseWeOrganize-Regular.otf", "handwriting"),
    ("fonts-comic-neue", "comic-neue/ComicNeue-Regular.otf", "handwriting"),
    ("fonts-comic-neue", "comic-neue/ComicNeue-Bold.otf", "handwriting"),
    ("fonts-comic-neue", "comic-neue/ComicNeue-Light.otf", "handwriting"),
    ("fonts-comic-neue", "comic-neue/ComicNeue-Italic.otf", "handwriting"),
    ("fonts-dancingscript", "dancingscript/DancingScript-Regular.otf", "handwriting"),
    ("fonts-dancingscript", "dancingscript/DancingScript-Bold.otf", "handwriting"),
    ("fonts-dkg-handwriting", "fifthhorseman/dkg.ttf", "handwriting"),
    ("fonts-dkg-handwriting", "fifthhorseman/dkgBd.ttf", "handwriting"),
    ("fonts-havana", "havana/Havana-Regular.otf", "handwriting"),
    ("fonts-humor-sans", "humor-sans/Humor-Sans.ttf", "handwriting"),
    ("fonts-kaushanscript", "kaushanscript/KaushanScript-Regular.otf", "handwriting"),
    ("fonts-klee", "klee/KleeOne-Regular.ttf", "handwriting"),
    ("fonts-klee", "klee/KleeOne-SemiBold.ttf", "handwriting"),
    ("fonts-kristi", "kristi/Kristi.ttf", "handwriting"),
    ("fonts-rufscript", "rufscript/Rufscript010.ttf", "handwriting"),
    ("fonts-sjfonts", "sjfonts/Delphine.ttf", "handwriting"),
    ("fonts-sjfonts", "sjfonts/SteveHand.ttf", "handwriting"),
    ("fonts-tlwg-purisa-ttf", "tlwg/Purisa.ttf", "handwriting"),
    ("fonts-tlwg-purisa-ttf", "tlwg/Purisa-Oblique.ttf", "handwriting"),
    ("fonts-tomsontalks", "tomsontalks/TomsonTalks.ttf", "handwriting"),
    ("fonts-urw-base35", "urw-base35/Z003-MediumItalic.otf", "handwriting"),
    ("fonts-yusei-magic", "yusei-magic/YuseiMagic-Regular.ttf", "handwriting"),
    ("fonts-dejavu-core", "dejavu/DejaVuSans.ttf", "print"),
    ("fonts-dejavu-core", "dejavu/DejaVuSans-Bold.ttf", "print"),
    ("fonts-dejavu-extra", "dejavu/DejaVuSans-Oblique.ttf", "print"),
    ("fonts-dejavu-core", "dejavu/DejaVuSansMono.ttf", "print"),
    ("fonts-dejavu-core", "dejavu/DejaVuSerif.ttf", "print"),
    ("fonts-dejavu-extra", "dejavu/DejaVuSans-ExtraLight.ttf", "print"),
    ("fonts-dejavu-extra", "dejavu/DejaVuSansCondensed.ttf", "print"),
    ("fonts-freefont-ttf", "freefont/FreeSans.ttf", "print"),
    ("fonts-freefont-ttf", "freefont/FreeSerif.ttf", "print"),
    ("fonts-freefont-ttf", "freefont/FreeSerifItalic.ttf", "print"),
    ("fonts-freefont-ttf", "freefont/FreeMono.ttf", "print"),
    ("fonts-liberation2", "liberation2/LiberationSans-Regular.ttf", "print"),
    ("fonts-liberation2", "liberation2/LiberationSans-Bold.ttf", "print"),
    ("fonts-liberation2", "liberation2/LiberationSerif-Regular.ttf", "print"),
    ("fonts-liberation2", "liberation2/LiberationMono-Regular.ttf", "print"),
    ("fonts-urw-base35", "urw-base35/NimbusSans-Regular.otf", "print"),
    ("fonts-urw-base35", "urw-base35/NimbusRoman-Italic.otf", "print"),
    ("fonts-urw-base35", "urw-base35/URWGothic-Book.otf", "print"),
    ("fonts-urw-base35", "urw-base35/URWBookman-Light.otf", "print"),
    ("fonts-urw-base35", "urw-base35/C059-Roman.otf", "print"),
    ("fonts-urw-base35", "urw-base35/P052-Italic.otf", "print"),
    ("fonts-gnutypewriter", "gnutypewriter/GNUTypewriter.ttf", "print"),
    ("fonts-jura", "jura/Jura-Regular.otf", "print"),
    ("fonts-opendyslexic", "opendyslexic/OpenDyslexic-Regular.otf", "print"),
)
FONT_ROOTS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts/opentype"))
FONT_VARIANTS = 4  # images per font and digit: one per export mode, each with its own size, place and angle


def find_fonts(roots: Iterable[Path] = FONT_ROOTS) -> list[tuple[str, Path, str]]:
    """The FONTS installed here, as (name, path, style); fonts that are not installed are left out."""
    found = []
    roots = list(roots)
    for _, name, style in FONTS:
        path = next((r / name for r in roots if (r / name).is_file()), None)
        if path is not None:
            found.append((name, path, style))
    return found


def handwriting_fonts(role: str, fonts: Sequence[tuple[str, Path, str]] | None = None) -> list[tuple[str, Path, str]]:
    """The installed handwriting fonts of one role, disjoint by construction: "report" (every other one: the
    reported real-world sets), "tune" (the rest: the -tune sets), and the tune fonts' two halves, "train" (whose
    digits the `glyphs` training option draws) and "choose" (never trained on: what a `glyphs` run is judged by)."""
    hand = [f for f in (find_fonts() if fonts is None else fonts) if f[2] == "handwriting"]
    slices = {"tune": slice(0, None, 2), "report": slice(1, None, 2), "train": slice(0, None, 4),
              "choose": slice(2, None, 4)}  # fmt: skip
    if role not in slices:
        raise DataError(f"unknown font role {role!r}: one of {', '.join(slices)}")
    return hand[slices[role]]


def _glyph(font: ImageFont.FreeTypeFont, text: str) -> np.ndarray:
    """Anti-aliased coverage of `text` (float32, cropped; empty when the font draws nothing)."""
    left, top, right, bottom = font.getbbox(text)
    im = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(im).text((4 - left, 4 - top), text, font=font, fill=255)
    a = np.asarray(im, np.float32) / 255
    return crop_ink(a) if a.any() else np.zeros((0, 0), np.float32)


def font_digits(path: Path) -> list[np.ndarray] | None:
    """The ten digit glyphs of a font at a large size, or None when it lacks real digits."""
    font = ImageFont.truetype(str(path), 160)
    glyphs = [_glyph(font, str(d)) for d in range(10)]
    notdef = _glyph(font, "\U000f0000")  # a private-use code point: fonts draw their missing-glyph box
    for g in glyphs:
        if g.size == 0 or (g.shape == notdef.shape and np.array_equal(g, notdef)):
            return None
    return glyphs


def font_set(seed: int = 2, fonts: Sequence[tuple[str, Path, str]] | None = None,
             variants: int = FONT_VARIANTS) -> RealWorldSet:  # fmt: skip
    """Digits 0-9 from each installed font in FONTS (or `fonts`), `variants` images per font and digit.

    Each image: a canvas 64-280 px a side (not always square), the glyph 35-85% of its height, rotated
    +-10 degrees, anywhere on it, exported like a canvas (CANVAS_MODES in turn). `kinds` is
    "<style>/<mode>", `origins` "font:<name>". Fonts without digit glyphs are skipped.
    """
    fonts = find_fonts() if fonts is None else list(fonts)
    images, labels, kinds, origins, rows = [], [], [], [], []
    for name, path, style in fonts:
        glyphs = font_digits(path)
        if glyphs is None:
            continue
        for digit, glyph in enumerate(glyphs):
            for _ in range(variants):
                i = len(images)
                rng = item_rng(seed, i)
                w, h = (int(s) for s in rng.integers(64, 281, size=2))
                p = {"angle": rng.uniform(-10, 10), "height": rng.uniform(0.35, 0.85) * h}
                g = np.asarray(Image.fromarray(glyph).rotate(p["angle"], Image.Resampling.BICUBIC, expand=True))
                g = crop_ink(g, 0.02)
                k = p["height"] / g.shape[0]
                size = (max(1, round(g.shape[1] * k)), max(1, round(g.shape[0] * k)))
                g = np.clip(resize(g, size, Image.Resampling.BOX if k < 1 else Image.Resampling.BICUBIC), 0, 1)
                mode = CANVAS_MODES[i % len(CANVAS_MODES)]
                images.append(export_canvas(place(g, (h, w), rng), mode))
                labels.append(digit)
                kinds.append(f"{style}/{mode}")
                origins.append(f"font:{name}")
                rows.append(p)
    if not images:
        raise DataError("no usable fonts installed (see digitlab.data.fonts.FONTS for the Debian packages)")
    return RealWorldSet("fonts", images, np.array(labels, np.int64), np.array(kinds), np.array(origins),
                        param_columns(rows))  # fmt: skip
