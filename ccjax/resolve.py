"""From what the user asks for to a concrete elimination order.

This small module sits above every order *strategy* (the heuristics and
classical searches of :mod:`ccjax.orders`, the learned policy of
:mod:`ccjax.search`) and the order cache, and below the public API:

* :func:`resolve_order` turns ``"fwd"``, ``"rev"``, ``"markowitz"``,
  ``"auto"``, ``"learned"`` or a sequence of vertex ids into a validated
  order for one graph;
* :func:`search_graph` / :func:`search_order` search offline (classical
  methods, plus ``"mcts"`` from the learned package) and store the result in
  the order cache that ``"auto"`` reads.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence, Union

from ccjax.cache import OrderCache
from ccjax.eliminate import validate_order
from ccjax.graph import Graph
from ccjax.orders import search as classical
from ccjax.orders.heuristics import HEURISTICS
from ccjax.orders.search import Incumbent, Progress, SearchResult, quick_order
from ccjax.trace import graph as trace_graph

#: The classical orders ``order="auto"`` always considers (with the other quick variants).
AUTO_CANDIDATES = ("rev", "fwd", "markowitz")

#: Every search method: the classical ones and the learned policy's MCTS.
METHODS = classical.METHODS + ("mcts",)

#: Batches of games ``method="mcts"`` plays when no time budget is given.
DEFAULT_MCTS_EPISODES = 4

#: Order names :func:`resolve_order` accepts besides the heuristics.
SPECIAL_ORDERS = ("auto", "learned")


def auto_order(graph: Graph, cache: Optional[OrderCache] = None) -> tuple[int, ...]:
    """The order ``order="auto"`` uses: the cached order if it is valid and
    no quick greedy variant beats it, else the cheapest quick variant.

    ``cache``: an :class:`~ccjax.cache.OrderCache` (default location when None).
    """
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
            from ccjax.search.api import learned_order  # jax-heavy; only when asked for

            return validate_order(graph, learned_order(graph))
        if name not in HEURISTICS:
            raise ValueError(f"unknown order {order!r}; use one of {sorted(HEURISTICS) + list(SPECIAL_ORDERS)} "
                             f"or a sequence of vertex ids")
        return HEURISTICS[name](graph)
    return validate_order(graph, order)


def _mcts_method(policy=None) -> Callable[[Graph, Incumbent, int, Optional[float]], None]:
    """``method="mcts"`` as a search phase: Gumbel MuZero with ``policy``
    (the shipped one when None), its greedy order offered too."""

    def run(graph: Graph, best: Incumbent, seed: int, time_budget: Optional[float]) -> None:
        from ccjax.search.api import mcts_search

        budget = None if time_budget is None else max(0.0, time_budget - (time.perf_counter() - best.start))
        result = mcts_search(graph, time_budget=budget, seed=seed, policy=policy,
                             max_episodes=None if budget is not None else DEFAULT_MCTS_EPISODES)
        best.offer(result["greedy_order"], result["greedy_cost"], "learned")
        best.offer(result["order"], result["cost"], "mcts")
        best.evaluations += result["episodes"]

    return run


def search_graph(graph: Graph, method: str = "auto", time_budget: Optional[float] = None, seed: int = 0,
                 progress: Optional[Progress] = None, cached: Optional[Sequence[int]] = None,
                 anneal_runs: Optional[int] = None, policy=None) -> SearchResult:
    """:func:`ccjax.orders.search.search_graph` with ``method="mcts"`` too
    (``policy``: a :class:`~ccjax.search.policy.Policy`, default the shipped one)."""
    return classical.search_graph(graph, method, time_budget, seed, progress, cached, anneal_runs,
                                  extra_methods={"mcts": _mcts_method(policy)})


def as_cache(cache: Union[bool, str, Any, None]) -> Optional[OrderCache]:
    """``True``: the default cache; ``False``/None: none; a path or an
    :class:`~ccjax.cache.OrderCache`: that one."""
    if cache is False or cache is None:
        return None
    if cache is True:
        return OrderCache()
    if isinstance(cache, OrderCache):
        return cache
    return OrderCache(cache)


def forget_order(graph: Graph, name: str) -> None:
    """Drop the plans and compiled runners of order ``name`` kept with
    ``graph`` (after a search changed what ``"auto"`` resolves to)."""
    for table in (graph.plans, graph.runners):
        for key in [k for k in table if k == name or (isinstance(k, tuple) and k and k[0] == name)]:
            del table[key]


def search_order(fun: Callable, *args: Any, argnums: Union[int, Sequence[int]] = 0, method: str = "auto",
                 time_budget: Optional[float] = None, seed: int = 0, cache: Union[bool, Any] = True,
                 progress: Optional[Progress] = None, label: str = "", **kwargs: Any) -> SearchResult:
    """Search a cheap elimination order for ``jacve(fun, argnums)`` at ``args``.

    ``method``: ``"auto"``, ``"anneal"``, ``"beam"``, ``"exact"`` or
    ``"mcts"``; ``time_budget``: seconds (anytime; None: a fixed amount of
    work, or no limit for ``"exact"``); ``seed``: the search is
    deterministic for a seed and amount of work.  ``cache``: True (default
    location), False, a path or an :class:`~ccjax.cache.OrderCache`; the
    search starts from the cached order and stores its result (the better
    one is kept), so that ``jacve(fun, order="auto")`` uses it.  Returns a
    :class:`~ccjax.orders.search.SearchResult`.
    """
    g = trace_graph(fun, *args, argnums=argnums, **kwargs)
    store = as_cache(cache)
    entry = store.get(g) if store is not None else None
    result = search_graph(g, method, time_budget, seed, progress, None if entry is None else entry.order)
    if store is not None:
        store.put(g, result.order, result.cost, result.method, result.lower_bound, label)
        forget_order(g, "auto")
    return result
