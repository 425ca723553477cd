"""Our ADM (rcg.pixel.adm): presets, conditioning, representation dropout to a learned null_rep, guidance, the
registry functions (sized, trainer, sampler, to_unit, image_shape) and the guided_diffusion pieces of rcg.diffusion."""
from types import SimpleNamespace

import pytest
import torch

from rcg.config import DIT_DIFFUSION
from rcg.diffusion import official_respacing, space_timesteps
from rcg.guidance import guided, guided_pass
from rcg.pixel import adm
from rcg.pixel.adm import ADM, ADM_PRESETS, ADMConfig, adm_config, adm_diffusion, qkv_attention

TINY = dict(image_size=16, in_channels=1, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
            attention_resolutions=(2,), num_head_channels=32)


def _model(seed=0, **kw) -> ADM:
    torch.manual_seed(seed)
    m = ADM(ADMConfig(**{**TINY, **kw}))
    with torch.no_grad():                          # official init zeroes the output and rep_proj: perturb all
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _inputs(B=3, rep_dim=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 1, 16, 16, generator=g), torch.randint(0, 1000, (B,), generator=g),
            torch.randn(B, rep_dim, generator=g))


def _run(model, **kw):
    return SimpleNamespace(model=model.cfg, diffusion=DIT_DIFFUSION, steps=4, sampler="ddim", eta=0.0, guidance=0.0,
                           sample_bf16=False, **kw)


def test_presets_and_names():
    big = ADM_PRESETS["adm-imagenet256"]
    assert (big.image_size, big.model_channels, big.num_res_blocks, big.channel_mult, big.attention_resolutions,
            big.num_head_channels, big.out_channels, big.rep_drop_prob) == (256, 256, 2, (1, 1, 2, 2, 4, 4),
                                                                            (8, 16, 32), 64, 6, 0.0)
    with torch.device("meta"):
        n = sum(p.numel() for p in ADM(big).parameters())
    assert 552e6 < n < 555e6                                          # paper: 554M
    fm = ADM_PRESETS["adm-fmnist"]
    assert (fm.image_size, fm.in_channels, fm.rep_drop_prob) == (28, 1, 0.1)
    assert adm_config("adm-tiny", num_res_blocks=2).num_res_blocks == 2
    keys = set(_model().state_dict())
    for k in ("time_embed.0.weight", "time_embed.2.bias", "rep_proj.weight", "input_blocks.0.0.weight",
              "input_blocks.1.0.in_layers.2.weight", "input_blocks.3.1.qkv.weight", "middle_block.1.proj_out.bias",
              "output_blocks.0.0.skip_connection.weight", "out.2.weight"):
        assert k in keys, k
    assert "null_rep" not in keys and "null_rep" in set(_model(rep_drop_prob=0.1).state_dict())
    with pytest.raises(ValueError, match="divisible"):
        ADMConfig(**{**TINY, "image_size": 15})
    with pytest.raises(ValueError, match="num_classes"):
        ADM(ADMConfig(**{**TINY, "cond": "class"}))


def test_official_init_outputs_zero():
    m = ADM(ADMConfig(**TINY)).eval()
    x, t, r = _inputs()
    assert torch.equal(m(x, t, r), torch.zeros(3, 2, 16, 16)) and torch.equal(m.rep_proj.weight, torch.zeros(128, 256))


def test_legacy_attention_layout():
    """Legacy order: per head [q_h, k_h, v_h]; the new order: q, k, v blocks split by head; same result after
    permuting the channels; the (C / heads)^(-1/4) scale on both gives softmax(q.k / sqrt(C / heads))."""
    g = torch.Generator().manual_seed(0)
    B, heads, ch, T = 2, 2, 4, 5
    qkv = torch.randn(B, 3 * heads * ch, T, generator=g)
    legacy = qkv_attention(qkv, heads, legacy=True)
    per_head = qkv.view(B, heads, 3, ch, T)
    new = qkv_attention(per_head.permute(0, 2, 1, 3, 4).reshape(B, -1, T), heads, legacy=False)
    assert torch.allclose(legacy, new, atol=1e-6)
    q, k, v = per_head[:, 0].unbind(1)
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / ch ** 0.5, -1)
    assert torch.allclose(legacy[:, :ch], torch.einsum("bts,bcs->bct", w, v), atol=1e-6)


