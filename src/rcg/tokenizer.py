"""VQ tokenizer: the JAX-converted MaskGIT VQGAN that MAGE uses, plus what training it on the user's data needs.

:class:`VQModel` has exactly the official structure and parameter names (``encoder.*``, ``decoder.*``,
``quantize.embedding.weight``; no attention, no ``quant_conv``), so official files load strictly
(:func:`rcg.official.vqgan_from_official`). Images enter in **[0, 1]** (uint8 is divided by 255) without
normalisation, and decoder output is read as [0, 1] (not clamped here). Tokens are int64 ``(B, h*w)`` in
row-major order.

Semantics of the official code: GroupNorm(eps 1e-6), swish ``x * sigmoid(x)``; a ResnetBlock whose channel count
changes adds ``nin_shortcut(h) + h`` (1x1 conv applied to the residual branch, not to the input); the encoder
downsamples by 2x2 average pooling, the decoder upsamples by nearest 2x + 3x3 conv; the quantizer takes the
argmin of ``|z|^2 + |e|^2 - 2 z.e`` (first index on ties) and its loss is by default VectorQuantizer2's legacy
form ``mean((sg[e] - z)^2) + beta * mean((e - sg[z])^2)`` (``VQConfig.legacy``).

:class:`VQTrainer` wraps a VQModel for training: reconstruction loss + VQ loss, an EMA of the code-usage shares
kept as a buffer (so it is saved with the resume state) and dead-code re-seeding from encoder outputs.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


TOKENIZER_KIND = "rcg-tokenizer"      # the kind in the metadata of a tokenizer's checkpoint.safetensors

@dataclass(frozen=True)
class VQConfig:
    """Architecture of the VQGAN. Defaults: MAGE's ``config/mage/vqgan.yaml`` (f16, 16x16 tokens at 256 px)."""
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 1024
    resolution: int = 256
    beta: float = 0.25           # VectorQuantizer2 beta
    legacy: bool = True          # VectorQuantizer2's default loss: beta weighs the codebook term, 1 the commitment
    num_groups: int = 32         # GroupNorm groups (official 32); small CPU configs may use fewer

    @property
    def downsampling(self) -> int:
        """Image side / token-grid side: 2 ** (len(ch_mult) - 1)."""
        return 2 ** (len(self.ch_mult) - 1)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        if cin != cout:   # official quirk: [cout, cout, 1, 1], applied to the residual branch
            self.nin_shortcut = nn.Conv2d(cout, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return self.nin_shortcut(h) + h if hasattr(self, "nin_shortcut") else x + h


def _mid(c: int, groups: int) -> nn.Sequential:
    """The middle of the encoder and decoder: ResnetBlocks ``block_1`` then ``block_2``."""
    return nn.Sequential(OrderedDict(block_1=ResnetBlock(c, c, groups), block_2=ResnetBlock(c, c, groups)))


def _upsample(c: int) -> nn.Sequential:
    """Nearest 2x, then the 3x3 ``conv``."""
    return nn.Sequential(OrderedDict(resize=nn.Upsample(scale_factor=2.0, mode="nearest"),
                                     conv=nn.Conv2d(c, c, 3, padding=1)))


def _level(cin: int, cout: int, n: int, groups: int, upsample: bool = False) -> nn.Sequential:
    """One resolution level: ``block`` (n ResnetBlocks) and, in the decoder, ``upsample``."""
    level = nn.Sequential(OrderedDict(block=nn.Sequential(*[ResnetBlock(cin if j == 0 else cout, cout, groups)
                                                            for j in range(n)])))
    if upsample:
        level.add_module("upsample", _upsample(cout))
    return level


class Encoder(nn.Module):
    def __init__(self, c: VQConfig):
        super().__init__()
        g = c.num_groups
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1, bias=False)
        mults = (1,) + tuple(c.ch_mult)
        self.down = nn.ModuleList([_level(c.ch * mults[i], c.ch * mults[i + 1], c.num_res_blocks, g)
                                   for i in range(len(c.ch_mult))])
        top = c.ch * c.ch_mult[-1]
        self.mid = _mid(top, g)
        self.norm_out = _norm(top, g)
        self.conv_out = nn.Conv2d(top, c.z_channels, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2, 2)
        return self.conv_out(swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, c: VQConfig):
        super().__init__()
        g = c.num_groups
        top = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, top, 3, padding=1)
        self.mid = _mid(top, g)
        ins = [c.ch * m for m in tuple(c.ch_mult[1:]) + (c.ch_mult[-1],)]   # level i gets level i+1's width
        self.up = nn.ModuleList([_level(ins[i], c.ch * c.ch_mult[i], c.num_res_blocks, g, upsample=i > 0)
                                 for i in range(len(c.ch_mult))])
        self.norm_out = _norm(c.ch * c.ch_mult[0], g)
        self.conv_out = nn.Conv2d(c.ch * c.ch_mult[0], c.out_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantizer (VectorQuantizer2), computed in float32. Loss: legacy (official default)
    ``mean((sg[e] - z)^2) + beta * mean((e - sg[z])^2)``, else ``beta * mean((sg[e] - z)^2) + mean((e - sg[z])^2)``."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float, legacy: bool = True):
        super().__init__()
        self.beta, self.legacy = beta, legacy
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """ids of the nearest codes of ``(N, D)`` vectors: argmin |z|^2 + |e|^2 - 2 z.e (first on ties)."""
        e = self.embedding.weight.float()
        d = z_flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * z_flat @ e.t()
        return d.argmin(1)

    def forward(self, z: torch.Tensor):
        """(B, D, h, w) -> (straight-through z_q, VQ loss, ids (B, h*w))."""
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            b, d, h, w = z.shape
            z_flat = z.permute(0, 2, 3, 1).reshape(-1, d)
            ids = self.nearest(z_flat.detach())
            e = self.embedding(ids).view(b, h, w, d).permute(0, 3, 1, 2)
            commit, codebook = F.mse_loss(e.detach(), z), F.mse_loss(e, z.detach())
            loss = commit + self.beta * codebook if self.legacy else self.beta * commit + codebook
            z_q = z + (e - z).detach()
        return z_q, loss, ids.view(b, h * w)

    def lookup(self, ids: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Codebook rows of ``(B, h*w)`` ids as ``(B, D, h, w)`` (official ``get_codebook_entry``)."""
        return self.embedding(ids.reshape(ids.shape[0], h, w)).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    """The VQGAN tokenizer. Images float [0, 1] (or uint8) ``(B, C, H, W)``; tokens int64 ``(B, h*w)``."""

    def __init__(self, cfg: VQConfig = VQConfig()):
        super().__init__()
        f = cfg.downsampling
        if cfg.z_channels != cfg.embed_dim:
            raise ValueError(f"z_channels ({cfg.z_channels}) must equal embed_dim ({cfg.embed_dim}): "
                             f"this VQGAN has no quant_conv")
        if cfg.resolution % f:
            raise ValueError(f"resolution {cfg.resolution} is not divisible by the downsampling factor {f} "
                             f"(2 ** (len(ch_mult) - 1))")
        widths = {cfg.ch} | {cfg.ch * m for m in cfg.ch_mult}
        if any(w % cfg.num_groups for w in widths):
            raise ValueError(f"num_groups {cfg.num_groups} must divide every width {sorted(widths)}")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta, cfg.legacy)

    @property
    def token_grid(self) -> int:
        """h (= w) of the token grid for ``cfg.resolution``."""
        return self.cfg.resolution // self.cfg.downsampling

    @staticmethod
    def _float(x: torch.Tensor) -> torch.Tensor:
        return x.float().div(255.0) if x.dtype == torch.uint8 else x

    def encode(self, x: torch.Tensor):
        """-> (straight-through z_q (B, D, h, w), ids int64 (B, h*w))."""
        z_q, _, ids = self.quantize(self.encoder(self._float(x)))
        return z_q, ids

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_q)

    def decode_ids(self, ids: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Codebook lookup, then the decoder (the path of MAGE's ``gen_image``). ``ids`` (B, h*w) or (B, h, w);
        ``hw`` defaults to the ids' own grid, or a square one."""
        if hw is None and ids.dim() == 3:
            hw = tuple(ids.shape[1:])
        elif hw is None:
            side = math.isqrt(ids.shape[1])
            if side * side != ids.shape[1]:
                raise ValueError(f"{ids.shape[1]} tokens are not a square grid; pass hw=(h, w)")
            hw = (side, side)
        return self.decoder(self.quantize.lookup(ids, *hw))

    def forward(self, x: torch.Tensor):
        """-> (reconstruction, VQ loss, ids), for training."""
        z_q, vq_loss, ids = self.quantize(self.encoder(self._float(x)))
        return self.decoder(z_q), vq_loss, ids


# ------------------------------------------------------------------------------------------------
# training and evaluation helpers
# ------------------------------------------------------------------------------------------------
def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, ``10 log10(range^2 / mean((x - y)^2))`` over all but the first dimension
    (capped at 200 dB for identical images so that means stay finite)."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1).clamp_min(1e-20 * data_range ** 2)
    return 10 * torch.log10(data_range ** 2 / mse)


def code_stats(counts: torch.Tensor) -> Dict[str, float]:
    """Fraction of codes used and perplexity exp(H) of a histogram of code assignments."""
    p = counts.double() / counts.sum().clamp_min(1)
    ent = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codebook_usage": float((counts > 0).double().mean()), "perplexity": float(ent.exp())}


@torch.no_grad()
def reseed_dead_codes(codebook: torch.Tensor, usage: torch.Tensor, z_flat: torch.Tensor, threshold: float,
                      gen: Optional[torch.Generator] = None) -> int:
    """Codes whose usage share (EMA) is below ``threshold / n_codes`` get random rows of ``z_flat`` (encoder
    outputs, distinct rows when there are enough) and a fresh usage share of 1/n. Returns how many moved."""
    n = codebook.shape[0]
    dead = (usage < threshold / n).nonzero().flatten()
    if len(dead) == 0:
        return 0
    pick = (torch.randperm(len(z_flat), generator=gen)[:len(dead)] if len(z_flat) >= len(dead)
            else torch.randint(0, len(z_flat), (len(dead),), generator=gen))
    codebook[dead] = z_flat[pick.to(z_flat.device)].to(codebook.dtype)
    usage[dead] = 1.0 / n
    return len(dead)


class VQTrainer(nn.Module):
    """Training wrapper: loss = l1 |x - x'| + mse (x - x')^2 + grad |d x - d x'| + VQ loss. The buffer
    ``usage`` is an EMA (from 0) of each code's share of the assignments and ``reseeded`` counts re-seeded
    codes; both are in the state dict, so resume continues them exactly. Only ``vq`` is exported."""

    def __init__(self, vq: VQModel, l1: float = 1.0, mse: float = 0.0, grad: float = 0.0,
                 usage_decay: float = 0.99, dead_threshold: float = 0.03):
        super().__init__()
        self.vq = vq
        self.l1, self.mse, self.grad = l1, mse, grad
        self.usage_decay, self.dead_threshold = usage_decay, dead_threshold
        self.register_buffer("usage", torch.zeros(vq.cfg.n_embed))
        self.register_buffer("reseeded", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def reseed(self, x: torch.Tensor, gen: Optional[torch.Generator] = None) -> int:
        """Re-seed the dead codes from the encoder outputs of ``x`` (call before the loss of a step)."""
        z = self.vq.encoder(self.vq._float(x)).float()
        z_flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        n = reseed_dead_codes(self.vq.quantize.embedding.weight.data, self.usage, z_flat, self.dead_threshold, gen)
        self.reseeded += n
        return n

    def loss(self, x: torch.Tensor):
        """x float [0, 1] -> (loss, metrics); updates the usage EMA."""
        recon, vq_loss, ids = self.vq(x)
        diff = recon.float() - x
        rec = self.l1 * diff.abs().mean() + self.mse * diff.pow(2).mean()
        if self.grad:
            rec = rec + self.grad * (diff.diff(dim=-1).abs().mean() + diff.diff(dim=-2).abs().mean())
        with torch.no_grad():
            counts = torch.bincount(ids.flatten(), minlength=len(self.usage)).float()
            self.usage.mul_(self.usage_decay).add_(counts / counts.sum(), alpha=1 - self.usage_decay)
            mse = diff.pow(2).mean()
        stats = code_stats(counts)
        metrics = {"rec_loss": rec.detach(), "vq_loss": vq_loss.detach(), "psnr_batch": -10 * torch.log10(mse),
                   "batch_code_usage": stats["codebook_usage"], "batch_perplexity": stats["perplexity"],
                   "live_codes": float((self.usage >= self.dead_threshold / len(self.usage)).float().mean()),
                   "reseeded_total": float(self.reseeded)}
        return rec + vq_loss, metrics


@torch.no_grad()
def reconstruction_metrics(vq: VQModel, images: torch.Tensor, batch_size: int = 500, bf16: bool = False) -> dict:
    """Mean per-image PSNR (reconstruction clamped to [0, 1]) of uint8 ``images``, codebook usage and
    perplexity of their codes."""
    was_training = vq.training
    vq.eval()
    dev = next(vq.parameters()).device
    counts = torch.zeros(vq.cfg.n_embed, dtype=torch.float64)
    f = vq.cfg.downsampling
    scores = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(dev).float().div(255.0)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            _, ids = vq.encode(x)
            rec = vq.decode_ids(ids, (x.shape[-2] // f, x.shape[-1] // f))
        scores.append(psnr(rec.float().clamp(0, 1), x).cpu())
        counts += torch.bincount(ids.flatten().cpu(), minlength=vq.cfg.n_embed).double()
    vq.train(was_training)
    return {"psnr": float(torch.cat(scores).mean()), **code_stats(counts), "eval_images": len(images)}
