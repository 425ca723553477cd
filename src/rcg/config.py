"""Frozen-dataclass configs and named presets.

Every stage's config is a tree of frozen dataclasses that round-trips through a plain dict
(``to_dict`` / ``from_dict``), is written as ``config.json`` in the run directory, and can be
overridden from the command line with dotted keys (``--set train.lr=1e-3``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Optional, Tuple, Union, get_type_hints


@dataclass(frozen=True)
class DataConfig:
    """Where images come from.

    dataset: ``fmnist`` (gzip idx files), ``folder`` (recursive image folder), ``cifar10`` (python batches).
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
    num_threads: int = 0         # 0 = torch default
    wd_exclude_1d: bool = False  # no weight decay on biases and norm weights (timm add_weight_decay; MAGE)


def to_dict(cfg: Any) -> Any:
    """A config (tree of dataclasses) as plain JSON-able Python."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def from_dict(cls: type, d: dict) -> Any:
    """Rebuild a config of type ``cls`` from ``to_dict`` output; unknown keys are an error."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        if is_dataclass(tp):
            value = from_dict(tp, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _coerce(text: str, tp: Any) -> Any:
    """Parse a command-line string as the field type ``tp`` (bool, int, float, str, Optional[...], tuples)."""
    origin, args = getattr(tp, "__origin__", None), getattr(tp, "__args__", ())
    if origin is Union:                                    # Optional[X]
        if text.lower() in ("none", "null", "") or (bool in args and text.lower() == "auto"):
            return None
        return _coerce(text, next(a for a in args if a is not type(None)))
    if origin in (tuple, Tuple):
        inner = args[0] if args else float
        return tuple(_coerce(v.strip(), inner) for v in text.split(",") if v.strip())
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if tp is int:
        value = float(text)
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        return int(value)
    if tp is float:
        return float(text)
    return text


def override(cfg: Any, key: str, value: Any) -> Any:
    """Return ``cfg`` with the dotted ``key`` set; ``value`` given as a string is coerced to the field's type."""
    head, _, rest = key.partition(".")
    names = {f.name for f in fields(cfg)}
    if head not in names:
        raise KeyError(f"{type(cfg).__name__} has no field {head!r} (fields: {', '.join(sorted(names))})")
    current = getattr(cfg, head)
    if rest:
        if not is_dataclass(current):
            raise KeyError(f"{head!r} is not a section; cannot set {key!r}")
        return replace(cfg, **{head: override(current, rest, value)})
    if isinstance(value, str):
        value = _coerce(value, get_type_hints(type(cfg))[head])
    return replace(cfg, **{head: value})


def apply_overrides(cfg: Any, pairs: list) -> Any:
    """Apply ``["a.b=1", ...]`` to ``cfg``."""
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        cfg = override(cfg, key.strip(), value.strip())
    return cfg


def diff(a: dict, b: dict, prefix: str = "", new_ok: bool = False) -> list:
    """Dotted keys whose values differ between two ``to_dict`` trees. ``new_ok``: keys that ``a`` lacks
    (fields added by a newer rcg since ``a`` was written) do not count."""
    out = []
    for k in sorted(set(a) | set(b)):
        if new_ok and k not in a:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, prefix + k + ".", new_ok)
        elif va != vb:
            out.append(prefix + k)
    return out


def added_keys(a: dict, b: dict, prefix: str = "") -> list:
    """Dotted keys of ``b`` that ``a`` lacks."""
    out = []
    for k, vb in b.items():
        if k not in a:
            out.append(prefix + k)
        elif isinstance(vb, dict) and isinstance(a[k], dict):
            out += added_keys(a[k], vb, prefix + k + ".")
    return out


def dumps(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)


# ------------------------------------------------------------------------------------------------
# Stage configs and presets
# ------------------------------------------------------------------------------------------------
from .augment import ViewSpec  # noqa: E402
from .encoders import IMAGENET_MEAN, IMAGENET_STD, EncoderConfig  # noqa: E402


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


