"""What survives a stopped training run: its state, RNG streams and history, saved in and restored from last.pt."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.core.atomic import atomic_write_text
from digitlab.core.config import TrainConfig
from digitlab.core.errors import RunDirError
from digitlab.core.rundir import RunDir, load_checkpoint, save_checkpoint
from digitlab.training.distributed import Dist

HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


class TrainState:
    """Everything that changes during training and must survive a resume."""

    def __init__(self) -> None:
        self.epoch = 0  # epochs fully completed
        self.step = 0  # steps completed inside the current epoch
        self.perm: torch.Tensor | None = None  # the current epoch's order
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.bad_epochs = 0
        self.train_seconds = 0.0
        self.epoch_loss = 0.0
        self.epoch_correct = 0
        self.epoch_seen = 0
        self.done = False  # every training step taken (last epoch or early stop): only finishing is left
        self.history: list[dict[str, Any]] = []  # one row per completed epoch: history.csv is written from it

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load(self, d: dict[str, Any]) -> None:
        for k, v in d.items():
            setattr(self, k, v)


# --------------------------------------------------------------------------------------------- history.csv


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """history.csv, the whole file at once (atomically) from the rows the checkpoint holds."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\r\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in HISTORY_FIELDS})
    atomic_write_text(path, buf.getvalue())


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _history_upto(path: Path, epoch: int) -> list[dict[str, Any]]:
    """history.csv's rows for epochs 1..`epoch`, one each (the last written wins): for checkpoints that predate
    the history kept in last.pt, whose history.csv may hold rows the checkpoint never reached."""
    rows: dict[int, dict[str, Any]] = {}
    for row in read_history(path):
        try:
            e = int(row["epoch"])
        except (KeyError, TypeError, ValueError):
            continue
        if 1 <= e <= epoch:
            rows[e] = {k: v for k, v in row.items() if v not in ("", None)}
    return [rows[e] for e in sorted(rows)]


# --------------------------------------------------------------------------------------------- last.pt


def rng_states(gen: torch.Generator) -> dict[str, Any]:
    """Every RNG's state in types `torch.load(weights_only=True)` accepts (tensors, numbers, tuples)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_rng = {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                 "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip
    return {"generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "numpy_rng": numpy_rng,
            "python_rng": random.getstate()}  # fmt: skip


def _numpy_rng_from_tensors(d: dict[str, Any]) -> tuple:
    return d["kind"], d["key"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"]


def save_last(rd: RunDir, model: nn.Module, opt: Any, sched: Any, scaler: Any, ema: Any, state: TrainState,
              rng: list[dict], config: TrainConfig) -> None:  # fmt: skip
    """checkpoint/last.pt: weights, optimiser, schedule, scaler, EMA, loop state (history included), RNGs."""
    save_checkpoint(rd.last, {
        "model": config.model, "model_args": config.model_args, "state_dict": model.state_dict(),
        "config": json.loads(config.to_json()), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
        "state": state.to_dict(), "rng": rng,
    })  # fmt: skip


def load_last(rd: RunDir, device: str | torch.device = "cpu") -> dict[str, Any]:
    """last.pt, read weights-only and checked to be a resumable checkpoint (not, say, a best.pt copied over it)."""
    ckpt = load_checkpoint(rd.last, device)
    missing = [k for k in ("optimizer", "scheduler", "state") if k not in ckpt]
    if missing or not isinstance(ckpt["state"], dict):
        what = ", ".join(missing) or "loop state"
        raise RunDirError(f"cannot resume from {rd.last}: not a resumable checkpoint (no {what} in it)")
    return ckpt


def restore(rd: RunDir, ckpt: dict[str, Any], model: nn.Module, opt: Any, sched: Any, scaler: Any, ema: Any,
            state: TrainState, gen: torch.Generator, dd: Dist) -> None:  # fmt: skip
    """Put a run back where last.pt left it; history.csv is rewritten to match (the checkpoint's own rows)."""
    try:
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt:  # absent in checkpoints written before AMP support
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        saved_state = ckpt["state"]
        state.load(saved_state)
        saved = ckpt.get("rng", [ckpt])  # per-rank RNG states (files from before torchrun support: top level)
        if len(saved) != dd.world_size:
            raise RunDirError(f"{rd.last} was written by {len(saved)} process(es); resume with as many")
        rng = saved[dd.rank]
        gen.set_state(rng["generator"])
        torch.set_rng_state(rng["torch_rng"])
        np.random.set_state(_numpy_rng_from_tensors(rng["numpy_rng"]))
        random.setstate(rng["python_rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        why = " ".join(str(e).split())[:160]
        raise RunDirError(f"cannot resume from {rd.last}: not a resumable checkpoint of this run ({why})") from None
    if "history" not in saved_state:
        state.history = _history_upto(rd.history, state.epoch)
    if dd.is_main:
        write_history(rd.history, state.history)


def start_fresh(rd: RunDir, config: TrainConfig) -> None:
    """A new run's config.json (atomic). The history.csv or best.pt of a run killed before its first last.pt
    (so it could not be resumed) are removed, not mixed into this one; history.csv reappears with the first
    checkpoint."""
    rd.root.mkdir(parents=True, exist_ok=True)
    rd.history.unlink(missing_ok=True)
    rd.best.unlink(missing_ok=True)
    atomic_write_text(rd.config, config.to_json() + "\n")
