"""Training you can watch: fixed-seed sample grids in RUN/samples/ at the expected steps (tokenizer, MAGE with an
RDM row, DiT), the RDM's sample rep FD in metrics.jsonl, the same images in TensorBoard, grids that leave the
trained weights untouched, and `rcg plot` drawing a run's curves."""
import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import rcg.train
from helpers import make_fmnist, tiny_encoder_run, tiny_rdm_run
from rcg.cli import main
from rcg.data import load_fashion_mnist
from rcg.config import DataConfig, OptimConfig, PixelRun, TokenizerRun
from rcg.pixel.mage import MAGEConfig
from rcg.stages import cache_reps, plot_run, train_encoder, train_pixel, train_rdm, train_tokenizer
from rcg.store import load_tensors
from rcg.tokenizer import VQConfig
from rcg.rng import EpochBatches
from rcg.train import Job, fit
from rcg.watch import grid_scale, preview_path

OPTIM = OptimConfig(epochs=1, batch_size=32, lr=2e-3, log_every=1, ckpt_every=4, sample_every=2)   # 128 images: 4 steps


def grid_size(cols: int, rows: int, side: int = 16) -> tuple:
    """(width, height) of a grid PNG: 2 px padding around each image, upscaled for viewing."""
    s = grid_scale(side)
    return s * (cols * (side + 2) + 2), s * (rows * (side + 2) + 2)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp("watch")
    data = make_fmnist(root / "data")
    train_encoder(tiny_encoder_run(data, epochs=0.5), str(root / "enc"), "cpu", progress=False)
    tok = TokenizerRun(data=DataConfig("fmnist", path=str(data), resolution=16, channels=1),
                       eval_data=DataConfig("fmnist", path=str(data), split="test", resolution=16, channels=1),
                       model=VQConfig(in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1,
                                      z_channels=8, embed_dim=8, n_embed=32, resolution=16, num_groups=4),
                       optim=OPTIM)
    train_tokenizer(tok, str(root / "tok"), "cpu", progress=False)
    cache_reps(root / "enc", root / "cache.safetensors", views=1, device="cpu", tokenizer=str(root / "tok"),
               pixels=True, progress=False)
    train_rdm(replace(tiny_rdm_run(str(root / "cache.safetensors"), str(root / "enc"), fd_samples=32), optim=OPTIM),
              str(root / "rdm"), "cpu", progress=False)
    return root


def mage_cfg(root, **optim):
    return PixelRun(cache=str(root / "cache.safetensors"), encoder=str(root / "enc"), tokenizer=str(root / "tok"),
                    model=MAGEConfig(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                                     decoder_num_heads=2),
                    steps=3, temperature=1.0, optim=replace(OPTIM, **optim))


def test_tokenizer_grids_show_held_out_images_over_their_reconstructions(system):
    run = system / "tok"
    assert sorted(p.name for p in (run / "samples").glob("step-*.png")) == ["step-0000002.png", "step-0000004.png"]
    grid = np.asarray(Image.open(preview_path(run, 4)))
    assert grid.shape[::-1] == grid_size(8, 2)                   # 8 held-out images over their 8 reconstructions
    s, first = grid_scale(16), np.asarray(Image.open(preview_path(run, 2)))
    want = load_fashion_mnist(str(system / "data"), "test", 16, 1).images[0, 0].numpy()
    assert np.array_equal(grid[2 * s:18 * s:s, 2 * s:18 * s:s], want)          # top-left: held-out image 0
    assert np.array_equal(first[:20 * s], grid[:20 * s])                       # the same fixed images every time
    assert not np.array_equal(first[20 * s:36 * s], grid[20 * s:36 * s])       # reconstructions change as it trains


def test_rdm_logs_the_rep_fd_of_fixed_noise_samples(system):
    rows = [json.loads(line) for line in (system / "rdm" / "metrics.jsonl").read_text().splitlines()]
    fd = {r["step"]: r["sample_rep_fd"] for r in rows if "sample_rep_fd" in r}
    assert sorted(fd) == [2, 4] and all(np.isfinite(v) and v > 0 for v in fd.values())
    assert not (system / "rdm" / "samples").exists()              # the RDM's preview is a number, not a grid


