"""Official file -> our run directories (``rcg convert``), one function per kind; each config follows our own
run schema, so the run-directory loaders read a converted file as one of our runs."""
import json
import os
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Mapping, Optional

from ..config import DIT_DIFFUSION, DiffusionConfig, PixelRun
from ..encoders import Encoder
from ..presets import ENCODER_PRESETS, PIXEL_PRESETS, RDM_RUN_PRESETS, TOKENIZER_PRESETS
from ..store import WEIGHTS, atomic_write, fingerprint, prepare_run_dir, save_tensors
from ..tokenizer import TOKENIZER_KIND
from ..tree import to_dict
from .adm import adm_from_official
from .dit import dit_from_official
from .info import detect_kind
from .ldm import ldm_from_official, ldm_yaml
from .load import CheckpointFormatError, PathOrDict, _args_dict, _checkpoint, _nparams
from .mage import _mage_submodels, mage_from_official, matching_mage_preset, vqgan_from_official
from .mocov3 import mocov3_from_official
from .rdm import rdm_from_official

# official kind -> the kind of rcg.loaders.load that reads the converted directory
LOAD_KINDS = {"rdm": "rdm", "mocov3": "encoder", "vqgan": "tokenizer", "mage": "pixel", "dit": "pixel",
              "adm": "pixel", "ldm": "pixel"}


def _write(meta: dict, source: dict, out, config: dict, module, more_meta=None, more_source=None) -> None:
    """One run directory: config.json (refused when it differs), the weights with ``meta``, ``source`` as provenance."""
    run_dir, _ = prepare_run_dir(out, config, PixelRun.upgrade if "generator" in config else None)
    save_tensors(run_dir / WEIGHTS, module.state_dict(), {**meta, **(more_meta or {})})
    text = json.dumps({**source, **(more_source or {})}, indent=2, default=str) + "\n"
    atomic_write(run_dir / "official.json", text.encode())


def _encoder_run(enc: Encoder) -> dict:
    base = ENCODER_PRESETS[{384: "mocov3-vit-s", 1024: "mocov3-vit-l"}.get(enc.cfg.embed_dim, "mocov3-vit-b")]
    return to_dict(replace(base, encoder=enc.cfg, data=replace(base.data, resolution=256)))


def _tokenizer_run(vq) -> dict:
    base = TOKENIZER_PRESETS["vqgan-f16-1024"]
    data = dict(resolution=vq.cfg.resolution, channels=vq.cfg.in_channels)
    return to_dict(replace(base, model=vq.cfg, data=replace(base.data, **data),
                           eval_data=replace(base.eval_data, **data)))


def _rdm(ckpt, out: Path, write, src_name: str, **_):
    model, ri = rdm_from_official(ckpt, ema=True)
    d = ri.get("diffusion")
    if d is not None and not d["schedule_matches"]:
        raise CheckpointFormatError(f"the file's diffusion schedule is not RCG's scaled-linear one ({d}); "
                                    f"our sampler would not reproduce it")
    diff = DiffusionConfig(**{k: d[k] for k in ("num_steps", "beta_start", "beta_end")} if d else {})
    preset = RDM_RUN_PRESETS["rdm-l12-w1536-cls1000" if model.cfg.num_classes else "rdm-l12-w1536"]
    config = to_dict(replace(preset, model=model.cfg, class_cond=model.cfg.num_classes > 0, diffusion=diff,
                             encoder=src_name if ri["has_pretrained_encoder"] else "", sample_steps=250, eta=1.0))
    if ri["has_pretrained_encoder"]:
        config["encoder_fingerprint"] = fingerprint(mocov3_from_official(ckpt)[0])
    write(out, config, model, {"ema": ri["ema"]}, {"ema": ri["ema"]})
    return {"rdm": str(out)}, _nparams(model)


def _mocov3(ckpt, out: Path, write, num_heads=None, **_):
    enc, ei = mocov3_from_official(ckpt, num_heads=num_heads)
    write(out, _encoder_run(enc), enc, more_source={"num_heads_from": ei["num_heads_from"]})
    return {"encoder": str(out)}, _nparams(enc)


def _vqgan(ckpt, out: Path, write, resolution=None, **_):
    vq, _ = vqgan_from_official(ckpt, resolution=resolution or 256)
    write(out, _tokenizer_run(vq), vq, {"kind": TOKENIZER_KIND})
    return {"tokenizer": str(out)}, _nparams(vq)


