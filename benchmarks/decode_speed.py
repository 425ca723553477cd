"""Seconds of a pixel generator's sampling loop on the CPU, eager against ``torch.compile`` of the generator's
blocks (:meth:`rcg.sample.RCGSampler.compile`), each measurement in a fresh process, the modes interleaved.

Every mode decodes the same ``--num`` representations of real crops (the first of the cache) with the same
per-sample seeds, ``--batch`` at a time (the samplers run 128 rows per pass on a CPU), after one warm-up batch
(where the compiled mode compiles: timed apart, left out of the rate), and reports the seconds of each round and
how many images differ from the eager mode's (compiled kernels may round differently).

    python benchmarks/decode_speed.py --run runs/mage --cache runs/cache.safetensors [--num 512] [--rounds 3] \\
        [--draw cdf --steps 12] [--threads 1]

Writes ``benchmarks/results/decode_speed.json`` (one entry per run and setting).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rcg.loaders import load_reps
from rcg.sample import RCGSampler

MODES = ("eager", "compiled")


def measure_one(a, mode: str, out: str) -> None:
    """One measurement in this (fresh) process: the seconds of the timed batches, and the images."""
    torch.set_num_threads(a.threads)
    s = RCGSampler(a.run, None, "cpu")
    if s.spec.inputs == "tokens":
        s.cfg = replace(s.cfg, token_draw=a.draw or s.cfg.token_draw)
        s.configure(steps=a.steps or s.cfg.steps)                 # a change: rebuilds the sampler from s.cfg
    else:
        s.configure(sampler=a.sampler, steps=a.steps)
    reps = load_reps(a.cache)[0]["reps"][: a.num].float()
    if mode == "compiled":
        s.compile()
    warm = time.perf_counter()
    s.images_from_reps(reps[: a.batch], range(a.batch))          # warm-up batch (compiles in the compiled mode)
    warm = time.perf_counter() - warm
    t0 = time.perf_counter()
    images = [s.images_from_reps(reps[i:i + a.batch], range(i, min(i + a.batch, a.num)))
              for i in range(0, a.num, a.batch)]
    np.savez(out, images=torch.cat(images).numpy(), seconds=time.perf_counter() - t0, warm=warm, steps=s.cfg.steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="train-pixel run (MAGE or a diffusion generator)")
    ap.add_argument("--cache", required=True, help="its representation cache (the representations decoded)")
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--steps", type=int, help="decoding / sampling steps (default: the run's)")
    ap.add_argument("--draw", choices=["gumbel", "cdf"], help="MAGE's token draw (default: the run's)")
    ap.add_argument("--sampler", help="a diffusion generator's sampler (default: the run's)")
    ap.add_argument("--out", default="benchmarks/results/decode_speed.json")
    ap.add_argument("--one", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)   # a child process
    a = ap.parse_args()
    if a.one:
        return measure_one(a, *a.one)
    modes = a.modes.split(",")
    if set(modes) - set(MODES):
        raise SystemExit(f"--modes takes {','.join(MODES)}")
    seconds = {m: [] for m in modes}
    results, ref = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for m in modes if r % 2 == 0 else modes[::-1]:
                out = Path(tmp) / f"{m}-{r}.npz"
                subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", m, str(out)], check=True)
                z = np.load(out)
                seconds[m].append(float(z["seconds"]))
                if ref is None:
                    ref = z["images"]
                results.setdefault(m, {"differing_images": 0, "warmup_s": []})
                results[m]["differing_images"] = max(results[m]["differing_images"],
                                                     int((z["images"] != ref).reshape(len(ref), -1).any(1).sum()))
                results[m]["warmup_s"].append(round(float(z["warm"]), 2))
                steps = int(z["steps"])
                print(f"{m} round {r}: {seconds[m][-1]:.2f} s (warm-up batch {float(z['warm']):.1f} s)", flush=True)
    base = statistics.median(seconds[modes[0]])
    for m in modes:
        med = statistics.median(seconds[m])
        results[m].update(seconds=seconds[m], median_s=round(med, 3), img_per_s=round(a.num / med, 2),
                          speedup=round(base / med, 3))
    key = f"{a.run} draw={a.draw} sampler={a.sampler} steps={steps} num={a.num} threads={a.threads} modes={a.modes}"
    meta = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": a.threads,
            "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__, "speedup_vs": modes[0]}
    path = Path(a.out)
    old = json.loads(path.read_text()) if path.is_file() else {}
    old[key] = {"modes": results, "meta": meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(old, indent=2) + "\n")
    print(f"\nwrote {a.out}\n\n| mode | median s | img/s | speed-up vs {modes[0]} | differing images |")
    print("|---|---|---|---|---|")
    for m in modes:
        r = results[m]
        print(f"| {m} | {r['median_s']} | {r['img_per_s']} | {r['speedup']}x | {r['differing_images']} |")


if __name__ == "__main__":
    main()
