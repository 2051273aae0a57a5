"""Tracing cost: constant work is staged (not run eagerly op by op), Python
control flow on constants still works, and repeated eager calls reuse the
cached graph, also through ``custom_jvp`` rules (``jax.nn.relu``)."""
from __future__ import annotations

import gc

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ccjax
from ccjax import api
from ccjax import trace as trace_mod
from conftest import assert_jac_equal, check_orders, counted_compiles

x3 = jnp.array([0.3, -0.7, 1.1])


@pytest.fixture(scope="module")
def mlp():
    """A flax.linen MLP in float64, its parameters and an input batch."""
    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(8), nn.relu, nn.Dense(3)])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5)))
    params = model.init(jax.random.PRNGKey(0), x)
    return model, params, x


def test_linen_mlp_input_jacobian(mlp):
    model, params, x = mlp
    f = lambda x: model.apply(params, x)
    assert_jac_equal(ccjax.jacve(f)(x), jax.jacrev(f)(x))


def test_linen_mlp_params_jacobian(mlp):
    model, params, x = mlp
    f = lambda p: model.apply(p, x)
    assert_jac_equal(ccjax.jacve(f)(params), jax.jacrev(f)(params))


def test_nnx_model_jacobian():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Sequential(nnx.Linear(5, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 3, rngs=nnx.Rngs(1)))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5)))
    assert_jac_equal(ccjax.jacve(lambda x: model(x))(x), jax.jacrev(lambda x: model(x))(x))


def _counting(f):
    """``f`` and a list that grows by one per call of it."""
    calls = []

    def counted(*args):
        calls.append(None)
        return f(*args)

    return counted, calls


def test_constant_work_is_traced_once():
    """No Python needs a constant's value: one trace, constant work staged."""
    w = jnp.linspace(0.5, 1.5, 3)
    f, calls = _counting(lambda x: jnp.tanh(x) * jnp.exp(w).sum())
    assert_jac_equal(ccjax.jacve(f)(x3), jax.jacrev(f)(x3))
    assert len(calls) == 2  # one trace each for jacve and jax.jacrev
    eqns = ccjax.graph(lambda x: jnp.tanh(x) * jnp.exp(w).sum(), x3).program.nodes
    assert "exp" in [node.name for node in eqns]  # staged, not a precomputed constant


@pytest.mark.parametrize("case", ["if", "int", "numpy", "bool_index"])
def test_python_control_flow_on_constants(case):
    """As with ``jax.jacrev``, Python may read a non-differentiated array's
    value; ccjax then traces again with constant work done eagerly."""
    y = jnp.array([1.0, -2.0, 3.0])
    fs = {
        "if": lambda x, y: x * 3.0 if float(jnp.sum(y)) > 0 else x,
        "int": lambda x, y: x * jnp.ones(int(jnp.sum(y > 0))).sum(),
        "numpy": lambda x, y: x * float(np.asarray(jnp.cumsum(y))[-1]),
        "bool_index": lambda x, y: x * jnp.sum(y[y > 0]),
    }
    f, calls = _counting(fs[case])
    assert_jac_equal(ccjax.jacve(f)(x3, y), jax.jacrev(f)(x3, y))
    assert len(calls) == 3  # two traces for jacve, one for jax.jacrev


def test_control_flow_on_differentiated_input_still_raises():
    f = lambda x: x if float(jnp.sum(x)) > 0 else -x
    with pytest.raises(jax.errors.ConcretizationTypeError):
        ccjax.jacve(f)(x3)


def _count_graphs(monkeypatch) -> list:
    """An empty graph cache, and a list that grows by one per graph built."""
    monkeypatch.setattr(trace_mod, "_graphs", trace_mod._LRU(16))
    built = []
    init = trace_mod.Graph.__init__

    def counting_init(self, *args, **kwargs):
        built.append(None)
        init(self, *args, **kwargs)

    monkeypatch.setattr(trace_mod.Graph, "__init__", counting_init)
    return built


