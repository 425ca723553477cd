"""Sampling is bit-identical to the code before the redesign (issue 14): tests/golden/ holds tiny RDM, MAGE (+ its
tokenizer and encoder) and DiT run directories and the images the old code sampled from them with fixed seeds
(tests/golden/make_golden.py made both, at commit 8bc7258)."""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

GOLDEN = Path(__file__).resolve().parent / "golden"


def test_sampled_images_are_bit_identical_to_the_fixture(monkeypatch):
    monkeypatch.chdir(GOLDEN)                      # the run directories name each other by relative paths
    monkeypatch.syspath_prepend(str(GOLDEN))
    sys.modules.pop("golden_cases", None)
    import golden_cases
    threads = torch.get_num_threads()
    try:
        got = golden_cases.sample_all()
    finally:
        torch.set_num_threads(threads)
    want = load_file(GOLDEN / "expected.safetensors")
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == torch.uint8 and got[name].shape == want[name].shape, name
        diff = int((got[name].int() - want[name].int()).abs().max())
        assert torch.equal(got[name], want[name]), f"{name}: images differ from the fixture (max |diff| {diff})"
