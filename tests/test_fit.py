"""rcg fit: a flat folder of mixed PNGs -> a trained RCG system, sizes from the data, resume by rerun."""
import json

import numpy as np
import pytest
from PIL import Image

from rcg.cli import main
from rcg.images import scan_image_folder
from rcg.stages.fit import fit_folder, plan

TINY = {
    "encoder": ["encoder.widths=8,16", "encoder.depths=1,1", "encoder.mlp_dim=32", "encoder.rep_dim=16",
                "pred_dim=32", "optim.epochs=1", "optim.batch_size=16", "optim.log_every=1"],
    "tokenizer": ["model.ch=8", "model.z_channels=8", "model.embed_dim=8", "model.n_embed=32", "model.num_groups=4",
                  "optim.epochs=1", "optim.batch_size=8", "optim.bf16=false"],
    "rdm": ["model.model_channels=32", "model.time_embed_dim=16", "model.num_res_blocks=1", "optim.epochs=2",
            "optim.batch_size=16", "sample_steps=5", "fd_samples=16"],
    "pixel": ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=32",
              "model.decoder_depth=1", "model.decoder_num_heads=2", "optim.epochs=1", "optim.batch_size=16",
              "steps=2"],
}


def mixed_folder(root, n=30):
    """A flat folder of unlabelled PNGs: RGB, RGBA (transparent background) and grayscale, odd non-square sizes."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        w, h = int(rng.integers(20, 50)), int(rng.integers(20, 50))
        kind = ("RGB", "RGBA", "L")[i % 3]
        colour = rng.integers(0, 256, 3)
        a = np.zeros((h, w, 4), np.uint8)
        a[..., :3] = colour
        a[h // 4:3 * h // 4, w // 4:3 * w // 4, 3] = 255               # an opaque square on a transparent ground
        im = Image.fromarray(a, "RGBA")
        im = im if kind == "RGBA" else im.convert(kind)
        im.save(root / f"img_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return mixed_folder(tmp_path_factory.mktemp("fit") / "images")


def test_sizes_come_from_the_data(folder, tmp_path):
    p = plan(folder, tmp_path / "run")
    assert p.channels == 3 and p.resolution == 32           # colour images; short sides 20-49 px -> 32 (min choice)
    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(8):
        Image.fromarray(np.full((70, 90), 30 * i, np.uint8), "L").save(gray / f"{i}.png")
    assert scan_image_folder(gray).all_gray and plan(gray, tmp_path / "g").channels == 1
    assert plan(gray, tmp_path / "g").resolution == 64      # median short side 70 -> 64
    assert not (tmp_path / "run").exists() and not (tmp_path / "g").exists()       # planning writes nothing


def test_fit_end_to_end_after_a_failed_start(folder, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="--channels"):
        fit_folder(folder, out, channels=2, overrides=TINY, progress=False)
    with pytest.raises(Exception, match="does not exist"):
        fit_folder(tmp_path / "nowhere", out, overrides=TINY, progress=False)
    assert not out.exists()                                     # nothing written by the failed starts
    s = fit_folder(folder, out, overrides=TINY, progress=False, device="cpu")
    for name in ("samples.png", "references.png", "interpolation.png", "summary.json"):
        assert (out / name).is_file(), name
    with Image.open(out / "samples.png") as im:
        grid = np.asarray(im)
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.std() > 0  # RGB, not blank
    summary = json.loads((out / "summary.json").read_text())
    assert summary["request"]["channels"] == 3 and summary["request"]["resolution"] == 32
    assert summary["data"]["train"] + summary["data"]["heldout"] == 30 and summary["data"]["heldout"] >= 1
    assert set(summary["stage_wall_s"]) == {"data", "encoder", "tokenizer", "cache", "rdm", "pixel", "outputs"}
    assert summary["precision"]["pixel"] == "fp32"              # the tests' CPU has no native bf16 (conftest)
    assert np.isfinite(summary["rdm"]["rep_fd_floor"]) and summary["rdm"]["rep_fd_floor"] > 0
    assert np.isfinite(summary["generated_rep_fd"]) and "psnr" in summary["tokenizer"]
    assert s["files"] == summary["files"]
    cfg = json.loads((out / "tokenizer" / "config.json").read_text())
    assert (cfg["model"]["in_channels"], cfg["model"]["resolution"]) == (3, 32)
    # rerunning the same command resumes: every stage is found finished
    capsys.readouterr()
    again = fit_folder(folder, out, overrides=TINY, progress=False, device="cpu")
    log = capsys.readouterr().out
    assert "train-encoder" not in log and "RDM:" not in log and again["rdm"] == s["rdm"]
    # a different request in the same RUN is refused
    with pytest.raises(ValueError, match="differs in: resolution"):
        fit_folder(folder, out, resolution=64, overrides=TINY, progress=False)


def test_cli_fit_dry_run_writes_nothing(folder, tmp_path, capsys):
    assert main(["fit", str(folder), "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert '"resolution": 32' in out and '"channels": 3' in out and not (tmp_path / "r").exists()
    assert main(["fit", str(folder), "--out", str(tmp_path / "r"), "--set", "nostage.x=1"]) == 2


def test_fit_reuses_an_encoder_and_takes_its_channels(folder, tmp_path):
    first = tmp_path / "a"
    fit_folder(folder, first, overrides=TINY, progress=False, device="cpu")
    with pytest.raises(ValueError, match="takes 3-channel"):
        plan(folder, tmp_path / "b", channels=1, encoder=str(first / "encoder"))
    dit = {**TINY, "pixel": ["model.hidden_size=32", "model.depth=1", "model.num_heads=2", "optim.epochs=1",
                             "optim.batch_size=16", "steps=2"]}
    s = fit_folder(folder, tmp_path / "b", encoder=str(first / "encoder"), generator="dit", overrides=dit,
                   progress=False, device="cpu")
    assert not (tmp_path / "b" / "encoder").exists() and not (tmp_path / "b" / "tokenizer").exists()
    assert (tmp_path / "b" / "references.png").is_file() and s["pixel"]["generator"] == "dit"
    ldm = {**TINY, "pixel": ["model.model_channels=16", "model.num_head_channels=8", "model.num_groups=8",
                             "optim.epochs=1", "optim.batch_size=16", "steps=2"]}
    s = fit_folder(folder, tmp_path / "c", encoder=str(first / "encoder"), generator="ldm", overrides=ldm,
                   progress=False, device="cpu")                   # the LDM trains the tokenizer: its first stage
    assert (tmp_path / "c" / "tokenizer" / "summary.json").is_file() and s["pixel"]["generator"] == "ldm"
    assert (tmp_path / "c" / "samples.png").is_file() and (tmp_path / "c" / "interpolation.png").is_file()


@pytest.mark.parametrize("generator", ["mage", "dit", "adm", "ldm"])
@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_stage_configs_fit_every_resolution(tmp_path, generator, resolution):
    """Every stage's config is valid at every resolution fit picks (a DiT's patches tile its input)."""
    from rcg.stages.fit import stage_configs
    p = plan(mixed_folder(tmp_path / "imgs", n=9), tmp_path / "run", resolution=resolution, generator=generator)
    cfgs = stage_configs(p, tmp_path / "run", 500, (0.5,) * 3, (0.25,) * 3, {})
    pix = cfgs["pixel"]
    assert pix.generator == generator and cfgs["encoder"].data.resolution == resolution
    if generator == "dit":
        assert pix.model.input_size == resolution and resolution % pix.model.patch_size == 0
    if generator == "adm":                        # the U-Net, sized from the crops as train-pixel does, runs
        import torch
        from rcg.pixel import generator as spec
        g = spec("adm")
        net = g.network(g.sized(pix.model, {"images_shape": (2, 3, resolution, resolution), "rep_dim": 256})).eval()
        with torch.no_grad():
            out = net(torch.zeros(1, 3, resolution, resolution), torch.tensor([10]), torch.zeros(1, 256))
        assert out.shape == (1, 6, resolution, resolution)
    if generator == "ldm":                        # its first stage is the tokenizer fit trains, which it loads
        import torch
        from rcg.pixel import generator as spec
        from rcg.pixel.ldm import install_first_stage
        from rcg.tokenizer import VQModel
        tok = VQModel(cfgs["tokenizer"].model).eval()
        g = spec("ldm")
        net = g.network(g.sized(pix.model, {"images_shape": (2, 3, resolution, resolution), "rep_dim": 256,
                                            "tokenizer": tok}))
        net = install_first_stage(net, tok).eval()
        lat = net.cfg.latent_size
        assert lat == resolution // 2 ** (len(cfgs["tokenizer"].model.ch_mult) - 1)
        with torch.no_grad():
            eps = net(torch.zeros(1, net.cfg.latent_channels, lat, lat), torch.tensor([10]), torch.zeros(1, 256))
            assert eps.shape == (1, net.cfg.latent_channels, lat, lat)
            assert net.decode(eps).shape == (1, 3, resolution, resolution)


def test_fit_budgets_every_generator_of_the_registry():
    from rcg.pixel import GENERATORS
    from rcg.stages.fit import FIT_PRESETS
    for name, pre in FIT_PRESETS.items():
        assert set(pre.pixel) == set(GENERATORS) == set(pre.pixel_images), name
