"""Images/s of RCG sampling (RDM -> representation -> pixel generator -> image) with the paper's sampler settings
against the fast ones, side by side in one run, with the quality of each: the domain FID of ``--num``
Fashion-MNIST samples and the representation FD of the generated images (and of the RDM's samples).

Settings (``SETTINGS``):

- ``paper``: the RDM's DDIM 250 steps, eta 1; MAGE 20 decoding steps; DiT ancestral sampling on 250 respaced
  steps (the official evaluation settings, RCG_FACTS); float32;
- ``fast``: DPM-Solver++ 2M, 20 steps, for the RDM (``--fast-rdm-solver``, ``--fast-rdm-steps``); its SDE form,
  50 steps, for the DiT (``--fast-dit-solver``, ``--fast-dit-steps``; chosen with ``pixel_solver_fd.py``, where
  ancestral and DDIM sampling at 50 steps lost 8 % of FID); MAGE 12 decoding steps (``--fast-mage-steps``; the
  ``fmnist-mage`` preset's), its tokens drawn by inverse CDF at the unknown positions (``token_draw="cdf"``;
  ``--fast-encoder-drop`` adds ``encoder_drop``); bf16 autocast where the CPU has it natively; ``--fast-compile``:
  the generator's blocks under ``torch.compile`` (the compilation counts in the generator's seconds).

The representations of one setting are drawn once (timed) and shared by the generators (same seeds), so the
images/s of a row is ``num / (RDM seconds + generator seconds)``; metrics are computed afterwards, untimed.
``--batch`` rows go to the RDM and to each generator's sampler at a time; on a CPU the MAGE and DiT samplers
run them 128 rows per pass (:mod:`rcg.pixel.rows`), in both settings.

    python benchmarks/sampling_speed.py --rdm runs/fmnist-rdm --mage runs/mage --dit runs/dit \\
        --evalnet runs/fmnist-evalnet --cache runs/cache.safetensors [--num 10000]

Writes ``benchmarks/results/sampling_speed.json``: ``{"rows": [{"generator", "setting", "img_per_s", "fid",
"rep_fd", "rdm_steps", "pixel_steps", ...}], "meta": {generator: {...}}}``. The rows and meta of the generators
measured replace theirs in an existing file and keep the others', so the MAGE and the DiT path can be measured
by two processes side by side (one thread each) into one file.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from rcg import evaluate as E
from rcg.config import PIXEL_SAMPLERS, RDM_SOLVERS, DataConfig
from rcg.data import load_dataset
from rcg.dist import setup as setup_torch
from rcg.evaluate import fd_between
from rcg.loaders import load, load_reps
from rcg.precision import native_bf16
from rcg.sample import RCGSampler, draw_reps

SETTINGS = {
    "paper": {"rdm_solver": "ddim", "rdm_steps": 250, "mage_steps": 20, "dit_sampler": "ddpm", "dit_steps": 250,
              "bf16": False, "token_draw": "gumbel", "encoder_drop": False, "compile": False},
    "fast": {"rdm_solver": "dpm++2m", "rdm_steps": 20, "mage_steps": 12, "dit_sampler": "dpm++2m-sde",
             "dit_steps": 50, "bf16": None, "token_draw": "cdf", "encoder_drop": False, "compile": False},
}


def system(run: str, rdm: str, dev, setting: dict) -> RCGSampler:
    s = RCGSampler(run, rdm, dev)
    mage = s.spec.name == "mage"
    s.cfg = replace(s.cfg, sample_bf16=setting["bf16"], token_draw=setting["token_draw"],   # configure rebuilds
                    encoder_drop=setting["encoder_drop"])
    s.configure(sampler=None if mage else setting["dit_sampler"], steps=setting["mage_steps" if mage else "dit_steps"],
                rdm_solver=setting["rdm_solver"], rdm_steps=setting["rdm_steps"])
    return s.compile() if setting["compile"] else s          # compiled on the first (timed) batch


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rdm", required=True)
    ap.add_argument("--mage", help="train-pixel run of MAGE")
    ap.add_argument("--dit", help="train-pixel run of the DiT")
    ap.add_argument("--evalnet", required=True)
    ap.add_argument("--cache", required=True, help="the representation cache: reference of the rep FDs")
    ap.add_argument("--num", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--settings", default="paper,fast")
    ap.add_argument("--fast-rdm-solver", choices=RDM_SOLVERS, default=SETTINGS["fast"]["rdm_solver"],
                    help="the fast setting's RDM solver (dpm++2m-sde for a v RDM such as fmnist-rdm-v)")
    ap.add_argument("--fast-rdm-steps", type=int, default=SETTINGS["fast"]["rdm_steps"])
    ap.add_argument("--fast-dit-solver", choices=PIXEL_SAMPLERS,
                    default=SETTINGS["fast"]["dit_sampler"])
    ap.add_argument("--fast-dit-steps", type=int, default=SETTINGS["fast"]["dit_steps"])
    ap.add_argument("--fast-mage-steps", type=int, default=SETTINGS["fast"]["mage_steps"])
    ap.add_argument("--fast-encoder-drop", action=argparse.BooleanOptionalAction,
                    default=SETTINGS["fast"]["encoder_drop"],
                    help="the fast setting's MAGE encoder sees the known tokens (+ training's count of masks) only")
    ap.add_argument("--fast-compile", action=argparse.BooleanOptionalAction, default=SETTINGS["fast"]["compile"],
                    help="torch.compile the generator's blocks in the fast setting (the compilation is timed)")
    ap.add_argument("--data", default="fmnist", help="reference images of the FID (fmnist train)")
    ap.add_argument("--work", default="runs/sampling-speed", help="keeps the FID reference statistics")
    ap.add_argument("--out", default="benchmarks/results/sampling_speed.json")
    a = ap.parse_args()
    SETTINGS["fast"].update(rdm_solver=a.fast_rdm_solver, rdm_steps=a.fast_rdm_steps, dit_sampler=a.fast_dit_solver,
                            dit_steps=a.fast_dit_steps, mage_steps=a.fast_mage_steps,
                            encoder_drop=a.fast_encoder_drop, compile=a.fast_compile)
    dev = setup_torch()
    Path(a.work).mkdir(parents=True, exist_ok=True)
    runs = {g: r for g, r in (("mage", a.mage), ("dit", a.dit)) if r}
    if not runs:
        raise SystemExit("give --mage RUN and/or --dit RUN")
    net = load("evalnet", a.evalnet, dev).module
    real = load_reps(a.cache)[0]["reps"].float()
    rows = []
    for name in a.settings.split(","):
        setting = SETTINGS[name]
        systems = {gen: system(run, a.rdm, dev, setting) for gen, run in runs.items()}
        s0 = next(iter(systems.values()))
        res, rdm_s = timed(lambda: draw_reps(s0.rdm, s0.rdm_cfg, a.num, batch_size=a.batch))
        reps = res["reps"]
        rdm_fd = fd_between(reps, real)
        print(f"{name}: {a.num} RDM samples ({setting['rdm_solver']}, {setting['rdm_steps']} steps) in {rdm_s:.1f} s, "
              f"RDM rep FD {rdm_fd:.3f}", flush=True)
        for gen, s in systems.items():
            shape = s.image_shape
            data = DataConfig(a.data, split="train", resolution=shape[1], channels=shape[0])
            ref = E.reference_stats(lambda: load_dataset(data), net, source_name=str(data), progress=False,
                                    cache=Path(a.work) / f"ref-{a.data}-{shape[1]}px-{net.name}.npz")

            def generate():
                return [s.images_from_reps(reps[i:i + a.batch].to(s.device), range(i, min(i + a.batch, a.num)))
                        for i in range(0, a.num, a.batch)]
            images, gen_s = timed(generate)
            m = E.evaluate_stream(images, net, ref, rep_encoder=s.encoder, rep_reference=real, progress=False)
            row = {"generator": gen, "setting": name, "img_per_s": round(a.num / (rdm_s + gen_s), 2),
                   "fid": m["fid_dom"], "rep_fd": m["rep_fd"], "rdm_rep_fd": rdm_fd,
                   "rdm_steps": setting["rdm_steps"], "rdm_solver": setting["rdm_solver"],
                   "pixel_steps": s.cfg.steps, "pixel_sampler": s.cfg.sampler if gen != "mage" else "mage-iterative",
                   "bf16": setting["bf16"], "encoder_drop": setting["encoder_drop"] if gen == "mage" else None,
                   "compile": setting["compile"],
                   "rdm_s": round(rdm_s, 1), "pixel_s": round(gen_s, 1),
                   "num_samples": m["num_samples"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(dev),
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "rdm": a.rdm, "runs": runs,
            "evalnet": a.evalnet, "feature_net": net.name, "settings": SETTINGS}
    out = Path(a.out)
    old = json.loads(out.read_text()) if out.exists() else {"rows": [], "meta": {}}
    if "cpu_capability" in old["meta"]:
        old["meta"] = {}                                       # an older file's single meta: replaced
    rows = [r for r in old["rows"] if r["generator"] not in runs] + rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "meta": {**old["meta"], **{g: meta for g in runs}}}, indent=2) + "\n")
    print(f"\nwrote {a.out}\n\n| generator | setting | img/s | FID (dom) | rep FD | RDM rep FD | RDM steps | pixel steps |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['generator']} | {r['setting']} | {r['img_per_s']} | {r['fid']:.2f} | {r['rep_fd']:.3f} | "
              f"{r['rdm_rep_fd']:.3f} | {r['rdm_solver']} {r['rdm_steps']} | {r['pixel_sampler']} {r['pixel_steps']} |")
    for gen in sorted({r["generator"] for r in rows}):
        by = {r["setting"]: r for r in rows if r["generator"] == gen}
        if {"paper", "fast"} <= set(by):
            p, f = by["paper"], by["fast"]
            print(f"{gen}: fast / paper: {f['img_per_s'] / p['img_per_s']:.2f}x images/s, FID {f['fid'] / p['fid']:.3f}x, "
                  f"rep FD {f['rep_fd'] / p['rep_fd']:.3f}x")


if __name__ == "__main__":
    main()
