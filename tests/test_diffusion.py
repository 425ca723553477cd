"""Gaussian diffusion: schedule, forward process, loss, the official DDIM sampler's properties."""
import pytest
import torch

from rcg.diffusion import GaussianDiffusion, scaled_linear_betas
from rcg.rng import randn_per_sample
from rcg.solvers import dpm_solver_sample, dpm_solver_timesteps
from rcg.rdm import RDM, RDM_PRESETS


def test_betas():
    b = scaled_linear_betas()
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert abs(b[0].item() - 0.0015) < 1e-15 and abs(b[-1].item() - 0.0195) < 1e-15
    assert torch.all(b[1:] > b[:-1])
    assert torch.allclose(b.sqrt(), torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=torch.float64))


def test_buffers_are_float32_and_not_saved():
    gd = GaussianDiffusion()
    assert gd.state_dict() == {}
    assert all(b.dtype == torch.float32 for n, b in gd.named_buffers() if n != "timestep_map")
    assert torch.equal(gd.timestep_map, torch.arange(1000))
    ac = torch.cumprod(1 - scaled_linear_betas(), 0)
    assert torch.equal(gd.alphas_cumprod, ac.float())            # float64 math, then cast
    assert torch.equal(gd.sqrt_recipm1_alphas_cumprod, (1 / ac - 1).sqrt().float())


def test_q_sample_preserves_variance():
    gd = GaussianDiffusion()
    assert torch.allclose(gd.sqrt_alphas_cumprod ** 2 + gd.sqrt_one_minus_alphas_cumprod ** 2, torch.ones(1000),
                          atol=1e-6)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(20000, 8, generator=g), torch.randn(20000, 8, generator=g)
    for step in (0, 250, 999):
        xt = gd.q_sample(x0, torch.full((20000,), step), noise)
        assert abs(xt.var().item() - 1.0) < 0.03
    img = torch.randn(2, 3, 4, 4)                                 # any shape (B, ...)
    assert gd.q_sample(img, torch.tensor([0, 999]), torch.zeros_like(img)).shape == img.shape


def test_loss_and_parameterizations():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 8, generator=g)
    gd = GaussianDiffusion()
    assert gd.loss(lambda xt, t: x0, x0, generator=g).item() == 0.0
    assert gd.loss(lambda xt, t: torch.zeros_like(xt), x0, t=torch.zeros(16, dtype=torch.long)).item() == \
        pytest.approx(x0.pow(2).mean().item())
    noise = torch.randn(16, 8, generator=g)
    eps = GaussianDiffusion(parameterization="eps")
    assert eps.loss(lambda xt, t: noise, x0, noise=noise).item() == 0.0
    l1 = gd.loss(lambda xt, t: xt, x0, generator=torch.Generator().manual_seed(3))
    l2 = gd.loss(lambda xt, t: xt, x0, generator=torch.Generator().manual_seed(3))
    assert l1.item() == l2.item()
    v = GaussianDiffusion(parameterization="v")
    t = torch.randint(0, 1000, (16,), generator=g)
    a = v.alphas_cumprod[t][:, None]
    assert v.loss(lambda xt, tt: a.sqrt() * noise - (1 - a).sqrt() * x0, x0, t=t, noise=noise).item() < 1e-10
    assert v.loss(lambda xt, tt: x0, x0, t=t, noise=noise).item() > 0.1
    with pytest.raises(ValueError):
        GaussianDiffusion(parameterization="x")


def test_v_outputs_convert_to_x0_and_eps_and_sample_like_x0():
    """v = sqrt(abar) eps - sqrt(1 - abar) x0 maps back to the x0 and eps of q_sample; a v-model that stands
    for a constant x0 samples exactly like the x0-model predicting that constant (RCG's DDIM, eta 0 and 1)."""
    gv, gx = GaussianDiffusion(parameterization="v", beta_start=1e-4), GaussianDiffusion(beta_start=1e-4)
    x0, noise = torch.randn(6, 16), torch.randn(6, 16)
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    xt = gv.q_sample(x0, t, noise)
    a = gv.alphas_cumprod[t][:, None]
    vt = a.sqrt() * noise - (1 - a).sqrt() * x0
    assert torch.allclose(gv.x0_from_output(xt, t, vt), x0, atol=1e-4)
    assert torch.allclose(gv.eps_from_output(xt, t, vt), noise, atol=1e-4)
    c = torch.randn(1, 16)
    v_of_c = lambda x, tt: ((gv.alphas_cumprod[tt][:, None].sqrt() * gx.predict_eps_from_x0(x, tt, c.expand_as(x)))
                            - (1 - gv.alphas_cumprod[tt][:, None]).sqrt() * c)
    x_T = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    for eta in (0.0, 1.0):
        kw = dict(generators=[torch.Generator().manual_seed(i) for i in range(4)])
        want = gx.ddim_sample(lambda x, tt: c.expand_as(x), x_T, 25, eta, **kw)
        kw = dict(generators=[torch.Generator().manual_seed(i) for i in range(4)])
        got = gv.ddim_sample(v_of_c, x_T, 25, eta, **kw)
        assert torch.allclose(got, want, atol=1e-4), (eta, (got - want).abs().max())


