"""Program classes where a plain elimination would give wrong numbers.

Each class is checked against ``jax.jacrev`` in float64 for every named
order, eagerly, under ``jax.jit`` and under ``jax.vmap``:

* real functions with complex intermediates (non-holomorphic operations
  such as ``real``, ``imag``, ``abs``, ``angle``, FFTs);
* ``custom_vjp`` rules that are not linear in the cotangent, with and
  without ``nondiff_argnums``, several outputs, ``symbolic_zeros``;
* collectives over a named ``vmap`` axis;
* gathers and scatters at out-of-range indices, in every index mode.
"""
from functools import partial
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
import jax.experimental.ode  # noqa: F401  (jax.experimental.ode.odeint)
from jax import lax

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax import eliminate, trace  # noqa: E402
from ccjax.api import _plan  # noqa: E402
from ccjax.tasks.random_fn import FIDELITY_FAMILIES, OP_FAMILIES, random_function, random_inputs  # noqa: E402

ORDERS = ("fwd", "rev", "markowitz", "auto")


def assert_close(got, want, what=""):
    got_leaves, want_leaves = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    assert len(got_leaves) == len(want_leaves), what
    for g, w in zip(got_leaves, want_leaves):
        assert g.shape == w.shape and g.dtype == w.dtype, (what, g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-9, atol=1e-12, err_msg=what)


def check_all_ways(f, *args, argnums=0, vmap=True):
    want = jax.jacrev(f, argnums=argnums)(*args)
    for order in ORDERS:
        jac = ccjax.jacve(f, argnums=argnums, order=order)
        assert_close(jac(*args), want, f"eager {order}")
        assert_close(jax.jit(jac)(*args), want, f"jit {order}")
    if vmap:
        batched = [jnp.stack([a, a * 0.5 + 0.1]) for a in args]
        want_b = jax.vmap(jax.jacrev(f, argnums=argnums))(*batched)
        assert_close(jax.vmap(ccjax.jacve(f, argnums=argnums))(*batched), want_b, "vmap")


X = jnp.array([0.3, -0.7, 1.1, 2.0])

COMPLEX_INTERMEDIATES = {
    "imag_exp": lambda a: jnp.imag(jnp.exp(1j * a)),
    "abs": lambda a: jnp.abs(a + 2j * a ** 2),
    "angle": lambda a: jnp.angle(a + 1j * jnp.sin(a)),
    "real_imag_of_products": lambda a: jnp.real((a + 1j) * (a - 2j * a)) + jnp.imag((a + 1j) * (a * a + 1j)),
    "rfft_power": lambda a: jnp.abs(jnp.fft.rfft(a)) ** 2,
    "fft_roundtrip": lambda a: jnp.real(jnp.fft.ifft(jnp.fft.fft(a) * jnp.arange(4))) * a,
    "conj": lambda a: jnp.real(jnp.conj(a + 1j * a ** 2) * (a - 1j)),
    "complex_reenters_real": lambda a: jnp.sin(jnp.real(jnp.exp(1j * a)) * a)
    + jnp.imag(jnp.exp(1j * a * jnp.cos(jnp.real(jnp.exp(1j * a))))),
    "lax_complex": lambda a: jnp.abs(lax.complex(a, a ** 2) * lax.complex(jnp.cos(a), a)),
    "active_scalar_broadcast": lambda a: jnp.real(a[0] * jnp.exp(1j * a)) + jnp.imag(jnp.exp(1j * a[1:3]).sum()),
    "two_inputs_two_outputs": lambda a: (lambda z: jnp.real(z) * jnp.imag(z) + jnp.abs(z))(lax.complex(a, a[::-1])),
    "roll_between_regions": lambda a: jnp.abs(jnp.roll(jnp.angle(jnp.exp(1j * a) + 0.5), 1) + 1j * a),
}

#: Complex regions that read and write element by element: diagonal partials.
ELEMENTWISE_REGIONS = ("imag_exp", "abs", "angle", "real_imag_of_products", "conj", "complex_reenters_real",
                       "lax_complex", "two_inputs_two_outputs", "roll_between_regions")


@pytest.mark.parametrize("name", sorted(COMPLEX_INTERMEDIATES))
def test_real_function_with_complex_intermediates(name):
    check_all_ways(COMPLEX_INTERMEDIATES[name], X)


def test_complex_region_is_one_node_between_real_vertices():
    g = ccjax.graph(COMPLEX_INTERMEDIATES["complex_reenters_real"], X)
    assert all(not jnp.issubdtype(v.dtype, jnp.complexfloating) for v in g.vertices)


