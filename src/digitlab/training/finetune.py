"""Fine-tuning's training step: a run's model trained further on feedback images mixed with MNIST replay."""

# The recipe and its defaults are described in digitlab.evaluation.finetune, which runs the whole fine-tuning.

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from digitlab.core.errors import ConfigError

__all__ = ["FEEDBACK_PASSES", "LR_SCALE", "MIN_ROWS", "REPLAY", "STEPS_RANGE", "STYLE", "FinetuneConfig",
           "default_steps", "fit_mixed", "interpolate"]  # fmt: skip

MIN_ROWS = 20  # fewer feedback rows than this teach nothing measurable, and leave no validation to speak of
LR_SCALE = 0.1  # fine-tuning lr = RUN's (peak) lr times this
REPLAY = 0.75  # share of each batch drawn from RUN's MNIST training split
PARENT_WEIGHT = 0.25  # share of RUN's weights in the ones kept (the rest: the fine-tuned weights)
DISTILL = 1.0  # weight of the replay images' distillation loss towards RUN's own answers (0: hard labels only)
DISTILL_T = 2.0  # softmax temperature of that loss (Hinton et al. 2015)
STYLE = 0.0  # the feedback images' slant and width jitter (augment.style_jitter; 0: off)
FEEDBACK_PASSES = 14  # default steps: this many passes over the feedback trained on ...
STEPS_RANGE = (50, 500)  # ... within these bounds
WARMUP_FRAC = 0.1


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides a fine-tuning run besides RUN itself. Saved in NEW/config.json["finetune"]."""

    feedback: str | None = None  # the store's URL (None: digitlab.data.feedback_db.default_url())
    model: str | None = None  # use only feedback collected on this model id (None: all of it)
    steps: int | None = None  # None: default_steps(rows trained on, feedback per batch)
    replay: float = REPLAY  # share of each batch drawn from RUN's MNIST training split
    holdout: float = 0.2  # share of the feedback rows held out for validation, by whole sessions
    seed: int = 0
    lr_scale: float = LR_SCALE
    batch_size: int = 128
    parent_weight: float = PARENT_WEIGHT
    distill: float = DISTILL
    style: float = STYLE
    min_rows: int = MIN_ROWS

    def check(self) -> None:
        if not 0 <= self.replay < 1:
            raise ConfigError(f"--replay must be in [0, 1), not {self.replay:g}: a batch needs feedback in it")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"--holdout must be in (0, 1), not {self.holdout:g}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, not {self.steps}")
        if not self.distill >= 0:
            raise ConfigError(f"--distill must be at least 0, not {self.distill:g}")
        if not 0 <= self.style < 1:
            raise ConfigError(f"--style must be in [0, 1), not {self.style:g}")
        if not self.lr_scale > 0 or self.batch_size < 2 or not 0 <= self.parent_weight < 1:
            raise ConfigError("the learning-rate scale must be above 0, the batch at least 2 images and the "
                              "parent's weight in [0, 1)")  # fmt: skip


def default_steps(n_train: int, per_batch: int) -> int:
    """FEEDBACK_PASSES passes over `n_train` rows at `per_batch` of them a step, within STEPS_RANGE."""
    return int(min(STEPS_RANGE[1], max(STEPS_RANGE[0], math.ceil(FEEDBACK_PASSES * n_train / max(1, per_batch)))))


def fit_mixed(model: Any, feedback: tuple[np.ndarray, np.ndarray], replay: tuple[np.ndarray, np.ndarray], config: Any,
              ft: FinetuneConfig, steps: int, device: Any, amp_dtype: Any,
              teacher: Any = None) -> tuple[float, float]:  # fmt: skip
    """`steps` steps of RUN's optimiser on batches of feedback and MNIST replay, augmented as `config` says, plus
    ft.distill times the replay images' distillation loss towards `teacher` (RUN's model) when both are given;
    (seconds, mean loss of the last tenth of the steps)."""
    import torch  # here, not above: `digitlab finetune --help` reads this module's defaults without torch
    import torch.nn.functional as F

    from digitlab.model.forward import to_tensor
    from digitlab.training.augment import random_affine, style_jitter, thicken_strokes
    from digitlab.training.noise_augment import corruption_augment
    from digitlab.training.optim import make_optimizer, make_scheduler

    lr = config.lr * ft.lr_scale
    opt = make_optimizer(model, config.set(lr=lr))
    sched = make_scheduler(opt, config.set(lr=lr, schedule="onecycle", epochs=1, warmup_frac=WARMUP_FRAC), steps)
    channels_last = config.channels_last
    if channels_last is None:  # as `train` decides it
        channels_last = device.type == "cpu" and config.model in ("fast", "strided")
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)  # as `train` has it
    fb_x, fb_y = to_tensor(feedback[0]).to(device), torch.from_numpy(feedback[1]).to(device)
    rp_x, rp_y = to_tensor(replay[0]).to(device), torch.from_numpy(replay[1]).to(device)
    n_fb = ft.batch_size - round(ft.batch_size * ft.replay)
    gen = torch.Generator().manual_seed(ft.seed)
    aug_gen = gen if device.type == "cpu" else None
    model.train()
    order = torch.randperm(len(fb_x), generator=gen)
    pos, losses, t0 = 0, [], time.perf_counter()
    for _ in range(steps):
        if pos + n_fb > len(order):  # a new pass over the feedback, in a new order
            order, pos = torch.cat([order[pos:], torch.randperm(len(fb_x), generator=gen)]), 0
        idx = order[pos : pos + n_fb].to(device)
        pos += n_fb
        rp = torch.randint(len(rp_x), (ft.batch_size - n_fb,), generator=gen).to(device)
        x, y = torch.cat([style_jitter(fb_x[idx], ft.style, aug_gen), rp_x[rp]]), torch.cat([fb_y[idx], rp_y[rp]])
        x = random_affine(x, config.rotate, config.zoom, config.translate, aug_gen, config.elastic,
                          config.elastic_sigma)  # fmt: skip
        x = corruption_augment(thicken_strokes(x, config.thicken, aug_gen), config.corrupt, config.corrupt_ops, aug_gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x).float()
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            if teacher is not None and ft.distill > 0:
                loss = loss + ft.distill * _distillation(logits[n_fb:], teacher, x[n_fb:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    model.to(memory_format=torch.contiguous_format)
    return seconds, float(np.mean(losses[-max(1, steps // 10) :]))


def _distillation(logits: Any, teacher: Any, x: Any) -> Any:
    """KL(teacher || model) at temperature DISTILL_T, times T^2 so its gradient scale does not depend on T: the
    replay images keep RUN's answers, its doubts included, not only their labels (learning without forgetting)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        target = F.log_softmax(teacher(x).float() / DISTILL_T, dim=1)
    own = F.log_softmax(logits / DISTILL_T, dim=1)
    return F.kl_div(own, target, log_target=True, reduction="batchmean") * DISTILL_T**2


def interpolate(model: Any, parent: Any, parent_weight: float) -> None:
    """model <- (1 - parent_weight) * model + parent_weight * parent, every floating tensor of the state (WiSE-FT,
    Wortsman et al. 2022; the BatchNorm statistics included, step counters stay the model's)."""
    theirs = parent.state_dict()
    mixed = {k: v.lerp(theirs[k], parent_weight) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(mixed)
