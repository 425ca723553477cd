"""Pixel side end to end on tiny data: tokenizer -> cache with tokens -> MAGE -> rcg sample / interpolate."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_fmnist, tiny_encoder_run, tiny_rdm_run
from rcg.cli import main
from rcg.config import DataConfig, OptimConfig, PixelRun, TokenizerRun
from rcg.tree import apply_overrides
from rcg.pixel.mage import MAGEConfig
from rcg.sample import RCGSampler
from rcg.stages import cache_reps, sample_command, train_encoder, train_pixel, train_rdm, train_tokenizer
from rcg.tokenizer import VQConfig


def _pixel_cfg(root, cond="rep"):
    return PixelRun(cache=str(root / "cache.safetensors"), encoder=str(root / "enc"), tokenizer=str(root / "tok"),
                    model=MAGEConfig(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                                     decoder_num_heads=2, cond=cond),
                    steps=4, temperature=1.0,
                    optim=OptimConfig(epochs=1, batch_size=32, lr=1e-3, log_every=2, ckpt_every=4))


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    data = make_fmnist(root / "data")
    train_encoder(tiny_encoder_run(data, epochs=0.5), str(root / "enc"), "cpu", progress=False)
    tok = TokenizerRun(data=DataConfig("fmnist", path=str(data), resolution=16, channels=1),
                       eval_data=DataConfig("fmnist", path=str(data), split="test", resolution=16, channels=1),
                       model=VQConfig(in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1,
                                      z_channels=8, embed_dim=8, n_embed=32, resolution=16, num_groups=4),
                       optim=OptimConfig(epochs=1, batch_size=32, lr=2e-3, log_every=2, ckpt_every=4))
    train_tokenizer(tok, str(root / "tok"), "cpu", progress=False)
    cache_reps(root / "enc", root / "cache.safetensors", views=2, device="cpu", tokenizer=str(root / "tok"),
               progress=False)
    train_rdm(tiny_rdm_run(str(root / "cache.safetensors"), str(root / "enc"), fd_samples=32), str(root / "rdm"),
              "cpu", progress=False)
    train_rdm(apply_overrides(tiny_rdm_run(str(root / "cache.safetensors"), str(root / "enc"), fd_samples=32),
                              ["class_cond=true", "optim.epochs=0.5"]), str(root / "rdm-cls"), "cpu", progress=False)
    train_pixel(_pixel_cfg(root), str(root / "mage"), "cpu", progress=False)
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 20), dtype=np.uint8)).save(root / f"r{i}.png")
    return root


def test_cache_holds_tokens_of_the_same_crops(system):
    from rcg.store import load_tensors
    t, meta = load_tensors(system / "cache.safetensors")
    assert t["tokens"].shape == (256, 16) and int(t["tokens"].max()) < 32
    assert meta["tokenizer_fingerprint"] and meta["codebook_size"] == "32"


def test_same_seed_same_image_at_batch_sizes_1_and_8(system):
    s = RCGSampler(str(system / "mage"), str(system / "rdm"), "cpu")
    eight = torch.cat(list(s.stream(8, seed=5, batch_size=8)))
    ones = torch.cat(list(s.stream(8, seed=5, batch_size=1)))
    assert eight.dtype == torch.uint8 and eight.shape == (8, 1, 16, 16)
    assert torch.equal(eight, ones)
    other = torch.cat(list(s.stream(8, seed=6, batch_size=8)))
    assert torch.equal(other[:7], eight[1:])


def test_compiled_sampler_makes_the_same_images(system, tmp_path, capsys):
    s = RCGSampler(str(system / "mage"), str(system / "rdm"), "cpu")
    plain = torch.cat(list(s.stream(6, seed=3, batch_size=6)))
    c = RCGSampler(str(system / "mage"), str(system / "rdm"), "cpu").compile("eager")   # dynamo, no codegen
    compiled = [b for b in list(c.model.blocks) + list(c.model.decoder_blocks) if b._compiled_call_impl is not None]
    assert len(compiled) == len(c.model.blocks) + len(c.model.decoder_blocks) > 0
    assert torch.equal(torch.cat(list(c.stream(6, seed=3, batch_size=4))), plain)   # two batch sizes
    sample_command(str(system / "mage"), str(system / "rdm"), str(tmp_path / "a.npz"), num=4, compile="eager")
    sample_command(str(system / "mage"), str(system / "rdm"), str(tmp_path / "b.npz"), num=4)
    assert np.array_equal(np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"])
    assert main(["sample", "--pixel", "p", "--rdm", "r", "--out", "o.png", "--compile", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["arguments"]["compile"] is True


def test_cli_sample_reference_class_and_interpolate(system, tmp_path):
    pix, rdm = str(system / "mage"), str(system / "rdm")
    assert main(["sample", "--pixel", pix, "--rdm", rdm, "--num", "6", "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size == (2 * (3 * 18 + 2), 2 * (2 * 18 + 2))   # 3 x 2 grid, 2x upscaled
    assert main(["sample", "--pixel", pix, "--num", "3", "--reference", str(system / "r0.png"), str(system / "r1.png"),
                 "--out", str(tmp_path / "ref.npz")]) == 0
    arr = np.load(tmp_path / "ref.npz")["arr_0"]
    assert arr.shape == (8, 16, 16, 1)                                          # 2 rows: reference + 3 variations
    assert main(["sample", "--pixel", pix, "--rdm", str(system / "rdm-cls"), "--class", "1", "--num", "4",
                 "--out", str(tmp_path / "cls")]) == 0
    assert len(list((tmp_path / "cls").glob("*.png"))) == 4
    assert main(["sample", "--pixel", pix, "--rdm", rdm, "--class", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert main(["interpolate", str(system / "r0.png"), str(system / "r1.png"), "--pixel", pix, "--num", "5",
                 "--out", str(tmp_path / "strip.npz")]) == 0
    assert np.load(tmp_path / "strip.npz")["arr_0"].shape == (5, 16, 16, 1)


def test_interpolation_ends_follow_the_two_representations(system):
    s = RCGSampler(str(system / "mage"), None, "cpu")
    from rcg.sample import load_image_files
    ims = load_image_files([str(system / "r0.png"), str(system / "r1.png")], 1, 16)
    strip = s.interpolate(ims[0], ims[1], num=3, seed=1)
    ra, rb = s.reps_from_images(ims)
    assert torch.equal(strip[0], s.images_from_reps(ra[None], [1])[0])
    assert torch.equal(strip[2], s.images_from_reps(rb[None], [1])[0])


def test_pixel_baselines_train_with_class_and_none(system, tmp_path):
    for cond in ("class", "none"):
        summ = train_pixel(apply_overrides(_pixel_cfg(system, cond), ["optim.epochs=0.25"]), str(tmp_path / cond),
                           "cpu", progress=False)
        assert summ["cond"] == cond and summ["loss"] > 0
    s = RCGSampler(str(tmp_path / "none"), None, "cpu")
    assert torch.cat(list(s.stream(2, batch_size=2))).shape == (2, 1, 16, 16)


def test_cli_eval_streams_generated_images_against_cached_reference(system, tmp_path, capsys):
    from test_evalnet import tiny_run
    from rcg.stages.evalnet import train_evalnet
    train_evalnet(tiny_run(system / "data", epochs=1), str(tmp_path / "evalnet"), "cpu", progress=False)
    argv = ["eval", "--pixel", str(system / "mage"), "--rdm", str(system / "rdm"), "--num", "12", "--batch-size", "5",
            "--evalnet", str(tmp_path / "evalnet"), "--ref-data", "fmnist", "--ref-dir", str(system / "data"),
            "--resolution", "16", "--ref-cache", str(tmp_path / "ref.npz"),
            "--rep-reference", str(system / "cache.safetensors"), "--json", str(tmp_path / "r.json"), "--no-progress"]
    assert main(argv) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["num_samples"] == 12 and res["num_reference"] == 128
    assert res["fid_dom"] > 0 and 1.0 <= res["is_dom"] <= 2.0 and res["rep_fd"] > 0
    assert 0 <= res["precision"] <= 1 and (tmp_path / "ref.npz").is_file()
    assert main(argv) == 0                                   # second time: the cached reference statistics
    assert json.loads((tmp_path / "r.json").read_text())["fid_dom"] == pytest.approx(res["fid_dom"], rel=1e-5)
    assert main(argv + ["--rdm-solver", "dpm++2m", "--rdm-steps", "4"]) == 0      # other representations
    fast = json.loads((tmp_path / "r.json").read_text())
    assert fast["num_samples"] == 12 and fast["rep_fd"] != pytest.approx(res["rep_fd"], rel=1e-6)


def test_demo_runs_every_stage_and_writes_its_images(system, tmp_path):
    """`rcg demo` end to end with every preset shrunk to the tiny 16 px data (the real one takes minutes)."""
    from rcg.stages import demo
    data = system / "data"
    over = {
        "data": {"path": str(data), "resolution": 16},
        "tokenizer": [f"data.path={data}", f"eval_data.path={data}", "data.resolution=16", "eval_data.resolution=16",
                      "model.ch=8", "model.ch_mult=1,2,2", "model.z_channels=8", "model.embed_dim=8",
                      "model.n_embed=32", "model.resolution=16", "model.num_groups=4", "optim.epochs=0.25",
                      "optim.batch_size=32"],
        "rdm": ["model.model_channels=32", "model.num_res_blocks=1", "model.time_embed_dim=16", "optim.epochs=0.25",
                "optim.batch_size=32", "fd_samples=16", "sample_steps=5"],
        "pixel": ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=32",
                  "model.decoder_depth=1", "model.decoder_num_heads=2", "optim.epochs=0.25", "optim.batch_size=32",
                  "steps=3"],
    }
    summary = demo(str(tmp_path / "demo"), encoder=str(system / "enc"), device="cpu", progress=False, overrides=over)
    for name, size in (("samples.png", (8, 8)), ("references.png", (8, 2)), ("interpolation.png", (13, 1))):
        w, h = Image.open(tmp_path / "demo" / name).size
        assert (w, h) == (3 * (size[0] * 18 + 2), 3 * (size[1] * 18 + 2)), name
    assert set(summary["stage_wall_s"]) == {"encoder", "tokenizer", "cache", "rdm", "pixel", "sample"}
    assert (tmp_path / "demo" / "summary.json").is_file()
    # sized to the machine: the tests' CPU has no native bf16 (conftest), so the fp32 budget ran, in fp32
    from rcg.stages.demo import DEMO_BUDGETS
    assert summary["precision"] == "fp32" and summary["budget"]["pixel"] == DEMO_BUDGETS["fp32"]["pixel"]
    assert summary["pixel"]["precision"] == summary["tokenizer"]["precision"] == "fp32"
    assert summary["cache"]["precision"] == "fp32"
