"""Certified lower bounds on the cost of finishing an elimination.

Facts of the structure algebra used (all from :mod:`ccjax.structure`):

1. A sum cancels (``sum_plan(a, b).result is None``) only when both ``a``
   and ``b`` are unit partials (no stored values) of opposite signs.
2. A product or sum that involves a *valued* partial (one with stored
   values) is valued; a product of two valued partials costs at least one
   multiplication.
3. A unit partial is therefore always the product along a single path of
   unit edges of the original graph (any sum makes a valued partial).

:func:`can_cancel` decides from the graph whether a cancellation can ever
happen (two all-unit paths between the same vertices with opposite signs).

:func:`count_bound`: a remaining vertex with a valued in-edge and a valued
out-edge will multiply at least one valued pair when eliminated, provided
its valued edges survive until then.  Without cancellation they do (an edge
only disappears with an endpoint, and is then replaced by valued edges to
that endpoint's neighbours, which always exist).  With cancellation the
bound counts only vertices on a path of valued edges from an input and on
one to an output (valued edges never cancel).

:func:`cut_bound` (no cancellation only): when ``v`` is eliminated its
predecessors are exactly the remaining vertices with a path to ``v``
through eliminated ones, so they form a vertex cut between the inputs and
``v``; a predecessor ``p`` with no all-unit path to ``v`` has a valued edge
to ``v`` (fact 3).  So ``v`` has at least ``a(v)`` valued predecessors,
``a(v)`` the minimum number of vertices without an all-unit path to ``v``
that separate the inputs from ``v`` (a max-flow), likewise ``b(v)`` valued
successors, and costs at least ``a(v) * b(v)`` multiplications (fact 2).

Each term bounds one vertex's own elimination, so a sum over some of the
vertices is a bound too: with a ``deadline`` (``time.perf_counter()``) the
max-flows stop when it passes (they take seconds on a graph of a thousand
vertices) and the vertices left count with :func:`count_bound`'s term alone.
"""
from __future__ import annotations

from collections import deque
from typing import Optional

from ccjax.orders.deadline import passed
from ccjax.orders.incremental import Evaluator, State


def can_cancel(ev: Evaluator, deadline: Optional[float] = None) -> bool:
    """Whether some future sum could cancel to zero (see module docstring).

    Two unit paths of opposite signs between the same vertices leave their
    last common vertex along different unit edges, so only vertices with two
    or more unit out-edges start a search.  True (the safe answer: only the
    weaker count bound is used) when ``deadline`` passes first."""
    root = ev.root
    unit = {}
    for u, succ in root.succs.items():
        unit[u] = [(w, ev.structures[s].sign) for w, s in succ.items() if not ev.is_valued(s)]
    for a in root.succs:
        if len(unit[a]) < 2:
            continue
        if passed(deadline):
            return True
        seen: set[tuple[int, int]] = set()
        stack = list(unit[a])
        while stack:
            b, sg = stack.pop()
            if (b, sg) in seen:
                continue
            if (b, -sg) in seen:
                return True
            seen.add((b, sg))
            stack.extend((w, sg * s2) for w, s2 in unit.get(b, ()))
    return False


def _has_valued(ev: Evaluator, edges: dict) -> bool:
    valued = ev.is_valued
    return any(valued(s) for s in edges.values())


def count_bound(ev: Evaluator, state: State, cancel: bool = True) -> int:
    """Vertices that must still multiply a valued pair (see module docstring).

    ``cancel=False`` asserts that no sum can cancel (:func:`can_cancel`).
    """
    preds, succs, mask = state.preds, state.succs, state.mask
    if not cancel:
        return sum(1 for v in ev.eliminable if not mask >> v & 1
                   and _has_valued(ev, preds[v]) and _has_valued(ev, succs[v]))
    valued = ev.is_valued

    def reach(starts, nbrs) -> set:
        seen: set[int] = set()
        stack = list(starts)
        while stack:
            u = stack.pop()
            for w, s in nbrs[u].items():
                if w not in seen and valued(s):
                    seen.add(w)
                    stack.append(w)
        return seen

    fwd = reach([v for v, p in preds.items() if not p], succs)
    bwd = reach([v for v, s in succs.items() if not s], preds)
    return sum(1 for v in ev.eliminable if not mask >> v & 1 and v in fwd and v in bwd)