_FMNIST_ENCODER = EncoderRun(
    data=DataConfig("fmnist", resolution=28, channels=1),
    eval_data=DataConfig("fmnist", split="test", resolution=28, channels=1),
    encoder=EncoderConfig(arch="resnet", in_chans=1, widths=(32, 64, 128), depths=(1, 1, 1), mlp_dim=1024,
                          mean=(0.286,), std=(0.353,)),
    view1=ViewSpec(scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0, gray_p=0.0),
    view2=ViewSpec(scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0, gray_p=0.0,
                   solarize_p=0.2),
    optim=OptimConfig(epochs=15, batch_size=256, lr=2e-3, weight_decay=1e-4, schedule="cosine",
                      warmup_epochs=0.2, bf16=None, log_every=20, ckpt_every=200),
)


def _mocov3_vit(embed_dim: int, depth: int, heads: int, epochs: int) -> EncoderRun:
    """The MoCo v3 ImageNet recipe (Chen et al. 2021, ViT): AdamW, lr 1.5e-4 x batch/256, wd 0.1,
    batch 4096, 40 warm-up epochs, momentum 0.99 -> 1, T 0.2, 4096-d MLPs, 256-d output."""
    blur1, blur2 = ViewSpec(scale=(0.08, 1.0), blur_p=1.0), ViewSpec(scale=(0.08, 1.0), blur_p=0.1, solarize_p=0.2)
    return EncoderRun(
        data=DataConfig("folder", resolution=224, channels=3, labels=False),
        eval_data=DataConfig("folder", split="val", resolution=224, channels=3, labels=True),
        encoder=EncoderConfig(arch="vit", in_chans=3, img_size=224, patch_size=16, embed_dim=embed_dim, depth=depth,
                              num_heads=heads, mlp_dim=4096, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=224),
        view1=blur1, view2=blur2, pred_dim=4096,
        optim=OptimConfig(epochs=epochs, batch_size=4096, lr=1.5e-4 * 4096 / 256, weight_decay=0.1, schedule="cosine",
                          warmup_epochs=40, betas=(0.9, 0.999), bf16=None),
    )


ENCODER_PRESETS = {
    "fmnist-encoder": _FMNIST_ENCODER,
    "mocov3-vit-s": _mocov3_vit(384, 12, 12, 300),
    "mocov3-vit-b": _mocov3_vit(768, 12, 12, 300),
    "mocov3-vit-l": _mocov3_vit(1024, 24, 16, 300),
}


from .rdm import RDM_PRESETS, RDMConfig  # noqa: E402


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
    fd_samples: int = 10000      # representations sampled for the rep-FD check at the end of training
    optim: OptimConfig = OptimConfig()


# The paper's RDM training (Table 5): AdamW lr 5.12e-4 (blr 1e-6 x batch 512), wd 0.01, constant lr,
# 200 epochs, EMA 0.9999, fp32.
_PAPER_RDM_OPTIM = OptimConfig(epochs=200, batch_size=512, lr=5.12e-4, weight_decay=0.01, ema_decay=0.9999,
                               schedule="constant", log_every=100, ckpt_every=2000)
RDM_RUN_PRESETS = {
    "rdm-l12-w1536": RDMRun(model=RDM_PRESETS["rdm-l12-w1536"], optim=_PAPER_RDM_OPTIM),
    "rdm-l12-w1536-cls1000": RDMRun(model=RDM_PRESETS["rdm-l12-w1536-cls1000"], class_cond=True,
                                    optim=_PAPER_RDM_OPTIM),
    # CPU-sized: bf16 autocast (3.3x faster than fp32 on this CPU), a higher lr decayed by a half-cycle cosine
    # (on 240k cached reps: 16 epochs constant lr -> rep FD 0.491; 24 epochs cosine -> 0.375), 100 DDIM steps
    "fmnist-rdm": RDMRun(model=RDM_PRESETS["rdm-small"], sample_steps=100,
                         optim=replace(_PAPER_RDM_OPTIM, epochs=24, batch_size=512, lr=2e-3, schedule="cosine",
                                       warmup_epochs=0.5, bf16=None, log_every=50, ckpt_every=500)),
}
# Not RCG's diffusion: v prediction and beta_start 1e-4 (RCG's last DDIM step keeps noise of std 0.039, which
# alone puts a perfect model at 1.83x the rep-FD floor on Fashion-MNIST reps; x0 prediction collapses their
# narrowest directions). Rep FD / floor (benchmarks/rdm_rep_fd.py, mean of several 10k sample sets): DDIM 250
# steps (the paper's) 1.29x, DDIM 100 1.43x (24 epochs: 1.46x; the fmnist-rdm recipe: 3.46x).
RDM_RUN_PRESETS["fmnist-rdm-v"] = replace(RDM_RUN_PRESETS["fmnist-rdm"], sample_steps=250,
                                          diffusion=DiffusionConfig(beta_start=1e-4, parameterization="v"),
                                          optim=replace(RDM_RUN_PRESETS["fmnist-rdm"].optim, epochs=48))


