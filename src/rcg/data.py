"""Loading image data sets into memory as uint8 tensors.

Every loader returns an :class:`ImageSet` whose ``images`` are uint8 ``(N, C, H, W)`` and whose
``labels`` (when known) are int64 ``(N,)``. Supported sources: Fashion-MNIST gzip idx files,
recursive image folders (decoded by :mod:`rcg.images`), CIFAR-10 python batches (read with a restricted
unpickler) and the safetensors files :func:`save_image_set` writes.
Every bad input raises :class:`DataError` with a message that says what to do about it.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:                                   # numpy < 2
    from numpy.core.multiarray import _reconstruct

from .images import DataError, decode_all, heldout_mask, list_image_files
from .prepared import ImagesLike, load_prepared

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
MAX_BYTES = 16 * 2**30          # refuse to build an image tensor larger than this
_CHUNK = 256                    # images per float chunk in resize / channel conversion


@dataclass
class ImageSet:
    images: ImagesLike              # uint8 (N, C, H, W): a contiguous tensor, or rows of a prepared store
    labels: Optional[torch.Tensor]  # int64 (N,) or None
    class_names: Optional[list]     # list[str] or None
    source: str                     # human-readable description of where the images came from

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ----------------------------------------------------------------------------- checks and transforms

def check_resolution(resolution) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) \
            or not 8 <= resolution <= 1024:
        raise DataError(f"resolution must be an integer between 8 and 1024, got {resolution!r}")


def check_channels(channels) -> None:
    if isinstance(channels, bool) or channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")


def _check_options(resolution, channels, limit, split=None, splits=(), what="") -> None:
    """The loaders' common options; ``split`` is checked against ``splits`` when these are given."""
    check_resolution(resolution)
    check_channels(channels)
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
        raise DataError(f"limit must be an integer >= 0 (0 = all images), got {limit!r}")
    if splits and split not in splits:
        choices = ", ".join(map(repr, splits[:-1])) + f" or {splits[-1]!r}"
        raise DataError(f"{what} split must be {choices}, got {split!r}")


def _check_memory(n: int, channels: int, resolution: int, what: str) -> None:
    need = n * channels * resolution * resolution
    if need > MAX_BYTES:
        raise DataError(f"{what}: {n} images at {channels}x{resolution}x{resolution} need "
                        f"{need / 2**30:.1f} GiB of memory (limit {MAX_BYTES / 2**30:.0f} GiB); "
                        f"use a lower --resolution or --limit")


def _check_batch(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        desc = f"{images.dtype} tensor of shape {tuple(images.shape)}" \
            if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"expected a uint8 tensor of shape (N, C, H, W), got {desc}")


