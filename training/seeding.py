"""Seeded, resumable randomness: which samples (:class:`DataOrder`) and which noise, levels and dropout
(:func:`step_generator`) each micro-batch gets.  Both are functions of the run's seed and the position
in the run only, so a run is a pure function of its seed and a resumed run continues exactly as if it
had never stopped.
"""
from __future__ import annotations

import numpy as np
import torch


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The CPU generator of one micro-batch: a function of (seed, step, global micro-batch index) only.

    The global index of process ``rank``'s micro-batch ``m`` is ``m * world + rank``, the same
    numbering as the data order, so a run draws the same samples and the same noise whether its
    micro-batches are split across processes or accumulated in one (2 processes x 1 micro-batch
    equals 1 process x 2 accumulated micro-batches, up to float summation order).
    """
    a, b = np.random.SeedSequence([seed, step, micro]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(a) << 32) | int(b))


class DataOrder:
    """Sample indices of global positions: one seeded permutation of the dataset per epoch."""

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise ValueError("the dataset is empty")
        self.n, self.seed, self._perms = n, seed, {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> torch.Tensor:
        pos = torch.arange(start, start + count)
        epoch, offset = pos // self.n, pos % self.n
        return torch.stack([self._perm(int(e))[int(o)] for e, o in zip(epoch, offset)])
