"""Official checkpoints are read without executing pickled code; corrupt files give actionable errors."""
import argparse
import fractions
import os

import pytest
import torch
from conftest import fixtures_dir

from rcg.official import (CheckpointFormatError, UnsafeCheckpointError, mocov3_from_official, rdm_from_official,
                          safe_load)

LOADERS = [safe_load, rdm_from_official, mocov3_from_official]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_reduce_exploit_is_refused(tmp_path, loader, zipfile):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "args": _Exploit(marker)}, path,
               _use_new_zipfile_serialization=zipfile)
    with pytest.raises(UnsafeCheckpointError, match=r"system"):   # posix.system / nt.system
        loader(path)
    assert not marker.exists(), "the pickled payload was executed"


def test_unknown_class_is_refused_and_named(tmp_path):
    path = tmp_path / "obj.pth"
    torch.save({"x": _Exploit("unused")}, path)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        safe_load(path)
    torch.save({"x": fractions.Fraction(1, 3)}, path)        # harmless, but not on the allow-list
    with pytest.raises(UnsafeCheckpointError, match="fractions.Fraction"):
        safe_load(path)


def test_namespace_is_allowed(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.ones(3)}, "args": argparse.Namespace(lr=1e-3, name="x"), "epoch": 2}, path)
    ckpt = safe_load(path)
    assert isinstance(ckpt["args"], argparse.Namespace) and ckpt["args"].lr == 1e-3
    assert torch.equal(ckpt["model"]["w"], torch.ones(3))


def test_missing_file(tmp_path):
    for loader in LOADERS:
        with pytest.raises(FileNotFoundError, match="nope.pth"):
            loader(tmp_path / "nope.pth")


def _truncation_sources(tmp_path):
    own = tmp_path / "own.pth"
    torch.save({"model": {"w": torch.randn(1000)}}, own)
    d = fixtures_dir()
    found = sorted(d.glob("rdm_*.pth")) + sorted(d.glob("mocov3_*.pth.tar")) if d is not None and d.is_dir() else []
    if d is not None and not found:
        pytest.fail(f"no official rdm_*/mocov3_* fixtures in {d} (set RCG_OFFICIAL_FIXTURES, or '' to disable)")
    return [own] + found


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_truncated_and_garbage_files(tmp_path, loader):
    for src in _truncation_sources(tmp_path):
        data = src.read_bytes()
        bad = tmp_path / ("half_" + src.name)
        bad.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointFormatError, match="truncated or corrupt"):
            loader(bad)
    for name, payload in (("empty.pth", b""), ("text.pth", b"not a checkpoint at all\n" * 10)):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(CheckpointFormatError):
            loader(tmp_path / name)


def test_wrong_layouts(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointFormatError, match="list"):
        safe_load(path)
    with pytest.raises(CheckpointFormatError, match="RDM"):
        rdm_from_official({"state_dict": {"module.base_encoder.cls_token": torch.zeros(1, 1, 8)}})
    with pytest.raises(CheckpointFormatError, match="MoCo"):
        mocov3_from_official({"model": {"model.diffusion_model.input_proj.weight": torch.zeros(8, 4)}})
    with pytest.raises(TypeError):
        rdm_from_official(42)
    with pytest.raises(CheckpointFormatError, match="not a file"):
        safe_load(tmp_path)
