"""Order search: the fast evaluator equals the cost model, the searches are
valid, anytime and deterministic, and the exact search agrees with brute force."""
import functools
import itertools
import time

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax.eliminate import plan_elimination, validate_order  # noqa: E402
from ccjax.orders import HEURISTICS  # noqa: E402
from ccjax.orders.anneal import AnnealConfig, anneal  # noqa: E402
from ccjax.orders.beam import beam_search  # noqa: E402
from ccjax.orders.bounds import can_cancel, count_bound, cut_bound, lower_bound  # noqa: E402
from ccjax.orders.deadline import OutOfTime  # noqa: E402
from ccjax.orders.exact import exact_search  # noqa: E402
from ccjax.orders.greedy import VARIANTS, preeliminate  # noqa: E402
from ccjax.orders.incremental import Evaluator, IncrementalOrder  # noqa: E402
from ccjax.orders.search import SearchResult, quick_order, search_graph  # noqa: E402
from ccjax.tasks import TASKS, random_function, random_input_shapes, random_inputs  # noqa: E402


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CCJAX_CACHE_DIR", str(tmp_path / "cache"))


def _task_graph(name):
    task = TASKS[name]
    fn, args = task.graph_fn_and_inputs(0)
    return ccjax.graph(fn, *args, argnums=task.argnums)


def _random_graph(seed, lo=3, hi=25):
    shapes = random_input_shapes(seed)
    fn = random_function(seed, shapes, n_ops=int(np.random.default_rng(seed).integers(lo, hi)))
    args = random_inputs(seed, shapes)
    return ccjax.graph(fn, *args, argnums=tuple(range(len(shapes)))), fn, args


def _perm(g, rng):
    return [int(v) for v in rng.permutation(np.array(g.eliminable, dtype=np.int64))]


# -- the evaluator is the cost model -------------------------------------------------------------

@pytest.mark.parametrize("name", list(TASKS))
def test_evaluator_matches_plan_elimination_on_tasks(name):
    g = _task_graph(name)
    ev = Evaluator(g)
    rng = np.random.default_rng(0)
    orders = [HEURISTICS[h](g) for h in ("fwd", "rev", "markowitz")] + [_perm(g, rng) for _ in range(4)]
    for o in orders:
        assert ev.cost(o) == plan_elimination(g, o).report.mults


@pytest.mark.parametrize("seed", range(20))
def test_evaluator_matches_plan_elimination_on_random_functions(seed):
    g, _, _ = _random_graph(seed)
    ev = Evaluator(g)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        o = _perm(g, rng)
        assert ev.cost(o) == plan_elimination(g, o).report.mults


@pytest.mark.parametrize("name", ["RoeFlux_1d", "f", "MLP"])
def test_incremental_moves_match_full_evaluation(name):
    g = _task_graph(name)
    ev = Evaluator(g)
    rng = np.random.default_rng(1)
    inc = IncrementalOrder(ev, _perm(g, rng))
    n = len(inc.order)
    for step in range(300):
        i = int(rng.integers(0, n - 1))
        j = min(n, i + int(rng.integers(2, 12)))
        seq = list(inc.order[i:j])
        rng.shuffle(seq)
        p = inc.propose(i, seq)
        new_order = inc.order[:i] + seq + inc.order[j:]
        assert p.total == ev.cost(new_order)
        if p.total <= inc.total or step % 3 == 0:
            inc.commit(p)
            assert inc.order == new_order
            assert inc.total == ev.cost(inc.order)
    assert inc.total == plan_elimination(g, inc.order).report.mults
    # a proposal over the limit is cut short
    p = inc.propose(0, list(reversed(inc.order[:5])), limit=-1)
    assert p is None


def test_incremental_is_fast_on_150_vertex_graph():
    g = _task_graph("Encoder")  # 148 vertices
    assert len(g.vertices) >= 140
    ev = Evaluator(g)
    rng = np.random.default_rng(0)
    r = anneal(ev, HEURISTICS["rev"](g), rng, AnnealConfig(moves=3000))
    start = time.perf_counter()
    r = anneal(ev, HEURISTICS["rev"](g), rng, AnnealConfig(moves=3000))
    rate = r.moves / (time.perf_counter() - start)
    assert rate > 1000, f"only {rate:.0f} orders per second"


def _edges(state):
    return {(u, w): sid for u, ws in state.succs.items() for w, sid in ws.items()}


