"""RCG DiT files (``main_dit.py``: raw ``model`` / EMA ``model_ema`` state dicts; ``fake_latent`` -> ``null_rep``;
the unused label table of a rep-conditioned file dropped) -> our :class:`rcg.pixel.dit.DiT`."""
import re
from dataclasses import asdict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..pixel.dit import DiT, DiTConfig, sincos_pos_embed
from .load import (CheckpointFormatError, PathOrDict, _args_dict, _checkpoint, _heads, _indices, _load_strict, _not_a,
                   _shape, _weights)

# official DiT_models sizes: name -> (hidden, heads); every official DiT has these widths
_DIT_SIZES = {"S": (384, 6), "B": (768, 12), "L": (1024, 16), "XL": (1152, 16)}


def dit_from_official(path_or_dict: PathOrDict, ema: bool = True,
                      num_heads: Optional[int] = None) -> Tuple[torch.nn.Module, dict]:
    """Official RCG DiT checkpoint (``main_dit.py`` + ``save_model`` with ``ema_params``: ``model`` raw,
    ``model_ema`` a full state dict of EMA values) -> (:class:`rcg.pixel.dit.DiT` in eval mode, info).

    With ``ema`` the ``model_ema`` weights are used when present (``info["ema"]``). Dimensions come from the
    weights: hidden / in channels / patch from ``x_embedder.proj``, the grid from ``pos_embed`` (input size =
    grid x patch), depth from ``blocks.i``, out channels (2 x in = learned sigma) from ``final_layer.linear``;
    heads by :func:`rcg.official.load._heads` (``args.dit_model`` "DiT-XL/2" when its width and patch match, the
    official widths {384: 6, 768: 12, 1024: 16, 1152: 16}, head dim 64). Conditioning: ``args.rep_cond`` (else: a ``fake_latent`` is present) gives
    cond="rep" (``fake_latent`` -> ``null_rep``; the unused ``y_embedder`` is dropped); otherwise cond="class"
    with the table's rows (an extra null row when ``args.class_cond`` / more than one row; the official
    unconditional DiT is a 1-class model, exact). The stored ``pos_embed`` table is loaded as is."""
    ckpt = _checkpoint(path_or_dict)
    used_ema = ema and isinstance(ckpt.get("model_ema"), Mapping)
    sd = ckpt["model_ema"] if used_ema else _weights(ckpt)
    what = "DiT checkpoint"
    if not isinstance(sd, Mapping) or "x_embedder.proj.weight" not in sd:
        raise _not_a("an RCG DiT checkpoint", "'x_embedder.proj.weight'", sd)
    hidden, in_ch, patch, patch_w = _shape(sd, "x_embedder.proj.weight", what)
    n_tok = _shape(sd, "pos_embed", what)[1]
    grid = int(round(n_tok ** 0.5))
    if patch != patch_w or grid * grid != n_tok:
        raise CheckpointFormatError(f"{what}: non-square patches {patch}x{patch_w} or grid of {n_tok} tokens")
    out = _shape(sd, "final_layer.linear.weight", what)[0]
    if out not in (patch * patch * in_ch, 2 * patch * patch * in_ch):
        raise CheckpointFormatError(f"{what}: final layer gives {out} values per token, not p*p*{in_ch} (x 2)")
    depth = len(_indices(sd, r"blocks\.(\d+)\."))
    args = _args_dict(ckpt) or {}
    name = args.get("dit_model") if isinstance(args.get("dit_model"), str) else None
    m = re.fullmatch(r"DiT-(S|B|L|XL)/(\d+)", name or "")
    named = (*_DIT_SIZES[m.group(1)], f"dit_model {name!r}") if m and int(m.group(2)) == patch else None
    heads, heads_src = _heads(hidden, num_heads, named, dict(_DIT_SIZES.values()), 64, f"DiT (dit_model {name!r})")
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
    steps = re.sub(r"\D", "", str(args.get("num_sampling_steps") or ""))     # "250", "ddim25", 250 (absent: 250)
    info: Dict[str, Any] = {
        "kind": "dit", "config": asdict(cfg), "num_heads_from": heads_src, "ema": used_ema, "epoch": ckpt.get("epoch"),
        "dropped": dropped, "args": args or None, "dit_model": name,
        "pos_embed_is_sincos": bool(torch.allclose(sd["pos_embed"][0].float(), sincos_pos_embed(hidden, grid),
                                                   rtol=0, atol=1e-6)),
        "sampling": {"steps": int(steps) if steps else 250, "cfg_scale": cfg_scale, "guidance": cfg_scale - 1.0}}
    return model.eval(), info

