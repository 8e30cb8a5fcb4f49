"""Epoch plans: token-budget batches of similar-length rows, split evenly over data-parallel workers.

Why: voice-cloning samples vary several-fold in merged length (reference + target audio), so fixed-size batches
of random rows spend much of their compute on padding; and under DDP every worker must run the *same number* of
steps per epoch or the all-reduce of the short worker's missing step hangs the others.

``build_epoch_plan`` (``plan_epoch`` returns just its batches):

1. Shuffle row indices with ``numpy.random.default_rng([seed, epoch])`` (deterministic per (seed, epoch), different
   across epochs).
2. Cut the permutation into chunks of ``bucket_rows`` rows and sort each chunk by length ("sort within shuffled
   chunks"): neighbours have similar lengths, while which rows meet still changes every epoch.
3. Fill batches greedily along that order: a row joins the current batch while ``max_len * rows <= budget`` and
   ``rows <= batch_size``. With ``max_tokens_per_batch == 0`` batches are simply ``batch_size`` consecutive rows
   of the shuffled order (no sorting). A single row longer than the budget forms its own batch (it cannot be
   split) and is reported in ``EpochPlan.over_budget``.
4. Equalise the batch count to a multiple of ``num_workers`` without losing rows: split the batch with the most
   rows into two (a subset of a batch never exceeds the budget) until divisible; when no batch has two rows, merge
   the two cheapest batches whose union still fits. Only if neither is possible (fewer rows than workers, or
   every merge would exceed the budget) are rows repeated: single-row batches of the shortest row are appended
   (with fewer rows than workers, every row first gets its own batch) and listed in ``EpochPlan.repeated``
   (when ``allow_repeat`` is False this raises instead). The trainer should treat those
   as real steps; their cost is one duplicated sample per missing step.
5. Sort batches by padded cost and deal consecutive groups of ``num_workers`` to the workers (so the batches of
   one step have similar cost and no worker waits long at the all-reduce), then shuffle the step order.

Every row appears exactly once per epoch (apart from ``repeated``), and every worker gets the same number of batches.
Gradient accumulation does not change the plan: ``optimizer_steps`` is ``ceil(batches_per_worker / accum)`` (the last
window may be short; the trainer steps on it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_BUCKET_BATCHES = 50  # chunk = 50 batches' worth of rows: enough to find similar lengths, still random


@dataclass(frozen=True)
class EpochPlan:
    """Per-worker batch lists of row indices, plus what happened while making them equal."""

    worker_batches: list[list[list[int]]]
    num_rows: int
    gradient_accumulation_steps: int = 1
    over_budget: list[int] = field(default_factory=list)  # rows longer than the budget on their own
    repeated: list[int] = field(default_factory=list)  # rows added a second time to equalise step counts

    @property
    def batches_per_worker(self) -> int:
        return len(self.worker_batches[0]) if self.worker_batches else 0

    @property
    def optimizer_steps(self) -> int:
        return math.ceil(self.batches_per_worker / self.gradient_accumulation_steps)

    def all_batches(self) -> list[list[int]]:
        return [b for worker in self.worker_batches for b in worker]


def _padded(batch: Sequence[int], lengths: np.ndarray) -> int:
    return int(lengths[list(batch)].max()) * len(batch) if len(batch) else 0


def make_batches(
    order: Sequence[int], lengths: np.ndarray, max_tokens_per_batch: int, batch_size: int
) -> tuple[list[list[int]], list[int]]:
    """Greedy batches along ``order``; returns (batches, rows over budget on their own)."""
    batches: list[list[int]] = []
    over: list[int] = []
    current: list[int] = []
    current_max = 0
    for i in order:
        i = int(i)
        n = int(lengths[i])
        if max_tokens_per_batch > 0 and n > max_tokens_per_batch:
            over.append(i)
            batches.append([i])
            continue
        new_max = max(current_max, n)
        fits = len(current) < batch_size and (
            max_tokens_per_batch <= 0 or new_max * (len(current) + 1) <= max_tokens_per_batch
        )
        if current and not fits:
            batches.append(current)
            current, new_max = [], n
        current.append(i)
        current_max = new_max
    if current:
        batches.append(current)
    return batches, over


def _equalise(
    batches: list[list[int]],
    lengths: np.ndarray,
    num_workers: int,
    max_tokens_per_batch: int,
    batch_size: int,
    allow_repeat: bool,
) -> list[int]:
    """Make ``len(batches)`` a positive multiple of ``num_workers`` in place; returns repeated rows.

    Direction is chosen once (splits only, else merges only) so the two can never undo each other.
    """
    rows = sum(len(b) for b in batches)
    missing = -len(batches) % num_workers
    if missing and rows >= len(batches) + missing:  # enough rows: a batch with >= 2 rows always exists
        for _ in range(missing):
            j = max(range(len(batches)), key=lambda j: (len(batches[j]), _padded(batches[j], lengths), -j))
            b = sorted(batches[j], key=lambda i: (lengths[i], i))
            batches[j] = b[: len(b) // 2]
            batches.append(b[len(b) // 2 :])
        return []
    if rows < num_workers:  # one row per batch, the fewest repeats possible
        batches[:] = [[i] for b in batches for i in b]
    while len(batches) % num_workers and len(batches) > num_workers:
        merge = _cheapest_merge(batches, lengths, max_tokens_per_batch, batch_size)
        if merge is None:
            break
        a, b = merge
        batches[a] = batches[a] + batches[b]
        del batches[b]
    missing = -len(batches) % num_workers
    if missing and not allow_repeat:
        raise ValueError(
            f"cannot give {num_workers} workers an equal number of batches from {rows} rows without repeating "
            "rows (allow_repeat=False)"
        )
    row = min((i for b in batches for i in b), key=lambda i: (lengths[i], i))  # the cheapest row to repeat
    for _ in range(missing):
        batches.append([row])
    return [row] * missing


def _cheapest_merge(
    batches: list[list[int]], lengths: np.ndarray, max_tokens_per_batch: int, batch_size: int
) -> tuple[int, int] | None:
    best = None
    for a in range(len(batches)):
        for b in range(a + 1, len(batches)):
            merged = batches[a] + batches[b]
            cost = _padded(merged, lengths)
            fits = len(merged) <= batch_size and (max_tokens_per_batch <= 0 or cost <= max_tokens_per_batch)
            if fits and (best is None or cost < best[0]):
                best = (cost, a, b)
    return None if best is None else (best[1], best[2])


def build_epoch_plan(
    lengths: Sequence[int] | np.ndarray,
    *,
    max_tokens_per_batch: int = 0,
    batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int = 1,
    gradient_accumulation_steps: int = 1,
    bucket_rows: int | None = None,
    allow_repeat: bool = True,
) -> EpochPlan:
    """The plan for one epoch (see the module docstring for the algorithm and its guarantees)."""
    if batch_size < 1 or num_workers < 1 or gradient_accumulation_steps < 1 or max_tokens_per_batch < 0:
        raise ValueError("batch_size, num_workers, gradient_accumulation_steps >= 1 and max_tokens_per_batch >= 0")
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return EpochPlan([[] for _ in range(num_workers)], 0, gradient_accumulation_steps)
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(n)
    if max_tokens_per_batch > 0:
        chunk = bucket_rows or batch_size * DEFAULT_BUCKET_BATCHES
        order = np.concatenate(
            [c[np.argsort(lengths[c], kind="stable")] for c in np.array_split(order, math.ceil(n / chunk))]
        )
    batches, over = make_batches(order, lengths, max_tokens_per_batch, batch_size)
    repeated = _equalise(batches, lengths, num_workers, max_tokens_per_batch, batch_size, allow_repeat)

    # Steps of similar cost: sort by padded cost, group consecutive num_workers batches, shuffle the steps.
    batches.sort(key=lambda b: (_padded(b, lengths), b))
    steps = [batches[k : k + num_workers] for k in range(0, len(batches), num_workers)]
    step_order = rng.permutation(len(steps))
    worker_batches: list[list[list[int]]] = [[] for _ in range(num_workers)]
    for s in step_order:
        group = [steps[s][w] for w in rng.permutation(num_workers)]
        for w in range(num_workers):
            worker_batches[w].append(group[w])
    return EpochPlan(worker_batches, n, gradient_accumulation_steps, sorted(over), repeated)


def plan_epoch(
    lengths: Sequence[int] | np.ndarray,
    *,
    max_tokens_per_batch: int = 0,
    batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int = 1,
    bucket_rows: int | None = None,
    allow_repeat: bool = True,
) -> list[list[list[int]]]:
    """Per-worker batch lists ``plan[worker][step] -> row indices``; every worker has the same number of steps."""
    return build_epoch_plan(
        lengths,
        max_tokens_per_batch=max_tokens_per_batch,
        batch_size=batch_size,
        seed=seed,
        epoch=epoch,
        num_workers=num_workers,
        bucket_rows=bucket_rows,
        allow_repeat=allow_repeat,
    ).worker_batches


def optimizer_steps(plan: list[list[list[int]]] | EpochPlan, gradient_accumulation_steps: int = 1) -> int:
    """Optimizer steps per epoch: ``ceil(batches_per_worker / accumulation)`` (the last window may be short)."""
    worker_batches = plan.worker_batches if isinstance(plan, EpochPlan) else plan
    per_worker = len(worker_batches[0]) if worker_batches else 0
    return math.ceil(per_worker / gradient_accumulation_steps)


def padding_efficiency(plan: list[list[list[int]]] | list[list[int]] | EpochPlan, lengths: Sequence[int]) -> float:
    """Real tokens / processed tokens (``sum over batches of max_len * rows``); 1.0 means no padding at all."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if isinstance(plan, EpochPlan):
        batches = plan.all_batches()
    elif plan and plan[0] and isinstance(plan[0][0], list):
        batches = [b for worker in plan for b in worker]  # per-worker plan
    else:
        batches = plan  # flat list of batches
    real = sum(int(lengths[b].sum()) for b in batches if b)
    padded = sum(_padded(b, lengths) for b in batches)
    return real / padded if padded else 1.0
