"""The skeleton every training stage runs on: run directory -> model and :class:`rcg.train.Job` -> the loop ->
``summary.json``. A stage checks its inputs first (nothing is written before they pass), then hands
:func:`train_stage` a ``build(run_dir)`` that makes the model and the job (after the config's seed is set) and
optionally a ``finish(run_dir)`` that adds its final checks to the summary (rank 0)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import dist
from ..store import prepare_run_dir
from ..train import Job, Runtime, fit
from ..tree import to_dict

SUMMARY = "summary.json"


@dataclass
class Built:
    """What ``build(run_dir)`` returns: the job, the model's parameter count, and the final checks."""
    job: Job
    params: int
    finish: Optional[Callable[[Path], dict]] = None


def train_stage(name: str, cfg, out, build: Callable[[Path], Built], progress: bool = True,
                runtime: Optional[Runtime] = None, record: Optional[dict] = None,
                upgrade: Optional[Callable[[dict], dict]] = None) -> dict:
    """Train stage ``name`` with config ``cfg`` into the run directory ``out`` (``record``: more entries for its
    config.json, e.g. the fingerprints of its inputs). Rerunning resumes; a finished run returns its summary."""
    run_dir, resuming = prepare_run_dir(out, {**to_dict(cfg), **(record or {})}, upgrade)
    torch.manual_seed(cfg.optim.seed)
    built = build(run_dir)
    t0 = time.time()
    last = fit(run_dir, built.job, cfg.optim, resuming, progress, runtime)
    if not dist.is_main():
        return last
    path = run_dir / SUMMARY
    if not last and path.is_file():
        print(f"{run_dir} is finished; summary: {path}")
        return json.loads(path.read_text())
    summary = {"stage": name, "params": built.params, "steps": built.job.total_steps,
               "train_wall_s": round(time.time() - t0, 1), **last}
    if built.finish is not None:
        summary.update(built.finish(run_dir))
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
