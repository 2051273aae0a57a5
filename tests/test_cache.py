"""The persistent order cache: round trip, concurrency, corruption, staleness."""
import json
import multiprocessing as mp
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax.cache import ENV_VAR, CacheWarning, OrderCache, default_cache_dir, graph_key  # noqa: E402
from ccjax.eliminate import plan_elimination  # noqa: E402
from ccjax.orders import HEURISTICS  # noqa: E402
from ccjax.resolve import auto_order, resolve_order  # noqa: E402
from ccjax.orders.search import quick_order  # noqa: E402
from ccjax.tasks import TASKS  # noqa: E402


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv(ENV_VAR, str(d))
    return d


def _roe():
    task = TASKS["RoeFlux_1d"]
    fn, args = task.graph_fn_and_inputs(0)
    return fn, args, task.argnums


def _graph():
    fn, args, argnums = _roe()
    return ccjax.graph(fn, *args, argnums=argnums)


def _cost(g, order):
    return plan_elimination(g, order).report.mults


def _permutations(g, n, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(v) for v in rng.permutation(np.array(g.eliminable))] for _ in range(n)]


def test_location_env_and_argument(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "a"))
    assert OrderCache().root == tmp_path / "a"
    assert OrderCache(tmp_path / "b").root == tmp_path / "b"
    monkeypatch.setenv(ENV_VAR, "off")
    assert default_cache_dir() is None and not OrderCache().enabled
    assert OrderCache().get(_graph()) is None
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert default_cache_dir() == tmp_path / "xdg" / "ccjax"


def test_put_get_keeps_better(cache_dir):
    g = _graph()
    store = OrderCache()
    a, b = _permutations(g, 2)
    worse, better = sorted([a, b], key=lambda o: _cost(g, o), reverse=True)
    e1 = store.put(g, worse, method="x", label="roe")
    assert e1.cost == _cost(g, worse)
    e2 = store.put(g, better, method="y")
    assert e2.order == tuple(better) and e2.label == "roe"
    e3 = store.put(g, worse)
    assert e3.order == tuple(better)
    got = store.get(g)
    assert got.order == tuple(better) and got.cost == _cost(g, better)
    assert [e.key for e in store.entries()] == [graph_key(g)]
    with pytest.raises(ValueError):
        store.put(g, better, cost=_cost(g, better) + 1)
    assert store.clear() == 1
    assert store.get(g) is None


def test_round_trip_through_auto(cache_dir):
    fn, args, argnums = _roe()
    before = ccjax.cost(fn, *args, argnums=argnums, order="auto")
    r = ccjax.search_order(fn, *args, argnums=argnums, method="anneal", time_budget=1.5, seed=0)
    assert r.cost < before
    assert ccjax.cost(fn, *args, argnums=argnums, order="auto") == r.cost
    # a fresh process-like lookup (no in-memory plans) finds it too
    g = _graph()
    assert auto_order(g) == r.order
    assert tuple(resolve_order(g, "auto")) == r.order
    want = jax.jacrev(fn, argnums=argnums)(*args)
    got = ccjax.jacve(fn, argnums=argnums, order="auto")(*args)
    for x, y in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_auto_prefers_heuristic_over_worse_cached_order(cache_dir):
    g = _graph()
    store = OrderCache()
    bad = HEURISTICS["fwd"](g)  # 320, worse than rev
    store.put(g, bad)
    order = auto_order(g)
    assert _cost(g, order) == quick_order(g)[1] < _cost(g, bad)


def _corrupt_then_check(path_text: str, cache_dir):
    g = _graph()
    store = OrderCache()
    store.put(g, HEURISTICS["rev"](g))
    path = store.directory / f"{graph_key(g)}.json"
    path.write_text(path_text)
    with pytest.warns(CacheWarning):
        assert store.get(g) is None
    with pytest.warns(CacheWarning):
        order = auto_order(g)  # falls back to the heuristics, no crash
    assert _cost(g, order) == quick_order(g)[1]
    best = HEURISTICS["rev"](g)
    with pytest.warns(CacheWarning):
        store.put(g, best)  # rebuilds the file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.get(g).order == tuple(best)


def test_corrupt_file_warns_and_rebuilds(cache_dir):
    _corrupt_then_check('{"format": "ccjax-order-cache", "version": 1, "key": tru', cache_dir)


