"""``cumprod``, ``cummax``, ``cummin`` and ``cumlogsumexp`` keep the axes
they do not scan as Kronecker pairs and store an ``n × n`` triangle per
lane (:mod:`ccjax.rules.reduction`), not a dense ``size × size`` block.
Exact in every order, jitted, under ``vmap`` and in the sparse output (the
triangles, which hold every nonzero); cost = executed multiplications."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

jax.config.update("jax_enable_x64", True)

from conftest import check_orders
from test_elimination import check_cost_is_executed

import ccjax

RNG = np.random.default_rng(9)
V = RNG.normal(size=10)
X = RNG.normal(size=(3, 5, 2))

PROGRAMS = {
    # name: (fn, argument, length of the scanned axis, the triangles' entries)
    "cumprod": (lambda x: jnp.cumprod(1.0 + 0.1 * x) * x, V, 10, 55),
    "cumprod_reversed_middle_axis": (lambda x: lax.cumprod(jnp.sin(x), axis=1, reverse=True), X, 5, 90),
    "cummax": (lambda x: lax.cummax(jnp.sin(x)) * x, V, 10, 55),
    "cummax_ties_both_ways": (lambda x: lax.cummax(jnp.round(2.0 * x) + x * 0.0) + lax.cummax(jnp.abs(x), reverse=True),
                              V, 10, 100),
    "cummin_first_axis": (lambda x: lax.cummin(x ** 2, axis=0), X, 3, 60),
    "cumlogsumexp_last_axis": (lambda x: lax.cumlogsumexp(x, axis=2), X, 2, 45),
    "cumlogsumexp_reversed": (lambda x: lax.cumlogsumexp(x * x, reverse=True), V, 10, 55),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_cumulative_partials_store_a_triangle_per_lane(name):
    fn, x, n, _ = PROGRAMS[name]
    g = ccjax.graph(fn, x)
    cumulative = [r.partial for r in g.raw if g.program.nodes[r.node].name.startswith("cum")]
    assert cumulative
    for partial in cumulative:  # (x.size / n) lanes of n x n, not x.size x x.size
        assert np.prod(partial.structure.val_shape) == x.size * n


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_cumulative_reductions_are_exact_in_every_order_and_cost_is_executed(name):
    fn, x, _, _ = PROGRAMS[name]
    check_orders(fn, x, n_random=3, rtol=1e-12, atol=1e-12)
    check_cost_is_executed(fn, (x,), seed=10, n_random=1)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_cumulative_reductions_jitted_vmapped_and_sparse(name):
    fn, x, _, triangles = PROGRAMS[name]
    want = np.asarray(jax.jacrev(fn)(x))
    np.testing.assert_allclose(jax.jit(ccjax.jacve(fn))(x), want, rtol=1e-12, atol=1e-12)
    batch = np.stack([x, 0.5 * x])
    np.testing.assert_allclose(jax.jit(jax.vmap(ccjax.jacve(fn)))(batch), jax.vmap(jax.jacrev(fn))(batch),
                               rtol=1e-12, atol=1e-12)
    got = jax.jit(ccjax.jacve(fn, output="sparse"))(x)
    np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(want) <= got.nse <= triangles
