"""Representation-conditioned DiT (RCG's ``pixel_generator/dit/models.py``): a diffusion transformer with adaLN-Zero.

Works on float images / latents ``x`` (B, in_channels, input_size, input_size) in the diffusion's data range
([-1, 1] pixels, or SD-VAE latents x 0.18215 as RCG's DiT-XL/2), integer (or float) timesteps ``t`` (B,), and
predicts eps (``out_channels = in_channels``) followed, with ``learn_sigma``, by the variance-interpolation
channels (``out_channels = 2 * in_channels``), shaped (B, out_channels, H, W).

Conditioning vector ``c = t_embedder(t) + rep_embedder(rep)`` (``cond="rep"``, RCG), ``t_embedder(t) +
y_embedder(labels)`` (``cond="class"``, the class-conditional DiT; the null class is the table's extra row),
or ``t_embedder(t)`` (``cond="none"``). The unconditional branch of ``cond="rep"`` is the learned ``null_rep``
(official ``fake_latent``), used for samples selected by ``null`` and, in training mode, for a random
``rep_drop_prob`` fraction. Each block: adaLN-Zero modulated attention and MLP (LayerNorm without affine,
eps 1e-6; attention logits and softmax in float32; exact GELU). Parameter names follow the official module;
``pos_embed`` is the fixed MAE 2-D sin-cos table, a persistent buffer (not a parameter).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..diffusion import GaussianDiffusion, image_loss
from ..guidance import guided_pass
from ..layers import Attention, Mlp, class_condition, rep_condition, sincos_pos_embed, timestep_embedding
from ..precision import resolve_bf16
from ..rng import randn_per_sample, uniform
from ..solvers import DPM_SOLVERS, dpm_solver_sample
from ..tree import to_dict
from .rows import in_row_chunks


@dataclass(frozen=True)
class DiTConfig:
    input_size: int = 32             # H = W of x (latent grid of a 256 px image under the SD VAE)
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    learn_sigma: bool = True         # out_channels = 2 * in_channels (eps, then the variance interpolation v)
    rep_dim: int = 256
    cond: str = "rep"                # "rep" (RCG) | "class" (class-conditional DiT) | "none" (c = t embedding)
    num_classes: int = 0             # for cond="class"
    rep_drop_prob: float = 0.1       # training: fraction of reps replaced by null_rep
    class_dropout_prob: float = 0.1  # cond="class": > 0 adds the null-class row; training drop fraction

    def __post_init__(self):
        if self.cond not in ("rep", "class", "none"):
            raise ValueError(f"cond must be 'rep', 'class' or 'none', got {self.cond!r}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by 4 and by {self.num_heads} heads")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size


DIT_PRESETS: Dict[str, DiTConfig] = {
    # the paper's DiT-XL/2 (released RCG model) and DiT-L/2 (README command): 32x32x4 SD-VAE latents
    "dit-xl-2": DiTConfig(),
    "dit-l-2": DiTConfig(hidden_size=1024, depth=24, num_heads=16),
    # CPU-sized, 28 px gray pixels in [-1, 1]: 7x7 tokens of 4x4 patches (4.2M parameters)
    "dit-tiny": DiTConfig(input_size=28, patch_size=4, in_channels=1, hidden_size=192, depth=6, num_heads=6),
    # the Fashion-MNIST CPU preset (rcg train-pixel --preset fmnist-dit)
    "dit-fmnist": DiTConfig(input_size=28, patch_size=4, in_channels=1, hidden_size=128, depth=4, num_heads=4),
}


def dit_config(name: str, **overrides) -> DiTConfig:
    """A preset with fields overridden, e.g. ``dit_config("dit-tiny", cond="class", num_classes=10)``."""
    if name not in DIT_PRESETS:
        raise KeyError(f"unknown DiT preset {name!r}; choices: {sorted(DIT_PRESETS)}")
    return replace(DIT_PRESETS[name], **overrides)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# ----------------------------------------------------------------------------------------------
# Modules (official names)
# ----------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """timm PatchEmbed: a p x p / stride p conv, tokens in raster order."""

    def __init__(self, patch: int, cin: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table with ``num_classes + 1`` rows when there is a null class (the last row), else num_classes."""

    def __init__(self, num_classes: int, dim: int, with_null: bool):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(with_null), dim)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, cout: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * cout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ----------------------------------------------------------------------------------------------
