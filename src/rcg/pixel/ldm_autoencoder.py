"""The first stage of RCG's LDM: the LDM ``VQModelInterface`` (``ldm/modules/diffusionmodules/model.py`` Encoder /
Decoder, ``quant_conv`` / ``post_quant_conv``, taming's legacy VectorQuantizer2), or our VQ tokenizer instead.

``kind="ldm-vq"`` (:class:`LDMAutoencoder`, the official one; parameter names as ``first_stage_model.*`` of an
official LDM file): images float in **[-1, 1]**; ``encode(x) = quant_conv(encoder(x))`` (**no quantisation**:
this is what the LDM diffuses); ``decode(h) = decoder(post_quant_conv(quantize(h)))`` (the decode quantises:
argmin of ``|z|^2 + |e|^2 - 2 z.e``, first index on ties, ``z_q = z + (e[ids] - z)``; ids (B, h*w) row-major),
``decode(h, force_not_quantize=True)`` skips the quantiser. Semantics unlike MAGE's VQGAN (:mod:`rcg.tokenizer`):
GroupNorm(32, eps 1e-6) and swish everywhere; a ResnetBlock ``h = conv1(swish(GN1(x)))``, ``h = conv2(swish(GN2(h)))``,
``x = nin_shortcut(x)`` (1x1 on **x**) when the width changes, out ``x + h``; single-head AttnBlock (1x1 q, k, v,
``softmax(q^T k C^-0.5)`` over keys, ``proj_out``, residual) after every block of a level whose resolution is in
``attn_resolutions`` and in the middle; Downsample = zero pad (0, 1, 0, 1) + conv3x3 stride 2 padding 0;
Upsample = nearest 2x + conv3x3; the encoder has ``num_res_blocks`` blocks per level, the decoder one more;
3x3 ``conv_out`` / ``conv_in`` at the latent; no tanh, no clamp.

``kind="rcg-vq"`` (:class:`TokenizerAutoencoder`): an :class:`rcg.tokenizer.VQModel` (made by ``rcg
train-tokenizer``, weights under ``vq.*``) behind the same interface, for our own small-data runs: the latent is
its encoder output before quantisation, its images are mapped from [-1, 1] to its [0, 1] and back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..tokenizer import VectorQuantizer, VQConfig, VQModel, swish


@dataclass(frozen=True)
class FirstStageConfig:
    """An LDM first stage. Defaults: the ommer-lab VQ-f8 (``vq-f8/config.yaml``) of RCG's LDM-8, 256 px."""
    kind: str = "ldm-vq"                         # "ldm-vq" (LDM's VQModelInterface) | "rcg-vq" (rcg.tokenizer.VQModel)
    in_channels: int = 3
    out_channels: int = 3                        # ddconfig out_ch
    ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Tuple[int, ...] = (32,)    # ldm-vq: resolutions with attention (rcg-vq has none)
    z_channels: int = 4
    embed_dim: int = 4                           # latent channels (quant_conv's output, the codebook width)
    n_embed: int = 16384
    resolution: int = 256
    num_groups: int = 32                         # GroupNorm groups (official 32)

    def __post_init__(self):
        if self.kind not in ("ldm-vq", "rcg-vq"):
            raise ValueError(f"first stage kind must be 'ldm-vq' or 'rcg-vq', got {self.kind!r}")
        if self.resolution % self.downsampling:
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling {self.downsampling}")
        if self.kind == "rcg-vq" and (self.attn_resolutions or self.z_channels != self.embed_dim):
            raise ValueError("an rcg-vq first stage has no attention and z_channels == embed_dim "
                             "(set attn_resolutions=() and z_channels=embed_dim)")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.downsampling

    def vq_config(self) -> VQConfig:
        """The :class:`rcg.tokenizer.VQConfig` of an rcg-vq first stage."""
        return VQConfig(in_channels=self.in_channels, out_channels=self.out_channels, ch=self.ch,
                        ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks, z_channels=self.z_channels,
                        embed_dim=self.embed_dim, n_embed=self.n_embed, resolution=self.resolution,
                        num_groups=self.num_groups)

    @classmethod
    def from_vq(cls, vq: VQConfig) -> "FirstStageConfig":
        """The rcg-vq first stage of a tokenizer of config ``vq``."""
        return cls(kind="rcg-vq", in_channels=vq.in_channels, out_channels=vq.out_channels, ch=vq.ch,
                   ch_mult=tuple(vq.ch_mult), num_res_blocks=vq.num_res_blocks, attn_resolutions=(),
                   z_channels=vq.z_channels, embed_dim=vq.embed_dim, n_embed=vq.n_embed, resolution=vq.resolution,
                   num_groups=vq.num_groups)


