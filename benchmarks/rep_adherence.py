"""How closely a representation-conditioned pixel generator follows the representation it is given.

Takes ``--num`` held-out Fashion-MNIST test images, encodes them with the generator's own encoder and decodes one
image from each representation (the "oracle" conditioning of ``table1_fmnist.py``, here on images no stage trained
on). Then, for each generated image:

- **class agreement**: the domain classifier (``--evalnet``) gives it the class of the image whose representation
  it was given (the classifier's accuracy on those source images is the ceiling, one in ten the chance level);
- **rep cosine**: cosine similarity of its standardized representation with the conditioning one, against the
  same for shuffled pairs (the level of an image that ignores its representation) and for pairs of different
  sources of the same class (the level of an image that keeps only the class);
- **retrieval top-1**: its representation is nearer (cosine) to its own conditioning representation than to the
  other ``num - 1``.

A generator that makes good use of the representation scores high on all three; one whose FID barely moves
between unconditional and oracle rows (the U-Nets of BENCHMARKS.md, issue 17) shows here whether the samples
ignore the representation or follow it with poor images.

    python benchmarks/rep_adherence.py --runs runs/table1-adm3/adm-rep,runs/speed-mage \\
        --evalnet runs/fmnist-evalnet [--num 500] [--sampler dpm++2m-sde:50]

Appends one JSON line per run to ``--out`` (``benchmarks/results/rep_adherence.jsonl``).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from rcg.config import PIXEL_SAMPLERS, DataConfig
from rcg.evaluate import rep_adherence
from rcg.data import load_dataset
from rcg.dist import setup as setup_torch
from rcg.loaders import load
from rcg.sample import RCGSampler


def parse_sampler(text):
    if not text:
        return None, None
    name, _, steps = text.partition(":")
    if name not in PIXEL_SAMPLERS or not steps.isdigit():
        raise SystemExit(f"--sampler takes SAMPLER:STEPS with SAMPLER one of {PIXEL_SAMPLERS}, got {text!r}")
    return name, int(steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="comma-separated train-pixel runs conditioned on representations")
    ap.add_argument("--evalnet", required=True, help="rcg train-evalnet run (the domain classifier)")
    ap.add_argument("--num", type=int, default=500, help="held-out images (and generated images) per run")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", metavar="SAMPLER:STEPS", help="a diffusion generator's sampler instead of its run's")
    ap.add_argument("--out", default="benchmarks/results/rep_adherence.jsonl")
    a = ap.parse_args()
    dev = setup_torch()
    sampler, steps = parse_sampler(a.sampler)
    net = load("evalnet", a.evalnet, dev).module
    test = load_dataset(DataConfig("fmnist", split="test", resolution=28, channels=1))
    pick = torch.randperm(len(test.images), generator=torch.Generator().manual_seed(a.seed))[:a.num]
    src, labels = test.images[pick], test.labels[pick]
    src_pred = net.logits(src).argmax(1).cpu()
    for run in [r for r in a.runs.split(",") if r]:
        s = RCGSampler(run, None, dev)
        if s.cond != "rep":
            raise SystemExit(f"{run} is conditioned on {s.cond!r}, not on representations")
        if sampler and s.cfg.generator != "mage":
            s.configure(sampler=sampler, steps=steps)
        t0 = time.time()
        reps, gen = [], []
        for i in range(0, a.num, a.batch):
            r = s.reps_from_images(src[i:i + a.batch])
            reps.append(r.cpu())
            gen.append(s.images_from_reps(r, range(a.seed + i, a.seed + i + len(r))))
        reps, gen = torch.cat(reps), torch.cat(gen)
        gen_reps = torch.cat([s.reps_from_images(gen[i:i + a.batch]).cpu() for i in range(0, a.num, a.batch)])
        row = {"run": run, "generator": s.cfg.generator, "num": a.num,
               "sampler": "mage-iterative" if s.cfg.generator == "mage" else f"{s.cfg.sampler} {s.cfg.steps}",
               **rep_adherence(reps, gen_reps, net.logits(gen).argmax(1).cpu(), labels, src_pred, a.seed),
               "wall_s": round(time.time() - t0, 1), "feature_net_sha256": net.weights_sha256,
               "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
               "date": time.strftime("%Y-%m-%d")}
        print(json.dumps(row), flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