def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize the shorter side to ``resolution`` (bilinear, antialiased), then center-crop square."""
    _check_batch(images)
    check_resolution(resolution)
    n, c, h, w = images.shape
    if h == resolution and w == resolution:
        return images.contiguous()
    scale = resolution / min(h, w)
    nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    top, left = (nh - resolution) // 2, (nw - resolution) // 2

    def resize(x):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        return x[:, :, top:top + resolution, left:left + resolution]
    return _map_chunks(images, (n, c, resolution, resolution), resize)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """1 -> 3 by repetition; 3 -> 1 by ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B), rounded."""
    _check_batch(images)
    check_channels(channels)
    c = images.shape[1]
    if c not in (1, 3):
        raise DataError(f"can only convert 1- or 3-channel images, got {c} channels")
    if c == channels:
        return images.contiguous()
    if channels == 3:
        return images.repeat(1, 3, 1, 1)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return _map_chunks(images, (images.shape[0], 1, *images.shape[2:]),
                       lambda x: (x * weights).sum(dim=1, keepdim=True))


def _map_chunks(images: torch.Tensor, shape: tuple, fn) -> torch.Tensor:
    """``fn`` of float copies of ``_CHUNK`` images at a time, rounded back into a uint8 tensor of ``shape``."""
    out = torch.empty(shape, dtype=torch.uint8)
    for i in range(0, images.shape[0], _CHUNK):
        out[i:i + _CHUNK] = fn(images[i:i + _CHUNK].float()).round_().clamp_(0, 255).to(torch.uint8)
    return out


def _finish(images: torch.Tensor, resolution: int, channels: int) -> torch.Tensor:
    """Channel conversion and resize, in whichever order touches fewer bytes."""
    if channels < images.shape[1]:
        return resize_images(convert_channels(images, channels), resolution)
    return convert_channels(resize_images(images, resolution), channels)


def _labelled_set(images: np.ndarray, labels: np.ndarray, resolution: int, channels: int, limit: int, what: str,
                  **fields) -> ImageSet:
    """An ImageSet of the first ``limit`` (0: all) uint8 (N, C, H, W) ``images`` and their labels, converted
    to ``channels`` and ``resolution``."""
    if limit:
        images, labels = images[:limit], labels[:limit]
    _check_memory(len(images), channels, resolution, what)
    x = torch.from_numpy(np.require(images, requirements=["C_CONTIGUOUS", "WRITEABLE"]))   # copied if read-only
    return ImageSet(images=_finish(x, resolution, channels), labels=torch.from_numpy(labels.astype(np.int64)),
                    **fields)


# ----------------------------------------------------------------------------- Fashion-MNIST

def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse an idx file (optionally gzip-compressed) of uint8 data with ``ndim`` dimensions."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:     # includes truncated gzip streams
        raise DataError(f"{path}: cannot read idx file ({e}); the file is truncated or corrupt, "
                        f"download it again") from e
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        found = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DataError(f"{path}: not an idx file with magic 0x{magic:08x} (found {found}); "
                        f"the file is corrupt or not a Fashion-MNIST file")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(f"{path}: header says {tuple(dims.tolist())} = {size} bytes of data, "
                        f"found {len(raw) - header}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims.tolist())


def load_fashion_mnist(root=None, split="train", resolution=28, channels=1, limit=0) -> ImageSet:
    _check_options(resolution, channels, limit, split, ("train", "test"), "Fashion-MNIST")
    root = Path(FMNIST_DIR if root is None else root)
    prefix = "train" if split == "train" else "t10k"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    files = [next((f for f in (root / (n + ".gz"), root / n) if f.is_file()), None) for n in names]   # gzip first
    if None in files:
        missing = [n + ".gz" for n, f in zip(names, files) if f is None]
        where = "does not exist" if not root.is_dir() else f"lacks {', '.join(missing)}"
        raise DataError(f"Fashion-MNIST not found: {root} {where}. Install it with "
                        f"`sudo apt-get install dataset-fashion-mnist`, or pass a directory holding "
                        f"train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                        f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (gzip optional)")
    images = _read_idx(files[0], 0x00000803, 3)
    labels = _read_idx(files[1], 0x00000801, 1)
    if len(images) != len(labels):
        raise DataError(f"{files[0]} has {len(images)} images but {files[1]} has {len(labels)} "
                        f"labels; the files do not belong together")
    if labels.size and labels.max() >= len(FMNIST_CLASSES):
        raise DataError(f"{files[1]}: label {int(labels.max())} out of range 0..9; file is corrupt")
    return _labelled_set(images[:, None], labels, resolution, channels, limit, f"Fashion-MNIST {split}",
                         class_names=list(FMNIST_CLASSES), source=f"fmnist:{root} ({split})")


# ----------------------------------------------------------------------------- image folders

def folder_labels(root: Path, files: list) -> tuple:
    """(class names, one label per file) from the first sub-folder of each file's path under ``root``."""
    loose = [p for p in files if p.parent == root]
    if loose:
        raise DataError(f"labels from sub-folders expect the layout {root}/<class>/<image>, but "
                        f"{len(loose)} images lie directly in {root} (e.g. {loose[0].name}); move "
                        f"them into class folders, or leave labels off (the default: drop --labels)")
    first = [p.relative_to(root).parts[0] for p in files]
    class_names = sorted(set(first))          # from all files, so indices do not depend on limit
    index = {name: i for i, name in enumerate(class_names)}
    return class_names, [index[name] for name in first]


