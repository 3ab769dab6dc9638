"""docs/cpu-speed.md's tables: bench/vs_reference.py (recipe vs reference) and bench/fp32_recipe.py (candidates)."""

from __future__ import annotations

from typing import Any

from doctables.common import RESULTS, load, pct, pcts, table

# (preset, whether the CPU trained in fp32) -> the target
TARGETS = {("fast", True): "≤ 0.5× (stretch 0.35×), ≥ 99.60%", ("fast", False): "≤ 0.6×, ≥ 99.60%",
           ("accurate", True): "≤ 3×, ≥ 99.70%"}  # fmt: skip


def _runs() -> list[tuple[str, bool, dict[str, Any]]]:
    """(preset, fp32-only CPU, results) of each bench/results/vs_reference-*.json: a capped or a real fp32 CPU."""
    out = []
    for path in sorted(RESULTS.glob("vs_reference-*.json")):
        r = load(path)
        out.append((r["preset"], "fp32 only" in r["cpu"], r))
    return out


def vs_reference() -> str:
    rows = []
    for preset, fp32, r in _runs():
        first = r["pairs"][0]
        recipe = (first.get("recipe") or f"recipe: {preset}").removeprefix("recipe: ")
        precision = first["precision"].removeprefix("precision: ").split(" (")[0]
        accs = pcts(p["test_accuracy"] for p in r["pairs"])
        ratios = ", ".join(f"{p['ratio']:.2f}" for p in r["pairs"])
        reference = f"{r['reference_seconds_mean']:.1f} s ({pct(r['reference_test_accuracy_mean'])})"
        machine = f"{r['cpu']}, {r.get('cpu_family_model') or 'family/model not recorded'}{_cap(r)}"
        rows.append([f"`{recipe}`", f"{machine}; {precision}",
                     f"**{pct(r['test_accuracy_mean'])}** ({accs})", f"{r['train_seconds_mean']:.1f} s", reference,
                     f"**{r['ratio_mean']:.2f}×** ({ratios})", TARGETS.get((preset, fp32), ""),
                     f"`{r['command']}`"])  # fmt: skip
    header = ["recipe", "CPU (ISA); precision", "official test, mean of 3 seeds", "training", "reference (its test)",
              "ratio", "target", "command"]  # fmt: skip
    return table(header, ["---", "---", "---:", "---:", "---:", "---:", "---", "---"], rows)


def candidates(preset: str) -> str:
    r = load(RESULTS / f"fp32_recipe-{preset}.json")
    rows = []
    for c in r["candidates"]:
        seeds = c["seeds"]
        order = sorted(seeds)
        vals = ", ".join(f"{100 * seeds[s]['val_accuracy']:.2f}" for s in order)
        times = ", ".join(f"{seeds[s]['train_seconds']:.0f}" for s in order)
        mean = c["val_accuracy_mean_seeds_0_1"]
        machines: dict[str, list[str]] = {}
        for s in order:
            machines.setdefault(_machine(seeds[s]), []).append(s)
        where = "; ".join(m if len(machines) == 1 else f"seed {', '.join(ss)}: {m}" for m, ss in machines.items())
        rows.append([c["what"], f"`{' '.join(c['set']) or '(none)'}`", f"{pct(mean) if mean else '—'} ({vals})",
                     f"{times} s", where])  # fmt: skip
    header = [f"`{preset}` candidate", "`--set`", "validation: mean of seeds 0–1 where both ran (each seed, from 0)",
              "training, each seed", "CPU (oneDNN cap)"]  # fmt: skip
    return table(header, ["---", "---", "---:", "---:", "---"], rows)


def _cap(r: dict[str, Any], words: str = "oneDNN capped at") -> str:
    """ ", oneDNN capped at AVX2" where a run capped oneDNN's instruction set, else ""."""
    return f", {words} {r['isa_cap']}" if r.get("isa_cap") else ""


def _machine(seed: dict[str, Any]) -> str:
    return f"{seed['cpu'].replace(' (fp32 only)', '')}{_cap(seed, 'capped at')}"


def fast_candidates() -> str:
    return candidates("fast")


def accurate_candidates() -> str:
    return candidates("accurate")


PROFILES = ("fast-fp32-avx2", "fast-native")  # bench/results/profile-<name>.json, as the page's commands write


def profile() -> str:
    rows = []
    for name in PROFILES:
        r = load(RESULTS / f"profile-{name}.json")
        variant = f" {r['variant']} variant" if r.get("variant") else ""
        run = f"`{r['preset']}`{variant}, batch {r['batch_size']}"
        precision = r["precision"].removeprefix("precision: ").split(" (")[0]
        phases = " / ".join(pct(r["phases_share"][k], 0) for k in ("augmentation", "forward", "backward", "optimizer"))
        gflops = (
            f"{r['achieved_gflops']:.0f}: {pct(r['share_of_peak'], 0)} of {r['peak_gflops']:.0f} nominal, "
            f"{pct(r['share_of_ceiling'], 0)} of {r['conv_ceiling_gflops']:.0f} (1×1 conv)"
        )
        ops = ", ".join(f"{o['name'].removeprefix('aten::')} {pct(o['self_share'], 0)}" for o in r["top_operators"][:6])
        rows.append([run, f"{r['cpu']}{_cap(r)}; {precision}", f"{r['images_per_second']:,}", phases, gflops, ops])
    header = [
        "run",
        "CPU; precision",
        "train images/s",
        "augment / forward / backward / optimiser",
        "achieved GFLOP/s: of the nominal fp32 peak, of a large 1×1 convolution's",
        "top operators (self time)",
    ]
    return table(header, ["---", "---", "---:", "---", "---", "---"], rows)
