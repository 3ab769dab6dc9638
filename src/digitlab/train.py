"""Training: the loop, validation, checkpoints, resume, and clean stops on Ctrl-C / SIGTERM.

    digitlab train --preset fast --out runs/fast        # the CLI edge; this module is the library underneath

The loop is pytorch/examples' canonical one with the reference's callbacks: reduce-on-plateau (or one-cycle),
early stopping that restores the best weights, best-checkpoint saving. A stop request (signal) is honoured after
the current step: `checkpoint/last.pt` then holds everything needed to continue bit-for-bit on CPU. After the
last step (validation, calibration, test evaluation, plots) a stop is immediate, and `resume` redoes that part.
The saved state lives in `digitlab.checkpointing`, the signal handling in `digitlab.stopping`.
"""

from __future__ import annotations

import platform
import random
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

from digitlab.augment import random_affine, thicken_strokes
from digitlab.checkpointing import (
    TrainState,
    load_last,
    read_history,
    restore,
    rng_states,
    save_last,
    start_fresh,
    write_history,
)
from digitlab.config import TrainConfig
from digitlab.data import Dataset, Split, load_dataset, stratified_split
from digitlab.distributed import Dist, init_distributed, shutdown
from digitlab.errors import ConfigError, RunDirError, StorageError
from digitlab.evaluate import pick_device, predict_logits, to_tensor
from digitlab.hardware import CpuInfo, PrecisionChoice, choose_precision, cpu_info
from digitlab.models import build_model, count_params
from digitlab.noise_augment import corruption_augment
from digitlab.restroke import pen_pool, swap_in
from digitlab.rundir import RunDir, save_weights
from digitlab.stopping import Interrupted, StopRequest, stop_on_signals

__all__ = ["Interrupted", "Reporter", "TrainResult", "finish_run", "split_data", "train"]


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


def precision_choice(precision: str, device: torch.device, cpu: CpuInfo) -> PrecisionChoice:
    """What `precision` ("fp32" | "auto") means on `device`, and why (printed by the CLI, kept in metrics.json)."""
    if precision not in ("fp32", "auto"):
        raise ConfigError(f"unknown precision {precision!r}; choose fp32 or auto")
    bf16 = device.type == "cpu" and precision == "auto" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return choose_precision(precision, device.type, cpu, bf16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_data(ds: Dataset, config: TrainConfig) -> tuple[Split, Split]:
    """(train, val): an optional seeded stratified subset (`limit`), then the stratified validation split."""
    train = ds.train
    if train.labels is None:
        raise ConfigError(f"{ds.source}: training data has no labels")
    if config.limit is not None and config.limit < len(train):
        keep, _ = stratified_split(train.labels, 1 - config.limit / len(train), config.effective_split_seed)
        train = train.subset(keep)
    tr, va = stratified_split(train.labels, config.val_fraction, config.effective_split_seed)
    return train.subset(tr), train.subset(va)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        # No weight decay on BatchNorm parameters and biases: decaying them only fights the normalisation.
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ]
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose adam or sgd")


def make_scheduler(opt: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int) -> Any:
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode="min",
            factor=config.plateau_factor,
            patience=config.plateau_patience,
            min_lr=config.min_lr,
        )
    if config.schedule == "onecycle":
        # Linear warm-up from lr/10 to lr, then linear decay to 0 (a hand-written LambdaLR: torch's OneCycleLR
        # goes negative at the end of very short runs).
        total, warm = (
            config.epochs * steps_per_epoch,
            max(1, round(config.warmup_frac * config.epochs * steps_per_epoch)),
        )

        def factor(step: int) -> float:
            if step < warm:
                return 0.1 + 0.9 * step / warm
            return max(0.0, (total - step) / max(1, total - warm))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    raise ConfigError(f"unknown schedule {config.schedule!r}; choose plateau or onecycle")


def ema_update(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """EMA step for `AveragedModel` with a warm-up: the decay ramps as (1+n)/(10+n) up to `decay`, so that the
    average forgets the random initial weights within a short run too."""

    def update(avg: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1 + int(n)) / (10 + int(n)))
        return avg * d + current * (1 - d)

    return update


