"""Classifier-free guidance in the paper's convention (DESIGN.md section 3).

``tau`` is the paper's guidance scale: ``out = cond + tau * (cond - uncond)``; ``tau = 0`` is no guidance
(a DiT-style "cfg scale" s equals ``1 + tau``). MAGE ramps tau linearly over its decoding steps.
"""
from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def guided(cond: T, uncond: T, tau: float) -> T:
    """``cond + tau * (cond - uncond)`` (tensors or numbers). Bit-identical to the official MAGE form
    ``cond - tau * (uncond - cond)``, since negating a difference is exact."""
    return cond + tau * (cond - uncond)


def linear_tau(tau: float, step: int, num_steps: int) -> float:
    """The linear schedule of MAGE / Muse: ``tau * (step + 1) / num_steps`` for step = 0 .. num_steps - 1,
    rising from tau / num_steps to tau at the last step."""
    if num_steps <= 0:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    if not 0 <= step < num_steps:
        raise ValueError(f"step must be in [0, {num_steps}), got {step}")
    return tau * (step + 1) / num_steps
