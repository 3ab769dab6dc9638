"""Fine-tuning from simulated users: does `digitlab finetune` teach the bundled model a style it reads badly?

    OMP_NUM_THREADS=1 python bench/finetune_users.py [RUN] [--rows 200] [--out bench/results/finetune_users.json]
    python bench/finetune_users.py --corrections 200 --confirm 0.1 --out bench/results/finetune_corrections.json

The users write with a fat marker (a round pen 18-26% of the digit's height) on a 280x280 canvas, narrow
(width 0.6-0.85 of MNIST's) and slanted, each with their own pen, slant, width, size and browser export mode:
MNIST *training* digits (of RUN's training split, none of them in data/realworld/) re-drawn with
`digitlab.data.drawing`'s pen. The bundled model reads them worse than MNIST (see "before" below).

1. --rows labelled drawings of the *feedback* users go into a temporary SQLite store through
   `FeedbackStore.add`, as the demo stores them: the 28x28 that `digitlab.data.preprocess` made, the model's answer,
   the user's session id. With --corrections N the store holds what a class using the demo sends instead: the
   feedback users draw until the model has answered N of their drawings wrong (each corrected by its user), and
   each right answer is confirmed ("Right") with probability --confirm.
2. `digitlab finetune RUN --feedback URL --out NEW` (its default options unless given).
3. RUN and NEW on drawings of *other* users (other MNIST digits): the *validation* users choose the defaults,
   the *test* users are the figure; each as the arg-max (with the run's TTA, as the report) and as served
   (`Predictor`, no TTA: refusals count as errors). MNIST test before/after and the seconds come from NEW's
   metrics.json. JSON with the CPU goes to --out.
Targets: test users' accuracy up >= 5 pp (or to >= 99%), MNIST test down <= 0.05 pp, fine-tuning <= 120 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from digitlab.core.rundir import RunDir
from digitlab.data.datasets import Split, load_dataset, split_data
from digitlab.data.drawing import CANVAS_SIDE, export_canvas, place, redraw
from digitlab.data.realworld import CANVAS_MODES, load_realworld

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "src" / "digitlab" / "pretrained" / "default"
PEN = (0.18, 0.26)  # pen width / digit height
ASPECT = (0.6, 0.85)  # width / MNIST's
SLANT = (0.25, 0.5)  # horizontal shear of the digit, either way
USERS = {"feedback": 8, "validation": 4, "test": 8}  # how many users of each kind
PER_USER = {"validation": 50, "test": 50}  # drawings of each user that are scored


@dataclass(frozen=True)
class Style:
    """One user's hand: everything their drawings share."""

    user: str
    pen: float  # pen width / digit height
    aspect: float
    slant: float
    height: float  # px on the 280x280 canvas
    mode: str  # how their browser exports the canvas


def make_users(kind: str, n: int, seed: int) -> list[Style]:
    rng = np.random.default_rng([seed, len(kind), n])
    return [Style(f"{kind}-{i:02d}", float(rng.uniform(*PEN)), float(rng.uniform(*ASPECT)),
                  float(rng.uniform(*SLANT) * rng.choice([-1, 1])), float(rng.uniform(130, 230)),
                  CANVAS_MODES[int(rng.integers(len(CANVAS_MODES)))]) for i in range(n)]  # fmt: skip


def _shear(digit: np.ndarray, s: float) -> np.ndarray:
    im = Image.fromarray(digit)
    return np.asarray(im.transform(im.size, Image.Transform.AFFINE, (1, s, -14 * s, 0, 1, 0),
                                   Image.Resampling.BILINEAR))  # fmt: skip


