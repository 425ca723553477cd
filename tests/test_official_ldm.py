"""Parity with the official RCG LDM: every ``ldm_*.pth`` + ``ldm_*_io.safetensors`` in the fixture folders.

Dimensions, file names and the set of stored tensors are read from the files, never assumed: the architecture
from the checkpoint's tensors, the values the tensors do not hold (heads, latent size) from the yaml stored in the
io file's metadata (``config.ldm_yaml``). Every key of the io file must be an input or a tensor this test
recomputes. Latents of a few hundred (random weights: ``1 / sqrt(abar)`` ~ 80 at the first step) are compared
relative to their magnitude.
"""
import argparse
import functools
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_close, companion_io, fixture_cases, read_io

import rcg.diffusion
from rcg.diffusion import GaussianDiffusion
from rcg.official import safe_load
from rcg.official.ldm import ldm_from_official
from rcg.pixel import ldm as L
from rcg.pixel.ldm_autoencoder import FirstStageConfig
from rcg.pixel.ldm_unet import CrossAttention
from rcg.tokenizer import VQModel

PATTERN = "ldm_*.pth"
INPUTS = {"images_uint8", "images", "x_t", "t", "rep", "x_T", "z_rand", "cfg_scale", "cfg_rep_uncond"}
FIRST_STAGE = {"enc_h", "z", "ids", "z_q", "decoded", "ids_rand", "decoded_rand", "decoded_rand_noquant"}
OTHER = {"out_raw", "out_ema", "betas", "alphas_cumprod", "cfg_out_cond_ema", "cfg_out_uncond_ema", "cfg_first_x",
         "cfg_first_pred_x0"}
DDIM_KEY = re.compile(r"ddim(\d+)_(?:(timesteps|alphas|alphas_prev)|eta(\d+)_(sigmas|first_noise|first_x|"
                      r"first_pred_x0|z0|images))")
ATOL, ATOL_NET, ATOL_SIGMA, REL = 1e-4, 1e-5, 1e-7, 1e-5


def _cases():
    return fixture_cases(PATTERN)


@functools.lru_cache(maxsize=None)
def _load(path):
    io, meta = read_io(companion_io(path, PATTERN))
    yaml = meta.get("config", {}).get("ldm_yaml")
    raw, info = ldm_from_official(path, ema=False, preset=yaml)
    ema, info_ema = ldm_from_official(path, ema=True, preset=yaml)
    return io, meta, raw, info, ema, info_ema


def _close(name, got, want, atol=ATOL):
    assert_close(name, got, want, atol)


def _close_rel(name, got, want):
    """Relative to the magnitude: max(ATOL, REL * max|want|)."""
    assert_close(name, got, want, max(ATOL, REL * float(want.abs().max())))


def _ddim_keys(io):
    """{(steps, eta or None): {what: key}} of the io file's DDIM tensors."""
    out = {}
    for k in io:
        m = DDIM_KEY.fullmatch(k)
        if m:
            steps, plain, eta, what = m.groups()
            out.setdefault((int(steps), None if plain else float(eta)), {})[plain or what] = k
    return out


def _same(ours, theirs) -> bool:
    return tuple(ours) == tuple(theirs) if isinstance(theirs, (list, tuple)) else ours == theirs


def _diffusion(info):
    return GaussianDiffusion(**info["diffusion"])


@pytest.mark.parametrize("path", _cases())
def test_io_keys_are_all_known(path):
    io = _load(path)[0]
    unknown = [k for k in io if k not in INPUTS | FIRST_STAGE | OTHER and not DDIM_KEY.fullmatch(k)]
    assert not unknown, f"{path.name}: io keys this test cannot check: {unknown}"
    stochastic = [k for (s, eta), keys in _ddim_keys(io).items() if eta for w, k in keys.items()
                  if w in ("z0", "images")]
    assert not stochastic, f"full eta > 0 runs need every step's noise, not stored: {stochastic}"


