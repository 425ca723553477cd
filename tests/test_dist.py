"""Data parallelism: a 2-process gloo run (torchrun) of RDM and MAGE training gives the weights of a 1-process
run with the same global batch; `rcg sample` / `rcg eval` split seeds across processes and gather them.

This file is also the torchrun worker: ``python -m torch.distributed.run ... test_dist.py ROOT``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from helpers import make_fmnist
from rcg import dist
from rcg.store import WEIGHTS, load_state, load_tensors, prepare_run_dir, save_tensors
from rcg.config import DataConfig, EncoderRun, OptimConfig, PixelRun, RDMRun, TokenizerRun
from rcg.tree import to_dict
from rcg.encoders import Encoder, EncoderConfig
from rcg.pixel.mage import MAGEConfig
from rcg.rdm import RDMConfig
from rcg.ssl import infonce
from rcg.tokenizer import VQConfig, VQModel


def tiny_parts(root: Path) -> Path:
    """Toy data, an untrained encoder and tokenizer (run directories) and a cache with reps and tokens."""
    from rcg.stages import cache_reps
    from rcg.tokenizer import TOKENIZER_KIND
    data = make_fmnist(root / "data")
    enc = EncoderRun(data=DataConfig("fmnist", path=str(data), resolution=16, channels=1),
                     encoder=EncoderConfig(arch="resnet", in_chans=1, widths=(8, 16), depths=(1, 1), mlp_dim=32,
                                           rep_dim=16))
    torch.manual_seed(0)
    d, _ = prepare_run_dir(root / "enc", to_dict(enc))
    save_tensors(d / WEIGHTS, Encoder(enc.encoder).state_dict())
    tok = TokenizerRun(data=enc.data, model=VQConfig(in_channels=1, out_channels=1, ch=8, ch_mult=(1, 2, 2),
                                                      num_res_blocks=1, z_channels=8, embed_dim=8, n_embed=32,
                                                      resolution=16, num_groups=4))
    d, _ = prepare_run_dir(root / "tok", to_dict(tok))
    save_tensors(d / WEIGHTS, VQModel(tok.model).state_dict(), {"kind": TOKENIZER_KIND})
    cache_reps(root / "enc", root / "cache.safetensors", views=2, device="cpu", tokenizer=str(root / "tok"),
               progress=False)
    return root


def rdm_cfg(root: Path, **optim) -> RDMRun:
    o = dict(epochs=1.5, batch_size=32, lr=1e-3, weight_decay=0.01, ema_decay=0.999, log_every=2, ckpt_every=4)
    return RDMRun(cache=str(root / "cache.safetensors"), encoder=str(root / "enc"),
                  model=RDMConfig(in_channels=16, time_embed_dim=16, model_channels=32, num_res_blocks=2),
                  sample_steps=5, fd_samples=16, optim=OptimConfig(**{**o, **optim}))


def pixel_cfg(root: Path) -> PixelRun:
    # lr 1e-4: the attention key bias has an exactly-zero gradient in exact arithmetic; in floats it is noise
    # (~1e-10) that Adam turns into steps of ~lr * noise / eps, different for any change of summation order
    # (1 vs 2 processes alike): at lr 1e-3 those weights drift 2e-5 apart in 6 steps, at 1e-4 2e-6.
    return PixelRun(cache=str(root / "cache.safetensors"), encoder=str(root / "enc"), tokenizer=str(root / "tok"),
                    model=MAGEConfig(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                                     decoder_num_heads=2, dropout=0.0, attn_dropout=0.0),
                    steps=3, temperature=1.0,
                    optim=OptimConfig(epochs=0.75, batch_size=32, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                                      wd_exclude_1d=True, grad_clip=1.0, ema_decay=0.999, log_every=2, ckpt_every=4))


def eval_argv(root: Path, out_json: Path) -> list:
    return ["eval", "--pixel", str(root / "mage-1"), "--rdm", str(root / "rdm-1"), "--num", "7", "--batch-size", "2",
            "--seed", "3", "--evalnet", str(root / "evalnet"), "--ref-data", "fmnist", "--ref-dir", str(root / "data"),
            "--resolution", "16", "--json", str(out_json), "--no-progress"]


def infonce_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)


def worker(root: Path) -> None:
    """Run by each of the 2 torchrun processes."""
    from rcg.cli import main
    from rcg.sample import RCGSampler
    from rcg.stages import train_pixel, train_rdm
    dist.init()
    assert dist.world_size() == 2
    train_rdm(rdm_cfg(root), str(root / "rdm-2"), "cpu", progress=False)
    train_rdm(rdm_cfg(root, batch_gpu=6), str(root / "rdm-2-micro"), "cpu", progress=False)  # DDP no_sync
    train_pixel(pixel_cfg(root), str(root / "mage-2"), "cpu", progress=False)
    gathered = dist.gather_tensors(torch.full((dist.rank() + 1, 3), float(dist.rank())))
    q, k = infonce_inputs()
    half = dist.part(len(q))
    infonce_losses = torch.cat(dist.gather_tensors(infonce(q[half], k[half], 0.2).reshape(1)))
    s = RCGSampler(str(root / "mage-1"), str(root / "rdm-1"), "cpu")
    images = list(s.stream(7, seed=3, batch_size=2))
    if dist.is_main():
        torch.save({"gathered": gathered, "images": images, "infonce": infonce_losses}, root / "worker.pt")
    code = main(eval_argv(root, root / "eval-2.json"))      # leaves the process group at the end
    assert code == 0, code


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
    sys.exit(0)


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from test_evalnet import tiny_run
    from rcg.stages.evalnet import train_evalnet
    from rcg.stages import train_pixel, train_rdm
    root = tiny_parts(tmp_path_factory.mktemp("dist"))
    train_rdm(rdm_cfg(root), str(root / "rdm-1"), "cpu", progress=False)
    train_pixel(pixel_cfg(root), str(root / "mage-1"), "cpu", progress=False)
    train_evalnet(tiny_run(root / "data", epochs=1), str(root / "evalnet"), "cpu", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           __file__, str(root)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root, proc


def _assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    ema_a, _ = load_tensors(a / "checkpoint.safetensors")
    ema_b, _ = load_tensors(b / "checkpoint.safetensors")
    raw_a, raw_b = load_state(a / "state.pt"), load_state(b / "state.pt")
    assert raw_a["step"] == raw_b["step"] > 0
    assert ema_a.keys() == ema_b.keys() and raw_a["model"].keys() == raw_b["model"].keys()
    for k in ema_a:
        torch.testing.assert_close(ema_b[k], ema_a[k], atol=atol, rtol=0, msg=f"EMA {k}")
    for k in raw_a["model"]:
        torch.testing.assert_close(raw_b["model"][k], raw_a["model"][k], atol=atol, rtol=0, msg=f"raw {k}")
    moved = [k for k in raw_a["model"] if raw_a["model"][k].is_floating_point()
             and not torch.equal(raw_a["model"][k], ema_a[k])]
    assert moved                                                # the weights did train


def test_two_process_rdm_training_matches_one_process(runs):
    root, _ = runs
    _assert_same_weights(root / "rdm-1", root / "rdm-2")


def test_two_processes_with_micro_batches_match_one_process(runs):
    root, _ = runs                 # 16 rows per process in micro-batches of 6, 6, 4: gradients accumulated
    _assert_same_weights(root / "rdm-1", root / "rdm-2-micro")


def test_two_process_mage_training_matches_one_process(runs):
    root, _ = runs
    _assert_same_weights(root / "mage-1", root / "mage-2")


def test_rank_zero_alone_logs_and_checkpoints(runs):
    root, proc = runs
    for name in ("rdm", "mage"):
        one = (root / f"{name}-1" / "metrics.jsonl").read_text().splitlines()
        two = (root / f"{name}-2" / "metrics.jsonl").read_text().splitlines()
        assert len(one) == len(two)                                 # one writer: no duplicated rows
        for a, b in zip(map(json.loads, one), map(json.loads, two)):
            if "loss" in a:                                         # the logged loss is the global batch's
                assert a["step"] == b["step"] and b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert json.loads((root / f"{name}-2" / "summary.json").read_text())["steps"] > 0
    assert proc.stdout.count('"fid_dom"') == 1                # under `rcg`, rank 0 prints, rank 1 is quiet


def test_sampling_and_eval_split_seeds_and_gather_on_rank_zero(runs):
    from rcg.cli import main
    from rcg.sample import RCGSampler
    root, _ = runs
    got = torch.load(root / "worker.pt", weights_only=True)
    assert [g.tolist() for g in got["gathered"]] == [[[0.0] * 3], [[1.0] * 3] * 2]    # variable sizes
    s = RCGSampler(str(root / "mage-1"), str(root / "rdm-1"), "cpu")
    one = list(s.stream(7, seed=3, batch_size=2))
    assert [len(b) for b in got["images"]] == [2, 2, 2, 1]
    assert torch.equal(torch.cat(got["images"]), torch.cat(one))            # same seeds, same images, in order
    assert main(eval_argv(root, root / "eval-1.json")) == 0
    e1, e2 = (json.loads((root / f"eval-{i}.json").read_text()) for i in (1, 2))
    assert e2["num_samples"] == e1["num_samples"] == 7
    assert e2["fid_dom"] == pytest.approx(e1["fid_dom"], rel=1e-5)


def test_moco_infonce_uses_every_process_keys_as_negatives(runs):
    """MoCo v3 gathers the keys: the mean of the 2 processes' losses is the loss of the whole batch."""
    root, _ = runs
    got = torch.load(root / "worker.pt", weights_only=True)["infonce"]
    q, k = infonce_inputs()
    whole = infonce(q, k, 0.2)
    assert got.shape == (2,) and not torch.allclose(got[0], got[1])
    torch.testing.assert_close(got.mean(), whole, atol=1e-6, rtol=0)
    local_only = (infonce(q[:4], k[:4], 0.2) + infonce(q[4:], k[4:], 0.2)) / 2    # negatives of one process
    assert abs(local_only - whole) > 1e-2