@pytest.mark.parametrize("seed", range(12))
def test_in_place_elimination_equals_persistent(seed):
    """The single-pass (in-place) elimination that greedy orders and costs
    use gives the same edges, Zobrist key and multiplications as the
    persistent one, and leaves the states it was copied from untouched."""
    g, _, _ = _random_graph(seed) if seed < 8 else (_task_graph(list(TASKS)[seed - 8]), None, None)
    ev = Evaluator(g)
    root_edges = _edges(ev.root)
    order = _perm(g, np.random.default_rng(seed))
    state, work = ev.root, ev.working_copy()
    for v in order:
        state, c = ev.eliminate(state, v)
        assert ev.eliminate_in_place(work, v) == c
        assert _edges(work) == _edges(state) and work.key == state.key and work.mask == state.mask
    assert _edges(ev.root) == root_edges


def _naive_greedy(ev, score, last):
    """Greedy by full rescans, as the heap-based one must order."""
    state, order = ev.root, []
    remaining = set(ev.eliminable)
    while remaining:
        v = min(remaining, key=lambda x: (score(ev, state, x), -x if last else x))
        state, _ = ev.eliminate(state, v)
        remaining.discard(v)
        order.append(v)
    return order


@pytest.mark.parametrize("seed", range(10))
def test_heap_greedy_orders_equal_full_rescans(seed):
    from ccjax.orders.greedy import SCORES, greedy

    g, _, _ = _random_graph(seed) if seed < 6 else (_task_graph(list(TASKS)[seed]), None, None)
    ev = Evaluator(g)
    for name, score in SCORES.items():
        for last in (False, True):
            assert greedy(ev, score, last=last) == _naive_greedy(ev, score, last), (name, last)


def _rescan_markowitz(g):
    """Markowitz by a full rescan per step: the oracle for the heap-based one."""
    preds = {v: set() for v in g.eliminable}
    succs = {v: set() for v in g.eliminable}
    for (u, w) in g.edges:
        succs.setdefault(u, set()).add(w)
        preds.setdefault(w, set()).add(u)
    remaining, order = set(g.eliminable), []
    while remaining:
        v = min(remaining, key=lambda x: (len(preds[x]) * len(succs[x]), x))
        for u in preds[v]:
            succs[u] = (succs[u] - {v}) | succs[v]
        for w in succs[v]:
            preds[w] = (preds[w] - {v}) | preds[v]
        remaining.discard(v)
        order.append(v)
    return tuple(order)


@pytest.mark.parametrize("seed", range(30))
def test_markowitz_heuristic_equals_full_rescans(seed):
    g = _random_graph(seed, 3, 40)[0] if seed < 20 else _task_graph(list(TASKS)[seed - 20])
    assert HEURISTICS["markowitz"](g) == _rescan_markowitz(g)


def test_quick_order_budget_keeps_forward_and_reverse(monkeypatch):
    from ccjax.orders import search

    g = _task_graph("RobotArm_6DOF")
    full = quick_order(g, budget=None)
    cut = quick_order(g, budget=1e-9)  # every variant but the two sorts is cut off
    assert cut[2] in ("fwd", "rev")
    assert cut[1] == min(plan_elimination(g, HEURISTICS[h](g)).report.mults for h in ("fwd", "rev"))
    assert full[1] < cut[1] and full == quick_order(g)  # the tests lift the default budget (conftest)
    monkeypatch.setattr(search, "QUICK_BUDGET", 1e-9)  # the default is read at each call
    assert quick_order(g) == cut


def test_auto_avoids_an_order_that_adds_far_more_than_it_multiplies():
    """``jnp.gradient`` on a grid: reverse order multiplies least (twice) but
    sums dense blocks (1.6M additions); "auto" takes an order doing far less
    work in all, and its Jacobian is still exact."""
    import jax.numpy as jnp

    from ccjax.orders.search import ADDITIONS_FLOOR, WORK_GAIN, least_work

    f = lambda x: jnp.stack(jnp.gradient(x, 0.5, 2.0))
    x = np.random.default_rng(0).normal(size=(20, 20))
    g = ccjax.graph(f, x)
    rev = plan_elimination(g, HEURISTICS["rev"](g)).report
    assert rev.additions > 2 * rev.mults + ADDITIONS_FLOOR  # the case the guard is for
    order, cost, _ = quick_order(g)
    auto = plan_elimination(g, order).report
    assert cost == auto.mults > rev.mults
    assert (auto.mults + auto.additions) * WORK_GAIN <= rev.mults + rev.additions
    np.testing.assert_allclose(ccjax.jacve(f)(x), jax.jacrev(f)(x), rtol=1e-12, atol=1e-12)
    # Where the fewest multiplications add little, they win.
    g1 = _task_graph("RoeFlux_1d")
    cands = [(tuple(HEURISTICS[h](g1)), plan_elimination(g1, HEURISTICS[h](g1)).report.mults, h)
             for h in ("fwd", "rev", "markowitz")]
    assert least_work(g1, cands) == min(cands, key=lambda c: c[1])


