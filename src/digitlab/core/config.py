"""Training configuration: one typed dataclass and the named presets that fill it."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from digitlab.core.errors import ConfigError
from digitlab.core.jsonfile import read_json_object

CORRUPT_OPS = ("noise", "blur", "strokes", "background", "outline", "erase")  # noise_augment.OPS, in this order


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Saved as `config.json` in the run directory."""

    preset: str = "seed"
    model: str = "seed"  # name in digitlab.model.networks.MODELS
    model_args: dict[str, Any] = field(default_factory=dict)
    data: str = "mnist"  # a dataset name (mnist, fashion-mnist) or a path (IDX dir, Kaggle CSV, image folder)
    val_fraction: float = 0.2  # stratified, seeded split of the training data
    limit: int | None = None  # use only this many training images (tests, dry runs)
    test_limit: int | None = None  # use only this many test images (tests, dry runs)
    seed: int = 42
    split_seed: int | None = None  # seed of the subset/validation split; None: `seed`. Runs that share it ensemble.
    epochs: int = 50
    batch_size: int = 128
    optimizer: str = "adam"  # adam | sgd (Nesterov)
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "plateau"  # plateau (reduce-on-plateau on val loss) | onecycle
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    min_lr: float = 1e-5
    warmup_frac: float = 0.25  # onecycle: fraction of steps spent rising to the peak lr
    early_stop_patience: int | None = 10  # epochs without val-loss improvement; None disables
    label_smoothing: float = 0.0
    rotate: float = 10.0  # augmentation: max rotation in degrees (uniform in ±rotate)
    zoom: float = 0.1  # augmentation: max relative zoom (scale uniform in 1±zoom)
    translate: float = 0.1  # augmentation: max shift as a fraction of the image side
    elastic: float = 0.0  # augmentation: elastic distortion strength in pixels (Simard's alpha; 0: off)
    elastic_sigma: float = 4.0  # augmentation: smoothness of the elastic field in pixels
    thicken: float = 0.0  # augmentation: share of images whose strokes are fattened (0: off; fat-pen input)
    restroke: float = 0.0  # augmentation: share of each batch swapped for training digits re-drawn with a random pen
    glyphs: float = 0.0  # augmentation: share of each batch swapped for handwriting-font digits (training.restroke)
    thicken_reach: float = 1.0  # the most a fattened stroke grows, in pixels each side (2 closes small loops)
    corrupt: float = 0.0  # augmentation: share of images given one degradation from `corrupt_ops` (0: off)
    corrupt_ops: list[str] = field(default_factory=lambda: list(CORRUPT_OPS))  # names in noise_augment.OPS
    outliers: float = 0.0  # outlier exposure: letters appended per batch, as a share of its digits (0: off)
    outlier_weight: float = 0.5  # weight of the outliers' loss towards a uniform softmax (Hendrycks et al.: 0.5)
    image_sizes: list[int] = field(default_factory=list)  # progressive resizing: the side each epoch trains at
    # (epoch i uses entry i, the last entry repeats; evaluation is always at the data's own side); []: off
    ema: float | None = None  # decay of an exponential moving average of the weights, per step; None: off
    tta: bool = False  # test-time augmentation (average over small shifts) at evaluation
    eval_every: int = 1  # validate every N epochs (the last epoch is always validated)
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "fp32"  # fp32 | auto (bf16 autocast where the CPU has native bf16, fp16 AMP on CUDA)
    channels_last: bool | None = None  # None: on for FastNet/StridedNet on CPU (measured: +30%/+2% images/s)
    compile: bool = False  # torch.compile the training forward/backward (pays only where measured to)
    sync_bn: bool = False  # torchrun: synchronise BatchNorm statistics across ranks (SyncBatchNorm)
    threads: int | None = None  # torch intra-op threads on CPU; None keeps torch's default
    variant: str = ""  # which of the preset's variants this is: "" as defined, "fp32" (FP32_VARIANTS)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read a config.json, every field checked for its type: a broken file or field is a one-line error."""
        data = read_json_object(path)
        problem = config_problem(data)
        if problem:
            raise ConfigError(f"{path}: {problem}")
        return cls.from_dict(data)

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def override(self, **changes: Any) -> TrainConfig:
        """Return a copy with the given fields changed; None values are ignored (CLI options left unset)."""
        return self.set(**{k: v for k, v in changes.items() if v is not None})

    def set(self, **changes: Any) -> TrainConfig:
        """Return a copy with the given fields changed, None included (`--set ema=null`)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)


_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                                       "dict[str, Any]": (dict,), "list[str]": (list,),
                                       "list[int]": (list,)}  # fmt: skip
_AT_LEAST = {"epochs": 0, "batch_size": 1, "eval_every": 1, "limit": 1, "test_limit": 1, "threads": 1, "lr": 0.0}


def config_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a config's fields (wrong type, non-finite or out-of-range number), or None."""
    for f in fields(TrainConfig):
        if f.name not in data:
            continue
        value, kind = data[f.name], str(f.type)
        optional = kind.endswith(" | None")
        if value is None:
            if optional:
                continue
            return f"{f.name} must not be null"
        want = _TYPES[kind.removesuffix(" | None")]
        if isinstance(value, bool) and bool not in want or not isinstance(value, want):
            return f"{f.name} must be {kind.removesuffix(' | None')}, not {json.dumps(value)[:40]}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{f.name} must be a finite number, not {value}"
        if f.name in _AT_LEAST and value < _AT_LEAST[f.name]:
            return f"{f.name} must be at least {_AT_LEAST[f.name]}, not {value}"
    if "val_fraction" in data and not 0 <= data["val_fraction"] < 1:
        return f"val_fraction must be in [0, 1), not {data['val_fraction']}"
    return None


