"""Representation FD of trained RDMs (paper Table 8's metric), with its sampling noise measured.

For each RDM run: ``--sets`` independent sets of ``--num`` DDIM samples, each one's FD against every cached
representation, next to the floor (the FD of a real subset of the same size against the whole cache) taken over
``--subsets`` random subsets. Set k uses the sample seeds k*num .. (k+1)*num - 1 (sample i of a
``draw_reps`` call is seeded by seed + i, so sets must not overlap). Prints mean +- std of both, their ratio,
and the excess FD - floor (what the model adds on top of the finite-sample bias), and appends the rows to
``--out`` (JSON lines).

    python benchmarks/rdm_rep_fd.py --cache runs/fmnist-reps.safetensors --rdm runs/fmnist-rdm-v [--rdm ...] \\
        [--num 10000] [--sets 3] [--first-set 0] [--subsets 200] [--steps 100] [--eta 1] [--heldout runs/fmnist-reps-test.safetensors]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from rcg.config import RDM_SOLVERS
from rcg.evaluate import fd_between, subset_fd_floor
from rcg.loaders import load, load_reps
from rcg.sample import draw_reps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="rcg cache-reps output the RDMs were trained on")
    ap.add_argument("--rdm", action="append", required=True, help="RDM run directory (repeatable)")
    ap.add_argument("--num", type=int, default=10000, help="samples per set (= the floor's subset size)")
    ap.add_argument("--sets", type=int, default=3, help="independent sample sets per RDM")
    ap.add_argument("--first-set", type=int, default=0, help="index of the first sample set (to add sets later)")
    ap.add_argument("--subsets", type=int, default=200, help="real subsets averaged for the floor")
    ap.add_argument("--heldout", help="cache-reps of held-out images by the same encoder: also report the FD of one "
                                      "view per held-out image (new images of the true distribution) vs the cache")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the run's sample_steps)")
    ap.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the run's eta)")
    ap.add_argument("--solver", choices=RDM_SOLVERS, help="sampler (default: the run's)")
    ap.add_argument("--out", default="benchmarks/results/rdm_rep_fd.jsonl")
    a = ap.parse_args()

    reps = load_reps(a.cache)[0]["reps"].float()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    floor = subset_fd_floor(reps, a.num, a.subsets, seed=0)
    print(f"floor: {a.num} of {len(reps)} real representations vs all: {floor['mean']:.4f} +- {floor['std']:.4f} "
          f"(min {min(floor['all']):.4f}, max {max(floor['all']):.4f}; {a.subsets} subsets)", flush=True)
    if a.heldout:
        t = load_reps(a.heldout)[0]
        idx = t["image_index"]
        order = torch.argsort(idx, stable=True)                  # the first view of each image
        first = order[torch.cat([torch.tensor([True]), idx[order][1:] != idx[order][:-1]])]
        held = t["reps"].float()[first[:a.num]]
        fd = fd_between(held, reps)
        print(f"held-out: one view of each of {len(held)} held-out images vs all: {fd:.4f} = {fd / floor['mean']:.2f}x "
              f"the floor", flush=True)
        with open(a.out, "a") as fh:
            fh.write(json.dumps({"heldout": a.heldout, "num": len(held), "fd": fd, "floor_mean": floor["mean"],
                                 "ratio": fd / floor["mean"], "date": date.today().isoformat()}) + "\n")
    for run in a.rdm:
        rec = load("rdm", run)
        model, cfg = rec.module, rec.config
        steps = a.steps or (cfg.sample_steps if cfg else 250)
        eta = a.eta if a.eta is not None else (cfg.eta if cfg else 1.0)
        fds, t0 = [], time.time()
        for s in range(a.first_set, a.first_set + a.sets):
            x = draw_reps(model, cfg, a.num, steps, eta, seed=s * a.num, batch_size=1000,
                          solver=a.solver)["reps"]                     # disjoint seeds
            fds.append(fd_between(x, reps))
            print(f"  {run} set {s}: FD {fds[-1]:.4f}", flush=True)
        f = np.array(fds)
        row = {"rdm": run, "steps": steps, "eta": eta, "solver": a.solver or getattr(cfg, "solver", "ddim"),
               "num": a.num, "fd": fds, "fd_mean": float(f.mean()),
               "sets": list(range(a.first_set, a.first_set + a.sets)),
               "fd_std": float(f.std(ddof=1)) if len(f) > 1 else 0.0, "floor_mean": floor["mean"],
               "floor_std": floor["std"], "subsets": a.subsets, "ratio": float(f.mean()) / floor["mean"],
               "excess": float(f.mean()) - floor["mean"], "sample_wall_s": round(time.time() - t0, 1),
               "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
               "date": date.today().isoformat()}
        print(f"{run}: FD {row['fd_mean']:.4f} +- {row['fd_std']:.4f} ({a.sets} sets, {row['solver']} {steps} steps, "
              f"eta {eta}) = {row['ratio']:.2f}x the floor; excess {row['excess']:.4f}", flush=True)
        with open(a.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