def load_image_folder(path, resolution, channels=3, labels=False, limit=0, split="train",
                      holdout: float = 0.0, progress: bool = True) -> ImageSet:
    """Every image under ``path`` (recursive). ``holdout`` > 0 splits the folder: ``split`` "train" is the
    images not held out, "test" / "val" the held-out ones (see :func:`heldout_mask`); with 0 every split is
    the whole folder."""
    _check_options(resolution, channels, limit, split, ("train", "test", "val"), "folder")
    root, files = list_image_files(path)
    class_names, targets = folder_labels(root, files) if labels else (None, [None] * len(files))
    if holdout > 0:
        held = heldout_mask([p.relative_to(root).as_posix() for p in files], holdout)
        keep_split = held if split != "train" else ~held
        files, targets = [p for p, k in zip(files, keep_split) if k], [t for t, k in zip(targets, keep_split) if k]
    if limit:
        files, targets = files[:limit], targets[:limit]
    _check_memory(len(files), channels, resolution, f"image folder {root}")

    out = np.empty((len(files), resolution, resolution, channels), dtype=np.uint8)
    keep, skipped = [], []
    for i, (arr, err) in enumerate(decode_all(files, resolution, channels, f"loading {root.name or root}",
                                               progress)):
        if err is None:
            out[len(keep)] = arr
            keep.append(i)
        else:
            skipped.append((files[i], err))
    if skipped:
        p, e = skipped[0]
        detail = f"first: {p}: {e}"
        if not keep:
            raise DataError(f"none of the {len(files)} image files under {root} could be read ({detail})")
        warnings.warn(f"skipped {len(skipped)} of {len(files)} files that could not be read as "
                      f"images ({detail})", stacklevel=2)
    images = torch.from_numpy(out[:len(keep)]).permute(0, 3, 1, 2).contiguous()
    label_t = torch.tensor([targets[i] for i in keep], dtype=torch.int64) if labels else None
    part = f" ({split}: {1 - holdout:.0%} of it)" if holdout > 0 and split == "train" else \
        (f" ({split}: the {holdout:.0%} held out)" if holdout > 0 else "")
    return ImageSet(images=images, labels=label_t, class_names=class_names, source=f"folder:{root}{part}")


# ----------------------------------------------------------------------------- CIFAR-10