def _dit(ckpt, out: Path, write, num_heads=None, **_):
    model, di = dit_from_official(ckpt, num_heads=num_heads)
    c, args = model.cfg, di["args"] or {}
    diffusion = replace(DIT_DIFFUSION, num_steps=int(args.get("diffusion_steps") or 1000), learn_sigma=c.learn_sigma)
    cfg = PixelRun(generator="dit", model=c, diffusion=diffusion, steps=di["sampling"]["steps"], sampler="ddpm",
                   guidance=di["sampling"]["guidance"], official_first3=True,
                   autoencoder="stabilityai/sd-vae-ft-ema" if c.in_channels == 4 else "")
    write(out, to_dict(cfg), model, {"ema": di["ema"]},
          {"ema": di["ema"], "num_heads_from": di["num_heads_from"], "dropped": di["dropped"]})
    return {"pixel": str(out)}, _nparams(model)


def adm_run(model, ai: dict) -> PixelRun:
    """The PixelRun of an official ADM: its network, its diffusion and sampler as the file's ``args`` say."""
    s = ai["sampling"]
    return PixelRun(generator="adm", model=model.cfg, diffusion=DiffusionConfig(**s["diffusion"]), steps=s["steps"],
                    sampler=s["sampler"], eta=s["eta"], guidance=0.0)


def _adm(ckpt, out: Path, write, **_):
    model, ai = adm_from_official(ckpt)
    write(out, to_dict(adm_run(model, ai)), model, {"ema": ai["ema"]},
          {"ema": ai["ema"], "num_heads_from": ai["num_heads_from"], "sampling": ai["sampling"]})
    return {"pixel": str(out)}, _nparams(model)


def ldm_run(model, li: dict, encoder: str = "") -> PixelRun:
    """The PixelRun of an official LDM: its U-Net and first stage, its schedule, the official DDIM of its args."""
    s = li["sampling"]
    return PixelRun(generator="ldm", model=model.cfg, diffusion=DiffusionConfig(**li["diffusion"]), encoder=encoder,
                    steps=s["steps"], sampler="ddim", eta=s["eta"], guidance=0.0)


def _ldm(ckpt, out: Path, write, ldm_config=None, **_):
    model, li = ldm_from_official(ckpt, preset=ldm_yaml(ldm_config))
    runs, fps = {}, {}
    if li["has_pretrained_encoder"]:                # the MoCo v3 encoder the LDM trained on, inside the file
        enc, ei = mocov3_from_official(ckpt)
        write(out / "encoder", _encoder_run(enc), enc, {"submodel": "pretrained_encoder"},
              {"submodel": "pretrained_encoder", "num_heads_from": ei["num_heads_from"]})
        runs["encoder"], fps["encoder_fingerprint"] = str(out.resolve() / "encoder"), fingerprint(enc)
    write(out, {**to_dict(ldm_run(model, li, runs.get("encoder", ""))), **fps}, model, {"ema": li["ema"]},
          {"ema": li["ema"], "sources": li["sources"], "dropped": li["dropped"]})
    return {"pixel": str(out), **runs}, _nparams(model)


def _mage(ckpt, out: Path, write, num_heads=None, decoder_num_heads=None, **_):
    model, mi = mage_from_official(ckpt, num_heads=num_heads, decoder_num_heads=decoder_num_heads)
    subs, runs = _mage_submodels(ckpt, model.cfg), {}
    fps = dict.fromkeys(("encoder_fingerprint", "tokenizer_fingerprint"))
    for name, sub, run, meta in (("pretrained_encoder", "encoder", _encoder_run, {}),
                                 ("vqgan", "tokenizer", _tokenizer_run, {"kind": TOKENIZER_KIND})):
        if name in subs:
            m = subs[name][0]
            write(out / sub, run(m), m, {**meta, "submodel": name}, {"submodel": name})
            fps[f"{sub}_fingerprint"] = fingerprint(m)
            runs[sub] = str(out.resolve() / sub)
    preset = matching_mage_preset(model.cfg)
    p = PIXEL_PRESETS.get(preset)               # the paper preset's sampling defaults, else the file's args
    sampling = dict(steps=p.steps, temperature=p.temperature, guidance=p.guidance) if p else \
        {k: (int if k == "steps" else float)(v) for k, v in mi["sampling"].items() if v is not None}
    cfg = PixelRun(generator="mage", encoder=runs.get("encoder", ""), tokenizer=runs.get("tokenizer", ""),
                   model=model.cfg, optim=PIXEL_PRESETS[preset or "mage-b"].optim, **sampling)
    write(out, {**to_dict(cfg), **fps}, model, {"ema": mi["ema"]},
          {"ema": mi["ema"], "num_heads_from": mi["num_heads_from"], "dropped": mi["dropped"],
           "decoder_num_heads_from": mi["decoder_num_heads_from"], "paper_preset": preset})
    return {"pixel": str(out), **runs}, _nparams(model)


