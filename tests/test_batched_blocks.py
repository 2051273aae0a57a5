"""Equations separable along a batch axis (``vmap`` of a solve, batched
factorizations) get block-diagonal partials: exact in every order, cost =
executed, one stored block per batch entry; and the analysis that proves
separability (``ccjax.rules.batching``) never claims it wrongly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

jax.config.update("jax_enable_x64", True)

from conftest import check_orders
from test_elimination import check_cost_is_executed

import ccjax
from ccjax.rules.batching import batch_axes

RNG = np.random.default_rng(3)
BATCH, N = 3, 4
MATS = RNG.normal(size=(BATCH, N, N)) + 3.0 * np.eye(N)
X = RNG.normal(size=(BATCH, N))


def _spd(a):
    return a @ jnp.swapaxes(a, -1, -2) + N * jnp.eye(N)


PROGRAMS = {
    # name: (fn, args, argnums)
    "vmap_solve": (lambda x: jax.vmap(jnp.linalg.solve)(MATS + jax.vmap(jnp.diag)(x ** 2), jnp.sin(x)), (X,), 0),
    "vmap_solve_matrix_and_rhs": (lambda a, b: jax.vmap(jnp.linalg.solve)(jnp.tanh(a) + 3.0 * jnp.eye(N), b * b),
                                  (MATS, X), (0, 1)),
    "vmap_inv": (lambda a: jax.vmap(jnp.linalg.inv)(a) * 2.0, (MATS,), 0),
    "batched_cholesky": (lambda a: jnp.linalg.cholesky(_spd(a)), (MATS,), 0),
    "batched_eigvalsh": (lambda a: jnp.linalg.eigvalsh(_spd(a)), (MATS,), 0),
    "batched_qr_r": (lambda a: jnp.linalg.qr(jnp.sin(a[:, :, :3]))[1], (MATS,), 0),
    "batched_fft_filter": (lambda x: jnp.fft.irfft(jnp.fft.rfft(jnp.tanh(x), axis=-1) * np.exp(-np.arange(5.0)),
                                                   n=8, axis=-1), (RNG.normal(size=(BATCH, 8)),), 0),
    "batched_triangular_matrix": (lambda a: lax.linalg.triangular_solve(jnp.tril(a) + 3.0 * jnp.eye(N),
                                                                         jnp.cos(a), left_side=True, lower=True),
                                  (MATS,), 0),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_batched_equations_are_exact_in_every_order_and_cost_is_executed(name):
    fn, args, argnums = PROGRAMS[name]
    check_orders(fn, *args, argnums=argnums, n_random=2, rtol=1e-10, atol=1e-11)
    check_cost_is_executed(fn, args, argnums, seed=1, n_random=1)


def _edges_of(fn, args, argnums):
    g = ccjax.graph(fn, *args, argnums=argnums)
    return g, [(src, dst, structure) for (src, dst), structure in g.edges.items()]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_batched_equations_store_one_block_per_batch_entry(name):
    """No partial of the program stores an entry across two batch entries,
    and the sparse Jacobian (jitted) equals ``jax.jacrev`` with every
    stored entry inside a block."""
    fn, args, argnums = PROGRAMS[name]
    g, edges = _edges_of(fn, args, argnums)
    for src, dst, structure in edges:
        out_size, in_size = np.prod(g.vertices[dst].shape), np.prod(g.vertices[src].shape)
        assert structure.nnz_values <= out_size * in_size // BATCH, (g.vertices[dst].label, structure)
    want = jax.jacrev(fn, argnums=argnums)(*args)
    sparse = jax.jit(ccjax.jacve(fn, argnums=argnums, output="sparse"))(*args)
    blocks = jax.tree_util.tree_leaves(sparse, is_leaf=lambda x: hasattr(x, "todense"))
    for block, w in zip(blocks, jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(block.todense()), w, rtol=1e-10, atol=1e-11)
        assert block.nse <= w.size // BATCH


def test_a_solve_that_mixes_batch_entries_keeps_its_dense_partial():
    """``custom_linear_solve`` with a matrix over all entries at once (its
    matrix product reshapes the batch away): the analysis refuses, and the
    cross-batch entries of the Jacobian are there."""
    big = RNG.normal(size=(BATCH * N, BATCH * N)) + 4.0 * np.eye(BATCH * N)

    def fn(x):
        matvec = lambda v: (big @ v.reshape(-1)).reshape(v.shape)
        solve = lambda _, r: jnp.linalg.solve(big, r.reshape(-1)).reshape(r.shape)
        transpose_solve = lambda _, r: jnp.linalg.solve(big.T, r.reshape(-1)).reshape(r.shape)
        return lax.custom_linear_solve(matvec, jnp.sin(x), solve, transpose_solve)

    want = jax.jacrev(fn)(X)
    assert np.count_nonzero(np.asarray(want)) > want.size // BATCH  # it does mix
    check_orders(fn, X, n_random=1, rtol=1e-10, atol=1e-11)
    sparse = jax.jit(ccjax.jacve(fn, output="sparse"))(X)
    np.testing.assert_allclose(np.asarray(sparse.todense()), want, rtol=1e-10, atol=1e-11)


def test_batched_solve_under_vmap_jit_and_grad():
    fn = PROGRAMS["vmap_solve"][0]
    xs = np.stack([X, np.cos(X)])
    np.testing.assert_allclose(jax.jit(jax.vmap(ccjax.jacve(fn)))(xs), jax.vmap(jax.jacrev(fn))(xs),
                               rtol=1e-10, atol=1e-11)
    loss = lambda x: jnp.sum(ccjax.jacve(fn)(x) ** 2)
    np.testing.assert_allclose(jax.grad(loss)(X), jax.grad(lambda x: jnp.sum(jax.jacrev(fn)(x) ** 2))(X),
                               rtol=1e-9, atol=1e-10)


# -- the analysis alone ----------------------------------------------------------------------------------


def _axes(fn, *args, in_axes):
    return batch_axes(jax.make_jaxpr(fn)(*args), in_axes)


def test_the_analysis_refuses_what_mixes_batch_entries():
    x, m = np.ones((3, 4)), np.ones((3, 3))
    assert _axes(lambda x: jnp.sin(x) * 2.0, x, in_axes=[0]) == [0]
    assert _axes(lambda x: x.T, x, in_axes=[0]) == [1]
    assert _axes(lambda x: x.sum(1), x, in_axes=[0]) == [0]
    assert _axes(lambda x: jnp.cumsum(x, 1), x, in_axes=[0]) == [0]
    assert _axes(lambda x: x @ np.ones((4, 2)), x, in_axes=[0]) == [0]
    assert _axes(lambda x: x.sum(0), x, in_axes=[0]) is None  # a reduction over the batch
    assert _axes(lambda x: jnp.cumsum(x, 0), x, in_axes=[0]) is None
    assert _axes(lambda x: m @ x, x, in_axes=[0]) is None  # a contraction over it
    assert _axes(lambda x: x[::-1], x, in_axes=[0]) is None  # entries read across it
    assert _axes(lambda x: x[np.array([2, 0, 1])], x, in_axes=[0]) is None
    assert _axes(lambda x: jnp.sort(x, axis=0), x, in_axes=[0]) is None
    assert _axes(lambda x: x.reshape(-1), x, in_axes=[0]) is None
    assert _axes(lambda x: jnp.fft.fft(x, axis=0), x, in_axes=[0]) is None
    assert _axes(lambda x: jnp.fft.fft(x, axis=1), x, in_axes=[0]) == [0]
    assert _axes(lambda x: jax.nn.relu(x), x, in_axes=[0]) is None  # a custom derivative: not ours to read
    assert _axes(lambda x: lax.fori_loop(0, 2, lambda i, c: c * 2.0, x), x, in_axes=[0]) is None


_OPS = ["sin", "transpose", "sum_last", "cumsum", "sort", "matmul_right", "contract", "concat", "reverse",
        "roll", "reshape_flat", "broadcast", "solve", "max_batch", "gather_rows", "reshape_unit", "tri_solve",
        "scale_by_position", "matmul_per_entry", "solve_shared"]


def _apply(op: str, x, k: int):
    """One operation on ``x`` (3-D), with a random parameter ``k``."""
    axis = k % x.ndim
    if op == "sin":
        return jnp.sin(x) * x
    if op == "transpose":
        return jnp.moveaxis(x, axis, -1)
    if op == "sum_last":
        return x.sum(axis, keepdims=True) + x
    if op == "cumsum":
        return jnp.cumsum(x, axis)
    if op == "sort":
        return jnp.sort(x, axis)
    if op == "matmul_right":
        return x @ jnp.ones((x.shape[-1], x.shape[-1])) / 3.0
    if op == "contract":
        return jnp.expand_dims(jnp.tensordot(x, jnp.linspace(0.5, 1.5, x.shape[axis]), axes=([axis], [0])),
                               axis) + x
    if op == "concat":
        return jnp.concatenate([x, 2.0 * x], axis)
    if op == "reverse":
        return jnp.flip(x, axis)
    if op == "roll":
        return jnp.roll(x, 1, axis)
    if op == "reshape_flat":
        return x.reshape(x.shape[0], -1).reshape(x.shape)
    if op == "broadcast":
        return jnp.broadcast_to(x[:, None], (x.shape[0], 2) + x.shape[1:]).sum(1)
    if op == "solve":
        if x.shape[-1] != x.shape[-2]:
            return x * x
        return jnp.linalg.solve(x @ jnp.swapaxes(x, -1, -2) + 3.0 * jnp.eye(x.shape[-1]), x)
    if op == "reshape_unit":  # a unit axis in and out again
        return (x.reshape(x.shape[:axis] + (1,) + x.shape[axis:]) * 2.0).reshape(x.shape)
    if op == "tri_solve":  # a fixed triangular matrix: rows mixed, columns (on the left) apart
        m = x.shape[-1] if k % 2 else x.shape[-2]
        low = np.broadcast_to(np.tril(np.ones((m, m))) + 2.0 * np.eye(m), x.shape[:-2] + (m, m))
        return lax.linalg.triangular_solve(low, x, left_side=not k % 2, lower=True)
    if op == "scale_by_position":  # entry by entry: separable, but a different factor per entry
        return x * (1.0 + np.arange(x.size).reshape(x.shape) / 7.0)
    if op == "matmul_per_entry":  # one matrix per leading entry
        return jnp.matmul(1.0 + np.arange(np.prod(x.shape[:-1]) * x.shape[-1]).reshape(
            x.shape[:-1] + (x.shape[-1],))[..., :x.shape[-2], :] / 9.0, x) if x.shape[-1] == x.shape[-2] else x * x
    if op == "solve_shared":  # one matrix for every column: jnp.linalg.solve with a matrix right-hand side
        m = x.shape[-2]
        return jnp.linalg.solve(np.eye(m) * 3.0 + np.arange(m * m).reshape(m, m) / (m * m), x)
    if op == "max_batch":
        return x - x.max(0, keepdims=True)
    if op == "gather_rows":
        return x[:, np.array([1, 0, 1])[:x.shape[1]]] if x.shape[1] >= 2 else x
    raise AssertionError(op)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_OPS), st.integers(0, 5)), min_size=1, max_size=4),
       st.integers(0, 2**16))
def test_the_analysis_never_claims_a_false_batch_axis(ops, seed):
    """Random programs of a batched input (3, 2, 2): wherever the analysis
    says output entry b along its axis reads only input entry b, the
    Jacobian (``jax.jacfwd``) has no entry across two batch entries."""
    x = np.random.default_rng(seed).normal(size=(3, 2, 2))

    def fn(x):
        for op, k in ops:
            x = _apply(op, x, k)
        return x

    found = _axes(fn, x, in_axes=[0])
    if found is None:
        return
    [k] = found
    out = np.asarray(jax.eval_shape(fn, x).shape)
    assert k is not None and out[k] == 3
    jac = np.moveaxis(np.asarray(jax.jacfwd(fn)(x)), k, 0)  # (3, out rest..., 3, 2, 2)
    for b in range(3):
        others = [c for c in range(3) if c != b]
        assert not np.any(jac[b][..., others, :, :]), (ops, b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_OPS), st.integers(0, 5)), min_size=1, max_size=4),
       st.integers(0, 2**16), st.integers(0, 2))
def test_the_uniform_analysis_never_claims_a_false_shared_map(ops, seed, axis):
    """Random programs of an input (3, 3, 3) batched along ``axis``:
    wherever ``uniform`` analysis says every batch entry is mapped by the
    same function, permuting the input's entries along the axis permutes
    the output's along its axis."""
    x = np.random.default_rng(seed).normal(size=(3, 3, 3))

    def fn(x):
        for op, k in ops:
            x = _apply(op, x, k)
        return x

    found = batch_axes(jax.make_jaxpr(fn)(x), [axis], uniform=True)
    if found is None:
        return
    assert found == _axes(fn, x, in_axes=[axis])  # uniform claims are separable claims
    [k] = found
    perm = np.array([2, 0, 1])
    np.testing.assert_allclose(fn(np.take(x, perm, axis)), np.take(np.asarray(fn(x)), perm, k), rtol=1e-10, atol=1e-12)


