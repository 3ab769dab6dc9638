"""docs/training.md's fine-tuning table: bench/finetune_users.py's simulated users, two draws of users (seeds)."""

from __future__ import annotations

from typing import Any

from doctables.common import bench, pct, table

SEEDS = ("finetune_users", "finetune_users-seed1")  # bench/results/<name>.json: --seed 0 and --seed 1
# --corrections 200 --confirm 0.1, --seed 0 and 1; then --confirm 0 (corrections alone), --seed 0
CORRECTIONS = ("finetune_corrections", "finetune_corrections-seed1", "finetune_corrections-confirm0")


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _mets(targets: list[dict[str, Any]], key: str) -> str:
    """One verdict when the seeds agree ("met"), else each seed's ("met, **missed**")."""
    verdicts = [_met(bool(x[key])) for x in targets]
    return verdicts[0] if len(set(verdicts)) == 1 else ", ".join(verdicts)


def _head(r: dict[str, Any]) -> str:
    confirm = f" `--confirm {r['confirm']:g}`" if r.get("corrections") else ""
    return f"`--seed {r['seed']}`{confirm}: bundled → fine-tuned"


def _users(r: dict[str, Any], kind: str) -> str:
    b, a = r[kind]["before"], r[kind]["after"]
    served = f"served {pct(b['served_accuracy'])} → {pct(a['served_accuracy'])}"
    return f"{pct(b['accuracy'])} → **{pct(a['accuracy'])}** ({served})"


def _val(r: dict[str, Any]) -> str:
    v = r["mnist_val"]
    lost = f"; {v['lost']} lost, {v['gained']} gained" if "lost" in v else ""
    return f"{pct(v['before'])} → {pct(v['after'])}{lost}"


def _held(r: dict[str, Any]) -> str:
    h = r["finetune"]["held_out"]
    return f"{pct(h['before'])} → {pct(h['after'])} ({h['n']} rows)"


def _store(r: dict[str, Any]) -> str:
    rows = r["rows"]
    return (
        f"{rows['model_wrong']} corrections + {rows['rows'] - rows['model_wrong']} confirmations "
        f"of {r['feedback_drawn']:,} drawings"
    )


def users_table() -> str:
    """The store holds `--rows 200` drawings of the feedback users, right and wrong answers alike."""
    return _table([bench(name) for name in SEEDS], [])


def corrections_table() -> str:
    """The store holds what users of the demo send: every wrong answer corrected, some right ones confirmed."""
    runs = [bench(name) for name in CORRECTIONS]
    return _table(runs, [["feedback stored", *(_store(r) for r in runs), "200 corrections"]])


def _table(runs: list[dict[str, Any]], first: list[list[str]]) -> str:
    t = [r["targets"] for r in runs]
    gains = ", ".join(f"{x['test_users_gain_pp']:+.2f}" for x in t)
    drops = ", ".join(f"{-x['mnist_test_drop_pp'] + 0.0:+.2f}".replace("-", "−") for x in t)  # + 0.0: no "−0.00"
    times = ", ".join(f"{r['finetune']['seconds']:.0f} s" for r in runs)
    return table(
        ["", *(_head(r) for r in runs), "target"],
        ["---", *("---:" for _ in runs), "---"],
        [
            *first,
            ["test users (8, 400 drawings), arg-max with TTA", *(_users(r, "test_users") for r in runs),
             f"+5 pp: {_mets(t, 'test_users_met')} ({gains} pp)"],
            ["validation users (4, 200 drawings)", *(_users(r, "validation_users") for r in runs), ""],
            ["held-out feedback sessions", *(_held(r) for r in runs), ""],
            ["MNIST validation split (6,000)", *(_val(r) for r in runs), ""],
            ["MNIST test (10,000)",
             *(f"{pct(r['mnist_test']['before'])} → {pct(r['mnist_test']['after'])}" for r in runs),
             f"at most −0.05 pp: {_mets(t, 'mnist_test_met')} ({drops} pp)"],
            ["`digitlab finetune`, wall time (training)",
             *(f"{r['finetune']['seconds']:.0f} s ({r['finetune']['train_seconds']:.0f} s)" for r in runs),
             f"≤ 120 s: {_mets(t, 'seconds_met')} ({times})"],
        ],
    )  # fmt: skip