# The documented reference model ("seed"), faithfully: see docs/reference.md and docs/results.md.
SEED = TrainConfig()

# Our fast recipe: the best accuracy per second of training on 2 CPU cores. Each trick and what it buys
# (measured on this project's 2-core machine; the README's "fast recipe" section has the figures):
#  1. A small all-conv BN net that pools early (FastNet, 16/32/64 channels, 70k parameters): only the 1-channel
#     stem runs at 28x28, so an image costs 5.5M multiply-adds (the reference: 10.4M) — ~3,500 train images/s.
#  2. channels_last memory format: oneDNN's fast path for convolutions on CPU, +30% images/s.
#  3. bf16 autocast where the CPU has native bf16 (precision="auto"): ~1.5x images/s, same validation accuracy
#     (99.43% vs 99.47% fp32 on the 6,000-image validation split — within its ±0.09% standard error).
#  4. The whole training set is one tensor; batches are index slices, augmented as a batch by one
#     affine_grid/grid_sample call (rotation ±10°, zoom ±10%, shift ±10%): no DataLoader, no per-image Python.
#  5. SGD with Nesterov momentum, a short linear warm-up then linear decay to zero ("one-cycle") at a high peak lr,
#     batch 256, weight decay on conv/linear weights only: converges in 5 epochs.
#  6. Label smoothing 0.1 and a fixed 1/8 logit scale: stable at the high lr.
#  7. No validation during training (it chooses nothing in a fixed schedule): one pass at the end.
#  8. Test-time augmentation: the mean logits over the image and four 1-pixel shifts (costs inference, not training).
FAST = TrainConfig(
    preset="fast",
    model="fast",
    model_args={"widths": [16, 32, 64]},
    val_fraction=0.1,
    epochs=5,
    batch_size=256,
    optimizer="sgd",
    lr=0.2,
    momentum=0.9,
    weight_decay=5e-4,
    schedule="onecycle",
    warmup_frac=0.2,
    early_stop_patience=None,
    label_smoothing=0.1,
    rotate=10.0,
    zoom=0.1,
    translate=0.1,
    tta=True,
    eval_every=1000,  # validate only after the last epoch
    precision="auto",
)

# Our accurate recipe: the fast recipe scaled up, every choice measured on the 6,000-image validation split of
# split seed 0 (seed 0; the test set not read): README "accurate" has the table.
#  1. FastNet twice as wide (32/64/128 channels, 279k parameters: ~4x the multiply-adds of `fast`) and three
#     times the epochs (15) on the same one-cycle schedule: validation 99.70% (`fast` on that split: 99.66%,
#     mean of 4 seeds).
#  2. Elastic distortion (Simard et al. 2003, alpha 34 px, sigma 4 px, on top of the affine augmentation) was
#     tried and is OFF: it cost 0.20 pp of validation accuracy (99.50%) and 15% more time per epoch. It stays
#     available as `--set elastic=34`.
#  3. An exponential moving average of the weights (decay 0.999 per step) is what gets validated and kept: +0.12 pp
#     with elastic distortion, +0.00 pp without; cheap, so kept. Each run records it in metrics.json val_ablation.
#  4. Test-time augmentation as in `fast` (evaluation only; serving leaves it off by default).
ACCURATE = replace(
    FAST,
    preset="accurate",
    model_args={"widths": [32, 64, 128]},
    epochs=15,
    ema=0.999,
)