@pytest.mark.parametrize("name", sorted(COMPLEX_INTERMEDIATES))
def test_elementwise_complex_regions_have_diagonal_partials(name):
    """A region of elementwise operations on one shape (``exp(1j * x)``,
    ``abs``, ``angle``...) gets a diagonal partial from the JVP of a ones
    tangent, not a dense block; FFTs, reductions and broadcasts of an
    active scalar keep the dense one.  The sparse output stores exactly
    the nonzeros and the cost model counts what runs."""
    fn, x = COMPLEX_INTERMEDIATES[name], X
    g = ccjax.graph(fn, x)
    size = lambda v: int(np.prod(g.vertices[v].shape))
    dense = [r.partial.structure.nnz_values == size(r.src) * size(r.dst) for r in g.raw
             if g.program.nodes[r.node].name == "ccjax_complex_region"]
    assert dense
    assert (not any(dense)) if name in ELEMENTWISE_REGIONS else all(dense), name
    want = np.asarray(jax.jacrev(fn)(x))
    sparse = ccjax.jacve(fn, output="sparse")(x)
    np.testing.assert_allclose(np.asarray(sparse.todense()), want, rtol=1e-9, atol=1e-12)
    if name in ELEMENTWISE_REGIONS:  # conj's paths cancel: a zero diagonal at every input
        assert sparse.nse == (len(x) if name == "conj" else np.count_nonzero(want))
    from test_elimination import check_cost_is_executed
    check_cost_is_executed(fn, (x,), 0, seed=1, n_random=1)


def test_holomorphic_graphs_keep_complex_vertices():
    f = lambda z: jnp.sin(z) * z ** 2
    z = jnp.array([0.3 + 0.2j, -0.5 + 1j])
    got = ccjax.jacve(f, holomorphic=True)(z)
    assert_close(got, jax.jacrev(f, holomorphic=True)(z))


# -- custom_vjp rules ---------------------------------------------------------------------------

@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def clip_gradient(lo, hi, x):
    return x


clip_gradient.defvjp(lambda lo, hi, x: (x, None), lambda lo, hi, res, g: (jnp.clip(g, lo, hi),))


@jax.custom_vjp
def sign_grad(x, y):
    """Two outputs; the rule is nonlinear in both cotangents jointly."""
    return x * y, jnp.sin(x)


def _sign_fwd(x, y):
    return (x * y, jnp.sin(x)), (x, y)


def _sign_bwd(res, g):
    x, y = res
    ga, gb = g
    s = jnp.sign(ga + gb)
    return s * jnp.abs(ga) * y + gb * jnp.cos(x), s * x


sign_grad.defvjp(_sign_fwd, _sign_bwd)


@partial(jax.custom_vjp)
def scaled_identity(x):
    return x


def _scaled_fwd(x):
    return x, None


def _scaled_bwd(_, g):
    return (g * jnp.linalg.norm(g),)  # nonlinear: scales by the cotangent's norm


scaled_identity.defvjp(_scaled_fwd, _scaled_bwd)


@jax.custom_vjp
def linear_rule(x):
    return jnp.sin(x)


linear_rule.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))


@partial(jax.custom_vjp)
def symbolic(x, y):
    return x * y


def _symbolic_fwd(x, y):
    return x.value * y.value, (x.value, y.value)


def _symbolic_bwd(res, g):
    x, y = res
    return g * y * 2.0, g * x * 3.0  # deliberately not the true derivative


symbolic.defvjp(_symbolic_fwd, _symbolic_bwd, symbolic_zeros=True)

CUSTOM_VJP = {
    "clip_gradient_times_3": lambda x: clip_gradient(-0.5, 0.5, x) * 3,
    "clip_gradient_mixed": lambda x: jnp.sin(clip_gradient(-0.2, 0.3, x * x)) * x + x.sum(),
    "two_outputs": lambda x: sign_grad(jnp.tanh(x), x * 2.0)[0] * 3.0 + sign_grad(x, x)[1],
    "norm_scaled": lambda x: scaled_identity(jnp.sin(x) * 2.0) * jnp.arange(1.0, 5.0),
    "linear_rule": lambda x: linear_rule(x * x) * x,
    "symbolic_zeros": lambda x: symbolic(x, jnp.cos(x)) + x,
    # odeint's reverse pass reads ``ts[i]`` with a traced ``i``; the times
    # are a constant of the jaxpr (a NumPy array there, a jax array in JAX's
    # own trace).
    "odeint_constant_times": lambda x: jax.experimental.ode.odeint(
        lambda y, t, k: -k * y + jnp.sin(t), x[:2], jnp.array([0.0, 0.3, 0.5]), x[2:])[-1],
}


@pytest.mark.parametrize("name", sorted(CUSTOM_VJP))
def test_custom_vjp_rules_apply_to_the_whole_cotangent(name):
    check_all_ways(CUSTOM_VJP[name], X)


def test_custom_vjp_rule_is_not_applied_to_unit_cotangents():
    jac = ccjax.jacve(CUSTOM_VJP["clip_gradient_times_3"], order="fwd")(X)
    np.testing.assert_allclose(jac, 0.5 * np.eye(4))


