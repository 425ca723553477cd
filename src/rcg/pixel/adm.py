"""Representation-conditioned ADM (RCG's ``pixel_generator/guided_diffusion/unet.py``): the guided-diffusion U-Net.

Works on float images ``x`` (B, in_channels, image_size, image_size) in [-1, 1], integer (or float) timesteps ``t``
(B,) on the original 0..T-1 scale, and predicts eps followed, with ``learn_sigma``, by the variance-interpolation
values v (``out_channels = 2 * in_channels``), shaped (B, out_channels, H, W).

Semantics (fixture README section 6): the embedding every ResBlock receives is ``time_embed(timestep_embedding(t,
model_channels))`` (cos first; Linear, SiLU, Linear to ``4 * model_channels``) plus ``rep_proj(rep)`` (``cond="rep"``,
RCG; zero-initialised) or ``label_emb(y)`` (``cond="class"``) or nothing (``cond="none"``). ResBlocks with
scale-shift norm (``h = GN(h) * (1 + scale) + shift``, scale first), resampling ResBlocks (2x2 average pooling /
nearest 2x applied to both h and x) or conv Down/Upsample; legacy-order attention (``QKVAttentionLegacy``: the 3C
qkv channels are laid out per head as [q_h, k_h, v_h], both factors scaled by (C / heads)^(-1/4), softmax in
float32); GroupNorm32 (32 groups, eps 1e-5) computed in float32; ``hs`` collects the output of every input block
and each output block takes ``cat([h, hs.pop()])``. Parameter names are the official state-dict keys.

The official ADM has no representation dropout and no guidance. Ours may train with ``rep_drop_prob > 0``: a
learned ``null_rep`` (1, rep_dim) then replaces that fraction of the reps and is the unconditional branch of the
guidance ``tau`` (:func:`rcg.guidance.guided_pass`, the project's ``cond + tau (cond - uncond)``, off by default).
With ``rep_drop_prob == 0`` there is no ``null_rep`` parameter (the official layout) and guidance is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..diffusion import SCHEDULES, GaussianDiffusion, iddpm_linear_betas, image_loss, official_respacing
from ..guidance import guided_pass
from ..layers import class_condition, rep_condition, timestep_embedding
from ..precision import resolve_bf16
from ..rng import randn_per_sample, uniform
from ..solvers import DPM_SOLVERS, dpm_solver_sample
from ..tree import to_dict
from .rows import in_row_chunks


@dataclass(frozen=True)
class ADMConfig:
    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 256
    learn_sigma: bool = True                     # out_channels = 2 * in_channels (eps, then v)
    num_res_blocks: int = 2
    attention_resolutions: Tuple[int, ...] = (8, 16, 32)   # downsample factors (official: image_size // res)
    channel_mult: Tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_heads: int = 4                           # used where num_head_channels == -1
    num_head_channels: int = 64                  # -1: num_heads heads at every width
    num_heads_upsample: int = -1                 # -1: num_heads (output blocks, when num_head_channels == -1)
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True                 # resampling ResBlocks (else conv Downsample / Upsample)
    use_new_attention_order: bool = False        # False: QKVAttentionLegacy (RCG's); True: q, k, v split first
    dropout: float = 0.0
    rep_dim: int = 256
    cond: str = "rep"                            # "rep" (RCG) | "class" | "none"
    num_classes: int = 0                         # cond="class"
    rep_drop_prob: float = 0.0                   # 0 = official (no null_rep); > 0: learned null_rep, guidance
    class_dropout_prob: float = 0.0              # cond="class": > 0 adds a null-class row (the last)

    def __post_init__(self):
        if self.cond not in ("rep", "class", "none"):
            raise ValueError(f"cond must be 'rep', 'class' or 'none', got {self.cond!r}")
        f = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % f:
            raise ValueError(f"image_size {self.image_size} is not divisible by {f} ({len(self.channel_mult)} levels)")
        widths = [self.model_channels * m for m in self.channel_mult]
        if self.model_channels % 2 or any(w % 32 for w in widths):
            raise ValueError(f"widths {widths} must be multiples of 32 (GroupNorm32) and model_channels even")
        heads = max(self.num_heads, self.num_heads_upsample)
        for w in widths:
            if (w % self.num_head_channels) if self.num_head_channels != -1 else (w % self.num_heads or w % heads):
                raise ValueError(f"width {w} does not split into heads (num_head_channels {self.num_head_channels}, "
                                 f"num_heads {self.num_heads}, num_heads_upsample {self.num_heads_upsample})")
        if not 0.0 <= self.rep_drop_prob < 1.0 or not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError("rep_drop_prob and class_dropout_prob must be in [0, 1)")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels


ADM_PRESETS: Dict[str, ADMConfig] = {
    # the paper's ImageNet ADM (README command: 256 px, --num_channels 256 --num_res_blocks 2 --attention_resolutions
    # 32,16,8 --num_head_channels 64 --resblock_updown --use_scale_shift_norm --learn_sigma, channel_mult of 256 px):
    # 553.1M parameters (paper: 554M)
    "adm-imagenet256": ADMConfig(),
    # CPU-sized, 32 px colour: 32/16/8 px levels, attention at 8 px (1.4M parameters)
    "adm-tiny": ADMConfig(image_size=32, model_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2),
                          attention_resolutions=(4,), num_head_channels=32),
    # the Fashion-MNIST CPU preset: 28 px gray, 28/14/7 px levels of width 32/32/64, attention at 7 px, 10 % rep
    # dropout (guidance)
    "adm-fmnist": ADMConfig(image_size=28, in_channels=1, model_channels=32, num_res_blocks=1, channel_mult=(1, 1, 2),
                            attention_resolutions=(4,), num_head_channels=32, rep_drop_prob=0.1),
}


def adm_config(name: str, **overrides) -> ADMConfig:
    """A preset with fields overridden, e.g. ``adm_config("adm-tiny", cond="class", num_classes=10)``."""
    if name not in ADM_PRESETS:
        raise KeyError(f"unknown ADM preset {name!r}; choices: {sorted(ADM_PRESETS)}")
    return replace(ADM_PRESETS[name], **overrides)


# ----------------------------------------------------------------------------------------------
# Modules (official names)
# ----------------------------------------------------------------------------------------------
class GroupNorm32(nn.GroupNorm):
    """guided_diffusion's ``normalization``: 32 groups, eps 1e-5, affine, computed in float32, cast back."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class Downsample(nn.Module):
    """``op``: a 3x3 stride-2 conv (padding 1) with ``use_conv``, else 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x, then ``conv`` 3x3 with ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class ResBlock(nn.Module):
    """``in_layers`` (GN, SiLU, conv3x3), ``emb_layers`` (SiLU, Linear to 2 C_out with scale-shift norm, else C_out),
    ``out_layers`` (GN, SiLU, Dropout, conv3x3), ``skip_connection`` (1x1 where the width changes). ``up`` /
    ``down``: h and x resampled (no parameters) between the SiLU and the conv of ``in_layers``."""

    def __init__(self, channels: int, emb_dim: int, dropout: float, out_channels: int, scale_shift: bool,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.scale_shift, self.updown = scale_shift, up or down
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, (2 if scale_shift else 1) * out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[2](self.h_upd(self.in_layers[1](self.in_layers[0](x))))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


def qkv_attention(qkv: torch.Tensor, heads: int, legacy: bool = True) -> torch.Tensor:
    """(B, 3C, T) -> (B, C, T). ``legacy`` (QKVAttentionLegacy): heads split before q/k/v (per head [q_h, k_h,
    v_h]); else (QKVAttention) q, k, v split first. Both scale q and k by (C / heads)^(-1/4); softmax in float32."""
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    if legacy:
        q, k, v = qkv.reshape(bs * heads, ch * 3, length).split(ch, dim=1)
    else:
        q, k, v = (z.reshape(bs * heads, ch, length) for z in qkv.chunk(3, dim=1))
    scale = 1 / math.sqrt(math.sqrt(ch))
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    w = torch.softmax(w.float(), dim=-1).type(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)


class AttentionBlock(nn.Module):
    """``x + proj_out(attention(qkv(norm(x))))`` over the H*W positions; ``qkv`` / ``proj_out`` are 1x1 Conv1d."""

    def __init__(self, channels: int, num_heads: int, num_head_channels: int, new_order: bool):
        super().__init__()
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.legacy = not new_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.legacy))
        return (x + h).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """Passes the embedding to the ResBlocks among its layers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


