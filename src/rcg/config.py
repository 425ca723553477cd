"""The run configs: one frozen dataclass tree per stage (layer 2; the named presets are in :mod:`rcg.presets`).

Each round-trips through a plain dict (:mod:`rcg.tree`), is written as ``config.json`` in the run directory and
takes dotted overrides (``--set optim.lr=1e-3``). The pixel generator's model config is chosen through the
generator registry (:mod:`rcg.pixel`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Tuple

from . import pixel
from .augment import ViewSpec
from .encoders import EncoderConfig
from .evalnet import EvalNetConfig
from .rdm import RDMConfig
from .tokenizer import VQConfig
from .tree import build, from_dict, to_dict

PIXEL_SAMPLERS = ("ddpm", "ddim", "dpm++2m", "dpm++2m-sde")   # PixelRun.sampler of the diffusion generators (not MAGE)
RDM_SOLVERS = ("ddim", "dpm++2m", "dpm++2m-sde")  # RDMRun.solver


@dataclass(frozen=True)
class DataConfig:
    """Where images come from.

    dataset: ``fmnist`` (gzip idx files), ``folder`` (recursive image folder), ``cifar10`` (python batches),
    ``prepared`` (a store written by ``rcg prepare-data``: rows read as training needs them), ``tensors`` (a
    file of decoded images, as ``rcg fit`` writes).
    path: directory; ``None`` means the default location of the data set (Fashion-MNIST:
    ``/usr/share/datasets/fashion-mnist``).
    """
    dataset: str = "fmnist"
    path: Optional[str] = None
    split: str = "train"
    resolution: int = 28
    channels: int = 1
    labels: bool = False         # folders: sub-folder names as class labels (unlabelled by default; --labels)
    limit: int = 0               # use only the first N images (0 = all)
    holdout: float = 0.0         # folders: this fraction of the images (fixed by a hash of each path) is held
    #                              out: split "train" is the rest, "test" / "val" the held-out images (0: every
    #                              split is the whole folder)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, schedule and loop settings shared by every training stage."""
    epochs: float = 10.0
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"   # constant | cosine (half-cycle, per step, after linear warm-up)
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    grad_clip: float = 0.0       # 0 = off
    ema_decay: float = 0.0       # 0 = no EMA; RCG's LitEma warm-up min(decay, (1+n)/(10+n))
    bf16: Optional[bool] = False  # bf16 autocast: True, False, or None = auto (where native: rcg.precision)
    seed: int = 0
    log_every: int = 50          # steps
    ckpt_every: int = 500        # steps
    batch_gpu: int = 0           # rows per forward pass (gradient accumulation over micro-batches); 0 = all
    sample_every: Optional[int] = None   # steps between sample grids (RUN/samples/); None: at checkpoints; 0: none
    num_threads: int = 0         # 0 = torch default
    wd_exclude_1d: bool = False  # no weight decay on biases and norm weights (timm add_weight_decay; MAGE)
    fused: Optional[bool] = None  # fused AdamW kernel (CPU and CUDA; the same update to float rounding, 2.5x
                                  # faster than the per-parameter loop for fmnist-rdm); None = where supported


@dataclass(frozen=True)
class KNNConfig:
    """kNN monitor of the encoder on labelled held-out data (labels never enter training)."""
    every_epochs: float = 1.0    # 0 = only at the end
    k: int = 20
    temperature: float = 0.07
    bank: int = 10000            # training images in the bank during training (the final check uses all)
    queries: int = 2000          # held-out images during training (the final check uses all)


@dataclass(frozen=True)
class EncoderRun:
    """``rcg train-encoder``: MoCo v3 on the user's images."""
    data: DataConfig = DataConfig()
    eval_data: DataConfig = DataConfig(split="test")
    encoder: EncoderConfig = EncoderConfig()
    crop_size: int = 0           # view size; 0 = data.resolution
    view1: ViewSpec = ViewSpec()
    view2: ViewSpec = ViewSpec(solarize_p=0.2)
    temperature: float = 0.2
    momentum: float = 0.99       # base of the cosine momentum schedule (-> 1.0)
    pred_dim: int = 1024
    knn: KNNConfig = KNNConfig()
    optim: OptimConfig = OptimConfig()


@dataclass(frozen=True)
class DiffusionConfig:
    """Gaussian diffusion. Defaults: RCG's RDM (1000 steps, scaled-linear betas 0.0015 -> 0.0195, x0
    prediction); DiT uses ``DIT_DIFFUSION`` (linear 1e-4 -> 0.02, eps prediction, learned sigma)."""
    num_steps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    parameterization: str = "x0"      # x0 (RCG) | eps (DiT) | v = sqrt(abar) eps - sqrt(1 - abar) x0 (an option)
    schedule: str = "scaled_linear"   # scaled_linear | linear
    learn_sigma: bool = False


DIT_DIFFUSION = DiffusionConfig(beta_start=1e-4, beta_end=0.02, parameterization="eps", schedule="linear",
                                learn_sigma=True)


