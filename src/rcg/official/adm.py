"""RCG ADM files (``main_adm.py`` + ``util/misc.save_model``: ``model`` the raw U-Net state dict, ``model_ema`` a full
state dict of the EMA values, ``args`` the namespace describing network and diffusion) -> our :class:`rcg.pixel.adm.ADM`
(fixture README section 6)."""
from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..pixel.adm import ADM, ADMConfig
from .load import CheckpointFormatError, PathOrDict, _args_dict, _checkpoint, _indices, _load_strict, _not_a, _shape, \
    _weights

_WHAT = "ADM checkpoint"


def _parts(sd: Mapping[str, Any], block: str) -> Dict[int, str]:
    """The layers of one ``TimestepEmbedSequential`` (``output_blocks.3``): index -> "res" | "attn" | "conv" | "?"."""
    kinds = {}
    for j in sorted(_indices(sd, re.escape(block) + r"\.(\d+)\.")):
        p = f"{block}.{j}."
        kinds[j] = ("res" if p + "in_layers.0.weight" in sd else "attn" if p + "qkv.weight" in sd else
                    "conv" if p + "conv.weight" in sd or p + "op.weight" in sd else "?")
    return kinds


def _levels(sd: Mapping[str, Any], mc: int) -> dict:
    """channel_mult, num_res_blocks, attention_resolutions (downsample factors) and resblock_updown from the output
    blocks: level l (from the last) has num_res_blocks + 1 blocks, the last of each level but level 0 ends with an
    upsampler (a ResBlock with ``resblock_updown``, else an ``Upsample`` conv); attention sits after the first
    ResBlock of the blocks of an attention level."""
    n_out = len(_indices(sd, r"output_blocks\.(\d+)\."))
    parts = [_parts(sd, f"output_blocks.{k}") for k in range(n_out)]
    ups = [k for k, p in enumerate(parts) if any(j > 0 and kind in ("res", "conv") for j, kind in p.items())]
    nrb = ups[0] if ups else n_out - 1
    L = n_out // (nrb + 1) if n_out else 0
    if not n_out or n_out != L * (nrb + 1) or ups != [(nrb + 1) * j + nrb for j in range(L - 1)]:
        raise CheckpointFormatError(f"{_WHAT}: output blocks {n_out} with upsamplers at {ups} do not form a U-Net")
    mult: List[int] = [0] * L
    attention = set()
    for k, p in enumerate(parts):
        level = L - 1 - k // (nrb + 1)
        width = _shape(sd, f"output_blocks.{k}.0.out_layers.3.weight", _WHAT)[0]
        if width % mc or mult[level] not in (0, width // mc):
            raise CheckpointFormatError(f"{_WHAT}: output block {k} is {width} wide, not a multiple of {mc} per level")
        mult[level] = width // mc
        if p.get(1) == "attn":
            attention.add(2 ** level)
    updown = any(parts[k][max(parts[k])] == "res" for k in ups)
    return dict(channel_mult=tuple(mult), num_res_blocks=nrb, attention_resolutions=tuple(sorted(attention)),
                resblock_updown=updown)


def _arg(args: Mapping[str, Any], key: str, default):
    value = args.get(key)
    return default if value is None else value


def adm_from_official(path_or_dict: PathOrDict, ema: bool = True, image_size: Optional[int] = None,
                      num_head_channels: Optional[int] = None,
                      num_heads: Optional[int] = None) -> Tuple[torch.nn.Module, dict]:
    """Official RCG ADM checkpoint (``main_adm.py``: ``model`` raw, ``model_ema`` the EMA values under the same keys)
    -> (:class:`rcg.pixel.adm.ADM` in eval mode, info). With ``ema`` the ``model_ema`` weights are used when
    present (``info["ema"]``), as ``gen_img(use_ema=True)``.

    From the weights: ``model_channels`` (``time_embed.0``), in / out channels (``input_blocks.0.0``, ``out.2``; out =
    2 x in: learned sigma), levels, ``channel_mult``, ``num_res_blocks``, attention placement and ``resblock_updown``
    (:func:`_levels`), scale-shift norm (``emb_layers`` give 2 C), the condition (``rep_proj`` -> cond "rep" with its
    rep_dim, ``label_emb`` -> cond "class" with its rows, neither -> "none"). Not stored in the weights, from
    ``args`` (arguments override): heads (``num_head_channels``, else ``num_heads`` / ``num_heads_upsample``; no args:
    64 channels per head, RCG's), ``use_new_attention_order`` (default legacy), ``dropout``, ``image_size`` (no args:
    256). Rule for the null representation: the official ADM has none (no dropout, no guidance), so the model is
    built with ``rep_drop_prob = 0`` and no ``null_rep`` parameter; guidance is refused until a model is trained with
    ``rep_drop_prob > 0``. ``info["sampling"]``: :func:`adm_sampling` of the file's ``args``."""
    ckpt = _checkpoint(path_or_dict)
    used_ema = ema and isinstance(ckpt.get("model_ema"), Mapping)
    sd = ckpt["model_ema"] if used_ema else _weights(ckpt)
    if not isinstance(sd, Mapping) or "input_blocks.0.0.weight" not in sd or "time_embed.0.weight" not in sd:
        raise _not_a("an RCG ADM checkpoint", "'input_blocks.0.0.weight' / 'time_embed.0.weight'", sd)
    E, mc = _shape(sd, "time_embed.0.weight", _WHAT)
    ch0, in_ch = _shape(sd, "input_blocks.0.0.weight", _WHAT)[:2]
    out_ch = _shape(sd, "out.2.weight", _WHAT)[0]
    if E != 4 * mc or out_ch not in (in_ch, 2 * in_ch):
        raise CheckpointFormatError(f"{_WHAT}: time embedding {E} for {mc} channels / {out_ch} outputs for {in_ch} "
                                    f"inputs is not a guided-diffusion U-Net")
    levels = _levels(sd, mc)
    if levels["channel_mult"][0] * mc != ch0:
        raise CheckpointFormatError(f"{_WHAT}: first conv gives {ch0} channels, level 0 is {levels['channel_mult']}")
    if "rep_proj.weight" in sd and "label_emb.weight" in sd:
        raise CheckpointFormatError(f"{_WHAT}: both rep_proj and label_emb (rep- and class-conditional): "
                                    f"not supported")
    args = _args_dict(ckpt) or {}
    if num_head_channels or num_heads:
        nhc, heads, heads_from = num_head_channels or -1, num_heads or 4, "argument"
    elif args:
        nhc, heads, heads_from = _arg(args, "num_head_channels", -1), _arg(args, "num_heads", 4), "args"
    elif all(mc * m % 64 == 0 for m in levels["channel_mult"]):
        nhc, heads, heads_from = 64, 4, "RCG default: 64 channels per head"
    else:                                        # heads do not change the parameters: loadable, outputs unknown
        nhc, heads, heads_from = -1, 1, "unknown (not stored, no args; pass num_head_channels)"
    cond = dict(cond="rep", rep_dim=_shape(sd, "rep_proj.weight", _WHAT)[1]) if "rep_proj.weight" in sd else (
        dict(cond="class", num_classes=_shape(sd, "label_emb.weight", _WHAT)[0]) if "label_emb.weight" in sd else
        dict(cond="none"))
    try:
        cfg = ADMConfig(image_size=int(image_size or _arg(args, "image_size", 256)), in_channels=in_ch,
                        model_channels=mc, learn_sigma=out_ch == 2 * in_ch, **levels, num_heads=int(heads),
                        num_head_channels=int(nhc), num_heads_upsample=int(_arg(args, "num_heads_upsample", -1)),
                        use_scale_shift_norm=_shape(sd, "middle_block.0.emb_layers.1.weight", _WHAT)[0]
                        == 2 * mc * levels["channel_mult"][-1],
                        use_new_attention_order=bool(_arg(args, "use_new_attention_order", False)),
                        dropout=float(_arg(args, "dropout", 0.0)), rep_drop_prob=0.0, class_dropout_prob=0.0, **cond)
    except ValueError as e:
        raise CheckpointFormatError(f"{_WHAT}: the inferred architecture is invalid: {e}") from None
    model = ADM(cfg)
    _load_strict(model, sd, _WHAT)
    info: Dict[str, Any] = {
        "kind": "adm", "config": asdict(cfg), "ema": used_ema, "epoch": ckpt.get("epoch"), "args": args or None,
        "dropped": [], "num_heads_from": heads_from,
        "null_rep": "none (official ADM: no representation dropout, no guidance)", "sampling": adm_sampling(args)}
    return model.eval(), info


def adm_sampling(args: Optional[Mapping[str, Any]]) -> dict:
    """The diffusion and sampler of an official ADM from its ``args`` (``create_model_and_diffusion`` +
    ``engine_adm.gen_img``; absent keys: the README training command's values):

    - ``diffusion``: :class:`rcg.config.DiffusionConfig` fields: ``diffusion_steps`` T, guided_diffusion's
      ``linear`` schedule (1e-4 -> 0.02, scaled by 1000 / T), eps (``predict_xstart``: x0), ``learn_sigma``;
    - ``respacing`` (``gen_timestep_respacing``, e.g. "ddim25"), ``use_ddim``, ``clip_denoised`` True, ``eta`` 0;
    - ``sampler`` / ``steps`` in our terms ("ddim" = respacing ``ddim{steps}`` + ``ddim_sample_loop``, "ddpm" =
      respacing ``{steps}`` + ``p_sample_loop``) and ``exact``: whether they reproduce ``respacing`` + ``use_ddim``.
    Schedules other than linear, ``use_kl`` and ``rescale_timesteps`` with T != 1000 raise."""
    a = dict(args or {})
    T = int(_arg(a, "diffusion_steps", 1000))
    schedule = _arg(a, "noise_schedule", "linear")
    if schedule != "linear" or a.get("use_kl") or (a.get("rescale_timesteps") and T != 1000):
        raise CheckpointFormatError(f"ADM diffusion not supported: noise_schedule {schedule!r}, use_kl "
                                    f"{a.get('use_kl')}, rescale_timesteps {a.get('rescale_timesteps')} (T {T})")
    respacing = str(_arg(a, "gen_timestep_respacing", "ddim25") or T)
    use_ddim = bool(_arg(a, "use_ddim", True))
    m = re.fullmatch(r"(ddim)?(\d+)", respacing)
    steps = int(m.group(2)) if m else T
    exact = bool(m) and use_ddim == bool(m.group(1))
    return {"diffusion": dict(num_steps=T, beta_start=1e-4 * 1000 / T, beta_end=0.02 * 1000 / T,
                              parameterization="x0" if a.get("predict_xstart") else "eps", schedule="linear",
                              learn_sigma=bool(_arg(a, "learn_sigma", True))),
            "respacing": respacing, "use_ddim": use_ddim, "clip_denoised": True, "eta": 0.0,
            "sampler": "ddim" if use_ddim else "ddpm", "steps": steps, "exact": exact, "guidance": 0.0}
