"""docs/training.md's fine-tuning table: bench/finetune_users.py's simulated users, two draws of users (seeds)."""

from __future__ import annotations

from typing import Any

from doctables.common import bench, pct, table

SEEDS = ("finetune_users", "finetune_users-seed1")  # bench/results/<name>.json: --seed 0 and --seed 1


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _mets(targets: list[dict[str, Any]], key: str) -> str:
    """One verdict when the seeds agree ("met"), else each seed's ("met, **missed**")."""
    verdicts = [_met(bool(x[key])) for x in targets]
    return verdicts[0] if len(set(verdicts)) == 1 else ", ".join(verdicts)


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


def users_table() -> str:
    runs = [bench(name) for name in SEEDS]
    t = [r["targets"] for r in runs]
    gains = ", ".join(f"{x['test_users_gain_pp']:+.2f}" for x in t)
    drops = ", ".join(f"{-x['mnist_test_drop_pp']:+.2f}".replace("-", "−") for x in t)
    times = ", ".join(f"{r['finetune']['seconds']:.0f} s" for r in runs)
    return table(
        ["", *(f"`--seed {r['seed']}`: bundled → fine-tuned" for r in runs), "target"],
        ["---", *("---:" for _ in runs), "---"],
        [
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
