"""What an official file is (``rcg info``): its kind from the key layout, architecture, parameter counts, EMA,
epoch and the sub-models inside it."""
import os
from typing import Any, Dict, Mapping, Optional

import torch

from ..encoders import Encoder
from ..tree import to_dict
from .adm import adm_from_official
from .dit import dit_from_official
from .ldm import ldm_from_official, ldm_summary, ldm_yaml, looks_like_ldm
from .load import (CheckpointFormatError, PathOrDict, _args_dict, _checkpoint, _nparams, _weights,
                   _with_heads)
from .mage import (_VQ_PREFIXES, _mage_submodels, mage_from_official, matching_mage_preset, split_mage_checkpoint,
                   vqgan_from_official)
from .mocov3 import mocov3_from_official
from .rdm import _NET, rdm_from_official

KINDS = ("mocov3", "rdm", "mage", "vqgan", "dit", "adm", "ldm")
# fixed (requires_grad=False) tables and buffers among the official MAGE keys: not "trainable parameters"
_MAGE_FIXED = ("pos_embed", "decoder_pos_embed", "token_emb.position_ids")
_UNKNOWN = "unknown (not stored; pass num_heads)"
# the official training / sampling arguments ``checkpoint_info`` reports
_ARGS_SHOWN = ("model", "dit_model", "config", "pretrained_enc_arch", "epochs", "batch_size", "blr", "lr", "rdm_steps",
               "eta", "temp", "num_iter", "cfg", "rep_drop_prob", "mask_ratio_mu", "rep_cond", "class_cond",
               "num_sampling_steps", "ldm_steps", "gen_timestep_respacing", "use_ddim")


def _h(heads: int, known: bool) -> str:
    return f" ({heads} heads)" if known else ""


def detect_kind(ckpt: Mapping[str, Any]) -> str:
    """The official format of a loaded checkpoint dict, from its keys: ``rdm`` (``model.diffusion_model.*``),
    ``mage`` (``token_emb.word_embeddings.weight``), ``dit`` (``x_embedder`` / ``t_embedder``), ``adm`` (a top-level
    guided-diffusion U-Net: ``input_blocks.0.0`` + ``time_embed.0``), ``vqgan``
    (``quantize.embedding.weight`` + ``encoder.conv_in.weight``), ``mocov3`` (a ViT: ``*patch_embed.proj.weight``),
    ``ldm`` (``model.diffusion_model.*`` beside ``first_stage_model.*``)."""
    sd = _weights(ckpt)
    keys = [k for k in sd if isinstance(k, str)]
    if looks_like_ldm(ckpt):                     # its U-Net is under model.diffusion_model.* too, beside a first stage
        return "ldm"
    if any(k.startswith(_NET) for k in keys):
        return "rdm"
    if "token_emb.word_embeddings.weight" in sd:
        return "mage"
    if any(k.startswith(("x_embedder.", "t_embedder.")) for k in keys):
        return "dit"
    if "input_blocks.0.0.weight" in sd and "time_embed.0.weight" in sd:
        return "adm"
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


_SUBMODEL_SUMMARIES = {"vqgan": _vq_summary, "pretrained_encoder": _encoder_summary}


def _generator_summary(loader, ckpt, official_sd: Mapping[str, Any], fixed, **heads) -> tuple:
    """(config, loader info, heads known, the fields MAGE and DiT files share; ``official_trainable_params``:
    the tensors of ``official_sd`` but the ``fixed`` tables and buffers). The generator is counted and freed."""
    model, gi, known = _with_heads(loader, ckpt, **heads)
    c = model.cfg
    official = sum(v.numel() for k, v in official_sd.items() if torch.is_tensor(v) and k not in fixed)
    return c, gi, known, {
        "params": _nparams(model), "official_trainable_params": official, "cond": c.cond, "ema": gi["ema"],
        "config": to_dict(c), "dropped": gi["dropped"], "sampling": gi["sampling"],
        **{k: getattr(c, k) if known else None for k in heads},
        "num_heads_from": gi["num_heads_from"] if known else _UNKNOWN}


