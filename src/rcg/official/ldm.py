"""RCG LDM files (``main_ldm.py`` + ``util/misc.save_model``) -> our :class:`rcg.pixel.ldm.LDM`.

The file's ``model`` is the whole ``LatentDiffusion.state_dict()``: 12 schedule buffers (``betas``,
``alphas_cumprod``, ...), the U-Net ``model.diffusion_model.*``, LitEma shadows ``model_ema.<name relative to
model, dots removed>`` (+ ``decay``, ``num_updates``), the frozen VQ first stage ``first_stage_model.*``, the class
embedder ``cond_stage_model.embedding.weight`` (unused by a rep-conditioned LDM: dropped) and the frozen MoCo v3
encoder ``pretrained_encoder.*`` (training only; read it with :func:`rcg.official.mocov3_from_official`).
``args.config`` is only a path, so what the tensors do not say comes from ``preset``: a name in
:data:`rcg.pixel.ldm.LDM_PRESETS` (default ``"ldm-8"``, the paper's), an :class:`LDMConfig`, or the official yaml
(as a mapping: ``{"model": {"params": ...}}``, its ``model`` or its ``params``); ``info["sources"]`` says where
each value came from.
"""
from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
import yaml

from ..diffusion import GaussianDiffusion
from ..pixel.ldm import LDM, LDM_DIFFUSION, LDM_PRESETS, LDMConfig
from ..pixel.ldm_autoencoder import FirstStageConfig
from .load import (CheckpointFormatError, PathOrDict, _args_dict, _checkpoint, _indices, _lit_ema_weights,
                   _load_strict, _not_a, _shape, _strip, _weights)

_NET, _FS = "model.diffusion_model.", "first_stage_model."
_UPSTREAM_SCHEDULE = {"timesteps": 1000, "linear_start": 1e-4, "linear_end": 2e-2}   # ldm DDPM defaults
Preset = Union[None, str, LDMConfig, Mapping[str, Any]]


def ldm_yaml(source) -> Preset:
    """The training yaml of an official LDM (``config/ldm/*.yaml``: heads, latent size, scale factor are only
    there) from a path, as a mapping; a preset name, an LDMConfig, a mapping or None pass through."""
    if source is None or isinstance(source, (LDMConfig, Mapping)) or (isinstance(source, str) and source in LDM_PRESETS):
        return source
    path = Path(source)
    if not path.is_file():
        raise CheckpointFormatError(f"no LDM config {source}: pass the training yaml (config/ldm/*.yaml) or a preset "
                                    f"name ({', '.join(sorted(LDM_PRESETS))})")
    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, Mapping):
        raise CheckpointFormatError(f"{path} is not an LDM yaml (no mapping at its top)")
    return loaded


def looks_like_ldm(ckpt: Mapping[str, Any]) -> bool:
    """Whether a loaded checkpoint is an RCG LDM: a U-Net under ``model.diffusion_model.`` and a first stage
    (an RDM file has ``model.diffusion_model.*`` too, but no ``input_blocks`` nor ``first_stage_model``)."""
    sd = _weights(ckpt)
    return isinstance(sd, Mapping) and _NET + "input_blocks.0.0.weight" in sd and any(
        isinstance(k, str) and k.startswith(_FS) for k in sd)


def _defaults(preset: Preset) -> Tuple[dict, str]:
    """(values the tensors do not hold, their source): num_head_channels, num_heads, latent_size, resolution
    (None: from latent_size), scale_factor, timesteps, linear_start, linear_end."""
    src = "the given LDMConfig"
    if preset is None or isinstance(preset, str):
        name = preset or "ldm-8"
        if name not in LDM_PRESETS:
            raise KeyError(f"unknown LDM preset {name!r}; choices: {sorted(LDM_PRESETS)}")
        preset, src = LDM_PRESETS[name], f"preset {name!r}"
    if isinstance(preset, LDMConfig):
        d = LDM_DIFFUSION
        return dict(num_head_channels=preset.num_head_channels, num_heads=preset.num_heads,
                    latent_size=preset.latent_size, resolution=None, scale_factor=preset.scale_factor,
                    timesteps=d["num_steps"], linear_start=d["beta_start"], linear_end=d["beta_end"]), src
    p = _yaml_params(preset)
    unet = p.get("unet_config", {}).get("params", {})
    dd = p.get("first_stage_config", {}).get("params", {}).get("ddconfig", {})
    return (dict(num_head_channels=unet.get("num_head_channels", -1), num_heads=unet.get("num_heads", -1),
                 latent_size=p.get("image_size", unet.get("image_size")), resolution=dd.get("resolution"),
                 scale_factor=float(p.get("scale_factor", 1.0)),
                 **{k: p.get(k, v) for k, v in _UPSTREAM_SCHEDULE.items()}), "yaml")


