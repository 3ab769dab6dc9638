"""README.md's results table and docs/results.md's: bench/fast.py and bench/ensembles.py runs, and the bundled run."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from doctables.common import bench, bundle, minutes, pct, pcts, pp, secs, seed_list, span, table


def runs(recipe: str, seeds: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """A bench/fast.py file's runs, in its own seed order or in the order of `seeds`."""
    by_seed = {r["seed"]: r for r in bench(recipe)["runs"]}
    return [by_seed[s] for s in (seeds if seeds is not None else by_seed)]


def tests(recipe: str, seeds: Iterable[int] | None = None) -> list[float]:
    return [r["test_accuracy"] for r in runs(recipe, seeds)]


def val(recipe: str, seeds: Iterable[int] | None = None) -> float:
    return statistics.mean(r["val_accuracy"] for r in runs(recipe, seeds))


def spread(recipe: str) -> str:
    r = bench(recipe)
    return f"{pct(r['test_accuracy_mean'])} ± {pct(r['test_accuracy_std'])}"


# Seeds that had the 2-core VM to themselves; the others shared it with other jobs, so their train_seconds are no
# timing (docs/results.md's † note). Which runs were disturbed was noted when they ran: no JSON field says so.
IDLE = {"fast": (0, 1, 2), "fast-split0": (4, 5, 6, 7, 8, 9), "accurate": (1, 2, 3, 4, 5, 7, 8, 9),
        "strided": (1, 3, 4), "accurate30": (1, 3, 4), "strided30": (1, 2), "seed": (2,)}  # fmt: skip
RECIPE_OF_MEMBER = {"fast": "fast-split0"}  # the `fast` ensemble members are the split-seed-0 runs


def idle(recipe: str) -> list[float]:
    return [r["train_seconds"] for r in runs(recipe, IDLE[recipe])]


def idle_mean(recipe: str) -> float:
    return statistics.mean(idle(recipe))


def ensemble(name: str, members: int | None = None) -> dict[str, Any]:
    """One row of bench/results/ensembles-NAME.json (the one with `members` members, or the only one)."""
    rows = bench(f"ensembles-{name}")
    return next(e for e in rows if members is None or e["members"] == members)


def member(run: str) -> tuple[str, str]:
    """'runs/ens/accurate30-4' -> ('accurate30', '4')."""
    name, seed = Path(run).name.rsplit("-", 1)
    return name, seed


def member_recipes(members: Iterable[str]) -> Counter[str]:
    return Counter(RECIPE_OF_MEMBER.get(name, name) for name, _ in map(member, members))


def members_minutes(e: dict[str, Any], digits: int = 0) -> str:
    """Idle-machine training time of an ensemble's members: the sum of their recipes' idle means."""
    return minutes(sum(n * idle_mean(r) for r, n in member_recipes(e["runs"]).items()), digits)


def members_sum(e: dict[str, Any]) -> str:
    """'5 × 7.1 + 5 × 6.5 min'."""
    return " + ".join(f"{n} × {minutes(idle_mean(r))}" for r, n in member_recipes(e["runs"]).items()) + " min"


def ens_test(e: dict[str, Any], ece: bool = False) -> str:
    return pct(e["test_accuracy"]) + (f" (ECE {pct(e['test_ece'])})" if ece else "")


def params(recipe: str) -> str:
    return f"{runs(recipe)[0]['params']:,}"


def slash(cells: Iterable[str]) -> str:
    """Figures of several ensembles in one cell: '99.66% / 99.66% / 99.69%'."""
    return " / ".join(cells)


# --------------------------------------------------------------------------------------------- README.md


