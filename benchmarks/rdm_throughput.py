"""RDM training throughput: representations from the cache vs computed by the encoder on every step.

The official RCG code computes the encoder's representation inside every RDM training step; `rcg` caches
K augmented views once (`rcg cache-reps`). This script times both on the same RDM, batch and machine, in one
run (alternating rounds), and reports the RDM step's achieved GFLOP/s against this machine's measured fp32
matmul peak.

    python benchmarks/rdm_throughput.py [--encoder runs/fmnist-encoder] [--rdm-preset fmnist-rdm] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from rcg import augment
from rcg.presets import ENCODER_PRESETS, RDM_RUN_PRESETS
from rcg.diffusion import GaussianDiffusion
from rcg.encoders import Encoder
from rcg.rdm import RDM
from rcg.loaders import load


def matmul_peak(n: int = 2048, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", help="train-encoder run dir (default: the fmnist-encoder preset, random weights)")
    ap.add_argument("--rdm-preset", default="fmnist-rdm")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    enc = load("encoder", a.encoder).module if a.encoder else Encoder(ENCODER_PRESETS["fmnist-encoder"].encoder).eval()
    enc.requires_grad_(False)
    cfg = RDM_RUN_PRESETS[a.rdm_preset]
    rdm = RDM(cfg.model)
    diffusion = GaussianDiffusion()
    opt = torch.optim.AdamW(rdm.parameters(), lr=1e-4, weight_decay=0.01)
    bs = a.batch_size
    images = torch.randint(0, 256, (bs * 4, 1, 28, 28), dtype=torch.uint8)
    reps = torch.randn(bs * 4, cfg.model.in_channels)

    def rdm_step(x0, gen):
        loss = diffusion.loss(lambda xt, t: rdm(xt, t), x0, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def cached(i, gen):
        rdm_step(reps[(i % 4) * bs:(i % 4 + 1) * bs], gen)

    def on_the_fly(i, gen):
        x = images[(i % 4) * bs:(i % 4 + 1) * bs].float() / 255
        x = augment.crop_flip(x, 28, gen=gen)
        with torch.no_grad():
            r = enc.encode(x)
        rdm_step(r, gen)

    with FlopCounterMode(display=False) as fc:
        cached(0, torch.Generator().manual_seed(0))
    step_flops = fc.get_total_flops()
    results = {"cache": [], "on the fly": []}
    for r in range(a.rounds):
        for name, fn in (("cache", cached), ("on the fly", on_the_fly)):
            gen = torch.Generator().manual_seed(r)
            for i in range(3):
                fn(i, gen)
            t = time.perf_counter()
            for i in range(a.steps):
                fn(i, gen)
            results[name].append(bs * a.steps / (time.perf_counter() - t))
    peak = matmul_peak()
    best = {k: max(v) for k, v in results.items()}
    out = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "rdm_preset": a.rdm_preset, "rdm_params": sum(p.numel() for p in rdm.parameters()),
        "batch_size": bs, "samples_per_s": {k: round(v, 1) for k, v in best.items()},
        "speedup_cache_vs_on_the_fly": round(best["cache"] / best["on the fly"], 2),
        "rdm_step_gflop": round(step_flops / 1e9, 3),
        "rdm_step_gflops_achieved": round(step_flops / 1e9 * best["cache"] / bs, 1),
        "matmul_peak_gflops_fp32": round(peak, 1),
    }
    out["fraction_of_peak"] = round(out["rdm_step_gflops_achieved"] / peak, 3)
    print(json.dumps(out, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
