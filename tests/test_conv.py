"""``conv_general_dilated`` is a selection at constant indices with run-time
values (:mod:`ccjax.rules.conv`): each output element reads ``C ·
prod(window)`` elements of the input (values: the kernel's entries) and of
the kernel (values: the input under the window).  Exact in every order,
layout, stride, dilation and padding, for input and kernel; cost = executed
multiplications; the sparse output leaves out the taps in the padding;
feature groups fall back to the dense local Jacobian."""
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

RNG = np.random.default_rng(5)
IMG = RNG.normal(size=(2, 3, 7, 6))
KER = RNG.normal(size=(4, 3, 3, 2))
GROUPED = RNG.normal(size=(3, 1, 2, 2))
STENCIL = np.array([1.0, -2.0, 1.0])
LAPLACIAN = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def conv(x, k, **kw):
    return lax.conv_general_dilated(x, k, **kw)


PROGRAMS = {
    # name: (fn, args, argnums)
    "stencil_same": (lambda u: jnp.tanh(jnp.convolve(u, STENCIL, mode="same")), (RNG.normal(size=20),), 0),
    "convolve_full": (lambda u: jnp.convolve(jnp.sin(u), jnp.array([0.5, 1.0, 0.25, 2.0]), mode="full"),
                      (RNG.normal(size=9),), 0),
    "nchw_valid": (lambda x: jnp.sin(conv(x, KER, window_strides=(1, 1), padding="VALID")), (IMG,), 0),
    "nchw_same_strided": (lambda x: conv(x ** 2, KER, window_strides=(2, 1), padding="SAME"), (IMG,), 0),
    "dilated_uneven_padding": (lambda x: conv(x, KER, window_strides=(1, 2), padding=((2, 1), (0, 3)),
                                              rhs_dilation=(2, 1)), (IMG,), 0),
    "input_and_kernel": (lambda x, k: jnp.cos(conv(x, k, window_strides=(1, 1), padding="SAME")), (IMG, KER),
                         (0, 1)),
    "kernel_only": (lambda k: conv(jnp.asarray(IMG), k ** 2, window_strides=(2, 2), padding="SAME"), (KER,), 0),
    "nhwc_hwio": (lambda x: lax.conv_general_dilated(x, jnp.asarray(KER.transpose(2, 3, 1, 0)), (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) * x[..., :1].sum(),
                  (IMG.transpose(0, 2, 3, 1),), 0),
    "one_variable_both_operands": (lambda x: conv(x, x[:2, :, :2, :2], window_strides=(1, 1), padding="VALID"),
                                   (IMG,), 0),
    "constant_kernel_with_zeros": (lambda u: jnp.sin(jax.scipy.signal.convolve2d(u ** 2, LAPLACIAN * 3.0, mode="same")),
                                   (RNG.normal(size=(5, 6)),), 0),
    "feature_groups": (lambda x: lax.conv_general_dilated(jnp.sin(x), GROUPED, (1, 1), "VALID", feature_group_count=3),
                       (IMG,), 0),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_convolution_partials_are_selections_where_covered(name):
    fn, args, argnums = PROGRAMS[name]
    g = ccjax.graph(fn, *args, argnums=argnums)
    kinds = {isinstance(r.partial.structure, Selection) for r in g.raw
             if g.program.nodes[r.node].name == "conv_general_dilated"}
    assert kinds == ({False} if name == "feature_groups" else {True})


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_convolutions_are_exact_in_every_order_and_cost_is_executed(name):
    fn, args, argnums = PROGRAMS[name]
    check_orders(fn, *args, argnums=argnums, n_random=2, rtol=1e-11, atol=1e-12)
    check_cost_is_executed(fn, args, argnums, seed=6, n_random=1)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_convolutions_jitted_and_sparse_leave_out_the_padding(name):
    fn, args, argnums = PROGRAMS[name]
    want = jax.jacrev(fn, argnums=argnums)(*args)
    got = jax.jit(ccjax.jacve(fn, argnums=argnums))(*args)
    jax.tree_util.tree_map(lambda w, v: np.testing.assert_allclose(v, w, rtol=1e-11, atol=1e-12), want, got)
    for run in (ccjax.jacve(fn, argnums=argnums, output="sparse"),
                jax.jit(ccjax.jacve(fn, argnums=argnums, output="sparse"))):
        blocks = jax.tree_util.tree_leaves(run(*args), is_leaf=lambda x: hasattr(x, "todense"))
        wants = jax.tree_util.tree_leaves(want)
        for block, w in zip(blocks, wants):
            np.testing.assert_allclose(np.asarray(block.todense()), w, rtol=1e-11, atol=1e-12)
        if name != "feature_groups":  # the dense fallback stores every entry
            assert sum(block.nse for block in blocks) == sum(np.count_nonzero(w) for w in wants)


def test_convolution_under_vmap():
    fn = PROGRAMS["nchw_same_strided"][0]
    batch = np.stack([IMG, -0.5 * IMG])
    np.testing.assert_allclose(jax.jit(jax.vmap(ccjax.jacve(fn)))(batch), jax.vmap(jax.jacrev(fn))(batch),
                               rtol=1e-11, atol=1e-12)


def test_a_stencil_written_as_a_convolution_multiplies_far_less_than_plain_modes():
    """Three taps per row: the elimination multiplies ~3n, JAX's modes push n
    (co)tangents through the convolution (as a dense local Jacobian the
    elimination stored n² entries and ``auto`` ran ``jax.jacrev``)."""
    fn = lambda u: jnp.tanh(jnp.convolve(u, STENCIL, mode="same"))
    u = RNG.normal(size=256)
    g = ccjax.graph(fn, u)
    counter = Counter(g)
    plain = min(counter.mode_mults("rev"), counter.mode_mults("fwd"))
    elimination = plan_elimination(g, resolve_order(g, "auto"))
    assert 20 * program_mults(g, elimination, counter) < plain
    plan = api._plan(g, "auto")  # or forward mode over the band's three colours, which gathers nothing
    assert plan.mode in ("eliminate", "colored-fwd")
    assert weighted_mults(g, plan, counter) <= weighted_mults(g, elimination, counter)


def test_a_constant_kernels_zero_taps_are_left_out_and_pin_the_graph():
    """The 5-point Laplacian as a 3 x 3 convolution: the corners are zero in
    the constant kernel, so the pick keeps 5 columns (not 9).  The kernel
    pins the graph: the same program with another constant kernel (zero
    elsewhere) is rebuilt, not run with the first one's taps.  A kernel without zeros (a model's weights) does
    not pin it, but is not reused for a kernel with zeros (whose graph stores
    less)."""
    def residual(kernel):
        return lambda u: jnp.tanh(jax.scipy.signal.convolve2d(u, jnp.asarray(kernel) / 2.0, mode="same"))

    u = RNG.normal(size=(6, 7))
    g = ccjax.graph(residual(LAPLACIAN), u)
    widths = [r.partial.structure.val_shape[-1] for r in g.raw
              if g.program.nodes[r.node].name == "conv_general_dilated"]
    assert widths == [5] and len(g.pins) == 1
    dense = ccjax.graph(residual(LAPLACIAN + 1.0), u)  # no zeros: the same partial for any kernel ...
    assert not dense.pins and dense.zero_free  # ... but one with zeros must not reuse it
    cross = np.array([[1.0, 0.0, 2.0], [0.0, -4.0, 0.0], [3.0, 0.0, 0.5]])
    for kernel in (LAPLACIAN, cross, LAPLACIAN, np.zeros((3, 3))):
        fn = residual(kernel)
        want = jax.jacrev(fn)(u)
        for run in (ccjax.jacve(fn), jax.jit(ccjax.jacve(fn))):
            np.testing.assert_allclose(run(u), want, rtol=1e-11, atol=1e-12)
        sparse = ccjax.jacve(fn, output="sparse")(u)
        np.testing.assert_allclose(np.asarray(sparse.todense()), want, rtol=1e-11, atol=1e-12)
        assert sparse.nse == np.count_nonzero(want)


def test_auto_weighs_the_gathers_of_convolution_picks():
    """A convolution reduced to a scalar (the benchmark's ``conv2d_scalar``):
    the elimination multiplies as much as ``jax.jacrev`` but through picks,
    whose multiplications gather their operands
    (:data:`ccjax.jax_modes.SELECTION_MULT_WEIGHT`), so ``auto`` runs
    reverse mode (measured 1.8x faster on CPU)."""
    from ccjax.eliminate import plan_elimination
    from ccjax.jax_modes import selection_mults, weighted_mults
    from ccjax.resolve import auto_order

    fn = lambda x, k: jnp.sum(jnp.tanh(conv(x, k, window_strides=(1, 1), padding="SAME")) ** 2)
    x, k = RNG.normal(size=(1, 1, 16, 16)), RNG.normal(size=(4, 1, 3, 3))
    g = ccjax.graph(fn, x, k, argnums=(0, 1))
    counter = Counter(g)
    elimination = plan_elimination(g, auto_order(g))
    assert selection_mults(elimination) > 0
    assert counter.mode_mults("rev") < weighted_mults(g, elimination, counter)
    assert api._plan(g, "auto").mode == "jax-rev"
    np.testing.assert_allclose(jax.jit(ccjax.jacve(fn, argnums=(0, 1)))(x, k)[1], jax.jacrev(fn, argnums=1)(x, k),
                               rtol=1e-11, atol=1e-12)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_convolutions_match_jacrev(data):
    """Random spatial rank, sizes, channels, strides, kernel dilation,
    padding and layout; input and kernel differentiated, a random order and
    the sparse output."""
    d = data.draw(st.integers(1, 2))
    spatial = [data.draw(st.integers(3, 6)) for _ in range(d)]
    window = [data.draw(st.integers(1, 3)) for _ in range(d)]
    strides = tuple(data.draw(st.integers(1, 2)) for _ in range(d))
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(d))
    padding = data.draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    if padding == "explicit":
        padding = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in range(d))
    elif padding == "VALID" and any((w - 1) * r + 1 > n for w, r, n in zip(window, dilation, spatial)):
        padding = "SAME"
    batch, c_in, c_out = (data.draw(st.integers(1, 2)) for _ in range(3))
    channels_last = data.draw(st.booleans())
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    letters = "HW"[:d] if d == 2 else "W"
    lhs_spec = ("N" + letters + "C") if channels_last else ("NC" + letters)
    rhs_spec = (letters + "IO") if channels_last else ("OI" + letters)
    x = rng.normal(size=[batch] + spatial + [c_in] if channels_last else [batch, c_in] + spatial)
    k = rng.normal(size=window + [c_in, c_out] if channels_last else [c_out, c_in] + window)
    fn = lambda x, k: jnp.sin(lax.conv_general_dilated(x * x, k, strides, padding, rhs_dilation=dilation,
                                                       dimension_numbers=(lhs_spec, rhs_spec, lhs_spec)))
    want = jax.jacrev(fn, argnums=(0, 1))(x, k)
    g = ccjax.graph(fn, x, k, argnums=(0, 1))
    order = tuple(int(v) for v in rng.permutation(np.array(g.eliminable, dtype=int)))
    for got in (ccjax.jacve(fn, argnums=(0, 1), order=order)(x, k), jax.jit(ccjax.jacve(fn, argnums=(0, 1)))(x, k)):
        jax.tree_util.tree_map(lambda w, v: np.testing.assert_allclose(v, w, rtol=1e-11, atol=1e-12), want, got)
    blocks = jax.tree_util.tree_leaves(ccjax.jacve(fn, argnums=(0, 1), output="sparse")(x, k),
                                       is_leaf=lambda b: hasattr(b, "todense"))
    wants = jax.tree_util.tree_leaves(want)
    for block, w in zip(blocks, wants):
        np.testing.assert_allclose(np.asarray(block.todense()), w, rtol=1e-11, atol=1e-12)
    assert sum(block.nse for block in blocks) == sum(np.count_nonzero(w) for w in wants)
