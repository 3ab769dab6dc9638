"""Batched random augmentation: affine (rotation, zoom, translation), elastic distortion, stroke width."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from digitlab.core.config import TrainConfig
from digitlab.training.noise_augment import corruption_augment
from digitlab.training.outliers import add_outliers
from digitlab.training.restroke import swap_in


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
    """Warp a batch (N, C, H, W) with `p` (see `warp`)."""
    return warp(x, affine_matrices(p), offsets)


def warp(x: torch.Tensor, theta: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Warp a batch (N, C, H, W) by `affine_grid` matrices `theta` (N, 2, 3) with bilinear sampling; outside
    pixels are black (0), as MNIST's background.

    `offsets` (N, H, W, 2), if given, displace the sampling grid further (elastic distortion): one resampling.
    """
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
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


def style_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image slanted (horizontal shear in ±strength) and made wider or narrower (width times 1±strength):
    the ways one person's digits differ from another's most, so that a few people's corrections teach a style
    rather than their own slant and width. 0: unchanged."""
    if strength <= 0:
        return x
    u = (torch.rand(len(x), 2, generator=generator, device=x.device) * 2 - 1) * strength
    # `affine_grid` maps output to input coordinates: x_in = x_out / width + shear * y_out.
    zero, one = torch.zeros_like(u[:, 0]), torch.ones_like(u[:, 0])
    theta = torch.stack([torch.stack([1 / (1 + u[:, 1]), u[:, 0], zero], 1), torch.stack([zero, one, zero], 1)], 1)
    return warp(x, theta)


def thicken_strokes(
    x: torch.Tensor, share: float, generator: torch.Generator | None = None, reach: float = 1.0
) -> torch.Tensor:
    """Fatten the strokes of a random `share` of the batch by up to `reach` pixels each side (stroke-width
    augmentation, for fat-pen input).

    A 3x3 grey dilation (max pooling, stride 1) roughly doubles MNIST's ~2 px strokes, a 5x5 one closes small
    loops as a fat marker does; each chosen image grows by a random g in [0, reach] px, blending between the
    dilations, so every stroke width in between is seen.
    """
    if share <= 0:
        return x
    u = torch.rand(len(x), 2, generator=generator, device=x.device)
    g = torch.where(u[:, 0] < share, u[:, 1] * reach, torch.zeros_like(u[:, 1])).to(x.dtype).view(-1, 1, 1, 1)
    out, prev = x, x
    for r in range(1, max(1, math.ceil(reach)) + 1):
        grown = F.max_pool2d(x, 2 * r + 1, stride=1, padding=r)
        out = out + (g - (r - 1)).clamp(0, 1) * (grown - prev)
        prev = grown
    return out


def resize_for_epoch(x: torch.Tensor, sizes: list[int], done_epochs: int) -> torch.Tensor:
    """Progressive resizing: shrink a batch (N, C, H, W) to the side `sizes` gives the epoch after `done_epochs`
    (the last entry repeats), anti-aliased bilinear (keeps the ink's mean; area pooling at a non-integer
    ratio counts border pixels twice and bolds the strokes). A convolutional net with global
    pooling trains on any side; early epochs at 16-24 px cost (side / 28)^2 of a full one."""
    if not sizes:
        return x
    side = sizes[min(done_epochs, len(sizes) - 1)]
    if side >= x.shape[-1]:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def augment_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    pens: tuple[torch.Tensor, torch.Tensor] | None,
    generator: torch.Generator | None,
    done_epochs: int,
    outliers: torch.Tensor | None = None,
    glyphs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch as the config augments it, in this order: pen-width copies and font digits swapped in
    (restroke, glyphs), letters appended (outlier exposure), affine warp (+ elastic), stroke thickening,
    degradations, progressive resizing.
    The one chain the loop runs (and bench/profile_train.py times)."""
    c = config
    x, y = swap_in(x, y, pens, c.restroke, generator)
    x, y = swap_in(x, y, glyphs, c.glyphs, generator)
    x, y = add_outliers(x, y, outliers, c.outliers, generator)
    x = random_affine(x, c.rotate, c.zoom, c.translate, generator, c.elastic, c.elastic_sigma)
    x = thicken_strokes(x, c.thicken, generator, c.thicken_reach)
    x = corruption_augment(x, c.corrupt, c.corrupt_ops, generator)
    return resize_for_epoch(x, c.image_sizes, done_epochs), y
