"""Paper Table 1 at small scale: the same pixel generator, data, architecture and training budget, conditioned on
nothing (baseline), on RDM-generated representations (RCG, with and without guidance), on class labels, and on
representations of real images (oracle). Fashion-MNIST, domain-classifier metrics (``fid_dom``, ``is_dom``,
precision / recall with k = 3) and the representation FD of the generated images.

    python benchmarks/table1_fmnist.py --encoder runs/fmnist-encoder --rdm runs/fmnist-rdm \\
        --evalnet runs/fmnist-evalnet [--tokenizer RUN] [--generators mage,dit] [--num 10000] [--work runs/table1]

Every stage writes into ``--work`` and is skipped when its result is there (rerun the command to resume).
Writes ``benchmarks/results/table1_fmnist.json`` and prints a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from rcg import evaluate as E
from rcg.config import PIXEL_SAMPLERS, DataConfig
from rcg.pixel import GENERATORS
from rcg.presets import PIXEL_PRESETS, TOKENIZER_PRESETS
from rcg.tree import apply_overrides
from rcg.sample import RCGSampler
from rcg.data import load_dataset
from rcg.dist import setup as setup_torch
from rcg.loaders import load, load_reps
from rcg.stages import cache_reps, train_pixel, train_tokenizer

COND = {"baseline": "none", "rcg": "rep", "rcg_guided": "rep", "oracle": "rep", "class_label": "class"}


def train_generator(gen: str, cond: str, work: Path, cache: Path, encoder: str, tokenizer: str,
                    epochs: Optional[float] = None, sets: Sequence[str] = ()) -> dict:
    run = work / f"{gen}-{cond}"
    if (run / "summary.json").is_file():
        return json.loads((run / "summary.json").read_text())
    key = "model.cond"
    over = [f"cache={cache}", f"encoder={encoder}", f"{key}={cond}"] + \
        ([f"tokenizer={tokenizer}"] if GENERATORS[gen].needs_tokenizer else []) + \
        ([f"optim.epochs={epochs:g}"] if epochs is not None else []) + list(sets)
    cfg = apply_overrides(PIXEL_PRESETS[GENERATORS[gen].preset], over)
    print(f"== training {gen} ({cond}) -> {run}", flush=True)
    return train_pixel(cfg, str(run), progress=False)


def parse_sampler(text, gens):
    """(sampler, steps) of ``--sampler SAMPLER:STEPS`` or (None, None)."""
    if not text:
        return None, None
    name, _, steps = text.partition(":")
    if name not in PIXEL_SAMPLERS or not steps.isdigit():
        raise SystemExit(f"--sampler takes SAMPLER:STEPS with SAMPLER one of {PIXEL_SAMPLERS}, got {text!r}")
    if any(GENERATORS[g].inputs == "tokens" for g in gens):
        raise SystemExit("--sampler applies to the diffusion generators (dit, adm, ldm); run MAGE's rows apart")
    return name, int(steps)


def sampler_name(row: dict) -> str:
    s = row.get("sampler") or {}
    return f"{s.get('sampler', '?')} {s.get('steps', '?')}"


def oracle_batches(s: RCGSampler, real_reps: torch.Tensor, num: int, seed: int, batch: int):
    """Images conditioned on representations of real crops (a fixed random subset of the cache)."""
    pick = torch.randperm(len(real_reps), generator=torch.Generator().manual_seed(seed))[:num]
    for i in range(0, num, batch):
        idx = pick[i:i + batch]
        yield s.images_from_reps(real_reps[idx].to(s.device), range(seed + i, seed + i + len(idx)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--rdm", required=True, help="train-rdm run on this encoder's representations")
    ap.add_argument("--evalnet", required=True, help="rcg train-evalnet run (domain FID / IS)")
    ap.add_argument("--tokenizer", help="train-tokenizer run (default: train the fmnist-tokenizer preset)")
    ap.add_argument("--generators", default="mage,dit")
    ap.add_argument("--rows", default="baseline,rcg,class_label,rcg_guided,oracle")
    ap.add_argument("--taus", default="1,3", help="guidance values of the rcg_guided rows")
    ap.add_argument("--num", type=int, default=10000, help="samples per row")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", metavar="SAMPLER:STEPS",
                    help="sample the diffusion generators' rows with this sampler instead of the preset's (e.g. "
                         "dpm++2m-sde:50, ddpm:250); its rows are kept apart from the preset's")
    ap.add_argument("--epochs", type=float,
                    help="train the generators for this many epochs instead of their presets' (a budget probe: use "
                         "its own --work and --out, since a trained generator in --work is reused as it is)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                    help="override a field of the generators' presets (repeatable), e.g. --set model.context_tokens=8;"
                         " a probe, like --epochs (its own --work and --out)")
    ap.add_argument("--work", default="runs/table1")
    ap.add_argument("--out", default="benchmarks/results/table1_fmnist.json")
    a = ap.parse_args()
    dev = setup_torch()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    gens = [g for g in a.generators.split(",") if g]
    sampler, steps = parse_sampler(a.sampler, gens)
    tag = f"-{sampler}-{steps}" if sampler else ""

    tokenizer = a.tokenizer
    if any(GENERATORS[g].needs_tokenizer for g in gens) and tokenizer is None:
        tokenizer = str(work / "tokenizer")
        if not (work / "tokenizer" / "summary.json").is_file():
            train_tokenizer(TOKENIZER_PRESETS["fmnist-tokenizer"], tokenizer, progress=False)
    cache = work / "cache.safetensors"
    if not cache.is_file():          # one view per image: tokens (MAGE) and pixels (DiT) of the same crops
        cache_reps(a.encoder, cache, views=1, tokenizer=tokenizer, progress=False, bf16=True,
                   pixels=any(GENERATORS[g].inputs == "images" for g in gens))
    real = load_reps(cache)[0]["reps"].float()

    net = load("evalnet", a.evalnet, dev).module
    data = DataConfig("fmnist", split="train", resolution=28, channels=1)
    ref = E.reference_stats(lambda: load_dataset(data), net, cache=work / "ref-fmnist-train.npz",
                            source_name=str(data), progress=False)
    rows_dir = work / "rows"
    rows_dir.mkdir(exist_ok=True)
    for gen in gens:
        trained = {}
        for name in a.rows.split(","):
            taus = [float(t) for t in a.taus.split(",")] if name == "rcg_guided" else [0.0]
            cond = COND[name]
            if cond not in trained:
                trained[cond] = train_generator(gen, cond, work, cache, a.encoder, tokenizer, a.epochs, a.sets)
            for tau in taus:
                f = rows_dir / f"{gen}-{name}-{tau:g}{tag}.json"
                if f.is_file():                    # measured by an earlier invocation
                    continue
                s = RCGSampler(str(work / f"{gen}-{cond}"), a.rdm if cond == "rep" else None, dev)
                if sampler:
                    s.configure(sampler=sampler, steps=steps)
                print(f"== {gen} {name} tau={tau:g}: {a.num} samples", flush=True)
                t0 = time.time()
                if name == "oracle":
                    batches = oracle_batches(s, real, a.num, a.seed, a.batch)
                else:
                    batches = s.stream(a.num, seed=a.seed, batch_size=a.batch, guidance=tau)
                m = E.evaluate_stream(batches, net, ref, rep_encoder=s.encoder, rep_reference=real, progress=False)
                row = {"generator": gen, "name": name, "fid": m["fid_dom"], "is": m["is_dom"],
                       "precision": m.get("precision"), "recall": m.get("recall"), "rep_fd": m["rep_fd"], "tau": tau,
                       "wall_s": round(time.time() - t0, 1), "train_wall_s": trained[cond].get("train_wall_s"),
                       "epochs": trained[cond].get("epoch"),
                       "num_samples": m["num_samples"], "cond": cond,
                       "rdm": a.rdm if name in ("rcg", "rcg_guided") else None,
                       "feature_net_sha256": net.weights_sha256, "date": time.strftime("%Y-%m-%d"),
                       "sampler": {"steps": s.cfg.steps,
                                   "temperature": s.cfg.temperature if GENERATORS[gen].inputs == "tokens" else None,
                                   "sampler": s.cfg.sampler if gen != "mage" else "mage-iterative"}}
                f.write_text(json.dumps(row, indent=2) + "\n")
                print(json.dumps(row), flush=True)
    # the table holds every row measured in this work folder (earlier invocations too, e.g. one per generator)
    order = {n: i for i, n in enumerate(["baseline", "rcg", "class_label", "rcg_guided", "oracle"])}
    rows = [json.loads(f.read_text()) for f in rows_dir.glob("*.json")]
    mine = {r["generator"] for r in rows}
    old = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {"rows": []}
    rows += [r for r in old["rows"] if r["generator"] not in mine]     # other generators' rows, measured elsewhere
    rows.sort(key=lambda r: (r["generator"] != "mage", r["generator"], sampler_name(r), order.get(r["name"], 99),
                             r["tau"]))
    meta = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "date": time.strftime("%Y-%m-%d"), "encoder": a.encoder, "rdm": a.rdm, "evalnet": a.evalnet,
            "feature_net": net.name, "feature_net_sha256": net.weights_sha256, "reference": "fmnist train (60000)",
            "presets": {g: GENERATORS[g].preset for g in sorted({r["generator"] for r in rows})}, "taus": a.taus,
            "note": "meta describes the last invocation; each row names its own rdm and feature net where it was "
                    "recorded (rows without these fields came from an earlier evalnet run of the same preset): "
                    "compare FIDs within one generator"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "meta": meta}, indent=2) + "\n")
    print(f"\nwrote {a.out}\n")
    print("| generator | conditioning | tau | sampler | FID (dom) | IS (dom) | precision | recall | rep FD | train s | "
          "sample+eval s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['generator']} | {r['name']} | {r['tau']:g} | {sampler_name(r)} | {r['fid']:.2f} | {r['is']:.2f} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | {r['rep_fd']:.3f} | {r['train_wall_s']} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
