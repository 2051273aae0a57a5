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

import collections.abc
import math
import numbers
import operator
import time
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ccjax.cache import OrderCache
from ccjax.eliminate import OrderError, validate_order
from ccjax.graph import Graph
from ccjax.orders import search as classical
from ccjax.orders.heuristics import HEURISTICS
from ccjax.orders.incremental import Evaluator
from ccjax.orders.search import Incumbent, Progress, SearchResult, quick_order
from ccjax.trace import auto_graph

#: Every search method: the classical ones and the learned policy's MCTS.
METHODS = classical.METHODS + ("mcts",)

#: Batches of games ``method="mcts"`` plays when no time budget is given.
DEFAULT_MCTS_EPISODES = 4

#: Order names :func:`resolve_order` accepts besides the heuristics.
SPECIAL_ORDERS = ("auto", "learned")

#: Every order name (case-insensitive).
ORDER_NAMES = tuple(sorted(HEURISTICS)) + SPECIAL_ORDERS

OrderSpec = Union[str, Sequence[int]]


def _vertex_id(item: Any, position: int) -> int:
    """One id of an explicit order: a Python or NumPy integer (or an integer
    0-d array).  Floats are refused even when whole, and bools are not ids."""
    if not isinstance(item, (bool, np.bool_)) and not isinstance(item, (float, complex, np.inexact)):
        try:
            return operator.index(item)
        except TypeError:
            pass
    raise OrderError(f"vertex ids must be integers, but item {position} of the order is {item!r} "
                     f"({type(item).__name__})")


def order_spec(order: Any) -> Union[str, tuple[int, ...]]:
    """Check an order specification before any graph exists.

    Returns the lower-cased name, or the explicit order as a tuple of ints
    (still to be checked against a graph by
    :func:`~ccjax.eliminate.validate_order`).  Raises :class:`OrderError`
    for an unknown name, for bytes (``b"rev"`` would read as the ids
    114, 101, 118), for containers without a defined order (sets, dicts)
    and for ids that are not integers, so a bad order is reported when
    ``jacve`` is created rather than when the Jacobian is first computed.
    """
    if isinstance(order, str):
        name = order.lower()
        if name not in ORDER_NAMES:
            raise OrderError(f"unknown order {order!r}; use one of {list(ORDER_NAMES)} or a sequence of "
                             f"vertex ids")
        return name
    if isinstance(order, (bytes, bytearray, memoryview)):
        raise OrderError(f"order must be a name (str) or a sequence of vertex ids, got bytes {bytes(order)!r}; "
                         f"decode a name first")
    if isinstance(order, (collections.abc.Set, collections.abc.Mapping)):
        raise OrderError(f"order must be a sequence with a defined order (list, tuple, 1-d integer array), "
                         f"got a {type(order).__name__}: {order!r}")
    try:
        items = tuple(order)
    except TypeError:
        raise OrderError(f"order must be a name or a sequence of vertex ids, got {order!r}") from None
    return tuple(_vertex_id(v, k) for k, v in enumerate(items))


def check_time_budget(time_budget: Any) -> Optional[float]:
    """``time_budget`` as float seconds (None: no limit), or a clear error:
    a real number that is finite and positive is required."""
    if time_budget is None:
        return None
    if isinstance(time_budget, (bool, np.bool_)) or not isinstance(time_budget, numbers.Real):
        raise TypeError(f"time_budget must be a number of seconds or None, got {time_budget!r} "
                        f"({type(time_budget).__name__})")
    if not (math.isfinite(time_budget) and time_budget > 0):
        raise ValueError(f"time_budget must be a positive, finite number of seconds (None for no limit), "
                         f"got {time_budget!r}")
    return float(time_budget)


def auto_order(graph: Graph, cache: Optional[OrderCache] = None) -> tuple[int, ...]:
    """The order ``order="auto"`` uses: the cached order if it is valid and
    no quick greedy variant beats it, else the cheapest quick variant.

    ``cache``: an :class:`~ccjax.cache.OrderCache` (default location when None).
    """
    store = OrderCache() if cache is None else cache
    entry = store.get(graph)
    return quick_order(graph, None if entry is None else entry.order)[0]