def test_the_uniform_analysis_tells_one_matrix_from_one_per_entry():
    x = np.ones((3, 4))
    m = np.arange(9.0).reshape(3, 3) + 3.0 * np.eye(3)
    assert batch_axes(jax.make_jaxpr(lambda x: m @ x)(x), [1], uniform=True) == [1]
    assert batch_axes(jax.make_jaxpr(lambda x: jnp.linalg.solve(m, x))(x), [1], uniform=True) == [1]
    assert batch_axes(jax.make_jaxpr(lambda x: x * np.arange(4.0))(x), [1], uniform=True) is None
    assert _axes(lambda x: x * np.arange(4.0), x, in_axes=[1]) == [1]  # separable all the same
    assert batch_axes(jax.make_jaxpr(lambda x: x * np.arange(3.0)[:, None])(x), [1], uniform=True) == [1]
    per_entry = np.stack([m, 2.0 * m, 3.0 * m, 4.0 * m])  # (4, 3, 3)
    solve_each = lambda x: jax.vmap(jnp.linalg.solve, in_axes=(0, 1), out_axes=1)(per_entry, x)
    assert _axes(solve_each, x, in_axes=[1]) == [1]
    assert batch_axes(jax.make_jaxpr(solve_each)(x), [1], uniform=True) is None


