"""Training step throughput of the RDM and MAGE stages (and optionally the DiT or the ADM), before and after the
training overheads of issue 18, side by side in one process, alternating:

- ``before``: the EMA as the per-parameter Python loop (:meth:`rcg.optim.EMA.update_reference`) and AdamW's
  per-parameter loop (``optim.fused=false``), as the code was;
- ``after``: the defaults (``torch._foreach_lerp_`` EMA, fused AdamW);
- ``compiled`` (with ``--compiled``): ``after`` plus ``--compile`` (torch.compile of the model's blocks; its
  compile time falls before the first logged step and is left out).

Each measurement is a real ``rcg train-rdm`` / ``train-pixel`` run of its CPU preset for ``--steps`` steps in a
fresh directory; the rate is taken between the first and the last logged step (setup and the first steps left
out). Every mode runs ``--rounds`` times, interleaved; the table gives the median images/s and the ratio.

    python benchmarks/train_speed.py --cache runs/cache.safetensors --encoder runs/encoder \\
        --tokenizer runs/tokenizer [--stages rdm,mage,dit] [--steps 60] [--rounds 3]

The cache must hold tokens (for MAGE; ``rcg cache-reps --tokenizer``) and crops (for the DiT and ADM;
``--pixels``).
Writes ``benchmarks/results/train_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from rcg.loaders import load_reps
from rcg.optim import EMA
from rcg.precision import native_bf16
from rcg.presets import PIXEL_PRESETS, RDM_RUN_PRESETS
from rcg.stages import train_pixel, train_rdm
from rcg.train import Runtime
from rcg.tree import apply_overrides

STAGES = {"rdm": ("fmnist-rdm", train_rdm), "mage": ("fmnist-mage", train_pixel), "dit": ("fmnist-dit", train_pixel),
          "adm": ("fmnist-adm", train_pixel)}


@contextmanager
def mode(name: str):
    """``before``: the reference EMA loop in place of the foreach one (AdamW's loop comes from the config)."""
    fast = EMA.update
    if name == "before":
        EMA.update = EMA.update_reference
    try:
        yield
    finally:
        EMA.update = fast


def rate(run_dir: Path) -> float:
    """Images/s between the first and the last logged step (``img_per_s`` is cumulative from the first step)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "img_per_s" in r]
    if len(rows) < 2:
        raise SystemExit(f"{run_dir}: fewer than two logged steps; raise --steps")
    (s0, r0), (s1, r1) = (rows[0]["step"], rows[0]["img_per_s"]), (rows[-1]["step"], rows[-1]["img_per_s"])
    return (s1 - s0) / (s1 / r1 - s0 / r0)     # the time at a logged step k is step_k * batch / img_per_s_k


def config(stage: str, a, name: str, steps: int):
    preset, _ = STAGES[stage]
    base = RDM_RUN_PRESETS[preset] if stage == "rdm" else PIXEL_PRESETS[preset]
    over = [f"cache={a.cache}", f"encoder={a.encoder}", "optim.sample_every=0", f"optim.ckpt_every={10 * steps}",
            f"optim.log_every={max(1, steps // 6)}", f"optim.fused={'false' if name == 'before' else 'null'}"]
    if stage == "rdm":
        over.append("fd_samples=0")
    if stage == "mage":
        over.append(f"tokenizer={a.tokenizer}")
    cfg = apply_overrides(base, over)
    n = a.num_images
    return apply_overrides(cfg, [f"optim.epochs={steps * cfg.optim.batch_size / n}"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--tokenizer", help="for the MAGE stage")
    ap.add_argument("--stages", default="rdm,mage")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compiled", action="store_true", help="also measure after + --compile")
    ap.add_argument("--out", default="benchmarks/results/train_speed.json")
    a = ap.parse_args()
    a.num_images = len(load_reps(a.cache)[0]["reps"])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in a.stages.split(","):
            _, fn = STAGES[stage]
            names = ["before", "after"] + (["compiled"] if a.compiled else [])
            rates = {k: [] for k in names}
            for r in range(a.rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    cfg = config(stage, a, name, a.steps)
                    out = Path(tmp) / f"{stage}-{name}-{r}"
                    with mode(name):
                        fn(cfg, str(out), "cpu", progress=False, runtime=Runtime(compile=name == "compiled"))
                    rates[name].append(rate(out))
                    print(f"{stage} {name} round {r}: {rates[name][-1]:.1f} img/s", flush=True)
            med = {k: statistics.median(v) for k, v in rates.items()}
            results[stage] = {"before_img_per_s": round(med["before"], 1), "after_img_per_s": round(med["after"], 1),
                              "ratio": round(med["after"] / med["before"], 3), "rounds": rates,
                              "preset": STAGES[stage][0], "steps": a.steps}
            if a.compiled:
                results[stage].update(compiled_img_per_s=round(med["compiled"], 1),
                                      compiled_ratio=round(med["compiled"] / med["before"], 3))
    meta = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(torch.device("cpu")),
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"stages": results, "meta": meta}, indent=2) + "\n")
    print(f"\nwrote {a.out}\n\n| stage | before img/s | after img/s | ratio | compiled img/s | ratio |")
    print("|---|---|---|---|---|---|")
    for s, r in results.items():
        print(f"| {s} ({r['preset']}) | {r['before_img_per_s']} | {r['after_img_per_s']} | {r['ratio']}x | "
              f"{r.get('compiled_img_per_s', '-')} | {r.get('compiled_ratio', '-')}x |")


if __name__ == "__main__":
    main()
