"""Row chunking of a generator's sampler on a CPU.

The transformer generators (MAGE, DiT) run a few hundred rows per pass at full speed on a CPU only while their
activations stay in the caches: at 500 rows a MAGE decoding step and a DiT forward took 1.45-1.6x as long per
image as at 128 (fmnist presets, Zen 3 AVX2, 1 thread; MAGE at 100-250 rows within 10 % of 128), so the registry
samplers decode CPU batches :data:`CPU_ROWS` rows at a time. Every sampler draws its noise from one generator per
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
