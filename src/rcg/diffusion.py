"""Gaussian diffusion for vectors (RCG's RDM) and images (DiT): schedules, training losses, DDIM and DDPM samplers.

Conventions: ``x0`` is data, ``noise`` is epsilon, ``t`` counts up from data (0) to noise (T-1);
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``. Tensors may have any shape (B, ...).

The schedule and sampler reproduce the official RCG/LDM code (``rdm/models/diffusion/ddpm.py`` and
``ddim.py``): scaled-linear betas computed in float64 and stored as float32 buffers, the uniform DDIM
timestep list ``arange(0, T, T // S) + 1``, ``alphas_cumprod[0]`` (not 1) as the previous alpha of the
last step, float32 coefficients, no clipping, and x0 predictions converted to eps with the float32
``sqrt_recip(m1)_alphas_cumprod`` buffers. ``parameterization="v"`` (not in RCG) has the model return
``v = sqrt(abar) eps - sqrt(1 - abar) x0``, i.e. x0 = sqrt(abar) x_t - sqrt(1 - abar) v: at small t the x0 passes
through from x_t instead of being rebuilt by the network.

For DiT (``schedule="linear"``, ``parameterization="eps"``, ``learn_sigma=True``) it also follows the
improved-DDPM / DiT recipe: the model returns eps and a variance-interpolation output v in [-1, 1]
(``log var = f log beta_t + (1 - f) log posterior_var_t``, ``f = (v + 1) / 2``), the loss is the eps MSE plus
the variational bound in bits on the variance (mean frozen), scaled by ``num_steps / 1000``, and ancestral
DDPM sampling runs on an evenly respaced subset of the timesteps (``respaced``), the model being called with
the original timestep numbers.

For ADM (guided_diffusion, as RCG's ``pixel_generator/guided_diffusion``) it also has that code's exact pieces:
numpy's ``linspace`` arithmetic for the betas (:func:`iddpm_linear_betas`), its respacing strings ``"ddimN"`` /
``"N"`` / ``"a,b,c"`` (:func:`official_respacing`, accumulated fractional stride), any subset of timesteps as a
process of its own (:meth:`GaussianDiffusion.subset`; the official trains on ``subset(range(T))``, betas
re-derived from ``alphas_cumprod``), ``p_sample`` and the DDIM step that re-derives eps from the clipped x0
(:meth:`GaussianDiffusion.ddim_step`, :meth:`GaussianDiffusion.ddim_sample_spaced`).
"""
from __future__ import annotations

import math

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn

from .rng import randn_per_sample

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def scaled_linear_betas(num_steps: int = 1000, start: float = 0.0015, end: float = 0.0195) -> torch.Tensor:
    """LDM's "linear" schedule: (linspace(sqrt(start), sqrt(end), num_steps))^2 in float64."""
    return torch.linspace(start ** 0.5, end ** 0.5, num_steps, dtype=torch.float64) ** 2


