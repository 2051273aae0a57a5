"""Every partial-Jacobian rule of ccjax against ``jax.jacrev`` in float64.

Each case runs ``ccjax.jacve`` under the named orders ("fwd", "rev",
"markowitz", "auto") and two seeded random permutations of
``graph.eliminable`` (see ``conftest.check_orders``).  Shapes are small and
square where square shapes could confuse axis bookkeeping.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import ccjax
from conftest import assert_jac_equal, check_orders

R = np.random.default_rng(0)


def rand(*shape, lo=-1.0, hi=1.0, seed=None):
    r = R if seed is None else np.random.default_rng(seed)
    return jnp.asarray(r.uniform(lo, hi, size=shape), dtype=jnp.float64)


SQ = (3, 3)

# --------------------------------------------------------------------------
# unary elementwise
# --------------------------------------------------------------------------
# name -> (function, (lo, hi) domain for inputs)
UNARY = {
    "exp": (jnp.exp, (-1, 1)),
    "log": (jnp.log, (0.2, 2)),
    "log1p": (jnp.log1p, (-0.5, 1)),
    "expm1": (jnp.expm1, (-1, 1)),
    "sin": (jnp.sin, (-2, 2)),
    "cos": (jnp.cos, (-2, 2)),
    "tan": (jnp.tan, (-1, 1)),
    "asin": (jnp.arcsin, (-0.9, 0.9)),
    "acos": (jnp.arccos, (-0.9, 0.9)),
    "atan": (jnp.arctan, (-2, 2)),
    "sinh": (jnp.sinh, (-1, 1)),
    "cosh": (jnp.cosh, (-1, 1)),
    "tanh": (jnp.tanh, (-1, 1)),
    "asinh": (jnp.arcsinh, (-2, 2)),
    "acosh": (jnp.arccosh, (1.2, 3)),
    "atanh": (jnp.arctanh, (-0.9, 0.9)),
    "sqrt": (jnp.sqrt, (0.2, 2)),
    "rsqrt": (lax.rsqrt, (0.2, 2)),
    "cbrt": (jnp.cbrt, (0.2, 2)),
    "cbrt_neg": (jnp.cbrt, (-2, -0.2)),
    "sigmoid": (jax.nn.sigmoid, (-2, 2)),
    "logistic": (lax.logistic, (-2, 2)),
    "erf": (lax.erf, (-1, 1)),
    "abs": (jnp.abs, (-1, 1)),
    "sign": (jnp.sign, (-1, 1)),
    "neg": (jnp.negative, (-1, 1)),
    "integer_pow3": (lambda x: x ** 3, (-1, 1)),
    "integer_pow_neg2": (lambda x: x ** -2, (0.3, 2)),
    "integer_pow0": (lambda x: lax.integer_pow(x, 0), (-1, 1)),
    "square": (jnp.square, (-1, 1)),
    "relu": (jax.nn.relu, (-1, 1)),
    "gelu": (jax.nn.gelu, (-1, 1)),
    "sinc": (jnp.sinc, (-1, 1)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name):
    """op alone, and op inside a small graph so that orders really differ."""
    fn, (lo, hi) = UNARY[name]
    x = rand(*SQ, lo=lo, hi=hi)
    check_orders(lambda x: (fn(x), jnp.cos(fn(x)) * x + fn(x)), x)


def test_unary_scalar_input():
    check_orders(lambda x: jnp.tanh(jnp.exp(jnp.sin(x))), jnp.float64(0.3))


@pytest.mark.parametrize("fn", [jnp.abs, jnp.sign, jax.nn.relu, jnp.floor],
                         ids=["abs", "sign", "relu", "floor"])
def test_unary_at_zero(fn):
    """Values exactly at 0 (non-smooth points): follow jax's convention."""
    x = jnp.array([-1.0, 0.0, 2.0])
    want = jax.jacrev(fn)(x)
    for o in ["fwd", "rev", "markowitz", "auto"]:
        got = ccjax.jacve(fn, order=o)(x)
        assert_jac_equal(got, want, what=f"order={o}")


def test_relu_at_zero_composed():
    x = jnp.array([[-1.0, 0.0, 2.0], [0.0, 0.5, -0.5], [1.0, 0.0, 0.0]])
    check_orders(lambda x: jax.nn.relu(x) @ x, x)


# --------------------------------------------------------------------------
# binary elementwise with broadcasting
# --------------------------------------------------------------------------
BINARY = {
    "add": jnp.add,
    "sub": jnp.subtract,
    "mul": jnp.multiply,
    "div": jnp.divide,
    "pow": jnp.power,
    "maximum": jnp.maximum,
    "minimum": jnp.minimum,
    "atan2": jnp.arctan2,
    "rem": jnp.fmod,
}
SHAPE_PAIRS = [((3, 3), (3, 3)), ((3, 1), (1, 4)), ((), (3,)), ((3,), ()), ((2, 1, 3), (2, 4, 1))]


def _binary_inputs(name, sa, sb, seed):
    if name in ("pow", "div", "rem", "atan2"):
        a = rand(*sa, lo=0.5, hi=2.0, seed=seed)
        b = rand(*sb, lo=0.5, hi=2.0, seed=seed + 1)
        if name == "rem":
            b = b * 0.37
    else:
        a = rand(*sa, seed=seed)
        b = rand(*sb, seed=seed + 1)
    return a, b


@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_broadcast(name, shapes):
    fn = BINARY[name]
    a, b = _binary_inputs(name, shapes[0], shapes[1], seed=7)
    check_orders(fn, a, b, argnums=(0, 1), n_random=1)


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_composed(name):
    """Inside a graph; one operand differentiated; Python scalars on either side."""
    fn = BINARY[name]
    a, b = _binary_inputs(name, SQ, SQ, seed=3)
    check_orders(lambda a, b: jnp.sin(fn(jnp.exp(a), b)) * a + fn(b, a), a, b, argnums=(0, 1))
    a, b = _binary_inputs(name, (3, 1), (1, 3), seed=11)
    check_orders(lambda a, b: (fn(a, b), fn(b, a) * b), a, b, argnums=1, n_random=1)
    x = rand(*SQ, lo=0.5, hi=2.0)
    check_orders(lambda x: fn(x, 1.5) + fn(2.5, x), x, n_random=1)


