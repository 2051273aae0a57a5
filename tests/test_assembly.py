"""Writing the Jacobian (ccjax.eliminate.dense_block): exact on random
structures, no multiplications, and each block one output computation."""
import re

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

jax.config.update("jax_enable_x64", True)

from counting import count_mults
from test_structure import shapes, structures

import ccjax
from ccjax.eliminate import dense_block
from ccjax.structure import to_dense


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_dense_block_matches_to_dense(data):
    out_shape, in_shape = data.draw(shapes()), data.draw(shapes())
    s, v = data.draw(structures(out_shape, in_shape))
    tag = data.draw(st.sampled_from([None, 0, 7]))
    want = np.asarray(to_dense(s, v, jnp.float64))
    got = dense_block(s, v, out_shape + in_shape, jnp.float64, tag=tag)
    assert got.shape == out_shape + in_shape and got.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(got), want)
    args = [] if v is None else [v]
    assert count_mults(lambda *a: dense_block(s, a[0] if a else None, out_shape + in_shape, jnp.float64, tag), *args) == 0


@pytest.mark.parametrize("shape", [(), (3,), (4, 1, 4, 2), (0, 3)])
@pytest.mark.parametrize("tag", [None, 0, 5])
def test_zero_block(shape, tag):
    got = dense_block(None, None, shape, jnp.float32, tag=tag)
    assert got.shape == shape and got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), 0)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU fusion decisions")
def test_blocks_are_written_once_without_copies():
    """Zero blocks, identity blocks and equal blocks of a vmapped function: each
    output gets its own fusion (no XLA `copy` of a shared block, no layout copy)."""

    def f(x, y, z):
        return x * y, x + z, jnp.stack([x * y, z])

    args = tuple(jnp.arange(1.0, 9.0).reshape(8, 1) + k for k in range(3))
    fn = jax.vmap(f)
    jac = jax.jit(ccjax.jacve(fn, argnums=(0, 1, 2)))
    want = jax.jacrev(fn, argnums=(0, 1, 2))(*args)
    for a, b in zip(jax.tree_util.tree_leaves(jac(*args)), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    text = jac.lower(*args).compile().as_text()
    entry = text[text.index("\nENTRY"):]
    # (A scalar copy is a loop counter of a scatter XLA runs as a loop.)
    assert not re.search(r"= \w+\[\d[^\]]*\]\S* copy\(", entry), "an output block is a copy of another"
