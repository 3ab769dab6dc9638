"""Batched random augmentation: affine (rotation, zoom, translation), elastic distortion, stroke width, degradations."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AffineParams:
    """Per-sample parameters: angle in degrees, scale (>1 zooms in), shift as a fraction of the side."""

    angle: torch.Tensor  # (N,)
    scale: torch.Tensor  # (N,)
    shift: torch.Tensor  # (N, 2) as (x, y)


def sample_affine(
    n: int,
    rotate: float,
    zoom: float,
    translate: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> AffineParams:
    """Draw uniform angles in ±rotate degrees, scales in 1±zoom and shifts in ±translate of the side."""
    u = torch.rand(n, 4, generator=generator, device=device) * 2 - 1  # one draw for all four: fewer kernel calls
    return AffineParams(angle=u[:, 0] * rotate, scale=1 + u[:, 1] * zoom, shift=u[:, 2:] * translate)


def affine_matrices(p: AffineParams) -> torch.Tensor:
    """(N, 2, 3) matrices for `affine_grid`, which maps *output* coordinates to *input* coordinates."""
    a = p.angle * (math.pi / 180)
    cos, sin = torch.cos(a) / p.scale, torch.sin(a) / p.scale
    # Normalised coordinates span [-1, 1], so a shift of f of the side is 2f; sampling from -shift moves ink by +shift.
    tx, ty = -2 * p.shift[:, 0], -2 * p.shift[:, 1]
    return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)


def elastic_offsets(
    n: int,
    h: int,
    w: int,
    alpha: float,
    sigma: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Smooth random displacement fields (N, H, W, 2) in `affine_grid` units (Simard et al. 2003).

    Uniform noise in [-1, 1] per pixel and axis, Gaussian-blurred with `sigma` pixels, scaled by `alpha` pixels:
    with Simard's alpha=34, sigma=4 pixels move by about 1.4 px (standard deviation), smoothly.
    """
    noise = torch.rand(n, 2, h, w, generator=generator, device=device) * 2 - 1
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=noise.dtype, device=noise.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    # Separable blur, each axis its own channel group; zero padding keeps the field small at the border.
    field = F.conv2d(noise, k.view(1, 1, 1, -1).expand(2, 1, 1, -1), padding=(0, radius), groups=2)
    field = F.conv2d(field, k.view(1, 1, -1, 1).expand(2, 1, -1, 1), padding=(radius, 0), groups=2)
    scale = torch.tensor([2 * alpha / w, 2 * alpha / h], dtype=noise.dtype, device=noise.device)  # px -> [-1, 1]
    return field.permute(0, 2, 3, 1) * scale


