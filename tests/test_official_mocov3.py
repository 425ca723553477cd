"""Parity with the official MoCo v3 ViT + projection head as RCG uses it: every ``mocov3_*.pth.tar`` and its
``*_io.safetensors`` in the fixture folder (images -> CLS features -> projector output -> standardized rep).
"""
import functools

import pytest
import torch
from conftest import assert_close, companion_io, fixture_cases, read_io

from rcg.encoders import sincos_pos_embed_moco, standardize
from rcg.official import infer_vit_heads, mocov3_from_official, mocov3_from_state_dict, safe_load

PATTERN = "mocov3_*.pth.tar"
ATOL = 1e-4
INPUTS = {"images_uint8", "images"}
OUTPUTS = {"feat_cls", "rep_raw", "rep"}


def _cases():
    return fixture_cases(PATTERN)


@functools.lru_cache(maxsize=None)
def _load(path):
    io_path = companion_io(path, PATTERN)
    io, meta = read_io(io_path)
    # Heads are not stored in the weights: use the fixture's config when it states them.
    heads = meta.get("config", {}).get("num_heads")
    enc, info = mocov3_from_official(path, num_heads=heads)
    return io, meta, enc, info


def _close(name, got, want, atol=ATOL):
    assert_close(name, got, want, atol)


@pytest.mark.parametrize("path", _cases())
def test_io_keys_are_all_known(path):
    io = _load(path)[0]
    unknown = sorted(set(io) - INPUTS - OUTPUTS)
    assert not unknown, f"{path.name}: io keys this test cannot check: {unknown}"
    assert "images_uint8" in io and io["images_uint8"].dtype == torch.uint8
    assert set(io) & OUTPUTS, "io file has no expected outputs"
    if "images" in io:
        assert torch.equal(io["images"], io["images_uint8"].float() / 255)


@pytest.mark.parametrize("path", _cases())
def test_config_inferred(path):
    _, meta, enc, info = _load(path)
    cfg, ours = meta.get("config", {}), enc.cfg
    pairs = {"embed_dim": ours.embed_dim, "depth": ours.depth, "num_heads": ours.num_heads, "img_size": ours.img_size,
             "patch_size": ours.patch_size, "mlp_ratio": ours.mlp_ratio, "mlp_dim": ours.mlp_dim,
             "proj_dim": ours.rep_dim}
    for k, v in pairs.items():
        if k in cfg:
            assert cfg[k] == v, f"{k}: inferred {v}, fixture says {cfg[k]}"
    assert info["prefix"] == "module.base_encoder." and not enc.training
    assert enc.cfg.input_size == 224 or enc.cfg.input_size == enc.cfg.img_size


@pytest.mark.parametrize("path", _cases())
def test_pos_embed_is_the_moco_sincos_table(path):
    _load(path)
    sd = safe_load(path)["state_dict"]
    pe = sd["module.base_encoder.pos_embed"]
    grid = int(round((pe.shape[1] - 1) ** 0.5))
    _close(f"{path.name} pos_embed", sincos_pos_embed_moco(grid, pe.shape[2]), pe, atol=1e-6)


@pytest.mark.parametrize("path", _cases())
def test_representations(path):
    io, _, enc, _ = _load(path)
    with torch.no_grad():
        feat = enc.features(io["images_uint8"])
        rep_raw = enc.head(feat)
        rep = standardize(rep_raw)
        assert torch.allclose(enc.encode(io["images_uint8"]), rep, atol=1e-6)
        assert torch.allclose(enc(io["images_uint8"]), rep_raw, atol=1e-6)
    for key, ours in (("feat_cls", feat), ("rep_raw", rep_raw), ("rep", rep)):
        if key in io:
            _close(f"{path.name} {key}", ours, io[key])


def test_heads_rule():
    assert infer_vit_heads(768)[0] == 12 and infer_vit_heads(1024)[0] == 16
    assert infer_vit_heads(384)[0] == 12             # MoCo v3 ViT-S has 12 heads (moco-v3 vits.py)
    assert infer_vit_heads(64)[0] == 4               # fallback embed_dim // 16 (the shared fixture)
    assert infer_vit_heads(768, "mocov3_vit_base")[0] == 12


def test_legacy_key_renames_and_prefixes():
    """The naming bug of one released checkpoint (blocks.13.norm13, fc13, blocks.14.norm14, fc14) is fixed."""
    from rcg.encoders import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderConfig
    torch.manual_seed(0)
    src = Encoder(EncoderConfig(arch="vit", in_chans=3, rep_dim=8, proj_layers=2, mlp_dim=16, img_size=32,
                                patch_size=16, embed_dim=16, depth=15, num_heads=2, input_size=32,
                                mean=IMAGENET_MEAN, std=IMAGENET_STD)).eval()
    vit = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in src.state_dict().items()}
    legacy = {}
    for k, v in vit.items():
        k = (k.replace("blocks.13.norm1.", "blocks.13.norm13.").replace("blocks.13.mlp.fc1.", "blocks.13.mlp.fc13.")
             .replace("blocks.14.norm2.", "blocks.14.norm14.").replace("blocks.14.mlp.fc2.", "blocks.14.mlp.fc14."))
        legacy["module.base_encoder." + k] = v
    legacy["module.momentum_encoder.cls_token"] = torch.zeros(1, 1, 16)
    enc, info = mocov3_from_official({"state_dict": legacy, "epoch": 1, "arch": "tiny"}, num_heads=2)
    assert info["legacy_keys_renamed"] == 8
    x = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(enc(x), src(x))
        enc2, info2 = mocov3_from_state_dict(vit, num_heads=2)                       # plain ViT dict
        enc3, info3 = mocov3_from_official({"model": {"pretrained_encoder." + k: v for k, v in vit.items()}},
                                           num_heads=2)                            # inside an RCG file
        assert torch.equal(enc2(x), src(x)) and torch.equal(enc3(x), src(x))
    assert info3["prefix"] == "pretrained_encoder."
