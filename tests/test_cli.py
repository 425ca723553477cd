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
