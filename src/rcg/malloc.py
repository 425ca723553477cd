"""Keep freed memory in the process on Linux (glibc) CPU runs, instead of handing it back to the kernel.

glibc's ``malloc`` serves allocations above its mmap threshold (128 KiB at start, raised on the fly up to 32 MiB)
with fresh pages from the kernel and trims the top of its heap whenever 2x that much lies free there. A CPU
training step or decoding step allocates and frees the same large activations every iteration (a MAGE decoder
activation at 128 rows: 13 MB), so every iteration pays page faults and the kernel's zeroing of those pages. In a
profile of 12 MAGE decoding steps (fmnist-mage, 128 rows, 1 thread, Zen 3) the bias broadcast inside ``addmm``
took 0.71-0.79 s with glibc's defaults and 0.25 s with the thresholds below, the exact GELU 1.10-1.16 s against
0.44-0.51 s (BENCHMARKS.md). :func:`keep_freed_memory` fixes both thresholds: allocations up to 32 MiB come
from the heap, and up to 1 GiB of free heap top is kept for the next step (the process's peak memory is
unchanged; the kernel gets freed memory back at exit). Set ``RCG_MALLOC_TUNING=0`` to keep glibc's defaults.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20                          # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1 << 30
_state = {"tuned": None}


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process (see the module docstring). Returns whether they
    are set: False off Linux, under another C library, or with ``RCG_MALLOC_TUNING=0``."""
    if _state["tuned"] is not None:
        return _state["tuned"]
    ok = False
    if sys.platform.startswith("linux") and os.environ.get("RCG_MALLOC_TUNING", "1") != "0":
        try:
            libc = ctypes.CDLL(None)
            ok = bool(libc.gnu_get_libc_version) and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and \
                libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        except (OSError, AttributeError):        # not glibc (musl has no gnu_get_libc_version)
            ok = False
    _state["tuned"] = ok
    return ok
