"""Compressed seeds: JAX's modes over one seed per colour of the elimination's pattern.

The colouring must keep columns (rows) that share a row (column) apart, the
compressed program must give ``jax.jacrev``'s Jacobian in both layouts, its
count must be what its jaxpr multiplies, and ``order="auto"`` must take it
where it is cheaper.
"""
import dataclasses

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax import lax

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
import ccjax.api  # noqa: E402
from ccjax import jax_modes, trace  # noqa: E402
from ccjax.api import _plan  # noqa: E402
from ccjax.coloring import Pattern, coloring, greedy_colors, is_coloring, pattern  # noqa: E402
from ccjax.counting import Counter  # noqa: E402
from ccjax.eliminate import plan_elimination  # noqa: E402
from ccjax.jax_modes import plan_colored, traced_mults  # noqa: E402
from ccjax.resolve import resolve_order  # noqa: E402
from ccjax.tasks.random_fn import random_function, random_inputs  # noqa: E402


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CCJAX_CACHE_DIR", str(tmp_path))


def stencil(u):
    return jnp.roll(u, 1) - 2.0 * u + jnp.roll(u, -1) + jnp.sin(u) ** 2


def jacobi(u):
    return lax.fori_loop(0, 3, lambda i, v: 0.5 * (jnp.roll(v, 1) + jnp.roll(v, -1)) + 0.1 * jnp.sin(u), u)


def rows_logsumexp(x):
    return jax.nn.logsumexp(x, axis=1)


def two_in_two_out(a, b):
    """Pytrees in and out, a diagonal block, a band and a coupling row."""
    return {"p": a * jnp.cos(b), "q": jnp.roll(a, 1) * b[:4].sum()}, jnp.tanh(b)


def forced(monkeypatch, mode):
    """Make ``order="auto"`` run the colored plan of ``mode`` where there is
    one (fresh graphs)."""
    monkeypatch.setattr(trace, "_graphs", trace._LRU(16))
    monkeypatch.setattr(ccjax.api, "cheapest", lambda g, plan: plan_colored(g, plan, mode) or plan)


def _close(got, want):
    for a, b in zip(jax.tree.leaves(got, is_leaf=lambda x: hasattr(x, "todense")), jax.tree.leaves(want)):
        a = a.todense() if hasattr(a, "todense") else a
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 2 ** 31 - 1))
def test_greedy_colours_keep_columns_of_one_row_apart(n_rows, n_cols, density, seed):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_rows, n_cols)) < density
    rows, cols = np.nonzero(dense)
    colors = greedy_colors(rows, cols, n_cols)
    assert colors.shape == (n_cols,) and (colors >= 0).all()
    assert is_coloring(colors, rows, cols)
    if len(rows):
        assert colors.max() + 1 >= np.bincount(rows).max()  # at least the fullest row's count
        assert colors.max() + 1 <= n_cols


@pytest.mark.parametrize("n,want", [(63, 3), (64, 4)])
def test_a_periodic_band_takes_its_width_where_the_period_allows(n, want):
    rows = np.repeat(np.arange(n), 3)
    cols = (rows + np.tile([-1, 0, 1], n)) % n
    colors = greedy_colors(rows, cols, n)
    assert colors.max() + 1 == want and is_coloring(colors, rows, cols)


@pytest.mark.parametrize("mode", ["fwd", "rev"])
@pytest.mark.parametrize("fn,args", [
    (stencil, (np.linspace(0.1, 1.0, 12),)),
    (jacobi, (np.linspace(-1.0, 1.0, 256),)),
    (rows_logsumexp, (np.arange(20.0).reshape(4, 5) / 7,)),
    (two_in_two_out, (np.linspace(0.2, 0.9, 6), np.linspace(-0.5, 0.5, 6))),
])
def test_colored_plans_give_jacrev_dense_sparse_eager_and_jitted(monkeypatch, mode, fn, args):
    forced(monkeypatch, mode)
    argnums = tuple(range(len(args)))
    g = ccjax.graph(fn, *args, argnums=argnums)
    plan = _plan(trace.auto_graph(fn, *args, argnums=argnums), "auto")
    assert plan.mode == f"colored-{mode}", "the test needs a pattern that compresses"
    want = jax.jacrev(fn, argnums=argnums)(*args)
    _close(ccjax.jacve(fn, argnums=argnums)(*args), want)
    _close(jax.jit(ccjax.jacve(fn, argnums=argnums))(*args), want)
    sparse = jax.jit(ccjax.jacve(fn, argnums=argnums, output="sparse"))(*args)
    _close(sparse, want)
    stored = sum(b.nse for b in jax.tree.leaves(sparse, is_leaf=lambda x: hasattr(x, "todense")))
    assert stored == len(pattern(g, plan_elimination(g, resolve_order(g, "auto"))).rows)


