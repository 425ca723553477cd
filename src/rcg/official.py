"""Loaders for the official checkpoint formats (the only module that knows their layouts).

Every file is read by :func:`safe_load`: ``torch.load(weights_only=True)`` with an explicit allow-list
(only ``argparse.Namespace``, which the official scripts pickle under ``args``); nothing is ever
unpickled with ``weights_only=False``. Loaders infer every dimension from the weights, build our
modules and load them strictly, and return ``(module in eval mode, info dict)``.

- :func:`rdm_from_official`: RCG ``util/misc.save_model`` RDM files (``model.diffusion_model.*`` SimpleMLP,
  LitEma shadows ``model_ema.<name without dots>``, ``cond_stage_model.embedding.weight``).
- :func:`mocov3_from_official`: MoCo v3 ``main_moco.py`` files (``module.base_encoder.*``) and the
  ``pretrained_encoder.*`` copy inside RCG files; :func:`mocov3_from_state_dict` for a plain ViT dict.
- :func:`mage_from_official`: RCG MAGE-B/L files (generator keys; ``fake_latent`` -> ``null_rep``; unused
  official parameters dropped); :func:`split_mage_checkpoint` separates the ``vqgan.*`` and
  ``pretrained_encoder.*`` sub-models inside them.
- :func:`vqgan_from_official`: MAGE's VQGAN ``.ckpt`` (``{"state_dict": VQModel}``), or the ``vqgan.*`` copy
  inside a MAGE file.
- :func:`dit_from_official`: RCG DiT files (``main_dit.py``: raw ``model`` / EMA ``model_ema`` state dicts;
  ``fake_latent`` -> ``null_rep``; the unused label table of a rep-conditioned file dropped).
- :func:`detect_kind` / :func:`checkpoint_info` (``rcg info``): which of mocov3, rdm, mage, vqgan, dit a file
  is, its architecture, parameter count, EMA, epoch and sub-models.
- :func:`convert` (``rcg convert``): an official file -> our run directory (``config.json`` +
  ``checkpoint.safetensors``) that ``rcg.stages.load_rdm`` / ``load_encoder`` / ``load_tokenizer`` /
  ``load_pixel`` (DiT: ``rcg.pixel.dit.dit_from_converted``) read (a MAGE file also gives ``encoder/`` and
  ``tokenizer/`` run directories).
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


# ----------------------------------------------------------------------------------------------
# ---- DiT (RCG pixel_generator/dit)
# ----------------------------------------------------------------------------------------------
# official DiT_models sizes: name -> (hidden, heads); every official DiT has these widths
_DIT_SIZES = {"S": (384, 6), "B": (768, 12), "L": (1024, 16), "XL": (1152, 16)}


def _dit_heads(hidden: int, patch: int, name: Optional[str], given: Optional[int]) -> Tuple[int, str]:
    """Heads are not stored in the weights. Rule: the argument; else ``args.dit_model`` ("DiT-XL/2", ...) when its
    width and patch match; else the official table by width {384: 6, 768: 12, 1024: 16, 1152: 16}; else head
    dim 64; else an error (pass num_heads)."""
    if given:
        return given, "argument"
    m = re.fullmatch(r"DiT-(S|B|L|XL)/(\d+)", name or "")
    if m and _DIT_SIZES[m.group(1)][0] == hidden and int(m.group(2)) == patch:
        return _DIT_SIZES[m.group(1)][1], f"dit_model {name!r}"
    widths = dict(_DIT_SIZES.values())
    if hidden in widths:
        return widths[hidden], "width table"
    if hidden % 64 == 0:
        return hidden // 64, "head dim 64"
    raise CheckpointFormatError(f"cannot infer the heads of a {hidden}-wide DiT (dit_model {name!r}); pass num_heads")


def _dit_steps(value) -> int:
    """``--num-sampling-steps`` ("250", "ddim25", 250) -> the number of steps (250 when absent)."""
    digits = re.sub(r"\D", "", str(value)) if value is not None else ""
    return int(digits) if digits else 250


def dit_from_official(path_or_dict: PathOrDict, ema: bool = True,
                      num_heads: Optional[int] = None) -> Tuple[torch.nn.Module, dict]:
    """Official RCG DiT checkpoint (``main_dit.py`` + ``save_model`` with ``ema_params``: ``model`` raw,
    ``model_ema`` a full state dict of EMA values) -> (:class:`rcg.pixel.dit.DiT` in eval mode, info).

    With ``ema`` the ``model_ema`` weights are used when present (``info["ema"]``). Dimensions come from the
    weights: hidden / in channels / patch from ``x_embedder.proj``, the grid from ``pos_embed`` (input size =
    grid x patch), depth from ``blocks.i``, out channels (2 x in = learned sigma) from ``final_layer.linear``;
    heads per :func:`_dit_heads`. Conditioning: ``args.rep_cond`` (else: a ``fake_latent`` is present) gives
    cond="rep" (``fake_latent`` -> ``null_rep``; the unused ``y_embedder`` is dropped); otherwise cond="class"
    with the table's rows (an extra null row when ``args.class_cond`` / more than one row; the official
    unconditional DiT is a 1-class model, exact). The stored ``pos_embed`` table is loaded as is."""
    from .pixel.dit import DiT, DiTConfig, sincos_pos_embed

    ckpt = _checkpoint(path_or_dict)
    raw = _weights(ckpt)
    used_ema = ema and isinstance(ckpt.get("model_ema"), Mapping)
    sd = ckpt["model_ema"] if used_ema else raw
    what = "DiT checkpoint"
    if not isinstance(sd, Mapping) or "x_embedder.proj.weight" not in sd:
        found = sorted(sd)[:8] if isinstance(sd, Mapping) else type(sd).__name__
        raise CheckpointFormatError(f"not an RCG DiT checkpoint: no 'x_embedder.proj.weight' (found e.g. {found})")
    hidden, in_ch, patch, patch_w = _shape(sd, "x_embedder.proj.weight", what)
    n_tok = _shape(sd, "pos_embed", what)[1]
    grid = int(round(n_tok ** 0.5))
    if patch != patch_w or grid * grid != n_tok:
        raise CheckpointFormatError(f"{what}: non-square patches {patch}x{patch_w} or grid of {n_tok} tokens")
    out = _shape(sd, "final_layer.linear.weight", what)[0]
    if out not in (patch * patch * in_ch, 2 * patch * patch * in_ch):
        raise CheckpointFormatError(f"{what}: final layer gives {out} values per token, not p*p*{in_ch} (x 2)")
    depth = len({int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
    args = _args_dict(ckpt) or {}
    name = args.get("dit_model") if isinstance(args.get("dit_model"), str) else None
    heads, heads_src = _dit_heads(hidden, patch, name, num_heads)
    rep_cond = bool(args["rep_cond"]) if args.get("rep_cond") is not None else "fake_latent" in sd
    dims = dict(input_size=grid * patch, patch_size=patch, in_channels=in_ch, hidden_size=hidden, depth=depth,
                num_heads=heads, mlp_ratio=_shape(sd, "blocks.0.mlp.fc1.weight", what)[0] / hidden,
                learn_sigma=out == 2 * patch * patch * in_ch)
    ours: Dict[str, torch.Tensor] = {}
    if rep_cond:
        rep_dim = _shape(sd, "rep_embedder.weight", what)[1]
        cfg = DiTConfig(**dims, rep_dim=rep_dim, cond="rep", rep_drop_prob=0.1 if "fake_latent" in sd else 0.0)
        drop = ("y_embedder.",)
        if "fake_latent" not in sd:       # official rep_dropout_prob = 0: no null representation (no guidance)
            ours["null_rep"] = torch.zeros(1, rep_dim)
    else:
        rows = _shape(sd, "y_embedder.embedding_table.weight", what)[0]
        with_null = bool(args["class_cond"]) if args.get("class_cond") is not None else rows > 1
        if rows - with_null < 1:
            raise CheckpointFormatError(f"{what}: a {rows}-row class table cannot hold a null class")
        cfg = DiTConfig(**dims, cond="class", num_classes=rows - with_null,
                        class_dropout_prob=0.1 if with_null else 0.0)
        drop = ("rep_embedder.", "fake_latent")
    dropped = sorted(k for k in sd if k.startswith(drop))
    ours.update({("null_rep" if k == "fake_latent" else k): v for k, v in sd.items() if not k.startswith(drop)})
    model = DiT(cfg)
    _load_strict(model, ours, what)
    cfg_scale = float(args["cfg"]) if args.get("cfg") is not None else 1.0
    info: Dict[str, Any] = {
        "kind": "dit", "config": asdict(cfg), "num_heads_from": heads_src, "ema": used_ema, "epoch": ckpt.get("epoch"),
        "dropped": dropped, "args": args or None, "dit_model": name,
        "pos_embed_is_sincos": bool(torch.allclose(sd["pos_embed"][0].float(), sincos_pos_embed(hidden, grid),
                                                   rtol=0, atol=1e-6)),
        "sampling": {"steps": _dit_steps(args.get("num_sampling_steps")), "cfg_scale": cfg_scale,
                     "guidance": cfg_scale - 1.0}}
    return model.eval(), info


def _dit_with_heads(ckpt, num_heads, strict_heads: bool):
    """dit_from_official; without ``strict_heads`` a width whose heads cannot be inferred is built with 1 head
    (heads do not change the parameters) and reported as unknown."""
    try:
        return dit_from_official(ckpt, num_heads=num_heads) + (True,)
    except CheckpointFormatError as e:
        if strict_heads or "heads" not in str(e):
            raise
        return dit_from_official(ckpt, num_heads=1) + (False,)


# ----------------------------------------------------------------------------------------------
# ---- what is this file? (rcg info) and official -> run directories (rcg convert)
# ----------------------------------------------------------------------------------------------
KINDS = ("mocov3", "rdm", "mage", "vqgan", "dit")
# fixed (requires_grad=False) tables and buffers among the official MAGE keys: not "trainable parameters"
_MAGE_FIXED = ("pos_embed", "decoder_pos_embed", "token_emb.position_ids")


def _weights(ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("model", "state_dict"):
        if isinstance(ckpt.get(key), Mapping):
            return ckpt[key]
    return ckpt


def detect_kind(ckpt: Mapping[str, Any]) -> str:
    """The official format of a loaded checkpoint dict, from its keys: ``rdm`` (``model.diffusion_model.*``),
    ``mage`` (``token_emb.word_embeddings.weight``), ``dit`` (``x_embedder`` / ``t_embedder``), ``vqgan``
    (``quantize.embedding.weight`` + ``encoder.conv_in.weight``), ``mocov3`` (a ViT: ``*patch_embed.proj.weight``)."""
    sd = _weights(ckpt)
    keys = [k for k in sd if isinstance(k, str)]
    if any(k.startswith(_NET) for k in keys):
        return "rdm"
    if "token_emb.word_embeddings.weight" in sd:
        return "mage"
    if any(k.startswith(("x_embedder.", "t_embedder.")) for k in keys):
        return "dit"
    if any(p + "quantize.embedding.weight" in sd and p + "encoder.conv_in.weight" in sd for p in _VQ_PREFIXES):
        return "vqgan"
    if any(k.endswith("patch_embed.proj.weight") or k.endswith("patch_embed.proj.0.weight") for k in keys):
        return "mocov3"
    raise CheckpointFormatError(f"not an official RCG / MoCo v3 / MAGE VQGAN checkpoint: unknown key layout "
                                f"(found e.g. {sorted(keys)[:8]}); known kinds: {', '.join(KINDS)}")


def _nparams(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _plain(cfg) -> dict:
    from .tree import to_dict
    return to_dict(cfg)


def _encoder_summary(enc: Encoder, einfo: dict) -> dict:
    c = enc.cfg
    return {"kind": "mocov3", "params": _nparams(enc), "backbone_params": _nparams(enc.backbone),
            "projector_params": _nparams(enc.head), "num_heads_from": einfo.get("num_heads_from"),
            "architecture": f"ViT {c.embed_dim} wide, {c.depth} deep, {c.num_heads} heads, patch {c.patch_size}, "
                            f"{c.img_size} px; projector {c.proj_layers} layers {c.mlp_dim} -> {c.rep_dim}",
            "config": _plain(c)}


def _vq_downsampling(sd: Mapping[str, Any]) -> int:
    """2 ** (levels - 1) of a VQModel state dict (prefix stripped), from its encoder.down.i / decoder.up.i keys."""
    levels = {int(m.group(1)) for k in sd for m in [re.match(r"(?:encoder\.down|decoder\.up)\.(\d+)\.", k)] if m}
    return 2 ** max(levels) if levels else 1


def _vq_summary(vq: torch.nn.Module, vinfo: dict) -> dict:
    c = vq.cfg
    f = 2 ** (len(c.ch_mult) - 1)
    return {"kind": "vqgan", "params": _nparams(vq), "token_grid": vq.token_grid, "downsampling": f,
            "architecture": f"VQGAN f{f}: ch {c.ch} x {list(c.ch_mult)}, {c.num_res_blocks} res blocks per level, "
                            f"codebook {c.n_embed} x {c.embed_dim}, {vq.token_grid}x{vq.token_grid} tokens at "
                            f"{c.resolution} px", "dropped": vinfo.get("dropped", []), "config": _plain(c)}


def _mage_with_heads(ckpt, num_heads, decoder_num_heads, strict_heads: bool):
    """mage_from_official; without ``strict_heads`` a width whose heads cannot be inferred is built with 1 head
    (heads do not change the parameters) and reported as unknown."""
    try:
        return mage_from_official(ckpt, num_heads=num_heads, decoder_num_heads=decoder_num_heads) + (True,)
    except CheckpointFormatError as e:
        if strict_heads or "heads" not in str(e):
            raise
        model, info = mage_from_official(ckpt, num_heads=num_heads or 1, decoder_num_heads=decoder_num_heads or 1)
        return model, info, False


def _mage_submodels(ckpt, mage_cfg) -> Dict[str, Tuple[torch.nn.Module, dict]]:
    """The VQGAN and MoCo encoder inside an official MAGE file, built as our modules."""
    parts = split_mage_checkpoint(ckpt)
    out: Dict[str, Tuple[torch.nn.Module, dict]] = {}
    if "vqgan" in parts:
        grid = int(round(mage_cfg.num_tokens ** 0.5))
        out["vqgan"] = vqgan_from_official(parts["vqgan"], resolution=grid * _vq_downsampling(parts["vqgan"]))
    if "pretrained_encoder" in parts:
        args = _args_dict(ckpt) or {}
        arch = args.get("pretrained_enc_arch")
        out["pretrained_encoder"] = mocov3_from_state_dict(parts["pretrained_encoder"],
                                                           arch=arch if isinstance(arch, str) else None)
    return out


def matching_mage_preset(cfg) -> Optional[str]:
    """"mage-b" / "mage-l" when a MAGE config has that preset's encoder/decoder widths and depths, else None."""
    from .pixel.mage import MAGE_PRESETS
    dims = lambda c: (c.embed_dim, c.depth, c.decoder_embed_dim, c.decoder_depth)  # noqa: E731
    return next((n for n in ("mage-b", "mage-l") if dims(MAGE_PRESETS[n]) == dims(cfg)), None)


