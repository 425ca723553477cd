"""``rcg cache-reps`` (representations of K augmented views of every image, with the tokens or pixels of the
same crops), ``rcg sample-reps`` (representations from an RDM) and ``rcg rep-fd``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from .. import augment, dist
from ..config import RDM_SOLVERS, DataConfig
from ..data import load_dataset
from ..evaluate import fd_between
from ..loaders import REPS_KIND, load, load_reps
from ..precision import autocast as bf16_autocast
from ..precision import describe as describe_precision
from ..precision import precision_name, resolve_bf16
from ..rng import view_generator
from ..sample import draw_reps, rdm_sampler_name
from ..store import CheckpointError, save_tensors
from ..tree import apply_overrides


def cache_reps(encoder_src, out, views: int = 4, data_overrides=(), device=None, seed: int = 0,
               batch_size: int = 500, scale=(0.8, 1.0), tokenizer=None, bf16: Optional[bool] = None,
               pixels: bool = False, progress: bool = True) -> dict:
    """Standardized representations of ``views`` crop+flip views of every image, written atomically to
    ``out`` (safetensors: ``reps`` (N*views, D), ``image_index``, ``labels`` when known) together with
    the encoder's fingerprint. With ``tokenizer`` (a train-tokenizer run dir or official VQGAN file) the
    tokens of the very same crops are stored too (``tokens`` (N*views, L)), for MAGE training; with
    ``pixels`` the crops themselves (``images`` uint8 (N*views, C, H, W)), for DiT training.
    The data default to the encoder run's own training data. ``bf16``: autocast the encoder and tokenizer
    (True / False; None = auto, where the hardware has native bf16: about 3x faster on such a CPU;
    standardized representations then differ by ~3e-3 on average)."""

    if views < 1:
        raise ValueError(f"--views must be at least 1, got {views}")
    dev = dist.setup(device)
    rec = load("encoder", encoder_src, dev)
    encoder, fp = rec.module, rec.fingerprints["self"]
    base = rec.config.data if rec.config is not None else DataConfig("folder", channels=3)
    data_cfg = apply_overrides(base, [o.split(".", 1)[1] if o.startswith("data.") else o for o in data_overrides])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    data = load_dataset(data_cfg)
    tok_rec = load("tokenizer", tokenizer, dev) if tokenizer is not None else None
    tok = tok_rec.module if tok_rec is not None else None
    channels_last = encoder.cfg.arch == "resnet"
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    print(f"cache-reps: precision {describe_precision(bf16, dev)}")
    bf16 = resolve_bf16(bf16, dev)
    autocast = bf16_autocast(dev, bf16)
    n = len(data)
    reps, tokens, crops = [], [], []
    bar = tqdm(total=n * views, unit="img", unit_scale=True, desc="cache-reps", disable=not progress)
    for v in range(views):
        for i in range(0, n, batch_size):
            gen = view_generator(seed, v, i)
            x = data.images[i:i + batch_size].float().div(255.0)
            x = augment.crop_flip(x, data.images.shape[-1], scale=scale, gen=gen).to(dev)
            if pixels:
                x = x.mul(255).round().div(255)             # the model sees exactly the stored uint8 crop
                crops.append(x.mul(255).round().to(torch.uint8).cpu())
            with torch.no_grad(), autocast:
                xe = x.contiguous(memory_format=torch.channels_last) if channels_last else x
                reps.append(encoder.encode(xe).float().cpu())
                if tok is not None:
                    tokens.append(tok.encode(x)[1].to(torch.int16 if tok.cfg.n_embed < 2 ** 15 else torch.int64).cpu())
            bar.update(len(x))
    bar.close()
    tensors = {"reps": torch.cat(reps), "image_index": torch.arange(n).repeat(views)}
    if data.labels is not None:
        tensors["labels"] = data.labels.repeat(views)
    meta = {"kind": REPS_KIND, "encoder": str(encoder_src), "encoder_fingerprint": fp, "views": views, "bf16": bf16,
            "precision": precision_name(bf16), "data": data.source, "resolution": data.images.shape[-1],
            "num_classes": len(data.class_names) if data.class_names else 0}
    if pixels:
        tensors["images"] = torch.cat(crops)
    if tok is not None:
        tensors["tokens"] = torch.cat(tokens)
        meta.update(tokenizer=str(tokenizer), tokenizer_fingerprint=tok_rec.fingerprints["self"], codebook_size=tok.cfg.n_embed)
    save_tensors(out, tensors, meta)
    print(f"wrote {out}: {tuple(tensors['reps'].shape)} representations ({n} images x {views} views), "
          f"encoder {fp}")
    return meta


@torch.no_grad()
def sample_reps(rdm_src, out=None, num: int = 1000, steps: Optional[int] = None, eta: Optional[float] = None,
                seed: int = 0, label: Optional[int] = None, labels=None, batch_size: int = 1000, device=None,
                progress: bool = True, solver: Optional[str] = None) -> dict:
    """Sample ``num`` representations from an RDM run directory or official file (sample i uses seed + i,
    whatever the batch size); optionally write them to ``out`` (safetensors with the encoder fingerprint)."""
    dev = torch.device(device) if device is not None else dist.setup()
    rec = load("rdm", rdm_src, dev)
    model, cfg, fp = rec.module, rec.config, rec.fingerprints.get("encoder")
    result = draw_reps(model, cfg, num, steps, eta, seed, label, labels, batch_size, progress, solver)
    if out is not None:
        solver = RDM_SOLVERS[int(result["solver"])]
        save_tensors(out, result, {"kind": REPS_KIND, "encoder_fingerprint": fp or "unknown", "rdm": str(rdm_src),
                                   "steps": result["steps"].item(), "eta": result["eta"].item(), "solver": solver,
                                   "seed": seed})
        print(f"wrote {out}: {num} representations "
              f"({rdm_sampler_name(solver, result['steps'].item(), result['eta'].item())})")
    return result


def rep_fd(a, b) -> dict:
    """Fréchet distance between the ``reps`` of two files (cache-reps or sample-reps output)."""
    ta, ma = load_reps(a)
    tb, mb = load_reps(b)
    fa, fb = ma.get("encoder_fingerprint"), mb.get("encoder_fingerprint")
    if fa and fb and "unknown" not in (fa, fb) and fa != fb:
        raise CheckpointError(f"{a} and {b} come from different encoders ({fa} vs {fb}); their FD is meaningless")
    return {"rep_fd": fd_between(ta["reps"], tb["reps"]), "n_a": len(ta["reps"]), "n_b": len(tb["reps"])}