def readme_table() -> str:
    m, accurate, best = bundle(), tests("accurate"), ensemble("accurate30-strided")
    draws = [ensemble(n)["test_accuracy"] for n in ("accurate-strided", "accurate59-strided")]
    return table(
        ["model", "official test accuracy", "training time", "parameters"],
        ["---"] * 4,
        [
            ["`fast` (ours), 3 seeds", f"**{spread('fast')}**", f"**{idle_mean('fast'):.1f} s**",
             params("fast")],
            ["`accurate` (ours), 10 seeds", f"**{spread('accurate')}** ({span(accurate)})",
             f"{minutes(idle_mean('accurate'))} min", params("accurate")],
            ["ensemble: 5 `accurate` (30 epochs) + 5 `StridedNet`",
             f"**{pct(best['test_accuracy'])}** (other draws of that recipe: {pcts(draws)})",
             f"≈ {members_minutes(best)} min", f"{best['params']:,}"],
            ["`robust` (ours: `fast` 2× wider, 10 epochs, 30% of each batch degraded, letters as outliers, fat pens), "
             "seed 0 — **the bundled model**", f"**{pct(m['test']['accuracy'])}**",
             f"{minutes(m['train_seconds'])} min (on an {m['cpu'].replace('(R)', '')})",
             f"{m['params']:,}"],
            ["`seed` — the reference architecture, rebuilt faithfully, 3 seeds", spread("seed"),
             f"{minutes(idle_mean('seed'), 0)} min", params("seed")],
            # docs/reference.md, as received: it never reports the test set
            ["the reference's own claim ([docs/reference.md](docs/reference.md))", "not reported (99.43% *validation*)",
             "—", '"~2.1M"'],
        ],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- docs/results.md

RESULTS_HEADER = ["model", "official test accuracy", "validation accuracy", "training time (2 CPU cores)",
                  "parameters", "command"]  # fmt: skip
FAST_CMD = "python bench/fast.py"
ENS_CMD = "python bench/ensembles.py"


def idle_cell(recipe: str, lead: str) -> str:
    """'7.1 min mean on the idle machine (8 seeds: 389–457 s)†' with `lead` the figure's own wording."""
    seeds, times = IDLE[recipe], idle(recipe)
    listed = seed_list(seeds)
    which = f"{len(seeds)} seeds" if ", " in listed and len(seeds) > 3 else f"seed{'s' * (len(seeds) > 1)} {listed}"
    return f"{lead} on the idle machine ({which}: {secs(min(times), max(times))})†"


def main_table() -> str:
    rows = [*_single(), *_ensembles(), *_30_epochs(), *_ensembles_30(), *_seed()]
    return table(RESULTS_HEADER, ["---"] * len(RESULTS_HEADER), rows)


def _single() -> list[list[object]]:
    m, fast = bundle(), idle("fast")
    return [
        ["`fast` (ours), 3 seeds", f"**{spread('fast')}** ({pcts(tests('fast'))})", f"{pct(val('fast'))} (10% split)",
         f"**{statistics.mean(fast):.1f} s** mean ({min(fast):.1f}–{max(fast):.1f} s)", params("fast"),
         f"`{FAST_CMD} --seeds 0 1 2`"],
        ["`fast`, 10 seeds sharing split seed 0 (ensemble members)", f"{spread('fast-split0')} "
         f"({span(tests('fast-split0'))})", pct(val("fast-split0")),
         idle_cell("fast-split0", f"{idle_mean('fast-split0'):.0f} s mean"), params("fast-split0"),
         f"`{FAST_CMD} --seeds 0 1 2 3 4 5 6 7 8 9 --split-seed 0 --runs runs/ens`"],
        ["**`accurate`** (ours), 10 seeds, split seed 0", f"**{spread('accurate')}** ({pcts(tests('accurate'))})",
         pct(val("accurate")), idle_cell("accurate", f"**{minutes(idle_mean('accurate'))} min** mean"),
         params("accurate"),
         f"`{FAST_CMD} --preset accurate --seeds 0 1 2 3 4 5 6 7 8 9 --split-seed 0 --runs runs/ens`"],
        ["`robust` (ours; the bundled model): `fast` with 32/64/128 channels, 10 epochs, 30% of each batch degraded "
         "(`noise_augment`), letters as a quarter of each batch trained towards uniform (`outliers`), 15% re-drawn "
         "with a random pen (`restroke`), 15% with grown strokes (`thicken`), seed 0",
         f"{pct(m['test']['accuracy'])} (one seed; `scripts/make_pretrained.py`)",
         f"{pct(m['val']['accuracy'])} (10% split; {pct(m['val_ablation']['without_tta'])} without TTA)",
         f"{m['train_seconds']:.0f} s on an idle {m['cpu'].replace('(R)', '')}, bf16 autocast", f"{m['params']:,}",
         "`python scripts/make_pretrained.py` (`digitlab train --preset robust --seed 0`); its recipe table: "
         "[robustness.md](robustness.md)"],
        ["`accurate` recipe with `StridedNet` (a second architecture for ensembles), 5 seeds, split seed 0",
         f"{spread('strided')} ({pcts(tests('strided'))})", pct(val("strided")),
         idle_cell("strided", f"{minutes(idle_mean('strided'))} min mean"), params("strided"),
         f"`{FAST_CMD} --preset accurate --set model=strided --name strided --seeds 0 1 2 3 4 --split-seed 0 "
         "--runs runs/ens`"],
    ]  # fmt: skip


def _30_epochs() -> list[list[object]]:
    acc15, s15 = tests("accurate", range(5)), tests("strided", range(3))
    return [
        ["`accurate` recipe, 30 epochs instead of 15, 5 seeds, split seed 0",
         f"{spread('accurate30')} ({pcts(tests('accurate30'))}): the same as 15 epochs on seeds 0–4 "
         f"({pct(statistics.mean(acc15))})", f"{pct(val('accurate30'))} (15 epochs: {pct(val('accurate', range(5)))})",
         idle_cell("accurate30", f"{minutes(idle_mean('accurate30'))} min mean"),
         params("accurate30"), f"`{FAST_CMD} --preset accurate --set epochs=30 --name accurate30 "
         "--seeds 0 1 2 3 4 --split-seed 0 --runs runs/ens --out bench/results/accurate30.json`"],
        ["`StridedNet` with 30 epochs instead of 15, 3 seeds, split seed 0",
         f"{spread('strided30')} ({pcts(tests('strided30'))}): no better than 15 epochs (seeds 0–2: "
         f"{pct(statistics.mean(s15))})", f"{pct(val('strided30'))} (15 epochs: {pct(val('strided', range(3)))})",
         idle_cell("strided30", f"{minutes(idle_mean('strided30'))} min"), params("strided30"),
         f"`{FAST_CMD} --preset accurate --set model=strided --set epochs=30 --name strided30 --seeds 0 1 2 "
         "--split-seed 0 --runs runs/ens --out bench/results/strided30.json`"],
    ]  # fmt: skip


def _seed() -> list[list[object]]:
    s42, s1, s2 = runs("seed", [42, 1, 2])
    return [
        ["`seed` (the reference, rebuilt), 3 seeds (42, 1, 2)", f"**{spread('seed')}** ({pcts(tests('seed'))})",
         f"**{pct(val('seed'))}** ({pcts(r['val_accuracy'] for r in (s42, s1, s2))}; 20% split, 12,000 images)",
         # 50 epochs and the median epoch: seed 2's history.csv (its run directory is not in the repository)
         f"**{minutes(s2['train_seconds'], 0)} min** for the undisturbed seed 2 (50 epochs, median epoch 40.8 s); "
         f"seeds 1 and 42 shared the cores: {minutes(s1['train_seconds'], 0)} and {minutes(s42['train_seconds'], 0)} "
         "min*", params("seed"),
         f"`{FAST_CMD} --preset seed --seeds 42 1 2 --runs runs/seedruns --out bench/results/seed.json` (each: "
         "`digitlab train --preset seed --seed S`)"],
        # docs/reference.md, as received
        ["the reference's own claim", "not reported", "99.43% (8,400 images)", "—", '"~2.1M"', "—"],
    ]  # fmt: skip


def _ensembles() -> list[list[object]]:
    # The "+ N s" build-and-calibrate times are what bench/ensembles.py printed; its JSON files do not keep them.
    a3, a5, a10 = (ensemble("accurate", n) for n in (3, 5, 10))
    fast = [ensemble("fast", n) for n in (3, 5, 10)]
    mixed, strided = ensemble("mixed"), ensemble("accurate-strided")
    return [
        ["ensemble of 3 `accurate` (seeds 0–2)", ens_test(a3), pct(a3["val_accuracy"]),
         f"≈ {members_minutes(a3)} min ({members_sum(a3)}) + 72 s to build and calibrate", f"{a3['params']:,}",
         f"`{ENS_CMD} runs/ens/accurate-{{0,1,2,3,4}} --sizes 3 5`"],
        ["ensemble of 5 `accurate` (seeds 0–4)", f"**{pct(a5['test_accuracy'])}** (ECE {pct(a5['test_ece'])})",
         pct(a5["val_accuracy"]), f"≈ {members_minutes(a5)} min ({members_sum(a5)}) + 104 s", f"{a5['params']:,}",
         "same"],
        ["ensemble of 10 `accurate` (seeds 0–9)", ens_test(a10, ece=True), pct(a10["val_accuracy"]),
         f"≈ {members_minutes(a10)} min ({members_sum(a10)}) + 8.4 min‡", f"{a10['params']:,}",
         f"`{ENS_CMD} runs/ens/accurate-{{0,1,2,3,4,5,6,7,8,9}} --sizes 10`"],
        ["ensembles of 3 / 5 / 10 `fast` (seeds 0–2 / 0–4 / 0–9)", slash(ens_test(e) for e in fast),
         slash(pct(e["val_accuracy"]) for e in fast),
         f"≈ {slash(members_minutes(e, 1) for e in fast)} min (members) + 28 / 27 / 48 s",
         slash(f"{e['params']:,}" for e in fast), f"`{ENS_CMD} runs/ens/fast-{{0,1,2,3,4,5,6,7,8,9}} --sizes 3 5 10`"],
        ["ensemble of 10: 5 `accurate` + 5 `fast` (seeds 0–4 of each)", ens_test(mixed),
         f"**{pct(mixed['val_accuracy'])}**", f"≈ {members_minutes(mixed)} min (members) + 112 s",
         f"{mixed['params']:,}", f"`{ENS_CMD} runs/ens/accurate-{{0,1,2,3,4}} runs/ens/fast-{{0,1,2,3,4}} --sizes 10`"],
        ["**ensemble of 10: 5 `accurate` + 5 `StridedNet`** (seeds 0–4 of each)",
         f"**{pct(strided['test_accuracy'])}** (ECE {pct(strided['test_ece'])})", pct(strided["val_accuracy"]),
         f"≈ {members_minutes(strided)} min ({members_sum(strided)}) + 162 s", f"{strided['params']:,}",
         f"`{ENS_CMD} runs/ens/accurate-{{0,1,2,3,4}} runs/ens/strided-{{0,1,2,3,4}} --sizes 10`"],
    ]  # fmt: skip


def _ensembles_30() -> list[list[object]]:
    # Build times as printed by bench/ensembles.py; the validation log-losses of the two five-plus-five ensembles
    # are from their run directories' metrics.json (runs/ens, not in the repository).
    a30 = [ensemble("accurate30", n) for n in (3, 5)]
    best, other, chosen = ensemble("accurate30-strided"), ensemble("accurate59-strided"), ensemble("selected")
    pool = {"runs": chosen["selection"]["candidates"]}
    names = {"accurate": "`accurate`", "strided": "`StridedNet`", "fast": "`fast`"}
    counts = Counter(name for name, _ in map(member, pool["runs"]))
    picked = ", ".join(f"{names[name]}-{seed}" for name, seed in map(member, chosen["runs"]))
    return [
        ["ensembles of 3 / 5 `accurate` 30-epoch (seeds 0–2 / 0–4)", slash(ens_test(e) for e in a30),
         slash(pct(e["val_accuracy"]) for e in a30),
         f"≈ {slash(members_minutes(e) for e in a30)} min (members) + 6.9 min for both",
         slash(f"{e['params']:,}" for e in a30), f"`{ENS_CMD} runs/ens/accurate30-{{0,1,2,3,4}} --sizes 3 5`"],
        ["**ensemble of 10: 5 `accurate` 30-epoch + 5 `StridedNet`** (seeds 0–4 of each)",
         f"**{pct(best['test_accuracy'])}** ({round((1 - best['test_accuracy']) * 10_000)} errors; ECE "
         f"{pct(best['test_ece'])})", f"{pct(best['val_accuracy'])} (log-loss 0.0102)",
         f"≈ {members_minutes(best)} min ({members_sum(best)}) + 7.0 min", f"{best['params']:,}",
         f"`{ENS_CMD} runs/ens/accurate30-{{0,1,2,3,4}} runs/ens/strided-{{0,1,2,3,4}} --sizes 10`"],
        ["ensemble of 10: 5 `accurate` (seeds 5–9) + 5 `StridedNet` (seeds 0–4): the same recipe, other draws",
         ens_test(other, ece=True), f"{pct(other['val_accuracy'])} (log-loss 0.0100)",
         f"≈ {members_minutes(other)} min + 7.5 min", f"{other['params']:,}",
         f"`{ENS_CMD} runs/ens/accurate-{{5,6,7,8,9}} runs/ens/strided-{{0,1,2,3,4}} --sizes 10`"],
        [f"ensemble chosen on validation: greedy forward selection (`--select {chosen['selection']['max_members']}`) "
         f"from the {len(pool['runs'])} runs above ({', '.join(f'{n} {names[k]}' for k, n in counts.items())}); it "
         f"stopped at {chosen['members']} ({picked})", ens_test(chosen),
         f"{pct(chosen['val_accuracy'])} (log-loss {chosen['selection']['steps'][-1]['val_loss']:.4f})",
         # choosing and building: as bench/ensembles.py printed them
         f"the pool: ≈ {members_minutes(pool)} min; choosing 6 min + 46 s to build", f"{chosen['params']:,}",
         f"`{ENS_CMD} runs/ens/accurate-{{0,1,2,3,4,5,6,7,8,9}} runs/ens/strided-{{0,1,2,3,4}} "
         f"runs/ens/fast-{{0,1,2,3,4,5,6,7,8,9}} --select 10`"],
    ]  # fmt: skip


def accurate_ablation() -> str:
    fast, acc0 = [r["val_accuracy"] for r in runs("fast-split0", range(4))], runs("accurate", [0])[0]["val_accuracy"]
    e30, e15 = val("accurate30"), val("accurate", range(5))
    t30, t15 = (round(statistics.mean(tests(r, range(5))), 4) for r in ("accurate30", "accurate"))
    on_test = f"{pct(t30)} either way" if t30 == t15 else f"{pct(t30)} against {pct(t15)}"
    return table(
        ["change from `fast` (seed 0, split seed 0)", "validation accuracy", "what it bought"],
        ["---", "---:", "---"],
        [
            ["`fast` itself (seeds 0–3 on that split)", f"{pct(statistics.mean(fast))} mean ({pcts(fast)})", "—"],
            [f"1. FastNet twice as wide (32/64/128, {params('accurate')} parameters, ~4× the multiply-adds) and 15 "
             "epochs instead of 5, same one-cycle schedule", f"**{pct(acc0)}**",
             f"{pp(acc0, statistics.mean(fast))} (within the split's ±0.07 pp standard error); the test figures "
             "below say more"],
            # rows 2–4: an elastic ablation run (runs/abl) and `accurate`-0's own metrics.json → val_ablation;
            # neither run directory is in the repository
            ["2. + elastic distortion (Simard et al. 2003, α 34 px, σ 4 px, folded into the affine `grid_sample`)",
             "99.50%", "**−0.20 pp**, and 15% slower per epoch: **off** (available as `--set elastic=34`)"],
            ["3. EMA of the weights (decay 0.999 per step, warmed up), validated and kept instead of the last step",
             "99.70% (99.70% without)", "+0.00 pp here (+0.12 pp in the elastic run); cheap, kept"],
            ["4. test-time augmentation (image + four 1-px shifts)", "99.70% (99.72% without)",
             "−0.02 pp: nothing; kept for evaluation like `fast`, off when serving"],
            ["5. 30 epochs instead of 15 (`--set epochs=30`; seeds 0–4)",
             f"{pct(e30)} mean ({pcts(r['val_accuracy'] for r in runs('accurate30'))}) against {pct(e15)}",
             f"{pp(e30, e15)} for twice the time: not adopted (on the test set, too: {on_test})"],
        ],
    )  # fmt: skip


def cuda_table() -> str:
    """Seed-to-seed spread of `fast` and `accurate` on a GPU: 10 seeds each, each with its own validation split."""
    rows = []
    for recipe, name in (("fast-cuda", "`fast`"), ("accurate-cuda", "`accurate`")):
        r, acc = bench(recipe), tests(recipe)
        sec = [x["train_seconds"] for x in runs(recipe)]
        rows.append([f"{name}, {len(acc)} seeds ({r['seeds'][0]}–{r['seeds'][-1]})",
                     f"**{spread(recipe)}** ({span(acc)})", pct(val(recipe)),
                     f"{statistics.mean(sec):.1f} s mean ({min(sec):.1f}–{max(sec):.1f} s)", params(recipe),
                     f"`{r['command']}`"])  # fmt: skip
    header = ["recipe (on the GPU)", "official test accuracy", "validation", "training time", "parameters", "command"]
    return table(header, ["---", "---:", "---:", "---:", "---:", "---"], rows)