def _unit_reach(ev: Evaluator, v: int, nbrs: dict) -> set:
    """Vertices reachable from ``v`` along unit edges (``nbrs``: preds or succs)."""
    valued = ev.is_valued
    seen = {v}
    stack = [v]
    while stack:
        x = stack.pop()
        for y, s in nbrs[x].items():
            if y not in seen and not valued(s):
                seen.add(y)
                stack.append(y)
    return seen


def _disjoint_paths(sources: list, target: int, nbrs: dict, blocked: set, limit: int) -> int:
    """Maximum number of paths from ``sources`` to ``target`` (following
    ``nbrs``) that share no vertex other than ``target`` and avoid
    ``blocked``, capped at ``limit``: a max-flow with unit vertex capacities
    (Edmonds-Karp on the vertex-split graph)."""
    # nodes: 2x (entry of x), 2x+1 (exit of x); -1 source; -2 sink (= target)
    cap: dict[tuple[int, int], int] = {}
    adj: dict[int, list[int]] = {}

    def arc(a: int, b: int, c: int) -> None:
        if (a, b) not in cap:
            adj.setdefault(a, []).append(b)
            adj.setdefault(b, []).append(a)
            cap.setdefault((b, a), 0)
        cap[(a, b)] = cap.get((a, b), 0) + c

    big = limit + 1
    seen = set()
    stack = [x for x in sources if x not in blocked and x != target]
    for x in stack:
        arc(-1, 2 * x, big)
    seen.update(stack)
    while stack:
        x = stack.pop()
        arc(2 * x, 2 * x + 1, 1)
        for y in nbrs[x]:
            if y == target:
                arc(2 * x + 1, -2, big)
            elif y not in blocked:
                arc(2 * x + 1, 2 * y, big)
                if y not in seen:
                    seen.add(y)
                    stack.append(y)
    flow = 0
    while flow < limit:
        parent = {-1: None}
        queue = deque([-1])
        while queue and -2 not in parent:
            a = queue.popleft()
            for b in adj.get(a, ()):
                if b not in parent and cap[(a, b)] > 0:
                    parent[b] = a
                    queue.append(b)
        if -2 not in parent:
            break
        b = -2
        while parent[b] is not None:
            a = parent[b]
            cap[(a, b)] -= 1
            cap[(b, a)] += 1
            b = a
        flow += 1
    return flow


def vertex_bounds(ev: Evaluator, state: State, limit: int = 64,
                  deadline: Optional[float] = None) -> dict[int, int]:
    """``{v: a(v) * b(v)}`` for the remaining vertices (see module docstring),
    or for those done when ``deadline`` passed.

    Only valid when :func:`can_cancel` is False.  Each value bounds the cost
    of eliminating ``v`` from ``state`` or from any state reachable from it,
    since the argument only uses paths of the graph at ``state``.
    """
    preds, succs, mask = state.preds, state.succs, state.mask
    inputs = [v for v, p in preds.items() if not p]
    outputs = [v for v, s in succs.items() if not s]
    out = {}
    for v in ev.eliminable:
        if mask >> v & 1:
            continue
        if passed(deadline):
            break
        a = _disjoint_paths(inputs, v, succs, _unit_reach(ev, v, preds), limit)
        b = _disjoint_paths(outputs, v, preds, _unit_reach(ev, v, succs), limit) if a else 0
        out[v] = a * b
    return out


def cut_bound(ev: Evaluator, state: State, limit: int = 64, deadline: Optional[float] = None) -> int:
    """Sum over remaining vertices of ``max(count, a(v) * b(v))`` (see module
    docstring; ``a(v) * b(v)`` only for the vertices done by ``deadline``).
    Only valid when :func:`can_cancel` is False."""
    preds, succs = state.preds, state.succs
    cuts = vertex_bounds(ev, state, limit, deadline)
    return sum(max(int(_has_valued(ev, preds[v]) and _has_valued(ev, succs[v])), cuts.get(v, 0))
               for v in ev.eliminable if not state.mask >> v & 1)


def lower_bound(ev: Evaluator, state: State, deadline: Optional[float] = None) -> int:
    """The best bound here for ``state``: :func:`cut_bound` when no sum can
    cancel, else :func:`count_bound`."""
    if can_cancel(ev, deadline):
        return count_bound(ev, state, cancel=True)
    return cut_bound(ev, state, deadline=deadline)
