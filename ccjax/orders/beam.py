"""Beam search over elimination prefixes.

Level ``k`` holds at most ``width`` partial eliminations of ``k`` vertices;
each is extended by every remaining vertex and the ``width`` best children
(distinct states only) survive.  A child is scored by its cost so far plus
the sum of the current step costs of its remaining vertices (what they would
cost if eliminated now: a cheap look-ahead that penalises fill-in), with the
cost so far as tie-breaker.  Exact costs come from the one cost model.
Deterministic.
"""
from __future__ import annotations

import dataclasses
import heapq
from typing import Optional

from ccjax.orders.deadline import passed
from ccjax.orders.incremental import Evaluator, State


@dataclasses.dataclass(frozen=True)
class _Node:
    score: float
    cost: int
    order: tuple[int, ...]
    state: State
    est: dict  # remaining vertex -> current step cost


def _child(ev: Evaluator, node: _Node, v: int) -> _Node:
    state, c = ev.eliminate(node.state, v)
    est = dict(node.est)
    del est[v]
    for x in (*node.state.preds[v], *node.state.succs[v]):
        if x in est:
            est[x] = ev.step_cost(state, x)
    cost = node.cost + c
    return _Node(cost + sum(est.values()), cost, node.order + (v,), state, est)


def beam_search(ev: Evaluator, width: int = 8, deadline: Optional[float] = None) -> Optional[tuple[tuple[int, ...], int]]:
    """``(order, cost)`` of the best complete elimination found, or None if
    ``deadline`` (``time.perf_counter()``) passed first.  The clock is read
    for every child: one level expands ``width * n`` children of ``O(n)``
    work each, seconds on a graph of a few thousand vertices."""
    root = ev.root
    est = {v: ev.step_cost(root, v) for v in ev.eliminable}
    beam = [_Node(float(sum(est.values())), 0, (), root, est)]
    for _ in range(len(ev.eliminable)):
        children: dict[tuple[int, int], _Node] = {}
        for node in beam:
            for v in node.est:
                if passed(deadline):
                    return None
                ch = _child(ev, node, v)
                key = (ch.state.mask, ch.state.key)
                old = children.get(key)
                if old is None or (ch.cost, ch.order) < (old.cost, old.order):
                    children[key] = ch
        beam = heapq.nsmallest(width, children.values(), key=lambda n: (n.score, n.cost, n.order))
    best = min(beam, key=lambda n: (n.cost, n.order))
    return best.order, best.cost