def test_whole_reverse_graphs_still_check_explicit_orders():
    f = CUSTOM_VJP["clip_gradient_mixed"]
    g = ccjax.graph(f, X)
    assert g.whole_reverse == ("custom_vjp_call",)
    assert_close(ccjax.jacve(f, order=list(reversed(g.eliminable)))(X), jax.jacrev(f)(X))
    with pytest.raises(ccjax.OrderError):
        ccjax.jacve(f, order=[10 ** 6])(X)


ROUNDING = {
    "reduce_precision": lambda x: lax.reduce_precision(x, 8, 7) * x,
    "in_a_loop": lambda x: lax.scan(lambda c, xi: (lax.reduce_precision(c * xi, 5, 10), c), 1.0, x)[1],
}


@pytest.mark.parametrize("name", sorted(ROUNDING))
def test_cotangent_rounding_matches_jacrev(name):
    """``jax.jacrev`` rounds the accumulated cotangent where ``reduce_precision``
    is (``jax.jacfwd`` rounds unit tangents, so the two differ); every order
    gives ``jax.jacrev``'s, by JAX's reverse pass."""
    f = ROUNDING[name]
    assert not np.allclose(jax.jacfwd(f)(X), jax.jacrev(f)(X), rtol=1e-9, atol=0)
    assert ccjax.graph(f, X).whole_reverse in (("reduce_precision",), ("scan",))
    check_all_ways(f, X)


@pytest.mark.parametrize("order", ["auto", "fwd", "rev", "markowitz"])
def test_a_narrowing_cast_has_partial_one_as_in_jacfwd(order):
    """README: a cast to float32 and back is differentiated with partial 1 (as
    ``jax.jacfwd`` does); ``jax.jacrev`` rounds the cotangent there instead,
    which changes the result only by float32 rounding."""
    f = lambda x: x.astype(jnp.float32).astype(jnp.float64) * x
    got = ccjax.jacve(f, order=order)(X)
    np.testing.assert_array_equal(got, jax.jacfwd(f)(X))
    np.testing.assert_allclose(got, jax.jacrev(f)(X), rtol=1e-7, atol=0)


def test_rounding_a_constant_keeps_the_elimination():
    f = lambda x: jnp.sin(x) * lax.reduce_precision(jnp.float64(3.3), 8, 7)
    assert ccjax.graph(f, X).whole_reverse == ()
    check_all_ways(f, X)


def test_whole_reverse_cost_counts_the_reverse_pass():
    f = CUSTOM_VJP["linear_rule"]
    assert ccjax.cost(f, X, order="rev") == ccjax.cost(f, X, order="fwd") > 0


def test_custom_vjp3_flag():
    flag = "jax_custom_vjp3"
    if flag not in jax.config.values:
        pytest.skip(f"this JAX has no {flag} flag")
    old = jax.config.values[flag]
    try:
        jax.config.update(flag, not old)
        for name in ("clip_gradient_times_3", "two_outputs", "symbolic_zeros"):
            check_all_ways(CUSTOM_VJP[name], X, vmap=False)
    finally:
        jax.config.update(flag, old)


# -- named axes ---------------------------------------------------------------------------------

COLLECTIVE = {
    "psum": lambda y: jnp.sin(lax.psum(y ** 2, "i")) * y,
    "psum_twice": lambda y: lax.psum(jnp.sin(lax.psum(y, "i")) * y * jnp.cos(y), "i"),
    "pmean_all_gather": lambda y: lax.pmean(y, "i") * lax.all_gather(y, "i").sum(0) + y ** 2,
    "ppermute": lambda y: lax.ppermute(y ** 2, "i", [(0, 1), (1, 2), (2, 0)]) * y,
}


@pytest.mark.parametrize("name", sorted(COLLECTIVE))
@pytest.mark.parametrize("order", ORDERS)
def test_collectives_under_a_named_vmap_axis(name, order):
    f = COLLECTIVE[name]
    ys = jnp.array([[0.3, 0.5], [0.9, -0.2], [1.3, 0.1]])
    want = jax.vmap(jax.jacrev(f), axis_name="i")(ys)
    got = jax.vmap(ccjax.jacve(f, order=order), axis_name="i")(ys)
    assert_close(got, want, name)
    assert_close(jax.jit(jax.vmap(ccjax.jacve(f, order=order), axis_name="i"))(ys), want, name)


# -- out-of-range gathers and scatters ------------------------------------------------------------

Y = jnp.arange(1.0, 7.0)
IDX = jnp.array([7, 1, -1, -9, 5])

