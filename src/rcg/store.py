"""Run directories and atomic, checked checkpoint files.

A run directory holds ``config.json`` (the resolved config), ``checkpoint.safetensors`` (the weights
used for inference: EMA weights where the stage keeps an EMA), ``state.pt`` (everything needed to
resume: raw weights, EMA, optimizer, step; only tensors and plain containers, loaded with
``weights_only=True``) and ``metrics.jsonl``. Every file is written to a temporary name, fsynced and
renamed, so a crash never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

from .tree import added_keys, diff

STATE = "state.pt"
WEIGHTS = "checkpoint.safetensors"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
# Keys that may change between reruns of the same run (they do not change the result).
RUNTIME_KEYS = ("optim.log_every", "optim.ckpt_every", "optim.sample_every", "optim.batch_gpu", "optim.num_threads",
                "eval_every", "progress")


_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(RuntimeError):
    """A missing, corrupt or incompatible checkpoint or run directory."""


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)          # mkstemp creates 0600; use the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    except OSError:
        pass


def save_tensors(path, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    """Atomic safetensors write; a sha256 of the tensor bytes goes into the metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = dict(metadata or {})
    meta["sha256"] = digest(tensors)
    atomic_write(path, st_save_bytes(tensors, metadata={k: str(v) for k, v in meta.items()}))


def load_tensors(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read a safetensors file written by :func:`save_tensors`, verifying its checksum."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    data = path.read_bytes()
    try:
        tensors = st_load_bytes(data)
        from safetensors import safe_open  # metadata only
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated") from e
    if "sha256" in meta and meta["sha256"] != digest(tensors):
        raise CheckpointError(f"{path} is corrupt: its checksum does not match its contents")
    return tensors, meta


def _sha256(tensors: Dict[str, torch.Tensor], header) -> str:
    """sha256 over the tensors in name order: ``header(name, tensor)``, then the tensor's raw bytes."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(header(k, t))
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digest(tensors: Dict[str, torch.Tensor]) -> str:
    """The checksum :func:`save_tensors` writes into a file's metadata (name, dtype, shape and bytes of each)."""
    return _sha256(tensors, lambda k, t: k.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())


def fingerprint(module: torch.nn.Module) -> str:
    """A short sha256 of a module's state: caches and runs record it, so that a later stage can refuse
    representations made by another encoder. The hash of :func:`digest` with shape before dtype (the layout the
    fingerprints recorded by earlier versions have)."""
    header = lambda k, t: k.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode()      # noqa: E731
    return _sha256(module.state_dict(), header)[:16]


def save_state(path, state: dict) -> None:
    """Atomic ``torch.save`` of a resume state, with a sha256 of the payload appended as a trailer."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    atomic_write(path, payload + b"RCGSHA256" + hashlib.sha256(payload).hexdigest().encode())


def load_state(path) -> dict:
    """Load a state written by :func:`save_state`; a truncated or corrupt file is a CheckpointError."""
    raw = Path(path).read_bytes()
    payload, sep, trailer = raw.rpartition(b"RCGSHA256")
    if not sep or hashlib.sha256(payload).hexdigest().encode() != trailer:
        raise CheckpointError(f"{path} is truncated or corrupt (checksum mismatch)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def check_writable(directory) -> Path:
    """Create ``directory`` if needed and prove it is writable, before any work starts."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(f"cannot write to output directory {d}: {e.strerror or e}. "
                              f"Choose another --out or fix its permissions / free space.") from e
    return d


def prepare_run_dir(directory, config: dict, upgrade: Optional[Callable[[dict], dict]] = None) -> Tuple[Path, bool]:
    """Make (or reopen) a run directory for ``config``. Returns (path, resuming).

    A directory that already holds a run with a different config is refused, naming the keys. Fields added
    to the configs by a newer rcg since the run was made are taken at their current values (with a note).
    A config.json with nothing trained beside it (no state.pt, no weights: a start that failed before its
    first checkpoint) binds nothing: the new config replaces it. ``upgrade`` brings an older layout of the
    stored config up to date before the comparison."""
    d = check_writable(directory)
    cfg_path = d / CONFIG
    if cfg_path.exists() and not (d / STATE).exists() and not (d / WEIGHTS).exists():
        cfg_path.unlink()
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        old = upgrade(old) if upgrade is not None else old
        keys = [k for k in diff(old, config, new_ok=True) if k not in RUNTIME_KEYS]
        if keys:
            raise CheckpointError(
                f"{d} holds a run with a different config (differs in: {', '.join(keys)}). "
                f"Use another --out, or delete {d} to start over.")
        added = added_keys(old, config)
        if added:
            print(f"note: {d} was made before these config fields existed; resuming with their current values: "
                  f"{', '.join(added)}")
    atomic_write(cfg_path, (json.dumps(config, indent=2) + "\n").encode())
    return d, (d / STATE).exists()


def read_config(run_dir) -> dict:
    p = Path(run_dir) / CONFIG
    if not p.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no {CONFIG}); pass the folder given as --out "
                              f"when that stage was trained")
    return json.loads(p.read_text())


STATE_PREV = "state.prev.pt"        # the checkpoint before state.pt, used when state.pt is unreadable


def load_resume_state(run_dir, verbose: bool = True):
    """(state, rotate): ``state.pt``, or the previous good ``state.prev.pt`` when state.pt is truncated or
    corrupt (then ``rotate`` is False: the next checkpoint must not move the bad file over the good one)."""
    run_dir = Path(run_dir)
    problems = []
    for name in (STATE, STATE_PREV):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            st = load_state(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems and verbose:
            print(f"warning: {problems[0]}; resuming from the previous good checkpoint {path} (step {st['step']})",
                  file=sys.stderr)
        return st, not problems
    raise CheckpointError(f"no usable checkpoint in {run_dir} ({'; '.join(problems) or 'none found'}). "
                          f"Delete {run_dir / STATE} to restart this run from scratch.")


def keep_previous(run_dir: Path) -> None:
    """state.pt -> state.prev.pt (a hard link, else a copy, renamed into place); state.pt stays where it is,
    so there is a resumable state at every instant."""
    cur = run_dir / STATE
    if not cur.exists():
        return
    tmp = run_dir / f".{STATE_PREV}.{os.getpid()}.tmp"
    try:
        if tmp.exists():
            tmp.unlink()
        try:
            os.link(cur, tmp)
        except OSError:
            shutil.copyfile(cur, tmp)
        os.replace(tmp, run_dir / STATE_PREV)
    finally:
        if tmp.exists():
            tmp.unlink()


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
