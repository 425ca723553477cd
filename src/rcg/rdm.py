"""RCG's Representation Diffusion Model (RDM) network.

``SimpleMLP`` is the residual MLP of the official ``rdm/modules/diffusionmodules/latentmlp.py`` with the
same structure and parameter names, so official weights load by renaming ``model.diffusion_model.*`` to
``net.*`` (see :mod:`rcg.official`). Each block is ``x + Linear(SiLU(LN(Linear(SiLU(LN(x))) + emb [+ ctx])))``
with a zero-initialised last Linear; the output layer ``Linear(SiLU(LN_eps1e-6(x)))`` is zero-initialised too.

``RDM`` wraps the network with the optional class embedding (the class-conditional RDM of the paper):
``forward(x_t, t, labels)`` returns the predicted clean representation x0 (x0-parameterisation).
Tensors: ``x`` float (B, D), ``t`` int64 (B,) counting from data (0) to noise, ``labels`` int64 (B,).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional

import torch
import torch.nn as nn

from .layers import timestep_embedding


@dataclass(frozen=True)
class RDMConfig:
    in_channels: int = 256        # representation dim (input = output)
    time_embed_dim: int = 256
    model_channels: int = 1536    # width of the residual stream; also the sinusoidal embedding dim
    num_res_blocks: int = 12
    num_classes: int = 0          # 0 = unconditional; > 0 = class-conditional (class embedding added per block)
    class_embed_dim: int = 512
    dropout: float = 0.0
    bottleneck_channels: int = 0  # inner width of each block; 0 = model_channels (as every official config)

    @property
    def bottleneck(self) -> int:
        return self.bottleneck_channels or self.model_channels


class ResBlock(nn.Module):
    def __init__(self, channels: int, mid: int, emb_channels: int, dropout: float, context_channels: int = 0):
        super().__init__()
        self.in_layers = nn.Sequential(nn.LayerNorm(channels), nn.SiLU(), nn.Linear(channels, mid))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, mid))
        self.context_layers = None
        if context_channels:
            self.context_layers = nn.Sequential(nn.SiLU(), nn.Linear(context_channels, mid))
        self.out_layers = nn.Sequential(nn.LayerNorm(mid), nn.SiLU(), nn.Dropout(dropout), nn.Linear(mid, channels))
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)
        if self.context_layers is not None:
            h = h + self.context_layers(context)
        return x + self.out_layers(h)


class SimpleMLP(nn.Module):
    """The official RDM backbone. ``context`` (B, class_embed_dim) is used only when the network was
    built with ``use_context`` (class-conditional); otherwise it is ignored, as in the official code."""

    def __init__(self, in_channels: int, time_embed_dim: int, model_channels: int, bottleneck_channels: int,
                 out_channels: int, num_res_blocks: int, dropout: float = 0.0, use_context: bool = False,
                 context_channels: int = 512):
        super().__init__()
        self.model_channels = model_channels
        self.use_context = use_context
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))
        self.input_proj = nn.Linear(in_channels, model_channels)
        ctx = context_channels if use_context else 0
        self.res_blocks = nn.ModuleList([ResBlock(model_channels, bottleneck_channels, time_embed_dim, dropout, ctx)
                                         for _ in range(num_res_blocks)])
        self.out = nn.Sequential(nn.LayerNorm(model_channels, eps=1e-6), nn.SiLU(),
                                 nn.Linear(model_channels, out_channels))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() == 4:                      # the official module receives (B, D, 1, 1)
            x = x.flatten(1)
        if self.use_context and context is None:
            raise ValueError("this SimpleMLP is class-conditional: pass context (B, context_channels)")
        if context is not None and context.dim() == 3:   # ClassEmbedder output (B, 1, C)
            context = context.flatten(1)
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))
        h = self.input_proj(x)
        for block in self.res_blocks:
            h = block(h, emb, context if self.use_context else None)
        return self.out(h)


class RDM(nn.Module):
    """Representation diffusion network: predicted x0 = net(x_t, t, class_embed(labels))."""

    def __init__(self, cfg: RDMConfig = RDMConfig()):
        super().__init__()
        if cfg.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {cfg.num_classes}")
        self.cfg = cfg
        cond = cfg.num_classes > 0
        self.net = SimpleMLP(cfg.in_channels, cfg.time_embed_dim, cfg.model_channels, cfg.bottleneck,
                             cfg.in_channels, cfg.num_res_blocks, cfg.dropout, use_context=cond,
                             context_channels=cfg.class_embed_dim)
        if cond:
            self.class_embed = nn.Embedding(cfg.num_classes, cfg.class_embed_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, D) float, t (B,) int64, labels (B,) int64 (required iff class-conditional; ignored
        otherwise, like the official unconditional model's all-zero "fake" labels). Returns x0 (B, D)."""
        context = None
        if self.cfg.num_classes > 0:
            if labels is None:
                raise ValueError(f"this RDM is class-conditional ({self.cfg.num_classes} classes): pass labels (B,)")
            context = self.class_embed(labels).to(x.dtype)
        return self.net(x, t, context)


RDM_PRESETS: Dict[str, RDMConfig] = {
    # the paper's RDM (Table 5): 12 blocks, width 1536, 62.72M parameters
    "rdm-l12-w1536": RDMConfig(),
    # the paper's class-conditional RDM (Table 3): + per-block context layers and a 1000 x 512 embedding
    "rdm-l12-w1536-cls1000": RDMConfig(num_classes=1000),
    # CPU-sized
    "rdm-tiny": RDMConfig(time_embed_dim=128, model_channels=256, num_res_blocks=3),
    "rdm-small": RDMConfig(time_embed_dim=256, model_channels=512, num_res_blocks=6),
}


def rdm_config(name: str, **overrides) -> RDMConfig:
    """A preset with fields overridden, e.g. ``rdm_config("rdm-tiny", in_channels=128)``."""
    if name not in RDM_PRESETS:
        raise KeyError(f"unknown RDM preset {name!r}; choices: {sorted(RDM_PRESETS)}")
    return replace(RDM_PRESETS[name], **overrides)
