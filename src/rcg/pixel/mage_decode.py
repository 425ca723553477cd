"""MAGE generation: the official ``gen_image`` parallel decoding (:func:`mage_generate`) with its token draws,
and the encoder's token choice of :func:`encoder_keep`. The model is :class:`rcg.pixel.mage.MAGE`."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..guidance import guided_pass, linear_tau
from ..rng import uniform


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniforms."""
    tiny = torch.finfo(u.dtype).tiny
    return -torch.log(-torch.log(u.clamp(tiny, 1.0 - torch.finfo(u.dtype).eps)))


def cosine_mask_len(num_tokens: int, step: int, steps: int) -> int:
    """Tokens left masked after decoding step ``step`` (before clamping): floor(L cos(pi/2 (step+1)/steps))."""
    return math.floor(num_tokens * math.cos(math.pi / 2.0 * (step + 1) / steps))


def _rows(x: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """Per-sample index rows ``x`` (B, K) for a pass over n rows ((cond; uncond) under guidance: n = 2B)."""
    return None if x is None else x.repeat(n // x.shape[0], 1)


def _draw_gumbel(model, ids, rep, labels, tau, unknown, generators, keep=None):
    """Every token of Categorical(logits) as argmax(logits + Gumbel) (known tokens kept) and log p of each."""
    lg = guided_pass(lambda *a, null: model.logits(*a, null=null, keep=_rows(keep, len(a[0]))).float(),
                     (ids, rep, labels), tau)
    sampled = (lg + gumbel(uniform(lg.shape, generators, ids.device))).argmax(-1)
    sampled = torch.where(unknown, sampled, ids)
    return sampled, lg.log_softmax(-1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)


def _draw_cdf(model, ids, rep, labels, tau, unknown, generators, keep=None):
    """The unknown tokens of Categorical(logits) by inverse CDF, from the logits at the unknown positions only;
    log p of each (+inf at known tokens)."""
    B, L = ids.shape
    pos = unknown.nonzero()[:, 1].view(B, -1)        # ascending; the same count for every sample (one schedule)
    lg = guided_pass(lambda *a, null: model.logits(*a, null=null, positions=_rows(pos, len(a[0])),
                                                   keep=_rows(keep, len(a[0]))).float(),
                     (ids, rep, labels), tau)
    logz = lg.logsumexp(-1, keepdim=True)
    cdf = (lg - logz).exp_().cumsum_(-1)
    u = uniform(pos.shape, generators, ids.device).unsqueeze(-1) * cdf[..., -1:]
    pick = torch.searchsorted(cdf, u, right=True).clamp_(max=lg.shape[-1] - 1)
    log_p = (lg.gather(-1, pick) - logz).squeeze(-1)
    conf = torch.full((B, L), float("inf"), device=ids.device).scatter(1, pos, log_p)
    return ids.scatter(1, pos, pick.squeeze(-1)), conf


TOKEN_DRAWS = {"gumbel": _draw_gumbel, "cdf": _draw_cdf}   # mage_generate(draw=) / PixelRun.token_draw


def encoder_keep(unknown: torch.Tensor, visible: int, generators=None) -> Optional[torch.Tensor]:
    """The positions (B, K) the encoder sees in a decoding step with ``encoder_drop``: every known token and,
    while fewer than ``visible`` are known, randomly chosen unknown ([MASK]) ones up to ``visible`` (as training
    shows the encoder ``visible = L - ceil(L drop_ratio)`` tokens); the other masks are dropped. None when
    nothing would be dropped. The known count must be the same in every row (one schedule)."""
    B, L = unknown.shape
    known = L - int(unknown[0].sum())
    if visible >= L or known == L:
        return None
    if known >= visible:
        return (~unknown).nonzero()[:, 1].view(B, -1)
    score = uniform((B, L), generators, unknown.device).masked_fill(~unknown, -1.0)   # known tokens first
    return score.argsort(1)[:, :visible].sort(1).values


@torch.no_grad()
def mage_generate(model, rep: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                  steps: int = 20, temperature: float = 6.0, guidance: float = 0.0,
                  generators: Optional[Sequence[torch.Generator]] = None, batch_size: Optional[int] = None,
                  return_history: bool = False, draw: str = "gumbel", encoder_drop: bool = False):
    """Official ``gen_image`` parallel decoding -> tokens (B, num_tokens) in [0, codebook_size).

    Starts all-masked; step k samples every unknown token from Categorical(logits) (guided logits
    ``cond + tau_k (cond - uncond)``, ``tau_k = guidance (k+1)/steps``, uncond = ``null_rep``, by
    :func:`rcg.guidance.guided_pass`; no uncond pass when guidance = 0), keeps known tokens, then re-masks the
    ``mask_len`` least confident (confidence = log p(sampled) + temperature (1 - r) Gumbel, known tokens +inf),
    ``mask_len = floor(L cos(pi/2 r))`` clamped to [1, #unknown - 1], r = (k+1)/steps. Returns the last step's
    sampled ids (complete). ``generators``: one per sample, for batch-size-independent results (else the global
    RNG). ``draw``: how the Categorical is drawn: ``"gumbel"`` (argmax of logits + one Gumbel per token and code,
    over all positions; the reference) or ``"cdf"`` (inverse CDF, one uniform per unknown token, the logits at the
    unknown positions only: the same distribution, other draws, steps 1.1-1.3x cheaper). ``encoder_drop``: the
    encoder sees only the known tokens and, while fewer are known, random [MASK]s up to the count training shows it
    (:func:`encoder_keep`; not in the official code: a cheaper encoder in the early steps, other outputs; with
    ``drop_ratio`` 0 nothing is dropped and the result is the default's). ``return_history``: also
    return (steps, B, L) ids after each step (re-masked; the last entry is the result). Call in eval mode.
    Batch size from rep / labels / generators / ``batch_size``."""
    c = model.cfg
    B = next((int(x.shape[0]) for x in (rep, labels) if x is not None),
             len(generators) if generators is not None else batch_size)
    if B is None:
        raise ValueError("cannot tell the batch size: pass rep, labels, generators or batch_size")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if guidance and c.cond == "class":
        raise ValueError("a class-conditional MAGE has no unconditional branch: use guidance=0")
    if c.cond == "rep" and rep is None:
        raise ValueError("cond='rep': pass rep (B, rep_dim) (e.g. sampled by the RDM)")
    dev = next((x.device for x in (rep, labels) if x is not None), model.decoder_pos_embed_learned.device)
    L = c.num_tokens
    visible = L - math.ceil(L * c.drop_ratio)                         # tokens the encoder sees in training
    ids = torch.full((B, L), c.mask_id, dtype=torch.long, device=dev)
    history = []
    if draw not in TOKEN_DRAWS:
        raise ValueError(f"draw must be one of {', '.join(TOKEN_DRAWS)}, got {draw!r}")
    for k in range(steps):
        unknown = ids == c.mask_id
        tau = linear_tau(guidance, k, steps) if guidance and c.cond == "rep" else 0.0
        keep = encoder_keep(unknown, visible, generators) if encoder_drop else None
        sampled, log_p = TOKEN_DRAWS[draw](model, ids, rep, labels, tau, unknown, generators, keep)
        mask_len = (unknown.sum(1) - 1).clamp(max=cosine_mask_len(L, k, steps)).clamp(min=1)
        conf = log_p + temperature * (1.0 - (k + 1) / steps) * gumbel(uniform((B, L), generators, dev))
        conf = conf.masked_fill(~unknown, float("inf"))
        remask = torch.zeros_like(unknown).scatter(1, conf.argsort(1), torch.arange(L, device=dev) < mask_len[:, None])
        ids = torch.where(remask, c.mask_id, sampled)
        if return_history:
            history.append(sampled if k == steps - 1 else ids)
    return (sampled, torch.stack(history)) if return_history else sampled