def _dit_summary(ckpt: Mapping[str, Any], num_heads: Optional[int]) -> dict:
    model, di, heads_known = _dit_with_heads(ckpt, num_heads, strict_heads=False)
    c = model.cfg
    official = sum(v.numel() for k, v in _weights(ckpt).items() if torch.is_tensor(v) and k != "pos_embed")
    cond = {"rep": f"representation-conditioned ({c.rep_dim}-d)", "class": f"{c.num_classes} classes",
            "none": "unconditional"}[c.cond]
    return {"params": _nparams(model), "official_trainable_params": official, "cond": c.cond,
            "class_conditional": c.cond == "class" and c.num_classes > 1, "ema": di["ema"], "config": _plain(c),
            "dropped": di["dropped"], "dit_model": di["dit_model"], "sampling": di["sampling"],
            "pos_embed_is_sincos": di["pos_embed_is_sincos"], "num_heads": c.num_heads if heads_known else None,
            "num_heads_from": di["num_heads_from"] if heads_known else "unknown (not stored; pass num_heads)",
            "architecture": f"DiT {c.hidden_size} wide, {c.depth} deep"
                            + (f" ({c.num_heads} heads)" if heads_known else "")
                            + f", patch {c.patch_size} on {c.input_size}x{c.input_size}x{c.in_channels}, "
                              f"{c.out_channels} out ({'learned sigma' if c.learn_sigma else 'eps only'}), {cond}"}


