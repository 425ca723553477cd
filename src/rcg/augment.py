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
    r = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen))      # log-uniform aspect
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx, cy = [(torch.rand(n, generator=gen) * 2 - 1) * (1 - side) for side in (w, h)]   # crop centres
    flip = torch.rand(n, generator=gen) < flip_p
    zero = torch.zeros(n)
    return torch.stack([torch.stack([torch.where(flip, -w, w), zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)


def resized_crop(x: torch.Tensor, out_size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5,
                 gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random resized crop + horizontal flip of every image, output ``out_size`` square."""
    theta = crop_params(x.shape[0], scale, ratio, flip_p, gen).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# Luma weights of torchvision's tensor ``rgb_to_grayscale`` (used by its contrast and saturation ops), so the
# jitter matches ``ColorJitter`` to float precision; ``random_grayscale`` keeps the ITU-R 601 0.299 of ``_gray``.
_JITTER_LUMA = (0.2989, 0.587, 0.114)


def _luma(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return r.mul(_JITTER_LUMA[0]).add_(g, alpha=_JITTER_LUMA[1]).add_(b, alpha=_JITTER_LUMA[2]).unsqueeze(1)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of every RGB image in ``x`` (B, 3, H, W) by ``shift[i]`` (in [-0.5, 0.5]) of a full
    turn, keeping HSV saturation and value: torchvision's ``adjust_hue``, batched with a per-image shift.
    Written with masks and abs/clamp arithmetic only (``where``/``remainder`` are several times slower on CPU)."""
    r, g, b = x.unbind(1)
    hi, lo = x.amax(1), x.amin(1)
    delta = hi - lo                                                # chroma
    m_r = (hi == r).to(x.dtype)                                    # which channel is the max; ties go to red,
    m_g = (hi == g).to(x.dtype).mul_(1 - m_r)                      # then green, as torchvision's
    m_b = 1 - m_r - m_g
    # hue in sixths of a turn, in [-1, 5]: (g - b) / delta, (b - r) / delta + 2 or (r - g) / delta + 4
    h6 = (g - b).mul_(m_r).addcmul_(b - r + 2 * delta, m_g).addcmul_(r - g + 4 * delta, m_b)
    h6.div_(delta.clamp_min(torch.finfo(x.dtype).tiny))             # grey pixels: 0 / tiny = 0
    h6.add_(shift.to(x).view(-1, 1, 1), alpha=6.0).unsqueeze_(1)     # shifted: in [-4, 8]
    # HSV -> RGB with value ``hi`` and chroma ``delta``: channel c is hi - delta * T(h6 + n_c), n = (5, 3, 1), where
    # T(k) = clamp(2 - dist(k, 2 + 6Z), 0, 1) is the hexagonal hue ramp (period 6); for k in [-4, 14] (k is in
    # [-3, 13]) the distance to the nearest of -4, 2, 8, 14 is | | |k - 5| - 6 | - 3 | (two folds, no remainder)
    k = h6 + torch.arange(5, 0, -2, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)      # n = 5, 3, 1
    ramp = k.sub_(5).abs_().sub_(6).abs_().sub_(3).abs_().neg_().add_(2).clamp_(0, 1)
    return torch.addcmul(hi.unsqueeze(1), delta.unsqueeze(1), ramp, value=-1.0)


@dataclass(frozen=True)
class JitterParams:
    """Per-image colour-jitter draws (CPU tensors of length B): ``apply`` flags, the brightness, contrast and
    saturation factors, the hue shift, and ``order`` (B, 4): each image's permutation of the ops
    0 = brightness, 1 = contrast, 2 = saturation, 3 = hue (torchvision's ``fn_idx``)."""
    apply: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    order: torch.Tensor


def jitter_params(n: int, brightness: float, contrast: float, saturation: float, hue: float, p: float,
                  gen: Optional[torch.Generator] = None) -> JitterParams:
    """Draw ``ColorJitter(brightness, contrast, saturation, hue)`` parameters for ``n`` images, applied with
    probability p. Everything is drawn, in a fixed order, whatever the magnitudes (a zero magnitude gives the
    identity factor), so the generator's stream does not depend on the settings."""
    if min(brightness, contrast, saturation, hue) < 0 or hue > 0.5:
        raise ValueError(f"jitter magnitudes must be >= 0 and hue <= 0.5, got brightness={brightness}, "
                         f"contrast={contrast}, saturation={saturation}, hue={hue}")
    apply = torch.rand(n, generator=gen) < p
    fb, fc, fs = [_uniform(n, max(0.0, 1 - m), 1 + m, gen) for m in (brightness, contrast, saturation)]
    fh = _uniform(n, -hue, hue, gen)
    order = torch.rand(n, 4, generator=gen).argsort(dim=1)   # a uniform random permutation per image
    return JitterParams(apply, fb, fc, fs, fh, order)


def apply_jitter(x: torch.Tensor, params: JitterParams) -> torch.Tensor:
    """Apply drawn jitter parameters: each image with ``apply`` gets the four ops in its own order, clamped to
    [0, 1] after each op as torchvision does; the others are returned unchanged. Round r applies, to every
    image, the op at position r of its permutation: brightness, contrast and saturation are all
    ``clamp(f * y + (1 - f) * ref)`` (ref = 0, the mean luma, the luma), so one blend per round with per-image
    f and ref does them (f = 1 for the hue op and for images not jittered); the hue shift runs only on the
    images whose op in that round is hue. Which images do what is known on the CPU (no nonzero() on the
    device), and all per-image values go to the device in two copies."""
    b, rgb = x.shape[0], x.shape[1] == 3
    apply = params.apply
    if not apply.any():
        return x
    factors = torch.stack([params.brightness, params.contrast,
                           params.saturation if rgb else torch.ones(b), torch.ones(b)])   # (4 ops, b)
    op = params.order.t()                                         # (4 rounds, b): the op of each image per round
    f = torch.where(apply, factors.gather(0, op), 1.0)            # (4 rounds, b); 1 = identity (hue, not applied)
    is_c, is_s = (op == 1).to(f.dtype), (op == 2).to(f.dtype) * rgb
    shift = torch.where(apply, params.hue, 0.0) if rgb else torch.zeros(b)
    hue_at = [torch.nonzero((op[r] == 3) & (shift != 0)).view(-1) for r in range(4)]
    keep = torch.nonzero(~apply).view(-1)                         # restored from x at the end (exactly)
    floats = torch.cat([f.reshape(-1), is_c.reshape(-1), is_s.reshape(-1), shift]).to(device=x.device, dtype=x.dtype)
    longs = torch.cat([keep] + hue_at).to(x.device)
    fd, cd, sd = (floats[i * 4 * b:(i + 1) * 4 * b].view(4, b, 1, 1, 1) for i in range(3))
    shift_d = floats[12 * b:]
    keep_d, *hue_d = longs.split([len(keep)] + [len(i) for i in hue_at])

    y = x                        # all images go through every round (cheaper than gathering the applied ones)
    for r in range(4):
        blend = f[r] != 1
        if blend.any():
            if (blend & ((is_c[r] + is_s[r]) > 0)).any():         # some image blends with its (mean) luma
                gray = _luma(y) if rgb else y
                ref = torch.addcmul(gray.mean(dim=(2, 3), keepdim=True) * cd[r], gray, sd[r])
                y = torch.addcmul(ref * (1 - fd[r]), y, fd[r]).clamp_(0, 1)
            else:
                y = (y * fd[r]).clamp_(0, 1)
        if len(hue_at[r]):
            i = hue_d[r]
            hued = _hue_shift(y.index_select(0, i), shift_d.index_select(0, i))
            y = (y.clone() if y is x else y).index_copy_(0, i, hued)     # never write into the caller's x
    if y is x:
        return x
    return y.index_copy_(0, keep_d, x.index_select(0, keep_d)) if len(keep) else y


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, p: float,
                 gen: Optional[torch.Generator] = None, hue: float = 0.0) -> torch.Tensor:
    """torchvision's ``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`` on every image
    independently: factors U[max(0, 1 - m), 1 + m] (hue: a shift U[-hue, hue] of a full turn), the four ops
    in a random order per image, each clamped to [0, 1]. Saturation and hue are no-ops on 1-channel images."""
    return apply_jitter(x, jitter_params(x.shape[0], brightness, contrast, saturation, hue, p, gen))


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _coin(x: torch.Tensor, p: float, gen: Optional[torch.Generator]) -> torch.Tensor:
    """Per-image flags (B, 1, 1, 1) on x's device, True with probability p (drawn on the CPU)."""
    return (torch.rand(x.shape[0], generator=gen) < p).to(x.device).view(-1, 1, 1, 1)


def random_grayscale(x: torch.Tensor, p: float, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    return x if x.shape[1] == 1 or p <= 0 else torch.where(_coin(x, p, gen), _gray(x).expand_as(x), x)


def solarize(x: torch.Tensor, p: float, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    return x if p <= 0 else torch.where(_coin(x, p, gen) & (x >= 0.5), 1 - x, x)


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
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0


def ssl_view(x: torch.Tensor, out_size: int, spec: ViewSpec, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """An augmented view of float images in [0, 1]."""
    x = resized_crop(x, out_size, scale=spec.scale, flip_p=spec.flip_p, gen=gen)
    x = color_jitter(x, spec.brightness, spec.contrast, spec.saturation, spec.jitter_p, gen, hue=spec.hue)
    x = random_grayscale(x, spec.gray_p, gen)
    x = gaussian_blur(x, spec.blur_p, gen=gen)
    x = solarize(x, spec.solarize_p, gen)
    return x


def crop_flip(x: torch.Tensor, out_size: int, scale=(0.8, 1.0), gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """The mild crop + flip used for cached representations and pixel-generator training
    (RCG: Resize + RandomCrop + RandomFlip; area ``scale`` with aspect 1)."""
    return resized_crop(x, out_size, scale=scale, ratio=(1.0, 1.0), flip_p=0.5, gen=gen)
