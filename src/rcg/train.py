"""One plain training loop shared by every stage.

The loop is deterministic given the step: batch ``step`` takes its indices from a per-epoch
permutation and its randomness (augmentations, diffusion noise) from a generator of the step (the seed
formulas of :mod:`rcg.rng`). Resuming from ``state.pt`` at step s therefore continues exactly
as the uninterrupted run would have. Rerunning the same command resumes; a finished run is a no-op.

Under ``torchrun`` (see :mod:`rcg.dist`) every process takes its contiguous slice of each global batch
(``optim.batch_size`` rows), the model goes through ``DistributedDataParallel`` (gradients averaged over
processes in buckets that overlap the backward pass), and rank 0 alone logs and writes checkpoints. A job
whose loss draws its per-sample randomness for the whole global batch from the step generator (and keeps
its rows) trains the same weights with any number of processes, up to float summation order.
``optim.batch_gpu`` (``--batch-gpu``) splits each process's rows into micro-batches whose gradients add up
to those of the whole (gradient accumulation): the same result on fewer or smaller devices.
"""
from __future__ import annotations

import errno
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import dist
from .rng import EpochBatches, module_seed, step_generator
from .store import (METRICS, STATE, WEIGHTS, CheckpointError, keep_previous, append_metrics, load_resume_state,
                    save_state, save_tensors)
from .compiling import compile_blocks
from .config import OptimConfig
from .precision import autocast as bf16_autocast
from .precision import describe as describe_precision
from .precision import precision_name, resolve_bf16
from .feed import step_inputs
from .optim import EMA, lr_at, make_optimizer
from .watch import Preview, write_preview

TENSORBOARD = "tensorboard"         # event files of --tensorboard, inside the run directory


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss)."""


@dataclass(frozen=True)
class Runtime:
    """Options that change how fast, not what, is trained (so they are not in config.json): ``rcg`` builds
    one from ``--tensorboard`` and ``--compile`` and hands it to the stage."""
    tensorboard: bool = False       # also log the metrics to <run>/tensorboard (needs the tensorboard package)
    compile: Union[bool, str] = False   # torch.compile the model's blocks; a string names the backend


@dataclass(frozen=True)
class Batch:
    """One step's batch as the loss sees it: ``index`` are the global batch's item indices (the order of
    :class:`rcg.rng.EpochBatches`), ``rows`` this process's slice of them (all of them for one process; one
    micro-batch of them with ``optim.batch_gpu``: ``micro`` counts them from 0). ``data``: the job's
    ``feed(index)``, the inputs of the whole global batch (None without a feed)."""
    step: int
    index: torch.Tensor
    rows: slice
    data: Any = None
    micro: int = 0

    @property
    def size(self) -> int:
        """Rows of the global batch."""
        return len(self.index)

    @property
    def mine(self) -> torch.Tensor:
        """This process's item indices."""
        return self.index[self.rows]

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """This process's rows of ``t``, a per-sample draw made for the whole global batch."""
        return t[self.rows]


@dataclass
class Job:
    """What a stage hands to :func:`fit`.

    ``loss(batch, generator) -> (loss, metrics)``: the mean loss over this process's rows of the step's global
    batch (:class:`Batch`); per-sample randomness is drawn for the whole global batch from ``generator`` and
    sliced with ``batch.take``, so that the same weights are trained with any number of processes.
    ``export``: the prefix, in ``model.state_dict()``, of the module whose weights go to checkpoint.safetensors
    (the EMA-averaged ones when there is an EMA); ``""`` is the whole model. ``evaluate(step) -> metrics``
    (optional, rank 0 only) every ``eval_every`` steps. ``preview(step, model) -> Preview`` (optional, rank 0
    only) every ``optim.sample_every`` steps and at the end: fixed-seed samples of ``model``, a copy of the
    trained model holding the EMA-averaged weights (the live model without an EMA), in eval mode, under
    ``torch.no_grad`` and a forked RNG (so training goes on exactly as without it; a failing preview is
    reported and training goes on). ``shard=False``: every process computes the whole global batch (for a
    model whose BatchNorm statistics must be those of the whole batch; no speed-up). ``feed(index)``
    (optional): the inputs of a global batch from its indices, read ahead (in ``feed_workers`` DataLoader
    processes when > 0) and handed to the loss as ``batch.data``. ``whole_batch``: what of the job needs each
    step's whole batch in one forward pass (BatchNorm statistics, contrastive negatives), refusing micro-batches.
    """
    model: nn.Module
    loss: Callable[[Batch, torch.Generator], tuple]
    batches: EpochBatches
    total_steps: int
    export: str = ""
    evaluate: Optional[Callable[[int], dict]] = None
    eval_every: int = 0
    metadata: Optional[Dict[str, str]] = None
    desc: str = "train"
    shard: bool = True
    preview: Optional[Callable[[int, nn.Module], "Preview"]] = None
    feed: Optional[Callable[[torch.Tensor], Any]] = None
    feed_workers: int = 0
    whole_batch: str = ""       # what needs each step's whole batch in one pass (then --batch-gpu is refused)