def test_relu_network_hits_graph_cache(monkeypatch):
    """A ``custom_jvp`` rule is a new function object at every trace; the
    graph cache must still recognise the function (one graph, not one per
    call)."""
    built = _count_graphs(monkeypatch)
    W = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)))
    f = lambda x: jnp.sum(jax.nn.relu(W @ x) * jax.nn.softplus(x[0]) + jnp.sinc(W @ x))
    for _ in range(5):
        assert_jac_equal(ccjax.jacve(f)(x3), jax.jacrev(f)(x3))
    assert len(built) == 1


def test_linen_mlp_hits_graph_cache(monkeypatch, mlp):
    model, params, x = mlp
    built = _count_graphs(monkeypatch)
    for _ in range(3):
        ccjax.jacve(lambda x: model.apply(params, x))(x)
        ccjax.jacve(lambda p: model.apply(p, x))(params)
    assert len(built) == 2


def test_custom_jvp_rules_with_different_constants_get_different_graphs(monkeypatch):
    """Keying rules by their JVP jaxpr keeps the values they close over."""
    built = _count_graphs(monkeypatch)
    for c in (2.0, 3.0, 2.0):
        cc = jnp.full((3,), c)

        @jax.custom_jvp
        def f(x):
            return jnp.sin(x)

        f.defjvp(lambda p, t: (f(p[0]), cc * t[0]))
        assert_jac_equal(ccjax.jacve(f)(x3), jnp.diag(cc))
    assert len(built) == 2