OUT_OF_RANGE = {
    "index_default": lambda y: y[jnp.array([7, 1])] * 2.0,
    "take_clip": lambda y: jnp.take(y, IDX, mode="clip") * y[0],
    "take_fill": lambda y: jnp.take(y, IDX, mode="fill", fill_value=0.5) ** 2,
    "take_wrap": lambda y: jnp.take(y, IDX, mode="wrap") * 3.0,
    "at_get_promise": lambda y: y.at[jnp.array([2, 4])].get(mode="promise_in_bounds") * y[1],
    "at_get_fill": lambda y: y.at[IDX].get(mode="fill", fill_value=-1.0) * y.sum(),
    "scatter_add_drop": lambda y: jnp.zeros(6).at[IDX].add(y[:5] ** 2),
    "scatter_set_drop": lambda y: y.at[IDX].set(jnp.sin(y[:5])) * y,
    "scatter_mul_unique": lambda y: y.at[jnp.array([7, 1, 3])].multiply(y[1:4], unique_indices=True),
    "scatter_max": lambda y: y.at[jnp.array([0, 0, 9])].max(y[3:] * 2.0),
    "gather_2d": lambda y: y.reshape(2, 3)[jnp.array([0, 1, 2]), jnp.array([2, 3, -4])] * 2.0,
}


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_out_of_range_indices_match_jacrev(name):
    check_all_ways(OUT_OF_RANGE[name], Y)


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_whole_program_modes_through_out_of_range_gathers_match_jacrev(mode, monkeypatch):
    # jax.jacfwd itself would read the clamped entry; the program's gathers
    # are evaluated with jax.jacrev's derivative, so either plain mode matches it
    import ccjax.api

    idx = jnp.asarray(np.random.RandomState(0).randint(-9, 12, size=16))
    f = lambda y: jax.scipy.linalg.expm(jnp.outer(y[idx], y[idx]) * 0.01)
    want = jax.jacrev(f)(Y)
    assert not np.allclose(jax.jacfwd(f)(Y), want)
    monkeypatch.setattr(ccjax.api, "cheapest", lambda g, plan: ccjax.jax_modes.plan_jax_mode(g, mode))
    assert_close(ccjax.jacve(f)(Y), want, mode)
    assert_close(jax.jit(ccjax.jacve(f))(Y), want, mode)


@pytest.mark.parametrize("mode", ["promise_in_bounds", "clip", "fill"])
def test_forward_matches_reverse_reads_gather_modes_inside_loops(mode):
    from ccjax._jaxpr import forward_matches_reverse

    def body(c, _):
        return c.at[jnp.array([7, 1])].get(mode=mode).sum() * c, None

    jaxpr = jax.make_jaxpr(lambda y: lax.scan(body, y, None, length=2)[0])(Y).jaxpr
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert forward_matches_reverse(eqn.primitive.name, eqn.params)  # bind restages the body's gathers
    (gather,) = [e for e in eqn.params["jaxpr"].jaxpr.eqns if e.primitive.name == "gather"]
    assert forward_matches_reverse("gather", gather.params)  # top level: evaluated with jacrev's derivative
    assert forward_matches_reverse("custom_vjp_call", {}) is False
    # inside a function with a custom JVP rule, bind does not restage the gather
    f = jax.custom_jvp(lambda y: y.at[jnp.array([7, 1])].get(mode=mode) * 2.0)
    f.defjvp(lambda p, t: (f(p[0]), t[0][:2] * 2.0))
    (call,) = jax.make_jaxpr(f)(Y).jaxpr.eqns
    assert forward_matches_reverse(call.primitive.name, call.params) is (mode != "promise_in_bounds")


LOOPS_WITH_OUT_OF_RANGE_GATHERS = {
    "fori": lambda y: lax.fori_loop(0, 3, lambda i, c: jnp.sin(c[jnp.array([7, 1, 0, 2, 3, 4])]) * c, y),
    "scan_xs": lambda y: lax.scan(lambda c, x: (c[jnp.array([1, 9, 0, 2, 3, 5])] * x, c.sum()), y, y)[0],
    "cond": lambda y: lax.cond(y[0] > 0, lambda z: z[jnp.array([7, 1, 0, 2, 3, 4])] ** 2, jnp.cos, y),
    "nested": lambda y: lax.fori_loop(0, 2, lambda i, c: lax.fori_loop(
        0, 2, lambda j, d: d[jnp.array([5, 8, 1, 0, 2, 3])] * d, c), y),
}


def test_a_loop_body_with_effects_keeps_forward_mode_out_of_its_gathers():
    """A body with a callback is bound as it is (not restaged), so its
    out-of-range gather would read the clamped entry in forward mode: only
    reverse mode may run it, and every order matches ``jax.jacrev``."""
    from ccjax._jaxpr import forward_matches_reverse

    def body(i, c):
        jax.debug.callback(lambda v: None, c[0])
        return jnp.sin(c[jnp.array([7, 1, 0, 2, 3, 4])]) * c

    f = lambda y: lax.fori_loop(0, 3, body, y)
    assert not np.allclose(jax.jacfwd(f)(Y), jax.jacrev(f)(Y))
    (eqn,) = [e for e in jax.make_jaxpr(f)(Y).jaxpr.eqns if e.primitive.name == "scan"]
    assert not forward_matches_reverse(eqn.primitive.name, eqn.params)
    assert ccjax.jax_modes.plain_modes(ccjax.graph(f, Y)) == ("rev",)
    check_all_ways(f, Y)


