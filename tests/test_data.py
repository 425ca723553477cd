"""Tests for rcg.data: every test builds its own tiny data in tmp_path."""
import builtins
import gzip
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dataclasses import replace

from rcg.config import DataConfig
from rcg.data import (FMNIST_CLASSES, DataError, ImageSet, check_channels, check_resolution,
                      convert_channels, load_cifar10, load_dataset, load_fashion_mnist,
                      load_image_folder, resize_images)


# ----------------------------------------------------------------------------- helpers

def write_idx(path, array, magic, compress=True):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fmnist(root, n_train=7, n_test=5, compress=True):
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        ext = ".gz" if compress else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", x, 0x803, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", y, 0x801, compress)
        out[prefix] = (x, y)
    return out


def save_image(path, array, mode, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)                              # mode inferred from dtype and shape
    assert im.mode == mode, (im.mode, mode)
    im.save(path, format=fmt)


def py2_cifar_pickle(data, labels):
    """A batch as Python 2 + numpy 1.x wrote it (the real CIFAR-10 files): str objects as
    BINSTRING, the array via numpy.core.multiarray._reconstruct."""
    def s(b):
        return (pickle.SHORT_BINSTRING + bytes([len(b)]) + b if len(b) < 256
                else pickle.BINSTRING + struct.pack("<i", len(b)) + b)

    def i(v):
        return pickle.BININT + struct.pack("<i", v)

    n = data.shape[0]
    return b"".join([
        pickle.PROTO, b"\x02", pickle.EMPTY_DICT, pickle.MARK,
        s(b"data"),
        pickle.GLOBAL, b"numpy.core.multiarray\n_reconstruct\n", pickle.GLOBAL, b"numpy\nndarray\n",
        i(0), pickle.TUPLE1, s(b"b"), pickle.TUPLE3, pickle.REDUCE,
        pickle.MARK, i(1), i(n), i(3072), pickle.TUPLE2,
        pickle.GLOBAL, b"numpy\ndtype\n", s(b"u1"), i(0), i(1), pickle.TUPLE3, pickle.REDUCE,
        pickle.MARK, i(3), s(b"|"), pickle.NONE, pickle.NONE, pickle.NONE, i(-1), i(-1), i(0),
        pickle.TUPLE, pickle.BUILD,
        pickle.NEWFALSE, s(data.tobytes()), pickle.TUPLE, pickle.BUILD,
        s(b"labels"), pickle.EMPTY_LIST, pickle.MARK, *[i(int(v)) for v in labels], pickle.APPENDS,
        pickle.SETITEMS, pickle.STOP])


# ----------------------------------------------------------------------------- checks

@pytest.mark.parametrize("bad", [0, 7, 1025, 100000, 32.0, "32", True, None])
def test_check_resolution_rejects(bad):
    with pytest.raises(DataError, match="resolution must be an integer between 8 and 1024"):
        check_resolution(bad)


def test_check_resolution_and_channels_accept():
    for r in (8, 28, 1024, np.int64(64)):
        check_resolution(r)
    check_channels(1)
    check_channels(3)


@pytest.mark.parametrize("bad", [0, 2, 4, "3", None])
def test_check_channels_rejects(bad):
    with pytest.raises(DataError, match="channels must be 1 .* or 3"):
        check_channels(bad)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------- transforms

def test_resize_noop_and_shapes():
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(resize_images(x, 16), x)
    y = resize_images(torch.randint(0, 256, (2, 3, 20, 40), dtype=torch.uint8), 10)
    assert y.shape == (2, 3, 10, 10) and y.dtype == torch.uint8 and y.is_contiguous()
    assert resize_images(x, 32).shape == (2, 3, 32, 32)


def test_resize_constant_stays_constant():
    x = torch.full((3, 1, 28, 28), 137, dtype=torch.uint8)
    for r in (8, 28, 64):
        assert (resize_images(x, r) == 137).all()


