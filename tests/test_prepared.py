"""rcg prepare-data: a folder decoded once into a store that gives the same images, labels, splits and training
batches as the in-memory path, read through DataLoader workers; a run on it resumes bit-identically after a
SIGKILL; a truncated, unfinished or mismatched store is a clear error."""
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rcg.cli import main
from rcg.config import DataConfig
from rcg.data import load_dataset, load_fashion_mnist
from rcg.feed import rows_of, step_inputs, workers_for
from rcg.images import DataError
from rcg.prepared import IMAGES, MANIFEST, PreparedImages, read_manifest
from rcg.rng import EpochBatches
from rcg.store import load_state, load_tensors
from helpers import make_fmnist


def make_folder(root: Path, n: int = 60) -> Path:
    """Colour and gray PNGs / JPEGs of mixed sizes and modes (some transparent) in three class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / ("cats", "dogs", "owls")[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        if i % 4 == 0:
            Image.fromarray(rng.integers(0, 255, (h, w, 4), dtype=np.uint8), "RGBA").save(d / f"{i}.png")
        elif i % 4 == 1:
            Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), "L").save(d / f"{i}.png")
        else:
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.jpg", quality=90)
    (root / "owls" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    folder = make_folder(tmp / "images")
    with pytest.warns(UserWarning, match="skipped 1 of 61"):
        assert main(["prepare-data", str(folder), str(tmp / "store"), "--resolution", "16", "--labels",
                     "--no-progress"]) == 0
    return folder, tmp / "store"


def test_the_store_holds_what_the_folder_loader_decodes(store):
    folder, path = store
    man = read_manifest(path)
    assert (man["count"], man["channels"], man["resolution"], man["labels"]) == (60, 3, 16, True)
    assert man["class_names"] == ["cats", "dogs", "owls"] and man["bytes"][IMAGES] == 60 * 3 * 16 * 16
    for split, holdout in (("train", 0.0), ("train", 0.2), ("test", 0.2)):
        cfg = DataConfig("folder", path=str(folder), resolution=16, channels=3, labels=True, split=split,
                         holdout=holdout)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                       # the broken file, when in this split
            mem = load_dataset(cfg)
        prep = load_dataset(DataConfig("prepared", path=str(path), resolution=16, channels=3, labels=True,
                                       split=split, holdout=holdout))
        assert isinstance(prep.images, PreparedImages) and prep.images.shape == mem.images.shape
        assert torch.equal(prep.images[:], mem.images) and torch.equal(prep.labels, mem.labels)
        assert prep.class_names == mem.class_names


def test_training_batches_equal_the_in_memory_ones_through_workers(store):
    folder, path = store
    prep = load_dataset(DataConfig("prepared", path=str(path), resolution=16, channels=3, labels=True))
    with pytest.warns(UserWarning, match="skipped"):
        mem = load_dataset(DataConfig("folder", path=str(folder), resolution=16, channels=3, labels=True))
    batches = EpochBatches(len(mem), 16, seed=3)                   # 3 steps per epoch: crosses epochs
    assert workers_for(prep.images) >= 1 and workers_for(mem.images) == 0
    want = list(step_inputs(rows_of(mem.images, mem.labels), batches, 2, 9))
    got = list(step_inputs(rows_of(prep.images, prep.labels), batches, 2, 9, workers=2))   # DataLoader workers
    assert len(got) == len(want) == 7
    for (gi, gl), (wi, wl) in zip(got, want):
        assert gi.dtype == torch.uint8 and torch.equal(gi, wi) and torch.equal(gl, wl)


def test_fashion_mnist_prepares_to_the_same_images(tmp_path):
    data = make_fmnist(tmp_path / "fm")
    assert main(["prepare-data", "fmnist", str(tmp_path / "st"), "--data-dir", str(data), "--split", "test"]) == 0
    want = load_fashion_mnist(str(data), "test", 28, 1)
    got = load_dataset(DataConfig("prepared", path=str(tmp_path / "st"), resolution=28, channels=1))
    assert torch.equal(got.images[:], want.images) and torch.equal(got.labels, want.labels)
    assert main(["prepare-data", "fmnist", str(tmp_path / "st"), "--verify"]) == 0


def test_broken_stores_are_clear_errors(store, tmp_path, capsys):
    _, path = store
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in path.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = DataConfig("prepared", path=str(bad), resolution=16, channels=3)
    with pytest.raises(DataError, match="holds 3-channel 16 px images, but 1-channel 28 px"):
        load_dataset(DataConfig("prepared", path=str(bad)))
    data = (bad / IMAGES).read_bytes()
    (bad / IMAGES).write_bytes(data[:-100])                       # truncated
    with pytest.raises(DataError, match=r"images.u8 is 45,980 bytes, the manifest says 46,080 .*prepare the store"):
        load_dataset(cfg)
    (bad / IMAGES).write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])   # same size, one bit flipped
    assert main(["prepare-data", "x", str(bad), "--verify"]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    (bad / MANIFEST).unlink()                                     # an interrupted prepare-data
    with pytest.raises(DataError, match="unfinished store"):
        load_dataset(cfg)
    with pytest.raises(DataError, match="not a prepared store"):
        load_dataset(DataConfig("prepared", path=str(tmp_path), resolution=16, channels=3))


def _tokenizer_argv(path: Path, out: Path) -> list:
    sets = ["model.ch=8", "model.ch_mult=1,2,2", "model.num_res_blocks=1", "model.z_channels=8", "model.embed_dim=8",
            "model.n_embed=32", "model.num_groups=4", "optim.log_every=2", "optim.ckpt_every=3",
            "optim.sample_every=0", "eval_images=8"]
    return ["train-tokenizer", "--data", "prepared", "--data-dir", str(path), "--resolution", "16", "--channels",
            "3", "--out", str(out), "--batch-size", "8", "--epochs", "5", "--no-progress", "--device", "cpu",
            *[x for s in sets for x in ("--set", s)]]


def _cli(argv):
    return subprocess.Popen([sys.executable, "-m", "rcg.cli", *argv], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkilled_training_on_a_store_resumes_bit_identically(store, tmp_path):
    _, path = store
    ref = _cli(_tokenizer_argv(path, tmp_path / "ref"))
    run = tmp_path / "run"
    victim = _cli(_tokenizer_argv(path, run))
    deadline = time.time() + 120
    while not (run / "state.pt").exists():
        assert victim.poll() is None, victim.communicate()
        assert time.time() < deadline
        time.sleep(0.005)
    assert victim.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    killed_at, total = load_state(run / "state.pt")["step"], 5 * EpochBatches(60, 8, 0).steps_per_epoch
    assert 0 < killed_at < total
    rerun = _cli(_tokenizer_argv(path, run))
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert f"resuming {run} from step {killed_at}" in out
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    a, b = (load_tensors(d / "checkpoint.safetensors")[0] for d in (tmp_path / "ref", run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_state(run / "state.pt")["step"] == total


def test_cache_reps_and_eval_sources_read_a_store_as_the_images_themselves(tmp_path):
    from rcg.evaluate import iterate_tensor
    from rcg.stages import cache_reps
    from test_dist import tiny_parts
    root = tiny_parts(tmp_path)                                   # an encoder on 16 px Fashion-MNIST-like data
    assert main(["prepare-data", "fmnist", str(tmp_path / "st"), "--data-dir", str(root / "data"),
                 "--resolution", "16"]) == 0
    cache_reps(root / "enc", tmp_path / "mem.safetensors", views=2, device="cpu", progress=False, batch_size=48)
    cache_reps(root / "enc", tmp_path / "prep.safetensors", views=2, device="cpu", progress=False, batch_size=48,
               data_overrides=["data.dataset=prepared", f"data.path={tmp_path / 'st'}"])
    a, b = (load_tensors(tmp_path / f)[0] for f in ("mem.safetensors", "prep.safetensors"))
    assert torch.equal(a["reps"], b["reps"]) and torch.equal(a["labels"], b["labels"])
    prep = load_dataset(DataConfig("prepared", path=str(tmp_path / "st"), resolution=16, channels=1))
    batches = list(iterate_tensor(prep.images, 50))
    assert [len(x) for x in batches] == [50, 50, 28] and torch.equal(torch.cat(batches), prep.images[:])
