"""The domain feature network: a small classifier that stands in for Inception on 28-32 px data.

Inception-v3 is slow on a CPU (~3 img/s) and meaningless on 28 px grayscale clothes, so small
labelled data sets are evaluated with a CNN trained once on them (``rcg train-evalnet``, preset
``fmnist-evalnet``): its penultimate features (after the last hidden layer's ReLU) give ``fid_dom`` and
precision/recall, its softmax gives ``is_dom``. Numbers are comparable only between evaluations that
use the same evalnet weights, which results name by sha256.

The network: ``len(widths)`` stages of ``depth`` x (3x3 conv, BN, ReLU) then 2x2 max-pool; flatten,
linear to ``feature_dim``, BN, ReLU (the features), dropout, linear to the classes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import augment
from .store import METRICS, WEIGHTS, CheckpointError, load_tensors, prepare_run_dir, read_config
from .config import DataConfig, OptimConfig
from .tree import from_dict, to_dict
from .data import convert_channels, load_dataset, resize_images
from .evaluate import FeatureNet, check_images, fid_from_stats, inception_score, StreamingStats
from .precision import resolve_bf16
from .train import EpochBatches, Job, append_metrics, fit


@dataclass(frozen=True)
class EvalNetConfig:
    in_chans: int = 1
    num_classes: int = 10
    resolution: int = 28          # input size; other sizes are resized (bilinear, antialiased) first
    widths: Tuple[int, ...] = (32, 64, 128)
    depths: Tuple[int, ...] = (1, 2, 1)
    feature_dim: int = 256
    dropout: float = 0.2          # before the classifier
    mean: Tuple[float, ...] = (0.286,)
    std: Tuple[float, ...] = (0.353,)


@dataclass(frozen=True)
class EvalNetRun:
    """``rcg train-evalnet``: a domain classifier trained once per data set, then used by ``rcg eval``."""
    data: DataConfig = DataConfig("fmnist", split="train")
    eval_data: DataConfig = DataConfig("fmnist", split="test")
    model: EvalNetConfig = EvalNetConfig()
    crop_scale: Tuple[float, float] = (0.9, 1.0)   # random-resized crop (area, aspect 1) + flip; (1, 1) = off
    flip_p: float = 0.5
    monitor_every_epochs: float = 1.0              # held-out accuracy during training (0 = only at the end)
    monitor_images: int = 2000
    floor_images: int = 10000                      # real-vs-real fid_dom floor and real is_dom in the summary
    channels_last: bool = True
    optim: OptimConfig = OptimConfig()


EVALNET_PRESETS = {
    # 3 epochs: 92.4 % Fashion-MNIST test accuracy after 193 s of training (bf16, 1 thread of a 2-core Zen 4
    # shared with another training job, ~935 img/s); the 4-epoch, more regularised variant reached only 91.6 %
    "fmnist-evalnet": EvalNetRun(
        optim=OptimConfig(epochs=3, batch_size=128, lr=2e-3, weight_decay=0.05, schedule="cosine",
                          warmup_epochs=0.2, bf16=None, log_every=100, ckpt_every=500)),
    # the 22 category folders of /usr/share/openclipart/png at 32 px RGB, as decoded by ``rcg fit --labels
    # --resolution 32`` (RUN/data/{train,test}.safetensors: the paths are placeholders, filled in by
    # benchmarks/table1_clipart.py or --set data.path=... eval_data.path=...). mean / std: per channel over
    # the 7715 training images of that fit (mostly white backgrounds). 12 epochs: 67.7 % accuracy on the 403
    # held-out images (majority class 27 %; ~68 % from epoch 8 on) after 125 s of training (bf16, 1 thread of a
    # 2-core AVX512 CPU shared with another training job, ~740 img/s)
    "clipart-evalnet": EvalNetRun(
        data=DataConfig("tensors", path="RUN/data/train.safetensors", resolution=32, channels=3, labels=True),
        eval_data=DataConfig("tensors", path="RUN/data/test.safetensors", split="test", resolution=32, channels=3,
                             labels=True),
        model=EvalNetConfig(in_chans=3, num_classes=22, resolution=32, mean=(0.811, 0.790, 0.760),
                            std=(0.303, 0.312, 0.345)),
        optim=OptimConfig(epochs=12, batch_size=128, lr=2e-3, weight_decay=0.05, schedule="cosine",
                          warmup_epochs=0.3, bf16=None, log_every=20, ckpt_every=200)),
}

NAME = "rcg-evalnet"


def _conv_bn_relu(cin: int, cout: int) -> list:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class EvalCNN(nn.Module):
    """Float images in [0, 1] (or uint8), (B, in_chans, R, R) -> logits; :meth:`forward_features` also
    returns the penultimate features."""

    def __init__(self, cfg: EvalNetConfig):
        super().__init__()
        if len(cfg.widths) != len(cfg.depths) or not cfg.widths:
            raise ValueError(f"widths {cfg.widths} and depths {cfg.depths} must be non-empty and of equal length")
        self.cfg = cfg
        layers, c, size = [], cfg.in_chans, cfg.resolution
        for w, d in zip(cfg.widths, cfg.depths):
            for _ in range(d):
                layers += _conv_bn_relu(c, w)
                c = w
            layers.append(nn.MaxPool2d(2))
            size //= 2
        if size < 1:
            raise ValueError(f"resolution {cfg.resolution} is too small for {len(cfg.widths)} pooling stages")
        self.body = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, cfg.feature_dim),
                                  nn.BatchNorm1d(cfg.feature_dim), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.feature_dim, cfg.num_classes)
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if next(self.parameters()).is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.proj(self.body(x))
        return feats, self.fc(self.drop(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


class EvalNet(FeatureNet):
    """An :class:`EvalCNN` behind the :class:`rcg.evaluate.FeatureNet` interface (metrics ``*_dom``).

    Images with another channel count are converted (1 -> 3 by repetition, 3 -> 1 by luma) and other
    sizes resized to the network's resolution, as ``rcg.data`` prepares training images."""

    metric_suffix = "_dom"

    def __init__(self, model: EvalCNN, weights_sha256: str, device=None, batch_size: int = 1000,
                 class_names: Optional[list] = None):
        self.device = torch.device(device or "cpu")
        self.model = model.to(self.device).eval()      # (gradients are off in features_and_logits)
        if self.device.type == "cpu":                  # 2-5x faster convolutions and pooling on CPUs
            self.model.to(memory_format=torch.channels_last)
        self.cfg = model.cfg
        self.name = NAME
        self.weights_sha256 = weights_sha256
        self.batch_size = batch_size
        self.class_names = class_names

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        if images.shape[1] != self.cfg.in_chans:
            images = convert_channels(images.cpu(), self.cfg.in_chans)
        if images.shape[-1] != self.cfg.resolution or images.shape[-2] != self.cfg.resolution:
            images = resize_images(images.cpu(), self.cfg.resolution)
        return images

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        images = self.prepare(images)
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            f, lg = self.model.forward_features(images[i:i + self.batch_size].to(self.device))
            feats.append(f.float())
            logits.append(lg.float())
        return torch.cat(feats), torch.cat(logits)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        logits = self.logits(images).cpu()
        return (logits.argmax(1) == labels.cpu()).float().mean().item()