def test_eps_x0_conversions_invert_q_sample():
    gd = GaussianDiffusion()
    x0, noise = torch.randn(6, 16), torch.randn(6, 16)
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    xt = gd.q_sample(x0, t, noise)
    assert torch.allclose(gd.predict_eps_from_x0(xt, t, x0), noise, atol=1e-4)
    assert torch.allclose(gd.predict_x0_from_eps(xt, t, noise), x0, atol=1e-4)


def test_ddim_timesteps():
    gd = GaussianDiffusion()
    ts = gd.ddim_timesteps(250)
    assert ts.dtype == torch.int64 and ts[:3].tolist() == [1, 5, 9] and ts[-1].item() == 997 and len(ts) == 250
    assert gd.ddim_timesteps(50).tolist() == list(range(1, 1000, 20))
    assert gd.ddim_timesteps(25).tolist() == list(range(1, 1000, 40))
    # official: stride 1000 // 300 = 3 gives 334 entries, the last (1000) past the schedule: dropped
    assert len(gd.ddim_timesteps(300)) == 333 and gd.ddim_timesteps(300)[-1].item() == 997
    assert gd.ddim_timesteps(3).tolist() == [1, 334, 667]
    for bad in (0, 501, 1000):
        with pytest.raises(ValueError):
            gd.ddim_timesteps(bad)
    _, alphas, alphas_prev, sigmas = gd.ddim_coefficients(50, eta=0.0)
    assert alphas_prev[0].item() == gd.alphas_cumprod[0].item()       # the LDM quirk: not 1.0
    assert torch.equal(alphas_prev[1:].float(), alphas[:-1]) and torch.count_nonzero(sigmas) == 0


def test_oracle_x0_model_ddim_eta0_bound():
    """A model that always predicts the same x0 = c. Its implied eps is (x - sqrt(a) c) / sqrt(1 - a), so
    pred_x0 = c at every step and the DDIM (eta = 0) update keeps eps unchanged: the residual
    eps_T = (x_T - sqrt(a_T) c) / sqrt(1 - a_T) is carried to the end. The last step goes to
    a_prev = alphas_cumprod[0] = 1 - beta_0 (not 1), so the returned sample is
        x = sqrt(a_0) c + sqrt(1 - a_0) eps_T,   |x - c| <= (1 - sqrt(a_0)) |c| + sqrt(beta_0) |eps_T|
    with sqrt(beta_0) = sqrt(0.0015) = 0.0387: close to c, but not equal to it."""
    gd = GaussianDiffusion()
    g = torch.Generator().manual_seed(0)
    c, x_T = torch.randn(4, 256, generator=g), torch.randn(4, 256, generator=g)
    for steps in (25, 50, 250):
        x = gd.ddim_sample(lambda x, t: c, x_T, steps, eta=0.0)
        a_T, a_0 = gd.alphas_cumprod[gd.ddim_timesteps(steps)[-1]], gd.alphas_cumprod[0]
        eps_T = (x_T - a_T.sqrt() * c) / (1 - a_T).sqrt()
        assert torch.allclose(x, a_0.sqrt() * c + (1 - a_0).sqrt() * eps_T, atol=1e-4)
        bound = (1 - a_0.sqrt()) * c.abs() + (1 - a_0).sqrt() * eps_T.abs() + 1e-4
        assert torch.all((x - c).abs() <= bound)
        assert (x - c).abs().max() > 0.05                  # the quirk leaves ~N(0, beta_0) of noise


