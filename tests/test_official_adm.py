"""Parity with the official RCG ADM: every ``adm_*.pth`` + ``adm_*_io.safetensors`` in the fixture folders.

Dimensions come from the files (weights, ``args``), never assumed. Every io key must be an input or an output this
test recomputes; anything else fails. Official semantics (fixture README section 6): ``out_*`` = ``model(x, t,
rep=rep)`` (raw / EMA), ``emb_*`` the time embedding and ``rep_proj(rep)``, the schedule of the (spaced) training
diffusion, respacings ``ddim25`` / ``250``, the DDIM-25 loop (eta 0, eps re-derived from the clipped pred_xstart)
and ``p_mean_variance`` / ``p_sample`` of the respaced-250 process at three indices with the stored noise draws.
Tolerances: the README's (float32; ``*_pred_xstart`` 5e-4 since eps errors are amplified ~150x before clipping).
"""
import argparse
import functools

import numpy as np
import pytest
import torch
from conftest import assert_close, companion_io, fixture_cases, read_io

from rcg.diffusion import iddpm_linear_betas, official_respacing, space_timesteps
from rcg.official.adm import adm_from_official, adm_sampling
from rcg.official.load import CheckpointFormatError
from rcg.pixel.adm import ADM, ADMConfig, adm_diffusion, adm_generate, to_unit

PATTERN = "adm_*.pth"
INPUTS = {"x", "t", "rep", "x_T", "p250_top_index", "p250_mid_index", "p250_last_index", "p250_mid_x", "p250_last_x",
          "p250_top_noise", "p250_mid_noise"}
OUTPUTS = {"out_raw", "out_ema", "emb_time_ema", "emb_rep_ema", "betas", "alphas_cumprod", "ddim25_timestep_map",
           "ddim25_betas", "resp250_timestep_map", "resp250_betas", "ddim25_first_sample", "ddim25_first_pred_xstart",
           "ddim25_sample"} | {f"p250_{w}_{k}" for w in ("top", "mid", "last")
                               for k in ("log_variance", "pred_xstart", "sample")}
ATOL_NET, ATOL_SAMPLER, ATOL_PRED_X0, ATOL_SCHEDULE = 1e-5, 1e-4, 5e-4, 1e-15


def _cases():
    return fixture_cases(PATTERN)


@functools.lru_cache(maxsize=None)
def _load(path):
    io, meta = read_io(companion_io(path, PATTERN))
    raw, info_raw = adm_from_official(path, ema=False)
    ema, info_ema = adm_from_official(path, ema=True)
    return io, meta.get("config", {}), raw, info_raw, ema, info_ema


def _fn(model, rep):
    return lambda x, t: model(x, t, rep)


def _respacing(info):
    """The gen_timestep_respacing of the file (``ddim25`` in the shared set)."""
    return info["sampling"]["respacing"]


@pytest.mark.parametrize("path", _cases())
def test_io_keys_are_all_known(path):
    io = _load(path)[0]
    unknown = sorted(set(io) - INPUTS - OUTPUTS)
    assert not unknown, f"{path.name}: io keys this test cannot check: {unknown}"
    assert {"x", "t", "rep"} <= set(io) and set(io) & OUTPUTS