# DiT
# ----------------------------------------------------------------------------------------------
class DiT(nn.Module):
    config_class = DiTConfig

    def __init__(self, cfg: DiTConfig = DiTConfig()):
        super().__init__()
        self.cfg = c = cfg
        if c.cond == "class" and c.num_classes <= 0:
            raise ValueError("a class-conditional DiT needs num_classes > 0 (train-pixel sets it from the data)")
        H = c.hidden_size
        self.x_embedder = PatchEmbed(c.patch_size, c.in_channels, H)
        self.t_embedder = TimestepEmbedder(H)
        if c.cond == "class":
            self.y_embedder = LabelEmbedder(c.num_classes, H, c.class_dropout_prob > 0)
        elif c.cond == "rep":
            self.rep_embedder = nn.Linear(c.rep_dim, H)
            self.null_rep = nn.Parameter(torch.zeros(1, c.rep_dim))
        self.register_buffer("pos_embed", sincos_pos_embed(H, c.grid).unsqueeze(0))
        self.blocks = nn.ModuleList(DiTBlock(H, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.final_layer = FinalLayer(H, c.patch_size, c.out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: Linear (and the patch conv, as a Linear) xavier-uniform / zero bias; class table,
        time-MLP weights and null_rep N(0, 0.02); adaLN modulations and the final linear zero (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)
        emb = self.y_embedder.embedding_table.weight if self.cfg.cond == "class" else getattr(self, "null_rep", None)
        for p in [self.t_embedder.mlp[0].weight, self.t_embedder.mlp[2].weight] + ([emb] if emb is not None else []):
            nn.init.normal_(p, std=0.02)
        for lin in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                   self.final_layer.linear]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ---- conditioning ------------------------------------------------------------------------
    def drop_mask(self, B: int, device, generator=None) -> Optional[torch.Tensor]:
        """Training-time condition dropout: (B,) bool, True = use the null condition (None when no dropout)."""
        c = self.cfg
        p = c.rep_drop_prob if c.cond == "rep" else (c.class_dropout_prob if c.cond == "class" else 0.0)
        return uniform((B,), generator, device) < p if p > 0 else None

    def condition(self, t: torch.Tensor, rep=None, labels=None, null=None) -> torch.Tensor:
        """c (B, hidden) = t embedding + rep / class embedding; ``null`` (B,) bool selects the null condition."""
        c, B = self.cfg, t.shape[0]
        temb = self.t_embedder(t)
        null = None if null is None else null.to(temb.device).reshape(B).bool()
        if c.cond == "none":
            if null is not None and bool(null.any()):
                raise ValueError("an unconditional DiT (cond='none') has no null condition (no guidance)")
            return temb
        if c.cond == "class":                                     # the null class is the table's extra row
            null_class = c.num_classes if c.class_dropout_prob > 0 else None
            return temb + class_condition(self.y_embedder.embedding_table, labels, null, B, null_class)
        return temb + rep_condition(self.rep_embedder, self.null_rep, rep, null, B)

    # ---- network -----------------------------------------------------------------------------
    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p*p*C) -> (B, C, H, W): token (h, w) holds its patch as (p, q, c)."""
        p, g, C = self.cfg.patch_size, self.cfg.grid, self.cfg.out_channels
        x = x.reshape(x.shape[0], g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], C, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, rep: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, null: Optional[torch.Tensor] = None,
                generator=None) -> torch.Tensor:
        """(B, out_channels, H, W). ``null`` (B,) bool selects the null condition per sample (``rep=None``:
        every sample uses ``null_rep``). In training mode with ``null=None`` the condition is dropped with
        ``rep_drop_prob`` / ``class_dropout_prob`` (draws from ``generator``); eval mode never drops."""
        c = self.cfg
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.in_channels, c.input_size, c.input_size):
            raise ValueError(f"x must be (B, {c.in_channels}, {c.input_size}, {c.input_size}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be ({x.shape[0]},), got {tuple(t.shape)}")
        if null is None and self.training and (rep is not None or c.cond == "class"):
            null = self.drop_mask(x.shape[0], x.device, generator)
        cond = self.condition(t, rep, labels, null)
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            h = block(h, cond)
        return self.unpatchify(self.final_layer(h, cond))


# ----------------------------------------------------------------------------------------------
# sampling (rcg.diffusion does the diffusion; this wires the network's guidance into it)
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def dit_generate(model: DiT, diffusion, generators, rep: Optional[torch.Tensor] = None,
                 labels: Optional[torch.Tensor] = None, steps: int = 50, sampler: str = "ddpm", eta: float = 0.0,
                 guidance: float = 0.0, clip_denoised: bool = True, official_first3: bool = False) -> torch.Tensor:
    """One sample per generator (its initial noise and, for DDPM / DDIM eta > 0, its step noise come from that
    generator alone, so a sample does not depend on its batch), in the diffusion's data range (B, C, H, W).

    ``sampler="ddpm"``: ancestral sampling on ``diffusion.respaced(steps)`` with the learned variance;
    ``"ddim"``: :meth:`rcg.diffusion.GaussianDiffusion.ddim_sample` (eps channels only; the last step's
    predicted x0 is returned, without the official sampler's leftover noise); ``"dpm++2m"``: DPM-Solver++ 2M
    (:func:`rcg.solvers.dpm_solver_sample`, deterministic, ``steps`` model calls; ``"dpm++2m-sde"`` its
    stochastic form, eta 1). ``guidance`` is tau
    (DiT's scale 1 + tau) on the eps channels, by :func:`rcg.guidance.guided_pass` (``official_first3``: the
    official first-3-channels form). ``clip_denoised`` clips the predicted x0 to [-1, 1] (pixel space)."""
    c = model.cfg
    dev = next(model.parameters()).device
    x_T = randn_per_sample((len(generators), c.in_channels, c.input_size, c.input_size), generators, device=dev)

    def fn(x, t):
        return guided_pass(model, (x, t, rep, labels), guidance, c.in_channels, official_first3).float()
    if sampler == "ddpm":
        return diffusion.respaced(steps).ddpm_sample(fn, x_T, generators, clip_denoised=clip_denoised)
    if sampler == "ddim":
        return diffusion.ddim_sample(fn, x_T, steps, eta, generators=generators, final_x0=True)
    if sampler in DPM_SOLVERS:                                                      # as DiT's DDIM: no clipping
        return dpm_solver_sample(diffusion, fn, x_T, steps, final_x0=True, eta=DPM_SOLVERS[sampler],
                                 generators=generators)
    raise ValueError(f"sampler must be 'ddpm', 'ddim', {' or '.join(map(repr, DPM_SOLVERS))}, got {sampler!r}")


# ----------------------------------------------------------------------------------------------
# registry entry (rcg.pixel.GENERATORS["dit"])
# ----------------------------------------------------------------------------------------------
def _diffusion(run, device):
    return GaussianDiffusion(**to_dict(run.diffusion)).to(device)


def sized(cfg: DiTConfig, data: dict) -> DiTConfig:
    """``cfg`` with the channels, size and rep width of the data."""
    _, C, H, _ = data["images_shape"]
    return replace(cfg, in_channels=int(C), input_size=int(H), rep_dim=int(data["rep_dim"]))


def trainer(model: DiT, run):
    """loss(images uint8, rep, labels, generator, rows, global_batch): the diffusion loss of ``run.diffusion``
    (eps MSE + VLB with learned sigma) on pixels in [-1, 1]; timesteps, noise and condition dropout are drawn
    for the global batch."""
    c = model.cfg
    if run.diffusion.learn_sigma != c.learn_sigma:
        raise ValueError(f"diffusion.learn_sigma={run.diffusion.learn_sigma} but model.learn_sigma="
                         f"{c.learn_sigma}; set both the same")
    dev = next(model.parameters()).device
    drop_p = {"rep": c.rep_drop_prob, "class": c.class_dropout_prob}.get(c.cond, 0.0)
    return image_loss(lambda xt, tt, rep, labels, null: model(xt, tt, rep, labels, null=null), _diffusion(run, dev), drop_p,
                      dev)


def sampler(model: DiT, run):
    """sample(rep, labels, generators, steps, temperature, guidance) -> (B, C, H, W) in [-1, 1] (latents for a
    DiT on an autoencoder's latents); ``temperature`` does not apply; unset settings are the run's. On a CPU the
    rows go through in chunks (:func:`rcg.pixel.rows.in_row_chunks`; the same images)."""
    dev = next(model.parameters()).device
    diffusion = _diffusion(run, dev)

    def sample(rep, labels, generators, steps=None, temperature=None, guidance=None):   # uses cond's condition only
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=resolve_bf16(run.sample_bf16, dev)):
            return dit_generate(model, diffusion, generators, rep=rep, labels=labels, steps=steps or run.steps,
                                sampler=run.sampler, eta=run.eta, guidance=run.guidance if guidance is None else guidance,
                                clip_denoised=not run.autoencoder, official_first3=run.official_first3)
    return in_row_chunks(sample, dev)


def to_unit(x: torch.Tensor, tokenizer=None) -> torch.Tensor:
    """[-1, 1] pixels -> [0, 1]."""
    return (x + 1.0) / 2.0


def image_shape(run, tokenizer=None) -> Tuple[int, int]:
    if run.autoencoder:
        raise ValueError(f"this DiT works on {run.autoencoder} latents, not images; it has no image size")
    return int(run.model.in_channels), int(run.model.input_size)
