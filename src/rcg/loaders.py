"""One loader for every trained part (layer 3): ``load(kind, source, device)``.

``source`` is one of our run directories (``config.json`` + ``checkpoint.safetensors``, written by the stage of
that kind or by ``rcg convert``) or an official checkpoint file (read by :mod:`rcg.official`, never
executed). Every kind comes back as one :class:`Loaded` record: the module (eval mode, frozen), the run config
(None for an official file that carries none), fingerprints, and metadata.

    kind        run directory of            official file
    encoder     train-encoder               MoCo v3 .pth.tar
    tokenizer   train-tokenizer             MAGE's VQGAN .ckpt (256 px)
    rdm         train-rdm                   RCG's RDM .pth (EMA weights)
    pixel       train-pixel (any generator) MAGE .pth (no config: sample it through a paper preset); ADM, LDM .pth
    evalnet     train-evalnet               -
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from . import official, pixel
from .config import EncoderRun, EvalNetRun, PixelRun, RDMRun, TokenizerRun
from .encoders import Encoder
from .evalnet import EvalCNN
from .evaluate import EvalNet
from .rdm import RDM
from .store import WEIGHTS, CheckpointError, digest, fingerprint, load_tensors, read_config
from .tokenizer import TOKENIZER_KIND, VQModel
from .tree import from_dict

REPS_KIND = "rcg-reps"       # the kind in the metadata of a representation file (cache-reps, sample-reps)


@dataclass
class Loaded:
    """A loaded part. ``fingerprints``: ``self`` (of this module) and, where known, ``encoder`` / ``tokenizer``
    (of the parts it was trained with). ``meta``: ``source``, ``official`` and what the reader reports."""
    module: Any
    config: Any
    fingerprints: Dict[str, Optional[str]] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)


# readers of the official files, by kind (rcg.official); each returns (module, info)
def _official_pixel(src):
    """An official pixel generator file: MAGE (no config: sampled through a paper preset), or ADM / LDM (with the
    PixelRun their ``args`` describe, so that they sample as they are)."""
    ckpt = official.safe_load(src)
    kind = official.detect_kind(ckpt)
    if kind == "adm":
        model, info = official.adm_from_official(ckpt)
        return model, {**info, "run_config": official.convert_adm_run(model, info)}
    if kind == "ldm":
        model, info = official.ldm_from_official(ckpt)
        return model, {**info, "run_config": official.convert_ldm_run(model, info)}
    return official.mage_from_official(ckpt)


_OFFICIAL = {"encoder": official.mocov3_from_official, "tokenizer": official.vqgan_from_official,
             "rdm": lambda src: official.rdm_from_official(src, ema=True), "pixel": _official_pixel}
# our run directories, by kind: (config class, module built from the config)
_RUNS = {"encoder": (EncoderRun, lambda c: Encoder(c.encoder)), "tokenizer": (TokenizerRun, lambda c: VQModel(c.model)),
         "rdm": (RDMRun, lambda c: RDM(c.model)), "evalnet": (EvalNetRun, lambda c: EvalCNN(c.model)),
         "pixel": (PixelRun, lambda c: pixel.generator(c.generator).network(c.model))}


def find_part(ref: str, run_dir) -> str:
    """Where the part ``ref`` named in the config of ``run_dir`` is. Runs name their parts by the path given at
    training time, relative to the folder training ran in; seen from another folder, such a relative path is
    looked up against the run directory's ancestors (one of them is that folder). ``ref`` itself when nothing
    matches (the loader then says it is missing)."""
    if not ref or Path(ref).is_absolute() or Path(ref).exists():
        return ref
    for base in Path(run_dir).resolve().parents:
        if (base / ref).exists():
            return str(base / ref)
    return ref


def _run_dir(kind: str, src: Path):
    """(module, config, trained-on fingerprints, weights metadata) of one of our run directories."""
    raw = read_config(src)
    trained_on = {k: raw.pop(f"{k}_fingerprint", None) for k in ("encoder", "tokenizer")}   # what it was trained on
    tensors, meta = load_tensors(src / WEIGHTS)
    if kind == "tokenizer" and meta.get("kind", TOKENIZER_KIND) != TOKENIZER_KIND:
        raise CheckpointError(f"{src} holds a {meta.get('kind')!r} checkpoint, not a tokenizer")
    cls, make = _RUNS[kind]
    cfg = from_dict(cls, raw)
    module = make(cfg)
    try:
        module.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{src / WEIGHTS} does not fit the {kind} described by its config.json ({e})") from e
    return module, cfg, trained_on, {**meta, "sha256": meta.get("sha256") or digest(tensors)}


def load(kind: str, source, device=None) -> Loaded:
    """The ``kind`` part at ``source`` on ``device`` (default: the CPU), in eval mode with frozen weights."""
    if kind not in _RUNS:
        raise ValueError(f"unknown kind {kind!r} (kinds: {', '.join(_RUNS)})")
    src = Path(source)
    if src.is_file():
        if kind not in _OFFICIAL:
            raise CheckpointError(f"{src} is a file, but a {kind} is loaded from an rcg run directory")
        module, info = _OFFICIAL[kind](src)
        rec = Loaded(module, info.pop("run_config", None), {}, {"source": str(src), "official": True, **info})
    else:
        module, cfg, trained_on, meta = _run_dir(kind, src)
        rec = Loaded(module, cfg, trained_on, {"source": str(src), "official": False, **meta})
    if kind == "evalnet":       # a feature network for rcg.evaluate, named by its weights' checksum
        names = json.loads(rec.meta["class_names"]) if rec.meta.get("class_names") else None
        rec.module = EvalNet(module.requires_grad_(False), rec.meta["sha256"], device, class_names=names)
        return rec
    rec.module = module.requires_grad_(False).eval().to(device or "cpu")
    rec.fingerprints["self"] = fingerprint(rec.module) if kind in ("encoder", "tokenizer") else None
    return rec


def load_reps(path, expect_fingerprint: Optional[str] = None, encoder_name: str = ""):
    """(tensors, metadata) of a representation file; refuses one made by another encoder."""
    tensors, meta = load_tensors(path)
    if "reps" not in tensors:
        raise CheckpointError(f"{path} holds no 'reps' tensor; make it with rcg cache-reps or rcg sample-reps")
    if expect_fingerprint is not None and meta.get("encoder_fingerprint") != expect_fingerprint:
        raise CheckpointError(
            f"{path} was made by another encoder (fingerprint {meta.get('encoder_fingerprint')}, "
            f"from {meta.get('encoder', '?')}) than {encoder_name} (fingerprint {expect_fingerprint}). "
            f"Rebuild it: rcg cache-reps --encoder {encoder_name} --out {path}")
    return tensors, meta

