"""DiT as RCG's pixel generator on tiny data: cache-reps --pixels -> train-pixel --generator dit -> sampling."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_fmnist, tiny_encoder_run, tiny_rdm_run
from rcg.store import CheckpointError, load_tensors
from rcg.cli import main
from rcg.config import DIT_DIFFUSION, OptimConfig, PixelRun
from rcg.pixel.dit import DiTConfig
from rcg.sample import RCGSampler
from rcg.loaders import load
from rcg.sample import encode_images
from rcg.stages import cache_reps, train_encoder, train_pixel, train_rdm


def _dit_cfg(root, cond="rep", epochs=4.0, **optim):
    return PixelRun(generator="dit", cache=str(root / "cache.safetensors"), encoder=str(root / "enc"),
                    model=DiTConfig(patch_size=4, hidden_size=32, depth=2, num_heads=2, cond=cond),
                    diffusion=DIT_DIFFUSION, steps=8,
                    optim=OptimConfig(epochs=epochs, batch_size=32, lr=2e-3, ema_decay=0.99, log_every=2,
                                      ckpt_every=8, **optim))


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    data = make_fmnist(root / "data")
    train_encoder(tiny_encoder_run(data, epochs=0.5), str(root / "enc"), "cpu", progress=False)
    cache_reps(root / "enc", root / "cache.safetensors", views=2, device="cpu", pixels=True, progress=False)
    train_rdm(tiny_rdm_run(str(root / "cache.safetensors"), str(root / "enc"), fd_samples=32), str(root / "rdm"),
              "cpu", progress=False)
    summary = train_pixel(_dit_cfg(root), str(root / "dit"), "cpu", progress=False)
    return root, summary


def test_cache_stores_the_crops_the_reps_were_made_from(system):
    root, _ = system
    t, _ = load_tensors(root / "cache.safetensors")
    assert t["images"].dtype == torch.uint8 and t["images"].shape == (256, 1, 16, 16)
    enc = load("encoder", root / "enc").module
    assert torch.allclose(encode_images(enc, t["images"][:16]), t["reps"][:16], atol=1e-4)
    assert not torch.equal(t["images"][:128], t["images"][128:])               # two different views


def test_dit_learns_and_its_run_loads(system):
    root, summary = system
    rows = [json.loads(line) for line in (root / "dit" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert summary["generator"] == "dit" and summary["cond"] == "rep"
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2])                     # eps MSE + VLB goes down
    rec = load("pixel", root / "dit")
    cfg, fps = rec.config, rec.fingerprints
    assert cfg.generator == "dit" and cfg.model.in_channels == 1 and cfg.model.input_size == 16
    assert cfg.model.rep_dim == 16 and fps["encoder"]


def test_same_seed_same_image_at_batch_sizes_1_and_8(system):
    root, _ = system
    s = RCGSampler(str(root / "dit"), str(root / "rdm"), "cpu")
    eight = torch.cat(list(s.stream(8, seed=3, batch_size=8)))
    ones = torch.cat(list(s.stream(8, seed=3, batch_size=1)))
    assert eight.dtype == torch.uint8 and eight.shape == (8, 1, 16, 16)
    assert (eight.int() - ones.int()).abs().max() <= 1              # float noise in batched matmuls only
    assert (eight.float().std(0) > 0).any()                         # different seeds, different images


def test_guidance_changes_images_and_tau_zero_is_conditional(system):
    root, _ = system
    s = RCGSampler(str(root / "dit"), str(root / "rdm"), "cpu")
    reps = s.reps_from_rdm(range(4))
    plain = s.images_from_reps(reps, range(4))
    assert torch.equal(plain, s.images_from_reps(reps, range(4), guidance=0.0))
    assert not torch.equal(plain, s.images_from_reps(reps, range(4), guidance=3.0))


def test_dit_baselines_and_cli(system, tmp_path):
    root, _ = system
    for cond in ("none", "class"):
        assert main(["train-pixel", "--generator", "dit", "--cache", str(root / "cache.safetensors"),
                     "--encoder", str(root / "enc"), "--cond", cond, "--out", str(tmp_path / cond), "--epochs", "0.5",
                     "--batch-size", "32", "--no-progress", "--set", "model.hidden_size=32", "--set", "model.depth=1",
                     "--set", "model.num_heads=2", "--set", "steps=4"]) == 0
    s = RCGSampler(str(tmp_path / "class"), None, "cpu")
    assert s.cfg.model.num_classes == 10 and s.cond == "class"
    assert main(["sample", "--pixel", str(tmp_path / "class"), "--class", "3", "--num", "2",
                 "--out", str(tmp_path / "c.npz")]) == 0
    assert np.load(tmp_path / "c.npz")["arr_0"].shape[0] == 2
    assert main(["sample", "--pixel", str(tmp_path / "none"), "--num", "4", "--out", str(tmp_path / "n.png")]) == 0
    assert Image.open(tmp_path / "n.png").size[0] > 16


def test_dit_needs_pixels_in_the_cache(system, tmp_path):
    root, _ = system
    cache_reps(root / "enc", tmp_path / "nopix.safetensors", views=1, device="cpu", progress=False)
    cfg = PixelRun(**{**_dit_cfg(root).__dict__, "cache": str(tmp_path / "nopix.safetensors")})
    with pytest.raises(CheckpointError, match="--pixels"):
        train_pixel(cfg, str(tmp_path / "x"), "cpu", progress=False)


def test_bf16_sampling_stays_close_to_fp32(system):
    from dataclasses import replace
    root, _ = system
    s = RCGSampler(str(root / "dit"), str(root / "rdm"), "cpu")
    reps = s.reps_from_rdm(range(4))
    full = s.images_from_reps(reps, range(4)).float()
    s.cfg = replace(s.cfg, sample_bf16=True)
    half = s.images_from_reps(reps, range(4)).float()
    assert (full - half).abs().mean() < 6.0                        # out of 255: the same images, bf16 rounding


def test_fast_settings_through_configure_and_the_cli(system, tmp_path):
    root, _ = system
    s = RCGSampler(str(root / "dit"), str(root / "rdm"), "cpu")
    paper = next(s.stream(4, seed=0, batch_size=4))
    s.configure(sampler="dpm++2m", steps=6, rdm_solver="dpm++2m", rdm_steps=5)
    assert (s.cfg.sampler, s.cfg.steps, s.rdm_cfg.solver, s.rdm_cfg.sample_steps) == ("dpm++2m", 6, "dpm++2m", 5)
    reps = s.reps_from_rdm([0, 1, 2, 3])
    fast = s.images_from_reps(reps, [0, 1, 2, 3])
    assert fast.shape == paper.shape and not torch.equal(fast, paper)
    assert torch.equal(fast, torch.cat(list(s.stream(4, seed=0, batch_size=2))))   # the stream uses them too
    assert main(["sample", "--pixel", str(root / "dit"), "--rdm", str(root / "rdm"), "--num", "4",
                 "--sampler", "dpm++2m", "--steps", "6", "--rdm-solver", "dpm++2m", "--rdm-steps", "5",
                 "--out", str(tmp_path / "fast.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "fast.npz")["arr_0"], fast.permute(0, 2, 3, 1).numpy())
    with pytest.raises(ValueError, match="RDM"):
        RCGSampler(str(root / "dit"), None, "cpu").configure(rdm_steps=5)
