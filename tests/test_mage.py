"""MAGE (rcg.pixel.mage) on tiny CPU configs: masking distribution, decoding schedule, guidance, seeds,
conditioning modes, training loss."""
import math

import pytest
import torch
from scipy import stats

from rcg.guidance import guided, linear_tau
from rcg.pixel import GENERATORS, MAGE_PRESETS, MAGEConfig, mage_config
from rcg.pixel.mage import MAGE
from rcg.pixel.mage_decode import cosine_mask_len, encoder_keep, mage_generate

TINY = dict(codebook_size=32, num_tokens=49, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=32,
            decoder_depth=1, decoder_num_heads=4, rep_dim=8)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return MAGE(MAGEConfig(**{**TINY, **kw}))


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _rep(B, seed=1, dim=8):
    r = torch.randn(B, dim, generator=torch.Generator().manual_seed(seed))
    return (r - r.mean(1, keepdim=True)) / r.std(1, keepdim=True)


def test_registry_presets_and_names():
    assert GENERATORS["mage"].network is MAGE and GENERATORS["mage"].config_class is MAGEConfig
    assert {"mage-b", "mage-l", "mage-tiny"} <= set(MAGE_PRESETS)
    b = MAGE_PRESETS["mage-b"]
    assert (b.embed_dim, b.depth, b.num_heads, b.decoder_embed_dim, b.decoder_depth, b.decoder_num_heads) == \
        (768, 12, 12, 768, 8, 16)
    large = MAGE_PRESETS["mage-l"]
    assert (large.embed_dim, large.depth, large.num_heads, large.decoder_embed_dim, large.decoder_depth) == \
        (1024, 24, 16, 1024, 8)
    assert mage_config("mage-tiny", codebook_size=64).codebook_size == 64
    keys = set(_model().state_dict())
    for k in ("token_emb.word_embeddings.weight", "token_emb.position_embeddings.weight",
              "token_emb.LayerNorm.weight", "latent_prior_proj.weight", "null_rep", "blocks.1.attn.qkv.bias",
              "blocks.0.mlp.fc2.weight", "norm.weight", "decoder_embed.weight", "decoder_pos_embed_learned",
              "decoder_blocks.0.norm1.weight", "decoder_norm.bias", "mlm_layer.fc.weight", "mlm_layer.ln.weight",
              "mlm_layer.bias"):
        assert k in keys, k
    for k in ("cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "fake_latent"):
        assert k not in keys
    assert not any(k.startswith(("patch_embed.", "decoder_pred.", "class_emb.")) for k in keys)
    m = _model(cond="class", num_classes=5)
    assert "class_emb.weight" in m.state_dict() and not hasattr(m, "null_rep")
    c = MAGEConfig(**TINY)
    assert (c.vocab, c.mask_id, c.cond_id) == (33, 32, 32)
    with pytest.raises(ValueError):
        MAGEConfig(**TINY, drop_ratio=0.6)             # dropped tokens must be masked ones
    with pytest.raises(ValueError, match="num_classes"):
        MAGE(MAGEConfig(**TINY, cond="class"))         # needs num_classes (filled from the data by train-pixel)


@pytest.mark.parametrize("mu", [0.75, 0.55])
def test_mask_ratio_distribution(mu):
    m = _model(mask_ratio_mu=mu)
    c = m.cfg
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([m.sample_mask_ratio(g) for _ in range(4000)], dtype=torch.float64)
    a, b = (c.mask_ratio_min - mu) / c.mask_ratio_std, (c.mask_ratio_max - mu) / c.mask_ratio_std
    ref = stats.truncnorm(a, b, loc=mu, scale=c.mask_ratio_std)
    assert draws.min() >= 0.5 and draws.max() <= 1.0
    se = ref.std() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - ref.mean()) < 4 * se, (draws.mean().item(), ref.mean())
    assert stats.kstest(draws.numpy(), ref.cdf).pvalue > 1e-3
    # one draw per call, reproducible from the generator
    g5 = [torch.Generator().manual_seed(5) for _ in range(2)]
    assert m.sample_mask_ratio(g5[0]) == m.sample_mask_ratio(g5[1])


