"""Gradient accumulation (--batch-gpu): a global batch split into micro-batches trains the weights of the whole
batch at once, to float reassociation (the RDM, MAGE, DiT); stages whose training needs the
whole batch in one pass (MoCo v3, the tokenizer's codebook statistics, the BatchNorm evalnet) refuse it clearly."""
from dataclasses import replace

import pytest

from rcg.cli import main
from rcg.train import micro_batches
from test_dist import _assert_same_weights, pixel_cfg, rdm_cfg, tiny_parts
from test_dit_pipeline import _dit_cfg


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from rcg.stages import cache_reps
    root = tiny_parts(tmp_path_factory.mktemp("accumulate"))
    cache_reps(root / "enc", root / "crops.safetensors", views=2, device="cpu", pixels=True, progress=False)
    return root


def test_micro_batches_cover_the_rows_in_order():
    assert micro_batches(slice(0, 32), 0) == [slice(0, 32)]
    assert micro_batches(slice(16, 32), 6) == [slice(16, 22), slice(22, 28), slice(28, 32)]
    assert micro_batches(slice(0, 8), 8) == [slice(0, 8)]


def test_rdm_mage_and_dit_micro_batches_equal_the_whole_batch(parts, tmp_path):
    from rcg.stages import train_pixel, train_rdm
    train_rdm(rdm_cfg(parts), str(tmp_path / "rdm"), "cpu", progress=False)
    train_rdm(rdm_cfg(parts, batch_gpu=8), str(tmp_path / "rdm-micro"), "cpu", progress=False)
    _assert_same_weights(tmp_path / "rdm", tmp_path / "rdm-micro")
    whole = pixel_cfg(parts)
    train_pixel(whole, str(tmp_path / "mage"), "cpu", progress=False)
    train_pixel(replace(whole, optim=replace(whole.optim, batch_gpu=12)), str(tmp_path / "mage-micro"), "cpu",
                progress=False)                              # 12, 12, 8 rows: unequal micro-batches weighted
    _assert_same_weights(tmp_path / "mage", tmp_path / "mage-micro")
    dit = replace(_dit_cfg(parts, epochs=0.5), cache=str(parts / "crops.safetensors"))
    train_pixel(dit, str(tmp_path / "dit"), "cpu", progress=False)
    train_pixel(replace(dit, optim=replace(dit.optim, batch_gpu=10)), str(tmp_path / "dit-micro"), "cpu",
                progress=False)
    _assert_same_weights(tmp_path / "dit", tmp_path / "dit-micro")


def test_whole_batch_stages_refuse_micro_batches(parts, tmp_path, capsys):
    assert main(["train-encoder", "--data-dir", str(parts / "data"), "--resolution", "16", "--batch-size", "32",
                 "--batch-gpu", "8", "--epochs", "0.1", "--out", str(tmp_path / "enc"), "--no-progress"]) == 2
    assert "MoCo v3's contrastive loss (negatives) and the momentum update depend on the whole batch" in \
        capsys.readouterr().err
    assert main(["train-tokenizer", "--data-dir", str(parts / "data"), "--resolution", "16", "--batch-gpu", "8",
                 "--out", str(tmp_path / "tok"), "--no-progress"]) == 2
    assert "codebook-usage statistics of its reseeding depend on the whole batch" in capsys.readouterr().err
