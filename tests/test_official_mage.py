"""Parity with the official RCG MAGE: every ``mage_*.pth`` + ``mage_*_io.safetensors`` in the fixture folder.

Dimensions and file names are read from the files, never assumed. Heads are not stored in the weights: the
loader's rule (``args.model`` arch name, official width table) decides unless the io file's ``fixture``
metadata names them. Every key of the io file must be an input or a tensor this test recomputes.
"""
import functools
import re

import pytest
import torch
from conftest import assert_close, companion_io, fixture_cases, read_io

from rcg.guidance import guided, linear_tau
from rcg.official import mage_from_official, safe_load, split_mage_checkpoint

PATTERN = "mage_*.pth"
ATOL = 2e-4
INPUTS = {"tokens", "mask", "tokens_in", "rep", "sel_positions", "fullvocab_seq_positions"}
OUTPUT = re.compile(r"(logits_sel|logsumexp|mean|logits_fullvocab)_(cond|uncond)")


def _cases():
    return fixture_cases(PATTERN)


def _require(path):
    return companion_io(path, PATTERN)


@functools.lru_cache(maxsize=None)
def _load(path):
    io_path = _require(path)
    io, meta = read_io(io_path)
    cfg = meta.get("config", {})
    model, info = mage_from_official(path, num_heads=cfg.get("num_heads"),
                                     decoder_num_heads=cfg.get("decoder_num_heads"))
    return io, meta, model, info


def _close(name, got, want, atol=ATOL):
    assert_close(name, got, want, atol)


@functools.lru_cache(maxsize=None)
def _full(path, branch):
    """Our full logits (B, 1 + L, vocab) of one decoding step for the io inputs; branch 'uncond' = null_rep."""
    io, _, model, _ = _load(path)
    B = io["tokens_in"].shape[0]
    null = torch.full((B,), branch == "uncond")
    with torch.no_grad():
        return model.full_logits(io["tokens_in"], io["rep"], null=null)


def _expected(io, model, full, what):
    img = full[:, 1:, :model.cfg.codebook_size]
    if what == "logits_sel":
        return img[:, io["sel_positions"]]
    if what == "logsumexp":
        return img.logsumexp(-1)
    if what == "mean":
        return img.mean(-1)
    return full[:, io["fullvocab_seq_positions"]]


@pytest.mark.parametrize("path", _cases())
def test_io_keys_are_all_known(path):
    io = _load(path)[0]
    unknown = [k for k in io if k not in INPUTS and not OUTPUT.fullmatch(k)]
    assert not unknown, f"{path.name}: io keys this test cannot check: {unknown}"
    assert {"tokens_in", "rep"} <= set(io), "io file lacks the inputs tokens_in, rep"
    assert any(OUTPUT.fullmatch(k) for k in io), "io file has no expected outputs"


@pytest.mark.parametrize("path", _cases())
def test_config_inferred(path):
    io, meta, model, info = _load(path)
    c, want = model.cfg, meta.get("config", {})
    for k in ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth", "decoder_num_heads",
              "mlp_ratio", "rep_dim"):
        if k in want:
            assert getattr(c, k) == want[k], f"{k}: inferred {getattr(c, k)}, fixture says {want[k]}"
    for k, ours in (("codebook_size", c.codebook_size), ("vocab_size", c.vocab), ("mask_token_label", c.mask_id),
                    ("fake_class_label", c.cond_id)):
        if k in meta:
            assert ours == meta[k], f"{k}: inferred {ours}, fixture says {meta[k]}"
    assert c.num_tokens == io["tokens_in"].shape[1] and c.cond == "rep" and not model.training
    assert info["kind"] == "mage"
    if "mask" in io:
        assert torch.equal(io["tokens_in"] == c.mask_id, io["mask"]), "mask != (tokens_in == inferred mask id)"
        assert torch.equal(torch.where(io["mask"], c.mask_id, io["tokens"]), io["tokens_in"])


