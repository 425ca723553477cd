"""``rcg train-pixel``: a pixel generator of the registry (:mod:`rcg.pixel`: MAGE on the cached VQ tokens, DiT
on the cached crops' pixels) conditioned on the representations of the very same crops (RCG), on class labels
(``model.cond="class"``) or on nothing (``"none"``, the baseline)."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from .. import dist, pixel
from ..config import PixelRun
from ..data import load_dataset
from ..loaders import load, load_reps
from ..rng import EpochBatches
from ..sample import RCGSampler, draw_reps, to_uint8
from ..store import CheckpointError
from ..train import Job, Runtime, steps_for
from ..watch import Preview
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


PREVIEW = 8            # images per row of the sample grids written during training
PREVIEW_SEED = 1000    # their seeds: PREVIEW_SEED + i


def _references(enc, spec, cfg: PixelRun, tok, tensors: dict, dev, images=None) -> tuple:
    """(uint8 images, their representations, where from) for the grids: ``images`` when given, else the first
    held-out images of the encoder's data when they come at the generator's size, else the cache's first crops."""
    c, r = spec.image_shape(cfg, tok)
    if images is None and enc.config is not None:
        try:
            held = load_dataset(replace(enc.config.eval_data, limit=PREVIEW)).images
            images = held if tuple(held.shape[1:]) == (c, r, r) else None
        except Exception as e:      # a moved folder, a missing test split: the cache's crops are shown instead
            print(f"note: the sample grids show training crops ({e})")
    if images is not None:
        images = images[:PREVIEW]
        return images, enc.module.encode(images.to(dev)).float(), "held-out images"
    if spec.inputs == "tokens":
        images = to_uint8(tok.decode_ids(tensors["tokens"][:PREVIEW].long().to(dev)).float().clamp(0, 1)).cpu()
    else:
        images = tensors["images"][:PREVIEW]
    return images, tensors["reps"][:PREVIEW].float().to(dev), "training crops"


def _rdm_reps(rdm, enc, cfg: PixelRun, dev) -> torch.Tensor:
    """PREVIEW representations of the RDM ``rdm`` from fixed noise (class-balanced for a class-conditional one)."""
    rec = load("rdm", rdm, dev)
    if rec.fingerprints.get("encoder") not in (None, enc.fingerprints["self"]):
        raise ValueError(f"the RDM {rdm} was trained on another encoder's representations than {cfg.encoder}")
    ncls = rec.module.cfg.num_classes
    return draw_reps(rec.module, rec.config, PREVIEW, seed=PREVIEW_SEED, batch_size=PREVIEW,
                     labels=torch.arange(PREVIEW) % ncls if ncls else None)["reps"].to(dev)


def _preview(cfg: PixelRun, spec, tensors: dict, dev, rdm=None, images=None):
    """The pixel stage's preview: row 1 reference images, row 2 the generator's images from their
    representations, row 3 (with an RDM) images from fixed RDM samples; class / none generators: one row of
    class-balanced / unconditional samples. Every image from the fixed seed PREVIEW_SEED + column. Its setup
    runs on a forked RNG (loading builds modules): the model trains as in a run without grids."""
    with torch.no_grad(), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        tok = load("tokenizer", cfg.tokenizer, dev).module if spec.inputs == "tokens" else None
        enc = load("encoder", cfg.encoder, dev)
        refs, ref_reps, rdm_reps = None, None, None
        if cfg.cond == "rep":
            refs, ref_reps, where = _references(enc, spec, cfg, tok, tensors, dev, images)
            rdm_reps = _rdm_reps(rdm, enc, cfg, dev) if rdm is not None else None
            print(f"sample grids (RUN/samples/): {where}, their representations"
                  + (", RDM samples" if rdm is not None else ""))
    seeds = list(range(PREVIEW_SEED, PREVIEW_SEED + PREVIEW))

    def preview(step, net):
        s = RCGSampler.from_parts(net, cfg, tok, enc.module, device=dev)
        if cfg.cond != "rep":
            labels = torch.arange(PREVIEW, device=dev) % cfg.model.num_classes if cfg.cond == "class" else None
            return Preview(s.images_from_reps(None, seeds, labels=labels), nrow=PREVIEW)
        out = [refs, s.images_from_reps(ref_reps, seeds)]
        out += [s.images_from_reps(rdm_reps, seeds)] if rdm_reps is not None else []
        return Preview(torch.cat(out), nrow=PREVIEW)
    return preview


def train_pixel(cfg: PixelRun, out: str, device: Optional[str] = None, progress: bool = True,
                runtime: Optional[Runtime] = None, rdm: Optional[str] = None,
                preview_images: Optional[torch.Tensor] = None) -> dict:
    """Train ``cfg.generator`` on the cache ``cfg.cache`` into the run directory ``out``. The sample grids
    written during training (``optim.sample_every``) add a row from ``rdm`` (an RDM run on the same encoder)
    when given, and show ``preview_images`` (uint8 (N, C, H, W), held-out) when given."""
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
    tok = load("tokenizer", cfg.tokenizer) if spec.prepare is not None and cfg.tokenizer else None
    if tok is not None:                # a frozen part of the generator (the LDM's first stage), fingerprinted
        sizes = {**sizes, "tokenizer": tok.module, "images": x[:1024]}
        record = {**record, "tokenizer_fingerprint": tok.fingerprints["self"]}
    model = spec.sized(cfg.model, {**sizes, "rep_dim": reps.shape[1]})
    if cfg.cond == "class":
        model = replace(model, num_classes=int(meta.get("num_classes") or int(labels.max()) + 1))
    cfg = replace(cfg, model=model)
    record = {"encoder_fingerprint": enc_fp, **record}

    def build(run_dir):
        model = spec.network(cfg.model)
        if spec.prepare is not None:
            model = spec.prepare(model, tok.module if tok is not None else None)
        model = model.to(dev)
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
                  metadata=record,
                  preview=_preview(cfg, spec, tensors, dev, rdm, preview_images) if cfg.optim.sample_every != 0 else None)
        return Built(job, n_params(model), lambda run_dir: {"generator": spec.name, "cond": cfg.cond})

    return train_stage("pixel", cfg, out, build, progress, runtime, record=record, upgrade=PixelRun.upgrade)
