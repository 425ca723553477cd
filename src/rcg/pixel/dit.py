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

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..guidance import guided
from ..rng import uniform


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


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """The MAE / DiT fixed 2-D table (grid*grid, dim), row-major tokens: the first half of the channels encodes
    the column index, the second half the row index; each half is [sin(pos w), cos(pos w)] with
    ``w_k = 10000^(-k / (dim/4))``, computed in float64 and returned as float32."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    idx = torch.arange(grid, dtype=torch.float64)
    cols, rows = idx.repeat(grid), idx.repeat_interleave(grid)

    half = [pos[:, None] * omega[None] for pos in (cols, rows)]
    return torch.cat([half[0].sin(), half[0].cos(), half[1].sin(), half[1].cos()], 1).float()


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """GLIDE / DiT frequency embedding [cos(t f), sin(t f)], ``f_k = exp(-ln(max_period) k / (dim/2))``, float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], -1) if dim % 2 else emb


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


class Attention(nn.Module):
    """Self-attention with qkv bias; logits and softmax in float32 (also under autocast), as the official code."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).float()
        with torch.autocast(x.device.type, enabled=False):
            o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))           # exact GELU, as RCG's DiT (not the tanh approximation)


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
            return temb
        if c.cond == "class":
            if labels is None or labels.shape != (B,):
                raise ValueError(f"this DiT is class-conditional ({c.num_classes} classes): pass labels ({B},)")
            labels = labels.to(temb.device)
            if null is not None and bool(null.any()):
                if c.class_dropout_prob <= 0:
                    raise ValueError("this class-conditional DiT has no null class (class_dropout_prob = 0)")
                labels = torch.where(null, torch.full_like(labels, c.num_classes), labels)
            return temb + self.y_embedder.embedding_table(labels)
        w = self.rep_embedder.weight
        nul = self.null_rep.to(w.dtype).expand(B, -1)
        if rep is None:
            if null is not None and not bool(null.all()):
                raise ValueError("rep is None but some samples are not selected as null")
            return temb + self.rep_embedder(nul)
        if rep.shape != (B, c.rep_dim):
            raise ValueError(f"rep must be ({B}, {c.rep_dim}), got {tuple(rep.shape)}")
        r = rep.to(device=w.device, dtype=w.dtype)
        return temb + self.rep_embedder(r if null is None else torch.where(null.view(B, 1), nul, r))

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

    def guided_forward(self, x: torch.Tensor, t: torch.Tensor, rep: Optional[torch.Tensor] = None,
                       tau: float = 0.0, official_first3: bool = False,
                       labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Classifier-free guided output (B, out_channels, H, W), one batched pass over [cond; uncond] with the
        null condition (``null_rep`` or the null class) as the unconditional branch.

        Default (ours, DESIGN.md): ``eps = cond + tau (cond - uncond)`` on all ``in_channels`` eps channels; the
        learned-variance channels are the conditional ones; ``tau = 0`` is one plain conditional pass.
        ``official_first3=True`` (parity option) is the official ``forward_with_cfg`` with scale ``s = 1 + tau``:
        ``uncond + s (cond - uncond)`` on the first 3 output channels only (a DiT legacy quirk); every other
        channel (the 4th eps channel, the variance channels) is the unguided conditional output. The official
        call returns [g; g] over the doubled batch, whose second half's unguided channels are the
        unconditional outputs (``forward(..., null=all)``); this returns the first half."""
        B = x.shape[0]
        if not official_first3 and tau == 0:
            return self.forward(x, t, rep, labels)
        if self.cfg.cond == "none":
            raise ValueError("an unconditional DiT (cond='none') has no guidance: use tau=0")
        null = torch.arange(2 * B, device=x.device) >= B
        both = self.forward(torch.cat([x, x]), torch.cat([t, t]), None if rep is None else torch.cat([rep, rep]),
                            None if labels is None else torch.cat([labels, labels]), null=null)
        cond, uncond = both[:B], both[B:]
        if official_first3:                          # s = 1 + tau, the official formula and operation order
            return torch.cat([uncond[:, :3] + (1.0 + tau) * (cond[:, :3] - uncond[:, :3]), cond[:, 3:]], 1)
        C = self.cfg.in_channels
        return torch.cat([guided(cond[:, :C], uncond[:, :C], tau), cond[:, C:]], 1)


# ----------------------------------------------------------------------------------------------
# converted official checkpoints (rcg convert) -> (DiT, DiTRun)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiTRun:
    """What ``rcg convert`` writes for a DiT file: the network plus the official sampling recipe (1000-step linear
    schedule 1e-4 -> 0.02, eps prediction with learned sigma, ancestral sampling; guidance tau = cfg - 1)."""
    generator: str = "dit"
    encoder: str = ""                # MoCo v3 run / file that made the representations (not inside DiT files)
    autoencoder: str = "stabilityai/sd-vae-ft-ema"   # latents x latent_scale; "" = pixel space
    latent_scale: float = 0.18215
    model: DiTConfig = DiTConfig()
    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    steps: int = 250                 # sampling steps (official --num-sampling-steps)
    guidance: float = 0.0            # tau (official --cfg 1.0 = off)
    official_first3: bool = True     # guidance on the first 3 channels, as the official forward_with_cfg