def test_index_arithmetic_known_while_building_compiles_once():
    """``segment_sum``'s ids ``arange(n) // 4`` are ten integer equations
    (``floor_divide``): the values the graph needs at build time are
    computed as one program, not compiled equation by equation (0.2 s)."""
    f = lambda x: jax.ops.segment_sum(x ** 2, jnp.arange(64) // 4, 16)
    x = jnp.linspace(-1.0, 1.0, 64)
    jax.clear_caches()
    with counted_compiles() as compiles:
        g = ccjax.graph(f, x)
    assert len(compiles) <= 2, len(compiles)
    assert any(r.partial.constant for r in g.raw)  # the ids are known: a selection at constant indices
    assert_jac_equal(ccjax.jacve(f)(x), jax.jacrev(f)(x))


def test_indices_drawn_from_a_constant_key_are_known_and_exact():
    """Values built from a PRNG key known at build time are computed with
    the key inside the one program (a key has no NumPy value, so op by op
    its draws stayed unknown): ``randint`` indices become a selection at
    constant indices, exact in every order, eager, jitted and under vmap."""
    def f(x):
        idx = jax.random.randint(jax.random.key(3), (12,), 0, x.shape[0])
        return jnp.sin(x)[idx] * x[idx[::-1]]

    x = jnp.linspace(0.1, 1.3, 9)
    assert sum(r.partial.constant for r in ccjax.graph(f, x).raw) == 2
    check_orders(f, x)
    assert_jac_equal(jax.jit(ccjax.jacve(f))(x), jax.jacrev(f)(x))
    xs = jnp.stack([x, 2.0 * x])
    assert_jac_equal(jax.jit(jax.vmap(ccjax.jacve(f, order="fwd")))(xs), jax.vmap(jax.jacrev(f))(xs))
    sparse = ccjax.jacve(f, output="sparse")(x)
    assert_jac_equal(sparse.todense(), jax.jacrev(f)(x))
    assert sparse.nse == np.count_nonzero(np.asarray(jax.jacrev(f)(x)))


def _option_prices(p):
    """Black-Scholes calls with fixed expiry and rate: ``sqrt(T)``,
    ``exp(-r T)`` and ``sqrt(2)`` are constant factors of the partials."""
    S, sig = p[:6], p[6:]
    K, T, r = 1.0, 0.5, 0.01
    d1 = (jnp.log(S / K) + (r + 0.5 * sig ** 2) * T) / (sig * jnp.sqrt(T))
    d2 = d1 - sig * jnp.sqrt(T)
    phi = lambda z: 0.5 * (1 + jax.scipy.special.erf(z / jnp.sqrt(2.0)))
    return S * phi(d1) - K * jnp.exp(-r * T) * phi(d2)


def test_transcendental_constant_factors_are_known_nonzero_without_a_compilation():
    """A factor such as ``sqrt(T)`` is only asked whether it has zeros; NumPy
    finds it far from zero, so building the graph compiles nothing (each
    such factor cost a 40-50 ms compilation) and the Jacobian is exact."""
    p = jnp.concatenate([jnp.linspace(0.9, 1.1, 6), jnp.linspace(0.15, 0.3, 6)])
    with counted_compiles() as compiles:
        g = ccjax.graph(_option_prices, p)
    assert compiles == [] and g.zero_free == set()  # the factors read no closed-over constant
    want = jax.jacrev(_option_prices)(p)
    for order in ("auto", "fwd", "rev", "markowitz"):
        jac = ccjax.jacve(_option_prices, order=order)
        assert_jac_equal(jac(p), want, rtol=1e-12)
        assert_jac_equal(jax.jit(jac)(p), want, rtol=1e-12)
    batch = jnp.stack([p, p * 1.1, p * 0.9])
    assert_jac_equal(jax.vmap(ccjax.jacve(_option_prices))(batch), jax.vmap(jax.jacrev(_option_prices))(batch),
                     rtol=1e-12)


def test_a_transcendental_constant_that_is_zero_still_gives_a_structural_zero():
    """``log(1)`` is exactly 0 and ``exp(c) - exp(c)`` cancels: neither is
    far from zero, so the exact value decides (compiled), and the zero
    partial stays a structural zero: 0 in the Jacobian, NaN input or not."""
    def f(x):
        return x * jnp.log(jnp.ones(3)) + x[::-1] * (jnp.exp(jnp.full(3, 0.7)) - jnp.exp(jnp.full(3, 0.7)))

    x = jnp.array([0.5, jnp.nan, 2.0])
    for out in ("dense", "sparse"):
        jac = ccjax.jacve(f, output=out)(x)
        dense = np.asarray(jac.todense() if out == "sparse" else jac)
        np.testing.assert_array_equal(dense, np.zeros((3, 3)))
    assert ccjax.jacve(f, output="sparse")(x).nse == 0


def test_a_closed_over_transcendental_factor_records_its_constant():
    """A factor computed from a closed-over array found far from zero marks
    that array zero-free, as the exact path does (the graph cache's reuse
    rule reads it); an array with a zero takes the exact path; both exact."""
    def make(rates):
        return lambda x: x * jnp.exp(-rates) * jnp.sqrt(rates)

    x = jnp.array([0.3, -0.2, 0.9])
    for rates in (jnp.array([0.1, 0.2, 0.3]), jnp.array([0.5, 0.0, 0.25])):
        f = make(rates)
        assert_jac_equal(ccjax.jacve(f)(x), jax.jacrev(f)(x))
    g = ccjax.graph(make(jnp.array([0.1, 0.2, 0.3])), x)
    assert g.zero_free  # the rates were read and found without zeros


def _lagrange(nodes, queries):
    """Barycentric Lagrange interpolation of values ``y`` at ``nodes``, read
    at ``queries``: weights ``1 / prod_j (x_i - x_j)`` of differences of
    the (closed-over) grid."""
    def f(y):
        diff = nodes[:, None] - nodes[None, :] + jnp.eye(nodes.shape[0])
        w = 1.0 / jnp.prod(diff, axis=1)
        t = w / (queries[:, None] - nodes[None, :])
        return (t @ y) / t.sum(1)

    return f


def test_products_of_exact_differences_are_known_nonzero_without_a_compilation():
    """Lagrange weights: the differences are exact in NumPy, their product
    and the quotients far from zero, so building the graph compiles nothing
    (was 160 ms) and reads the grids as zero-free; exact in every order."""
    nodes, queries = jnp.linspace(-1.0, 1.0, 9), jnp.linspace(-0.95, 0.95, 12)
    f = _lagrange(nodes, queries)
    y = jnp.sin(3.0 * nodes)
    with counted_compiles() as compiles:
        g = ccjax.graph(f, y)
    assert compiles == [] and g.zero_free
    want = jax.jacrev(f)(y)
    for order in ("auto", "fwd", "rev", "markowitz"):
        assert_jac_equal(ccjax.jacve(f, order=order)(y), want, rtol=1e-12)
        assert_jac_equal(jax.jit(ccjax.jacve(f, order=order))(y), want, rtol=1e-12)
    ys = jnp.asarray(np.random.default_rng(5).normal(size=(3, 9)))
    assert_jac_equal(jax.vmap(ccjax.jacve(f))(ys), jax.vmap(jax.jacrev(f))(ys), rtol=1e-12)


@pytest.mark.parametrize("case", ["query_on_node", "underflowing_product"])
def test_products_that_may_vanish_take_the_exact_path(case):
    """A query on a grid point divides by an exact zero (inf weight, NaN
    rows, as jax.jacrev has them), and a product whose partial products
    may underflow in XLA's order is not trusted from NumPy's: both are
    decided by the exact (compiled) path, and the Jacobian stays
    jax.jacrev's where it is finite and at its structural zeros."""
    if case == "query_on_node":
        nodes, queries = jnp.linspace(-1.0, 1.0, 5), jnp.array([0.0, 0.3])
        f = _lagrange(nodes, queries)
        y = jnp.cos(nodes)
    else:
        scale = jnp.array([1e-200, 1e200, 1e-200, 1e200])  # 1e-200 * 1e-200 underflows
        f = lambda y: y * jnp.prod(jnp.stack([scale, scale[::-1], scale]), axis=0)
        y = jnp.array([0.5, -1.5, 2.0, 0.25])
    with counted_compiles() as compiles:
        ccjax.graph(f, y)
    assert compiles  # the zero test compiled its constant
    got, want = np.asarray(ccjax.jacve(f)(y)), np.asarray(jax.jacrev(f)(y))
    finite = np.isfinite(got) & np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-12)


