"""``rcg train-pixel``: a pixel generator of the registry (:mod:`rcg.pixel`: MAGE on the cached VQ tokens, DiT
on the cached crops' pixels) conditioned on the representations of the very same crops (RCG), on class labels
(``model.cond="class"``) or on nothing (``"none"``, the baseline)."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from .. import dist, pixel
from ..config import PixelRun
from ..loaders import load, load_reps
from ..rng import EpochBatches
from ..store import CheckpointError
from ..train import Job, Runtime, steps_for
from .common import Built, n_params, train_stage


def _inputs(cfg: PixelRun, spec, tensors: dict, meta: dict) -> tuple:
    """(what the generator trains on, the sizes it takes from the data, more config.json entries)."""
    if spec.inputs == "tokens":
        tok = load("tokenizer", cfg.tokenizer)
        if "tokens" not in tensors:
            raise CheckpointError(f"{cfg.cache} holds no tokens: rebuild it with rcg cache-reps --tokenizer "
                                  f"{cfg.tokenizer}")
        if meta.get("tokenizer_fingerprint") != tok.fingerprints["self"]:
            raise CheckpointError(f"the tokens in {cfg.cache} were made by another tokenizer than {cfg.tokenizer}; "
                                  f"rebuild it with rcg cache-reps --tokenizer {cfg.tokenizer}")
        x = tensors["tokens"].long()
        return x, {"tokens_shape": tuple(x.shape), "codebook_size": tok.module.cfg.n_embed}, \
            {"tokenizer_fingerprint": tok.fingerprints["self"]}
    if "images" not in tensors:
        raise CheckpointError(f"{cfg.cache} holds no crops: rebuild it with rcg cache-reps --pixels "
                              f"--encoder {cfg.encoder} --out {cfg.cache}")
    x = tensors["images"]
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise CheckpointError(f"{cfg.cache}: 'images' must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    return x, {"images_shape": tuple(x.shape)}, {}


def train_pixel(cfg: PixelRun, out: str, device: Optional[str] = None, progress: bool = True,
                runtime: Optional[Runtime] = None) -> dict:
    """Train ``cfg.generator`` on the cache ``cfg.cache`` into the run directory ``out``."""
    spec = pixel.generator(cfg.generator)
    if spec.inputs == "tokens" and not (cfg.cache and cfg.encoder and cfg.tokenizer):
        raise ValueError(f"train-pixel ({spec.name}) needs --cache (rcg cache-reps --tokenizer ...), --encoder and "
                         f"--tokenizer")
    if not (cfg.cache and cfg.encoder):
        raise ValueError(f"train-pixel --generator {spec.name} needs --cache (rcg cache-reps --pixels) and --encoder")
    dev = dist.setup(device, cfg.optim.num_threads)
    enc_fp = load("encoder", cfg.encoder).fingerprints["self"]
    tensors, meta = load_reps(cfg.cache, enc_fp, cfg.encoder)
    x, sizes, record = _inputs(cfg, spec, tensors, meta)
    reps, labels = tensors["reps"].float(), tensors.get("labels")
    if cfg.cond == "class" and labels is None:
        raise ValueError(f"model.cond=class needs labels, but {cfg.cache} has none")
    model = spec.sized(cfg.model, {**sizes, "rep_dim": reps.shape[1]})
    if cfg.cond == "class":
        model = replace(model, num_classes=int(meta.get("num_classes") or int(labels.max()) + 1))
    cfg = replace(cfg, model=model)
    record = {"encoder_fingerprint": enc_fp, **record}

    def build(run_dir):
        model = spec.network(cfg.model).to(dev)
        loss_of = spec.trainer(model, cfg)
        x_d, reps_d = x.to(dev), reps.to(dev)
        labels_d = labels.to(dev) if labels is not None else None
        batches = EpochBatches(len(x), cfg.optim.batch_size, cfg.optim.seed)
        total = steps_for(cfg.optim.epochs, batches)
        print(f"{spec.name} ({cfg.cond}-conditioned): {n_params(model):,} parameters; {len(x)} {spec.inputs} "
              f"of shape {tuple(x.shape[1:])}; {total} steps")

        def loss(batch, gen):
            idx = batch.mine.to(dev)
            return loss_of(x_d[idx], reps_d[idx], labels_d[idx] if labels_d is not None else None, gen, batch.rows,
                           batch.size)

        job = Job(model=model, loss=loss, batches=batches, total_steps=total, desc=f"train-pixel ({spec.name})",
                  metadata=record)
        return Built(job, n_params(model), lambda run_dir: {"generator": spec.name, "cond": cfg.cond})

    return train_stage("pixel", cfg, out, build, progress, runtime, record=record, upgrade=PixelRun.upgrade)