def test_binary_garbage_warns_and_rebuilds(cache_dir):
    _corrupt_then_check("\x00\xff garbage", cache_dir)


def test_foreign_json_warns_and_rebuilds(cache_dir):
    _corrupt_then_check(json.dumps({"hello": "world"}), cache_dir)


def test_wrong_types_warn_and_rebuild(cache_dir):
    g = _graph()
    rec = {"format": "ccjax-order-cache", "version": 1, "key": graph_key(g), "fingerprint": g.fingerprint,
           "diff_leaves": list(g.diff_leaves), "order": ["a", "b"], "cost": 3}
    _corrupt_then_check(json.dumps(rec), cache_dir)


def test_stale_order_is_never_used(cache_dir):
    """A record under the right key whose order does not fit the graph
    (e.g. written for an older version of the function) is ignored."""
    g = _graph()
    store = OrderCache()
    store.put(g, HEURISTICS["rev"](g))
    path = store.directory / f"{graph_key(g)}.json"
    rec = json.loads(path.read_text())
    rec["order"] = rec["order"][:-1] + [10_000]
    rec["cost"] = 1
    path.write_text(json.dumps(rec))
    with pytest.warns(CacheWarning, match="stale"):
        assert store.get(g) is None
    # an order for another graph under this key is rejected too
    rec["fingerprint"] = "0" * 20
    path.write_text(json.dumps(rec))
    with pytest.warns(CacheWarning):
        assert store.get(g) is None


def test_changed_function_misses(cache_dir):
    def f(x):
        return jnp.sin(x) * jnp.cos(x).sum()

    def f2(x):
        return jnp.sin(x) * jnp.tanh(x).sum()

    x = jnp.linspace(0.1, 1.0, 4)
    r = ccjax.search_order(f, x, method="beam", time_budget=0.5)
    g2 = ccjax.graph(f2, x)
    g3 = ccjax.graph(f, jnp.ones(5))
    assert g2.fingerprint != r.fingerprint and g3.fingerprint != r.fingerprint
    store = OrderCache()
    assert store.get(g2) is None and store.get(g3) is None
    assert store.get(ccjax.graph(f, x)).order == r.order
    # argnums are part of the key
    def h(x, y):
        return jnp.sin(x * y)
    ga, gb = ccjax.graph(h, x, x, argnums=0), ccjax.graph(h, x, x, argnums=(0, 1))
    assert graph_key(ga) != graph_key(gb)


def _writer(args):
    root, seed = args
    jax.config.update("jax_enable_x64", True)
    g = _graph()
    store = OrderCache(root)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(8):
        o = [int(v) for v in rng.permutation(np.array(g.eliminable))]
        e = store.put(g, o)
        c = _cost(g, o)
        best = c if best is None else min(best, c)
        assert e is not None and e.cost <= c
    return best


def test_concurrent_writers_keep_the_best(tmp_path):
    root = str(tmp_path / "shared")
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        bests = pool.map(_writer, [(root, s) for s in range(6)])
    store = OrderCache(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = store.get(_graph())
    assert e.cost == min(bests)
    leftovers = [p.name for p in store.directory.iterdir() if p.suffix == ".tmp"]
    assert leftovers == []


def test_unwritable_directory_only_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = OrderCache(blocker)
    g = _graph()
    with pytest.warns(CacheWarning):
        assert store.put(g, HEURISTICS["rev"](g)) is None
    with pytest.warns(CacheWarning):
        assert store.get(g) is None


def test_key_ignores_float_dtypes(cache_dir):
    """A float32 and a float64 graph of one function share a key, so an
    order searched in one (``ccjax search`` runs in float32) serves the
    other; the stored fingerprint says which graph it was stored for."""
    fn, args, argnums = _roe()
    g64 = ccjax.graph(fn, *args, argnums=argnums)
    g32 = ccjax.graph(fn, *[jnp.asarray(a, jnp.float32) for a in args], argnums=argnums)
    assert g32.dtype == jnp.float32 and g64.dtype == jnp.float64
    assert g32.fingerprint != g64.fingerprint and graph_key(g32) == graph_key(g64)
    store = OrderCache()
    order = tuple(HEURISTICS["rev"](g32))
    store.put(g32, order, label="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entry = store.get(g64)
    assert entry.order == order and entry.cost == _cost(g64, order) and entry.fingerprint == g32.fingerprint
    assert entry.label == "float32" and auto_order(g64) == auto_order(g32)
