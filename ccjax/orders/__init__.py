"""Elimination orders: built-in heuristics and order resolution."""
from __future__ import annotations

from typing import Sequence, Union

from ccjax.eliminate import plan_elimination, validate_order
from ccjax.graph import Graph
from ccjax.orders.heuristics import HEURISTICS, forward, markowitz, reverse

#: Orders tried by ``order="auto"``, in tie-breaking preference.
AUTO_CANDIDATES = ("rev", "fwd", "markowitz")


def resolve_order(graph: Graph, order: Union[str, Sequence[int]]) -> tuple[int, ...]:
    """Turn an order specification into a validated tuple of vertex ids."""
    if isinstance(order, str):
        name = order.lower()
        if name == "auto":
            candidates = [HEURISTICS[c](graph) for c in AUTO_CANDIDATES]
            return min(candidates, key=lambda o: plan_elimination(graph, o).report.mults)
        if name not in HEURISTICS:
            raise ValueError(f"unknown order {order!r}; use one of {sorted(HEURISTICS) + ['auto']} "
                             f"or a sequence of vertex ids")
        return HEURISTICS[name](graph)
    return validate_order(graph, order)


__all__ = ["HEURISTICS", "AUTO_CANDIDATES", "forward", "reverse", "markowitz", "resolve_order"]
