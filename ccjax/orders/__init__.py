"""Elimination orders: built-in heuristics, order resolution and search.

``resolve_order(graph, "auto")`` uses the order cache (:mod:`ccjax.cache`)
when it holds a valid order for the graph, else the cheapest of the quick
greedy variants (:data:`ccjax.orders.greedy.QUICK`, which include ``rev``,
``fwd`` and ``markowitz``); see :mod:`ccjax.orders.search` for the searches.  ``"learned"`` is the
greedy order of the shipped policy network (:mod:`ccjax.search`).
"""
from __future__ import annotations

from typing import Sequence, Union

from ccjax.eliminate import validate_order
from ccjax.graph import Graph
from ccjax.orders.heuristics import HEURISTICS, forward, markowitz, reverse

#: The classical orders ``order="auto"`` always considers (with the other quick variants).
AUTO_CANDIDATES = ("rev", "fwd", "markowitz")


def auto_order(graph: Graph, cache=None) -> tuple[int, ...]:
    """The order ``order="auto"`` uses: the cached order if it is valid and
    no quick greedy variant beats it, else the cheapest quick variant.

    ``cache``: an :class:`~ccjax.cache.OrderCache` (default location when None).
    """
    from ccjax.cache import OrderCache
    from ccjax.orders.search import quick_order

    store = OrderCache() if cache is None else cache
    entry = store.get(graph)
    return quick_order(graph, None if entry is None else entry.order)[0]


def resolve_order(graph: Graph, order: Union[str, Sequence[int]]) -> tuple[int, ...]:
    """Turn an order specification into a validated tuple of vertex ids."""
    if isinstance(order, str):
        name = order.lower()
        if name == "auto":
            return auto_order(graph)
        if name == "learned":
            from ccjax.search.api import learned_order

            return validate_order(graph, learned_order(graph))
        if name not in HEURISTICS:
            raise ValueError(f"unknown order {order!r}; use one of {sorted(HEURISTICS) + ['auto', 'learned']} "
                             f"or a sequence of vertex ids")
        return HEURISTICS[name](graph)
    return validate_order(graph, order)


def search_order(*args, **kwargs):
    """See :func:`ccjax.orders.search.search_order`."""
    from ccjax.orders.search import search_order as _search

    return _search(*args, **kwargs)


__all__ = ["HEURISTICS", "AUTO_CANDIDATES", "forward", "reverse", "markowitz", "resolve_order", "auto_order",
           "search_order"]
