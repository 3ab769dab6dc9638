"""Model architectures by name: the reference `seed` CNN, our `fast` recipe's network, `StridedNet`, ensembles."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from digitlab.core.errors import ConfigError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class Normalize(nn.Module):
    """Inputs are images in [0, 1]; normalisation lives in the model so no caller has to know the constants."""

    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SeedNet(nn.Module):
    """The reference model, layer for layer as docs/reference.md lists it.

    The reference's Keras code is not given and its "~2.1M parameters" matches no reading of its layer list.
    We read it with Keras's default `padding="valid"` (537,386 parameters); `padding="same"` gives 3,486,506.
    """

    def __init__(self, padding: str = "valid", num_classes: int = 10) -> None:
        super().__init__()
        if padding not in ("valid", "same"):
            raise ConfigError(f"padding must be 'valid' or 'same', not {padding!r}")
        p = 1 if padding == "same" else 0

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=p), nn.ReLU()]

        self.features = nn.Sequential(
            Normalize(),
            *conv(1, 32), nn.BatchNorm2d(32), *conv(32, 32), nn.MaxPool2d(2), nn.Dropout(0.25),
            *conv(32, 64), nn.BatchNorm2d(64), *conv(64, 64), nn.MaxPool2d(2), nn.Dropout(0.25),
            *conv(64, 128), nn.BatchNorm2d(128), nn.Dropout(0.25),
            nn.Flatten(),
        )  # fmt: skip
        side = 7 if padding == "same" else 2  # 28 -> (26, 24) -> 12 -> (10, 8) -> 4 -> 2 with 'valid'
        self.classifier = nn.Sequential(
            nn.Linear(128 * side * side, 512), nn.ReLU(), nn.BatchNorm1d(512), nn.Dropout(0.5),
            nn.Linear(512, 256), nn.ReLU(), nn.BatchNorm1d(256), nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (N, 1, 28, 28) -> (N, 10) logits


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 1) -> nn.Sequential:
    # bias=False: BatchNorm's shift makes a conv bias redundant.
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class FastNet(nn.Module):
    """A small all-conv BN network sized for CPU throughput (the `fast` preset).

    - Leave 28x28 early: only the cheap 1-channel stem sees full resolution; the wide layers run at 14x14 and 7x7.
    - Conv-BN-ReLU without biases, global max pooling and one linear layer: no large dense head.
    - A fixed scale on the logits (1/8, as in airbench) keeps early training stable at a high SGD lr.

    `stem="pool"`: a 3x3 conv at 28x28 then 2x2 max pooling, two convs at 14x14 (w0, w1, w1), two at 7x7 (w2).
    `stem="stride"`: a stride-2 3x3 conv straight to 14x14, one conv at 14x14 (w0, w1), two at 7x7 (w2): no
    28x28 feature map and a third fewer multiply-adds, ~0.6x the fp32 training time for 0.07-0.15 pp of
    validation accuracy (bench/results/fp32_recipe-fast.json); measured, not a preset's default.
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), stem: str = "pool", num_classes: int = 10) -> None:
        super().__init__()
        w0, w1, w2 = widths
        if stem == "pool":
            front = [conv_bn(1, w0), nn.MaxPool2d(2), conv_bn(w0, w1), conv_bn(w1, w1)]  # 28 -> 14
        elif stem == "stride":
            front = [conv_bn(1, w0, stride=2), conv_bn(w0, w1)]  # 28 -> 14
        else:
            raise ConfigError(f"stem must be 'pool' or 'stride', not {stem!r}")
        self.net = nn.Sequential(
            Normalize(),
            *front,  # (N, w1, 14, 14)
            nn.MaxPool2d(2),  # (N, w1, 7, 7)
            conv_bn(w1, w2),
            conv_bn(w2, w2),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            nn.Linear(w2, num_classes, bias=False),
        )
        self.logit_scale = 1 / 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.logit_scale


