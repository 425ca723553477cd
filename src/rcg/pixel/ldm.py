"""Representation-conditioned LDM (RCG's ``pixel_generator/ldm``: ``LatentDiffusion``): the U-Net
(:class:`rcg.pixel.ldm_unet.LDMUNet`, trained), the frozen first stage (:mod:`rcg.pixel.ldm_autoencoder`) and the
condition, behind the registry's contracts.

Condition: ``cond="rep"`` (RCG): the cross-attention context is the representation as one token,
``rep.unsqueeze(1)`` (B, 1, rep_dim), so ``attn2 = to_out(to_v(rep))`` everywhere (softmax over one key is 1: the
same vector at every position); ``context_tokens = k > 1`` (ours, off for parity) maps the rep by a Linear to k
tokens, over which each position's attention can differ. The learned ``null_rep`` replaces the rep for samples
selected by ``null`` (training: a ``rep_drop_prob`` fraction, 0 = official; guidance).
``cond="class"``: the context is ``cond_stage_model.embedding(labels)`` (LDM's ClassEmbedder; no null class);
``"none"``: its single row (the official unconditional LDM is a 1-class ClassEmbedder). Latents are
``scale_factor * first_stage.encode(x)`` of images ``x`` in [-1, 1] (``x / 255 * 2 - 1``); decoding divides by
``scale_factor`` and quantises. Diffusion: eps prediction (v as an option: ``fmnist-ldm``) on the scaled-linear
schedule (:data:`LDM_DIFFUSION`), sampled by the official DDIM (200 steps, eta 1 in RCG; last step to
``alphas_cumprod[0]``). Guidance tau (``cond + tau (cond - uncond)``, the official scale ``s = 1 + tau``) runs
one pass on ``[uncond; cond]``, the official LDM sampler's batching.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..diffusion import GaussianDiffusion
from ..guidance import guided
from ..layers import class_condition
from ..precision import resolve_bf16
from ..rng import randn_per_sample, uniform
from ..solvers import DPM_SOLVERS, dpm_solver_sample
from ..tree import to_dict
from .ldm_autoencoder import FirstStageConfig, first_stage
from .ldm_unet import LDMUNet
from .rows import in_row_chunks

# RCG's LDM diffusion (as rcg.config.DiffusionConfig fields): 1000 steps, LDM "linear" = scaled-linear betas
# 0.0015 -> 0.0195, eps prediction
LDM_DIFFUSION = dict(num_steps=1000, beta_start=0.0015, beta_end=0.0195, parameterization="eps",
                     schedule="scaled_linear", learn_sigma=False)


@dataclass(frozen=True)
class LDMConfig:
    """Defaults: RCG's LDM-8 (``config/ldm/cin-ldm-vq-f8-repcond.yaml``) on 32x32x4 VQ-f8 latents of 256 px."""
    model_channels: int = 256
    num_res_blocks: int = 2
    attention_resolutions: Tuple[int, ...] = (4, 2, 1)   # downsampling factors with a SpatialTransformer
    channel_mult: Tuple[int, ...] = (1, 2, 4)
    num_head_channels: int = 32          # > 0: heads = width // num_head_channels; else num_heads
    num_heads: int = -1
    transformer_depth: int = 1
    rep_dim: int = 256                   # the context width (representation / class embedding)
    cond: str = "rep"                    # "rep" (RCG) | "class" | "none"
    num_classes: int = 0                 # cond="class"
    rep_drop_prob: float = 0.0           # training: fraction of reps replaced by null_rep (official: none)
    context_tokens: int = 1              # rep cond: 1 = the rep itself as the one context token (official); k > 1:
                                         # a Linear maps it to k tokens, so cross-attention can vary over positions
                                         # (class / none: one token whatever this says)
    scale_factor: float = 1.0            # latents = scale_factor * encode(x) (RCG's VQ-f8: 1.0)
    scale_by_std: bool = False           # train-pixel sets scale_factor = 1 / std of the training latents (LDM's
                                         # scale_by_std, from the first 1024 crops) and stores it in config.json
    num_groups: int = 32                 # GroupNorm groups of the U-Net (official 32)
    dropout: float = 0.0
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)

    def __post_init__(self):
        if self.cond not in ("rep", "class", "none"):
            raise ValueError(f"cond must be 'rep', 'class' or 'none', got {self.cond!r}")
        if self.context_tokens < 1:
            raise ValueError(f"context_tokens must be >= 1, got {self.context_tokens}")
        if self.num_head_channels <= 0 and self.num_heads <= 0:
            raise ValueError("set num_head_channels or num_heads")
        if self.latent_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(f"latent size {self.latent_size} is not divisible by the U-Net's downsampling "
                             f"{2 ** (len(self.channel_mult) - 1)}")

    @property
    def latent_size(self) -> int:
        return self.first_stage.latent_size

    @property
    def latent_channels(self) -> int:
        return self.first_stage.embed_dim


