"""The shared training loop: schedules, EMA, batching, resume by rerun, NaN handling, checkpoints."""
import json
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from rcg.store import (CheckpointError, load_state, load_tensors, prepare_run_dir, save_state,
                            save_tensors)
from rcg.config import OptimConfig
from rcg.optim import EMA, lr_at, make_optimizer
from rcg.train import EpochBatches, Job, TrainingError, fit


def test_lr_schedule_warmup_and_cosine():
    o = OptimConfig(lr=1.0, schedule="cosine", warmup_epochs=1, min_lr=0.1)
    assert lr_at(0, 10, 110, o) == pytest.approx(0.1)
    assert lr_at(9, 10, 110, o) == pytest.approx(1.0)
    assert lr_at(10, 10, 110, o) == pytest.approx(1.0)
    assert lr_at(60, 10, 110, o) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, 10, 110, o) == pytest.approx(0.1)
    assert lr_at(50, 10, 110, OptimConfig(lr=0.3)) == 0.3


def test_ema_follows_litema_warmup():
    m = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.9999)
    expected = 0.0
    for n in range(1, 4):
        with torch.no_grad():
            m.weight.fill_(float(n))
        ema.update(m)
        d = min(0.9999, (1 + n) / (10 + n))
        expected = expected - (1 - d) * (expected - n)
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(expected, rel=1e-6)
    assert ema.averaged_state_dict(m)["weight"][0, 0].item() == pytest.approx(expected, rel=1e-6)



