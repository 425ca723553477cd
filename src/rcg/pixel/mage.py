"""MAGE, RCG's representation-conditioned pixel generator: a masked generative transformer over VQ tokens.

Works on ``tokens`` int64 ``(B, num_tokens)`` of a VQ tokenizer (codes in ``[0, codebook_size)``); images are
the tokenizer's business (MAGE's VQGAN takes and returns floats in [0, 1]).

The sequence is ``[slot 0, image tokens in raster order]``. Token ids are embedded BERT-style (word + learned
position embedding, LayerNorm, dropout); slot 0 is then **overwritten** (no position embedding, no
LayerNorm) by the condition: ``latent_prior_proj(rep)`` (``cond="rep"``, RCG), ``latent_prior_proj(null_rep)``
(the learned unconditional branch; always for ``cond="none"``), or ``class_emb(labels)`` (``cond="class"``,
no guidance). Training (:meth:`MAGE.loss`) masks a truncated-normal fraction of the tokens (one ratio per
batch), drops ``drop_ratio`` of them from the encoder MAE-style, fills every masked position of the decoder
input with the decoder-embedded slot-0 vector, and scores the masked positions with label-smoothed CE over the
codebook. Generation (:func:`rcg.pixel.mage_decode.mage_generate`) is the official ``gen_image`` parallel
decoding with a cosine schedule, annealed Gumbel re-masking and the linear guidance schedule. Parameter
names follow the official ``models_mage.py`` (its ``fake_latent`` is our ``null_rep``; unused official
parameters are not created).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import Attention, Mlp, class_condition, rep_condition
from ..precision import resolve_bf16
from ..rng import uniform
from .mage_decode import mage_generate
from .rows import in_row_chunks


@dataclass(frozen=True)
class MAGEConfig:
    codebook_size: int = 1024
    num_tokens: int = 256            # image tokens (16x16); sequence = 1 + num_tokens
    vocab_size: int = 0              # 0 = codebook_size + 1 (codes + [MASK]); official: codebook + 1000 + 1
    mask_token_id: int = -1          # -1 = codebook_size; official: vocab_size - 1
    cond_token_id: int = -1          # id embedded at slot 0 before it is overwritten; -1 = mask id; official 1100
    embed_dim: int = 768; depth: int = 12; num_heads: int = 12                        # noqa: E702
    decoder_embed_dim: int = 768; decoder_depth: int = 8; decoder_num_heads: int = 16  # noqa: E702
    mlp_ratio: float = 4.0
    rep_dim: int = 256
    cond: str = "rep"                # "rep" (RCG) | "class" (class-label baseline) | "none" (always null_rep)
    num_classes: int = 0             # for cond="class"
    rep_drop_prob: float = 0.1
    mask_ratio_min: float = 0.5; mask_ratio_max: float = 1.0                          # noqa: E702
    mask_ratio_mu: float = 0.75; mask_ratio_std: float = 0.25                         # noqa: E702
    drop_ratio: float = 0.5          # fraction of tokens dropped from the encoder (official: mask_ratio_min)
    label_smoothing: float = 0.1
    dropout: float = 0.1; attn_dropout: float = 0.1                                   # noqa: E702

    def __post_init__(self):
        if self.cond not in ("rep", "class", "none"):
            raise ValueError(f"cond must be 'rep', 'class' or 'none', got {self.cond!r}")
        if self.vocab <= self.codebook_size:
            raise ValueError(f"vocab_size {self.vocab} must exceed codebook_size {self.codebook_size} ([MASK])")
        for name in ("mask_id", "cond_id"):
            if not 0 <= getattr(self, name) < self.vocab:
                raise ValueError(f"{name} {getattr(self, name)} outside the vocabulary [0, {self.vocab})")
        if self.mask_id < self.codebook_size:
            raise ValueError("the mask token must not be a codebook id")
        if not 0.0 <= self.mask_ratio_min <= self.mask_ratio_max <= 1.0 or self.mask_ratio_std <= 0:
            raise ValueError("need 0 <= mask_ratio_min <= mask_ratio_max <= 1 and mask_ratio_std > 0")
        if not 0.0 <= self.drop_ratio <= self.mask_ratio_min:
            raise ValueError(f"drop_ratio {self.drop_ratio} must be in [0, mask_ratio_min]: dropped tokens "
                             f"must be masked ones")
        for dim, heads in ((self.embed_dim, self.num_heads), (self.decoder_embed_dim, self.decoder_num_heads)):
            if dim % heads:
                raise ValueError(f"width {dim} is not divisible by {heads} heads")

    @property
    def vocab(self) -> int:
        return self.vocab_size or self.codebook_size + 1

    @property
    def mask_id(self) -> int:
        return self.codebook_size if self.mask_token_id < 0 else self.mask_token_id

    @property
    def cond_id(self) -> int:
        return self.mask_id if self.cond_token_id < 0 else self.cond_token_id


MAGE_PRESETS: Dict[str, MAGEConfig] = {
    # the paper's MAGE-B / MAGE-L (official mage_vit_{base,large}_patch16; 256 px, VQGAN f16, 1024 codes)
    "mage-b": MAGEConfig(),
    "mage-l": MAGEConfig(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=1024, decoder_depth=8,
                         decoder_num_heads=16),
    # CPU-sized, for 7x7 = 49 tokens of a small tokenizer (4.2M parameters; paper sizes: B 145.1M, L 408.1M)
    "mage-tiny": MAGEConfig(codebook_size=512, num_tokens=49, embed_dim=192, depth=6, num_heads=6,
                            decoder_embed_dim=192, decoder_depth=3, decoder_num_heads=6),
}


def mage_config(name: str, **overrides) -> MAGEConfig:
    """A preset with fields overridden, e.g. ``mage_config("mage-tiny", codebook_size=256)``."""
    if name not in MAGE_PRESETS:
        raise KeyError(f"unknown MAGE preset {name!r}; choices: {sorted(MAGE_PRESETS)}")
    return replace(MAGE_PRESETS[name], **overrides)


# ----------------------------------------------------------------------------------------------
# Modules (official names)
# ----------------------------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-LN transformer block (LayerNorm eps 1e-6, qkv bias, exact GELU, dropout, no drop-path)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float, attn_drop: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenEmbedding(nn.Module):
    """BERT embeddings: LayerNorm(eps 1e-6)(word + position), then dropout."""

    def __init__(self, vocab: int, dim: int, seq_len: int, drop: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)
        self.position_embeddings = nn.Embedding(seq_len, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-6)
        self.dropout = nn.Dropout(drop)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_embeddings.weight[: ids.shape[1]]
        return self.dropout(self.LayerNorm(self.word_embeddings(ids) + pos))


class MlmLayer(nn.Module):
    """logits = LayerNorm(eps 1e-5)(GELU(fc(x))) @ word_embeddings^T + bias (embeddings tied, detached)."""

    def __init__(self, dim_in: int, word_dim: int, vocab: int):
        super().__init__()
        self.fc = nn.Linear(dim_in, word_dim)
        self.ln = nn.LayerNorm(word_dim)
        self.bias = nn.Parameter(torch.zeros(1, 1, vocab))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        h = self.ln(F.gelu(self.fc(x)))
        bias = self.bias[0, 0, : word_embeddings.shape[0]]
        return h @ word_embeddings.t().to(h.dtype) + bias.to(h.dtype)


# ----------------------------------------------------------------------------------------------
# MAGE
# ----------------------------------------------------------------------------------------------
class MAGE(nn.Module):
    config_class = MAGEConfig

    def __init__(self, cfg: MAGEConfig = MAGEConfig()):
        super().__init__()
        self.cfg = c = cfg
        D, Dd, S = c.embed_dim, c.decoder_embed_dim, 1 + c.num_tokens
        self.token_emb = TokenEmbedding(c.vocab, D, S, c.dropout)
        if c.cond == "class":
            if c.num_classes <= 0:
                raise ValueError("cond='class' needs num_classes > 0")
            self.class_emb = nn.Embedding(c.num_classes, D)
        else:
            self.latent_prior_proj = nn.Linear(c.rep_dim, D)
            self.null_rep = nn.Parameter(torch.zeros(1, c.rep_dim))
        self.blocks = nn.ModuleList(Block(D, c.num_heads, c.mlp_ratio, c.dropout, c.attn_dropout)
                                    for _ in range(c.depth))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.decoder_embed = nn.Linear(D, Dd)
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, S, Dd))
        self.decoder_blocks = nn.ModuleList(Block(Dd, c.decoder_num_heads, c.mlp_ratio, c.dropout, c.attn_dropout)
                                            for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(Dd, eps=1e-6)
        self.mlm_layer = MlmLayer(Dd, D, c.vocab)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: Linear xavier-uniform / zero bias, LayerNorm 1 / 0, token embeddings, learned decoder
        positions and null_rep N(0, 0.02); class_emb keeps nn.Embedding's N(0, 1) as in the official code."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for p in (self.token_emb.word_embeddings.weight, self.token_emb.position_embeddings.weight,
                  self.decoder_pos_embed_learned) + ((self.null_rep,) if hasattr(self, "null_rep") else ()):
            nn.init.normal_(p, std=0.02)
        nn.init.zeros_(self.mlm_layer.bias)

    # ---- conditioning ------------------------------------------------------------------------
    def _slot0(self, B: int, rep, labels, null) -> torch.Tensor:
        """The slot-0 vectors (B, embed_dim)."""
        c = self.cfg
        if c.cond == "class":                                             # no null class
            return class_condition(self.class_emb, labels, null, B)
        if c.cond == "none":                                              # always null_rep
            rep, null = None, None
        return rep_condition(self.latent_prior_proj, self.null_rep, rep, null, B)

    # ---- network -----------------------------------------------------------------------------
    def _decoded(self, ids: torch.Tensor, slot0: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoder + decoder for image-token ids (B, L) with [MASK]s; ``keep`` (B, K) = positions the encoder
        sees (None = all). Returns the normed decoder output (B, 1 + L, decoder_embed_dim)."""
        B, L = ids.shape
        seq = torch.cat([ids.new_full((B, 1), self.cfg.cond_id), ids], 1)
        e = self.token_emb(seq)
        img = e[:, 1:] if keep is None else e[:, 1:].gather(1, keep.unsqueeze(-1).expand(-1, -1, e.shape[-1]))
        x = torch.cat([slot0.unsqueeze(1).to(e.dtype), img], 1)          # slot 0 overwritten after the LN
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        fill = x[:, :1]
        if keep is not None:                                              # put kept tokens back in place
            idx = keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
            x = torch.cat([fill, fill.expand(-1, L, -1).contiguous().scatter(1, idx, x[:, 1:])], 1)
        masked = torch.cat([torch.zeros_like(ids[:, :1], dtype=torch.bool), ids == self.cfg.mask_id], 1)
        x = torch.where(masked.unsqueeze(-1), fill, x) + self.decoder_pos_embed_learned
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_norm(x)

    def _mlm(self, h: torch.Tensor, vocab: int) -> torch.Tensor:
        return self.mlm_layer(h, self.token_emb.word_embeddings.weight.detach()[:vocab])

    def _step(self, tokens_in: torch.Tensor, rep, labels, null, keep=None) -> torch.Tensor:
        if tokens_in.dim() != 2 or tokens_in.shape[1] != self.cfg.num_tokens:
            raise ValueError(f"tokens must be (B, {self.cfg.num_tokens}), got {tuple(tokens_in.shape)}")
        return self._decoded(tokens_in, self._slot0(tokens_in.shape[0], rep, labels, null), keep)

    def logits(self, tokens_in: torch.Tensor, rep: Optional[torch.Tensor] = None,
               labels: Optional[torch.Tensor] = None, null: Optional[torch.Tensor] = None,
               positions: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One decoding step for ids (B, num_tokens) where the mask id marks unknown tokens: logits
        (B, num_tokens, codebook_size). ``null`` (B,) bool selects ``null_rep`` per sample; with ``rep=None``
        (and always for cond="none") every sample uses ``null_rep``. ``positions`` (B, U): the logits at those
        token positions only, (B, U, codebook_size) (the output layer runs on them alone). ``keep`` (B, K): the
        token positions the encoder sees (every known one; the others must be masked), as in training; None =
        all (the official step). Call in eval mode for the official step."""
        h = self._step(tokens_in, rep, labels, null, keep)[:, 1:]
        if positions is not None:
            h = h.gather(1, positions.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        return self._mlm(h, self.cfg.codebook_size)

    def full_logits(self, tokens_in: torch.Tensor, rep: Optional[torch.Tensor] = None,
                    labels: Optional[torch.Tensor] = None, null: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Like :meth:`logits` over the whole sequence and vocabulary: (B, 1 + num_tokens, vocab)."""
        return self._mlm(self._step(tokens_in, rep, labels, null), self.cfg.vocab)

    # ---- training ----------------------------------------------------------------------------
    def sample_mask_ratio(self, generator: Optional[torch.Generator] = None) -> float:
        """One draw of the truncated normal (mu, std) on [min, max], by inverse CDF in float64."""
        c = self.cfg
        u = uniform((), generator, "cpu").double()
        lo, hi = (torch.tensor((v - c.mask_ratio_mu) / c.mask_ratio_std, dtype=torch.float64)
                  for v in (c.mask_ratio_min, c.mask_ratio_max))
        p = torch.special.ndtr(lo) + u * (torch.special.ndtr(hi) - torch.special.ndtr(lo))
        r = c.mask_ratio_mu + c.mask_ratio_std * float(torch.special.ndtri(p))
        return min(max(r, c.mask_ratio_min), c.mask_ratio_max)

    def loss(self, tokens: torch.Tensor, rep: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None, rows: Optional[slice] = None,
             global_batch: Optional[int] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """MAGE training loss on token ids (B, num_tokens); ``generator`` drives masking and rep dropout.
        Data-parallel: with ``rows`` (this process's slice of a ``global_batch``), the random draws are made
        for the whole global batch and sliced, so any number of processes sees one process's masks."""
        c = self.cfg
        B, L = tokens.shape
        G = global_batch or B

        def draw(*tail):
            u = uniform((G,) + tail, generator, tokens.device)
            return u[rows] if rows is not None else u
        if L != c.num_tokens or bool(((tokens < 0) | (tokens >= c.codebook_size)).any()):
            raise ValueError(f"tokens must be (B, {c.num_tokens}) ids in [0, {c.codebook_size})")
        dev = tokens.device
        ratio = self.sample_mask_ratio(generator)
        n_mask, n_drop = math.ceil(L * ratio), math.ceil(L * c.drop_ratio)
        order = draw(L).argsort(1)                                        # small noise = masked / dropped first
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(L, device=dev).expand(B, L))
        masked = rank < n_mask
        keep = order[:, n_drop:].sort(1).values
        null = None
        if c.cond == "rep":
            if rep is None:
                raise ValueError("cond='rep': pass rep (B, rep_dim)")
            null = draw() < c.rep_drop_prob
        h = self._decoded(tokens.masked_fill(masked, c.mask_id), self._slot0(B, rep, labels, null), keep)
        logits = self._mlm(h[:, 1:][masked], c.codebook_size).float()
        target = tokens[masked]
        loss = F.cross_entropy(logits, target, label_smoothing=c.label_smoothing)
        acc = (logits.detach().argmax(-1) == target).float().mean()
        return loss, {"mask_ratio": torch.tensor(ratio), "acc": acc}


# ----------------------------------------------------------------------------------------------
# registry entry (rcg.pixel.GENERATORS["mage"])
# ----------------------------------------------------------------------------------------------
def sized(cfg: MAGEConfig, data: dict) -> MAGEConfig:
    """``cfg`` with the codebook, token count and rep width of the data."""
    return replace(cfg, codebook_size=int(data["codebook_size"]), num_tokens=int(data["tokens_shape"][1]),
                   rep_dim=int(data["rep_dim"]))


def trainer(model: MAGE, run):
    """loss(tokens, rep, labels, generator, rows, global_batch): :meth:`MAGE.loss`, which uses only the
    condition of its ``cond`` (rep for "rep", labels for "class", neither for "none")."""
    return model.loss


def sampler(model: MAGE, run):
    """sample(rep, labels, generators, steps, temperature, guidance) -> tokens (B, num_tokens); unset settings
    are the run's. The model uses only the condition of its ``cond``. ``run.sample_bf16``: the transformer under
    bf16 autocast (logits, Gumbel draws and confidences stay float32); off by default, as the official code. On a
    CPU the rows go through in chunks (:func:`rcg.pixel.rows.in_row_chunks`; the same tokens)."""
    dev = next(model.parameters()).device

    def sample(rep, labels, generators, steps=None, temperature=None, guidance=None):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=resolve_bf16(run.sample_bf16, dev)):
            return mage_generate(model, rep, labels, steps or run.steps,
                                 run.temperature if temperature is None else temperature,
                                 run.guidance if guidance is None else guidance, generators, len(generators),
                                 draw=run.token_draw, encoder_drop=run.encoder_drop)
    return in_row_chunks(sample, dev)


def to_unit(tokens: torch.Tensor, tokenizer) -> torch.Tensor:
    """Tokens -> the tokenizer's images, floats in [0, 1]."""
    if tokenizer is None:
        raise ValueError("MAGE makes VQ tokens: decoding them to images needs the tokenizer")
    return tokenizer.decode_ids(tokens)


def image_shape(run, tokenizer) -> Tuple[int, int]:
    if tokenizer is None:
        raise ValueError("a MAGE system needs its tokenizer to know its image size")
    return int(tokenizer.cfg.in_channels), int(tokenizer.cfg.resolution)
