"""Prepared data sets: images decoded, composited, resized and cropped once into an uncompressed uint8 store that
training reads rows of, so that memory does not grow with the data set (layer 1).

A store is a folder::

    images.u8       uint8 (N, C, H, W), row-major, no header (memory-mappable: np.memmap(..., shape=(N, C, H, W)))
    labels.i64      int64 (N,) little-endian, when the source had labels
    paths.txt       one relative path per image (folders), so that a held-out split can be drawn at load time
    manifest.json   format, count, channels, resolution, source, class names, byte sizes and sha256 of each file

``manifest.json`` is written last (atomically): a folder without it is an unfinished store. Rows are read with
``os.pread`` (not mapped), so a training run's resident memory stays that of one batch however large the
store; the page cache holds what the kernel keeps. :func:`write_store` streams the images (never all in RAM).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .images import DataError, heldout_mask

FORMAT = "rcg-prepared"
VERSION = 1
MANIFEST, IMAGES, LABELS, PATHS = "manifest.json", "images.u8", "labels.i64", "paths.txt"


class PreparedImages:
    """The images of a store (or of a subset of its rows) as a read-only uint8 "tensor" (N, C, H, W): ``len``,
    ``shape``, ``dtype`` and indexing by an int, a slice or a sequence / tensor of ints give torch tensors read
    from the file. Safe to use from DataLoader workers (each process opens the file itself)."""

    def __init__(self, path, count: int, shape: Tuple[int, int, int], rows: Optional[np.ndarray] = None):
        self.path, self.item_shape = str(path), tuple(int(s) for s in shape)
        self.rows = np.arange(count, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.item_bytes = int(np.prod(self.item_shape))
        self._fd, self._pid = None, None

    dtype = torch.uint8

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows),) + self.item_shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):             # a fresh descriptor in every process
        return {**self.__dict__, "_fd": None, "_pid": None}

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def subset(self, rows) -> "PreparedImages":
        """The images at positions ``rows`` of this set (no data read)."""
        return PreparedImages(self.path, 0, self.item_shape, self.rows[np.asarray(rows, dtype=np.int64)])

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, (int, np.integer)):
            return self.read(self.rows[[int(key)]])[0]
        if isinstance(key, slice):
            return self.read(self.rows[key])
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return self.read(self.rows[np.asarray(key, dtype=np.int64)])

    def read(self, file_rows: np.ndarray) -> torch.Tensor:
        """uint8 (len(file_rows), C, H, W) of the given rows of the file, one ``pread`` per run of consecutive
        rows."""
        out = np.empty((len(file_rows),) + self.item_shape, dtype=np.uint8)
        if not len(file_rows):
            return torch.from_numpy(out)
        order = np.argsort(file_rows, kind="stable")
        sorted_rows = file_rows[order]
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        fd, flat = self._file(), out.reshape(len(file_rows), -1)
        for run in np.split(np.arange(len(sorted_rows)), breaks):
            first, n = int(sorted_rows[run[0]]), len(run)
            buf = os.pread(fd, n * self.item_bytes, first * self.item_bytes)
            if len(buf) != n * self.item_bytes:
                raise DataError(f"{self.path} is shorter than its manifest says (truncated?): prepare it again")
            flat[order[run]] = np.frombuffer(buf, dtype=np.uint8).reshape(n, -1)
        return torch.from_numpy(out)

    def to(self, device) -> torch.Tensor:
        """Every image, read into memory on ``device`` (for small sets; training streams rows instead)."""
        return self[:].to(device)

    def __repr__(self) -> str:
        return f"PreparedImages({self.path}, {tuple(self.shape)})"


def read_manifest(path) -> dict:
    """The manifest of the store ``path``, checked against the files beside it (a clear error when a file is
    missing or truncated, or the folder is not a finished store)."""
    d = Path(path)
    m = d / MANIFEST
    if not m.is_file():
        what = "an unfinished store (rerun rcg prepare-data)" if (d / IMAGES).exists() else "not a prepared store"
        raise DataError(f"{d} is {what}: no {MANIFEST}. Make one with rcg prepare-data SRC {d}")
    try:
        man = json.loads(m.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{m} is not valid JSON ({e}): prepare the store again") from e
    if man.get("format") != FORMAT or man.get("version") != VERSION:
        raise DataError(f"{d}: format {man.get('format')!r} version {man.get('version')!r}, expected {FORMAT!r} "
                        f"version {VERSION} (prepare it again with this rcg)")
    for name, size in man["bytes"].items():
        f = d / name
        got = f.stat().st_size if f.is_file() else None
        if got != size:
            raise DataError(f"{f} is {'missing' if got is None else f'{got:,} bytes'}, the manifest says {size:,} "
                            f"(truncated or changed?): prepare the store again")
    return man


def load_prepared(path, resolution: int, channels: int, split: str = "train", holdout: float = 0.0,
                  limit: int = 0, labels: bool = False):
    """An :class:`rcg.data.ImageSet`-like triple (PreparedImages, labels or None, class names, source) of the
    store ``path``; ``holdout`` > 0 splits a folder's images by path hash as :func:`rcg.data.load_image_folder`
    does (split "train": the rest, else the held-out ones)."""
    man = read_manifest(path)
    c, r = man["channels"], man["resolution"]
    if (c, r) != (channels, resolution):
        raise DataError(f"{path} holds {c}-channel {r} px images, but {channels}-channel {resolution} px were asked "
                        f"for: prepare it at that size (rcg prepare-data --resolution {resolution} --channels "
                        f"{channels}) or set data.resolution={r} data.channels={c}")
    images = PreparedImages(Path(path) / IMAGES, man["count"], (c, r, r))
    label_t = None
    if man["labels"]:
        raw = np.fromfile(Path(path) / LABELS, dtype="<i8")
        label_t = torch.from_numpy(raw.astype(np.int64))
    elif labels:
        raise DataError(f"{path} was prepared without labels; prepare it again with --labels")
    rows = np.arange(man["count"])
    part = ""
    if holdout > 0:
        if not (Path(path) / PATHS).is_file():
            raise DataError(f"{path} has no file paths to draw a held-out split from (not prepared from a folder)")
        held = heldout_mask((Path(path) / PATHS).read_text().splitlines(), holdout)
        rows = np.flatnonzero(~held if split == "train" else held)
        part = f" ({split}: {'the rest' if split == 'train' else f'the {holdout:.0%} held out'})"
    if limit:
        rows = rows[:limit]
    if len(rows) != man["count"]:
        images = images.subset(rows)
        label_t = label_t[torch.from_numpy(rows)] if label_t is not None else None
    return images, label_t, man.get("class_names"), f"prepared:{path}{part} (from {man['source']})"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_store(out, batches: Iterable[Tuple[np.ndarray, Optional[np.ndarray]]], channels: int, resolution: int,
                source: str, class_names: Optional[List[str]] = None, paths: Optional[Sequence[str]] = None,
                extra: Optional[dict] = None) -> dict:
    """Write a store from ``batches`` of (uint8 (n, C, H, W) images, int64 (n,) labels or None); returns the
    manifest. The manifest goes last, atomically, so an interrupted write leaves no store that looks finished."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    count, has_labels = 0, None
    with open(out / IMAGES, "wb") as fi, open(out / LABELS, "wb") as fl:
        for images, labels in batches:
            if images.dtype != np.uint8 or images.shape[1:] != (channels, resolution, resolution):
                raise DataError(f"batch of {images.dtype} {images.shape[1:]}, expected uint8 "
                                f"{(channels, resolution, resolution)}")
            has_labels = labels is not None if has_labels is None else has_labels
            fi.write(np.ascontiguousarray(images).tobytes())
            if has_labels:
                fl.write(np.asarray(labels, dtype="<i8").tobytes())
            count += len(images)
    if not has_labels:
        (out / LABELS).unlink()
    if count == 0:
        raise DataError(f"no images to write to {out}")
    files = [IMAGES] + [LABELS] * bool(has_labels)
    if paths is not None:
        (out / PATHS).write_text("".join(p + "\n" for p in paths))
        files.append(PATHS)
    man = {"format": FORMAT, "version": VERSION, "count": count, "channels": channels, "resolution": resolution,
           "labels": bool(has_labels), "class_names": class_names, "source": source,
           "bytes": {f: (out / f).stat().st_size for f in files}, "sha256": {f: _sha256(out / f) for f in files},
           **(extra or {})}
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(man, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return man


def verify_store(path) -> dict:
    """Recompute every file's sha256 and compare it with the manifest; returns the manifest."""
    man = read_manifest(path)
    for name, want in man["sha256"].items():
        if _sha256(Path(path) / name) != want:
            raise DataError(f"{Path(path) / name}: checksum mismatch (the file changed since it was prepared)")
    return man


ImagesLike = Union[torch.Tensor, PreparedImages]
