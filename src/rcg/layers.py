"""Layers shared by the networks (layer 0: no model knowledge). Module names (``qkv``, ``proj``, ``fc1``, ``fc2``)
are those of the official checkpoints, which load by name."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def fused_attention(x: torch.Tensor) -> bool:
    """Whether :class:`Attention` on ``x`` runs in the autocast dtype (the fused flash / memory-efficient kernels
    of ``F.scaled_dot_product_attention``): only for a CUDA tensor while CUDA autocast to bfloat16 is on. Anywhere
    else (CPU, float32, autocast off, float16) attention keeps the official float32 logits and softmax."""
    return (x.is_cuda and torch.is_autocast_enabled("cuda")
            and torch.get_autocast_dtype("cuda") == torch.bfloat16)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
              fused: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v of (B, heads, N, d) tensors. ``fused``: in the dtype of q, k, v as they come
    (bf16 under autocast), through the fused kernels; else q, k, v upcast to float32 with autocast off, as the
    official MAGE and DiT (the result is then float32)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    with torch.autocast(q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), dropout_p=dropout_p)


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias; logits and softmax in float32 (also under autocast), as the
    official MAGE and DiT, except on CUDA under bf16 autocast, where they run fused in bf16
    (:func:`fused_attention`). ``attn_drop`` (on the attention weights) and ``proj_drop`` apply in training mode."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.attn_drop = num_heads, attn_drop
        self.qkv, self.proj, self.proj_drop = nn.Linear(dim, dim * 3), nn.Linear(dim, dim), nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        o = attention(q, k, v, self.attn_drop if self.training else 0.0, fused_attention(x))
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, N, C)))


class Mlp(nn.Module):
    """fc1, exact GELU (not the tanh approximation), dropout, fc2, dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """GLIDE / DiT / LDM (RDM) frequency embedding, cos first: [cos(t f), sin(t f)], ``f_k = exp(-ln(max_period) k
    / (dim/2))`` computed in float32 on the CPU, as both official codes (odd ``dim``: a zero column appended)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], -1) if dim % 2 else emb


def _sincos_2d(dim: int, grid: int, dtype: torch.dtype, rows_first: bool, temperature: float = 10000.0):
    """(grid*grid, dim) float32, row-major tokens: two halves [sin(pos w), cos(pos w)], ``w_k = T^(-k/(dim/4))``
    in ``dtype``; the first half encodes the row index if ``rows_first``, else the column index."""
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=dtype) / (dim / 4.0))
    idx = torch.arange(grid, dtype=dtype)
    rows, cols = idx.repeat_interleave(grid), idx.repeat(grid)
    a, b = (p[:, None] * omega[None] for p in ((rows, cols) if rows_first else (cols, rows)))
    return torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], 1).float()


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """The MAE / DiT fixed 2-D table (grid*grid, dim) (used by rcg.pixel.dit): columns first, then rows, in
    float64 returned as float32."""
    return _sincos_2d(dim, grid, torch.float64, rows_first=False)


def sincos_pos_embed_moco(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MoCo v3's fixed 2-D table (1, 1 + grid*grid, dim) (used by rcg.encoders' ViT): row 0 (CLS) zeros; rows
    first, then columns, in float32."""
    assert dim % 4 == 0, "embed_dim must be divisible by 4 for the 2-D sin-cos position table"
    return torch.cat([torch.zeros(1, dim), _sincos_2d(dim, grid, torch.float32, True, temperature)])[None]


def class_condition(table: nn.Embedding, labels: Optional[torch.Tensor], null: Optional[torch.Tensor], B: int,
                    null_class: Optional[int] = None) -> torch.Tensor:
    """``table(labels)`` (B, dim) of a class-conditional network (MAGE's slot 0, DiT's class embedding); the
    samples that ``null`` (B,) bool selects get row ``null_class`` (None: there is no null class, no guidance)."""
    if labels is None or labels.shape != (B,):
        got = None if labels is None else tuple(labels.shape)
        raise ValueError(f"this network is class-conditional: pass labels ({B},), got {got}")
    labels = labels.to(table.weight.device)
    if null is not None and bool(null.any()):
        if null_class is None:
            raise ValueError("this class-conditional network has no null class (no guidance)")
        labels = torch.where(null.to(labels.device), torch.full_like(labels, null_class), labels)
    return table(labels)


def rep_condition(proj: nn.Linear, null_rep: torch.Tensor, rep: Optional[torch.Tensor], null: Optional[torch.Tensor],
                  B: int) -> torch.Tensor:
    """``proj(rep)`` (B, out) of RCG's representation condition (MAGE's slot 0, DiT's rep embedding), with the
    learned ``null_rep`` (1, rep_dim) for the samples that ``null`` (B,) bool selects, or for all with rep None."""
    w = proj.weight
    nul = null_rep.to(w.dtype).expand(B, -1)
    if rep is None:
        if null is not None and not bool(null.all()):
            raise ValueError("rep is None but some samples are not selected as null")
        return proj(nul)
    if rep.shape != nul.shape:
        raise ValueError(f"rep must be {tuple(nul.shape)}, got {tuple(rep.shape)}")
    r = rep.to(device=w.device, dtype=w.dtype)
    return proj(r if null is None else torch.where(null.to(w.device).view(B, 1), nul, r))
