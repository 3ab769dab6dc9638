"""Training: the loop, validation, checkpoints, resume, and clean stops on Ctrl-C / SIGTERM.

    digitlab train --preset fast --out runs/fast        # the CLI edge; `digitlab.evaluation.pipeline.train`
                                                        # runs this loop, then calibrates and evaluates

The loop is pytorch/examples' canonical one with the reference's callbacks: reduce-on-plateau (or one-cycle),
early stopping that restores the best weights, best-checkpoint saving. A stop request (signal) is honoured after
the current step: `checkpoint/last.pt` then holds everything needed to continue bit-for-bit on CPU. After the
last step (validation, and what `after` does: calibration, test evaluation, plots, export) a stop is immediate,
and `resume` redoes that part. The saved state lives in `digitlab.training.checkpointing`, the signal handling
in `digitlab.training.stopping`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DistributedSampler

from digitlab.core.config import TrainConfig, recipe_line
from digitlab.core.errors import ConfigError, RunDirError, StorageError
from digitlab.core.hardware import cpu_info
from digitlab.core.rundir import RunDir, save_weights
from digitlab.data.datasets import Dataset, Split, load_dataset, split_data
from digitlab.model.forward import (
    device_description,
    load_model,
    pick_device,
    predict_logits,
    predict_logits_pair,
    to_tensor,
)
from digitlab.model.networks import build_model, count_params
from digitlab.training.augment import augment_batch
from digitlab.training.checkpointing import (
    TrainState,
    load_last,
    read_history,
    restore,
    rng_states,
    save_last,
    start_fresh,
    write_history,
)
from digitlab.training.distributed import Dist, init_distributed, shutdown
from digitlab.training.optim import ema_update, make_optimizer, make_scheduler, precision_choice, seed_everything
from digitlab.training.outliers import OUTLIER, POOL, exposure_loss, letter_pool
from digitlab.training.restroke import glyph_pool, pen_pool
from digitlab.training.stopping import Interrupted, StopRequest, stop_on_signals

__all__ = ["Finished", "Interrupted", "Reporter", "TrainResult", "run_training", "split_figures"]


class Reporter(Protocol):
    """Progress sink; the CLI passes a Rich one, tests pass nothing."""

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...
    def step(self, loss: float, accuracy: float, lr: float) -> None: ...
    def end_epoch(self, row: dict[str, Any]) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass
class TrainResult:
    run: RunDir
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Finished:
    """A trained run, handed to what comes after training (`run_training(after=...)`: the run pipeline)."""

    rd: RunDir
    config: TrainConfig
    model: nn.Module  # the best checkpoint, loaded back, in eval mode on `device`
    val: Split
    val_logits: np.ndarray | None  # the model's logits on `val` (with the run's TTA); None when `val` is empty
    val_plain_logits: np.ndarray | None  # the same without TTA
    device: torch.device
    metrics: dict[str, Any]  # metrics.json as written: the training and validation figures
    check: Callable[[], None]  # raises Interrupted when a stop was requested: call it between steps


After = Callable[[Finished], dict[str, Any]]


def run_training(
    config: TrainConfig | None,
    out: Path,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] | None = None,
    dataset: Dataset | None = None,
    after: After | None = None,
) -> TrainResult:
    """Train `config` into run directory `out`; with `resume`, continue from `out/checkpoint/last.pt`
    (the config is then read from the run directory and `config` may be None).

    Writes checkpoint/best.pt, history.csv and metrics.json (training and validation figures), then calls
    `after` (rank 0 only) with the `Finished` run; its return value is the result's metrics. Raises
    `Interrupted` after saving `last.pt` when `should_stop()` turns true or SIGINT/SIGTERM arrives, in the loop
    or after it (validation and `after` are then redone by `resume`).
    """
    with stop_on_signals(should_stop) as stop:
        return _train(config, out, resume=resume, reporter=reporter, stop=stop, dataset=dataset, after=after)


def _train(
    config: TrainConfig | None,
    out: Path,
    *,
    resume: bool,
    reporter: Reporter | None,
    stop: StopRequest,
    dataset: Dataset | None,
    after: After | None,
) -> TrainResult:
    rd = RunDir(Path(out))
    if resume:
        if not rd.last.exists():
            why = f"no {rd.last}"
            if rd.config.exists():  # killed before its first checkpoint: less than an epoch lost, nothing to resume
                why += "; it stopped before its first checkpoint: train it again with the same options and --out"
            raise RunDirError(f"nothing to resume in {rd.root} ({why})")
        config = rd.read_config()
    elif config is None:
        raise ConfigError("run_training() needs a config unless resuming")
    elif rd.metrics.exists() or rd.last.exists():
        raise RunDirError(f"{rd.root} already holds a run; choose a new --out or use --resume")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    dd = init_distributed(use_cuda=device.type == "cuda")
    try:
        s = _start(config, rd, dd, device, resume, reporter if dd.is_main else None, stop, dataset)
        while not s.state.done and s.state.epoch < config.epochs:
            _epoch(s, s.state.epoch + 1)
        return _end(s, after)
    except StorageError as e:
        if rd.last.exists():  # every write is atomic: the last checkpoint is whole, whatever failed to be written
            raise StorageError(f"{e}; the run can continue from its last checkpoint: "
                               f"`digitlab train --resume {rd.root}`") from None  # fmt: skip
        raise
    finally:
        shutdown(dd)


# --------------------------------------------------------------------------------------------- setting up


@dataclass
class _Session:
    """One rank's training run: its data on the device, the model and its optimiser state, where it writes."""

    config: TrainConfig
    rd: RunDir
    dd: Dist
    device: torch.device
    reporter: Reporter | None
    stop: StopRequest
    batch: int  # per rank; the global batch (and so the lr) is the config's
    x_all: torch.Tensor  # the whole training split as one tensor: no DataLoader
    y_all: torch.Tensor
    sampler: DistributedSampler
    steps_per_epoch: int
    val_split: Split
    model: nn.Module  # the plain module; `net` wraps it (DDP, torch.compile) for the training steps
    net: nn.Module
    channels_last: bool
    ema: AveragedModel | None
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    gen: torch.Generator  # shuffling + augmentation
    hardware: dict[str, str]  # the CPU and the precision, said once and kept in metrics.json
    state: TrainState = field(default_factory=TrainState)
    pens: tuple[torch.Tensor, torch.Tensor] | None = None  # the `restroke` pool (images, labels); None when off
    letters: torch.Tensor | None = None  # the `outliers` pool (outlier exposure); None when off
    glyphs: tuple[torch.Tensor, torch.Tensor] | None = None  # the `glyphs` pool (font digits); None when off

    @property
    def final(self) -> nn.Module:
        """The weights that are validated and kept: the EMA copy when there is one (the raw weights only train)."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def aug_gen(self) -> torch.Generator | None:
        return self.gen if self.device.type == "cpu" else None  # a CPU generator cannot drive CUDA draws


def _start(config: TrainConfig, rd: RunDir, dd: Dist, device: torch.device, resume: bool,
           reporter: Reporter | None, stop: StopRequest, dataset: Dataset | None) -> _Session:  # fmt: skip
    """Everything the epochs need, in an order that makes a resumed run continue bit for bit."""
    if dd.enabled and device.type == "cuda":
        device = torch.device("cuda", dd.local_rank)
    if config.batch_size % dd.world_size:
        raise ConfigError(f"--batch-size {config.batch_size} is the global batch: it must divide by {dd.world_size}")
    saved = load_last(rd, device) if resume else None  # before the data: a broken checkpoint fails at once
    seed_everything(config.seed)  # the same on every rank: identical initial weights
    train_split, val_split = split_data(dataset if dataset is not None else load_dataset(config.data), config)
    x_all = to_tensor(train_split.images).to(device)
    n, batch = len(x_all), config.batch_size // dd.world_size
    sampler = DistributedSampler(range(n), dd.world_size, dd.rank, shuffle=True, seed=config.seed, drop_last=True)
    steps_per_epoch = max(1, (len(sampler) if dd.enabled else n) // batch)  # no ragged last batch: same shapes
    model, net, channels_last = _build_model(config, dd, device)
    ema = AveragedModel(model, avg_fn=ema_update(config.ema), use_buffers=True) if config.ema else None
    opt = make_optimizer(model, config)
    sched = make_scheduler(opt, config, steps_per_epoch)
    cpu = cpu_info()
    precision = precision_choice(config.precision, device, cpu)
    amp_dtype = None if precision.dtype is None else getattr(torch, precision.dtype)
    hardware = {"cpu": cpu.describe(), "precision": precision.line(), "recipe": recipe_line(config)}
    if reporter:
        reporter.note("; ".join(hardware.values()))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    gen = torch.Generator(device="cpu").manual_seed(config.seed + 1000 * dd.rank)
    if dd.enabled:
        torch.manual_seed(config.seed + dd.rank)  # per-rank dropout streams
    s = _Session(config, rd, dd, device, reporter, stop, batch, x_all, torch.from_numpy(train_split.labels).to(device),
                 sampler, steps_per_epoch, val_split, model, net, channels_last, ema, opt, sched, scaler, amp_dtype,
                 gen, hardware)  # fmt: skip
    if saved is not None:
        restore(rd, saved, model, opt, sched, scaler, ema, s.state, gen, dd)
    elif dd.is_main:
        start_fresh(rd, config)
    t_pool = time.perf_counter()  # the pen-width copies are part of the recipe's cost: timed with training
    s.pens = pen_pool(train_split.images, train_split.labels, config.restroke, config.seed, reporter is not None,
                      device)  # fmt: skip
    s.letters = letter_pool(config.outliers, config.seed, device, min(POOL, len(train_split)))
    s.glyphs = glyph_pool(config.glyphs, config.seed, reporter is not None, device)
    s.state.train_seconds += time.perf_counter() - t_pool
    return s


def _build_model(config: TrainConfig, dd: Dist, device: torch.device) -> tuple[nn.Module, nn.Module, bool]:
    """(the model, what the training steps call, channels_last): memory format, SyncBN, DDP and compile applied."""
    model = build_model(config.model, **config.model_args).to(device)
    channels_last = config.channels_last
    if channels_last is None:  # measured on CPU: FastNet +30%, StridedNet +2% (bench/train_options.py for others)
        channels_last = device.type == "cpu" and config.model in ("fast", "strided")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dd.enabled and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if dd.enabled \
        else model  # fmt: skip
    if config.compile:
        net = torch.compile(net)  # training steps only: evaluation runs the plain module (same parameters)
    return model, net, bool(channels_last)


# --------------------------------------------------------------------------------------------- an epoch


def _epoch(s: _Session, epoch: int) -> None:
    """Train one epoch (or its rest, after a resume), validate when due, keep the best weights, checkpoint."""
    state, dd = s.state, s.dd
    if state.perm is None:
        if dd.enabled:
            s.sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle each epoch, disjoint shards per rank
            state.perm = torch.tensor(list(s.sampler))
        else:
            state.perm = torch.randperm(len(s.x_all), generator=s.gen)
    if s.reporter:
        s.reporter.start_epoch(epoch, s.config.epochs, s.steps_per_epoch, state.step)
    s.net.train()
    t0 = time.perf_counter()
    while state.step < s.steps_per_epoch:
        _step(s)
        if dd.any(s.stop()) and state.step < s.steps_per_epoch:
            state.train_seconds += time.perf_counter() - t0
            _checkpoint(s)
            raise Interrupted(str(s.rd.root))
    row = _epoch_row(s, epoch)
    improved = _validate(s, epoch, row)
    state.train_seconds += time.perf_counter() - t0
    row["seconds"] = round(state.train_seconds, 3)
    if improved and dd.is_main:
        save_weights(s.rd.best, s.final, s.config, epoch=epoch, val=row.get("val_accuracy"))
    state.history.append(row)
    state.epoch, state.step, state.perm = epoch, 0, None
    state.epoch_loss, state.epoch_correct, state.epoch_seen = 0.0, 0, 0
    patience = s.config.early_stop_patience
    state.done = epoch >= s.config.epochs or (patience is not None and state.bad_epochs >= patience)
    _checkpoint(s)  # with `done` set, a resume goes straight to finishing
    if s.reporter:
        s.reporter.end_epoch(row)
    if dd.any(s.stop()):
        raise Interrupted(str(s.rd.root), finishing=state.done)


def _batch(s: _Session) -> tuple[torch.Tensor, torch.Tensor]:
    """The next training batch (images, labels), augmented as the config says."""
    state = s.state
    idx = state.perm[state.step * s.batch : (state.step + 1) * s.batch].to(s.device)
    x, y = augment_batch(s.x_all[idx], s.y_all[idx], s.config, s.pens, s.aug_gen, state.epoch, s.letters,
                        s.glyphs)  # fmt: skip
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _step(s: _Session) -> None:
    """One optimiser step on the next batch; its loss and accuracy go into the epoch's running sums."""
    x, y = _batch(s)
    with torch.autocast(s.device.type, dtype=s.amp_dtype, enabled=s.amp_dtype is not None):
        logits = s.net(x)
        loss = exposure_loss(logits.float(), y, s.config.label_smoothing, s.config.outlier_weight)
    s.opt.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    s.scaler.step(s.opt)
    s.scaler.update()
    if s.ema is not None:
        s.ema.update_parameters(s.model)
    if s.config.schedule == "onecycle":
        s.sched.step()
    state = s.state
    state.step += 1
    batch_loss = loss.item()
    correct = (logits.argmax(1) == y).sum().item()  # outliers (label OUTLIER) never count as correct
    seen = int((y != OUTLIER).sum().item())
    state.epoch_loss += batch_loss * seen
    state.epoch_correct += correct
    state.epoch_seen += seen
    if s.reporter:
        s.reporter.step(batch_loss, correct / seen, s.opt.param_groups[0]["lr"])


