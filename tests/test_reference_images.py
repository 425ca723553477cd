"""Reference images (``rcg sample --reference``, ``rcg interpolate``) decode exactly like training image folders,
and both commands work for a DiT pixel generator (which has no tokenizer)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_fmnist, tiny_encoder_run
from rcg.cli import main
from rcg.data import load_image_folder, resize_images
from rcg.images import decode_image
from rcg.pixel import GENERATORS
from rcg.sample import RCGSampler, load_image_files
from rcg.stages import interpolate_command, sample_command
from rcg.stages import cache_reps, train_encoder, train_pixel
from test_dit_pipeline import _dit_cfg

W, H = 23, 17                                   # odd, non-square source size


def _rgba(seed=0) -> Image.Image:
    """Random colours; the top-left block fully transparent (over black), a band half transparent."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    a[..., 3] = 255
    a[:8, :10, :3] = 0
    a[:8, :10, 3] = 0
    a[10:14, :, 3] = 128
    return Image.fromarray(a, "RGBA")


def _la(seed=1) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (H, W, 2), dtype=np.uint8)
    a[..., 1] = 255
    a[:8, :10] = (0, 0)
    a[12:, :, 1] = 90
    return Image.fromarray(a, "LA")


def _palette(seed=2) -> Image.Image:
    """A 'P' image whose palette index 0 (black) is transparent."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(1, 8, (H, W), dtype=np.uint8)
    idx[:8, :10] = 0
    im = Image.fromarray(idx, "P")
    im.putpalette([0, 0, 0] + rng.integers(0, 256, 7 * 3).tolist() + [0] * (3 * 248))
    im.info["transparency"] = 0
    return im


def _old_decode(path, channels, resolution) -> torch.Tensor:
    """What load_image_files did before: drop alpha, bilinear tensor resize."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    t = torch.from_numpy(arr.copy())
    return resize_images((t[None] if t.ndim == 2 else t.permute(2, 0, 1))[None], resolution)[0]


@pytest.mark.parametrize("make", [_rgba, _la, _palette], ids=["RGBA", "LA", "P-transparency"])
@pytest.mark.parametrize("channels", [3, 1])
def test_reference_decodes_like_an_image_folder(tmp_path, make, channels):
    folder = tmp_path / "folder"
    folder.mkdir()
    path = folder / "img.png"
    make().save(path)
    with Image.open(path) as im:                          # the file really keeps its transparency
        assert im.size == (W, H) and (im.mode in ("RGBA", "LA") or "transparency" in im.info)
    ref = load_image_files([str(path)], channels, 16)
    train = load_image_folder(folder, 16, channels).images
    assert ref.dtype == torch.uint8 and ref.shape == (1, channels, 16, 16)
    assert torch.equal(ref, train)
    assert torch.equal(ref[0], torch.from_numpy(decode_image(path, 16, channels).copy()).permute(2, 0, 1))
    # transparency goes onto white: the transparent (black) top-left corner is white, not black
    assert (ref[0, :, :5, :6] == 255).all()
    old = _old_decode(path, channels, 16)
    assert (old[:, :5, :6] < 40).all()
    assert not torch.equal(ref[0], old)


def test_unreadable_or_missing_reference_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    for p in (bad, tmp_path / "missing.png"):
        with pytest.raises(ValueError, match="cannot read image"):
            load_image_files([str(p)], 3, 16)


def test_image_shape_mage_and_dit_without_building_models():
    mage = RCGSampler.__new__(RCGSampler)
    mage.cfg, mage.spec = SimpleNamespace(generator="mage"), GENERATORS["mage"]
    mage.tokenizer = SimpleNamespace(cfg=SimpleNamespace(in_channels=3, resolution=32))
    assert mage.image_shape == (3, 32)
    dit = RCGSampler.__new__(RCGSampler)
    dit.cfg = SimpleNamespace(generator="dit", autoencoder="", model=SimpleNamespace(in_channels=1, input_size=16))
    dit.spec = GENERATORS["dit"]
    dit.tokenizer = None
    assert dit.image_shape == (1, 16)
    dit.cfg.autoencoder = "stabilityai/sd-vae-ft-ema"
    with pytest.raises(ValueError, match="latents"):
        dit.image_shape