def test_colored_plans_keep_aux_and_python_scalars(monkeypatch):
    forced(monkeypatch, "fwd")

    def f(u, scale):
        return stencil(u) * scale, {"mean": u.mean()}

    u = np.linspace(0.0, 1.0, 10)
    got, aux = ccjax.jacve(f, has_aux=True)(u, 3.0)
    want, want_aux = jax.jacrev(f, has_aux=True)(u, 3.0)
    _close(got, want)
    np.testing.assert_allclose(aux["mean"], want_aux["mean"])


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_colored_plans_compose_with_vmap_grad_and_jacve(monkeypatch, mode):
    """A compressed program is ordinary JAX code: batched by ``vmap`` (the
    pattern, planned once per example shape, serves every example), and
    differentiated again by ``jax.grad`` and by an outer ``jacve``."""
    forced(monkeypatch, mode)
    batch = np.random.default_rng(3).normal(size=(3, 256))
    for fn, u in ((jacobi, batch[0]), (stencil, batch[0, :64])):
        assert _plan(trace.auto_graph(fn, u), "auto").mode == f"colored-{mode}"
    _close(jax.jit(jax.vmap(ccjax.jacve(jacobi)))(batch), jax.vmap(jax.jacrev(jacobi))(batch))
    batch = batch[:, :64]
    weight = np.linspace(-1.0, 1.0, 64 * 64).reshape(64, 64)
    loss = lambda jac: lambda u: jnp.sum(weight * jac(stencil)(u) ** 2)
    _close(jax.grad(loss(ccjax.jacve))(batch[0]), jax.grad(loss(jax.jacrev))(batch[0]))
    _close(ccjax.jacve(ccjax.jacve(stencil))(batch[1, :12]), jax.hessian(stencil)(batch[1, :12]))


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_colored_count_is_what_the_program_multiplies(mode):
    u = np.linspace(0.1, 1.0, 256)
    g = trace.auto_graph(jacobi, u)
    plan = plan_colored(g, plan_elimination(g, resolve_order(g, "auto")), mode)
    assert plan is not None and plan.coloring.count == 8  # 7 diagonals; 256 = 8 * 32, so cyclic
    run = jax_modes.jacobian_program(g, plan)
    primal = traced_mults(g, lambda i, c: g.program.as_written.evaluate(i, c, differentiable=True))
    assert plan.report.mults == traced_mults(g, run) - primal
    assert plan.report.mults == Counter(g).mode_mults(mode, plan.coloring.count)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from(["fwd", "rev"]))