@pytest.mark.parametrize("fn", [jnp.maximum, jnp.minimum], ids=["maximum", "minimum"])
def test_max_min_exact_ties(fn):
    a = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [0.0, 0.0, 1.0]])
    b = jnp.array([[1.0, 1.0, 4.0], [0.5, -1.0, 3.0], [0.0, 1.0, 1.0]])
    check_orders(fn, a, b, argnums=(0, 1))
    check_orders(lambda a, b: jnp.exp(fn(a, b)) * a, a, b, argnums=(0, 1))
    # tie with a broadcast scalar
    check_orders(lambda a: fn(a, 1.0), a)


def test_pow_negative_base_integer_exponent():
    x = jnp.array([-1.5, -0.5, 2.0])
    check_orders(lambda x: x ** 2.0, x)
    check_orders(lambda x: jnp.power(x, 3), x)


def test_pow_both_depend_on_x():
    x = rand(*SQ, lo=0.5, hi=2.0)
    check_orders(lambda x: x ** x, x)
    check_orders(lambda x: jnp.power(jnp.exp(x), jnp.sin(x)), x)


# --------------------------------------------------------------------------
# repeated operands (defect: a variable used twice by one equation lost a partial)
# --------------------------------------------------------------------------
REPEATED = {
    "x*x": lambda x: x * x,
    "x+x": lambda x: x + x,
    "x-x": lambda x: x - x,
    "x/x": lambda x: x / x,
    "x**x": lambda x: x ** x,
    "max(x,x)": lambda x: jnp.maximum(x, x),
    "min(x,x)": lambda x: jnp.minimum(x, x),
    "atan2(x,x)": lambda x: jnp.arctan2(x, x),
    "x@x": lambda x: x @ x,
    "x@x.T": lambda x: x @ x.T,
    "x.T@x": lambda x: x.T @ x,
    "dot(v,v)": lambda x: jnp.dot(x[0], x[0]),
    "dot(x,x)": lambda x: jnp.dot(x, x),
    "outer(v,v)": lambda x: jnp.outer(x[1], x[1]),
    "einsum_ij_ij": lambda x: jnp.einsum("ij,ij->", x, x),
    "einsum_ij_jk": lambda x: jnp.einsum("ij,jk->ik", x, x),
    "einsum_ij_ji": lambda x: jnp.einsum("ij,ji->ij", x, x),
    "concat(x,x)": lambda x: jnp.concatenate([x, x], axis=1),
    "stack(x,x)": lambda x: jnp.stack([x, x.T]),
    "where(c,x,x)": lambda x: jnp.where(x > 0, x, x),
    "where(c,x,-x)": lambda x: jnp.where(x > 0, x, -x),
    "x*x*x": lambda x: x * x * x,
    "sin(x)*sin(x)": lambda x: jnp.sin(x) * jnp.sin(x),
    "y*y": lambda x: (lambda y: y * y)(jnp.sin(x)),
    "y@y": lambda x: (lambda y: y @ y)(jnp.tanh(x)),
    "x+x.T": lambda x: x + x.T,
    "x*x.T": lambda x: x * x.T,
    "dus(x,x[:1])": lambda x: lax.dynamic_update_slice(x, x[:1] * 2.0, (2, 0)),
    "pad(x,x00)": lambda x: lax.pad(x, x[0, 0], [(1, 0, 0), (0, 1, 0)]),
    "clamp(x,x,x)": lambda x: lax.clamp(x, x, x),
}


@pytest.mark.parametrize("name", list(REPEATED))
def test_repeated_operands(name):
    x = rand(*SQ, lo=0.3, hi=1.5) * jnp.array([1.0, -1.0, 1.0])
    if name in ("x/x", "x**x"):
        x = jnp.abs(x)
    check_orders(REPEATED[name], x)


def test_repeated_operands_scalar():
    x = jnp.float64(0.7)
    check_orders(lambda x: x * x + x - x / x, x)


# --------------------------------------------------------------------------
# square shapes: Kronecker deltas must be paired by axis, not by axis size
# --------------------------------------------------------------------------
SQUARE_CASES = {
    "bcast_sum_axis1": lambda x: jnp.sum(x[:, None, :] * x[None, :, :], axis=1),
    "bcast_sum_axis02": lambda x: jnp.sum(x[:, :, None] * x[None, :, :], axis=(0, 2)),
    "T@T": lambda x: (x.T @ x.T).T @ x,
    "reshape_T": lambda x: x.reshape(9).reshape(3, 3).T * x,
    "bcast_axis0_vs_1": lambda x: jnp.broadcast_to(x[0], (3, 3)) * jnp.broadcast_to(x[0][:, None], (3, 3)).T,
    "sum_keepdims_T": lambda x: jnp.sum(x, 0, keepdims=True).T * x,
    "chain": lambda x: jnp.tanh(jnp.tanh(x @ x.T) @ x) @ x.T,
    "diag": lambda x: jnp.diag(jnp.diag(x)) @ x,
    "trace_chain": lambda x: jnp.trace(x @ x) * x,
    "cumsum_T": lambda x: jnp.cumsum(x.T, axis=0) * x,
    "max_axis0_axis1": lambda x: jnp.max(x @ x, axis=0) * jnp.max(x, axis=1),
    "prod_T": lambda x: jnp.prod(x.T, axis=0) * jnp.prod(x, axis=0),
    "gather_T": lambda x: x[jnp.array([2, 0, 1])][:, jnp.array([1, 2, 0])].T,
    "concat_T": lambda x: jnp.concatenate([x, x.T], 0) @ x,
    "pad_T": lambda x: jnp.pad(x, ((0, 1), (1, 0))).T[:3, :3] * x,
    "dus_T": lambda x: lax.dynamic_update_slice(x, x.T[:2], (1, 0)) @ x,
    "scatter_T": lambda x: x.at[jnp.array([0, 0, 2])].add(x.T) @ x,
    "rev_sum": lambda x: jnp.sum(x[::-1] * x, axis=1),
    "select_T": lambda x: lax.select(jnp.sum(x) > 0, x, x.T),
    "clip_chain": lambda x: jnp.clip(x @ x, -0.2, 0.2) @ x,
    "einsum_ijk_kji": lambda x: jnp.einsum("ijk,kji->ij", x[None] * x[:, None], x[:, :, None] * x),
    "transpose3_sum": lambda x: jnp.sum(jnp.transpose(x[None] * x[:, :, None], (2, 0, 1)) * x, axis=1),
}


