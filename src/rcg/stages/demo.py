"""``rcg demo``: every stage on Fashion-MNIST with the CPU presets, sized to fit 10 minutes on 2 CPU cores."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from .. import dist
from ..data import load_dataset
from ..precision import describe, native_bf16
from ..presets import ENCODER_PRESETS, PIXEL_PRESETS, RDM_RUN_PRESETS, TOKENIZER_PRESETS
from ..sample import RCGSampler
from ..store import WEIGHTS, load_tensors, save_tensors
from ..tree import apply_overrides, override
from .encoder import train_encoder
from .pixel import train_pixel
from .rdm import train_rdm
from .reps import cache_reps
from .sample import showcase
from .tokenizer import train_tokenizer


def export_run(src, dst, half: bool = True, note: str = "") -> Path:
    """Copy a run's config and inference weights (optionally as float16, to ship small files) to ``dst``."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "config.json", dst / "config.json")
    tensors, meta = load_tensors(src / WEIGHTS)
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    meta.pop("sha256", None)
    save_tensors(dst / WEIGHTS, tensors, {**meta, "exported_from": str(src), "dtype": "float16" if half else "as trained"})
    if (src / "summary.json").exists():
        shutil.copyfile(src / "summary.json", dst / "summary.json")
    if note:
        (dst / "README.md").write_text(note)
    return dst


ASSETS = Path(__file__).resolve().parent.parent / "assets"


SHIPPED_ENCODER = ASSETS / "fmnist-encoder"


# The demo fits `make demo` from a fresh clone (venv included) in 10 minutes on 2 CPU cores (BENCHMARKS.md), sized to
# the machine. With native bf16: the presets with a shorter tokenizer run (0.4 epoch: ~1 dB PSNR less than the
# preset's epoch), a shorter RDM (6 epochs of one view, representation FD on 2000 samples) and MAGE for 2.75 of its 3
# epochs. Without it (fp32, e.g. an AVX2-only CPU; measured with the AVX2 kernels: MAGE ~315 img/s): half the
# images in the cache (30k), a 0.2-epoch tokenizer, 5 RDM epochs and 3.25 MAGE epochs of the 30k token maps (2 epochs: 6 min 54 s
# for make demo, but MAGE's samples were blobs even from real representations).
DEMO_BUDGETS = {
    "bf16": {"tokenizer": ["optim.epochs=0.4"], "rdm": ["optim.epochs=6", "fd_samples=2000"],
             "pixel": ["optim.epochs=2.75"]},
    "fp32": {"tokenizer": ["optim.epochs=0.2"], "rdm": ["optim.epochs=5", "fd_samples=1000"],
             "pixel": ["optim.epochs=3.25"], "cache_limit": 30000},
}


DEMO_BUDGET = DEMO_BUDGETS["bf16"]


