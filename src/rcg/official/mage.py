"""RCG MAGE files (generator keys; ``fake_latent`` -> ``null_rep``; unused official parameters dropped) with the
frozen ``vqgan.*`` and ``pretrained_encoder.*`` sub-models inside them, and MAGE's VQGAN ``.ckpt``
(``{"state_dict": VQModel}``)."""
from dataclasses import asdict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..pixel.mage import MAGE, MAGE_PRESETS, MAGEConfig
from ..tokenizer import VQConfig, VQModel
from .load import (CheckpointFormatError, PathOrDict, _args_dict, _checkpoint, _heads, _indices, _load_strict, _not_a,
                   _shape, _strip, _weights)
from .mocov3 import mocov3_from_state_dict
from .rdm import rdm_from_official

# Sub-models an official MAGE file carries beside the generator (frozen, saved by state_dict()).
MAGE_SUBMODELS = ("vqgan", "pretrained_encoder")
# official arch name -> (encoder width, encoder heads, decoder heads)
_MAGE_ARCH = {"mage_vit_base_patch16": (768, 12, 16), "mage_vit_large_patch16": (1024, 16, 16),
              "mage_vit_huge_patch16": (1280, 16, 16)}
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
    """:func:`rcg.official.load._heads` with the official arch name in ``args.model`` (mage_vit_base/large/huge_
    patch16), the official widths (encoder heads {768: 12, 1024: 16, 1280: 16}, decoder 16) and head dim 64."""
    a = _MAGE_ARCH.get(arch)
    table = {d: h[1 if decoder else 0] for d, *h in _MAGE_ARCH.values()}
    return _heads(width, given, a and (a[0], a[2 if decoder else 1], f"arch {arch!r}"), table, 64,
                  f"MAGE {'decoder' if decoder else 'encoder'}", "decoder_num_heads" if decoder else "num_heads")


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
    ckpt = _checkpoint(path_or_dict)
    sd = ckpt.get("model", ckpt)
    used_ema = ema and isinstance(ckpt.get("model_ema"), Mapping)
    parts = split_mage_checkpoint(sd)
    own = split_mage_checkpoint(ckpt["model_ema"] if used_ema else sd).get("mage", {})
    what = "MAGE checkpoint"
    if "token_emb.word_embeddings.weight" not in own or "decoder_pos_embed_learned" not in own:
        raise _not_a("an RCG MAGE checkpoint", "token_emb / decoder weights under 'model'", own)
    vocab, D = _shape(own, "token_emb.word_embeddings.weight", what)
    num_tokens = _shape(own, "token_emb.position_embeddings.weight", what)[0] - 1
    Dd = _shape(own, "decoder_embed.weight", what)[0]
    codebook = (parts["vqgan"]["quantize.embedding.weight"].shape[0]
                if "quantize.embedding.weight" in parts.get("vqgan", {}) else vocab - 1001)
    if vocab != codebook + 1001:
        raise CheckpointFormatError(f"{what}: vocabulary {vocab} is not codebook {codebook} + 1000 classes + [MASK]")
    depth, ddepth = _indices(own, r"blocks\.(\d+)\."), _indices(own, r"decoder_blocks\.(\d+)\.")
    args = _args_dict(ckpt) or {}
    arch = args.get("model") if isinstance(args.get("model"), str) else None
    heads, heads_src = _mage_heads(D, False, arch, num_heads)
    dheads, dheads_src = _mage_heads(Dd, True, arch, decoder_num_heads)
    cond = "rep" if "latent_prior_proj.weight" in own else "class" if "class_emb.weight" in own else "none"
    num_classes = own["class_emb.weight"].shape[0] if cond == "class" else 0
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
    dropped = sorted(k for k in own if k in _MAGE_UNUSED or k.startswith(_MAGE_UNUSED_PREFIXES)
                     or (k == "fake_latent" and cond == "class"))
    ours = {("null_rep" if k == "fake_latent" else k): v for k, v in own.items() if k not in dropped}
    if cond == "none":        # slot 0 = LayerNorm(word[slot-0 id] + pos[0]) as a constant projection
        ours["latent_prior_proj.weight"] = torch.zeros(D, rep_dim)
        ours["latent_prior_proj.bias"] = torch.nn.functional.layer_norm(
            own["token_emb.word_embeddings.weight"][cfg.cond_id] + own["token_emb.position_embeddings.weight"][0],
            (D,), own["token_emb.LayerNorm.weight"], own["token_emb.LayerNorm.bias"], eps=1e-6)
    model = MAGE(cfg)
    _load_strict(model, ours, what)
    info: Dict[str, Any] = {
        "kind": "mage", "config": asdict(cfg), "num_heads_from": heads_src, "decoder_num_heads_from": dheads_src,
        "ema": used_ema, "epoch": ckpt.get("epoch"), "dropped": dropped,
        "has_vqgan": "vqgan" in parts, "has_encoder": "pretrained_encoder" in parts, "args": args or None,
        "sampling": {ours_k: args[k] for k, ours_k in (("temp", "temperature"), ("num_iter", "steps"),
                                                       ("cfg", "guidance")) if k in args}}
    return model.eval(), info


_VQ_PREFIXES = ("", "vqgan.", "module.vqgan.")
_LEVEL = r"(?:encoder\.down|decoder\.up)\.(\d+)\."


