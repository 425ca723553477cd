"""Resume by rerun: a training process killed with SIGKILL and rerun ends bitwise identical to an uninterrupted
run; a truncated checkpoint is detected and the previous good one used; a full disk or an unwritable output
directory is a clear error, before training where it can be."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from rcg import train as T
from rcg.store import CheckpointError, load_state, load_tensors, prepare_run_dir
from rcg.cli import main
from rcg.config import OptimConfig
from rcg.rng import EpochBatches
from rcg.store import STATE_PREV
from rcg.train import Job, fit
from test_dist import tiny_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_parts(tmp_path_factory.mktemp("resume"))


def _rdm_argv(parts: Path, out: Path, *extra) -> list:
    sets = ["model.model_channels=64", "model.num_res_blocks=2", "model.time_embed_dim=32", "optim.log_every=20",
            "optim.ckpt_every=20", "optim.ema_decay=0.999", "optim.weight_decay=0.01", "fd_samples=16",
            "sample_steps=5"]
    return ["train-rdm", "--preset", "fmnist-rdm", "--cache", str(parts / "cache.safetensors"),
            "--encoder", str(parts / "enc"), "--out", str(out), "--batch-size", "16", "--epochs", "12",
            "--lr", "1e-3", "--no-progress", *extra] + [x for s in sets for x in ("--set", s)]


def _cli(argv, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "rcg.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _same_bits(a: Path, b: Path) -> None:
    wa, _ = load_tensors(a / "checkpoint.safetensors")
    wb, _ = load_tensors(b / "checkpoint.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = load_state(a / "state.pt"), load_state(b / "state.pt")
    assert sa["step"] == sb["step"]
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


def test_sigkilled_training_rerun_ends_bitwise_identical(parts, tmp_path):
    ref = _cli(_rdm_argv(parts, tmp_path / "ref"))                 # uninterrupted, in parallel with the rest
    run = tmp_path / "run"
    victim = _cli(_rdm_argv(parts, run))
    deadline = time.time() + 120
    while not (run / "state.pt").exists():                          # at least one checkpoint written
        assert victim.poll() is None, victim.communicate()
        assert time.time() < deadline
        time.sleep(0.005)
    time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    killed_at = load_state(run / "state.pt")["step"]
    total = 12 * (256 // 16)
    assert 0 < killed_at < total

    rerun = _cli(_rdm_argv(parts, run))
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert f"resuming {run} from step " in out
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    _same_bits(tmp_path / "ref", run)
    assert load_state(run / "state.pt")["step"] == total and (run / STATE_PREV).is_file()

    # the same run directory with another config is refused, naming the keys
    p = _cli(_rdm_argv(parts, run, "--set", "optim.grad_clip=1.0") + ["--lr", "2e-3"])
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "differs in: optim.grad_clip, optim.lr" in err


# ------------------------------------------------------------------------------------------------
def _job(model, data, total, crash_at=None):
    batches = EpochBatches(len(data), 8, seed=0)

    def loss(batch, gen):
        if batch.step == crash_at:
            raise KeyboardInterrupt("simulated kill")
        x = batch.take(data[batch.index] + 0.1 * torch.randn(8, 4, generator=gen))
        return ((model(x) - x.sum(1, keepdim=True)) ** 2).mean(), {}

    return Job(model=model, loss=loss, batches=batches, total_steps=total)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


DATA = torch.randn(40, 4, generator=torch.Generator().manual_seed(3))
OPT = OptimConfig(lr=1e-2, ema_decay=0.99, log_every=1, ckpt_every=2, schedule="cosine")


def test_checkpoint_cut_in_half_is_detected_and_the_previous_one_used(tmp_path, capsys):
    ref = _model()
    d, _ = prepare_run_dir(tmp_path / "ref", {"x": 1})
    fit(d, _job(ref, DATA, 10), OPT, False, progress=False)

    d, resuming = prepare_run_dir(tmp_path / "run", {"x": 1})
    with pytest.raises(KeyboardInterrupt):
        fit(d, _job(_model(), DATA, 10, crash_at=7), OPT, resuming, progress=False)
    assert load_state(d / "state.pt")["step"] == 6 and load_state(d / STATE_PREV)["step"] == 4
    raw = (d / "state.pt").read_bytes()
    (d / "state.pt").write_bytes(raw[:len(raw) // 2])

    d, resuming = prepare_run_dir(tmp_path / "run", {"x": 1})
    model = _model()
    capsys.readouterr()
    fit(d, _job(model, DATA, 10), OPT, resuming, progress=False)
    cap = capsys.readouterr()
    assert "state.pt is truncated or corrupt" in cap.err
    assert "resuming from the previous good checkpoint" in cap.err and "(step 4)" in cap.err
    assert "from step 4/10" in cap.out
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))
    _same_bits(tmp_path / "ref", d)

    # both unreadable: a clear error, nothing silently restarted
    for name in ("state.pt", STATE_PREV):
        (d / name).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint .*Delete .*state.pt to restart"):
        fit(d, _job(_model(), DATA, 10), OPT, True, progress=False)


def test_full_disk_while_checkpointing_keeps_the_last_good_state(tmp_path, monkeypatch):
    d, _ = prepare_run_dir(tmp_path, {"x": 1})
    real, calls = T.save_state, []

    def save_state(path, state):
        calls.append(state["step"])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, state)

    monkeypatch.setattr(T, "save_state", save_state)
    with pytest.raises(CheckpointError, match=r"no space left .* step 4; the last good checkpoint \(step 2\) is kept"):
        fit(d, _job(_model(), DATA, 10), OPT, False, progress=False)
    assert load_state(d / "state.pt")["step"] == 2


def test_too_little_free_space_fails_before_training(tmp_path, monkeypatch):
    import shutil
    d, _ = prepare_run_dir(tmp_path, {"x": 1})
    monkeypatch.setattr(T.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(CheckpointError, match="not enough free space"):
        fit(d, _job(_model(), DATA, 10), OPT, False, progress=False)
    assert not (d / "metrics.jsonl").exists() and not (d / "state.pt").exists()


def test_unwritable_output_directory_fails_fast_from_the_cli(parts, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    t0 = time.time()
    assert main(_rdm_argv(parts, blocker / "run")) == 2
    assert "cannot write to output directory" in capsys.readouterr().err
    assert time.time() - t0 < 30