def _weights_digest(tensors) -> str:
    from .store import _digest      # the checksum save_tensors writes into checkpoint.safetensors
    return _digest({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def load_evalnet(run_dir, device=None) -> EvalNet:
    """The trained domain network of a ``train-evalnet`` run directory."""
    run_dir = Path(run_dir)
    cfg = from_dict(EvalNetRun, read_config(run_dir))
    tensors, meta = load_tensors(run_dir / WEIGHTS)
    model = EvalCNN(cfg.model)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{run_dir / WEIGHTS} does not fit the evalnet described by its config.json ({e})") from e
    model.requires_grad_(False)
    names = json.loads(meta["class_names"]) if meta.get("class_names") else None
    return EvalNet(model, meta.get("sha256") or _weights_digest(tensors), device, class_names=names)


def _labelled(cfg: DataConfig, what: str):
    data = load_dataset(cfg)
    if data.labels is None:
        raise ValueError(f"train-evalnet needs labelled {what} data, but {data.source} has no labels "
                         f"(for a folder: one sub-folder per class and data.labels=true)")
    return data


def train_evalnet(cfg: EvalNetRun, out: str, device: Optional[str] = None, progress: bool = True) -> dict:
    """Train the domain classifier on ``cfg.data`` into the run directory ``out`` (config.json,
    checkpoint.safetensors, state.pt, metrics.jsonl, summary.json); rerunning resumes. Returns the
    summary: held-out accuracy, the real-vs-real ``fid_dom`` floor, real ``is_dom``, wall times."""
    from .stages import setup_torch
    t_start = time.time()
    dev = setup_torch(device, cfg.optim.num_threads)
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
    run_dir, resuming = prepare_run_dir(out, to_dict(cfg))
    print(f"data: {data.source}: {len(data)} images; held out: {test.source}: {len(test)} images")
    torch.manual_seed(cfg.optim.seed)
    model = EvalCNN(m).to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    images, labels = data.images.to(dev), data.labels.to(dev)
    batches = EpochBatches(len(images), cfg.optim.batch_size, cfg.optim.seed)
    total = max(1, int(round(cfg.optim.epochs * batches.steps_per_epoch)))
    augmenting = cfg.crop_scale != (1.0, 1.0) or cfg.flip_p > 0
    print(f"evalnet: {n_params:,} parameters, {total} steps of {cfg.optim.batch_size} "
          f"({cfg.optim.epochs} epochs), bf16={resolve_bf16(cfg.optim.bf16, dev)}")

    def loss_fn(step, gen):
        idx = batches(step).to(dev)
        x = images[idx].float() / 255.0
        if augmenting:
            x = augment.resized_crop(x, m.resolution, scale=cfg.crop_scale, ratio=(1.0, 1.0), flip_p=cfg.flip_p,
                                     gen=gen)
        logits = model(x).float()
        y = labels[idx]
        return F.cross_entropy(logits, y), {"train_acc": (logits.argmax(1) == y).float().mean()}

    monitor = test.images[:cfg.monitor_images], test.labels[:cfg.monitor_images]

    def evaluate(step):
        net = EvalNet(model, "training", dev)
        acc = net.accuracy(*monitor)
        print(f"step {step}: held-out accuracy {acc:.4f} ({len(monitor[0])} images)")
        return {"heldout_acc": acc}

    every = int(cfg.monitor_every_epochs * batches.steps_per_epoch)
    meta = {"kind": "rcg-evalnet", "class_names": json.dumps(data.class_names or [])}
    job = Job(model=model, loss_fn=loss_fn, steps_per_epoch=batches.steps_per_epoch, total_steps=total,
              images_per_step=cfg.optim.batch_size, export=lambda: model.state_dict(), evaluate=evaluate,
              eval_every=every, metadata=meta, desc="train-evalnet")
    t0 = time.time()
    last = fit(run_dir, job, cfg.optim, resuming, progress)
    train_wall = time.time() - t0
    net = load_evalnet(run_dir, dev)
    test_feats, test_logits = net.features_and_logits(test.images)
    acc = (test_logits.argmax(1).cpu() == test.labels).float().mean().item()
    summary = {"stage": "evalnet", "feature_net": net.name, "feature_net_sha256": net.weights_sha256,
               "params": n_params, "feature_dim": m.feature_dim, "steps": total, "test_accuracy": acc,
               "test_images": len(test), "train_wall_s": round(train_wall, 1), **last}
    summary.update(real_floor(net, data.images[:cfg.floor_images], test_feats[:cfg.floor_images],
                              test_logits[:cfg.floor_images]))
    summary["wall_s"] = round(time.time() - t_start, 1)
    append_metrics(run_dir / METRICS, {"step": total, "final": True, "test_accuracy": acc})
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"evalnet: held-out accuracy {acc:.4f} ({len(test)} images); real-vs-real fid_dom "
          f"{summary['fid_dom_real_floor']:.3f}, real is_dom {summary['is_dom_real']:.2f}; "
          f"trained in {train_wall:.0f} s -> {run_dir}")
    return summary


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