def test_oracle_x0_model_ddim_eta1_residual_is_unit_noise():
    """With eta = 1 each step adds fresh noise but keeps Var(x - sqrt(a_prev) c) = 1 - a_prev, so the final
    residual (x - sqrt(a_0) c) / sqrt(1 - a_0) is standard normal."""
    gd = GaussianDiffusion()
    c = torch.randn(8, 2048, generator=torch.Generator().manual_seed(1))
    gens = [torch.Generator().manual_seed(100 + i) for i in range(8)]
    x_T = randn_per_sample(c.shape, [torch.Generator().manual_seed(i) for i in range(8)])
    x = gd.ddim_sample(lambda x, t: c, x_T, 50, eta=1.0, generators=gens)
    a_0 = gd.alphas_cumprod[0]
    r = (x - a_0.sqrt() * c) / (1 - a_0).sqrt()
    assert abs(r.std().item() - 1) < 0.03 and abs(r.mean().item()) < 0.03


def _model():
    torch.manual_seed(0)
    m = RDM(RDM_PRESETS["rdm-tiny"])
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_sample_independent_of_batch_composition():
    gd, m = GaussianDiffusion(), _model()
    fn = lambda x, t: m(x, t)  # noqa: E731
    seeds = [11, 12, 13, 14, 15]
    noise_gens = lambda ss: [torch.Generator().manual_seed(s) for s in ss]  # noqa: E731
    x_T = randn_per_sample((5, 256), noise_gens([s + 1000 for s in seeds]))
    batch = gd.ddim_sample(fn, x_T, 20, eta=1.0, generators=noise_gens(seeds))
    alone = gd.ddim_sample(fn, randn_per_sample((1, 256), noise_gens([seeds[3] + 1000])), 20, eta=1.0,
                           generators=noise_gens([seeds[3]]))
    assert torch.allclose(alone[0], batch[3], atol=1e-5)
    assert not torch.allclose(batch[2], batch[3])
    with pytest.raises(ValueError, match="one generator per sample"):
        randn_per_sample((3, 4), noise_gens([1, 2]))


def test_eta0_is_deterministic_and_return_first():
    gd, m = GaussianDiffusion(), _model()
    x_T = torch.randn(3, 256)
    state = torch.get_rng_state()
    a, (first_x, first_pred) = gd.ddim_sample(lambda x, t: m(x, t), x_T, 10, eta=0.0, return_first=True)
    assert torch.equal(torch.get_rng_state(), state)          # eta = 0 draws no noise
    b = gd.ddim_sample(lambda x, t: m(x, t), x_T, 10, eta=0.0)
    assert torch.equal(a, b) and first_x.shape == first_pred.shape == (3, 256)
    with torch.no_grad():
        t = torch.full((3,), 901)
        assert torch.allclose(first_pred, m(x_T, t), atol=1e-4)   # pred_x0 of the first step = model x0


def _gaussian_x0(diffusion, mu: float, s: float):
    """The exact x0 prediction E[x0 | x_t] for data x0 ~ N(mu, s^2) per dimension (a known ODE to solve)."""
    ac = diffusion.alphas_cumprod.double()

    def fn(x, t):
        a, var = ac[t].sqrt().view(-1, 1), (1 - ac[t]).view(-1, 1)
        return (mu + a * s ** 2 / (a ** 2 * s ** 2 + var) * (x.double() - a * mu)).to(x.dtype)
    return fn