@pytest.mark.parametrize("name", list(SQUARE_CASES))
def test_square_shapes(name):
    x = rand(*SQ, seed=88)
    check_orders(SQUARE_CASES[name], x, n_random=2)


# --------------------------------------------------------------------------
# select / where / clamp
# --------------------------------------------------------------------------
def test_where_two_inputs():
    x, y = rand(*SQ, seed=1), rand(*SQ, seed=2)
    check_orders(lambda x, y: jnp.where(x > 0, x, y), x, y, argnums=(0, 1))
    check_orders(lambda x, y: jnp.where(x > y, jnp.sin(x) * y, jnp.exp(y)), x, y, argnums=(0, 1))


def test_where_broadcast_branches():
    x = rand(3, 4, seed=3)
    check_orders(lambda x: jnp.where(x > 0, x ** 2, 0.5), x)
    check_orders(lambda x: jnp.where(x.sum(0) > 0, x, x[0]), x)


def test_select_n_three_cases():
    x = rand(*SQ, seed=4)
    which = jnp.array([[0, 1, 2], [2, 1, 0], [1, 1, 2]], dtype=jnp.int32)
    check_orders(lambda x: lax.select_n(which, x, jnp.sin(x), x * x), x)
    pred = x > 0
    check_orders(lambda x: lax.select_n(pred, jnp.cos(x), x), x)


def test_clip_constant_bounds_with_ties():
    x = jnp.array([[-0.5, 0.0, 0.5], [1.0, -1.0, 0.25], [0.5, 0.5, -0.5]])
    check_orders(lambda x: jnp.clip(x, -0.5, 0.5), x)
    check_orders(lambda x: jnp.sin(jnp.clip(x, -0.5, 0.5)) * x, x)


def test_clamp_all_operands_differentiated():
    lo, x, hi = rand(*SQ, lo=-1, hi=-0.2, seed=5), rand(*SQ, lo=-1.5, hi=1.5, seed=6), rand(*SQ, lo=0.2, hi=1, seed=7)
    check_orders(lax.clamp, lo, x, hi, argnums=(0, 1, 2))
    # scalar bounds, differentiated (lax.clamp with a scalar bound is not differentiable in jax
    # itself, so go through jnp.clip)
    check_orders(lambda lo, x: jnp.clip(x, lo, 0.5), jnp.float64(-0.3), x, argnums=(0, 1))


# --------------------------------------------------------------------------
# reductions
# --------------------------------------------------------------------------
RED_AXES = [None, 1, (0, 2)]


@pytest.mark.parametrize("axis", RED_AXES, ids=str)
@pytest.mark.parametrize("red", ["sum", "max", "min", "prod"])
def test_reductions(red, axis):
    fn = getattr(jnp, red)
    x = rand(3, 3, 3, lo=0.2, hi=1.5, seed=8)
    check_orders(lambda x: (fn(x, axis=axis), fn(jnp.sin(x), axis=axis, keepdims=True) * 2.0), x, n_random=1)


def test_mean():
    x = rand(3, 3, 3, seed=8)
    check_orders(lambda x: (jnp.mean(x, axis=(0, 2)), jnp.mean(x, axis=1, keepdims=True)), x)


def test_reduce_square_axes():
    """Square input: reducing axis 0 vs axis 1 must not be confused."""
    x = rand(*SQ, seed=9)
    check_orders(lambda x: jnp.sin(jnp.sum(x, axis=0)) * jnp.sum(x, axis=1), x)
    check_orders(lambda x: jnp.sum(x, axis=0)[:, None] * x, x)


def test_max_with_ties():
    x = jnp.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [-1.0, 0.0, -1.0]])
    for ax in (None, 0, 1):
        check_orders(lambda x: jnp.max(x, axis=ax), x)
        check_orders(lambda x: jnp.min(x, axis=ax), x)
    check_orders(lambda x: jnp.max(jnp.sin(x) * x), x)


def test_prod_with_zeros():
    one_zero = jnp.array([[1.5, 0.0, 2.0], [0.5, 3.0, -1.0], [2.0, 2.0, 0.5]])
    two_zeros = jnp.array([[0.0, 0.0, 2.0], [0.5, 0.0, -1.0], [2.0, 2.0, 0.5]])
    for x in (one_zero, two_zeros):
        for ax in (None, 0, 1):
            check_orders(lambda x: jnp.prod(x, axis=ax), x)
        check_orders(lambda x: jnp.prod(jnp.sin(x), axis=1) * x[:, 0], x)


def test_logsumexp_softmax():
    x = rand(*SQ, seed=10)
    check_orders(jax.nn.logsumexp, x)
    check_orders(lambda x: jax.nn.logsumexp(x, axis=1), x)
    check_orders(lambda x: jax.nn.softmax(x, axis=-1), x)
    check_orders(lambda x: jax.nn.softmax(x, axis=0), x)
    check_orders(lambda x: jax.nn.log_softmax(x), x)


def test_var_std_norm():
    x = rand(*SQ, seed=11)
    check_orders(lambda x: jnp.var(x, axis=1), x)
    check_orders(lambda x: jnp.std(x), x)
    check_orders(lambda x: jnp.linalg.norm(x, axis=0), x)


def test_argmax_index_integer_path():
    x = rand(*SQ, seed=12)
    check_orders(lambda x: x[jnp.argmax(x[:, 0])] * jnp.max(x), x)


# --------------------------------------------------------------------------
# shape ops
# --------------------------------------------------------------------------
def test_broadcast_to():
    v = rand(3, seed=13)
    check_orders(lambda v: jnp.broadcast_to(v, (3, 3)), v)
    check_orders(lambda v: jnp.broadcast_to(v[:, None], (3, 3)), v)
    check_orders(lambda v: jnp.broadcast_to(v, (2, 3, 3)) * jnp.arange(3.0), v)
    check_orders(lambda v: v[:, None] + v[None, :], v)
    check_orders(lambda v: v[:, None] * v[None, :], v)
    s = jnp.float64(0.4)
    check_orders(lambda s: jnp.broadcast_to(s, (2, 3)) * jnp.sin(s), s)


