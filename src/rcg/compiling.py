"""``torch.compile`` of a model's repeated blocks, in place, for training (``rcg train-* --compile``) and for
sampling (``rcg sample / eval --compile``).

Only the blocks are compiled (each transformer / residual block held in an ``nn.ModuleList``; a model without
one: its whole forward), so the parameter names, the checkpoints and the code around the blocks (masking,
token draws, solvers) are unchanged. Compilation happens on the first call (5-35 s on a 2-core CPU) and again
when the batch size changes (e.g. the last, shorter chunk of a sampling run).
"""
from __future__ import annotations

from typing import List, Union

import torch.nn as nn


def compile_blocks(model: nn.Module, how: Union[bool, str] = True) -> None:
    """Compile the outermost ``ModuleList`` blocks of ``model`` in place (``how``: True for the inductor
    backend, or a backend name, e.g. ``"eager"`` to check the tracing without code generation)."""
    backend = how if isinstance(how, str) else "inductor"
    chosen: List[str] = []
    blocks: List[nn.Module] = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList):
            for i, b in enumerate(m):
                full = f"{name}.{i}" if name else str(i)
                if not any(full.startswith(c + ".") for c in chosen):
                    chosen.append(full)
                    blocks.append(b)
    for b in blocks or [model]:
        b.compile(backend=backend)