def demo(out: str = "runs/demo", encoder: Optional[str] = None, train_new_encoder: bool = False,
         device: Optional[str] = None, progress: bool = True, overrides: Optional[dict] = None) -> dict:
    """Every stage on Fashion-MNIST with the CPU presets, into ``out``: tokenizer, representation cache,
    RDM, MAGE, then an 8x8 grid of unconditional samples, variations of reference images and an
    interpolation strip. ``overrides`` maps a stage name (encoder, tokenizer, rdm, pixel) to ``--set``
    style overrides (used by the tests to shrink everything)."""
    dev = dist.setup(device)
    kind = "bf16" if native_bf16(dev) else "fp32"
    budget = dict(DEMO_BUDGETS[kind])
    cache_limit = budget.pop("cache_limit", 0)
    over = dict(overrides or {})
    for stage_name, stage_budget in budget.items():        # the caller's overrides come last and win
        over[stage_name] = list(stage_budget) + list(over.get(stage_name, []))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, summary, times = time.time(), {"precision": kind, "budget": budget}, {}
    print(f"precision: {describe(None, dev)}\n"
          f"demo budget for this machine ({kind}; 10 minutes on 2 CPU cores), on top of the presets: {budget}"
          + (f"; the cache and MAGE use the first {cache_limit} training images" if cache_limit else ""))

    def stage(name):
        times[name] = round(time.time() - t0 - sum(times.values()), 1)

    def trained(k, name, what, fn, base, extra=(), **kw):
        """Stage k: ``base`` with ``extra`` and the stage's overrides, trained into OUT/name."""
        print(f"[{k}/6] training {what} into {out / name}")
        summary[name] = fn(apply_overrides(base, list(extra) + over.get(name, [])), str(out / name), device, progress,
                           **kw)
        stage(name)

    enc_cfg = apply_overrides(ENCODER_PRESETS["fmnist-encoder"], over.get("encoder", []))
    if train_new_encoder:
        encoder = str(out / "encoder")
        trained(1, "encoder", "the encoder (preset fmnist-encoder)", train_encoder, ENCODER_PRESETS["fmnist-encoder"])
    elif encoder is None and not (SHIPPED_ENCODER / WEIGHTS).is_file():
        raise FileNotFoundError(f"no shipped encoder weights in {SHIPPED_ENCODER}; use --train-encoder")
    else:
        shipped = encoder is None
        encoder = str(SHIPPED_ENCODER) if shipped else encoder
        print(f"[1/6] encoder: the weights shipped with rcg ({encoder}), trained by this project's `rcg train-encoder "
              f"--preset fmnist-encoder` (command and seed in its README.md)" if shipped else f"[1/6] encoder: {encoder}")
        stage("encoder")
    trained(2, "tokenizer", "the VQ tokenizer (preset fmnist-tokenizer)", train_tokenizer,
            TOKENIZER_PRESETS["fmnist-tokenizer"])
    cache, data = out / "cache.safetensors", over.get("data", {})
    print(f"[3/6] representations and tokens of every training image (crop + flip) -> {cache}")
    limit = {"limit": cache_limit} if cache_limit and "limit" not in data else {}       # after the data overrides
    data_over = [f"data.{k}={v}" for k, v in {**data, **limit}.items()]
    summary["cache"] = cache_reps(encoder, cache, views=1, device=device, tokenizer=str(out / "tokenizer"),
                                  data_overrides=data_over, bf16=None, progress=progress)
    stage("cache")
    trained(4, "rdm", "the RDM (preset fmnist-rdm)", train_rdm,
            override(override(RDM_RUN_PRESETS["fmnist-rdm"], "cache", str(cache)), "encoder", encoder))
    trained(5, "pixel", "MAGE on representations (preset fmnist-mage)", train_pixel, PIXEL_PRESETS["fmnist-mage"],
            [f"cache={cache}", f"encoder={encoder}", f"tokenizer={out / 'tokenizer'}"], rdm=str(out / "rdm"))
    print("[6/6] sampling")
    s = RCGSampler(str(out / "pixel"), str(out / "rdm"), device)
    test = load_dataset(replace(enc_cfg.eval_data, **data) if data else enc_cfg.eval_data)
    idx = _one_per_class(test.labels, 6) if test.labels is not None else list(range(6))
    files = showcase(s, test.images[idx], out, scale=3)
    stage("sample")
    summary.update(files=files, stage_wall_s=times, wall_s=round(time.time() - t0, 1),
                   encoder_source=encoder)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    r, t = summary["rdm"], summary["tokenizer"]
    print(f"\ndemo done in {summary['wall_s']:.0f} s -> {out}\n"
          f"  stage times (s): {times}\n"
          f"  tokenizer PSNR {t.get('psnr', float('nan')):.2f} dB; RDM representation FD {r['rep_fd']:.4f} "
          f"(real-subset floor {r['rep_fd_floor']:.4f})\n"
          f"  {files['samples']}\n  {files['references']} (first column: the reference)\n"
          f"  {files['interpolation']} (ends: the two images)")
    return summary


def _one_per_class(labels: torch.Tensor, n: int) -> list:
    """Indices of the first image of each of the first ``n`` classes."""
    return [int((labels == c).nonzero()[0]) for c in labels.unique()[:n]]