def test_single_process_helpers_are_no_ops():
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)
    t = torch.arange(6.0)
    assert dist.gather_tensors(t)[0] is t and dist.all_reduce_mean(t) is t
    assert torch.equal(dist.shard(t), t) and dist.part(10, 1, 4) == slice(2, 5)
    assert dist.any_true(True) and not dist.any_true(False)
    dist.barrier()
    assert dist.device("cpu") == torch.device("cpu")


# ------------------------------------------------------------------------------------------------
# runtime flags of the training loop: --compile, --tensorboard (never needed at import)
class _Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(2))
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def _toy_job(model, total=4):
    from rcg.rng import EpochBatches
    from rcg.train import Job
    data = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))

    def loss(batch, gen):
        x = data[batch.mine]
        return ((model(x) - x.sum(1, keepdim=True)) ** 2).mean(), {}

    return Job(model=model, loss=loss, batches=EpochBatches(32, 8, seed=0), total_steps=total)


def test_compile_flag_compiles_blocks_and_keeps_names_and_results(tmp_path):
    from rcg.train import Runtime, fit
    o = OptimConfig(lr=1e-2, log_every=2, ckpt_every=2)
    plain, compiled = _Blocks(), _Blocks()
    fit(prepare_run_dir(tmp_path / "a", {})[0], _toy_job(plain), o, False, progress=False)
    fit(prepare_run_dir(tmp_path / "b", {})[0], _toy_job(compiled), o, False, progress=False, runtime=Runtime(compile="eager"))
    assert all(b._compiled_call_impl is not None for b in compiled.blocks)
    a, _ = load_tensors(tmp_path / "a" / WEIGHTS)
    b, _ = load_tensors(tmp_path / "b" / WEIGHTS)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)


