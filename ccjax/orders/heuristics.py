"""Classical orders: forward, reverse and Markowitz.

Markowitz eliminates next the vertex with the fewest ``#preds * #succs``
(ties: lowest id), on the edge set as it evolves under elimination.
"""
from __future__ import annotations

import heapq

from ccjax.graph import Graph


def forward(graph: Graph) -> tuple[int, ...]:
    """Evaluation order (ids are topological)."""
    return tuple(sorted(graph.eliminable))


def reverse(graph: Graph) -> tuple[int, ...]:
    """Reverse evaluation order."""
    return tuple(sorted(graph.eliminable, reverse=True))


def markowitz(graph: Graph) -> tuple[int, ...]:
    """Greedy smallest Markowitz degree ``|preds| * |succs|``.

    Only the neighbours of an eliminated vertex change degree, so they are
    the only ones rescored; a heap with stale entries skipped on pop finds
    the minimum (a full rescan per step made this quadratic in the graph)."""
    preds: dict[int, set] = {v: set() for v in graph.eliminable}
    succs: dict[int, set] = {v: set() for v in graph.eliminable}
    for (u, w) in graph.edges:
        succs.setdefault(u, set()).add(w)
        preds.setdefault(w, set()).add(u)
    degree = {v: len(preds[v]) * len(succs[v]) for v in graph.eliminable}
    heap = [(d, v) for v, d in degree.items()]
    heapq.heapify(heap)
    order = []
    while heap:
        d, v = heapq.heappop(heap)
        if degree.get(v) != d:
            continue  # eliminated already, or rescored since this entry
        for u in preds[v]:
            succs[u].discard(v)
            succs[u] |= succs[v]
        for w in succs[v]:
            preds[w].discard(v)
            preds[w] |= preds[v]
        del degree[v]
        order.append(v)
        for x in preds[v] | succs[v]:
            if x in degree:
                new = len(preds[x]) * len(succs[x])
                if new != degree[x]:
                    degree[x] = new
                    heapq.heappush(heap, (new, x))
    return tuple(order)


HEURISTICS = {
    "fwd": forward, "forward": forward,
    "rev": reverse, "reverse": reverse,
    "markowitz": markowitz,
}
