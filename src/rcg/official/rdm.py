"""RCG RDM files (``util/misc.save_model``): the ``model.diffusion_model.*`` SimpleMLP, LitEma shadows
``model_ema.<name without dots>``, the class embedding ``cond_stage_model.embedding.weight``."""
import re
from dataclasses import asdict
from typing import Any, Dict, Mapping, Tuple

import torch

from ..diffusion import GaussianDiffusion
from ..rdm import RDM, RDMConfig
from .load import (CheckpointFormatError, PathOrDict, _args_dict, _checkpoint, _indices, _lit_ema_weights, _load_strict,
                   _not_a, _shape, _strip)

_NET = "model.diffusion_model."


def rdm_from_official(path_or_dict: PathOrDict, ema: bool = True) -> Tuple[RDM, dict]:
    """Official RCG RDM checkpoint -> (RDM in eval mode, info). With ``ema`` the LitEma shadow weights
    (the ones official sampling uses) are loaded when present; ``info["ema"]`` says whether they were."""
    ckpt = _checkpoint(path_or_dict)
    sd = ckpt.get("model", ckpt.get("state_dict", ckpt))
    if not isinstance(sd, Mapping) or not any(k.startswith(_NET) for k in sd):
        raise _not_a("an RCG RDM checkpoint", f"'{_NET}*' weights under 'model'", sd)
    what = "RDM checkpoint"
    model_channels, in_channels = _shape(sd, _NET + "input_proj.weight", what)
    time_embed_dim = _shape(sd, _NET + "time_embed.0.weight", what)[0]
    bottleneck = _shape(sd, _NET + "res_blocks.0.in_layers.2.weight", what)[0]
    out_channels = _shape(sd, _NET + "out.2.weight", what)[0]
    if out_channels != in_channels:
        raise CheckpointFormatError(f"{what}: out_channels {out_channels} != in_channels {in_channels}")
    blocks = _indices(sd, re.escape(_NET) + r"res_blocks\.(\d+)\.")
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
    ours = {"net." + k: v for k, v in _strip(sd, _NET).items()}
    if num_classes:
        ours["class_embed.weight"] = emb
    _load_strict(model, ours, what)

    # LitEma shadows: "model_ema." + ("diffusion_model." + name).replace(".", "")
    shadows = _lit_ema_weights(sd, model.net, "diffusion_model.", what) if ema else {}
    used_ema = bool(shadows)
    if used_ema:
        _load_strict(model.net, shadows, what + " (EMA)")
    info: Dict[str, Any] = {"kind": "rdm", "config": asdict(cfg), "ema": used_ema, "epoch": ckpt.get("epoch"),
                            "has_pretrained_encoder": any(k.startswith("pretrained_encoder.") for k in sd),
                            "args": _args_dict(ckpt)}
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
    return model.eval(), info
