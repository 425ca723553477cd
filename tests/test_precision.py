"""bf16 follows the hardware: auto means native bf16 only; --bf16 / --no-bf16 force it."""
import json

import pytest
import torch
import torch.nn as nn

from rcg import precision
from rcg.config import OptimConfig
from rcg.presets import RDM_RUN_PRESETS, TOKENIZER_PRESETS
from rcg.tree import apply_overrides
from rcg.rng import EpochBatches
from rcg.train import Job, fit


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def cpu_kind(request, monkeypatch):
    """Stub the CPU's capability: what a Zen 4 (avx512_bf16) or a Zen 3 (AVX2 only) reports."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: request.param)
    return request.param


def test_auto_follows_the_cpu_and_flags_force(cpu_kind):
    assert precision.resolve_bf16(None, "cpu") is cpu_kind
    assert precision.resolve_bf16(True, "cpu") is True
    assert precision.resolve_bf16(False, "cpu") is False
    line = precision.describe(None, "cpu")
    assert line.startswith("bf16" if cpu_kind else "fp32") and "auto" in line
    forced = precision.describe(True, "cpu")
    assert forced.startswith("bf16") and ("emulated" in forced) is (not cpu_kind)


def test_the_cpu_presets_are_auto():
    assert TOKENIZER_PRESETS["fmnist-tokenizer"].optim.bf16 is None
    assert RDM_RUN_PRESETS["fmnist-rdm"].optim.bf16 is None
    assert apply_overrides(OptimConfig(), ["bf16=auto"]).bf16 is None
    assert apply_overrides(OptimConfig(), ["bf16=true"]).bf16 is True


def test_the_real_check_needs_onednn_avx512_and_the_bf16_flag(monkeypatch):
    """The detection itself, input by input: an AVX2-only CPU (or ATEN_CPU_CAPABILITY=avx2), a CPU whose oneDNN
    has no bf16, and AVX-512 without avx512_bf16 / amx_bf16 all say no; all three present say yes."""
    def cpu(onednn: bool, capability: str, flags):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
        return precision.detect_cpu_bf16()
    assert cpu(True, "AVX512", ["avx512f", "avx512_bf16"]) is True        # Zen 4
    assert cpu(True, "AVX512", ["avx512f", "amx_bf16"]) is True           # Sapphire Rapids
    assert cpu(False, "AVX2", ["avx2"]) is False                          # Zen 3
    assert cpu(True, "AVX2", ["avx512f", "avx512_bf16"]) is False         # ATen kernels capped at AVX2
    assert cpu(False, "AVX512", ["avx512f", "avx512_bf16"]) is False      # oneDNN without bf16
    assert cpu(True, "AVX512", ["avx512f"]) is False                      # AVX-512 alone: emulated


class _Probe(nn.Module):
    """Records the dtype its linear layer computes in."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.seen = []

    def forward(self, x):
        y = self.lin(x)
        self.seen.append(y.dtype)
        return y.float().pow(2).mean()


@pytest.mark.parametrize("choice", [None, True, False], ids=["auto", "forced-on", "forced-off"])
def test_fit_runs_and_records_the_resolved_precision(tmp_path, cpu_kind, choice):
    torch.manual_seed(0)
    model = _Probe()
    x = torch.randn(8, 4)
    job = Job(model=model, loss=lambda batch, gen: (model(x), {}), batches=EpochBatches(8, 8, 0), total_steps=2)
    last = fit(tmp_path, job, OptimConfig(bf16=choice, log_every=1, ckpt_every=2), resuming=False, progress=False)
    want = cpu_kind if choice is None else choice
    assert set(model.seen) == {torch.bfloat16 if want else torch.float32}
    assert last["precision"] == ("bf16" if want else "fp32")
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["precision"] for r in rows} == {last["precision"]}
