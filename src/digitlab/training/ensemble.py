"""Ensembles: several runs averaged into one run directory that everything downstream accepts.

    digitlab ensemble runs/a runs/b runs/c --out runs/ensemble      # the CLI edge; the run pipeline's
                                                                    # `make_ensemble` builds it with this module

The result is an ordinary run directory (docs/run-directory.md): checkpoint/best.pt holds one `EnsembleNet` (model
"ensemble", every member's weights in one state_dict), so `evaluate`, `calibrate`, `export` (one ONNX graph for the
whole ensemble), `predict`, `serve` and `app` take it like any other run. How it is made, in this order:

1. The members: at least two finished runs sharing their data and validation split. `data.datasets.split_data`
   draws both the `limit` subset and the validation split from (data, limit, val_fraction, seed), so those must all
   be equal (SPLIT_FIELDS); the shared validation split is then one that no member trained on. Members may differ in
   everything else (architecture, widths, learning rate, epochs, ...).
2. The combination: the mean of the members' temperature-scaled logits (see `EnsembleNet`).
3. On the shared validation split only: the ensemble's validation figures, then its own temperature and "not a
   digit" rule (calibration.json), refitted on its own logits.
4. Last, the official test set, read once by `evaluation.evaluate.evaluate_run` (metrics.json "test", report.md,
   plots). Steps 3 (calibration) and 4 are the run pipeline's (`digitlab.evaluation.pipeline.make_ensemble`).

Nothing here reads the test set before step 4 and nothing is chosen on it: the members' own test accuracies are
copied from their metrics.json into the report, as figures only. Choosing *which* runs to ensemble is the user's
part; choose them on their validation accuracy (`digitlab runs compare`), never on their test figures, or let
`select_members` (`digitlab ensemble --select K`) choose them on the validation split.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.core.calibration import read_temperature
from digitlab.core.config import TrainConfig
from digitlab.core.errors import ConfigError, RunDirError
from digitlab.core.jsonfile import read_json_lenient
from digitlab.core.rundir import RunDir, load_checkpoint, save_weights
from digitlab.data.datasets import Dataset, Split, load_dataset, split_data
from digitlab.model.forward import device_description, pick_device, predict_logits
from digitlab.model.networks import EnsembleNet, count_params
from digitlab.model.scoring import fit_temperature, nll

# What `data.datasets.split_data` makes the training and validation split from: members must agree on all of them.
SPLIT_FIELDS = ("data", "limit", "val_fraction", "split_seed")

COMBINE = "mean of the members' logits, each divided by its own calibrated temperature"
SELECTION = "greedy forward selection on the shared validation split's log-loss (Caruana et al. 2004), no repeats"


# --------------------------------------------------------------------------------------------- members


@dataclass(frozen=True)
class Member:
    """One finished run as an ensemble member."""

    rd: RunDir
    config: TrainConfig
    model: str
    model_args: dict[str, Any]
    state_dict: dict[str, Any]
    temperature: float
    metrics: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        """This member's entry in the ensemble's model_args."""
        return {"model": self.model, "model_args": self.model_args, "temperature": self.temperature}


def split_key(config: TrainConfig) -> dict[str, Any]:
    """The config fields the training/validation split is made from (see `data.datasets.split_data`)."""
    key = {f: getattr(config, f) for f in SPLIT_FIELDS}
    key["split_seed"] = config.effective_split_seed
    return key


def load_members(runs: Sequence[Path | str]) -> list[Member]:
    """Check and load the member runs: >= 2 distinct finished runs sharing data and validation split."""
    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs, got {len(runs)}")
    seen: dict[Path, Path] = {}
    for run in runs:
        key = run.resolve()
        if key in seen:
            raise ConfigError(f"{run} is given twice (as {seen[key]}): each run can be a member once")
        seen[key] = run
    rds = [RunDir(run).require() for run in runs]  # a missing or unfinished run: one line, before any loading
    configs = [rd.read_config() for rd in rds]
    ref = split_key(configs[0])
    for rd, config in zip(rds[1:], configs[1:], strict=True):
        key = split_key(config)
        diff = [f"{f} {key[f]!r} vs {ref[f]!r}" for f in SPLIT_FIELDS if key[f] != ref[f]]
        if diff:
            raise ConfigError(
                f"members must share their data and validation split ({', '.join(SPLIT_FIELDS)}): {rd.root} "
                f"differs from {rds[0].root} in {'; '.join(diff)}"
            )
    members = []
    for rd, config in zip(rds, configs, strict=True):
        ckpt = load_checkpoint(rd.best)
        members.append(Member(rd, config, str(ckpt["model"]), dict(ckpt.get("model_args") or {}), ckpt["state_dict"],
                              read_temperature(rd), read_json_lenient(rd.metrics)))  # fmt: skip
    return members


def build_ensemble(members: Sequence[Member]) -> EnsembleNet:
    """One EnsembleNet with every member's weights loaded, in eval mode on the CPU."""
    model = EnsembleNet([m.spec() for m in members])
    for module, m in zip(model.members, members, strict=True):
        module.load_state_dict(m.state_dict)
    return model.eval()