def _stencil(u):
    """A periodic 2-D stencil: a graph of some hundred vertices with bands."""
    lap = lambda a: jnp.roll(a, 1, 0) + jnp.roll(a, -1, 0) + jnp.roll(a, 1, 1) + jnp.roll(a, -1, 1) - 4.0 * a
    return 0.1 * lap(u) - u * u * u


def test_graph_and_plan_run_without_cyclic_collections():
    """Building and planning allocate many small acyclic objects: the
    cyclic collector stays off meanwhile (it would run dozens of passes,
    and now and then a full one over the whole process, in a first call),
    and its state is the caller's afterwards, also after an error."""
    u = jnp.asarray(np.random.default_rng(3).normal(size=(12, 12)))
    assert _passes_while_planning(_stencil, u) == 0
    assert gc.isenabled()
    assert_jac_equal(ccjax.jacve(_stencil)(u), jax.jacrev(_stencil)(u))
    gc.disable()
    try:
        ccjax.jacve(lambda u: jnp.sin(u) * u)(u)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(ccjax.OrderError):
        ccjax.jacve(lambda u: jnp.sin(u) * u, order=[10 ** 6])(u)
    assert gc.isenabled()


def _passes_while_planning(f, x) -> int:
    """Collector passes started while ``jacve`` builds and plans ``f``'s graph."""
    passes = []
    window = {"open": False}
    record = lambda phase, info: passes.append(1) if phase == "start" and window["open"] else None
    real_runner = api._runner
    real_graph_for = api._graph_for

    def graph_for(*args):
        window["open"] = True
        return real_graph_for(*args)

    def runner(*args):
        try:
            return real_runner(*args)
        finally:
            window["open"] = False

    trace_mod._graphs.data.clear()
    gc.callbacks.append(record)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(api, "_graph_for", graph_for)
            mp.setattr(api, "_runner", runner)
            ccjax.jacve(f)(x)
    finally:
        gc.callbacks.remove(record)
    return len(passes)
