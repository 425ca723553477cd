"""Parity with MAGE's (JAX-converted MaskGIT) VQGAN: every ``vqgan_*.ckpt`` + ``*_io.safetensors`` in the fixture folder.

Dimensions, file names and the stored tensors are read from the files, never assumed. Every key of the io file
must be an input or a tensor this test recomputes; anything else fails.
"""
import functools
import os

import pytest
import torch
from conftest import assert_close, companion_io, fixture_cases, read_io, fixtures_dir

import rcg.official.load as official_load
from rcg.official import CheckpointFormatError, UnsafeCheckpointError, safe_load, vqgan_from_official

PATTERN = "vqgan_*.ckpt"
ATOL = 1e-4
INPUTS = {"images_uint8", "images", "ids_dec"}
OUTPUTS = {"z_e", "ids", "z_q", "decoded_from_ids", "decoded_from_ids_dec"}


def _cases():
    return fixture_cases(PATTERN)


def _require(path):
    return companion_io(path, PATTERN)


def _resolution(meta, io):
    cfg = meta.get("config", {})
    dd = meta.get("vqgan_yaml", {}).get("model", {}).get("params", {}).get("ddconfig", {})
    return int(cfg.get("resolution") or dd.get("resolution") or io["images"].shape[-1])


@functools.lru_cache(maxsize=None)
def _load(path):
    io_path = _require(path)
    io, meta = read_io(io_path)
    model, info = vqgan_from_official(path, resolution=_resolution(meta, io))
    return io, meta, model, info


def _close(name, got, want, atol=ATOL):
    assert_close(name, got, want, atol)


@pytest.mark.parametrize("path", _cases())
def test_io_keys_are_all_known(path):
    io = _load(path)[0]
    unknown = sorted(set(io) - INPUTS - OUTPUTS)
    assert not unknown, f"{path.name}: io keys this test cannot check: {unknown}"
    assert "images" in io or "images_uint8" in io, "io file has no input images"


@pytest.mark.parametrize("path", _cases())
def test_config_inferred(path):
    io, meta, model, info = _load(path)
    cfg = info["config"]
    want = dict(meta.get("config", {}))
    dd = meta.get("vqgan_yaml", {}).get("model", {}).get("params", {}).get("ddconfig", {})
    want.update({k: dd[k] for k in ("ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels") if k in dd})
    if "out_ch" in dd:
        want["out_channels"] = dd["out_ch"]
    assert want, "the io file's metadata holds no config to compare with"
    for k, v in want.items():
        got = cfg[k]
        assert (list(got) if isinstance(got, tuple) else got) == v, f"{k}: inferred {got}, fixture says {v}"
    for k in ("ids", "ids_dec"):
        if k in io:
            assert io[k].shape[1] == model.token_grid ** 2
            assert int(io[k].max()) < cfg["n_embed"]


def _images(io):
    return io["images"] if "images" in io else io["images_uint8"].float() / 255.0


@pytest.mark.parametrize("path", _cases())
def test_images_are_uint8_over_255(path):
    io, _, model, _ = _load(path)
    if "images_uint8" not in io or "images" not in io:
        pytest.skip("the io file has only one form of the images")
    assert torch.equal(io["images"], io["images_uint8"].float() / 255.0)
    with torch.no_grad():
        assert torch.equal(model.encode(io["images_uint8"])[1], model.encode(io["images"])[1])


@pytest.mark.parametrize("path", _cases())
def test_encode_path(path):
    io, _, model, _ = _load(path)
    with torch.no_grad():
        z_e = model.encoder(_images(io))
        z_q, ids = model.encode(_images(io))
    checked = 0
    if "z_e" in io:
        _close("z_e", z_e, io["z_e"])
        checked += 1
    if "ids" in io:
        assert ids.dtype == torch.int64 and ids.shape == io["ids"].shape
        bad = (ids != io["ids"]).sum().item()
        assert bad == 0, f"ids: {bad} of {ids.numel()} differ"
        checked += 1
    if "z_q" in io:
        _close("z_q", z_q, io["z_q"])
        checked += 1
    assert checked, "no encode-path tensor in the io file"


@pytest.mark.parametrize("path", _cases())
def test_decode_from_ids(path):
    io, _, model, _ = _load(path)
    pairs = [(i, o) for i, o in (("ids", "decoded_from_ids"), ("ids_dec", "decoded_from_ids_dec")) if o in io]
    if not pairs:
        pytest.skip("no decoded tensors in the io file")
    for ids_key, out_key in pairs:
        assert ids_key in io, f"{out_key} without {ids_key}"
        with torch.no_grad():
            _close(out_key, model.decode_ids(io[ids_key]), io[out_key])


# ------------------------------------------------------------------------------------------------ loading safety
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fixture():
    if fixtures_dir() is None:
        pytest.skip("RCG_OFFICIAL_FIXTURES is empty")
    path = _cases()[0].values[0]
    _require(path)          # fails when the folder or the io file is missing
    return path


def test_ckpt_is_read_by_safe_load(monkeypatch):
    path = _fixture()
    seen = []

    def spy(p):
        seen.append(p)
        return safe_load(p)
    monkeypatch.setattr(official_load, "safe_load", spy)
    vqgan_from_official(path, resolution=32)
    assert seen == [path]


def test_unsafe_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "vqgan_evil.ckpt"
    torch.save({"state_dict": {"quantize.embedding.weight": torch.zeros(4, 2)}, "cfg": _Exploit(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        vqgan_from_official(path)
    assert not marker.exists(), "the pickled payload was executed"


def test_truncated_and_foreign_files(tmp_path):
    path = _fixture()
    data = path.read_bytes()
    (tmp_path / "half.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated or corrupt"):
        vqgan_from_official(tmp_path / "half.ckpt")
    with pytest.raises(CheckpointFormatError, match="not a VQGAN"):
        vqgan_from_official({"model": {"model.diffusion_model.input_proj.weight": torch.zeros(8, 4)}})
    sd = safe_load(path)["state_dict"]
    with pytest.raises(CheckpointFormatError, match="attention / quant_conv"):
        vqgan_from_official({"state_dict": {**sd, "quant_conv.weight": torch.zeros(1)}})
    bad = dict(sd)
    bad.pop("decoder.conv_out.bias")
    with pytest.raises(CheckpointFormatError, match="do not fit"):
        vqgan_from_official({"state_dict": bad})


def test_vqgan_weights_inside_a_mage_file_and_taming_loss_keys():
    """A MAGE checkpoint carries the VQGAN under ``vqgan.``; taming training files add ``loss.*``."""
    path = _fixture()
    sd = safe_load(path)["state_dict"]
    ref, _ = vqgan_from_official(path, resolution=32)
    mage_like = {"model": {**{"vqgan." + k: v for k, v in sd.items()}, "blocks.0.norm1.weight": torch.ones(4)}}
    m, info = vqgan_from_official(mage_like, resolution=32)
    assert info["prefix"] == "vqgan."
    t, ti = vqgan_from_official({"state_dict": {**sd, "loss.discriminator.main.0.weight": torch.zeros(2)}}, 32)
    assert ti["dropped"] == ["loss.discriminator.main.0.weight"]
    ids = torch.randint(0, ref.cfg.n_embed, (1, ref.token_grid ** 2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(m.decode_ids(ids), ref.decode_ids(ids))
        assert torch.equal(t.decode_ids(ids), ref.decode_ids(ids))
