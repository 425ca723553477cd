"""Representation side end to end on tiny data: train-encoder -> cache-reps -> train-rdm -> sample-reps."""
import json
from dataclasses import replace

import pytest
import torch

from helpers import make_fmnist, tiny_encoder_run, tiny_rdm_run
from rcg.store import CheckpointError, load_tensors
from rcg.tree import apply_overrides
from rcg.loaders import load
from rcg.stages import cache_reps, rep_fd, sample_reps, train_encoder, train_rdm


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    data = make_fmnist(root / "data")
    enc = train_encoder(tiny_encoder_run(data), str(root / "enc"), "cpu", progress=False)
    cache_reps(root / "enc", root / "reps.safetensors", views=2, device="cpu", progress=False)
    rdm = train_rdm(tiny_rdm_run(str(root / "reps.safetensors"), str(root / "enc")), str(root / "rdm"), "cpu",
                    progress=False)
    return root, enc, rdm


def test_encoder_run_directory_and_knn(chain):
    root, enc, _ = chain
    for f in ("config.json", "checkpoint.safetensors", "state.pt", "metrics.jsonl", "summary.json"):
        assert (root / "enc" / f).is_file(), f
    assert 0.0 <= enc["knn_rep"] <= 1.0 and enc["knn_queries"] == 64
    rows = [json.loads(line) for line in (root / "enc" / "metrics.jsonl").read_text().splitlines()]
    assert any("knn_rep" in r for r in rows) and any("loss" in r for r in rows)


def test_cache_holds_standardized_reps_of_every_view(chain):
    root, enc, _ = chain
    t, meta = load_tensors(root / "reps.safetensors")
    assert t["reps"].shape == (128 * 2, 16)
    assert torch.equal(t["image_index"], torch.arange(128).repeat(2))
    assert torch.allclose(t["reps"].mean(1), torch.zeros(256), atol=1e-5)
    assert torch.allclose(t["reps"].std(1), torch.ones(256), atol=1e-4)
    assert meta["encoder_fingerprint"] == enc["fingerprint"]
    # the two views differ (augmented), yet each equals the encoder's output on its own crop
    assert not torch.allclose(t["reps"][:128], t["reps"][128:])


def test_rdm_summary_reports_rep_fd(chain):
    _, _, rdm = chain
    assert rdm["rep_fd"] > 0 and rdm["rep_fd_floor"] > 0
    assert rdm["rep_fd_ratio"] == pytest.approx(rdm["rep_fd"] / rdm["rep_fd_floor"], rel=1e-2)
    assert rdm["params"] > 0


def test_sampled_reps_do_not_depend_on_batch_size(chain):
    root, _, _ = chain
    a = sample_reps(root / "rdm", None, num=5, steps=5, seed=7, batch_size=5, device="cpu", progress=False)["reps"]
    b = sample_reps(root / "rdm", None, num=5, steps=5, seed=7, batch_size=2, device="cpu", progress=False)["reps"]
    c = sample_reps(root / "rdm", None, num=1, steps=5, seed=10, batch_size=1, device="cpu", progress=False)["reps"]
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a[3], c[0], atol=1e-6)


def test_sample_reps_file_and_rep_fd_command(chain, tmp_path):
    root, _, _ = chain
    sample_reps(root / "rdm", tmp_path / "s.safetensors", num=64, steps=5, device="cpu", progress=False,
                solver="dpm++2m")
    assert load_tensors(tmp_path / "s.safetensors")[1]["solver"] == "dpm++2m"      # the file says how it was drawn
    res = rep_fd(tmp_path / "s.safetensors", root / "reps.safetensors")
    assert res["n_a"] == 64 and res["n_b"] == 256 and res["rep_fd"] > 0
    assert rep_fd(root / "reps.safetensors", root / "reps.safetensors")["rep_fd"] == pytest.approx(0, abs=1e-6)


def test_rdm_refuses_cache_from_another_encoder(chain, tmp_path):
    root, _, _ = chain
    data = root / "data"
    train_encoder(tiny_encoder_run(data, seed=1, epochs=0.25), str(tmp_path / "enc2"), "cpu", progress=False)
    with pytest.raises(CheckpointError, match="made by another encoder"):
        train_rdm(tiny_rdm_run(str(root / "reps.safetensors"), str(tmp_path / "enc2")), str(tmp_path / "rdm"),
                  "cpu", progress=False)


def test_class_conditional_rdm_and_class_flag(chain, tmp_path):
    root, _, _ = chain
    cfg = replace(tiny_rdm_run(str(root / "reps.safetensors"), str(root / "enc"), fd_samples=32), class_cond=True)
    train_rdm(apply_overrides(cfg, ["optim.epochs=0.5"]), str(tmp_path / "rdm"), "cpu", progress=False)
    out = sample_reps(tmp_path / "rdm", None, num=3, steps=5, label=1, device="cpu", progress=False)
    assert out["reps"].shape == (3, 16) and out["labels"].tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="class-conditional"):
        sample_reps(tmp_path / "rdm", None, num=3, steps=5, device="cpu", progress=False)
    with pytest.raises(ValueError, match="unconditional"):
        sample_reps(root / "rdm", None, num=3, steps=5, label=1, device="cpu", progress=False)


def test_rerun_of_finished_encoder_run_is_a_noop(chain):
    root, enc, _ = chain
    before = (root / "enc" / "checkpoint.safetensors").read_bytes()
    again = train_encoder(tiny_encoder_run(root / "data"), str(root / "enc"), "cpu", progress=False)
    assert (root / "enc" / "checkpoint.safetensors").read_bytes() == before
    assert again["fingerprint"] == enc["fingerprint"]
    assert load("encoder", root / "enc").module.cfg.rep_dim == 16


def test_knn_monitor_scores_held_out_folder_images_only(tmp_path):
    """A labelled folder with no held-out path: the kNN monitor holds out a fixed fraction (never the training
    images), and the training set is the rest; an unlabelled folder has no monitor."""
    import numpy as np
    from PIL import Image
    from helpers import toy_images
    from rcg.config import HOLDOUT, DataConfig
    x, y = toy_images(80, 16)
    for i, (img, label) in enumerate(zip(x, y)):
        d = tmp_path / "imgs" / f"class{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:03d}.png")
    folder = DataConfig("folder", path=str(tmp_path / "imgs"), resolution=16, channels=1, labels=True)
    cfg = replace(tiny_encoder_run(tmp_path), data=folder, eval_data=replace(folder, split="test"))
    s = train_encoder(cfg, str(tmp_path / "enc"), "cpu", progress=False)
    saved = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert saved["data"]["holdout"] == saved["eval_data"]["holdout"] == HOLDOUT
    assert 0 < s["knn_queries"] < 80 and s["knn_bank"] == 80 - s["knn_queries"]     # disjoint, all images used
    plain = replace(cfg, data=replace(folder, labels=False), eval_data=replace(folder, labels=False, split="test"))
    s2 = train_encoder(plain, str(tmp_path / "enc2"), "cpu", progress=False)
    assert "knn_rep" not in s2 and np.isfinite(s2["loss"])
