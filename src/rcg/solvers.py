"""Few-step samplers for the diffusion processes of :mod:`rcg.diffusion` (layer 1): DPM-Solver++ 2M (Lu et al.,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models", 2022), the multistep
second-order solver of the probability-flow ODE on the data prediction, and its stochastic form (SDE-DPM-Solver++
2M, ``eta`` > 0), for any parameterization the process converts to x0 (RCG's x0 RDM, v, eps)."""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from .diffusion import GaussianDiffusion, ModelFn, _noise, _steps


def dpm_solver_timesteps(diffusion: GaussianDiffusion, steps: int) -> torch.Tensor:
    """``steps + 1`` timesteps from T - 1 down to 0, uniform in the log signal-to-noise ratio lambda (int64,
    descending, distinct): where DPM-Solver++'s steps are evenly sized."""
    if not 1 <= steps < diffusion.num_steps:
        raise ValueError(f"DPM-Solver++ steps must be in [1, {diffusion.num_steps - 1}], got {steps}")
    ac = diffusion.alphas_cumprod.detach().double().cpu()
    lam = 0.5 * (torch.log(ac) - torch.log1p(-ac))                  # increasing as t decreases
    targets = torch.linspace(float(lam[-1]), float(lam[0]), steps + 1, dtype=torch.float64)
    ts = torch.searchsorted(-lam, -targets).clamp(0, diffusion.num_steps - 1).tolist()
    out = []
    for t in ts:                                                    # distinct, descending
        t = min(t, out[-1] - 1) if out else t
        out.append(max(t, steps - len(out)))
    out[0], out[-1] = diffusion.num_steps - 1, 0
    return torch.tensor(out, dtype=torch.int64)


DPM_SOLVERS = {"dpm++2m": 0.0, "dpm++2m-sde": 1.0}   # solver name -> eta of dpm_solver_sample (the ODE, the SDE)


@torch.no_grad()
def dpm_solver_sample(diffusion: GaussianDiffusion, model_fn: ModelFn, x_T: torch.Tensor, steps: int,
                      progress: bool = False, clip_x0: bool = False, final_x0: bool = False, eta: float = 0.0,
                      generators: Optional[List[torch.Generator]] = None) -> torch.Tensor:
    """DPM-Solver++ (2M; Lu et al. 2022, Algorithm 2): the multistep second-order solver of the probability-flow
    ODE on the data (x0) prediction, over :func:`dpm_solver_timesteps`; deterministic after ``x_T`` (eta 0), ``steps``
    model calls, the first step first order. With ``h = lambda_t - lambda_s`` and ``r = h_prev / h``:
    ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) D``, ``D = (1 + 1 / 2r) x0_s - (1 / 2r) x0_prev``.
    ``eta`` > 0: the solver of the reverse SDE instead (SDE-DPM-Solver++ 2M, midpoint form; ``eta`` = 1 is the
    full SDE, whose noise, like DDIM's with eta 1, corrects the model's errors along the way):
    ``x_t = (sigma_t / sigma_s) e^(-eta h) x_s + alpha_t (1 - e^(-(1 + eta) h)) D + sigma_t sqrt(1 - e^(-2 eta h)) z``
    with ``z`` from ``generators`` (one per sample) or else the global RNG; ``eta`` = 0 is the ODE solver exactly.
    Returns x at t = 0 (``alphas_cumprod[0]``), where the official DDIM ends too. ``clip_x0`` clips each data
    prediction to [-1, 1] (pixel-space models, as their DDIM's ``clip_denoised``). ``final_x0`` spends the last
    of the ``steps`` model calls on the data prediction at t = 0 and returns it (the DDIMs that end on
    ``pred_x0``: DiT's, ADM's), instead of the x at t = 0, which keeps noise of std ``sqrt(1 - alphas_cumprod[0])``."""
    if final_x0:
        if steps < 2:
            raise ValueError(f"DPM-Solver++ with final_x0 needs at least 2 steps, got {steps}")
        x = dpm_solver_sample(diffusion, model_fn, x_T, steps - 1, progress, clip_x0, eta=eta, generators=generators)
        tt = torch.zeros((x.shape[0],), dtype=torch.int64, device=x.device)
        out = model_fn(x, tt).to(x.dtype)
        x0 = diffusion.x0_from_output(x, tt, out[:, :x.shape[1]] if diffusion.learn_sigma else out)
        return x0.clamp(-1.0, 1.0) if clip_x0 else x0
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ts = dpm_solver_timesteps(diffusion, steps)
    ac = diffusion.alphas_cumprod.detach().double().cpu()
    alpha, sigma = ac.sqrt(), (1 - ac).sqrt()
    lam = torch.log(alpha) - torch.log(sigma)
    x, dev, prev, h_prev = x_T, x_T.device, None, None
    for k in _steps(steps, progress, f"DPM-Solver++ {steps} steps"):       # k = steps-1 ... 0: i = 0 ... steps-1
        s_, t_ = int(ts[steps - 1 - k]), int(ts[steps - k])
        tt = torch.full((x.shape[0],), s_, dtype=torch.int64, device=dev)
        out = model_fn(x, tt).to(x.dtype)
        x0 = diffusion.x0_from_output(x, tt, out[:, :x.shape[1]] if diffusion.learn_sigma else out)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        h = float(lam[t_] - lam[s_])
        d = x0 if prev is None else (1 + h / (2 * h_prev)) * x0 - (h / (2 * h_prev)) * prev
        x = float(sigma[t_] / sigma[s_] * math.exp(-eta * h)) * x - float(alpha[t_] * math.expm1(-(1 + eta) * h)) * d
        if eta > 0:
            x = x + float(sigma[t_] * math.sqrt(-math.expm1(-2 * eta * h))) * _noise(x, generators)
        prev, h_prev = x0, h
    return x