def test_rep_dropout_null_rep_and_guidance():
    m = _model(rep_drop_prob=0.5)
    x, t, r = _inputs()
    with torch.no_grad():
        cond, nul = m(x, t, r), m(x, t, null=torch.ones(3, dtype=torch.bool))
        assert torch.equal(nul, m(x, t))                              # rep=None: null_rep for every sample
        mixed = m(x, t, r, null=torch.tensor([True, False, True]))
        assert torch.allclose(mixed[1], cond[1], atol=1e-6) and torch.allclose(mixed[0], nul[0], atol=1e-6)
        g = guided_pass(m, (x, t, r, None), 1.5, 1)
        assert torch.allclose(g[:, :1], guided(cond[:, :1], nul[:, :1], 1.5), atol=1e-5)
        assert torch.allclose(g[:, 1:], cond[:, 1:], atol=1e-5)       # variance channels: conditional
        assert torch.equal(guided_pass(m, (x, t, r, None), 0.0, 1), cond)
    m.train()                                                         # training draws the dropout from a generator
    a = m(x, t, r, generator=torch.Generator().manual_seed(3))
    b = m(x, t, r, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    official = _model()
    with pytest.raises(ValueError, match="null_rep"):
        official(x, t)


def test_class_and_none():
    x, t, _ = _inputs()
    m = _model(cond="class", num_classes=4, class_dropout_prob=0.1)
    assert m.label_emb.num_embeddings == 5 and not hasattr(m, "rep_proj")
    y = torch.tensor([0, 1, 3])
    with torch.no_grad():
        assert m(x, t, y=y).shape == (3, 2, 16, 16)
        assert not torch.equal(m(x, t, y=y), m(x, t, y=y, null=torch.ones(3, dtype=torch.bool)))
    none = _model(cond="none", learn_sigma=False)
    assert none(x, t).shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match="no null"):
        none(x, t, null=torch.ones(3, dtype=torch.bool))


def test_batch_independence_and_bf16():
    m = _model()
    x, t, r = _inputs(B=4)
    with torch.no_grad():
        full = m(x, t, r)
        assert torch.allclose(full[1:2], m(x[1:2], t[1:2], r[1:2]), atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x, t, r)
    assert low.dtype == torch.bfloat16 and (low.float() - full).abs().max() < 0.1 * full.abs().max() + 0.05


def test_registry_functions():
    m = _model(rep_drop_prob=0.1)
    cfg = adm.sized(ADM_PRESETS["adm-fmnist"], {"images_shape": (10, 3, 32, 32), "rep_dim": 64})
    assert (cfg.in_channels, cfg.image_size, cfg.rep_dim) == (3, 32, 64)
    run = _run(m)
    assert adm.image_shape(run) == (1, 16)
    x = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    _, _, r = _inputs(B=4)
    m.train()
    loss_fn = adm.trainer(m, run)
    loss, metrics = loss_fn(x[:2], r[:2], None, torch.Generator().manual_seed(0), slice(0, 2), 4)
    loss.backward()
    assert torch.isfinite(loss) and metrics == {} and m.null_rep.grad is not None
    m.eval()
    sample = adm.sampler(m, run)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    out = sample(r[:2], None, gens)
    assert out.shape == (2, 1, 16, 16) and out.abs().max() <= 1.0
    one = sample(r[1:2], None, [torch.Generator().manual_seed(6)])
    assert (one - out[1:2]).abs().max() < 1e-3     # per-image seeds (random weights amplify batch-shape rounding)
    guided_out = sample(r[:2], None, [torch.Generator().manual_seed(s) for s in (5, 6)], guidance=2.0)
    assert guided_out.shape == out.shape and not torch.equal(guided_out, out)
    ddpm = SimpleNamespace(**{**vars(run), "sampler": "ddpm", "eta": 0.0})
    assert adm.sampler(m, ddpm)(r[:1], None, [torch.Generator().manual_seed(1)], steps=3).shape == (1, 1, 16, 16)
    eta1 = SimpleNamespace(**{**vars(run), "eta": 1.0})
    assert torch.isfinite(adm.sampler(m, eta1)(r[:1], None, [torch.Generator().manual_seed(1)])).all()
    assert torch.equal(adm.to_unit(torch.tensor([-1.0, 1.0])), torch.tensor([0.0, 1.0]))


def test_guided_diffusion_respacing_and_steps():
    assert official_respacing(1000, "ddim25") == list(range(0, 1000, 40))
    assert official_respacing(1000, "") == list(range(1000))
    assert official_respacing(100, "10,5") == sorted(set(official_respacing(50, 10) + [50 + s for s in
                                                                                          official_respacing(50, 5)]))
    with pytest.raises(ValueError, match="exactly"):
        official_respacing(1000, "ddim600")
    base = adm_diffusion("")
    assert torch.equal(base.timestep_map, torch.arange(1000))
    same = adm_diffusion().subset(space_timesteps(1000, 50))          # respaced(N) = subset(space_timesteps(N))
    assert torch.equal(adm_diffusion().respaced(50).betas64, same.betas64)
    d = adm_diffusion("ddim10")
    x = torch.randn(2, 1, 4, 4)
    out = torch.randn(2, 2, 4, 4)
    t0 = torch.zeros(2, dtype=torch.int64)
    sample, pred = d.ddim_step(out, x, t0)
    assert torch.equal(sample, pred) and pred.abs().max() <= 1.0        # last step: the clipped pred_x0
    s, mean, _, _ = d.p_sample(out, x, t0, None)
    assert torch.equal(s, mean)
    with pytest.raises(ValueError, match="noise"):
        d.p_sample(out, x, torch.ones(2, dtype=torch.int64), None)
