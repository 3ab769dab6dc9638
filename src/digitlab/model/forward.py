"""Forward passes: the device, images as tensors, batched logits (with test-time augmentation), a run's model."""

from __future__ import annotations

import copy
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from digitlab.core.errors import RunDirError
from digitlab.core.rundir import RunDir, load_checkpoint
from digitlab.model.networks import build_model
from digitlab.model.tta import TTA_SHIFTS, shift_batch

FOLD_FROM = 1024  # forward passes (images x TTA views) from which `fold_batchnorm` pays for its copy


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA, then Apple MPS, then the CPU; any other name is used as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_description(device: torch.device) -> str:
    """The device in words for metrics.json: the GPU's name, or the CPU's and the threads torch uses."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) white-on-black -> float (N, 1, 28, 28) in [0, 1]."""
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # IDX arrays are read-only np.frombuffer views; torch warns on those
        images = images.copy()
    return torch.from_numpy(images).unsqueeze(1).float().div_(255)


def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 256,
    tta: bool = False,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Logits (N, 10) in eval mode; with `tta`, the mean logits over the image and four 1-pixel shifts."""
    return _views(model, images, TTA_SHIFTS if tta else TTA_SHIFTS[:1], batch_size, device)[0]


def predict_logits_pair(
    model: nn.Module, images: np.ndarray, batch_size: int = 256, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(logits with TTA, logits without) from one pass: the unshifted view is one of the views TTA averages, so
    scoring a set both ways (as served, and as the report) costs no more than TTA alone."""
    return _views(model, images, TTA_SHIFTS, batch_size, device)


@torch.no_grad()
def _views(model: nn.Module, images: np.ndarray, shifts: tuple[tuple[int, int], ...], batch_size: int,
           device: torch.device | str) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(mean logits over `shifts`, logits of the first shift) of uint8 (N, 28, 28) images, in eval mode."""
    model.eval()
    means, firsts = [], []
    with _channels_last(model, torch.device(device)):
        if len(images) * len(shifts) >= FOLD_FROM and torch.device(device).type == "cpu":
            model = fold_batchnorm(model)
        for start in range(0, len(images), batch_size):
            x = to_tensor(images[start : start + batch_size]).to(device)
            views = torch.stack([model(shift_batch(x, dx, dy)) for dx, dy in shifts]).float()
            means.append(views.mean(0).cpu())
            firsts.append(views[0].cpu())
    if not means:
        return np.zeros((0, 10), np.float32), np.zeros((0, 10), np.float32)
    return torch.cat(means).numpy(), torch.cat(firsts).numpy()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` (in eval mode) with each BatchNorm2d folded into the Conv2d before it in a Sequential:
    one pass over each feature map fewer, 1.3-1.6x the CPU throughput of these networks for a few ms of copying
    (hence only for big sets). A model with no such pair is returned as it is."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(seq, i) for seq in model.modules() if isinstance(seq, nn.Sequential) for i in range(len(seq) - 1)
             if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d)]  # fmt: skip
    if not pairs:
        return model
    folded = copy.deepcopy(model)
    for seq in folded.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), nn.Identity()
    return folded


@contextmanager
def _channels_last(model: nn.Module, device: torch.device) -> Iterator[None]:
    """On the CPU, oneDNN runs these convolutions about twice as fast with channels-last weights (and batches of a
    few hundred, which stay in cache); the model is given back in its own layout, so training is unaffected."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    if device.type != "cpu" or all(w.is_contiguous(memory_format=torch.channels_last) for w in weights):
        yield  # not the CPU, no convolutions, or channels-last already (as `train` makes it)
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def load_model(run: Path | RunDir, checkpoint: str = "best", device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from a run directory's checkpoint alone, in eval mode (channels-last on the CPU)."""
    rd = run if isinstance(run, RunDir) else RunDir(Path(run))
    path = rd.require().best if checkpoint == "best" else rd.last
    ckpt = load_checkpoint(path, device)
    try:
        model = build_model(ckpt["model"], **ckpt.get("model_args", {}))
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:  # weights that do not fit the named model
        raise RunDirError(f"cannot load checkpoint {path}: {' '.join(str(e).split())[:200]}") from None
    model = model.to(device).eval()
    if torch.device(device).type == "cpu":  # the layout predict_logits wants, set once here rather than per call
        model.to(memory_format=torch.channels_last)
    return model