@pytest.mark.parametrize("path", _cases())
def test_config_inferred(path):
    io, meta, raw, info_raw, ema, info_ema = _load(path)
    c = raw.cfg
    assert c == ema.cfg and info_ema["ema"] and not info_raw["ema"] and info_ema["num_heads_from"] == "args"
    unet = meta.get("unet", {})
    for ours, theirs in (("image_size", "image_size"), ("in_channels", "in_channels"),
                         ("model_channels", "model_channels"), ("num_res_blocks", "num_res_blocks"),
                         ("out_channels", "out_channels"), ("use_scale_shift_norm", "use_scale_shift_norm"),
                         ("resblock_updown", "resblock_updown"), ("rep_dim", "rep_dim"),
                         ("use_new_attention_order", "use_new_attention_order")):
        if theirs in unet:
            assert getattr(c, ours) == unet[theirs], (ours, getattr(c, ours), unet[theirs])
    if "channel_mult" in unet:
        assert list(c.channel_mult) == list(unet["channel_mult"])
    if "attention_ds" in unet:
        assert sorted(c.attention_resolutions) == sorted(unet["attention_ds"])
    if "num_head_channels" in unet:
        assert raw.middle_block[1].num_heads == c.model_channels * c.channel_mult[-1] // unet["num_head_channels"]
    assert tuple(io["x"].shape[1:]) == (c.in_channels, c.image_size, c.image_size)
    assert c.cond == "rep" and c.rep_drop_prob == 0.0 and not hasattr(raw, "null_rep")     # official: no null_rep
    assert c.time_embed_dim == io["emb_time_ema"].shape[1]
    s = info_ema["sampling"]
    assert s["diffusion"] == dict(num_steps=1000, beta_start=1e-4, beta_end=0.02, parameterization="eps",
                                  schedule="linear", learn_sigma=c.learn_sigma)
    assert (s["sampler"], s["steps"], s["exact"]) == ("ddim", 25, True) and s["respacing"] == "ddim25"


@pytest.mark.parametrize("path", _cases())
@pytest.mark.parametrize("which", ["raw", "ema"])
def test_forward(path, which):
    io, _, raw, _, ema, _ = _load(path)
    model = raw if which == "raw" else ema
    with torch.no_grad():
        assert_close(f"out_{which}", model(io["x"], io["t"], io["rep"]), io[f"out_{which}"], ATOL_NET)
        if which == "ema":
            assert_close("emb_time_ema", model.time_embedding(io["t"]), io["emb_time_ema"], ATOL_NET)
            assert_close("emb_rep_ema", model.rep_proj(io["rep"]), io["emb_rep_ema"], ATOL_NET)
            emb = model.condition(io["t"], io["rep"])            # the sum every ResBlock receives
            assert_close("condition", emb, io["emb_time_ema"] + io["emb_rep_ema"], ATOL_NET)


@pytest.mark.parametrize("path", _cases())
def test_schedule_and_respacing(path):
    io, meta, _, _, _, info = _load(path)
    assert torch.equal(iddpm_linear_betas(), torch.from_numpy(np.linspace(1e-4, 0.02, 1000)))   # bit for bit
    train = adm_diffusion("", **info["sampling"]["diffusion"])
    listed = meta.get("diffusion", {}).get("betas_list")         # the re-derived betas of the spaced process
    if listed is not None:
        assert_close("betas_list", train.betas64, torch.tensor(listed, dtype=torch.float64), ATOL_SCHEDULE)
    assert train.betas64.dtype == torch.float64
    assert_close("betas", train.betas64, io["betas"], ATOL_SCHEDULE)
    assert_close("alphas_cumprod", torch.cumprod(1 - train.betas64, 0), io["alphas_cumprod"], ATOL_SCHEDULE)
    for spec, key in (("ddim25", "ddim25"), ("250", "resp250")):
        spaced = adm_diffusion(spec, **info["sampling"]["diffusion"])
        assert torch.equal(spaced.timestep_map, io[f"{key}_timestep_map"]), spec
        assert official_respacing(1000, spec) == io[f"{key}_timestep_map"].tolist()
        assert_close(f"{key}_betas", spaced.betas64, io[f"{key}_betas"], ATOL_SCHEDULE)
    # the official walk (accumulated stride) and our evenly spaced DiT list agree for 250, not for every count
    assert official_respacing(1000, 250) == space_timesteps(1000, 250)
    assert official_respacing(1000, 21) != space_timesteps(1000, 21)


