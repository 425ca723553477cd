"""Data-parallel scaling of RDM training on the CPU: 1 process vs N gloo processes (torchrun), same global batch.

Runs the real training loop (``rcg.train.fit``, with the train-rdm loss) on random representations, once in one
process with all the threads and once under ``torchrun --nproc_per_node=N`` with threads / N each, and prints
the images/s of each and their ratio. Takes well under a minute at the defaults on a 2-core machine.

    python benchmarks/dist_scaling.py [--nproc 2] [--threads 2] [--batch-size 256] [--steps 10] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def worker(a) -> None:
    """One process of one configuration: time steps [warmup, warmup + steps) of fit()."""
    import torch
    from rcg import dist
    from rcg.config import OptimConfig
    from rcg.presets import RDM_RUN_PRESETS
    from rcg.diffusion import GaussianDiffusion
    from rcg.rdm import RDM
    from rcg.rng import EpochBatches
    from rcg.train import Job, fit
    from dataclasses import replace

    dist.init()
    torch.set_num_threads(max(1, a.threads // dist.world_size()))
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    cfg = replace(RDM_RUN_PRESETS[a.rdm_preset].model, in_channels=a.dim)
    model, diffusion = RDM(cfg), GaussianDiffusion()
    reps = torch.randn(a.batch_size * 4, a.dim, generator=torch.Generator().manual_seed(0))
    batches = EpochBatches(len(reps), a.batch_size, seed=0)
    total = a.warmup + a.steps + 1
    marks = {}

    def loss(batch, gen):                             # as in rcg.stages.rdm.train_rdm
        marks[batch.step] = time.perf_counter()
        t = batch.take(torch.randint(0, diffusion.num_steps, (batch.size,), generator=gen))
        noise = batch.take(torch.randn((batch.size, a.dim), generator=gen))
        return diffusion.loss(lambda xt, tt: model(xt, tt), reps[batch.mine], t, noise), {}

    job = Job(model=model, loss=loss, batches=batches, total_steps=total)
    o = OptimConfig(batch_size=a.batch_size, lr=1e-4, weight_decay=0.01, ema_decay=0.9999, log_every=10 ** 9,
                    ckpt_every=10 ** 9)
    with tempfile.TemporaryDirectory() as run_dir:
        fit(run_dir, job, o, resuming=False, progress=False)
    wall = marks[a.warmup + a.steps] - marks[a.warmup]
    if dist.is_main():
        print("RESULT " + json.dumps({"processes": dist.world_size(), "threads_per_process": torch.get_num_threads(),
                                      "img_per_s": a.steps * a.batch_size / wall, "s_per_step": wall / a.steps}))
    dist.cleanup()


def launch(a, nproc: int) -> dict:
    args = [str(HERE), "--worker", "--threads", str(a.threads), "--batch-size", str(a.batch_size), "--steps",
            str(a.steps), "--warmup", str(a.warmup), "--dim", str(a.dim), "--rdm-preset", a.rdm_preset]
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                              if nproc > 1 else []) + args
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, a.threads // nproc))}
    t = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    res = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT "))[7:])
    res["launch_wall_s"] = round(time.time() - t, 1)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run (default 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads in all (default: all cores)")
    ap.add_argument("--batch-size", type=int, default=256, help="global batch (default 256; fmnist-rdm trains at 512)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--dim", type=int, default=256, help="representation dimension")
    ap.add_argument("--rdm-preset", default="fmnist-rdm")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        print(f"warning: load average {load:.1f} before the start; other work on the CPU distorts these numbers "
              f"(threads that wait for a busy core make the multi-threaded single process look far slower)")
    one = launch(a, 1)
    many = launch(a, a.nproc)
    ratio = many["img_per_s"] / one["img_per_s"]
    print(f"RDM ({a.rdm_preset}, dim {a.dim}) training, global batch {a.batch_size}, {a.threads} threads in all:")
    print(f"  1 process  x {one['threads_per_process']} threads: {one['img_per_s']:8.1f} img/s")
    print(f"  {a.nproc} processes x {many['threads_per_process']} threads: {many['img_per_s']:8.1f} img/s")
    print(f"  ratio {ratio:.2f} (data-parallel / single process)")
    if a.json:
        Path(a.json).write_text(json.dumps({"single": one, "parallel": many, "ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