def convert(path_or_dict: PathOrDict, out_dir, num_heads: Optional[int] = None,
            decoder_num_heads: Optional[int] = None, resolution: Optional[int] = None, ldm_config=None) -> dict:
    """Official checkpoint -> our run directory (``rcg convert FILE OUT``): ``config.json`` +
    ``checkpoint.safetensors`` (atomic) + ``official.json`` (provenance), read back by ``rcg.loaders.load``:

    - RDM -> an ``rdm`` directory: ``RDMRun`` (EMA weights when present, sampler DDIM 250 steps / eta 1,
      schedule read from the file's buffers, the paper's training recipe) + ``encoder_fingerprint`` of the MoCo
      encoder inside the file (its ``encoder`` field names the official file, which loads as an ``encoder``).
    - MoCo v3 -> an ``encoder`` directory (``EncoderRun``: the ``mocov3-vit-*`` recipe of that width, data at
      256 px as RCG feeds the encoder).
    - VQGAN -> a ``tokenizer`` directory (``TokenizerRun``, metadata kind ``rcg-tokenizer``); ``resolution``
      (not stored in the file) defaults to 256.
    - MAGE -> a ``pixel`` directory (``PixelRun``: cond from the weights; sampling defaults of the matching
      paper preset, mage-b: 20 steps / temperature 6 / tau 1, mage-l: 20 / 11 / 6, else the file's ``args``)
      whose ``encoder`` / ``tokenizer`` point at ``out_dir/encoder`` and ``out_dir/tokenizer``, written from the
      sub-models inside the file, with their fingerprints.
    - DiT -> a ``pixel`` directory (``PixelRun`` with generator ``dit``, as our DiT runs: the network, EMA
      weights when present; the official recipe: linear 1e-4 -> 0.02 eps schedule of ``args.diffusion_steps``
      or 1000 steps, ancestral sampling in ``args.num_sampling_steps`` (250) steps, guidance tau = ``args.cfg``
      - 1 on the first 3 channels (``official_first3``); SD-VAE latents for 4 channels). The MoCo encoder is
      not inside DiT files: ``encoder`` stays empty.
    - ADM -> a ``pixel`` directory (``PixelRun`` with generator ``adm``: the U-Net, EMA weights when present; the
      diffusion and sampler of the file's ``args``: guided-diffusion's linear schedule, learned sigma, respacing
      ``gen_timestep_respacing`` with DDIM when ``use_ddim``). No MoCo encoder inside: ``encoder`` stays empty.
    - LDM -> a ``pixel`` directory (``PixelRun`` with generator ``ldm``: the EMA U-Net and the frozen VQ first stage,
      the schedule of its buffers, the official DDIM with the ``ldm_steps`` / ``eta`` of its args) and, from the
      ``pretrained_encoder`` inside, ``out_dir/encoder``. Head size and latent size are not stored: they come from
      ``ldm_config`` (the training yaml, a path or mapping; ``rcg convert --ldm-config``), else the ``ldm-8``
      preset (the paper's).

    Nothing is written before the file has been read safely and every module loaded strictly. A directory
    holding a different config is refused (rerunning the same conversion overwrites it). Returns a summary."""
    ckpt = _checkpoint(path_or_dict)
    kind = detect_kind(ckpt)
    src_name = "<dict>" if isinstance(path_or_dict, Mapping) else str(Path(path_or_dict).resolve())
    source = {"source": src_name, "kind": kind, "epoch": ckpt.get("epoch"), "args": _args_dict(ckpt)}
    write = partial(_write, {"converted_from": f"official {kind}", "source": os.path.basename(src_name)}, source)
    out = Path(out_dir)
    runs, params = {"rdm": _rdm, "mocov3": _mocov3, "vqgan": _vqgan, "dit": _dit, "mage": _mage, "adm": _adm,
                     "ldm": _ldm}[kind](
        ckpt, out, write, src_name=src_name, num_heads=num_heads, decoder_num_heads=decoder_num_heads,
        resolution=resolution, ldm_config=ldm_config)
    return {"kind": kind, "out": str(out), "runs": runs, "params": params, "source": src_name,
            "load_with": f"rcg.loaders.load({LOAD_KINDS[kind]!r}, {str(out)!r})"}
