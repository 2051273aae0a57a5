"""Order search without learning: :func:`search_graph` and :func:`quick_order`.

Methods (all on the one cost model, through
:class:`~ccjax.orders.incremental.Evaluator`):

* ``"beam"``: beam search (:mod:`ccjax.orders.beam`) with widths 1, 2, 4, ...
  until the budget is spent (default: up to width 16);
* ``"anneal"``: simulated annealing (:mod:`ccjax.orders.anneal`), repeated
  runs from the best order so far and from other starts;
* further methods supplied by the caller as ``extra_methods`` (the
  learned package's ``"mcts"`` comes in this way through
  :mod:`ccjax.resolve`, so this module never imports it), and further
  start orders as ``extra_starts`` (the learned policy's greedy order,
  likewise);
* ``"exact"``: branch and bound over elimination states
  (:mod:`ccjax.orders.exact`): a proven optimum, or a certified lower bound
  when the budget runs out (default: no limit);
* ``"auto"``: the greedy variants (:mod:`ccjax.orders.greedy`), then exact
  search outright for small graphs, else a short beam, annealing for most
  of the budget and exact search for a lower bound with the rest.

Every method starts from the best of the greedy variants and of the order
cache, so its result is never worse than ``order="auto"``.  The search is
*anytime*: ``time_budget`` (seconds) stops it with the best order so far,
within the budget plus about one evaluation of an order (every loop that
grows with the graph reads the clock, :mod:`ccjax.orders.deadline`).
It is deterministic for a given ``seed`` and amount of work: the sequence of
candidate orders depends only on the seed, a time budget only truncates it
(without a budget a fixed amount of work is done).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ccjax.eliminate import plan_elimination
from ccjax.graph import Graph
from ccjax.orders.anneal import AnnealConfig, anneal
from ccjax.orders.beam import beam_search
from ccjax.orders.bounds import lower_bound
from ccjax.orders.deadline import OutOfTime
from ccjax.orders.exact import exact_search
from ccjax.orders.greedy import QUICK, VARIANTS
from ccjax.orders.incremental import Evaluator

METHODS = ("auto", "anneal", "beam", "exact")

#: Graphs with at most this many eliminable vertices get an exact search under "auto".
EXACT_AUTO_SIZE = 12

#: Work done when no time budget is given (number of anneal runs).
DEFAULT_ANNEAL_RUNS = 5

#: (start, end) temperatures of successive anneal runs, relative to the cost.
ANNEAL_TEMPERATURES = ((0.02, 0.0003), (0.006, 0.0002))

#: Moves of the first anneal run; each later run doubles, up to ``AnnealConfig().moves``.
ANNEAL_FIRST_MOVES = 2500

#: Share of the budget the first lower bound may take (its max-flows take seconds on 1,000 vertices).
BOUND_SHARE = 0.1

#: The orders a search result compares with (``SearchResult.baselines``).
BASELINES = ("fwd", "rev", "markowitz")

Progress = Callable[["ProgressInfo"], None]

#: A search method supplied from outside: ``run(graph, incumbent, seed, time_budget)``.
ExtraMethod = Callable[[Graph, "Incumbent", int, Optional[float]], None]

#: A start order supplied from outside: ``make(graph)`` returns an order
#: (or None when it has none for this graph).
ExtraStart = Callable[[Graph], Optional[Sequence[int]]]


@dataclasses.dataclass(frozen=True)
class ProgressInfo:
    """What a progress callback sees: elapsed seconds, the budget (or None),
    the best cost so far, the best certified lower bound (or None), and
    the phase running."""

    elapsed: float
    budget: Optional[float]
    best_cost: int
    lower_bound: Optional[int]
    phase: str


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The outcome of a search.

    ``order``: vertex ids (a permutation of ``graph.eliminable``);
    ``cost``: its multiplications (equals
    ``plan_elimination(graph, order).report.mults``); ``method``: what
    found it (``"anneal"``, ``"beam"``, ``"exact"``, ``"heuristic:<name>"``
    or ``"cache"``); ``lower_bound``: a certified lower bound on every
    order's cost, or None; ``fingerprint``: the graph's; ``elapsed``:
    seconds; ``baselines``: costs of ``fwd``, ``rev`` and ``markowitz``
    (those the start phase reached within the budget; on a large graph
    with a small budget possibly only ``fwd``); ``starts``: costs of the
    caller's extra start orders that ran (e.g. ``{"learned": cost}`` when
    the learned policy's greedy order was one); ``optimal``:
    ``lower_bound == cost``.
    """

    order: tuple[int, ...]
    cost: int
    method: str
    lower_bound: Optional[int]
    fingerprint: str
    elapsed: float
    baselines: dict = dataclasses.field(default_factory=dict)
    evaluations: int = 0
    starts: dict = dataclasses.field(default_factory=dict)

    @property
    def optimal(self) -> bool:
        return self.lower_bound is not None and self.lower_bound >= self.cost

    @property
    def gap(self) -> Optional[float]:
        """``(cost - lower_bound) / cost``, or None without a bound."""
        if self.lower_bound is None:
            return None
        return 0.0 if self.cost == 0 else (self.cost - self.lower_bound) / self.cost

    @property
    def best_baseline(self) -> Optional[int]:
        return min(self.baselines.values()) if self.baselines else None