def draw(style: Style, digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`digit` (an MNIST 28x28) as `style` draws it: a 280x280 canvas export (see CANVAS_MODES)."""
    height = style.height * rng.uniform(0.9, 1.1)
    pen = style.pen * height * rng.uniform(0.95, 1.05)
    cov = redraw(_shear(digit, style.slant + rng.uniform(-0.05, 0.05)), height,
                    style.aspect * rng.uniform(0.95, 1.05), rng.uniform(-4, 4), pen)  # fmt: skip
    return export_canvas(place(cov, (CANVAS_SIDE, CANVAS_SIDE), rng), style.mode)


def source_pool(run: RunDir, ds: object) -> Split:
    """RUN's training split without the MNIST training digits that data/realworld/ holds (its *-tune sets)."""
    train, _ = split_data(ds, run.read_config())
    used: set[bytes] = set()
    for name in ("canvas-tune", "photo-tune", "lowres-tune", "pen-tune", "page-tune"):
        origins = load_realworld(name).origins
        used |= {ds.train.images[int(o.split(":")[1])].tobytes() for o in origins if o.startswith("mnist-train:")}
    keep = np.array([im.tobytes() not in used for im in train.images])
    return train.subset(np.flatnonzero(keep))


def drawings(users: list[Style], per_user: int, pool: Split, picks: np.ndarray, seed: int) -> list[dict]:
    """`per_user` drawings by each user of the pool digits `picks` (consumed in order): canvas, label, user."""
    out, k = [], 0
    for u, style in enumerate(users):
        for i in range(per_user):
            j = int(picks[k])
            k += 1
            rng = np.random.default_rng([seed, u, i])
            out.append({"canvas": draw(style, pool.images[j], rng), "label": int(pool.labels[j]), "user": style.user})
    return out


def corrections(
    users: list[Style], n: int, confirm: float, predictor: object, pool: Split, picks: np.ndarray, seed: int
) -> tuple[list[dict], int]:
    """The feedback users draw (round robin, 25 each a round) until `n` of their drawings were answered wrong or
    refused and corrected; each right answer is confirmed ("Right") with probability `confirm`. The rows stored
    (in drawing order, up to the n-th correction) and how many drawings were made (whole rounds of 25 a user)."""
    rng, rows, drawn, wrong = np.random.default_rng([seed, 11]), [], 0, 0
    while wrong < n:
        batch = drawings(users, 25, pool, picks[drawn:], seed + 1000 * (drawn + 1))
        drawn += len(batch)
        for r, p in zip(batch, predictor.predict([r["canvas"] for r in batch]), strict=True):
            if p.digit != r["label"]:
                wrong += 1
                rows.append(r)
            elif rng.random() < confirm:
                rows.append(r)
            if wrong == n:
                break
    return rows, drawn


def _canvas_png(canvas: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, "PNG")
    return buf.getvalue()


def fill_store(url: str, rows: list[dict], predictor: object) -> dict[str, int]:
    """The feedback users' drawings as the demo stores them; how many the model had wrong."""
    from digitlab.data.feedback_store import FeedbackStore

    preds = predictor.predict([r["canvas"] for r in rows])
    with FeedbackStore.open(url) as store:
        for r, p in zip(rows, preds, strict=True):
            store.add(image=_canvas_png(r["canvas"]), model_input=p.input, label=r["label"], predicted=p.digit,
                      status=p.status, probabilities=p.probabilities, model=predictor.info["run"], source="demo",
                      session=r["user"])  # fmt: skip
    return {"rows": len(rows), "model_wrong": sum(p.digit != r["label"] for r, p in zip(rows, preds, strict=True))}


def stored_counts(url: str) -> dict[str, int]:
    """fill_store's counts, read back from a store made before."""
    from digitlab.data.feedback_store import FeedbackStore

    with FeedbackStore.open(url, create=False) as store:
        rows = list(store.rows())
    return {"rows": len(rows), "model_wrong": sum(r.predicted != r.label for r in rows)}


def score(run: Path, rows: list[dict]) -> dict[str, float]:
    """A run on drawings: arg-max of the model on the 28x28 preprocess makes (the run's TTA, as its report), and
    as served (`Predictor`, no TTA; a refusal counts as an error)."""
    from digitlab.inference.predict import Predictor
    from digitlab.model.forward import load_model, predict_logits

    served = Predictor.from_run(run, tta=False).predict([r["canvas"] for r in rows])
    labels = np.array([r["label"] for r in rows])
    inputs = np.stack([p.input for p in served])
    logits = predict_logits(load_model(RunDir(run)), inputs, tta=RunDir(run).read_config().tta)
    return {"n": len(rows), "accuracy": float(np.mean(logits.argmax(1) == labels)),
            "served_accuracy": float(np.mean([p.digit == y for p, y in zip(served, labels, strict=True)])),
            "refused": float(np.mean([p.status != "ok" for p in served]))}  # fmt: skip


def mnist_val(run: Path, new: Path, ds: object) -> dict[str, float | int]:
    """RUN and NEW on RUN's validation split: accuracies, and the digits NEW lost (RUN right, NEW wrong) and
    gained: forgetting shows in "lost" before it shows in the accuracy."""
    from scipy.special import log_softmax

    from digitlab.model.forward import load_model, predict_logits

    _, val = split_data(ds, RunDir(run).read_config())
    logits = [predict_logits(load_model(rd), val.images, tta=rd.read_config().tta) for rd in (RunDir(run), RunDir(new))]
    right = [lg.argmax(1) == val.labels for lg in logits]
    nll = [float(-np.mean(log_softmax(lg, axis=1)[np.arange(len(val)), val.labels])) for lg in logits]
    return {"before": float(right[0].mean()), "after": float(right[1].mean()),
            "lost": int(np.sum(right[0] & ~right[1])), "gained": int(np.sum(~right[0] & right[1])),
            "nll_before": round(nll[0], 5), "nll_after": round(nll[1], 5)}  # fmt: skip


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path, default=BUNDLED)
    parser.add_argument("--rows", type=int, default=200, help="feedback rows (spread over the feedback users)")
    parser.add_argument(
        "--corrections",
        type=int,
        default=0,
        help="instead of --rows: draw until this many answers were wrong and corrected",
    )
    parser.add_argument(
        "--confirm",
        type=float,
        default=0.0,
        help="with --corrections: the share of right answers users confirm (stored too)",
    )
    parser.add_argument("--seed", type=int, default=0, help="users, digits and drawings")
    parser.add_argument("--finetune-args", default="", help="extra options for `digitlab finetune`, e.g. '--steps 300'")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help="a SQLite file kept for the store: made when missing, else reused as it is (its "
        "feedback users are not drawn again), e.g. to try other --finetune-args on it",
    )
    args = parser.parse_args()

    from digitlab.core.hardware import cpu_info
    from digitlab.inference.predict import Predictor

    ds = load_dataset(RunDir(args.run).read_config().data)
    pool = source_pool(RunDir(args.run), ds)
    picks = np.random.default_rng([args.seed, 7]).permutation(len(pool))
    per_user = {"feedback": -(-args.rows // USERS["feedback"]), **PER_USER}
    sets, used = {}, 0
    for kind in USERS:
        sets[kind] = drawings(make_users(kind, USERS[kind], args.seed), per_user[kind], pool, picks[used:], args.seed)
        used += len(sets[kind])
    sets["feedback"] = sets["feedback"][: args.rows]
    drawn = len(sets["feedback"])
    reuse = args.store is not None and args.store.exists()
    if args.corrections and not reuse:  # the validation and test users keep the digits they have with --rows
        users = make_users("feedback", USERS["feedback"], args.seed)
        rest = np.concatenate([picks[: args.rows], picks[used:]])
        predictor = Predictor.from_run(args.run, tta=False)
        sets["feedback"], drawn = corrections(users, args.corrections, args.confirm, predictor, pool, rest, args.seed)
    print(f"drew {sum(len(v) for v in sets.values())} digits of {sum(USERS.values())} users", flush=True)

    with tempfile.TemporaryDirectory(prefix="finetune-users-") as tmp:
        db = Path(tmp) / "feedback.db" if args.store is None else args.store.resolve()
        url, new = f"sqlite:///{db}", Path(tmp) / "new"
        drawn_file = db.with_name(db.name + ".drawn")  # how many drawings made the kept store
        if reuse:
            stored, drawn = stored_counts(url), int(drawn_file.read_text()) if drawn_file.is_file() else None
        else:
            stored = fill_store(url, sets["feedback"], Predictor.from_run(args.run, tta=False))
            if args.store is not None:
                drawn_file.write_text(f"{drawn}\n")
        print(f"stored {stored['rows']} feedback rows ({stored['model_wrong']} the model had wrong)", flush=True)
        load_before = load_average()
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "digitlab.cli", "finetune", str(args.run), "--feedback", url, "--out", str(new),
               *args.finetune_args.split()]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        print(done.stdout, done.stderr, flush=True)
        if done.returncode != 0:
            raise SystemExit(f"digitlab finetune failed ({done.returncode})")
        metrics = json.loads((new / "metrics.json").read_text())
        result = {kind: {"before": score(args.run, sets[kind]), "after": score(new, sets[kind])}
                  for kind in ("validation", "test")}  # fmt: skip
        result["mnist_val"] = mnist_val(args.run, new, ds)
    f = metrics["finetune"]
    mnist = f["compare"]["mnist_test"]
    gain = result["test"]["after"]["accuracy"] - result["test"]["before"]["accuracy"]
    out = {
        "run": str(args.run.resolve().relative_to(REPO)) if args.run.resolve().is_relative_to(REPO) else str(args.run),
        "seed": args.seed, "rows": stored, "feedback_drawn": drawn,
        "corrections": args.corrections, "confirm": args.confirm if args.corrections else None,
        "users": {k: USERS[k] for k in USERS},
        "per_user": per_user, "style": {"pen": PEN, "aspect": ASPECT, "slant": SLANT},
        "finetune": {"command": f"digitlab finetune RUN --feedback URL --out NEW {args.finetune_args}".strip(),
                     "seconds": round(seconds, 1), "train_seconds": f["training"]["seconds"],
                     "phases": f.get("phases"),
                     "options": f["options"], "split": f["split"], "held_out": f["compare"]["feedback_held_out"]},
        "test_users": result["test"], "validation_users": result["validation"], "mnist_val": result["mnist_val"],
        "mnist_test": {"n": mnist["n"], "before": mnist["before"], "after": mnist["after"]},
        "targets": {"test_users_gain_pp": round(100 * gain, 2),
                    "test_users_met": gain >= 0.05 or result["test"]["after"]["accuracy"] >= 0.99,
                    "mnist_test_drop_pp": round(100 * (mnist["before"] - mnist["after"]), 2),
                    "mnist_test_met": mnist["before"] - mnist["after"] <= 0.0005,
                    "seconds_met": seconds <= 120},
        "cpu": cpu_info().describe(), "cores": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before": load_before, "load_average_after": load_average(),
        "precision": metrics.get("precision"),
    }  # fmt: skip
    for kind in ("validation_users", "test_users", "mnist_val"):
        b, a = out[kind]["before"], out[kind]["after"]
        b, a = (b["accuracy"], a["accuracy"]) if isinstance(b, dict) else (b, a)
        v = out[kind]
        nll = f", nll {v['nll_before']} -> {v['nll_after']}" if "nll_before" in v else ""
        lost = f" ({v['lost']} lost, {v['gained']} gained{nll})" if "lost" in v else ""
        print(f"{kind:>17}: {b:.2%} -> {a:.2%}{lost}")
    print(
        f"       mnist_test: {mnist['before']:.2%} -> {mnist['after']:.2%}; finetune {seconds:.1f} s; "
        f"targets {out['targets']}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