def test_tensorboard_only_when_asked(tmp_path):
    import importlib.util
    import rcg.cli  # noqa: F401
    import rcg.stages  # noqa: F401
    from rcg.train import TENSORBOARD, Runtime, fit
    assert "torch.utils.tensorboard" not in sys.modules
    d = prepare_run_dir(tmp_path, {})[0]
    o = OptimConfig(lr=1e-2, log_every=1, ckpt_every=2)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(RuntimeError, match="--tensorboard needs the tensorboard package"):
            fit(d, _toy_job(_Blocks()), o, False, progress=False, runtime=Runtime(tensorboard=True))
        assert not (d / "metrics.jsonl").exists()                     # before the first step
    else:
        fit(d, _toy_job(_Blocks()), o, False, progress=False, runtime=Runtime(tensorboard=True))
        assert any((d / TENSORBOARD).iterdir())


def test_cli_training_verbs_take_runtime_flags():
    from rcg import train
    from rcg.cli import build_parser, main
    for verb in ("train-encoder", "train-tokenizer", "train-evalnet"):
        a = build_parser().parse_args([verb, "--compile", "--tensorboard"])
        assert a.compile and a.tensorboard
    assert main(["train-rdm", "--cache", "c", "--encoder", "e", "--compile", "--dry-run"]) == 0
    assert not hasattr(train, "RUNTIME")              # no process-wide runtime state: the verb passes a Runtime