# --------------------------------------------------------------------------------------------- selection


def select_members(
    runs: Sequence[Path | str],
    max_members: int,
    *,
    tta: bool | None = None,
    device: str | None = None,
    dataset: Dataset | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Path], dict[str, Any]]:
    """Choose up to `max_members` of `runs` on their shared validation split alone: greedy forward selection.

    Ensemble selection after Caruana et al. (ICML 2004), without repeats: start from the run whose calibrated
    validation log-loss is lowest, then add, one at a time, the run that lowers the ensemble's log-loss most (its
    temperature refitted at each step, as `make_ensemble` will refit it); stop at `max_members` or when no run
    lowers it. Log-loss, not accuracy: a 6,000-image split holds a few dozen errors, too few to rank sets by.
    Returns the chosen runs in the order taken, and the record `make_ensemble(selection=...)` keeps in
    metrics.json: method, `max_members`, candidates and one row per step. The test set is not read.
    """
    if max_members < 2:
        raise ConfigError(f"an ensemble needs at least 2 members: --select must be 2 or more, not {max_members}")
    say = progress or (lambda msg: None)
    members = load_members(runs)
    config = _ensemble_config(members, tta, device)
    _, val = split_data(dataset if dataset is not None else load_dataset(config.data), config)
    if len(val) == 0:
        raise ConfigError("the runs have no validation split (val_fraction 0): nothing to choose members on")
    dev = pick_device(config.device)
    scaled = []  # each run's validation logits divided by its temperature, as EnsembleNet combines them
    for i, (m, model) in enumerate(zip(members, build_ensemble(members).members, strict=True), 1):
        say(f"predicting the validation split with run {i}/{len(members)} ({m.rd.root.name})")
        logits = predict_logits(model.to(dev), val.images, tta=config.tta, device=dev)
        scaled.append(np.asarray(logits, np.float64) / m.temperature)

    def scored(idx: list[int]) -> tuple[float, float]:
        mean = np.mean([scaled[k] for k in idx], axis=0)
        return nll(mean, val.labels, fit_temperature(mean, val.labels)), float(np.mean(mean.argmax(1) == val.labels))

    chosen: list[int] = []
    steps: list[dict[str, Any]] = []
    best = math.inf
    while len(chosen) < min(max_members, len(members)):
        trials = {k: scored(chosen + [k]) for k in range(len(members)) if k not in chosen}
        k, (loss, accuracy) = min(trials.items(), key=lambda kv: kv[1][0])
        if loss >= best and len(chosen) >= 2:  # (an ensemble needs two members, whatever the second buys)
            break
        chosen.append(k)
        best = loss
        steps.append({"added": str(members[k].rd.root), "members": len(chosen), "val_loss": loss,
                      "val_accuracy": accuracy})  # fmt: skip
        say(f"member {len(chosen)}: {members[k].rd.root.name} (validation log-loss {loss:.4f}, {accuracy:.2%})")
    record = {"method": SELECTION, "max_members": max_members, "candidates": [str(r) for r in runs], "steps": steps}
    return [Path(runs[k]) for k in chosen], record


# --------------------------------------------------------------------------------------------- a run


def _ensemble_config(members: Sequence[Member], tta: bool | None, device: str | None) -> TrainConfig:
    base = members[0].config
    limits = {m.config.test_limit for m in members}
    return TrainConfig(
        preset="ensemble",
        model="ensemble",
        model_args={"members": [m.spec() for m in members]},
        **split_key(base),
        test_limit=limits.pop() if len(limits) == 1 else None,  # members evaluated differently: the whole test set
        epochs=0,  # nothing is trained: the training fields keep their defaults and mean nothing here
        tta=any(m.config.tta for m in members) if tta is None else tta,
        device=device or base.device,
        precision="fp32",
    )


