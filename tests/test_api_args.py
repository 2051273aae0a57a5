"""Arguments that used to give a silent wrong answer or a needless error.

Every Jacobian is compared with ``jax.jacrev`` (float64) under the orders
``fwd``, ``rev``, ``markowitz`` and ``auto``, eagerly and under ``jax.jit``:

* ``order="learned"`` inside ``jit``/``scan``/``vmap`` (the policy ran in the trace);
* ``lax.reshape`` with ``dimensions`` and ``lax.pad`` with negative and interior padding;
* weakly typed inputs give weakly typed blocks, as in ``jax.jacrev``;
* ``ccjax.graph``/``cost``/``search_order`` with ``has_aux``, so explicit orders
  for ``has_aux`` functions can be built;
* argument checking: NumPy integer argnums, bytes/sets/floats/bools as orders,
  bad order names at creation, bad ``time_budget``;
* complex inputs with real outputs (``holomorphic=False``) and
  ``holomorphic=True`` through opaque equations.
"""
from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax import lax  # noqa: E402

import ccjax  # noqa: E402
from conftest import ORDERS, assert_jac_equal  # noqa: E402

MODES = ["eager", "jit"]


def _jac(fun, mode: str, **kwargs):
    j = ccjax.jacve(fun, **kwargs)
    return j if mode == "eager" else jax.jit(j)


def check(fun, *args, orders=ORDERS, argnums=0, has_aux=False, holomorphic=False, rtol=1e-10, atol=1e-10):
    """``jacve`` equals ``jax.jacrev`` (values, dtypes, pytree) for every order, eager and jitted."""
    want = jax.jacrev(fun, argnums=argnums, has_aux=has_aux, holomorphic=holomorphic)(*args)
    failures = []
    for mode in MODES:
        for order in orders:
            try:
                got = _jac(fun, mode, argnums=argnums, has_aux=has_aux, holomorphic=holomorphic, order=order)(*args)
                assert_jac_equal(got, want, rtol=rtol, atol=atol, what=f"{mode} order={order!r}")
            except Exception as e:  # noqa: BLE001 - report every failing combination
                failures.append(f"{mode} order={order!r}: {type(e).__name__}: {str(e)[:800]}")
    assert not failures, "\n".join(failures)


def rand(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1.0, 1.0, shape))


# ---------------------------------------------------------------------------
# 1. order="learned" inside a trace
# ---------------------------------------------------------------------------


def _learned_fun(x):
    # A structure no other test traces: its "learned" plan is made under the trace.
    y = jnp.tanh(x) * jnp.cos(x).sum() + jnp.exp(-x) ** 3
    return jnp.sin(y) * y.prod()


def test_learned_order_under_jit():
    x = rand(4, seed=1)
    got = jax.jit(ccjax.jacve(_learned_fun, order="learned"))(x)  # jit first: nothing planned eagerly
    want = jax.jacrev(_learned_fun)(x)
    assert_jac_equal(got, want)
    assert_jac_equal(ccjax.jacve(_learned_fun, order="learned")(x), want)


def test_learned_order_under_scan_and_vmap():
    def f(x):
        return jnp.cosh(x[::-1]) * jnp.sinh(x).sum() - x ** 4

    def body(carry, _):
        return carry * 1.01, ccjax.jacve(f, order="learned")(carry)

    x = rand(3, seed=2)
    _, got = lax.scan(body, x, None, length=2)
    want = jnp.stack([jax.jacrev(f)(x), jax.jacrev(f)(x * 1.01)])
    assert_jac_equal(got, want)
    xs = rand(2, 3, seed=3)
    assert_jac_equal(jax.vmap(ccjax.jacve(f, order="learned"))(xs), jax.vmap(jax.jacrev(f))(xs))


# ---------------------------------------------------------------------------
# 2. reshape with dimensions, pad with negative and interior padding
# ---------------------------------------------------------------------------