def test_plans_are_kept_with_their_graph():
    from ccjax.eliminate import KEPT_PLANS

    g = _task_graph("RoeFlux_1d")
    order = tuple(HEURISTICS["markowitz"](g))
    first = plan_elimination(g, order)
    assert plan_elimination(g, list(order)) is first
    assert plan_elimination(g, order, lazy_sums=False) is not first
    rng = np.random.default_rng(0)
    for _ in range(KEPT_PLANS):
        plan_elimination(g, rng.permutation(g.eliminable))
    assert len(g.eliminations) <= KEPT_PLANS
    again = plan_elimination(g, order)
    assert again is not first and again.report == first.report


# -- heuristics ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["RoeFlux_1d", "PropaneCombustion", "Encoder"])
def test_variants_are_valid_permutations(name):
    g = _task_graph(name)
    ev = Evaluator(g)
    for vname, fn in VARIANTS.items():
        validate_order(g, fn(ev))
    state, pre = preeliminate(ev)
    assert len(set(pre)) == len(pre)
    assert VARIANTS["fwd"](ev) == list(HEURISTICS["fwd"](g))
    assert VARIANTS["rev"](ev) == list(HEURISTICS["rev"](g))
    assert VARIANTS["markowitz"](ev) == list(HEURISTICS["markowitz"](g))


@pytest.mark.parametrize("name", list(TASKS))
def test_auto_is_at_most_best_classical_and_fast(name):
    g = _task_graph(name)
    order, cost, _ = quick_order(g)
    assert cost == plan_elimination(g, order).report.mults
    assert cost <= min(plan_elimination(g, HEURISTICS[h](g)).report.mults for h in ("fwd", "rev", "markowitz"))


def test_auto_resolution_under_50ms_on_150_vertices():
    from ccjax.resolve import resolve_order

    g = _task_graph("Encoder")
    resolve_order(g, "auto")  # warm the structure plans
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        resolve_order(g, "auto")
        times.append(time.perf_counter() - t0)
    assert min(times) < 0.05, times


# -- search methods ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["auto", "anneal", "beam", "exact"])
def test_search_methods_return_valid_orders(method):
    g = _task_graph("RoeFlux_1d")
    r = search_graph(g, method, time_budget=1.5, seed=0)
    assert isinstance(r, SearchResult)
    assert validate_order(g, r.order) == r.order
    assert r.cost == plan_elimination(g, r.order).report.mults
    assert r.cost <= r.best_baseline
    assert r.fingerprint == g.fingerprint
    assert r.elapsed < 1.5 + 6.0  # budget plus a generous margin: the CPU may be shared
    assert r.lower_bound is None or r.lower_bound <= r.cost


def test_anneal_improves_roe_flux_quickly():
    g = _task_graph("RoeFlux_1d")
    r = search_graph(g, "anneal", time_budget=2.0, seed=0)
    assert r.cost < 0.95 * r.best_baseline


def test_search_is_deterministic_for_a_seed():
    g = _task_graph("g")
    ev = Evaluator(g)
    start = VARIANTS["rev"](ev)
    a = anneal(ev, start, np.random.default_rng(7), AnnealConfig(moves=2000))
    b = anneal(ev, start, np.random.default_rng(7), AnnealConfig(moves=2000))
    assert a == b
    assert beam_search(ev, 4) == beam_search(ev, 4)
    r1 = search_graph(g, "anneal", seed=3, anneal_runs=2)
    r2 = search_graph(g, "anneal", seed=3, anneal_runs=2)
    assert (r1.order, r1.cost) == (r2.order, r2.cost)


