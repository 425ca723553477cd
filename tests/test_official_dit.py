"""Parity with the official RCG DiT: every ``dit_*.pth`` + ``dit_*_io.safetensors`` in the fixture folder.

Dimensions, heads and the set of stored tensors come from the files (weights, io metadata), never assumed. Every
io key must be an input or an output this test recomputes; anything else fails. Official semantics (fixture
README section 5): ``out_raw`` / ``out_ema`` = ``forward(x, t, y, rep)``, ``out_uncond_ema`` = forward with
``fake_latent`` (our ``null_rep``), ``out_cfg_*`` = ``forward_with_cfg`` over the doubled batch [x; x] with reps
[rep; fake_latent] at scale ``cfg_scale`` (= 1 + tau), guidance on the first 3 channels only.
"""
import functools

import pytest
import torch
from conftest import assert_close, companion_io, fixture_cases, read_io

from rcg.official import checkpoint_info, convert, dit_from_official, safe_load
from rcg.config import PixelRun
from rcg.guidance import guided_pass
from rcg.pixel.dit import DiT, sincos_pos_embed
from rcg.store import WEIGHTS, load_tensors, read_config
from rcg.tree import from_dict

PATTERN = "dit_*.pth"
ATOL = 1e-5
INPUTS = {"x", "t", "y", "rep", "cfg_scale"}
OUTPUTS = {"out_raw", "out_ema", "out_uncond_ema", "out_cfg_raw", "out_cfg_ema"}


def _cases():
    return fixture_cases(PATTERN)


def _require(path):
    return companion_io(path, PATTERN)


@functools.lru_cache(maxsize=None)
def _load(path):
    io, meta = read_io(_require(path))
    meta = meta.get("config", {})
    heads = meta.get("num_heads")
    raw, info_raw = dit_from_official(path, ema=False, num_heads=heads)
    ema, info_ema = dit_from_official(path, ema=True, num_heads=heads)
    return io, meta, raw, info_raw, ema, info_ema


def _close(name, got, want, atol=ATOL):
    assert_close(name, got, want, atol)


def _cond(io, model):
    """(rep, labels) for our forward: the rep for cond="rep", the labels y for a class-conditional file."""
    if model.cfg.cond == "rep":
        if "rep" not in io:
            pytest.fail("representation-conditioned DiT but the io file has no 'rep'")
        return io["rep"], None
    return None, io["y"]


@pytest.mark.parametrize("path", _cases())
def test_io_keys_are_all_known(path):
    io, meta = _load(path)[:2]
    unknown = sorted(set(io) - INPUTS - OUTPUTS)
    assert not unknown, f"{path.name}: io keys this test cannot check: {unknown}"
    assert {"x", "t"} <= set(io) and set(io) & OUTPUTS, f"{path.name}: no inputs / outputs"
    for which in meta.get("cfg_outputs", []):                     # what the metadata promises is present
        assert f"out_cfg_{which}" in io and "cfg_scale" in io, f"out_cfg_{which} / cfg_scale missing"
    if meta.get("store_uncond"):
        assert "out_uncond_ema" in io


@pytest.mark.parametrize("path", _cases())
def test_config_inferred(path):
    io, meta, raw, info_raw, ema, info_ema = _load(path)
    c = raw.cfg
    assert info_ema["ema"] == isinstance(safe_load(path).get("model_ema"), dict) and not info_raw["ema"]
    assert c == ema.cfg
    for key in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
                "learn_sigma", "rep_dim"):
        if key in meta:
            assert getattr(c, key) == meta[key], (key, getattr(c, key), meta[key])
    assert tuple(io["x"].shape[1:]) == (c.in_channels, c.input_size, c.input_size)
    assert info_raw["pos_embed_is_sincos"]                       # the official table equals ours
    sd = safe_load(path)["model"]
    assert torch.equal(raw.pos_embed[0], sd["pos_embed"][0]) and torch.equal(
        sincos_pos_embed(c.hidden_size, c.grid), sd["pos_embed"][0])
    if c.cond == "rep":
        assert torch.equal(raw.null_rep, sd["fake_latent"]) and info_raw["dropped"] == ["y_embedder.embedding_table."
                                                                                         "weight"]


@pytest.mark.parametrize("path", _cases())
@pytest.mark.parametrize("which", ["raw", "ema"])
def test_forward(path, which):
    io, meta, raw, _, ema, _ = _load(path)
    model = raw if which == "raw" else ema
    if f"out_{which}" not in io:
        pytest.skip(f"no out_{which} in this io file")
    rep, labels = _cond(io, model)
    with torch.no_grad():
        _close(f"out_{which}", model(io["x"], io["t"], rep, labels), io[f"out_{which}"])