RESHAPES = [
    ((2, 3), (6,), (1, 0)),
    ((2, 3), (3, 2), (1, 0)),
    ((3, 3), (9,), (1, 0)),
    ((2, 3, 4), (4, 6), (2, 0, 1)),
    ((2, 3, 4), (3, 8), (1, 2, 0)),
    ((2, 3, 4), (24,), (0, 2, 1)),
    ((1, 3, 2), (6, 1), (2, 1, 0)),
    ((4, 6), (2, 2, 3, 2), (1, 0)),
    ((2, 3), (3, 2), (0, 1)),
]


@pytest.mark.parametrize("shape,new_sizes,dims", RESHAPES, ids=str)
def test_reshape_with_dimensions(shape, new_sizes, dims):
    def f(x):
        return jnp.sin(lax.reshape(x * x, new_sizes, dimensions=dims)) * 2.0

    check(f, rand(*shape, seed=4))


def test_reshape_with_dimensions_feeding_a_product():
    w = rand(6, 4, seed=5)

    def f(x):
        return w.T @ jnp.tanh(lax.reshape(x, (6,), dimensions=(1, 0)))

    check(f, rand(2, 3, seed=6))


PADS = [
    [(-1, 2, 0)],
    [(1, -2, 0)],
    [(1, 2, 1)],
    [(-1, -1, 2)],
    [(-2, 1, 1)],
    [(0, 0, 3)],
    [(-1, 1, 0), (2, -1, 1)],
    [(1, 1, 1), (-1, -2, 0)],
    [(-3, 0, 2), (0, 0, 0)],
]


@pytest.mark.parametrize("config", PADS, ids=str)
def test_pad_negative_and_interior(config):
    shape = (5,) if len(config) == 1 else (4, 5)

    def f(x, v):
        return lax.pad(jnp.sin(x), v * v, config) ** 2

    check(f, rand(*shape, seed=7), jnp.asarray(1.5), argnums=(0, 1))


def test_pad_square_input():
    def f(x):
        return jnp.tanh(lax.pad(x, jnp.asarray(0.0), [(1, -1, 1), (-1, 2, 1)])).sum(0)

    check(f, rand(3, 3, seed=8))


# ---------------------------------------------------------------------------
# 3. weak types
# ---------------------------------------------------------------------------


def _types(tree):
    return jax.tree_util.tree_map(lambda a: (str(a.dtype), bool(a.weak_type)), tree)


WEAK_CASES = [
    ("python float", jnp.sin, (1.0,), 0),
    ("weak array", jnp.sin, (jnp.asarray(1.0),), 0),
    ("weak in, float32 out", lambda x: x * jnp.float32(2.0), (1.0,), 0),
    ("vector out", lambda x: jnp.arange(3.0) * x, (0.5,), 0),
    ("constant out", lambda x: 3.0, (1.0,), 0),
    ("weak and strong", lambda x, y: x * y, (1.0, jnp.float32(2.0)), (0, 1)),
    ("pytree", lambda d: d["a"] * d["b"], ({"a": 1.0, "b": jnp.ones(2)},), 0),
    ("strong", jnp.sin, (jnp.float32(1.0),), 0),
]


@pytest.mark.parametrize("name,fun,args,argnums", WEAK_CASES, ids=[c[0] for c in WEAK_CASES])
@pytest.mark.parametrize("order", ORDERS)
def test_weak_types_match_jacrev(name, fun, args, argnums, order):
    want = jax.jacrev(fun, argnums=argnums)(*args)
    jac = ccjax.jacve(fun, argnums=argnums, order=order)
    assert _types(jac(*args)) == _types(want)
    assert _types(jax.jit(jac)(*args)) == _types(want)
    assert jax.eval_shape(jac, *args) == jax.eval_shape(jax.jacrev(fun, argnums=argnums), *args)
    assert_jac_equal(jac(*args), want)


def test_weak_type_decides_promotion_as_in_jacrev():
    got = ccjax.jacve(jnp.sin)(1.0) * jnp.float32(1.0)
    want = jax.jacrev(jnp.sin)(1.0) * jnp.float32(1.0)
    assert got.dtype == want.dtype == jnp.float32


