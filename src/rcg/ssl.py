"""MoCo v3's self-supervised objective (Chen, Xie & He, 2021).

A base encoder (backbone + 3-layer BN projector) with a 2-layer predictor, a momentum encoder
updated by EMA with the cosine momentum schedule, and a symmetric InfoNCE loss between the
predictor output of one view and the momentum-encoder output of the other. Only the base encoder
is kept for RCG; its projector output is the representation.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import dist
from .encoders import Encoder, build_mlp


def momentum_at(progress: float, base: float) -> float:
    """MoCo v3's cosine schedule: ``base`` at the start to 1.0 at the end of training."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - base)


def infonce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the other samples of the batch as negatives, scaled by 2T as in MoCo v3.

    Under several processes (torchrun) the keys of every process are gathered, as MoCo v3 does: each query
    sees the whole global batch as negatives, and the mean of the processes' losses is the loss of the global
    batch. The keys come from the momentum encoder and carry no gradient."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    parts = dist.gather_tensors(k.detach()) if dist.world_size() > 1 else [k]
    offset = sum(len(p) for p in parts[:dist.rank()])        # rank 0 (and a single process): 0
    logits = q @ torch.cat(parts).t() / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


class MoCoV3(nn.Module):
    def __init__(self, encoder: Encoder, pred_dim: int = 1024, temperature: float = 0.2):
        super().__init__()
        self.base_encoder = encoder
        self.momentum_encoder = copy.deepcopy(encoder)
        for p in self.momentum_encoder.parameters():
            p.requires_grad_(False)
        rep_dim = encoder.cfg.rep_dim
        self.predictor = build_mlp(2, rep_dim, pred_dim, rep_dim)
        self.temperature = temperature

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        for pb, pm in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            pm.mul_(m).add_(pb.detach(), alpha=1 - m)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, m: float) -> torch.Tensor:
        """Symmetric loss for two views (float images in [0, 1]); updates the momentum encoder first."""
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            self.update_momentum(m)
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        return infonce(q1, k2, self.temperature) + infonce(q2, k1, self.temperature)