def test_a_batched_factorization_keeps_the_zeros_of_each_block():
    """The Cholesky rule's pattern of zeros, taken block by block: the
    batched sparse Jacobian stores what the per-matrix one stores, per matrix."""
    fn = PROGRAMS["batched_cholesky"][0]
    batched = jax.jit(ccjax.jacve(fn, output="sparse"))(MATS)
    single = jax.jit(ccjax.jacve(lambda a: fn(a[None])[0], output="sparse"))(MATS[0])
    dense_block = N * N * N * N
    assert batched.nse == BATCH * single.nse < BATCH * dense_block


@pytest.mark.parametrize("name", ["vmap_solve", "batched_cholesky", "batched_fft_filter"])
def test_second_derivatives_through_block_diagonal_partials(name):
    """The blocks' JVPs and VJPs are themselves differentiated (nested
    ``jacve``, ``jax.jacfwd`` of ``jacve``) as ``jax.jacfwd(jax.jacrev)``."""
    fn, (x,), _ = PROGRAMS[name]
    want = jax.jacfwd(jax.jacrev(fn))(x)
    np.testing.assert_allclose(jax.jit(ccjax.jacve(ccjax.jacve(fn)))(x), want, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(jax.jacfwd(ccjax.jacve(fn))(x), want, rtol=1e-10, atol=1e-11)
