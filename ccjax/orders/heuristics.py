"""Classical orders: forward, reverse and Markowitz.

Markowitz eliminates next the vertex with the fewest ``#preds * #succs``
(ties: lowest id), on the edge set as it evolves under elimination.
"""
from __future__ import annotations

from ccjax.graph import Graph


def forward(graph: Graph) -> tuple[int, ...]:
    """Evaluation order (ids are topological)."""
    return tuple(sorted(graph.eliminable))


def reverse(graph: Graph) -> tuple[int, ...]:
    """Reverse evaluation order."""
    return tuple(sorted(graph.eliminable, reverse=True))


def markowitz(graph: Graph) -> tuple[int, ...]:
    """Greedy smallest Markowitz degree ``|preds| * |succs|``."""
    preds: dict[int, set] = {v: set() for v in graph.eliminable}
    succs: dict[int, set] = {v: set() for v in graph.eliminable}
    for (u, w) in graph.edges:
        succs.setdefault(u, set()).add(w)
        preds.setdefault(w, set()).add(u)
    remaining = set(graph.eliminable)
    order = []
    while remaining:
        v = min(remaining, key=lambda x: (len(preds[x]) * len(succs[x]), x))
        for u in preds[v]:
            succs[u].discard(v)
            succs[u] |= succs[v]
        for w in succs[v]:
            preds[w].discard(v)
            preds[w] |= preds[v]
        remaining.discard(v)
        order.append(v)
    return tuple(order)


HEURISTICS = {
    "fwd": forward, "forward": forward,
    "rev": reverse, "reverse": reverse,
    "markowitz": markowitz,
}
