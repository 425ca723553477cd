"""Optional torch.distributed: the same command runs as one process or under ``torchrun``.

``torchrun --nproc_per_node=N`` (or a multi-node launch) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` joins that process group (NCCL for CUDA tensors, gloo for
CPU tensors) and binds each process to the GPU of its ``LOCAL_RANK``. Without those variables everything
here is a no-op for one process: ``rank() == 0``, ``world_size() == 1``, collectives return their input.
"""
from __future__ import annotations

import datetime
import os
from typing import List, Optional

import torch
import torch.distributed as td

_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def is_initialized() -> bool:
    return td.is_available() and td.is_initialized()


def init(timeout_s: float = 1800.0) -> None:
    """Join the process group described by torchrun's environment variables; idempotent; a no-op when
    ``WORLD_SIZE`` is unset or 1."""
    if is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if not td.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"          # collectives pick the backend by the tensors' device
    else:
        backend = "gloo"
    td.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))


def cleanup() -> None:
    """Leave the process group (if any)."""
    if is_initialized():
        td.destroy_process_group()


def rank() -> int:
    return td.get_rank() if is_initialized() else 0


def world_size() -> int:
    return td.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device(requested: Optional[str] = None) -> torch.device:
    """``requested`` (``--device``), else CUDA when present, else the CPU. Under several processes a bare
    ``cuda`` means this process's GPU (``cuda:LOCAL_RANK``)."""
    dev = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None and world_size() > 1:
        dev = torch.device("cuda", local_rank() % torch.cuda.device_count())
    return dev


def barrier() -> None:
    if world_size() > 1:
        td.barrier()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of ``t`` (``sum``, ``mean``, ``max``, ``min``) across processes; returns ``t``."""
    if world_size() > 1:
        td.all_reduce(t, op=getattr(td.ReduceOp, _OPS["sum" if op == "mean" else op]))
        if op == "mean":
            t.div_(world_size())
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over processes (a new tensor; ``t`` itself for one process)."""
    return all_reduce(t.clone(), "mean") if world_size() > 1 else t


def any_true(flag: bool, device=None) -> bool:
    """True on every process when ``flag`` is true on any (one small all-reduce)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device or "cpu")
    return bool(all_reduce(t, "max").item() > 0)


def gather_tensors(t: torch.Tensor) -> List[torch.Tensor]:
    """Every process's ``t`` in rank order, on every process. The tensors share their dtype and trailing
    dims but may have any number of rows; a process with no rows may pass any empty tensor of that dtype
    (e.g. ``torch.empty(0, dtype=torch.uint8)``). One process: ``[t]``."""
    n = world_size()
    if n == 1:
        return [t]
    if t.ndim > 7:
        raise ValueError(f"gather_tensors takes at most 7 dims, got {t.ndim}")
    shape = torch.full((8,), -1, dtype=torch.int64, device=t.device)
    shape[:t.ndim] = torch.tensor(t.shape, dtype=torch.int64)
    shapes = [torch.empty_like(shape) for _ in range(n)]
    td.all_gather(shapes, shape)
    shapes = [[int(v) for v in s.tolist() if v >= 0] for s in shapes]
    rows = [s[0] if s else 0 for s in shapes]
    if max(rows) == 0:
        return [t[:0].clone() for _ in range(n)]
    trailing = next(s[1:] for s, r in zip(shapes, rows) if r > 0)
    padded = torch.zeros([max(rows)] + trailing, dtype=t.dtype, device=t.device)
    if t.numel():
        padded[:t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(n)]
    td.all_gather(out, padded)
    return [o[:r] for o, r in zip(out, rows)]


def part(n: int, r: Optional[int] = None, size: Optional[int] = None) -> slice:
    """This process's contiguous share of ``n`` items: ``[r n / W, (r + 1) n / W)`` (sizes differ by at
    most one when W does not divide n)."""
    r = rank() if r is None else r
    size = world_size() if size is None else size
    return slice(r * n // size, (r + 1) * n // size)


def shard(indices):
    """This process's contiguous share of ``indices`` (anything sliceable with a length)."""
    return indices[part(len(indices))]


def setup(requested: Optional[str] = None, num_threads: int = 0) -> torch.device:
    """Join the torchrun process group if any and pick the device (:func:`device`); flush denormals on the
    CPU, allow TF32 on CUDA; ``num_threads`` > 0 sets torch's intra-op threads."""
    init()
    dev = device(requested)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    if dev.type == "cpu":
        torch.set_flush_denormal(True)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def print0(*args, **kw) -> None:
    """``print`` on rank 0 only."""
    if is_main():
        print(*args, **kw)
