"""Self-supervised encoders behind one interface.

An :class:`Encoder` maps images to RCG representations: preprocessing (per-channel normalization, then
an optional bicubic resize, in that order as RCG does), a backbone, and a projector (MoCo v3's
3-layer BN MLP). ``rep`` is the projector output standardized per sample over its own features
(unbiased std), exactly as RCG does; there is no L2 normalization and no data-set statistic.

Backbones: a small ResNet-style CNN for small images on a CPU, and timm's ViT (the paper's MoCo v3
ViT-S/B/L, with the fixed 2-D sin-cos position table).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import sincos_pos_embed_moco

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def standardize(rep: torch.Tensor) -> torch.Tensor:
    """RCG's per-sample standardization: each row by its own mean and unbiased std."""
    return (rep - rep.mean(dim=1, keepdim=True)) / rep.std(dim=1, keepdim=True)


def build_mlp(num_layers: int, in_dim: int, mlp_dim: int, out_dim: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo v3's MLP: Linear(no bias) -> BN -> ReLU per hidden layer; last Linear then BN without affine.
    Module indices match the official checkpoints (``head.0``, ``head.1``, ``head.3``, ...)."""
    layers = []
    for i in range(num_layers):
        d1 = in_dim if i == 0 else mlp_dim
        d2 = out_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(d1, d2, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d2, affine=False))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------------------
# Backbones
# ----------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.short is None else self.short(x)))


class SmallResNet(nn.Module):
    """A ResNet for small images: 3x3 stem, one stage per width (the first at full resolution,
    each later one halving it), global average pooling. ``out_dim`` = last width."""

    def __init__(self, in_chans: int = 1, widths: Tuple[int, ...] = (32, 64, 128), depths: Tuple[int, ...] = (1, 1, 1)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, (w, d) in enumerate(zip(widths, depths)):
            blocks = [BasicBlock(cin, w, 1 if i == 0 else 2)] + [BasicBlock(w, w, 1) for _ in range(d - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():   # zero-init the last BN of each residual branch
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x):
        return self.stages(self.stem(x)).mean(dim=(2, 3))


def vit_backbone(img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0) -> nn.Module:
    """timm ViT as MoCo v3 builds it: qkv bias, LayerNorm eps 1e-6, CLS token output after the final
    norm, fixed (non-trainable) 2-D sin-cos position embedding. ``out_dim`` = embed_dim."""
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                            qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), global_pool="token")
    with torch.no_grad():
        vit.pos_embed.copy_(sincos_pos_embed_moco(img_size // patch_size, embed_dim))
    vit.pos_embed.requires_grad_(False)
    nn.init.normal_(vit.cls_token, std=1e-6)
    vit.out_dim = embed_dim
    return vit


# ----------------------------------------------------------------------------------------------
# The encoder interface
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderConfig:
    arch: str = "resnet"                 # resnet | vit
    in_chans: int = 1
    rep_dim: int = 256
    proj_layers: int = 3
    mlp_dim: int = 1024
    # resnet
    widths: Tuple[int, ...] = (32, 64, 128)
    depths: Tuple[int, ...] = (1, 1, 1)
    # vit
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    # preprocessing: normalize with mean/std, then (if input_size > 0 and differs) bicubic resize
    mean: Tuple[float, ...] = (0.5,)
    std: Tuple[float, ...] = (0.5,)
    input_size: int = 0


def build_backbone(cfg: EncoderConfig) -> nn.Module:
    if cfg.arch == "resnet":
        return SmallResNet(cfg.in_chans, tuple(cfg.widths), tuple(cfg.depths))
    if cfg.arch == "vit":
        return vit_backbone(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.embed_dim, cfg.depth, cfg.num_heads,
                            cfg.mlp_ratio)
    raise ValueError(f"unknown encoder arch {cfg.arch!r} (choices: resnet, vit)")


class Encoder(nn.Module):
    """images -> representation. ``forward`` takes float images in [0, 1] (B, C, H, W) and returns the
    raw projector output (B, rep_dim); :meth:`encode` also accepts uint8 and returns the standardized rep."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg)
        self.head = build_mlp(cfg.proj_layers, self.backbone.out_dim, cfg.mlp_dim, cfg.rep_dim)
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if x.shape[1] != self.cfg.in_chans:
            if x.shape[1] == 1:
                x = x.expand(-1, self.cfg.in_chans, -1, -1)
            elif self.cfg.in_chans == 1:
                x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                raise ValueError(f"encoder expects {self.cfg.in_chans} channels, got images with {x.shape[1]}")
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        size = self.cfg.input_size
        if size and (x.shape[-1] != size or x.shape[-2] != size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, out_dim) of images in [0, 1] (or uint8)."""
        return self.backbone(self.preprocess(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized representation (B, rep_dim) in float32, the thing RCG conditions on."""
        return standardize(self(x).float())
