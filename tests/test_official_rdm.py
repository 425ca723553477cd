"""Parity with the official RCG RDM: every ``rdm_*.pth`` + ``rdm_*_io.safetensors`` in the fixture folder.

Dimensions, file names and the set of stored tensors are read from the files, never assumed. Every key of
the io file must be either an input or a tensor this test knows how to recompute; anything else fails.
"""
import functools
import re

import pytest
import torch
from conftest import assert_close, companion_io, fixture_cases, read_io

from rcg.diffusion import GaussianDiffusion
from rcg.official import mocov3_from_official, rdm_from_official

PATTERN = "rdm_*.pth"
ATOL = 1e-4
INPUTS = {"x", "t", "labels", "x_T"}
DDIM_KEY = re.compile(r"ddim(\d+)_(x0|first_x|first_pred_x0|timesteps|alphas|alphas_prev|sigmas)")


def _cases():
    return fixture_cases(PATTERN)


def _require(path):
    return companion_io(path, PATTERN)


@functools.lru_cache(maxsize=None)
def _load(path):
    io_path = _require(path)
    io, meta = read_io(io_path)
    raw, info_raw = rdm_from_official(path, ema=False)
    ema, info_ema = rdm_from_official(path, ema=True)
    return io, meta, raw, info_raw, ema, info_ema


def _close(name, got, want, atol=ATOL):
    assert_close(name, got, want, atol)


def _diffusion(info):
    d = info["diffusion"]          # the schedule read from the checkpoint's buffers
    return GaussianDiffusion(d["num_steps"], d["beta_start"], d["beta_end"])


def _labels(io, model):
    if model.cfg.num_classes > 0 and "labels" not in io:
        pytest.fail("class-conditional RDM but the io file has no 'labels'")
    return io.get("labels") if model.cfg.num_classes > 0 else None


@pytest.mark.parametrize("path", _cases())
def test_io_keys_are_all_known(path):
    io = _load(path)[0]
    unknown = [k for k in io if k not in INPUTS | {"out_raw", "out_ema"} and not DDIM_KEY.fullmatch(k)]
    assert not unknown, f"{path.name}: io keys this test cannot check: {unknown}"
    assert {"x", "t"} <= set(io), "io file lacks the network inputs x, t"


@pytest.mark.parametrize("path", _cases())
def test_config_inferred(path):
    io, meta, raw, info, _, info_ema = _load(path)
    cfg = meta.get("config", {})
    c = raw.cfg
    expect = {"in_channels": c.in_channels, "time_embed_dim": c.time_embed_dim, "model_channels": c.model_channels,
              "bottleneck_channels": c.bottleneck, "num_res_blocks": c.num_res_blocks}
    for k, v in expect.items():
        if k in cfg:
            assert cfg[k] == v, f"{k}: inferred {v}, fixture says {cfg[k]}"
    for flag in ("use_context", "class_cond"):
        if flag in cfg:
            assert (c.num_classes > 0) == bool(cfg[flag]), f"{flag}={cfg[flag]} but num_classes={c.num_classes}"
    if c.num_classes > 0 and "n_classes" in cfg:
        assert c.num_classes == cfg["n_classes"]
    assert info["kind"] == "rdm" and info["ema"] is False
    if "out_ema" in io:
        assert info_ema["ema"], "out_ema expected but no EMA shadows were loaded"
    assert info["diffusion"]["schedule_matches"], info["diffusion"]
    assert not raw.training


@pytest.mark.parametrize("path", _cases())
def test_schedule_buffers_match(path):
    from rcg.official import safe_load
    _require(path)
    sd = safe_load(path)["model"]
    gd = _diffusion(_load(path)[3])
    for name, ours in gd.named_buffers():
        if name in sd:
            assert ours.dtype == sd[name].dtype == torch.float32
            _close(f"{path.name} {name}", ours, sd[name], atol=0.0)


@pytest.mark.parametrize("path", _cases())
def test_network_outputs(path):
    io, _, raw, _, ema, info_ema = _load(path)
    checked = 0
    with torch.no_grad():
        for key, model in (("out_raw", raw), ("out_ema", ema)):
            if key in io:
                if key == "out_ema":
                    assert info_ema["ema"], "out_ema expected but the checkpoint has no EMA shadows"
                _close(f"{path.name} {key}", model(io["x"], io["t"], _labels(io, model)), io[key])
                checked += 1
    assert checked, "io file has neither out_raw nor out_ema"