@pytest.mark.parametrize("name", sorted(LOOPS_WITH_OUT_OF_RANGE_GATHERS))
@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_whole_program_modes_through_out_of_range_gathers_in_loops_match_jacrev(name, mode, monkeypatch):
    """A gather with the default ``promise_in_bounds`` mode inside a loop or
    branch: ``jax.jacfwd`` reads the clamped entry, ``jax.jacrev`` drops it.
    The loop is bound with its body's gathers restaged to ``jax.jacrev``'s
    derivative, so forward mode may run (five sweeps ``v[perm]`` of a
    1,024-point grid: 3.8 ms against ``jax.jacrev``'s 180 ms) and matches."""
    import ccjax.api

    f = LOOPS_WITH_OUT_OF_RANGE_GATHERS[name]
    y = Y[:6]
    want = jax.jacrev(f)(y)
    assert not np.allclose(jax.jacfwd(f)(y), want)
    monkeypatch.setattr(ccjax.api, "cheapest", lambda g, plan: ccjax.jax_modes.plan_jax_mode(g, mode))
    assert "fwd" in ccjax.jax_modes.plain_modes(ccjax.graph(f, y))
    assert_close(ccjax.jacve(f)(y), want, mode)
    assert_close(jax.jit(ccjax.jacve(f))(y), want, mode)
    monkeypatch.undo()
    check_all_ways(f, y)


SCATTERS = {"scatter-max": lax.scatter_max, "scatter-min": lax.scatter_min, "scatter-add": lax.scatter_add,
            "scatter": lax.scatter}


@pytest.mark.parametrize("name", sorted(SCATTERS))
@pytest.mark.parametrize("mode", ["CLIP", "FILL_OR_DROP", "PROMISE_IN_BOUNDS"])
def test_plain_modes_follow_jacrev_through_scatters_at_out_of_range_indices(name, mode, monkeypatch):
    """Found by the property test (seed 498897: ``order="auto"`` ran
    ``jax.jacfwd`` through a ``scatter-max`` at a clipped index and was off
    by 0.94).  Where JAX's forward mode differs from ``jax.jacrev`` at an
    out-of-range index, ``forward_matches_reverse`` says so, and ``auto``
    keeps to reverse mode even when forward mode multiplies less."""
    import ccjax.api
    from ccjax._jaxpr import forward_matches_reverse

    dn = lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(0,),
                                     scatter_dims_to_operand_dims=(0,))
    mode_ = getattr(lax.GatherScatterMode, mode)
    f = lambda z, u: SCATTERS[name](jnp.sin(z), jnp.array([[-1], [0], [0]]), u * u, dn, mode=mode_)
    z, u = jnp.array([[0.1, 0.5], [0.3, 0.2], [0.4, 0.4]]), jnp.array([[0.3, 0.5], [0.3, 0.1], [0.2, 0.9]])
    want = jax.jacrev(f, argnums=(0, 1))(z, u)
    forward_agrees = all(np.allclose(a, b) for a, b in zip(jax.jacfwd(f, argnums=(0, 1))(z, u), want))
    (eqn,) = [e for e in jax.make_jaxpr(f)(z, u).jaxpr.eqns if e.primitive.name.startswith("scatter")]
    assert eqn.primitive.name == name
    assert forward_agrees or not forward_matches_reverse(name, eqn.params)
    monkeypatch.setattr(ccjax.api, "cheapest", lambda g, plan: ccjax.jax_modes.plan_jax_mode(
        g, "fwd" if "fwd" in ccjax.jax_modes.plain_modes(g) else "rev"))  # forward mode wherever it is allowed
    for got in (ccjax.jacve(f, argnums=(0, 1))(z, u), jax.jit(ccjax.jacve(f, argnums=(0, 1)))(z, u)):
        assert_close(got, want, mode)


def test_opaque_partials_use_forward_mode_where_it_is_exact():
    # a sort's forward Jacobian is a gather of the identity; its reverse one a scatter-add
    jaxpr = str(jax.make_jaxpr(ccjax.jacve(lambda x: jnp.sort(jnp.sin(x) * x), order="rev"))(Y))
    assert "gather" in jaxpr and "scatter-add" not in jaxpr
    # so is a gather with more outputs than inputs, out-of-range reads included
    f = lambda y: y[jnp.array([7, 1, -1, 2, 3, 9, 0])] * 2.0
    jaxpr = str(jax.make_jaxpr(ccjax.jacve(f, order="rev"))(Y))
    assert "scatter-add" not in jaxpr
    check_all_ways(f, Y)


# -- the order cache and compiled runners ---------------------------------------------------------

