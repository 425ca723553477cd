"""DiT's diffusion recipe in rcg.diffusion: linear schedule, respacing, learned-sigma loss (eps MSE + VLB), DDPM."""
import math

import pytest
import torch

from rcg.diffusion import GaussianDiffusion, linear_betas, normal_kl, space_timesteps


def dit_diffusion(**kw):
    return GaussianDiffusion(beta_start=1e-4, beta_end=0.02, schedule="linear", **kw)


def test_linear_schedule_and_spacing():
    b = linear_betas()
    assert b[0].item() == pytest.approx(1e-4, abs=1e-15) and b[-1].item() == pytest.approx(0.02, abs=1e-15)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    ts = space_timesteps(1000, 250)
    assert len(ts) == 250 and ts[0] == 0 and ts[-1] == 999 and ts == sorted(set(ts))
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(10, 4) == [0, 3, 6, 9]
    with pytest.raises(ValueError):
        space_timesteps(1000, 0)
    with pytest.raises(ValueError):
        GaussianDiffusion(schedule="cosine")


def test_respacing_keeps_the_marginals():
    gd = dit_diffusion(parameterization="eps", learn_sigma=True)
    same = gd.respaced(1000)
    assert torch.allclose(same.betas, gd.betas, atol=1e-7) and torch.equal(same.timestep_map, torch.arange(1000))
    r = gd.respaced(25)
    keep = torch.tensor(space_timesteps(1000, 25))
    assert r.num_steps == 25 and torch.equal(r.timestep_map, keep)
    assert torch.allclose(r.alphas_cumprod, gd.alphas_cumprod[keep], rtol=1e-5)
    assert r.learn_sigma and r.parameterization == "eps"


def test_learned_sigma_loss_is_zero_for_the_true_posterior():
    """eps exact and v = -1 (the posterior variance) at t >= 1: MSE 0 and KL 0; any other v costs bits."""
    gd = dit_diffusion(parameterization="eps", learn_sigma=True)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(8, 2, 4, 4, generator=g) * 2 - 1, torch.randn(8, 2, 4, 4, generator=g)
    t = torch.randint(1, 10, (8,), generator=g)     # small t: beta_t and the posterior variance differ most
    exact = gd.loss(lambda xt, tt: torch.cat([noise, -torch.ones_like(noise)], 1), x0, t, noise)
    assert exact.item() == pytest.approx(0.0, abs=1e-5)
    wrong_var = gd.loss(lambda xt, tt: torch.cat([noise, torch.ones_like(noise)], 1), x0, t, noise)
    assert wrong_var.item() > 1e-3
    # the VLB term trains only the variance: the gradient on the eps channels is the MSE's alone
    out = torch.cat([noise + 0.1 * torch.randn(noise.shape, generator=g), torch.zeros_like(noise)], 1).requires_grad_()
    gd.loss(lambda xt, tt: out, x0, t, noise).backward()
    expected = 2 * (out[:, :2] - noise).detach() / (2 * 16) / 8
    assert torch.allclose(out.grad[:, :2], expected, atol=1e-7)
    assert out.grad[:, 2:].abs().sum() > 0
    with pytest.raises(ValueError, match="channels"):
        gd.loss(lambda xt, tt: noise, x0, t, noise)


def test_vlb_matches_the_closed_form_kl():
    gd = dit_diffusion(parameterization="x0", learn_sigma=True)
    x0, xt = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    t = torch.tensor([500])
    mean_true, logvar_true = gd.q_posterior(x0, xt, t)
    pred_x0 = torch.full_like(x0, 0.5)                             # wrong mean, max variance (v = +1)
    bits = gd.vb_terms(torch.cat([pred_x0, torch.ones_like(x0)], 1), x0, xt, t)
    mean2 = gd.posterior_mean_coef1[500] * 0.5 + gd.posterior_mean_coef2[500] * 1.0
    logvar2 = gd.log_betas[500]
    v1, v2 = logvar_true.exp().item(), logvar2.exp().item()
    kl = 0.5 * (math.log(v2 / v1) + (v1 + (mean_true.item() - mean2.item()) ** 2) / v2 - 1)
    assert bits.item() == pytest.approx(kl / math.log(2), rel=1e-4)
    assert normal_kl(torch.tensor(0.3), torch.tensor(0.1), torch.tensor(0.3), torch.tensor(0.1)).item() == 0.0


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_ddpm_samples_a_gaussian_with_the_exact_denoiser(learn_sigma):
    """Data N(m, s^2): the exact reverse step is Gaussian with mean from E[x0 | x_t] and variance
    posterior_var + coef1^2 Var[x0 | x_t]. A model giving both (v interpolating the log variance) makes
    respaced ancestral sampling (100 steps) draw the data's mean and std; the fixed posterior variance
    (learn_sigma=False) ignores Var[x0 | x_t] and comes out a little narrow."""
    m, s = 0.3, 0.5
    full = dit_diffusion(parameterization="x0", learn_sigma=learn_sigma)
    r = full.respaced(100)
    ac = full.alphas_cumprod.double()
    index = {int(o): i for i, o in enumerate(r.timestep_map)}

    def model(x, t):                                               # t: original timesteps (timestep_map)
        a = ac[t].view(-1, 1)
        x0 = m + s * s * a.sqrt() / (a * s * s + 1 - a) * (x.double() - a.sqrt() * m)
        if not learn_sigma:
            return x0.float()
        i = torch.tensor([index[int(o)] for o in t])
        var_x0 = s * s * (1 - a) / (a * s * s + 1 - a)
        true_var = r.posterior_variance.double()[i].view(-1, 1) + r.posterior_mean_coef1.double()[i].view(-1, 1) ** 2 * var_x0
        lo, hi = r.posterior_log_var_iddpm.double()[i].view(-1, 1), r.log_betas.double()[i].view(-1, 1)
        frac = ((true_var.log() - lo) / (hi - lo)).clamp(0, 1)
        return torch.cat([x0, 2 * frac - 1], 1).float()

    n = 20000
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    x_T = torch.stack([torch.randn(1, generator=g) for g in gens])
    out = r.ddpm_sample(model, x_T, generators=gens)
    assert out.mean().item() == pytest.approx(m, abs=0.02)
    if learn_sigma:
        assert out.std().item() == pytest.approx(s, rel=0.03)
    else:
        assert 0.85 * s < out.std().item() < 0.99 * s


def test_ddim_uses_only_the_mean_channels_of_a_learned_sigma_model():
    plain = GaussianDiffusion(parameterization="eps")
    ls = GaussianDiffusion(parameterization="eps", learn_sigma=True)
    net = torch.nn.Linear(3, 3)
    x_T = torch.randn(4, 3)
    with torch.no_grad():
        a = plain.ddim_sample(lambda x, t: net(x), x_T, 10, eta=0.0)
        b = ls.ddim_sample(lambda x, t: torch.cat([net(x), 100 * torch.randn_like(x)], 1), x_T, 10, eta=0.0)
    assert torch.equal(a, b)