def checkpoint_info(path_or_dict: PathOrDict, num_heads: Optional[int] = None,
                    decoder_num_heads: Optional[int] = None, ldm_config=None) -> dict:
    """What an official checkpoint is (``rcg info``): ``kind`` (mocov3, rdm, mage, vqgan, dit), ``supported``,
    ``architecture`` (one line), ``params`` (of the module we load), ``config`` (ours, every dimension from the
    file), ``class_conditional``, ``ema`` (EMA weights present: RDM LitEma shadows, a MAGE/DiT ``model_ema``),
    ``epoch``, ``submodels`` (the MoCo encoder inside RDM/MAGE files, the VQGAN inside MAGE files) and per-kind
    details. Read with :func:`safe_load` (an unsafe pickle raises :class:`UnsafeCheckpointError`); the file is
    loaded once and each module is built, loaded strictly, counted and freed. Heads are not stored in the
    weights: ``num_heads`` / ``decoder_num_heads`` override the inference rules, and a width they cannot
    decide is reported as ``num_heads: None`` (the counts do not depend on it). ``ldm_config``: an LDM's
    training yaml (heads and latent size are only there; default: the paper's ``ldm-8`` values)."""
    ckpt = _checkpoint(path_or_dict)
    kind = detect_kind(ckpt)
    sd = _weights(ckpt)
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
            info["submodels"] = {"pretrained_encoder": _encoder_summary(*mocov3_from_official(ckpt))}
    elif kind == "mocov3":
        enc, ei = mocov3_from_official(ckpt, num_heads=num_heads)
        info.update(_encoder_summary(enc, ei), class_conditional=False, ema=False, arch=ei.get("arch"),
                    prefix=ei["prefix"], momentum_encoder=any("momentum_encoder." in k for k in sd),
                    predictor=any(k.startswith(("module.predictor.", "predictor.")) for k in sd))
    elif kind == "mage":
        c, mi, known, fields = _generator_summary(mage_from_official, ckpt, split_mage_checkpoint(sd).get("mage", {}),
                                                  _MAGE_FIXED, num_heads=num_heads, decoder_num_heads=decoder_num_heads)
        info.update(fields, class_conditional=c.cond == "class", paper_preset=matching_mage_preset(c),
                    architecture=f"MAGE encoder {c.embed_dim} x {c.depth}{_h(c.num_heads, known)}, decoder "
                                 f"{c.decoder_embed_dim} x {c.decoder_depth}{_h(c.decoder_num_heads, known)}, "
                                 f"{c.num_tokens} tokens of {c.codebook_size} codes, {c.cond}-conditioned")
        info["submodels"] = {n: _SUBMODEL_SUMMARIES[n](m, si) for n, (m, si) in _mage_submodels(ckpt, c).items()}
    elif kind == "vqgan":
        vq, vi = vqgan_from_official(ckpt)
        info.update(_vq_summary(vq, vi), class_conditional=False, ema=False, prefix=vi["prefix"],
                    note="resolution is not stored; 256 px assumed (pass resolution= to convert otherwise)")
    elif kind == "ldm":
        model, li = ldm_from_official(ckpt, preset=ldm_yaml(ldm_config))
        info.update(ldm_summary(model, li))
        del model
        if li["has_pretrained_encoder"]:
            info["submodels"] = {"pretrained_encoder": _encoder_summary(*mocov3_from_official(ckpt))}
    elif kind == "adm":
        c, ai, known, fields = _generator_summary(adm_from_official, ckpt, sd, ())
        cond = {"rep": f"representation-conditioned ({c.rep_dim}-d)", "class": f"{c.num_classes} classes",
                "none": "unconditional"}[c.cond]
        info.update(fields, class_conditional=c.cond == "class",
                    architecture=f"ADM U-Net {c.model_channels} x {list(c.channel_mult)}, {c.num_res_blocks} res "
                                 f"blocks per level, attention at downsampling {list(c.attention_resolutions)}, on "
                                 f"{c.image_size}x{c.image_size}x{c.in_channels}, "
                                 f"{'learned sigma' if c.learn_sigma else 'eps only'}, {cond}")
    else:
        c, di, known, fields = _generator_summary(dit_from_official, ckpt, sd, ("pos_embed",), num_heads=num_heads)
        cond = {"rep": f"representation-conditioned ({c.rep_dim}-d)", "class": f"{c.num_classes} classes",
                "none": "unconditional"}[c.cond]
        info.update(fields, class_conditional=c.cond == "class" and c.num_classes > 1, dit_model=di["dit_model"],
                    pos_embed_is_sincos=di["pos_embed_is_sincos"],
                    architecture=f"DiT {c.hidden_size} wide, {c.depth} deep{_h(c.num_heads, known)}, patch "
                                 f"{c.patch_size} on {c.input_size}x{c.input_size}x{c.in_channels}, "
                                 f"{c.out_channels} out ({'learned sigma' if c.learn_sigma else 'eps only'}), {cond}")
    args = _args_dict(ckpt)
    if args:
        info["args"] = {k: args[k] for k in _ARGS_SHOWN if k in args}
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
