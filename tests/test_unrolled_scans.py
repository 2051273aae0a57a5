"""A short ``scan`` (``fori_loop`` with static bounds, ``lax.scan`` over
carries) without lanes enters the graph unrolled
(``ccjax.graph.UNROLL_MAX_EQUATIONS``), so the elimination and the sparse
output see the structure of every step (a stencil's band) where the scan
equation alone has a dense local Jacobian.

Checked against ``jax.jacrev`` in every order, eagerly and jitted; the
graph holds no ``scan``; the sparse output stores exactly the nonzeros;
cost equals the executed multiplications; loops with lanes, with
differentiated ``xs`` or with many steps stay scans; random loop bodies
(hypothesis) in random orders.
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax.eliminate import plan_elimination  # noqa: E402
from ccjax.orders.heuristics import HEURISTICS  # noqa: E402
from conftest import assert_jac_equal  # noqa: E402
from test_elimination import _executed_mults  # noqa: E402

graph_module = importlib.import_module("ccjax.graph")  # the module (``ccjax.graph`` is the function)
DEFAULT_MIN_ENTRIES = graph_module.UNROLL_MIN_ENTRIES
R = np.random.default_rng(3)


@pytest.fixture(autouse=True)
def small_loops_unrolled(monkeypatch):
    """Unroll loops of any state size (the default waits for a dense local
    Jacobian of ``UNROLL_MIN_ENTRIES``), each graph built afresh."""
    from ccjax import trace

    monkeypatch.setattr(graph_module, "UNROLL_MIN_ENTRIES", 0)
    monkeypatch.setattr(trace, "_graphs", trace._LRU(16))

A6 = R.normal(size=(6, 6)) / 3
COEFFS = R.normal(size=(4, 16)) / 2


def _jacobi(u):
    """Five Jacobi sweeps of a periodic grid with a source term (a banded Jacobian)."""
    return lax.fori_loop(0, 5, lambda i, v: 0.5 * (jnp.roll(v, 1) + jnp.roll(v, -1)) + 0.1 * jnp.sin(u), u)


def _varying_coefficients(u):
    """A reverse scan whose ``xs`` are constants (not differentiated)."""
    return lax.scan(lambda c, a: (jnp.roll(c, 1) * a + jnp.sin(c), None), u, COEFFS, reverse=True)[0]


def _trajectory(u):
    """Every state of three upwind steps (``ys`` differentiated)."""
    step = lambda c, _: (lambda n: (n, n))(c - 0.3 * (c - jnp.roll(c, 1)) * c)
    return lax.scan(step, u, None, length=3)[1].ravel()


def _nested(u):
    """A fori_loop inside a fori_loop, with an integer counter in the carry."""
    inner = lambda v: lax.fori_loop(0, 2, lambda j, w: jnp.tanh(jnp.roll(w, 1)) + w, v)
    return lax.fori_loop(0, 3, lambda i, v: inner(v) * (i + 1.0), u)


def _two_carries(u, w):
    """Two carries that read each other, one of them a matrix product."""
    def step(i, c):
        a, b = c
        return jnp.tanh(jnp.asarray(A6) @ b) + a, b * jnp.cos(a)
    return jnp.concatenate(lax.fori_loop(0, 3, step, (u, w)))


def _complex_and_relu(u):
    """Complex values and a custom rule (ReLU's ``custom_jvp``) in a body that mixes entries."""
    step = lambda i, v: jax.nn.relu(jnp.roll(v, 1)) + jnp.abs(jnp.exp(1j * v) + 0.5 * jnp.roll(v, -1)) * v
    return lax.fori_loop(0, 3, step, u)


def _jacobi_gathers(u):
    """The sweeps with neighbours by index vectors: gathers, and index
    arithmetic on constants (not counted against unrolling)."""
    left, right = np.roll(np.arange(u.shape[0]), 1), np.roll(np.arange(u.shape[0]), -1)
    return lax.fori_loop(0, 5, lambda i, v: 0.5 * (v[left] + v[right]) + 0.1 * jnp.sin(u), u)


def _late_activity(u):
    """Carries that start constant and depend on ``u`` only after one and
    two steps: each is a vertex of every step it depends on ``u`` in."""
    def step(i, c):
        a, b = c
        return jnp.sin(a) + u, jnp.roll(b, 1) * 2.0 + a
    return lax.fori_loop(0, 3, step, (jnp.zeros_like(u), jnp.ones_like(u)))[1]


PROGRAMS = {
    "jacobi": (_jacobi, (R.normal(size=64),)),
    "jacobi_gathers": (_jacobi_gathers, (R.normal(size=16),)),
    "late_activity": (_late_activity, (R.normal(size=8),)),
    "varying_coefficients": (_varying_coefficients, (R.normal(size=16),)),
    "trajectory": (_trajectory, (R.normal(size=16),)),
    "nested": (_nested, (R.normal(size=8),)),
    "two_carries": (_two_carries, (R.normal(size=6), R.normal(size=6))),
    "complex_and_relu": (_complex_and_relu, (R.normal(size=8),)),
}


def _argnums(args):
    return tuple(range(len(args))) if len(args) > 1 else 0


def _has_scan(g) -> bool:
    return any(node.name == "scan" for node in g.program.nodes)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_short_loops_enter_the_graph_unrolled_and_match_jacrev_in_every_order(name):
    f, args = PROGRAMS[name]
    nums = _argnums(args)
    g = ccjax.graph(f, *args, argnums=nums)
    assert not _has_scan(g)
    want = jax.jacrev(f, argnums=nums)(*args)
    orders = ["auto", "fwd", "rev", "markowitz", tuple(np.random.default_rng(1).permutation(g.eliminable))]
    for order in orders:
        jac = ccjax.jacve(f, argnums=nums, order=order)
        assert_jac_equal(jac(*args), want, rtol=1e-12, atol=1e-12, what=str(order))
        assert_jac_equal(jax.jit(jac)(*args), want, rtol=1e-12, atol=1e-12, what=str(order))
    for order in [HEURISTICS[h](g) for h in ("fwd", "rev", "markowitz")]:
        plan = plan_elimination(g, order)
        assert _executed_mults(g, plan, f, args, nums) == plan.report.mults
    batch = [np.stack([a, a[::-1], 0.5 * a]) for a in args]  # three points per argument
    assert_jac_equal(jax.vmap(ccjax.jacve(f, argnums=nums))(*batch), jax.vmap(jax.jacrev(f, argnums=nums))(*batch),
                     rtol=1e-12, atol=1e-12, what="vmap")


@pytest.mark.parametrize("order", ["rev", "markowitz"])
def test_a_nan_input_reaches_the_entries_its_paths_reach_and_no_others(order):
    """The README's NaN rule of an elimination: an entry no path reaches is
    exactly 0 (``jax.jacrev`` multiplies zero cotangents by ``cos(nan)`` and
    fills the whole column)."""
    (u,) = PROGRAMS["jacobi"][1]
    # The sweeps read u twice: as the first iterate (linear paths, no NaN
    # partial) and in the source term (through cos(u), NaN at a NaN input).
    sweeps = lambda first, source: lax.fori_loop(
        0, 5, lambda i, v: 0.5 * (jnp.roll(v, 1) + jnp.roll(v, -1)) + 0.1 * jnp.sin(source), first)
    bad = u.copy()
    bad[3] = np.nan
    linear = np.asarray(jax.jacrev(sweeps)(bad, bad))  # finite: no partial on these paths is NaN
    through_source = np.asarray(jax.jacrev(sweeps, argnums=1)(u, u)) != 0
    got = np.asarray(ccjax.jacve(_jacobi, order=order)(bad))
    nan_at = np.zeros_like(through_source)
    nan_at[:, 3] = through_source[:, 3]
    assert nan_at.any() and np.all(np.isfinite(linear))
    np.testing.assert_array_equal(np.isnan(got), nan_at)
    source = np.array(jax.jacrev(sweeps, argnums=1)(u, bad))
    source[:, 3] = 0.0  # NaN in jax.jacrev's column; reached entries are compared as NaN above
    want = linear + source
    np.testing.assert_allclose(got[~nan_at], want[~nan_at], rtol=1e-12, atol=1e-12)
    assert np.all(np.isnan(np.asarray(jax.jacrev(_jacobi)(bad))[:, 3]))  # jacrev's whole column


@pytest.mark.parametrize("name", ["jacobi", "varying_coefficients", "trajectory"])
def test_the_sparse_output_of_an_unrolled_loop_stores_the_nonzeros(name):
    f, args = PROGRAMS[name]
    want = np.asarray(jax.jacrev(f)(*args))
    got = jax.jit(ccjax.jacve(f, output="sparse"))(*args)
    np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
    assert got.nse == np.count_nonzero(want) < want.size


def test_only_equations_on_active_values_count_against_unrolling():
    (u,) = PROGRAMS["jacobi_gathers"][1]
    (eqn,) = [e for e in jax.make_jaxpr(_jacobi_gathers)(u).jaxpr.eqns if e.primitive.name == "scan"]
    p = eqn.params
    consts = eqn.invars[:p["num_consts"]]  # u and the index vectors
    active = [jnp.issubdtype(v.aval.dtype, jnp.floating) for v in consts] + [False, True]  # counter, state
    assert sum(active) == 2
    body = p["jaxpr"].jaxpr
    assert p["length"] * graph_module._unrolled_size(body) > graph_module.UNROLL_MAX_EQUATIONS
    counted = p["length"] * graph_module._unrolled_size(body, graph_module._body_activity(p, active))
    assert 0 < counted <= graph_module.UNROLL_MAX_EQUATIONS
    assert not _has_scan(ccjax.graph(_jacobi_gathers, u))


def test_a_carry_is_active_once_the_body_makes_it_depend_on_an_input():
    (u,) = PROGRAMS["late_activity"][1]
    (eqn,) = [e for e in jax.make_jaxpr(_late_activity)(u).jaxpr.eqns if e.primitive.name == "scan"]
    p = eqn.params
    consts_active = [jnp.issubdtype(v.aval.dtype, jnp.floating) for v in eqn.invars[:p["num_consts"]]]
    activity = graph_module._body_activity(p, consts_active + [False] * (len(eqn.invars) - p["num_consts"]))
    assert activity[p["num_consts"]:] == [False, True, True]  # counter, a (one step), b (two steps)


def test_the_jacobi_sweeps_were_dense_as_a_scan(monkeypatch):
    """The same loop kept a scan stores every entry: what unrolling is for."""
    monkeypatch.setattr(graph_module, "UNROLL_MAX_EQUATIONS", 0)
    (u,) = PROGRAMS["jacobi"][1]
    assert _has_scan(ccjax.graph(_jacobi, u))
    assert ccjax.jacve(_jacobi, output="sparse")(u).nse == u.size ** 2


def test_by_default_only_loops_with_a_large_dense_block_unroll(monkeypatch):
    monkeypatch.setattr(graph_module, "UNROLL_MIN_ENTRIES", DEFAULT_MIN_ENTRIES)
    small, large = R.normal(size=64), R.normal(size=256)
    assert _has_scan(ccjax.graph(_jacobi, small))
    assert not _has_scan(ccjax.graph(_jacobi, large))
    want = np.asarray(jax.jacrev(_jacobi)(large))
    got = jax.jit(ccjax.jacve(_jacobi, output="sparse"))(large)
    np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
    assert got.nse == np.count_nonzero(want) == 256 * 11


@pytest.mark.parametrize("f", [
    lambda u: lax.fori_loop(0, 5, lambda i, y: 0.5 * (y + u / y), u),  # elementwise: lanes
    lambda u: lax.fori_loop(0, 40, lambda i, y: jnp.roll(y, 1) * 0.5 + jnp.sin(y), u),  # too many steps
    lambda u: lax.scan(lambda c, x: (jnp.roll(c, 1) * x, c), u, jnp.stack([u, u]))[1],  # xs differentiated
], ids=["lanes", "long", "xs_differentiated"])
def test_loops_with_lanes_many_steps_or_differentiated_xs_stay_scans(f):
    u = jnp.asarray(R.uniform(1.0, 2.0, size=8))
    assert _has_scan(ccjax.graph(f, u))
    assert_jac_equal(ccjax.jacve(f)(u), jax.jacrev(f)(u))


_BODY_OPS = {
    "roll": lambda v, u: jnp.roll(v, 1),
    "sin": lambda v, u: jnp.sin(v),
    "matmul": lambda v, u: jnp.asarray(A6) @ v,
    "shift": lambda v, u: jnp.pad(v[1:], (0, 1)),
    "source": lambda v, u: v + 0.1 * jnp.cos(u),
    "cumsum": lambda v, u: jnp.cumsum(v) / 4,
    "reverse": lambda v, u: v[::-1] * v,
}


@settings(max_examples=15, deadline=None)
@given(ops=st.lists(st.sampled_from(sorted(_BODY_OPS)), min_size=1, max_size=3),
       length=st.integers(1, 5), reverse=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_random_short_loops_match_jacrev_in_random_orders(ops, length, reverse, seed):
    def body(v, u):
        for name in ops:
            v = _BODY_OPS[name](v, u) + 0.2 * v
        return v

    f = lambda u: lax.scan(lambda c, _: (body(c, u), None), u, None, length=length, reverse=reverse)[0]
    u = jnp.asarray(np.random.default_rng(seed).normal(size=6))
    g = ccjax.graph(f, u)
    want = jax.jacrev(f)(u)
    rng = np.random.default_rng(seed)
    for order in ["auto", "fwd", "rev", tuple(rng.permutation(g.eliminable))]:
        assert_jac_equal(ccjax.jacve(f, order=order)(u), want, rtol=1e-11, atol=1e-11, what=str(order))
    dense = np.asarray(ccjax.jacve(f, output="sparse")(u).todense())
    np.testing.assert_allclose(dense, want, rtol=1e-11, atol=1e-11)