def test_extra_starts_are_offered_costed_and_annealed_from():
    g = _task_graph("RoeFlux_1d")
    good = search_graph(g, "anneal", seed=1, anneal_runs=2)
    plain = search_graph(g, "anneal", seed=0, anneal_runs=0)
    assert good.cost < plain.cost and plain.starts == {}
    calls = []

    def mine(graph):
        calls.append(graph)
        return list(good.order)

    r = search_graph(g, "anneal", seed=0, anneal_runs=0, extra_starts={"mine": mine, "none": lambda graph: None})
    assert calls == [g]
    assert r.starts == {"mine": good.cost}  # a start without an order for this graph is skipped
    assert (r.order, r.cost, r.method) == (good.order, good.cost, "mine")
    annealed = search_graph(g, "anneal", seed=0, anneal_runs=3, extra_starts={"mine": lambda graph: good.order})
    assert annealed.cost <= good.cost and annealed.starts == {"mine": good.cost}
    with pytest.raises(ValueError, match="start 'bad' is not an order"):
        search_graph(g, "anneal", seed=0, anneal_runs=0, extra_starts={"bad": lambda graph: good.order[1:]})


def test_time_budget_is_honoured_and_progress_reported():
    g = _task_graph("Encoder")
    seen = []
    t0 = time.perf_counter()
    r = search_graph(g, "auto", time_budget=1.0, seed=0, progress=seen.append)
    assert time.perf_counter() - t0 < 2.5
    assert seen and seen[-1].best_cost == r.cost
    assert all(a.best_cost >= b.best_cost for a, b in zip(seen, seen[1:]))


def test_baselines_are_the_heuristics_costs():
    g = _task_graph("RoeFlux_1d")
    r = search_graph(g, "beam", time_budget=0.5, seed=0)
    assert r.baselines == {name: plan_elimination(g, HEURISTICS[name](g)).report.mults
                           for name in ("fwd", "rev", "markowitz")}