@pytest.mark.parametrize("path", _cases())
def test_config_inferred(path):
    _, meta, raw, info, _, info_ema = _load(path)
    c = raw.cfg
    assert info["kind"] == "ldm" and not info["ema"] and not raw.training
    assert info_ema["ema"] == any(k.startswith("model_ema.diffusion_model") for k in safe_load(path)["model"])
    params = meta.get("config", {}).get("ldm_yaml", {}).get("model", {}).get("params", {})
    unet = params.get("unet_config", {}).get("params", {})
    for k in ("model_channels", "num_res_blocks", "channel_mult", "attention_resolutions", "transformer_depth",
              "num_head_channels"):
        if k in unet:
            assert _same(getattr(c, k), unet[k]), f"{k}: inferred {getattr(c, k)}, yaml {unet[k]}"
    if "context_dim" in unet:
        assert c.rep_dim == unet["context_dim"]
    if "in_channels" in unet:
        assert c.latent_channels == unet["in_channels"]
    fs = params.get("first_stage_config", {}).get("params", {})
    dd = fs.get("ddconfig", {})
    for k, ours in (("ch", "ch"), ("ch_mult", "ch_mult"), ("num_res_blocks", "num_res_blocks"),
                    ("attn_resolutions", "attn_resolutions"), ("z_channels", "z_channels"), ("resolution", "resolution"),
                    ("in_channels", "in_channels"), ("out_ch", "out_channels")):
        if k in dd:
            assert _same(getattr(c.first_stage, ours), dd[k]), f"first stage {k}: {getattr(c.first_stage, ours)}"
    for k in ("embed_dim", "n_embed"):
        if k in fs:
            assert getattr(c.first_stage, k) == fs[k], k
    if "image_size" in params:
        assert c.latent_size == params["image_size"]
    if "pretrained_enc_config" in params or info["has_pretrained_encoder"]:
        assert c.cond == "rep" and info["dropped"][:1] == ["cond_stage_model.embedding.weight"]
    assert c.scale_factor == meta.get("config", {}).get("scale_factor", c.scale_factor)
    assert info["schedule_matches"] and info["sources"]["schedule"] == "schedule buffers"
    # without the yaml, what is not stored comes from the paper's preset, and info says so
    _, info_default = ldm_from_official(path, ema=False)
    assert info_default["sources"]["num_head_channels"] == "preset 'ldm-8'"


@pytest.mark.parametrize("path", _cases())
def test_schedule_buffers_match(path):
    io, _, _, info, _, _ = _load(path)
    sd = safe_load(path)["model"]
    gd = _diffusion(info)
    checked = 0
    for name, ours in gd.named_buffers():
        for src, tensors in (("checkpoint", sd), ("io", io)):
            if name in tensors:
                assert ours.dtype == tensors[name].dtype == torch.float32
                _close(f"{path.name} {src} {name}", ours, tensors[name], atol=0.0)
                checked += 1
    assert checked >= 2, "no schedule buffers to compare"


@pytest.mark.parametrize("path", _cases())
def test_first_stage(path):
    io, _, raw, _, _, _ = _load(path)
    fs = raw.first_stage_model
    with torch.no_grad():
        if "images_uint8" in io:
            _close("images", L.to_model_range(io["images_uint8"]), io["images"], atol=0.0)
        x = io["images"]
        got = {"enc_h": fs.encoder(x), "z": raw.encode(x), "decoded": raw.decode(raw.encode(x))}
        got["z_q"], got["ids"] = fs.codes(got["z"] / raw.cfg.scale_factor)
        if "z_rand" in io:
            got["ids_rand"] = fs.codes(io["z_rand"] / raw.cfg.scale_factor)[1]
            got["decoded_rand"] = raw.decode(io["z_rand"])
            got["decoded_rand_noquant"] = raw.decode(io["z_rand"], force_not_quantize=True)
    missing = FIRST_STAGE - set(got)
    assert not missing, missing
    for k in sorted(FIRST_STAGE & set(io)):
        if k.startswith("ids"):
            assert got[k].dtype == io[k].dtype == torch.int64 and torch.equal(got[k], io[k]), f"{k} differ"
        else:
            _close(f"{path.name} {k}", got[k], io[k])
    assert "z" in io and "decoded" in io, "io file lacks the first-stage tensors"


