"""Which precision a stage computes in: bf16 autocast only where the hardware computes bf16 natively.

On a CPU without native bf16 (e.g. AMD Zen 3 / Intel before Cooper Lake: AVX2 only) PyTorch emulates bf16
autocast, 5-17x slower than fp32; on a CPU with AVX-512 BF16 or AMX it is 1.6-3x faster than fp32. So a
config's ``bf16`` is a choice with three values: ``True`` (force it), ``False`` (never) and ``None`` (auto:
on exactly where it is native: a CUDA GPU that supports bf16, a CPU with AVX-512 BF16 / AMX-BF16).
"""
from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Optional

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> Optional[frozenset]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (:func:`detect_cpu_bf16`, computed once)."""
    return _detected()


@functools.lru_cache(maxsize=1)
def _detected() -> bool:
    return detect_cpu_bf16()


def detect_cpu_bf16() -> bool:
    """True when this CPU computes bf16 natively *and* PyTorch uses it: oneDNN's bf16 check passes, ATen's
    kernels run at AVX-512 (``ATEN_CPU_CAPABILITY=avx2`` turns them off) and, where the flags can be read,
    the CPU has AVX-512 BF16 or AMX-BF16 (AVX-512 alone emulates bf16)."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    cap = torch.backends.cpu.get_cpu_capability()
    if cap.startswith("AVX512"):
        flags = _cpu_flags()
        return flags is None or any(f in flags for f in BF16_CPU_FLAGS)
    return cap.startswith(("SVE", "ARM", "NEON"))        # aarch64 builds: trust oneDNN's check


def native_bf16(device) -> bool:
    """Whether bf16 autocast is native (fast) on ``device``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_bf16(choice: Optional[bool], device) -> bool:
    """The precision a stage runs in: ``choice`` when it is True or False, else (None: auto) native bf16."""
    return native_bf16(device) if choice is None else bool(choice)


def precision_name(bf16: bool) -> str:
    return "bf16" if bf16 else "fp32"


def describe(choice: Optional[bool], device) -> str:
    """One line saying which precision runs and why, e.g. ``fp32 (auto: no native bf16 on this CPU, AVX2)``."""
    dev = torch.device(device)
    used = resolve_bf16(choice, dev)
    where = f"this CPU, {torch.backends.cpu.get_cpu_capability()}" if dev.type == "cpu" else f"{dev}"
    if choice is None:
        why = f"auto: {'native' if used else 'no native'} bf16 on {where}"
    else:
        why = f"forced by {'--bf16' if used else '--no-bf16'}"
        if used and not native_bf16(dev):
            why += f"; bf16 is emulated (slow) on {where}"
    return f"{precision_name(used)} ({why})"


def autocast(device, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16`` is True (already resolved), else a no-op context."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()
