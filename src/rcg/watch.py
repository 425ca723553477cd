"""Training you can watch (layer 3): the sample grids and numbers a job's ``preview`` makes while it trains,
written to ``RUN/samples/step-XXXXXXX.png``, ``metrics.jsonl`` and TensorBoard."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from .sample import make_grid, save_png
from .store import METRICS, append_metrics

SAMPLES = "samples"                 # the sample grids written during training: samples/step-0001000.png


@dataclass
class Preview:
    """What a job's ``preview`` returns: uint8 images (N, C, H, W) for one grid of ``nrow`` columns
    (``RUN/samples/step-XXXXXXX.png``, and TensorBoard with --tensorboard) and metrics for metrics.jsonl."""
    images: Optional[torch.Tensor] = None
    nrow: int = 8
    metrics: Dict[str, float] = field(default_factory=dict)


def preview_path(run_dir, step: int) -> Path:
    """Where the sample grid of ``step`` goes."""
    return Path(run_dir) / SAMPLES / f"step-{step:07d}.png"


def grid_scale(height: int) -> int:
    """Nearest-neighbour upscaling of a sample grid so that small images can be seen (64 px and up: none)."""
    return max(1, 64 // height)


def write_preview(run_dir: Path, preview: Callable, model: nn.Module, ema, step: int, tb, desc: str) -> None:
    """The job's preview of ``step``: its grid to samples/ (and TensorBoard), its metrics to metrics.jsonl."""
    watched = ema.averaged(model) if ema is not None else model
    watched.eval()
    dev = next(model.parameters()).device
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad():
            p = preview(step, watched)
    except Exception as e:      # a sample grid is worth less than the training run: report it and go on
        print(f"warning: the sample grid of step {step} failed ({type(e).__name__}: {e}); training goes on",
              file=sys.stderr)
        return
    finally:
        model.train()
    if p.images is not None and len(p.images):
        grid = make_grid(p.images.cpu(), p.nrow)
        save_png(grid, preview_path(run_dir, step), grid_scale(p.images.shape[-2]))
        if tb is not None:
            tb.add_image(f"{desc}/samples", grid, step, dataformats="CHW")
    if p.metrics:
        append_metrics(run_dir / METRICS, {"step": step, **p.metrics})
        for k, v in p.metrics.items():
            if tb is not None:
                tb.add_scalar(f"{desc}/{k}", v, step)