RESHAPES = [((6, 4), (4, 6)), ((2, 3), (3, 2)), ((2, 3, 4), (6, 4)), ((2, 3, 4), (24,)),
            ((4, 6), (2, 2, 6)), ((3, 3), (9,)), ((9,), (3, 3)), ((2, 2, 2), (4, 2)), ((1, 3), (3, 1))]


@pytest.mark.parametrize("src,dst", RESHAPES, ids=lambda s: "x".join(map(str, s)))
def test_reshape(src, dst):
    x = rand(*src, seed=14)
    check_orders(lambda x: x.reshape(dst), x, n_random=1)
    check_orders(lambda x: jnp.sin(x.reshape(dst)) * x.reshape(dst), x, n_random=1)


def test_reshape_roundtrip_square():
    x = rand(2, 3, seed=15)
    check_orders(lambda x: jnp.tanh(x.reshape(3, 2)).reshape(2, 3) * x, x)
    check_orders(lambda x: x.reshape(3, 2) @ x, x)
    check_orders(lambda x: x.ravel() * jnp.arange(6.0), x)
    check_orders(lambda x: x.flatten()[::-1], x)


def test_squeeze_expand_dims():
    x = rand(3, 1, 3, seed=16)
    check_orders(lambda x: jnp.squeeze(x), x)
    check_orders(lambda x: jnp.squeeze(x, axis=1) * 2.0, x)
    check_orders(lambda x: jnp.expand_dims(jnp.squeeze(x, 1), 0), x)
    check_orders(lambda x: jnp.expand_dims(x, (0, 3)) + 1.0, x)


@pytest.mark.parametrize("perm", [(1, 0, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1), (2, 1, 0)], ids=str)
def test_transpose_3d(perm):
    x = rand(3, 3, 3, seed=17)
    check_orders(lambda x: jnp.transpose(x, perm), x)
    check_orders(lambda x: jnp.transpose(jnp.sin(x), perm) * x, x)


def test_transpose_square():
    x = rand(*SQ, seed=18)
    check_orders(lambda x: x.T, x)
    check_orders(lambda x: jnp.exp(x.T) * x, x)
    check_orders(lambda x: jnp.einsum("ij->ji", x), x)
    y = rand(2, 3, seed=19)
    check_orders(lambda y: y.T @ y, y)


def test_slicing_with_steps():
    x = rand(6, 5, seed=20)
    check_orders(lambda x: x[::2], x)
    check_orders(lambda x: x[1:5:2, ::3], x)
    check_orders(lambda x: x[::-1, 1:4], x)
    check_orders(lambda x: x[1], x)
    check_orders(lambda x: x[:, -1] * x[2], x[:, :5][:5])
    check_orders(lambda x: lax.slice(x, (1, 0), (5, 5), (3, 2)), x)
    check_orders(lambda x: x[2:4, 1:3] @ x[0:2, 3:5], x)


def test_dynamic_slice():
    x = rand(5, 4, seed=21)
    check_orders(lambda x: lax.dynamic_slice(x, (1, 2), (2, 2)), x)
    i = jnp.int32(3)
    check_orders(lambda x: lax.dynamic_slice(x, (i, jnp.int32(0)), (2, 4)) * 2.0, x)
    # out-of-bounds start gets clamped
    check_orders(lambda x: lax.dynamic_slice(x, (4, 3), (2, 2)), x)
    check_orders(lambda x: lax.dynamic_slice_in_dim(jnp.sin(x), 1, 3, axis=1), x)
    # index computed from the (differentiated) input
    check_orders(lambda x: lax.dynamic_slice(x, (jnp.argmax(x[:, 0]), jnp.int64(0)), (1, 4)), x)


def test_dynamic_update_slice():
    x, y = rand(4, 4, seed=22), rand(2, 3, seed=23)
    check_orders(lambda x, y: lax.dynamic_update_slice(x, y, (1, 0)), x, y, argnums=(0, 1))
    check_orders(lambda x, y: lax.dynamic_update_slice(x, y, (3, 3)), x, y, argnums=(0, 1))  # clamped
    check_orders(lambda x, y: jnp.sin(lax.dynamic_update_slice(x * y[0, 0], jnp.exp(y), (2, 1))),
                 x, y, argnums=(0, 1))
    check_orders(lambda x, y: lax.dynamic_update_slice(x, y, (1, 1)), x, y, argnums=1)


def test_concatenate():
    x, y = rand(2, 3, seed=24), rand(3, 3, seed=25)
    check_orders(lambda x, y: jnp.concatenate([x, y]), x, y, argnums=(0, 1))
    check_orders(lambda x, y: jnp.concatenate([x.T, y, jnp.sin(y)], axis=1), x, y, argnums=(0, 1))
    check_orders(lambda x, y: jnp.concatenate([x, jnp.ones((1, 3)), y]) * 2.0, x, y, argnums=(0, 1))
    check_orders(lambda x, y: jnp.stack([y, y.T, y * y], axis=1), x, y, argnums=1)


def test_pad():
    x = rand(3, 3, seed=26)
    check_orders(lambda x: jnp.pad(x, ((1, 2), (0, 1))), x)
    check_orders(lambda x: jnp.pad(x, 1, constant_values=2.0) * jnp.sin(jnp.pad(x, 1)), x)
    check_orders(lambda x: jnp.pad(x, ((1, 1), (2, 0)), mode="edge"), x)
    check_orders(lambda x: jnp.pad(x, ((1, 1), (1, 1)), mode="reflect"), x)
    # negative and interior padding
    check_orders(lambda x: lax.pad(x, 0.0, [(1, -1, 0), (-1, 2, 1)]), x)
    check_orders(lambda x: lax.pad(x, 0.0, [(0, 0, 2), (-2, -1, 0)]), x)
    check_orders(lambda x: lax.pad(x, 0.0, [(-1, -1, 1), (1, 1, 1)]) @ jnp.ones((7, 2)), x)
    # differentiated padding value
    p = jnp.float64(0.7)
    check_orders(lambda x, p: lax.pad(x, p, [(1, 0, 1), (0, 1, 0)]), x, p, argnums=(0, 1))


