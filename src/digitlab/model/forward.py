"""Forward passes: the device, images as tensors, batched logits (with test-time augmentation), a run's model."""

from __future__ import annotations

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


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 256,
    tta: bool = False,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Logits (N, 10) in eval mode; with `tta`, the mean logits over the image and four 1-pixel shifts."""
    model.eval()
    shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
    out = []
    with _channels_last(model, torch.device(device)):
        for start in range(0, len(images), batch_size):
            x = to_tensor(images[start : start + batch_size]).to(device)
            logits = torch.stack([model(shift_batch(x, dx, dy)) for dx, dy in shifts]).mean(0)
            out.append(logits.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 10), np.float32)


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