class StridedNet(nn.Module):
    """A second architecture family for ensembles: Chris Deotte's Kaggle MNIST CNN, with BN before the ReLU.

    Unpadded 3x3 convolutions and learned 5x5 stride-2 downsampling instead of max pooling, dropout 0.4 after each
    stage, a 4x4 convolution to a 128-vector and one linear layer ("How to choose CNN Architecture MNIST", Kaggle
    2018; its 15-network ensemble scored 99.757%). Different enough from FastNet that the two err on different
    digits, at a similar cost (~15M multiply-adds per image).
    """

    def __init__(
        self, widths: tuple[int, int, int] = (32, 64, 128), dropout: float = 0.4, num_classes: int = 10
    ) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.net = nn.Sequential(
            Normalize(),
            conv_bn(1, w0, padding=0), conv_bn(w0, w0, padding=0),  # 28 -> 26 -> 24
            conv_bn(w0, w0, 5, stride=2, padding=2), nn.Dropout(dropout),  # -> 12
            conv_bn(w0, w1, padding=0), conv_bn(w1, w1, padding=0),  # -> 10 -> 8
            conv_bn(w1, w1, 5, stride=2, padding=2), nn.Dropout(dropout),  # -> 4
            conv_bn(w1, w2, 4, padding=0),  # -> 1
            nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(w2, num_classes, bias=False),
        )  # fmt: skip
        self.logit_scale = 1 / 8  # as FastNet: the same high-lr SGD recipe trains both

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.logit_scale


class EnsembleNet(nn.Module):
    """Several models in one module: forward(x) = (1/M) * sum_i member_i(x) / T_i.

    `members`: one {"model": name, "model_args": {...}, "temperature": T_i} per member, T_i being the member's
    calibrated temperature (calibration.json; 1.0 for an uncalibrated member). Input: images (N, 1, 28, 28) in
    [0, 1], as for every model here. Output: (N, K) *logits*, the mean of the members' calibrated logits, so
    softmax(output) is the normalised geometric mean of the members' calibrated probabilities. Downstream:

    - calibration.json's temperature T (refitted for the ensemble: averaging changes how sharp logits are) divides
      this output as for any run: probabilities = softmax(output / T);
    - test-time augmentation averages the output over shifts as for any run; the output is linear in the members'
      logits, so that equals the mean of the members' own TTA logits (divided by their T_i);
    - the "not a digit" scores (energy, max logit) read the output as any run's logits: members that disagree
      pull the mean logits flat, which lowers both scores, as it should.
    """

    # Why mean logits and not mean probabilities: everything downstream reads a run's output as logits (TTA
    # averages them, calibration divides them by T, the energy OOD score is T * logsumexp(logits / T)). Returning
    # log(mean of probabilities) instead would give normalised log-probabilities, whose energy is 0 for *every*
    # input at T = 1 (and rises as they flatten for T > 1): the "not a digit" rule would silently break. Mean
    # calibrated logits keep every consumer correct; for members of similar quality the two rules' accuracies
    # differ by noise (geometric vs arithmetic mean of calibrated probabilities), and the refitted ensemble
    # temperature takes care of the calibration.

    def __init__(self, members: Sequence[dict[str, Any]]) -> None:
        super().__init__()
        if not isinstance(members, (list, tuple)) or len(members) < 2:
            raise ConfigError("an ensemble needs a list of at least 2 members")
        modules, temperatures = [], []
        for m in members:
            if not isinstance(m, dict) or "model" not in m:
                raise ConfigError(f"an ensemble member needs a 'model' name, got {m!r}")
            t = float(m.get("temperature", 1.0))
            if not (t > 0 and math.isfinite(t)):
                raise ConfigError(f"a member's temperature must be a positive number, not {t}")
            modules.append(build_model(str(m["model"]), **dict(m.get("model_args") or {})))
            temperatures.append(t)
        self.members = nn.ModuleList(modules)
        self.temperatures = tuple(temperatures)
        # 1 / (M * T_i): constants folded into the graph (an ONNX export holds them as initializers).
        self.weights = tuple(1.0 / (len(temperatures) * t) for t in temperatures)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x) * self.weights[0]
        for member, w in zip(self.members[1:], self.weights[1:], strict=True):
            out = out + member(x) * w
        return out  # (N, K) logits: the mean of the members' temperature-scaled logits


MODELS: dict[str, Callable[..., nn.Module]] = {
    "seed": SeedNet,
    "fast": FastNet,
    "strided": StridedNet,
    "ensemble": EnsembleNet,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by registry name; an unknown name lists the valid ones."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])
    try:
        return MODELS[name](**kwargs)
    except TypeError as e:  # a wrong model_args key in a config file
        raise ConfigError(f"bad arguments for model {name!r}: {e}") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