def test_resize_center_crops_wide_image():
    x = torch.zeros((1, 1, 10, 30), dtype=torch.uint8)
    x[..., 10:20] = 255                      # bright middle third: survives the center crop
    y = resize_images(x, 10)
    assert y.shape == (1, 1, 10, 10)
    assert (y[..., 2:8] == 255).all()


def test_resize_rejects_bad_input():
    with pytest.raises(DataError, match="uint8 tensor"):
        resize_images(torch.zeros((1, 1, 8, 8)), 8)
    with pytest.raises(DataError, match="resolution"):
        resize_images(torch.zeros((1, 1, 8, 8), dtype=torch.uint8), 4)


def test_convert_channels_values():
    gray = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    rgb = convert_channels(gray, 3)
    assert rgb.shape == (2, 3, 5, 5) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    assert torch.equal(convert_channels(rgb, 1), gray)       # luma of equal channels is the value
    red = torch.zeros((1, 3, 4, 4), dtype=torch.uint8)
    red[:, 0] = 255
    assert (convert_channels(red, 1) == round(0.299 * 255)).all()     # 76
    assert torch.equal(convert_channels(red, 3), red)
    with pytest.raises(DataError, match="channels"):
        convert_channels(red, 2)


# ----------------------------------------------------------------------------- Fashion-MNIST

@pytest.mark.parametrize("compress", [True, False])
def test_fmnist_round_trip(tmp_path, compress):
    truth = make_fmnist(tmp_path, compress=compress)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        s = load_fashion_mnist(tmp_path, split=split)
        x, y = truth[prefix]
        assert isinstance(s, ImageSet) and len(s) == len(x)
        assert s.images.shape == (len(x), 1, 28, 28) and s.images.dtype == torch.uint8
        assert s.images.is_contiguous()
        assert s.labels.dtype == torch.int64 and s.labels.shape == (len(x),)
        assert np.array_equal(s.images[:, 0].numpy(), x)
        assert np.array_equal(s.labels.numpy(), y.astype(np.int64))
        assert s.class_names == FMNIST_CLASSES
        assert str(tmp_path) in s.source and split in s.source


def test_fmnist_resize_channels_limit(tmp_path):
    truth = make_fmnist(tmp_path)
    s = load_fashion_mnist(tmp_path, resolution=32, channels=3, limit=3)
    assert s.images.shape == (3, 3, 32, 32) and s.labels.shape == (3,)
    assert np.array_equal(s.labels.numpy(), truth["train"][1][:3])


def test_fmnist_via_load_dataset(tmp_path):
    make_fmnist(tmp_path)
    s = load_dataset(DataConfig(dataset="fmnist", path=str(tmp_path), split="test", limit=2))
    assert s.images.shape == (2, 1, 28, 28)


def test_fmnist_missing_dir(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nope")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path)                         # exists, but empty


def test_fmnist_bad_split(tmp_path):
    make_fmnist(tmp_path)
    with pytest.raises(DataError, match="'train' or 'test'"):
        load_fashion_mnist(tmp_path, split="val")


def test_fmnist_truncated_idx(tmp_path):
    make_fmnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    with gzip.open(path, "wb") as f:
        f.write(raw[:-100])                                  # valid gzip, short payload
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_fashion_mnist(tmp_path)


def test_fmnist_truncated_gzip_stream(tmp_path):
    make_fmnist(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_fashion_mnist(tmp_path)


def test_fmnist_wrong_magic(tmp_path):
    make_fmnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8), 0x801)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*magic"):
        load_fashion_mnist(tmp_path, split="test")


# ----------------------------------------------------------------------------- image folders

