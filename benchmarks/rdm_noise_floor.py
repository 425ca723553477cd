"""The representation FD a *perfect* RDM would reach under a given noise schedule.

RCG's DDIM (eta any) ends at ``alphas_cumprod[0]``, not at 1: its output is sqrt(a0) x0 + sqrt(1 - a0) eps.
This script takes a real subset of a representation cache as the "perfect samples", applies exactly that last
step for several ``beta_start`` values, and prints each one's FD against the whole cache next to the floor (the
same subset, clean). A schedule whose perfect-model FD is already above the target ratio cannot meet it.

    python benchmarks/rdm_noise_floor.py --cache runs/fmnist-reps.safetensors [--num 10000] [--beta-starts 0.0015,1e-4]
"""
from __future__ import annotations

import argparse
import json

import torch

from rcg.diffusion import GaussianDiffusion
from rcg.evaluate import fd_between
from rcg.loaders import load_reps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="rcg cache-reps output")
    ap.add_argument("--num", type=int, default=10000, help="subset size (as train-rdm's fd_samples)")
    ap.add_argument("--beta-starts", default="0.0015,1e-4")
    ap.add_argument("--beta-end", type=float, default=0.0195)
    ap.add_argument("--seed", type=int, default=17)
    a = ap.parse_args()
    reps = load_reps(a.cache)[0]["reps"].float()
    g = torch.Generator().manual_seed(a.seed)
    sub = reps[torch.randperm(len(reps), generator=g)[:min(a.num, len(reps))]]
    floor = fd_between(sub, reps)
    print(f"{len(sub)} of {len(reps)} representations; floor (clean subset vs all): {floor:.4f}")
    rows = []
    for b0 in (float(b) for b in a.beta_starts.split(",")):
        a0 = float(GaussianDiffusion(beta_start=b0, beta_end=a.beta_end).alphas_cumprod[0])
        noisy = a0 ** 0.5 * sub + (1 - a0) ** 0.5 * torch.randn(sub.shape, generator=g)
        fd = fd_between(noisy, reps)
        rows.append({"beta_start": b0, "final_noise_std": (1 - a0) ** 0.5, "perfect_fd": fd, "ratio": fd / floor})
        print(f"beta_start {b0:g}: last-step noise std {(1 - a0) ** 0.5:.4f}; perfect-model FD {fd:.4f} "
              f"= {fd / floor:.2f}x the floor")
    print(json.dumps({"floor": floor, "rows": rows}))


if __name__ == "__main__":
    main()
