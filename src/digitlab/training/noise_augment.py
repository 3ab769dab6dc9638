"""Batched training augmentations for corrupted input: noise, blur, clutter strokes, background, outlines, erasing.

These are generic image degradations drawn by their own generators — deliberately *not* the robustness suite's
corruption functions (`digitlab.data.corruptions`), so that the suite still measures generalisation. Each chosen image
gets one operation; every operation works on the whole sub-batch at once (no per-image Python).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Op = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def _u(n: int, lo: float, hi: float, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=g, device=device)


def noise(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Additive Gaussian noise (sigma 0.05-0.35) plus salt-and-pepper pixels (0-8% of them)."""
    n = len(x)
    out = x + _u(n, 0.05, 0.35, g, x.device) * torch.randn(x.shape, generator=g, device=x.device)
    r = torch.rand(x.shape, generator=g, device=x.device)
    rate = _u(n, 0.0, 0.08, g, x.device)
    out = torch.where(r < rate / 2, torch.zeros_like(out), out)
    out = torch.where(r > 1 - rate / 2, torch.ones_like(out), out)
    return out.clamp_(0, 1)


def blur(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Gaussian blur with a per-image sigma of 0.5-1.6 px (grouped separable convolution: one kernel per image)."""
    n, _, h, w = x.shape
    sigma = _u(n, 0.5, 1.6, g, x.device).view(n, 1)
    t = torch.arange(-4, 5, dtype=x.dtype, device=x.device).view(1, -1)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum(1, keepdim=True)  # (n, 9)
    y = F.conv2d(x.view(1, n, h, w), k.view(n, 1, 1, 9), padding=(0, 4), groups=n)
    y = F.conv2d(y, k.view(n, 1, 9, 1), padding=(4, 0), groups=n)
    gain = 1 / y.amax(dim=(2, 3), keepdim=True).clamp(min=0.3)  # a blurred stroke is fainter: renormalise part-way
    return (y * gain.clamp(max=1.5)).clamp(0, 1).view(n, 1, h, w)


def strokes(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """1-3 random line segments across the image (width 0.7-2 px, grey to white), half of them dashed."""
    n, _, h, w = x.shape
    k = 3
    ends = torch.rand(n, k, 4, generator=g, device=x.device) * torch.tensor([w, h, w, h], device=x.device)
    ends = ends * 1.4 - torch.tensor([0.2 * w, 0.2 * h, 0.2 * w, 0.2 * h], device=x.device)  # may start outside
    keep = torch.rand(n, k, generator=g, device=x.device) < torch.tensor([1.0, 0.5, 0.25], device=x.device)
    width = 0.7 + 1.3 * torch.rand(n, k, 1, generator=g, device=x.device)
    level = 0.4 + 0.6 * torch.rand(n, k, 1, generator=g, device=x.device)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    p = torch.stack([xs.flatten(), ys.flatten()], -1).to(x.dtype)  # (hw, 2)
    a, b = ends[..., :2].unsqueeze(2), ends[..., 2:].unsqueeze(2)  # (n, k, 1, 2)
    ab = b - a
    t = (((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-6)).clamp(0, 1)  # (n, k, hw)
    d = (p - (a + t.unsqueeze(-1) * ab)).norm(dim=-1)
    line = (1 - (d - width / 2).clamp(min=0)).clamp(0, 1) * level
    period = 3 + 5 * torch.rand(n, k, 1, generator=g, device=x.device)
    dashed = torch.rand(n, k, 1, generator=g, device=x.device) < 0.5
    along = t * ab.norm(dim=-1)
    line = torch.where(dashed & (torch.remainder(along, period) > period / 2), torch.zeros_like(line), line)
    line = (line * keep.unsqueeze(-1)).amax(1).view(n, 1, h, w)
    return torch.maximum(x, line)


def background(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """A lifted, uneven background: a constant (0-0.5) plus a smooth random field (0-0.4), ink kept on top."""
    n, _, h, w = x.shape
    field = torch.rand(n, 1, 4, 4, generator=g, device=x.device)
    field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    bg = _u(n, 0.0, 0.5, g, x.device) + _u(n, 0.0, 0.4, g, x.device) * field
    contrast = _u(n, 0.6, 1.0, g, x.device)
    return (bg + x * contrast).clamp(0, 1)


def outline(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Hollow strokes: only the ring just outside each stroke (3x3 dilation minus the image), thresholded at random."""
    grad = F.max_pool2d(x, 3, stride=1, padding=1) - x
    level = _u(len(x), 0.15, 0.4, g, x.device)
    return torch.where(grad > level, torch.ones_like(x), torch.zeros_like(x))


def erase(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017): a rectangle of 5-35% of the image set to black, to noise, or inverted
    (a patch of the other polarity, as a glare, a sticker or a scanner's dark border makes)."""
    n, _, h, w = x.shape
    area = _u(n, 0.05, 0.35, g, x.device).view(n)
    aspect = torch.exp(torch.empty(n, device=x.device).uniform_(-1, 1, generator=g))
    rh = (area * h * w * aspect).sqrt().clamp(max=h)
    rw = (area * h * w / aspect).sqrt().clamp(max=w)
    cy = torch.rand(n, generator=g, device=x.device) * h
    cx = torch.rand(n, generator=g, device=x.device) * w
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys - cy.view(n, 1, 1)).abs() < rh.view(n, 1, 1) / 2) & (
        (xs - cx.view(n, 1, 1)).abs() < rw.view(n, 1, 1) / 2
    )
    kind = torch.randint(3, (n, 1, 1, 1), generator=g, device=x.device)  # 0 black, 1 noise, 2 inverted
    noise_fill = torch.rand(x.shape, generator=g, device=x.device)
    fill = torch.where(kind == 0, torch.zeros_like(x), torch.where(kind == 1, noise_fill, 1 - x))
    return torch.where(inside.unsqueeze(1), fill, x)


OPS: dict[str, Op] = {"noise": noise, "blur": blur, "strokes": strokes, "background": background,
                      "outline": outline, "erase": erase}  # fmt: skip


def corruption_augment(
    x: torch.Tensor, share: float, ops: tuple[str, ...] | list[str], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Give a random `share` of the batch one operation each from `ops` (names in OPS), chosen uniformly."""
    if share <= 0 or not ops:
        return x
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from {', '.join(OPS)}")
    u = torch.rand(len(x), generator=generator, device=x.device)
    pick = torch.randint(len(ops), (len(x),), generator=generator, device=x.device)
    out = x.clone()
    for i, name in enumerate(ops):
        idx = ((u < share) & (pick == i)).nonzero().flatten()
        if len(idx):
            out[idx] = OPS[name](x[idx], generator).to(x.dtype)
    return out