@dataclass(frozen=True)
class RDMRun:
    """``rcg train-rdm``: the representation diffusion model on a cache of representations."""
    cache: str = ""              # rcg cache-reps output
    encoder: str = ""            # the encoder that made it (run dir or official file), checked by fingerprint
    class_cond: bool = False     # class-conditional RDM (labels from the cache)
    model: RDMConfig = RDMConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    sample_steps: int = 250      # DDIM steps (paper: 250, eta 1)
    eta: float = 1.0
    solver: str = "ddim"         # ddim (the paper's; eta) | dpm++2m (DPM-Solver++ 2M: deterministic, few steps)
                                 # | dpm++2m-sde (its stochastic form, eta 1: few steps, noise like DDIM eta 1)
    fd_samples: int = 10000      # representations sampled for the rep-FD check at the end of training (0: none)
    optim: OptimConfig = OptimConfig()


@dataclass(frozen=True)
class PixelRun:
    """``rcg train-pixel``: a pixel generator conditioned on representations (or, for the comparison rows,
    on class labels or nothing). ``model`` is the config of the generator named by ``generator`` in the
    registry (:data:`rcg.pixel.GENERATORS`: MAGE on VQ tokens, DiT on pixels); ``None`` means its default."""
    generator: str = "mage"      # a name in rcg.pixel.GENERATORS
    cache: str = ""              # rcg cache-reps output: representations of K views (+ tokens for MAGE,
    encoder: str = ""            #   + the crops' pixels for DiT); the encoder that made it (fingerprint-checked)
    tokenizer: str = ""          # token generators (MAGE): the tokenizer that made the tokens (fingerprint-checked)
    model: Any = None
    diffusion: DiffusionConfig = DIT_DIFFUSION   # diffusion generators (DiT)
    steps: int = 20              # sampling defaults: MAGE decoding steps / DiT diffusion steps,
    temperature: float = 6.0     # MAGE choice temperature,
    guidance: float = 0.0        # guidance tau (DiT's scale is 1 + tau),
    sampler: str = "ddpm"        # diffusion generators: ddpm (ancestral, respaced to ``steps``) | ddim (eta
                                 # ``eta``) | dpm++2m (DPM-Solver++ 2M, deterministic, few steps)
    eta: float = 0.0
    sample_bf16: Optional[bool] = False   # bf16 autocast while sampling (None = auto, where native; DiT 1.4x on
                                          # a bf16 CPU); False for the paper presets (the official fp32)
    token_draw: str = "gumbel"   # MAGE: gumbel (one Gumbel per token and code, the official draw) | cdf (inverse
                                 # CDF at the unknown tokens only: the same Categorical, steps 1.1-1.3x cheaper)
    encoder_drop: bool = False   # MAGE: the encoder sees the known tokens (+ [MASK]s up to training's count)
                                 # only, as in training; not the official step (rcg.pixel.mage_decode.encoder_keep)
    official_first3: bool = False  # DiT: guidance on the first 3 output channels only (the official quirk)
    autoencoder: str = ""        # DiT on latents (a converted official DiT): the autoencoder rcg does not ship
    latent_scale: float = 0.18215
    optim: OptimConfig = OptimConfig()

    def __post_init__(self):
        spec = pixel.generator(self.generator)
        if self.model is None:
            object.__setattr__(self, "model", spec.config_class())
        elif not isinstance(self.model, spec.config_class):
            raise ValueError(f"generator {self.generator!r} takes a {spec.config_class.__name__} as its model, "
                             f"got a {type(self.model).__name__}")
        if self.sampler not in PIXEL_SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(PIXEL_SAMPLERS)}, got {self.sampler!r}")
        if self.token_draw not in pixel.mage_decode.TOKEN_DRAWS:
            raise ValueError(f"token_draw must be one of {', '.join(pixel.mage_decode.TOKEN_DRAWS)}, "
                             f"got {self.token_draw!r}")

    @property
    def cond(self) -> str:
        """What the generator is conditioned on: rep (RCG), class or none."""
        return self.model.cond

    @staticmethod
    def upgrade(d: dict) -> dict:
        """A config dict of an older rcg in today's layout: before the registry, a PixelRun carried both a MAGE
        config (``model``) and a DiT config (``dit``); a converted official DiT had its own schema, with its
        1000-step linear schedule as top-level ``num_steps`` / ``beta_start`` / ``beta_end``."""
        d = dict(d)
        if "num_steps" in d:
            schedule = {k: d.pop(k) for k in ("num_steps", "beta_start", "beta_end") if k in d}
            d["diffusion"] = {**to_dict(DIT_DIFFUSION), "learn_sigma": d.get("model", {}).get("learn_sigma", True),
                              **schedule}
        gen = d.get("generator", "mage")
        if gen in d and gen != "model":          # the old layout kept a generator's config under its name
            d["model"] = d.pop(gen)
        for name in pixel.GENERATORS:
            d.pop(name, None)
        return d

    @classmethod
    def from_plain(cls, d: dict) -> "PixelRun":
        d = cls.upgrade(d)
        spec = pixel.generator(d.get("generator", "mage"))
        if isinstance(d.get("model"), dict):
            d["model"] = from_dict(spec.config_class, d["model"])
        return build(cls, d)