def test_mage_grid_rows_references_their_reps_and_rdm_samples(system, monkeypatch):
    logged = []

    class Board:                                                  # stands in for TensorBoard's SummaryWriter
        def add_scalar(self, *a):
            pass

        def add_image(self, tag, grid, step, dataformats):
            logged.append((tag, step, grid.clone(), dataformats))

        def close(self):
            pass
    monkeypatch.setattr(rcg.train, "_before_training", lambda *a: Board())
    run = system / "mage"
    train_pixel(mage_cfg(system), str(run), "cpu", progress=False, rdm=str(system / "rdm"))
    assert sorted(p.name for p in (run / "samples").glob("step-*.png")) == ["step-0000002.png", "step-0000004.png"]
    png = np.asarray(Image.open(preview_path(run, 4)))
    assert png.shape[::-1] == grid_size(8, 3)                     # references, from their reps, from RDM samples
    assert [(t, s, f) for t, s, _, f in logged] == [("train-pixel (mage)/samples", 2, "CHW"),
                                                     ("train-pixel (mage)/samples", 4, "CHW")]
    s = grid_scale(16)
    assert np.array_equal(logged[1][2][0].numpy(), png[::s, ::s])   # TensorBoard gets the same grid


def test_grids_leave_the_trained_weights_untouched(system, tmp_path):
    train_pixel(mage_cfg(system, sample_every=1), str(tmp_path / "watched"), "cpu", progress=False,
                rdm=str(system / "rdm"))
    train_pixel(mage_cfg(system, sample_every=0), str(tmp_path / "plain"), "cpu", progress=False)
    assert len(list((tmp_path / "watched" / "samples").glob("step-*.png"))) == 4
    assert not (tmp_path / "plain" / "samples").exists()
    a, b = (load_tensors(tmp_path / d / "checkpoint.safetensors")[0] for d in ("watched", "plain"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dit_grid_and_sample_every_from_the_cli(system, tmp_path):
    run = tmp_path / "dit"
    assert main(["train-pixel", "--generator", "dit", "--cache", str(system / "cache.safetensors"),
                 "--encoder", str(system / "enc"), "--out", str(run), "--device", "cpu", "--no-progress",
                 "--epochs", "1", "--batch-size", "32", "--sample-every", "3",
                 "--set", "model.hidden_size=32", "--set", "model.depth=1", "--set", "model.num_heads=2",
                 "--set", "model.patch_size=4", "--set", "steps=4"]) == 0
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step-0000003.png", "step-0000004.png"]
    assert Image.open(preview_path(run, 4)).size == grid_size(8, 2)   # no RDM given: references and their reps


def test_rcg_plot_draws_every_logged_metric(system, tmp_path, monkeypatch):
    assert main(["plot", str(system / "rdm")]) == 0
    img = Image.open(system / "rdm" / "curves.png")
    assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 150
    assert np.asarray(img.convert("L")).std() > 5                 # something is drawn
    out = plot_run(system, tmp_path / "all.png")                   # a folder of runs: every stage's curves
    assert "enc" in out and "rdm" in out and "tok" in out and (tmp_path / "all.png").is_file()
    assert main(["plot", str(tmp_path)]) == 2                      # no metrics anywhere: a clear error
    monkeypatch.setitem(sys.modules, "matplotlib", None)           # matplotlib missing: says how to install it
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[plot\]'"):
        plot_run(system / "rdm")


def test_a_failing_grid_is_reported_and_training_goes_on(tmp_path, capsys):
    model, x = torch.nn.Linear(2, 1), torch.randn(8, 2)

    def preview(step, m):
        assert not m.training                                     # previews see the model in eval mode
        raise RuntimeError("boom")
    job = Job(model=model, loss=lambda batch, gen: (model(x[batch.mine]).pow(2).mean(), {}),
              batches=EpochBatches(8, 4, 0), total_steps=4, preview=preview)
    fit(tmp_path, job, OptimConfig(lr=0.1, log_every=1, ckpt_every=2, sample_every=1), resuming=False, progress=False)
    err = capsys.readouterr().err
    assert "sample grid of step 1 failed (RuntimeError: boom)" in err and "step 4 failed" in err
    assert load_tensors(tmp_path / "checkpoint.safetensors")[1]["step"] == "4" and model.training