@pytest.mark.parametrize("path", _cases())
def test_submodels_reported(path):
    _, _, _, info = _load(path)
    parts = split_mage_checkpoint(safe_load(path))
    assert info["has_vqgan"] == ("vqgan" in parts) and info["has_encoder"] == ("pretrained_encoder" in parts)
    sd = safe_load(path)["model"]
    assert sum(len(v) for v in parts.values()) == len(sd)
    if info["has_vqgan"]:
        assert "quantize.embedding.weight" in parts["vqgan"]
        assert parts["vqgan"]["quantize.embedding.weight"].shape[0] == info["config"]["codebook_size"]
    if info["has_encoder"]:
        from rcg.official import mocov3_from_official
        enc, einfo = mocov3_from_official(path)
        assert einfo["prefix"] == "pretrained_encoder."


@pytest.mark.parametrize("path", _cases())
@pytest.mark.parametrize("branch", ["cond", "uncond"])
def test_logits(path, branch):
    io, _, model, _ = _load(path)
    full = _full(path, branch)
    checked = 0
    for key in io:
        m = OUTPUT.fullmatch(key)
        if m and m.group(2) == branch:
            _close(f"{path.name} {key}", _expected(io, model, full, m.group(1)), io[key])
            checked += 1
    if not checked:
        pytest.skip(f"no *_{branch} tensors in the io file")
    # logits() is the sliced full_logits
    null = torch.full((io["rep"].shape[0],), branch == "uncond")
    with torch.no_grad():
        lg = model.logits(io["tokens_in"], io["rep"], null=null)
    _close(f"{path.name} logits vs full_logits ({branch})", lg, full[:, 1:, :model.cfg.codebook_size], atol=1e-5)
    if branch == "uncond":          # rep=None means every sample takes null_rep
        with torch.no_grad():
            _close(f"{path.name} rep=None", model.logits(io["tokens_in"]), lg, atol=1e-6)


@pytest.mark.parametrize("path", _cases())
def test_guidance_from_fixture_tensors(path):
    io, _, model, _ = _load(path)
    pairs = [k[:-len("_cond")] for k in io if k.endswith("_cond") and k[:-len("_cond")] + "_uncond" in io]
    if "logits_sel" not in pairs:
        pytest.skip("no logits_sel_cond / logits_sel_uncond pair")
    cond, uncond = io["logits_sel_cond"], io["logits_sel_uncond"]
    ours_c = _expected(io, model, _full(path, "cond"), "logits_sel")
    ours_u = _expected(io, model, _full(path, "uncond"), "logits_sel")
    for tau in (0.0, 1.0, 6.0):
        for step, steps in ((0, 20), (9, 20), (19, 20)):
            t = linear_tau(tau, step, steps)
            want = cond - t * (uncond - cond)                 # the official combination
            _close(f"{path.name} guided tau={tau} step {step}", guided(cond, uncond, t), want, atol=0.0)
            _close(f"{path.name} ours guided tau={tau} step {step}", guided(ours_c, ours_u, t), want,
                   atol=ATOL * (1 + 2 * t))
    assert linear_tau(6.0, 19, 20) == 6.0 and linear_tau(6.0, 0, 20) == pytest.approx(0.3)


def _official_layout(model, args=None):
    """Write our MAGE (official vocabulary) in the official save_model layout (test-only helper)."""
    import argparse
    c = model.cfg
    D, Dd, S = c.embed_dim, c.decoder_embed_dim, 1 + c.num_tokens
    sd = {("fake_latent" if k == "null_rep" else k): v.clone() for k, v in model.state_dict().items()}
    sd.setdefault("fake_latent", 0.02 * torch.randn(1, c.rep_dim))          # the official file always has it
    sd.update({"cls_token": torch.randn(1, 1, D), "pos_embed": torch.randn(1, S, D),
               "mask_token": torch.randn(1, 1, Dd),
               "decoder_pos_embed": torch.randn(1, S, Dd), "token_emb.position_ids": torch.arange(S)[None],
               "patch_embed.proj.weight": torch.randn(D, 3, 16, 16), "patch_embed.proj.bias": torch.randn(D),
               "decoder_pred.weight": torch.randn(768, Dd), "decoder_pred.bias": torch.randn(768),
               "vqgan.quantize.embedding.weight": torch.randn(c.codebook_size, 8)})
    ns = argparse.Namespace(**(args or {}))
    return {"model": sd, "model_ema": None, "epoch": 5, "args": ns}