def apply_affine(x: torch.Tensor, p: AffineParams, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Warp a batch (N, C, H, W) with bilinear sampling; outside pixels are black (0), as MNIST's background.

    `offsets` (N, H, W, 2), if given, displace the sampling grid further (elastic distortion): one resampling.
    """
    grid = F.affine_grid(affine_matrices(p).to(x.dtype), list(x.shape), align_corners=False)
    if offsets is not None:
        grid = grid + offsets.to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(
    x: torch.Tensor,
    rotate: float,
    zoom: float,
    translate: float,
    generator: torch.Generator | None = None,
    elastic: float = 0.0,
    elastic_sigma: float = 4.0,
) -> torch.Tensor:
    """Augment a whole batch at once: one grid_sample call, no per-image Python.

    `elastic` is the elastic distortion's strength in pixels (0: none), `elastic_sigma` its smoothness.
    """
    if rotate == 0 and zoom == 0 and translate == 0 and elastic == 0:
        return x
    p = sample_affine(len(x), rotate, zoom, translate, generator, x.device)
    offsets = None
    if elastic:
        offsets = elastic_offsets(len(x), *x.shape[-2:], elastic, elastic_sigma, generator, x.device)
    return apply_affine(x, p, offsets)


def thicken_strokes(x: torch.Tensor, share: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fatten the strokes of a random `share` of the batch by up to one pixel each side (stroke-width augmentation).

    A 3x3 grey dilation (max pooling, stride 1) roughly doubles MNIST's ~2 px strokes; each chosen image gets
    a random blend t in [0, 1] of it, so stroke widths between the original and the dilated one are all seen.
    """
    if share <= 0:
        return x
    u = torch.rand(len(x), 2, generator=generator, device=x.device)
    t = torch.where(u[:, 0] < share, u[:, 1], torch.zeros_like(u[:, 1])).to(x.dtype).view(-1, 1, 1, 1)
    return x + t * (F.max_pool2d(x, 3, stride=1, padding=1) - x)


# --------------------------------------------------------------------------------------------- robustness
# Generic image degradations for corruption robustness. None of them is one of `digitlab.corruptions` (the
# evaluation suite): each draws its own kind of damage with its own generator, so the suite stays unseen.


def _on_share(x: torch.Tensor, share: float, generator: torch.Generator | None,
              degrade: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """`degrade` applied to a random `share` of the batch (each image with that probability), only to those."""
    if share <= 0:
        return x
    pick = torch.nonzero(torch.rand(len(x), generator=generator, device=x.device) < share).view(-1)
    if len(pick) == 0:
        return x
    out = x.clone()
    out[pick] = degrade(x[pick], generator)
    return out


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(n, generator=generator, device=device)).view(-1, 1, 1, 1)


def _lighting(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n, dev = len(x), x.device
    grid = torch.rand(n, 1, 3, 3, generator=generator, device=dev)
    field = F.interpolate(grid, size=x.shape[-2:], mode="bicubic", align_corners=True).clamp(0, 1)
    level = _uniform(n, 0.0, 0.6, generator, dev)
    contrast = _uniform(n, 0.3, 1.0, generator, dev)
    return (level * field + contrast * x).clamp(0, 1)


def random_lighting(x: torch.Tensor, share: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uneven light and low contrast: ink scaled by a contrast in [0.3, 1] over a smooth background of level
    up to 0.6 (a random 3x3 grid, bicubically upsampled), on a random `share` of the batch."""
    return _on_share(x, share, generator, _lighting)


def _pixel_noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n, dev = len(x), x.device
    noisy = x + _uniform(n, 0.0, 0.3, generator, dev) * torch.randn(x.shape, generator=generator, device=dev)
    u = torch.rand((2, *x.shape), generator=generator, device=dev)
    drop, lit = u[0] < _uniform(n, 0, 0.1, generator, dev), u[1] < _uniform(n, 0, 0.1, generator, dev)
    noisy = torch.where(drop, torch.zeros_like(noisy), noisy)
    noisy = torch.where(lit, torch.rand(x.shape, generator=generator, device=dev), noisy)
    return noisy.clamp(0, 1)


def random_pixel_noise(x: torch.Tensor, share: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sensor-like noise on a random `share` of the batch: Gaussian noise (sigma up to 0.3), then up to 10% of
    the pixels dropped to black and up to 10% of them lit at random brightness."""
    return _on_share(x, share, generator, _pixel_noise)


def _erasing(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n, dev = len(x), x.device
    h, w = x.shape[-2:]
    area = _uniform(n, 0.02, 0.25, generator, dev).view(-1) * h * w
    aspect = torch.exp(_uniform(n, -math.log(4), math.log(4), generator, dev).view(-1))
    bh = (area * aspect).sqrt().clamp(1, h)
    bw = (area / aspect).sqrt().clamp(1, w)
    top = torch.rand(n, generator=generator, device=dev) * (h - bh)
    left = torch.rand(n, generator=generator, device=dev) * (w - bw)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    box = ((rows >= top.view(-1, 1, 1)) & (rows < (top + bh).view(-1, 1, 1))
           & (cols >= left.view(-1, 1, 1)) & (cols < (left + bw).view(-1, 1, 1))).unsqueeze(1)  # fmt: skip
    grey = torch.rand(n, 1, 1, 1, generator=generator, device=dev).expand_as(x)
    invert = torch.rand(n, 1, 1, 1, generator=generator, device=dev) < 0.5
    return torch.where(box, torch.where(invert, 1 - x, grey), x)


def random_erasing(x: torch.Tensor, share: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020) on a random `share` of the batch: one rectangle (2-25% of the image,
    aspect 1:4 to 4:1) either filled with one random grey or inverted."""
    return _on_share(x, share, generator, _erasing)


def _strokes(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n, dev = len(x), x.device
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=dev, dtype=x.dtype).view(1, h, 1)
    cols = torch.arange(w, device=dev, dtype=x.dtype).view(1, 1, w)
    ink = torch.zeros(n, h, w, device=dev, dtype=x.dtype)
    count = torch.randint(1, 4, (n,), generator=generator, device=dev)
    for k in range(3):
        p = torch.rand(n, 4, generator=generator, device=dev).to(x.dtype) * (w - 1)
        (c0, r0, c1, r1) = (p[:, i].view(-1, 1, 1) for i in range(4))
        dc, dr = c1 - c0, r1 - r0
        t = (((cols - c0) * dc + (rows - r0) * dr) / (dc**2 + dr**2).clamp_min(1e-6)).clamp(0, 1)
        dist = torch.sqrt((cols - c0 - t * dc) ** 2 + (rows - r0 - t * dr) ** 2)
        width = _uniform(n, 0.5, 1.5, generator, dev).view(-1, 1, 1)
        stroke = (width + 0.5 - dist).clamp(0, 1)
        dashed = torch.rand(n, 1, 1, generator=generator, device=dev) < 0.3
        period = torch.randint(3, 7, (n, 1, 1), generator=generator, device=dev)
        gap = ((t * (dc**2 + dr**2).sqrt()).long() % period) >= (period + 1) // 2
        stroke = torch.where(dashed & gap, torch.zeros_like(stroke), stroke)
        ink = torch.maximum(ink, stroke * (count > k).view(-1, 1, 1).to(x.dtype))
    return torch.maximum(x, ink.unsqueeze(1))


def random_strokes(x: torch.Tensor, share: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One to three stray pen strokes across a random `share` of the batch: segments between random points
    anywhere in the image, 1-3 px wide, some of them dashed."""
    return _on_share(x, share, generator, _strokes)


BLUR_RADIUS = 4


def _blur(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n, dev = len(x), x.device
    t = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=dev, dtype=x.dtype)
    sigma = 0.5 + torch.rand(n, 2, generator=generator, device=dev).to(x.dtype)
    k = torch.exp(-(t.view(1, 1, -1) ** 2) / (2 * sigma.unsqueeze(-1) ** 2))
    k = k / k.sum(-1, keepdim=True)  # (N, 2, taps)
    # One grouped convolution per axis: each image its own kernel.
    y = F.conv2d(x.reshape(1, n, *x.shape[-2:]), k[:, 0].view(n, 1, 1, -1), padding=(0, BLUR_RADIUS), groups=n)
    return F.conv2d(y, k[:, 1].view(n, 1, -1, 1), padding=(BLUR_RADIUS, 0), groups=n).view_as(x)


def random_blur(x: torch.Tensor, share: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur of a random `share` of the batch: sigma 0.5-1.5 px, separately along rows and columns
    (so some blurs are elongated)."""
    return _on_share(x, share, generator, _blur)


ROBUST_AUGMENTATIONS = {
    "lighting": random_lighting,
    "noise": random_pixel_noise,
    "erasing": random_erasing,
    "strokes": random_strokes,
    "blur": random_blur,
}


def robust_augment(x: torch.Tensor, shares: dict[str, float], generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the ROBUST_AUGMENTATIONS named in `shares`, each to its share of the batch, in a fixed order."""
    for name, fn in ROBUST_AUGMENTATIONS.items():
        if shares.get(name, 0) > 0:
            x = fn(x, shares[name], generator)
    return x
