"""Memory stays flat on a prepared store: peak RSS of `rcg train-encoder` on a synthetic store of 200k 64 px RGB
images against the same run on 2k images.

Writes the stores (2.4 GB for 200k at 64 px) under --work, then runs each training in a fresh process that
reports its own peak RSS (``ru_maxrss``) and that of its DataLoader workers. Takes about 2 minutes on 2 cores.

    python benchmarks/data_memory.py [--big 200000] [--small 2000] [--resolution 64] [--steps 30]
                                     [--work /tmp/rcg-data-memory] [--json benchmarks/results/data_memory.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
CHUNK = 4096


def synthetic_batches(n: int, resolution: int, seed: int = 0):
    """Blurred random colour images (so that the encoder sees structure), ``CHUNK`` at a time."""
    rng = np.random.default_rng(seed)
    for i in range(0, n, CHUNK):
        m = min(CHUNK, n - i)
        low = rng.integers(0, 256, (m, 3, resolution // 8, resolution // 8), dtype=np.uint8)
        yield np.repeat(np.repeat(low, 8, axis=2), 8, axis=3), None


def make_store(path: Path, n: int, resolution: int) -> float:
    from rcg.prepared import write_store
    t0 = time.time()
    if not (path / "manifest.json").is_file():
        write_store(path, synthetic_batches(n, resolution), 3, resolution, f"synthetic ({n} images)")
    return time.time() - t0


def train_argv(data: list, out: Path, steps: int, n: int, batch: int, resolution: int) -> list:
    sets = ["encoder.widths=16,32", "encoder.depths=1,1", "encoder.mlp_dim=64", "encoder.rep_dim=32",
            "pred_dim=64", "optim.log_every=10", f"optim.ckpt_every={steps}", "optim.sample_every=0"]
    return ["train-encoder", *data, "--resolution", str(resolution), "--out", str(out), "--batch-size", str(batch),
            "--epochs", repr(steps * batch / n), "--no-progress", "--device", "cpu",
            *[x for s in sets for x in ("--set", s)]]


def worker(argv: list) -> None:
    """One training run in this process; prints its peak RSS and its children's (DataLoader workers)."""
    from rcg.cli import main
    t0 = time.time()
    code = main(argv)
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20          # KiB -> GiB
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(json.dumps({"code": code, "peak_rss_gib": round(me, 3), "worker_peak_rss_gib": round(kids, 3),
                      "wall_s": round(time.time() - t0, 1)}))


def run(argv: list, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    p = subprocess.run([sys.executable, str(HERE), "--worker", json.dumps(argv)], env=env, capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=200_000)
    ap.add_argument("--small", type=int, default=2_000)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/rcg-data-memory")
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    ap.add_argument("--json", default=str(HERE.parent / "results" / "data_memory.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(json.loads(a.worker))
    import torch
    work = Path(a.work)
    rows = []
    for n in (a.small, a.big):
        store = work / f"store-{n}"
        made = make_store(store, n, a.resolution)
        data = ["--data", "prepared", "--data-dir", str(store), "--channels", "3"]
        res = run(train_argv(data, work / f"run-{n}", a.steps, n, a.batch_size, a.resolution), a.threads)
        rows.append({"images": n, "path": "prepared", "store_gib": round(n * 3 * a.resolution ** 2 / 2**30, 2),
                     "store_write_s": round(made, 1), **res})
        print(rows[-1], flush=True)
    big, sm = rows[1], rows[0]
    out = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
           "resolution": a.resolution, "steps": a.steps, "batch_size": a.batch_size, "rows": rows,
           "peak_rss_difference_gib": round(big["peak_rss_gib"] - sm["peak_rss_gib"], 3),
           "within_1_5_gib": big["peak_rss_gib"] - sm["peak_rss_gib"] <= 1.5}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"peak RSS: {big['peak_rss_gib']:.2f} GiB on {a.big:,} images vs {sm['peak_rss_gib']:.2f} GiB on "
          f"{a.small:,} (difference {out['peak_rss_difference_gib']:+.3f} GiB) -> {a.json}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
