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

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn as nn


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