def _epoch_row(s: _Session, epoch: int) -> dict[str, Any]:
    """history.csv's row for the epoch: the training loss and accuracy summed over the ranks, and the lr."""
    loss_sum, correct_sum, seen = s.dd.all_sum([s.state.epoch_loss, s.state.epoch_correct, s.state.epoch_seen])
    return {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct_sum / max(seen, 1),
            "lr": s.opt.param_groups[0]["lr"]}  # fmt: skip


def _validate(s: _Session, epoch: int, row: dict[str, Any]) -> bool:
    """Validate when due, step the plateau schedule, count epochs without improvement: True when these weights
    are the best so far (always, without a validation split: the last epoch is the model)."""
    c, state, dd = s.config, s.state, s.dd
    if len(s.val_split) == 0:
        state.best_epoch = epoch
        return True
    if not (epoch % c.eval_every == 0 or epoch == c.epochs):
        return False
    # Rank 0 validates and broadcasts, so every rank takes the same scheduler/early-stopping decisions.
    val = _evaluate_split(s.final, s.val_split, s.device)[0] if dd.is_main else {"loss": 0.0, "accuracy": 0.0}
    val["loss"], val["accuracy"] = dd.broadcast([val["loss"], val["accuracy"]])
    row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    if c.schedule == "plateau":
        s.sched.step(val["loss"])
    if val["loss"] < state.best_loss:
        state.best_loss, state.best_epoch, state.bad_epochs = val["loss"], epoch, 0
        return True
    state.bad_epochs += 1
    return False


