"""``rcg train-evalnet``: the domain classifier whose features give fid_dom / is_dom (trained once per data set)."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Optional

import torch

import torch.nn.functional as F

from .. import augment, dist
from ..config import DataConfig, EvalNetRun
from ..data import load_dataset
from ..evalnet import NAME, EvalCNN
from ..evaluate import EvalNet, StreamingStats, fid_from_stats, inception_score
from ..loaders import load
from ..precision import resolve_bf16
from ..rng import EpochBatches
from ..store import METRICS, append_metrics
from ..feed import rows_of, workers_for
from ..train import Job, Runtime, steps_for
from .common import Built, n_params, train_stage


def _labelled(cfg: DataConfig, what: str):
    data = load_dataset(cfg)
    if data.labels is None:
        raise ValueError(f"train-evalnet needs labelled {what} data, but {data.source} has no labels "
                         f"(for a folder: one sub-folder per class and data.labels=true)")
    return data


def train_evalnet(cfg: EvalNetRun, out: str, device: Optional[str] = None, progress: bool = True,
                  runtime: Optional[Runtime] = None) -> dict:
    """Train the domain classifier on ``cfg.data`` into the run directory ``out``; rerunning resumes. The
    summary: held-out accuracy, the real-vs-real ``fid_dom`` floor, real ``is_dom``, wall times."""
    t_start = time.time()
    dev = dist.setup(device, cfg.optim.num_threads)
    data, test = _labelled(cfg.data, "training"), _labelled(cfg.eval_data, "held-out")
    m = cfg.model
    for name, d in (("data", data), ("eval_data", test)):
        if d.images.shape[1] != m.in_chans or d.images.shape[-1] != m.resolution:
            raise ValueError(f"{name} gives {d.images.shape[1]}x{d.images.shape[-1]} px images but the model expects "
                             f"model.in_chans={m.in_chans}, model.resolution={m.resolution}; set {name}.channels / "
                             f"{name}.resolution or the model's")
        top = int(d.labels.max()) + 1
        if top > m.num_classes:
            raise ValueError(f"{name} has labels up to {top - 1} but model.num_classes={m.num_classes}")
    if not 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {cfg.crop_scale}")
    print(f"data: {data.source}: {len(data)} images; held out: {test.source}: {len(test)} images")

    def build(run_dir):
        model = EvalCNN(m).to(dev)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        batches = EpochBatches(len(data), cfg.optim.batch_size, cfg.optim.seed)
        total = steps_for(cfg.optim.epochs, batches)
        augmenting = cfg.crop_scale != (1.0, 1.0) or cfg.flip_p > 0
        print(f"evalnet: {n_params(model):,} parameters, {total} steps of {cfg.optim.batch_size} "
              f"({cfg.optim.epochs} epochs), bf16={resolve_bf16(cfg.optim.bf16, dev)}")

        def loss(batch, gen):
            images, labels = batch.data
            x = images.to(dev).float() / 255.0
            if augmenting:      # crops of the whole global batch, then this process's rows
                x = augment.resized_crop(x, m.resolution, scale=cfg.crop_scale, ratio=(1.0, 1.0), flip_p=cfg.flip_p,
                                         gen=gen)
            logits = model(batch.take(x)).float()
            y = batch.take(labels).to(dev)
            return F.cross_entropy(logits, y), {"train_acc": (logits.argmax(1) == y).float().mean()}

        monitor = test.images[:cfg.monitor_images], test.labels[:cfg.monitor_images]

        def evaluate(step):
            acc = EvalNet(model, "training", dev).accuracy(*monitor)
            print(f"step {step}: held-out accuracy {acc:.4f} ({len(monitor[0])} images)")
            return {"heldout_acc": acc}

        def finish(run_dir):
            net = load("evalnet", run_dir, dev).module
            test_feats, test_logits = net.features_and_logits(test.images)
            acc = (test_logits.argmax(1).cpu() == test.labels).float().mean().item()
            res = {"feature_net": net.name, "feature_net_sha256": net.weights_sha256, "feature_dim": m.feature_dim,
                   "test_accuracy": acc, "test_images": len(test)}
            res.update(real_floor(net, data.images[:cfg.floor_images], test_feats[:cfg.floor_images],
                                  test_logits[:cfg.floor_images]))
            res["wall_s"] = round(time.time() - t_start, 1)
            append_metrics(run_dir / METRICS, {"step": total, "final": True, "test_accuracy": acc})
            print(f"evalnet: held-out accuracy {acc:.4f} ({len(test)} images); real-vs-real fid_dom "
                  f"{res['fid_dom_real_floor']:.3f}, real is_dom {res['is_dom_real']:.2f} -> {run_dir}")
            return res

        meta = {"kind": NAME, "class_names": json.dumps(data.class_names or [])}
        job = Job(model=model, loss=loss, batches=batches, total_steps=total, evaluate=evaluate,
                  eval_every=int(cfg.monitor_every_epochs * batches.steps_per_epoch), metadata=meta,
                  desc="train-evalnet", shard=False,       # BatchNorm over the whole batch in every process
                  feed=rows_of(data.images, data.labels), feed_workers=workers_for(data.images),
                  whole_batch="its BatchNorm statistics")
        return Built(job, n_params(model), finish)

    return train_stage("evalnet", cfg, out, build, progress, runtime)


def real_floor(net: EvalNet, train_images: torch.Tensor, test_feats: torch.Tensor, test_logits: torch.Tensor) -> dict:
    """What good scores look like under this network: fid_dom between training images and as many
    held-out images (given by their features; a generator cannot be expected to go below it with that
    many samples) and is_dom of the held-out images."""
    n = min(len(train_images), len(test_feats))
    if n < 2:
        return {}
    a, b = StreamingStats(max_keep=0), StreamingStats(max_keep=0)
    a.update(net.features(train_images[:n]))
    b.update(test_feats[:n], test_logits[:n])
    is_mean, _ = inception_score(b.logits(), splits=10, from_logits=True)
    return {"fid_dom_real_floor": fid_from_stats(*a.stats(), *b.stats()), "is_dom_real": is_mean, "floor_images": n}


def override_data_path(cfg: EvalNetRun, path: Optional[str]) -> EvalNetRun:
    """``cfg`` with both data sets read from ``path`` (e.g. a Fashion-MNIST copy elsewhere)."""
    if path is None:
        return cfg
    return replace(cfg, data=replace(cfg.data, path=path), eval_data=replace(cfg.eval_data, path=path))