@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    save_image(root / "cats" / "a_gray.png", rng.integers(0, 256, (20, 30), dtype=np.uint8), "L")
    save_image(root / "cats" / "deep" / "b_rgb.png", rng.integers(0, 256, (30, 20, 3), dtype=np.uint8), "RGB")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255                                       # fully transparent red -> white
    save_image(root / "dogs" / "c_rgba.PNG", rgba, "RGBA")
    save_image(root / "dogs" / "d.jpg", np.full((24, 24, 3), 200, np.uint8), "RGB", "JPEG")
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_loads_all(folder, channels):
    s = load_image_folder(folder, 12, channels=channels, labels=True)
    assert s.images.shape == (4, channels, 12, 12) and s.images.dtype == torch.uint8
    assert s.images.is_contiguous()
    assert s.class_names == ["cats", "dogs"]
    assert s.labels.dtype == torch.int64 and s.labels.tolist() == [0, 0, 1, 1]
    assert (s.images[2] == 255).all()                        # transparent RGBA composited on white
    assert (s.images[3].int() - 200).abs().max() <= 3        # jpeg of a constant colour
    assert str(folder) in s.source


def test_folder_without_labels_and_limit(folder):
    s = load_image_folder(folder, 8, labels=False, limit=2)
    assert s.labels is None and s.class_names is None and s.images.shape == (2, 3, 8, 8)


def test_folder_labels_need_subfolders(tmp_path):
    save_image(tmp_path / "loose.png", np.zeros((8, 8), np.uint8), "L")
    with pytest.raises(DataError, match="<class>/<image>"):
        load_image_folder(tmp_path, 8, labels=True)
    assert len(load_image_folder(tmp_path, 8, labels=False)) == 1


def test_folder_corrupt_file_skipped_once(folder):
    (folder / "dogs" / "broken.png").write_bytes(np.random.default_rng(2).bytes(300))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = load_image_folder(folder, 8, labels=True)
    assert len(s) == 4
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "skipped 1 of 5 files" in msg and "broken.png" in msg


def test_folder_all_unreadable(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    (tmp_path / "y.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 2 image files"):
        load_image_folder(tmp_path, 8)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing", 8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("hi")
    with pytest.raises(DataError, match="no image files"):
        load_image_folder(tmp_path / "empty", 8)
    save_image(tmp_path / "one.png", np.zeros((8, 8), np.uint8), "L")
    with pytest.raises(DataError, match="is a file"):
        load_image_folder(tmp_path / "one.png", 8)
    with pytest.raises(DataError, match="resolution"):
        load_image_folder(tmp_path, 0)
    with pytest.raises(DataError, match="resolution"):
        load_image_folder(tmp_path, 100000)
    with pytest.raises(DataError, match="channels"):
        load_image_folder(tmp_path, 8, channels=2)


def test_folder_memory_estimate(tmp_path, monkeypatch):
    import rcg.data
    save_image(tmp_path / "a.png", np.zeros((8, 8), np.uint8), "L")
    monkeypatch.setattr(rcg.data, "MAX_BYTES", 100)
    with pytest.raises(DataError, match="--resolution or --limit"):
        load_image_folder(tmp_path, 64)


def test_folder_via_load_dataset(folder):
    s = load_dataset(DataConfig(dataset="folder", path=str(folder), resolution=8, channels=3, labels=True))
    assert s.images.shape == (4, 3, 8, 8) and s.labels is not None
    plain = load_dataset(DataConfig(dataset="folder", path=str(folder), resolution=8, channels=3))
    assert plain.labels is None and torch.equal(plain.images, s.images)     # unlabelled unless asked


def _png(path, size, mode, seed=0):
    w, h = size
    save_image(path, np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), mode)