@pytest.mark.parametrize("path", _cases())
def test_unet_outputs(path):
    io, _, raw, _, ema, info_ema = _load(path)
    with torch.no_grad():
        for key, model in (("out_raw", raw), ("out_ema", ema)):
            assert key in io, f"io file lacks {key}"
            if key == "out_ema":
                assert info_ema["ema"]
            _close(f"{path.name} {key}", model(io["x_t"], io["t"], io["rep"]), io[key], ATOL_NET)


def _official_sigmas(alphas, alphas_prev, eta):
    """The official make_ddim_sampling_parameters: ``ndarray / tensor`` = float32 reciprocal times float64."""
    return eta * torch.sqrt(torch.reciprocal(1 - alphas).double() * (1 - alphas_prev) * (1 - alphas.double() / alphas_prev))


@pytest.mark.parametrize("path", _cases())
def test_ddim_schedules(path):
    io, _, _, info, _, _ = _load(path)
    gd = _diffusion(info)
    groups = _ddim_keys(io)
    assert groups, "io file has no DDIM tensors"
    for (S, eta), keys in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1)):
        ts, alphas, alphas_prev, sigmas = gd.ddim_coefficients(S, eta or 0.0)
        if "timesteps" in keys:
            want = io[keys["timesteps"]]
            assert want.dtype == torch.int64 and torch.equal(ts, want), f"ddim{S}_timesteps differ"
        for what, ours in (("alphas", alphas), ("alphas_prev", alphas_prev)):
            if what in keys:
                assert ours.dtype == io[keys[what]].dtype
                _close(f"{path.name} {keys[what]}", ours, io[keys[what]], atol=0.0)
        if "sigmas" in keys:
            _close(f"{path.name} {keys['sigmas']}", sigmas, io[keys["sigmas"]], ATOL_SIGMA)
            _close(f"{path.name} {keys['sigmas']} (official quirk)", _official_sigmas(alphas, alphas_prev, eta),
                   io[keys["sigmas"]], 1e-15)


@pytest.mark.parametrize("path", _cases())
def test_ddim_first_steps_and_runs(path, monkeypatch):
    io, _, _, info, ema, _ = _load(path)
    gd = _diffusion(info)
    checked = 0
    for (S, eta), keys in _ddim_keys(io).items():
        if eta is None or not keys.keys() & {"first_x", "first_pred_x0", "z0", "images"}:
            continue
        if eta > 0:                                  # the first step's draw is stored; later draws are zeros
            assert "first_noise" in keys, f"ddim{S} eta {eta} first step stored without its noise"
            draws = iter([io[keys["first_noise"]]])
            monkeypatch.setattr(rcg.diffusion, "_noise", lambda x, g: next(draws, torch.zeros_like(x)))
        z0, (first_x, first_pred) = gd.ddim_sample(lambda x, t: ema(x, t, io["rep"]), io["x_T"], S, eta,
                                                   return_first=True)
        monkeypatch.undo()
        got = {"first_x": first_x, "first_pred_x0": first_pred, "z0": z0}
        for what in ("first_x", "first_pred_x0", "z0"):
            if what in keys:
                (_close if what == "first_x" else _close_rel)(f"{path.name} {keys[what]}", got[what], io[keys[what]])
                checked += 1
        if "images" in keys:                         # gen_imgs' tail, through the registry's sampler path
            images = L.to_unit(L.ldm_generate(ema, gd, None, io["rep"], steps=S, eta=eta, x_T=io["x_T"]))
            _close(f"{path.name} {keys['images']}", images, io[keys["images"]])
            _close(f"{path.name} {keys['images']} from z0", L.to_unit(ema.decode(z0)), io[keys["images"]])
            checked += 1
    assert checked, "io file has no DDIM sampler outputs"