# ---------------------------------------------------------------------------
# 4. has_aux in graph / cost / search_order
# ---------------------------------------------------------------------------


def _aux_fun(x):
    e = jnp.exp(x)
    return jnp.sin(e) * e.sum(), {"e": e}


def test_graph_with_has_aux_gives_the_orders_jacve_uses():
    x = rand(3, seed=9)
    g = ccjax.graph(_aux_fun, x, has_aux=True)
    elim = [int(v) for v in g.eliminable]
    assert elim, "the test needs eliminable vertices"
    want, want_aux = jax.jacrev(_aux_fun, has_aux=True)(x)
    rng = np.random.default_rng(0)
    orders = [elim, elim[::-1], [int(v) for v in rng.permutation(elim)]]
    for mode in MODES:
        for order in orders:
            got, aux = _jac(_aux_fun, mode, has_aux=True, order=order)(x)
            assert_jac_equal(got, want, what=f"{mode} order={order}")
            assert_jac_equal(aux, want_aux)


def test_cost_and_search_order_with_has_aux():
    x = rand(3, seed=10)
    g = ccjax.graph(_aux_fun, x, has_aux=True)
    order = [int(v) for v in g.eliminable][::-1]
    assert ccjax.cost(_aux_fun, x, has_aux=True, order=order) == ccjax.cost_report(
        _aux_fun, x, has_aux=True, order=order).mults
    result = ccjax.search_order(_aux_fun, x, has_aux=True, method="beam", time_budget=0.5, cache=False)
    assert sorted(result.order) == sorted(int(v) for v in g.eliminable)
    assert_jac_equal(ccjax.jacve(_aux_fun, has_aux=True, order=result.order)(x)[0],
                     jax.jacrev(_aux_fun, has_aux=True)(x)[0])


# ---------------------------------------------------------------------------
# 5. argument checking
# ---------------------------------------------------------------------------


def _two(x, y):
    return jnp.sin(x) * y.sum()


@pytest.mark.parametrize("argnums", [np.int64(0), np.int32(1), np.int64(-1), (np.int64(0), 1)], ids=repr)
def test_numpy_integer_argnums(argnums):
    """A NumPy integer is a single argnum, as ``jax.grad`` and ``jax.jacfwd``
    read it (JAX 0.10's ``jax.jacrev`` alone returns a 1-tuple for it)."""
    x, y = rand(3, seed=11), rand(2, seed=12)
    as_int = int(argnums) if np.ndim(argnums) == 0 and not isinstance(argnums, tuple) else tuple(map(int, argnums))
    want = jax.jacrev(_two, argnums=as_int)(x, y)
    assert jax.tree_util.tree_structure(jax.jacfwd(_two, argnums=argnums)(x, y)) == \
        jax.tree_util.tree_structure(want)
    for mode in MODES:
        for order in ORDERS:
            got = _jac(_two, mode, argnums=argnums, order=order)(x, y)
            assert_jac_equal(got, want, what=f"{mode} order={order!r}")


def test_bad_argnums_are_clear_errors():
    x, y = rand(3), rand(2)
    for bad in [0.0, True, "0", (0, 1.0)]:
        with pytest.raises(TypeError, match="argnums"):
            ccjax.jacve(_two, argnums=bad)(x, y)
    with pytest.raises(ValueError, match="argnums"):
        ccjax.jacve(_two, argnums=np.int64(2))(x, y)


def _fo(x):
    return jnp.sin(jnp.exp(x) * jnp.cos(x)) @ x


def _elim():
    return [int(v) for v in ccjax.graph(_fo, rand(3, 3)).eliminable]


@pytest.mark.parametrize("order", [b"rev", bytearray(b"fwd")], ids=repr)
def test_bytes_order_is_rejected(order):
    with pytest.raises(ccjax.OrderError, match="bytes"):
        ccjax.jacve(_fo, order=order)


def test_unordered_containers_are_rejected():
    e = _elim()
    for bad in [set(e), frozenset(e), dict.fromkeys(e)]:
        with pytest.raises(ccjax.OrderError, match=type(bad).__name__):
            ccjax.jacve(_fo, order=bad)


