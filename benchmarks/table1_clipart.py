"""Paper Table 1 at small scale on colour clip art: the same MAGE, data, architecture and training budget,
conditioned on nothing (baseline), on RDM-generated representations (RCG, optionally with guidance) and on
class labels (the 22 category folders of /usr/share/openclipart/png), at 32 px. Metrics: domain FID / IS under
a classifier trained on the 22 categories (preset ``clipart-evalnet``; its held-out accuracy is reported) and
the representation FD of the generated images against the training images' representations.

    rcg fit /usr/share/openclipart/png --labels --out runs/clipart-labels --preset quick --resolution 32
    python benchmarks/table1_clipart.py --fit runs/clipart-labels [--work DIR] [--num 2000] [--taus 1,3] \\
        [--evalnet DIR]

The rcg row is the fit's own MAGE (RUN/pixel) with its RDM (RUN/rdm); the baseline and class-label MAGEs are
trained with exactly RUN/pixel's config but ``model.cond`` (same encoder, tokenizer, cache, budget) into
``--work`` (default RUN/table1), as is the evalnet (unless ``--evalnet``). Every stage and row is skipped
when its result is there: rerun the command to resume.

The category folders are very unequal (3 to ~1800 images): ``class_label`` draws the labels with the training
images' class frequencies (what the reference statistics hold); ``class_label_balanced`` is what ``rcg eval``
does for a class-conditional generator (every class equally often), kept to show the difference.

Writes WORK/table1_clipart.json, appends one line to benchmarks/results/table1_clipart.jsonl and prints a
Markdown table.
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
from rcg.store import load_tensors, read_config
from rcg.config import DataConfig, PixelRun
from rcg.tree import from_dict
from rcg.data import load_dataset
from rcg.store import fingerprint
from rcg.presets import EVALNET_PRESETS
from rcg.stages.evalnet import train_evalnet
from rcg.sample import RCGSampler
from rcg.dist import setup as setup_torch
from rcg.loaders import load, load_reps
from rcg.stages import run_eval, train_pixel

COND = {"baseline": "none", "rcg": "rep", "rcg_guided": "rep", "class_label": "class", "class_label_balanced": "class"}
ORDER = list(COND)
FINGERPRINT_KEYS = ("encoder_fingerprint", "tokenizer_fingerprint")


def fail(msg: str):
    raise SystemExit(f"table1_clipart: {msg}")


def check_fit(run: Path) -> dict:
    """The fit request, after checking that RUN is a finished labelled ``rcg fit`` run."""
    if not (run / "fit.json").is_file():
        fail(f"{run} is not an rcg fit run directory (no fit.json)")
    req = json.loads((run / "fit.json").read_text())
    if not req.get("labels"):
        fail(f"{run} was fitted without --labels, so its data and cache hold no category labels; run "
             f"rcg fit {req.get('data_dir')} --labels --out ANOTHER_RUN ... (a RUN is for one request)")
    for p in ("pixel/summary.json", "rdm/summary.json", "cache.safetensors", "data/train.safetensors",
              "data/test.safetensors"):
        if not (run / p).exists():
            fail(f"{run / p} is missing: finish the fit first (rerun the same rcg fit command)")
    if req.get("channels") != 3:
        fail(f"{run} holds {req.get('channels')}-channel images; the clipart-evalnet preset is for RGB")
    _, meta = load_tensors(run / "cache.safetensors")
    if not meta.get("num_classes"):
        fail(f"{run / 'cache.safetensors'} holds no labels (made before --labels?); delete it and rerun rcg fit")
    return req


def train_row(base: PixelRun, cond: str, out: Path) -> dict:
    """RUN/pixel's config with only the conditioning changed, trained into ``out`` (resumes)."""
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    cfg = replace(base, model=replace(base.model, cond=cond))
    print(f"== training {base.generator} (cond {cond}) -> {out}", flush=True)
    return train_pixel(cfg, str(out), progress=False)


def get_evalnet(a, run: Path, work: Path, req: dict) -> Path:
    if a.evalnet:
        if not (Path(a.evalnet) / "summary.json").is_file():
            fail(f"--evalnet {a.evalnet} is not a finished train-evalnet run (no summary.json)")
        return Path(a.evalnet)
    out = work / "evalnet"
    if (out / "summary.json").is_file():
        return out
    cfg = EVALNET_PRESETS["clipart-evalnet"]
    res, ch = req["resolution"], req["channels"]
    data = replace(cfg.data, path=str(run / "data" / "train.safetensors"), resolution=res, channels=ch)
    test = replace(cfg.eval_data, path=str(run / "data" / "test.safetensors"), resolution=res, channels=ch)
    train = load_dataset(data)
    names = train.class_names or []
    if not names:
        fail(f"{data.path} names no classes")
    cfg = replace(cfg, data=data, eval_data=test, model=replace(cfg.model, num_classes=len(names), resolution=res),
                  optim=replace(cfg.optim, batch_size=max(2, min(cfg.optim.batch_size, len(train)))))  # tiny folders
    if a.evalnet_epochs is not None:
        cfg = replace(cfg, optim=replace(cfg.optim, epochs=a.evalnet_epochs,
                                         warmup_epochs=min(cfg.optim.warmup_epochs, 0.1 * a.evalnet_epochs)))
    print(f"== training the evalnet ({len(names)} classes, {cfg.optim.epochs:g} epochs) -> {out}", flush=True)
    train_evalnet(cfg, str(out), progress=False)
    return out