def test_training_masking_and_dropping():
    """Encoder sees slot 0 + (L - ceil(L drop_ratio)) tokens; the loss covers ceil(L ratio) tokens per sample."""
    m = _model(dropout=0.0, attn_dropout=0.0)
    L, B = m.cfg.num_tokens, 3
    seen = []
    h = m.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    tokens = torch.randint(0, 32, (B, L))
    g = torch.Generator().manual_seed(3)
    ratio = m.sample_mask_ratio(torch.Generator().manual_seed(3))
    loss, metrics = m.loss(tokens, _rep(B), generator=g)
    h.remove()
    assert seen == [1 + L - math.ceil(L * 0.5)]
    assert float(metrics["mask_ratio"]) == pytest.approx(ratio, rel=1e-6) and torch.isfinite(loss)
    with pytest.raises(ValueError):
        m.loss(tokens, None)                           # cond="rep" needs rep
    with pytest.raises(ValueError):
        m.loss(tokens.clamp(max=31) + 1, _rep(B))      # id 32 is [MASK], not a code


def test_decoding_follows_cosine_schedule():
    m = _model().eval()
    L = m.cfg.num_tokens
    for steps in (8, 12):
        tokens, hist = mage_generate(m, _rep(2), steps=steps, generators=_gens([0, 1]), return_history=True)
        assert hist.shape == (steps, 2, L) and torch.equal(hist[-1], tokens)
        assert tokens.min() >= 0 and tokens.max() < m.cfg.codebook_size
        prev = L
        for k in range(steps - 1):
            want = max(1, min(prev - 1, cosine_mask_len(L, k, steps)))
            got = (hist[k] == m.cfg.mask_id).sum(1)
            assert got.tolist() == [want, want], (steps, k, got.tolist(), want)
            # tokens revealed earlier stay fixed
            if k:
                known = hist[k - 1] != m.cfg.mask_id
                assert torch.equal(hist[k][known], hist[k - 1][known])
            prev = want
        assert (hist[-1] == m.cfg.mask_id).sum() == 0
    assert cosine_mask_len(256, 0, 20) == math.floor(256 * math.cos(math.pi / 40))


def test_guidance_zero_is_conditional():
    m = _model().eval()
    rep, ids = _rep(3), torch.full((3, 49), 32)
    ids[:, ::3] = torch.randint(0, 32, (3, 17))
    with torch.no_grad():
        c, u = m.logits(ids, rep), m.logits(ids, rep, null=torch.ones(3, dtype=torch.bool))
    assert torch.equal(guided(c, u, linear_tau(0.0, 5, 20)), c)
    assert not torch.allclose(c, u)
    # guidance 0: one conditional pass of batch B per step, no unconditional pass
    calls = []
    orig = m.logits
    m.logits = lambda ids, rep=None, labels=None, null=None, positions=None, keep=None: \
        calls.append((ids.shape[0], null)) or orig(ids, rep, labels, null, positions, keep)
    t0 = mage_generate(m, rep, steps=6, guidance=0.0, generators=_gens([1, 2, 3]))
    assert calls == [(3, None)] * 6
    calls.clear()
    t1 = mage_generate(m, rep, steps=6, guidance=2.0, generators=_gens([1, 2, 3]))
    assert len(calls) == 6 and all(b == 6 and n.tolist() == [False] * 3 + [True] * 3 for b, n in calls)
    del m.logits
    assert not torch.equal(t0, t1)
    # when cond == uncond (rep = null_rep), any tau gives exactly the unguided tokens
    rep_null = m.null_rep.detach().expand(3, -1).clone()
    a = mage_generate(m, rep_null, steps=6, guidance=0.0, generators=_gens([1, 2, 3]))
    b = mage_generate(m, rep_null, steps=6, guidance=3.0, generators=_gens([1, 2, 3]))
    assert torch.equal(a, b)