def _evaluate_split(
    model: nn.Module, split: Split, device: torch.device, tta: bool = False
) -> tuple[dict[str, float], torch.Tensor]:
    """Loss and accuracy on a labelled split, and the logits they came from."""
    logits = torch.from_numpy(predict_logits(model, split.images, tta=tta, device=device))
    labels = torch.from_numpy(split.labels)
    loss = F.cross_entropy(logits, labels).item()
    acc = (logits.argmax(1) == labels).float().mean().item()
    return {"loss": loss, "accuracy": acc}, logits


def train(
    config: TrainConfig | None,
    out: Path,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] | None = None,
    dataset: Dataset | None = None,
    evaluate_test: bool = True,
) -> TrainResult:
    """Train `config` into run directory `out`; with `resume`, continue from `out/checkpoint/last.pt`
    (the config is then read from the run directory and `config` may be None).

    Raises `Interrupted` after saving `last.pt` when `should_stop()` turns true or SIGINT/SIGTERM arrives, in
    the loop or after it (validation, calibration, test evaluation and plots are then redone by `resume`).
    """
    with stop_on_signals(should_stop) as stop:
        return _train(config, out, resume=resume, reporter=reporter, should_stop=stop, dataset=dataset,
                      evaluate_test=evaluate_test)  # fmt: skip


