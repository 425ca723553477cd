"""Loaders for the official checkpoint formats (the only module that knows their layouts).

Every file is read by :func:`safe_load`: ``torch.load(weights_only=True)`` with an explicit allow-list
(only ``argparse.Namespace``, which the official scripts pickle under ``args``); nothing is ever
unpickled with ``weights_only=False``. Loaders infer every dimension from the weights, build our
modules and load them strictly, and return ``(module in eval mode, info dict)``.

- :func:`rdm_from_official`: RCG ``util/misc.save_model`` RDM files (``model.diffusion_model.*`` SimpleMLP,
  LitEma shadows ``model_ema.<name without dots>``, ``cond_stage_model.embedding.weight``).
- :func:`mocov3_from_official`: MoCo v3 ``main_moco.py`` files (``module.base_encoder.*``) and the
  ``pretrained_encoder.*`` copy inside RCG files; :func:`mocov3_from_state_dict` for a plain ViT dict.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
from dataclasses import asdict
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from .diffusion import GaussianDiffusion
from .encoders import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderConfig
from .rdm import RDM, RDMConfig

SAFE_GLOBALS = (argparse.Namespace,)
PathOrDict = Union[str, os.PathLike, Mapping[str, Any]]


class UnsafeCheckpointError(RuntimeError):
    """The pickle needs a global (or instruction) outside the weights-only allow-list; never executed."""


class CheckpointFormatError(ValueError):
    """Not a torch checkpoint, corrupt/truncated, or not the layout the loader expects."""


def safe_load(path) -> dict:
    """Load a ``torch.save`` checkpoint on the CPU with ``weights_only=True`` plus ``argparse.Namespace``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointFormatError(f"{path} is not a file; pass the checkpoint file itself")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"GLOBAL\s+([A-Za-z_][\w.]*)", msg)
        if m:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: its pickle needs the global {m.group(1)!r}, which is not on the "
                f"allow-list (tensors, containers, argparse.Namespace). Unpickling it could run arbitrary code; "
                f"nothing was executed.") from None
        # any other refusal of the weights-only unpickler (e.g. "Unsupported operand"): garbage bytes
        reason = next((ln for ln in msg.splitlines()[::-1] if ln.strip() and "documentation" not in ln), msg)
        err = f"UnpicklingError: {reason.strip()[:200]}"
    except Exception as e:   # zip/EOF/magic-number errors of a truncated, corrupt or foreign file
        err = f"{type(e).__name__}: {str(e)[:300]}"
    else:
        err = None
    if err is not None:
        raise CheckpointFormatError(
            f"could not read {path} as a torch checkpoint ({err}). The file may be truncated or corrupt "
            f"(compare its size / sha256 with the source) or not a torch.save file.")
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, expected a checkpoint dict")
    return obj


def _checkpoint(path_or_dict: PathOrDict) -> Mapping[str, Any]:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    if isinstance(path_or_dict, (str, os.PathLike)):
        return safe_load(path_or_dict)
    raise TypeError(f"expected a checkpoint path or dict, got {type(path_or_dict).__name__}")


def _args_dict(ckpt: Mapping[str, Any]) -> Optional[dict]:
    args = ckpt.get("args")
    return dict(vars(args)) if isinstance(args, argparse.Namespace) else (dict(args) if isinstance(args, Mapping) else None)


def _load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(dict(sd), strict=True)
    except RuntimeError as e:
        raise CheckpointFormatError(f"{what}: weights do not fit the inferred architecture: {e}") from None


