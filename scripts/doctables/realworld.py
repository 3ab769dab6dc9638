"""docs/real-world.md's tables: the bundled run on the real-world sets, stroke width, honest confidence."""

from __future__ import annotations

from typing import Any

from doctables.common import bench, bundle, pct, table

REALWORLD_SETS = {
    "canvas": "canvas: MNIST test digits re-drawn as 280×280 browser-canvas exports (transparent or opaque, both "
    "polarities, 12–28 px pen, off-centre, rotated ±15°, scaled)",
    "photo": "photo: dark ink on paper, uneven light, shadow, noise, blur, JPEG",
    "fonts": "fonts: digits from {fonts} Debian fonts ({handwriting} handwriting-like)",
    "lowres": "lowres: test digits shrunk to 7–16 px, blown up 4–16× (nearest-neighbour or bilinear, some JPEG'd), "
    "either polarity, off-centre; and 8–20 px files as they are",
    "pen": "pen: test digits re-stroked with thin and thick pens (skeleton, then discs) on 280×280 canvases, "
    "off-centre",
    "page": "page: a small digit on a 600–1200 px page",
}


def main_table() -> str:
    test, sets = bundle()["test"], bench("realworld-robust")["realworld"]
    fonts = sets["fonts"]
    per_font = fonts["n"] // len(fonts["by_font"])  # every font renders the same digits
    handwriting = sum(k["n"] for kind, k in fonts["by_kind"].items() if kind.startswith("handwriting/"))
    label = {**REALWORLD_SETS, "fonts": REALWORLD_SETS["fonts"].format(
        fonts=len(fonts["by_font"]), handwriting=handwriting // per_font)}  # fmt: skip
    rows = [["MNIST test", f"{test['n']:,}", pct(test["accuracy"]), "—", "—", "—"]]
    for name, text in label.items():  # the order the sets are described in, not the JSON's (sorted) one
        r = sets[name]
        rows.append([text, f"{r['n']:,}", f"**{pct(r['accuracy'])}**", pct(r["naive_accuracy"]),
                     pct(r["refused"]), pct(r["read"])])  # fmt: skip
    return table(["input", "n", "digitlab preprocessing", "naive resize to 28×28", "refused", "read"],
                 ["---", *["---:"] * 5], rows)  # fmt: skip


def stroke_width() -> str:
    cols = ["mnist_val", "canvas", "fat-marker"]
    rows = bench("stroke_width")
    best = {c: max(range(len(rows)), key=lambda i, c=c: rows[i][c]) for c in cols}  # the first on a tie

    def label(r: dict[str, Any]) -> str:
        trained = f"trained with `thicken={r['thicken']}`" if r["thicken"] else "as trained"
        thinning = "`thin=True`" if r["thin"] else "no thinning" + ("" if r["thicken"] else " (the default)")
        return f"{trained}, {thinning}"

    return table(
        ["`fast` seed 0", "MNIST validation", "canvas, 12–28 px pens", "fat marker, 36–56 px pens"],
        ["---", "---:", "---:", "---:"],
        [[label(r), *(f"**{pct(r[c])}**" if best[c] == i else pct(r[c]) for c in cols)] for i, r in enumerate(rows)],
    )


def stroke_width_robust() -> str:
    cols = ["mnist_val", "canvas", "fat-marker", "thick-font", "thick-font-choose"]
    rows = bench("stroke_width_robust")
    best = {c: max(range(len(rows)), key=lambda i, c=c: rows[i].get(c, 0)) for c in cols}

    def label(r: dict[str, Any]) -> str:
        parts = [f"`thicken={r['thicken']}`, `thicken_reach={r['thicken_reach']:g}`"] if r["thicken"] else []
        parts += [f"`restroke={r['restroke']}`"] if r.get("restroke") else []
        parts += [f"`glyphs={r['glyphs']}` (font digits)"] if r.get("glyphs") else []
        if not r.get("outliers"):
            return "24/48/96 channels, " + ", ".join(parts) if parts else "24/48/96 channels (an earlier bundle)"
        if r["thicken"] and r.get("restroke"):
            return f"**the bundled recipe: 32/64/128 channels, letters as outliers, {', '.join(parts)}**"
        tail = ", " + ", ".join(parts) if parts else " (the previous bundle)"
        return "32/64/128 channels, letters as outliers" + tail

    def cell(r: dict[str, Any], c: str, i: int) -> str:
        if c not in r:
            return "—"
        return f"**{pct(r[c])}**" if best[c] == i else pct(r[c])

    return table(
        ["`robust` seed 0, split seed 0", "MNIST validation", "canvas, 12–28 px pens", "fat marker, 36–56 px pens",
         "font glyphs, 8–24% pen", "the same, fonts never trained on"],
        ["---", "---:", "---:", "---:", "---:", "---:"],
        [[label(r), *(cell(r, c, i) for c in cols)] for i, r in enumerate(rows)],
    )  # fmt: skip


def confidence() -> str:
    m, cal, served = bundle(), bundle("calibration"), bench("realworld-refusal")["labels"]["robust"]
    test, tta, fit = m["test"], m["ood"]["auroc"], cal["ood"]["rejected"]
    auroc = served["auroc_mnist_test"]
    refused = "100%" if fit["noise"] == 1 else pct(fit["noise"], 1)
    return table(
        ["honest confidence (bundled `robust` model)", "value"],
        ["---", "---"],
        [
            [f"test NLL / ECE after temperature scaling (T = {test['temperature']:.2f})",
             f"{test['nll']:.4f} / {pct(test['ece'])} (validation ECE {pct(cal['ece_before'])} → "
             f"{pct(cal['ece_after'])})"],
            ['"not a digit" AUROC, MNIST test (served) vs Fashion-MNIST test / uniform noise / rendered letters '
             "(28×28 arrays), no TTA",
             f"{auroc['fashion_mnist']:.3f} / {auroc['noise']:.3f} / **{auroc['letters']:.3f}** (`bench/refusal.py`)"],
            ["the same with TTA (`digitlab calibrate`)",
             f"{tta['fashion_mnist']:.3f} / {tta['noise']:.3f} / {tta['letters']:.3f}"],
            ["valid digits refused, per source (MNIST test, canvas, photo, fonts, lowres, pen, page, thick-font)",
             ("none" if served["max_refused"] == 0 else f"at most {pct(served['max_refused'])}")
             + " (`bench/results/realworld-refusal.json`, label `robust`)"],
            ["what the rule refuses of its fitting sets (28×28 arrays straight to the model)",
             f"Fashion-MNIST {pct(fit['fashion_mnist'], 1)}, noise {refused}, letters {pct(fit['letters'], 1)}"],
            ["the test-side sets uploaded as pictures (served path): refused (empty + not a digit), the answers' "
             "median confidence, AUROC", _served_ood(served["ood_served"])],
        ],
    )  # fmt: skip


def _served_ood(served: dict[str, dict[str, Any]]) -> str:
    cells = []
    for key, label in (("fashion_mnist", "Fashion-MNIST"), ("noise", "noise"), ("letters", "letters")):
        o = served[key]
        conf = o["median_confidence_answered"]
        cells.append(f"{label} {pct(o['empty'] + o['not_a_digit'], 1)}" + (f", {pct(conf, 0)}" if conf else "")
                     + f", {o['auroc']:.3f}")  # fmt: skip
    return "; ".join(cells)


def other_corruptions() -> str:
    doc = bench("other-corruptions")["labels"]
    before, after = doc["before"]["corruptions"], doc["after"]["corruptions"]

    def cell(key: str, name: str) -> str:
        a, b = before[name][key], after[name][key]
        return pct(b) if abs(a - b) < 5e-4 else f"{pct(a)} → **{pct(b)}**"

    return table(
        ["validation digits, served (never fitted on)", "empty", "not a digit", "read"],
        ["---", "---:", "---:", "---:"],
        [[name, cell("empty", name), cell("not_a_digit", name), cell("read", name)] for name in after],
    )