class _Objective(nn.Module):
    """The job's loss as a module's forward, so that DistributedDataParallel sees each step's forward pass."""

    def __init__(self, model: nn.Module, loss: Callable):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: Batch, gen: torch.Generator):
        return self.loss(batch, gen)


def micro_batches(rows: slice, batch_gpu: int) -> List[slice]:
    """``rows`` in consecutive slices of at most ``batch_gpu`` rows (0: one slice, all of them)."""
    if batch_gpu <= 0 or batch_gpu >= rows.stop - rows.start:
        return [rows]
    return [slice(i, min(i + batch_gpu, rows.stop)) for i in range(rows.start, rows.stop, batch_gpu)]


def _wrap(model: nn.Module, job: Job, dev):
    """The step's forward: the job's loss, through DistributedDataParallel under several processes."""
    net = _Objective(model, job.loss)
    if dist.world_size() == 1:
        return net
    return DistributedDataParallel(net, device_ids=[dev] if dev.type == "cuda" else None, broadcast_buffers=False,
                                   find_unused_parameters=True)


def _step(net, job: Job, step: int, rows: slice, o: OptimConfig, data, autocast) -> tuple:
    """Forward and backward of one step over its micro-batches (gradients accumulate); returns this process's
    mean loss (detached) and metrics, each micro-batch weighted by its rows."""
    parts = micro_batches(rows, o.batch_gpu)
    index, total, loss_sum, metrics = job.batches(step), rows.stop - rows.start, 0.0, {}
    for j, part in enumerate(parts):
        w = (part.stop - part.start) / total
        sync = nullcontext() if j == len(parts) - 1 or not isinstance(net, DistributedDataParallel) else net.no_sync()
        with sync:
            with autocast:     # every micro-batch draws the whole global batch's randomness, then takes its rows
                loss, m = net(Batch(step, index, part, data, j), step_generator(o.seed, step))
            (loss * w).backward()
        loss_sum = loss_sum + loss.detach().float() * w
        for k, v in m.items():          # tensors stay on the device (no sync per step)
            metrics[k] = metrics.get(k, 0.0) + (v.detach().float() if isinstance(v, torch.Tensor) else float(v)) * w
    return loss_sum, metrics


def steps_for(epochs: float, batches: EpochBatches) -> int:
    """Training steps of ``epochs`` epochs (at least one)."""
    return max(1, int(round(epochs * batches.steps_per_epoch)))


def _resume(run_dir: Path, model, opt, ema, dev, total: int) -> tuple:
    """(step, rotate) after loading the resume state of ``run_dir`` into the model, optimizer and EMA."""
    st, rotate = load_resume_state(run_dir, verbose=dist.is_main())
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    if ema is not None:
        ema.load_state_dict({"shadow": st["ema"], "num_updates": st["ema_updates"]}, model)
    torch.set_rng_state(st["rng"])
    if dev.type == "cuda" and "cuda_rng" in st:
        torch.cuda.set_rng_state(st["cuda_rng"], dev)
    dist.print0(f"resuming {run_dir} from step {int(st['step'])}/{total}")
    return int(st["step"]), rotate