def test_flip():
    x = rand(3, 3, seed=27)
    check_orders(lambda x: jnp.flip(x), x)
    check_orders(lambda x: jnp.flip(x, axis=0), x)
    check_orders(lambda x: jnp.flip(x, axis=1) * x, x)
    check_orders(lambda x: lax.rev(jnp.exp(x), (0, 1)) @ x, x)
    check_orders(lambda x: x[::-1, ::-1] + x.T, x)


def test_split():
    x = rand(6, 3, seed=28)
    check_orders(lambda x: jnp.split(x, 3), x)
    check_orders(lambda x: jnp.split(x, [1, 4]), x)
    check_orders(lambda x: jnp.split(x, 3, axis=1), x)
    check_orders(lambda x: (lambda a, b: a * jnp.sin(b))(*jnp.split(x, 2)), x)
    check_orders(lambda x: tuple(jnp.split(x.T, [2], axis=1)), x)


def test_gather():
    x = rand(4, 4, seed=29)
    idx = jnp.array([0, 2, 2, 3])
    check_orders(lambda x: x[idx], x)
    check_orders(lambda x: x[:, idx], x)
    check_orders(lambda x: jnp.take(x, idx, axis=1), x)
    check_orders(lambda x: jnp.take(x, idx), x)  # flattened
    check_orders(lambda x: x[idx, idx[::-1]], x)
    check_orders(lambda x: x[jnp.array([0, -1])], x)
    check_orders(lambda x: jnp.take_along_axis(x, jnp.argsort(x, axis=1), axis=1), x)
    check_orders(lambda x: jnp.sin(x[idx]) @ x, x)
    check_orders(lambda x: jnp.diagonal(x) * jnp.trace(x), x)
    v = rand(5, seed=30)
    check_orders(lambda v: v[jnp.array([[0, 1], [4, 4]])], v)


def test_scatter_add():
    x, y = rand(4, 3, seed=31), rand(3, 3, seed=32)
    idx = jnp.array([0, 2, 3])
    rep = jnp.array([1, 1, 1])
    check_orders(lambda x, y: x.at[idx].add(y), x, y, argnums=(0, 1))
    check_orders(lambda x, y: x.at[rep].add(y), x, y, argnums=(0, 1))
    check_orders(lambda x, y: jnp.sin(x.at[rep].add(y * y)), x, y, argnums=(0, 1))
    y4 = rand(4, 3, seed=30)
    check_orders(lambda x, y: x.at[:, jnp.array([0, 0, 2])].add(y), x, y4, argnums=(0, 1))
    check_orders(lambda y: jnp.zeros((4, 3)).at[rep].add(y), y)
    v = rand(5, seed=33)
    check_orders(lambda v: v.at[jnp.array([0, 0, 4])].add(v[1:4]), v)


def test_scatter_set_mul_minmax():
    x, y = rand(4, 3, seed=34), rand(2, 3, seed=35)
    idx = jnp.array([3, 1])
    check_orders(lambda x, y: x.at[idx].set(y), x, y, argnums=(0, 1))
    check_orders(lambda x, y: x.at[idx].set(jnp.exp(y)) * x, x, y, argnums=(0, 1))
    check_orders(lambda x, y: x.at[idx].mul(y, unique_indices=True), x, y, argnums=(0, 1))
    check_orders(lambda x, y: x.at[idx].max(y), x, y, argnums=(0, 1))
    check_orders(lambda x, y: x.at[idx].min(y), x, y, argnums=(0, 1))
    check_orders(lambda x: x.at[1, 2].set(0.0) + x.at[0].multiply(3.0), x)


def test_segment_sum():
    x = rand(6, 2, seed=36)
    seg = jnp.array([0, 0, 1, 2, 2, 2])
    check_orders(lambda x: jax.ops.segment_sum(jnp.sin(x), seg, num_segments=3), x)


# --------------------------------------------------------------------------
# dot_general
# --------------------------------------------------------------------------
def test_dot_matmul():
    a, b = rand(3, 4, seed=37), rand(4, 2, seed=38)
    check_orders(lambda a, b: a @ b, a, b, argnums=(0, 1))
    check_orders(lambda a, b: jnp.tanh(a @ b) @ b.T, a, b, argnums=(0, 1))
    check_orders(lambda a, b: a @ b, a, b, argnums=1)


def test_dot_matrix_vector_and_vector_vector():
    a, v, w = rand(3, 4, seed=39), rand(4, seed=40), rand(4, seed=41)
    check_orders(jnp.dot, a, v, argnums=(0, 1))
    check_orders(lambda v, a: jnp.dot(v[:3], a), v, a, argnums=(0, 1))
    check_orders(jnp.dot, v, w, argnums=(0, 1))
    check_orders(jnp.inner, v, w, argnums=(0, 1))
    check_orders(jnp.outer, v, w, argnums=(0, 1))
    check_orders(jnp.vdot, v, w, argnums=(0, 1))


def test_dot_square_everything():
    a, b = rand(*SQ, seed=42), rand(*SQ, seed=43)
    check_orders(lambda a, b: a @ b, a, b, argnums=(0, 1))
    check_orders(lambda a, b: a.T @ b, a, b, argnums=(0, 1))
    check_orders(lambda a, b: a @ b.T, a, b, argnums=(0, 1))
    check_orders(lambda a, b: (a @ b) @ a, a, b, argnums=(0, 1))
    check_orders(lambda a: a @ a @ a, a)
    check_orders(lambda a: jnp.linalg.matrix_power(a, 4), a)


def test_einsum_batch():
    x, y = rand(2, 3, 3, seed=44), rand(2, 3, 3, seed=45)
    check_orders(lambda x, y: jnp.einsum("bij,bjk->bik", x, y), x, y, argnums=(0, 1))
    check_orders(lambda x, y: jnp.einsum("bij,bkj->bik", x, y), x, y, argnums=(0, 1))
    check_orders(lambda x, y: jnp.einsum("bij,bik->bjk", x, y), x, y, argnums=(0, 1))
    check_orders(lambda x: jnp.einsum("bij,bjk->bik", x, x), x)
    check_orders(lambda x, y: jnp.einsum("bij,cjk->bcik", x, y), x, y, argnums=(0, 1))
    check_orders(lambda x: jnp.einsum("iij->ij", x[0][None].repeat(3, 0)), x)
    z = rand(2, 3, 4, seed=46)
    w = rand(2, 4, 3, seed=47)
    check_orders(lambda z, w: jnp.einsum("bij,bjk->bik", z, w), z, w, argnums=(0, 1))
    check_orders(lambda z, w: jnp.matmul(z, w), z, w, argnums=(0, 1))