def _yaml_params(preset: Preset) -> Mapping[str, Any]:
    """The LatentDiffusion ``params`` of an official yaml given whole, as its ``model`` or as ``params``."""
    if not isinstance(preset, Mapping):
        return {}
    p = preset.get("model", preset)
    return p.get("params", p)


def _unet_dims(net: Mapping[str, torch.Tensor], what: str) -> dict:
    """U-Net dimensions read from the ``model.diffusion_model.*`` tensors."""
    mc, in_ch = _shape(net, "input_blocks.0.0.weight", what)[:2]
    if _shape(net, "time_embed.0.weight", what)[0] != 4 * mc:
        raise CheckpointFormatError(f"{what}: time embedding is not 4 x model_channels ({mc})")
    if "label_emb.weight" in net:
        raise CheckpointFormatError(f"{what}: a U-Net with label_emb (num_classes) is not an RCG LDM")
    if _shape(net, "out.2.weight", what)[0] != in_ch:
        raise CheckpointFormatError(f"{what}: out channels differ from in channels {in_ch}")
    if _shape(net, "middle_block.0.emb_layers.1.weight", what)[0] != _shape(net, "middle_block.0.in_layers.2.weight", what)[0]:
        raise CheckpointFormatError(f"{what}: scale-shift ResBlocks (use_scale_shift_norm) are not an RCG LDM")
    inputs = sorted(_indices(net, r"input_blocks\.(\d+)\."))
    levels = 1 + sum(f"input_blocks.{i}.0.op.weight" in net for i in inputs)
    n_out = len(_indices(net, r"output_blocks\.(\d+)\."))
    if n_out % levels:
        raise CheckpointFormatError(f"{what}: {n_out} output blocks for {levels} levels")
    per = n_out // levels                                   # num_res_blocks + 1
    mult = tuple(_shape(net, f"output_blocks.{(levels - 1 - lv) * per}.0.out_layers.3.weight", what)[0] // mc
                 for lv in range(levels))
    attn = sorted({2 ** (levels - 1 - j // per) for j in range(n_out) if f"output_blocks.{j}.1.proj_in.weight" in net})
    block = "middle_block.1.transformer_blocks."
    if f"{block}0.attn2.to_k.weight" not in net:
        raise CheckpointFormatError(f"{what}: no SpatialTransformer in the middle block (not an LDM with "
                                    f"use_spatial_transformer)")
    return dict(model_channels=mc, latent_channels=in_ch, num_res_blocks=per - 1, channel_mult=mult,
                attention_resolutions=tuple(attn), transformer_depth=len(_indices(net, re.escape(block) + r"(\d+)\.")),
                rep_dim=net[f"{block}0.attn2.to_k.weight"].shape[1])


def _first_stage_dims(fs: Mapping[str, torch.Tensor], what: str) -> dict:
    """VQ first-stage dimensions from the ``first_stage_model.*`` tensors (attention levels from the decoder)."""
    ch, in_ch = _shape(fs, "encoder.conv_in.weight", what)[:2]
    levels = len(_indices(fs, r"decoder\.up\.(\d+)\."))
    blocks = len(_indices(fs, r"decoder\.up\.0\.block\.(\d+)\."))
    z = _shape(fs, "decoder.conv_in.weight", what)[1]
    if _shape(fs, "encoder.conv_out.weight", what)[0] != z:
        raise CheckpointFormatError(f"{what}: the encoder gives {fs['encoder.conv_out.weight'].shape[0]} channels "
                                    f"for {z} latent channels (double_z is a KL autoencoder, not RCG's VQ)")
    n_embed, embed_dim = _shape(fs, "quantize.embedding.weight", what)
    return dict(in_channels=in_ch, out_channels=_shape(fs, "decoder.conv_out.weight", what)[0], ch=ch,
                ch_mult=tuple(_shape(fs, f"decoder.up.{i}.block.0.conv2.weight", what)[0] // ch for i in range(levels)),
                num_res_blocks=blocks - 1, z_channels=z, embed_dim=embed_dim, n_embed=n_embed,
                attn_levels=[i for i in range(levels) if f"decoder.up.{i}.attn.0.q.weight" in fs])


def _cond(sd, args: dict, preset: Preset, emb: Optional[torch.Tensor]) -> Tuple[str, str]:
    """(cond, why): rep (a pretrained encoder in the file / the yaml / a repcond config), class or none."""
    params = _yaml_params(preset)
    if "pretrained_enc_config" in params:
        return "rep", "yaml pretrained_enc_config"
    if any(k.startswith("pretrained_encoder.") for k in sd):
        return "rep", "pretrained_encoder weights in the file"
    if "repcond" in str(args.get("config") or ""):
        return "rep", f"args.config {args['config']!r}"
    if emb is None:
        raise CheckpointFormatError("LDM checkpoint: not rep-conditioned and no cond_stage_model.embedding.weight")
    if args.get("class_cond") or params.get("class_cond") or emb.shape[0] > 1:
        return "class", f"a {emb.shape[0]}-class cond_stage_model"
    return "none", "a 1-class cond_stage_model (the unconditional LDM)"


def _schedule(sd, d: dict) -> Tuple[dict, str, Optional[bool]]:
    """(DiffusionConfig fields, source, whether the file's alphas_cumprod is ours)."""
    sched = dict(LDM_DIFFUSION)
    if "betas" in sd:
        betas = sd["betas"].double()
        sched.update(num_steps=len(betas), beta_start=float(f"{float(betas[0]):.6g}"),
                     beta_end=float(f"{float(betas[-1]):.6g}"))
        ours = GaussianDiffusion(**sched).alphas_cumprod
        ok = "alphas_cumprod" in sd and bool(torch.allclose(ours, sd["alphas_cumprod"].float(), rtol=0, atol=1e-6))
        return sched, "schedule buffers", ok
    sched.update(num_steps=int(d["timesteps"]), beta_start=float(d["linear_start"]), beta_end=float(d["linear_end"]))
    return sched, "defaults", None


def ldm_from_official(path_or_dict: PathOrDict, ema: bool = True, preset: Preset = None) -> Tuple[LDM, dict]:
    """Official RCG LDM checkpoint -> (:class:`rcg.pixel.ldm.LDM` in eval mode, info). With ``ema`` the LitEma
    shadows (what official sampling uses, ``ema_scope``) replace the U-Net weights when present (``info["ema"]``).

    From the tensors: U-Net width, levels (``channel_mult``), blocks, attention placement, transformer depth,
    context width, latent channels; first stage (VQModelInterface) width, levels, blocks, attention levels, latent
    and codebook sizes; conditioning (see :func:`_cond`); the schedule from its buffers; ``scale_factor`` from
    its buffer (``scale_by_std``). From ``preset``: heads, latent size (hence the first stage's resolution and
    attention resolutions), ``scale_factor`` when not stored, schedule endpoints without buffers."""
    ckpt = _checkpoint(path_or_dict)
    sd = _weights(ckpt)
    what = "LDM checkpoint"
    if not isinstance(sd, Mapping) or _NET + "input_blocks.0.0.weight" not in sd:
        raise _not_a("an RCG LDM checkpoint", f"'{_NET}input_blocks.0.0.weight' under 'model'", sd)
    net, fs = _strip(sd, _NET), _strip(sd, _FS)
    if not fs:
        raise CheckpointFormatError(f"{what}: no first stage ('{_FS}*')")
    args = _args_dict(ckpt) or {}
    d, src = _defaults(preset)
    u, f = _unet_dims(net, what), _first_stage_dims(fs, what)
    factor = 2 ** (len(f["ch_mult"]) - 1)
    if not (d["resolution"] or d["latent_size"]):
        raise CheckpointFormatError(f"{what}: the preset ({src}) gives neither the latent size (image_size) nor the "
                                    f"first stage's resolution")
    resolution = int(d["resolution"] or d["latent_size"] * factor)
    attn_levels = f.pop("attn_levels")
    first = FirstStageConfig(kind="ldm-vq", **f, resolution=resolution,
                             attn_resolutions=tuple(resolution // 2 ** i for i in attn_levels))
    if u.pop("latent_channels") != first.embed_dim:
        raise CheckpointFormatError(f"{what}: the U-Net takes {net['input_blocks.0.0.weight'].shape[1]} channels, "
                                    f"the first stage makes {first.embed_dim}")
    emb = sd.get("cond_stage_model.embedding.weight")
    cond, cond_why = _cond(sd, args, preset, emb)
    stored_scale = "scale_factor" in sd
    scale = float(sd["scale_factor"]) if stored_scale else float(d["scale_factor"])
    cfg = LDMConfig(**u, num_head_channels=d["num_head_channels"], num_heads=d["num_heads"], cond=cond,
                    num_classes=emb.shape[0] if cond == "class" else 0, scale_factor=scale, first_stage=first)
    for ch in {cfg.model_channels * m for m in cfg.channel_mult}:
        heads = ch // cfg.num_head_channels if cfg.num_head_channels > 0 else cfg.num_heads
        if heads <= 0 or ch % heads:
            raise CheckpointFormatError(f"{what}: {cfg.num_head_channels}-channel heads ({src}) do not fit width {ch}")
    model = LDM(cfg)
    ours = {"diffusion_model." + k: v for k, v in net.items()}
    ours.update({"first_stage_model." + k: v for k, v in fs.items()})
    if cond == "rep":
        ours["null_rep"] = torch.zeros(1, cfg.rep_dim)      # official: no null representation (no guidance)
    else:
        ours["cond_stage_model.embedding.weight"] = emb
    _load_strict(model, ours, what)
    shadows = _lit_ema_weights(sd, model.diffusion_model, "diffusion_model.", what) if ema else {}
    if shadows:
        _load_strict(model.diffusion_model, shadows, what + " (EMA)")
    diffusion, sched_src, matches = _schedule(sd, d)
    encoder_keys = [k for k in sd if k.startswith("pretrained_encoder.")]
    info: Dict[str, Any] = {
        "kind": "ldm", "config": asdict(cfg), "ema": bool(shadows), "epoch": ckpt.get("epoch"), "args": args or None,
        "cond": cond, "cond_from": cond_why, "diffusion": diffusion, "schedule_matches": matches,
        "sampling": {"sampler": "ddim", "steps": int(args.get("ldm_steps") or 200),
                     "eta": float(args["eta"]) if args.get("eta") is not None else 1.0, "guidance": 0.0},
        "sources": {"num_head_channels": src, "latent_size": src if d["resolution"] is None else "yaml resolution",
                    "scale_factor": "scale_factor buffer" if stored_scale else src, "schedule": sched_src,
                    "everything else": "the tensors"},
        "dropped": (["cond_stage_model.embedding.weight"] if cond == "rep" and emb is not None else [])
                   + ([f"pretrained_encoder.* ({len(encoder_keys)} tensors)"] if encoder_keys else []),
        "has_pretrained_encoder": bool(encoder_keys)}
    if "model_ema.decay" in sd:
        info["ema_decay"] = float(sd["model_ema.decay"])
        info["ema_num_updates"] = int(sd.get("model_ema.num_updates", torch.tensor(-1)))
    return model.eval(), info



def ldm_summary(model: LDM, info: dict) -> dict:
    """The ``rcg info`` fields of a loaded LDM (``params``: the trained U-Net; the frozen first stage apart)."""
    c, f = model.cfg, model.cfg.first_stage
    tokens = "context token" if c.context_tokens == 1 else f"rep mapped to {c.context_tokens} context tokens"
    cond = {"rep": f"representation-conditioned ({c.rep_dim}-d {tokens})", "class": f"{c.num_classes} classes",
            "none": "unconditional"}[c.cond]
    return {"params": sum(p.numel() for p in model.diffusion_model.parameters()),
            "first_stage_params": sum(p.numel() for p in model.first_stage_model.parameters()),
            "class_conditional": c.cond == "class", "cond": c.cond, "ema": info["ema"], "config": info["config"],
            "diffusion": info["diffusion"], "sampling": info["sampling"], "dropped": info["dropped"],
            "num_head_channels_from": info["sources"]["num_head_channels"],
            "architecture": f"LDM U-Net {c.model_channels} x {list(c.channel_mult)}, {c.num_res_blocks} res blocks per "
                            f"level, SpatialTransformer (depth {c.transformer_depth}, {c.num_head_channels}-channel "
                            f"heads) at downsampling {list(c.attention_resolutions)}, on {c.latent_size}x"
                            f"{c.latent_size}x{c.latent_channels} latents of a VQ-f{f.downsampling} first stage "
                            f"({f.n_embed} x {f.embed_dim} codes, {f.resolution} px), {cond}"}