def test_colored_plans_of_random_functions_are_exact(seed, mode):
    shapes = [(6,), (3, 2)]
    fn = random_function(seed, shapes, n_ops=10)
    args = random_inputs(seed, shapes)
    argnums = tuple(range(len(args)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trace, "_graphs", trace._LRU(16))
        mp.setattr(ccjax.api, "cheapest", lambda g, plan: (
            mode in jax_modes.plain_modes(g) and plan_colored(g, plan, mode)) or plan)
        got = jax.jit(ccjax.jacve(fn, argnums=argnums))(*args)
        sparse = ccjax.jacve(fn, argnums=argnums, output="sparse")(*args)
    want = jax.jacrev(fn, argnums=argnums)(*args)
    _close(got, want)
    _close(sparse, want)


def test_a_full_row_or_column_compresses_nothing():
    pat = Pattern((), np.array([0, 0, 0, 1]), np.array([0, 1, 2, 1]), (2, 3))
    assert coloring(pat, "fwd") is None  # row 0 reads every column
    assert coloring(pat, "rev") is None  # both rows read column 1
    diagonal = Pattern((), np.arange(3), np.arange(3), (3, 3))
    assert coloring(diagonal, "fwd").count == coloring(diagonal, "rev").count == 1


def damped_fixed_point(x):
    """Damped steps towards ``y = cos(y) + x``, the damping picked by a
    ``cond`` on the residual's norm: entries never meet, but the loop's
    local Jacobian is dense."""
    def body(i, y):
        r = jnp.cos(y) + x - y
        return lax.cond(jnp.linalg.norm(r) > 1.0, lambda: y + 0.3 * r, lambda: y + 0.8 * r)

    return lax.fori_loop(0, 30, body, x)


def test_auto_pushes_one_seed_where_entries_never_meet():
    """A diagonal Jacobian: one seed gives every entry."""
    x = np.linspace(-1.0, 1.0, 512)
    plan = _plan(trace.auto_graph(damped_fixed_point, x), "auto")
    assert plan.mode.startswith("colored-") and plan.coloring.count == 1
    _close(jax.jit(ccjax.jacve(damped_fixed_point))(x), jax.jacrev(damped_fixed_point)(x))


@pytest.mark.parametrize("fn, x", [
    (lambda u: jnp.sum(stencil(u) ** 2), np.linspace(-1.0, 1.0, 64)),  # a gradient
    (lambda t: stencil(jnp.sin(t * jnp.arange(64.0))), 0.3),  # a curve
])
def test_one_seed_already_is_not_compressed(monkeypatch, fn, x):
    """A gradient (a curve) is one cotangent (tangent): no pattern is probed."""
    monkeypatch.setattr(trace, "_graphs", trace._LRU(16))

    def no_pattern(*_):
        raise AssertionError("the pattern was built")

    monkeypatch.setattr(jax_modes, "pattern", no_pattern)
    plan = _plan(trace.auto_graph(fn, x), "auto")
    assert plan.coloring is None
    _close(jax.jit(ccjax.jacve(fn))(x), jax.jacrev(fn)(x))


def test_auto_keeps_the_elimination_where_the_scattered_write_costs_more():
    """``logsumexp`` of each row: one cotangent pulls back every entry, but
    scattering its 4,096 entries into the dense block weighs more than the
    elimination's few multiplications."""
    x = np.arange(64 * 64, dtype=float).reshape(64, 64) / 500
    g = trace.auto_graph(rows_logsumexp, x)
    elimination = plan_elimination(g, resolve_order(g, "auto"))
    assert plan_colored(g, elimination, "rev").coloring.count == 1
    assert _plan(g, "auto").mode == "eliminate"


def test_plain_modes_run_the_loops_as_written(monkeypatch):
    """A short scan enters the graph unrolled, but JAX's modes run the
    program with the loop as the function wrote it."""
    u = np.linspace(0.0, 1.0, 300)
    g = ccjax.graph(jacobi, u)
    assert g.program.rolled is not None
    assert not any(node.name == "scan" for node in g.program.nodes)
    assert any(node.name == "scan" for node in g.program.as_written.nodes)
    monkeypatch.setattr(trace, "_graphs", trace._LRU(16))
    monkeypatch.setattr(ccjax.api, "cheapest", lambda g, plan: jax_modes.plan_jax_mode(g, "fwd"))
    jaxpr = jax.make_jaxpr(ccjax.jacve(jacobi))(u)
    assert "scan" in str(jaxpr) or "while" in str(jaxpr)
    np.testing.assert_allclose(ccjax.jacve(jacobi)(u), jax.jacrev(jacobi)(u), rtol=1e-12, atol=1e-14)
    counter = Counter(g)
    assert counter.as_written is not counter
    assert counter.mode_mults("fwd") == jax_modes.traced_mode_mults(g, "fwd")


@pytest.mark.parametrize("mode,peer", [("fwd", jax.jacfwd), ("rev", jax.jacrev)])
def test_a_nan_stays_in_structural_nonzeros_where_jax_has_nan_too(monkeypatch, mode, peer):
    """The README's NaN rule for compressed seeds: a structural zero is
    exactly 0; a NaN partial spreads as in JAX's mode over the seeds, so
    NaN only where ``jax.jacfwd`` (``jax.jacrev``) has NaN too."""
    forced(monkeypatch, mode)
    u = np.linspace(0.1, 1.0, 256)
    u[3] = np.nan
    got = np.asarray(jax.jit(ccjax.jacve(jacobi))(u))
    g = trace.auto_graph(jacobi, u)
    pat = pattern(g, plan_elimination(g, resolve_order(g, "auto")))
    structural = np.zeros(got.shape, bool)
    structural[pat.rows, pat.cols] = True
    assert np.isnan(got).any()
    assert np.all(got[~structural] == 0)
    assert not np.any(np.isnan(got) & ~np.isnan(np.asarray(peer(jacobi)(u))))


def test_sparse_output_stores_no_more_than_the_elimination(monkeypatch):
    """A compressed mode's pattern skips the structural-zero probe where that
    would compile; the sparse output then comes from the elimination, whose
    probe leaves the zeros out."""
    monkeypatch.setattr(trace, "_graphs", trace._LRU(16))
    x = np.linspace(0.1, 1.0, 256)
    g = trace.auto_graph(jacobi, x)
    elimination = plan_elimination(g, resolve_order(g, "auto"))
    colored = plan_colored(g, elimination, "fwd")
    loose = Pattern(colored.coloring.pattern.blocks, np.concatenate([colored.coloring.pattern.rows, [0]]),
                    np.concatenate([colored.coloring.pattern.cols, [128]]), colored.coloring.pattern.shape)
    padded = dataclasses.replace(colored, coloring=dataclasses.replace(colored.coloring, pattern=loose))
    monkeypatch.setattr(ccjax.api, "cheapest", lambda g, plan: padded)
    assert _plan(g, "auto", "sparse").mode == "eliminate"
    monkeypatch.setattr(ccjax.api, "cheapest", lambda g, plan: colored)
    g.plans.clear()
    assert _plan(g, "auto", "sparse") is colored
