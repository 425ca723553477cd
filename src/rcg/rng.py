"""Random numbers with named seed formulas (layer 0).

Training is deterministic given the step: batch ``step`` takes its indices from a per-epoch permutation
(:func:`epoch_seed`) and its randomness from :func:`step_generator`. Generation has one seed per image
(:func:`per_sample`), and per-sample draws (:func:`uniform`, :func:`randn_per_sample`) take row i from
generator i alone, so an image never depends on its batch.
"""
from __future__ import annotations

from typing import List, Sequence

import torch


def uniform(shape: Sequence[int], gen, device) -> torch.Tensor:
    """Uniform [0, 1) float32 on ``device``: from the global RNG (``gen=None``), one torch.Generator, or one
    generator per sample (row i from ``gen[i]`` alone, drawn on its device)."""
    shape = tuple(shape)
    if gen is None or isinstance(gen, torch.Generator):
        return torch.rand(shape, generator=gen, device=gen.device if gen is not None else device).to(device)
    if len(gen) != shape[0]:
        raise ValueError(f"need one generator per sample: got {len(gen)} for batch size {shape[0]}")
    return torch.stack([torch.rand(shape[1:], generator=g, device=g.device).to(device) for g in gen])


def randn_per_sample(shape: Sequence[int], generators: Sequence[torch.Generator], device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` whose row i is drawn from ``generators[i]`` alone, so a sample's
    noise does not depend on the batch it is in. Each row is drawn on its generator's device."""
    shape = tuple(shape)
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per sample: got {len(generators)} for batch size {shape[0]}")
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generators]
    out = torch.stack(rows) if rows else torch.empty(shape, dtype=dtype)
    return out.to(device) if device is not None else out


class EpochBatches:
    """Indices of batch ``step``: epoch-wise permutations seeded by (seed, epoch), last partial batch dropped.

    Stateless in the step (the resumable sampler): every process computes the same global batch and
    keeps its slice of it."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < batch_size:
            raise ValueError(f"batch size {batch_size} is larger than the data set ({n} items); lower --batch-size")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm[i * self.batch_size:(i + 1) * self.batch_size]


# ---- the named seed formulas ------------------------------------------------------------------------------
def epoch_seed(seed: int, epoch: int) -> int:
    """The permutation of epoch ``epoch`` of a training run seeded ``seed``."""
    return seed * 1_000_003 + epoch


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of training step ``step`` (augmentations, masks, diffusion noise of the global batch)."""
    return torch.Generator().manual_seed((seed + 1) * 2_147_483_647 + step)


def module_seed(seed: int, step: int, rank: int) -> int:
    """The global RNG seed of process ``rank`` at step ``step`` under several processes (module-internal
    randomness such as dropout), so that resuming stays exact."""
    return (seed + 1) * 1_000_003 + step * 4099 + rank


def view_generator(seed: int, view: int, first: int) -> torch.Generator:
    """The crops of view ``view`` of the batch of images starting at ``first`` in ``rcg cache-reps``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + view * 100_003 + first)


def per_sample(seeds: Sequence[int]) -> List[torch.Generator]:
    """One generator per sample, seeded by its own seed (generation: one seed per image)."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]
