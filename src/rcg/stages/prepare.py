"""``rcg prepare-data SRC OUT``: decode a folder (or Fashion-MNIST / CIFAR-10) once into a prepared store
(:mod:`rcg.prepared`) that every stage reads with ``--data prepared --data-dir OUT``, streaming rows, so that
memory does not grow with the data set and no stage decodes the images again."""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..data import FMNIST_DIR, folder_labels, load_cifar10, load_fashion_mnist
from ..images import DataError, decode_all, list_image_files
from ..prepared import read_manifest, verify_store, write_store

CHUNK = 1024          # images written per batch


def _folder_batches(root: Path, files: list, targets: list, resolution: int, channels: int, progress: bool,
                    kept: list) -> Iterator[tuple]:
    """(images (n, C, H, W), labels or None) batches of the readable files (appended to ``kept``)."""
    images, labels, skipped = [], [], []
    for i, (arr, err) in enumerate(decode_all(files, resolution, channels, f"prepare {root.name or root}", progress)):
        if err is not None:
            skipped.append((files[i], err))
            continue
        images.append(arr.transpose(2, 0, 1))
        labels.append(targets[i])
        kept.append(files[i].relative_to(root).as_posix())
        if len(images) == CHUNK:
            yield np.stack(images), (np.array(labels) if labels[0] is not None else None)
            images, labels = [], []
    if images:
        yield np.stack(images), (np.array(labels) if labels[0] is not None else None)
    if skipped:
        p, e = skipped[0]
        if len(skipped) == len(files):
            raise DataError(f"none of the {len(files)} image files under {root} could be read (first: {p}: {e})")
        warnings.warn(f"skipped {len(skipped)} of {len(files)} files that could not be read as images "
                      f"(first: {p}: {e})", stacklevel=3)


def _set_batches(images, labels) -> Iterator[tuple]:
    for i in range(0, len(images), CHUNK):
        yield images[i:i + CHUNK].numpy(), (labels[i:i + CHUNK].numpy() if labels is not None else None)


def prepare_data(src: str, out: str, resolution: Optional[int] = None, channels: Optional[int] = None,
                 labels: bool = False, split: str = "train", data_dir: Optional[str] = None, limit: int = 0,
                 progress: bool = True, verify: bool = False) -> dict:
    """Write the store ``out`` from ``src``: an image folder (recursive; ``labels``: sub-folder names), or
    ``fmnist`` / ``cifar10`` (their ``split``, from ``data_dir`` or the default location). ``verify``: only
    check an existing store's checksums. Returns the manifest."""
    if verify:
        man = verify_store(out)
        print(f"{out}: {man['count']:,} images, every checksum matches")
        return man
    t0 = time.time()
    kind = src if src in ("fmnist", "cifar10") else "folder"
    if kind == "folder":
        resolution, channels = resolution or 64, channels or 3
        root, files = list_image_files(src)
        names, targets = folder_labels(root, files) if labels else (None, [None] * len(files))
        files, targets = (files[:limit], targets[:limit]) if limit else (files, targets)
        paths: list = []
        man = write_store(out, _folder_batches(root, files, targets, resolution, channels, progress, paths),
                          channels, resolution, f"folder:{root}", names, paths)
    else:
        resolution = resolution or (28 if kind == "fmnist" else 32)
        channels = channels or (1 if kind == "fmnist" else 3)
        load = load_fashion_mnist if kind == "fmnist" else load_cifar10
        d = load(data_dir or (FMNIST_DIR if kind == "fmnist" else None), split, resolution, channels, limit)
        man = write_store(out, _set_batches(d.images, d.labels if labels or d.labels is not None else None),
                          channels, resolution, d.source, d.class_names)
    size = sum(man["bytes"].values())
    print(f"prepared {man['count']:,} images ({channels}x{resolution}x{resolution}, labels: {man['labels']}) -> "
          f"{out} ({size / 2**20:.1f} MiB, {time.time() - t0:.1f} s); train on it with --data prepared "
          f"--data-dir {out} --resolution {resolution} --channels {channels}")
    return read_manifest(out)