@pytest.mark.parametrize("path", _cases())
def test_ddim25(path):
    io, _, _, _, ema, info = _load(path)
    spaced = adm_diffusion(_respacing(info), **info["sampling"]["diffusion"])
    x, (first_x, first_x0) = spaced.ddim_sample_spaced(_fn(ema, io["rep"]), io["x_T"], eta=0.0, return_first=True)
    assert_close("ddim25_first_sample", first_x, io["ddim25_first_sample"], ATOL_SAMPLER)
    assert_close("ddim25_first_pred_xstart", first_x0, io["ddim25_first_pred_xstart"], ATOL_PRED_X0)
    assert_close("ddim25_sample", x, io["ddim25_sample"], ATOL_SAMPLER)
    assert x.abs().max() <= 1.0                                    # the last step returns the clipped pred_xstart


@pytest.mark.parametrize("path", _cases())
@pytest.mark.parametrize("where", ["top", "mid", "last"])
def test_p250_steps(path, where):
    io, _, _, _, ema, info = _load(path)
    spaced = adm_diffusion("250", **info["sampling"]["diffusion"])
    i = int(io[f"p250_{where}_index"])
    x = io["x_T"] if where == "top" else io[f"p250_{where}_x"]
    t = torch.full((x.shape[0],), i, dtype=torch.int64)
    with torch.no_grad():
        out = ema(x, spaced.timestep_map[t], io["rep"])
    sample, mean, log_var, pred_x0 = spaced.p_sample(out, x, t, io.get(f"p250_{where}_noise"), clip_denoised=True)
    assert_close(f"p250_{where}_log_variance", log_var, io[f"p250_{where}_log_variance"], ATOL_SAMPLER)
    assert_close(f"p250_{where}_pred_xstart", pred_x0, io[f"p250_{where}_pred_xstart"], ATOL_PRED_X0)
    assert_close(f"p250_{where}_sample", sample, io[f"p250_{where}_sample"], ATOL_SAMPLER)
    if i == 0:
        assert torch.equal(sample, mean)                          # no noise at index 0


# ----------------------------------------------------------------------------------------------
# an official-layout file with random weights: official -> ours -> an image
# ----------------------------------------------------------------------------------------------
SMALL = ADMConfig(image_size=32, model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(2,),
                  num_head_channels=32, resblock_updown=False, use_scale_shift_norm=True)