@pytest.mark.parametrize("path", _cases())
def test_guidance(path):
    io, _, _, info, ema, _ = _load(path)
    if "cfg_scale" not in io:
        pytest.skip("this fixture stores no guidance tensors")
    gd = _diffusion(info)
    S = next(s for (s, eta) in _ddim_keys(io) if eta == 0.0)       # the deterministic schedule of the file
    tau = float(io["cfg_scale"]) - 1.0                             # official scale s = 1 + tau
    t = torch.full((io["x_T"].shape[0],), int(gd.ddim_timesteps(S)[-1]))
    with torch.no_grad():
        _close(f"{path.name} cfg_out_cond_ema", ema(io["x_T"], t, io["rep"]), io["cfg_out_cond_ema"], ATOL_NET)
        _close(f"{path.name} cfg_out_uncond_ema", ema(io["x_T"], t, io["cfg_rep_uncond"]), io["cfg_out_uncond_ema"],
               ATOL_NET)
    _, (first_x, first_pred) = gd.ddim_sample(
        lambda x, tt: L.ldm_eps(ema, x, tt, io["rep"], guidance=tau, uncond=io["cfg_rep_uncond"]), io["x_T"], S, 0.0,
        return_first=True)
    _close(f"{path.name} cfg_first_x", first_x, io["cfg_first_x"])
    _close_rel(f"{path.name} cfg_first_pred_x0", first_pred, io["cfg_first_pred_x0"])


# ------------------------------------------------------------------------------------------------------------
# a random-weight file in the official layout -> ours -> an image
# ------------------------------------------------------------------------------------------------------------
TINY = L.LDMConfig(model_channels=32, num_res_blocks=1, attention_resolutions=(2,), channel_mult=(1, 2),
                   num_head_channels=16, rep_dim=24,          # official files: GroupNorm(32) everywhere
                   first_stage=FirstStageConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                                                z_channels=3, embed_dim=3, n_embed=32, resolution=16))