def empirical_class_batches(s: RCGSampler, labels: torch.Tensor, num: int, seed: int, batch: int):
    """Class-label samples whose labels follow the training images' class frequencies: image i gets the
    label at position floor(i * N / num) of a fixed shuffle of the N training labels (exact frequencies up to
    rounding; the same labels for every batch size)."""
    perm = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    pick = perm[(torch.arange(num) * len(labels)) // num]
    for i in range(0, num, batch):
        y = pick[i:i + batch].to(s.device)
        yield s.images_from_reps(None, range(seed + i, seed + i + len(y)), labels=y, guidance=0.0)


def measure(a, name: str, tau: float, pixel: Path, run: Path, evalnet: Path, ref_data: DataConfig, ref_cache: Path,
            dev) -> dict:
    cond = COND[name]
    t0 = time.time()
    if name == "class_label":
        net = load("evalnet", evalnet, dev).module
        ref = E.reference_stats(lambda: E.iterate_tensor(load_dataset(ref_data).images, a.batch), net,
                                cache=ref_cache, source_name=f"{ref_data}", progress=False)
        s = RCGSampler(str(pixel), None, dev)
        tensors, _ = load_reps(run / "cache.safetensors", fingerprint(s.encoder), str(s.cfg.encoder))
        m = E.evaluate_stream(empirical_class_batches(s, tensors["labels"].long(), a.num, a.seed, a.batch), net, ref,
                              rep_encoder=s.encoder, rep_reference=tensors["reps"].float(), progress=False)
    else:   # rcg eval's path: rep rows draw representations from the RDM; none / class rows need no RDM
        m = run_eval(pixel=str(pixel), rdm=str(run / "rdm") if cond == "rep" else None, num=a.num, seed=a.seed,
                     guidance=tau, evalnet=str(evalnet), ref_data=ref_data, ref_cache=str(ref_cache),
                     rep_reference=str(run / "cache.safetensors"), batch_size=a.batch, device=a.device,
                     progress=False)
    return {"name": name, "cond": cond, "tau": tau, "fid": m["fid_dom"], "is": m["is_dom"],
            "precision": m.get("precision"), "recall": m.get("recall"), "rep_fd": m["rep_fd"],
            "num_samples": m["num_samples"], "num_reference": m.get("num_reference"), "seed": a.seed,
            "feature_net_sha256": m["feature_net_sha256"], "pixel": str(pixel), "wall_s": round(time.time() - t0, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", required=True, help="rcg fit run directory RUN (made with --labels)")
    ap.add_argument("--work", help="where the other rows, the evalnet and the results go (default RUN/table1)")
    ap.add_argument("--evalnet", help="a finished train-evalnet run to use instead of training clipart-evalnet")
    ap.add_argument("--evalnet-epochs", type=float, help="override the clipart-evalnet preset's epochs (tests)")
    ap.add_argument("--rows", default="baseline,rcg,class_label,class_label_balanced",
                    help=f"comma-separated, of {', '.join(ORDER)} (rcg_guided rows come from --taus)")
    ap.add_argument("--taus", default="", help="guidance values of extra rcg_guided rows, e.g. 1,3")
    ap.add_argument("--num", type=int, default=2000, help="samples per row")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device")
    ap.add_argument("--jsonl", default="benchmarks/results/table1_clipart.jsonl", help="appended one line per run")
    a = ap.parse_args()
    run = Path(a.fit).expanduser()
    req = check_fit(run)
    work = Path(a.work) if a.work else run / "table1"
    work.mkdir(parents=True, exist_ok=True)
    dev = setup_torch(a.device)
    t_start = time.time()

    raw = read_config(run / "pixel")
    for k in FINGERPRINT_KEYS:
        raw.pop(k, None)
    base = from_dict(PixelRun, raw)
    names = [n for n in a.rows.split(",") if n]
    unknown = [n for n in names if n not in COND]
    if unknown:
        fail(f"unknown rows {unknown} (choices: {', '.join(ORDER)})")
    taus = [float(t) for t in a.taus.split(",") if t.strip()]
    plan = [(n, 0.0) for n in names if n != "rcg_guided"] + [("rcg_guided", t) for t in taus]

    pixel = {"rep": run / "pixel"}
    trained = {"rep": json.loads((run / "pixel" / "summary.json").read_text())}
    for cond in sorted({COND[n] for n, _ in plan} - {"rep"}):
        pixel[cond] = work / f"{base.generator}-{cond}"
        trained[cond] = train_row(base, cond, pixel[cond])

    evalnet = get_evalnet(a, run, work, req)
    ev = json.loads((evalnet / "summary.json").read_text())
    test_set = load_dataset(DataConfig("tensors", path=str(run / "data" / "test.safetensors"),
                                       resolution=req["resolution"], channels=3))
    test_labels = test_set.labels
    majority = test_labels.bincount().max().item() / len(test_labels) if test_labels is not None else None
    print(f"evalnet {evalnet}: held-out accuracy {ev['test_accuracy']:.4f} on {ev['test_images']} images "
          f"(majority class: {majority:.4f}); real-vs-real fid_dom {ev.get('fid_dom_real_floor', float('nan')):.3f} "
          f"({ev.get('floor_images')} images)", flush=True)

    ref_data = DataConfig("tensors", path=str(run / "data" / "train.safetensors"), resolution=req["resolution"],
                          channels=req["channels"])
    sha = ev["feature_net_sha256"]
    ref_cache = work / f"ref-{sha[:12]}.npz"             # one per evalnet: a cache of another one is refused
    rows_dir = work / "rows"
    rows_dir.mkdir(exist_ok=True)
    rows = []
    for name, tau in plan:
        f = rows_dir / f"{name}-{tau:g}.json"
        if f.is_file():                                    # measured by an earlier invocation with the same setup
            row = json.loads(f.read_text())
            if (row.get("feature_net_sha256"), row.get("num_samples"), row.get("seed")) == (sha, a.num, a.seed):
                rows.append(row)
                continue
        cond = COND[name]
        print(f"== {name} (cond {cond}) tau={tau:g}: {a.num} samples", flush=True)
        row = measure(a, name, tau, pixel[cond], run, evalnet, ref_data, ref_cache, dev)
        row["train_wall_s"] = trained[cond].get("train_wall_s")
        f.write_text(json.dumps(row, indent=2) + "\n")
        print(json.dumps(row), flush=True)
        rows.append(row)
    rows.sort(key=lambda r: (ORDER.index(r["name"]), r["tau"]))
    fid0 = next((r["fid"] for r in rows if r["name"] == "baseline"), None)
    for r in rows:
        r["fid_vs_baseline"] = r["fid"] / fid0 if fid0 else None

    fit_summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "device": str(dev), "fit": str(run), "fit_request": req, "work": str(work),
            "train_images": fit_summary.get("data", {}).get("train"),
            "classes": test_set.class_names,
            "pixel": {"generator": base.generator, "epochs": base.optim.epochs, "batch_size": base.optim.batch_size,
                      "steps": base.steps, "temperature": base.temperature},
            "evalnet": str(evalnet), "feature_net_sha256": sha, "evalnet_test_accuracy": ev["test_accuracy"],
            "evalnet_test_images": ev["test_images"], "evalnet_majority_accuracy": majority,
            "fid_dom_real_floor": ev.get("fid_dom_real_floor"), "fid_dom_floor_images": ev.get("floor_images"),
            "fit_heldout_rep_fd": fit_summary.get("heldout_rep_fd"), "fit_rep_fd_images": fit_summary.get("rep_fd_images"),
            "num": a.num, "seed": a.seed, "wall_s": round(time.time() - t_start, 1)}
    out = {"rows": rows, "meta": meta}
    (work / "table1_clipart.json").write_text(json.dumps(out, indent=2) + "\n")
    jl = Path(a.jsonl)
    jl.parent.mkdir(parents=True, exist_ok=True)
    with jl.open("a") as fh:
        fh.write(json.dumps(out) + "\n")
    print(f"\nwrote {work / 'table1_clipart.json'}; appended to {jl}\n")
    print(f"clip art {req['resolution']} px, {meta['train_images']} training images; evalnet held-out accuracy "
          f"{ev['test_accuracy']:.3f} ({ev['test_images']} images, majority class {majority:.3f}); {a.num} samples "
          f"per row; {meta['cpu_capability']}, {meta['date']}\n")
    print("| conditioning | tau | FID (dom) | FID / baseline | IS (dom) | rep FD | train s | sample+eval s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['fid_vs_baseline']:.2f}" if r["fid_vs_baseline"] is not None else "-"
        print(f"| {r['name']} | {r['tau']:g} | {r['fid']:.2f} | {ratio} | {r['is']:.2f} | {r['rep_fd']:.3f} | "
              f"{r['train_wall_s']} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