def _perturbed(cfg):
    from rcg.pixel.mage import MAGE
    torch.manual_seed(0)
    m = MAGE(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("cond", ["rep", "class", "none"])
def test_official_layout_roundtrip(cond):
    from rcg.official import CheckpointFormatError, _mage_heads
    from rcg.pixel.mage import MAGEConfig
    cb = 24
    cfg = MAGEConfig(codebook_size=cb, num_tokens=16, vocab_size=cb + 1001, mask_token_id=cb + 1000,
                     cond_token_id=cb + 76, embed_dim=64, depth=2, num_heads=1, decoder_embed_dim=64,
                     decoder_depth=1, decoder_num_heads=1, rep_dim=12, cond="rep" if cond == "none" else cond,
                     num_classes=7 if cond == "class" else 0, mask_ratio_mu=0.55)
    src = _perturbed(cfg)
    ckpt = _official_layout(src, {"model": "mage_vit_fixture", "mask_ratio_mu": 0.55, "rep_drop_prob": 0.1,
                                  "use_rep": cond == "rep", "temp": 6.0, "num_iter": 20, "cfg": 1.0})
    if cond == "none":                                # an unconditional official MAGE: slot 0 keeps its embedding
        del ckpt["model"]["latent_prior_proj.weight"], ckpt["model"]["latent_prior_proj.bias"]
    model, info = mage_from_official(ckpt)
    assert model.cfg.cond == cond and info["num_heads_from"] == "head dim 64" and model.cfg.num_heads == 1
    assert model.cfg.mask_ratio_mu == 0.55 and model.cfg.mask_id == cb + 1000 and model.cfg.cond_id == cb + 76
    assert info["has_vqgan"] and not info["has_encoder"] and info["epoch"] == 5
    assert info["sampling"] == {"temperature": 6.0, "steps": 20, "guidance": 1.0}
    assert "patch_embed.proj.weight" in info["dropped"] and "token_emb.position_ids" in info["dropped"]
    ids = torch.randint(0, cb, (3, 16)).masked_fill(torch.rand(3, 16) < 0.6, cb + 1000)
    labels = torch.tensor([0, 3, 6]) if cond == "class" else None
    rep = torch.randn(3, 12)
    with torch.no_grad():
        got = model.full_logits(ids, rep, labels)
        if cond == "none":       # official: slot 0 = LayerNorm(word[slot-0 id] + pos[0]); rep is ignored
            seq = torch.cat([torch.full((3, 1), cb + 76), ids], 1)
            slot0 = src.token_emb(seq)[:, 0]
            want = src._mlm(src._decoded(ids, slot0), cfg.vocab)
        else:
            want = src.full_logits(ids, rep, labels)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    if cond != "class":
        assert torch.equal(model.null_rep, src.null_rep)
    with pytest.raises(CheckpointFormatError, match="num_heads"):
        _mage_heads(32, False, None, None)
    assert _mage_heads(768, False, "mage_vit_base_patch16", None)[0] == 12
    assert _mage_heads(768, True, "mage_vit_base_patch16", None)[0] == 16
    assert _mage_heads(1024, False, None, None)[0] == 16
    bad = _official_layout(src, {"use_rep": cond != "rep"})
    if cond == "none":
        del bad["model"]["latent_prior_proj.weight"], bad["model"]["latent_prior_proj.bias"]
    with pytest.raises(CheckpointFormatError, match="use_rep"):
        mage_from_official(bad)
