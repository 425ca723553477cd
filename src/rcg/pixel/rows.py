"""Row chunking of a generator's sampler on a CPU.

The generators (MAGE, DiT; ADM and LDM below) run a few hundred rows per pass at full speed on a CPU only while their
activations stay in the caches: at 500 rows a MAGE decoding step and a DiT forward took 1.45-1.6x as long per
image as at 128 (fmnist presets, Zen 3 AVX2, 1 thread; MAGE at 100-250 rows within 10 % of 128), so the registry
samplers decode CPU batches :data:`CPU_ROWS` rows at a time. The U-Nets too: an fmnist-adm forward took 12.1-12.3
ms per image at 500 rows against 5.9-7.9 at 64-128, an fmnist-ldm one 4.4-4.9 against 3.2-4.5 (inference, 1
thread of a Zen 3 shared with two other jobs, 2026-12-04). Every sampler draws its noise from one generator per
sample, so the images do not depend on the chunking. GPUs take the whole batch.
"""
from __future__ import annotations

from typing import Callable

import torch

CPU_ROWS = 128


def in_row_chunks(sample: Callable, device: torch.device) -> Callable:
    """``sample(rep, labels, generators, **kw)`` run on chunks of :data:`CPU_ROWS` samples on a CPU (the whole
    batch elsewhere), the outputs concatenated along the batch."""
    n = CPU_ROWS if torch.device(device).type == "cpu" else None

    def chunked(rep, labels, generators, **kw):
        size = n or len(generators)
        if len(generators) <= size:
            return sample(rep, labels, generators, **kw)
        parts = []
        for i in range(0, len(generators), size):
            cut = slice(i, i + size)
            parts.append(sample(None if rep is None else rep[cut], None if labels is None else labels[cut],
                                generators[cut], **kw))
        return torch.cat(parts)
    return chunked