def test_tensordot_and_dot_general_direct():
    x, y = rand(2, 3, 4, seed=48), rand(4, 3, 2, seed=49)
    check_orders(lambda x, y: jnp.tensordot(x, y, axes=([1, 2], [1, 0])), x, y, argnums=(0, 1))
    dims = (((2,), (0,)), ((), ()))
    check_orders(lambda x, y: lax.dot_general(x, y, dims), x, y, argnums=(0, 1))
    x2, y2 = rand(3, 2, 4, seed=50), rand(3, 4, 2, seed=51)
    dims = (((2,), (1,)), ((0,), (0,)))
    check_orders(lambda x, y: lax.dot_general(x, y, dims), x2, y2, argnums=(0, 1))


# --------------------------------------------------------------------------
# scans: cumsum / cumprod / cummax
# --------------------------------------------------------------------------
def test_cumsum():
    x = rand(3, 4, seed=52)
    check_orders(lambda x: jnp.cumsum(x), x)
    check_orders(lambda x: jnp.cumsum(x, axis=0), x)
    check_orders(lambda x: jnp.cumsum(x, axis=1) * x, x)
    check_orders(lambda x: lax.cumsum(x, axis=1, reverse=True), x)
    check_orders(lambda x: lax.cumsum(jnp.sin(x), axis=0, reverse=True), x)
    s = rand(3, 3, seed=53)
    check_orders(lambda s: jnp.cumsum(s, axis=0) @ jnp.cumsum(s, axis=1), s)


def test_cumprod():
    x = rand(3, 4, lo=0.5, hi=1.5, seed=54)
    check_orders(lambda x: jnp.cumprod(x, axis=1), x)
    check_orders(lambda x: jnp.cumprod(x), x)
    check_orders(lambda x: lax.cumprod(x, axis=0, reverse=True), x)
    z = x.at[1, 1].set(0.0)
    check_orders(lambda x: jnp.cumprod(x, axis=1), z)


def test_cummax_cumlogsumexp():
    x = rand(3, 4, seed=55)
    check_orders(lambda x: lax.cummax(x, axis=1), x)
    check_orders(lambda x: lax.cummin(x, axis=0), x)
    check_orders(lambda x: lax.cumlogsumexp(x, axis=1), x)


# --------------------------------------------------------------------------
# dtype conversion, stop_gradient, iota, comparisons, integer ops
# --------------------------------------------------------------------------
def test_convert_element_type_f32_f64():
    x = rand(3, 3, seed=56)
    check_orders(lambda x: x.astype(jnp.float32).astype(jnp.float64) * x, x, rtol=1e-6, atol=1e-6)
    check_orders(lambda x: jnp.sin(x.astype(jnp.float32)), x, rtol=1e-5, atol=1e-6)
    x32 = x.astype(jnp.float32)
    check_orders(lambda x: jnp.exp(x.astype(jnp.float64)), x32, rtol=1e-6, atol=1e-6)
    check_orders(lambda x: x.astype(jnp.float64) * jnp.float64(2.0), x32, rtol=1e-6, atol=1e-6)


def test_stop_gradient():
    x = rand(3, 3, seed=57)
    check_orders(lambda x: lax.stop_gradient(x) * x, x)
    check_orders(lambda x: lax.stop_gradient(jnp.sin(x)) @ jnp.sin(x), x)
    check_orders(lambda x: lax.stop_gradient(x), x)
    check_orders(lambda x: x - lax.stop_gradient(x) + jnp.tanh(x), x)


def test_iota():
    x = rand(3, 3, seed=58)
    check_orders(lambda x: jnp.arange(3.0) * x, x)
    check_orders(lambda x: x @ jnp.arange(9.0).reshape(3, 3) + jnp.eye(3) * x, x)
    check_orders(lambda x: lax.broadcasted_iota(jnp.float64, (3, 3), 1) * jnp.sin(x), x)


def test_comparisons_and_integer_ops():
    x = rand(3, 3, lo=-2, hi=2, seed=59)
    check_orders(lambda x: (x > 0).astype(x.dtype) * x, x)
    check_orders(lambda x: jnp.floor(x) * x + jnp.ceil(x) + jnp.round(x), x)
    check_orders(lambda x: x.astype(jnp.int32).astype(x.dtype) + x, x)
    check_orders(lambda x: (x.astype(jnp.int32) * 3 + 1).astype(x.dtype) * jnp.sin(x), x)
    check_orders(lambda x: jnp.where(jnp.isfinite(x) & (x < 1), x, 0.0), x)
    check_orders(lambda x: jnp.sign(x) * x, x)
    check_orders(lambda x: jnp.argmax(x, axis=1).astype(x.dtype) + x[:, 0], x)


def test_zero_derivative_only():
    x = rand(3, 3, seed=60)
    check_orders(lambda x: jnp.floor(x), x)
    check_orders(lambda x: (x > 0).astype(x.dtype), x)


# --------------------------------------------------------------------------
# custom_jvp / custom_vjp
# --------------------------------------------------------------------------
@jax.custom_jvp
def triple_tangent(x):
    return jnp.sin(x)


@triple_tangent.defjvp
def _triple_tangent_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return triple_tangent(x), 3.0 * t


@jax.custom_jvp
def two_arg(x, y):
    return x * y


@two_arg.defjvp
def _two_arg_jvp(primals, tangents):
    (x, y), (tx, ty) = primals, tangents
    # deliberately not the true derivative
    return two_arg(x, y), 2.0 * tx + jnp.cos(x) * ty


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def scaled(x, k):
    return x * k


@scaled.defjvp
def _scaled_jvp(k, primals, tangents):
    (x,), (t,) = primals, tangents
    return scaled(x, k), t * (k + 1.0)


def test_custom_jvp_follows_custom_rule():
    x = rand(3, 3, seed=61)
    want = jax.jacrev(triple_tangent)(x)
    np.testing.assert_allclose(np.asarray(want).reshape(9, 9), 3.0 * np.eye(9))  # sanity
    check_orders(triple_tangent, x)
    check_orders(lambda x: triple_tangent(jnp.exp(x)) * x, x)
    check_orders(lambda x: triple_tangent(x) @ triple_tangent(x.T), x)


