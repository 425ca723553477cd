"""Tiny data sets and configs shared by the pipeline tests (made on the fly, never downloaded)."""
import gzip
from pathlib import Path

import numpy as np

from rcg.config import DataConfig, EncoderRun, KNNConfig, OptimConfig, RDMRun
from rcg.tree import apply_overrides
from rcg.encoders import EncoderConfig
from rcg.rdm import RDMConfig


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Fashion-MNIST-format gzip idx files for (N, H, W) uint8 images and (N,) labels."""
    prefix = "train" if split == "train" else "t10k"
    n, h, w = images.shape
    head = np.array([0x803, n, h, w], dtype=">u4").tobytes()
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(head + images.astype(np.uint8).tobytes()))
    head = np.array([0x801, n], dtype=">u4").tobytes()
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(head + labels.astype(np.uint8).tobytes()))


def toy_images(n: int, size: int = 16, seed: int = 0):
    """Two easy classes: a bright horizontal bar or a bright vertical bar, at random places, plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 40, size=(n, size, size)).astype(np.uint8)
    y = np.arange(n) % 2
    for i in range(n):
        p = rng.integers(2, size - 4)
        if y[i] == 0:
            x[i, p:p + 3, 2:-2] = 230
        else:
            x[i, 2:-2, p:p + 3] = 230
    return x, y


def make_fmnist(folder: Path, n_train: int = 128, n_test: int = 64, size: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder, "train", *toy_images(n_train, size, 0))
    write_idx(folder, "test", *toy_images(n_test, size, 1))
    return folder


def tiny_encoder_run(data_dir: Path, size: int = 16, seed: int = 0, epochs: float = 1.0) -> EncoderRun:
    return EncoderRun(
        data=DataConfig("fmnist", path=str(data_dir), resolution=size, channels=1),
        eval_data=DataConfig("fmnist", path=str(data_dir), split="test", resolution=size, channels=1),
        encoder=EncoderConfig(arch="resnet", in_chans=1, widths=(8, 16), depths=(1, 1), mlp_dim=32, rep_dim=16),
        pred_dim=32, knn=KNNConfig(every_epochs=1.0, bank=0, queries=0, k=5),
        optim=OptimConfig(epochs=epochs, batch_size=32, lr=1e-3, seed=seed, log_every=1, ckpt_every=2),
    )


def tiny_rdm_run(cache: str, encoder: str, **over) -> RDMRun:
    cfg = RDMRun(cache=cache, encoder=encoder,
                 model=RDMConfig(in_channels=16, time_embed_dim=16, model_channels=32, num_res_blocks=2),
                 sample_steps=10, fd_samples=64,
                 optim=OptimConfig(epochs=2, batch_size=32, lr=1e-3, ema_decay=0.999, log_every=1, ckpt_every=4))
    return apply_overrides(cfg, [f"{k}={v}" for k, v in over.items()])
