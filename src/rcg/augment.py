"""Batched, tensor-based augmentations (no torchvision needed).

All functions take float images in [0, 1] of shape (B, C, H, W) and a ``torch.Generator`` so that a
view depends only on the seed, never on the batch layout or the device count. Crops and flips are
done in one ``grid_sample`` per batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def _uniform(n: int, lo: float, hi: float, gen: Optional[torch.Generator]) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def crop_params(n: int, scale: Tuple[float, float], ratio: Tuple[float, float], flip_p: float,
                gen: Optional[torch.Generator]) -> torch.Tensor:
    """Affine matrices (n, 2, 3) for random-resized crops (area fraction ``scale``, aspect ``ratio``)
    with horizontal flips, in ``affine_grid``'s normalized coordinates."""
    area = _uniform(n, scale[0], scale[1], gen)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    flip = torch.rand(n, generator=gen) < flip_p
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -w, w)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta


def resized_crop(x: torch.Tensor, out_size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5,
                 gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random resized crop + horizontal flip of every image, output ``out_size`` square."""
    theta = crop_params(x.shape[0], scale, ratio, flip_p, gen).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, p: float,
                 gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Brightness, contrast and (RGB only) saturation jitter, applied to each image with probability p."""
    b = x.shape[0]
    apply = (torch.rand(b, generator=gen) < p).to(x.device).view(b, 1, 1, 1)
    fb = _uniform(b, 1 - brightness, 1 + brightness, gen).to(x).view(b, 1, 1, 1)
    fc = _uniform(b, 1 - contrast, 1 + contrast, gen).to(x).view(b, 1, 1, 1)
    fs = _uniform(b, 1 - saturation, 1 + saturation, gen).to(x).view(b, 1, 1, 1)
    y = x * fb
    mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * fc + mean
    if x.shape[1] == 3 and saturation > 0:
        g = _gray(y)
        y = (y - g) * fs + g
    return torch.where(apply, y.clamp(0, 1), x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def random_grayscale(x: torch.Tensor, p: float, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    if x.shape[1] == 1 or p <= 0:
        return x
    apply = (torch.rand(x.shape[0], generator=gen) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(apply, _gray(x).expand_as(x), x)


def solarize(x: torch.Tensor, p: float, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    if p <= 0:
        return x
    apply = (torch.rand(x.shape[0], generator=gen) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= 0.5), 1 - x, x)


def gaussian_blur(x: torch.Tensor, p: float, sigma=(0.1, 2.0), gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-image Gaussian blur (kernel ~10 % of the image side, odd), applied with probability p."""
    if p <= 0:
        return x
    b, c, h, _ = x.shape
    k = max(3, int(0.1 * h) // 2 * 2 + 1)
    s = _uniform(b, sigma[0], sigma[1], gen).to(x).view(b, 1)
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.exp(-(r.view(1, -1) ** 2) / (2 * s ** 2))
    kern = kern / kern.sum(1, keepdim=True)                       # (b, k)
    apply = (torch.rand(b, generator=gen) < p).to(x.device)
    kern = torch.where(apply.view(b, 1), kern, (r == 0).to(x).view(1, -1).expand(b, -1))
    w = kern.repeat_interleave(c, 0)                              # (b*c, k)
    y = x.reshape(1, b * c, h, -1)
    y = F.conv2d(F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect"), w.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, k // 2, k // 2), mode="reflect"), w.view(b * c, 1, k, 1), groups=b * c)
    return y.view_as(x)


@dataclass(frozen=True)
class ViewSpec:
    """One MoCo v3-style augmentation pipeline (the two views may differ in blur/solarize)."""
    scale: Tuple[float, float] = (0.2, 1.0)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    gray_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0


def ssl_view(x: torch.Tensor, out_size: int, spec: ViewSpec, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """An augmented view of float images in [0, 1]."""
    x = resized_crop(x, out_size, scale=spec.scale, flip_p=spec.flip_p, gen=gen)
    x = color_jitter(x, spec.brightness, spec.contrast, spec.saturation, spec.jitter_p, gen)
    x = random_grayscale(x, spec.gray_p, gen)
    x = gaussian_blur(x, spec.blur_p, gen=gen)
    x = solarize(x, spec.solarize_p, gen)
    return x


def crop_flip(x: torch.Tensor, out_size: int, scale=(0.8, 1.0), gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """The mild crop + flip used for cached representations and pixel-generator training
    (RCG: Resize + RandomCrop + RandomFlip; area ``scale`` with aspect 1)."""
    return resized_crop(x, out_size, scale=scale, ratio=(1.0, 1.0), flip_p=0.5, gen=gen)
