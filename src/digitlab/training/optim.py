"""What a config asks the loop to build: the optimiser, the learning-rate schedule, the weight EMA, the precision."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.core.config import TrainConfig
from digitlab.core.errors import ConfigError
from digitlab.core.hardware import CpuInfo, PrecisionChoice, choose_precision


def precision_choice(precision: str, device: torch.device, cpu: CpuInfo) -> PrecisionChoice:
    """What `precision` ("fp32" | "auto") means on `device`, and why (printed by the CLI, kept in metrics.json)."""
    if precision not in ("fp32", "auto"):
        raise ConfigError(f"unknown precision {precision!r}; choose fp32 or auto")
    bf16 = device.type == "cpu" and precision == "auto" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return choose_precision(precision, device.type, cpu, bf16)


def trains_in_fp32(precision: str, device: torch.device, cpu: CpuInfo) -> bool:
    """Whether a config with this `precision` trains in plain fp32 on this CPU (its presets' fp32 variants)."""
    return device.type == "cpu" and precision_choice(precision, device, cpu).dtype is None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, or SGD with Nesterov momentum and no weight decay on BatchNorm parameters and biases."""
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
    """Reduce-on-plateau (stepped on the validation loss), or one-cycle (stepped every batch)."""
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
