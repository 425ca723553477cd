"""Pixel generators p(image | rep) behind one registry: the only place that knows which generators exist.

A generator is one network file in this folder plus one :class:`Generator` entry in :data:`GENERATORS`;
nothing else in rcg branches on a generator's name. Each entry says what the generator trains on
(``inputs``: ``"tokens"``, the VQ tokens of a tokenizer, or ``"images"``, uint8 pixels) and gives:

- ``sized(cfg, data) -> cfg``: its model config with the sizes the data decide. ``data`` holds ``rep_dim``
  and ``tokens_shape`` + ``codebook_size`` (token generators) or ``images_shape`` (N, C, H, W) (pixel
  generators). Every generator config has ``cond`` and ``num_classes``; train-pixel sets the class count;
- ``trainer(model, run) -> loss``: ``loss(x, rep, labels, generator, rows, global_batch) -> (loss, metrics)``
  on this process's rows ``x`` (tokens int64 (B, L) or uint8 images (B, C, H, W)) of a global batch of
  ``global_batch`` rows, whose per-sample random draws are made for the whole global batch from ``generator``
  and sliced by ``rows``;
- ``sampler(model, run) -> sample``: ``sample(rep, labels, generators, steps, temperature, guidance)`` -> the
  generator's output (tokens, or images in [-1, 1] / latents), one sample per generator (per-image seeds);
- ``to_unit(output, tokenizer) -> float images in [0, 1]``;
- ``image_shape(run, tokenizer) -> (channels, resolution)`` of the images it makes;
- ``prepare(model, tokenizer) -> model`` (optional): installs a frozen part trained by another stage before
  training (the LDM's first stage from the run's tokenizer). ``sized``'s data then also hold ``tokenizer``
  (the module) and ``images`` (the first 1024 crops).

``run`` is the :class:`rcg.config.PixelRun` of the generator (its sampling defaults and, for diffusion
generators, its diffusion); this layer reads it without importing the config layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

from . import adm, dit, ldm, mage
from .adm import ADM, ADM_PRESETS, ADMConfig, adm_config
from .dit import DIT_PRESETS, DiT, DiTConfig, dit_config
from .ldm import LDM, LDM_PRESETS, LDMConfig, ldm_config
from .mage import MAGE, MAGE_PRESETS, MAGEConfig, mage_config


@dataclass(frozen=True)
class Generator:
    name: str
    config_class: type
    network: type
    inputs: str                  # "tokens" | "images": the cache tensor it trains on
    sized: Callable
    trainer: Callable
    sampler: Callable
    to_unit: Callable
    image_shape: Callable
    preset: str                  # its CPU-sized train-pixel preset (rcg.presets.PIXEL_PRESETS)
    about: str = ""
    prepare: Optional[Callable] = None

    @property
    def needs_tokenizer(self) -> bool:
        """Trains on a tokenizer run: its tokens (MAGE) or as a frozen part (the LDM's first stage)."""
        return self.inputs == "tokens" or self.prepare is not None


GENERATORS: Dict[str, Generator] = {
    "mage": Generator("mage", MAGEConfig, MAGE, "tokens", mage.sized, mage.trainer, mage.sampler, mage.to_unit,
                      mage.image_shape, "fmnist-mage", "MAGE: masked generative transformer on VQ tokens (the paper's)"),
    "dit": Generator("dit", DiTConfig, DiT, "images", dit.sized, dit.trainer, dit.sampler, dit.to_unit,
                     dit.image_shape, "fmnist-dit", "DiT: diffusion transformer on pixels (or latents of a converted DiT)"),
    "adm": Generator("adm", ADMConfig, ADM, "images", adm.sized, adm.trainer, adm.sampler, adm.to_unit,
                     adm.image_shape, "fmnist-adm", "ADM: guided-diffusion U-Net on pixels (rep added to the time embedding)"),
    "ldm": Generator("ldm", LDMConfig, LDM, "images", ldm.sized, ldm.trainer, ldm.sampler, ldm.to_unit,
                     ldm.image_shape, "fmnist-ldm", "LDM: latent-diffusion U-Net, the representation as one "
                     "cross-attention token (frozen VQ first stage)", ldm.prepare),
}


def generator(name: str) -> Generator:
    """The registry entry ``name``; a clear error naming the available ones otherwise."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r} (available: {', '.join(GENERATORS)})")
    return GENERATORS[name]


__all__ = ["Generator", "GENERATORS", "generator", "MAGE", "MAGEConfig", "MAGE_PRESETS", "mage_config", "DiT",
           "DiTConfig", "DIT_PRESETS", "dit_config", "ADM", "ADMConfig", "ADM_PRESETS", "adm_config", "LDM", "LDMConfig",
           "LDM_PRESETS", "ldm_config"]