def _official_layout(model, ema_offset=0.01):
    """Our LDM written as main_ldm.py's save_model does (test-only helper)."""
    sd = {k: v for k, v in GaussianDiffusion(**L.LDM_DIFFUSION).named_buffers()
          if k in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod")}
    for k, v in model.diffusion_model.state_dict().items():
        sd["model.diffusion_model." + k] = v.clone()
        sd["model_ema." + ("diffusion_model." + k).replace(".", "")] = v.clone() + ema_offset
    sd["model_ema.decay"], sd["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(7, dtype=torch.int32)
    sd.update({"first_stage_model." + k: v.clone() for k, v in model.first_stage_model.state_dict().items()})
    sd["cond_stage_model.embedding.weight"] = torch.randn(10, model.cfg.rep_dim)
    args = argparse.Namespace(config="config/ldm/cin-ldm-vq-f8-repcond.yaml", ldm_steps=200, eta=1.0)
    return {"model": sd, "model_ema": None, "optimizer": {}, "epoch": 3, "scaler": None, "args": args}


def _run(cfg, **kw):
    return SimpleNamespace(model=cfg, diffusion=dict(L.LDM_DIFFUSION), steps=4, eta=1.0, guidance=0.0,
                           sampler="ddim", sample_bf16=False, **kw)


def test_random_official_layout_to_an_image(tmp_path):
    torch.manual_seed(0)
    src = L.LDM(TINY).eval()
    with torch.no_grad():
        for p in src.diffusion_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        src.first_stage_model.quantize.embedding.weight.normal_()
    path = tmp_path / "ldm_random.pth"
    torch.save(_official_layout(src), path)
    raw, info = ldm_from_official(path, ema=False, preset=TINY)
    ema, info_ema = ldm_from_official(path, preset=TINY)
    assert raw.cfg == TINY and info["cond"] == "rep" and info_ema["ema"] and not info["ema"]
    assert info["sampling"] == {"sampler": "ddim", "steps": 200, "eta": 1.0, "guidance": 0.0}
    assert info["dropped"] == ["cond_stage_model.embedding.weight"] and info["epoch"] == 3
    x, t, rep = torch.randn(2, 3, 8, 8), torch.tensor([0, 999]), torch.randn(2, 24)
    with torch.no_grad():
        assert torch.equal(raw(x, t, rep), src(x, t, rep))
        assert not torch.allclose(ema(x, t, rep), raw(x, t, rep))
        images = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
        assert torch.equal(raw.encode(L.to_model_range(images)), src.encode(L.to_model_range(images)))
    sample = L.sampler(ema, _run(TINY))
    out = L.to_unit(sample(torch.randn(1, 24), None, [torch.Generator().manual_seed(5)]))
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert L.image_shape(_run(raw.cfg)) == (3, 16)
    with pytest.raises(ValueError, match="rep_drop_prob"):       # the official LDM's null_rep is untrained
        sample(torch.randn(1, 24), None, [torch.Generator().manual_seed(5)], guidance=1.0)
    x_t = torch.randn(1, 3, 8, 8)
    with torch.no_grad():                                          # guidance with an explicit uncond context
        cond, unc = ema(x_t, t[:1], rep[:1]), ema(x_t, t[:1], torch.zeros(1, 24))
        g = L.ldm_eps(ema, x_t, t[:1], rep[:1], guidance=1.0, uncond=torch.zeros(1, 24))
    assert torch.allclose(g, 2 * cond - unc, atol=1e-5)


def test_train_on_our_tokenizer_first_stage():
    """rcg-vq first stage (our tokenizer family), sized from the data, rep dropout: the loss trains the U-Net
    (and null_rep) only."""
    torch.manual_seed(0)
    fs = FirstStageConfig(kind="rcg-vq", in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(), z_channels=4, embed_dim=4, n_embed=16, resolution=16, num_groups=4)
    cfg = L.sized(L.LDMConfig(model_channels=16, num_res_blocks=1, attention_resolutions=(1,), channel_mult=(1,),
                              num_head_channels=8, num_groups=8, rep_drop_prob=0.5, first_stage=fs),
                  {"images_shape": (10, 1, 32, 32), "rep_dim": 12})
    assert cfg.first_stage.resolution == 32 and cfg.latent_size == 16 and cfg.rep_dim == 12
    model = L.LDM(cfg)
    vq = VQModel(cfg.first_stage.vq_config())
    L.install_first_stage(model, vq)
    assert torch.equal(model.first_stage_model.vq.decoder.conv_out.weight, vq.decoder.conv_out.weight)
    assert not any(p.requires_grad for p in model.first_stage_model.parameters())
    assert L.fit_scale_factor(model, torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)) > 0
    loss_of = L.trainer(model.train(), _run(cfg))
    assert not model.first_stage_model.training
    x = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    loss, _ = loss_of(x[2:], torch.randn(2, 12), None, torch.Generator().manual_seed(1), slice(2, 4), 4)
    loss.backward()
    assert torch.isfinite(loss) and model.null_rep.grad is not None
    assert model.diffusion_model.input_blocks[0][0].weight.grad is not None
    dit_like = _run(cfg)
    dit_like.diffusion = {**L.LDM_DIFFUSION, "learn_sigma": True}
    with pytest.raises(ValueError, match="learn_sigma"):
        L.trainer(model, dit_like)


def test_trainer_v_parameterization_targets_v():
    """fmnist-ldm's option: with parameterization "v" the loss is the MSE to sqrt(abar) eps - sqrt(1 - abar) z
    (recomputed here from the same draws), not to eps; sampling from a v model stays finite."""
    torch.manual_seed(0)
    cfg = L.LDMConfig(model_channels=16, num_res_blocks=1, attention_resolutions=(1,), channel_mult=(1,),
                      num_head_channels=8, num_groups=8, rep_dim=12,
                      first_stage=FirstStageConfig(kind="rcg-vq", in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2),
                                                   num_res_blocks=1, attn_resolutions=(), z_channels=4, embed_dim=4,
                                                   n_embed=16, resolution=16, num_groups=4))
    model = L.LDM(cfg).eval()
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, rep = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8), torch.randn(4, 12)
    runs = {p: _run(cfg) for p in ("eps", "v")}
    for p, r in runs.items():
        r.diffusion = {**L.LDM_DIFFUSION, "parameterization": p}
    got = {p: L.trainer(model, r)(x, rep, None, torch.Generator().manual_seed(3), slice(0, 4), 4)[0]
           for p, r in runs.items()}
    g = torch.Generator().manual_seed(3)                  # the trainer's draws, in its order
    with torch.no_grad():
        z = model.encode(L.to_model_range(x)).float()
        t = torch.randint(0, 1000, (4,), generator=g)
        noise = torch.randn(z.shape, generator=g)
        # the scaled-linear schedule, from its definition: betas = linspace(sqrt(0.0015), sqrt(0.0195))^2
        betas = torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=torch.float64) ** 2
        ab = torch.cumprod(1 - betas, 0)[t].float()[:, None, None, None]
        out = model(ab.sqrt() * z + (1 - ab).sqrt() * noise, t, rep).float()
    v = ab.sqrt() * noise - (1 - ab).sqrt() * z
    assert torch.allclose(got["v"], ((out - v) ** 2).mean(), rtol=1e-4)
    assert torch.allclose(got["eps"], ((out - noise) ** 2).mean(), rtol=1e-4)
    assert not torch.allclose(got["v"], got["eps"], rtol=1e-2)
    img = L.sampler(model, runs["v"])(rep[:1], None, [torch.Generator().manual_seed(0)])
    assert img.shape == (1, 1, 16, 16) and torch.isfinite(img).all()