class Incumbent:
    """Incumbent bookkeeping shared by the phases of one search."""

    def __init__(self, start: float, budget: Optional[float], progress: Optional[Progress]):
        self.order: tuple[int, ...] = ()
        self.cost: Optional[int] = None
        self.method = ""
        self.lower_bound: Optional[int] = None
        self.start = start
        self.budget = budget
        self.progress = progress
        self.phase = ""
        self.evaluations = 0

    def offer(self, order: Sequence[int], cost: int, method: str) -> None:
        if self.cost is None or cost < self.cost:
            self.order, self.cost, self.method = tuple(int(v) for v in order), int(cost), method
            self.report()

    def bound(self, lb: int) -> None:
        if self.lower_bound is None or lb > self.lower_bound:
            self.lower_bound = int(lb)
            self.report()

    def report(self) -> None:
        if self.progress is not None and self.cost is not None:
            self.progress(ProgressInfo(time.perf_counter() - self.start, self.budget, self.cost,
                                       self.lower_bound, self.phase))

    def deadline(self, fraction: float = 1.0) -> Optional[float]:
        """A deadline at ``fraction`` of the total budget (None without budget)."""
        if self.budget is None:
            return None
        return self.start + fraction * self.budget

    def from_now(self, fraction: float) -> Optional[float]:
        """A deadline ``fraction`` of the budget from now, never past the end."""
        if self.budget is None:
            return None
        return min(self.deadline(), time.perf_counter() + fraction * self.budget)

    def optimal_reached(self) -> bool:
        return self.cost is not None and self.lower_bound is not None and self.lower_bound >= self.cost


def _starts(ev: Evaluator, best: Incumbent, cached: Optional[Sequence[int]],
            extra: Mapping[str, ExtraStart]) -> tuple[list[tuple[int, ...]], dict[str, int], dict[str, int]]:
    """Run the greedy variants (and the cached order), then the extra
    starts, until the deadline; offer them.  Returns the distinct orders,
    best first, the cost of each variant run and of each extra start.  The
    first order (the cached one, else ``fwd``) is evaluated whatever the
    clock says: a search always returns an order."""
    seen: dict[tuple[int, ...], int] = {}
    costs: dict[str, int] = {}
    extra_costs: dict[str, int] = {}
    if cached is not None:
        o = tuple(cached)
        seen[o] = ev.cost(o)
        best.offer(o, seen[o], "cache")
    deadline = best.deadline()
    try:
        for name, variant in VARIANTS.items():  # fwd first
            o = tuple(variant(ev, deadline))
            if o not in seen:
                seen[o] = ev.cost(o, deadline if seen else None)
                best.evaluations += 1
            costs[name] = seen[o]
            best.offer(o, seen[o], f"heuristic:{name}")
        for name, make in extra.items():
            if deadline is not None and time.perf_counter() >= deadline:
                break
            made = make(ev.graph)
            if made is None:
                continue
            o = tuple(int(v) for v in made)
            if sorted(o) != sorted(ev.eliminable):
                raise ValueError(f"start {name!r} is not an order of the graph's eliminable vertices")
            if o not in seen:  # costed whatever the clock says: making it was the expensive part
                seen[o] = ev.cost(o)
                best.evaluations += 1
            extra_costs[name] = seen[o]
            best.offer(o, seen[o], name)
    except OutOfTime:
        pass
    return sorted(seen, key=lambda o: (seen[o], o)), costs, extra_costs