@functools.lru_cache(maxsize=None)
def _rk4_graph(steps: int):
    """An unrolled RK4 integrator of the Lorenz system: about 73 vertices a step."""
    import jax.numpy as jnp

    def lorenz(y):
        return jnp.stack([10.0 * (y[1] - y[0]), y[0] * (28.0 - y[2]) - y[1], y[0] * y[1] - 8.0 / 3.0 * y[2]])

    def f(y, h=0.01):
        for _ in range(steps):
            k1 = lorenz(y)
            k2 = lorenz(y + h / 2 * k1)
            k3 = lorenz(y + h / 2 * k2)
            k4 = lorenz(y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return y

    return ccjax.graph(f, jnp.ones(3))


@pytest.mark.parametrize("method", ["auto", "anneal", "beam", "exact"])
def test_time_budget_is_kept_on_a_1000_vertex_graph(method):
    """Every loop that grows with the graph reads the clock (this took
    12-18 s for a 2 s budget when only the phases did; now about 2.1 s)."""
    g = _rk4_graph(14)
    assert len(g.eliminable) > 1000
    t0 = time.perf_counter()
    r = search_graph(g, method, time_budget=2.0, seed=0)
    assert time.perf_counter() - t0 < 2.0 + 8.0
    assert r.cost <= r.baselines["fwd"] and r.lower_bound <= r.cost


def test_a_passed_deadline_stops_every_inner_loop():
    g = _task_graph("RobotArm_6DOF")
    ev = Evaluator(g)
    past = time.perf_counter() - 1.0
    rev = VARIANTS["rev"](ev, past)  # a sort: nothing to stop
    for name in ("markowitz", "pre+relative-last", "prerev+fill"):
        with pytest.raises(OutOfTime):
            VARIANTS[name](ev, past)
    with pytest.raises(OutOfTime):
        ev.cost(rev, past)
    with pytest.raises(OutOfTime):
        anneal(ev, rev, np.random.default_rng(0), AnnealConfig(moves=100), deadline=past)
    assert beam_search(ev, 2, past) is None
    r = exact_search(ev, rev, deadline=past)
    assert r.order == tuple(rev) and 0 <= r.lower_bound <= r.cost == ev.cost(rev)
    if not can_cancel(ev):  # a bound cut short is weaker, never wrong
        assert count_bound(ev, ev.root, cancel=False) <= cut_bound(ev, ev.root, deadline=past) \
            <= cut_bound(ev, ev.root)


def test_exact_search_deeper_than_the_recursion_limit_stops_with_a_bound():
    """1,500 free eliminations in a row: the depth-first search outgrows
    Python's recursion limit and stops as at a deadline (it used to raise)."""
    import jax.numpy as jnp

    def f(x):
        for _ in range(1500):
            x = -x
        return jnp.sin(x) * x

    ev = Evaluator(ccjax.graph(f, jnp.ones(3)))
    start = VARIANTS["fwd"](ev)
    r = exact_search(ev, start, deadline=time.perf_counter() + 5.0)
    assert 0 <= r.lower_bound <= r.cost <= ev.cost(start)


def test_search_order_api_and_bad_arguments():
    import jax.numpy as jnp

    def f(x, W):
        return jnp.tanh(W @ x).sum() * x

    r = ccjax.search_order(f, jnp.ones(3), jnp.eye(3), argnums=(0, 1), time_budget=0.5, cache=False)
    assert r.cost == ccjax.cost(f, jnp.ones(3), jnp.eye(3), argnums=(0, 1), order=r.order)
    with pytest.raises(ValueError, match="unknown search method"):
        ccjax.search_order(f, jnp.ones(3), jnp.eye(3), method="mcts?", cache=False)
    with pytest.raises(ValueError, match="time_budget"):
        ccjax.search_order(f, jnp.ones(3), jnp.eye(3), time_budget=0, cache=False)


# -- exact search --------------------------------------------------------------------------------

def _tiny_graphs(limit=7, count=30):
    found = []
    for seed in range(400):
        g, _, _ = _random_graph(seed, 2, 8)
        if 2 <= len(g.eliminable) <= limit:
            found.append((seed, g))
        if len(found) >= count:
            break
    return found


def test_exact_agrees_with_brute_force_on_tiny_graphs():
    cases = _tiny_graphs()
    assert len(cases) >= 20
    for seed, g in cases:
        ev = Evaluator(g)
        brute = min(ev.cost(p) for p in itertools.permutations(g.eliminable))
        r = exact_search(ev, HEURISTICS["fwd"](g))
        assert r.optimal and r.cost == brute and r.lower_bound == brute, seed
        assert plan_elimination(g, r.order).report.mults == brute


def test_lower_bound_is_admissible_on_tiny_graphs():
    for seed, g in _tiny_graphs(6, 15):
        ev = Evaluator(g)
        brute = min(ev.cost(p) for p in itertools.permutations(g.eliminable))
        assert lower_bound(ev, ev.root) <= brute
        assert count_bound(ev, ev.root, cancel=True) <= brute
        if not can_cancel(ev):
            assert count_bound(ev, ev.root, cancel=False) <= cut_bound(ev, ev.root) <= brute


def _scalar_random_graph(seed):
    from ccjax.tasks import ELEMENTWISE_FAMILIES

    n_in = 3 + seed % 4
    shapes = [()] * n_in
    fn = random_function(seed, shapes, n_ops=12 + seed % 6, ops=ELEMENTWISE_FAMILIES, n_outputs=2, nested=False)
    return ccjax.graph(fn, *random_inputs(seed, shapes), argnums=tuple(range(n_in)))


def test_exact_proves_optimality_on_random_graphs_up_to_20():
    sizes = []
    for seed in (4, 7, 14):  # 19, 17 and 14 intermediates
        g = _scalar_random_graph(seed)
        ev = Evaluator(g)
        start = VARIANTS["rev"](ev)
        r = exact_search(ev, start, deadline=time.perf_counter() + 30)
        assert r.optimal, (seed, r.lower_bound, r.cost)
        assert r.cost == plan_elimination(g, r.order).report.mults <= ev.cost(start)
        sizes.append(len(g.eliminable))
    assert max(sizes) >= 19 and max(sizes) <= 20


def test_exact_timeout_gives_certified_bound():
    g = _task_graph("RobotArm_6DOF")
    ev = Evaluator(g)
    start = VARIANTS["rev"](ev)
    r = exact_search(ev, start, deadline=time.perf_counter() + 0.5)
    assert 0 < r.lower_bound <= r.cost <= ev.cost(start)


def test_trivial_graphs():
    import jax.numpy as jnp

    r = ccjax.search_order(lambda x: x, jnp.ones(3), cache=False)
    assert r.order == () and r.cost == 0 and r.optimal
    r = ccjax.search_order(lambda x: jnp.sin(x) * 2, jnp.ones(3), method="exact", cache=False)
    assert len(r.order) == 1 and r.optimal
