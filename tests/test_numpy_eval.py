"""Programs run in NumPy (``ccjax.numpy_eval``) give what XLA gives.

Exact equations (moves of data, selections, integer arithmetic, one
floating-point operation per entry) must match XLA bit for bit: the graph
uses their results as constants.  Sums that may round in another order
(``dot_general``, ``reduce_sum``, a floating-point ``scatter-add``) run only
when not asked to be exact (the probe of structural zeros), and then agree
to rounding; anything else is refused (None), never guessed."""
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

jax.config.update("jax_enable_x64", True)

from ccjax.graph import run_in_numpy


def _both(fn, *args, exact=True):
    closed = jax.make_jaxpr(fn)(*args)
    runs = run_in_numpy(closed, [args], exact=exact)
    mine = None if runs is None else runs[0]
    theirs = jax.tree.leaves(jax.jit(fn)(*args))
    return mine, [np.asarray(t) for t in theirs]


def _assert_bitwise(mine, theirs):
    assert mine is not None
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("values", [np.arange(-3, 5, dtype=np.int32), np.linspace(-2.0, 3.0, 8)])
def test_constants_match_xla_bit_for_bit(values):
    fn = lambda v: (jnp.where(v > 0, v * 3 - 1, -v)[::-1], jnp.concatenate([v, v + 2]).reshape(2, 8).T,
                    (lax.broadcasted_iota(v.dtype, (3, 8), 1) + v) == 2, v / 4 if v.dtype.kind == "f" else v,
                    *jnp.split(v, [3]), v[1:7:2], jnp.sign(v), jnp.stack([v, -v], 1),
                    jnp.pad(v, (2, 1), constant_values=7), v[jnp.array([5, 0, 7, 7])])
    _assert_bitwise(*_both(fn, values))


def test_integer_division_and_remainder_truncate_toward_zero():
    a = np.array([-7, -6, -1, 0, 1, 6, 7, np.iinfo(np.int32).max], np.int32)
    b = np.array([2, -4, 3, -5, 2, -4, -3, 2], np.int32)
    _assert_bitwise(*_both(lambda a, b: (lax.div(a, b), lax.rem(a, b)), a, b))
    # XLA's own answers, not NumPy's: refused
    assert _both(lambda a, b: lax.div(a, b), a, np.zeros_like(b))[0] is None
    low = np.array([np.iinfo(np.int32).min], np.int32)
    assert _both(lambda a, b: lax.div(a, b), low, np.array([-1], np.int32))[0] is None


def test_float_to_integer_conversion_and_exact_complex_products_are_refused():
    assert _both(lambda x: x.astype(np.int32), np.array([1.5, np.nan]))[0] is None
    z = np.array([1.0 + 2.0j, -0.5 + 0.25j])
    assert _both(lambda z: z * z[::-1], z)[0] is None
    mine, theirs = _both(lambda z: z * z[::-1], z, exact=False)
    np.testing.assert_allclose(mine[0], theirs[0], rtol=1e-15)


def test_sums_that_may_round_run_only_when_inexact_is_allowed():
    rng = np.random.default_rng(0)
    A, B, v = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 4, 5)), rng.normal(size=(6, 3))
    fn = lambda A, B, v: (jnp.einsum("bij,bjk->bik", A, B), jnp.einsum("bij,bik->jbk", A, A), v.sum(0),
                          jnp.zeros(4).at[jnp.array([0, 3, 3, 1])].add(v[:4, 0]))
    assert _both(fn, A, B, v, exact=True)[0] is None
    mine, theirs = _both(fn, A, B, v, exact=False)
    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    ints = lambda i: (jnp.einsum("ij,jk->ik", i, i.T), i.sum(1), jnp.zeros(3, i.dtype).at[i[0] % 3].add(i[1]))
    _assert_bitwise(*_both(ints, np.arange(-6, 6, dtype=np.int32).reshape(3, 4)))


MODES = ["clip", "fill", "promise_in_bounds"]


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jex.core.jaxprs_in_params(eqn.params):
            yield from _equations(sub)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), mode=st.sampled_from(MODES),
       seed=st.integers(0, 2**16), width=st.integers(1, 3), lo=st.integers(-5, 0), hi=st.integers(0, 5))