def test_dpm_solver_pp_2m_solves_the_probability_flow_ode_in_few_steps():
    from rcg.diffusion import GaussianDiffusion
    d = GaussianDiffusion(parameterization="x0")            # RCG's scaled-linear schedule, an x0 model
    ts = dpm_solver_timesteps(d, 20)
    assert ts[0] == 999 and ts[-1] == 0 and bool((ts[1:] < ts[:-1]).all()) and len(ts) == 21
    fn = _gaussian_x0(d, mu=1.5, s=0.3)
    x_T = torch.randn(4000, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ode = d.ddim_sample(fn, x_T, 500, eta=0.0)               # the reference: DDIM 500 (eta 0 = the same ODE)
    fast = dpm_solver_sample(d, fn, x_T, 20)
    ddim20 = d.ddim_sample(fn, x_T, 20, eta=0.0)
    err_fast, err_ddim = (fast - ode).abs().max().item(), (ddim20 - ode).abs().max().item()
    assert err_fast < 0.2 * err_ddim and err_fast < 0.05, (err_fast, err_ddim)   # second order beats first
    ac = d.alphas_cumprod.double()
    a0, s0, aT, sT = ac[0].sqrt(), (1 - ac[0]).sqrt(), ac[999].sqrt(), (1 - ac[999]).sqrt()
    assert abs(fast.mean().item() - a0 * 1.5) < 0.01               # the t = 0 marginal N(a0 mu, a0^2 s^2 + s0^2)
    assert abs(fast.std().item() - (a0 ** 2 * 0.09 + s0 ** 2).sqrt()) < 0.01
    x0 = fn(x_T, torch.full((4000,), 999))                          # one step is first order: the DDIM (eta 0) step
    assert torch.allclose(dpm_solver_sample(d, fn, x_T, 1), s0 / sT * x_T + (a0 - s0 * aT / sT) * x0, atol=1e-6)


def test_sde_dpm_solver_reaches_the_data_marginal_and_is_per_sample():
    from rcg.diffusion import GaussianDiffusion
    from rcg.rng import per_sample
    d = GaussianDiffusion(parameterization="x0", beta_start=1e-4)           # fmnist-rdm-v's schedule, an x0 model
    fn = _gaussian_x0(d, mu=1.5, s=0.3)                                       # the exact x0 of N(1.5, 0.3^2) data
    x_T = torch.randn(4000, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sde = dpm_solver_sample(d, fn, x_T, 20, eta=1.0, generators=None)
    ac = d.alphas_cumprod.double()
    a0, s0 = ac[0].sqrt(), (1 - ac[0]).sqrt()
    assert abs(sde.mean().item() - a0 * 1.5) < 0.01                            # N(a0 mu, a0^2 s^2 + s0^2) at t = 0
    assert abs(sde.std().item() - (a0 ** 2 * 0.09 + s0 ** 2).sqrt()) < 0.01
    ode = dpm_solver_sample(d, fn, x_T, 20)
    assert (sde - ode).abs().mean() > 0.05                                    # the noise is really drawn
    near = dpm_solver_sample(d, fn, x_T, 20, eta=1e-8, generators=None)
    assert torch.allclose(near, ode, atol=1e-3)                               # eta -> 0 is the ODE solver
    gens = lambda: per_sample(range(5, 11))                                    # noqa: E731
    a = dpm_solver_sample(d, fn, x_T[:6], 8, eta=1.0, generators=gens())
    b = torch.cat([dpm_solver_sample(d, fn, x_T[:6][i:i + 2], 8, eta=1.0, generators=gens()[i:i + 2])
                   for i in range(0, 6, 2)])
    assert torch.allclose(a, b, atol=1e-12)                                   # sample i's noise: its generator
    with pytest.raises(ValueError, match="eta"):
        dpm_solver_sample(d, fn, x_T, 4, eta=-1.0)


def test_draw_reps_with_dpm_solver_is_per_sample_and_checked():
    from rcg.config import RDMRun
    from rcg.rdm import RDMConfig
    from rcg.sample import draw_reps
    torch.manual_seed(0)
    model = RDM(RDMConfig(in_channels=8, time_embed_dim=16, model_channels=32, num_res_blocks=1)).eval()
    with torch.no_grad():                                   # not the zero-initialised output: a non-trivial x0
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    cfg = RDMRun(model=model.cfg, solver="dpm++2m", sample_steps=6)
    a = draw_reps(model, cfg, 6, seed=3, batch_size=6)["reps"]
    b = draw_reps(model, cfg, 6, seed=3, batch_size=4)["reps"]              # image i from seed + i, any batch
    assert a.shape == (6, 8) and torch.allclose(a, b, atol=1e-6) and torch.isfinite(a).all()
    ddim = draw_reps(model, cfg, 6, seed=3, batch_size=6, solver="ddim", eta=0.0)["reps"]
    assert (a - ddim).abs().max() > 1e-3                                    # the run's solver is used by default
    assert int(draw_reps(model, cfg, 1)["solver"]) == 1 and int(draw_reps(model, cfg, 1, solver="ddim")["solver"]) == 0
    sde = [draw_reps(model, cfg, 6, seed=3, batch_size=n, solver="dpm++2m-sde") for n in (6, 4)]
    assert torch.allclose(sde[0]["reps"], sde[1]["reps"], atol=1e-6) and int(sde[0]["solver"]) == 2
    assert (sde[0]["reps"] - a).abs().max() > 1e-3                          # stochastic, not the ODE solver
    with pytest.raises(ValueError, match="solver must be"):
        draw_reps(model, cfg, 2, solver="euler")
