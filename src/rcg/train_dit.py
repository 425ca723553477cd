"""``rcg train-pixel --generator dit``: a DiT on the pixels of cached crops, conditioned on the representations
of the very same crops (RCG), on class labels, or on nothing (the baseline), with DiT's diffusion recipe
(``rcg.diffusion``: linear schedule, eps prediction, learned sigma, eps MSE + VLB)."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from . import dist
from .store import WEIGHTS, CheckpointError, load_tensors, prepare_run_dir
from .config import PixelRun
from .tree import from_dict, to_dict
from .diffusion import GaussianDiffusion
from .encoders import fingerprint
from .pixel.dit import DiT
from .train import EpochBatches, Job, fit


def train_dit(cfg: PixelRun, out: str, device: Optional[str] = None, progress: bool = True) -> dict:
    from .stages import load_encoder, load_reps, setup_torch

    if not (cfg.cache and cfg.encoder):
        raise ValueError("train-pixel --generator dit needs --cache (rcg cache-reps --pixels) and --encoder")
    dev = setup_torch(device, cfg.optim.num_threads)
    enc_fp = fingerprint(load_encoder(cfg.encoder))
    tensors, meta = load_reps(cfg.cache, enc_fp, cfg.encoder)
    if "images" not in tensors:
        raise CheckpointError(f"{cfg.cache} holds no crops: rebuild it with rcg cache-reps --pixels "
                              f"--encoder {cfg.encoder} --out {cfg.cache}")
    images, reps, labels = tensors["images"], tensors["reps"].float(), tensors.get("labels")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise CheckpointError(f"{cfg.cache}: 'images' must be uint8 (N, C, H, W), got {images.dtype} "
                              f"{tuple(images.shape)}")
    n, C, H, W = images.shape
    model_cfg = replace(cfg.model, in_channels=C, input_size=H, rep_dim=reps.shape[1])
    if model_cfg.cond == "class":
        if labels is None:
            raise ValueError(f"dit.cond=class needs labels, but {cfg.cache} has none")
        model_cfg = replace(model_cfg, num_classes=int(meta.get("num_classes") or int(labels.max()) + 1))
    cfg = replace(cfg, model=model_cfg)
    run_dir, resuming = prepare_run_dir(out, {**to_dict(cfg), "encoder_fingerprint": enc_fp})
    torch.manual_seed(cfg.optim.seed)
    model = DiT(model_cfg).to(dev)
    diffusion = GaussianDiffusion(**to_dict(cfg.diffusion)).to(dev)
    if cfg.diffusion.learn_sigma != model_cfg.learn_sigma:
        raise ValueError(f"diffusion.learn_sigma={cfg.diffusion.learn_sigma} but dit.learn_sigma="
                         f"{model_cfg.learn_sigma}; set both the same")
    images_d, reps_d = images.to(dev), reps.to(dev)
    labels_d = labels.to(dev) if labels is not None else None
    drop_p = {"rep": model_cfg.rep_drop_prob, "class": model_cfg.class_dropout_prob}.get(model_cfg.cond, 0.0)
    batches = EpochBatches(n, cfg.optim.batch_size, cfg.optim.seed)
    total = max(1, int(round(cfg.optim.epochs * batches.steps_per_epoch)))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"DiT ({model_cfg.cond}-conditioned): {n_params:,} parameters; {n} crops of {C}x{H}x{W}; {total} steps")

    def loss_fn(step, gen, part):
        idx = batches(step)
        g = len(idx)                                   # draws for the global batch, sliced: any process count
        t = torch.randint(0, diffusion.num_steps, (g,), generator=gen)[part].to(dev)
        noise = torch.randn((g, C, H, W), generator=gen)[part].to(dev)
        null = (torch.rand(g, generator=gen) < drop_p)[part].to(dev) if drop_p > 0 else None
        idx = idx[part].to(dev)
        x0 = images_d[idx].float().div(127.5).sub(1.0)
        rep = reps_d[idx] if model_cfg.cond == "rep" else None
        y = labels_d[idx] if model_cfg.cond == "class" else None
        return diffusion.loss(lambda xt, tt: model(xt, tt, rep, y, null=null), x0, t, noise), {}

    job = Job(model=model, loss_fn=loss_fn, steps_per_epoch=batches.steps_per_epoch, total_steps=total,
              images_per_step=cfg.optim.batch_size, export=lambda: model.state_dict(), desc="train-pixel (dit)",
              metadata={"encoder_fingerprint": enc_fp}, sharded=True)
    t0 = time.time()
    last = fit(run_dir, job, cfg.optim, resuming, progress)
    if not dist.is_main():
        return last
    summary = {"stage": "pixel", "generator": "dit", "cond": model_cfg.cond, "params": n_params, "steps": total,
               "train_wall_s": round(time.time() - t0, 1), **last}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_dit_run(src: Path, raw: dict, device=None):
    """(DiT in eval mode, PixelRun) of a train-pixel --generator dit run directory (``raw``: its config), or
    (DiT, DiTRun) of a converted official DiT file (``rcg convert``)."""
    if "autoencoder" in raw:
        from .pixel.dit import dit_from_converted
        return dit_from_converted(src, device)
    cfg = from_dict(PixelRun, raw)
    model = DiT(cfg.model)
    tensors, _ = load_tensors(Path(src) / WEIGHTS)
    model.load_state_dict(tensors)
    return model.eval().to(device or "cpu"), cfg


__all__ = ["train_dit", "load_dit_run"]