@pytest.mark.parametrize("draw", ["gumbel", "cdf"])
def test_tokens_are_drawn_from_the_softmax_of_the_logits(draw):
    """Each unknown token is a draw of Categorical(logits), by either draw: over many seeds the frequencies of one
    step's codes match softmax(logits) (peaked logits of known values replace the network); the cdf draw asks
    for the logits at the unknown positions only."""
    m = _model().eval()
    L, C, N = m.cfg.num_tokens, m.cfg.codebook_size, 4000
    base = 2.0 * torch.randn(L, C, generator=torch.Generator().manual_seed(0))

    def fake(ids, rep=None, labels=None, null=None, positions=None, keep=None):
        full = base.expand(ids.shape[0], -1, -1)
        return full if positions is None else full.gather(1, positions.unsqueeze(-1).expand(-1, -1, C))
    m.logits = fake
    tokens = mage_generate(m, _rep(N), steps=1, generators=_gens(range(N)), draw=draw)
    freq = torch.zeros(L, C).scatter_add_(1, tokens.T, torch.ones(L, N)) / N
    tv = 0.5 * (freq - base.softmax(-1)).abs().sum(-1)            # total variation per position
    assert float(tv.mean()) < 0.05, float(tv.mean())               # ~0.03 expected from N draws; argmax ~0.5
    del m.logits
    if draw == "cdf":
        _, hist = mage_generate(m, _rep(2), steps=4, generators=_gens([0, 1]), return_history=True, draw=draw)
        asked = []
        m.logits = lambda *a, positions=None, **k: asked.append(positions[0].tolist()) or \
            MAGE.logits(m, *a, positions=positions, **k)
        again = mage_generate(m, _rep(2), steps=4, generators=_gens([0, 1]), draw=draw)
        assert torch.equal(again, hist[-1]) and asked[0] == list(range(L))
        for k in range(1, 4):                                      # step k: the positions still masked
            assert asked[k] == (hist[k - 1][0] == m.cfg.mask_id).nonzero()[:, 0].tolist()


@pytest.mark.parametrize("guidance,draw,drop", [(0.0, "gumbel", False), (1.5, "gumbel", False),
                                                (1.5, "cdf", False), (1.5, "cdf", True)])
def test_same_seed_same_tokens_across_batch_sizes(guidance, draw, drop):
    m = _model().eval()
    seeds, rep = list(range(10, 18)), _rep(8)
    kw = dict(steps=8, guidance=guidance, draw=draw, encoder_drop=drop)
    batch = mage_generate(m, rep, generators=_gens(seeds), **kw)
    for i in (0, 3, 7):
        one = mage_generate(m, rep[i:i + 1], generators=_gens([seeds[i]]), **kw)
        assert torch.equal(one[0], batch[i]), i
    again = mage_generate(m, rep, generators=_gens(seeds), **kw)
    assert torch.equal(again, batch)
    other = mage_generate(m, rep, generators=_gens([s + 100 for s in seeds]), **kw)
    assert not torch.equal(other, batch)
    with pytest.raises(ValueError):
        mage_generate(m, rep, steps=8, generators=_gens(seeds[:3]))


