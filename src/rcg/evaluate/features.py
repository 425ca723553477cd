"""Feature networks and streaming statistics.

Images reach the metrics as uint8 ``(B, C, H, W)`` batches and pass through a :class:`FeatureNet`:
:class:`InceptionV3` as torch-fidelity computes it (the network RCG's numbers use: FID and precision/recall from
the 2048-d pool features, IS from the unbiased logits) or :class:`EvalNet`, a small domain classifier for 28-32
px data (:mod:`rcg.evalnet`, metrics reported as ``fid_dom`` / ``is_dom``). :class:`StreamingStats` keeps
running float64 sums for the mean and covariance, the first ``max_keep`` features for precision/recall and all
logits for the Inception Score, so nothing is written to disk on the way.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from ..data import convert_channels, resize_images
from ..evalnet import NAME, EvalCNN
from .metrics import EvalError

DEFAULT_MAX_KEEP = 50_000          # features kept for precision/recall (torch-fidelity uses all 50K)


class FeatureNet:
    """What the metrics need from a feature network.

    ``name`` and ``weights_sha256`` identify the network (results and reference caches record them);
    ``metric_suffix`` is appended to metric names (``""`` for Inception: ``fid``, ``is``; ``"_dom"`` for a
    domain classifier: ``fid_dom``, ``is_dom``). Subclasses implement :meth:`features_and_logits`:
    uint8 ``(B, C, H, W)`` images on any device -> (features ``(B, F)`` float32, logits ``(B, K)`` float32
    or None when the network has no classifier). Outputs stay on the network's device.
    """
    name: str = "feature-net"
    weights_sha256: str = ""
    metric_suffix: str = ""
    device: torch.device = torch.device("cpu")

    def features_and_logits(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]

    def logits(self, images: torch.Tensor) -> Optional[torch.Tensor]:
        return self.features_and_logits(images)[1]


def check_images(images, what: str = "images") -> torch.Tensor:
    """Refuse anything but a non-empty uint8 (B, C, H, W) tensor with 1 or 3 channels."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
            or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        desc = f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) \
            else type(images).__name__
        raise EvalError(f"{what}: expected a non-empty uint8 tensor (B, C, H, W) with C = 1 or 3, got {desc}")
    return images


class StreamingStats:
    """Running mean/covariance of features (float64 sums, shifted by the first batch's mean for
    accuracy), the first ``max_keep`` features (for precision/recall) and, when ``keep_logits``,
    every logit row (for the Inception Score). Sums live on the features' device."""

    def __init__(self, max_keep: int = DEFAULT_MAX_KEEP, keep_logits: bool = True):
        if max_keep < 0:
            raise EvalError(f"max_keep must be >= 0, got {max_keep}")
        self.max_keep, self.keep_logits = max_keep, keep_logits
        self.n = 0
        self._shift = self._sum = self._outer = None
        self._kept, self._num_kept, self._logits = [], 0, []
        self._has_logits: Optional[bool] = None

    def update(self, feats: torch.Tensor, logits: Optional[torch.Tensor] = None) -> None:
        if feats.dim() != 2 or feats.shape[0] == 0:
            raise EvalError(f"features must be a non-empty (B, D) tensor, got shape {tuple(feats.shape)}")
        x = feats.detach().double()
        if not torch.isfinite(x).all():
            raise EvalError("the feature network produced NaN or Inf features")
        if self._shift is None:
            self._shift = x.mean(0)
            self._sum = torch.zeros_like(self._shift)
            self._outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        elif x.shape[1] != self._shift.shape[0]:
            raise EvalError(f"feature size changed from {self._shift.shape[0]} to {x.shape[1]} within one stream")
        d = x.to(self._shift.device) - self._shift
        self._sum += d.sum(0)
        self._outer += d.T @ d
        self.n += x.shape[0]
        if self._num_kept < self.max_keep:
            part = feats[:self.max_keep - self._num_kept].detach().float().cpu()
            self._kept.append(part)
            self._num_kept += len(part)
        has = logits is not None
        if self._has_logits is not None and has != self._has_logits:
            raise EvalError("some batches came with logits and others without")
        self._has_logits = has
        if has and self.keep_logits:
            self._logits.append(logits.detach().float().cpu())

    @property
    def dim(self) -> int:
        return 0 if self._shift is None else int(self._shift.shape[0])

    def mean(self) -> np.ndarray:
        self._need(1)
        return (self._shift + self._sum / self.n).cpu().numpy()

    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by n - 1, like ``np.cov``)."""
        self._need(2)
        m = self._sum / self.n
        c = (self._outer - self.n * torch.outer(m, m)) / (self.n - 1)
        return ((c + c.T) / 2).cpu().numpy()

    def stats(self) -> Tuple[np.ndarray, np.ndarray]:
        return self.mean(), self.cov()

    def kept_features(self) -> torch.Tensor:
        return torch.cat(self._kept) if self._kept else torch.zeros(0, self.dim)

    def logits(self) -> Optional[torch.Tensor]:
        return torch.cat(self._logits) if self._logits else None

    def _need(self, n: int) -> None:
        if self.n < n:
            raise EvalError(f"need at least {n} samples for these statistics, got {self.n}")


def _batched(images: torch.Tensor, batch_size: int, forward) -> Tuple[torch.Tensor, torch.Tensor]:
    """``forward`` (images -> (features, logits)) over slices of ``batch_size`` images, outputs concatenated."""
    outs = [forward(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat([f for f, _ in outs]), torch.cat([lg for _, lg in outs])


class EvalNet(FeatureNet):
    """An :class:`rcg.evalnet.EvalCNN` as a :class:`FeatureNet` (metrics ``*_dom``): penultimate features and
    logits. Images with another channel count are converted (1 -> 3 by repetition, 3 -> 1 by luma) and other
    sizes resized to the network's resolution, as ``rcg.data`` prepares training images."""

    metric_suffix = "_dom"

    def __init__(self, model: EvalCNN, weights_sha256: str, device=None, batch_size: int = 1000,
                 class_names: Optional[list] = None):
        self.device = torch.device(device or "cpu")
        self.model = model.to(self.device).eval()      # (gradients are off in features_and_logits)
        if self.device.type == "cpu":                  # 2-5x faster convolutions and pooling on CPUs
            self.model.to(memory_format=torch.channels_last)
        self.cfg, self.name, self.weights_sha256 = model.cfg, NAME, weights_sha256
        self.batch_size, self.class_names = batch_size, class_names

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        if images.shape[1] != self.cfg.in_chans:
            images = convert_channels(images.cpu(), self.cfg.in_chans)
        if images.shape[-1] != self.cfg.resolution or images.shape[-2] != self.cfg.resolution:
            images = resize_images(images.cpu(), self.cfg.resolution)
        return images

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        def forward(x):
            f, lg = self.model.forward_features(x.to(self.device))
            return f.float(), lg.float()
        return _batched(self.prepare(images), self.batch_size, forward)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        logits = self.logits(images).cpu()
        return (logits.argmax(1) == labels.cpu()).float().mean().item()


INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"      # torch.hub convention: the file name carries its sha256 prefix


def _missing(path) -> FileNotFoundError:
    return FileNotFoundError(
        f"Inception-v3 weights not found at {path}. Inception FID/IS needs the standard FID Inception weights "
        f"file {INCEPTION_FILE} (sha256 {INCEPTION_SHA256_PREFIX}...), which rcg never downloads. Get it on a "
        f"machine with internet access from https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        f"{INCEPTION_FILE} (or torch-fidelity's copy, https://github.com/toshas/torch-fidelity/releases/download/"
        f"v0.2.0/weights-inception-2015-12-05-6726825d.pth) "
        f"and pass its path with --inception-weights. On a CPU, use the domain feature network instead "
        f"(rcg train-evalnet).")


class InceptionV3(FeatureNet):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF-compatible port of the 2015 FID Inception, with
    its TF-1.x-compatible bilinear resize to 299 px) as a :class:`FeatureNet`, as
    ``torch_fidelity.calculate_metrics`` computes it: ``features`` (B, 2048) pool3, ``logits`` (B, 1008) unbiased
    logits (the fc layer without bias). Grayscale images are repeated to three channels (what PIL's
    ``convert("RGB")`` does when torch-fidelity reads a grayscale PNG).

    The weights are never downloaded: pass the local file ``pt_inception-2015-12-05-6726825d.pth``
    (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` is the same file). ``weights_sha256`` is
    its sha256. ``batch_size`` bounds the images sent through the network at once (299 px activations are
    large)."""

    metric_suffix = ""

    def __init__(self, weights_path, device=None, batch_size: int = 200):
        path = None if weights_path is None or str(weights_path) == "" else Path(weights_path).expanduser()
        if path is None or not path.is_file():
            raise _missing(path or "(no path given)")
        if batch_size < 1:
            raise EvalError(f"batch_size must be >= 1, got {batch_size}")
        try:       # refuse anything but plain tensors before torch-fidelity unpickles the file
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise EvalError(f"{path} is not a PyTorch state dict of tensors ({type(e).__name__}: {e}); "
                            f"expected {INCEPTION_FILE}") from e
        if not isinstance(state, dict) or "fc.weight" not in state or tuple(state["fc.weight"].shape) != (1008, 2048):
            raise EvalError(f"{path} does not hold FID Inception-v3 weights (no fc.weight of shape (1008, 2048)); "
                            f"expected {INCEPTION_FILE}")
        del state
        self.weights_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()      # 95 MB
        if not self.weights_sha256.startswith(INCEPTION_SHA256_PREFIX):
            warnings.warn(f"{path} is not the standard FID Inception file (sha256 {self.weights_sha256[:16]}..., "
                          f"expected {INCEPTION_SHA256_PREFIX}...): FID/IS will not be comparable with published "
                          f"numbers", stacklevel=2)
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3   # 1.3 s to import
        try:
            model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                feature_extractor_weights_path=str(path))
        except RuntimeError as e:      # state-dict key / shape mismatch
            raise EvalError(f"{path} does not fit torch-fidelity's Inception-v3 ({e})") from e
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.name, self.path, self.batch_size = "inception-v3-torch-fidelity", str(path), int(batch_size)

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        def forward(x):
            x = x.to(self.device, non_blocking=True)
            return self.model(x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x)
        return _batched(check_images(images), self.batch_size, forward)
