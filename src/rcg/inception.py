"""Inception-v3 as torch-fidelity computes it: the feature network behind RCG's FID / IS numbers.

The network is torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF-compatible port of the 2015
FID Inception), fed uint8 images and resized by torch-fidelity's own TF-1.x-compatible bilinear resize
to 299 px. FID and precision/recall use the 2048-d pool3 features, the Inception Score the unbiased
logits (``logits_unbiased``, 1008 classes), exactly as ``torch_fidelity.calculate_metrics`` does.
Grayscale images are repeated to three channels (what PIL's ``convert("RGB")`` does when
torch-fidelity reads a grayscale PNG).

The weights are never downloaded: pass the local file ``pt_inception-2015-12-05-6726825d.pth``
(torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` is the same file).
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch

from .evaluate import EvalError, FeatureNet, check_images

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URLS = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)
INCEPTION_SHA256_PREFIX = "6726825d"      # torch.hub convention: the file name carries its sha256 prefix
FEATURES = ("2048", "logits_unbiased")


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _missing(path) -> FileNotFoundError:
    return FileNotFoundError(
        f"Inception-v3 weights not found at {path}. Inception FID/IS needs the standard FID Inception weights "
        f"file {INCEPTION_FILE} (sha256 {INCEPTION_SHA256_PREFIX}...), which rcg never downloads. Get it on a "
        f"machine with internet access from {INCEPTION_URLS[0]} (or torch-fidelity's copy, {INCEPTION_URLS[1]}) "
        f"and pass its path with --inception-weights. On a CPU, use the domain feature network instead "
        f"(rcg train-evalnet).")


class InceptionV3(FeatureNet):
    """torch-fidelity's Inception-v3 behind the :class:`rcg.evaluate.FeatureNet` interface.

    ``features``: (B, 2048) pool3; ``logits``: (B, 1008) unbiased logits (the fc layer without bias).
    ``weights_sha256`` is the sha256 of the weights file. ``batch_size`` bounds the images sent through
    the network at once (299 px activations are large)."""

    metric_suffix = ""

    def __init__(self, weights_path, device=None, batch_size: int = 200):
        if weights_path is None or str(weights_path) == "":
            raise _missing("(no path given)")
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise _missing(path)
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
        self.weights_sha256 = file_sha256(path)
        if not self.weights_sha256.startswith(INCEPTION_SHA256_PREFIX):
            warnings.warn(f"{path} is not the standard FID Inception file (sha256 {self.weights_sha256[:16]}..., "
                          f"expected {INCEPTION_SHA256_PREFIX}...): FID/IS will not be comparable with published "
                          f"numbers", stacklevel=2)
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        try:
            model = FeatureExtractorInceptionV3("inception-v3-compat", list(FEATURES),
                                                feature_extractor_weights_path=str(path))
        except RuntimeError as e:      # state-dict key / shape mismatch
            raise EvalError(f"{path} does not fit torch-fidelity's Inception-v3 ({e})") from e
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.name = "inception-v3-torch-fidelity"
        self.path = str(path)
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        check_images(images)
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            x = images[i:i + self.batch_size].to(self.device, non_blocking=True)
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            f, lg = self.model(x)
            feats.append(f)
            logits.append(lg)
        return torch.cat(feats), torch.cat(logits)
