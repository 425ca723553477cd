"""rcg.RCGPipeline on the tiny MAGE and DiT systems of tests/golden: the same images as the sampler and `rcg sample`
for the same seeds, and a saved pipeline folder that loads to bit-identical images anywhere."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rcg
from rcg.cli import main
from rcg.sample import RCGSampler

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture
def golden(monkeypatch):
    monkeypatch.chdir(GOLDEN)                      # the golden runs name each other by relative paths
    return GOLDEN


@pytest.mark.parametrize("pixel", ["mage", "dit"])
def test_pipeline_images_equal_the_sampler_and_rcg_sample(golden, tmp_path, pixel):
    pipe = rcg.RCGPipeline.from_pretrained(pixel, rdm="rdm")
    got = pipe(5, seed=3, output_type="uint8")
    s = RCGSampler(pixel, "rdm", "cpu")
    assert got.dtype == torch.uint8 and torch.equal(got, torch.cat(list(s.stream(5, seed=3, batch_size=2))))
    pils = pipe(5, seed=3)
    assert len(pils) == 5 and all(isinstance(p, Image.Image) for p in pils)
    assert np.array_equal(np.stack([np.asarray(p) for p in pils]), got[:, 0].numpy())
    assert main(["sample", "--pixel", pixel, "--rdm", "rdm", "--num", "5", "--seed", "3",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "s.npz")["arr_0"], got.permute(0, 2, 3, 1).numpy())


def test_saved_pipeline_loads_anywhere_to_the_same_images(golden, tmp_path, monkeypatch):
    pipe = rcg.RCGPipeline.from_pretrained("mage", rdm="rdm")
    a = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24), dtype=np.uint8))
    b = Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16), dtype=np.uint8))
    want = (pipe(4, seed=7, output_type="uint8"), pipe.variations(a, 3, seed=1, output_type="uint8"),
            pipe.interpolate(a, b, 4, seed=2, output_type="uint8"))
    pipe.save_pretrained(tmp_path / "saved")
    files = sorted(p.relative_to(tmp_path / "saved").as_posix() for p in (tmp_path / "saved").rglob("*") if p.is_file())
    assert files == sorted([f"{c}/{f}" for c in ("encoder", "pixel", "rdm", "tokenizer")
                            for f in ("checkpoint.safetensors", "config.json")] + ["pipeline.json"])
    assert not any(f.endswith((".pt", ".pth", ".pkl")) for f in files)               # no pickles
    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "saved"), str(moved))
    monkeypatch.chdir(tmp_path)                                                       # away from the golden runs
    again = rcg.RCGPipeline.from_pretrained(moved)
    got = (again(4, seed=7, output_type="uint8"), again.variations(a, 3, seed=1, output_type="uint8"),
           again.interpolate(a, b, 4, seed=2, output_type="uint8"))
    for w, g in zip(want, got):
        assert torch.equal(w, g)


def test_an_rcg_fit_run_loads_from_its_folder_and_bad_inputs_are_clear(golden, tmp_path):
    run = tmp_path / "fit"
    run.mkdir()
    for name, src in (("pixel", "dit"), ("rdm", "rdm")):
        shutil.copytree(GOLDEN / src, run / name)
    pipe = rcg.RCGPipeline.from_pretrained(run)                # RUN/pixel + RUN/rdm, as rcg fit writes them
    assert torch.equal(pipe(2, seed=0, output_type="uint8"),
                       rcg.RCGPipeline.from_pretrained("dit", rdm="rdm")(2, seed=0, output_type="uint8"))
    with pytest.raises(ValueError, match="output_type"):
        pipe(1, output_type="numpy")
    with pytest.raises(ValueError, match="num >= 2"):
        pipe.interpolate(torch.zeros(1, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 8, dtype=torch.uint8), 1)
    with pytest.raises(ValueError, match="uint8 \\(C, H, W\\)"):
        pipe.variations(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_dtype_follows_the_hardware_rules(golden, monkeypatch):
    from rcg import precision
    default = rcg.RCGPipeline.from_pretrained("mage", rdm="rdm")
    fp32 = rcg.RCGPipeline.from_pretrained("mage", rdm="rdm", dtype=torch.float32)
    assert torch.equal(fp32(3, seed=1, output_type="uint8"), default(3, seed=1, output_type="uint8"))
    assert rcg.RCGPipeline.from_pretrained("mage", rdm="rdm", dtype="auto").describe()["precision"] == "fp32"
    with pytest.warns(UserWarning, match="emulated"):            # this test's CPU has no native bf16 (conftest)
        bf16 = rcg.RCGPipeline.from_pretrained("mage", rdm="rdm", dtype=torch.bfloat16)
    seen = []
    for m in bf16.sampler.model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    assert bf16(2, seed=1, output_type="uint8").shape == (2, 1, 16, 16)
    assert set(seen) == {torch.bfloat16}                          # every matmul of the generator ran in bf16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert rcg.RCGPipeline.from_pretrained("dit", rdm="rdm", dtype="auto").describe()["precision"] == "bf16"
    with pytest.raises(ValueError, match="dtype must be"):
        rcg.RCGPipeline.from_pretrained("mage", rdm="rdm", dtype=torch.float16)


def test_a_run_loads_from_any_folder(golden, tmp_path, monkeypatch):
    want = rcg.RCGPipeline.from_pretrained("mage", rdm="rdm")(3, seed=4, output_type="uint8")
    monkeypatch.chdir(tmp_path)          # the runs name their encoder and tokenizer relative to tests/golden
    pipe = rcg.RCGPipeline.from_pretrained(GOLDEN / "mage", rdm=GOLDEN / "rdm")
    assert torch.equal(pipe(3, seed=4, output_type="uint8"), want)
    assert pipe.sources["tokenizer"] == str(GOLDEN / "tokenizer")


def test_a_converted_official_mage_makes_the_variations_of_rcg_sample(tmp_path):
    from conftest import fixtures_dir
    official = fixtures_dir() / "mage_shared.pth"
    assert official.is_file(), f"no {official}: set RCG_OFFICIAL_FIXTURES to the shared official fixtures"
    assert main(["convert", str(official), str(tmp_path / "mage"), "--num-heads", "4", "--decoder-num-heads", "4"]) == 0
    ref = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 280, 3), dtype=np.uint8)).save(ref)
    pipe = rcg.RCGPipeline.from_pretrained(tmp_path / "mage")           # its MoCo v3 and VQGAN, converted beside it
    assert pipe.describe()["image_shape"] == (3, 256) and not pipe.describe()["has_rdm"]
    got = pipe.variations(ref, 2, seed=1, steps=2, output_type="uint8")
    assert main(["sample", "--pixel", str(tmp_path / "mage"), "--reference", str(ref), "--num", "2", "--seed", "1",
                 "--steps", "2", "--out", str(tmp_path / "v.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "v.npz")["arr_0"][1:], got.permute(0, 2, 3, 1).numpy())  # after the ref
    pipe.save_pretrained(tmp_path / "saved")
    again = rcg.RCGPipeline.from_pretrained(tmp_path / "saved")
    assert torch.equal(again.variations(ref, 2, seed=1, steps=2, output_type="uint8"), got)
    with pytest.raises(ValueError, match="needs an RDM"):
        pipe(1)
