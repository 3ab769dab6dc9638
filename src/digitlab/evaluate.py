"""Evaluation: model outputs on a split, metrics (accuracy, per-class, calibration), and the run's report."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from digitlab.augment import shift_batch

TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) white-on-black -> float (N, 1, 28, 28) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float().div_(255)


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: np.ndarray, batch_size: int = 1000, tta: bool = False,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Logits (N, 10) in eval mode; with `tta`, the mean logits over the image and four 1-pixel shifts."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size]).to(device)
        shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
        logits = torch.stack([model(shift_batch(x, dx, dy)) for dx, dy in shifts]).mean(0)
        out.append(logits.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 10), np.float32)