LDM_PRESETS: Dict[str, LDMConfig] = {
    # the paper's LDM-8 (RCG_FACTS: UNet 256 ch, mult 1-2-4, 2 blocks, attention at 4/2/1, 32-channel heads,
    # depth 1, context 256; VQ-f8 16384 x 4, 32x32x4 latents; scale_factor not set = 1.0)
    "ldm-8": LDMConfig(),
    # CPU-sized, 28 px gray: the fmnist-tokenizer (the one MAGE uses) as the first stage, 7x7x32 latents, so one
    # U-Net level (7 does not halve); latents scaled to unit std (scale_by_std); 10 % rep dropout to a learned
    # null_rep (ours, as adm-fmnist's), so that guidance has a trained unconditional branch
    "ldm-fmnist": LDMConfig(model_channels=64, num_res_blocks=2, attention_resolutions=(1,), channel_mult=(1,),
                            num_head_channels=32, scale_by_std=True, rep_drop_prob=0.1, first_stage=FirstStageConfig(
                                kind="rcg-vq", in_channels=1, out_channels=1, ch=16, ch_mult=(1, 2, 2),
                                num_res_blocks=1, attn_resolutions=(), z_channels=32, embed_dim=32, n_embed=512,
                                resolution=28, num_groups=8)),
}


def ldm_config(name: str, **overrides) -> LDMConfig:
    if name not in LDM_PRESETS:
        raise KeyError(f"unknown LDM preset {name!r}; choices: {sorted(LDM_PRESETS)}")
    return replace(LDM_PRESETS[name], **overrides)


