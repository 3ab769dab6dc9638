"""docs/robustness.md's tables: MNIST-C's 15 corruptions for the `fast` and `robust` models, the recipe variants."""

from __future__ import annotations

from typing import Any

from doctables.common import bench, pct, ratio, table


def corruption_name(key: str) -> str:
    return key.replace("_", " ")


def fast_table() -> str:
    r = bench("robustness-fast")["result"]
    base = 1 - r["clean"]["accuracy"]
    rows = [
        [
            name,
            pct(s["accuracy"]),
            ratio(1 - s["accuracy"], base),
            pct(s["refused"]),
            pct(s["accuracy_preprocessed"]),
            pct(s["refused_preprocessed"]),
        ]
        for name, s in [("clean", r["clean"]), *((corruption_name(k), v) for k, v in r["corruptions"].items())]
    ]
    return table(["test images", "raw", "error × clean", "refused (raw)", "preprocessed", "refused (preprocessed)"],
                 ["---", *["---:"] * 5], rows)  # fmt: skip


# What each variant of bench/results/robust_recipe.json changed (its "set" says it in TrainConfig fields).
RECIPE_VARIANTS = {
    "base": "`fast` as it is (5 epochs, 16/32/64)",
    "c30": "+ 30% of each batch degraded (noise, blur, strokes, background, outline, erase to black/noise), 5 epochs",
    "c30e8": "+ inverted patches in `erase`, and 8 epochs (two changes at once)",
    "c30e12": "the same, 12 epochs",
    "c30w24e10": "the same, 24/48/96 channels, 10 epochs",
    "oe25w32": "+ rendered letters as outliers (a quarter of each batch), 32/64/128 channels",
    "oe25w32rs15": "+ 15% of each batch re-drawn with a random pen (`restroke=0.15`)",
    "oe25w32rs15fat15": "**+ also 15% of the strokes grown by up to 2 px a side (`thicken=0.15`, `thicken_reach=2`): "
    "`robust`**",
}


def recipe() -> str:
    variants = bench("robust_recipe")["variants"]
    names = list(variants["base"]["corruptions"])
    rows = []
    for key, v in variants.items():
        c = v["corruptions"]
        worst = min(c, key=c.__getitem__)
        rows.append([RECIPE_VARIANTS[key], pct(v["clean"]), pct(v["mean_corrupted"]),
                     f"{corruption_name(worst)} {pct(c[worst], 1)}", *(pct(c[n], 1) for n in names)])  # fmt: skip
    return table(["variant (seed 0, split seed 0)", "clean val", "suite mean", "worst", *map(corruption_name, names)],
                 ["---", "---:", "---:", "---", *["---:"] * len(names)], rows)  # fmt: skip


def robust_table() -> str:
    fast, robust = bench("robustness-fast")["result"], bench("robustness-robust")["result"]
    base = 1 - robust["clean"]["accuracy"]
    keys = ["clean", *robust["corruptions"]]

    def score(r: dict[str, Any], key: str) -> dict[str, float]:
        return r["clean"] if key == "clean" else r["corruptions"][key]

    rows = [[corruption_name(k), pct(score(fast, k)["accuracy"]), f"**{pct(score(robust, k)['accuracy'])}**",
             ratio(1 - score(robust, k)["accuracy"], base), pct(score(fast, k)["accuracy_preprocessed"]),
             pct(score(robust, k)["accuracy_preprocessed"]), pct(score(robust, k)["refused_preprocessed"])]
            for k in keys]  # fmt: skip
    rows.append(
        [
            "**mean over the 15**",
            pct(fast["mean_accuracy"]),
            f"**{pct(robust['mean_accuracy'])}**",
            "",
            pct(fast["mean_accuracy_preprocessed"]),
            pct(robust["mean_accuracy_preprocessed"]),
            "",
        ]
    )
    return table(["test images (suite seed 0)", "`fast` raw", "**`robust` raw**", "error × clean (`robust`)",
                  "`fast` preprocessed", "`robust` preprocessed", "`robust` refused (preprocessed)"],
                 ["---", *["---:"] * 6], rows)  # fmt: skip
