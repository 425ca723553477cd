"""The VQ tokenizer: shapes, quantizer semantics, dead-code re-seeding, PSNR, and the train-tokenizer stage."""
import json
import math

import pytest
import torch

from helpers import make_fmnist
from rcg.store import load_tensors
from rcg.config import DataConfig, OptimConfig, ReseedConfig, TokenizerRun
from rcg.presets import TOKENIZER_PRESETS
from rcg.tree import from_dict, to_dict
from rcg.loaders import load
from rcg.stages import train_tokenizer
from rcg.tokenizer import (VQConfig, VQModel, VQTrainer, VectorQuantizer, code_stats, psnr,
                           reconstruction_metrics, reseed_dead_codes)

SMALL28 = VQConfig(in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=8,
                   embed_dim=8, n_embed=32, resolution=28, num_groups=4)


def _sqdist(a, b):
    return (a.double()[:, None] - b.double()[None]).pow(2).sum(-1)


def _x(n, c=1, size=28, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_token_grid_28px():
    torch.manual_seed(0)
    vq = VQModel(SMALL28).eval()
    assert vq.token_grid == 7
    x = _x(3)
    with torch.no_grad():
        z_q, ids = vq.encode(x)
        assert z_q.shape == (3, 8, 7, 7) and ids.shape == (3, 49) and ids.dtype == torch.int64
        assert 0 <= int(ids.min()) and int(ids.max()) < 32
        out = vq.decode_ids(ids)
        assert out.shape == (3, 1, 28, 28) and out.dtype == torch.float32
        assert torch.equal(vq.decode_ids(ids.view(3, 7, 7)), out)          # (B, h, w) ids work too
        assert torch.allclose(vq.decode(z_q), out, atol=1e-5)              # z_q = codebook rows (straight-through)
        u8 = (x * 255).round().to(torch.uint8)
        assert torch.equal(vq.encode(u8)[1], vq.encode(u8.float() / 255)[1])
    recon, loss, ids2 = vq(x)
    assert recon.shape == x.shape and loss.dim() == 0 and torch.equal(ids2, ids)
    with pytest.raises(ValueError, match="square"):
        vq.decode_ids(ids[:, :48])
    assert vq.decode_ids(ids[:, :42], hw=(6, 7)).shape == (3, 1, 24, 28)


def test_config_is_checked():
    with pytest.raises(ValueError, match="quant_conv"):
        VQModel(VQConfig(z_channels=8, embed_dim=16, ch=32, ch_mult=(1, 2)))
    with pytest.raises(ValueError, match="divisible"):
        VQModel(VQConfig(ch=32, ch_mult=(1, 1, 2), z_channels=8, embed_dim=8, resolution=30))
    with pytest.raises(ValueError, match="num_groups"):
        VQModel(VQConfig(ch=12, ch_mult=(1, 2), z_channels=8, embed_dim=8, num_groups=8))


def test_structure_matches_the_official_names():
    sd = VQModel(VQConfig(ch=32, ch_mult=(2, 1), num_res_blocks=1, z_channels=16, embed_dim=16, n_embed=64,
                          resolution=32)).state_dict()
    assert "encoder.down.0.block.0.nin_shortcut.weight" in sd and sd["encoder.down.0.block.0.nin_shortcut.weight"].shape \
        == (64, 64, 1, 1)
    assert "decoder.up.1.upsample.conv.bias" in sd and "decoder.up.0.upsample.conv.weight" not in sd
    assert "encoder.conv_in.bias" not in sd and "encoder.conv_out.bias" in sd and "decoder.conv_in.bias" in sd
    assert not any("attn" in k or "quant_conv" in k or "downsample" in k for k in sd)
    assert sd["quantize.embedding.weight"].shape == (64, 16)


def test_quantizer_argmin_ties_and_legacy_loss():
    q = VectorQuantizer(6, 3, beta=0.25)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.randn(6, 3, generator=g))
        q.embedding.weight[4] = q.embedding.weight[1]                     # a tie: the first index wins
    z = torch.randn(2, 3, 4, 5, generator=g)
    z[0, :, 0, 0] = q.embedding.weight[1].detach()
    z.requires_grad_(True)
    z_q, loss, ids = q(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.equal(ids.flatten(), _sqdist(flat, q.embedding.weight.detach()).argmin(1))
    assert ids[0, 0] == 1 and 4 not in ids.flatten().tolist()
    e = q.embedding.weight.detach()[ids.flatten()].view(2, 4, 5, 3).permute(0, 3, 1, 2)
    assert torch.allclose(z_q, e, atol=1e-6)
    mse = (e - z.detach()).pow(2).mean()
    assert loss.item() == pytest.approx(1.25 * mse.item(), rel=1e-5)
    loss.backward()
    # legacy VectorQuantizer2: commitment weight 1 on the encoder side, beta on the codebook side
    assert torch.allclose(z.grad, 2 * (z.detach() - e) / z.numel(), atol=1e-7)
    e_flat = e.permute(0, 2, 3, 1).reshape(-1, 3)
    cb = torch.zeros(6, 3).index_add_(0, ids.flatten(), (2 * 0.25 / z.numel()) * (e_flat - flat))
    assert torch.allclose(q.embedding.weight.grad, cb, atol=1e-7)
    q2 = VectorQuantizer(6, 3, beta=0.25, legacy=False)         # beta on the commitment term instead
    q2.load_state_dict(q.state_dict())
    z2 = z.detach().clone().requires_grad_(True)
    _, loss2, ids2 = q2(z2)
    loss2.backward()
    assert torch.equal(ids2, ids) and loss2.item() == pytest.approx(loss.item(), rel=1e-5)
    assert torch.allclose(z2.grad, 0.25 * z.grad, atol=1e-8)
    assert torch.allclose(q2.embedding.weight.grad, q.embedding.weight.grad / 0.25, atol=1e-7)


def test_psnr_closed_form_and_code_stats():
    x = torch.zeros(3, 1, 4, 4)
    y = torch.full((3, 1, 4, 4), 0.1)
    assert torch.allclose(psnr(x, y), torch.full((3,), 20.0, dtype=torch.float64))
    y[1] = 0.01
    y[2, 0, 0, 0] = 0.4                                        # mse = 0.16 / 16 = 0.01 -> 20 dB
    y[2, 0, 0, 1:] = 0
    y[2, 0, 1:] = 0
    assert psnr(x, y).tolist() == pytest.approx([20.0, 40.0, 20.0])
    assert psnr(x * 255, y * 255, data_range=255).tolist() == pytest.approx([20.0, 40.0, 20.0])
    st = code_stats(torch.tensor([5.0, 5, 5, 5, 0, 0, 0, 0]))
    assert st["codebook_usage"] == 0.5 and st["perplexity"] == pytest.approx(4.0)
    assert code_stats(torch.tensor([7.0, 0, 0]))["perplexity"] == pytest.approx(1.0)


def _far_codebook_model(seed=0):
    torch.manual_seed(seed)
    vq = VQModel(SMALL28)
    with torch.no_grad():                      # 28 of 32 codes far away from any encoder output: never chosen
        w = vq.quantize.embedding.weight
        w.normal_(0, 0.01)
        w[4:] += 1000.0
    return vq


def test_reseed_function_moves_only_dead_codes():
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(10, 4, generator=g) + 100.0
    usage = torch.zeros(10)
    usage[:3] = 0.1                                            # codes 0..2 live
    z = torch.randn(50, 4, generator=g)
    before = codebook.clone()
    n = reseed_dead_codes(codebook, usage, z, threshold=0.03, gen=torch.Generator().manual_seed(1))
    assert n == 7
    assert torch.equal(codebook[:3], before[:3])
    d = _sqdist(codebook[3:], z)                               # every re-seeded code is one of the encoder outputs
    assert torch.all(d.min(1).values == 0) and len(set(d.argmin(1).tolist())) == 7   # distinct rows
    assert torch.all(usage[3:] == 0.1) and torch.all(usage[:3] == 0.1)
    again = codebook.clone()
    codebook2, usage2 = before.clone(), torch.zeros(10)
    usage2[:3] = 0.1
    reseed_dead_codes(codebook2, usage2, z, 0.03, torch.Generator().manual_seed(1))
    assert torch.equal(codebook2, again)                       # randomness only from the generator
    assert reseed_dead_codes(codebook, usage, z, 0.03) == 0    # nothing dead any more


def test_trainer_reseeds_unused_codes_and_usage_rises():
    vq = _far_codebook_model()
    trainer = VQTrainer(vq, dead_threshold=0.03)
    x = _x(16, seed=3)
    with torch.no_grad():
        used_before = vq.encode(x)[1].unique().numel()
        trainer.loss(x)                                        # one step of usage statistics
    assert used_before <= 4
    far_before = vq.quantize.embedding.weight[4:].detach().clone()
    n = trainer.reseed(x, torch.Generator().manual_seed(0))
    assert n >= 28 and int(trainer.reseeded) == n
    w = vq.quantize.embedding.weight.detach()
    assert w[4:].abs().max() < 100 and not torch.equal(w[4:], far_before)
    with torch.no_grad():
        z = vq.encoder(x).permute(0, 2, 3, 1).reshape(-1, 8)
        used_after = vq.encode(x)[1].unique().numel()
    assert _sqdist(w[4:], z).min(1).values.max() < 1e-10       # moved onto encoder outputs of the batch
    assert used_after >= 20 > used_before
    assert "usage" in trainer.state_dict() and "reseeded" in trainer.state_dict()
    assert set(trainer.vq.state_dict()) == set(VQModel(SMALL28).state_dict())   # the export stays official


def test_trained_toy_reencodes_its_own_decodes():
    """A toy tokenizer trained to reconstruct 8 images of 2x2 blocks in 4 grey levels: decoding the ids and
    encoding the decode must give back (nearly all) the same ids. The untrained model fails the same check,
    and a collapsed codebook would fail the distinct-codes check. One thread: the 120 training steps must not
    depend on the machine's thread count (summation order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _toy_roundtrip()
    finally:
        torch.set_num_threads(threads)


def _toy_roundtrip():
    g = torch.Generator().manual_seed(0)
    levels = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])
    data = levels[torch.randint(0, 4, (8, 1, 4, 4), generator=g)].repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.manual_seed(0)
    cfg = VQConfig(in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4,
                   n_embed=16, resolution=8, num_groups=4)
    vq = VQModel(cfg)
    trainer = VQTrainer(vq, l1=1.0, mse=1.0, usage_decay=0.9)
    opt = torch.optim.Adam(trainer.parameters(), lr=1e-2)

    def roundtrip():
        with torch.no_grad():
            ids = vq.encode(data)[1]
            dec = vq.decode_ids(ids).clamp(0, 1)
            return (vq.encode(dec)[1] == ids).float().mean().item(), psnr(dec, data).mean().item(), ids
    agree0, _, _ = roundtrip()
    for step in range(120):
        if step and step % 10 == 0 and step < 72:
            trainer.reseed(data, g)
        loss, _ = trainer.loss(data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    agree, quality, ids = roundtrip()
    assert quality > 20, f"toy not learned: PSNR {quality:.1f} dB"
    assert ids.unique().numel() >= 4
    assert agree0 < 0.6, f"the untrained model already agrees on {agree0:.3f}: the check cannot fail"
    assert agree >= 0.8, f"only {agree:.3f} of the ids survive decode -> encode"


# ------------------------------------------------------------------------------------------------ the stage
def _tiny_run(data_dir, **kw) -> TokenizerRun:
    return TokenizerRun(
        data=DataConfig("fmnist", path=str(data_dir), resolution=16, channels=1),
        eval_data=DataConfig("fmnist", path=str(data_dir), split="test", resolution=16, channels=1),
        model=VQConfig(in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8,
                       embed_dim=8, n_embed=32, resolution=16, num_groups=4),
        reseed=ReseedConfig(every=2, stop=0.9), eval_every_epochs=1.0,
        optim=OptimConfig(epochs=3, batch_size=32, lr=3e-3, log_every=1, ckpt_every=4, **kw))


@pytest.fixture(scope="module")
def tok_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    data = make_fmnist(root / "data")
    summary = train_tokenizer(_tiny_run(data), str(root / "run"), "cpu", progress=False)
    return root, data, summary


def test_run_directory_and_summary(tok_run):
    root, _, s = tok_run
    run = root / "run"
    for f in ("config.json", "checkpoint.safetensors", "state.pt", "metrics.jsonl", "summary.json",
              "samples/reconstructions.png"):
        assert (run / f).is_file(), f
    assert s["stage"] == "tokenizer" and s["steps"] == 12 and s["token_grid"] == 8
    assert math.isfinite(s["psnr"]) and s["psnr"] > 8 and s["eval_images"] == 64 and s["psnr_split"] == "held-out"
    assert 0 < s["codebook_usage"] <= 1 and 1 <= s["perplexity"] <= 32 and s["train_wall_s"] >= 0
    assert s["reseeded_total"] > 0                             # the re-seeding path ran
    assert json.loads((run / "summary.json").read_text()) == s
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_psnr" in r for r in rows) and any(r.get("final") for r in rows)
    assert all("batch_perplexity" in r for r in rows if "loss" in r)
    tensors, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["kind"] == "rcg-tokenizer" and "quantize.embedding.weight" in tensors and "usage" not in tensors


def test_load_tokenizer_and_metrics_agree(tok_run):
    root, data, s = tok_run
    tok = load("tokenizer", root / "run").module
    assert not tok.training and not any(p.requires_grad for p in tok.parameters())
    from rcg.data import load_dataset
    held = load_dataset(from_dict(TokenizerRun, json.loads((root / "run" / "config.json").read_text())).eval_data)
    res = reconstruction_metrics(tok, held.images, batch_size=17)
    assert res["psnr"] == pytest.approx(s["psnr"], abs=1e-4)
    assert res["codebook_usage"] == s["codebook_usage"]


def test_rerun_is_a_noop_and_resume_is_exact(tok_run, tmp_path, monkeypatch):
    root, data, s = tok_run
    before = (root / "run" / "checkpoint.safetensors").read_bytes()
    again = train_tokenizer(_tiny_run(data), str(root / "run"), "cpu", progress=False)
    assert again == s and (root / "run" / "checkpoint.safetensors").read_bytes() == before

    # kill a run after its step-8 checkpoint; rerunning must end bit-identical to the uninterrupted run
    calls = {"n": 0}
    real = VQTrainer.loss

    def dying(self, x):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt("simulated kill")
        return real(self, x)
    monkeypatch.setattr(VQTrainer, "loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(_tiny_run(data), str(tmp_path / "run"), "cpu", progress=False)
    monkeypatch.setattr(VQTrainer, "loss", real)
    resumed = train_tokenizer(_tiny_run(data), str(tmp_path / "run"), "cpu", progress=False)
    assert load_tensors(tmp_path / "run" / "checkpoint.safetensors")[0].keys() == load_tensors(
        root / "run" / "checkpoint.safetensors")[0].keys()
    a, _ = load_tensors(tmp_path / "run" / "checkpoint.safetensors")
    b, _ = load_tensors(root / "run" / "checkpoint.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["psnr"] == s["psnr"] and resumed["reseeded_total"] == s["reseeded_total"]


def test_the_model_follows_the_data_and_refuses_what_cannot_fit(tok_run, tmp_path):
    """--channels / --resolution reach the model (issue 13: no --set model.* to match the data); a resolution
    the downsampling cannot divide is refused before the run directory is written."""
    _, data, _ = tok_run
    cfg = _tiny_run(data)
    from dataclasses import replace
    s = train_tokenizer(replace(cfg, data=replace(cfg.data, channels=3), optim=replace(cfg.optim, epochs=0.1)),
                        str(tmp_path / "rgb"), "cpu", progress=False)
    saved = json.loads((tmp_path / "rgb" / "config.json").read_text())["model"]
    assert (saved["in_channels"], saved["out_channels"], saved["resolution"]) == (3, 3, 16)
    assert s["eval_images"] > 0
    with pytest.raises(ValueError, match="multiple of"):
        train_tokenizer(replace(cfg, data=replace(cfg.data, resolution=17)), str(tmp_path / "odd"), "cpu",
                        progress=False)
    assert not (tmp_path / "odd").exists()


def test_presets_round_trip():
    for name, cfg in TOKENIZER_PRESETS.items():
        assert from_dict(TokenizerRun, json.loads(json.dumps(to_dict(cfg)))) == cfg, name
        vq_cfg = cfg.model
        assert vq_cfg.z_channels == vq_cfg.embed_dim
    official = TOKENIZER_PRESETS["vqgan-f16-1024"].model
    assert (official.ch, official.ch_mult, official.num_res_blocks, official.n_embed, official.embed_dim,
            official.resolution, official.num_groups) == (128, (1, 1, 2, 2, 4), 2, 1024, 256, 256, 32)
    assert VQModel(TOKENIZER_PRESETS["fmnist-tokenizer"].model).token_grid == 7