def _norm(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """LDM ResnetBlock without timestep (``temb_channels`` 0); ``nin_shortcut`` (1x1) on the input."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(swish(self.norm2(self.conv1(swish(self.norm1(x))))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the positions, 1x1 convolutions, residual."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = _norm(c, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        w = torch.bmm(q.reshape(b, c, hh * ww).permute(0, 2, 1), k.reshape(b, c, hh * ww)) * (int(c) ** (-0.5))
        w = F.softmax(w, dim=2)
        h = torch.bmm(v.reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks, attns) -> nn.Module:
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return level


def _mid(c: int, groups: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(c, c, groups), AttnBlock(c, groups), ResnetBlock(c, c, groups)
    return mid


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    """Official structure: the width after each level follows its blocks (``block_in``), as upstream."""

    def __init__(self, c: FirstStageConfig):
        super().__init__()
        g, res = c.num_groups, c.resolution
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        in_mult = (1,) + tuple(c.ch_mult)
        self.down = nn.ModuleList()
        for i, mult in enumerate(c.ch_mult):
            block_in, blocks, attns = c.ch * in_mult[i], [], []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(block_in, c.ch * mult, g))
                block_in = c.ch * mult
                if res in c.attn_resolutions:
                    attns.append(AttnBlock(block_in, g))
            level = _level(blocks, attns)
            if i != len(c.ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _mid(block_in, g)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: FirstStageConfig):
        super().__init__()
        g = c.num_groups
        block_in, res = c.ch * c.ch_mult[-1], c.latent_size
        self.conv_in = nn.Conv2d(c.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, g)
        levels = []
        for i in reversed(range(len(c.ch_mult))):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, c.ch * c.ch_mult[i], g))
                block_in = c.ch * c.ch_mult[i]
                if res in c.attn_resolutions:
                    attns.append(AttnBlock(block_in, g))
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class LDMAutoencoder(nn.Module):
    """LDM's ``VQModelInterface`` (kind "ldm-vq"); images in [-1, 1]."""

    def __init__(self, cfg: FirstStageConfig = FirstStageConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, beta=0.25, legacy=True)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``quant_conv(encoder(x))``: (B, embed_dim, h, w), not quantised."""
        return self.quant_conv(self.encoder(x))

    def codes(self, h: torch.Tensor):
        """(straight-through z_q, ids (B, h*w) row-major) of latents ``h``."""
        z_q, _, ids = self.quantize(h)
        return z_q, ids

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """``decoder(post_quant_conv(quantize(h)))`` (quantisation skipped with ``force_not_quantize``)."""
        q = h if force_not_quantize else self.codes(h)[0]
        return self.decoder(self.post_quant_conv(q.to(h.dtype)))


class TokenizerAutoencoder(nn.Module):
    """Our VQ tokenizer as an LDM first stage (kind "rcg-vq"); images in [-1, 1] outside, [0, 1] inside."""

    def __init__(self, cfg: FirstStageConfig):
        super().__init__()
        self.cfg = cfg
        self.vq = VQModel(cfg.vq_config())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vq.encoder((x + 1.0) / 2.0)

    def codes(self, h: torch.Tensor):
        z_q, _, ids = self.vq.quantize(h)
        return z_q, ids

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        q = h if force_not_quantize else self.codes(h)[0]
        return self.vq.decoder(q.to(h.dtype)) * 2.0 - 1.0


def first_stage(cfg: FirstStageConfig) -> nn.Module:
    """The first-stage module of ``cfg.kind``."""
    return LDMAutoencoder(cfg) if cfg.kind == "ldm-vq" else TokenizerAutoencoder(cfg)