def _member_row(m: Member) -> dict[str, Any]:
    metrics = m.metrics
    return {
        "run": str(m.rd.root.resolve()),
        "preset": m.config.preset,
        "model": m.model,
        "model_args": m.model_args,
        "seed": m.config.seed,
        "params": metrics.get("params"),
        "train_seconds": metrics.get("train_seconds"),
        "temperature": m.temperature,
        "tta": m.config.tta,
        "val_accuracy": (metrics.get("val") or {}).get("accuracy"),
        "test_accuracy": (metrics.get("test") or {}).get("accuracy"),  # copied from the member, never used here
    }


@dataclass(frozen=True)
class EnsembleRun:
    """A new ensemble run directory before calibration (`digitlab.evaluation.pipeline.make_ensemble` goes on)."""

    rd: RunDir
    config: TrainConfig
    model: EnsembleNet  # on `device`, in eval mode
    val: Split  # the members' shared validation split
    val_logits: np.ndarray  # the ensemble's logits on `val`, with its TTA
    device: torch.device
    metrics: dict[str, Any]  # metrics.json as written: the members' and the ensemble's validation figures


def build_ensemble_run(
    runs: Sequence[Path | str],
    out: Path | str,
    *,
    tta: bool | None = None,
    device: str | None = None,
    dataset: Dataset | None = None,
    progress: Callable[[str], None] | None = None,
    selection: dict[str, Any] | None = None,
) -> EnsembleRun:
    """Average `runs` into the new run directory `out`: config.json, checkpoint/best.pt and metrics.json with the
    validation figures; the test set is not read. Arguments as for `digitlab.evaluation.pipeline.make_ensemble`."""
    say = progress or (lambda msg: None)
    rd = RunDir(Path(out))
    if rd.config.exists() or rd.best.exists() or rd.metrics.exists():
        raise RunDirError(f"{rd.root} already holds a run; choose a new --out")
    say(f"checking {len(runs)} runs")
    members = load_members(runs)
    config = _ensemble_config(members, tta, device)
    model = build_ensemble(members)
    say(f"re-making the shared validation split of {config.data}")
    _, val = split_data(dataset if dataset is not None else load_dataset(config.data), config)
    if len(val) == 0:
        raise ConfigError("the members have no validation split (val_fraction 0): nothing to calibrate the "
                          "ensemble on without touching the test set")  # fmt: skip
    rd.root.mkdir(parents=True, exist_ok=True)
    doc = json.loads(config.to_json())
    specs = [{"run": str(m.rd.root.resolve()), "temperature": m.temperature, "config": asdict(m.config)} for m in
             members]  # fmt: skip
    doc["ensemble"] = {"combine": COMBINE, "members": specs, "validation_split": {**split_key(config), "n": len(val)}}
    rd.write_json(rd.config, doc)
    save_weights(rd.best, model, config, members=[str(m.rd.root.resolve()) for m in members])
    dev = pick_device(config.device)
    model = model.to(dev)
    say(f"predicting {len(val):,} validation images" + (" with test-time augmentation" if config.tta else ""))
    val_logits = predict_logits(model, val.images, tta=config.tta, device=dev)
    metrics = _ensemble_metrics(config, model, members, val, val_logits, dev, selection)
    rd.write_json(rd.metrics, metrics)
    return EnsembleRun(rd, config, model, val, val_logits, dev, metrics)


def _ensemble_metrics(config: TrainConfig, model: nn.Module, members: Sequence[Member], val: Split,
                      val_logits: np.ndarray, device: torch.device,
                      selection: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    rows = [_member_row(m) for m in members]
    seconds = [r["train_seconds"] for r in rows]
    accuracy = float(np.mean(val_logits.argmax(1) == val.labels))
    return {
        "preset": config.preset,
        "model": config.model,
        "seed": config.seed,
        "params": count_params(model),  # the sum of the members' parameters: the ensemble adds none
        "train_seconds": round(sum(seconds), 3) if all(isinstance(s, (int, float)) for s in seconds) else None,
        "epochs": None,
        "best_epoch": None,
        "val": {"accuracy": accuracy, "loss": nll(val_logits, val.labels), "n": len(val), "tta": config.tta},
        "members": rows,
        "ensemble": {
            "n_members": len(members),
            "combine": COMBINE,
            "tta": config.tta,
            **({"selection": selection} if selection else {}),
        },
        "torch": torch.__version__,
        "device": device_description(device),
        "threads": torch.get_num_threads(),
    }