def _run_beam(ev: Evaluator, best: Incumbent, deadline: Optional[float], max_width: Optional[int]) -> None:
    best.phase = "beam"
    width = 1
    while max_width is None or width <= max_width:
        if deadline is not None and time.perf_counter() >= deadline:
            break
        r = beam_search(ev, width, deadline)
        if r is None:
            break
        best.offer(r[0], r[1], "beam")
        width *= 2
        if deadline is None and max_width is None:
            max_width = 16


def _run_anneal(ev: Evaluator, best: Incumbent, starts: list, rng: np.random.Generator,
                deadline: Optional[float], runs: Optional[int]) -> None:
    best.phase = "anneal"
    k = 0
    alt = 0
    while runs is None or k < runs:
        if deadline is not None and time.perf_counter() >= deadline:
            break
        if k % 3 == 2 and len(starts) > 1:  # every third run from another start
            alt = alt % (len(starts) - 1) + 1
            start = starts[alt]
        elif k % 6 == 5:
            start = tuple(int(v) for v in rng.permutation(np.array(ev.eliminable, dtype=np.int64)))
        else:
            start = best.order
        # short runs first (a small budget still finishes cooling), then longer ones
        moves = min(ANNEAL_FIRST_MOVES << k, AnnealConfig().moves)
        t_start, t_end = ANNEAL_TEMPERATURES[k % len(ANNEAL_TEMPERATURES)]
        try:
            r = anneal(ev, start, rng, AnnealConfig(moves=moves, t_start=t_start, t_end=t_end), deadline,
                       on_improve=lambda o, c: best.offer(o, c, "anneal"))
        except OutOfTime:  # the start's trajectory was not built in time
            break
        best.evaluations += r.moves
        best.offer(r.order, r.cost, "anneal")
        k += 1


def _run_exact(ev: Evaluator, best: Incumbent, deadline: Optional[float]) -> None:
    best.phase = "exact"
    r = exact_search(ev, best.order, deadline, on_bound=best.bound, upper_cost=best.cost)
    best.evaluations += r.nodes
    best.offer(r.order, r.cost, "exact")
    best.bound(r.lower_bound)


def search_graph(graph: Graph, method: str = "auto", time_budget: Optional[float] = None, seed: int = 0,
                 progress: Optional[Progress] = None, cached: Optional[Sequence[int]] = None,
                 anneal_runs: Optional[int] = None,
                 extra_methods: Optional[Mapping[str, ExtraMethod]] = None,
                 extra_starts: Optional[Mapping[str, ExtraStart]] = None) -> SearchResult:
    """Search an elimination order for ``graph`` (see module docstring).

    ``cached``: an order to start from (e.g. from the order cache).
    ``anneal_runs``: number of annealing runs (default: until the budget is
    spent, or :data:`DEFAULT_ANNEAL_RUNS` without a budget).
    ``progress(ProgressInfo)`` is called on every improvement.
    ``extra_methods``: more methods by name, each ``run(graph, incumbent,
    seed, time_budget)`` offering its orders to the :class:`Incumbent`
    after the greedy starts.  ``extra_starts``: more start orders by name,
    each ``make(graph)`` (an order, or None), run after the greedy
    variants within the budget, offered under their name and used as
    starts by annealing like the variants' orders.
    """
    extra = dict(extra_methods or {})
    if method not in METHODS and method not in extra:
        raise ValueError(f"unknown search method {method!r}; use one of {METHODS + tuple(extra)}")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    start = time.perf_counter()
    best = Incumbent(start, time_budget, progress)
    ev = Evaluator(graph)
    best.phase = "heuristics"
    starts, start_costs, extra_costs = _starts(ev, best, cached, dict(extra_starts or {}))
    n = len(graph.eliminable)
    best.bound(best.cost if n < 2 else lower_bound(ev, ev.root, best.from_now(BOUND_SHARE)))  # n < 2: optimal
    rng = np.random.default_rng(seed)
    runs = anneal_runs if anneal_runs is not None else (None if time_budget else DEFAULT_ANNEAL_RUNS)
    if n >= 2 and not best.optimal_reached():
        if method == "beam":
            _run_beam(ev, best, best.deadline(), None)
        elif method == "anneal":
            _run_anneal(ev, best, starts, rng, best.deadline(), runs)
        elif method == "exact":
            _run_exact(ev, best, best.deadline())
        elif method in extra:
            best.phase = method
            extra[method](graph, best, seed, time_budget)
        elif n <= EXACT_AUTO_SIZE:
            _run_exact(ev, best, best.deadline())
        else:
            _run_beam(ev, best, best.deadline(0.1), 4)
            _run_anneal(ev, best, starts, rng, best.deadline(0.8), runs)
            if time_budget is not None:
                _run_exact(ev, best, best.deadline())
    order = best.order
    cost = plan_elimination(graph, order).report.mults
    if cost != best.cost:  # pragma: no cover - the evaluator is tested to agree
        raise AssertionError(f"search evaluator disagrees with plan_elimination: {best.cost} vs {cost}")
    baselines = {name: start_costs[name] for name in BASELINES if name in start_costs}
    lb = best.lower_bound
    return SearchResult(order, cost, best.method, None if lb is None else min(lb, cost), graph.fingerprint,
                        time.perf_counter() - start, baselines, best.evaluations, extra_costs)


