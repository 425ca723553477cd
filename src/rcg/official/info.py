"""What an official file is (``rcg info``): its kind from the key layout, architecture, parameter counts, EMA,
epoch and the sub-models inside it."""
import os
from typing import Any, Dict, Mapping, Optional

import torch

from ..encoders import Encoder
from ..tree import to_dict
from .dit import dit_from_official
from .load import (CheckpointFormatError, PathOrDict, _args_dict, _checkpoint, _nparams, _weights,
                   _with_heads)
from .mage import (_VQ_PREFIXES, _mage_submodels, mage_from_official, matching_mage_preset, split_mage_checkpoint,
                   vqgan_from_official)
from .mocov3 import mocov3_from_official
from .rdm import _NET, rdm_from_official

KINDS = ("mocov3", "rdm", "mage", "vqgan", "dit")
# fixed (requires_grad=False) tables and buffers among the official MAGE keys: not "trainable parameters"
_MAGE_FIXED = ("pos_embed", "decoder_pos_embed", "token_emb.position_ids")
_UNKNOWN = "unknown (not stored; pass num_heads)"


def _h(heads: int, known: bool) -> str:
    return f" ({heads} heads)" if known else ""


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


def _encoder_summary(enc: Encoder, einfo: dict) -> dict:
    c = enc.cfg
    return {"kind": "mocov3", "params": _nparams(enc), "backbone_params": _nparams(enc.backbone),
            "projector_params": _nparams(enc.head), "num_heads_from": einfo.get("num_heads_from"),
            "architecture": f"ViT {c.embed_dim} wide, {c.depth} deep, {c.num_heads} heads, patch {c.patch_size}, "
                            f"{c.img_size} px; projector {c.proj_layers} layers {c.mlp_dim} -> {c.rep_dim}",
            "config": to_dict(c)}


def _vq_summary(vq: torch.nn.Module, vinfo: dict) -> dict:
    c = vq.cfg
    f = 2 ** (len(c.ch_mult) - 1)
    return {"kind": "vqgan", "params": _nparams(vq), "token_grid": vq.token_grid, "downsampling": f,
            "architecture": f"VQGAN f{f}: ch {c.ch} x {list(c.ch_mult)}, {c.num_res_blocks} res blocks per level, "
                            f"codebook {c.n_embed} x {c.embed_dim}, {vq.token_grid}x{vq.token_grid} tokens at "
                            f"{c.resolution} px", "dropped": vinfo.get("dropped", []), "config": to_dict(c)}


def _dit_summary(ckpt: Mapping[str, Any], num_heads: Optional[int]) -> dict:
    model, di, heads_known = _with_heads(dit_from_official, ckpt, False, num_heads=num_heads)
    c = model.cfg
    official = sum(v.numel() for k, v in _weights(ckpt).items() if torch.is_tensor(v) and k != "pos_embed")
    cond = {"rep": f"representation-conditioned ({c.rep_dim}-d)", "class": f"{c.num_classes} classes",
            "none": "unconditional"}[c.cond]
    return {"params": _nparams(model), "official_trainable_params": official, "cond": c.cond,
            "class_conditional": c.cond == "class" and c.num_classes > 1, "ema": di["ema"], "config": to_dict(c),
            "dropped": di["dropped"], "dit_model": di["dit_model"], "sampling": di["sampling"],
            "pos_embed_is_sincos": di["pos_embed_is_sincos"], "num_heads": c.num_heads if heads_known else None,
            "num_heads_from": di["num_heads_from"] if heads_known else _UNKNOWN,
            "architecture": f"DiT {c.hidden_size} wide, {c.depth} deep{_h(c.num_heads, heads_known)}, patch "
                            f"{c.patch_size} on {c.input_size}x{c.input_size}x{c.in_channels}, {c.out_channels} out "
                            f"({'learned sigma' if c.learn_sigma else 'eps only'}), {cond}"}


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
                    ema=ri["ema"], config=to_dict(c), diffusion=ri.get("diffusion"),
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
        model, mi, heads_known = _with_heads(mage_from_official, ckpt, False, num_heads=num_heads,
                                            decoder_num_heads=decoder_num_heads)
        c = model.cfg
        own = split_mage_checkpoint(_weights(ckpt)).get("mage", {})
        official = sum(v.numel() for k, v in own.items() if torch.is_tensor(v) and k not in _MAGE_FIXED)
        info.update(params=_nparams(model), official_trainable_params=official, cond=c.cond,
                    class_conditional=c.cond == "class", ema=mi["ema"], config=to_dict(c), dropped=mi["dropped"],
                    paper_preset=matching_mage_preset(c), sampling=mi["sampling"],
                    num_heads=c.num_heads if heads_known else None,
                    decoder_num_heads=c.decoder_num_heads if heads_known else None,
                    num_heads_from=mi["num_heads_from"] if heads_known else _UNKNOWN,
                    architecture=f"MAGE encoder {c.embed_dim} x {c.depth}{_h(c.num_heads, heads_known)}, decoder "
                                 f"{c.decoder_embed_dim} x {c.decoder_depth}{_h(c.decoder_num_heads, heads_known)}, "
                                 f"{c.num_tokens} tokens of {c.codebook_size} codes, {c.cond}-conditioned")
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
