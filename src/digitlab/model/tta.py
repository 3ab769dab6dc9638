"""Test-time augmentation: the whole-pixel shifts whose logits are averaged, on NumPy arrays and tensors alike."""

from __future__ import annotations

from typing import TypeVar

ArrayT = TypeVar("ArrayT")  # a NumPy array or a torch tensor: this module imports neither library's heavy half

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
