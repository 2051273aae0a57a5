"""Call semantics of ``ccjax.jacve`` (identical to ``jax.jacrev``), composition
with JAX transforms, order validation, graphs, fingerprints and costs."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ccjax
from conftest import ORDERS, assert_jac_equal, check_orders, random_orders

x3 = jnp.array([0.3, -0.7, 1.1])
m33 = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (3, 3)))


def both(f, *args, argnums=0, order="auto", **kw):
    """(jacve, jacrev) results with the same arguments."""
    got = ccjax.jacve(f, argnums=argnums, order=order, **kw)(*args)
    want = jax.jacrev(f, argnums=argnums, **kw)(*args)
    return got, want


# --------------------------------------------------------------------------
# argnums
# --------------------------------------------------------------------------
def f3(x, y, z):
    return jnp.sin(x) * y[0] + jnp.sum(z) * x


ARGS3 = (x3, jnp.array([2.0, 0.5]), m33)


@pytest.mark.parametrize("argnums", [0, 1, 2, -1, -3, (0,), (1,), (0, 2), (2, 0), (-1, 0), (0, 1, 2)],
                         ids=str)
def test_argnums(argnums, order):
    got, want = both(f3, *ARGS3, argnums=argnums, order=order)
    assert_jac_equal(got, want)


def test_argnums_int_is_not_tuple():
    got = ccjax.jacve(f3, argnums=1)(*ARGS3)
    assert not isinstance(got, tuple)
    got = ccjax.jacve(f3, argnums=(1,))(*ARGS3)
    assert isinstance(got, tuple) and len(got) == 1


@pytest.mark.parametrize("argnums", [3, -4, (0, 3), 10])
def test_bad_argnums_out_of_range(argnums):
    with pytest.raises(ValueError):
        jax.jacrev(f3, argnums=argnums)(*ARGS3)
    with pytest.raises(ValueError):
        ccjax.jacve(f3, argnums=argnums)(*ARGS3)


@pytest.mark.parametrize("argnums", [1.0, "0", None])
def test_bad_argnums_type(argnums):
    with pytest.raises((TypeError, ValueError)):
        ccjax.jacve(f3, argnums=argnums)(*ARGS3)


def test_argnums_prunes_graph():
    """Vertices that depend only on non-differentiated arguments are not in the graph."""
    def f(x, y):
        yy = jnp.exp(jnp.sin(jnp.cos(y)))  # only depends on y
        return jnp.tanh(x) * jnp.sum(yy)

    g0 = ccjax.graph(f, x3, x3, argnums=0)
    g01 = ccjax.graph(f, x3, x3, argnums=(0, 1))
    assert len(g0.inputs) == 1 and len(g01.inputs) == 2
    assert len(g0.eliminable) < len(g01.eliminable)
    assert ccjax.cost(f, x3, x3, argnums=0, order="fwd") < ccjax.cost(f, x3, x3, argnums=(0, 1), order="fwd")


# --------------------------------------------------------------------------
# pytrees
# --------------------------------------------------------------------------
def test_pytree_dict_input_and_output(order):
    def f(p):
        return {"a": jnp.sin(p["w"]) @ p["b"], "s": jnp.sum(p["w"]) * p["b"][0]}

    p = {"w": m33, "b": x3}
    got, want = both(f, p, order=order)
    assert isinstance(got, dict) and isinstance(got["a"], dict)
    assert_jac_equal(got, want)


def test_pytree_nested_mixed(order):
    def f(args, scale):
        (a, [b, c]), d = args["t"], args["d"]
        out = {"x": (a * b, [jnp.sum(c) * d["k"]]), "y": jnp.exp(d["k"]) * scale}
        return out

    args = {"t": (x3, [x3 * 2, m33]), "d": {"k": jnp.float64(0.5)}}
    got, want = both(f, args, jnp.float64(2.0), argnums=(0, 1), order=order)
    assert_jac_equal(got, want)


def test_pytree_list_output_stays_list():
    got, want = both(lambda x: [x * 2, jnp.sin(x)], x3)
    assert isinstance(got, list)
    assert_jac_equal(got, want)


def test_pytree_namedtuple():
    from collections import namedtuple
    P = namedtuple("P", ["a", "b"])

    def f(p):
        return P(p.a * p.b, jnp.cos(p.a))

    got, want = both(f, P(x3, x3[::-1]))
    assert type(got).__name__ == "P"
    assert_jac_equal(got, want)


def test_pytree_with_none_leaves():
    def f(p):
        return {"y": p["x"] * 2.0, "n": None}

    got, want = both(f, {"x": x3, "unused": None})
    assert_jac_equal(got, want)


# --------------------------------------------------------------------------
# has_aux
# --------------------------------------------------------------------------
def test_has_aux(order):
    def f(x):
        y = jnp.sin(x)
        return y * x, {"y": y, "n": 3, "s": "label"}

    got, aux = ccjax.jacve(f, has_aux=True, order=order)(x3)
    want, aux_want = jax.jacrev(f, has_aux=True)(x3)
    assert_jac_equal(got, want)
    assert set(aux) == {"y", "n", "s"}
    np.testing.assert_allclose(aux["y"], aux_want["y"])
    assert aux["s"] == "label"
    assert int(aux["n"]) == 3


def test_has_aux_tuple_argnums_and_aux_depends_on_x():
    def f(x, y):
        return x * y, (x + y, jnp.sum(x))

    got, aux = ccjax.jacve(f, argnums=(0, 1), has_aux=True)(x3, x3 * 2)
    want, aux_want = jax.jacrev(f, argnums=(0, 1), has_aux=True)(x3, x3 * 2)
    assert_jac_equal(got, want)
    assert_jac_equal(aux, aux_want)


def test_has_aux_requires_pair():
    with pytest.raises(Exception):
        ccjax.jacve(lambda x: x * 2, has_aux=True)(x3)


# --------------------------------------------------------------------------
# scalar / identity / constant / duplicated / literal outputs
# --------------------------------------------------------------------------
def test_scalar_in_scalar_out(order):
    f = lambda x: jnp.sin(x) * jnp.exp(x)
    got, want = both(f, jnp.float64(0.3), order=order)
    assert_jac_equal(got, want)
    assert np.shape(got) == ()


def test_one_in_one_out_not_a_tuple():
    got = ccjax.jacve(lambda x: x * 2.0)(x3)
    assert not isinstance(got, (tuple, list))
    assert got.shape == (3, 3)


def test_python_float_input_is_not_a_constant(order):
    f = lambda x: jnp.sin(x) * x
    got, want = both(f, 0.5, order=order)
    assert_jac_equal(got, want)
    assert float(got) != 0.0


def test_python_int_and_float_args():
    f = lambda x, y: x * y + y ** 2
    got, want = both(f, 2.0, 3.0, argnums=(0, 1))
    assert_jac_equal(got, want)
    assert float(got[0]) == 3.0 and float(got[1]) == 8.0


def test_numpy_input_is_not_a_constant(order):
    f = lambda x: jnp.tanh(x) @ x
    xn = np.asarray(m33)
    got, want = both(f, xn, order=order)
    assert_jac_equal(got, want)
    assert np.abs(np.asarray(got)).max() > 0


def test_numpy_float32_and_scalar_inputs():
    xn = np.array([0.5, 1.5], dtype=np.float32)
    got, want = both(lambda x: x ** 2, xn)
    assert_jac_equal(got, want, rtol=1e-6, atol=1e-6)
    got, want = both(lambda x: x ** 2, np.float64(1.5))
    assert_jac_equal(got, want)
    assert float(got) == 3.0


def test_output_independent_of_input(order):
    c = jnp.arange(4.0)
    got, want = both(lambda x: c * 2.0, x3, order=order)
    assert_jac_equal(got, want)
    assert not np.any(np.asarray(got))
    got, want = both(lambda x, y: (jnp.sin(y), x * 2), x3, m33, argnums=(0, 1), order=order)
    assert_jac_equal(got, want)


def test_identity(order):
    got, want = both(lambda x: x, m33, order=order)
    assert_jac_equal(got, want)
    got, want = both(lambda x, y: (y, x), x3, m33, argnums=(0, 1), order=order)
    assert_jac_equal(got, want)
    got, want = both(lambda p: p, {"a": x3, "b": m33}, order=order)
    assert_jac_equal(got, want)


def test_duplicated_outputs(order):
    def f(x):
        y = jnp.sin(x) * x
        return y, y

    got, want = both(f, x3, order=order)
    assert_jac_equal(got, want)

    def g(x):
        y = jnp.exp(x)
        return {"a": y, "b": [y, jnp.sum(y)], "c": y}

    got, want = both(g, m33, order=order)
    assert_jac_equal(got, want)
    got, want = both(lambda x: (x, x, x * 2), x3, order=order)
    assert_jac_equal(got, want)


def test_intermediate_is_also_output(order):
    def f(x):
        y = jnp.sin(x)
        return y, jnp.cos(y) * x

    got, want = both(f, m33, order=order)
    assert_jac_equal(got, want)


def test_literal_outputs(order):
    got, want = both(lambda x: (x * 2, 1.0), x3, order=order)
    assert_jac_equal(got, want)
    got, want = both(lambda x: (jnp.float64(3.0), jnp.zeros(2)), x3, order=order)
    assert_jac_equal(got, want)
    got, want = both(lambda x: jnp.ones((2, 2)), 1.5, order=order)
    assert_jac_equal(got, want)


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 2)], ids=str)
def test_zero_size_arrays(shape, order):
    x = jnp.zeros(shape)
    got, want = both(lambda x: jnp.sin(x) * 2.0, x, order=order)
    assert_jac_equal(got, want)
    got, want = both(lambda x, y: (jnp.sum(x) * y, x * y[0]), x, x3, argnums=(0, 1), order=order)
    assert_jac_equal(got, want)


# jax.jacrev closes over non-differentiated positional arguments as concrete
# values: strings, Python ints used as shapes, None, and Python control flow on
# them all work.
def test_non_differentiated_string_arg():
    f = lambda x, mode: jnp.sin(x) if mode == "sin" else jnp.cos(x)
    got, want = both(f, x3, "sin")
    assert_jac_equal(got, want)


def test_non_differentiated_int_used_as_shape():
    f = lambda x, n: jnp.ones(n) * jnp.sum(x)
    got, want = both(f, x3, 4)
    assert_jac_equal(got, want)


def test_non_differentiated_bool_and_none_args():
    f = lambda x, flag, opt: x * (2.0 if opt is None else opt) if flag else x
    got, want = both(f, x3, True, None)
    assert_jac_equal(got, want)


def test_non_differentiated_array_python_control_flow():
    def f(x, y):
        return x * 3.0 if float(jnp.sum(y)) > 0 else x
    got, want = both(f, x3, x3)
    assert_jac_equal(got, want)


def test_non_differentiated_pytree_with_string_leaf():
    f = lambda x, cfg: x * cfg["s"]
    got, want = both(f, x3, {"s": 2.0, "name": "a"})
    assert_jac_equal(got, want)


def test_non_differentiated_python_int_arg():
    f = lambda x, n: x * n
    got, want = both(f, x3, 3)
    assert_jac_equal(got, want)


def test_same_array_passed_twice():
    got, want = both(lambda a, b: a * jnp.sin(b), x3, x3, argnums=(0, 1))
    assert_jac_equal(got, want)


def test_holomorphic():
    z = jnp.array([1.0 + 2j, 0.5 - 1j])
    fz = lambda z: z ** 2 * jnp.sin(z) + jnp.sum(z) * z
    got = ccjax.jacve(fz, holomorphic=True)(z)
    want = jax.jacrev(fz, holomorphic=True)(z)
    assert_jac_equal(got, want)
    with pytest.raises(TypeError):
        ccjax.jacve(fz, holomorphic=True)(x3)  # real input with holomorphic=True


def test_kwargs_passed_through(order):
    def f(x, *, scale, power=2):
        return scale * x ** power

    got = ccjax.jacve(f, order=order)(x3, scale=3.0, power=3)
    want = jax.jacrev(f)(x3, scale=3.0, power=3)
    assert_jac_equal(got, want)


# --------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------
def test_float32_in_float32_jacobian(order):
    x = m33.astype(jnp.float32)
    got, want = both(lambda x: jnp.tanh(x) @ x, x, order=order)
    assert got.dtype == jnp.float32
    assert_jac_equal(got, want, rtol=1e-5, atol=1e-6)


def test_mixed_float32_float64(order):
    a, b = x3.astype(jnp.float32), x3 * 2
    f = lambda a, b: jnp.sin(a) * b
    got, want = both(f, a, b, argnums=(0, 1), order=order)
    assert_jac_equal(got, want, rtol=1e-6, atol=1e-6)
    f2 = lambda a, b: (a * 2.0, b.astype(jnp.float32) * a)
    got, want = both(f2, a, b, argnums=(0, 1), order=order)
    assert_jac_equal(got, want, rtol=1e-6, atol=1e-6)


def test_x64_disabled():
    with jax.enable_x64(False):
        x = jnp.array([0.3, -0.7, 1.1])
        f = lambda x: (jnp.sin(x) @ x) * 2.0 + x.sum()
        got, want = both(f, x)
        assert_jac_equal(got, want, rtol=1e-6, atol=1e-6)
        for arg in (1.0, np.float64(1.0), np.ones(2)):
            got, want = both(lambda x: jnp.exp(x) * 1.5, arg)
            assert_jac_equal(got, want, rtol=1e-6, atol=1e-6)


def test_float16_and_bfloat16():
    for dt in (jnp.float16, jnp.bfloat16):
        x = jnp.array([0.5, 1.0], dtype=dt)
        got, want = both(lambda x: x * x, x)
        assert_jac_equal(got, want, rtol=1e-2, atol=1e-2)


def test_integer_input_requires_allow_int():
    n = jnp.arange(3)
    with pytest.raises(TypeError):
        jax.jacrev(lambda n: n * 2.0)(n)
    with pytest.raises(TypeError):
        ccjax.jacve(lambda n: n * 2.0)(n)
    with pytest.raises(TypeError):
        ccjax.jacve(lambda x, n: x * n, argnums=(0, 1))(x3, n)
    with pytest.raises(TypeError):
        ccjax.jacve(lambda n: n * 2.0)(3)  # python int


def test_integer_input_allow_int():
    f = lambda x, n: x * n + jnp.sin(x)
    n = jnp.arange(3)
    got = ccjax.jacve(f, argnums=(0, 1), allow_int=True)(x3, n)
    want = jax.jacrev(f, argnums=(0, 1), allow_int=True)(x3, n)
    assert_jac_equal(got, want)
    got = ccjax.jacve(lambda n: n * 2.0, allow_int=True)(n)
    want = jax.jacrev(lambda n: n * 2.0, allow_int=True)(n)
    assert_jac_equal(got, want)


def test_integer_output_is_type_error():
    with pytest.raises(TypeError):
        jax.jacrev(lambda x: jnp.argmax(x))(x3)
    with pytest.raises(TypeError):
        ccjax.jacve(lambda x: jnp.argmax(x))(x3)
    with pytest.raises(TypeError):
        ccjax.jacve(lambda x: (x * 2, jnp.round(x).astype(jnp.int32)))(x3)
    with pytest.raises(TypeError):
        ccjax.jacve(lambda x: x > 0)(x3)


def test_complex_input_rejected():
    z = jnp.array([1.0 + 1.0j])
    with pytest.raises(TypeError):
        jax.jacrev(lambda z: z * 2)(z)
    with pytest.raises(TypeError):
        ccjax.jacve(lambda z: z * 2)(z)


# --------------------------------------------------------------------------
# composition with JAX transforms
# --------------------------------------------------------------------------
def fcomp(x):
    return jnp.sin(x) @ x + jnp.tanh(x).T * x


def test_jit_of_jacve(order):
    got = jax.jit(ccjax.jacve(fcomp, order=order))(m33)
    assert_jac_equal(got, jax.jacrev(fcomp)(m33))
    # second call with other values reuses the compiled function and stays right
    got2 = jax.jit(ccjax.jacve(fcomp, order=order))(m33 * 0.5)
    assert_jac_equal(got2, jax.jacrev(fcomp)(m33 * 0.5))


def test_jit_of_jacve_with_static_kwargs():
    f = lambda x, y: jnp.exp(x) * y
    got = jax.jit(ccjax.jacve(f, argnums=(0, 1)))(x3, 2.0)
    want = jax.jacrev(f, argnums=(0, 1))(x3, 2.0)
    assert_jac_equal(got, want)


def test_vmap_of_jacve(order):
    xs = jnp.stack([m33, m33 * 2, -m33])
    got = jax.vmap(ccjax.jacve(fcomp, order=order))(xs)
    want = jax.vmap(jax.jacrev(fcomp))(xs)
    assert_jac_equal(got, want)


def test_vmap_of_jacve_in_axes():
    f = lambda x, w: jnp.tanh(w @ x)
    xs = jnp.stack([x3, x3 * 2])
    got = jax.vmap(ccjax.jacve(f, argnums=(0, 1)), in_axes=(0, None))(xs, m33)
    want = jax.vmap(jax.jacrev(f, argnums=(0, 1)), in_axes=(0, None))(xs, m33)
    assert_jac_equal(got, want)


def test_grad_of_jacve(order):
    got = jax.grad(lambda x: ccjax.jacve(fcomp, order=order)(x).sum())(m33)
    want = jax.grad(lambda x: jax.jacrev(fcomp)(x).sum())(m33)
    assert_jac_equal(got, want)


@pytest.mark.parametrize("order", ["fwd", "rev", "markowitz"])
def test_hessian_by_nested_jacve(order):
    f = lambda x: jnp.sum(jnp.sin(x) * jnp.exp(x[::-1])) + jnp.prod(x)
    got = ccjax.jacve(ccjax.jacve(f, order=order), order=order)(x3)
    assert_jac_equal(got, jax.hessian(f)(x3))
    g = lambda x: jnp.sum(jnp.tanh(x @ x))
    got = ccjax.jacve(ccjax.jacve(g))(m33)
    assert_jac_equal(got, jax.hessian(g)(m33))


def test_jacrev_of_jacve():
    got = jax.jacrev(ccjax.jacve(fcomp))(m33)
    want = jax.jacrev(jax.jacrev(fcomp))(m33)
    assert_jac_equal(got, want)
    got = jax.jacfwd(ccjax.jacve(fcomp))(m33)
    assert_jac_equal(got, want)


def test_jacve_of_jacrev():
    got = ccjax.jacve(jax.jacrev(fcomp))(m33)
    want = jax.jacrev(jax.jacrev(fcomp))(m33)
    assert_jac_equal(got, want)


def test_jacve_closing_over_outer_tracer_in_grad(order):
    def outer(a, jac):
        g = lambda x: jnp.sin(a * x) * a + x * x
        return jnp.sum(jac(g)(x3) ** 2)

    got = jax.grad(lambda a: outer(a, lambda g: ccjax.jacve(g, order=order)))(0.7)
    want = jax.grad(lambda a: outer(a, jax.jacrev))(0.7)
    assert_jac_equal(got, want)


def test_jacve_closing_over_outer_tracer_in_vmap_and_jit():
    def h(a):
        return ccjax.jacve(lambda x: jnp.tanh(a @ x))(x3)

    def h_ref(a):
        return jax.jacrev(lambda x: jnp.tanh(a @ x))(x3)

    mats = jnp.stack([m33, m33.T])
    assert_jac_equal(jax.vmap(h)(mats), jax.vmap(h_ref)(mats))
    assert_jac_equal(jax.jit(h)(m33), h_ref(m33))


def test_jacve_inside_scan():
    def step(c, w):
        j = ccjax.jacve(lambda x: jnp.sin(w * x))(c)
        return c + j.sum(0), j.trace()

    def step_ref(c, w):
        j = jax.jacrev(lambda x: jnp.sin(w * x))(c)
        return c + j.sum(0), j.trace()

    ws = jnp.array([0.5, 1.0, 1.5])
    assert_jac_equal(jax.lax.scan(step, x3, ws), jax.lax.scan(step_ref, x3, ws))


def test_repeated_calls_other_values_cache_is_correct():
    """A cached graph/plan must not bake in values from an earlier call."""
    f = lambda x: jnp.sin(x) * x @ x
    for scale in (1.0, -2.0, 0.5):
        assert_jac_equal(ccjax.jacve(f)(m33 * scale), jax.jacrev(f)(m33 * scale))
    # closures with different constants but the same structure
    for c in (1.0, 2.0, 3.0):
        k = jnp.full((3,), c)
        g = lambda x: jnp.sin(x * k) * k
        assert_jac_equal(ccjax.jacve(g)(x3), jax.jacrev(g)(x3))
    # jit-wrapped closures with different constants
    for c in (1.0, 2.0):
        k = jnp.full((3,), c)
        g = lambda x: jax.jit(lambda z: z * k)(x) * 2.0
        assert_jac_equal(ccjax.jacve(g)(x3), jax.jacrev(g)(x3))


def test_same_order_object_reused_across_functions_with_same_graph():
    f1 = lambda x: jnp.sin(jnp.exp(x) * x)
    f2 = lambda y: jnp.sin(jnp.exp(y) * y)
    o = random_orders(ccjax.graph(f1, x3), 1, seed=3)[0]
    assert_jac_equal(ccjax.jacve(f2, order=o)(x3 * 2), jax.jacrev(f2)(x3 * 2))


# --------------------------------------------------------------------------
# order validation
# --------------------------------------------------------------------------
def fo(x):
    return jnp.sin(jnp.exp(x) * jnp.cos(x)) @ x


def _elim():
    return [int(v) for v in ccjax.graph(fo, m33).eliminable]


def _assert_order_error(order, *needles):
    with pytest.raises(ValueError) as info:
        ccjax.jacve(fo, order=order)(m33)
    assert isinstance(info.value, ccjax.OrderError), type(info.value)
    msg = str(info.value)
    for n in needles:
        assert re.search(rf"(?<!\d){re.escape(str(n))}(?!\d)", msg), f"{n!r} not named in: {msg}"


def test_order_error_is_value_error():
    assert issubclass(ccjax.OrderError, ValueError)


def test_graph_has_enough_vertices_for_order_tests():
    assert len(_elim()) >= 3


def test_order_unknown_id():
    e = _elim()
    _assert_order_error(e + [987654], 987654)
    _assert_order_error(e[:-1] + [987654], 987654)


def test_order_duplicates():
    e = _elim()
    _assert_order_error(e + [e[0]], e[0])
    _assert_order_error([e[1]] + e[1:] + [e[0]] + [e[1]], e[1])


def test_order_missing_ids():
    e = _elim()
    _assert_order_error(e[1:], e[0])
    _assert_order_error([], *e)
    _assert_order_error(e[:1], *e[1:])


def test_order_with_output_vertex():
    g = ccjax.graph(fo, m33)
    out = g.outputs[0]
    _assert_order_error(_elim() + [out], out)


def test_order_with_input_vertex():
    g = ccjax.graph(fo, m33)
    inp = g.inputs[0]
    _assert_order_error(_elim() + [inp], inp)


def test_order_non_integers():
    e = _elim()
    with pytest.raises(ValueError) as info:
        ccjax.jacve(fo, order=e[:-1] + [e[-1] + 0.5])(m33)
    assert isinstance(info.value, ccjax.OrderError)
    assert str(e[-1] + 0.5) in str(info.value)
    with pytest.raises(ValueError) as info:
        ccjax.jacve(fo, order=e[:-1] + ["a"])(m33)
    assert "'a'" in str(info.value) or "a" in str(info.value)
    with pytest.raises(ValueError):
        ccjax.jacve(fo, order=e + [None])(m33)


def test_order_unknown_string():
    with pytest.raises(ValueError) as info:
        ccjax.jacve(fo, order="sideways")(m33)
    assert "sideways" in str(info.value)
    with pytest.raises(ValueError):
        ccjax.cost(fo, m33, order="markovitz")


def test_order_errors_from_cost_too():
    e = _elim()
    with pytest.raises(ccjax.OrderError):
        ccjax.cost(fo, m33, order=e + [e[0]])
    with pytest.raises(ccjax.OrderError):
        ccjax.cost(fo, m33, order=e[1:])


def test_order_aliases_and_numpy_ids():
    e = _elim()
    want = jax.jacrev(fo)(m33)
    for o in ["forward", "reverse", "FWD", "Rev", np.array(e[::-1]), [np.int64(v) for v in e], tuple(e),
              (v for v in e)]:
        assert_jac_equal(ccjax.jacve(fo, order=o)(m33), want, what=repr(o))


def test_empty_order_when_nothing_eliminable():
    f = lambda x: jnp.sin(x)
    g = ccjax.graph(f, x3)
    assert tuple(g.eliminable) == ()
    assert_jac_equal(ccjax.jacve(f, order=[])(x3), jax.jacrev(f)(x3))
    with pytest.raises(ccjax.OrderError):
        ccjax.jacve(f, order=[0])(x3)


# --------------------------------------------------------------------------
# graph / fingerprint / cost
# --------------------------------------------------------------------------
def test_graph_attributes():
    def f(x, y):
        return jnp.sin(x) * y, jnp.exp(x)

    g = ccjax.graph(f, x3, x3, argnums=(0, 1))
    assert isinstance(g, ccjax.Graph)
    assert len(g.inputs) == 2 and len(g.outputs) == 2
    assert g.num_vertices == len(g.vertices)
    ids = set(range(g.num_vertices))
    assert set(g.eliminable) <= ids
    assert not set(g.eliminable) & set(g.inputs)
    assert not set(g.eliminable) & set(g.outputs)
    s = g.summary()
    assert isinstance(s, str) and g.fingerprint in s
    assert isinstance(g.fingerprint, str) and g.fingerprint
    g0 = ccjax.graph(f, x3, x3)
    assert len(g0.inputs) == 1


def test_graph_kwargs_and_pytrees():
    g = ccjax.graph(lambda p, *, k: {"o": p["a"] * k}, {"a": x3}, k=2.0)
    assert len(g.inputs) == 1 and len(g.outputs) == 1


def test_fingerprint_same_function_twice():
    assert ccjax.graph(fo, m33).fingerprint == ccjax.graph(fo, m33).fingerprint
    assert ccjax.graph(fo, m33).fingerprint == ccjax.graph(fo, m33 * 3).fingerprint


def test_fingerprint_independent_of_variable_names():
    def f_a(alpha):
        beta = jnp.exp(alpha)
        gamma = jnp.cos(alpha)
        return jnp.sin(beta * gamma) @ alpha

    def f_b(u):
        v = jnp.exp(u)
        w = jnp.cos(u)
        return jnp.sin(v * w) @ u

    assert ccjax.graph(f_a, m33).fingerprint == ccjax.graph(f_b, m33).fingerprint


def test_fingerprint_changes_with_shape_and_ops():
    fp = ccjax.graph(fo, m33).fingerprint
    assert ccjax.graph(fo, jnp.ones((4, 4))).fingerprint != fp
    assert ccjax.graph(lambda x: jnp.cos(jnp.exp(x) * jnp.cos(x)) @ x, m33).fingerprint != fp
    assert ccjax.graph(lambda x: jnp.sin(x), x3).fingerprint != ccjax.graph(lambda x: jnp.sin(x), m33).fingerprint


def test_cost_is_int_and_elementwise_chain_costs_the_same():
    n = 5
    f = lambda x: jnp.sin(jnp.cos(jnp.exp(x)))
    x = jnp.linspace(0.1, 0.9, n)
    g = ccjax.graph(f, x)
    costs = {o: ccjax.cost(f, x, order=o) for o in ORDERS}
    for o in random_orders(g, 2):
        costs[o] = ccjax.cost(f, x, order=o)
    for c in costs.values():
        assert type(c) is int
    assert len(set(costs.values())) == 1, costs
    # two eliminations of a diagonal times a diagonal: n multiplications each
    assert costs["fwd"] == 2 * n, costs
    check_orders(f, x)


def test_cost_elementwise_is_linear_in_size():
    f = lambda x: jnp.sin(jnp.cos(jnp.exp(x)))
    small = ccjax.cost(f, jnp.ones(10), order="rev")
    big = ccjax.cost(f, jnp.ones(10000), order="rev")
    assert big == 1000 * small


def test_cost_add_sub_neg_is_free():
    f = lambda x: -(x + 2.0) - 3.0 + x
    for o in ORDERS:
        assert ccjax.cost(f, x3, order=o) == 0
    g = lambda x, y: (x + y) - (y - x)
    assert ccjax.cost(g, x3, x3, argnums=(0, 1), order="rev") == 0


def test_cost_fwd_vs_rev_shapes():
    w = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (8, 8)))
    x = jnp.linspace(0.1, 0.8, 8)

    def scalar_out(x):  # many inputs, one output: reverse mode wins
        h = jnp.tanh(w @ x)
        h = jnp.tanh(w @ h)
        return jnp.sum(h)

    def scalar_in(s):  # one input, many outputs: forward mode wins
        h = jnp.tanh(w @ (x * s))
        return jnp.tanh(w @ h)

    assert ccjax.cost(scalar_out, x, order="rev") < ccjax.cost(scalar_out, x, order="fwd")
    assert ccjax.cost(scalar_in, 0.5, order="fwd") < ccjax.cost(scalar_in, 0.5, order="rev")
    for f, a in ((scalar_out, x), (scalar_in, 0.5)):
        auto = ccjax.cost(f, a, order="auto")
        assert auto <= min(ccjax.cost(f, a, order=o) for o in ("fwd", "rev", "markowitz"))
        assert_jac_equal(ccjax.jacve(f)(a), jax.jacrev(f)(a))


def test_cost_report():
    rep = ccjax.cost_report(fo, m33, order="rev")
    assert rep.mults == ccjax.cost(fo, m33, order="rev")
    assert int(rep) == rep.mults


# --------------------------------------------------------------------------
# a small property test over argnums / pytree layouts
# --------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(argnums=st.sampled_from([0, 1, 2, (0,), (2, 1), (0, 1, 2), -1, (-2, 0)]),
       layout=st.sampled_from(["tuple", "dict", "list", "single"]),
       order=st.sampled_from(ORDERS))
def test_property_layouts(argnums, layout, order):
    def f(a, b, c):
        y1 = jnp.sin(a) * b["k"][0]
        y2 = jnp.sum(c) * a @ a
        if layout == "tuple":
            return y1, (y2, c * 2)
        if layout == "dict":
            return {"y1": y1, "z": {"y2": y2}}
        if layout == "list":
            return [y2, y1]
        return y1 + y2

    args = (x3, {"k": [x3[::-1], 1.0]}, m33)
    got = ccjax.jacve(f, argnums=argnums, order=order)(*args)
    want = jax.jacrev(f, argnums=argnums)(*args)
    assert_jac_equal(got, want)