def test_cond_none_ignores_rep():
    m = _model(cond="none", dropout=0.0, attn_dropout=0.0)
    tokens = torch.randint(0, 32, (4, 49))
    la, _ = m.loss(tokens, _rep(4, 1), generator=torch.Generator().manual_seed(0))
    lb, _ = m.loss(tokens, _rep(4, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(la, lb)
    m.eval()
    ids = tokens.masked_fill(torch.rand(4, 49) < 0.5, 32)
    assert torch.equal(m.logits(ids, _rep(4, 1)), m.logits(ids))
    t_none = mage_generate(m, batch_size=2, steps=5, generators=_gens([4, 5]))
    assert torch.equal(mage_generate(m, _rep(2, 9), steps=5, generators=_gens([4, 5])), t_none)
    with pytest.raises(ValueError):
        mage_generate(m, steps=5)                   # no way to tell the batch size


def test_cond_class_needs_labels():
    m = _model(cond="class", num_classes=5, dropout=0.0, attn_dropout=0.0)
    tokens, labels = torch.randint(0, 32, (4, 49)), torch.tensor([0, 1, 2, 4])
    with pytest.raises(ValueError, match="labels"):
        m.loss(tokens, _rep(4))
    loss, _ = m.loss(tokens, labels=labels, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    m.eval()
    with pytest.raises(ValueError, match="labels"):
        m.logits(tokens)
    with pytest.raises(ValueError, match="labels"):
        mage_generate(m, batch_size=2, steps=4)
    with pytest.raises(ValueError, match="guidance"):
        mage_generate(m, labels=labels, steps=4, guidance=1.0)
    out = mage_generate(m, labels=labels, steps=4, generators=_gens([0, 1, 2, 3]))
    assert out.shape == (4, 49)
    l0, l1 = m.logits(tokens, labels=labels), m.logits(tokens, labels=labels.flip(0))
    assert not torch.allclose(l0, l1)


def test_loss_decreases_on_toy_batch():
    m = _model(dropout=0.0, attn_dropout=0.0)
    # a learnable toy batch: image b has rows of constant codes (4b + row) mod 32
    tokens = (4 * torch.arange(8)[:, None] + torch.arange(49)[None] // 7) % 32
    rep = _rep(8)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss, metrics = m.loss(tokens, rep, generator=torch.Generator().manual_seed(step))
        assert torch.isfinite(loss) and set(metrics) >= {"mask_ratio", "acc"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # slow at first by design: the output embeddings are the tied N(0, 0.02) word embeddings (detached)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.15, losses
    # the MLM head's word embeddings are tied and detached (as official): only the input path trains them
    assert m.token_emb.word_embeddings.weight.grad is not None


def test_rep_dropout():
    tokens = torch.randint(0, 32, (6, 49))
    for p, same in ((1.0, True), (0.0, False)):
        m = _model(rep_drop_prob=p, dropout=0.0, attn_dropout=0.0)
        la, _ = m.loss(tokens, _rep(6, 1), generator=torch.Generator().manual_seed(0))
        lb, _ = m.loss(tokens, _rep(6, 2), generator=torch.Generator().manual_seed(0))
        assert torch.equal(la, lb) == same, p
        if p == 1.0:            # gradient reaches null_rep, not the rep path's input
            la.backward()
            assert m.null_rep.grad is not None and m.null_rep.grad.abs().sum() > 0


def test_bf16_autocast_runs():
    m = _model().eval()
    ids = torch.full((2, 49), 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lg = m.logits(ids, _rep(2))
    ref = m.logits(ids, _rep(2))
    assert lg.shape == ref.shape and (lg.float() - ref).abs().max() < 0.5


def test_pixel_run_names_the_token_draws():
    from rcg.config import PixelRun
    assert PixelRun().token_draw == "gumbel"                      # the official draw stays the default
    assert PixelRun(token_draw="cdf").token_draw == "cdf"
    with pytest.raises(ValueError, match="gumbel"):
        PixelRun(token_draw="multinomial")


@pytest.mark.parametrize("draw", ["gumbel", "cdf"])
def test_cpu_sampler_chunks_rows_without_changing_tokens(monkeypatch, draw):
    """The registry sampler decodes CPU batches CPU_ROWS rows at a time: the tokens equal one full-batch pass."""
    from rcg.config import PixelRun
    from rcg.pixel import mage as M
    from rcg.pixel import rows
    m = _model().eval()
    run = PixelRun(steps=4, temperature=2.0, token_draw=draw)
    rep = _rep(7)
    whole = mage_generate(m, rep, None, 4, 2.0, 0.0, _gens(range(7)), draw=draw)
    monkeypatch.setattr(rows, "CPU_ROWS", 3)                 # 3 + 3 + 1 rows
    calls = []
    real = M.mage_generate
    monkeypatch.setattr(M, "mage_generate", lambda *a, **k: calls.append(len(a[6])) or real(*a, **k))
    chunked = M.sampler(m, run)(rep, None, _gens(range(7)))
    assert calls == [3, 3, 1]
    assert torch.equal(chunked, whole)
    assert not torch.equal(whole[:3], mage_generate(m, rep[:3], None, 4, 2.0, 0.0, _gens(range(3, 6)), draw=draw))


def test_encoder_keep_holds_the_known_tokens_and_masks_up_to_the_training_count():
    L, visible = 10, 4
    unknown = torch.ones(3, L, dtype=torch.bool)
    unknown[:, [1, 6]] = False                                    # two known tokens in every row
    keep = encoder_keep(unknown, visible, _gens([0, 1, 2]))
    assert keep.shape == (3, visible)
    for row in keep.tolist():
        assert row == sorted(row) and len(set(row)) == visible and {1, 6} <= set(row)
    assert torch.equal(keep, encoder_keep(unknown, visible, _gens([0, 1, 2])))      # per-sample seeds
    many = {tuple(encoder_keep(unknown[:1], visible, _gens([s]))[0].tolist()) for s in range(40)}
    assert len(many) > 10                                         # the two masks shown are drawn at random
    unknown[:, :6] = False                                        # 7 known >= visible: the known ones only
    assert encoder_keep(unknown, visible, _gens([0, 1, 2])).tolist() == [[0, 1, 2, 3, 4, 5, 6]] * 3
    assert encoder_keep(unknown, L, _gens([0, 1, 2])) is None     # nothing to drop
    assert encoder_keep(torch.zeros(3, L, dtype=torch.bool), visible, None) is None


@pytest.mark.parametrize("draw", ["gumbel", "cdf"])
def test_encoder_drop_shows_the_encoder_what_training_shows_it(draw):
    """With encoder_drop every step's encoder sees slot 0 + max(known, L - ceil(L drop_ratio)) tokens, every
    known one among them; with drop_ratio 0 the tokens are the default decoding's."""
    m = _model(drop_ratio=0.5).eval()
    L, visible, steps = m.cfg.num_tokens, 49 - math.ceil(49 * 0.5), 6
    seen = []
    m.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    tokens, hist = mage_generate(m, _rep(2), steps=steps, generators=_gens([0, 1]), return_history=True,
                                 draw=draw, encoder_drop=True)
    known = [0] + [int((h[0] != m.cfg.mask_id).sum()) for h in hist[:-1]]
    assert seen == [1 + max(k, visible) for k in known] and seen[0] == 1 + visible < 1 + L
    assert not torch.equal(tokens, mage_generate(m, _rep(2), steps=steps, generators=_gens([0, 1]), draw=draw))
    m0 = _model(drop_ratio=0.0).eval()
    a = mage_generate(m0, _rep(2), steps=steps, generators=_gens([0, 1]), draw=draw, encoder_drop=True)
    assert torch.equal(a, mage_generate(m0, _rep(2), steps=steps, generators=_gens([0, 1]), draw=draw))


def test_pixel_run_encoder_drop_reaches_the_decoding(monkeypatch):
    from rcg.config import PixelRun
    from rcg.pixel import mage as M
    got = []
    monkeypatch.setattr(M, "mage_generate", lambda *a, **k: got.append(k["encoder_drop"]) or a[1].new_zeros(2, 49))
    assert PixelRun().encoder_drop is False                       # the official step stays the default
    M.sampler(_model().eval(), PixelRun(steps=2, encoder_drop=True))(_rep(2), None, _gens([0, 1]))
    assert got == [True]