def checkpoint_info(path_or_dict: PathOrDict, num_heads: Optional[int] = None,
                    decoder_num_heads: Optional[int] = None) -> dict:
    """What an official checkpoint is (``rcg info``): ``kind`` (mocov3, rdm, mage, vqgan, dit), ``supported``,
    ``architecture`` (one line), ``params`` (of the module we load), ``config`` (ours, every dimension from the
    file), ``class_conditional``, ``ema`` (EMA weights present: RDM LitEma shadows, a MAGE/DiT ``model_ema``),
    ``epoch``, ``submodels`` (the MoCo encoder inside RDM/MAGE files, the VQGAN inside MAGE files) and per-kind
    details. Read with :func:`safe_load` (an unsafe pickle raises :class:`UnsafeCheckpointError`); the file is
    loaded once and each module is built, loaded strictly, counted and freed. Heads are not stored in the
    weights: ``num_heads`` / ``decoder_num_heads`` override the inference rules, and a width they cannot
    decide is reported as ``num_heads: None`` (the counts do not depend on it)."""
    ckpt = _checkpoint(path_or_dict)
    kind = detect_kind(ckpt)
    info: Dict[str, Any] = {"kind": kind, "supported": True, "epoch": ckpt.get("epoch")}
    if not isinstance(path_or_dict, Mapping):
        info.update(path=os.fspath(path_or_dict), bytes=os.path.getsize(path_or_dict))
    if kind == "rdm":
        model, ri = rdm_from_official(ckpt, ema=True)
        c = model.cfg
        info.update(params=_nparams(model), network_params=_nparams(model.net), class_conditional=c.num_classes > 0,
                    ema=ri["ema"], config=_plain(c), diffusion=ri.get("diffusion"),
                    architecture=f"RDM (SimpleMLP) {c.num_res_blocks} blocks x {c.model_channels}, time embedding "
                                 f"{c.time_embed_dim}, representation {c.in_channels}-d, "
                                 + (f"class-conditional ({c.num_classes} classes x {c.class_embed_dim})"
                                    if c.num_classes else "unconditional"))
        info.update({k: ri[k] for k in ("ema_decay", "ema_num_updates") if k in ri})
        del model
        if ri["has_pretrained_encoder"]:
            enc, ei = mocov3_from_official(ckpt)
            info["submodels"] = {"pretrained_encoder": _encoder_summary(enc, ei)}
    elif kind == "mocov3":
        enc, ei = mocov3_from_official(ckpt, num_heads=num_heads)
        sd = _weights(ckpt)
        info.update(_encoder_summary(enc, ei), kind="mocov3", class_conditional=False, ema=False,
                    arch=ei.get("arch"), prefix=ei["prefix"],
                    momentum_encoder=any("momentum_encoder." in k for k in sd),
                    predictor=any(k.startswith(("module.predictor.", "predictor.")) for k in sd))
    elif kind == "mage":
        model, mi, heads_known = _mage_with_heads(ckpt, num_heads, decoder_num_heads, strict_heads=False)
        c = model.cfg
        own = split_mage_checkpoint(_weights(ckpt)).get("mage", {})
        official = sum(v.numel() for k, v in own.items() if torch.is_tensor(v) and k not in _MAGE_FIXED)
        info.update(params=_nparams(model), official_trainable_params=official, cond=c.cond,
                    class_conditional=c.cond == "class", ema=mi["ema"], config=_plain(c), dropped=mi["dropped"],
                    paper_preset=matching_mage_preset(c), sampling=mi["sampling"],
                    num_heads=c.num_heads if heads_known else None,
                    decoder_num_heads=c.decoder_num_heads if heads_known else None,
                    num_heads_from=mi["num_heads_from"] if heads_known else "unknown (not stored; pass num_heads)",
                    architecture=f"MAGE encoder {c.embed_dim} x {c.depth}"
                                 + (f" ({c.num_heads} heads)" if heads_known else "")
                                 + f", decoder {c.decoder_embed_dim} x {c.decoder_depth}"
                                 + (f" ({c.decoder_num_heads} heads)" if heads_known else "")
                                 + f", {c.num_tokens} tokens of {c.codebook_size} codes, {c.cond}-conditioned")
        del model
        info["submodels"] = {}
        for name, (m, si) in _mage_submodels(ckpt, c).items():
            info["submodels"][name] = _vq_summary(m, si) if name == "vqgan" else _encoder_summary(m, si)
    elif kind == "vqgan":
        vq, vi = vqgan_from_official(ckpt)
        info.update(_vq_summary(vq, vi), kind="vqgan", class_conditional=False, ema=False, prefix=vi["prefix"])
        info["note"] = "resolution is not stored; 256 px assumed (pass resolution= to convert otherwise)"
    else:
        info.update(_dit_summary(ckpt, num_heads))
    args = _args_dict(ckpt)
    if args:
        keep = ("model", "dit_model", "config", "pretrained_enc_arch", "epochs", "batch_size", "blr", "lr",
                "rdm_steps", "eta", "temp", "num_iter", "cfg", "rep_drop_prob", "mask_ratio_mu", "rep_cond",
                "class_cond", "num_sampling_steps")
        info["args"] = {k: args[k] for k in keep if k in args}
    return info