def vqgan_from_official(path_or_dict: PathOrDict, resolution: int = 256,
                        num_groups: int = 32) -> Tuple[torch.nn.Module, dict]:
    """MAGE's VQGAN file (``{"state_dict": VQModel.state_dict()}``, what ``VQModel(ckpt_path=...)`` reads, as
    ``vqgan_jax_strongaug.ckpt``), a plain VQModel state dict, or the ``vqgan.*`` weights inside an official MAGE
    file -> (:class:`rcg.tokenizer.VQModel` in eval mode, info).

    ch, ch_mult, num_res_blocks, z_channels, embed_dim, n_embed and in/out channels come from the weights;
    ``resolution`` (not stored; only fixes ``token_grid``) and ``num_groups`` (official 32) are arguments.
    Only the JAX-converted MaskGIT variant exists here: attention blocks or quant_conv are refused."""
    ckpt = _checkpoint(path_or_dict)
    sd = ckpt.get("state_dict", ckpt.get("model", ckpt))
    prefix = (next((p for p in _VQ_PREFIXES if p + "quantize.embedding.weight" in sd), None)
              if isinstance(sd, Mapping) else None)
    if prefix is None:
        raise _not_a("a VQGAN checkpoint", "'*quantize.embedding.weight'", sd)
    sd = _strip(sd, prefix)
    dropped = sorted(k for k in sd if k.startswith("loss."))     # taming training files: LPIPS / discriminator
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    what = "VQGAN checkpoint"
    extra = sorted(k for k in sd if ".attn" in k or k.startswith(("quant_conv.", "post_quant_conv.")))
    if extra:
        raise CheckpointFormatError(f"{what}: has {extra[:3]}: a taming VQGAN with attention / quant_conv, not the "
                                    f"JAX-converted MaskGIT VQGAN that MAGE uses; not supported")
    ch, in_channels = _shape(sd, "encoder.conv_in.weight", what)[:2]
    # levels: encoder.down.i / decoder.up.i (with num_res_blocks 0 only the decoder's upsample convs exist)
    levels = range(max(_indices(sd, _LEVEL), default=0) + 1)
    num_res_blocks = len(_indices(sd, r"encoder\.down\.0\.block\.(\d+)\."))
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


def _mage_submodels(ckpt, mage_cfg) -> Dict[str, Tuple[torch.nn.Module, dict]]:
    """The VQGAN and MoCo encoder inside an official MAGE file, built as our modules."""
    parts = split_mage_checkpoint(ckpt)
    out: Dict[str, Tuple[torch.nn.Module, dict]] = {}
    if "vqgan" in parts:        # resolution = token grid x 2 ** (the VQGAN's levels - 1)
        grid = int(round(mage_cfg.num_tokens ** 0.5))
        levels = _indices(parts["vqgan"], _LEVEL)
        out["vqgan"] = vqgan_from_official(parts["vqgan"], resolution=grid * 2 ** max(levels, default=0))
    if "pretrained_encoder" in parts:
        args = _args_dict(ckpt) or {}
        arch = args.get("pretrained_enc_arch")
        out["pretrained_encoder"] = mocov3_from_state_dict(parts["pretrained_encoder"],
                                                           arch=arch if isinstance(arch, str) else None)
    return out


def matching_mage_preset(cfg) -> Optional[str]:
    """"mage-b" / "mage-l" when a MAGE config has that preset's encoder/decoder widths and depths, else None."""
    dims = lambda c: (c.embed_dim, c.depth, c.decoder_embed_dim, c.decoder_depth)  # noqa: E731
    return next((n for n in ("mage-b", "mage-l") if dims(MAGE_PRESETS[n]) == dims(cfg)), None)


def paper_parts(mage_file: PathOrDict, rdm_file: PathOrDict) -> Dict[str, Any]:
    """An RCG system from its two official files, each read once and freed before the next: ``mage`` / ``mage_info``
    (:func:`mage_from_official`), the ``tokenizer`` (VQGAN) and ``encoder`` (MoCo v3) inside the MAGE file (None
    when absent), ``rdm`` / ``rdm_info`` (:func:`rcg.official.rdm.rdm_from_official`, EMA weights) and
    ``rdm_encoder``: None when the RDM file holds no MoCo encoder copy, else the shapes of its patch embedding and
    first projector layer (``shapes``) beside the MAGE file's (``mage_shapes``) and ``same_weights``."""
    ckpt = _checkpoint(mage_file)
    model, info = mage_from_official(ckpt)
    subs = _mage_submodels(ckpt, model.cfg)
    keys = ("patch_embed.proj.weight", "head.0.weight")
    ref = {k: v for k, v in split_mage_checkpoint(ckpt).get("pretrained_encoder", {}).items() if k in keys}
    out = {"mage": model, "mage_info": info, "tokenizer": subs.get("vqgan", (None,))[0],
           "encoder": subs.get("pretrained_encoder", (None,))[0]}
    del ckpt, subs
    rckpt = _checkpoint(rdm_file)
    out["rdm"], out["rdm_info"] = rdm_from_official(rckpt, ema=True)
    renc = {k: v for k, v in _strip(_weights(rckpt), "pretrained_encoder.").items() if k in keys}
    both = [k for k in keys if k in renc and k in ref]
    out["rdm_encoder"] = None if not renc else {
        "shapes": [tuple(renc[k].shape) for k in both], "mage_shapes": [tuple(ref[k].shape) for k in both],
        "same_weights": all(renc[k].shape == ref[k].shape and torch.equal(renc[k], ref[k]) for k in both)}
    return out
