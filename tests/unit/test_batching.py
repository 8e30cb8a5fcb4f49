"""Epoch plans: budget, determinism, equal steps per worker, every row once, padding efficiency."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from higgs_train.data.batching import (
    _equalise,
    build_epoch_plan,
    optimizer_steps,
    padding_efficiency,
    plan_epoch,
)


def skewed_lengths(n: int = 400, seed: int = 0) -> np.ndarray:
    """Mostly short samples with a long tail, like voice-cloning rows with long reference clips."""
    rng = np.random.default_rng(seed)
    short = rng.integers(150, 350, size=int(n * 0.8))
    long = rng.integers(800, 2000, size=n - len(short))
    return rng.permutation(np.concatenate([short, long]))


def row_counts(plan: list[list[list[int]]]) -> Counter:
    return Counter(i for worker in plan for batch in worker for i in batch)


def test_token_budget_and_row_cap_are_respected():
    lengths = skewed_lengths()
    plan = plan_epoch(lengths, max_tokens_per_batch=4000, batch_size=8, seed=1, epoch=0, num_workers=2)
    for worker in plan:
        for batch in worker:
            assert 1 <= len(batch) <= 8
            assert lengths[batch].max() * len(batch) <= 4000


def test_fixed_size_batches_without_budget():
    plan = plan_epoch(np.arange(1, 21), batch_size=4, seed=0, epoch=0, num_workers=1)
    assert [len(b) for b in plan[0]] == [4] * 5


def test_deterministic_per_seed_and_epoch_and_different_across_epochs():
    lengths = skewed_lengths()
    kwargs = dict(max_tokens_per_batch=4000, batch_size=8, seed=7, num_workers=2)
    assert plan_epoch(lengths, epoch=3, **kwargs) == plan_epoch(lengths, epoch=3, **kwargs)
    assert plan_epoch(lengths, epoch=3, **kwargs) != plan_epoch(lengths, epoch=4, **kwargs)
    assert plan_epoch(lengths, epoch=3, **kwargs) != plan_epoch(lengths, epoch=3, **{**kwargs, "seed": 8})


@pytest.mark.parametrize("num_workers", [2, 3])
@pytest.mark.parametrize("budget", [0, 1500])
def test_equal_steps_per_worker_and_every_row_exactly_once(num_workers, budget):
    for n in [num_workers, 5, 7, 10, 11, 23, 64]:
        lengths = skewed_lengths(n, seed=n)
        budget_n = max(budget, int(lengths.max())) if budget else 0
        plan = build_epoch_plan(
            lengths, max_tokens_per_batch=budget_n, batch_size=4, seed=0, epoch=1, num_workers=num_workers
        )
        steps = {len(worker) for worker in plan.worker_batches}
        assert len(steps) == 1 and steps.pop() >= 1, (n, [len(w) for w in plan.worker_batches])
        assert plan.repeated == []
        assert row_counts(plan.worker_batches) == Counter(range(n)), n
        assert all(batch for worker in plan.worker_batches for batch in worker)


def test_fewer_rows_than_workers_repeats_with_a_flag():
    plan = build_epoch_plan([100, 50], batch_size=4, seed=0, epoch=0, num_workers=3)
    assert [len(w) for w in plan.worker_batches] == [1, 1, 1]
    counts = row_counts(plan.worker_batches)
    assert set(counts) == {0, 1} and sum(counts.values()) == 3
    assert plan.repeated == [1]  # the cheapest row is the one repeated
    with pytest.raises(ValueError, match="allow_repeat"):
        build_epoch_plan([100, 50], batch_size=4, seed=0, epoch=0, num_workers=3, allow_repeat=False)


def test_merges_singletons_instead_of_repeating_when_they_fit():
    batches = [[0], [1], [2]]
    repeated = _equalise(batches, np.array([10, 20, 30]), 2, 1000, 4, allow_repeat=False)
    assert repeated == [] and len(batches) == 2
    assert sorted(i for b in batches for i in b) == [0, 1, 2]


def test_over_budget_rows_are_kept_alone_and_reported():
    plan = build_epoch_plan([100, 5000, 120], max_tokens_per_batch=1000, batch_size=4, seed=0, epoch=0)
    assert plan.over_budget == [1]
    assert [1] in plan.all_batches()
    assert row_counts(plan.worker_batches) == Counter(range(3))


def test_optimizer_steps_with_gradient_accumulation():
    plan = build_epoch_plan(
        np.full(10, 100), batch_size=1, seed=0, epoch=0, num_workers=2, gradient_accumulation_steps=3
    )
    assert plan.batches_per_worker == 5
    assert plan.optimizer_steps == 2  # ceil(5 / 3): the last accumulation window is short
    assert optimizer_steps(plan.worker_batches, 3) == 2


def test_token_budget_pads_less_than_fixed_size_on_skewed_lengths():
    lengths = skewed_lengths(1000)
    fixed = plan_epoch(lengths, batch_size=8, seed=0, epoch=0, num_workers=2)
    budget = plan_epoch(lengths, max_tokens_per_batch=8 * 600, batch_size=16, seed=0, epoch=0, num_workers=2)
    eff_fixed, eff_budget = padding_efficiency(fixed, lengths), padding_efficiency(budget, lengths)
    assert eff_budget > eff_fixed + 0.2, (eff_fixed, eff_budget)
    assert eff_budget > 0.85


def test_padding_efficiency_by_hand():
    assert padding_efficiency([[0, 1], [2]], [10, 30, 5]) == pytest.approx(45 / (60 + 5))
    assert padding_efficiency([], [1, 2]) == 1.0
