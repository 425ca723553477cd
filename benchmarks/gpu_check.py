"""GPU check: training and sampling throughput of the paper-sized networks on one GPU, in a few minutes.

Times, with random weights and random inputs of the right shapes (the step is that of ``rcg train-pixel`` /
``rcg train-rdm``: the generator's own loss, backward, gradient clipping where the preset clips, AdamW):

- training images/s at bf16 autocast and at fp32 (TF32 matmuls allowed) of MAGE-B, the RDM ``rdm-l12-w1536``
  and DiT-XL/2 (rep-conditioned, on 4x32x32 latents), with the FLOPs of one step (``FlopCounterMode``), the
  achieved fraction of the GPU's dense peak and the peak memory;
- ``imagenet-rcg-mage-b`` generation images/s (RDM DDIM 250 steps, MAGE-B 20 steps with guidance, VQGAN
  decoding at 256 px) through ``RCGSampler.stream``, in fp32 and under bf16 autocast;
- with 2 or more GPUs, a 1-process vs 2-process NCCL ``rcg train-rdm`` run on a tiny synthetic cache that must
  end with the same weights (as tests/test_dist.py does with gloo).

Every run is guarded (a failure, e.g. out of memory, is recorded as an error string and the rest still runs);
past ``--budget-s`` the remaining runs are skipped and say so. ``--tiny``: the same code on the CPU with tiny
configs, in seconds (what tests/test_gpu_check.py runs).

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json] [--markdown] [--tiny]
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rcg import pixel
from rcg.config import DIT_DIFFUSION, DataConfig, EncoderRun, OptimConfig, PixelRun
from rcg.diffusion import GaussianDiffusion
from rcg.encoders import Encoder, EncoderConfig
from rcg.loaders import REPS_KIND, load
from rcg.optim import make_optimizer
from rcg.paper import PAPER_PRESETS
from rcg.pixel.dit import DIT_PRESETS
from rcg.pixel.mage import MAGE_PRESETS
from rcg.precision import autocast
from rcg.presets import ENCODER_PRESETS, PIXEL_PRESETS, RDM_RUN_PRESETS, TOKENIZER_PRESETS
from rcg.rdm import RDM, RDMConfig
from rcg.rng import step_generator
from rcg.sample import RCGSampler
from rcg.store import WEIGHTS, load_state, load_tensors, prepare_run_dir, save_tensors
from rcg.tokenizer import VQConfig, VQModel
from rcg.tree import to_dict

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"
GIB = 2 ** 30
# dense peak TFLOP/s (NVIDIA data sheets): (name fragment, fragments that mean another part, peaks)
PEAKS = (("H200", ("NVL",), {"bf16": 989.4, "tf32": 494.7, "fp32": 67.0}),
         ("H100", ("PCIe", "NVL"), {"bf16": 989.4, "tf32": 494.7, "fp32": 67.0}),
         ("A100", (), {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}))
DIT_RUN = PixelRun(generator="dit", model=DIT_PRESETS["dit-xl-2"], diffusion=DIT_DIFFUSION,
                   autoencoder="stabilityai/sd-vae-ft-ema",          # DiT's recipe: AdamW 1e-4, no weight decay
                   optim=OptimConfig(batch_size=256, lr=1e-4, weight_decay=0.0))
TINY_MAGE = replace(MAGE_PRESETS["mage-tiny"], codebook_size=32, num_tokens=16, embed_dim=32, depth=1, num_heads=2,
                    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, rep_dim=16)
TINY_RDM = RDMConfig(in_channels=16, time_embed_dim=16, model_channels=32, num_res_blocks=2)


def networks(tiny: bool) -> dict:
    """name -> the run config of each trained network (the paper's, or tiny ones of the same kinds)."""
    mage, rdm, dit = PIXEL_PRESETS["mage-b"], RDM_RUN_PRESETS["rdm-l12-w1536"], DIT_RUN
    if tiny:
        mage, rdm = replace(mage, model=TINY_MAGE), replace(rdm, model=TINY_RDM)
        dit = replace(dit, model=replace(dit.model, input_size=8, hidden_size=32, depth=1, num_heads=2, rep_dim=16))
    return {"mage-b": mage, "rdm-l12-w1536": rdm, "dit-xl-2": dit}


def peak_tflops(dev: torch.device, kind: str):
    """(dense peak TFLOP/s of ``kind`` (bf16 / tf32 / fp32) on this GPU, its description), or (None, None)."""
    if dev.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(dev)
    for frag, other, peaks in PEAKS:
        if frag in name and not any(o in name for o in other):
            return peaks[kind], f"{frag} {kind} dense {peaks[kind]} TFLOP/s"
    return None, f"unknown GPU {name!r}: no peak table"


def memory(dev: torch.device) -> dict:
    """Peak memory since the last :func:`reset_memory`: CUDA allocations, or the process's peak RSS (CPU)."""
    if dev.type == "cuda":
        return {"peak_memory_gib": round(torch.cuda.max_memory_allocated(dev) / GIB, 3),
                "memory_source": "torch.cuda.max_memory_allocated"}
    return {"peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3),
            "memory_source": "process peak RSS (since the start, not reset)"}


def reset_memory(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def training_job(run, batch: int, dev: torch.device):
    """(model, loss(generator) -> scalar) on one fixed random batch: the pixel generator's registry loss (as
    ``rcg train-pixel`` calls it) or the RDM's diffusion loss (as ``rcg train-rdm``)."""
    if isinstance(run, PixelRun):
        spec = pixel.generator(run.generator)
        model = spec.network(run.model).to(dev)
        loss_of, c = spec.trainer(model, run), run.model
        if spec.inputs == "tokens":
            x = torch.randint(0, c.codebook_size, (batch, c.num_tokens), device=dev)
        else:
            x = torch.randint(0, 256, (batch, c.in_channels, c.input_size, c.input_size), dtype=torch.uint8, device=dev)
        reps = torch.randn(batch, c.rep_dim, device=dev)
        return model, lambda gen: loss_of(x, reps, None, gen, slice(0, batch), batch)[0]
    model = RDM(run.model).to(dev)
    diffusion = GaussianDiffusion(**to_dict(run.diffusion)).to(dev)
    x0 = torch.randn(batch, run.model.in_channels, device=dev)

    def loss(gen):
        t = torch.randint(0, diffusion.num_steps, (batch,), generator=gen).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        return diffusion.loss(lambda xt, tt: model(xt, tt, None), x0, t, noise)
    return model, loss


def optimizer(model: torch.nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    """AdamW as rcg.train builds it (no weight decay on biases and norms where the preset says so)."""
    return make_optimizer([p for p in model.parameters() if p.requires_grad], o)


def time_training(run, batch: int, dev: torch.device, bf16: bool, warmup: int, steps: int) -> dict:
    """images/s of forward + backward (+ clipping) + AdamW steps; FLOPs counted on the first step."""
    reset_memory(dev)
    torch.manual_seed(0)
    model, loss_fn = training_job(run, batch, dev)
    model.train()
    opt, o = optimizer(model, run.optim), run.optim
    params = [p for p in model.parameters() if p.requires_grad]

    def step(i: int) -> None:
        with autocast(dev, bf16):
            loss = loss_fn(step_generator(o.seed, i))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
        opt.step()

    # FlopCounterMode has no formula for the CPU's fused attention kernel: count the CPU step with the math one
    with FlopCounterMode(display=False) as fc, (sdpa_kernel(SDPBackend.MATH) if dev.type == "cpu" else nullcontext()):
        step(0)
    for i in range(warmup):
        step(1 + i)
    sync(dev)
    t = time.perf_counter()
    for i in range(steps):
        step(1 + warmup + i)
    sync(dev)
    wall = time.perf_counter() - t
    flops = fc.get_total_flops()
    kind = "bf16" if bf16 else ("tf32" if dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else "fp32")
    peak, which = peak_tflops(dev, kind)
    achieved = flops * steps / wall / 1e12
    return {"precision": "bf16 autocast" if bf16 else f"fp32 (TF32 matmul {'allowed' if kind == 'tf32' else 'off'})",
            "batch_size": batch, "params": sum(p.numel() for p in params), "steps": steps, "warmup": warmup,
            "images_per_s": round(batch * steps / wall, 2), "s_per_step": round(wall / steps, 5),
            "step_flops": int(flops), "achieved_tflops": float(f"{achieved:.4g}"), "peak_tflops": peak,
            "peak_used": which,
            "fraction_of_peak": round(achieved / peak, 4) if peak else None, **memory(dev)}


def paper_sampler(dev: torch.device, tiny: bool) -> RCGSampler:
    """``imagenet-rcg-mage-b`` with random weights: MAGE-B, the 256 px VQGAN, the paper's RDM and the MoCo v3
    ViT-B encoder, assembled as rcg.paper.load_paper_system does (its decoding and DDIM settings)."""
    p = PAPER_PRESETS["imagenet-rcg-mage-b"]
    model_cfg, vq = PIXEL_PRESETS[p.mage].model, TOKENIZER_PRESETS["vqgan-f16-1024"].model
    enc, rdm_run = ENCODER_PRESETS[p.encoder].encoder, RDM_RUN_PRESETS[p.rdm]
    steps, rdm_steps = p.steps, p.rdm_steps
    if tiny:
        model_cfg, rdm_run, steps, rdm_steps = TINY_MAGE, replace(rdm_run, model=TINY_RDM), 3, 5
        vq = VQConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=8, embed_dim=8, n_embed=32,
                      resolution=16, num_groups=4)
        enc = EncoderConfig(arch="resnet", in_chans=3, widths=(8, 16), depths=(1, 1), mlp_dim=32, rep_dim=16)
    torch.manual_seed(0)
    parts = [m.requires_grad_(False).eval().to(dev) for m in
             (pixel.generator("mage").network(model_cfg), VQModel(vq), Encoder(enc), RDM(rdm_run.model))]
    cfg = PixelRun(generator="mage", model=model_cfg, steps=steps, temperature=p.temperature, guidance=p.guidance,
                   optim=PIXEL_PRESETS[p.mage].optim)
    rdm_cfg = replace(rdm_run, sample_steps=rdm_steps, eta=p.eta)
    return RCGSampler.from_parts(parts[0], cfg, parts[1], parts[2], parts[3], rdm_cfg, dev)


def time_generation(dev: torch.device, tiny: bool, batch: int, num: int, bf16: bool) -> dict:
    """images/s of ``sampler.stream(num, seed=0, batch_size=batch)`` end to end, after one warm-up batch."""
    reset_memory(dev)
    sampler = paper_sampler(dev, tiny)
    with autocast(dev, bf16):
        list(sampler.stream(batch, seed=0, batch_size=batch))
        sync(dev)
        t = time.perf_counter()
        images = torch.cat(list(sampler.stream(num, seed=0, batch_size=batch)))
        sync(dev)
    wall = time.perf_counter() - t
    return {"precision": "bf16 autocast" if bf16 else "fp32", "batch_size": batch, "images": len(images),
            "image_shape": list(images.shape[1:]), "rdm_steps": sampler.rdm_cfg.sample_steps,
            "mage_steps": sampler.cfg.steps, "images_per_s": round(len(images) / wall, 3),
            "wall_s": round(wall, 3), **memory(dev)}


def synthetic_cache(root: Path) -> tuple:
    """(encoder run dir, cache file): an untrained tiny encoder and 64 random 16-d representations it 'made'."""
    run = EncoderRun(data=DataConfig("fmnist", resolution=16, channels=1),
                     encoder=EncoderConfig(arch="resnet", in_chans=1, widths=(8, 16), depths=(1, 1), mlp_dim=32,
                                           rep_dim=16))
    torch.manual_seed(0)
    d, _ = prepare_run_dir(root / "enc", to_dict(run))
    save_tensors(d / WEIGHTS, Encoder(run.encoder).state_dict())
    fp = load("encoder", d).fingerprints["self"]
    reps = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    save_tensors(root / "cache.safetensors", {"reps": reps, "image_index": torch.arange(32).repeat_interleave(2)},
                 {"kind": REPS_KIND, "encoder": str(d), "encoder_fingerprint": fp, "views": 2})
    return d, root / "cache.safetensors"


def dist_check(root: Path, device: str = "cuda", nproc: int = 2, tolerance: float = 1e-3) -> dict:
    """``rcg train-rdm`` on a tiny synthetic cache in 1 process and under torchrun with ``nproc`` (NCCL for
    CUDA), same global batch: the raw and EMA weights of both runs must agree within ``tolerance`` (TF32
    on CUDA and the per-process batch change the summation order)."""
    enc, cache = synthetic_cache(root)
    sets = ["model.model_channels=32", "model.time_embed_dim=16", "model.num_res_blocks=2", "optim.epochs=1.5",
            "optim.batch_size=32", "optim.lr=1e-4", "optim.log_every=2", "optim.ckpt_every=4", "sample_steps=5",
            "fd_samples=16", "optim.sample_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n in (1, nproc):
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1 else []
        cmd = [sys.executable, *launch, "-m", "rcg", "train-rdm", "--preset", "fmnist-rdm", "--cache", str(cache),
               "--encoder", str(enc), "--out", str(root / f"rdm-{n}"), "--device", device, "--no-bf16",
               "--no-progress"] + [x for s in sets for x in ("--set", s)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"{n}-process train-rdm failed: {p.stderr[-1500:]}")
    diffs = {}
    for what in ("ema", "raw"):
        a, b = ((load_tensors(root / f"rdm-{n}" / "checkpoint.safetensors")[0] if what == "ema" else
                 load_state(root / f"rdm-{n}" / "state.pt")["model"]) for n in (1, nproc))
        diffs[what] = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    ema, raw = load_tensors(root / "rdm-1" / "checkpoint.safetensors")[0], load_state(root / "rdm-1" / "state.pt")
    moved = any(not torch.equal(raw["model"][k], ema[k]) for k in ema if ema[k].is_floating_point())
    return {"processes": [1, nproc], "device": device, "steps": int(raw["step"]),
            "max_abs_diff_ema": diffs["ema"], "max_abs_diff_raw": diffs["raw"], "tolerance": tolerance,
            "weights_trained": moved, "equal_within_tolerance": max(diffs.values()) <= tolerance and moved}


def environment(dev: torch.device) -> dict:
    cuda = dev.type == "cuda"
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda
            else None, "gpu": torch.cuda.get_device_name(dev) if cuda else None,
            "gpu_count": torch.cuda.device_count(), "device": str(dev),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_threads": torch.get_num_threads(),
            "python": platform.python_version(), "machine": platform.machine(),
            "tf32_matmul_allowed": bool(cuda and torch.backends.cuda.matmul.allow_tf32)}


class Budget:
    """Runs each section guarded (an exception becomes {"error": ...}); past the deadline, a skip note."""

    def __init__(self, seconds: float, dev: torch.device):
        self.seconds, self.dev, self.t0, self.skipped = seconds, dev, time.time(), []

    def run(self, label: str, fn, *args):
        if time.time() - self.t0 > self.seconds:
            self.skipped.append(label)
            return f"skipped: past the time budget ({self.seconds:.0f} s)"
        print(f"[{time.time() - self.t0:6.1f} s] {label}", file=sys.stderr, flush=True)
        try:
            return fn(*args)
        except Exception as e:      # e.g. CUDA out of memory: recorded, the other sections still run
            return {"error": f"{type(e).__name__}: {str(e)[:800]}"}
        finally:
            reset_memory(self.dev)


def run_all(a) -> dict:
    """Every section into one JSON-able dict."""
    dev = torch.device("cpu" if a.tiny else "cuda")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_flush_denormal(True)
    budget = Budget(a.budget_s, dev)
    batches = {"mage-b": a.mage_batch, "rdm-l12-w1536": a.rdm_batch, "dit-xl-2": a.dit_batch}
    out = {"tiny": a.tiny, "environment": environment(dev), "training": {}, "generation": {}}
    for name, run in networks(a.tiny).items():
        out["training"][name] = {p: budget.run(f"train {name} {p}", time_training, run, batches[name], dev,
                                               p == "bf16", a.warmup, a.steps) for p in ("bf16", "fp32")}
    out["generation"]["imagenet-rcg-mage-b"] = {
        p: budget.run(f"generate imagenet-rcg-mage-b {p}", time_generation, dev, a.tiny, a.gen_batch, a.gen_num,
                      p == "bf16") for p in ("fp32", "bf16")}
    gpus = torch.cuda.device_count()
    if gpus >= 2:
        with tempfile.TemporaryDirectory() as tmp:
            out["nccl_check"] = budget.run("nccl 1 vs 2 processes", dist_check, Path(tmp))
    else:
        out["nccl_check"] = f"skipped: {gpus} GPU"
    out.update(skipped=budget.skipped, budget_s=a.budget_s, wall_s=round(time.time() - budget.t0, 1))
    return out


def _cell(r, key: str, fmt: str = "{}") -> str:
    return fmt.format(r[key]) if isinstance(r, dict) and r.get(key) is not None else "–"


def markdown(res: dict, header: bool = True) -> str:
    """The results as Markdown table rows (with the header unless ``header`` is False)."""
    rows = ["| part | network | precision | batch | images/s | TFLOP/s achieved | fraction of peak | peak GiB |",
            "|---|---|---|---|---|---|---|---|"] if header else []
    for part, table in (("train", res["training"]), ("generate", res["generation"])):
        for name, runs in table.items():
            for prec, r in runs.items():
                if not isinstance(r, dict) or "error" in r:
                    rows.append(f"| {part} | {name} | {prec} | – | {r.get('error') if isinstance(r, dict) else r} "
                                f"| – | – | – |")
                    continue
                rows.append(f"| {part} | {name} | {r['precision']} | {r['batch_size']} | {r['images_per_s']} | "
                            f"{_cell(r, 'achieved_tflops', '{:.4g}')} | {_cell(r, 'fraction_of_peak', '{:.1%}')} | "
                            f"{_cell(r, 'peak_memory_gib', '{:.2f}')} |")
    n = res["nccl_check"]
    status = n if isinstance(n, str) else n.get("error") or (
        f"{'equal' if n['equal_within_tolerance'] else 'DIFFERENT'} "
        f"(max diff {max(n['max_abs_diff_ema'], n['max_abs_diff_raw']):.2g})")
    rows.append(f"| nccl | train-rdm 1 vs 2 processes | – | – | {status} | – | – | – |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    ap.add_argument("--markdown", action="store_true", help="print only the table rows (no header) for BENCHMARKS.md")
    ap.add_argument("--tiny", action="store_true", help="tiny configs on the CPU, a couple of steps (seconds)")
    ap.add_argument("--mage-batch", type=int, default=128)
    ap.add_argument("--rdm-batch", type=int, default=1024)
    ap.add_argument("--dit-batch", type=int, default=64)
    ap.add_argument("--gen-batch", type=int, default=64)
    ap.add_argument("--gen-num", type=int, default=64, help="images timed after the warm-up batch")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per run")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip the remaining runs past this many seconds")
    a = ap.parse_args(argv)
    if a.tiny:
        a.mage_batch = a.rdm_batch = a.dit_batch = 8
        a.gen_batch = a.gen_num = 4
        a.steps, a.warmup = min(a.steps, 2), min(a.warmup, 1)
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU (or --tiny for the CPU smoke run)")
    res = run_all(a)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res, header=not a.markdown))
    if not a.markdown:
        print(f"\n{res['environment']['gpu'] or 'CPU'}, torch {res['environment']['torch']}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