def linear_betas(num_steps: int = 1000, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """DDPM's / DiT's "linear" schedule: linspace(start, end, num_steps) in float64."""
    return torch.linspace(start, end, num_steps, dtype=torch.float64)


def iddpm_linear_betas(num_steps: int = 1000, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """guided_diffusion's ``np.linspace(start, end, num_steps)`` with numpy's arithmetic, bit for bit: ``start + i
    * ((end - start) / (num_steps - 1))``, the last entry exactly ``end`` (``torch.linspace``, which
    :func:`linear_betas` uses, differs from it by up to 3.5e-18). The official code scales start and end by
    ``1000 / num_steps``; here they are given as they are."""
    if num_steps == 1:
        return torch.tensor([start], dtype=torch.float64)
    betas = torch.arange(num_steps, dtype=torch.float64) * ((end - start) / (num_steps - 1)) + start
    betas[-1] = end
    return betas


SCHEDULES = {"scaled_linear": scaled_linear_betas, "linear": linear_betas}


def space_timesteps(num_steps: int, count: int) -> List[int]:
    """``count`` timesteps of [0, num_steps) evenly spaced with rounding, both ends included (the
    improved-DDPM / DiT ``space_timesteps(T, str(count))`` for one section)."""
    if not 1 <= count <= num_steps:
        raise ValueError(f"sampling steps must be in [1, {num_steps}], got {count}")
    stride = (num_steps - 1) / (count - 1) if count > 1 else 1.0
    return sorted({round(i * stride) for i in range(count)})


def official_respacing(num_steps: int, spec) -> List[int]:
    """guided_diffusion's ``space_timesteps(num_steps, spec)``, sorted: ``"ddimN"`` = ``range(0, T, k)`` for the
    smallest stride k giving N steps; ``"N"`` or ``"a,b,c"`` (an int N too) = sections of ``T / len(counts)``
    steps, each walked with the fractional stride ``(size - 1) / (count - 1)`` accumulated in a float and
    Python-``round``ed (this differs from :func:`space_timesteps` for some counts, e.g. 21); ``""`` = every step."""
    if isinstance(spec, str) and spec.startswith("ddim"):
        want = int(spec[len("ddim"):])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == want:
                return list(range(0, num_steps, stride))
        raise ValueError(f"cannot create exactly {want} steps with an integer stride of {num_steps}")
    counts = [num_steps] if spec in ("", None) else (
        [int(c) for c in spec.split(",")] if isinstance(spec, str) else [int(spec)])
    size_per, extra = divmod(num_steps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride, cur = ((size - 1) / (count - 1) if count > 1 else 1), 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood (nats, elementwise) of data in [-1, 1] quantized to 256 levels under N(means, exp(log_scales)^2)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(1)


def _noise(x: torch.Tensor, generators: Optional[List[torch.Generator]]) -> torch.Tensor:
    """N(0, 1) noise like ``x``, from ``generators`` (one per sample) or else the global RNG."""
    if generators is not None:
        return randn_per_sample(x.shape, generators, device=x.device, dtype=x.dtype)
    return torch.randn(x.shape, device=x.device, dtype=x.dtype)


def _steps(n: int, progress: bool, desc: str):
    """The step indices n-1, ..., 0, under a tqdm progress bar if ``progress``."""
    order = range(n - 1, -1, -1)
    if not progress:
        return order
    from tqdm.auto import tqdm                  # a dependency, imported only when a bar is wanted
    return tqdm(order, total=n, desc=desc)


def _bcast(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, ..., 1) to broadcast against ``like``, in like's dtype."""
    out = values.to(like.device)[t.to(like.device)]
    return out.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class GaussianDiffusion(nn.Module):
    """``schedule``: "scaled_linear" (RCG's RDM, LDM) or "linear" (DDPM, DiT). ``learn_sigma``: the model's
    output has twice the data's channels (dim 1): eps (or x0), then the variance interpolation v.
    ``betas`` / ``timestep_map`` (internal, see :meth:`respaced`) give an explicit schedule whose step i
    the model knows as timestep ``timestep_map[i]``."""

    def __init__(self, num_steps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0195,
                 parameterization: str = "x0", schedule: str = "scaled_linear", learn_sigma: bool = False,
                 betas: Optional[torch.Tensor] = None, timestep_map: Optional[Sequence[int]] = None):
        super().__init__()
        if parameterization not in ("x0", "eps", "v"):
            raise ValueError(f"parameterization must be 'x0', 'eps' or 'v', got {parameterization!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        betas = torch.as_tensor(SCHEDULES[schedule](num_steps, beta_start, beta_end) if betas is None else betas,
                                dtype=torch.float64)
        self.num_steps = num_steps = len(betas)
        self.parameterization, self.schedule, self.learn_sigma = parameterization, schedule, learn_sigma
        self.betas64 = betas                       # float64, for respacing
        ac = torch.cumprod(1.0 - betas, dim=0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if num_steps > 1 else torch.log(betas)
        for name, value in [("betas", betas), ("alphas_cumprod", ac), ("alphas_cumprod_prev", ac_prev),
                            ("sqrt_alphas_cumprod", ac.sqrt()), ("sqrt_one_minus_alphas_cumprod", (1.0 - ac).sqrt()),
                            ("sqrt_recip_alphas_cumprod", (1.0 / ac).sqrt()),
                            ("sqrt_recipm1_alphas_cumprod", (1.0 / ac - 1.0).sqrt()),
                            ("posterior_variance", post_var), ("posterior_log_var_iddpm", post_log_var),
                            ("posterior_mean_coef1", betas * ac_prev.sqrt() / (1.0 - ac)),
                            ("posterior_mean_coef2", (1.0 - ac_prev) * (1.0 - betas).sqrt() / (1.0 - ac)),
                            ("log_betas", torch.log(betas))]:
            self.register_buffer(name, value.to(torch.float32), persistent=False)
        tmap = torch.arange(num_steps) if timestep_map is None else torch.as_tensor(list(timestep_map))
        if len(tmap) != num_steps:
            raise ValueError(f"timestep_map has {len(tmap)} entries for {num_steps} steps")
        self.register_buffer("timestep_map", tmap.to(torch.int64), persistent=False)

    def respaced(self, steps: int) -> "GaussianDiffusion":
        """The same process on ``steps`` evenly spaced timesteps (:func:`space_timesteps`): betas recomputed
        from the kept ``alphas_cumprod`` so the marginals are unchanged; the model sees the original timesteps."""
        return self.subset(space_timesteps(self.num_steps, steps))

    def subset(self, keep: Sequence[int]) -> "GaussianDiffusion":
        """The process on the timesteps ``keep`` (ascending) of this one (guided_diffusion's ``SpacedDiffusion``):
        ``betas_j = 1 - abar[keep_j] / abar[keep_(j-1)]`` (``abar[keep_(-1)] = 1``) in float64, every coefficient
        recomputed from them; the model is called with the original timesteps (``timestep_map``)."""
        keep = [int(k) for k in keep]
        kept = torch.cumprod(1.0 - self.betas64, dim=0)[keep]
        new_betas = 1.0 - kept / torch.cat([kept.new_ones(1), kept[:-1]])   # 1 - abar_i / abar_(previous kept)
        tmap = self.timestep_map.cpu()[torch.tensor(keep)]
        return GaussianDiffusion(parameterization=self.parameterization, schedule=self.schedule,
                                 learn_sigma=self.learn_sigma, betas=new_betas,
                                 timestep_map=tmap.tolist()).to(self.betas.device)

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
        x_t = self.q_sample(x0, t, noise)
        pred = model_fn(x_t, t)
        target = self.output_target(x0, t, noise)
        if not self.learn_sigma:
            return torch.mean((pred.float() - target.float()) ** 2)
        C = x0.shape[1]
        if pred.shape[1] != 2 * C:
            raise ValueError(f"learn_sigma: the model must return {2 * C} channels (mean, variance), got {pred.shape[1]}")
        mean_out, v = pred[:, :C].float(), pred[:, C:].float()
        mse = _mean_flat((mean_out - target.float()) ** 2)
        vb = self.vb_terms(torch.cat([mean_out.detach(), v], 1), x0.float(), x_t.float(), t)
        return torch.mean(mse + vb * (self.num_steps / 1000.0))

    # ------------------------------------------------------------------ posterior, learned variance, VLB
    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean and log variance (clipped at t = 0 to step 1's) of q(x_{t-1} | x_t, x0)."""
        mean = _bcast(self.posterior_mean_coef1, t, x_t) * x0 + _bcast(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _bcast(self.posterior_log_var_iddpm, t, x_t)

    def p_mean_variance(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False):
        """(mean, log variance, pred_x0) of p(x_{t-1} | x_t) from a model output; the variance is learned
        (interpolated between beta_t and the posterior variance) or the fixed posterior variance."""
        C = x_t.shape[1]
        if self.learn_sigma:
            out, v = out[:, :C], out[:, C:]
            frac = (v.float() + 1.0) / 2.0
            log_var = (frac * _bcast(self.log_betas, t, x_t)
                       + (1.0 - frac) * _bcast(self.posterior_log_var_iddpm, t, x_t))
        else:
            log_var = _bcast(self.posterior_log_var_iddpm, t, x_t).expand_as(x_t)
        out = out.to(x_t.dtype)
        pred_x0 = self.x0_from_output(x_t, t, out)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean, _ = self.q_posterior(pred_x0, x_t, t)
        return mean, log_var, pred_x0

    def vb_terms(self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-sample variational-bound term in bits: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0, the
        discretized decoder NLL at t = 0."""
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        mean, log_var, _ = self.p_mean_variance(out, x_t, t)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
        nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, nll, kl)

    @torch.no_grad()
    def ddpm_sample(self, model_fn: ModelFn, x_T: torch.Tensor, generators: Optional[List[torch.Generator]] = None,
                    clip_denoised: bool = False, progress: bool = False) -> torch.Tensor:
        """Ancestral sampling over this diffusion's steps (use :meth:`respaced` for fewer); ``model_fn(x, t)``
        gets the original timestep numbers (``timestep_map``). Noise from ``generators`` (one per sample)."""
        x, dev = x_T, x_T.device
        for i in _steps(self.num_steps, progress, f"DDPM {self.num_steps} steps"):
            t = torch.full((x.shape[0],), i, dtype=torch.int64, device=dev)
            mean, log_var, _ = self.p_mean_variance(model_fn(x, self.timestep_map.to(dev)[t]), x, t, clip_denoised)
            x = mean + torch.exp(0.5 * log_var).to(x.dtype) * _noise(x, generators) if i > 0 else mean
        return x

    def p_sample(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor],
                 clip_denoised: bool = True):
        """guided_diffusion's ``p_sample`` for the model output ``out`` at step ``t`` of this process: (sample,
        mean, log variance, pred_x0), ``sample = mean + [t != 0] exp(0.5 log var) noise`` (``noise`` may be None
        where every t is 0)."""
        mean, log_var, pred_x0 = self.p_mean_variance(out, x_t, t, clip_denoised)
        if noise is None:
            if bool((t != 0).any()):
                raise ValueError("p_sample needs noise where t > 0")
            return mean, mean, log_var, pred_x0
        nonzero = (t != 0).to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1))).to(x_t.device)
        return mean + nonzero * torch.exp(0.5 * log_var) * noise, mean, log_var, pred_x0

    def ddim_step(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eta: float = 0.0,
                  noise: Optional[torch.Tensor] = None, clip_denoised: bool = True):
        """guided_diffusion's ``ddim_sample`` step at step ``t`` of this (respaced) process: (sample, pred_x0).
        eps is re-derived from the (clipped) pred_x0, ``sample = pred_x0 sqrt(abar_prev) + sqrt(1 - abar_prev -
        sigma^2) eps + [t != 0] sigma noise`` with ``sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar
        / abar_prev)``, float32 coefficients; at t = 0 (abar_prev = 1) the sample is pred_x0."""
        _, _, pred_x0 = self.p_mean_variance(out, x_t, t, clip_denoised)
        eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        a, a_prev = _bcast(self.alphas_cumprod, t, x_t), _bcast(self.alphas_cumprod_prev, t, x_t)
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
        sample = pred_x0 * torch.sqrt(a_prev) + torch.sqrt(1 - a_prev - sigma ** 2) * eps
        if eta > 0:
            if noise is None:
                raise ValueError("ddim_step with eta > 0 needs noise")
            nonzero = (t != 0).to(device=x_t.device, dtype=x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
            sample = sample + nonzero * sigma * noise
        return sample, pred_x0

    @torch.no_grad()
    def ddim_sample_spaced(self, model_fn: ModelFn, x_T: torch.Tensor, eta: float = 0.0,
                           generators: Optional[List[torch.Generator]] = None, clip_denoised: bool = True,
                           progress: bool = False, return_first: bool = False):
        """guided_diffusion's ``ddim_sample_loop`` over this process's own steps (respace with :meth:`subset`
        and :func:`official_respacing`, e.g. ``"ddim25"``): :meth:`ddim_step` for j = N-1 ... 0 from ``x_T``,
        ``model_fn(x, t)`` called with the original timesteps. Returns the final sample (the last pred_x0);
        ``return_first``: ``(x, (first sample, first pred_x0))``. Noise (eta > 0) from ``generators``."""
        x, dev, first = x_T, x_T.device, None
        for i in _steps(self.num_steps, progress, f"DDIM {self.num_steps} steps"):
            t = torch.full((x.shape[0],), i, dtype=torch.int64, device=dev)
            noise = None if eta <= 0 else (_noise(x, generators) if i > 0 else torch.zeros_like(x))
            x, pred_x0 = self.ddim_step(model_fn(x, self.timestep_map.to(dev)[t]), x, t, eta, noise, clip_denoised)
            if first is None:
                first = (x, pred_x0)
        return (x, first) if return_first else x

    def output_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the model should return for ``q_sample(x0, t, noise)`` under this ``parameterization``."""
        if self.parameterization == "x0":
            return x0
        if self.parameterization == "eps":
            return noise
        return _bcast(self.sqrt_alphas_cumprod, t, x0) * noise - _bcast(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def x0_from_output(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The x0 a model output stands for under this ``parameterization`` (x0, eps or v)."""
        if self.parameterization == "x0":
            return out
        if self.parameterization == "eps":
            return self.predict_x0_from_eps(x_t, t, out)
        return _bcast(self.sqrt_alphas_cumprod, t, x_t) * x_t - _bcast(self.sqrt_one_minus_alphas_cumprod, t, x_t) * out

    def eps_from_output(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The eps a model output stands for (x0 predictions go through RCG's float32 conversion)."""
        if self.parameterization == "x0":
            return self.predict_eps_from_x0(x_t, t, out)
        if self.parameterization == "eps":
            return out
        return _bcast(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + _bcast(self.sqrt_alphas_cumprod, t, x_t) * out

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
                    return_first: bool = False, final_x0: bool = False):
        """The official DDIM sampler from ``x_T``; ``model_fn(x, t)`` returns x0 or eps (per
        ``parameterization``). Returns the final x (not the last pred_x0); with ``return_first`` returns
        ``(x, (x_after_first_step, pred_x0_of_first_step))``. Noise (eta > 0) comes from ``generators``
        (one per sample, see :func:`randn_per_sample`) or else the global RNG.

        ``final_x0=True`` returns the last step's ``pred_x0`` instead: the official last step moves to
        ``alphas_cumprod[0]`` (not 1), so its x keeps noise of variance ``1 - alphas_cumprod[0]`` (std 0.039
        for RCG's schedule) in every dimension, which is visible in the representation FD of data whose
        covariance is nearly degenerate (see BENCHMARKS.md). The default is the official behaviour."""
        ts, alphas, alphas_prev, sigmas = self.ddim_coefficients(steps, eta)
        sqrt_one_minus = torch.sqrt(1.0 - alphas)                     # float32, as the official buffer
        x, dev, f32 = x_T, x_T.device, torch.float32
        first = None
        for i in _steps(len(ts), progress, f"DDIM {len(ts)} steps"):
            t = torch.full((x.shape[0],), int(ts[i]), dtype=torch.int64, device=dev)
            out = model_fn(x, t).to(x.dtype)
            if self.learn_sigma:
                out = out[:, :x.shape[1]]
            eps = self.eps_from_output(x, t, out)
            a_t, a_prev, sigma, s1m = (torch.tensor(float(v[i]), dtype=f32, device=dev)
                                       for v in (alphas, alphas_prev, sigmas, sqrt_one_minus))
            pred_x0 = (x - s1m * eps) / a_t.sqrt()
            x = a_prev.sqrt() * pred_x0 + (1.0 - a_prev - sigma ** 2).sqrt() * eps
            if eta > 0:
                x = x + sigma * _noise(x, generators)
            if first is None:
                first = (x, pred_x0)
        if final_x0:
            x = pred_x0
        return (x, first) if return_first else x


def image_loss(model_fn, diffusion: "GaussianDiffusion", drop_p: float, device):
    """The training loss of a pixel-space diffusion generator (DiT, ADM), as the registry's trainers return it:
    ``loss(images uint8, rep, labels, generator, rows, global_batch) -> (loss, {})`` on pixels in [-1, 1], with
    timesteps, noise and condition dropout (probability ``drop_p``) drawn for the whole global batch from
    ``generator`` and sliced by ``rows``; ``model_fn(x_t, t, rep, labels, null)`` is the network."""
    def loss(x, rep, labels, generator, rows, global_batch):
        g = global_batch
        t = torch.randint(0, diffusion.num_steps, (g,), generator=generator)[rows].to(device)
        noise = torch.randn((g,) + tuple(x.shape[1:]), generator=generator)[rows].to(device)
        null = (torch.rand(g, generator=generator) < drop_p)[rows].to(device) if drop_p > 0 else None
        x0 = x.float().div(127.5).sub(1.0)                     # the network uses only the condition of its cond
        return diffusion.loss(lambda xt, tt: model_fn(xt, tt, rep, labels, null), x0, t, noise), {}
    return loss
