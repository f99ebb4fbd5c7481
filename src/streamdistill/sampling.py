"""The one sampler: which training items each micro-batch of each optimiser step reads.

Every stage (the base LM, the contrastive stages, LEAF) reads its items through an
:class:`EpochOrder` (a seeded permutation per epoch, cached per epoch, optionally length-grouped)
cut by a :class:`BatchPlan` into global batches and micro-batches. Both are pure functions of
their arguments, so resuming a run needs no data-loader state, and the slicing rule is the one the
training loop assumes (see :func:`streamdistill.train.train`):

* optimiser step ``s`` reads the ``B`` items ``order[s*B : (s+1)*B]`` (its *global* batch);
* with ``grad_accum = k`` and ``N`` processes the global batch is cut into ``k*N`` micro-batches
  of ``B / (k*N)`` items, and micro-batch ``m`` is the ``m``-th slice; ``train`` hands process
  ``r`` the micro-batches ``r, r+N, r+2N, ...``.

So one process with ``k`` micro-batches and ``N`` processes read the same items per step, and
their gradients agree.
"""

from __future__ import annotations

import torch

from .artifacts import data_parallel_world

GROUP_BATCHES = 64  # batches per length-sorted pool (see EpochOrder)


class EpochOrder:
    """Item ``g`` of an endless stream over ``n`` items: a fresh seeded permutation per epoch.

    The permutation of epoch ``e`` is ``torch.randperm(n)`` from a generator seeded with
    ``1_000_003 * seed + e``, computed once per epoch. With ``lengths`` (one number per item, e.g.
    characters) and ``batch_size``, each epoch is *length-grouped*: the permutation is cut into
    pools of :data:`GROUP_BATCHES` batches, each pool is sorted by length and cut into batches, and
    the whole batches are shuffled (seeded); a short last batch stays last. A batch then pads to
    the length of similar texts instead of its longest (on the mirror's texts random batches pad
    to ~4x the tokens). Which items share a batch changes, every epoch still covers every item once.
    """

    def __init__(self, n: int, seed: int, *, lengths=None, batch_size: int | None = None):
        if n < 1:
            raise ValueError("no training items")
        if lengths is not None and (batch_size is None or len(lengths) != n):
            raise ValueError("length grouping needs one length per item and the batch size")
        self.n, self.seed = int(n), int(seed)
        self.lengths = None if lengths is None else torch.as_tensor(list(lengths), dtype=torch.float64)
        self.batch_size = batch_size
        self._epochs: dict[int, list[int]] = {}

    @property
    def grouped(self) -> bool:
        return self.lengths is not None

    def _generator(self, epoch: int, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(1_000_003 * self.seed + epoch + 7_919 * salt)

    def epoch(self, epoch: int) -> list[int]:
        """The order of epoch ``epoch`` (a permutation of ``range(n)``)."""
        if epoch not in self._epochs:
            perm = torch.randperm(self.n, generator=self._generator(epoch))
            self._epochs[epoch] = self._grouped(perm, epoch) if self.grouped else perm.tolist()
        return self._epochs[epoch]

    def _grouped(self, perm: torch.Tensor, epoch: int) -> list[int]:
        size = int(self.batch_size)
        batches: list[torch.Tensor] = []
        for start in range(0, self.n, size * GROUP_BATCHES):
            pool = perm[start : start + size * GROUP_BATCHES]
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            batches.extend(pool[i : i + size] for i in range(0, len(pool), size))
        # only the very last batch can be short; it stays last so every other batch is whole
        tail = [batches.pop()] if len(batches[-1]) < size else []
        shuffle = torch.randperm(len(batches), generator=self._generator(epoch, salt=1)).tolist()
        return torch.cat([batches[i] for i in shuffle] + tail).tolist()

    def __getitem__(self, g: int) -> int:
        epoch, pos = divmod(int(g), self.n)
        return self.epoch(epoch)[pos]


class BatchPlan:
    """Global batches of ``batch_size`` items from ``order``, cut into micro-batches.

    ``world`` defaults to the number of data-parallel processes (read before any ``Accelerator``
    exists), so a stage sizes its micro-batches under ``accelerate launch`` without knowing it.
    """

    def __init__(self, order: EpochOrder, batch_size: int, grad_accum: int = 1, world: int | None = None):
        self.order, self.batch_size, self.grad_accum = order, int(batch_size), int(grad_accum)
        self.world = int(world if world is not None else data_parallel_world())
        parts = self.grad_accum * self.world
        if self.batch_size % parts:
            raise ValueError(f"batch_size={batch_size} must be divisible by grad_accum × processes = {parts}")
        self.micro = self.batch_size // parts

    def indices(self, step: int, micro: int) -> list[int]:
        """Items of micro-batch ``micro`` (``0 .. grad_accum*world - 1``) of optimiser step ``step``."""
        if not 0 <= micro < self.grad_accum * self.world:
            raise ValueError(f"micro-batch {micro} is outside 0..{self.grad_accum * self.world - 1}")
        start = int(step) * self.batch_size + int(micro) * self.micro
        return [self.order[start + k] for k in range(self.micro)]

    def used(self, steps: int, start: int = 0) -> list[int]:
        """Every item optimiser steps ``start .. start + steps - 1`` read (sorted, each once)."""
        first = int(start) * self.batch_size
        return sorted({self.order[g] for g in range(first, first + int(steps) * self.batch_size)})