def _checkpoint(s: _Session) -> None:
    """last.pt and history.csv (rank 0, with every rank's RNG states), then all ranks meet."""
    states = s.dd.gather(rng_states(s.gen))
    if s.dd.is_main:
        save_last(s.rd, s.model, s.opt, s.sched, s.scaler, s.ema, s.state, states, s.config)
        write_history(s.rd.history, s.state.history)  # after last.pt: never ahead of the checkpoint
    s.dd.barrier()


def _evaluate_split(
    model: nn.Module, split: Split, device: torch.device, tta: bool = False
) -> tuple[dict[str, float], np.ndarray]:
    """Loss and accuracy on a labelled split, and the logits they came from."""
    logits = predict_logits(model, split.images, tta=tta, device=device)
    return split_figures(logits, split.labels), logits


def split_figures(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Loss (cross-entropy) and accuracy of logits (N, K) on labels (N,)."""
    t, y = torch.from_numpy(np.asarray(logits)), torch.from_numpy(np.asarray(labels))
    return {"loss": F.cross_entropy(t, y).item(), "accuracy": (t.argmax(1) == y).float().mean().item()}


# --------------------------------------------------------------------------------------------- the end


def _end(s: _Session, after: After | None) -> TrainResult:
    """After the last step: rank 0 writes metrics.json and runs `after`; the other ranks wait for it."""
    dd = s.dd
    identical = dd.same_weights(s.model)
    if not dd.is_main:
        # Wait for rank 0's final evaluation: a rank that leaves first tears its end of the gloo group down
        # while rank 0 still holds it, which can abort the process ("terminate called without an active exception").
        dd.barrier()
        return TrainResult(s.rd, {})
    distributed = None
    if dd.enabled:
        c = s.config
        distributed = {"world_size": dd.world_size, "backend": dd.backend, "global_batch": c.batch_size,
                       "per_rank_batch": s.batch, "sync_bn": c.sync_bn, "weights_identical": identical}  # fmt: skip
    try:
        # Training is saved (last.pt says `done`): a stop from here on raises at once and `resume` redoes the rest.
        with s.stop.immediate(str(s.rd.root)):
            if not s.rd.best.exists():  # validated only at the end and never improved: keep the final weights
                save_weights(s.rd.best, s.final, s.config, epoch=s.state.epoch)
            metrics = finish_run(s, distributed, after)
    finally:
        dd.barrier()  # releases the other ranks (see above), also when this one stopped or failed
    return TrainResult(s.rd, metrics, read_history(s.rd.history))


def finish_run(s: _Session, distributed: dict[str, Any] | None, after: After | None) -> dict[str, Any]:
    """Write metrics.json for the best checkpoint (validation figures), then hand the run to `after`.

    `val_ablation` records what TTA and the EMA (the final weights without it) buy on validation.
    """
    config, rd, device = s.config, s.rd, s.device
    check = lambda: s.stop.check(str(rd.root))  # noqa: E731
    best = load_model(rd, device=device)
    val: dict[str, Any] = {"accuracy": None, "loss": None}
    logits = plain = None
    if len(s.val_split):
        if config.tta:  # both from one pass: calibration and the ablation want the logits without TTA too
            logits, plain = predict_logits_pair(best, s.val_split.images, device=device)
        else:
            logits = plain = predict_logits(best, s.val_split.images, device=device)
        val = {**split_figures(logits, s.val_split.labels), "n": len(s.val_split), "tta": config.tta}
    metrics = {"preset": config.preset, "model": config.model, "seed": config.seed, "params": count_params(s.final),
               "train_seconds": round(s.state.train_seconds, 3), "epochs": s.state.epoch,
               "best_epoch": s.state.best_epoch, "val": val, "torch": torch.__version__,
               "device": device_description(device), **s.hardware, "threads": torch.get_num_threads()}  # fmt: skip
    ablation = _val_ablation(s, plain) if plain is not None else {}
    if ablation:
        metrics["val_ablation"] = ablation
    if distributed:
        metrics["distributed"] = distributed
    check()
    rd.write_json(rd.metrics, metrics)
    if after is None:
        return metrics
    return after(Finished(rd, config, best, s.val_split, logits, plain, device, metrics, check))


def _val_ablation(s: _Session, plain_logits: np.ndarray) -> dict[str, float]:
    """Validation accuracy without test-time augmentation (from the best model's logits without it) and without
    the EMA (the raw final weights)."""
    ablation = {}
    if s.config.tta:
        ablation["without_tta"] = float(np.mean(plain_logits.argmax(1) == s.val_split.labels))
    if s.ema is not None:
        ablation["without_ema"] = _evaluate_split(s.model, s.val_split, s.device, tta=s.config.tta)[0]["accuracy"]
    return ablation
