"""The `rcg` command line: config resolution, dry runs, and clear errors with exit code 2."""
import json

import pytest

from helpers import make_fmnist
from rcg.cli import main


def _config_from(out: str) -> dict:
    return json.loads(out[out.index("{"):])


def test_dry_run_prints_resolved_config(capsys):
    assert main(["train-encoder", "--dry-run", "--lr", "0.5", "--set", "encoder.widths=8,16",
                 "--resolution", "32"]) == 0
    cfg = _config_from(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.5 and cfg["encoder"]["widths"] == [8, 16]
    assert cfg["data"]["resolution"] == 32 and cfg["eval_data"]["resolution"] == 32
    assert cfg["optim"]["epochs"] > 0 and cfg["encoder"]["arch"] == "resnet"


def test_paper_rdm_preset_has_paper_settings(capsys):
    assert main(["train-rdm", "--preset", "rdm-l12-w1536", "--cache", "c", "--encoder", "e", "--dry-run"]) == 0
    cfg = _config_from(capsys.readouterr().out)
    assert cfg["model"]["num_res_blocks"] == 12 and cfg["model"]["model_channels"] == 1536
    assert cfg["optim"]["lr"] == pytest.approx(5.12e-4) and cfg["optim"]["batch_size"] == 512
    assert cfg["optim"]["weight_decay"] == 0.01 and cfg["optim"]["ema_decay"] == 0.9999
    assert cfg["diffusion"] == {"num_steps": 1000, "beta_start": 0.0015, "beta_end": 0.0195, "parameterization": "x0",
                                "schedule": "scaled_linear", "learn_sigma": False}
    assert cfg["sample_steps"] == 250 and cfg["eta"] == 1.0


@pytest.mark.parametrize("argv, message", [
    (["train-encoder", "--set", "optim.nope=1"], "has no field 'nope'"),
    (["train-encoder", "--set", "optim.lr"], "KEY=VALUE"),
    (["train-encoder", "--data", "folder", "--data-dir", "/nonexistent/photos", "--out", "{tmp}/r"], "/nonexistent/photos"),
    (["train-encoder", "--resolution", "100000", "--out", "{tmp}/r"], "resolution must be an integer between 8 and 1024"),
    (["cache-reps", "--encoder", "{tmp}", "--out", "{tmp}/x.safetensors"], "not a run directory"),
    (["sample-reps", "--rdm", "{tmp}/missing.pth", "--out", "{tmp}/x.safetensors"], "missing.pth"),
])
def test_bad_input_is_a_clear_error_with_exit_code_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_train_encoder_from_the_command_line(tmp_path, capsys):
    data = make_fmnist(tmp_path / "data", n_train=64, n_test=32)
    argv = ["train-encoder", "--data-dir", str(data), "--resolution", "16", "--epochs", "1", "--batch-size", "32",
            "--set", "eval_data.path=" + str(data), "--set", "encoder.widths=8", "--set", "encoder.depths=1",
            "--set", "encoder.mlp_dim=16", "--set", "pred_dim=16", "--set", "knn.k=3", "--no-bf16",
            "--out", str(tmp_path / "enc"), "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "enc" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["knn_queries"] == 32
    # the same directory with another config is refused, naming the key
    assert main(argv[:-3] + ["--lr", "0.1", "--out", str(tmp_path / "enc")]) == 2
    assert "optim.lr" in capsys.readouterr().err

    # the rest of the representation side, verb by verb
    enc, reps, rdm = str(tmp_path / "enc"), str(tmp_path / "reps.safetensors"), str(tmp_path / "rdm")
    assert main(["cache-reps", "--encoder", enc, "--views", "2", "--seed", "3", "--out", reps, "--no-progress"]) == 0
    assert main(["train-rdm", "--cache", reps, "--encoder", enc, "--out", rdm, "--epochs", "1", "--batch-size", "32",
                 "--set", "model.model_channels=32", "--set", "model.num_res_blocks=1", "--set", "fd_samples=32",
                 "--set", "sample_steps=5", "--no-progress"]) == 0
    assert json.loads((tmp_path / "rdm" / "summary.json").read_text())["rep_fd_samples"] == 32
    out = str(tmp_path / "s.safetensors")
    assert main(["sample-reps", "--rdm", rdm, "--num", "8", "--steps", "5", "--out", out, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["rep-fd", out, reps]) == 0
    assert "rep_fd" in capsys.readouterr().out


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_info_and_convert_refuse_code_running_checkpoints(tmp_path, capsys):
    import torch
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(2)}, "x": _Evil(marker)}, tmp_path / "evil.pth")
    assert main(["info", str(tmp_path / "evil.pth")]) == 2
    err = capsys.readouterr().err
    assert "refusing" in err and "system" in err
    assert main(["convert", str(tmp_path / "evil.pth"), str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_info_and_convert_an_official_rdm(tmp_path, capsys):
    from conftest import fixtures_dir
    rdm = next(iter(sorted(fixtures_dir().glob("rdm_*.pth"))))
    assert main(["info", str(rdm)]) == 0
    assert "kind: rdm" in capsys.readouterr().out
    assert main(["convert", str(rdm), str(tmp_path / "rdm")]) == 0
    assert main(["sample-reps", "--rdm", str(tmp_path / "rdm"), "--num", "2", "--steps", "5",
                 "--out", str(tmp_path / "r.safetensors"), "--no-progress"]) == 0


def _at(tree: dict, path: str):
    for key in path.split("."):
        tree = tree[key]
    return tree


@pytest.mark.parametrize("argv, expect", [
    (["train-encoder", "--lr", "0.25", "--resolution", "16", "--out", "{tmp}/run"],
     {"optim.lr": 0.25, "data.resolution": 16}),
    (["train-tokenizer", "--batch-size", "12", "--out", "{tmp}/run"], {"optim.batch_size": 12}),
    (["train-evalnet", "--epochs", "3", "--out", "{tmp}/run"], {"optim.epochs": 3}),
    (["train-rdm", "--cache", "{tmp}/c", "--encoder", "{tmp}/e", "--class-cond", "--out", "{tmp}/run"],
     {"cache": "{tmp}/c", "encoder": "{tmp}/e", "class_cond": True}),
    (["train-pixel", "--generator", "dit", "--cache", "{tmp}/c", "--encoder", "{tmp}/e", "--cond", "class",
      "--out", "{tmp}/run"], {"generator": "dit", "cache": "{tmp}/c", "model.cond": "class"}),
    (["cache-reps", "--encoder", "{tmp}/e", "--out", "{tmp}/c.safetensors", "--views", "3", "--resolution", "16"],
     {"arguments.encoder_src": "{tmp}/e", "arguments.views": 3, "arguments.data_overrides": ["data.resolution=16"]}),
    (["sample-reps", "--rdm", "{tmp}/r", "--out", "{tmp}/s.safetensors", "--steps", "7", "--num", "9"],
     {"arguments.rdm_src": "{tmp}/r", "arguments.steps": 7, "arguments.num": 9}),
    (["rep-fd", "{tmp}/x", "{tmp}/y"], {"arguments.a": "{tmp}/x", "arguments.b": "{tmp}/y"}),
    (["sample", "--pixel", "{tmp}/p", "--out", "{tmp}/g.png", "--num", "5", "--steps", "9", "--guidance", "1.5"],
     {"arguments.num": 5, "arguments.steps": 9, "arguments.guidance": 1.5, "arguments.out": "{tmp}/g.png"}),
    (["interpolate", "{tmp}/a.png", "{tmp}/b.png", "--pixel", "{tmp}/p", "--out", "{tmp}/s.png", "--num", "4",
      "--steps", "6"], {"arguments.num": 4, "arguments.steps": 6, "arguments.a": "{tmp}/a.png"}),
    (["eval", "--pixel", "{tmp}/p", "--num", "100", "--steps", "3", "--ref-data", "fmnist", "--resolution", "32",
      "--json", "{tmp}/m.json"], {"arguments.num": 100, "arguments.steps": 3, "arguments.ref_data.resolution": 32,
                                  "arguments.ref_data.dataset": "fmnist", "arguments.out_json": "{tmp}/m.json"}),
    (["info", "{tmp}/x.pth", "--num-heads", "4"], {"arguments.path_or_dict": "{tmp}/x.pth", "arguments.num_heads": 4}),
    (["convert", "{tmp}/x.pth", "{tmp}/out", "--resolution", "64"],
     {"arguments.out_dir": "{tmp}/out", "arguments.resolution": 64}),
    (["fit", "{tmp}/imgs", "--out", "{tmp}/r", "--generator", "dit", "--resolution", "32"],
     {"generator": "dit", "resolution": 32}),
    (["demo", "--out", "{tmp}/demo", "--train-encoder"], {"arguments.out": "{tmp}/demo",
                                                          "arguments.train_new_encoder": True}),
])
def test_dry_run_on_every_verb_prints_the_request_and_writes_nothing(argv, expect, tmp_path, monkeypatch, capsys):
    from PIL import Image
    (tmp_path / "imgs").mkdir()
    for i in range(8):                                    # rcg fit checks its folder even on a dry run
        Image.new("RGB", (40, 40), (30 * i, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    monkeypatch.chdir(tmp_path)                           # default run directories would land here
    before = sorted(tmp_path.rglob("*"))
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--dry-run"]) == 0
    printed = _config_from(capsys.readouterr().out)
    for path, value in expect.items():
        assert _at(printed, path) == (value.replace("{tmp}", str(tmp_path)) if isinstance(value, str) else value)
    if "arguments" in printed:
        assert printed["verb"] == argv[0] and printed["call"].startswith("rcg.")
    assert sorted(tmp_path.rglob("*")) == before


def test_a_verb_calls_its_function_with_the_printed_request(tmp_path, monkeypatch, capsys):
    from rcg import cli
    argv = ["interpolate", "a.png", "b.png", "--pixel", "p", "--out", "s.png", "--num", "4", "--steps", "6"]
    assert main(argv + ["--dry-run"]) == 0
    request, seen = _config_from(capsys.readouterr().out), {}
    assert request["call"] == "rcg.stages.interpolate_command"
    monkeypatch.setattr(cli, "interpolate_command", lambda **kw: seen.update(kw) or "strip.png")
    assert main(argv) == 0 and capsys.readouterr().out.strip() == "strip.png"
    assert request["arguments"] == seen


def test_training_verbs_get_the_runtime_flags_as_an_argument(monkeypatch, capsys):
    from rcg import cli
    from rcg.train import Runtime
    seen = {}
    monkeypatch.setattr(cli, "train_rdm", lambda cfg, out, device, progress, runtime: seen.update(
        cfg=cfg, out=out, runtime=runtime))
    assert main(["train-rdm", "--cache", "c", "--encoder", "e", "--compile", "--tensorboard", "--no-progress"]) == 0
    assert seen["runtime"] == Runtime(compile=True, tensorboard=True)
    assert seen["out"] == "runs/rdm" and (seen["cfg"].cache, seen["cfg"].encoder) == ("c", "e")


def test_version(capsys):
    import rcg
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"rcg {rcg.__version__}"