@dataclass(frozen=True)
class ReseedConfig:
    """Dead-code re-seeding of the VQ codebook (every code's usage share is tracked as an EMA)."""
    every: int = 25              # steps between re-seeds (0 = off)
    decay: float = 0.98          # per-step EMA decay of the usage shares
    threshold: float = 0.03      # a code is dead when its EMA share < threshold / n_embed
    stop: float = 0.8            # no re-seeding after this fraction of training (the decoder settles)


@dataclass(frozen=True)
class TokenizerRun:
    """``rcg train-tokenizer``: a VQ tokenizer (the MAGE VQGAN architecture) on the user's images, in [0, 1].
    Loss: l1 |x - x'| + mse (x - x')^2 + grad (L1 of finite differences) + VQ loss (legacy VectorQuantizer2)."""
    data: DataConfig = DataConfig()
    eval_data: DataConfig = DataConfig(split="test")
    model: VQConfig = VQConfig()
    l1_weight: float = 1.0
    mse_weight: float = 0.0
    grad_weight: float = 0.0
    reseed: ReseedConfig = ReseedConfig()
    eval_every_epochs: float = 0.0   # held-out PSNR during training (0 = only at the end)
    eval_images: int = 1000      # held-out images of the periodic check (the final check uses all)
    optim: OptimConfig = OptimConfig()


# ------------------------------------------------------------------------------------------------
# Model sizes follow the data
# ------------------------------------------------------------------------------------------------
HOLDOUT = 0.1        # the fraction of a folder held out when no separate held-out data are given


def _per_channel(values: Tuple[float, ...], channels: int) -> Tuple[float, ...]:
    """``values`` for ``channels`` channels: as they are, or their mean for each channel."""
    return tuple(values) if len(values) == channels else (sum(values) / len(values),) * channels


def with_heldout_split(data: DataConfig, eval_data: DataConfig, fraction: float = HOLDOUT):
    """(data, eval_data) such that the held-out data are never training images: a folder whose held-out
    data would be the folder itself is split, ``fraction`` of its images held out."""
    if not (data.dataset == eval_data.dataset == "folder" and eval_data.path in (None, data.path)):
        return data, eval_data
    if data.holdout == 0:
        data = replace(data, holdout=fraction, split="train")
    eval_data = replace(eval_data, path=data.path, holdout=data.holdout, labels=data.labels,
                        split="test" if eval_data.split == "train" else eval_data.split)
    return data, eval_data


def fit_to_data(cfg: Any) -> Any:
    """``cfg`` with every model dimension that the data decide (channels, resolution) taken from ``cfg.data``,
    and held-out data of the same size that are not training images. Stages call it; so does the CLI before
    printing. Configs without such fields come back unchanged."""
    if isinstance(cfg, EncoderRun):
        c = cfg.data.channels
        enc = replace(cfg.encoder, in_chans=c, mean=_per_channel(cfg.encoder.mean, c),
                      std=_per_channel(cfg.encoder.std, c))
        data, ev = cfg.data, cfg.eval_data
        if data.labels or data.holdout > 0:       # the kNN monitor needs labels; without them nothing is held out
            data, ev = with_heldout_split(data, ev)
        ev = replace(ev, channels=c, resolution=data.resolution)
        return replace(cfg, encoder=enc, data=data, eval_data=ev)
    if isinstance(cfg, TokenizerRun):
        c, r = cfg.data.channels, cfg.data.resolution
        factor = 2 ** (len(cfg.model.ch_mult) - 1)
        if r % factor:
            raise ValueError(f"the tokenizer downsamples by {factor} (model.ch_mult={cfg.model.ch_mult}), so the "
                             f"resolution must be a multiple of {factor}; got {r}. Choose another --resolution")
        data, ev = with_heldout_split(cfg.data, cfg.eval_data)
        ev = replace(ev, channels=c, resolution=r)
        return replace(cfg, model=replace(cfg.model, in_channels=c, out_channels=c, resolution=r), data=data,
                       eval_data=ev)
    return cfg


@dataclass(frozen=True)
class EvalNetRun:
    """``rcg train-evalnet``: a domain classifier trained once per data set, then used by ``rcg eval``."""
    data: DataConfig = DataConfig("fmnist", split="train")
    eval_data: DataConfig = DataConfig("fmnist", split="test")
    model: EvalNetConfig = EvalNetConfig()
    crop_scale: Tuple[float, float] = (0.9, 1.0)   # random-resized crop (area, aspect 1) + flip; (1, 1) = off
    flip_p: float = 0.5
    monitor_every_epochs: float = 1.0              # held-out accuracy during training (0 = only at the end)
    monitor_images: int = 2000
    floor_images: int = 10000                      # real-vs-real fid_dom floor and real is_dom in the summary
    channels_last: bool = True
    optim: OptimConfig = OptimConfig()
