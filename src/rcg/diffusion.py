"""Gaussian diffusion for vectors (RCG's RDM) and images: schedule, training loss, DDIM sampler.

Conventions: ``x0`` is data, ``noise`` is epsilon, ``t`` counts up from data (0) to noise (T-1);
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``. Tensors may have any shape (B, ...).

The schedule and sampler reproduce the official RCG/LDM code (``rdm/models/diffusion/ddpm.py`` and
``ddim.py``): scaled-linear betas computed in float64 and stored as float32 buffers, the uniform DDIM
timestep list ``arange(0, T, T // S) + 1``, ``alphas_cumprod[0]`` (not 1) as the previous alpha of the
last step, float32 coefficients, no clipping, and x0 predictions converted to eps with the float32
``sqrt_recip(m1)_alphas_cumprod`` buffers.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def scaled_linear_betas(num_steps: int = 1000, start: float = 0.0015, end: float = 0.0195) -> torch.Tensor:
    """LDM's "linear" schedule: (linspace(sqrt(start), sqrt(end), num_steps))^2 in float64."""
    return torch.linspace(start ** 0.5, end ** 0.5, num_steps, dtype=torch.float64) ** 2


def randn_per_sample(shape: Sequence[int], generators: Sequence[torch.Generator], device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` whose row i is drawn from ``generators[i]`` alone, so a sample's
    noise does not depend on the batch it is in. Each row is drawn on its generator's device."""
    shape = tuple(shape)
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per sample: got {len(generators)} for batch size {shape[0]}")
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generators]
    out = torch.stack(rows) if rows else torch.empty(shape, dtype=dtype)
    return out.to(device) if device is not None else out


def _bcast(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, ..., 1) to broadcast against ``like``, in like's dtype."""
    out = values.to(like.device)[t.to(like.device)]
    return out.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class GaussianDiffusion(nn.Module):
    def __init__(self, num_steps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0195,
                 parameterization: str = "x0"):
        super().__init__()
        if parameterization not in ("x0", "eps"):
            raise ValueError(f"parameterization must be 'x0' or 'eps', got {parameterization!r}")
        self.num_steps = num_steps
        self.parameterization = parameterization
        betas = scaled_linear_betas(num_steps, beta_start, beta_end)
        ac = torch.cumprod(1.0 - betas, dim=0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        for name, value in [("betas", betas), ("alphas_cumprod", ac), ("alphas_cumprod_prev", ac_prev),
                            ("sqrt_alphas_cumprod", ac.sqrt()), ("sqrt_one_minus_alphas_cumprod", (1.0 - ac).sqrt()),
                            ("sqrt_recip_alphas_cumprod", (1.0 / ac).sqrt()),
                            ("sqrt_recipm1_alphas_cumprod", (1.0 / ac - 1.0).sqrt())]:
            self.register_buffer(name, value.to(torch.float32), persistent=False)

    # ------------------------------------------------------------------ forward process and loss
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return _bcast(self.sqrt_alphas_cumprod, t, x0) * x0 + _bcast(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def loss(self, model_fn: ModelFn, x0: torch.Tensor, t: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Plain MSE (mean over everything) between ``model_fn(x_t, t)`` and x0 (or eps). ``t`` is drawn
        uniformly from [0, num_steps) and ``noise`` from N(0, 1) when not given (with ``generator``)."""
        gdev = generator.device if generator is not None else x0.device
        if t is None:
            t = torch.randint(0, self.num_steps, (x0.shape[0],), generator=generator, device=gdev).to(x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)
        pred = model_fn(self.q_sample(x0, t, noise), t)
        target = x0 if self.parameterization == "x0" else noise
        return torch.mean((pred.float() - target.float()) ** 2)

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        recip = _bcast(self.sqrt_recip_alphas_cumprod, t, x_t)
        recipm1 = _bcast(self.sqrt_recipm1_alphas_cumprod, t, x_t)
        return (recip * x_t - x0) / recipm1

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        recip = _bcast(self.sqrt_recip_alphas_cumprod, t, x_t)
        recipm1 = _bcast(self.sqrt_recipm1_alphas_cumprod, t, x_t)
        return recip * x_t - recipm1 * eps

    # ------------------------------------------------------------------ DDIM
    def ddim_timesteps(self, steps: int) -> torch.Tensor:
        """The official uniform list ``arange(0, T, T // steps) + 1`` (int64, ascending). Like the
        official code it has ceil(T / (T // steps)) entries, which is ``steps`` only when it divides T.
        Entries past the last diffusion step (where the official code would index out of range, e.g.
        steps=3 -> 1000) are dropped."""
        T = self.num_steps
        if not 1 <= steps <= T // 2:
            raise ValueError(f"DDIM steps must be in [1, {T // 2}] for {T} diffusion steps, got {steps}")
        ts = torch.arange(0, T, T // steps, dtype=torch.int64) + 1
        return ts[ts < T]

    def ddim_coefficients(self, steps: int, eta: float = 0.0):
        """(timesteps, alphas, alphas_prev, sigmas) of the official DDIMSampler.make_schedule: alphas are the
        float32 ``alphas_cumprod[ts]``; alphas_prev starts with ``alphas_cumprod[0]``; sigmas are computed in
        float64 from those float32 values. alphas_prev and sigmas are returned in float64 like the official
        arrays; the sampler casts every per-step coefficient to float32 as the official ``torch.full`` does."""
        ts = self.ddim_timesteps(steps)
        ac = self.alphas_cumprod.detach().cpu()
        alphas = ac[ts]
        alphas_prev = torch.cat([ac[:1], ac[ts[:-1]]]).double()
        a64 = alphas.double()
        sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - a64) * (1 - a64 / alphas_prev))
        return ts, alphas, alphas_prev, sigmas

    @torch.no_grad()
    def ddim_sample(self, model_fn: ModelFn, x_T: torch.Tensor, steps: int, eta: float = 1.0,
                    generators: Optional[List[torch.Generator]] = None, progress: bool = False,
                    return_first: bool = False):
        """The official DDIM sampler from ``x_T``; ``model_fn(x, t)`` returns x0 or eps (per
        ``parameterization``). Returns the final x (not the last pred_x0); with ``return_first`` returns
        ``(x, (x_after_first_step, pred_x0_of_first_step))``. Noise (eta > 0) comes from ``generators``
        (one per sample, see :func:`randn_per_sample`) or else the global RNG."""
        ts, alphas, alphas_prev, sigmas = self.ddim_coefficients(steps, eta)
        sqrt_one_minus = torch.sqrt(1.0 - alphas)                     # float32, as the official buffer
        x, dev, f32 = x_T, x_T.device, torch.float32
        first = None
        order = range(len(ts) - 1, -1, -1)
        if progress:
            try:
                from tqdm.auto import tqdm
                order = tqdm(order, total=len(ts), desc=f"DDIM {len(ts)} steps")
            except ImportError:
                pass
        for i in order:
            t = torch.full((x.shape[0],), int(ts[i]), dtype=torch.int64, device=dev)
            out = model_fn(x, t).to(x.dtype)
            eps = self.predict_eps_from_x0(x, t, out) if self.parameterization == "x0" else out
            a_t = torch.tensor(float(alphas[i]), dtype=f32, device=dev)
            a_prev = torch.tensor(float(alphas_prev[i]), dtype=f32, device=dev)
            sigma = torch.tensor(float(sigmas[i]), dtype=f32, device=dev)
            s1m = torch.tensor(float(sqrt_one_minus[i]), dtype=f32, device=dev)
            pred_x0 = (x - s1m * eps) / a_t.sqrt()
            x = a_prev.sqrt() * pred_x0 + (1.0 - a_prev - sigma ** 2).sqrt() * eps
            if eta > 0:
                z = (randn_per_sample(x.shape, generators, device=dev, dtype=x.dtype) if generators is not None
                     else torch.randn(x.shape, device=dev, dtype=x.dtype))
                x = x + sigma * z
            if first is None:
                first = (x, pred_x0)
        return (x, first) if return_first else x
