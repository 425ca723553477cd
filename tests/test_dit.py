"""DiT (rcg.pixel.dit) on tiny CPU configs: adaLN-Zero init, condition dropout, guidance (ours and the official
first-3-channels form), names, presets, parameter counts (computed here from the layer shapes)."""
import pytest
import torch

from rcg.pixel import DIT_PRESETS, GENERATORS, DiTConfig, dit_config
from rcg.guidance import guided_pass
from rcg.pixel.dit import DiT, sincos_pos_embed

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, rep_dim=16)


def _model(seed=0, perturb=True, **kw):
    torch.manual_seed(seed)
    m = DiT(DiTConfig(**{**TINY, **kw}))
    if perturb:                                       # make zero-initialised layers non-zero
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _inputs(B=3, seed=1, rep_dim=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    r = torch.randn(B, rep_dim, generator=g)
    return x, t, (r - r.mean(1, keepdim=True)) / r.std(1, keepdim=True)


def test_registry_names_presets():
    assert GENERATORS["dit"].network is DiT and GENERATORS["dit"].config_class is DiTConfig
    xl, large, tiny = DIT_PRESETS["dit-xl-2"], DIT_PRESETS["dit-l-2"], DIT_PRESETS["dit-tiny"]
    assert (xl.hidden_size, xl.depth, xl.num_heads, xl.patch_size, xl.input_size, xl.in_channels) == \
        (1152, 28, 16, 2, 32, 4)
    assert (large.hidden_size, large.depth, large.num_heads, large.patch_size) == (1024, 24, 16, 2)
    assert (tiny.input_size, tiny.in_channels, tiny.out_channels) == (28, 1, 2)
    assert tiny.input_size % tiny.patch_size == 0
    assert dit_config("dit-tiny", depth=2).depth == 2
    keys = set(_model(perturb=False).state_dict())
    for k in ("x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias", "rep_embedder.weight",
              "null_rep", "pos_embed", "blocks.1.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.0.mlp.fc1.weight",
              "blocks.1.mlp.fc2.bias", "blocks.0.adaLN_modulation.1.weight", "final_layer.linear.weight",
              "final_layer.adaLN_modulation.1.bias"):
        assert k in keys, k
    assert not any(k.startswith("y_embedder.") for k in keys) and "fake_latent" not in keys
    m = _model(perturb=False, cond="class", num_classes=5)
    assert m.y_embedder.embedding_table.weight.shape == (6, 32) and not hasattr(m, "rep_embedder")
    no_null = _model(perturb=False, cond="class", num_classes=5, class_dropout_prob=0)
    assert no_null.y_embedder.embedding_table.num_embeddings == 5
    assert "pos_embed" not in dict(m.named_parameters())               # fixed table: a buffer
    with pytest.raises(ValueError, match="num_classes"):
        DiT(DiTConfig(**{**TINY, "cond": "class"}))


def test_pos_embed_layout():
    pe = sincos_pos_embed(8, 3)                      # 9 tokens, 2 frequencies per quarter
    cols, rows = torch.arange(3.0).repeat(3), torch.arange(3.0).repeat_interleave(3)
    w = torch.tensor([1.0, 0.01])                    # 10000^(-k/2)
    for i, pos in enumerate((cols, rows)):           # columns first, then rows; sines, then cosines
        assert torch.allclose(pe[:, 4 * i:4 * i + 2], torch.sin(pos[:, None] * w))
        assert torch.allclose(pe[:, 4 * i + 2:4 * i + 4], torch.cos(pos[:, None] * w))


def test_adaln_zero_init_ignores_conditioning():
    m = _model(perturb=False)
    x, t, rep = _inputs()
    with torch.no_grad():
        out = m(x, t, rep)
        assert out.shape == (3, 8, 8, 8) and torch.equal(out, torch.zeros_like(out))   # final layer zero
        h = m.x_embedder(x) + m.pos_embed
        c = m.condition(t, rep)
        for blk in m.blocks:                                                         # gates zero: identity
            assert torch.equal(blk(h, c), h)
        torch.nn.init.normal_(m.final_layer.linear.weight)                           # output depends on x now
        out1, out2 = m(x, t, rep), m(x, t.flip(0), -rep)
        assert out1.abs().max() > 0.1 and torch.equal(out1, out2)                    # but not on t / rep
        assert not torch.equal(out1, m(x + 1, t, rep))


def test_rep_dropout():
    m = _model(rep_drop_prob=1.0)
    x, t, rep = _inputs()
    with torch.no_grad():
        m.train()
        a, b = m(x, t, rep), m(x, t, torch.randn_like(rep))
        assert torch.equal(a, b)                                       # prob 1: every rep replaced by null_rep
        m.eval()
        assert torch.equal(a, m(x, t, null=torch.ones(3, dtype=torch.bool)))
        assert not torch.allclose(m(x, t, rep), a)                     # eval mode never drops
    m = _model(rep_drop_prob=0.5)
    m.train()
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        drop = m.drop_mask(3, "cpu", torch.Generator().manual_seed(3))
        assert torch.equal(m(x, t, rep, generator=g), m.eval()(x, t, rep, null=drop))


def test_guidance_tau_zero_is_conditional_and_ours():
    m = _model()
    x, t, rep = _inputs()
    with torch.no_grad():
        cond = m(x, t, rep)
        assert torch.equal(guided_pass(m, (x, t, rep, None), 0.0, 4), cond)
        uncond = m(x, t, null=torch.ones(3, dtype=torch.bool))
        g = guided_pass(m, (x, t, rep, None), 1.5, 4)
        assert torch.allclose(g[:, :4], cond[:, :4] + 1.5 * (cond[:, :4] - uncond[:, :4]), atol=1e-5)
        assert torch.allclose(g[:, 4:], cond[:, 4:], atol=1e-6)       # variance channels: conditional
        assert not torch.allclose(g[:, :4], cond[:, :4])


def test_official_first3_leaves_other_channels_unguided():
    m = _model()
    x, t, rep = _inputs()
    tau = 3.0
    with torch.no_grad():
        cond, uncond = m(x, t, rep), m(x, t, null=torch.ones(3, dtype=torch.bool))
        g = guided_pass(m, (x, t, rep, None), tau, 4, official_first3=True)
        assert torch.allclose(g[:, :3], uncond[:, :3] + (1 + tau) * (cond[:, :3] - uncond[:, :3]), atol=1e-5)
        assert torch.allclose(g[:, 3:], cond[:, 3:], atol=1e-6)         # 4th eps channel and variances
        assert not torch.allclose(g[:, 3], guided_pass(m, (x, t, rep, None), tau, 4)[:, 3])


def test_class_mode_and_none():
    m = _model(cond="class", num_classes=5)
    x, t, _ = _inputs()
    y = torch.tensor([0, 4, 2])
    with torch.no_grad():
        out = m(x, t, labels=y)
        assert not torch.allclose(out, m(x, t, labels=y.flip(0)))
        null = m(x, t, labels=y, null=torch.ones(3, dtype=torch.bool))
        assert torch.equal(null, m(x, t, labels=torch.full_like(y, 5)))          # the null-class row
        g = guided_pass(m, (x, t, None, y), 2.0, 4)
        assert torch.allclose(g[:, :4], out[:, :4] + 2.0 * (out[:, :4] - null[:, :4]), atol=1e-5)
        with pytest.raises(ValueError, match="labels"):
            m(x, t)
    m = _model(cond="none")
    with torch.no_grad():
        assert m(x, t).shape == (3, 8, 8, 8)
        with pytest.raises(ValueError, match="no guidance"):
            guided_pass(m, (x, t, None, None), 1.0, 4)


def test_learn_sigma_off_and_shapes():
    m = _model(learn_sigma=False)
    x, t, rep = _inputs()
    with torch.no_grad():
        assert m(x, t, rep).shape == (3, 4, 8, 8)
    with pytest.raises(ValueError, match="x must be"):
        m(x[:, :3], t, rep)


def test_batch_independence():
    m = _model()
    x, t, rep = _inputs(B=4)
    with torch.no_grad():
        full = m(x, t, rep)
        assert torch.allclose(full[1:2], m(x[1:2], t[1:2], rep[1:2]), atol=1e-6)


def _lin(i, o):
    return i * o + o


def test_dit_xl_2_parameter_count():
    """DiT-XL/2 with the RCG rep embedder, from the layer shapes: patch conv, time MLP (256 -> H -> H), rep_embedder
    Linear(256 -> H) + null_rep (256), 28 blocks (qkv, proj, fc1, fc2, adaLN 6H), final layer (p*p*8 and adaLN
    2H). The fixed pos_embed table is a buffer. Cross-check: the class-conditional form plus the 256 x 1152
    pos_embed is the original DiT-XL/2's published 675,129,632."""
    H, p, C, depth, M = 1152, 2, 4, 28, 4608
    block = _lin(H, 3 * H) + _lin(H, H) + _lin(H, M) + _lin(M, H) + _lin(H, 6 * H)
    trunk = C * p * p * H + H + _lin(256, H) + _lin(H, H) + depth * block + _lin(H, p * p * 2 * C) + _lin(H, 2 * H)
    with torch.device("meta"):
        rep = DiT(DIT_PRESETS["dit-xl-2"])
        cls = DiT(dit_config("dit-xl-2", cond="class", num_classes=1000))
    n = lambda m: sum(q.numel() for q in m.parameters())  # noqa: E731
    assert n(rep) == trunk + _lin(256, H) + 256 == 673_977_888
    assert n(cls) == trunk + 1001 * H and n(cls) + 256 * H == 675_129_632
    assert rep.pos_embed.shape == (1, 256, H)


def test_converted_run_roundtrip(tmp_path):
    """A converted-DiT run directory (config.json = PixelRun with the official recipe, checkpoint.safetensors)
    reads back exactly."""
    from rcg.config import PixelRun
    from rcg.store import WEIGHTS, load_tensors, prepare_run_dir, read_config, save_tensors
    from rcg.tree import to_dict
    m = _model()
    run = PixelRun(generator="dit", model=m.cfg, steps=25, guidance=3.0, official_first3=True,
                   autoencoder="stabilityai/sd-vae-ft-ema")
    d, _ = prepare_run_dir(tmp_path / "run", to_dict(run))
    save_tensors(d / WEIGHTS, m.state_dict())
    run2, m2 = PixelRun.from_plain(read_config(d)), DiT(run.model).eval()
    m2.load_state_dict(load_tensors(d / WEIGHTS)[0])
    assert run2 == run
    x, t, rep = _inputs()
    with torch.no_grad():
        assert torch.equal(m2(x, t, rep), m(x, t, rep))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_cpu_sampler_chunks_rows_without_changing_images(monkeypatch, sampler):
    """On a CPU the registry sampler runs CPU_ROWS rows at a time: the images equal one full-batch run."""
    from rcg.config import PixelRun
    from rcg.pixel import dit as D
    from rcg.pixel import rows
    m = _model()
    run = PixelRun(generator="dit", model=m.cfg, steps=5, sampler=sampler, eta=1.0)
    rep = _inputs(B=5)[2]
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(5)]        # noqa: E731
    whole = D.sampler(m, run)(rep, None, gens())
    monkeypatch.setattr(rows, "CPU_ROWS", 2)                 # 2 + 2 + 1 rows
    calls = []
    real = D.dit_generate
    monkeypatch.setattr(D, "dit_generate", lambda model, diff, g, **k: calls.append(len(g)) or real(model, diff, g, **k))
    chunked = D.sampler(m, run)(rep, None, gens())
    assert calls == [2, 2, 1] and chunked.shape == whole.shape
    assert torch.allclose(chunked, whole, atol=1e-5)