def test_custom_jvp_two_args_and_nondiff():
    x, y = rand(3, seed=62), rand(3, seed=63)
    check_orders(two_arg, x, y, argnums=(0, 1))
    check_orders(two_arg, x, y, argnums=1)
    check_orders(lambda x, y: jnp.sin(two_arg(x, y * y)), x, y, argnums=(0, 1))
    check_orders(lambda x: scaled(x, 2.0) * x, x)


def test_custom_jvp_scalar_and_jnp_builtins():
    x = jnp.float64(0.4)
    check_orders(lambda x: triple_tangent(x) * x, x)
    v = jnp.array([-1.0, 0.0, 0.0, 2.0])
    check_orders(lambda v: jax.nn.relu(v) * jnp.sinc(v) + jax.nn.softplus(v), v)


def _make_custom_jvp(k):
    @jax.custom_jvp
    def f(x):
        return jnp.sin(x)

    f.defjvp(lambda p, t: (f(p[0]), k * t[0]))
    return f


def test_custom_jvp_two_rules_same_primal():
    """Two custom_jvp functions with identical primals but different rules
    (both alive) must not share a cached graph."""
    x = rand(3, seed=90)
    fs = [_make_custom_jvp(1.0), _make_custom_jvp(2.0), _make_custom_jvp(-3.0)]
    for f in fs:
        check_orders(f, x, n_random=0)
        check_orders(lambda x: f(x) * x, x, n_random=1)


def test_custom_jvp_rule_closure_constant():
    """The rule closes over an array constant that changes between calls."""
    x = rand(3, seed=91)
    for c in (1.0, 2.0, 3.0):
        cc = jnp.full((3,), c)

        @jax.custom_jvp
        def f(x):
            return jnp.sin(x) * cc

        f.defjvp(lambda p, t: (f(p[0]), cc * jnp.cos(p[0]) * t[0]))
        check_orders(f, x, n_random=0)


@jax.custom_vjp
def vjp_half(x):
    return jnp.sin(x)


def _vjp_half_fwd(x):
    return jnp.sin(x), x


def _vjp_half_bwd(x, g):
    return (0.5 * g * x,)  # deliberately not cos(x)


vjp_half.defvjp(_vjp_half_fwd, _vjp_half_bwd)


@jax.custom_vjp
def vjp_clip_grad(x, y):
    return x * y


def _vcg_fwd(x, y):
    return x * y, (x, y)


def _vcg_bwd(res, g):
    x, y = res
    return 0.5 * g * y + g, g * x  # linear in g, deliberately not the true derivative


vjp_clip_grad.defvjp(_vcg_fwd, _vcg_bwd)


def test_custom_vjp():
    x = rand(3, 3, seed=64)
    check_orders(vjp_half, x)
    check_orders(lambda x: vjp_half(jnp.exp(x)) * x, x)
    y = rand(3, 3, seed=65) * 3.0
    check_orders(vjp_clip_grad, x, y, argnums=(0, 1))
    check_orders(lambda x, y: jnp.tanh(vjp_clip_grad(x, y)) @ x, x, y, argnums=(0, 1))


# --------------------------------------------------------------------------
# control flow
# --------------------------------------------------------------------------
def test_cond():
    x = rand(3, 3, seed=66)

    def f(x):
        return lax.cond(x.sum() > 0, lambda z: jnp.sin(z) * z, lambda z: jnp.exp(z) @ z, x)

    check_orders(f, x)
    check_orders(f, -x - 1.0)

    def g(x, y):
        return lax.cond(y[0, 0] > 0, lambda a, b: a * b, lambda a, b: a + b, x, y) + y

    check_orders(g, x, x.T, argnums=(0, 1))


def test_switch():
    x = rand(3, seed=67)
    branches = [lambda z: jnp.sin(z), lambda z: z * z, lambda z: jnp.cumsum(z)]
    for i in range(3):
        check_orders(lambda x: lax.switch(i, branches, x) * x, x)


def test_scan():
    x = rand(3, seed=68)
    ws = rand(4, 3, seed=69)

    def f(x, ws):
        def body(c, w):
            c = jnp.tanh(c * w + c[::-1])
            return c, jnp.sum(c * c)
        c, ys = lax.scan(body, x, ws)
        return c, ys

    check_orders(f, x, ws, argnums=(0, 1))
    check_orders(f, x, ws, argnums=1)

    def g(x):
        return lax.scan(lambda c, _: (c @ x, c.sum()), jnp.eye(3), None, length=3)

    check_orders(g, rand(3, 3, seed=70))

    def h(x):  # reverse scan
        return lax.scan(lambda c, xi: (c * xi + 1.0, c), 1.0, x, reverse=True)

    check_orders(h, x)


def test_fori_loop_static_trip_count():
    x = rand(3, seed=71)
    check_orders(lambda x: lax.fori_loop(0, 4, lambda i, c: jnp.sin(c) * x + i, x), x)
    check_orders(lambda x: lax.fori_loop(0, 3, lambda i, c: c @ jnp.outer(x, x) * 0.5, x), x)


def test_while_loop_against_jacfwd():
    x = rand(3, lo=0.5, hi=1.0, seed=72)

    def f(x):
        def cond(c):
            return c[1] < 5

        def body(c):
            return jnp.sin(c[0]) * x + c[0], c[1] + 1

        return lax.while_loop(cond, body, (x, 0))[0]

    check_orders(f, x, reference=jax.jacfwd)

    def g(x):  # data-dependent trip count
        return lax.while_loop(lambda c: jnp.sum(c) < 10.0, lambda c: c * 1.5, x)

    check_orders(g, x, reference=jax.jacfwd)

    def h(x):
        return lax.fori_loop(0, jnp.int32(x.shape[0]) + jnp.int32(x[0] > 10), lambda i, c: c * c, x)

    check_orders(h, x, reference=jax.jacfwd)