def test_flat_folder_loads_unlabelled_by_default(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", (10 + i, 12), "RGB")
    s = load_dataset(DataConfig(dataset="folder", path=str(tmp_path), resolution=8, channels=3))
    assert len(s) == 3 and s.labels is None
    with pytest.raises(DataError, match="sub-folders"):
        load_dataset(DataConfig(dataset="folder", path=str(tmp_path), resolution=8, channels=3, labels=True))


def test_holdout_splits_a_folder_disjointly_and_stably(tmp_path):
    for c in ("a", "b"):
        for i in range(20):
            _png(tmp_path / c / f"{i}.png", (9, 9), "RGB", seed=i + (100 if c == "b" else 0))
    cfg = DataConfig(dataset="folder", path=str(tmp_path), resolution=8, channels=3, labels=True, holdout=0.25)
    train, test = load_dataset(cfg), load_dataset(replace(cfg, split="test"))
    whole = load_dataset(replace(cfg, holdout=0.0))
    assert len(train) + len(test) == len(whole) == 40 and 0 < len(test) < 20
    rows = {bytes(x.numpy()) for x in whole.images}
    assert {bytes(x.numpy()) for x in train.images} | {bytes(x.numpy()) for x in test.images} == rows
    assert not {bytes(x.numpy()) for x in train.images} & {bytes(x.numpy()) for x in test.images}
    _png(tmp_path / "a" / "new.png", (9, 9), "RGB", seed=999)      # a new file does not move the others
    test2 = load_dataset(replace(cfg, split="test"))
    old = {bytes(x.numpy()) for x in test.images}
    assert old <= {bytes(x.numpy()) for x in test2.images}


# ----------------------------------------------------------------------------- CIFAR-10

def make_cifar(root, n=4, py2=False):
    rng = np.random.default_rng(3)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    truth = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        raw = py2_cifar_pickle(data, labels) if py2 else \
            pickle.dumps({b"batch_label": b"x", b"data": data, b"labels": labels}, protocol=4)
        (base / name).write_bytes(raw)
        truth[name] = (data, labels)
    return base, truth


@pytest.mark.parametrize("py2", [False, True])
def test_cifar_loads(tmp_path, py2):
    base, truth = make_cifar(tmp_path, py2=py2)
    s = load_cifar10(tmp_path, split="test")                 # finds the cifar-10-batches-py sub-folder
    data, labels = truth["test_batch"]
    assert s.images.shape == (4, 3, 32, 32) and s.images.dtype == torch.uint8
    assert np.array_equal(s.images.numpy(), data.reshape(4, 3, 32, 32))
    assert s.labels.tolist() == labels and s.labels.dtype == torch.int64
    assert s.class_names[0] == "airplane"
    train = load_cifar10(base, split="train", limit=6, resolution=16, channels=1)
    assert train.images.shape == (6, 1, 16, 16)
    assert train.labels.tolist() == truth["data_batch_1"][1] + truth["data_batch_2"][1][:2]


def test_cifar_meta_names(tmp_path):
    base, _ = make_cifar(tmp_path)
    names = [f"c{i}".encode() for i in range(10)]
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    s = load_dataset(DataConfig(dataset="cifar10", path=str(base), split="test", resolution=32, channels=3))
    assert s.class_names == [f"c{i}" for i in range(10)]


class Evil:
    def __reduce__(self):
        return (builtins.exec, ("raise SystemExit('pwned')",))


class Marker:
    def __reduce__(self):
        return (builtins.print, ("EXECUTED",))


def test_cifar_malicious_pickle_refused(tmp_path, capsys):
    base, _ = make_cifar(tmp_path)
    (base / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [Marker()]}))
    with pytest.raises(DataError, match=r"builtins\.exec"):   # SystemExit would escape pytest.raises
        load_cifar10(base, split="test")
    (base / "test_batch").write_bytes(pickle.dumps({b"data": Marker()}))
    with pytest.raises(DataError, match=r"refused .*builtins\.print"):
        load_cifar10(base, split="test")
    assert "EXECUTED" not in capsys.readouterr().out


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "nope")
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar10(tmp_path)
    base, _ = make_cifar(tmp_path)
    (base / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(base)


def test_load_dataset_unknown():
    with pytest.raises(DataError, match="fmnist, folder, cifar10"):
        load_dataset(DataConfig(dataset="imagenet"))


def test_folder_16bit_grayscale_scaled(tmp_path):
    save_image(tmp_path / "deep.png", np.full((10, 10), 257 * 100, np.uint16), "I;16")
    s = load_image_folder(tmp_path, 8, channels=1)
    assert (s.images == 100).all()                           # scaled, not clipped to 255