# ----------------------------------------------------------------------------- a tiny DiT run

@pytest.fixture(scope="module")
def dit_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("refdit")
    data = make_fmnist(root / "data", n_train=64, n_test=32)
    train_encoder(tiny_encoder_run(data, epochs=0.5), str(root / "enc"), "cpu", progress=False)
    cache_reps(root / "enc", root / "cache.safetensors", views=1, device="cpu", pixels=True, progress=False)
    train_pixel(_dit_cfg(root, epochs=1.0), str(root / "dit"), "cpu", progress=False)
    refs = []
    for i, make in enumerate((_rgba, _la)):
        refs.append(root / f"ref{i}.png")
        make().save(refs[-1])
    return root, [str(p) for p in refs]


def _grid_size(n_cols, n_rows, size=16, pad=2, scale=2):
    return scale * (n_cols * (size + pad) + pad), scale * (n_rows * (size + pad) + pad)


def _tile(grid: np.ndarray, row, col, size=16, pad=2, scale=2) -> np.ndarray:
    g = grid[::scale, ::scale]                            # undo the nearest-neighbour upscale
    top, left = pad + row * (size + pad), pad + col * (size + pad)
    return g[top:top + size, left:left + size]


def test_dit_sample_with_reference(dit_run, tmp_path):
    root, (ref, _) = dit_run
    pixel = str(root / "dit")
    s = RCGSampler(pixel, None, "cpu")
    assert s.tokenizer is None and s.image_shape == (1, 16)
    out = tmp_path / "ref.png"
    sample_command(pixel, None, str(out), num=3, references=[ref], device="cpu")
    grid = np.asarray(Image.open(out))
    assert grid.shape == _grid_size(4, 1)[::-1]           # one row: the reference + 3 variations, 2x upscaled
    # the first tile is the reference decoded like a training folder (transparent corner white)
    assert np.array_equal(_tile(grid, 0, 0), load_image_files([ref], 1, 16)[0, 0].numpy())
    made = np.stack([_tile(grid, 0, c) for c in range(1, 4)]).astype(np.float64)
    assert made.std() > 0 and (made.std(axis=0) > 0).any()   # not constant; different seeds differ


def test_dit_interpolate(dit_run, tmp_path):
    root, (a, b) = dit_run
    out = tmp_path / "strip.png"
    interpolate_command(str(root / "dit"), a, b, str(out), num=5, device="cpu")
    strip = np.asarray(Image.open(out))
    assert strip.shape == _grid_size(5, 1)[::-1]          # one row of 5, 2x upscaled
    tiles = np.stack([_tile(strip, 0, c) for c in range(5)])
    assert tiles.astype(np.float64).std() > 0             # not a constant image
    # the strip is the interpolation between the two files decoded like a training folder (one seed for all;
    # a barely trained DiT hardly uses its representation yet, so the tiles themselves may all look alike)
    s = RCGSampler(str(root / "dit"), None, "cpu")
    ims = load_image_files([a, b], *s.image_shape)
    assert np.array_equal(tiles, s.interpolate(ims[0], ims[1], 5, 0)[:, 0].numpy())


def test_dit_reference_and_interpolate_cli(dit_run, tmp_path):
    root, (a, b) = dit_run
    pixel = str(root / "dit")
    assert main(["sample", "--pixel", pixel, "--reference", a, "--num", "3", "--out", str(tmp_path / "r.png")]) == 0
    assert Image.open(tmp_path / "r.png").size == _grid_size(4, 1)
    assert main(["sample", "--pixel", pixel, "--reference", a, b, "--num", "2", "--out", str(tmp_path / "r.npz")]) == 0
    assert np.load(tmp_path / "r.npz")["arr_0"].shape == (6, 16, 16, 1)       # 2 rows: reference + 2 variations
    assert main(["interpolate", a, b, "--pixel", pixel, "--num", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size == _grid_size(4, 1)
