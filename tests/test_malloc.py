"""rcg.malloc: glibc's thresholds set once per process, so that a loop of large tensors reuses its memory
instead of faulting fresh pages in every iteration; RCG_MALLOC_TUNING=0 keeps glibc's defaults."""
import os
import platform
import subprocess
import sys

import pytest

# a training or decoding step in miniature: large activations made and freed every iteration (6.5 MB, 1.6 MB, ...)
LOOP = """
import resource, sys, torch
from rcg.dist import setup
setup("cpu")
from rcg.malloc import keep_freed_memory
def step():
    x = torch.randn(3200, 512)
    h = torch.nn.functional.gelu(x)
    y = h[:, :128].contiguous()
    return float(torch.cat([y, y], 1).sum())
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(keep_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _run(tuning: str):
    env = {**os.environ, "RCG_MALLOC_TUNING": tuning, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", LOOP], env=env, capture_output=True, text=True, check=True).stdout
    tuned, faults = out.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_cpu_setup_keeps_freed_memory_and_the_loop_stops_faulting_pages():
    tuned, faults_tuned = _run("1")
    default, faults_default = _run("0")
    assert tuned and not default
    assert faults_tuned * 2 < faults_default, (faults_tuned, faults_default)