_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                   ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                   ("numpy", "ndarray"): np.ndarray,
                   ("numpy", "dtype"): np.dtype}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: only the numpy globals needed to rebuild arrays are allowed."""

    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module, name):
        if (module, name) in _PICKLE_GLOBALS:
            return _PICKLE_GLOBALS[(module, name)]
        raise DataError(f"{self.path}: refused to load global {module}.{name} from the pickle; "
                        f"CIFAR-10 batches hold only dicts, lists and numpy arrays, so this file "
                        f"is not a genuine batch (it may be malicious)")


def _load_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read CIFAR-10 batch ({type(e).__name__}: {e}); "
                        f"the file is truncated or corrupt") from e


def _get(d, key: str):
    return d.get(key.encode(), d.get(key)) if isinstance(d, dict) else None


def load_cifar10(root, split="train", resolution=32, channels=3, limit=0) -> ImageSet:
    _check_options(resolution, channels, limit, split, ("train", "test"), "CIFAR-10")
    if root is None:
        raise DataError("CIFAR-10 needs a path: set data.path to the extracted cifar-10-batches-py folder")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"CIFAR-10 folder {root} does not exist or is not a directory")
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (base / n).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 {split} batches missing in {base}: {', '.join(missing)}; pass the folder "
                        f"extracted from cifar-10-python.tar.gz (data_batch_1..5, test_batch)")
    xs, ys = [], []
    for name in names:
        if limit and sum(map(len, ys)) >= limit:
            break
        d = _load_pickle(base / name)
        data, labels = _get(d, "data"), _get(d, "labels")
        if data is None or labels is None:
            raise DataError(f"{base / name}: not a CIFAR-10 batch (expected a dict with data and labels)")
        data, labels = np.asarray(data), np.asarray(labels, dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise DataError(f"{base / name}: expected uint8 data of shape (N, 3072) and N labels, got "
                            f"{data.dtype} {data.shape} and {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{base / name}: labels out of range 0..9; the file is corrupt")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    class_names = list(CIFAR10_CLASSES)
    if (base / "batches.meta").is_file():
        names_meta = _get(_load_pickle(base / "batches.meta"), "label_names")
        if names_meta:
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_meta]
    return _labelled_set(np.concatenate(xs), np.concatenate(ys), resolution, channels, limit, f"CIFAR-10 {split}",
                         class_names=class_names, source=f"cifar10:{base} ({split})")


# ----------------------------------------------------------------------------- decoded image files

TENSORS_KIND = "rcg-images"


def save_image_set(data: ImageSet, path, extra: Optional[dict] = None) -> None:
    """An ImageSet as a safetensors file (``images`` uint8 (N, C, H, W), ``labels``), written atomically;
    ``load_dataset(DataConfig("tensors", path=...))`` reads it back."""
    tensors = {"images": data.images.contiguous()}
    if data.labels is not None:
        tensors["labels"] = data.labels.contiguous()
    meta = {"kind": TENSORS_KIND, "source": data.source, "class_names": json.dumps(data.class_names),
            **{k: str(v) for k, v in (extra or {}).items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def tensor_file_meta(path) -> dict:
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise DataError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def load_image_tensors(path, resolution, channels, limit=0) -> ImageSet:
    """Images decoded once into a file by :func:`save_image_set` (``rcg fit`` does this), converted to
    ``channels`` and ``resolution`` when they differ."""
    _check_options(resolution, channels, limit)
    if path is None or not Path(path).is_file():
        raise DataError(f"image tensor file {path} does not exist")
    meta = tensor_file_meta(path)
    if meta.get("kind") != TENSORS_KIND:
        raise DataError(f"{path} is not an image file written by rcg (kind {meta.get('kind')!r})")
    t = load_file(str(path))
    images, labels = t["images"], t.get("labels")
    _check_batch(images)
    if limit:
        images, labels = images[:limit], (labels[:limit] if labels is not None else None)
    names = json.loads(meta.get("class_names", "null"))
    return ImageSet(images=_finish(images, resolution, channels), labels=labels, class_names=names,
                    source=f"tensors:{path} (from {meta.get('source', '?')})")


# ----------------------------------------------------------------------------- dispatch

_LOADERS = ("fmnist", "folder", "cifar10", "tensors", "prepared")


def load_dataset(cfg) -> ImageSet:
    """Load the data set described by a :class:`rcg.config.DataConfig`."""
    if cfg.dataset == "fmnist":
        return load_fashion_mnist(cfg.path, cfg.split, cfg.resolution, cfg.channels, cfg.limit)
    if cfg.dataset == "folder":
        return load_image_folder(cfg.path, cfg.resolution, cfg.channels, cfg.labels, cfg.limit, cfg.split,
                                 getattr(cfg, "holdout", 0.0))
    if cfg.dataset == "cifar10":
        return load_cifar10(cfg.path, cfg.split, cfg.resolution, cfg.channels, cfg.limit)
    if cfg.dataset == "tensors":
        return load_image_tensors(cfg.path, cfg.resolution, cfg.channels, cfg.limit)
    if cfg.dataset == "prepared":       # rcg prepare-data: rows read from the store as training asks for them
        _check_options(cfg.resolution, cfg.channels, cfg.limit, cfg.split, ("train", "test", "val"), "prepared")
        return ImageSet(*load_prepared(cfg.path, cfg.resolution, cfg.channels, cfg.split, cfg.holdout, cfg.limit,
                                       cfg.labels))
    raise DataError(f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(_LOADERS)}")