@pytest.mark.parametrize("path", _cases())
def test_ddim(path):
    io, _, _, info, ema, _ = _load(path)
    gd = _diffusion(info)
    keys = {k: DDIM_KEY.fullmatch(k).groups() for k in io if DDIM_KEY.fullmatch(k)}
    labels = _labels(io, ema)
    for S in sorted({int(s) for s, _ in keys.values()}):
        ts, alphas, alphas_prev, sigmas = gd.ddim_coefficients(S, eta=0.0)
        want = {what: io[k] for k, (s, what) in keys.items() if int(s) == S}
        if "timesteps" in want:
            assert want["timesteps"].dtype == torch.int64
            assert torch.equal(gd.ddim_timesteps(S), want["timesteps"]), f"ddim{S}_timesteps differ"
            assert torch.equal(ts, want["timesteps"])
        for what, ours in (("alphas", alphas), ("alphas_prev", alphas_prev), ("sigmas", sigmas)):
            if what in want:
                _close(f"{path.name} ddim{S}_{what}", ours, want[what], atol=0.0)
        if want.keys() & {"x0", "first_x", "first_pred_x0"}:
            assert "x_T" in io, "DDIM outputs stored without x_T"
            x0, (first_x, first_pred) = gd.ddim_sample(lambda x, t: ema(x, t, labels), io["x_T"], S, eta=0.0,
                                                       return_first=True)
            for what, ours in (("x0", x0), ("first_x", first_x), ("first_pred_x0", first_pred)):
                if what in want:
                    _close(f"{path.name} ddim{S}_{what}", ours, want[what])


def _official_layout(model, ema_offset=0.0):
    """Write our RDM in the official save_model layout (test-only helper, no fixture needed)."""
    sd = {"model.diffusion_model." + k: v.clone() for k, v in model.net.state_dict().items()}
    for k, v in model.net.state_dict().items():
        sd["model_ema." + ("diffusion_model." + k).replace(".", "")] = v.clone() + ema_offset
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(5, dtype=torch.int32)
    sd["cond_stage_model.embedding.weight"] = (model.class_embed.weight.detach().clone() if model.cfg.num_classes
                                               else torch.randn(1, model.cfg.class_embed_dim))  # unused "fake" class
    return {"model": sd, "model_ema": None, "epoch": 3}


@pytest.mark.parametrize("num_classes", [0, 10])
def test_official_layout_roundtrip(num_classes):
    from rcg.rdm import RDM, RDMConfig
    torch.manual_seed(0)
    src = RDM(RDMConfig(in_channels=24, time_embed_dim=16, model_channels=40, num_res_blocks=2,
                        num_classes=num_classes, class_embed_dim=12, bottleneck_channels=32))
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = _official_layout(src, ema_offset=0.01)
    raw, info = rdm_from_official(ckpt, ema=False)
    ema, info_ema = rdm_from_official(ckpt)
    assert raw.cfg == src.cfg and info_ema["ema"] and not info["ema"] and info["epoch"] == 3
    x, t = torch.randn(5, 24), torch.tensor([0, 10, 500, 998, 999])
    labels = torch.arange(5) % max(num_classes, 1) if num_classes else None
    with torch.no_grad():
        assert torch.equal(raw(x, t, labels), src.eval()(x, t, labels))
        assert not torch.allclose(ema(x, t, labels), raw(x, t, labels))
    if num_classes:
        with pytest.raises(ValueError, match="labels"):
            raw(x, t)


@pytest.mark.parametrize("path", _cases())
def test_embedded_pretrained_encoder_loads(path):
    _, _, _, info, _, _ = _load(path)
    if not info["has_pretrained_encoder"]:
        pytest.skip("this RDM file carries no pretrained_encoder")
    enc, einfo = mocov3_from_official(path)
    assert einfo["prefix"] == "pretrained_encoder."
    with torch.no_grad():
        rep = enc.encode(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert rep.shape == (2, einfo["config"]["rep_dim"]) and torch.isfinite(rep).all()