def _checkpoint(run_dir: Path, job: Job, opt, ema, dev, at: int, rotate: bool, saved: Optional[int]) -> None:
    """state.pt (everything to resume) and checkpoint.safetensors (the exported weights), atomically."""
    model = job.model
    state = {"step": at, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(dev)
    if ema is not None:
        state.update(ema=ema.shadow, ema_updates=ema.num_updates)
    weights = ema.averaged_state_dict(model) if ema is not None else model.state_dict()
    weights = {k[len(job.export):]: v for k, v in weights.items() if k.startswith(job.export)}
    try:
        if rotate:
            keep_previous(run_dir)
        save_state(run_dir / STATE, state)
        save_tensors(run_dir / WEIGHTS, weights, {**(job.metadata or {}), "step": at})
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the last good checkpoint (step {saved}) is kept" if saved is not None else "nothing was saved"
            raise CheckpointError(f"no space left in {run_dir} while writing the checkpoint of step {at}; {kept}. "
                                  f"Free some space and rerun the same command to resume.") from e
        raise


def fit(run_dir, job: Job, o: OptimConfig, resuming: bool, progress: bool = True,
        runtime: Optional[Runtime] = None) -> dict:
    """Train ``job.model`` to ``job.total_steps``; returns the last logged metrics."""
    dist.init()
    run_dir, model, runtime = Path(run_dir), job.model, runtime or Runtime()
    world, main = dist.world_size(), dist.is_main()
    params = [p for p in model.parameters() if p.requires_grad]
    dev = params[0].device
    opt = make_optimizer(params, o)
    ema = EMA(model, o.ema_decay) if o.ema_decay > 0 else None
    n = job.batches.batch_size
    if job.shard and n % world:
        raise ValueError(f"the global batch ({n}) must be divisible by the number of processes ({world}); "
                         f"change optim.batch_size or --nproc_per_node")
    if o.batch_gpu and job.whole_batch:
        raise ValueError(f"{job.desc} cannot split its batches into micro-batches (--batch-gpu / optim.batch_gpu): "
                         f"{job.whole_batch} depend on the whole batch. Lower optim.batch_size instead.")
    if not job.shard and world > 1:
        dist.print0(f"note: {job.desc} does not shard its batches; each of the {world} processes computes all of them")
    rows, spe = dist.part(n) if job.shard else slice(0, n), job.batches.steps_per_epoch
    step, last, rotate = 0, {}, True
    if resuming:
        step, rotate = _resume(run_dir, model, opt, ema, dev, job.total_steps)
    _agree_on_step(step, dev)
    saved = step if resuming else None
    tb = _main_only(lambda: _before_training(run_dir, model, ema, runtime.tensorboard), dev) \
        if step < job.total_steps else None
    if runtime.compile:
        compile_blocks(model, runtime.compile)
    bf16 = resolve_bf16(o.bf16, dev)
    if main and step < job.total_steps:
        print(f"{job.desc}: precision {describe_precision(o.bf16, dev)}")
    autocast = bf16_autocast(dev, bf16)
    net = _wrap(model, job, dev)
    inputs = step_inputs(job.feed, job.batches, step, job.total_steps, job.feed_workers, dev.type == "cuda") \
        if job.feed is not None else None
    bar = tqdm(total=job.total_steps * n, initial=step * n, unit="img", unit_scale=True, desc=job.desc,
               disable=not (progress and main), dynamic_ncols=True, smoothing=0.05,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    t0, seen = time.time(), 0
    model.train()
    while step < job.total_steps:
        lr = lr_at(step, spe, job.total_steps, o)
        for g in opt.param_groups:
            g["lr"] = lr
        if world > 1:   # module-internal randomness (dropout): per process and step, so resume stays exact
            torch.manual_seed(module_seed(o.seed, step, dist.rank()))
        opt.zero_grad(set_to_none=True)
        loss, metrics = _step(net, job, step, rows, o, next(inputs) if inputs is not None else None, autocast)
        if world > 1:
            loss = dist.all_reduce(loss.reshape(1).to(dev), "mean")[0]
        if not torch.isfinite(loss):
            kept = f"the last good checkpoint (step {saved}) is kept in {run_dir}" if saved is not None \
                else "no checkpoint had been written yet"
            raise TrainingError(f"loss is {loss.item()} at step {step}; {kept}. Lower the learning rate "
                                f"(optim.lr) or turn off bf16 (--no-bf16), then rerun.")
        if o.grad_clip > 0:
            metrics["grad_norm"] = float(nn.utils.clip_grad_norm_(params, o.grad_clip))
        opt.step()
        if world > 1:
            _average_([b for b in model.buffers() if b.is_floating_point()])   # e.g. BatchNorm statistics
        if ema is not None:
            ema.update(model)
        step += 1
        seen += n
        bar.update(n)
        if step % o.log_every == 0 or step == job.total_steps:
            vals = _logged_values({"loss": loss, **metrics}, dev)
            last = {"step": step, "epoch": round(step / spe, 3), "loss": vals.pop("loss"), "lr": lr,
                    "img_per_s": round(seen / (time.time() - t0), 1), "precision": precision_name(bf16), **vals}
            if main:
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                append_metrics(run_dir / METRICS, last)
                for k, v in last.items():
                    if tb is not None and k not in ("step", "precision"):
                        tb.add_scalar(f"{job.desc}/{k}", v, step)
        if job.evaluate is not None and job.eval_every and step % job.eval_every == 0 and step < job.total_steps:
            _main_only(lambda: append_metrics(run_dir / METRICS, {"step": step, **job.evaluate(step)}), dev)
            model.train()
        every = o.ckpt_every if o.sample_every is None else o.sample_every
        if job.preview is not None and every and (step % every == 0 or step == job.total_steps):
            _main_only(lambda: write_preview(run_dir, job.preview, model, ema, step, tb, job.desc), dev)
        if step % o.ckpt_every == 0 or step == job.total_steps:
            _main_only(lambda: _checkpoint(run_dir, job, opt, ema, dev, step, rotate, saved), dev)
            saved, rotate = step, True
    bar.close()
    if tb is not None:
        tb.close()
    return last


def _before_training(run_dir: Path, model: nn.Module, ema, tensorboard: bool):
    """Fail before the first step when a checkpoint cannot fit on the disk or TensorBoard is missing;
    returns the SummaryWriter (or None)."""
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trained = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    need = 2 * size + trained * (3 if ema is not None else 2)      # state (model, Adam, EMA) + weights file
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise CheckpointError(f"not enough free space in {run_dir}: a checkpoint needs about {need / 1e6:.1f} MB, "
                              f"{free / 1e6:.1f} MB are free. Free some space or choose another --out.")
    if not tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise RuntimeError(f"--tensorboard needs the tensorboard package (pip install tensorboard): {e}") from e
    return SummaryWriter(str(run_dir / TENSORBOARD))


def _main_only(fn: Callable, device):
    """Run ``fn`` on rank 0; when it fails there every process raises, so none waits forever."""
    err, out = None, None
    if dist.is_main():
        try:
            out = fn()
        except BaseException as e:  # noqa: B036  (KeyboardInterrupt too: the others must stop)
            err = e
    if dist.any_true(err is not None, device):
        if err is not None:
            raise err
        raise TrainingError("rank 0 failed (see its error above); stopping")
    return out


def _agree_on_step(step: int, device) -> None:
    if dist.world_size() > 1:
        t = dist.all_reduce(torch.tensor([step, -step], dtype=torch.float64, device=device), "max")
        if t[0].item() != -t[1].item():
            raise CheckpointError(f"the processes resumed from different steps ({int(-t[1].item())} to "
                                  f"{int(t[0].item())}): the run directory must be on a file system all nodes share")


def _average_(tensors: List[torch.Tensor], bucket: int = 1 << 25) -> None:
    """In place: each tensor becomes its mean over processes (flattened in buckets of one dtype)."""
    by_kind: Dict[tuple, List[torch.Tensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.dtype, t.device), []).append(t)
    for group in by_kind.values():
        i = 0
        while i < len(group):
            chunk, n = [], 0
            while i < len(group) and (not chunk or n + group[i].numel() <= bucket):
                chunk.append(group[i])
                n += group[i].numel()
                i += 1
            flat = dist.all_reduce(torch.cat([t.reshape(-1) for t in chunk]), "mean")
            for t, v in zip(chunk, flat.split([t.numel() for t in chunk])):
                t.copy_(v.view_as(t))


def _logged_values(values: dict, device) -> Dict[str, float]:
    """Floats of the loss and metrics, averaged over processes."""
    vals = {k: float(v) for k, v in values.items()}
    if dist.world_size() > 1:
        t = dist.all_reduce(torch.tensor(list(vals.values()), dtype=torch.float64, device=device), "mean")
        vals = dict(zip(vals, t.tolist()))
    return vals
