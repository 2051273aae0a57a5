"""Exact order search: depth-first branch and bound over elimination states.

The search space is the set of *states* (edge sets with their structures)
reachable by eliminating vertices; the cost of a transition is the step cost
of the one cost model (:class:`~ccjax.orders.incremental.Evaluator`).  A
transposition table keyed by the state's eliminated set and Zobrist key
makes this a dynamic program over eliminated sets (two orders reaching the
same set with the same edge structures share one entry; if structures
differ they are distinct states, so nothing is assumed about the algebra).

Bounds, iterative deepening style (``solve(root, B)`` for rising ``B``):
``solve`` returns the exact cost-to-go of a state when it is ``<= B`` (or
already known) and otherwise a *certified* lower bound ``> B``.  Table
entries stay valid across iterations, so every iteration either proves the
optimum or raises the certified lower bound of the root; a time limit stops
the search with the best certified bound and the gap to the best order.

Admissible bound (:mod:`ccjax.orders.bounds`): without possible
cancellation, the sum over remaining vertices of the larger of the
per-vertex cut bound computed once on the graph (valid in every state) and
whether the vertex has a valued in- and out-edge now; with possible
cancellation, the valued-path count of the state.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

from ccjax.orders.bounds import can_cancel, count_bound, vertex_bounds
from ccjax.orders.deadline import OutOfTime, check
from ccjax.orders.incremental import Evaluator, State

INF = float("inf")


@dataclasses.dataclass(frozen=True)
class ExactResult:
    """``order``/``cost``: best order known at the end; ``lower_bound``: a
    certified lower bound on every order's cost; ``optimal``: whether
    ``lower_bound == cost`` (proven optimum); ``nodes``: states expanded."""

    order: tuple[int, ...]
    cost: int
    lower_bound: int
    optimal: bool
    nodes: int


class _Solver:
    def __init__(self, ev: Evaluator, deadline: Optional[float], use_bound: bool = True):
        self.ev = ev
        self.deadline = deadline
        self.use_bound = use_bound
        self.cancel = can_cancel(ev, deadline)  # True when cut short: the bound valid either way
        # vertices whose cut bound the deadline cut off count with the count term alone
        self.static = {} if self.cancel or not use_bound else vertex_bounds(ev, ev.root, deadline=deadline)
        self.table: dict[tuple[int, int], tuple[float, bool, Optional[int]]] = {}
        self.nodes = 0
        self.full = 0
        for v in ev.eliminable:
            self.full |= 1 << v

    def h(self, state: State) -> int:
        if not self.use_bound:
            return 0
        if self.cancel:
            return count_bound(self.ev, state, cancel=True)
        preds, succs, mask, valued, static = state.preds, state.succs, state.mask, self.ev.is_valued, self.static
        total = 0
        for v in self.ev.eliminable:
            if mask >> v & 1:
                continue
            b = static.get(v, 0)
            if b < 1 and any(valued(s) for s in preds[v].values()) and any(valued(s) for s in succs[v].values()):
                b = 1
            total += b
        return total

    def solve(self, state: State, budget: float) -> tuple[float, bool]:
        key = (state.mask, state.key)
        entry = self.table.get(key)
        if entry is not None:
            lb, exact, _ = entry
            if exact or lb > budget:
                return lb, exact
        if state.mask == self.full:
            self.table[key] = (0, True, None)
            return 0, True
        self.nodes += 1
        check(self.deadline)  # a node costs O(n) step costs: the clock is cheap beside it
        old_lb = entry[0] if entry is not None else 0
        h = max(self.h(state), old_lb)
        if h > budget:
            self.table[key] = (h, False, None)
            return h, False
        ev = self.ev
        moves = sorted((ev.step_cost(state, v), v) for v in ev.eliminable if not state.mask >> v & 1)
        best, best_v, lbs = INF, None, INF
        for c, v in moves:
            cap = min(budget, best - 1) - c
            if cap < 0:
                lbs = min(lbs, c)  # every later move costs at least c too
                break
            hit = self.table.get((state.mask | (1 << v), ev.child_key(state, v)))
            if hit is not None and (hit[1] or hit[0] > cap):
                val, exact = hit[0], hit[1]
            else:
                child, _ = ev.eliminate(state, v)
                val, exact = self.solve(child, cap)
            total = c + val
            if exact:
                if total < best:
                    best, best_v = total, v
            elif total < lbs:
                lbs = total
        if best <= lbs:
            self.table[key] = (best, True, best_v)
            return best, True
        lb = max(lbs, h)
        self.table[key] = (lb, False, None)
        return lb, False

    def path(self, state: State) -> Optional[list[int]]:
        """The optimal order from ``state`` recorded in the table, if complete."""
        order = []
        while state.mask != self.full:
            entry = self.table.get((state.mask, state.key))
            if entry is None or not entry[1] or entry[2] is None:
                return None
            v = entry[2]
            order.append(v)
            state, _ = self.ev.eliminate(state, v)
        return order


def exact_search(ev: Evaluator, upper: Sequence[int], deadline: Optional[float] = None,
                 on_bound: Optional[Callable[[int], None]] = None,
                 upper_cost: Optional[int] = None) -> ExactResult:
    """Prove the optimum or certify a lower bound, starting from order ``upper``.

    ``upper`` (any valid order) is the incumbent; the result's order is
    never worse.  ``deadline`` is a ``time.perf_counter()`` value;
    ``on_bound(lb)`` is called whenever the certified bound rises.
    ``upper_cost``: the cost of ``upper`` when the caller knows it (one
    evaluation takes a second on a graph of a few thousand vertices).
    """
    upper = tuple(int(v) for v in upper)
    ub = ev.cost(upper) if upper_cost is None else upper_cost
    solver = _Solver(ev, deadline)
    root = ev.root
    lb = solver.h(root)
    best_order, best_cost = upper, ub
    step = max(1, (best_cost - lb) // 16)
    budget = lb
    try:
        while lb < best_cost:
            val, exact = solver.solve(root, min(budget, best_cost - 1))
            if exact:
                if val < best_cost:
                    path = solver.path(root)
                    if path is not None:
                        best_order, best_cost = tuple(path), int(val)
                lb = min(int(val), best_cost)
                break
            lb = int(min(val, best_cost))
            if on_bound is not None:
                on_bound(lb)
            budget = max(lb, budget + step)
            step *= 2
    except (OutOfTime, RecursionError):  # a deep search stops like a late one: with its certified bound
        pass
    lb = min(lb, best_cost)
    return ExactResult(best_order, best_cost, lb, lb >= best_cost, solver.nodes)
