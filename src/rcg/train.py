"""One plain training loop shared by every stage, with RCG's EMA and the LR schedules.

The loop is deterministic given the step: batch ``step`` takes its indices from a per-epoch
permutation seeded by ``(seed, epoch)`` and its randomness (augmentations, diffusion noise) from a
generator seeded by ``(seed, step)``. Resuming from ``state.pt`` at step s therefore continues exactly
as the uninterrupted run would have. Rerunning the same command resumes; a finished run is a no-op.
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoint import METRICS, STATE, WEIGHTS, CheckpointError, load_state, save_state, save_tensors
from .config import OptimConfig


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


class EMA:
    """RCG's LitEma: shadow = shadow - (1 - d) * (shadow - param), d = min(decay, (1 + n) / (10 + n))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: p.detach().clone().float() for k, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].sub_((1 - d) * (self.shadow[k] - p.detach().float()))

    def state_dict_of(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """``model.state_dict()`` with the EMA values in place of the trained parameters."""
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for k, v in self.shadow.items():
            sd[k] = v.to(sd[k].dtype)
        return sd


def lr_at(step: int, steps_per_epoch: int, total_steps: int, o: OptimConfig) -> float:
    """Linear warm-up, then constant or half-cycle cosine to ``min_lr``."""
    warm = int(o.warmup_epochs * steps_per_epoch)
    if step < warm:
        return o.lr * (step + 1) / warm
    if o.schedule == "constant":
        return o.lr
    if o.schedule == "cosine":
        progress = (step - warm) / max(1, total_steps - warm)
        return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {o.schedule!r} (constant, cosine)")


class EpochBatches:
    """Indices of batch ``step``: epoch-wise permutations seeded by (seed, epoch), last partial batch dropped."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < batch_size:
            raise ValueError(f"batch size {batch_size} is larger than the data set ({n} items); lower --batch-size")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[i * self.batch_size:(i + 1) * self.batch_size]


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed + 1) * 2_147_483_647 + step)


@dataclass
class Job:
    """What a stage hands to :func:`fit`.

    loss_fn(step, generator) -> (loss, metrics); export() -> weights for checkpoint.safetensors
    (called with the EMA weights loaded when there is an EMA); evaluate(step) -> metrics (optional).
    """
    model: nn.Module
    loss_fn: Callable
    steps_per_epoch: int
    total_steps: int
    images_per_step: int
    export: Callable[[], Dict[str, torch.Tensor]]
    evaluate: Optional[Callable[[int], dict]] = None
    eval_every: int = 0
    metadata: Optional[Dict[str, str]] = None
    desc: str = "train"


def fit(run_dir, job: Job, o: OptimConfig, resuming: bool, progress: bool = True) -> dict:
    """Train ``job.model`` to ``job.total_steps``; returns the last logged metrics."""
    run_dir = Path(run_dir)
    model = job.model
    params = [p for p in model.parameters() if p.requires_grad]
    if o.wd_exclude_1d:
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    else:
        groups = [{"params": params, "weight_decay": o.weight_decay}]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))
    ema = EMA(model, o.ema_decay) if o.ema_decay > 0 else None
    step, last = 0, {}
    if resuming:
        try:
            st = load_state(run_dir / STATE)
        except CheckpointError as e:
            raise CheckpointError(f"{e}. Delete {run_dir / STATE} to restart this run from scratch.") from e
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if ema is not None:
            ema.shadow, ema.num_updates = st["ema"], int(st["ema_updates"])
        step = int(st["step"])
        torch.set_rng_state(st["rng"])
        print(f"resuming {run_dir} from step {step}/{job.total_steps}")

    def checkpoint(at: int) -> None:
        state = {"step": at, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state()}
        if ema is not None:
            state.update(ema=ema.shadow, ema_updates=ema.num_updates)
        save_state(run_dir / STATE, state)
        save_tensors(run_dir / WEIGHTS, _exported(model, ema, job.export), {**(job.metadata or {}), "step": at})

    autocast = torch.autocast("cuda" if next(model.parameters()).is_cuda else "cpu", dtype=torch.bfloat16) \
        if o.bf16 else nullcontext()
    bar = tqdm(total=job.total_steps * job.images_per_step, initial=step * job.images_per_step, unit="img",
               unit_scale=True, desc=job.desc, disable=not progress, dynamic_ncols=True, smoothing=0.05,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    t0, seen = time.time(), 0
    model.train()
    while step < job.total_steps:
        lr = lr_at(step, job.steps_per_epoch, job.total_steps, o)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast:
            loss, metrics = job.loss_fn(step, step_generator(o.seed, step))
        if not torch.isfinite(loss):
            last_good = load_state(run_dir / STATE)["step"] if (run_dir / STATE).exists() else None
            kept = f"the last good checkpoint (step {last_good}) is kept in {run_dir}" if last_good is not None \
                else "no checkpoint had been written yet"
            raise TrainingError(f"loss is {loss.item()} at step {step}; {kept}. Lower the learning rate "
                                f"(optim.lr) or turn off bf16, then rerun.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            metrics["grad_norm"] = float(nn.utils.clip_grad_norm_(params, o.grad_clip))
        opt.step()
        if ema is not None:
            ema.update(model)
        step += 1
        seen += job.images_per_step
        bar.update(job.images_per_step)
        if step % o.log_every == 0 or step == job.total_steps:
            last = {"step": step, "epoch": round(step / job.steps_per_epoch, 3), "loss": loss.item(), "lr": lr,
                    "img_per_s": round(seen / (time.time() - t0), 1), **{k: float(v) for k, v in metrics.items()}}
            bar.set_postfix(loss=f"{last['loss']:.4f}")
            append_metrics(run_dir / METRICS, last)
        if job.evaluate is not None and job.eval_every and step % job.eval_every == 0 and step < job.total_steps:
            append_metrics(run_dir / METRICS, {"step": step, **job.evaluate(step)})
            model.train()
        if step % o.ckpt_every == 0 or step == job.total_steps:
            checkpoint(step)
    bar.close()
    return last


def _exported(model: nn.Module, ema: Optional[EMA], export: Callable) -> Dict[str, torch.Tensor]:
    if ema is None:
        return export()
    raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.state_dict_of(model))
    try:
        return {k: v.detach().clone() for k, v in export().items()}
    finally:
        model.load_state_dict(raw)


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
