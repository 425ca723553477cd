"""Which cheaper sampler of a pixel generator keeps the quality of the paper's: few-step solvers of a diffusion
generator (DiT, ADM, LDM), fewer or cheaper decoding steps of MAGE.

One set of ``--num`` RDM representations (the RDM run's own solver and steps) is drawn once; every item of
``--try`` (the first one is the reference) decodes the same representations with the same per-sample seeds:
``SAMPLER:STEPS`` for a diffusion generator (default: the paper's ancestral sampling on 250 respaced steps first),
``DRAW[+drop]:STEPS[@TEMPERATURE]`` for MAGE (``gumbel:20``, the paper's, first by default; ``cdf:12``;
``+drop``: with ``encoder_drop``; ``@1.0``: that choice temperature instead of the run's). For each: seconds,
images/s of the pixel stage, domain FID against the training images and the representation FD of the generated
images against the cache, and both relative to the reference's.

    python benchmarks/pixel_solver_fd.py --run runs/dit --rdm runs/fmnist-rdm --evalnet runs/fmnist-evalnet \\
        --cache runs/cache.safetensors [--num 2000] [--try ddpm:250,ddpm:50,dpm++2m:20,dpm++2m-sde:20]
    python benchmarks/pixel_solver_fd.py --run runs/mage ... --try gumbel:20,cdf:12,cdf+drop:12,cdf+drop:16

Appends one JSON line per sampler to ``--out`` (``benchmarks/results/pixel_solver_fd.jsonl``).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from rcg import evaluate as E
from rcg.config import PIXEL_SAMPLERS, DataConfig
from rcg.data import load_dataset
from rcg.dist import setup as setup_torch
from rcg.loaders import load, load_reps
from rcg.pixel.mage_decode import TOKEN_DRAWS
from rcg.sample import RCGSampler, draw_reps

DEFAULT_TRIES = {"diffusion": "ddpm:250,ddpm:50,ddpm:25,ddim:25,dpm++2m:20,dpm++2m-sde:20",
                 "tokens": "gumbel:20,cdf:20,cdf:12,cdf+drop:20,cdf+drop:12"}


def parse_tries(text: str, tokens: bool) -> list:
    """(name, steps, temperature or None) of each ``--try`` item."""
    out = []
    for item in text.split(","):
        name, _, rest = item.partition(":")
        steps, _, temp = rest.partition("@")
        ok = name.removesuffix("+drop") in TOKEN_DRAWS if tokens else name in PIXEL_SAMPLERS and not temp
        try:
            temperature = float(temp) if temp else None
        except ValueError:
            ok = False
        if not ok or not steps.isdigit():
            want = f"DRAW[+drop]:STEPS[@T] items with DRAW one of {tuple(TOKEN_DRAWS)}" if tokens else \
                f"SAMPLER:STEPS items with SAMPLER one of {PIXEL_SAMPLERS}"
            raise SystemExit(f"--try takes {want}, got {item!r}")
        out.append((name, int(steps), temperature))
    return out


def configure(s: RCGSampler, name: str, steps: int, temperature, run_temperature: float) -> None:
    if s.spec.inputs != "tokens":
        s.configure(sampler=name, steps=steps)
        return
    s.cfg = replace(s.cfg, token_draw=name.removesuffix("+drop"), encoder_drop=name.endswith("+drop"),
                    temperature=run_temperature if temperature is None else temperature)
    s.configure(steps=steps)                                   # rebuilds the sampler from s.cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="train-pixel run of a diffusion generator")
    ap.add_argument("--rdm", required=True)
    ap.add_argument("--evalnet", required=True)
    ap.add_argument("--cache", required=True, help="the representation cache: reference of the rep FD")
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--try", dest="tries", help=f"default: {DEFAULT_TRIES['diffusion']} (MAGE: "
                                                 f"{DEFAULT_TRIES['tokens']})")
    ap.add_argument("--data", default="fmnist", help="reference images of the FID (fmnist train)")
    ap.add_argument("--work", default="runs/sampling-speed", help="keeps the FID reference statistics")
    ap.add_argument("--out", default="benchmarks/results/pixel_solver_fd.jsonl")
    a = ap.parse_args()
    dev = setup_torch()
    s = RCGSampler(a.run, a.rdm, dev)
    tokens = s.spec.inputs == "tokens"
    tries = parse_tries(a.tries or DEFAULT_TRIES["tokens" if tokens else "diffusion"], tokens)
    net = load("evalnet", a.evalnet, dev).module
    real = load_reps(a.cache)[0]["reps"].float()
    reps = draw_reps(s.rdm, s.rdm_cfg, a.num, batch_size=a.batch)["reps"]
    shape = s.image_shape
    data = DataConfig(a.data, split="train", resolution=shape[1], channels=shape[0])
    Path(a.work).mkdir(parents=True, exist_ok=True)
    ref = E.reference_stats(lambda: load_dataset(data), net, source_name=str(data), progress=False,
                            cache=Path(a.work) / f"ref-{a.data}-{shape[1]}px-{net.name}.npz")
    first, run_temperature = None, s.cfg.temperature
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    for name, steps, temperature in tries:
        configure(s, name, steps, temperature, run_temperature)
        t0 = time.perf_counter()
        images = [s.images_from_reps(reps[i:i + a.batch].to(s.device), range(i, min(i + a.batch, a.num)))
                  for i in range(0, a.num, a.batch)]
        sec = time.perf_counter() - t0
        m = E.evaluate_stream(images, net, ref, rep_encoder=s.encoder, rep_reference=real, progress=False)
        row = {"run": a.run, "sampler": name, "steps": steps, "temperature": s.cfg.temperature if tokens else None,
               "num": a.num, "seconds": round(sec, 1),
               "img_per_s": round(a.num / sec, 2), "fid": m["fid_dom"], "rep_fd": m["rep_fd"],
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
               "date": time.strftime("%Y-%m-%d")}
        first = first or row
        row.update(fid_vs_first=row["fid"] / first["fid"], rep_fd_vs_first=row["rep_fd"] / first["rep_fd"],
                   speed_vs_first=first["seconds"] / sec)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        at = f" @{row['temperature']:g}" if tokens else ""
        print(f"{name:12s} {steps:4d} steps{at}: {sec:7.1f} s  FID {row['fid']:.2f} ({row['fid_vs_first']:.3f}x)  "
              f"rep FD {row['rep_fd']:.3f} ({row['rep_fd_vs_first']:.3f}x)  {row['speed_vs_first']:.1f}x faster",
              flush=True)


if __name__ == "__main__":
    main()