def _train(
    config: TrainConfig | None,
    out: Path,
    *,
    resume: bool,
    reporter: Reporter | None,
    should_stop: StopRequest,
    dataset: Dataset | None,
    evaluate_test: bool,
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
        raise ConfigError("train() needs a config unless resuming")
    elif rd.metrics.exists() or rd.last.exists():
        raise RunDirError(f"{rd.root} already holds a run; choose a new --out or use --resume")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    dd = init_distributed(use_cuda=device.type == "cuda")
    try:
        return _fit(config, rd, dd, device, resume, reporter if dd.is_main else None, should_stop, dataset,
                    evaluate_test)  # fmt: skip
    except StorageError as e:
        if rd.last.exists():  # every write is atomic: the last checkpoint is whole, whatever failed to be written
            raise StorageError(f"{e}; the run can continue from its last checkpoint: "
                               f"`digitlab train --resume {rd.root}`") from None  # fmt: skip
        raise
    finally:
        shutdown(dd)


def _fit(
    config: TrainConfig,
    rd: RunDir,
    dd: Dist,
    device: torch.device,
    resume: bool,
    reporter: Reporter | None,
    stop: StopRequest,
    dataset: Dataset | None,
    evaluate_test: bool,
) -> TrainResult:
    if dd.enabled and device.type == "cuda":
        device = torch.device("cuda", dd.local_rank)
    if config.batch_size % dd.world_size:
        raise ConfigError(f"--batch-size {config.batch_size} is the global batch: it must divide by {dd.world_size}")
    batch = config.batch_size // dd.world_size  # per rank; the global batch (and so the lr) is unchanged
    saved = load_last(rd, device) if resume else None  # before the data: a broken checkpoint fails at once
    seed_everything(config.seed)  # the same on every rank: identical initial weights

    ds = dataset if dataset is not None else load_dataset(config.data)
    train_split, val_split = split_data(ds, config)
    x_all = to_tensor(train_split.images).to(device)  # the whole training set as one tensor: no DataLoader
    y_all = torch.from_numpy(train_split.labels).to(device)
    n = len(x_all)
    sampler = DistributedSampler(range(n), dd.world_size, dd.rank, shuffle=True, seed=config.seed, drop_last=True)
    per_rank = len(sampler) if dd.enabled else n
    steps_per_epoch = max(1, per_rank // batch)  # drop the ragged last batch: same shapes every step

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
    # The EMA copy is what gets validated and saved; the raw weights only train (and are scored once, at the end).
    ema = AveragedModel(model, avg_fn=ema_update(config.ema), use_buffers=True) if config.ema else None
    opt = make_optimizer(model, config)
    sched = make_scheduler(opt, config, steps_per_epoch)
    cpu = cpu_info()
    precision = precision_choice(config.precision, device, cpu)
    amp_dtype = None if precision.dtype is None else getattr(torch, precision.dtype)
    hardware = {"cpu": cpu.describe(), "precision": precision.line()}  # said once, kept in metrics.json
    if reporter:
        reporter.note("; ".join(hardware.values()))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    gen = torch.Generator(device="cpu").manual_seed(config.seed + 1000 * dd.rank)  # shuffling + augmentation
    if dd.enabled:
        torch.manual_seed(config.seed + dd.rank)  # per-rank dropout streams
    state = TrainState()

    if saved is not None:
        restore(rd, saved, model, opt, sched, scaler, ema, state, gen, dd)
    elif dd.is_main:
        start_fresh(rd, config)

    t_pool = time.perf_counter()  # the pen-width copies are part of the recipe's cost: timed with training
    pens = pen_pool(train_split.images, train_split.labels, config.restroke, config.seed, reporter is not None, device)
    state.train_seconds += time.perf_counter() - t_pool

    def checkpoint() -> None:
        states = dd.gather(rng_states(gen))
        if dd.is_main:
            save_last(rd, model, opt, sched, scaler, ema, state, states, config)
            write_history(rd.history, state.history)  # after last.pt: never ahead of the checkpoint
        dd.barrier()

    final = ema.module if ema is not None else model  # the weights that are validated and kept
    aug_gen = gen if device.type == "cpu" else None  # a CPU generator cannot drive CUDA draws
    while not state.done and state.epoch < config.epochs:
        epoch = state.epoch + 1
        if state.perm is None:
            if dd.enabled:
                sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle each epoch, disjoint shards per rank
                state.perm = torch.tensor(list(sampler))
            else:
                state.perm = torch.randperm(n, generator=gen)
        if reporter:
            reporter.start_epoch(epoch, config.epochs, steps_per_epoch, state.step)
        net.train()
        t0 = time.perf_counter()
        while state.step < steps_per_epoch:
            idx = state.perm[state.step * batch : (state.step + 1) * batch].to(device)
            x, y = swap_in(x_all[idx], y_all[idx], pens, config.restroke, aug_gen)
            x = random_affine(x, config.rotate, config.zoom, config.translate, aug_gen, config.elastic,
                              config.elastic_sigma)  # fmt: skip
            x = thicken_strokes(x, config.thicken, aug_gen, config.thicken_reach)
            x = corruption_augment(x, config.corrupt, config.corrupt_ops, aug_gen)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = net(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            if config.schedule == "onecycle":
                sched.step()
            state.step += 1
            batch_loss = loss.item()
            correct = (logits.argmax(1) == y).sum().item()
            state.epoch_loss += batch_loss * len(y)
            state.epoch_correct += correct
            state.epoch_seen += len(y)
            if reporter:
                reporter.step(batch_loss, correct / len(y), opt.param_groups[0]["lr"])
            if dd.any(stop()) and state.step < steps_per_epoch:
                state.train_seconds += time.perf_counter() - t0
                checkpoint()
                raise Interrupted(str(rd.root))

        loss_sum, correct_sum, seen = dd.all_sum([state.epoch_loss, state.epoch_correct, state.epoch_seen])
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct_sum / max(seen, 1),
            "lr": opt.param_groups[0]["lr"],
        }
        validate = len(val_split) > 0 and (epoch % config.eval_every == 0 or epoch == config.epochs)
        improved = False
        if validate:
            # Rank 0 validates and broadcasts, so every rank takes the same scheduler/early-stopping decisions.
            val = _evaluate_split(final, val_split, device)[0] if dd.is_main else {"loss": 0.0, "accuracy": 0.0}
            val["loss"], val["accuracy"] = dd.broadcast([val["loss"], val["accuracy"]])
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            if config.schedule == "plateau":
                sched.step(val["loss"])
            improved = val["loss"] < state.best_loss
            if improved:
                state.best_loss, state.best_epoch, state.bad_epochs = val["loss"], epoch, 0
            else:
                state.bad_epochs += 1
        elif len(val_split) == 0:
            improved, state.best_epoch = True, epoch  # nothing to choose on: the last epoch is the model
        state.train_seconds += time.perf_counter() - t0
        row["seconds"] = round(state.train_seconds, 3)
        if improved and dd.is_main:
            save_weights(rd.best, final, config, epoch=epoch, val=row.get("val_accuracy"))
        state.history.append(row)
        state.epoch, state.step, state.perm = epoch, 0, None
        state.epoch_loss, state.epoch_correct, state.epoch_seen = 0.0, 0, 0
        patience = config.early_stop_patience
        state.done = epoch >= config.epochs or (patience is not None and state.bad_epochs >= patience)
        checkpoint()  # with `done` set, a resume goes straight to finishing
        if reporter:
            reporter.end_epoch(row)
        if dd.any(stop()):
            raise Interrupted(str(rd.root), finishing=state.done)

    identical = dd.same_weights(model)
    if not dd.is_main:
        # Wait for rank 0's final evaluation: a rank that leaves first tears its end of the gloo group down
        # while rank 0 still holds it, which can abort the process ("terminate called without an active exception").
        dd.barrier()
        return TrainResult(rd, {})
    distributed = None
    if dd.enabled:
        distributed = {"world_size": dd.world_size, "backend": dd.backend, "global_batch": config.batch_size,
                       "per_rank_batch": batch, "sync_bn": config.sync_bn, "weights_identical": identical}  # fmt: skip
    raw = model if ema is not None else None
    try:
        # Training is saved (last.pt says `done`): a stop from here on raises at once and `resume` redoes the rest.
        with stop.immediate(str(rd.root)):
            if not rd.best.exists():  # validated only at the end and never improved: keep the final weights
                save_weights(rd.best, final, config, epoch=state.epoch)
            metrics = finish_run(rd, config, final, val_split, state, device, evaluate_test, distributed, raw,
                                 check=lambda: stop.check(str(rd.root)), hardware=hardware)  # fmt: skip
    finally:
        dd.barrier()  # releases the other ranks (see above), also when this one stopped or failed
    return TrainResult(rd, metrics, read_history(rd.history))


def finish_run(
    rd: RunDir,
    config: TrainConfig,
    model: nn.Module,
    val_split: Split,
    state: TrainState,
    device: torch.device,
    evaluate_test: bool,
    distributed: dict | None = None,
    raw: nn.Module | None = None,
    check: Callable[[], None] = lambda: None,
    hardware: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write metrics.json for the best checkpoint (validation figures), then the test evaluation and report.

    `val_ablation` records what TTA and the EMA (`raw`: the final weights without it) buy on validation.
    `check` runs between the steps (it raises to stop the run there).
    """
    from digitlab.rundir import load_model

    best = load_model(rd, device=device)
    val = {"accuracy": None, "loss": None}
    if len(val_split):
        val, logits = _evaluate_split(best, val_split, device, tta=config.tta)
        val.update(n=len(val_split), tta=config.tta)
    metrics = {
        "preset": config.preset,
        "model": config.model,
        "seed": config.seed,
        "params": count_params(model),
        "train_seconds": round(state.train_seconds, 3),
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "val": val,
        "torch": torch.__version__,
        "device": device_description(device),
        **(hardware or {}),  # the CPU and the precision training took (see `precision_choice`)
        "threads": torch.get_num_threads(),
    }
    if len(val_split):
        ablation = {}
        if config.tta:
            ablation["without_tta"] = _evaluate_split(best, val_split, device)[0]["accuracy"]
        if raw is not None:
            ablation["without_ema"] = _evaluate_split(raw, val_split, device, tta=config.tta)[0]["accuracy"]
        if ablation:
            metrics["val_ablation"] = ablation
    if distributed:
        metrics["distributed"] = distributed
    check()
    rd.write_json(rd.metrics, metrics)
    if len(val_split):  # temperature and "not a digit" threshold, fitted on these validation logits
        from digitlab.calibrate import calibrate_split

        check()
        calibrate_split(rd, best, val_split, logits.numpy(), config, device)
    if evaluate_test:
        from digitlab.evaluate import evaluate_run

        check()
        metrics = evaluate_run(rd)
    return metrics


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
