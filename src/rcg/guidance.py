"""Classifier-free guidance in the paper's convention (DESIGN.md section 3), outside the networks.

``tau`` is the paper's guidance scale: ``out = cond + tau * (cond - uncond)``; ``tau = 0`` is no guidance
(a DiT-style "cfg scale" s equals ``1 + tau``). MAGE ramps tau linearly over its decoding steps. Networks only
compute outputs for given conditions and a ``null`` mask (True = the learned null condition); :func:`guided_pass`
runs them on [cond; uncond] and combines.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, TypeVar

import torch

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


def guided_pass(forward: Callable, inputs: Sequence[Optional[torch.Tensor]], tau: float,
                channels: Optional[int] = None, official_first3: bool = False) -> torch.Tensor:
    """Guided output of ``forward(*inputs, null=mask)`` for batch tensors ``inputs`` (None passes through).

    ``tau = 0``: one plain conditional pass, ``forward(*inputs, null=None)``. Otherwise one batched pass over
    [cond; uncond] (each input doubled, ``null = arange(2B) >= B``), combined as :func:`guided` on the first
    ``channels`` channels (dim 1; None = all), the other channels being the conditional ones (DiT's variance).
    ``official_first3`` is the official DiT ``forward_with_cfg`` with scale ``s = 1 + tau`` (also at tau = 0):
    ``uncond + s (cond - uncond)`` on the first 3 channels only, every other channel the conditional output."""
    if tau == 0 and not official_first3:
        return forward(*inputs, null=None)
    x = next(i for i in inputs if i is not None)
    B = x.shape[0]
    both = forward(*(None if i is None else torch.cat([i, i]) for i in inputs),
                   null=torch.arange(2 * B, device=x.device) >= B)
    cond, uncond = both[:B], both[B:]
    if official_first3:                          # the official formula and operation order
        return torch.cat([uncond[:, :3] + (1.0 + tau) * (cond[:, :3] - uncond[:, :3]), cond[:, 3:]], 1)
    if channels is None:
        return guided(cond, uncond, tau)
    return torch.cat([guided(cond[:, :channels], uncond[:, :channels], tau), cond[:, channels:]], 1)