class ClassEmbedder(nn.Module):
    """LDM's ClassEmbedder: ``embedding(labels)[:, None]`` (B, 1, dim)."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_classes, dim)


# ----------------------------------------------------------------------------------------------
# the generator
# ----------------------------------------------------------------------------------------------
class LDM(nn.Module):
    config_class = LDMConfig

    def __init__(self, cfg: LDMConfig = LDMConfig()):
        super().__init__()
        self.cfg = c = cfg
        if c.cond == "class" and c.num_classes <= 0:
            raise ValueError("a class-conditional LDM needs num_classes > 0 (train-pixel sets it from the data)")
        self.diffusion_model = LDMUNet(c)
        self.first_stage_model = first_stage(c.first_stage).requires_grad_(False).eval()
        if c.cond == "rep":
            self.null_rep = nn.Parameter(torch.randn(1, c.rep_dim) * 0.02)
            if c.context_tokens > 1:         # (the class / none context stays one token)
                self.rep_tokens = nn.Linear(c.rep_dim, c.context_tokens * c.rep_dim)
        else:
            self.cond_stage_model = ClassEmbedder(c.num_classes if c.cond == "class" else 1, c.rep_dim)

    def train(self, mode: bool = True) -> "LDM":
        super().train(mode)
        self.first_stage_model.eval()           # frozen, as upstream's disabled_train
        return self

    def tokens(self, rep: torch.Tensor) -> torch.Tensor:
        """Context tokens (B, context_tokens, rep_dim) of representations (B, rep_dim) (or of null reps)."""
        if not hasattr(self, "rep_tokens"):
            return rep[:, None]
        return self.rep_tokens(rep).view(rep.shape[0], self.cfg.context_tokens, self.cfg.rep_dim)

    def context(self, rep=None, labels=None, null=None, B: Optional[int] = None) -> torch.Tensor:
        """The cross-attention context (B, n, rep_dim): one token for class / none, ``context_tokens`` for rep;
        ``null`` (B,) bool selects ``null_rep`` (rep cond)."""
        c = self.cfg
        if c.cond == "class":
            return class_condition(self.cond_stage_model.embedding, labels, null, B)[:, None]
        if c.cond == "none":
            if null is not None and bool(null.any()):
                raise ValueError("an unconditional LDM (cond='none') has no null condition (no guidance)")
            return self.cond_stage_model.embedding.weight[:1].expand(B, -1)[:, None]
        nul = self.null_rep.expand(B, -1)
        if rep is None:
            if null is not None and not bool(null.all()):
                raise ValueError("rep is None but some samples are not selected as null")
            return self.tokens(nul)
        if rep.shape != nul.shape:
            raise ValueError(f"rep must be {tuple(nul.shape)}, got {tuple(rep.shape)}")
        rep = rep.to(nul.dtype)
        return self.tokens(rep if null is None else torch.where(null.to(rep.device).view(B, 1), nul, rep))

    def forward(self, x: torch.Tensor, t: torch.Tensor, rep: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, null: Optional[torch.Tensor] = None,
                generator=None) -> torch.Tensor:
        """eps (or v) (B, C, h, w) of latents ``x`` (any h, w the U-Net's levels divide: it is convolutional, and
        ``latent_size`` is only the size it samples at). In training mode with ``null=None`` a ``rep_drop_prob``
        fraction of the reps is replaced by ``null_rep`` (draws from ``generator``)."""
        c, B = self.cfg, x.shape[0]
        f = 2 ** (len(c.channel_mult) - 1)
        if x.dim() != 4 or x.shape[1] != c.latent_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"x must be (B, {c.latent_channels}, h, w) with h and w divisible by {f} (sampled at "
                             f"{c.latent_size}x{c.latent_size}), got {tuple(x.shape)}")
        if null is None and self.training and c.cond == "rep" and c.rep_drop_prob > 0 and rep is not None:
            null = uniform((B,), generator, x.device) < c.rep_drop_prob
        return self.diffusion_model(x, t, self.context(rep, labels, null, B))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``scale_factor * first_stage.encode(x)`` of images in [-1, 1] (not quantised)."""
        return self.cfg.scale_factor * self.first_stage_model.encode(x)

    def decode(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """Images (about [-1, 1]) of latents: ``first_stage.decode(z / scale_factor)`` (quantises)."""
        return self.first_stage_model.decode(1.0 / self.cfg.scale_factor * z, force_not_quantize)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> [-1, 1] as ``engine_ldm``: ``x / 255 * 2 - 1``."""
    return images.float() / 255.0 * 2.0 - 1.0


def install_first_stage(model: LDM, source: nn.Module) -> LDM:
    """Load trained first-stage weights into ``model`` (frozen): an :class:`rcg.tokenizer.VQModel` (rcg-vq; its
    config must give the model's first stage) or a first-stage module / state dict of the model's kind."""
    fs = model.first_stage_model
    if model.cfg.first_stage.kind == "rcg-vq" and hasattr(source, "quantize") and hasattr(source, "cfg"):
        if FirstStageConfig.from_vq(source.cfg) != model.cfg.first_stage:
            raise ValueError(f"the tokenizer ({source.cfg}) is not this LDM's first stage ({model.cfg.first_stage})")
        fs.vq.load_state_dict(source.state_dict())
    else:
        fs.load_state_dict(source if isinstance(source, dict) else source.state_dict())
    fs.requires_grad_(False).eval()
    return model


@torch.no_grad()
def fit_scale_factor(model: nn.Module, images: torch.Tensor) -> float:
    """LDM's ``scale_by_std``: 1 / std of the first stage's latents of ``images`` (uint8 or [-1, 1] floats);
    ``model`` an LDM or its first stage."""
    stage = getattr(model, "first_stage_model", model)
    x = to_model_range(images) if images.dtype == torch.uint8 else images
    dev = next(stage.parameters()).device
    return float(1.0 / stage.encode(x.to(dev)).float().flatten().std())


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------
def ldm_eps(model: LDM, x: torch.Tensor, t: torch.Tensor, rep=None, labels=None, guidance: float = 0.0,
            uncond: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The network's output (eps, or v per the run's parameterization) at (x, t); with ``guidance`` tau != 0 one
    pass on ``x_in = [x; x]``, contexts ``[uncond; cond]`` (unconditional first, as the official LDM sampler),
    combined by :func:`rcg.guidance.guided`. ``uncond`` (B, rep_dim): an explicit unconditional context (official
    ``unconditional_conditioning``); default the learned null condition."""
    if guidance == 0:
        return model(x, t, rep, labels)
    c = model.cfg
    if uncond is None and c.cond == "rep" and c.rep_drop_prob == 0:
        raise ValueError("this LDM was trained without representation dropout (rep_drop_prob = 0, as the official "
                         "LDM), so its null_rep is untrained: guidance needs a model trained with rep_drop_prob > 0 "
                         "or an explicit unconditional context (uncond)")
    B = x.shape[0]
    cond = model.context(rep, labels, None, B)
    unc = model.tokens(uncond.to(cond.dtype)) if uncond is not None else model.context(
        None, labels, torch.ones(B, dtype=torch.bool, device=x.device), B)
    e_u, e_c = model.diffusion_model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([unc, cond])).chunk(2)
    return guided(e_c, e_u, guidance)


@torch.no_grad()
def ldm_generate(model: LDM, diffusion: GaussianDiffusion, generators=None, rep=None, labels=None, steps: int = 200,
                 eta: float = 1.0, guidance: float = 0.0, sampler: str = "ddim", uncond=None, x_T=None,
                 decode: bool = True) -> torch.Tensor:
    """Images in about [-1, 1] (``decode``) or latents, one per generator (its initial noise and step noise
    come from it alone), or from ``x_T`` (step noise then from ``generators`` or the global RNG).
    ``"ddim"``: the official DDIM (:meth:`rcg.diffusion.GaussianDiffusion.ddim_sample`; RCG: 200 steps, eta 1,
    ending at the final x); ``"ddpm"``: ancestral sampling on ``steps`` respaced steps; ``"dpm++2m"``: DPM-Solver++ 2M
    (:func:`rcg.solvers.dpm_solver_sample`, deterministic; ``"dpm++2m-sde"`` its stochastic form, eta 1)."""
    c = model.cfg
    if x_T is None:
        dev = next(model.parameters()).device
        x_T = randn_per_sample((len(generators), c.latent_channels, c.latent_size, c.latent_size), generators,
                               device=dev)

    def fn(x, t):
        return ldm_eps(model, x, t, rep, labels, guidance, uncond).float()
    if sampler == "ddim":
        z = diffusion.ddim_sample(fn, x_T, steps, eta, generators=generators)
    elif sampler == "ddpm":
        z = diffusion.respaced(steps).ddpm_sample(fn, x_T, generators)
    elif sampler in DPM_SOLVERS:
        z = dpm_solver_sample(diffusion, fn, x_T, steps, eta=DPM_SOLVERS[sampler], generators=generators)
    else:
        raise ValueError(f"sampler must be 'ddim', 'ddpm', {' or '.join(map(repr, DPM_SOLVERS))}, got {sampler!r}")
    return model.decode(z).float() if decode else z


# ----------------------------------------------------------------------------------------------
# registry entry
# ----------------------------------------------------------------------------------------------
def _diffusion(run, device) -> GaussianDiffusion:
    d = to_dict(run.diffusion)
    if d.get("learn_sigma"):
        raise ValueError("the LDM has no learned variance: use diffusion.learn_sigma=false "
                         "(rcg.pixel.ldm.LDM_DIFFUSION)")
    return GaussianDiffusion(**d).to(device)


def sized(cfg: LDMConfig, data: dict) -> LDMConfig:
    """``cfg`` with the image channels / size (the first stage's) and the rep width of the data; an rcg-vq first
    stage takes the architecture of the run's tokenizer (``tokenizer``, its module). With ``cfg.scale_by_std``
    and a tokenizer, ``scale_factor`` is 1 / std of its latents of ``data["images"]`` (uint8 crops)."""
    _, C, H, _ = data["images_shape"]
    fs = replace(cfg.first_stage, in_channels=int(C), out_channels=int(C), resolution=int(H))
    tok = data.get("tokenizer")
    if cfg.first_stage.kind == "rcg-vq" and tok is not None:
        fs = FirstStageConfig.from_vq(tok.cfg)
        if (fs.in_channels, fs.resolution) != (int(C), int(H)):
            raise ValueError(f"the tokenizer takes {fs.in_channels}x{fs.resolution}px images but the cache holds "
                             f"{C}x{H}px crops: train the tokenizer at the data's size")
    cfg = replace(cfg, first_stage=fs, rep_dim=int(data["rep_dim"]))
    if cfg.scale_by_std and fs.kind == "rcg-vq" and tok is not None and data.get("images") is not None:
        stage = first_stage(fs)
        stage.vq.load_state_dict(tok.state_dict())
        cfg = replace(cfg, scale_factor=fit_scale_factor(stage, data["images"]))
    return cfg


def prepare(model: LDM, tokenizer) -> LDM:
    """Install the run's tokenizer as the frozen first stage (rcg-vq first stages; an ldm-vq one comes with
    official weights)."""
    if model.cfg.first_stage.kind != "rcg-vq":
        return model
    if tokenizer is None:
        raise ValueError("an LDM with an rcg-vq first stage trains on a tokenizer: pass --tokenizer RUN "
                         "(rcg train-tokenizer at the data's size)")
    return install_first_stage(model, tokenizer)


def trainer(model: LDM, run):
    """loss(images uint8, rep, labels, generator, rows, global_batch): the MSE to ``run.diffusion``'s target (eps,
    the official; or v) on the frozen first stage's latents of the images in [-1, 1]; timesteps, noise and rep
    dropout drawn for the global batch."""
    c = model.cfg
    dev = next(model.parameters()).device
    diffusion = _diffusion(run, dev)
    drop_p = c.rep_drop_prob if c.cond == "rep" else 0.0

    def loss(x, rep, labels, generator, rows, global_batch):
        g = global_batch
        with torch.no_grad():
            z = model.encode(to_model_range(x)).float()
        t = torch.randint(0, diffusion.num_steps, (g,), generator=generator)[rows].to(dev)
        noise = torch.randn((g,) + tuple(z.shape[1:]), generator=generator)[rows].to(dev)
        null = (torch.rand(g, generator=generator) < drop_p)[rows].to(dev) if drop_p > 0 else None
        return diffusion.loss(lambda xt, tt: model(xt, tt, rep, labels, null=null), z, t, noise), {}
    return loss


def sampler(model: LDM, run):
    """sample(rep, labels, generators, steps, temperature, guidance) -> decoded images (B, C, H, W) in about
    [-1, 1]; ``temperature`` does not apply; unset settings are the run's (``steps``, ``eta``, ``sampler``). On a
    CPU the rows go through in chunks (:func:`rcg.pixel.rows.in_row_chunks`; the same images)."""
    dev = next(model.parameters()).device
    diffusion = _diffusion(run, dev)

    def sample(rep, labels, generators, steps=None, temperature=None, guidance=None):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=resolve_bf16(run.sample_bf16, dev)):
            return ldm_generate(model, diffusion, generators, rep=rep, labels=labels, steps=steps or run.steps,
                                eta=run.eta, guidance=run.guidance if guidance is None else guidance,
                                sampler=run.sampler)
    return in_row_chunks(sample, dev)


def to_unit(x: torch.Tensor, tokenizer=None) -> torch.Tensor:
    """Decoded images -> [0, 1]: ``(clamp(x, -1, 1) + 1) / 2`` (``gen_imgs``)."""
    return (x.clamp(-1.0, 1.0) + 1.0) / 2.0


def image_shape(run, tokenizer=None) -> Tuple[int, int]:
    fs = run.model.first_stage
    return int(fs.out_channels), int(fs.resolution)
