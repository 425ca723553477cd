"""The paper's ImageNet 256x256 systems, run from the official released weights.

``PAPER_PRESETS`` names the four RCG systems of the paper (Li, Katabi & He, NeurIPS 2024) built on MAGE:

    preset                    RDM file                      MAGE file    temp  tau  paper FID / IS (tau 0 | tau)
    imagenet-rcg-mage-b       rdm-mocov3vitb.pth            mage-b.pth   6.0   1.0  3.98 / 177.8 | 3.19 / 212.6
    imagenet-rcg-mage-l       rdm-mocov3vitl.pth            mage-l.pth   11.0  6.0  3.44 / 186.9 | 2.15 / 253.4
    imagenet-rcg-mage-b-cls   rdm-mocov3vitb-clscond.pth    mage-b.pth   6.0   1.0  3.50 / 194.9 | 3.18 / 242.6
    imagenet-rcg-mage-l-cls   rdm-mocov3vitl-clscond.pth    mage-l.pth   11.0  6.0  2.99 / 215.5 | 2.25 / 300.7

Every preset samples a representation with the RDM (DDIM 250 steps, eta 1.0, EMA weights; no RDM temperature or
guidance), then decodes 256 VQGAN tokens with MAGE in 20 parallel-decoding steps, choice temperature 6.0 (B) /
11.0 (L), guidance tau 1.0 (B) / 6.0 (L) with the linear schedule tau_k = tau (k + 1) / 20 (tau 0 = the
unguided numbers). The class-conditional forms swap in the class-conditional RDM (``*-clscond``); MAGE is the
same file. The MAGE file carries its frozen VQGAN (``vqgan.*``) and MoCo v3 encoder (``pretrained_encoder.*``),
so a weights directory needs only the RDM and MAGE files.

File names: the official notebook ``viz_rcg.ipynb`` loads ``final_ckpts/rdm-mocov3vitl.pth``,
``final_ckpts/rdm-mocov3vitl-clscond.pth`` and ``final_ckpts/mage-l.pth``; the LDM config names
``final_ckpts/rdm-mocov3vitb.pth``. ``mage-b.pth`` and ``rdm-mocov3vitb-clscond.pth`` follow the same pattern
(inferred). Each role accepts a few candidate names, directly in the weights directory or under
``final_ckpts/``; ``rdm=`` / ``mage=`` name files explicitly.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Tuple

import torch

from .config import DiffusionConfig, PixelRun
from .official import paper_parts
from .pixel.mage import MAGE_PRESETS
from .presets import ENCODER_PRESETS, PIXEL_PRESETS, RDM_RUN_PRESETS
from .sample import RCGSampler

__all__ = ["PaperPreset", "PAPER_PRESETS", "find_weights", "load_paper_system"]


@dataclass(frozen=True)
class PaperPreset:
    """One paper system. ``mage`` / ``encoder`` / ``rdm`` name our presets of the same architecture
    (``PIXEL_PRESETS`` / ``ENCODER_PRESETS`` / ``RDM_RUN_PRESETS``); ``*_files`` are the accepted file names."""
    name: str
    mage: str                     # "mage-b" | "mage-l"
    encoder: str                  # "mocov3-vit-b" | "mocov3-vit-l" (inside the MAGE and RDM files)
    rdm: str                      # "rdm-l12-w1536" | "rdm-l12-w1536-cls1000"
    class_cond: bool
    rdm_files: Tuple[str, ...]
    mage_files: Tuple[str, ...]
    rdm_steps: int = 250          # official --rdm_steps
    eta: float = 1.0              # official --eta
    steps: int = 20               # official --num_iter
    temperature: float = 6.0      # official --temp
    guidance: float = 1.0         # official --cfg (tau; 0 = off)
    fid_is: Tuple[float, float] = (0.0, 0.0)          # paper, tau = 0 (ADM reference statistics, 50K samples)
    fid_is_guided: Tuple[float, float] = (0.0, 0.0)   # paper, tau = ``guidance``
    note: str = ""


def _names(stem: str) -> Tuple[str, ...]:
    """The official name and its underscore spelling."""
    return (stem + ".pth", stem.replace("-", "_") + ".pth")


PAPER_PRESETS: Dict[str, PaperPreset] = {
    "imagenet-rcg-mage-b": PaperPreset(
        name="imagenet-rcg-mage-b", mage="mage-b", encoder="mocov3-vit-b", rdm="rdm-l12-w1536", class_cond=False,
        rdm_files=_names("rdm-mocov3vitb"), mage_files=_names("mage-b"),
        temperature=6.0, guidance=1.0, fid_is=(3.98, 177.8), fid_is_guided=(3.19, 212.6),
        note="RCG (MAGE-B), MoCo v3 ViT-B; guided IS is 212.6 in the paper, 214.9 in the README"),
    "imagenet-rcg-mage-l": PaperPreset(
        name="imagenet-rcg-mage-l", mage="mage-l", encoder="mocov3-vit-l", rdm="rdm-l12-w1536", class_cond=False,
        rdm_files=_names("rdm-mocov3vitl"), mage_files=_names("mage-l"),
        temperature=11.0, guidance=6.0, fid_is=(3.44, 186.9), fid_is_guided=(2.15, 253.4),
        note="RCG (MAGE-L), MoCo v3 ViT-L: the paper's best unconditional system"),
    "imagenet-rcg-mage-b-cls": PaperPreset(
        name="imagenet-rcg-mage-b-cls", mage="mage-b", encoder="mocov3-vit-b", rdm="rdm-l12-w1536-cls1000",
        class_cond=True, rdm_files=_names("rdm-mocov3vitb-clscond"),
        mage_files=_names("mage-b"), temperature=6.0, guidance=1.0,
        fid_is=(3.50, 194.9), fid_is_guided=(3.18, 242.6),
        note="class-conditional RDM (ViT-B) + the same MAGE-B; tau for this row is not stated, 1.0 as "
             "unconditional B (inferred)"),
    "imagenet-rcg-mage-l-cls": PaperPreset(
        name="imagenet-rcg-mage-l-cls", mage="mage-l", encoder="mocov3-vit-l", rdm="rdm-l12-w1536-cls1000",
        class_cond=True, rdm_files=_names("rdm-mocov3vitl-clscond"),
        mage_files=_names("mage-l"), temperature=11.0, guidance=6.0,
        fid_is=(2.99, 215.5), fid_is_guided=(2.25, 300.7),
        note="class-conditional RDM (ViT-L) + the same MAGE-L; the notebook samples it with cfg 6.0, temp 11"),
}


def _preset(name: str) -> PaperPreset:
    if name not in PAPER_PRESETS:
        raise KeyError(f"unknown paper preset {name!r}; choices: {', '.join(sorted(PAPER_PRESETS))}")
    return PAPER_PRESETS[name]


def find_weights(preset: str, weights_dir=None, *, rdm=None, mage=None) -> Dict[str, Path]:
    """The official files of ``preset``: ``{"rdm": path, "mage": path}``. Explicit ``rdm`` / ``mage`` paths win;
    otherwise each role's candidate names are looked up in ``weights_dir`` and ``weights_dir/final_ckpts``.
    A role with no file raises FileNotFoundError listing every name and folder tried."""
    p = _preset(preset)
    out: Dict[str, Path] = {}
    for role, names, given in (("rdm", p.rdm_files, rdm), ("mage", p.mage_files, mage)):
        if given is not None:
            out[role] = Path(given)
            if not out[role].is_file():
                raise FileNotFoundError(f"{role} checkpoint not found: {out[role]}")
            continue
        if weights_dir is None:
            raise FileNotFoundError(f"preset {preset} needs the official {role.upper()} file ({names[0]}): pass a "
                                    f"weights directory (--weights DIR) or the file itself (--{role} FILE)")
        folders = [Path(weights_dir), Path(weights_dir) / "final_ckpts"]
        hits = [f / n for f in folders for n in names if (f / n).is_file()]
        if not hits:
            raise FileNotFoundError(
                f"no {role.upper()} checkpoint for preset {preset} in {weights_dir}: looked for "
                f"{', '.join(names)} in {', '.join(str(f) for f in folders)}. Download the official RCG weights "
                f"(links in the LTH14/rcg README) into that folder, or pass the file with --{role} FILE")
        out[role] = hits[0]
    return out


def _check(what: str, got, want, file, preset: str) -> None:
    if got != want:
        raise ValueError(f"{file} holds a {what} {got}, but preset {preset} expects {want}: wrong file for this "
                         f"preset? (pass check_sizes=False to run it anyway)")


def load_paper_system(preset: str, weights_dir=None, *, rdm=None, mage=None, device=None,
                      check_sizes: bool = True):
    """An :class:`rcg.sample.RCGSampler` for a paper preset, straight from the official files (never converted,
    never executed: :func:`rcg.official.paper_parts`); its PixelRun carries the preset's decoding defaults (20
    steps, temperature, tau), its RDMRun DDIM 250 steps, eta 1.

    ``check_sizes`` refuses files whose architecture is not the preset's (MAGE-B vs -L widths and depths, the
    MoCo encoder width, an RDM that is or is not class-conditional as the preset says)."""
    p = _preset(preset)
    files = find_weights(preset, weights_dir, rdm=rdm, mage=mage)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    parts = paper_parts(files["mage"], files["rdm"])
    model, tokenizer, encoder, rdm_model = (parts[k] for k in ("mage", "tokenizer", "encoder", "rdm"))
    c, rc = model.cfg, rdm_model.cfg
    if check_sizes:
        dims = lambda m: (m.embed_dim, m.depth, m.decoder_embed_dim, m.decoder_depth)  # noqa: E731
        _check("MAGE (width, depth, decoder width, decoder depth) =", dims(c), dims(MAGE_PRESETS[p.mage]),
               files["mage"], preset)
    if c.cond != "rep":
        raise ValueError(f"{files['mage']} is a {c.cond}-conditioned MAGE; RCG needs the representation-"
                         f"conditioned one")
    if tokenizer is None or encoder is None:
        raise ValueError(f"{files['mage']} lacks the VQGAN or MoCo v3 encoder that official MAGE files carry")
    if (rc.num_classes > 0) != p.class_cond:
        raise ValueError(f"{files['rdm']} is a{' class-conditional' if rc.num_classes else 'n unconditional'} RDM, "
                         f"but preset {preset} is {'class-conditional' if p.class_cond else 'unconditional'}")
    if rc.in_channels != c.rep_dim:
        raise ValueError(f"the RDM makes {rc.in_channels}-d representations, MAGE takes {c.rep_dim}-d")
    if check_sizes:
        want = RDM_RUN_PRESETS[p.rdm].model
        _check("MoCo v3 encoder of width", encoder.cfg.embed_dim, ENCODER_PRESETS[p.encoder].encoder.embed_dim,
               files["mage"], preset)
        _check("RDM (blocks, width)", (rc.num_res_blocks, rc.model_channels),
               (want.num_res_blocks, want.model_channels), files["rdm"], preset)
    e = parts["rdm_encoder"]
    if e and e["shapes"] != e["mage_shapes"]:
        raise ValueError(f"the RDM {files['rdm']} was trained on another encoder architecture than the MAGE "
                         f"{files['mage']} ({e['shapes']} vs {e['mage_shapes']})")
    if e and not e["same_weights"]:
        warnings.warn(f"the MoCo v3 encoders inside {files['rdm']} and {files['mage']} differ: check that both "
                      f"files belong to the same system")
    d = parts["rdm_info"].get("diffusion") or {}
    diffusion = DiffusionConfig(**{k: d[k] for k in ("num_steps", "beta_start", "beta_end") if k in d})
    rdm_cfg = replace(RDM_RUN_PRESETS[p.rdm], encoder=str(files["rdm"]), model=rc, class_cond=rc.num_classes > 0,
                      diffusion=diffusion, sample_steps=p.rdm_steps, eta=p.eta)
    cfg = PixelRun(generator="mage", encoder=str(files["mage"]), tokenizer=str(files["mage"]), model=c,
                   steps=p.steps, temperature=p.temperature, guidance=p.guidance, optim=PIXEL_PRESETS[p.mage].optim)
    on = [m.requires_grad_(False).eval().to(dev) for m in (model, tokenizer, encoder, rdm_model)]
    return RCGSampler.from_parts(on[0], cfg, on[1], on[2], on[3], rdm_cfg, dev)

