"""The official checkpoint formats: the only code in rcg that knows the on-disk layouts of the released RCG, MoCo v3
and MAGE files. Every file is read by :func:`safe_load` (``weights_only=True`` + ``argparse.Namespace``, nothing
else is unpickled); loaders infer every dimension from the weights, build our modules, load them strictly and
return ``(module in eval mode, info dict)``. Modules: ``load`` (safe_load, the allow-list, the errors, shared
helpers), ``mocov3``, ``rdm``, ``mage`` (MAGE, its VQGAN, and ``paper_parts``: a system from its RDM and MAGE
files), ``adm``, ``ldm``, ``dit`` (one per format: ``*_from_official``), ``info`` (``rcg info``: detect_kind, checkpoint_info,
format_info) and ``convert`` (``rcg convert``: an official file -> our run directories)."""
from .adm import adm_from_official, adm_sampling
from .convert import adm_run as convert_adm_run
from .convert import ldm_run as convert_ldm_run
from .convert import convert
from .dit import dit_from_official
from .ldm import ldm_from_official
from .info import KINDS, checkpoint_info, detect_kind, format_info
from .load import SAFE_GLOBALS, CheckpointFormatError, PathOrDict, UnsafeCheckpointError, safe_load
from .mage import (MAGE_SUBMODELS, _mage_heads, mage_from_official, matching_mage_preset, paper_parts,
                   split_mage_checkpoint, vqgan_from_official)
from .mocov3 import infer_vit_heads, mocov3_from_official, mocov3_from_state_dict
from .rdm import rdm_from_official