def format_info(info: dict) -> str:
    """A few readable lines of :func:`checkpoint_info` output (for ``rcg info``)."""
    lines = [f"kind: {info['kind']}" + ("" if info.get("supported", True) else " (not supported yet)"),
             f"architecture: {info.get('architecture', '?')}"]
    if "params" in info:
        lines.append(f"parameters: {info['params']:,} ({info['params'] / 1e6:.2f}M)"
                     + (f"; official trainable incl. unused: {info['official_trainable_params']:,}"
                        if "official_trainable_params" in info else ""))
    lines.append(f"class-conditional: {info.get('class_conditional')}; EMA weights: {info.get('ema')}; "
                 f"epoch: {info.get('epoch')}")
    for name, sub in (info.get("submodels") or {}).items():
        lines.append(f"inside: {name}: {sub['architecture']} ({sub['params']:,} parameters)")
    if info.get("note"):
        lines.append(f"note: {info['note']}")
    return "\n".join(lines)


def _write_run(out, config: dict, tensors: Dict[str, torch.Tensor], meta: dict, source: dict):
    from .store import WEIGHTS, atomic_write, prepare_run_dir, save_tensors
    import json
    run_dir, _ = prepare_run_dir(out, config)
    save_tensors(run_dir / WEIGHTS, tensors, meta)
    atomic_write(run_dir / "official.json", (json.dumps(source, indent=2, default=str) + "\n").encode())
    return run_dir


