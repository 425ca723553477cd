"""Pixel generators p(image | rep) behind one registry: name -> module class (each has ``config_class``)."""
from .mage import MAGE, MAGE_PRESETS, MAGEConfig, mage_config

PIXEL_GENERATORS = {"mage": MAGE}

__all__ = ["MAGE", "MAGEConfig", "MAGE_PRESETS", "mage_config", "PIXEL_GENERATORS"]