@pytest.mark.parametrize("path", _cases())
def test_uncond_ema(path):
    io, _, _, _, ema, _ = _load(path)
    if "out_uncond_ema" not in io:
        pytest.skip("no out_uncond_ema in this io file")
    B = io["x"].shape[0]
    with torch.no_grad():
        _close("out_uncond_ema", ema(io["x"], io["t"], null=torch.ones(B, dtype=torch.bool),
                                     labels=None if ema.cfg.cond == "rep" else io["y"]), io["out_uncond_ema"])
        if ema.cfg.cond == "rep":                                   # rep=None means null_rep for every sample
            _close("out_uncond_ema (rep=None)", ema(io["x"], io["t"]), io["out_uncond_ema"])


@pytest.mark.parametrize("path", _cases())
@pytest.mark.parametrize("which", ["raw", "ema"])
def test_forward_with_cfg(path, which):
    """guided_pass(official_first3=True, tau = s - 1) is the first half of the official [g; g] batch; its
    second half is [g on the first 3 channels, the unconditional outputs on the others]."""
    io, meta, raw, _, ema, _ = _load(path)
    key = f"out_cfg_{which}"
    if key not in io:
        pytest.skip(f"no {key} in this io file")
    model = raw if which == "raw" else ema
    rep, labels = _cond(io, model)
    B, s = io["x"].shape[0], float(io["cfg_scale"])
    want = io[key]
    assert want.shape[0] == 2 * B, f"{key}: expected the doubled batch of {2 * B}, got {want.shape[0]}"
    with torch.no_grad():
        C = model.cfg.in_channels
        got = guided_pass(model, (io["x"], io["t"], rep, labels), s - 1.0, C, official_first3=True)
        _close(f"{key}[:B]", got, want[:B])
        uncond = model(io["x"], io["t"], labels=labels, null=torch.ones(B, dtype=torch.bool))
        _close(f"{key}[B:]", torch.cat([got[:, :3], uncond[:, 3:]], 1), want[B:])
        # our default guidance differs from the quirk exactly on the 4th eps channel, by design
        ours = guided_pass(model, (io["x"], io["t"], rep, labels), s - 1.0, C)
        _close(f"{key} ours, first 3", ours[:, :3], want[:B, :3])
        cond = model(io["x"], io["t"], rep, labels)
        _close(f"{key} ours, variance channels", ours[:, C:], cond[:, C:], 1e-6)


@pytest.mark.parametrize("path", _cases())
def test_info_and_convert(path, tmp_path):
    io, meta, raw, _, ema, info_ema = _load(path)
    heads = meta.get("num_heads")
    info = checkpoint_info(path, num_heads=heads)
    assert info["kind"] == "dit" and info["supported"] and info["params"] == sum(p.numel() for p in ema.parameters())
    assert info["config"]["hidden_size"] == ema.cfg.hidden_size and info["num_heads"] == ema.cfg.num_heads
    assert info["ema"] == info_ema["ema"]
    res = convert(path, tmp_path / "conv", num_heads=heads)
    assert res["kind"] == "dit" and res["load_with"].startswith("rcg.loaders.load('pixel'")
    run = from_dict(PixelRun, read_config(tmp_path / "conv"))
    model = DiT(run.model)
    model.load_state_dict(load_tensors(tmp_path / "conv" / WEIGHTS)[0])
    model.eval()
    assert isinstance(model, DiT) and model.cfg == ema.cfg and not model.training
    assert run.guidance == info_ema["sampling"]["guidance"] and run.official_first3 and run.generator == "dit"
    assert run.steps == info_ema["sampling"]["steps"] and run.sampler == "ddpm"
    assert (run.diffusion.num_steps, run.diffusion.beta_start, run.diffusion.beta_end, run.diffusion.parameterization,
            run.diffusion.schedule, run.diffusion.learn_sigma) == (1000, 1e-4, 0.02, "eps", "linear", ema.cfg.learn_sigma)
    rep, labels = _cond(io, model)
    with torch.no_grad():
        assert torch.equal(model(io["x"], io["t"], rep, labels), ema(io["x"], io["t"], rep, labels))
        if "out_ema" in io:
            _close("converted out_ema", model(io["x"], io["t"], rep, labels), io["out_ema"])