def convert(path_or_dict: PathOrDict, out_dir, num_heads: Optional[int] = None,
            decoder_num_heads: Optional[int] = None, resolution: Optional[int] = None) -> dict:
    """Official checkpoint -> our run directory (``rcg convert FILE OUT``): ``config.json`` +
    ``checkpoint.safetensors`` (atomic) + ``official.json`` (provenance), read back by our loaders:

    - RDM -> a ``load_rdm`` directory: ``RDMRun`` (EMA weights when present, sampler DDIM 250 steps / eta 1,
      schedule read from the file's buffers, the paper's training recipe) + ``encoder_fingerprint`` of the MoCo
      encoder inside the file (its ``encoder`` field names the official file, which ``load_encoder`` reads).
    - MoCo v3 -> a ``load_encoder`` directory (``EncoderRun``: the ``mocov3-vit-*`` recipe of that width, data at
      256 px as RCG feeds the encoder).
    - VQGAN -> a ``load_tokenizer`` directory (``TokenizerRun``, metadata kind ``rcg-tokenizer``); ``resolution``
      (not stored in the file) defaults to 256.
    - MAGE -> a ``load_pixel`` directory (``PixelRun``: cond from the weights; sampling defaults of the matching
      paper preset, mage-b: 20 steps / temperature 6 / tau 1, mage-l: 20 / 11 / 6, else the file's ``args``)
      whose ``encoder`` / ``tokenizer`` point at ``out_dir/encoder`` and ``out_dir/tokenizer``, written from the
      sub-models inside the file, with their fingerprints.
    - DiT -> a directory that :func:`rcg.pixel.dit.dit_from_converted` reads (``DiTRun``: the network, EMA
      weights when present; the official sampling recipe, steps from ``args.num_sampling_steps``, guidance
      tau = ``args.cfg`` - 1 with the official first-3-channels guidance; SD-VAE latents for 4 channels).
      The MoCo encoder is not inside DiT files: ``encoder`` stays empty.

    Nothing is written before the file has been read safely and every module loaded strictly. A directory
    holding a different config is refused (rerunning the same conversion overwrites it). Returns a summary."""
    from dataclasses import replace
    from pathlib import Path
    from .config import DiffusionConfig, PixelRun
    from .presets import ENCODER_PRESETS, PIXEL_PRESETS, RDM_RUN_PRESETS, TOKENIZER_PRESETS
    from .tree import to_dict
    from .encoders import fingerprint
    from .stages import TOKENIZER_KIND

    ckpt = _checkpoint(path_or_dict)
    kind = detect_kind(ckpt)
    src_name = "<dict>" if isinstance(path_or_dict, Mapping) else str(Path(path_or_dict).resolve())
    source = {"source": src_name, "kind": kind, "epoch": ckpt.get("epoch"), "args": _args_dict(ckpt)}
    out = Path(out_dir)
    meta = {"converted_from": f"official {kind}", "source": os.path.basename(src_name)}

    def encoder_run(enc: Encoder) -> dict:
        base = ENCODER_PRESETS[{384: "mocov3-vit-s", 1024: "mocov3-vit-l"}.get(enc.cfg.embed_dim, "mocov3-vit-b")]
        return to_dict(replace(base, encoder=enc.cfg, data=replace(base.data, resolution=256)))

    def tokenizer_run(vq) -> dict:
        base = TOKENIZER_PRESETS["vqgan-f16-1024"]
        data = dict(resolution=vq.cfg.resolution, channels=vq.cfg.in_channels)
        return to_dict(replace(base, model=vq.cfg, data=replace(base.data, **data),
                               eval_data=replace(base.eval_data, **data)))

    if kind == "rdm":
        model, ri = rdm_from_official(ckpt, ema=True)
        d = ri.get("diffusion")
        if d is not None and not d["schedule_matches"]:
            raise CheckpointFormatError(f"the file's diffusion schedule is not RCG's scaled-linear one ({d}); "
                                        f"our sampler would not reproduce it")
        diff = DiffusionConfig(num_steps=d["num_steps"], beta_start=d["beta_start"], beta_end=d["beta_end"]) \
            if d is not None else DiffusionConfig()
        preset = RDM_RUN_PRESETS["rdm-l12-w1536-cls1000" if model.cfg.num_classes else "rdm-l12-w1536"]
        cfg = replace(preset, model=model.cfg, class_cond=model.cfg.num_classes > 0, diffusion=diff,
                      encoder=src_name if ri["has_pretrained_encoder"] else "", sample_steps=250, eta=1.0)
        config = to_dict(cfg)
        if ri["has_pretrained_encoder"]:
            config["encoder_fingerprint"] = fingerprint(mocov3_from_official(ckpt)[0])
        _write_run(out, config, model.state_dict(), {**meta, "ema": ri["ema"]}, {**source, "ema": ri["ema"]})
        runs = {"rdm": str(out)}
        params = _nparams(model)
    elif kind == "mocov3":
        enc, ei = mocov3_from_official(ckpt, num_heads=num_heads)
        _write_run(out, encoder_run(enc), enc.state_dict(), meta, {**source, "num_heads_from": ei["num_heads_from"]})
        runs, params = {"encoder": str(out)}, _nparams(enc)
    elif kind == "vqgan":
        vq, vi = vqgan_from_official(ckpt, resolution=resolution or 256)
        _write_run(out, tokenizer_run(vq), vq.state_dict(), {**meta, "kind": TOKENIZER_KIND}, source)
        runs, params = {"tokenizer": str(out)}, _nparams(vq)
    elif kind == "dit":
        from .pixel.dit import DiTRun
        model, di, _ = _dit_with_heads(ckpt, num_heads, strict_heads=True)
        cfg = DiTRun(model=model.cfg, steps=di["sampling"]["steps"], guidance=di["sampling"]["guidance"],
                     autoencoder=DiTRun.autoencoder if model.cfg.in_channels == 4 else "")
        _write_run(out, to_dict(cfg), model.state_dict(), {**meta, "ema": di["ema"]},
                   {**source, "ema": di["ema"], "num_heads_from": di["num_heads_from"], "dropped": di["dropped"]})
        runs, params = {"pixel": str(out)}, _nparams(model)
    else:
        model, mi, _ = _mage_with_heads(ckpt, num_heads, decoder_num_heads, strict_heads=True)
        subs = _mage_submodels(ckpt, model.cfg)
        base = out.resolve()
        fps, runs = {}, {}
        for name, sub_dir in (("pretrained_encoder", "encoder"), ("vqgan", "tokenizer")):
            if name not in subs:
                continue
            m = subs[name][0]
            cfg_dict = encoder_run(m) if name == "pretrained_encoder" else tokenizer_run(m)
            extra = {"kind": TOKENIZER_KIND} if name == "vqgan" else {}
            _write_run(out / sub_dir, cfg_dict, m.state_dict(), {**meta, **extra, "submodel": name},
                       {**source, "submodel": name})
            fps[f"{sub_dir}_fingerprint"] = fingerprint(m)
            runs[sub_dir] = str(base / sub_dir)
        preset = matching_mage_preset(model.cfg)
        args = _args_dict(ckpt) or {}
        if preset is not None:
            p = PIXEL_PRESETS[preset]
            sampling = dict(steps=p.steps, temperature=p.temperature, guidance=p.guidance)
        else:
            sampling = {k: conv(args[a]) for a, k, conv in (("num_iter", "steps", int), ("temp", "temperature", float),
                                                            ("cfg", "guidance", float)) if args.get(a) is not None}
        cfg = PixelRun(generator="mage", encoder=runs.get("encoder", ""), tokenizer=runs.get("tokenizer", ""),
                       model=model.cfg, optim=PIXEL_PRESETS[preset or "mage-b"].optim, **sampling)
        _write_run(out, {**to_dict(cfg), **{k: fps.get(k) for k in ("encoder_fingerprint", "tokenizer_fingerprint")}},
                   model.state_dict(), {**meta, "ema": mi["ema"]},
                   {**source, "ema": mi["ema"], "num_heads_from": mi["num_heads_from"],
                    "decoder_num_heads_from": mi["decoder_num_heads_from"], "dropped": mi["dropped"],
                    "paper_preset": preset})
        runs = {"pixel": str(out), **runs}
        params = _nparams(model)
    loader = {"rdm": "rcg.stages.load_rdm", "mocov3": "rcg.stages.load_encoder",
              "vqgan": "rcg.stages.load_tokenizer", "mage": "rcg.stages.load_pixel",
              "dit": "rcg.pixel.dit.dit_from_converted"}[kind]
    return {"kind": kind, "out": str(out), "runs": runs, "params": params, "load_with": loader,
            "source": src_name}
