"""``rcg plot RUN``: loss, learning rate and every logged metric of a run over its steps, in one PNG
(``RUN/curves.png``). Reads ``RUN/metrics.jsonl``; for an ``rcg fit`` run (no metrics of its own), those of
every stage inside it. matplotlib is an optional extra (``pip install -e '.[plot]'``)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..store import METRICS

Series = Dict[str, List[Tuple[int, float]]]
SKIP = ("step", "epoch", "final", "eval_images")      # axes, markers and counts, not curves


def read_metrics(path) -> Series:
    """{metric: [(step, value), ...]} of the numeric entries of one metrics.jsonl (a torn last line from an
    interrupted run is skipped)."""
    series: Series = {}
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or "step" not in row or row.get("final"):
            continue
        for k, v in row.items():
            if k not in SKIP and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                series.setdefault(k, []).append((int(row["step"]), float(v)))
    return series


def run_series(run) -> Dict[str, Series]:
    """{stage: series}: the run's own metrics ({"": ...}) or, for a folder of runs (rcg fit), each one's."""
    run = Path(run)
    if (run / METRICS).is_file():
        return {"": read_metrics(run / METRICS)}
    found = {d.name: read_metrics(d / METRICS) for d in sorted(run.iterdir()) if (d / METRICS).is_file()} \
        if run.is_dir() else {}
    if not found:
        raise FileNotFoundError(f"{run} holds no {METRICS} (nor do its sub-folders): pass a training run directory "
                                f"(the --out of a train-* verb) or an rcg fit run")
    return found


def _order(series: Series) -> List[str]:
    first = [k for k in ("loss", "lr") if k in series]
    return first + sorted(k for k in series if k not in first)


def plot_run(run, out: Optional[str] = None) -> str:
    """Write the curves of ``run`` to ``out`` (default ``RUN/curves.png``); returns a one-line description."""
    stages = run_series(run)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError(f"rcg plot needs matplotlib: pip install -e '.[plot]' (or pip install matplotlib) ({e})") \
            from e
    panels = [(stage, k, stages[stage][k]) for stage in stages for k in _order(stages[stage])]
    if not panels:
        raise ValueError(f"{run}: the metrics hold no numeric values yet")
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, (stage, key, pts) in zip(axes.flat, panels):
        steps, vals = zip(*pts)
        ax.plot(steps, vals, marker="." if len(pts) < 30 else None, linewidth=1.2)
        ax.set_title(f"{stage}: {key}" if stage else key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if key == "loss" and min(vals) > 0 and max(vals) / min(vals) > 20:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out) if out else Path(run) / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return f"{len(panels)} curves ({', '.join(sorted(stages)) or 'one run'}) -> {out}"
