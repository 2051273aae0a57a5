"""Pooling (:mod:`ccjax.rules.window`): ``reduce_window_sum`` is a pick of
the window's taps at constant indices, ``reduce_window_max``/``min`` a pick
of one element per window at the index JAX's JVP selects.  Exact in every
order, strides, dilation and padding, ties and windows wholly in the
padding included; cost = executed multiplications; the sparse output of a
sum pool leaves out the padding."""
import flax.linen as nn
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
from ccjax import api
from ccjax.counting import Counter
from ccjax.eliminate import plan_elimination
from ccjax.jax_modes import program_mults, weighted_mults
from ccjax.resolve import resolve_order
from ccjax.structure import Selection

RNG = np.random.default_rng(11)
X = RNG.normal(size=(8, 9))


def max_pool(x, *args, **kw):
    return lax.reduce_window(x, -jnp.inf, lax.max, *args, **kw)


def sum_pool(x, *args, **kw):
    return lax.reduce_window(x, 0.0, lax.add, *args, **kw)


PROGRAMS = {
    # name: (fn, reference) -- JAX has no reverse mode of a max pool with window dilation
    "max_valid": (lambda x: jnp.sin(max_pool(x ** 2, (2, 2), (2, 2), "VALID")), jax.jacrev),
    "max_same_overlapping": (lambda x: max_pool(jnp.tanh(x), (3, 2), (1, 2), "SAME") * x[:, ::2].sum(), jax.jacrev),
    "min_dilated": (lambda x: lax.reduce_window(x, jnp.inf, lax.min, (2, 2), (1, 1), ((1, 0), (0, 2)),
                                                window_dilation=(2, 1)), jax.jacfwd),
    "max_ties": (lambda x: max_pool(jnp.round(x) + 0.0 * x, (2, 2), (1, 1), "VALID"), jax.jacrev),
    "max_window_in_padding": (lambda x: max_pool(x, (2, 2), (1, 1), ((3, 0), (0, 0))), jax.jacrev),
    "sum_same": (lambda x: sum_pool(jnp.tanh(x), (3, 3), (1, 1), "SAME") / 9.0, jax.jacrev),
    "sum_strided_padded_dilated": (lambda x: sum_pool(x ** 3, (2, 3), (2, 2), ((1, 1), (0, 2)), window_dilation=(1, 2)),
                                   jax.jacrev),
    "flax_pools": (lambda x: nn.max_pool(x[None, :, :, None], (2, 2), (1, 1), "SAME")[0, :, :, 0]
                   + nn.avg_pool(jnp.sin(x)[None, :, :, None], (3, 3), (1, 1), "SAME")[0, :, :, 0], jax.jacrev),
    "pool_then_pool": (lambda x: max_pool(sum_pool(x * x, (2, 2), (1, 1), "VALID"), (2, 2), (2, 2), "VALID"),
                       jax.jacrev),
}


ONE_PER_OUTPUT = {"max_valid", "min_dilated", "max_ties", "max_window_in_padding"}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_pooling_partials_are_selections(name):
    fn, _ = PROGRAMS[name]
    g = ccjax.graph(fn, X)
    kinds = [isinstance(r.partial.structure, Selection) for r in g.raw
             if g.program.nodes[r.node].name.startswith("reduce_window")]
    assert kinds and all(kinds)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_pooling_is_exact_in_every_order_and_cost_is_executed(name):
    fn, reference = PROGRAMS[name]
    check_orders(fn, X, reference=reference, n_random=2, rtol=1e-12, atol=1e-12)
    check_cost_is_executed(fn, (X,), 0, seed=3, n_random=1)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_pooling_jitted_vmapped_and_sparse(name):
    fn, reference = PROGRAMS[name]
    want = np.asarray(reference(fn)(X))
    np.testing.assert_allclose(jax.jit(ccjax.jacve(fn))(X), want, rtol=1e-12, atol=1e-12)
    batch = np.stack([X, -0.5 * X + 0.1])
    np.testing.assert_allclose(jax.jit(jax.vmap(ccjax.jacve(fn)))(batch), jax.vmap(reference(fn))(batch),
                               rtol=1e-12, atol=1e-12)
    for run in (ccjax.jacve(fn, output="sparse"), jax.jit(ccjax.jacve(fn, output="sparse"))):
        got = run(X)
        np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
        if name.startswith("sum"):  # constant taps: the padding is left out
            assert got.nse == np.count_nonzero(want)
        elif name in ONE_PER_OUTPUT:  # one entry per window (0 where the padding wins)
            assert got.nse == want.shape[0] * want.shape[1]


