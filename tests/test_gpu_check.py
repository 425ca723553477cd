"""benchmarks/gpu_check.py: its ``--tiny`` run (the GPU script's code path with tiny configs on the CPU) writes
every section with real measurements, and one failing section does not stop the others."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
NETWORKS = ("mage-b", "rdm-l12-w1536", "dit-xl-2")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "res.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return json.loads(out.read_text()), p.stdout


def test_tiny_run_measures_every_training_network_in_both_precisions(tiny):
    res, _ = tiny
    assert set(res["training"]) == set(NETWORKS)
    for name in NETWORKS:
        runs = res["training"][name]
        assert set(runs) == {"bf16", "fp32"}, name
        for prec, r in runs.items():
            assert "error" not in r, (name, prec, r)
            assert r["images_per_s"] > 0 and r["step_flops"] > 0 and r["achieved_tflops"] > 0, (name, prec, r)
            assert r["params"] > 0 and r["batch_size"] == 8 and r["steps"] == 2
            assert r["fraction_of_peak"] is None and r["peak_tflops"] is None      # no peak table for a CPU
            assert r["peak_memory_gib"] > 0
        assert runs["bf16"]["precision"] == "bf16 autocast" and runs["fp32"]["precision"].startswith("fp32")
        assert runs["bf16"]["step_flops"] == runs["fp32"]["step_flops"]              # same work, other precision
    flops = {n: res["training"][n]["fp32"]["step_flops"] for n in NETWORKS}
    assert len(set(flops.values())) == 3                                          # three different networks


def test_tiny_run_generates_and_skips_nccl(tiny):
    res, stdout = tiny
    gen = res["generation"]["imagenet-rcg-mage-b"]
    assert set(gen) == {"fp32", "bf16"}
    for r in gen.values():
        assert "error" not in r, r
        assert r["images_per_s"] > 0 and r["images"] == 4 and r["image_shape"] == [3, 16, 16]
        assert r["rdm_steps"] == 5 and r["mage_steps"] == 3
    assert res["nccl_check"].startswith("skipped: ") and "GPU" in res["nccl_check"]
    env = res["environment"]
    assert env["torch"] == torch.__version__ and env["gpu"] is None and env["cpu_capability"] and env["date"]
    assert res["tiny"] is True and res["skipped"] == [] and 0 < res["wall_s"] < res["budget_s"]
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| train") or ln.startswith("| generate")]
    assert len(lines) == 8 and stdout.startswith("| part | network |")


def test_a_failing_section_is_recorded_and_the_budget_skips():
    mod = load_script()
    budget = mod.Budget(60.0, torch.device("cpu"))

    def oom():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert budget.run("fails", oom) == {"error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert budget.run("works", lambda x: {"images_per_s": x}, 3.0) == {"images_per_s": 3.0}
    budget.t0 -= 61
    assert budget.run("late", lambda: {}).startswith("skipped: past the time budget")
    assert budget.skipped == ["late"]


def test_peak_table_by_gpu_name(monkeypatch):
    mod = load_script()
    dev = torch.device("cuda")
    for name, kind, want in (("NVIDIA H200", "bf16", 989.4), ("NVIDIA H100 80GB HBM3", "tf32", 494.7),
                             ("NVIDIA A100-SXM4-80GB", "fp32", 19.5), ("NVIDIA H100 PCIe", "bf16", None),
                             ("NVIDIA GeForce RTX 4090", "bf16", None)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)
        peak, which = mod.peak_tflops(dev, kind)
        assert peak == want, name
        assert (which.split()[0] in name and f"{kind} dense {want}" in which) if want else "unknown GPU" in which
    assert mod.peak_tflops(torch.device("cpu"), "bf16") == (None, None)
