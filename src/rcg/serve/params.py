"""Request checking and image encoding of ``rcg serve`` (no Flask here): numbers from form, query or JSON values,
checked against the playground's ranges, and images as deterministic PNG bytes or ``data:`` URLs."""
from __future__ import annotations

import base64
import io
import math
from typing import Mapping, Optional

from PIL import Image

from ..sample import load_image_files

MAX_SEED = 2 ** 31 - 1
INTERP_NUM = (2, 32)
# name -> (kind, low, high, low end open); "num" is [1, max_num] and set per app
RANGES = {"seed": (int, 0, MAX_SEED, False), "guidance": (float, 0.0, 20.0, False),
          "temperature": (float, 0.0, 100.0, True), "steps": (int, 1, 1000, False)}
DEFAULT_NUM = {"sample": 4, "variations": 4, "interpolate": 8}


class BadRequest(ValueError):
    """A request the playground refuses: answered 400 (or ``status``) with the message as ``{"error": ...}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _as_number(name: str, raw, kind):
    """``raw`` (a string from a form or a JSON number) as an int or a finite float, or BadRequest."""
    what = "an integer" if kind is int else "a number"
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise BadRequest(f"{name} must be {what}, got {raw!r}")
    try:
        x = float(raw) if kind is float or isinstance(raw, float) else int(str(raw).strip())
    except ValueError:
        raise BadRequest(f"{name} must be {what}, got {raw!r}") from None
    if not math.isfinite(x):
        raise BadRequest(f"{name} must be a finite number, got {raw!r}")
    if kind is int:
        if x != int(x):
            raise BadRequest(f"{name} must be an integer, got {raw!r}")
        x = int(x)
    return x


def number(values: Mapping, name: str, kind, low, high, default=None, open_low: bool = False):
    """The value ``name`` of ``values`` checked to lie in [low, high] ((low, high] with ``open_low``);
    ``default`` when it is absent or an empty string."""
    raw = values.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    x = _as_number(name, raw, kind)
    if not ((low < x) if open_low else (low <= x)) or x > high:
        raise BadRequest(f"{name} must be in {'(' if open_low else '['}{low}, {high}], got {raw!r}")
    return x


def settings(values: Mapping) -> dict:
    """seed (default 0) and the sampling settings guidance, temperature, steps (None: the system's defaults)."""
    out = {name: number(values, name, kind, lo, hi, open_low=open_low)
           for name, (kind, lo, hi, open_low) in RANGES.items()}
    out["seed"] = out["seed"] or 0
    return out


def resolved(given: dict, info: dict) -> dict:
    """The settings a call ran with: the given ones, the system's defaults for those left None."""
    return {k: (info["defaults"][k] if given.get(k) is None and k in info["defaults"] else given.get(k))
            for k in given}


def class_label(values: Mapping, info: dict) -> Optional[int]:
    """The ``class`` value for a class-conditional RDM (or a class-label generator), checked; None if absent."""
    raw = values.get("class")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    classes = info["num_classes"] if info["cond"] == "rep" else info["label_classes"]
    if not classes:
        who = "RDM" if info["cond"] == "rep" else "generator"
        raise BadRequest(f"this system's {who} is unconditional: it takes no class")
    return number(values, "class", int, 0, classes - 1)


def limits(max_num: int, max_upload_mb: float) -> dict:
    """The limits /api/info reports (closed ranges [low, high]; temperature's low end is open)."""
    ranges = {name: [lo, hi] for name, (_, lo, hi, _) in RANGES.items()}
    return {"max_num": max_num, "max_upload_mb": max_upload_mb,
            "ranges": {"num": [1, max_num], "interpolate_num": list(INTERP_NUM), **ranges},
            "open_low": ["temperature"], "default_num": dict(DEFAULT_NUM)}


def png_bytes(image: Image.Image) -> bytes:
    """PNG of one PIL image; the same image gives the same bytes (no time stamps or metadata)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def data_url(image: Image.Image) -> str:
    """``data:image/png;base64,...`` of one PIL image."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def decode_upload(data: bytes, field: str, filename: str, image_shape) -> Image.Image:
    """An uploaded file decoded as the system sees it (its channels and resolution), as a PIL image; BadRequest
    when it is empty or not an image."""
    if not data:
        raise BadRequest(f"the uploaded file '{field}' is empty")
    try:
        ims = load_image_files([io.BytesIO(data)], *image_shape)
    except ValueError:
        raise BadRequest(f"the uploaded file '{field}' ({filename or 'no name'}) is not an image this server can "
                         f"read (PNG, JPEG, WebP, ...)") from None
    arr = ims[0].permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
