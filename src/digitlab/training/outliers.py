"""Outlier exposure (Hendrycks et al. 2019, "Deep Anomaly Detection with Outlier Exposure") for the `outliers` option.

A classifier trained on digits alone has never been told what is *not* a digit: a letter gets a confident
softmax as readily as a digit does, and the "not a digit" rule (an energy threshold) cannot separate them. Each
batch here also carries letters rendered from the installed fonts (`data.letters.training_fonts`, never the
DejaVu fonts the refusal sets use), augmented like the digits, whose loss pulls their softmax towards uniform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from digitlab.data.letters import render_letters, training_fonts
from digitlab.model.forward import to_tensor

OUTLIER = -1  # the label an outlier carries through the batch
POOL = 4_000  # letters rendered per run (~3 ms each); every batch draws its share from them


def letter_pool(share: float, seed: int, device: torch.device, n: int = POOL) -> torch.Tensor | None:
    """The run's `n` outlier images, float (n, 1, 28, 28) in [0, 1]; None when `share` is 0 or no font is installed."""
    fonts = training_fonts() if share > 0 else []
    if not fonts or n <= 0:
        return None
    return to_tensor(render_letters(n, seed + 7, fonts)).to(device)


def add_outliers(
    x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor | None, share: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch with round(`share` x its size) random pool images appended, labelled OUTLIER."""
    k = round(share * len(x))
    if pool is None or k == 0:
        return x, y
    pick = torch.randint(len(pool), (k,), generator=generator, device=x.device)
    return torch.cat([x, pool[pick]]), torch.cat([y, torch.full((k,), OUTLIER, dtype=y.dtype, device=y.device)])


def exposure_loss(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float, weight: float) -> torch.Tensor:
    """Cross-entropy on the digits plus `weight` x the outliers' cross-entropy to the uniform distribution."""
    digit = y != OUTLIER
    if digit.all():
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    loss = -weight * F.log_softmax(logits[~digit], dim=1).mean()
    if digit.any():  # (a batch of outliers alone has no digit term: cross-entropy over none is NaN)
        loss = loss + F.cross_entropy(logits[digit], y[digit], label_smoothing=label_smoothing)
    return loss