def _shape(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Size:
    if key not in sd:
        raise CheckpointFormatError(f"{what}: missing key {key!r} (found e.g. {sorted(sd)[:8]})")
    return sd[key].shape


# ----------------------------------------------------------------------------------------------
# RDM
# ----------------------------------------------------------------------------------------------
_NET = "model.diffusion_model."


def rdm_from_official(path_or_dict: PathOrDict, ema: bool = True) -> Tuple[RDM, dict]:
    """Official RCG RDM checkpoint -> (RDM in eval mode, info). With ``ema`` the LitEma shadow weights
    (the ones official sampling uses) are loaded when present; ``info["ema"]`` says whether they were."""
    ckpt = _checkpoint(path_or_dict)
    sd = ckpt.get("model", ckpt.get("state_dict", ckpt))
    if not isinstance(sd, Mapping) or not any(k.startswith(_NET) for k in sd):
        found = sorted(sd)[:8] if isinstance(sd, Mapping) else type(sd).__name__
        raise CheckpointFormatError(f"not an RCG RDM checkpoint: no '{_NET}*' weights under 'model' (found {found})")
    what = "RDM checkpoint"
    model_channels, in_channels = _shape(sd, _NET + "input_proj.weight", what)
    time_embed_dim = _shape(sd, _NET + "time_embed.0.weight", what)[0]
    bottleneck = _shape(sd, _NET + "res_blocks.0.in_layers.2.weight", what)[0]
    out_channels = _shape(sd, _NET + "out.2.weight", what)[0]
    if out_channels != in_channels:
        raise CheckpointFormatError(f"{what}: out_channels {out_channels} != in_channels {in_channels}")
    blocks = {int(m.group(1)) for k in sd for m in [re.match(re.escape(_NET) + r"res_blocks\.(\d+)\.", k)] if m}
    ctx_key = _NET + "res_blocks.0.context_layers.1.weight"
    emb = sd.get("cond_stage_model.embedding.weight")
    num_classes, class_dim = 0, 512
    if ctx_key in sd:
        if emb is None:
            raise CheckpointFormatError(f"{what}: class-conditional blocks but no cond_stage_model.embedding.weight")
        num_classes, class_dim = emb.shape
        if sd[ctx_key].shape[1] != class_dim:
            raise CheckpointFormatError(f"{what}: context layers take {sd[ctx_key].shape[1]}-d input, "
                                        f"class embedding is {class_dim}-d")
    elif emb is not None:
        class_dim = emb.shape[1]            # unconditional file: the [1, 512] "fake" embedding is unused
    cfg = RDMConfig(in_channels=in_channels, time_embed_dim=time_embed_dim, model_channels=model_channels,
                    num_res_blocks=len(blocks), num_classes=num_classes, class_embed_dim=class_dim,
                    bottleneck_channels=0 if bottleneck == model_channels else bottleneck)
    model = RDM(cfg)
    ours = {"net." + k[len(_NET):]: v for k, v in sd.items() if k.startswith(_NET)}
    if num_classes:
        ours["class_embed.weight"] = emb
    _load_strict(model, ours, what)

    # LitEma shadows: "model_ema." + ("diffusion_model." + name).replace(".", "")
    used_ema = False
    if ema:
        shadows = {k[len("model_ema."):]: v for k, v in sd.items() if k.startswith("model_ema.")}
        names = [n for n, _ in model.net.named_parameters()]
        if any(k not in ("decay", "num_updates") for k in shadows):
            missing = [n for n in names if ("diffusion_model." + n).replace(".", "") not in shadows]
            if missing:
                raise CheckpointFormatError(f"{what}: EMA shadows missing for {missing[:5]} "
                                            f"(pass ema=False to load the raw weights)")
            ema_sd = {n: shadows[("diffusion_model." + n).replace(".", "")] for n in names}
            _load_strict(model.net, ema_sd, what + " (EMA)")
            used_ema = True
    info: Dict[str, Any] = {"kind": "rdm", "config": asdict(cfg), "ema": used_ema, "epoch": ckpt.get("epoch")}
    if "model_ema.decay" in sd:
        info["ema_decay"] = float(sd["model_ema.decay"])
        info["ema_num_updates"] = int(sd.get("model_ema.num_updates", torch.tensor(-1)))
    if "betas" in sd:
        betas = sd["betas"].double()
        sched = dict(num_steps=len(betas), beta_start=float(f"{float(betas[0]):.6g}"),
                     beta_end=float(f"{float(betas[-1]):.6g}"))
        ours_ac = GaussianDiffusion(**sched).alphas_cumprod
        info["diffusion"] = dict(sched, schedule_matches=bool("alphas_cumprod" in sd and torch.allclose(
            ours_ac, sd["alphas_cumprod"].float(), rtol=0, atol=1e-6)))
    info["has_pretrained_encoder"] = any(k.startswith("pretrained_encoder.") for k in sd)
    info["args"] = _args_dict(ckpt)
    return model.eval(), info


# ----------------------------------------------------------------------------------------------
# MoCo v3 ViT (+ projection head)
# ----------------------------------------------------------------------------------------------
# Exact renames of a naming bug in one released MoCo v3 checkpoint (as RCG's load_pretrained_moco does).
_LEGACY_RENAMES = (("blocks.13.norm13.", "blocks.13.norm1."), ("blocks.13.mlp.fc13.", "blocks.13.mlp.fc1."),
                   ("blocks.14.norm14.", "blocks.14.norm2."), ("blocks.14.mlp.fc14.", "blocks.14.mlp.fc2."))
# MoCo v3 / RCG arch names -> heads (moco-v3 vits.py: ViT-S has 12 heads, not DeiT's 6)
_ARCH_HEADS = {"vit_small": (384, 12), "vit_base": (768, 12), "vit_large": (1024, 16), "vit_huge": (1280, 16)}
_WIDTH_HEADS = {384: 12, 768: 12, 1024: 16, 1280: 16}


def infer_vit_heads(embed_dim: int, arch: Optional[str] = None) -> Tuple[int, str]:
    """Heads are not stored in the weights. Rule: the checkpoint's arch name (vit_small/base/large/huge,
    also with a ``mocov3_`` prefix) when its width matches; else the MoCo v3 table by width
    {384: 12, 768: 12, 1024: 16, 1280: 16}; else embed_dim // 16 (head dim 16, the fixtures' choice).
    Pass ``num_heads`` explicitly for any other model."""
    if arch:
        for name, (dim, heads) in _ARCH_HEADS.items():
            if arch.endswith(name) and dim == embed_dim:
                return heads, f"arch {arch!r}"
    if embed_dim in _WIDTH_HEADS:
        return _WIDTH_HEADS[embed_dim], "width table"
    if embed_dim % 16 == 0:
        return embed_dim // 16, "embed_dim // 16"
    raise CheckpointFormatError(f"cannot infer the number of heads of a {embed_dim}-wide ViT; pass num_heads")


def mocov3_from_state_dict(sd: Mapping[str, torch.Tensor], prefix: str = "", num_heads: Optional[int] = None,
                           arch: Optional[str] = None) -> Tuple[Encoder, dict]:
    """A plain MoCo v3 / RCG ViT state dict (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.i``,
    ``norm``, ``head.*``), optionally under ``prefix`` -> (Encoder in eval mode, info)."""
    vit: Dict[str, torch.Tensor] = {}
    renamed = 0
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        k = k[len(prefix):]
        for old, new in _LEGACY_RENAMES:
            if k.startswith(old):
                k, renamed = new + k[len(old):], renamed + 1
        vit[k] = v
    what = "MoCo v3 ViT"
    if "patch_embed.proj.weight" not in vit and any(k.startswith("patch_embed.proj.0.") for k in vit):
        raise CheckpointFormatError(f"{what}: conv-stem ViTs (vit_conv_*) are not supported")
    embed_dim, in_chans, patch, _ = _shape(vit, "patch_embed.proj.weight", what)
    n_tokens = _shape(vit, "pos_embed", what)[1] - 1
    grid = int(round(n_tokens ** 0.5))
    if grid * grid != n_tokens:
        raise CheckpointFormatError(f"{what}: pos_embed has {n_tokens} patch tokens, not a square grid")
    depth = len({int(m.group(1)) for k in vit for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
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
    if not isinstance(sd, Mapping):
        raise CheckpointFormatError(f"not a MoCo v3 checkpoint: 'state_dict' is a {type(sd).__name__}")
    prefix = next((p for p in ("module.base_encoder.", "base_encoder.", "pretrained_encoder.", "module.", "")
                   if any(k.startswith(p + "patch_embed.") for k in sd)), None)
    if prefix is None:
        raise CheckpointFormatError(f"not a MoCo v3 ViT checkpoint: no '*patch_embed.*' weights "
                                    f"(found e.g. {sorted(sd)[:8]})")
    args = _args_dict(ckpt) or {}
    arch = ckpt.get("arch") or args.get("pretrained_enc_arch") or args.get("arch")
    enc, info = mocov3_from_state_dict(sd, prefix, num_heads=num_heads, arch=arch if isinstance(arch, str) else None)
    info.update(prefix=prefix, epoch=ckpt.get("epoch"), arch=arch)
    return enc, info


# ----------------------------------------------------------------------------------------------
# ---- MAGE
# ----------------------------------------------------------------------------------------------
# Sub-models an official MAGE file carries beside the generator (frozen, saved by state_dict()).
MAGE_SUBMODELS = ("vqgan", "pretrained_encoder")
# official arch name -> (encoder width, encoder heads, decoder heads)
_MAGE_ARCH = {"mage_vit_base_patch16": (768, 12, 16), "mage_vit_large_patch16": (1024, 16, 16),
              "mage_vit_huge_patch16": (1280, 16, 16)}
_MAGE_WIDTH_HEADS = {768: 12, 1024: 16, 1280: 16}          # encoder; every official decoder has 16 heads
# created by the official constructor but unused by its forward/generation; not part of our module
_MAGE_UNUSED = ("cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "token_emb.position_ids")
_MAGE_UNUSED_PREFIXES = ("patch_embed.", "decoder_pred.")


def split_mage_checkpoint(ckpt_or_sd: Mapping[str, Any]) -> Dict[str, Dict[str, torch.Tensor]]:
    """An official MAGE checkpoint (or its ``model`` state dict) split by prefix, prefixes stripped:
    ``{"mage": generator keys, "vqgan": ..., "pretrained_encoder": ...}``; absent sub-models are omitted.
    ``vqgan`` is a VQModel state dict, ``pretrained_encoder`` a MoCo v3 ViT one (:func:`mocov3_from_state_dict`)."""
    sd = ckpt_or_sd.get("model", ckpt_or_sd)
    if not isinstance(sd, Mapping):
        raise CheckpointFormatError(f"not a MAGE checkpoint: 'model' is a {type(sd).__name__}")
    out: Dict[str, Dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        name = next((p for p in MAGE_SUBMODELS if k.startswith(p + ".")), "mage")
        out.setdefault(name, {})[k if name == "mage" else k[len(name) + 1:]] = v
    return out


def _mage_heads(width: int, decoder: bool, arch: Optional[str], given: Optional[int]) -> Tuple[int, str]:
    """Heads are not stored in the weights. Rule: the argument; else the official arch name in ``args.model``
    (mage_vit_base/large/huge_patch16) when its width matches; else the official table by width (encoder
    {768: 12, 1024: 16, 1280: 16}, decoder 16 at those widths); else head dim 64; else an error."""
    if given:
        return given, "argument"
    if arch in _MAGE_ARCH and _MAGE_ARCH[arch][0] == width:
        return _MAGE_ARCH[arch][2 if decoder else 1], f"arch {arch!r}"
    if width in _MAGE_WIDTH_HEADS:
        return 16 if decoder else _MAGE_WIDTH_HEADS[width], "width table"
    if width % 64 == 0:
        return width // 64, "head dim 64"
    raise CheckpointFormatError(f"cannot infer the heads of a {width}-wide MAGE "
                                f"{'decoder' if decoder else 'encoder'}; pass {'decoder_' if decoder else ''}num_heads")


def mage_from_official(path_or_dict: PathOrDict, num_heads: Optional[int] = None,
                       decoder_num_heads: Optional[int] = None, ema: bool = True) -> Tuple[torch.nn.Module, dict]:
    """Official RCG MAGE checkpoint (``util/misc.save_model`` layout) -> (MAGE in eval mode, info).

    Dimensions come from the weights, the official vocabulary (codebook + 1000 + 1; [MASK] = last id; slot-0
    id = codebook + 76) from the word embeddings and the VQGAN codebook, masking / rep-dropout settings from
    ``args``; heads per :func:`_mage_heads`. ``fake_latent`` becomes ``null_rep``; unused official parameters
    are dropped (listed in ``info["dropped"]``). An unconditional official file (no latent_prior_proj, no
    class_emb: slot 0 = the embedded slot-0 id) becomes cond="none" with latent_prior_proj weight 0 and bias =
    that embedding, which is exact. ``info`` reports ``has_vqgan`` / ``has_encoder``; load those sub-models
    from :func:`split_mage_checkpoint` (or :func:`mocov3_from_official` for the encoder). With ``ema`` a
    ``model_ema`` state dict is used when the file has one (``info["ema"]``)."""
    from .pixel.mage import MAGE, MAGEConfig

    ckpt = _checkpoint(path_or_dict)
    sd = ckpt.get("model", ckpt)
    used_ema = ema and isinstance(ckpt.get("model_ema"), Mapping)
    parts = split_mage_checkpoint(sd)
    own = split_mage_checkpoint(ckpt["model_ema"] if used_ema else sd).get("mage", {})
    what = "MAGE checkpoint"
    if "token_emb.word_embeddings.weight" not in own or "decoder_pos_embed_learned" not in own:
        raise CheckpointFormatError(f"not an RCG MAGE checkpoint: no token_emb / decoder weights under 'model' "
                                    f"(found e.g. {sorted(own)[:8]})")
    vocab, D = _shape(own, "token_emb.word_embeddings.weight", what)
    num_tokens = _shape(own, "token_emb.position_embeddings.weight", what)[0] - 1
    Dd = _shape(own, "decoder_embed.weight", what)[0]
    codebook = (parts["vqgan"]["quantize.embedding.weight"].shape[0]
                if "quantize.embedding.weight" in parts.get("vqgan", {}) else vocab - 1001)
    if vocab != codebook + 1001:
        raise CheckpointFormatError(f"{what}: vocabulary {vocab} is not codebook {codebook} + 1000 classes + [MASK]")
    depth = {int(m.group(1)) for k in own for m in [re.match(r"blocks\.(\d+)\.", k)] if m}
    ddepth = {int(m.group(1)) for k in own for m in [re.match(r"decoder_blocks\.(\d+)\.", k)] if m}
    args = _args_dict(ckpt) or {}
    arch = args.get("model") if isinstance(args.get("model"), str) else None
    heads, heads_src = _mage_heads(D, False, arch, num_heads)
    dheads, dheads_src = _mage_heads(Dd, True, arch, decoder_num_heads)
    if "latent_prior_proj.weight" in own:
        cond, num_classes = "rep", 0
    elif "class_emb.weight" in own:
        cond, num_classes = "class", own["class_emb.weight"].shape[0]
    else:
        cond, num_classes = "none", 0
    if args.get("use_rep") is not None and bool(args["use_rep"]) != (cond == "rep"):
        raise CheckpointFormatError(f"{what}: args.use_rep={args['use_rep']} but the weights say cond={cond!r}")
    rep_dim = own["fake_latent"].shape[1] if "fake_latent" in own else 256
    if cond != "class":
        _shape(own, "fake_latent", what)
    ratios = {k: float(args[k]) for k in ("mask_ratio_min", "mask_ratio_max", "mask_ratio_mu", "mask_ratio_std")
              if args.get(k) is not None}
    cfg = MAGEConfig(codebook_size=codebook, num_tokens=num_tokens, vocab_size=vocab, mask_token_id=vocab - 1,
                     cond_token_id=codebook + 1100 - 1024, embed_dim=D, depth=len(depth), num_heads=heads,
                     decoder_embed_dim=Dd, decoder_depth=len(ddepth), decoder_num_heads=dheads,
                     mlp_ratio=_shape(own, "blocks.0.mlp.fc1.weight", what)[0] / D, rep_dim=rep_dim, cond=cond,
                     num_classes=num_classes, rep_drop_prob=float(args.get("rep_drop_prob") or 0.0), **ratios,
                     drop_ratio=ratios.get("mask_ratio_min", 0.5))
    ours, dropped = {}, []
    for k, v in own.items():
        if k in _MAGE_UNUSED or k.startswith(_MAGE_UNUSED_PREFIXES) or (k == "fake_latent" and cond == "class"):
            dropped.append(k)
        else:
            ours["null_rep" if k == "fake_latent" else k] = v
    if cond == "none":        # slot 0 = LayerNorm(word[slot-0 id] + pos[0]) as a constant projection
        ln = torch.nn.functional.layer_norm(
            own["token_emb.word_embeddings.weight"][cfg.cond_id] + own["token_emb.position_embeddings.weight"][0],
            (D,), own["token_emb.LayerNorm.weight"], own["token_emb.LayerNorm.bias"], eps=1e-6)
        ours["latent_prior_proj.weight"] = torch.zeros(D, rep_dim)
        ours["latent_prior_proj.bias"] = ln
    model = MAGE(cfg)
    _load_strict(model, ours, what)
    info: Dict[str, Any] = {
        "kind": "mage", "config": asdict(cfg), "num_heads_from": heads_src, "decoder_num_heads_from": dheads_src,
        "ema": used_ema, "epoch": ckpt.get("epoch"), "dropped": sorted(dropped),
        "has_vqgan": "vqgan" in parts, "has_encoder": "pretrained_encoder" in parts, "args": args or None,
        "sampling": {ours_k: args[k] for k, ours_k in (("temp", "temperature"), ("num_iter", "steps"),
                                                       ("cfg", "guidance")) if k in args}}
    return model.eval(), info


# ----------------------------------------------------------------------------------------------
# ---- VQGAN (MAGE tokenizer)
# ----------------------------------------------------------------------------------------------
_VQ_PREFIXES = ("", "vqgan.", "module.vqgan.")


def vqgan_from_official(path_or_dict: PathOrDict, resolution: int = 256,
                        num_groups: int = 32) -> Tuple[torch.nn.Module, dict]:
    """MAGE's VQGAN file (``{"state_dict": VQModel.state_dict()}``, what ``VQModel(ckpt_path=...)`` reads, as
    ``vqgan_jax_strongaug.ckpt``), a plain VQModel state dict, or the ``vqgan.*`` weights inside an official MAGE
    file -> (:class:`rcg.tokenizer.VQModel` in eval mode, info).

    ch, ch_mult, num_res_blocks, z_channels, embed_dim, n_embed and in/out channels come from the weights;
    ``resolution`` (not stored; only fixes ``token_grid``) and ``num_groups`` (official 32) are arguments.
    Only the JAX-converted MaskGIT variant exists here: attention blocks or quant_conv are refused."""
    from .tokenizer import VQConfig, VQModel

    ckpt = _checkpoint(path_or_dict)
    sd = ckpt.get("state_dict", ckpt.get("model", ckpt))
    if not isinstance(sd, Mapping):
        raise CheckpointFormatError(f"not a VQGAN checkpoint: 'state_dict' is a {type(sd).__name__}")
    prefix = next((p for p in _VQ_PREFIXES if p + "quantize.embedding.weight" in sd), None)
    if prefix is None:
        raise CheckpointFormatError(f"not a VQGAN checkpoint: no '*quantize.embedding.weight' "
                                    f"(found e.g. {sorted(sd)[:8]})")
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    dropped = sorted(k for k in sd if k.startswith("loss."))     # taming training files: LPIPS / discriminator
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    what = "VQGAN checkpoint"
    extra = sorted(k for k in sd if ".attn" in k or k.startswith(("quant_conv.", "post_quant_conv.")))
    if extra:
        raise CheckpointFormatError(f"{what}: has {extra[:3]}: a taming VQGAN with attention / quant_conv, not the "
                                    f"JAX-converted MaskGIT VQGAN that MAGE uses; not supported")
    ch, in_channels = _shape(sd, "encoder.conv_in.weight", what)[:2]
    # levels: encoder.down.i / decoder.up.i (with num_res_blocks 0 only the decoder's upsample convs exist)
    found = {int(m.group(1)) for k in sd for m in [re.match(r"(?:encoder\.down|decoder\.up)\.(\d+)\.", k)] if m}
    levels = list(range(max(found) + 1 if found else 1))
    num_res_blocks = len({m.group(1) for k in sd for m in [re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)] if m})
    widths = [_shape(sd, f"encoder.down.{i}.block.0.conv1.weight", what)[0] if num_res_blocks
              else _shape(sd, "encoder.mid.block_1.conv1.weight", what)[0] for i in levels]
    if any(w % ch for w in widths):
        raise CheckpointFormatError(f"{what}: level widths {widths} are not multiples of ch={ch}")
    z_channels = _shape(sd, "encoder.conv_out.weight", what)[0]
    n_embed, embed_dim = _shape(sd, "quantize.embedding.weight", what)
    if z_channels != embed_dim:
        raise CheckpointFormatError(f"{what}: z_channels {z_channels} != embed_dim {embed_dim} (needs a quant_conv)")
    cfg = VQConfig(in_channels=in_channels, out_channels=_shape(sd, "decoder.conv_out.weight", what)[0], ch=ch,
                   ch_mult=tuple(w // ch for w in widths), num_res_blocks=num_res_blocks, z_channels=z_channels,
                   embed_dim=embed_dim, n_embed=n_embed, resolution=resolution, num_groups=num_groups)
    model = VQModel(cfg)
    _load_strict(model, sd, what)
    info = {"kind": "vqgan", "config": asdict(cfg), "prefix": prefix, "dropped": dropped,
            "token_grid": model.token_grid}
    return model.eval(), info
