"""The U-Net of RCG's LDM (``ldm/modules/diffusionmodules/openaimodel.py`` ``UNetModel`` with
``use_spatial_transformer``, ``ldm/modules/attention.py``), parameter names as the official ones under
``model.diffusion_model.``.

:class:`LDMUNet` predicts eps (B, C, h, w) for latents ``x`` (B, C, h, w), integer timesteps ``t`` (B,) and a
cross-attention ``context`` (B, n, context_dim). Semantics (README section 7 of the official fixtures): cos-first
timestep embedding of width ``model_channels`` -> Linear, SiLU, Linear (4x); ResBlocks **without** scale-shift
(``h = conv(SiLU(GN(x)))``, ``h += Linear(SiLU(emb))``, ``h = conv(Dropout(SiLU(GN(h))))``, out ``skip(x) + h``;
GroupNorm32 eps 1e-5 computed in float32); conv resampling (Downsample conv3x3 stride 2 padding 1, Upsample
nearest 2x + conv3x3); SpatialTransformer: GroupNorm(eps 1e-6), 1x1 ``proj_in``, per block ``x += attn1(LN1 x)``,
``x += attn2(LN2 x, context)``, ``x += FF(LN3 x)`` (bias-free q/k/v, heads ``b n (h d)``, ``softmax(q k^T d^-0.5)``
in float32, fused bf16 kernels on CUDA under bf16 autocast (:func:`rcg.layers.fused_attention`); GEGLU
``u * gelu(g)`` with exact GELU), 1x1 ``proj_out``, residual. Heads at width C: ``C // num_head_channels`` of
``C // heads`` channels (upstream's legacy rule), or ``num_heads``. The config is an :class:`rcg.pixel.ldm.LDMConfig`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import attention, fused_attention, timestep_embedding


class GroupNorm32(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    def __init__(self, cin: int, emb: int, cout: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(groups, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout))
        self.out_layers = nn.Sequential(GroupNorm32(groups, cout), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(cout, cout, 3, padding=1)))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        inner, self.heads = heads * dim_head, heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        ctx = x if context is None else context
        B, N, _ = x.shape
        q, k, v = (p.reshape(B, p.shape[1], self.heads, -1).transpose(1, 2)
                   for p in (self.to_q(x), self.to_k(ctx), self.to_v(ctx)))
        o = attention(q, k, v, fused=fused_attention(x))
        return self.to_out(o.transpose(1, 2).reshape(B, N, -1).to(x.dtype))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, gate = self.proj(x).chunk(2, dim=-1)
        return u * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, c: int, heads: int, dim_head: int, depth: int, context_dim: int, groups: int,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, c, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(c, inner, 1)
        self.transformer_blocks = nn.ModuleList(BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout)
                                                for _ in range(depth))
        self.proj_out = _zero(nn.Conv2d(inner, c, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.proj_in(self.norm(x))
        y = y.permute(0, 2, 3, 1).reshape(b, h * w, -1)                # b c h w -> b (h w) c
        for block in self.transformer_blocks:
            y = block(y, context)
        return self.proj_out(y.transpose(1, 2).reshape(b, -1, h, w)) + x


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class LDMUNet(nn.Module):
    """``openaimodel.UNetModel`` with ``use_spatial_transformer`` (no ``label_emb``, no scale-shift, conv
    resampling); in / out channels = the latent channels."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = c = cfg
        mc, g, temb = c.model_channels, c.num_groups, 4 * c.model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.latent_channels, mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [ResBlock(ch, temb, mult * mc, g, c.dropout)]
                ch = mult * mc
                if ds in c.attention_resolutions:
                    layers.append(self._transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, temb, ch, g, c.dropout), self._transformer(ch),
                                                    ResBlock(ch, temb, ch, g, c.dropout))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(c.channel_mult))[::-1]:
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), temb, mc * mult, g, c.dropout)]
                ch = mc * mult
                if ds in c.attention_resolutions:
                    layers.append(self._transformer(ch))
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(g, ch), nn.SiLU(), _zero(nn.Conv2d(mc, c.latent_channels, 3, padding=1)))

    def _transformer(self, ch: int) -> SpatialTransformer:
        c = self.cfg
        heads = ch // c.num_head_channels if c.num_head_channels > 0 else c.num_heads
        return SpatialTransformer(ch, heads, ch // heads, c.transformer_depth, c.rep_dim, c.num_groups, c.dropout)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(self.time_embed[0].weight.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)