# ----------------------------------------------------------------------------------------------
# ADM
# ----------------------------------------------------------------------------------------------
class ADM(nn.Module):
    config_class = ADMConfig

    def __init__(self, cfg: ADMConfig = ADMConfig()):
        super().__init__()
        self.cfg = c = cfg
        if c.cond == "class" and c.num_classes <= 0:
            raise ValueError("a class-conditional ADM needs num_classes > 0 (train-pixel sets it from the data)")
        mc, E = c.model_channels, c.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, E), nn.SiLU(), nn.Linear(E, E))
        if c.cond == "class":
            self.label_emb = nn.Embedding(c.num_classes + int(c.class_dropout_prob > 0), E)
        elif c.cond == "rep":
            self.rep_proj = nn.Linear(c.rep_dim, E)
            if c.rep_drop_prob > 0:
                self.null_rep = nn.Parameter(torch.zeros(1, c.rep_dim))

        def res(cin, cout, **kw):
            return ResBlock(cin, E, c.dropout, cout, c.use_scale_shift_norm, **kw)

        def attn(ch, heads):
            return AttentionBlock(ch, heads, c.num_head_channels, c.use_new_attention_order)

        ch = input_ch = c.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers, ch = [res(ch, mult * mc)], mult * mc
                if ds in c.attention_resolutions:
                    layers.append(attn(ch, c.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(c.channel_mult) - 1:
                down = res(ch, ch, down=True) if c.resblock_updown else Downsample(ch, True)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, c.num_heads), res(ch, ch))
        up_heads = c.num_heads if c.num_heads_upsample == -1 else c.num_heads_upsample
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(c.channel_mult))[::-1]:
            for i in range(c.num_res_blocks + 1):
                layers, ch = [res(ch + chans.pop(), mc * mult)], mc * mult
                if ds in c.attention_resolutions:
                    layers.append(attn(ch, up_heads))
                if level and i == c.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if c.resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(input_ch, c.out_channels, 3, padding=1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: PyTorch defaults, zero for every ResBlock's last conv, every attention ``proj_out``, the
        output conv and ``rep_proj`` (RCG); ``null_rep`` N(0, 0.02)."""
        zero = [m.out_layers[3] for m in self.modules() if isinstance(m, ResBlock)]
        zero += [m.proj_out for m in self.modules() if isinstance(m, AttentionBlock)] + [self.out[2]]
        for m in zero + ([self.rep_proj] if self.cfg.cond == "rep" else []):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        if hasattr(self, "null_rep"):
            nn.init.normal_(self.null_rep, std=0.02)

    # ---- conditioning ------------------------------------------------------------------------
    def drop_mask(self, B: int, device, generator=None) -> Optional[torch.Tensor]:
        """Training-time condition dropout: (B,) bool, True = use the null condition (None when no dropout)."""
        c = self.cfg
        p = c.rep_drop_prob if c.cond == "rep" else (c.class_dropout_prob if c.cond == "class" else 0.0)
        return uniform((B,), generator, device) < p if p > 0 else None

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """``time_embed(timestep_embedding(t, model_channels))`` (B, 4 model_channels)."""
        w = self.time_embed[0].weight
        return self.time_embed(timestep_embedding(t.to(w.device), self.cfg.model_channels).to(w.dtype))

    def condition(self, t: torch.Tensor, rep=None, y=None, null=None) -> torch.Tensor:
        """The embedding every ResBlock receives: time embedding + ``rep_proj(rep)`` / ``label_emb(y)``; ``null``
        (B,) bool selects the null condition (``null_rep`` / the null class) per sample."""
        c, B = self.cfg, t.shape[0]
        emb = self.time_embedding(t)
        null = None if null is None else null.to(emb.device).reshape(B).bool()
        wants_null = null is not None and bool(null.any())
        if c.cond == "none":
            if wants_null:
                raise ValueError("an unconditional ADM (cond='none') has no null condition (no guidance)")
            return emb
        if c.cond == "class":
            null_class = c.num_classes if c.class_dropout_prob > 0 else None
            return emb + class_condition(self.label_emb, y, null, B, null_class)
        if hasattr(self, "null_rep"):
            return emb + rep_condition(self.rep_proj, self.null_rep, rep, null, B)
        if rep is None or wants_null:
            raise ValueError("this ADM has no null_rep (rep_drop_prob = 0, as the official ADM): pass rep for every "
                             "sample; guidance needs a model trained with rep_drop_prob > 0")
        if rep.shape != (B, c.rep_dim):
            raise ValueError(f"rep must be ({B}, {c.rep_dim}), got {tuple(rep.shape)}")
        w = self.rep_proj.weight
        return emb + self.rep_proj(rep.to(device=w.device, dtype=w.dtype))

    # ---- network -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, rep: Optional[torch.Tensor] = None,
                y: Optional[torch.Tensor] = None, null: Optional[torch.Tensor] = None, generator=None) -> torch.Tensor:
        """(B, out_channels, H, W). ``null`` (B,) bool selects the null condition per sample (``rep=None`` with a
        ``null_rep``: every sample uses it). In training mode with ``null=None`` the condition is dropped with
        ``rep_drop_prob`` / ``class_dropout_prob`` (draws from ``generator``); eval mode never drops."""
        c = self.cfg
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(f"x must be (B, {c.in_channels}, {c.image_size}, {c.image_size}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be ({x.shape[0]},), got {tuple(t.shape)}")
        if null is None and self.training and (rep is not None or c.cond == "class"):
            null = self.drop_mask(x.shape[0], x.device, generator)
        emb = self.condition(t, rep, y, null)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


# ----------------------------------------------------------------------------------------------
# diffusion and sampling (rcg.diffusion does the diffusion; this is guided_diffusion's setup of it)
# ----------------------------------------------------------------------------------------------
def adm_diffusion(respacing="", num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                  parameterization: str = "eps", schedule: str = "linear",
                  learn_sigma: bool = True) -> GaussianDiffusion:
    """guided_diffusion's ``SpacedDiffusion`` (every official ADM process is one): betas of ``schedule`` ("linear":
    numpy's ``linspace`` arithmetic, :func:`rcg.diffusion.iddpm_linear_betas`), restricted to the steps of
    ``official_respacing(num_steps, respacing)`` ("" = all, the training process; "ddim25"; "250"), betas re-derived
    from ``alphas_cumprod``; the model is called with the original timesteps (``rescale_timesteps`` False)."""
    betas = (iddpm_linear_betas if schedule == "linear" else SCHEDULES[schedule])(num_steps, beta_start, beta_end)
    base = GaussianDiffusion(parameterization=parameterization, schedule=schedule, learn_sigma=learn_sigma, betas=betas)
    return base.subset(official_respacing(num_steps, respacing))


@torch.no_grad()
def adm_generate(model: ADM, generators, rep: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                 steps: int = 25, sampler: str = "ddim", eta: float = 0.0, guidance: float = 0.0,
                 clip_denoised: bool = True, diffusion: Optional[dict] = None, progress: bool = False) -> torch.Tensor:
    """One sample per generator (its initial noise and step noise come from that generator alone), in [-1, 1]
    (B, C, H, W), as ``engine_adm.gen_img``: ``sampler="ddim"`` = respacing ``f"ddim{steps}"`` and
    ``ddim_sample_loop`` (eta ``eta``; the README's ``--use_ddim``); ``"ddpm"`` = respacing ``str(steps)`` and the
    ancestral ``p_sample_loop`` with the learned variance (the README's evaluation: 250); ``"dpm++2m"`` =
    DPM-Solver++ 2M on the full schedule (not in the official code; deterministic, ``steps`` model calls;
    ``"dpm++2m-sde"`` its stochastic form, eta 1).
    ``clip_denoised`` clips pred_x0 to [-1, 1]. ``guidance`` is tau on the eps channels (needs a ``null_rep`` / null class).
    ``diffusion``: :func:`adm_diffusion`'s keyword arguments (default ADM's)."""
    c = model.cfg
    dev = next(model.parameters()).device
    x_T = randn_per_sample((len(generators), c.in_channels, c.image_size, c.image_size), generators, device=dev)

    def fn(x, t):
        return guided_pass(model, (x, t, rep, labels), guidance, c.in_channels).float()
    if sampler in DPM_SOLVERS:           # on the full schedule; the solver picks its own timesteps
        return dpm_solver_sample(adm_diffusion("", **(diffusion or {})).to(dev), fn, x_T, steps, progress,
                                 clip_x0=clip_denoised, final_x0=True, eta=DPM_SOLVERS[sampler], generators=generators)
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddpm', 'ddim', {' or '.join(map(repr, DPM_SOLVERS))}, got {sampler!r}")
    spaced = adm_diffusion(f"ddim{steps}" if sampler == "ddim" else str(steps), **(diffusion or {})).to(dev)
    if sampler == "ddim":
        return spaced.ddim_sample_spaced(fn, x_T, eta, generators, clip_denoised, progress)
    return spaced.ddpm_sample(fn, x_T, generators, clip_denoised, progress)


# ----------------------------------------------------------------------------------------------
# registry entry (rcg.pixel.GENERATORS["adm"])
# ----------------------------------------------------------------------------------------------
def sized(cfg: ADMConfig, data: dict) -> ADMConfig:
    """``cfg`` with the channels, size and rep width of the data."""
    _, C, H, _ = data["images_shape"]
    return replace(cfg, in_channels=int(C), image_size=int(H), rep_dim=int(data["rep_dim"]))


def trainer(model: ADM, run):
    """loss(images uint8, rep, labels, generator, rows, global_batch): guided_diffusion's ``training_losses`` for
    ``run.diffusion`` (eps MSE + the variational bound on the learned-range variance, mean frozen) on pixels in
    [-1, 1]; timesteps, noise and condition dropout are drawn for the global batch."""
    c = model.cfg
    if run.diffusion.learn_sigma != c.learn_sigma:
        raise ValueError(f"diffusion.learn_sigma={run.diffusion.learn_sigma} but model.learn_sigma="
                         f"{c.learn_sigma}; set both the same")
    dev = next(model.parameters()).device
    drop_p = {"rep": c.rep_drop_prob, "class": c.class_dropout_prob}.get(c.cond, 0.0)
    return image_loss(lambda xt, tt, rep, labels, null: model(xt, tt, rep, labels, null=null), adm_diffusion("", **to_dict(run.diffusion)).to(dev), drop_p,
                      dev)


def sampler(model: ADM, run):
    """sample(rep, labels, generators, steps, temperature, guidance) -> (B, C, H, W) in [-1, 1]: ``run.sampler``
    "ddim" (respacing ``ddim{steps}``, eta ``run.eta``) or "ddpm" (respacing ``{steps}``, ancestral), as
    :func:`adm_generate`; ``temperature`` does not apply; unset settings are the run's. On a CPU the rows go
    through in chunks (:func:`rcg.pixel.rows.in_row_chunks`; the same images: 500 rows per pass took 1.6-1.9x as
    long per image as 64-128 on fmnist-adm)."""
    dev = next(model.parameters()).device
    diffusion = to_dict(run.diffusion)

    def sample(rep, labels, generators, steps=None, temperature=None, guidance=None):   # uses cond's condition only
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=resolve_bf16(run.sample_bf16, dev)):
            tau = run.guidance if guidance is None else guidance
            return adm_generate(model, generators, rep=rep, labels=labels, steps=steps or run.steps,
                                sampler=run.sampler, eta=run.eta, guidance=tau, diffusion=diffusion)
    return in_row_chunks(sample, dev)


def to_unit(x: torch.Tensor, tokenizer=None) -> torch.Tensor:
    """[-1, 1] pixels -> [0, 1] (``gen_img`` saves ``(x + 1) / 2``)."""
    return (x + 1.0) / 2.0


def image_shape(run, tokenizer=None) -> Tuple[int, int]:
    return int(run.model.in_channels), int(run.model.image_size)
