"""The inputs of each training step, read ahead (layer 3): a job's ``feed(indices)`` turns the indices of a
step's global batch (the resumable order of :class:`rcg.rng.EpochBatches`) into its inputs, in DataLoader
worker processes when it reads a file (a prepared store), in the training process when it indexes a tensor.
Step s always gets ``feed(batches(s))``, so a resumed run reads exactly what the uninterrupted one read."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .prepared import PreparedImages
from .rng import EpochBatches


class StepInputs(Dataset):
    """Item k: the inputs of step ``start + k``."""

    def __init__(self, feed: Callable[[torch.Tensor], Any], batches: EpochBatches, start: int, stop: int):
        self.feed, self.batches, self.start, self.stop = feed, batches, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, k: int):
        return self.feed(self.batches(self.start + k))


def step_inputs(feed, batches: EpochBatches, start: int, stop: int, workers: int = 0,
                pin_memory: bool = False) -> Iterator:
    """The inputs of steps start ... stop - 1, in order; ``workers`` > 0 reads them ahead in that many
    processes (4 steps ahead each)."""
    if workers <= 0:
        return (feed(batches(s)) for s in range(start, stop))
    return iter(DataLoader(StepInputs(feed, batches, start, stop), batch_size=None, shuffle=False,
                           num_workers=workers, pin_memory=pin_memory, prefetch_factor=4))


def workers_for(images) -> int:
    """DataLoader workers for reading ``images``: none for a tensor in memory, up to 4 for a prepared store."""
    return min(4, max(1, (os.cpu_count() or 2) // 2)) if isinstance(images, PreparedImages) else 0


def rows_of(images, labels=None) -> Callable:
    """A feed of image rows (uint8 (B, C, H, W) on the CPU), with their labels when given."""
    if labels is None:
        return lambda index: images[index]
    return lambda index: (images[index], labels[index])
