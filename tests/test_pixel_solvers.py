"""DPM-Solver++ 2M as the sampler of the diffusion generators (DiT, ADM, LDM): it solves the same probability-flow
ODE as DDIM with eta 0, so a few solver steps land where many DDIM steps do, per sample, through each registry
sampler (run.sampler = "dpm++2m")."""
from types import SimpleNamespace

import pytest
import torch

from rcg.config import DIT_DIFFUSION, PIXEL_SAMPLERS, DiffusionConfig, PixelRun
from rcg.diffusion import GaussianDiffusion
from rcg.pixel import GENERATORS
from rcg.pixel.adm import ADM, ADMConfig
from rcg.pixel.dit import DiT, DiTConfig
from rcg.pixel.ldm import LDM, LDM_DIFFUSION, LDMConfig, ldm_generate
from rcg.pixel.ldm_autoencoder import FirstStageConfig
from rcg.rng import per_sample


def _perturbed(model):
    torch.manual_seed(0)
    with torch.no_grad():                              # zero-initialised output layers: make every layer act
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _dit():
    torch.manual_seed(0)
    cfg = DiTConfig(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4, rep_dim=16)
    return _perturbed(DiT(cfg)), DIT_DIFFUSION


def _adm():
    torch.manual_seed(0)
    cfg = ADMConfig(image_size=8, in_channels=1, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                    attention_resolutions=(2,), num_head_channels=32, rep_dim=16)
    return _perturbed(ADM(cfg)), DIT_DIFFUSION


def _ldm():
    torch.manual_seed(0)
    fs = FirstStageConfig(kind="rcg-vq", in_channels=1, out_channels=1, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(), z_channels=4, embed_dim=4, n_embed=32, resolution=8, num_groups=8)
    cfg = LDMConfig(model_channels=16, num_res_blocks=1, attention_resolutions=(1,), channel_mult=(1,),
                    num_head_channels=8, num_groups=8, rep_dim=16, first_stage=fs)
    return _perturbed(LDM(cfg)), DiffusionConfig(**LDM_DIFFUSION)


BUILD = {"dit": _dit, "adm": _adm, "ldm": _ldm}


def _sample(name, model, diffusion, sampler, steps, rep, first_seed=0):
    run = SimpleNamespace(model=model.cfg, diffusion=diffusion, steps=steps, sampler=sampler, eta=0.0,
                          guidance=0.0, sample_bf16=False, autoencoder="", official_first3=False)
    if name == "ldm":                                  # compare the latents: decoding quantises
        return ldm_generate(model, GaussianDiffusion(**LDM_DIFFUSION), per_sample(range(first_seed, first_seed + len(rep))), rep=rep,
                            steps=steps, eta=0.0, sampler=sampler, decode=False)
    return GENERATORS[name].sampler(model, run)(rep, None, per_sample(range(first_seed, first_seed + len(rep))))


@pytest.mark.parametrize("name", ["dit", "adm", "ldm"])
def test_dpm_solver_reaches_the_many_step_ddim_solution(name):
    model, diffusion = BUILD[name]()
    rep = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    ref = _sample(name, model, diffusion, "ddim", 500, rep)             # DDIM eta 0: a fine ODE solution
    fast = _sample(name, model, diffusion, "dpm++2m", 20, rep)
    coarse = _sample(name, model, diffusion, "ddim", 20, rep)
    err_fast, err_coarse = (fast - ref).norm() / ref.norm(), (coarse - ref).norm() / ref.norm()
    assert err_fast < 0.05, (name, float(err_fast))
    assert err_fast < err_coarse, (name, float(err_fast), float(err_coarse))   # better than DDIM at equal cost
    one = _sample(name, model, diffusion, "dpm++2m", 20, rep[1:2], first_seed=1)       # per sample: same alone
    assert torch.allclose(one, fast[1:2], rtol=1e-4, atol=1e-4 * float(fast.abs().max()))


def test_pixel_run_accepts_the_solver_and_names_the_choices():
    assert "dpm++2m" in PIXEL_SAMPLERS
    assert PixelRun(generator="dit", sampler="dpm++2m").sampler == "dpm++2m"
    with pytest.raises(ValueError, match="dpm\\+\\+2m"):
        PixelRun(generator="dit", sampler="euler")


@pytest.mark.parametrize("name", ["dit", "adm", "ldm"])
def test_sde_solver_is_per_sample_stochastic_and_near_the_ode(name):
    """The SDE form through each registry sampler: its step noise comes from each sample's generator (alone =
    in a batch), it is not the ODE's deterministic path, and it is reproducible from the seeds."""
    model, diffusion = BUILD[name]()
    rep = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    sde = _sample(name, model, diffusion, "dpm++2m-sde", 20, rep)
    ode = _sample(name, model, diffusion, "dpm++2m", 20, rep)
    one = _sample(name, model, diffusion, "dpm++2m-sde", 20, rep[1:2], first_seed=1)
    assert torch.allclose(one, sde[1:2], rtol=1e-4, atol=1e-4 * float(sde.abs().max()))
    gap = float((sde - ode).norm() / ode.norm())
    assert gap > 1e-3 and bool(sde.isfinite().all()), (name, gap)     # noise injected: not the ODE's path
    again = _sample(name, model, diffusion, "dpm++2m-sde", 20, rep)
    assert torch.equal(again, sde)                   # reproducible from the seeds


@pytest.mark.parametrize("name", ["adm", "ldm"])
@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m-sde"])
def test_cpu_sampler_chunks_rows_without_changing_images(monkeypatch, name, sampler):
    """The U-Nets' registry samplers run CPU batches CPU_ROWS rows at a time (as MAGE and DiT): the images (LDM:
    decoded) equal one full-batch pass, stochastic samplers included."""
    from rcg.pixel import adm, ldm, rows
    model, diffusion = BUILD[name]()
    run = SimpleNamespace(model=model.cfg, diffusion=diffusion, steps=6, sampler=sampler, eta=1.0, guidance=0.0,
                          sample_bf16=False)
    rep = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    whole = GENERATORS[name].sampler(model, run)(rep, None, per_sample(range(5)))
    monkeypatch.setattr(rows, "CPU_ROWS", 2)                 # 2 + 2 + 1 rows
    mod, fn = (adm, "adm_generate") if name == "adm" else (ldm, "ldm_generate")
    calls, real = [], getattr(mod, fn)
    monkeypatch.setattr(mod, fn, lambda m, *a, **k: calls.append(len(rep if k.get("rep") is None else k["rep"]))
                        or real(m, *a, **k))
    chunked = GENERATORS[name].sampler(model, run)(rep, None, per_sample(range(5)))
    assert calls == [2, 2, 1] and chunked.shape == whole.shape
    assert torch.allclose(chunked, whole, atol=1e-5)