def test_search_replaces_the_compiled_auto_runner(tmp_path, monkeypatch):
    from ccjax.cache import OrderCache

    monkeypatch.setenv("CCJAX_CACHE_DIR", str(tmp_path))
    from ccjax.tasks import TASKS

    fn, args = TASKS["RoeFlux_1d"].graph_fn_and_inputs(0)
    argnums = TASKS["RoeFlux_1d"].argnums
    jac = ccjax.jacve(fn, argnums=argnums, order="auto")
    before = jac(*args)
    g = ccjax.graph(fn, *args, argnums=argnums)
    old_plan = g.plans["auto"]
    r = ccjax.search_order(fn, *args, argnums=argnums, method="beam", time_budget=2.0, cache=OrderCache(tmp_path))
    assert "auto" not in g.plans and not [k for k in g.runners if k[0] == "auto"]
    after = jac(*args)
    assert g.plans["auto"].report.order == r.order or g.plans["auto"].report.mults <= old_plan.report.mults
    assert_close(after, before)


# -- property test over the generator's fidelity families -----------------------------------------

def test_generator_reaches_the_fidelity_primitives():
    seen = set()
    for seed in range(40):
        f = random_function(seed, [(4,), (3, 2)], n_ops=12, ops=FIDELITY_FAMILIES + ("unary", "binary"))
        jaxpr = jax.make_jaxpr(f)(*random_inputs(seed, [(4,), (3, 2)]))
        seen |= _primitives(jaxpr.jaxpr)
    for name in ("custom_vjp_call", "gather", "scatter", "fft", "real", "imag", "abs", "custom_jvp_call"):
        assert name in seen or any(s.startswith(name) for s in seen), (name, sorted(seen))


def _primitives(jaxpr) -> set:
    out = set()
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out |= _primitives(sub)
    return out


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10 ** 6), order=st.sampled_from(ORDERS + ("random",)))
def test_random_functions_with_fidelity_families_match_jacrev(seed, order):
    shapes = [(4,), (3, 2)]
    f = random_function(seed, shapes, n_ops=int(np.random.default_rng(seed).integers(4, 14)),
                        ops=OP_FAMILIES + FIDELITY_FAMILIES)
    args = random_inputs(seed, shapes)
    want = jax.jacrev(f, argnums=(0, 1))(*args)
    if order == "random":
        g = ccjax.graph(f, *args, argnums=(0, 1))
        order = [int(v) for v in np.random.default_rng(seed).permutation(np.array(g.eliminable, dtype=int))]
    jac = ccjax.jacve(f, argnums=(0, 1), order=order)
    if all(np.isfinite(np.asarray(w)).all() for w in jax.tree_util.tree_leaves(want)):
        assert_close_nan_rule(jac(*args), want, "eager")
        assert_close_nan_rule(jax.jit(jac)(*args), want, "jit")
    elif _plan(ccjax.graph(f, *args, argnums=(0, 1)), order).mode == "eliminate":
        want = _per_output_jacrev(f, args, (0, 1), want)
        reached = _structural_pattern(f, args, (0, 1), order)
        assert_close_nan_rule(jac(*args), want, "eager", reached)
        assert_close_nan_rule(jax.jit(jac)(*args), want, "jit", reached)
    else:  # JAX's reverse pass over the whole function (custom_vjp): jax.jacrev's NaN and inf too
        for got in (jac(*args), jax.jit(jac)(*args)):
            for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
                np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_a_nan_partial_on_a_path_through_a_zero_partial_gives_nan():
    """Seed 475140: a ``scatter-max`` partial is NaN (JAX's rule divides by
    a zero tie count) on a path through a ``clamp`` whose partial is 0 at
    this input.  The IEEE sum over paths is NaN there; ``jax.jacrev``'s
    ``select`` drops the NaN cotangent and gives 0.  The entry is reached,
    so the NaN rule allows it (README, "NaN and inf")."""
    seed, shapes = 475140, [(4,), (3, 2)]
    f = random_function(seed, shapes, n_ops=int(np.random.default_rng(seed).integers(4, 14)),
                        ops=OP_FAMILIES + FIDELITY_FAMILIES)
    args = random_inputs(seed, shapes)
    got = np.asarray(ccjax.jacve(f, argnums=(0, 1), order="fwd")(*args)[0])
    want = np.asarray(jax.jacrev(f, argnums=(0, 1))(*args)[0])
    differs = np.isnan(got) & np.isfinite(want)
    assert differs.any() and _structural_pattern(f, args, (0, 1), "fwd")[0][differs].all()
    test_random_functions_with_fidelity_families_match_jacrev.hypothesis.inner_test(seed, "fwd")


def test_the_whole_reverse_pass_gives_jacrev_nan_and_inf_too():
    """Found by the property test above (seed 964): a ``custom_vjp`` (the
    graph runs JAX's reverse pass over the whole function) and a
    ``scatter-max`` whose partial is NaN.  ``jax.jacrev`` pulls the NaN
    back through the other output's zero cotangent into a block no path
    reaches; ccjax gives what ``jax.jacrev`` gives, as documented for
    ``custom_vjp``, not the elimination's NaN rule."""
    test_random_functions_with_fidelity_families_match_jacrev.hypothesis.inner_test(964, "fwd")