# --------------------------------------------------------------------------
# sorting, jit / checkpoint inside, misc
# --------------------------------------------------------------------------
def test_sort():
    x = rand(3, 4, seed=73)
    check_orders(jnp.sort, x)
    check_orders(lambda x: jnp.sort(x, axis=0), x)
    check_orders(lambda x: jnp.sort(jnp.sin(x).ravel()) * x.ravel(), x)
    ties = jnp.array([[1.0, 0.5, 1.0], [0.0, 0.0, 2.0], [3.0, 1.0, 3.0]])
    check_orders(jnp.sort, ties)
    check_orders(lambda x: x[jnp.argsort(x[:, 0])], x)
    v = rand(5, seed=74)
    check_orders(lambda v: lax.sort((v, v * v), num_keys=1)[1], v)
    check_orders(lambda v: jnp.sort(v)[::-1][:3], v)


def test_jit_inside():
    x = rand(3, 3, seed=75)
    inner = jax.jit(lambda z: jnp.sin(z) @ z)
    check_orders(lambda x: inner(x) * x, x)
    check_orders(lambda x: jax.jit(lambda a, b: a * b + jnp.exp(b))(x, x.T), x)

    @jax.jit
    def nested(z):
        return jax.jit(jnp.tanh)(z) * jax.jit(lambda w: w ** 2)(z)

    check_orders(nested, x)


def test_jit_inside_with_closure_const():
    x = rand(3, 3, seed=76)
    c = jnp.asarray(np.arange(9.0).reshape(3, 3))
    check_orders(lambda x: jax.jit(lambda z: z @ c + c)(x), x)


def test_checkpoint_inside():
    x = rand(3, 3, seed=77)
    g = jax.checkpoint(lambda z: jnp.sin(jnp.sin(z)) @ z)
    check_orders(lambda x: g(x) * x, x)
    policy = jax.checkpoint_policies.nothing_saveable
    h = jax.checkpoint(lambda z: jnp.exp(z) * z.T, policy=policy)
    check_orders(lambda x: h(jnp.tanh(x)), x)


def test_misc_nn_ops():
    x = rand(3, 3, seed=78)
    check_orders(lambda x: jax.nn.standardize(x, axis=-1), x)
    check_orders(lambda x: jax.nn.one_hot(jnp.argmax(x, 1), 3) * x, x)
    check_orders(lambda x: jnp.linalg.det(x), x)
    check_orders(lambda x: jnp.triu(x) + jnp.tril(x.T, -1), x)
    check_orders(lambda x: jnp.roll(x, 1, axis=0) * jnp.tile(x[0], (3, 1)), x)
    check_orders(lambda x: jnp.repeat(x, 2, axis=1), x)
    check_orders(lambda x: jnp.kron(x[:2, :2], x[1:, 1:]), x)


def test_linalg_inv_solve():
    x = rand(3, 3, seed=78)
    check_orders(lambda x: jnp.linalg.inv(x + 3 * jnp.eye(3)), x, n_random=1)
    check_orders(lambda x, b: jnp.linalg.solve(x + 3 * jnp.eye(3), b), x, x[0], argnums=(0, 1), n_random=1)


def test_small_mlp_square_weights():
    """A two-layer net with square weights, layer norm and softmax cross entropy."""
    x = rand(4, seed=79)
    w1, w2 = rand(4, 4, seed=80), rand(4, 4, seed=81)
    y = jax.nn.one_hot(2, 4)

    def f(x, w1, w2):
        h = jnp.tanh(w1 @ x)
        h = (h - h.mean()) / jnp.sqrt(h.var() + 1e-5)
        logits = jnp.tanh(w2 @ h)
        return -jnp.sum(y * jax.nn.log_softmax(logits))

    check_orders(f, x, w1, w2, argnums=(0, 1, 2), n_random=2)
    check_orders(jax.vmap(f, in_axes=(0, None, None)), jnp.stack([x, x * 2]), w1, w2, argnums=(0, 1, 2),
                 n_random=1)


def test_attention_block():
    x = rand(3, 3, seed=82)
    wq, wk, wv = rand(3, 3, seed=83), rand(3, 3, seed=84), rand(3, 3, seed=85)

    def f(x, wq, wk, wv):
        q, k, v = x @ wq, x @ wk, x @ wv
        a = jax.nn.softmax(q @ k.T / jnp.sqrt(3.0), axis=-1)
        return a @ v + x

    check_orders(f, x, wq, wk, wv, argnums=(0, 1, 2, 3), n_random=2)


# --------------------------------------------------------------------------
# property tests (kept small; the big random-function tests live elsewhere)
# --------------------------------------------------------------------------
_UNARY_SAFE = [jnp.sin, jnp.cos, jnp.tanh, jnp.exp, lambda z: z * z, jnp.arctan, jax.nn.sigmoid,
               lambda z: -z, jnp.sinh]
_BINARY_SAFE = [jnp.add, jnp.subtract, jnp.multiply, lambda a, b: a * jnp.cos(b), jnp.maximum]


@settings(max_examples=20, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, len(_UNARY_SAFE) - 1), st.integers(0, len(_BINARY_SAFE) - 1),
                              st.integers(0, 3)), min_size=1, max_size=5),
       seed=st.integers(0, 2 ** 16))
def test_property_random_elementwise_dag(ops, seed):
    """Random small DAGs of elementwise ops, reductions and transposes on (n, n)."""

    def f(x):
        vals = [x]
        for u, b, pick in ops:
            a = _UNARY_SAFE[u](vals[-1])
            other = vals[pick % len(vals)]
            if pick == 3:
                other = other.T
            elif pick == 2:
                other = jnp.sum(other, axis=0, keepdims=True)
            vals.append(_BINARY_SAFE[b](a, other) * 0.5)
        return vals[-1]

    x = jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, SQ))
    check_orders(f, x, n_random=1, seed=seed)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_property_any_permutation_is_exact(data):
    """Every permutation of eliminable vertices gives the same exact Jacobian."""
    x = rand(3, seed=86)
    w = rand(3, 3, seed=87)

    def f(x, w):
        h = jnp.tanh(w @ x)
        return jnp.sin(h) * x + jnp.sum(h * h) * (w.T @ h)

    g = ccjax.graph(f, x, w, argnums=(0, 1))
    perm = data.draw(st.permutations([int(v) for v in g.eliminable]))
    got = ccjax.jacve(f, argnums=(0, 1), order=perm)(x, w)
    assert_jac_equal(got, jax.jacrev(f, argnums=(0, 1))(x, w))
