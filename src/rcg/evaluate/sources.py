"""Image sources: uint8 (B, C, H, W) batches from in-memory tensors, image folders and npz / npy files (ADM's
sample files), each with ``num_images`` for progress bars."""
from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from numpy.lib import format as npf
from PIL import Image

from ..data import check_channels, check_resolution
from ..images import GRAY_MODES, DataError, decode_image, list_image_files
from ..prepared import PreparedImages
from .features import check_images
from .metrics import EvalError


class TensorSource:
    """Batches of an in-memory uint8 (N, C, H, W) tensor, or of a prepared store's images (read batch by batch)."""

    def __init__(self, images, batch_size: int = 500):
        if isinstance(images, PreparedImages):
            check_images(images[:1], "images")
            self.images = images
        else:
            self.images = check_images(images, "images")
        self.batch_size = _check_batch_size(batch_size)
        self.num_images = len(images)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(0, self.num_images, self.batch_size):
            yield self.images[i:i + self.batch_size]


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise EvalError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


class ImageFolderSource:
    """Batches decoded from every image file under ``path`` (:func:`rcg.images.list_image_files`).

    ``resolution`` None keeps the files' own size (all must then be square and equal, as sample folders
    are; no resampling, like torch-fidelity); otherwise shorter side to ``resolution`` (bicubic) and
    centre crop (:func:`rcg.images.decode_image`). ``channels`` None: 1 when the first file is grayscale,
    else 3 (RGB). ``workers`` threads decode in parallel."""

    def __init__(self, path, batch_size: int = 250, resolution: Optional[int] = None,
                 channels: Optional[int] = None, limit: int = 0, workers: int = 4):
        try:
            root, files = list_image_files(path)
        except DataError as e:
            raise EvalError(str(e)) from e
        self.batch_size = _check_batch_size(batch_size)
        if limit:
            files = files[:limit]
        try:
            with Image.open(files[0]) as im:
                size, mode = im.size, im.mode
        except Exception as e:
            raise EvalError(f"cannot read {files[0]} as an image ({type(e).__name__}: {e})") from e
        self._native = resolution is None
        if self._native:
            if size[0] != size[1]:
                raise EvalError(f"{files[0]} is {size[0]}x{size[1]}, not square; pass a resolution to resize and "
                                f"centre-crop the images")
            resolution = size[0]
        check_resolution(resolution)
        if channels is None:
            channels = 1 if mode in GRAY_MODES else 3
        check_channels(channels)
        self.root, self.files, self.resolution, self.channels = root, files, int(resolution), channels
        self.workers = max(1, int(workers))
        self.num_images = len(files)

    def _read(self, p: Path) -> np.ndarray:
        try:
            if self._native:
                with Image.open(p) as im:
                    if im.size != (self.resolution, self.resolution):
                        raise EvalError(f"{p} is {im.size[0]}x{im.size[1]} but the folder's first image is "
                                        f"{self.resolution}x{self.resolution}; pass a resolution to resize all")
            return decode_image(p, self.resolution, self.channels)
        except EvalError:
            raise
        except Exception as e:
            raise EvalError(f"cannot read {p} as an image ({type(e).__name__}: {e})") from e

    def __iter__(self) -> Iterator[torch.Tensor]:
        with ThreadPoolExecutor(self.workers) as pool:
            for i in range(0, self.num_images, self.batch_size):
                arrays = list(pool.map(self._read, self.files[i:i + self.batch_size]))
                yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _read_npy_header(f):
    """(shape, fortran_order, dtype) of the .npy stream ``f``, leaving it at the start of the data."""
    version = npf.read_magic(f)      # format 3.0 differs from 2.0 only in utf-8 field names (not in uint8 arrays)
    return (npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0)(f)


def _npz_layout(shape: tuple, path) -> str:
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4 and shape[-1] in (1, 3):
        return "NHWC"
    if len(shape) == 4 and shape[1] in (1, 3):
        return "NCHW"
    raise EvalError(f"{path}: images of shape {shape}; expected (N, H, W, C) as ADM/OpenAI sample files, "
                    f"(N, C, H, W) or (N, H, W), with C = 1 or 3")


def _to_nchw(a: np.ndarray, layout: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.unsqueeze(1) if layout == "NHW" else t.permute(0, 3, 1, 2).contiguous() if layout == "NHWC" else t


class NpzSource:
    """Batches of a uint8 image array in an ``.npz`` (key ``arr_0`` as ADM/OpenAI sample files, or the
    only array) or ``.npy`` file, read in pieces so that a 50K x 256 px file never sits in memory whole."""

    def __init__(self, path, batch_size: int = 500, key: Optional[str] = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sample file {path} does not exist")
        self.path, self.batch_size = path, _check_batch_size(batch_size)
        try:
            self.key = None if path.suffix == ".npy" else self._npz_key(key)
            with self._open() as f:
                shape, fortran, dtype = _read_npy_header(f)
        except zipfile.BadZipFile as e:
            raise EvalError(f"{path} is not an npz file ({e})") from e
        if fortran and len(shape) > 1:
            raise EvalError("Fortran-ordered image arrays are not supported; save with np.ascontiguousarray")
        if dtype != np.uint8:
            raise EvalError(f"{path}: images must be uint8 (0..255), found {dtype}; convert them "
                            f"(e.g. (x * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1])")
        self.layout = _npz_layout(tuple(shape), path)
        self.shape = tuple(shape)
        self.num_images = int(shape[0])
        if self.num_images == 0:
            raise EvalError(f"{path} holds no images")

    def _npz_key(self, key: Optional[str]) -> str:
        with zipfile.ZipFile(self.path) as zf:
            names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if key is None:
            key = "arr_0" if "arr_0" in names else (names[0] if len(names) == 1 else None)
            if key is None:
                raise EvalError(f"{self.path} holds {', '.join(names) or 'no arrays'}; images are read from "
                                f"'arr_0' (or the only array): name the key")
        if key not in names:
            raise EvalError(f"{self.path} has no array {key!r} (it has: {', '.join(names)})")
        return key

    @contextmanager
    def _open(self):
        """The array's .npy stream: the file itself, or the key's member of the npz."""
        if self.key is None:
            with self.path.open("rb") as f:
                yield f
        else:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.key + ".npy") as f:
                yield f

    def __iter__(self) -> Iterator[torch.Tensor]:
        item = int(np.prod(self.shape[1:]))
        with self._open() as f:
            _read_npy_header(f)
            for i in range(0, self.num_images, self.batch_size):
                n = min(self.batch_size, self.num_images - i)
                raw = f.read(n * item)
                if len(raw) != n * item:
                    raise EvalError(f"{self.path}: truncated array (ended at image {i + len(raw) // item})")
                a = np.frombuffer(bytearray(raw), dtype=np.uint8).reshape((n,) + self.shape[1:])
                yield _to_nchw(a, self.layout)


iterate_tensor, iterate_image_folder, iterate_npz = TensorSource, ImageFolderSource, NpzSource