def test_non_integer_ids_are_rejected_and_named():
    e = _elim()
    cases = [(e[:-1] + [float(e[-1])], f"{float(e[-1])!r}"), (e[:-1] + [np.float64(e[-1])], "float64"),
             ([True] + e[1:], "True"), (e[:-1] + [np.bool_(True)], "True"), (np.asarray(e, float), "float64"),
             (e[:-1] + [None], "None"), (e[:-1] + ["1"], "'1'")]
    for order, needle in cases:
        with pytest.raises(ccjax.OrderError, match=needle):
            ccjax.jacve(_fo, order=order)
        with pytest.raises(ccjax.OrderError, match=needle):
            ccjax.cost(_fo, rand(3, 3), order=order)


def test_integer_ids_of_any_kind_are_accepted():
    e = _elim()
    x = rand(3, 3)
    want = jax.jacrev(_fo)(x)
    for order in [np.asarray(e[::-1]), np.asarray(e, np.int32), [np.int64(v) for v in e], tuple(e),
                  (v for v in e), jnp.asarray(e)]:
        assert_jac_equal(ccjax.jacve(_fo, order=order)(x), want, what=repr(order))


def test_bad_order_name_is_reported_at_creation():
    for bad in ["sideways", "markovitz", "", "rev "]:
        with pytest.raises(ccjax.OrderError, match="unknown order"):
            ccjax.jacve(_fo, order=bad)  # not called: the name alone is wrong
    for name in ["fwd", "FORWARD", "Rev", "reverse", "Markowitz", "AUTO", "learned"]:
        ccjax.jacve(_fo, order=name)


@pytest.mark.parametrize("budget,error", [("10", TypeError), (b"1", TypeError), (True, TypeError),
                                          ([1.0], TypeError), (float("nan"), ValueError),
                                          (float("inf"), ValueError), (-1.0, ValueError), (0, ValueError)],
                         ids=repr)
def test_bad_time_budget(budget, error):
    with pytest.raises(error, match="time_budget"):
        ccjax.search_order(_fo, rand(3, 3), method="beam", time_budget=budget, cache=False)


def test_numpy_time_budget_is_accepted():
    result = ccjax.search_order(_fo, rand(3, 3), method="beam", time_budget=np.float64(0.3), cache=False)
    assert sorted(result.order) == sorted(_elim())


# ---------------------------------------------------------------------------
# 6. complex inputs, real outputs, holomorphic=False
# ---------------------------------------------------------------------------

Z = jnp.asarray([1.0 + 2.0j, -0.5 + 0.3j, 0.7 - 1.1j])


def test_complex_input_real_output_is_accepted():
    ccjax.jacve(lambda z: jnp.abs(z) ** 2)(Z)  # no TypeError from the input check


@pytest.mark.parametrize("fun", [
    lambda z: jnp.abs(z) ** 2,
    lambda z: jnp.real(z * z.sum()) + jnp.imag(jnp.exp(z)),
    lambda z: jnp.sin(jnp.real(z)) * jnp.abs(z).sum(),
], ids=["abs2", "real_imag", "mixed"])
def test_complex_input_real_output_matches_jacrev(fun):
    check(fun, Z)


def test_complex_output_without_holomorphic_still_rejected():
    with pytest.raises(TypeError, match="holomorphic"):
        ccjax.jacve(lambda z: z * 2)(Z)


# ---------------------------------------------------------------------------
# 7. holomorphic=True through opaque equations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fun", [
    lambda z: jnp.cumprod(z) * z[0],
    lambda z: jnp.take(z, jnp.asarray([2, 0, 1, 1])) * z.sum(),
    lambda z: jnp.cumprod(jnp.take(z, jnp.asarray([1, 2]))) ** 2,
], ids=["cumprod", "take", "take_cumprod"])
def test_holomorphic_through_opaque_equations(fun):
    check(fun, Z, holomorphic=True)