# Our robust recipe: `fast` made to read corrupted input (docs/robustness.md has the validation table). Chosen on
# the validation-derived corruption suite and clean validation digits of split seed 0, never on the test suite:
#  1. A random 30% of each batch gets one generic degradation (noise_augment: noise, blur, clutter strokes, uneven
#     background, hollow outlines, random erasing incl. inverted patches) — none of them a suite corruption.
#  2. FastNet 1.5x as wide (24/48/96) and 10 epochs: the degradations cost `fast`'s shape clean accuracy, the width
#     and the epochs buy it back.
#  3. Outlier exposure (training.outliers): a quarter as many rendered letters as digits per batch, trained towards
#     a uniform softmax, so that "not a digit" refuses letters (fitted letters AUROC 0.983 -> 0.9999); it costs
#     24/48/96 channels 0.1 pp of clean validation; 32/64/128 channels (as `accurate`, 1.8x the weights) buy it back
#     (99.68% with TTA, corrupted validation mean 98.06% against 98.03%).
#  4. Fat pens (docs/real-world.md): 15% of each batch swapped for digits re-drawn with a random pen (restroke) and
#     15% of the strokes grown by up to 2 px a side (thicken): fat-marker validation digits 94.5% -> 97.0%, fonts
#     never trained on drawn with a marker 98.8% -> 99.3%, clean validation unchanged; the corrupted validation
#     mean 98.06% -> 97.85% (zigzag 95.7% -> 92.6%: thin lines across a digit look more like strokes).
ROBUST = replace(FAST, preset="robust", model_args={"widths": [32, 64, 128]}, epochs=10, corrupt=0.3, outliers=0.25,
                 restroke=0.15, thicken=0.15, thicken_reach=2.0)  # fmt: skip

PRESETS: dict[str, TrainConfig] = {"seed": SEED, "fast": FAST, "accurate": ACCURATE, "robust": ROBUST}

# What a preset changes where it trains in fp32 (a CPU without native bf16, or --precision fp32). The presets
# above were tuned with bf16 autocast, which buys ~1.5x images/s; in fp32 the same `fast` recipe is only 0.82x
# the reference CNN's time. Each variant is chosen on validation and timed side by side with the reference on an
# fp32-only CPU: docs/cpu-speed.md has the table, bench/results/vs_reference-*.json the runs.
#  fast:     3 epochs at batch 128 instead of 5 at batch 256, same peak lr: 1.2x the optimiser steps for 0.6x
#            the images, the same validation accuracy (99.57% vs 99.59%, seeds 0-2).
#  accurate: fast's width (16/32/64) instead of twice it, at batch 128, 18 epochs with the EMA: a quarter of the
#            multiply-adds per image; validation 99.66% (seeds 0-1) against 99.64% for 15 epochs (24/48/96 for
#            8 epochs: 99.70%, seed 0 only).
FP32_VARIANTS: dict[str, dict[str, Any]] = {
    "fast": {"epochs": 3, "batch_size": 128},
    "accurate": {"model_args": {"widths": [16, 32, 64]}, "batch_size": 128, "epochs": 18},
}


def get_preset(name: str, variant: str = "") -> TrainConfig:
    """Look up a preset by name, as defined or as its `variant` ("fp32"); an unknown name lists the valid ones."""
    try:
        config = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
    if not variant:
        return config
    if variant != "fp32":
        raise ConfigError(f"unknown variant {variant!r}; choose fp32 (or none)")
    if name not in FP32_VARIANTS:
        return config  # a preset without an fp32 variant trains as defined in fp32 too
    return replace(config, variant=variant, **FP32_VARIANTS[name])


def variant_for(name: str, fp32: bool) -> str:
    """The variant of preset `name` for a machine that trains in fp32 (`fp32`) or not: "fp32" or ""."""
    return "fp32" if fp32 and name in FP32_VARIANTS else ""


def recipe_line(config: TrainConfig) -> str:
    """The recipe in one line, e.g. 'recipe: fast, fp32 variant (epochs=3, batch_size=128)'."""
    if not config.variant:
        return f"recipe: {config.preset}"
    changes = ", ".join(f"{k}={json.dumps(v)}" for k, v in FP32_VARIANTS.get(config.preset, {}).items())
    return f"recipe: {config.preset}, {config.variant} variant ({changes})"