from .pixel.dit import DIT_PRESETS, DiTConfig  # noqa: E402
from .pixel.mage import MAGE_PRESETS, MAGEConfig  # noqa: E402

GENERATORS = ("mage", "dit")


@dataclass(frozen=True)
class PixelRun:
    """``rcg train-pixel``: a pixel generator conditioned on representations (or, for the comparison rows,
    on class labels or nothing): MAGE on VQ tokens (``model``), or DiT on pixels (``dit``, ``diffusion``)."""
    generator: str = "mage"      # mage | dit
    cache: str = ""              # rcg cache-reps output: representations of K views (+ tokens for MAGE,
    encoder: str = ""            #   + the crops' pixels for DiT); the encoder that made it (fingerprint-checked)
    tokenizer: str = ""          # MAGE: the tokenizer that made the tokens (checked by fingerprint)
    model: MAGEConfig = MAGEConfig()
    dit: DiTConfig = DiTConfig()
    diffusion: DiffusionConfig = DIT_DIFFUSION
    steps: int = 20              # sampling defaults: MAGE decoding steps / DiT diffusion steps,
    temperature: float = 6.0     # MAGE choice temperature,
    guidance: float = 0.0        # guidance tau (DiT's scale is 1 + tau),
    sampler: str = "ddpm"        # DiT: ddpm (ancestral, respaced to ``steps``) | ddim (eta ``eta``)
    eta: float = 0.0
    sample_bf16: Optional[bool] = False   # DiT: bf16 autocast while sampling (None = auto; 1.4x on a bf16 CPU)
    optim: OptimConfig = OptimConfig()

    def __post_init__(self):
        if self.generator not in GENERATORS:
            raise ValueError(f"unknown generator {self.generator!r} (available: {', '.join(GENERATORS)})")
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {self.sampler!r}")

    @property
    def cond(self) -> str:
        """What the generator is conditioned on: rep (RCG), class or none."""
        return self.dit.cond if self.generator == "dit" else self.model.cond


# The paper's MAGE training (Table 6): AdamW (0.9, 0.95), blr 1.5e-4 x 4096 / 256, wd 0.05 (not on biases and
# norms), cosine with 10 warm-up epochs, grad clip 3.0, 800 epochs (200 for ablations), AMP.
_PAPER_MAGE_OPTIM = OptimConfig(epochs=800, batch_size=4096, lr=1.5e-4 * 4096 / 256, betas=(0.9, 0.95),
                                weight_decay=0.05, wd_exclude_1d=True, schedule="cosine", warmup_epochs=10,
                                grad_clip=3.0, bf16=None, log_every=100, ckpt_every=2000)
_FMNIST_MAGE = replace(MAGE_PRESETS["mage-tiny"], embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=128,
                       decoder_depth=2, decoder_num_heads=4, dropout=0.0, attn_dropout=0.0)