def dit_from_converted(run_dir, device=None) -> Tuple[DiT, DiTRun]:
    """A directory written by ``rcg.official.convert`` for a DiT file -> (DiT in eval mode, DiTRun)."""
    from ..store import WEIGHTS, load_tensors, read_config
    from ..tree import from_dict
    raw = read_config(run_dir)
    if raw.get("generator") != "dit":
        raise ValueError(f"{run_dir} is not a converted DiT run (generator {raw.get('generator')!r})")
    cfg = from_dict(DiTRun, raw)
    model = DiT(cfg.model)
    tensors, _ = load_tensors(Path(run_dir) / WEIGHTS)
    model.load_state_dict(tensors)
    return model.eval().to(device or "cpu"), cfg


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
    predicted x0 is returned, without the official sampler's leftover noise). ``guidance`` is tau
    (DiT's scale 1 + tau) on the eps channels. ``clip_denoised`` clips the predicted x0 to [-1, 1] (pixel space)."""
    from ..rng import randn_per_sample
    c = model.cfg
    dev = next(model.parameters()).device
    x_T = randn_per_sample((len(generators), c.in_channels, c.input_size, c.input_size), generators, device=dev)

    def fn(x, t):
        return model.guided_forward(x, t, rep, tau=guidance, labels=labels, official_first3=official_first3).float()
    if sampler == "ddpm":
        return diffusion.respaced(steps).ddpm_sample(fn, x_T, generators, clip_denoised=clip_denoised)
    if sampler == "ddim":
        return diffusion.ddim_sample(fn, x_T, steps, eta, generators=generators, final_x0=True)
    raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")


# ----------------------------------------------------------------------------------------------
# registry entry (rcg.pixel.GENERATORS["dit"])
# ----------------------------------------------------------------------------------------------
def _diffusion(run, device):
    from ..diffusion import GaussianDiffusion
    from ..tree import to_dict
    return GaussianDiffusion(**to_dict(run.diffusion)).to(device)


def sized(cfg: DiTConfig, data: dict) -> DiTConfig:
    """``cfg`` with the channels, size, rep width and class count of the data."""
    _, C, H, _ = data["images_shape"]
    cfg = replace(cfg, in_channels=int(C), input_size=int(H), rep_dim=int(data["rep_dim"]))
    if cfg.cond == "class":
        if not data.get("num_classes"):
            raise ValueError("model.cond=class needs labels, but the cache has none")
        cfg = replace(cfg, num_classes=int(data["num_classes"]))
    return cfg


def trainer(model: DiT, run):
    """loss(images uint8, rep, labels, generator, rows, global_batch): the diffusion loss of ``run.diffusion``
    (eps MSE + VLB with learned sigma) on pixels in [-1, 1]; timesteps, noise and condition dropout are drawn
    for the global batch."""
    c = model.cfg
    if run.diffusion.learn_sigma != c.learn_sigma:
        raise ValueError(f"diffusion.learn_sigma={run.diffusion.learn_sigma} but model.learn_sigma="
                         f"{c.learn_sigma}; set both the same")
    dev = next(model.parameters()).device
    diffusion = _diffusion(run, dev)
    drop_p = {"rep": c.rep_drop_prob, "class": c.class_dropout_prob}.get(c.cond, 0.0)

    def loss(x, rep, labels, generator, rows, global_batch):
        g = global_batch
        t = torch.randint(0, diffusion.num_steps, (g,), generator=generator)[rows].to(dev)
        noise = torch.randn((g,) + tuple(x.shape[1:]), generator=generator)[rows].to(dev)
        null = (torch.rand(g, generator=generator) < drop_p)[rows].to(dev) if drop_p > 0 else None
        x0 = x.float().div(127.5).sub(1.0)
        rep = rep if c.cond == "rep" else None
        y = labels if c.cond == "class" else None
        return diffusion.loss(lambda xt, tt: model(xt, tt, rep, y, null=null), x0, t, noise), {}
    return loss


def sampler(model: DiT, run):
    """sample(rep, labels, generators, steps, temperature, guidance) -> (B, C, H, W) in [-1, 1] (latents for a
    DiT on an autoencoder's latents); ``temperature`` does not apply; unset settings are the run's."""
    from ..precision import resolve_bf16
    dev = next(model.parameters()).device
    diffusion = _diffusion(run, dev)
    cond = model.cfg.cond

    def sample(rep, labels, generators, steps=None, temperature=None, guidance=None):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=resolve_bf16(run.sample_bf16, dev)):
            return dit_generate(model, diffusion, generators, rep=rep if cond == "rep" else None,
                                labels=labels if cond == "class" else None, steps=steps or run.steps,
                                sampler=run.sampler, eta=run.eta, guidance=run.guidance if guidance is None else guidance,
                                clip_denoised=not run.autoencoder, official_first3=run.official_first3)
    return sample


def to_unit(x: torch.Tensor, tokenizer=None) -> torch.Tensor:
    """[-1, 1] pixels -> [0, 1]."""
    return (x + 1.0) / 2.0


def image_shape(run, tokenizer=None) -> Tuple[int, int]:
    if run.autoencoder:
        raise ValueError(f"this DiT works on {run.autoencoder} latents, not images; it has no image size")
    return int(run.model.in_channels), int(run.model.input_size)
