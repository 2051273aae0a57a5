"""output="sparse" (BCOO blocks) and holomorphic=True against jax.jacrev."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ccjax
from ccjax.tasks import TASKS, random_function, random_input_shapes, random_inputs

ORDERS = ["fwd", "rev", "markowitz"]


def _is_bcoo(x):
    return isinstance(x, jax.experimental.sparse.BCOO)


def _compare_sparse(got, want):
    got_leaves = jax.tree_util.tree_leaves(got, is_leaf=_is_bcoo)
    want_leaves = jax.tree_util.tree_leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves):
        assert _is_bcoo(g)
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g.todense(), w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order", ORDERS)
def test_sparse_output_vmapped_task_is_batch_diagonal(order):
    task = TASKS["RoeFlux_1d"]
    f = jax.vmap(task.fn)
    args = task.batched_inputs(0, 5)
    got = jax.jit(ccjax.jacve(f, argnums=task.argnums, order=order, output="sparse"))(*args)
    _compare_sparse(got, jax.jacrev(f, argnums=task.argnums)(*args))
    # the batch diagonal stays symbolic: one stored entry per example
    assert all(b.nse == 5 for b in jax.tree_util.tree_leaves(got, is_leaf=_is_bcoo))


@pytest.mark.parametrize("seed", range(3000, 3008))
def test_sparse_output_random_functions(seed):
    shapes = random_input_shapes(seed)
    f = random_function(seed, shapes, n_ops=15)
    args = random_inputs(seed, shapes)
    argnums = tuple(range(len(shapes)))
    got = ccjax.jacve(f, argnums=argnums, order="markowitz", output="sparse")(*args)
    _compare_sparse(got, jax.jacrev(f, argnums=argnums)(*args))


def test_sparse_output_zero_and_identity_blocks():
    f = lambda x, y: {"id": x, "zero": jnp.sin(y), "mix": x * y.sum()}
    args = (jnp.arange(3.0), jnp.ones(2))
    _compare_sparse(ccjax.jacve(f, output="sparse")(*args), jax.jacrev(f)(*args))


def test_bad_output_layout():
    with pytest.raises(ValueError, match="output"):
        ccjax.jacve(jnp.sin, output="csr")


@pytest.mark.parametrize("order", ORDERS)
def test_holomorphic(order):
    w = jnp.array([[1 + 1j, 2.0], [0.5j, 1.0], [0.3, -1j]])
    f = lambda z: jnp.tanh(w @ z) * z.sum() + jnp.exp(z[0]) ** 2
    z = jnp.array([1 + 2j, 0.5 - 1j])
    got = ccjax.jacve(f, holomorphic=True, order=order)(z)
    want = jax.jacrev(f, holomorphic=True)(z)
    assert got.dtype == want.dtype == jnp.complex128
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_complex_input_needs_holomorphic():
    with pytest.raises(TypeError, match="holomorphic"):
        ccjax.jacve(jnp.sin)(jnp.array([1 + 1j]))
    with pytest.raises(TypeError, match="holomorphic"):
        ccjax.jacve(jnp.sin, holomorphic=True)(jnp.array([1.0]))