PIXEL_PRESETS = {
    "mage-b": PixelRun(model=MAGE_PRESETS["mage-b"], temperature=6.0, guidance=1.0, optim=_PAPER_MAGE_OPTIM),
    "mage-l": PixelRun(model=MAGE_PRESETS["mage-l"], temperature=11.0, guidance=6.0, optim=_PAPER_MAGE_OPTIM),
    # CPU-sized: the demo's (3 epochs of 60k token maps: 5.6 min on 2 cores) and a longer reference run (8 epochs)
    # (dropout off: on a CPU its Bernoulli draws cost a third of the step, and these runs are far from overfitting)
    "fmnist-mage": PixelRun(model=_FMNIST_MAGE,
                            steps=12, temperature=0.5, guidance=0.0,
                            optim=replace(_PAPER_MAGE_OPTIM, epochs=3, batch_size=128, lr=1.5e-3, warmup_epochs=0.1,
                                          log_every=20, ckpt_every=200)),
    "fmnist-mage-ref": PixelRun(model=_FMNIST_MAGE, steps=12, temperature=0.5, guidance=0.0,
                                optim=replace(_PAPER_MAGE_OPTIM, epochs=8, batch_size=128, lr=1.5e-3,
                                              warmup_epochs=0.1, log_every=20, ckpt_every=200)),
    # DiT in pixel space on 28 px Fashion-MNIST (DiT's recipe: AdamW, constant lr, no weight decay, learned
    # sigma, EMA; a higher lr and bf16 for a CPU budget). 8 epochs: ~16 min on 2 cores (est. from ~510 img/s);
    # at 2 epochs RCG was only 0.84x the baseline's FID (both far from converged), at 8 0.58x. DDIM 25 matched
    # DDIM 50 and DDPM 50.
    "fmnist-dit": PixelRun(generator="dit", dit=DIT_PRESETS["dit-fmnist"], steps=25, sampler="ddim", eta=0.0,
                           sample_bf16=None,
                           optim=OptimConfig(epochs=8, batch_size=128, lr=1e-3, weight_decay=0.0, ema_decay=0.999,
                                             warmup_epochs=0.1, grad_clip=1.0, bf16=None, log_every=20,
                                             ckpt_every=200)),
}


from .tokenizer import VQConfig  # noqa: E402


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


TOKENIZER_PRESETS = {
    # CPU-sized: 28 px gray -> 7x7 tokens, 512 codes of dim 32, 0.2 M parameters, 1 epoch. Measured on 0.6 epoch
    # probes (1 thread, shared CPU): small batches with a high lr learn fastest per CPU second (batch 64 / lr 2e-3:
    # 19.6 dB; 32 / 2e-3: 21.0; 16 / 2e-3: 22.4; 16 / 4e-3: 23.2; 16 / 8e-3: 23.6; 8 / 4e-3: 23.7 but 15 % slower);
    # L1 beat L1 + MSE, the legacy VQ loss matched the non-legacy one, bf16 autocast trains 1.5-3x faster than fp32.
    "fmnist-tokenizer": TokenizerRun(
        data=DataConfig("fmnist", resolution=28, channels=1),
        eval_data=DataConfig("fmnist", split="test", resolution=28, channels=1),
        model=VQConfig(in_channels=1, out_channels=1, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=32,
                       embed_dim=32, n_embed=512, resolution=28, num_groups=8),
        eval_every_epochs=0.25,
        optim=OptimConfig(epochs=1, batch_size=16, lr=8e-3, schedule="cosine", warmup_epochs=0.02, min_lr=1e-4,
                          bf16=None, log_every=100, ckpt_every=500),
    ),
    # The official MAGE / RCG VQGAN architecture (config/mage/vqgan.yaml): f16, 16x16 tokens at 256 px.
    "vqgan-f16-1024": TokenizerRun(
        data=DataConfig("folder", resolution=256, channels=3, labels=False),
        eval_data=DataConfig("folder", split="val", resolution=256, channels=3, labels=False),
        model=VQConfig(),
        # taming-transformers' VQGAN optimiser: Adam (0.5, 0.9), lr 4.5e-6 x batch. Our loss has no perceptual or
        # adversarial term (L1 + VQ only), so this preset reproduces the architecture, not the official weights.
        optim=OptimConfig(epochs=100, batch_size=64, lr=4.5e-6 * 64, betas=(0.5, 0.9), bf16=None, log_every=100,
                          ckpt_every=2000),
    ),
}


# ------------------------------------------------------------------------------------------------
# Model sizes follow the data
# ------------------------------------------------------------------------------------------------
HOLDOUT = 0.1        # the fraction of a folder held out when no separate held-out data are given


def _per_channel(values: Tuple[float, ...], channels: int) -> Tuple[float, ...]:
    if len(values) == channels:
        return tuple(values)
    mean = sum(values) / len(values)
    return (mean,) * channels


def _same_folder(a: DataConfig, b: DataConfig) -> bool:
    return a.dataset == b.dataset == "folder" and (b.path is None or b.path == a.path)


def with_heldout_split(data: DataConfig, eval_data: DataConfig, fraction: float = HOLDOUT):
    """(data, eval_data) such that the held-out data are never training images: a folder whose held-out
    data would be the folder itself is split, ``fraction`` of its images held out."""
    if not _same_folder(data, eval_data):
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