@pytest.mark.parametrize("order", ORDERS + ("random",))
def test_a_nan_partial_times_a_slice_summed_to_a_scalar_stays_off_structural_zeros(order):
    """Found by the property test above (seed 211): a ``scatter-max`` (dense
    local Jacobian, NaN where JAX's rule divides by a zero tie count) after
    ``mean(tanh(x1[:, 1:2]))``.  The slice's band end has no axis in the
    scalar, and the product of dense forms used to spread the NaN into the
    columns of ``x1[:, 0]``, which nothing reads."""
    test_random_functions_with_fidelity_families_match_jacrev.hypothesis.inner_test(211, order)


def _per_output_jacrev(f, args, argnums, want):
    """jax.jacrev of each output alone: a NaN of the joint jax.jacrev can be
    ``0 * inf`` from another output's cotangent row (vmapped together)."""
    n_out = len(jax.tree_util.tree_leaves(want)) // len(argnums)
    blocks = []
    for k in range(n_out):
        single = lambda *a, k=k: jax.tree_util.tree_leaves(f(*a))[k]
        blocks += jax.tree_util.tree_leaves(jax.jacrev(single, argnums=argnums)(*args))
    return blocks


def assert_close_nan_rule(got, want, what, reached=None):
    """As :func:`assert_close` on the entries jax.jacrev gives finite: where it
    has NaN or inf, ccjax's partials follow the NaN rule below (0 for a
    structural zero, the value where jax.jacrev multiplies a zero cotangent
    by an infinite partial).

    With ``reached`` (boolean arrays: the entries some path reaches), an
    entry jax.jacrev gives finite may be NaN or inf where a path reaches it:
    the IEEE sum over paths multiplies a NaN partial by a partial that is 0
    at this input (a ``clamp`` outside its range), where jax.jacrev's
    ``select`` drops the NaN cotangent (seed 475140)."""
    got_leaves, want_leaves = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    assert len(got_leaves) == len(want_leaves), what
    for k, (g, w) in enumerate(zip(got_leaves, want_leaves)):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, what
        known = np.isfinite(w)
        if reached is not None:
            known &= np.isfinite(g) | ~reached[k]
        np.testing.assert_allclose(g[known], w[known], rtol=1e-9, atol=1e-12, err_msg=what)


# -- NaN and inf: the one intended difference from jax.jacrev --------------------------------------

def _structural_pattern(f, args, argnums, order):
    """Boolean arrays: the entries some path reaches, where ``output="sparse"``
    stores an entry before it leaves out the zeros inside stored values that
    its probe finds (``ccjax.eliminate.structural_keep``: a cumsum's 0/1
    matrix keeps its zeros in the product, so a NaN factor makes them NaN in
    the dense result, and the NaN rule counts every entry of a stored value
    as reached; seed 152109).  The graph cache is emptied around the call,
    so no runner is shared with a probed plan."""
    trace._graphs.data.clear()
    with mock.patch.object(eliminate, "structural_keep", lambda graph, plan: {}):
        out = ccjax.jacve(f, argnums=argnums, order=order, output="sparse")(*args)
    trace._graphs.data.clear()
    blocks = jax.tree_util.tree_leaves(out, is_leaf=lambda x: isinstance(x, jax.experimental.sparse.BCOO))
    masks = []
    for b in blocks:
        m = np.zeros(b.shape, bool)
        idx = np.asarray(b.indices)
        if idx.size:
            m[tuple(idx.T)] = True
        masks.append(m)
    return masks


@settings(max_examples=18, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10 ** 6), bad=st.sampled_from([np.nan, np.inf, -np.inf]),
       order=st.sampled_from(ORDERS), jit=st.booleans())
@example(seed=152109, bad=np.nan, order="fwd", jit=False)  # NaN times the zeros of a cumsum's 0/1 matrix
@example(seed=4096, bad=np.nan, order="auto", jit=False)  # "auto" runs jax.jacfwd
def test_nan_rule_structural_zeros_are_exact_and_finite_entries_agree(seed, bad, order, jit):
    shapes = [(4,), (3, 2)]
    f = random_function(seed, shapes, n_ops=int(np.random.default_rng(seed).integers(4, 14)))
    args = list(random_inputs(seed, shapes))
    poisoned = np.array(args[0])
    poisoned[seed % 4] = bad
    args[0] = jnp.asarray(poisoned)
    jac = ccjax.jacve(f, argnums=(0, 1), order=order)
    got = jax.tree_util.tree_leaves((jax.jit(jac) if jit else jac)(*args))
    mode = _plan(ccjax.graph(f, *args, argnums=(0, 1)), order).mode
    if mode != "eliminate":  # "auto" chose JAX's plain mode: its NaN and inf, as the README says
        plain = jax.jacrev if mode == "jax-rev" else jax.jacfwd
        for g, w in zip(got, jax.tree_util.tree_leaves(plain(f, argnums=(0, 1))(*args))):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, equal_nan=True)
        return
    want = jax.tree_util.tree_leaves(jax.jacrev(f, argnums=(0, 1))(*args))
    for g, w, reached in zip(got, want, _structural_pattern(f, args, (0, 1), order)):
        g, w = np.asarray(g), np.asarray(w)
        assert np.all(g[~reached] == 0), "a structural zero must be exactly 0, NaN inputs or not"
        both = np.isfinite(g) & np.isfinite(w)
        np.testing.assert_allclose(g[both], w[both], rtol=1e-9, atol=1e-12)


