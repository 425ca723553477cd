"""``rcg train-rdm``: the representation diffusion model on a cache of representations, ending with the
representation FD of its samples against a floor computed from real representations (paper Table 8)."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Optional

import torch

from .. import dist
from ..config import RDMRun
from ..diffusion import GaussianDiffusion
from ..evaluate import fd_between, rep_fd_plan
from ..loaders import load, load_reps
from ..rdm import RDM
from ..rng import EpochBatches
from ..sample import draw_reps, rdm_sampler_name
from ..train import Job, Runtime, steps_for
from ..watch import Preview
from ..tree import to_dict
from .common import Built, n_params, train_stage
from .reps import sample_reps


def train_rdm(cfg: RDMRun, out: str, device: Optional[str] = None, progress: bool = True,
              runtime: Optional[Runtime] = None) -> dict:
    """Train the RDM on a representation cache; ends with the representation FD check."""
    if not cfg.cache or not cfg.encoder:
        raise ValueError("train-rdm needs --cache (from rcg cache-reps) and --encoder (the encoder that made it)")
    dev = dist.setup(device, cfg.optim.num_threads)
    fp = load("encoder", cfg.encoder).fingerprints["self"]
    tensors, meta = load_reps(cfg.cache, fp, cfg.encoder)
    reps = tensors["reps"].float()
    labels = tensors.get("labels")
    model_cfg = replace(cfg.model, in_channels=reps.shape[1])
    if cfg.class_cond:
        if labels is None:
            raise ValueError(f"--class-cond needs labels, but {cfg.cache} has none (unlabelled data)")
        model_cfg = replace(model_cfg, num_classes=int(meta.get("num_classes") or int(labels.max()) + 1))
    else:
        model_cfg = replace(model_cfg, num_classes=0)
    cfg = replace(cfg, model=model_cfg)

    def build(run_dir):
        model = RDM(model_cfg).to(dev)
        diffusion = GaussianDiffusion(**to_dict(cfg.diffusion)).to(dev)
        reps_d = reps.to(dev)
        labels_d = labels.to(dev) if (labels is not None and cfg.class_cond) else None
        batches = EpochBatches(len(reps), cfg.optim.batch_size, cfg.optim.seed)
        total = steps_for(cfg.optim.epochs, batches)
        print(f"RDM: {n_params(model):,} parameters; {len(reps)} representations of dim {reps.shape[1]}; {total} steps")

        def loss(batch, gen):
            t = batch.take(torch.randint(0, diffusion.num_steps, (batch.size,), generator=gen)).to(dev)
            noise = batch.take(torch.randn((batch.size,) + reps.shape[1:], generator=gen)).to(dev)
            idx = batch.mine.to(dev)
            y = labels_d[idx] if labels_d is not None else None
            return diffusion.loss(lambda xt, tt: model(xt, tt, y), reps_d[idx], t, noise), {}

        def finish(run_dir):
            if cfg.fd_samples == 0:                    # the check turned off
                return {}
            return rep_fd_check(run_dir, reps, labels if cfg.class_cond else None, cfg, dev, progress,
                                image_index=tensors.get("image_index"))

        job = Job(model=model, loss=loss, batches=batches, total_steps=total, desc="train-rdm",
                  metadata={"encoder_fingerprint": fp},
                  preview=rep_fd_preview(reps, labels if cfg.class_cond else None, cfg))
        return Built(job, n_params(model), finish)

    return train_stage("rdm", cfg, out, build, progress, runtime, record={"encoder_fingerprint": fp})


PREVIEW_SAMPLES = 500      # representations sampled (from fixed noise) for the rep FD logged during training
PREVIEW_REFERENCE = 10000  # real representations they are compared with (a fixed random subset)


def rep_fd_preview(reps: torch.Tensor, labels, cfg: RDMRun):
    """The RDM's preview: ``sample_rep_fd``, the FD of ``PREVIEW_SAMPLES`` representations sampled from fixed
    noise (the run's DDIM settings; class-conditional: the labels of fixed real rows) against a fixed subset
    of the real ones. Lower is better; its level is above the final check's (fewer samples)."""
    g = torch.Generator().manual_seed(cfg.optim.seed + 29)
    reference = reps[torch.randperm(len(reps), generator=g)[:PREVIEW_REFERENCE]]
    n = min(PREVIEW_SAMPLES, len(reps))
    y = labels[torch.randint(0, len(reps), (n,), generator=g)] if labels is not None else None

    def preview(step, model):
        sampled = draw_reps(model, cfg, n, seed=cfg.optim.seed + 31, labels=y, batch_size=n)["reps"]
        return Preview(metrics={"sample_rep_fd": fd_between(sampled, reference)})
    return preview


FLOOR_SUBSETS = 200   # real subsets averaged for the rep-FD floor (10k of 240k: ~12 s on 2 cores)


FLOOR_SPLITS = 20     # random image-disjoint splits averaged for the floor of a small cache ("halves")


def rep_fd_check(run_dir, reps: torch.Tensor, labels, cfg, dev, progress: bool, image_index=None) -> dict:
    """Paper Table 8's rep FD of ``cfg.fd_samples`` sampled representations against a floor computed from real
    ones (:func:`rcg.evaluate.rep_fd_plan` picks the protocol). With N >= SUBSETS_MIN_RATIO m real
    representations ("subsets"): m samples vs all N, floor = m-subsets of the real set vs all of it (mean +-
    std over ``FLOOR_SUBSETS`` subsets: one subset's FD varies by about 20 %). On a smaller cache ("halves"):
    the real set is split by source image (``image_index``, the cache's row -> image map; rows when None)
    into a held-out half A and a reference half B; m samples vs B, floor = m real of A vs B (mean +- std over
    ``FLOOR_SPLITS`` splits), so a perfect model's ratio is ~1. Class-conditional samples take the labels of m
    random real rows of the set they are compared with."""
    seed = cfg.optim.seed + 17
    plan = rep_fd_plan(reps, cfg.fd_samples, image_index, seed=seed, subsets=FLOOR_SUBSETS, splits=FLOOR_SPLITS)
    m, floor, protocol = plan["samples"], plan["floor"], plan["protocol"]
    y = labels[plan["pick"]] if labels is not None else None
    t0 = time.time()
    sampled = sample_reps(run_dir, None, num=m, labels=y, device=dev, progress=progress)["reps"]
    wall = round(time.time() - t0, 1)
    reference = reps if plan["reference"] is None else reps[plan["reference"]]
    fd = fd_between(sampled, reference)
    ratio = fd / floor["mean"] if floor["mean"] > 0 else float("nan")
    res = {"rep_fd": fd, "rep_fd_floor": floor["mean"], "rep_fd_floor_std": floor["std"],
           "rep_fd_floor_subsets": plan["floor_sets"], "rep_fd_ratio": ratio,
           "rep_fd_samples": m, "rep_fd_protocol": protocol, "rep_fd_reference_size": plan["reference_size"],
           "sample_steps": cfg.sample_steps, "eta": cfg.eta, "solver": cfg.solver, "sample_wall_s": wall}
    if protocol == "subsets":
        what = (f"sampled {m} vs all {len(reps)} real; floor: {m} real vs all {len(reps)}, "
                f"mean +- std of {plan['floor_sets']} random subsets")
    else:
        res.update(rep_fd_heldout_size=floor["heldout_size"], rep_fd_split_by=floor["by"])
        what = (f"sampled {m} vs {plan['reference_size']} real (half B, by {floor['by']}); floor: {m} real of "
                f"half A vs half B, mean +- std of {plan['floor_sets']} splits")
    print(f"representation FD ({protocol}: {what}): sampled {fd:.4f} vs floor {floor['mean']:.4f} +- "
          f"{floor['std']:.4f}; ratio {ratio:.2f}; {rdm_sampler_name(cfg.solver, cfg.sample_steps, cfg.eta)}")
    for note in plan["notes"]:
        print(f"  note: {note}")
    return res