def test_context_tokens_let_cross_attention_vary_over_positions():
    """Why ``context_tokens``: with the rep as one context token, softmax over one key is 1, so attn2 adds the same
    vector at every position; with k tokens it differs per position. k = 1 is the rep itself (official); k > 1
    maps rep and null_rep through one Linear, and guidance runs on the k-token contexts."""
    torch.manual_seed(0)
    attn = CrossAttention(16, 12, heads=2, dim_head=8)
    x = torch.randn(2, 9, 16)
    one = attn(x, torch.randn(2, 1, 12))
    assert torch.allclose(one, one[:, :1].expand_as(one), atol=1e-6)     # the same row at all 9 positions
    many = attn(x, torch.randn(2, 4, 12))
    assert (many - many[:, :1]).abs().amax() > 1e-2

    fs = FirstStageConfig(kind="rcg-vq", in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(), z_channels=4, embed_dim=4, n_embed=16, resolution=16, num_groups=4)
    base = dict(model_channels=16, num_res_blocks=1, attention_resolutions=(1,), channel_mult=(1,),
                num_head_channels=8, num_groups=8, rep_dim=12, rep_drop_prob=0.1, first_stage=fs)
    rep = torch.randn(3, 12)
    official = L.LDM(L.LDMConfig(**base))
    assert not hasattr(official, "rep_tokens") and torch.equal(official.context(rep, B=3), rep[:, None])
    model = L.LDM(L.LDMConfig(**base, context_tokens=4)).eval()
    ctx = model.context(rep, B=3)
    W, b = model.rep_tokens.weight, model.rep_tokens.bias
    assert ctx.shape == (3, 4, 12) and torch.allclose(ctx, (rep @ W.T + b).view(3, 4, 12), atol=1e-6)
    null = torch.tensor([True, False, True])
    mixed = model.context(rep, null=null, B=3)
    assert torch.allclose(mixed[0], model.tokens(model.null_rep)[0]) and torch.allclose(mixed[1], ctx[1])
    x_t, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 990])
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        cond, unc = model(x_t, t, rep), model(x_t, t, None, null=torch.ones(3, dtype=torch.bool))
        g = L.ldm_eps(model, x_t, t, rep, guidance=2.0)
    assert torch.allclose(g, cond + 2.0 * (cond - unc), atol=1e-5)
    labelled = L.LDM(L.LDMConfig(**{**base, "cond": "class", "num_classes": 3}, context_tokens=4))
    assert labelled.context(labels=torch.tensor([0, 2]), B=2).shape == (2, 1, 12)    # class: one token still
    with pytest.raises(ValueError, match="context_tokens"):
        L.LDMConfig(**base, context_tokens=0)
