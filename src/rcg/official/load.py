"""Reading official files safely: ``torch.load(weights_only=True)`` with one allowed global, and the small helpers
every format loader shares (strict loading, shape look-ups, the ``args`` namespace)."""
import argparse
import os
import pickle
import re
from typing import Any, Mapping, Optional, Union

import torch

SAFE_GLOBALS = (argparse.Namespace,)
PathOrDict = Union[str, os.PathLike, Mapping[str, Any]]


class UnsafeCheckpointError(RuntimeError):
    """The pickle needs a global (or instruction) outside the weights-only allow-list; never executed."""


class CheckpointFormatError(ValueError):
    """Not a torch checkpoint, corrupt/truncated, or not the layout the loader expects."""


def safe_load(path) -> dict:
    """Load a ``torch.save`` checkpoint on the CPU with ``weights_only=True`` plus ``argparse.Namespace``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointFormatError(f"{path} is not a file; pass the checkpoint file itself")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"GLOBAL\s+([A-Za-z_][\w.]*)", msg)
        if m:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: its pickle needs the global {m.group(1)!r}, which is not on the "
                f"allow-list (tensors, containers, argparse.Namespace). Unpickling it could run arbitrary code; "
                f"nothing was executed.") from None
        # any other refusal of the weights-only unpickler (e.g. "Unsupported operand"): garbage bytes
        reason = next((ln for ln in msg.splitlines()[::-1] if ln.strip() and "documentation" not in ln), msg)
        err = f"UnpicklingError: {reason.strip()[:200]}"
    except Exception as e:   # zip/EOF/magic-number errors of a truncated, corrupt or foreign file
        err = f"{type(e).__name__}: {str(e)[:300]}"
    else:
        if not isinstance(obj, dict):
            raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, expected a checkpoint dict")
        return obj
    raise CheckpointFormatError(f"could not read {path} as a torch checkpoint ({err}). The file may be truncated or "
                                f"corrupt (compare its size / sha256 with the source) or not a torch.save file.")


def _checkpoint(path_or_dict: PathOrDict) -> Mapping[str, Any]:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict
    if isinstance(path_or_dict, (str, os.PathLike)):
        return safe_load(path_or_dict)
    raise TypeError(f"expected a checkpoint path or dict, got {type(path_or_dict).__name__}")


def _args_dict(ckpt: Mapping[str, Any]) -> Optional[dict]:
    args = ckpt.get("args")
    return dict(vars(args)) if isinstance(args, argparse.Namespace) else (dict(args) if isinstance(args, Mapping) else None)


def _load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(dict(sd), strict=True)
    except RuntimeError as e:
        raise CheckpointFormatError(f"{what}: weights do not fit the inferred architecture: {e}") from None


def _not_a(what: str, need: str, sd) -> CheckpointFormatError:
    """The error for a file that is not ``what``: it has no ``need``; names a few of the keys it has instead."""
    found = f"e.g. {sorted(sd)[:8]}" if isinstance(sd, Mapping) else f"a {type(sd).__name__}"
    return CheckpointFormatError(f"not {what}: no {need} (found {found})")


def _shape(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Size:
    if key not in sd:
        raise CheckpointFormatError(f"{what}: missing key {key!r} (found e.g. {sorted(sd)[:8]})")
    return sd[key].shape


def _strip(sd: Mapping[str, Any], prefix: str) -> dict:
    """The entries of ``sd`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _weights(ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((ckpt[k] for k in ("model", "state_dict") if isinstance(ckpt.get(k), Mapping)), ckpt)


def _nparams(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _heads(width: int, given: Optional[int], named, table: dict, head_dim: int, what: str, flag: str = "num_heads"):
    """(heads, where the number came from). Heads are not stored in the weights. Rule: ``given``; else ``named``
    = (width, heads, source) from the file's architecture name when its width matches; else the official
    ``table`` by width; else head dim ``head_dim``; else an error (pass ``flag``)."""
    if given:
        return given, "argument"
    if named and named[0] == width:
        return named[1], named[2]
    if width in table:
        return table[width], "width table"
    if width % head_dim == 0:
        return width // head_dim, f"head dim {head_dim}"
    raise CheckpointFormatError(f"cannot infer the heads of a {width}-wide {what}; pass {flag}")


def _with_heads(loader, ckpt, **heads):
    """``loader(ckpt, **heads) + (True,)``; a width whose heads cannot be inferred is built with 1 head (heads do
    not change the parameters) and reported as unknown: ``+ (False,)``."""
    try:
        return loader(ckpt, **heads) + (True,)
    except CheckpointFormatError as e:
        if "heads" not in str(e):
            raise
        return loader(ckpt, **{k: v or 1 for k, v in heads.items()}) + (False,)


def _indices(keys, pattern: str) -> set:
    """The integers ``pattern``'s first group matches at the start of ``keys`` (e.g. the block numbers)."""
    return {int(m.group(1)) for k in keys for m in [re.match(pattern, k)] if m}


def _lit_ema_weights(sd: Mapping[str, Any], module: torch.nn.Module, prefix: str, what: str) -> dict:
    """The LitEma shadows (LDM / RDM ``model_ema``) of ``module``'s parameters, by our parameter names: shadow of
    parameter ``n`` = ``"model_ema." + (prefix + n)`` with every dot removed (LitEma keeps the names relative to
    the wrapped ``model``, e.g. ``prefix="diffusion_model."``). {} when the file has no shadows; an error naming
    the missing ones when it has only some."""
    shadows = _strip(sd, "model_ema.")
    if not any(k not in ("decay", "num_updates") for k in shadows):
        return {}
    names = {n: (prefix + n).replace(".", "") for n, _ in module.named_parameters()}
    missing = [n for n, s in names.items() if s not in shadows]
    if missing:
        raise CheckpointFormatError(f"{what}: EMA shadows missing for {missing[:5]} (pass ema=False to load the raw "
                                    f"weights)")
    return {n: shadows[s] for n, s in names.items()}