def _official_file(cfg: ADMConfig, seed: int = 0, with_args: bool = True) -> dict:
    """A checkpoint dict as ``main_adm.py`` saves it, with random values under our (= the official) key names."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in ADM(cfg).state_dict().items()}
    ema = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
    args = argparse.Namespace(image_size=cfg.image_size, num_channels=cfg.model_channels, num_heads=4,
                              num_head_channels=cfg.num_head_channels, num_heads_upsample=-1, dropout=0.0,
                              use_new_attention_order=False, learn_sigma=cfg.learn_sigma, diffusion_steps=1000,
                              noise_schedule="linear", gen_timestep_respacing="250", use_ddim=False, rep_cond=True)
    return {"model": sd, "model_ema": ema, "epoch": 3, **({"args": args} if with_args else {})}


def test_random_official_layout_to_an_image(tmp_path):
    ckpt = _official_file(SMALL)
    torch.save(ckpt, tmp_path / "adm.pth")                        # read back through the weights-only loader
    model, info = adm_from_official(tmp_path / "adm.pth", ema=True)
    assert model.cfg == SMALL and info["ema"] and not model.training
    assert all(torch.equal(v, ckpt["model_ema"][k]) for k, v in model.state_dict().items())
    assert "input_blocks.2.0.op.weight" in ckpt["model"]          # conv Downsample (resblock_updown False)
    s = info["sampling"]
    assert (s["sampler"], s["steps"], s["exact"]) == ("ddpm", 250, True)
    g = [torch.Generator().manual_seed(7)]
    rep = torch.randn(1, 256, generator=torch.Generator().manual_seed(1))
    img = adm_generate(model, g, rep=rep, steps=10, sampler="ddpm", diffusion=s["diffusion"])
    assert img.shape == (1, 3, 32, 32) and img.abs().max() <= 1.0 + 1e-6 and torch.isfinite(img).all()
    u8 = (to_unit(img) * 255).clamp(0, 255).to(torch.uint8)
    assert u8.dtype == torch.uint8 and u8.float().std() > 0
    again = adm_generate(model, [torch.Generator().manual_seed(7)], rep=rep, steps=5, sampler="ddim",
                         diffusion=s["diffusion"])
    assert again.shape == (1, 3, 32, 32) and again.abs().max() <= 1.0
    with pytest.raises(ValueError, match="null_rep"):             # the official ADM has no unconditional branch
        adm_generate(model, g, rep=rep, steps=5, guidance=1.0)


def test_inference_without_args_and_bad_files():
    cfg = ADMConfig(image_size=32, model_channels=64, num_res_blocks=2, channel_mult=(1, 1), attention_resolutions=(1,),
                    num_head_channels=64, use_scale_shift_norm=False)
    model, info = adm_from_official({"model": _official_file(cfg, with_args=False)["model"]}, image_size=32)
    assert model.cfg == cfg and not info["ema"] and info["num_heads_from"].startswith("RCG default")
    assert adm_from_official({"model": _official_file(SMALL, with_args=False)["model"]})[0].cfg.image_size == 256
    assert adm_from_official({"model": _official_file(SMALL, with_args=False)["model"]})[1][
        "num_heads_from"].startswith("unknown")                   # 32 wide: not 64 channels per head
    raw, _ = adm_from_official(_official_file(SMALL), ema=False)
    assert all(torch.equal(v, _official_file(SMALL)["model"][k]) for k, v in raw.state_dict().items())
    with pytest.raises(CheckpointFormatError, match="ADM"):
        adm_from_official({"model": {"x_embedder.proj.weight": torch.zeros(1)}})
    broken = dict(_official_file(SMALL)["model"])
    broken.pop("output_blocks.0.0.skip_connection.weight")
    with pytest.raises(CheckpointFormatError, match="do not fit"):
        adm_from_official({"model": broken, "args": _official_file(SMALL)["args"]})
    with pytest.raises(CheckpointFormatError, match="noise_schedule"):
        adm_sampling({"noise_schedule": "cosine"})
    assert not adm_sampling({"gen_timestep_respacing": "250", "use_ddim": True})["exact"]


@pytest.mark.parametrize("path", _cases())
def test_the_file_is_recognised_converted_and_sampled_as_it_is(path, tmp_path, capsys):
    from rcg.cli import main
    from rcg.official import checkpoint_info
    from rcg.sample import RCGSampler
    companion_io(path, PATTERN)
    info = checkpoint_info(path)
    assert info["kind"] == "adm" and info["ema"] and info["config"]["model_channels"] == 32
    assert main(["convert", str(path), str(tmp_path / "adm")]) == 0
    capsys.readouterr()
    rdm = sorted(p for d in {path.parent, path.parent.parent / "official"} for p in d.glob("rdm_*.pth"))
    assert rdm, "an official RDM fixture to sample representations from"
    direct = RCGSampler(str(path), str(rdm[0]), "cpu")                     # --pixel FILE: its args' sampler
    converted = RCGSampler(str(tmp_path / "adm"), str(rdm[0]), "cpu")
    a = torch.cat(list(direct.stream(2, seed=1, batch_size=2, steps=5)))
    assert a.dtype == torch.uint8 and a.shape == (2, 3, 32, 32)
    assert torch.equal(a, torch.cat(list(converted.stream(2, seed=1, batch_size=2, steps=5))))
    with pytest.raises(ValueError, match="names no encoder"):
        direct.reps_from_images(a)
