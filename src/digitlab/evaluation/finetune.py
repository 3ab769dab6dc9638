"""Fine-tuning from users' feedback: a new run trained further on the feedback store's digits, calibrated, evaluated.

    digitlab finetune runs/fast --feedback sqlite:///feedback.db --out runs/fast-ft   # the CLI edge
    finetune_run("runs/fast", "runs/fast-ft", FinetuneConfig(feedback="sqlite:///feedback.db"))

The recipe, and why:
- Start from RUN's best checkpoint; keep RUN's config (data, validation split, augmentation, precision), so the
  new run is calibrated on RUN's own validation split and `digitlab calibrate NEW` re-makes the same one.
- Each batch is (1 - replay) feedback images and `replay` random images of RUN's *training* split (never its
  validation split, which calibration fits on, nor the test set): the model learns the users' digits without
  forgetting MNIST. Both are augmented as RUN's config augments its training batches.
- A lower learning rate (RUN's times LR_SCALE) with RUN's optimiser, a short warm-up and a linear decay to zero;
  steps scaled to the feedback (FEEDBACK_PASSES passes over it, within STEPS_RANGE).
- The replay images also keep RUN's own answers: DISTILL times the KL divergence from RUN's softmax to the
  model's at temperature DISTILL_T (learning without forgetting, Li & Hoiem 2016): a label pins only the right
  class, RUN's softmax also how sure it was and of which other digits.
- The weights kept are PARENT_WEIGHT of RUN's and the rest the fine-tuned ones, element by element (WiSE-FT,
  Wortsman et al. 2022): the users' gain stays, fewer MNIST digits that RUN read right are lost.
- The defaults were chosen on simulated users' *validation* sessions and MNIST's validation split
  (bench/finetune_users.py; docs/training.md has the tables): with labels alone replay 0.75 kept MNIST where it
  was (0.5 cost 0.15 pp); lr scales 0.05-0.2 and 250-600 steps all gave the users the same gain; keeping a
  quarter of RUN's weights cut the validation digits lost from 5 to 3 (3 seeds) for 0.2 pp of the users' 7.5 pp.
  Freezing the BatchNorm statistics changed nothing on the bundled model and made an under-trained one diverge.
  Distillation (weight 1) lost 2.7 validation digits against 3.3 without it (3 draws of users), the same gain,
  and with it replay 0.5 keeps MNIST validation (99.67% against 99.68%, 2.7 digits lost) while the validation
  users gain 0.7 pp more (97.5% against 96.8%), in half the steps. Those stores were random drawings; on stores
  as the demo collects them (200 corrections and a tenth of the right answers confirmed, 2 draws) replay 0.75
  at FEEDBACK_PASSES 14 (~180 steps) lost 4 and 6 MNIST validation digits, against 6 and 9 for replay 0.5 at
  the same steps and 6 and 10 at 268 steps, with the same validation users (97.0/98.0% against 97.5/97.5%);
  120 steps lost more (10, 11). Fewer steps also keep fine-tuning within two minutes on a 2-core fp32 CPU.
- `--style S` also slants the feedback images and makes them wider or narrower at random (horizontal shear and
  width within ±S, `training.augment.style_jitter`), so that a few users' corrections teach their kind of hand
  rather than their own slant. Off by default (STYLE): at 0.3 the validation users read 97.7% after against 96.8%
  without it (3 draws), but MNIST validation lost 13 digits against 9, and digits lost is what the defaults keep low.
- Validation: whole sessions are held out (a seeded shuffle of the session ids; a row without one is its own
  session), so a user's digits are never on both sides. They choose nothing: they are the report's "after".
- Then as `digitlab train` finishes: temperature and "not a digit" rule fitted on RUN's validation split (with
  the feedback trained on as one more digit source the rule must keep), the test evaluation, report.md, and
  model.onnx where RUN has one (so `digitlab serve`, onnx by default, reloads NEW on the same backend; the int8
  graph, which costs two more passes over the test set, is left to `digitlab export NEW --int8`).
NEW is built in a hidden folder beside it and renamed into place at the end: it is whole or absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitlab.core.calibration import load_calibration
from digitlab.core.errors import ConfigError, DataError, DigitlabError, RunDirError
from digitlab.core.hardware import cpu_info
from digitlab.core.rundir import RunDir, save_weights
from digitlab.data.datasets import load_dataset, load_eval_split, split_data
from digitlab.data.feedback_store import FeedbackStore
from digitlab.evaluation.calibrate import calibrate_split
from digitlab.evaluation.evaluate import evaluate_run
from digitlab.evaluation.refusal import MIN_SOURCE
from digitlab.inference.export import export_onnx
from digitlab.model.forward import (
    device_description,
    fold_batchnorm,
    load_model,
    pick_device,
    predict_logits,
    predict_logits_pair,
)
from digitlab.model.networks import count_params
from digitlab.model.scoring import rule_of
from digitlab.training.finetune import FinetuneConfig, default_steps, fit_mixed, interpolate
from digitlab.training.loop import split_figures
from digitlab.training.optim import precision_choice, seed_everything

__all__ = ["Feedback", "FinetuneConfig", "FinetuneResult", "finetune_run", "load_feedback", "split_by_session"]


@dataclass(frozen=True)
class Feedback:
    """Feedback rows as arrays: the 28x28 the model saw, the label, the session key (a row's own id without one)."""

    images: np.ndarray  # uint8 (N, 28, 28)
    labels: np.ndarray  # int64 (N,)
    sessions: np.ndarray  # str (N,)
    url: str  # without its password
    skipped_empty: int  # rows the model saw as empty: preprocessing, not the model, refuses those

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.images[idx], self.labels[idx]


@dataclass(frozen=True)
class FinetuneResult:
    run: RunDir
    metrics: dict[str, Any]  # NEW/metrics.json
    seconds: float  # the whole command, from reading the feedback to the last file written


# --------------------------------------------------------------------------------------------- the feedback


def load_feedback(url: str | None, model: str | None = None) -> Feedback:
    """Every usable row of the store at `url` (an existing one: a missing SQLite file is an error)."""
    images, labels, sessions, empty = [], [], [], 0
    with FeedbackStore.open(url, create=False) as store:
        shown = store.url
        for r in store.rows(model=model):
            if r.status == "empty":
                empty += 1
                continue
            images.append(r.model_input)
            labels.append(r.label)
            sessions.append(r.session if r.session is not None else f"row:{r.id}")
    stack = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    return Feedback(stack, np.array(labels, np.int64), np.array(sessions, dtype=str), shown, empty)


def split_by_session(sessions: Sequence[str], holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, held out): whole sessions, in a seeded shuffle of their sorted ids, are held out until
    they hold `holdout` of the rows; at least one session goes to each side (DataError when there is one)."""
    sessions = np.asarray(sessions, dtype=str)
    names = np.array(sorted(set(sessions.tolist())), dtype=str)
    if len(names) < 2:
        raise DataError(f"the feedback comes from {len(names)} session(s): holding one out for validation needs "
                        "at least 2 (rows without a session count one each)")  # fmt: skip
    order = names[np.random.default_rng(seed).permutation(len(names))]
    counts = {s: int(n) for s, n in zip(*np.unique(sessions, return_counts=True), strict=True)}
    held: list[str] = []
    for name in order[:-1]:  # the last one always trains
        held.append(str(name))
        if sum(counts[s] for s in held) >= holdout * len(sessions):
            break
    mask = np.isin(sessions, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


# --------------------------------------------------------------------------------------------- the run


def finetune_run(run: str | Path, out: str | Path, ft: FinetuneConfig | None = None, *,
                 progress: Callable[[str], None] | None = None, dataset: Any = None) -> FinetuneResult:  # fmt: skip
    """Fine-tune RUN on the feedback into the new run directory `out` (see the module docstring); the metrics."""
    ft = ft or FinetuneConfig()
    ft.check()
    started = time.perf_counter()
    timeline: list[tuple[str, float]] = []  # (phase, when it began) -> metrics.json["finetune"]["phases"]

    def say(msg: str) -> None:
        timeline.append((msg, time.perf_counter()))
        if progress is not None:
            progress(msg)

    parent = RunDir(Path(run)).require()
    target = Path(out)
    if target.exists() or target.is_symlink():
        raise RunDirError(f"{target} already exists; choose a new --out (fine-tuning never overwrites a run)")
    config = parent.read_config()
    if config.preset == "ensemble":
        raise ConfigError(f"{parent.root} is an ensemble: fine-tune its members, then ensemble them again")
    say(f"reading the feedback{'' if ft.model is None else f' of model {ft.model}'}")
    fb = load_feedback(ft.feedback, ft.model)
    if len(fb.labels) < ft.min_rows:
        raise DataError(f"{len(fb.labels)} usable feedback row(s) in {fb.url}"
                        f"{'' if ft.model is None else f' for model {ft.model}'}: fine-tuning needs at least "
                        f"{ft.min_rows}")  # fmt: skip
    train_idx, held_idx = split_by_session(fb.sessions, ft.holdout, ft.seed)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        metrics = _build(parent, RunDir(tmp), config, ft, fb, train_idx, held_idx, say, dataset)
        metrics["finetune"]["phases"] = _phases(timeline, time.perf_counter())
        RunDir(tmp).write_json(RunDir(tmp).metrics, metrics)
        if target.exists():
            raise RunDirError(f"{target} appeared while fine-tuning; the new run is left out")
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return FinetuneResult(RunDir(target), metrics, time.perf_counter() - started)


def _phases(timeline: list[tuple[str, float]], end: float) -> dict[str, float]:
    """Seconds each phase took: from its progress message to the next one (the last one to `end`)."""
    ends = [t for _, t in timeline[1:]] + [end]
    return {msg: round(stop - t, 2) for (msg, t), stop in zip(timeline, ends, strict=True)}


def _build(parent: RunDir, rd: RunDir, config: Any, ft: FinetuneConfig, fb: Feedback, train_idx: np.ndarray,
           held_idx: np.ndarray, say: Callable[[str], None], dataset: Any) -> dict[str, Any]:  # fmt: skip
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    say(f"loading {parent.best} and {config.data}")
    before = load_model(parent, device=device)
    model = load_model(parent, device=device)
    ds = dataset if dataset is not None else load_dataset(config.data)
    replay, val = split_data(ds, config)
    per_batch = ft.batch_size - round(ft.batch_size * ft.replay)
    steps = ft.steps or default_steps(len(train_idx), per_batch)
    cpu = cpu_info()
    precision = precision_choice(config.precision, device, cpu)
    seed_everything(ft.seed)
    say(f"training {steps} steps on {len(train_idx)} feedback rows with MNIST replay")
    amp = None if precision.dtype is None else getattr(torch, precision.dtype)
    seconds, loss = fit_mixed(model, fb.take(train_idx), (replay.images, replay.labels), config, ft, steps, device,
                              amp, teacher=fold_batchnorm(before))  # fmt: skip
    interpolate(model, before, ft.parent_weight)
    model.eval()
    spec = _spec(parent, config, ft, fb, train_idx, held_idx, steps, per_batch)
    rd.root.mkdir(parents=True)
    _write_config(rd, config, spec)
    save_weights(rd.best, model, config, epoch=1, finetune=spec["parent"])
    hardware = {"cpu": cpu.describe(), "precision": precision.line()}
    metrics = _finish(parent, rd, config, before, model, fb, train_idx, held_idx, val, device, say, spec,
                      {"seconds": round(seconds, 3), "loss": loss, **hardware})  # fmt: skip
    if (parent.root / "model.onnx").is_file():  # serve NEW as RUN is served (its default backend)
        say("exporting model.onnx")
        export_onnx(rd)  # the int8 graph (two more test passes) is left to `digitlab export NEW --int8`
        metrics = rd.read_metrics()  # with its "export" entry
    return metrics


def _spec(parent: RunDir, config: Any, ft: FinetuneConfig, fb: Feedback, train_idx: np.ndarray,
          held_idx: np.ndarray, steps: int, per_batch: int) -> dict[str, Any]:  # fmt: skip
    """What NEW/config.json["finetune"] records: the parent, the feedback (its URL without a password), the split."""
    held = sorted(set(fb.sessions[held_idx].tolist()))
    return {
        "parent": {"run": parent.root.resolve().name, "path": str(parent.root.resolve()),
                   "checkpoint_sha256": hashlib.sha256(parent.best.read_bytes()).hexdigest()},
        "feedback": {"url": fb.url, "model": ft.model, "rows": len(fb.labels), "skipped_empty": fb.skipped_empty,
                     "sessions": len(set(fb.sessions.tolist()))},
        "split": {"train_rows": len(train_idx), "held_out_rows": len(held_idx), "held_out_sessions": len(held),
                  "train_sessions": len(set(fb.sessions[train_idx].tolist())), "seed": ft.seed,
                  "holdout": ft.holdout},
        "options": {**{k: v for k, v in asdict(ft).items() if k not in ("feedback", "model")}, "steps": steps,
                    "feedback_per_batch": per_batch, "replay_per_batch": ft.batch_size - per_batch,
                    "lr": config.lr * ft.lr_scale, "optimizer": config.optimizer},
    }  # fmt: skip


def _write_config(rd: RunDir, config: Any, spec: dict[str, Any]) -> None:
    doc = json.loads(config.to_json())
    doc["finetune"] = spec  # TrainConfig.load reads its own fields and ignores this one
    rd.write_json(rd.config, doc)


# --------------------------------------------------------------------------------------------- finishing


def _finish(parent: RunDir, rd: RunDir, config: Any, before: Any, model: Any, fb: Feedback, train_idx: np.ndarray,
            held_idx: np.ndarray, val: Any, device: Any, say: Callable[[str], None], spec: dict[str, Any],
            training: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """metrics.json, calibration.json, the before/after comparison, then the test evaluation and report.md."""
    say("scoring the validation split")
    if config.tta:  # both from one pass: the rule must keep the validation digits as served (no TTA) too
        val_logits, val_plain = predict_logits_pair(model, val.images, device=device)
    else:
        val_logits = val_plain = predict_logits(model, val.images, device=device)
    val_figures = split_figures(val_logits, val.labels)
    metrics: dict[str, Any] = {
        "preset": config.preset, "model": config.model, "seed": config.seed, "params": count_params(model),
        "train_seconds": training["seconds"], "epochs": 1, "best_epoch": 1,
        "val": {**val_figures, "n": len(val), "tta": config.tta}, "torch": torch.__version__,
        "device": device_description(device), "cpu": training["cpu"], "precision": training["precision"],
        "threads": torch.get_num_threads(), "finetune": {**spec, "training": training},
    }  # fmt: skip
    rd.write_json(rd.metrics, metrics)
    say("fitting the temperature and the not-a-digit rule")
    trained_on = fb.images[train_idx]  # one more digit source the rule must keep, when there are enough of them
    calibrate_split(rd, model, val, val_logits, config, device, val_plain_logits=val_plain,
                    extra_sources={"feedback": trained_on} if len(trained_on) >= MIN_SOURCE else None)  # fmt: skip
    say("comparing with the parent on the feedback")
    rules = [rule_of(load_calibration(parent)), rule_of(load_calibration(rd))]
    models = (before, model)
    metrics["finetune"]["compare"] = {
        "mnist_test": _parent_test(parent, before, config, device),
        "feedback_held_out": _compare(models, rules, *fb.take(held_idx), config.tta, device),
        "feedback_trained": _compare(models, rules, *fb.take(train_idx), config.tta, device),
    }
    rd.write_json(rd.metrics, metrics)
    say("evaluating on the test set")
    metrics = evaluate_run(rd, device=str(device))  # report.md takes "after" on MNIST test from metrics["test"]
    metrics["finetune"]["compare"]["mnist_test"]["after"] = metrics["test"]["accuracy"]
    rd.write_json(rd.metrics, metrics)
    return metrics


def _parent_test(parent: RunDir, model: Any, config: Any, device: Any) -> dict[str, Any]:
    """RUN's MNIST test accuracy: as its metrics.json has it when that is the same split with the same TTA (each
    pass over the test set costs seconds), else measured now."""
    test = load_eval_split(config.data)
    if config.test_limit:
        test = test.subset(slice(0, config.test_limit))
    try:
        old = parent.read_metrics().get("test") or {}
    except DigitlabError:
        old = {}
    if old.get("n") == len(test) and old.get("tta") == config.tta and isinstance(old.get("accuracy"), float):
        return {"n": len(test), "before": old["accuracy"], "after": None, "before_from": "parent's metrics.json"}
    logits = predict_logits(model, test.images, tta=config.tta, device=device)
    return {"n": len(test), "before": float(np.mean(logits.argmax(1) == test.labels)), "after": None,
            "before_from": "measured"}  # fmt: skip


def _compare(models: tuple[Any, Any], rules: list[Any], images: np.ndarray, labels: np.ndarray, tta: bool,
             device: Any) -> dict[str, Any]:  # fmt: skip
    """Accuracy (arg-max, with the run's TTA) of the parent and the new model, and the share each one's "not a
    digit" rule refuses."""
    out: dict[str, Any] = {"n": len(labels)}
    for when, m, rule in zip(("before", "after"), models, rules, strict=True):
        logits = predict_logits(m, images, tta=tta, device=device)
        out[when] = float(np.mean(logits.argmax(1) == labels)) if len(labels) else None
        refused = None if rule is None or not len(labels) else float(np.mean(~rule.accepts(logits, images)))
        out[f"refused_{when}"] = refused
    return out