def test_gathers_and_scatter_adds_match_xla(shape, mode, seed, width, lo, hi):
    """Integer and float gathers and scatter-adds, index arrays with indices
    out of bounds (each mode's own treatment), a window over the first axis
    (``dynamic_slice``-like gathers) and point indices."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-9, 9, size=shape).astype(np.int32)
    idx = rng.integers(lo - 1, shape[0] + hi, size=(width,)).astype(np.int32)
    lead = rng.integers(lo, shape[0] + hi, size=()).astype(np.int32)
    size = int(rng.integers(1, shape[0] + 1))
    upd = rng.integers(-9, 9, size=(width,) + tuple(shape[1:])).astype(np.int32)

    def fn(x, idx, lead, upd):
        picked = x.at[idx].get(mode=mode, fill_value=-1)
        window = lax.dynamic_slice_in_dim(x, lead, size, 0)
        written = lax.dynamic_update_slice_in_dim(x, -window, lead + 1, 0)
        added = x.at[idx].add(upd, mode=mode)
        point = x.reshape(-1).at[idx * 2].get(mode=mode)
        last = jnp.moveaxis(x, 0, -1)  # offset dimensions before the batch one
        picked_last = last.at[..., idx].get(mode=mode, fill_value=-1)
        added_last = last.at[..., idx].add(jnp.moveaxis(upd, 0, -1), mode=mode)
        pairs = x.at[idx, ..., idx % x.shape[-1]].get(mode=mode, fill_value=-1) if x.ndim > 1 else idx
        return picked, window, written, added, point, picked_last, added_last, pairs

    args = (x, np.where(idx < 0, idx, idx), lead, upd)
    if mode == "promise_in_bounds":  # jnp wraps negative indices first; keep them in bounds
        args = (x, np.clip(idx, 0, shape[0] - 1).astype(np.int32), lead, upd)
    _assert_bitwise(*_both(fn, *args))
    fx, fu = x.astype(np.float64), upd.astype(np.float64)
    mine, theirs = _both(fn, fx, args[1], lead, fu, exact=False)
    for a, b in zip(mine, theirs):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)  # small integers: every sum is exact


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), n=st.integers(1, 4), inner=st.integers(1, 3), mode=st.sampled_from(MODES),
       seed=st.integers(0, 2**16), width=st.integers(1, 3))
def test_gathers_and_scatter_adds_with_batching_dimensions_match_xla(batch, n, inner, mode, seed, width):
    """Batching dimensions (``vmap`` of a gather or scatter-add over operand
    and indices, ``take_along_axis``, and one after the indexed dimension):
    each batch reads and writes its own operand slice."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-9, 9, size=(batch, n, inner)).astype(np.int32)
    idx = rng.integers(-2, n + 2, size=(batch, width)).astype(np.int32)
    if mode == "promise_in_bounds":
        idx = np.clip(idx, 0, n - 1).astype(np.int32)
    upd = rng.integers(-9, 9, size=(batch, width, inner)).astype(np.int32)
    idx_last = rng.integers(-2, n + 2, size=(inner, width)).astype(np.int32)
    if mode == "promise_in_bounds":
        idx_last = np.clip(idx_last, 0, n - 1).astype(np.int32)
    idx_in = rng.integers(0, n, size=(batch, width)).astype(np.int32)

    def fn(x, idx, upd, idx_last, idx_in):
        picked = jax.vmap(lambda r, i: r.at[i].get(mode=mode, fill_value=-1))(x, idx)
        added = jax.vmap(lambda r, i, u: r.at[i].add(u, mode=mode))(x, idx, upd)
        # batched along the last axis, after the indexed one, with a window over the first
        dn = lax.GatherDimensionNumbers(offset_dims=(2,), collapsed_slice_dims=(1,), start_index_map=(1,),
                                        operand_batching_dims=(2,), start_indices_batching_dims=(0,))
        picked_last = lax.gather(x, idx_last[..., None], dn, (batch, 1, 1), mode=mode, fill_value=-1)
        along = jnp.take_along_axis(x, idx_in[..., None], axis=1)
        return picked, added, picked_last, along

    batched = {tuple(int(d) for d in eqn.params["dimension_numbers"].operand_batching_dims)
               for eqn in _equations(jax.make_jaxpr(fn)(x, idx, upd, idx_last, idx_in).jaxpr)
               if eqn.primitive.name in ("gather", "scatter-add")}
    assert {(0,), (2,)} <= batched
    _assert_bitwise(*_both(fn, x, idx, upd, idx_last, idx_in))
    mine, theirs = _both(fn, x.astype(np.float64), idx, upd.astype(np.float64), idx_last, idx_in, exact=False)
    for a, b in zip(mine, theirs):
        np.testing.assert_array_equal(a, b)
