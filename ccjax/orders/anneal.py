"""Simulated annealing over permutations, on the incremental evaluator.

Moves are local edits of the order (move one vertex a few places, swap two
vertices, reverse a short segment); each is re-evaluated by
:class:`~ccjax.orders.incremental.IncrementalOrder` from the first changed
position until the new prefix meets the old trajectory again, and aborted as
soon as it cannot be accepted.  The temperature falls geometrically from
``t_start`` to ``t_end`` times the starting cost over ``moves`` moves.

Deterministic for a given ``numpy`` generator state and move count; a
``deadline`` only truncates the run.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import numpy as np

from ccjax.orders.deadline import passed
from ccjax.orders.incremental import Evaluator, IncrementalOrder


@dataclasses.dataclass(frozen=True)
class AnnealConfig:
    """Schedule of one annealing run (temperatures relative to the start cost)."""

    moves: int = 20000
    t_start: float = 0.02
    t_end: float = 0.0003
    max_shift: int = 24


@dataclasses.dataclass(frozen=True)
class AnnealResult:
    order: tuple[int, ...]
    cost: int
    moves: int
    accepted: int


def _proposal_seq(order: list[int], rng: np.random.Generator, max_shift: int) -> tuple[int, list[int]]:
    """A random local edit as ``(i, seq)``: ``order[i:i+len(seq)]`` becomes ``seq``."""
    n = len(order)
    d = 1 + min(int(rng.geometric(0.25)), max_shift, n - 1)
    i = int(rng.integers(0, n))
    j = i + d if rng.random() < 0.5 else i - d
    j = min(max(j, 0), n - 1)
    if j == i:
        j = i + 1 if i + 1 < n else i - 1
    a, b = min(i, j), max(i, j)
    kind = rng.random()
    if kind < 0.7:  # move one vertex from i to j
        if i < j:
            return a, order[a + 1:b + 1] + [order[a]]
        return a, [order[b]] + order[a:b]
    if kind < 0.9:  # swap
        seq = order[a:b + 1]
        seq[0], seq[-1] = seq[-1], seq[0]
        return a, seq
    return a, order[a:b + 1][::-1]


def anneal(ev: Evaluator, start: Sequence[int], rng: np.random.Generator,
           config: AnnealConfig = AnnealConfig(), deadline: Optional[float] = None,
           on_improve: Optional[Callable[[tuple[int, ...], int], None]] = None) -> AnnealResult:
    """One annealing run from ``start``; returns the best order seen.

    ``on_improve(order, cost)`` is called on every new best.  Stops after
    ``config.moves`` moves or at ``deadline`` (``time.perf_counter()``),
    which is checked before every move (a move re-evaluates up to the whole
    order); building the start's trajectory raises
    :class:`~ccjax.orders.deadline.OutOfTime` when the deadline passes first.
    """
    cur = IncrementalOrder(ev, start, deadline)
    best_order, best_cost = tuple(cur.order), cur.total
    n = len(cur.order)
    if n < 2:
        return AnnealResult(best_order, best_cost, 0, 0)
    scale = max(best_cost, 1)
    t0, t1 = config.t_start * scale, config.t_end * scale
    ratio = (t1 / t0) ** (1.0 / max(config.moves - 1, 1)) if t0 > 0 else 1.0
    temp = t0
    accepted = 0
    moves = 0
    for moves in range(1, config.moves + 1):
        if passed(deadline):
            break
        i, seq = _proposal_seq(cur.order, rng, config.max_shift)
        slack = -temp * math.log(max(rng.random(), 1e-300))
        limit = cur.total + int(math.floor(slack))
        p = cur.propose(i, seq, limit)
        temp *= ratio
        if p is None:
            continue
        cur.commit(p)
        accepted += 1
        if cur.total < best_cost:
            best_order, best_cost = tuple(cur.order), cur.total
            if on_improve is not None:
                on_improve(best_order, best_cost)
    return AnnealResult(best_order, best_cost, moves, accepted)