def test_pools_multiply_far_less_than_plain_modes():
    """A 3 x 3 average pool reads 9 elements per output: the elimination
    multiplies far less than either plain mode, and ``auto`` runs it or
    forward mode over the pattern's colours, which weighs less still."""
    fn = PROGRAMS["sum_same"][0]
    x = RNG.normal(size=(32, 32))
    g = ccjax.graph(fn, x)
    counter = Counter(g)
    elimination = plan_elimination(g, resolve_order(g, "auto"))
    assert 50 * program_mults(g, elimination, counter) < min(counter.mode_mults("rev"), counter.mode_mults("fwd"))
    plan = api._plan(g, "auto")
    assert plan.mode in ("eliminate", "colored-fwd")
    assert weighted_mults(g, plan, counter) <= weighted_mults(g, elimination, counter)


def test_a_feature_map_of_convolution_and_pools_is_eliminated():
    """Convolution, ReLU, max pool, average pool (the benchmark's
    ``pool_features``): JAX's modes push a (co)tangent per pixel through the
    convolution, whose multiplications are counted
    (``ccjax._jaxpr.own_multiplications``); before they were, every
    candidate counted 0 and ``auto`` ran ``jax.jacrev``, 60x slower."""
    kernel = jnp.asarray(RNG.normal(size=(3, 3, 1, 2)))

    def features(img):
        f = jax.nn.relu(lax.conv_general_dilated(img, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        return sum_pool(max_pool(f, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"), (1, 3, 3, 1), (1, 1, 1, 1), "SAME")

    img = RNG.normal(size=(1, 32, 32, 1))
    g = ccjax.graph(features, img)
    plan = api._plan(g, "auto")
    assert plan.mode == "eliminate"
    counter = Counter(g)
    assert 2 * weighted_mults(g, plan, counter) < min(counter.mode_mults("rev"), counter.mode_mults("fwd"))
    np.testing.assert_allclose(jax.jit(ccjax.jacve(features))(img), jax.jacrev(features)(img), rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_pools_match_jax(data):
    """Random rank, sizes, windows, strides, dilation and padding, for sum,
    max and min pools, a random order and the sparse output."""
    d = data.draw(st.integers(1, 3))
    shape = [data.draw(st.integers(2, 6)) for _ in range(d)]
    window = tuple(data.draw(st.integers(1, 3)) for _ in range(d))
    strides = tuple(data.draw(st.integers(1, 2)) for _ in range(d))
    kind = data.draw(st.sampled_from(["sum", "max", "min"]))
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(d)) if kind == "sum" else (1,) * d
    padding = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in range(d))
    if any(n + lo + hi < (w - 1) * r + 1 for n, (lo, hi), w, r in zip(shape, padding, window, dilation)):
        padding = tuple(((w - 1) * r, 0) for w, r in zip(window, dilation))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    x = rng.normal(size=shape)
    if kind == "sum":
        fn = lambda x: jnp.sin(sum_pool(x * x, window, strides, padding, window_dilation=dilation))
    else:
        # A window wholly in the padding gives +-inf: tanh's derivative there is
        # 0, not NaN (README, "NaN and inf": a path whose partial is 0 at this
        # input still carries a NaN, where jax.jacrev drops the cotangent).
        op, init = (lax.max, -jnp.inf) if kind == "max" else (lax.min, jnp.inf)
        fn = lambda x: jnp.tanh(lax.reduce_window(x * x, init, op, window, strides, padding))
    want = jax.jacrev(fn)(x)
    g = ccjax.graph(fn, x)
    order = tuple(int(v) for v in rng.permutation(np.array(g.eliminable, dtype=int)))
    for got in (ccjax.jacve(fn, order=order)(x), jax.jit(ccjax.jacve(fn))(x)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    sparse = ccjax.jacve(fn, output="sparse")(x)
    np.testing.assert_allclose(np.asarray(sparse.todense()), want, rtol=1e-12, atol=1e-12)
    if kind == "sum":
        assert sparse.nse == np.count_nonzero(want)
