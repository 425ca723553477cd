"""The domain feature network: tiny training on synthetic data, its FeatureNet interface, run directory."""
import json
from dataclasses import replace

import pytest
import torch

from helpers import make_fmnist
from rcg.config import DataConfig, EvalNetRun, OptimConfig
from rcg.evalnet import EvalCNN, EvalNetConfig
from rcg.evaluate import EvalNet, evaluate_stream, inception_score, iterate_tensor, reference_stats
from rcg.loaders import load
from rcg.presets import EVALNET_PRESETS
from rcg.stages.evalnet import train_evalnet
from rcg.tree import from_dict, to_dict


def tiny_run(data_dir, size=16, **optim):
    return EvalNetRun(
        data=DataConfig("fmnist", path=str(data_dir), resolution=size),
        eval_data=DataConfig("fmnist", path=str(data_dir), split="test", resolution=size),
        model=EvalNetConfig(resolution=size, num_classes=2, widths=(8, 16), depths=(1, 1), feature_dim=24),
        monitor_images=32, floor_images=64,
        optim=OptimConfig(**{**dict(epochs=3, batch_size=32, lr=3e-3, bf16=True, log_every=4, ckpt_every=8), **optim}))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalnet")
    data = make_fmnist(root / "data", n_train=256, n_test=64)
    summary = train_evalnet(tiny_run(data), str(root / "run"), "cpu", progress=False)
    return root, data, summary


def test_tiny_training_learns_and_writes_a_run_directory(trained):
    root, _, s = trained
    for f in ("config.json", "checkpoint.safetensors", "state.pt", "metrics.jsonl", "summary.json"):
        assert (root / "run" / f).is_file(), f
    assert s["test_accuracy"] > 0.75                           # two classes: chance is 0.5
    saved = json.loads((root / "run" / "summary.json").read_text())
    assert saved["test_accuracy"] == s["test_accuracy"] and saved["train_wall_s"] >= 0
    assert saved["feature_net"] == "rcg-evalnet" and len(saved["feature_net_sha256"]) == 64
    assert saved["fid_dom_real_floor"] >= 0 and 1.0 <= saved["is_dom_real"] <= 2.0
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("heldout_acc" in r for r in rows) and any("train_acc" in r for r in rows)


def test_loaded_evalnet_is_a_feature_net_with_penultimate_features(trained):
    from rcg.data import load_fashion_mnist
    root, data, s = trained
    net = load("evalnet", root / "run").module
    assert isinstance(net, EvalNet) and net.metric_suffix == "_dom"
    assert net.weights_sha256 == s["feature_net_sha256"]
    test = load_fashion_mnist(data, "test", resolution=16)
    feats, logits = net.features_and_logits(test.images)
    assert feats.shape == (64, 24) and logits.shape == (64, 2) and (feats >= 0).all()   # after the ReLU
    assert torch.equal(net.features(test.images), feats) and torch.equal(net.logits(test.images), logits)
    assert net.accuracy(test.images, test.labels) == pytest.approx(s["test_accuracy"])
    is_mean, _ = inception_score(logits, splits=4, from_logits=True)
    assert 1.0 <= is_mean <= 2.0
    # other sizes and channel counts are converted as rcg.data prepares training images
    assert net.features(test.images.repeat(1, 3, 1, 1)).shape == (64, 24)
    assert net.features(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape == (2, 24)
    out = evaluate_stream(iterate_tensor(test.images, 20), net, reference_stats(test.images, net), progress=False)
    assert out["fid_dom"] == pytest.approx(0.0, abs=1e-6) and 1.0 <= out["is_dom"] <= 2.0
    assert out["feature_net"] == "rcg-evalnet" and out["feature_dim"] == 24


def test_rerun_of_a_finished_run_resumes_without_training(trained):
    root, data, s = trained
    again = train_evalnet(tiny_run(data), str(root / "run"), "cpu", progress=False)
    assert again["feature_net_sha256"] == s["feature_net_sha256"]
    assert again["test_accuracy"] == s["test_accuracy"]


def test_bad_inputs_are_refused(tmp_path):
    data = make_fmnist(tmp_path / "data", n_train=64, n_test=32)
    cfg = tiny_run(data)
    with pytest.raises(ValueError, match="model.resolution"):
        train_evalnet(replace(cfg, model=EvalNetConfig(resolution=28, num_classes=2)), str(tmp_path / "r1"), "cpu",
                      progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        train_evalnet(replace(cfg, model=EvalNetConfig(resolution=16, num_classes=1)), str(tmp_path / "r2"), "cpu",
                      progress=False)
    with pytest.raises(ValueError, match="crop_scale"):
        train_evalnet(replace(cfg, crop_scale=(0.0, 1.0)), str(tmp_path / "r3"), "cpu", progress=False)
    assert not (tmp_path / "r1").exists()                      # refused before the run directory is made


def test_preset_round_trips_and_shapes():
    cfg = EVALNET_PRESETS["fmnist-evalnet"]
    assert from_dict(EvalNetRun, json.loads(json.dumps(to_dict(cfg)))) == cfg
    assert cfg.data.dataset == "fmnist" and cfg.model.resolution == 28 and cfg.model.in_chans == 1
    model = EvalCNN(cfg.model).eval()
    feats, logits = model.forward_features(torch.zeros(3, 1, 28, 28, dtype=torch.uint8))
    assert feats.shape == (3, cfg.model.feature_dim) and logits.shape == (3, 10)
    m32 = EvalCNN(EvalNetConfig(in_chans=3, resolution=32, mean=(0.5,) * 3, std=(0.25,) * 3)).eval()
    assert m32(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
