"""BCOO matrix products inside ``f`` (``jax.experimental.sparse``).

``bcoo_dot_general`` is inlined as gather, product and scatter-add
(``ccjax.rules.sparse``): exact against ``jax.jacrev`` in every order, and
``output="sparse"`` stores the matrix's entries, not a dense block.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.experimental import sparse

import ccjax
from ccjax.rules.sparse import decomposition
from conftest import assert_jac_equal, check_orders


def _laplacian(n: int) -> sparse.BCOO:
    rows = np.concatenate([np.arange(n), np.arange(n - 1), np.arange(1, n)])
    cols = np.concatenate([np.arange(n), np.arange(1, n), np.arange(n - 1)])
    vals = np.concatenate([2.0 * np.ones(n), -np.ones(n - 1), -np.ones(n - 1)])
    return sparse.BCOO((jnp.asarray(vals), jnp.asarray(np.stack([rows, cols], 1))), shape=(n, n))


def _random_bcoo(rng, shape, nse, duplicates=False, padding=0) -> sparse.BCOO:
    idx = np.stack([rng.integers(0, s, nse) for s in shape], 1)
    if duplicates and nse > 1:
        idx[-1] = idx[0]
    if padding:  # BCOO pads with out-of-range indices (and zero data)
        idx = np.concatenate([idx, np.tile(np.asarray(shape), (padding, 1))])
    data = rng.normal(size=len(idx))
    data[nse:] = 0.0
    return sparse.BCOO((jnp.asarray(data), jnp.asarray(idx, np.int32)), shape=tuple(shape))


def test_laplacian_residual_is_exact_and_stores_the_matrix():
    A = _laplacian(64)
    u = np.random.default_rng(0).normal(size=64) * 0.1

    def residual(u):
        return A @ u + 0.1 * jnp.exp(u)

    check_orders(residual, u)
    want = np.asarray(jax.jacrev(residual)(u))
    for order in ("fwd", "rev", "markowitz", "auto"):
        out = jax.jit(ccjax.jacve(residual, order=order, output="sparse"))(u)
        np.testing.assert_allclose(np.asarray(out.todense()), want, rtol=1e-12, atol=1e-12)
        assert out.nse == np.count_nonzero(want) == 3 * 64 - 2, order
    # The product costs the matrix's entries, not a dense 64 x 64 block.
    assert ccjax.cost(residual, u, order="rev") <= 3 * 64


def test_matrix_values_depending_on_the_input():
    """``A(θ) @ x`` and ``Aᵀ @ x`` with respect to both the values and ``x``."""
    rng = np.random.default_rng(1)
    A = _random_bcoo(rng, (6, 5), 9)
    x = rng.normal(size=5)
    y = rng.normal(size=6)

    def f(theta, x):
        M = sparse.BCOO((jnp.sin(theta), A.indices), shape=A.shape)
        return jnp.tanh(M @ x) + (M.T @ y).sum()

    check_orders(f, rng.normal(size=9), x, argnums=(0, 1))


@pytest.mark.parametrize("case", ["matrix_rhs", "contract_rows", "vector_dot", "rhs_first_axis_free",
                                  "duplicates", "padding", "three_d"])
def test_product_layouts(case):
    rng = np.random.default_rng(2)
    if case == "matrix_rhs":
        A, x, f = _random_bcoo(rng, (5, 4), 7), rng.normal(size=(4, 3)), lambda A, x: A @ jnp.sin(x)
    elif case == "contract_rows":
        A, x = _random_bcoo(rng, (5, 4), 7), rng.normal(size=(5, 2))
        f = lambda A, x: sparse.bcoo_dot_general(A, x ** 2, dimension_numbers=(((0,), (0,)), ((), ())))
    elif case == "vector_dot":
        A, x = _random_bcoo(rng, (6,), 4), rng.normal(size=6)
        f = lambda A, x: sparse.bcoo_dot_general(A, jnp.cos(x), dimension_numbers=(((0,), (0,)), ((), ())))
    elif case == "rhs_first_axis_free":
        A, x = _random_bcoo(rng, (5, 4), 7), rng.normal(size=(3, 4))
        f = lambda A, x: sparse.bcoo_dot_general(A, x * x, dimension_numbers=(((1,), (1,)), ((), ())))
    elif case == "duplicates":
        A, x, f = _random_bcoo(rng, (5, 4), 7, duplicates=True), rng.normal(size=4), lambda A, x: A @ (x * x)
    elif case == "padding":
        A, x, f = _random_bcoo(rng, (5, 4), 6, padding=3), rng.normal(size=4), lambda A, x: A @ (x * x)
    else:
        A, x = _random_bcoo(rng, (3, 4, 5), 10), rng.normal(size=(5, 2))
        f = lambda A, x: sparse.bcoo_dot_general(A, jnp.exp(x), dimension_numbers=(((2,), (0,)), ((), ())))
    g = lambda x: f(A, x)
    want = jax.jacrev(g)(x)
    assert_jac_equal(ccjax.jacve(g)(x), want, rtol=1e-12, atol=1e-12)
    check_orders(g, x)
    out = ccjax.jacve(g, output="sparse")(x)
    np.testing.assert_allclose(np.asarray(out.todense()), np.asarray(want), rtol=1e-12, atol=1e-12)
    assert out.nse == np.count_nonzero(np.asarray(want))
    # the inlined product is the product
    np.testing.assert_allclose(np.asarray(jax.jit(g)(x)), np.asarray(g(x)), rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 6), nse=st.integers(1, 12), rhs_cols=st.integers(0, 2),
       seed=st.integers(0, 2 ** 16))
def test_random_bcoo_products_against_jacrev(rows, cols, nse, rhs_cols, seed):
    rng = np.random.default_rng(seed)
    A = _random_bcoo(rng, (rows, cols), nse, duplicates=bool(seed % 2), padding=seed % 3)
    x = rng.normal(size=(cols,) + ((rhs_cols,) if rhs_cols else ()))

    def f(x):
        return jnp.sin(A @ (x * x)) + (A @ x) ** 2

    want = jax.jacrev(f)(x)
    for order in ("fwd", "rev", "markowitz"):
        assert_jac_equal(ccjax.jacve(f, order=order)(x), want, rtol=1e-12, atol=1e-12, what=order)
    out = ccjax.jacve(f, output="sparse")(x)
    leaves = jax.tree_util.tree_leaves(out, is_leaf=lambda a: isinstance(a, sparse.BCOO))
    np.testing.assert_allclose(np.asarray(leaves[0].todense()), np.asarray(want), rtol=1e-12, atol=1e-12)
    assert leaves[0].nse == np.count_nonzero(np.asarray(want))  # the matrix's entries, not a dense block


def test_batched_layouts_stay_one_exact_opaque_equation():
    rng = np.random.default_rng(3)
    A = sparse.bcoo_fromdense(jnp.asarray(rng.normal(size=(2, 3, 4))), n_batch=1)
    x = rng.normal(size=4)
    eqn = [e for e in jax.make_jaxpr(lambda x: A @ x)(x).jaxpr.eqns if e.primitive.name == "bcoo_dot_general"][0]
    assert decomposition(eqn.primitive.name, eqn.params, [v.aval for v in eqn.invars]) is None
    check_orders(lambda x: jnp.tanh(A @ x), x)


def test_vmap_and_jit_over_the_jacobian():
    A = _laplacian(8)
    xs = np.random.default_rng(4).normal(size=(3, 8))
    f = lambda x: A @ jnp.sin(x)
    np.testing.assert_allclose(jax.jit(jax.vmap(ccjax.jacve(f)))(xs), jax.vmap(jax.jacrev(f))(xs),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rhs_shape", [(6,), (6, 2)])
def test_bcsr_products_with_empty_rows(rhs_shape):
    rng = np.random.default_rng(5)
    dense = rng.normal(size=(7, 6)) * (rng.random((7, 6)) < 0.3)
    dense[[0, 3, 6]] = 0.0  # empty first, middle and last rows
    A = sparse.BCSR.fromdense(jnp.asarray(dense))
    x = rng.normal(size=rhs_shape)
    f = lambda x: jnp.sin(A @ x) + A @ (x * x)
    check_orders(f, x)
    out = ccjax.jacve(f, output="sparse")(x)
    want = np.asarray(jax.jacrev(f)(x))
    np.testing.assert_allclose(np.asarray(out.todense()), want, rtol=1e-12, atol=1e-12)
    assert out.nse == np.count_nonzero(want)
