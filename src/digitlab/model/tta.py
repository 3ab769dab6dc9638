"""Test-time augmentation: the whole-pixel shifts whose logits are averaged, on NumPy arrays and tensors alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

ArrayT = TypeVar("ArrayT")  # a NumPy array or a torch tensor (this module never imports torch)

TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))  # (dx, dy): the image and its four 1-pixel neighbours


def shift_batch(x: ArrayT, dx: int, dy: int) -> ArrayT:
    """Shift images (..., H, W) by whole pixels, filling with black.

    Works on torch tensors and NumPy arrays alike (the ONNX path has no tensors, and serves without torch).
    """
    if dx == 0 and dy == 0:
        return x
    out = x * 0  # type: ignore[operator]  # zeros of the same type, dtype and device for either library
    h, w = x.shape[-2:]  # type: ignore[attr-defined]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[  # type: ignore[index]
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def tta_logits(
    forward: Callable[[np.ndarray], np.ndarray], images: np.ndarray, tta: bool, batch_size: int = 256
) -> np.ndarray:
    """Logits (N, 10) of uint8 (N, 28, 28) images through `forward` (float32 (B, 1, 28, 28) in [0, 1] ->
    logits), averaged over TTA_SHIFTS with `tta`, as `forward.predict_logits` does for torch."""
    images = np.asarray(images, dtype=np.uint8)
    shifts = TTA_SHIFTS if tta else TTA_SHIFTS[:1]
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size, None].astype(np.float32)
        x /= 255  # in place: see data.pixels.to_u8 on NumPy's cost for big temporaries
        if len(shifts) == 1:
            out.append(np.asarray(forward(x), dtype=np.float32))
            continue
        batch = np.concatenate([shift_batch(x, dx, dy) for dx, dy in shifts])  # one call for all shifts
        logits = np.asarray(forward(batch), dtype=np.float32)
        out.append(logits.reshape(len(shifts), len(x), -1).mean(0))
    if len(out) == 1:
        return out[0]
    return np.concatenate(out) if out else np.zeros((0, 10), np.float32)