def test_nan_rule_examples():
    x = jnp.array([jnp.nan, 1.0, 2.0])
    # elementwise: ccjax keeps NaN on the diagonal; jax.jacrev multiplies the zero
    # cotangents of the other rows by cos(nan) and fills the whole column with NaN
    got, want = np.asarray(ccjax.jacve(jnp.sin)(x)), np.asarray(jax.jacrev(jnp.sin)(x))
    assert np.isnan(got[0, 0]) and np.all(got[1:, 0] == 0) and np.isnan(want[1:, 0]).all()
    np.testing.assert_allclose(got[:, 1:], want[:, 1:])
    f = lambda x: jnp.tanh(jnp.sin(x) * 2.0 + x ** 2).sum() * x
    # d out[i]/dx[j] = [i == j] S + x[i] dS/dx[j] with S = sum(...) NaN; for i != j, both > 0, the
    # entry does not depend on x[0]: ccjax gives its value, jax.jacrev NaN everywhere
    off = ~np.eye(2, dtype=bool)
    want = np.asarray(jax.jacrev(f)(x.at[0].set(0.0)))[1:, 1:][off]
    assert np.isnan(np.asarray(jax.jacrev(f)(x))).all()
    for order in ORDERS:
        got = np.asarray(ccjax.jacve(f, order=order)(x))
        assert np.isnan(got[0]).all() and np.isnan(np.diag(got)).all()
        np.testing.assert_allclose(got[1:, 1:][off], want)


def test_custom_linear_solve_with_a_pytree_right_hand_side():
    from jax.scipy.sparse.linalg import cg

    a = jnp.array([[4.0, 1.0], [1.0, 3.0]])

    def f(x):
        sol, _ = cg(lambda v: {"a": a @ v["a"], "b": 2.0 * (a @ v["b"])}, {"a": x[:2], "b": x[2:]})
        return sol["a"] * x[0] + sol["b"]

    check_all_ways(f, X)


def _linear_solve_eqn(fn, *args):
    """The ``custom_linear_solve`` equation of ``fn``'s jaxpr (searched through sub-jaxprs)."""
    import jax.extend as jex

    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "custom_linear_solve":
                return e
            for sub in jex.core.jaxprs_in_params(e.params):
                found = walk(sub)
                if found is not None:
                    return found
        return None

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def test_forward_matches_reverse_reads_matvec_but_not_the_solves_of_a_linear_solve(monkeypatch):
    # jnp.linalg.solve gathers by its LU pivots inside `solve`/`transpose_solve`, which JAX's AD
    # applies as given (never differentiated or transposed): forward mode is exact there
    import ccjax.api
    from ccjax._jaxpr import forward_matches_reverse
    from ccjax.jax_modes import plain_modes

    A = jnp.asarray(np.random.RandomState(1).randn(4, 4))
    b = jnp.linspace(0.1, 0.9, 4)

    def f(A, b):
        return jnp.linalg.solve(A @ A.T + 4.0 * jnp.eye(4), jnp.sin(b) * b)

    eqn = _linear_solve_eqn(f, A, b)
    assert "gather" in str(eqn.params["jaxprs"].solve)
    assert forward_matches_reverse(eqn.primitive.name, eqn.params)
    assert plain_modes(ccjax.graph(f, A, b, argnums=(0, 1))) == ("fwd", "rev")  # both; forward first: it factors
    want = jax.jacrev(f, argnums=(0, 1))(A, b)
    for mode in ("fwd", "rev"):
        monkeypatch.setattr(ccjax.api, "cheapest", lambda g, plan: ccjax.jax_modes.plan_jax_mode(g, mode))
        assert_close(jax.jit(ccjax.jacve(f, argnums=(0, 1)))(A, b), want, mode)
    monkeypatch.undo()
    check_all_ways(lambda y: f(jnp.outer(y[:4], y[2:6]) + jnp.eye(4), y[:4]), Y)

    # a gather in `matvec` is differentiated and transposed: its index mode still decides
    idx = jnp.array([2, 0, 1, 3])
    for mode, agrees in (("promise_in_bounds", False), ("clip", True)):
        def g(b, mode=mode):
            matvec = lambda x: x.at[idx].get(mode=mode) * 2.0 + x
            return lax.custom_linear_solve(matvec, b, lambda mv, r: r / 3.0, lambda vm, r: r / 3.0)

        eqn = _linear_solve_eqn(g, b)
        assert forward_matches_reverse(eqn.primitive.name, eqn.params) is agrees, mode