def learned_or_quick_order(graph: Graph) -> tuple[int, ...]:
    """The order ``order="learned"`` uses: the policy's greedy order, unless
    a quick greedy variant of ``"auto"`` (:func:`quick_order`, the cache
    aside) costs fewer multiplications; so asking for the learned order
    never gives a worse order than the quick heuristics.  Ties keep the
    learned order."""
    from ccjax.search.api import learned_order  # jax-heavy; only when asked for

    learned = validate_order(graph, learned_order(graph))
    quick, quick_cost, _ = quick_order(graph)
    return quick if quick_cost < Evaluator(graph).cost(learned) else learned


def resolve_order(graph: Graph, order: OrderSpec) -> tuple[int, ...]:
    """Turn an order specification into a validated tuple of vertex ids
    (``"learned"``: see :func:`learned_or_quick_order`)."""
    spec = order_spec(order)
    if spec == "auto":
        return auto_order(graph)
    if spec == "learned":
        return learned_or_quick_order(graph)
    if isinstance(spec, str):
        return HEURISTICS[spec](graph)
    return validate_order(graph, spec)


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


def _learned_start(policy=None) -> Callable[[Graph], Optional[tuple[int, ...]]]:
    """The policy's greedy order as a start: None for a graph larger than the
    policy's capacities, or when the shipped policy (``policy`` None) cannot be loaded."""

    def make(graph: Graph) -> Optional[tuple[int, ...]]:
        from ccjax.search.api import GREEDY_BUCKETS, capacity_for, learned_order
        from ccjax.search.policy import PolicyError, default_policy

        try:
            capacity_for(graph, GREEDY_BUCKETS)
        except ValueError:
            return None
        try:
            chosen = default_policy() if policy is None else policy
        except PolicyError:  # a broken install: the classical search goes on, ``result.starts`` says so
            return None
        return learned_order(graph, chosen)

    return make


def search_graph(graph: Graph, method: str = "auto", time_budget: Optional[float] = None, seed: int = 0,
                 progress: Optional[Progress] = None, cached: Optional[Sequence[int]] = None,
                 anneal_runs: Optional[int] = None, policy=None, learned_start: bool = False) -> SearchResult:
    """:func:`ccjax.orders.search.search_graph` with ``method="mcts"`` too
    (``policy``: a :class:`~ccjax.search.policy.Policy`, default the shipped one).

    ``learned_start``: ``"auto"`` and ``"anneal"`` also start from the
    policy's greedy order (its cost is then in ``result.starts``, and
    ``result.method == "learned"`` when no later phase improved on it).
    Off by default: with the shipped policy it changed no result at equal
    time (``docs/learned.md``), while its network's compilation (1.5-2 s
    once per process) comes out of the budget.
    """
    time_budget = check_time_budget(time_budget)
    starts = {"learned": _learned_start(policy)} if learned_start and method in ("auto", "anneal") else {}
    return classical.search_graph(graph, method, time_budget, seed, progress, cached, anneal_runs,
                                  extra_methods={"mcts": _mcts_method(policy)}, extra_starts=starts)


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
                 progress: Optional[Progress] = None, label: str = "", has_aux: bool = False,
                 **kwargs: Any) -> SearchResult:
    """Search a cheap elimination order for ``jacve(fun, argnums)`` at ``args``.

    ``method``: ``"auto"``, ``"anneal"``, ``"beam"``, ``"exact"`` or
    ``"mcts"``; ``time_budget``: seconds (anytime; None: a fixed amount of
    work, or no limit for ``"exact"``); ``seed``: the search is
    deterministic for a seed and amount of work.  ``cache``: True (default
    location), False, a path or an :class:`~ccjax.cache.OrderCache`; the
    search starts from the cached order and stores its result (the better
    one is kept), so that ``jacve(fun, order="auto")`` uses it.  Returns a
    :class:`~ccjax.orders.search.SearchResult`.  The search runs on the
    graph ``order="auto"`` plans (:func:`ccjax.trace.auto_graph`): for a
    program of 500 equations or more whose loops roll into scans, its ids
    are those of the rolled graph, not of ``ccjax.graph``'s.  ``has_aux``: ``fun``
    returns ``(output, aux)``, as for ``jacve(fun, has_aux=True)``.
    """
    time_budget = check_time_budget(time_budget)
    g = auto_graph(fun, *args, argnums=argnums, has_aux=has_aux, **kwargs)
    store = as_cache(cache)
    entry = store.get(g) if store is not None else None
    result = search_graph(g, method, time_budget, seed, progress, None if entry is None else entry.order)
    if store is not None:
        store.put(g, result.order, result.cost, result.method, result.lower_bound, label)
        forget_order(g, "auto")
    return result
