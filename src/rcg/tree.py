"""Config trees: frozen dataclasses as plain dicts and back, dotted command-line overrides, and diffs.

Every stage's config is a tree of frozen dataclasses that round-trips through a plain dict (``to_dict`` /
``from_dict``), is written as ``config.json`` in the run directory, and can be overridden from the command line
with dotted keys (``--set optim.lr=1e-3``). A dataclass may define ``from_plain(cls, d)`` (a classmethod) to
choose field types from the values (e.g. the pixel model config from the generator's name) or to read an older
layout; :func:`from_dict` then calls it.
"""
from __future__ import annotations

import json
from dataclasses import fields, is_dataclass, replace
from typing import Any, Tuple, Union, get_type_hints


def to_dict(cfg: Any) -> Any:
    """A config (tree of dataclasses) as plain JSON-able Python."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def from_dict(cls: type, d: dict) -> Any:
    """Rebuild a config of type ``cls`` from ``to_dict`` output; unknown keys are an error."""
    if hasattr(cls, "from_plain"):
        return cls.from_plain(d)
    return build(cls, d)


def build(cls: type, d: dict) -> Any:
    """``cls(**d)`` with nested dataclass fields rebuilt by :func:`from_dict` and lists made tuples."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        if is_dataclass(tp):
            value = from_dict(tp, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _coerce(text: str, tp: Any) -> Any:
    """Parse a command-line string as the field type ``tp`` (bool, int, float, str, Optional[...], tuples)."""
    origin, args = getattr(tp, "__origin__", None), getattr(tp, "__args__", ())
    if origin is Union:                                    # Optional[X]
        if text.lower() in ("none", "null", "") or (bool in args and text.lower() == "auto"):
            return None
        return _coerce(text, next(a for a in args if a is not type(None)))
    if origin in (tuple, Tuple):
        inner = args[0] if args else float
        return tuple(_coerce(v.strip(), inner) for v in text.split(",") if v.strip())
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if tp is int:
        value = float(text)
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        return int(value)
    if tp is float:
        return float(text)
    return text


def override(cfg: Any, key: str, value: Any) -> Any:
    """Return ``cfg`` with the dotted ``key`` set; ``value`` given as a string is coerced to the field's type."""
    head, _, rest = key.partition(".")
    names = {f.name for f in fields(cfg)}
    if head not in names:
        raise KeyError(f"{type(cfg).__name__} has no field {head!r} (fields: {', '.join(sorted(names))})")
    current = getattr(cfg, head)
    if rest:
        if not is_dataclass(current):
            raise KeyError(f"{head!r} is not a section; cannot set {key!r}")
        return replace(cfg, **{head: override(current, rest, value)})
    if isinstance(value, str):
        value = _coerce(value, get_type_hints(type(cfg))[head])
    return replace(cfg, **{head: value})


def apply_overrides(cfg: Any, pairs: list) -> Any:
    """Apply ``["a.b=1", ...]`` to ``cfg``."""
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        cfg = override(cfg, key.strip(), value.strip())
    return cfg


def diff(a: dict, b: dict, prefix: str = "", new_ok: bool = False) -> list:
    """Dotted keys whose values differ between two ``to_dict`` trees. ``new_ok``: keys that ``a`` lacks
    (fields added by a newer rcg since ``a`` was written) do not count."""
    out = []
    for k in sorted(set(a) | set(b)):
        if new_ok and k not in a:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, prefix + k + ".", new_ok)
        elif va != vb:
            out.append(prefix + k)
    return out


def added_keys(a: dict, b: dict, prefix: str = "") -> list:
    """Dotted keys of ``b`` that ``a`` lacks."""
    out = []
    for k, vb in b.items():
        if k not in a:
            out.append(prefix + k)
        elif isinstance(vb, dict) and isinstance(a[k], dict):
            out += added_keys(a[k], vb, prefix + k + ".")
    return out


def dumps(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)
