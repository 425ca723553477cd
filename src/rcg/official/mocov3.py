"""MoCo v3 ViT files (``main_moco.py``: ``module.base_encoder.*``; momentum encoder and predictor dropped) and the
``pretrained_encoder.*`` copy inside RCG files -> our :class:`rcg.encoders.Encoder`."""
import re
from dataclasses import asdict
from typing import Dict, Mapping, Optional, Tuple

import torch

from ..encoders import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderConfig
from .load import (CheckpointFormatError, PathOrDict, _args_dict, _checkpoint, _heads, _indices, _load_strict, _not_a,
                   _shape, _strip)

# Exact renames of a naming bug in one released MoCo v3 checkpoint (as RCG's load_pretrained_moco does).
_LEGACY_RENAMES = {"blocks.13.norm13.": "blocks.13.norm1.", "blocks.13.mlp.fc13.": "blocks.13.mlp.fc1.",
                   "blocks.14.norm14.": "blocks.14.norm2.", "blocks.14.mlp.fc14.": "blocks.14.mlp.fc2."}
# MoCo v3 / RCG arch names -> heads (moco-v3 vits.py: ViT-S has 12 heads, not DeiT's 6)
_ARCH_HEADS = {"vit_small": (384, 12), "vit_base": (768, 12), "vit_large": (1024, 16), "vit_huge": (1280, 16)}


def infer_vit_heads(embed_dim: int, arch: Optional[str] = None) -> Tuple[int, str]:
    """:func:`rcg.official.load._heads` with the checkpoint's arch name (vit_small/base/large/huge, also with a
    ``mocov3_`` prefix), the MoCo v3 table {384: 12, 768: 12, 1024: 16, 1280: 16} and head dim 16 (the fixtures')."""
    named = next(((d, h, f"arch {arch!r}") for n, (d, h) in _ARCH_HEADS.items() if (arch or "").endswith(n)), None)
    return _heads(embed_dim, None, named, dict(_ARCH_HEADS.values()), 16, "ViT")


def mocov3_from_state_dict(sd: Mapping[str, torch.Tensor], prefix: str = "", num_heads: Optional[int] = None,
                           arch: Optional[str] = None) -> Tuple[Encoder, dict]:
    """A plain MoCo v3 / RCG ViT state dict (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.i``,
    ``norm``, ``head.*``), optionally under ``prefix`` -> (Encoder in eval mode, info)."""
    vit: Dict[str, torch.Tensor] = {}
    renamed = 0
    for k, v in _strip(sd, prefix).items():
        old = next((o for o in _LEGACY_RENAMES if k.startswith(o)), None)
        if old:
            k, renamed = _LEGACY_RENAMES[old] + k[len(old):], renamed + 1
        vit[k] = v
    what = "MoCo v3 ViT"
    if "patch_embed.proj.weight" not in vit and any(k.startswith("patch_embed.proj.0.") for k in vit):
        raise CheckpointFormatError(f"{what}: conv-stem ViTs (vit_conv_*) are not supported")
    embed_dim, in_chans, patch, _ = _shape(vit, "patch_embed.proj.weight", what)
    n_tokens = _shape(vit, "pos_embed", what)[1] - 1
    grid = int(round(n_tokens ** 0.5))
    if grid * grid != n_tokens:
        raise CheckpointFormatError(f"{what}: pos_embed has {n_tokens} patch tokens, not a square grid")
    depth = len(_indices(vit, r"blocks\.(\d+)\."))
    mlp_ratio = _shape(vit, "blocks.0.mlp.fc1.weight", what)[0] / embed_dim
    heads, heads_src = (num_heads, "argument") if num_heads else infer_vit_heads(embed_dim, arch)
    linears = sorted(int(m.group(1)) for k, v in vit.items()
                     for m in [re.fullmatch(r"head\.(\d+)\.weight", k)] if m and v.dim() == 2)
    if linears and f"head.{linears[-1] + 1}.running_mean" not in vit:
        raise CheckpointFormatError(f"{what}: projection head without the final BatchNorm is not supported")
    rep_dim = vit[f"head.{linears[-1]}.weight"].shape[0] if linears else embed_dim
    mlp_dim = vit["head.0.weight"].shape[0] if len(linears) > 1 else rep_dim
    img = grid * patch
    cfg = EncoderConfig(arch="vit", in_chans=in_chans, rep_dim=rep_dim, proj_layers=len(linears), mlp_dim=mlp_dim,
                        img_size=img, patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=heads,
                        mlp_ratio=mlp_ratio, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=img)
    enc = Encoder(cfg)
    _load_strict(enc, {(k if k.startswith("head.") else "backbone." + k): v for k, v in vit.items()}, what)
    info = {"kind": "mocov3", "config": asdict(cfg), "num_heads_from": heads_src, "legacy_keys_renamed": renamed}
    return enc.eval(), info


def mocov3_from_official(path_or_dict: PathOrDict, num_heads: Optional[int] = None) -> Tuple[Encoder, dict]:
    """MoCo v3 ``.pth.tar`` (keeps ``module.base_encoder.*``; momentum encoder and predictor are dropped),
    or an RCG RDM/MAGE/DiT file's ``pretrained_encoder.*`` -> (Encoder in eval mode, info). RCG preprocessing
    is the Encoder's: /255, ImageNet normalisation, then bicubic resize to the ViT's input size."""
    ckpt = _checkpoint(path_or_dict)
    sd = ckpt.get("state_dict", ckpt.get("model", ckpt))
    prefix = (next((p for p in ("module.base_encoder.", "base_encoder.", "pretrained_encoder.", "module.", "")
                    if any(k.startswith(p + "patch_embed.") for k in sd)), None) if isinstance(sd, Mapping) else None)
    if prefix is None:
        raise _not_a("a MoCo v3 ViT checkpoint", "'*patch_embed.*' weights", sd)
    args = _args_dict(ckpt) or {}
    arch = ckpt.get("arch") or args.get("pretrained_enc_arch") or args.get("arch")
    enc, info = mocov3_from_state_dict(sd, prefix, num_heads=num_heads, arch=arch if isinstance(arch, str) else None)
    info.update(prefix=prefix, epoch=ckpt.get("epoch"), arch=arch)
    return enc, info
