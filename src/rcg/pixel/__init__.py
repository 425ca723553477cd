"""Pixel generators p(image | rep) behind one registry: name -> module class (each has ``config_class``)."""
from .dit import DIT_PRESETS, DiT, DiTConfig, dit_config
from .mage import MAGE, MAGE_PRESETS, MAGEConfig, mage_config

PIXEL_GENERATORS = {"mage": MAGE, "dit": DiT}

__all__ = ["MAGE", "MAGEConfig", "MAGE_PRESETS", "mage_config", "DiT", "DiTConfig", "DIT_PRESETS", "dit_config",
           "PIXEL_GENERATORS"]
