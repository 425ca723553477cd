"""The RDM network: paper parameter counts, official parameter names, zero init, conditioning."""
import dataclasses

import pytest
import torch

from rcg.rdm import RDM, RDM_PRESETS, RDMConfig, SimpleMLP, rdm_config, timestep_embedding


def _count(module):
    return sum(p.numel() for p in module.parameters())


def _meta(cfg):
    with torch.device("meta"):          # no memory, no init cost
        return RDM(cfg)


def test_paper_parameter_counts():
    unc = _meta(RDM_PRESETS["rdm-l12-w1536"])
    assert _count(unc.net) == _count(unc) == 62_721_280            # paper Table 5: "63M"
    cls = _meta(RDM_PRESETS["rdm-l12-w1536-cls1000"])
    assert _count(cls.net) == 72_176_896
    assert cls.class_embed.weight.numel() == 512_000 and _count(cls) == 72_688_896
    assert not hasattr(unc, "class_embed")


def test_official_parameter_names():
    names = set(_meta(RDMConfig(num_res_blocks=2, num_classes=3)).state_dict())
    expect = {f"net.{m}.{p}" for m in ("time_embed.0", "time_embed.2", "input_proj", "out.0", "out.2")
              for p in ("weight", "bias")} | {"class_embed.weight"}
    for i in range(2):
        expect |= {f"net.res_blocks.{i}.{m}.{p}" for m in ("in_layers.0", "in_layers.2", "emb_layers.1",
                                                             "context_layers.1", "out_layers.0", "out_layers.3")
                   for p in ("weight", "bias")}
    assert names == expect
    unc = set(_meta(RDMConfig(num_res_blocks=2)).state_dict())
    assert unc == {n for n in expect if "context_layers" not in n and n != "class_embed.weight"}


def test_layernorm_eps_and_shapes():
    m = _meta(RDMConfig(in_channels=32, time_embed_dim=24, model_channels=48, num_res_blocks=1))
    assert m.net.res_blocks[0].in_layers[0].eps == 1e-5 and m.net.res_blocks[0].out_layers[0].eps == 1e-5
    assert m.net.out[0].eps == 1e-6
    assert m.net.time_embed[0].weight.shape == (24, 48) and m.net.input_proj.weight.shape == (48, 32)


def test_zero_init_gives_zero_output():
    torch.manual_seed(0)
    for cfg in (RDM_PRESETS["rdm-tiny"], dataclasses.replace(RDM_PRESETS["rdm-tiny"], num_classes=5)):
        m = RDM(cfg)
        labels = torch.arange(4) if cfg.num_classes else None
        out = m(torch.randn(4, cfg.in_channels), torch.tensor([0, 10, 500, 999]), labels)
        assert out.shape == (4, cfg.in_channels) and torch.count_nonzero(out) == 0
        for blk in m.net.res_blocks:
            assert torch.count_nonzero(blk.out_layers[3].weight) == 0


def test_labels_required_for_class_conditional():
    m = RDM(dataclasses.replace(RDM_PRESETS["rdm-tiny"], num_classes=10))
    with pytest.raises(ValueError, match="labels"):
        m(torch.randn(2, 256), torch.tensor([1, 2]))
    m(torch.randn(2, 256), torch.tensor([1, 2]), torch.tensor([3, 4]))   # fine with labels


def _perturbed(cfg, seed=0):
    torch.manual_seed(seed)
    m = RDM(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_conditioning_and_timestep_matter():
    m = _perturbed(dataclasses.replace(RDM_PRESETS["rdm-tiny"], num_classes=10))
    x = torch.randn(1, 256).repeat(2, 1)
    with torch.no_grad():
        a = m(x, torch.tensor([5, 5]), torch.tensor([1, 2]))
        b = m(x, torch.tensor([5, 900]), torch.tensor([1, 1]))
    assert not torch.allclose(a[0], a[1]) and not torch.allclose(b[0], b[1])
    u = _perturbed(RDM_PRESETS["rdm-tiny"])
    with torch.no_grad():             # unconditional: labels (the official all-zero "fake" class) are ignored
        assert torch.equal(u(x, torch.tensor([5, 5]), torch.tensor([0, 3])), u(x, torch.tensor([5, 5])))


def test_timestep_embedding_is_cos_first():
    e = timestep_embedding(torch.tensor([0, 3]), 8)
    assert torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4, dtype=torch.float32) / 4)
    assert torch.allclose(e[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))


def test_presets_and_overrides():
    assert {"rdm-l12-w1536", "rdm-l12-w1536-cls1000", "rdm-tiny", "rdm-small"} <= set(RDM_PRESETS)
    assert RDM_PRESETS["rdm-l12-w1536-cls1000"].num_classes == 1000
    cfg = rdm_config("rdm-tiny", in_channels=64)
    m = RDM(cfg)
    assert m(torch.randn(3, 64), torch.zeros(3, dtype=torch.long)).shape == (3, 64)
    with pytest.raises(KeyError):
        rdm_config("nope")


def test_accepts_official_4d_input_and_trains():
    m = _perturbed(RDM_PRESETS["rdm-tiny"]).train()
    x, t = torch.randn(4, 256), torch.randint(0, 1000, (4,))
    assert torch.allclose(m(x[:, :, None, None], t), m(x, t))
    m(x, t).pow(2).mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert isinstance(m.net, SimpleMLP)
