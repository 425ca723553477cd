"""Image files: the one decoder of rcg (:func:`decode_image`) and listing, splitting and scanning image folders.

Image folders, ``rcg sample --reference``, ``rcg interpolate`` and the evaluation's folder source all decode
through :func:`decode_image`; :func:`list_image_files` is the one recursive, sorted listing of a folder.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
PROGRESS_MIN_FILES = 2000       # show a progress bar (and decode in worker processes) above this many files


class DataError(ValueError):
    """Bad data-set input (missing files, corrupt data, invalid options)."""


def decode_image(path, resolution: int, channels: int) -> np.ndarray:
    """Decode one file to a (R, R, C) uint8 array: shorter side to R (bicubic), center crop.

    EXIF orientation applied, 16-bit / float grayscale scaled to 8 bits, transparency (alpha, palette or ``LA``)
    composited onto white, then converted to L (``channels`` 1) or RGB (3)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):      # 16-bit / float grayscale
            a = np.asarray(im, dtype=np.float64)
            a = a / 257.0 if im.mode.startswith("I;16") or a.max() > 255 else a
            im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
        elif im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
            rgba = im.convert("RGBA")                             # composite onto white
            im = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im.alpha_composite(rgba)
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        scale = resolution / min(w, h)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        if size != (w, h):
            im = im.resize(size, Image.BICUBIC, reducing_gap=3.0)   # large images: box-reduce first (fast)
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        return np.asarray(im, dtype=np.uint8).reshape(resolution, resolution, channels)


def list_image_files(path) -> tuple:
    """(root, image files under it, recursive, sorted by relative path); clear errors for a bad folder."""
    if path is None:
        raise DataError("an image folder needs a path (set data.path to a directory of images)")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is a file; pass the directory that contains the images")
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"no image files ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) "
                        f"found under {root} (searched recursively)")
    return root, files


def heldout_mask(relpaths, fraction: float) -> np.ndarray:
    """Which files are held out: those whose path hash falls below ``fraction`` (stable whatever else is in
    the folder), at least one and never all of them when ``fraction`` > 0 and there are two or more files."""
    if not 0 <= fraction < 1:
        raise DataError(f"holdout must be in [0, 1), got {fraction!r}")
    n = len(relpaths)
    if fraction == 0 or n < 2:
        return np.zeros(n, dtype=bool)
    u = np.array([int(hashlib.sha1(p.encode()).hexdigest()[:12], 16) / 16 ** 12 for p in relpaths])
    mask = u < fraction
    if not mask.any():
        mask[int(np.argmin(u))] = True
    if mask.all():
        mask[int(np.argmax(u))] = False
    return mask


def _decode_or_error(args):
    """decode_image for a worker process: (array, None) or (None, error text)."""
    path, resolution, channels = args
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return decode_image(path, resolution, channels), None
    except Exception as e:  # PIL raises many types for unreadable data; all mean "skip it"
        return None, f"{type(e).__name__}: {e}"


def decode_all(files, resolution, channels, desc: str, progress: bool):
    """(array, None) or (None, error text) for every file, in worker processes (one per core, at most 8) when
    there are many."""
    jobs = [(p, resolution, channels) for p in files]
    workers = min(8, os.cpu_count() or 1)
    many = len(jobs) > PROGRESS_MIN_FILES
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) if workers > 1 and many \
            else nullcontext() as pool:
        results = pool.map(_decode_or_error, jobs, chunksize=64) if pool else map(_decode_or_error, jobs)
        yield from tqdm(results, total=len(jobs), desc=desc, unit="img", disable=not progress or not many)


@dataclass
class FolderScan:
    """What the headers of a folder's images say (no pixel is decoded)."""
    files: list
    short_sides: list               # min(width, height) of each readable file
    all_gray: bool                  # every readable image is grayscale (so one channel suffices)
    unreadable: list

    def resolution(self, choices=(32, 64, 128, 256)) -> int:
        """The largest of ``choices`` not above the median shorter side (so most images are downscaled)."""
        if not self.short_sides:
            raise DataError("no readable images")
        median = float(np.median(self.short_sides))
        fitting = [c for c in choices if c <= median]
        return max(fitting) if fitting else min(choices)


def scan_image_folder(path) -> FolderScan:
    """Image files under ``path`` (recursive) with their sizes and modes, read from the headers only."""
    root, files = list_image_files(path)
    sides, gray, bad = [], True, []
    for p in files:
        try:
            with Image.open(p) as im:
                sides.append(min(im.size))
                gray = gray and im.mode in GRAY_MODES
        except Exception as e:  # PIL raises many types for unreadable data
            bad.append((p, e))
    if not sides:
        p, e = bad[0]
        raise DataError(f"none of the {len(files)} image files under {root} could be read "
                        f"(first: {p}: {type(e).__name__}: {e})")
    return FolderScan(files=files, short_sides=sides, all_gray=gray, unreadable=bad)