#: Seconds ``order="auto"`` spends on greedy variants beyond forward and
#: reverse (which are sorts, always run): the heuristics cost
#: O(steps · degree²) each, and on a graph of tens of thousands of vertices
#: the later ones are cut off rather than delaying the first Jacobian.
#: Read at each call (None: no limit), so a caller that needs the same order
#: on any machine, however loaded, can lift it.
QUICK_BUDGET: Optional[float] = 2.0

_DEFAULT_BUDGET = object()


def quick_order(graph: Graph, cached: Optional[Sequence[int]] = None,
                budget: Any = _DEFAULT_BUDGET) -> tuple[tuple[int, ...], int, str]:
    """``order="auto"`` without the cache: ``(order, cost, name)`` of the
    cheapest of the quick greedy variants (and ``cached``, preferred on ties),
    unless it adds far more than it multiplies (:func:`least_work`).

    ``budget``: seconds after which the variants not yet finished are
    dropped (None: no limit; default :data:`QUICK_BUDGET`); forward and
    reverse always run."""
    if budget is _DEFAULT_BUDGET:
        budget = QUICK_BUDGET
    ev = Evaluator(graph)
    deadline = None if budget is None else time.perf_counter() + budget
    candidates: list[tuple] = []
    if cached is not None:
        candidates.append((tuple(cached), ev.cost(cached), "cache"))
    for name in QUICK:
        always = name in ("fwd", "rev")
        try:
            o = tuple(VARIANTS[name](ev, None if always else deadline))
            candidates.append((o, ev.cost(o, None if always else deadline), name))
        except OutOfTime:
            continue
    return least_work(graph, candidates)


#: Additions beyond twice the multiplications that make :func:`least_work`
#: weigh the other candidates.
ADDITIONS_FLOOR = 4096

#: How many times less work (multiplications + additions) a candidate must
#: do to replace the one that multiplies least.
WORK_GAIN = 2.0


def least_work(graph: Graph, candidates: Sequence[tuple]) -> tuple:
    """The candidate ``(order, multiplications, name)`` that multiplies least
    (the first of equals), unless its plan adds more than twice its
    multiplications plus :data:`ADDITIONS_FLOOR` entries and another
    candidate's plan does :data:`WORK_GAIN` times less work counting both:
    then the one of those that does least.

    Multiplications are the cost model, but an order that multiplies
    almost nothing can sum dense blocks instead: on ``jnp.gradient`` of a
    20x20 grid reverse order multiplies twice and adds 1.6M entries
    (383 µs), forward order multiplies 16 times and adds 800 (70 µs)."""
    best = min(candidates, key=lambda c: c[1])
    report = plan_elimination(graph, best[0]).report
    if report.additions <= 2 * report.mults + ADDITIONS_FLOOR:
        return best
    work = report.mults + report.additions
    choice, least = best, work / WORK_GAIN
    for cand in candidates:
        if cand[0] != best[0]:
            other = plan_elimination(graph, cand[0]).report
            if other.mults + other.additions <= least:
                choice, least = cand, other.mults + other.additions
    return choice
