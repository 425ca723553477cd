"""``rcg train-tokenizer``: the VQ tokenizer (MAGE's VQGAN architecture) on the user's images, ending with the
held-out reconstruction PSNR, codebook usage and perplexity and a grid of held-out images over their
reconstructions (``samples/reconstructions.png``)."""
from __future__ import annotations

import time
from typing import Optional

import torch

from .. import dist
from ..config import TokenizerRun, fit_to_data
from ..data import load_dataset
from ..loaders import load
from ..precision import resolve_bf16
from ..rng import EpochBatches
from ..sample import to_uint8, write_images
from ..store import METRICS, append_metrics, fingerprint
from ..tokenizer import TOKENIZER_KIND, VQModel, VQTrainer, reconstruction_metrics
from ..feed import rows_of, workers_for
from ..train import Job, Runtime, steps_for
from ..watch import Preview
from .common import Built, n_params, train_stage


def _held_out(cfg: TokenizerRun, data):
    """(held-out images, "held-out") or, without a test split, (the training images, "train")."""
    try:
        held = load_dataset(cfg.eval_data)
        if held.images.shape[1:] != data.images.shape[1:]:
            raise ValueError(f"eval_data gives {tuple(held.images.shape[1:])} images, training {tuple(data.images.shape[1:])}")
        return held, "held-out"
    except Exception as e:  # no test split: report the PSNR on (the last) training images, and say so
        print(f"no held-out images ({e}); PSNR is measured on training images")
        return data, "train"


PREVIEW = 8        # held-out images in the grids written during training


@torch.no_grad()
def reconstructions(vq: VQModel, images: torch.Tensor) -> torch.Tensor:
    """uint8 ``images`` (N, C, H, W) followed by their reconstructions through ``vq`` (2N images)."""
    dev = next(vq.parameters()).device
    x = images.to(dev)
    recon = vq.decode_ids(vq.encode(x)[1], (vq.token_grid, vq.token_grid)).float().clamp(0, 1)
    return torch.cat([images.cpu(), to_uint8(recon).cpu()])


def train_tokenizer(cfg: TokenizerRun, out: str, device: Optional[str] = None, progress: bool = True,
                    runtime: Optional[Runtime] = None) -> dict:
    """Train the VQ tokenizer on ``cfg.data`` (images in [0, 1]) into the run directory ``out``."""
    cfg = fit_to_data(cfg)
    dev = dist.setup(device, cfg.optim.num_threads)
    m = cfg.model
    data = load_dataset(cfg.data)                 # every check on the input before the run directory is touched
    print(f"data: {data.source}: {len(data)} images {tuple(data.images.shape[1:])}")
    if (data.images.shape[1], data.images.shape[-1]) != (m.in_channels, m.resolution) or m.out_channels != m.in_channels:
        raise ValueError(f"the tokenizer takes {m.in_channels}x{m.resolution}px images (out_channels {m.out_channels}) "
                         f"but the data are {data.images.shape[1]}x{data.images.shape[-1]}px; set data.channels / "
                         f"data.resolution or model.in_channels / out_channels / resolution")
    held, split = _held_out(cfg, data)

    def build(run_dir):
        vq = VQModel(m)
        trainer = VQTrainer(vq, cfg.l1_weight, cfg.mse_weight, cfg.grad_weight, cfg.reseed.decay,
                            cfg.reseed.threshold).to(dev)
        batches = EpochBatches(len(data), cfg.optim.batch_size, cfg.optim.seed)
        total = steps_for(cfg.optim.epochs, batches)
        stop = int(cfg.reseed.stop * total)
        print(f"VQ tokenizer: {n_params(vq):,} parameters; {vq.token_grid}x{vq.token_grid} tokens of {m.n_embed} "
              f"codes; {total} steps")

        def loss(batch, gen):
            x = batch.data.to(dev).float().div(255.0)
            if cfg.reseed.every and 0 < batch.step < stop and batch.step % cfg.reseed.every == 0:
                # under no_grad, before the loss; randomness from the step generator; on the whole global batch
                # in every process, so the codebook stays the same everywhere
                trainer.reseed(x, gen)
            return trainer.loss(batch.take(x))

        eval_images = held.images[-min(cfg.eval_images or len(held), len(held)):]

        def evaluate(step):
            res = reconstruction_metrics(vq, eval_images, bf16=resolve_bf16(cfg.optim.bf16, dev))
            print(f"step {step}: {split} PSNR {res['psnr']:.2f} dB, codebook usage {res['codebook_usage']:.3f}, "
                  f"perplexity {res['perplexity']:.1f} ({res['eval_images']} images)")
            return {("eval_" + k if k != "eval_images" else k): v for k, v in res.items()}

        def preview(step, trainer):             # fixed held-out images over their reconstructions
            return Preview(reconstructions(trainer.vq, held.images[:PREVIEW]), nrow=PREVIEW)

        def finish(run_dir):
            t1 = time.time()
            tok = load("tokenizer", run_dir, dev).module
            res = reconstruction_metrics(tok, held.images)
            append_metrics(run_dir / METRICS, {"step": total, "final": True, **res})
            write_images(reconstructions(tok, held.images[:16]), run_dir / "samples" / "reconstructions.png",
                         nrow=16, scale=max(1, 112 // m.resolution))
            print(f"{split} reconstruction ({res['eval_images']} images): PSNR {res['psnr']:.2f} dB, codebook usage "
                  f"{res['codebook_usage']:.3f}, perplexity {res['perplexity']:.1f} -> {run_dir}")
            return {"token_grid": vq.token_grid, **res, "psnr_split": split, "eval_wall_s": round(time.time() - t1, 1),
                    "fingerprint": fingerprint(tok)}

        job = Job(model=trainer, loss=loss, batches=batches, total_steps=total, export="vq.", evaluate=evaluate,
                  eval_every=int(cfg.eval_every_epochs * batches.steps_per_epoch), metadata={"kind": TOKENIZER_KIND},
                  desc="train-tokenizer", preview=preview, feed=rows_of(data.images),
                  feed_workers=workers_for(data.images), whole_batch="the codebook-usage statistics of its reseeding")
        return Built(job, n_params(vq), finish)

    return train_stage("tokenizer", cfg, out, build, progress, runtime)
