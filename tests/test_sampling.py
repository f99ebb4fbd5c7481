"""The one sampler: seeded epoch orders, length grouping, and the micro-batch/process slicing rule."""

from __future__ import annotations

import numpy as np
import pytest

from streamdistill.sampling import GROUP_BATCHES, BatchPlan, EpochOrder


def test_epoch_order_is_seeded_cached_and_a_fresh_permutation_per_epoch():
    order = EpochOrder(50, seed=3)
    assert sorted(order.epoch(0)) == list(range(50)) and order.epoch(0) != order.epoch(1)
    assert [order[g] for g in range(50, 100)] == order.epoch(1)  # item g of the endless stream
    assert EpochOrder(50, seed=3).epoch(4) == order.epoch(4) and EpochOrder(50, seed=4).epoch(0) != order.epoch(0)
    assert order.epoch(0) is order.epoch(0)  # computed once per epoch
    with pytest.raises(ValueError, match="no training items"):
        EpochOrder(0, seed=0)


def test_length_grouped_epochs_are_permutations_of_whole_batches_with_less_padding():
    rng = np.random.default_rng(0)
    n, batch = 1000, 8  # 125 batches: two pools of 64 batches, the last pool short
    assert GROUP_BATCHES == 64
    lengths = np.minimum(rng.geometric(1 / 30, size=n), 128)  # skewed, like real texts
    grouped = EpochOrder(n, seed=3, lengths=lengths, batch_size=batch)
    for epoch in range(2):
        assert sorted(grouped.epoch(epoch)) == list(range(n))
    assert grouped.epoch(0) != grouped.epoch(2)
    steps = n // batch
    g_plan, p_plan = BatchPlan(grouped, batch, world=1), BatchPlan(EpochOrder(n, seed=3), batch, world=1)
    g_batches = [g_plan.indices(s, 0) for s in range(steps)]
    p_batches = [p_plan.indices(s, 0) for s in range(steps)]
    assert sorted(i for b in g_batches for i in b) == list(range(n))  # one epoch reads every item once
    padded = lambda batches: sum(lengths[b].max() * len(b) for b in batches)
    assert padded(g_batches) < 0.5 * padded(p_batches)


def test_length_grouping_keeps_a_short_last_batch_last():
    lengths = np.arange(20)[::-1].copy()  # one pool, sorted by length: batches of 8, 8 and the 4 longest
    for seed in range(5):
        order = EpochOrder(20, seed=seed, lengths=lengths, batch_size=8).epoch(0)
        assert set(order[-4:]) == {0, 1, 2, 3}
        assert {frozenset(order[:8]), frozenset(order[8:16])} == {frozenset(range(4, 12)), frozenset(range(12, 20))}


@pytest.mark.parametrize("grouped", [False, True])
def test_accumulation_and_processes_read_slices_of_one_global_batch(grouped):
    """One process with k micro-batches and N processes (train() hands rank r the micros r, r+N, ...)
    read the same items per optimiser step as one full batch."""
    n = 100
    lengths = np.arange(n) % 17 if grouped else None
    order = EpochOrder(n, seed=1, lengths=lengths, batch_size=8 if grouped else None)
    full = BatchPlan(order, 8, grad_accum=1, world=1)
    accum = BatchPlan(order, 8, grad_accum=2, world=1)
    two = BatchPlan(order, 8, grad_accum=2, world=2)
    assert (full.micro, accum.micro, two.micro) == (8, 4, 2)
    for step in range(30):  # past an epoch boundary
        one = full.indices(step, 0)
        assert [i for m in range(2) for i in accum.indices(step, m)] == one
        ranks = [[i for m in range(r, 4, 2) for i in two.indices(step, m)] for r in range(2)]
        assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == sorted(one)
    assert full.used(3) == sorted({i for s in range(3) for i in full.indices(s, 0)})


def test_a_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="divisible by grad_accum × processes = 6"):
        BatchPlan(EpochOrder(10, 0), 8, grad_accum=3, world=2)
    with pytest.raises(ValueError, match="outside 0..1"):
        BatchPlan(EpochOrder(10, 0), 8, grad_accum=2, world=1).indices(0, 2)