def test_ema_state_round_trips_and_its_averaged_copy_leaves_the_model_alone():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(m, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            m[0].weight.add_(1.0)
        ema.update(m)
    twin = ema.averaged(m)
    assert torch.equal(twin[0].weight, ema.shadow["0.weight"]) and not torch.equal(twin[0].weight, m[0].weight)
    assert torch.equal(twin[1].running_mean, m[1].running_mean)       # buffers are the model's own
    other = EMA(m, decay=0.9)
    other.load_state_dict(ema.state_dict(), m)
    assert other.num_updates == 3 and all(torch.equal(other.shadow[k], v) for k, v in ema.shadow.items())
    other.update(m), ema.update(m)
    assert torch.equal(other.shadow["0.weight"], ema.shadow["0.weight"])     # the restored average goes on alike

def test_epoch_batches_cover_each_epoch_once():
    b = EpochBatches(10, 3, seed=1)
    assert b.steps_per_epoch == 3
    ep0 = torch.cat([b(s) for s in range(3)])
    ep1 = torch.cat([b(s) for s in range(3, 6)])
    assert len(set(ep0.tolist())) == 9 and len(set(ep1.tolist())) == 9
    assert not torch.equal(ep0, ep1)
    assert torch.equal(EpochBatches(10, 3, seed=1)(4), ep1[3:6])   # stateless in the step
    with pytest.raises(ValueError, match="larger than the data set"):
        EpochBatches(2, 3, seed=0)


def _job(model, data, total, crash_at=None, nan_at=None):
    batches = EpochBatches(len(data), 8, seed=0)

    def loss(batch, gen):
        step = batch.step
        if step == crash_at:
            raise KeyboardInterrupt("simulated kill")
        x = data[batch.index] + 0.1 * torch.randn(8, 4, generator=gen)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        if step == nan_at:
            loss = loss * float("nan")
        return loss, {}

    return Job(model=model, loss=loss, batches=batches, total_steps=total)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    data = torch.randn(40, 4, generator=torch.Generator().manual_seed(3))
    o = OptimConfig(lr=1e-2, ema_decay=0.99, log_every=1, ckpt_every=3, schedule="cosine")
    ref = _model()
    d, _ = prepare_run_dir(tmp_path / "a", {"x": 1})
    fit(d, _job(ref, data, 10), o, resuming=False, progress=False)

    d, resuming = prepare_run_dir(tmp_path / "b", {"x": 1})
    with pytest.raises(KeyboardInterrupt):
        fit(d, _job(_model(), data, 10, crash_at=7), o, resuming, progress=False)
    assert load_state(d / "state.pt")["step"] == 6
    d, resuming = prepare_run_dir(tmp_path / "b", {"x": 1})
    assert resuming
    model = _model()
    fit(d, _job(model, data, 10), o, resuming, progress=False)
    for a, b in zip(ref.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    ema_a, _ = load_tensors(tmp_path / "a" / "checkpoint.safetensors")
    ema_b, _ = load_tensors(tmp_path / "b" / "checkpoint.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert not torch.equal(ema_a["0.weight"], ref.state_dict()["0.weight"])   # EMA weights exported


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    data = torch.randn(40, 4)
    d, _ = prepare_run_dir(tmp_path, {"x": 1})
    o = OptimConfig(lr=1e-2, log_every=1, ckpt_every=2)
    with pytest.raises(TrainingError, match=r"nan at step 5; the last good checkpoint \(step 4\)"):
        fit(d, _job(_model(), data, 10, nan_at=5), o, False, progress=False)
    assert load_state(d / "state.pt")["step"] == 4


def test_config_change_in_same_run_dir_is_refused(tmp_path):
    prepare_run_dir(tmp_path, {"optim": {"lr": 1.0, "log_every": 5}, "a": 1})
    (tmp_path / "state.pt").write_bytes(b"")                                  # something was trained
    prepare_run_dir(tmp_path, {"optim": {"lr": 1.0, "log_every": 9}, "a": 1})   # runtime-only key: fine
    with pytest.raises(CheckpointError, match=r"differs in: a, optim.lr"):
        prepare_run_dir(tmp_path, {"optim": {"lr": 2.0, "log_every": 5}, "a": 2})


def test_a_start_that_trained_nothing_binds_nothing(tmp_path):
    """A failed start (config.json, no checkpoint) does not poison the directory: the corrected config runs."""
    prepare_run_dir(tmp_path, {"data": {"labels": True}, "a": 1})
    d, resuming = prepare_run_dir(tmp_path, {"data": {"labels": False}, "a": 1})
    assert not resuming and json.loads((d / "config.json").read_text())["data"]["labels"] is False
    (tmp_path / "checkpoint.safetensors").write_bytes(b"")                    # weights exist: now it binds
    with pytest.raises(CheckpointError, match=r"differs in: data.labels"):
        prepare_run_dir(tmp_path, {"data": {"labels": True}, "a": 1})


def test_run_made_before_new_config_fields_resumes(tmp_path, capsys):
    """A newer rcg adds config fields: an older run directory still resumes (and says so); a field it had that
    changed is still refused."""
    prepare_run_dir(tmp_path, {"diffusion": {"steps": 10}, "a": 1})
    (tmp_path / "state.pt").write_bytes(b"")
    _, _ = prepare_run_dir(tmp_path, {"diffusion": {"steps": 10, "schedule": "linear"}, "a": 1, "b": 2})
    out = capsys.readouterr().out
    assert "diffusion.schedule" in out and "b" in out
    with pytest.raises(CheckpointError, match=r"differs in: diffusion.steps"):
        prepare_run_dir(tmp_path, {"diffusion": {"steps": 11, "schedule": "linear"}, "a": 1, "b": 2})


def test_unwritable_output_directory_fails_fast(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write to output directory"):
        prepare_run_dir(blocker / "run", {})


def test_truncated_or_corrupt_checkpoints_are_detected(tmp_path):
    save_state(tmp_path / "s.pt", {"step": 3, "w": torch.arange(1000.0)})
    assert load_state(tmp_path / "s.pt")["step"] == 3
    raw = (tmp_path / "s.pt").read_bytes()
    (tmp_path / "s.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state(tmp_path / "s.pt")

    save_tensors(tmp_path / "w.safetensors", {"w": torch.arange(100.0)})
    raw = bytearray((tmp_path / "w.safetensors").read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "w.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        load_tensors(tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").write_bytes(bytes(raw[:50]))
    with pytest.raises(CheckpointError, match="truncated"):
        load_tensors(tmp_path / "w.safetensors")


def test_fused_ema_update_equals_the_loop_to_float_rounding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 64), nn.LayerNorm(64), nn.Linear(64, 3))
    model[1].weight.requires_grad_(False)                          # frozen parameters have no shadow
    fused, loop = EMA(model, 0.999), EMA(model, 0.999)
    assert "1.weight" not in fused.shadow
    for _ in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        fused.update(model)
        loop.update_reference(model)
    assert fused.num_updates == loop.num_updates == 30
    for k in loop.shadow:
        torch.testing.assert_close(fused.shadow[k], loop.shadow[k], rtol=0, atol=1e-6)
        assert not torch.equal(fused.shadow[k], dict(model.named_parameters())[k])   # it averages, not copies


def test_fused_adamw_equals_the_loop_and_resumes_its_state():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(7, 32), nn.LayerNorm(32), nn.Linear(32, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = nets[0][0].weight.detach().clone()
    o = OptimConfig(lr=1e-2, weight_decay=0.05, wd_exclude_1d=True)
    fused = make_optimizer(list(nets[0].parameters()), o)
    loop = make_optimizer(list(nets[1].parameters()), replace(o, fused=False))
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    x, y = torch.randn(16, 7), torch.randn(16, 3)
    for step in range(20):
        for net, opt in zip(nets, (fused, loop)):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        if step == 9:                                   # a loop checkpoint resumes under the fused kernel
            state = loop.state_dict()
            loop = make_optimizer(list(nets[1].parameters()), o)
            loop.load_state_dict(state)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (nets[0][0].weight - start).abs().max() > 1e-2       # it trained
