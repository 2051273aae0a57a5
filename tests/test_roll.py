"""Unrolled loops rolled back into ``lax.scan`` (:mod:`ccjax.roll`).

The rolled jaxpr must compute exactly what the original does (same
equations on the same values), and ``jacve(order="auto")``, which plans on
it for large programs, must equal ``jax.jacrev``.  The size thresholds are
lowered here so that small loops roll.
"""
from __future__ import annotations

import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.extend import core as jex

import ccjax
from ccjax import _jaxpr, roll, trace
from conftest import assert_jac_equal


@pytest.fixture
def low_thresholds(monkeypatch):
    """Roll loops of any size (every rolling decided afresh)."""
    monkeypatch.setattr(roll, "ROLL_MIN_EQUATIONS", 0)
    monkeypatch.setattr(roll, "MIN_REMOVED", 8)
    monkeypatch.setattr(trace, "_rollings", trace._LRU(16))
    monkeypatch.setattr(trace, "_graphs", trace._LRU(16))


def _closed(f, *args):
    return jax.make_jaxpr(f)(*args)


def _run(rolling, closed, *args):
    return jex.jaxpr_as_fun(rolling.closed(closed.consts))(*args)


def _scans(jaxpr) -> int:
    return sum(e.primitive.name == "scan" for e in jaxpr.eqns)


A = np.eye(6, k=1) - 2 * np.eye(6) + np.eye(6, k=-1)


def rk4(x, steps=12):
    rhs = lambda y: -jnp.sin(y) + 0.1 * (jnp.asarray(A) @ y)
    for _ in range(steps):
        k1 = rhs(x)
        k2 = rhs(x + 0.05 * k1)
        k3 = rhs(x + 0.05 * k2)
        k4 = rhs(x + 0.1 * k3)
        x = x + 0.1 / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


_RNG = np.random.default_rng(0)
WEIGHTS = [jnp.asarray(_RNG.normal(size=(6, 6)) / 3) for _ in range(10)]
BIASES = [jnp.asarray(_RNG.normal(size=6) / 10) for _ in range(10)]


def mlp_relu(x):
    for w, b in zip(WEIGHTS, BIASES):
        x = jax.nn.relu(w @ x + b) + 0.1 * x
    return x


def time_dependent(x):
    h = 0.1
    for k in range(12):
        t = k * h  # a Python float per step: a different literal in every block
        x = x + h * (jnp.cos(t) * x - x ** 3)
    return x


def collected(x):
    states = []
    for _ in range(10):
        x = jnp.tanh(jnp.roll(x, 1) * x + 0.5)
        states.append(x)
    return jnp.stack(states).sum(0) + x[::-1]


def two_loops(x):
    for _ in range(8):
        x = jnp.sin(x) * 1.1
    y = x.sum()
    for _ in range(9):
        x = x * y + jnp.cumsum(x) / 10
    return x


def second_order(x):
    prev = x
    for _ in range(12):
        x, prev = jnp.tanh(x) + 0.5 * prev, x
    return x


def indexed(x):
    """``x[k]`` in iteration ``k``: a static slice at another start in every block."""
    acc = x[0]
    for k in range(5):
        acc = acc * jnp.sin(x[k]) + x[k + 1] ** 2
    return acc * x


def driven(x):
    """A window of two entries moving along the input, added to a carried state."""
    state = x[4:]
    for k in range(5):
        state = jnp.tanh(state * 1.5 + x[k:k + 2] - 0.2 * state[::-1])
    return jnp.concatenate([state, x[:4] * state[0]])


jitted_rk4 = jax.jit(rk4)

PROGRAMS = {"rk4": rk4, "mlp_relu": mlp_relu, "time_dependent": time_dependent, "collected": collected,
            "two_loops": two_loops, "second_order": second_order, "jitted_rk4": jitted_rk4,
            "indexed": indexed, "driven": driven}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_unrolled_loops_roll_into_scans_that_compute_the_same(name, low_thresholds):
    f = PROGRAMS[name]
    x = jnp.linspace(0.1, 1.2, 6)
    closed = _closed(f, x)
    rolling = roll.roll_loops(closed)
    assert rolling is not None
    assert _scans(rolling.jaxpr) >= 1
    assert len(rolling.jaxpr.eqns) < _jaxpr.equation_count(closed.jaxpr)
    np.testing.assert_allclose(_run(rolling, closed, x)[0], f(x), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_auto_plans_the_rolled_program_and_stays_exact(name, low_thresholds):
    f = PROGRAMS[name]
    for x in (jnp.linspace(0.1, 1.2, 6), jnp.linspace(-0.7, 0.4, 6)):
        expected = jax.jacrev(f)(x)
        assert_jac_equal(ccjax.jacve(f)(x), expected)
        assert_jac_equal(jax.jit(ccjax.jacve(f))(x), expected)
    t, _, _ = trace.trace(f, (x,), {}, 0, False)
    g, rolled = trace.auto_graph_of(t)
    assert _scans(rolled.closed.jaxpr) >= 1
    # cost reports the rolled plan: the one jacve(order="auto") runs
    assert ccjax.cost(f, x) == ccjax.api._plan(g, "auto").report.mults


@pytest.mark.parametrize("name", ["indexed", "driven"])
def test_a_loop_reading_another_window_each_iteration_rolls_with_dynamic_slices(name, low_thresholds):
    """``x[k]`` in a Python loop leaves a ``slice`` per block whose start
    differs: the blocks still repeat, and the scan reads block ``k``'s
    window with a ``dynamic_slice`` at the starts it carries as ``xs``."""
    f = PROGRAMS[name]
    x = jnp.linspace(0.1, 1.2, 6)
    closed = _closed(f, x)
    loop = roll.find_loop(closed.jaxpr, roll.MIN_REMOVED)
    assert loop is not None and loop.windows
    for _, starts in loop.windows:
        assert starts.shape[0] == loop.repeats and len({tuple(row) for row in starts}) == loop.repeats
    rolling = roll.roll_loops(closed)
    body = next(e for e in rolling.jaxpr.eqns if e.primitive.name == "scan").params["jaxpr"].jaxpr
    assert any(e.primitive.name == "dynamic_slice" for e in body.eqns)
    assert not any(e.primitive.name == "slice" for e in body.eqns if e.params.get("strides") is None
                   and e.invars[0].aval.shape == (6,))


def strided(x):
    acc = jnp.zeros(2)
    for k in range(4):
        acc = jnp.cos(acc) + x[k:k + 3:2]  # a strided window: its slices are not read as windows
    return acc


def sliding(x):
    return jnp.stack([jnp.sum(jnp.sin(x[i:i + 3]) * x[i:i + 3]) for i in range(4)] * 3)


def test_independent_reads_of_windows_are_not_rolled(low_thresholds):
    """A sliding window carries nothing from block to block: its slices
    stay static selections (kept sparse by the elimination)."""
    x = jnp.linspace(0.1, 1.2, 6)
    loop = roll.find_loop(_closed(sliding, x).jaxpr, roll.MIN_REMOVED)
    assert loop is None or not loop.windows
    assert_jac_equal(jax.jit(ccjax.jacve(sliding))(x), jax.jacrev(sliding)(x))


def test_a_strided_window_keeps_its_static_slices_and_stays_exact(low_thresholds):
    x = jnp.linspace(0.1, 1.2, 6)
    loop = roll.find_loop(_closed(strided, x).jaxpr, roll.MIN_REMOVED)
    assert loop is None or not loop.windows
    assert_jac_equal(jax.jit(ccjax.jacve(strided))(x), jax.jacrev(strided)(x))


@pytest.mark.parametrize("name", ["rk4", "mlp_relu", "two_loops", "indexed"])
def test_rolled_programs_under_vmap(name, low_thresholds):
    f = PROGRAMS[name]
    xs = jnp.stack([jnp.linspace(0.1, 1.2, 6), jnp.linspace(-0.7, 0.4, 6), jnp.linspace(0.3, -0.2, 6)])
    expected = jax.vmap(jax.jacrev(f))(xs)
    assert_jac_equal(jax.vmap(ccjax.jacve(f))(xs), expected)
    assert_jac_equal(jax.jit(jax.vmap(ccjax.jacve(f)))(xs), expected)


def complex_loop(x):
    for _ in range(10):
        z = jnp.exp(1j * x) * (0.5 + 0.25j)
        x = jnp.real(z * jnp.conj(z) + z) + 0.3 * x
    return x


def kinked_loop(x):
    for _ in range(10):
        x = jnp.sqrt(jnp.abs(x)) + jnp.roll(x, 1) * 0.5
    return x


@pytest.mark.parametrize("f", [complex_loop, kinked_loop], ids=lambda f: f.__name__)
def test_rolled_loops_at_nan_and_infinite_partials_behave_as_jacrev(f, low_thresholds):
    """A rolled square loop runs JAX's reverse mode over the scan (its
    forward mode multiplies as much: ties keep reverse mode), so a NaN input
    or an infinite partial (``sqrt`` at 0) gives exactly ``jax.jacrev``'s
    Jacobian, NaN and inf where it has them, finite values where it does;
    forward mode would spread ``0 * inf = nan`` over every column."""
    x = jnp.linspace(0.1, 1.2, 6)
    t, _, _ = trace.trace(f, (x,), {}, 0, False)
    g, rolled = trace.auto_graph_of(t)
    assert _scans(rolled.closed.jaxpr) == 1 and ccjax.api._plan(g, "auto").mode == "jax-rev"
    for bad in (x.at[2].set(jnp.nan), x.at[0].set(0.0), x):
        want = np.asarray(jax.jacrev(f)(bad))
        for got in (ccjax.jacve(f)(bad), jax.jit(ccjax.jacve(f))(bad)):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, equal_nan=True)


def test_a_loop_with_a_collective_over_a_named_axis_is_not_rolled_and_stays_exact(low_thresholds, monkeypatch):
    """A collective over a named axis is an equation with an effect (the
    axis), so its loop is left unrolled, and the whole-reverse plan of a
    collective applies."""
    def f(x):
        for _ in range(10):
            x = jnp.tanh(x) - jax.lax.pmean(x, "batch") * 0.1
        return x

    rolled = []
    monkeypatch.setattr(trace, "roll_loops", lambda closed: rolled.append(roll.roll_loops(closed)) or rolled[-1])
    xs = jnp.stack([jnp.linspace(0.1, 1.2, 6), jnp.linspace(0.6, -0.3, 6)])
    want = jax.vmap(jax.jacrev(f), axis_name="batch")(xs)
    assert_jac_equal(jax.vmap(ccjax.jacve(f), axis_name="batch")(xs), want)
    assert_jac_equal(jax.jit(jax.vmap(ccjax.jacve(f), axis_name="batch"))(xs), want)
    assert rolled and not any(rolled)


@jax.custom_vjp
def _half_gradient_sin(x):
    return jnp.sin(x)


# A backward rule that is not the true derivative: a rebind or a plan that
# ignored it would differ from jax.jacrev.
_half_gradient_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (0.5 * g,))


@pytest.mark.parametrize("tall", [False, True])
def test_a_loop_over_a_custom_vjp_follows_its_rule_in_every_order(low_thresholds, tall):
    """Each block's ``custom_vjp`` call carries rule objects of its own, so
    the blocks differ and the loop stays unrolled; every order, eager and
    jitted, gives ``jax.jacrev``'s Jacobian, which uses the custom rule."""
    def f(x):
        x = x * jnp.linspace(0.1, 1.0, 6) if tall else x
        for _ in range(10):
            x = _half_gradient_sin(x) * 1.1 + jnp.roll(x, 1) * 0.2
        return x

    x = jnp.asarray(0.7) if tall else jnp.linspace(0.1, 1.2, 6)
    rolled = []
    with mock.patch.object(trace, "roll_loops", lambda closed: rolled.append(roll.roll_loops(closed)) or rolled[-1]):
        want = jax.jacrev(f)(x)
        for order in ("auto", "rev", "fwd", "markowitz"):
            assert_jac_equal(ccjax.jacve(f, order=order)(x), want)
            assert_jac_equal(jax.jit(ccjax.jacve(f, order=order))(x), want)
    assert rolled and not any(rolled)


def test_an_explicit_order_names_the_unrolled_graphs_vertices(low_thresholds):
    x = jnp.linspace(0.1, 1.2, 6)
    g = ccjax.graph(rk4, x)
    assert len(g.eliminable) > 100  # not rolled: its ids are the ones an order names
    order = list(reversed(g.eliminable))
    assert_jac_equal(ccjax.jacve(rk4, order=order)(x), jax.jacrev(rk4)(x))


def test_per_layer_parameters_as_differentiated_inputs_are_stacked(low_thresholds):
    def f(params, x):
        for w, b in params:
            x = jnp.tanh(w @ x + b)
        return x

    params = [(w, b) for w, b in zip(WEIGHTS, BIASES)]
    x = jnp.linspace(0.1, 1.2, 6)
    closed = _closed(f, params, x)
    rolling = roll.roll_loops(closed)
    assert rolling is not None and _scans(rolling.jaxpr) == 1
    assert_jac_equal(ccjax.jacve(f, argnums=(0, 1))(params, x), jax.jacrev(f, argnums=(0, 1))(params, x))


def test_a_rolling_is_reused_for_new_weights_of_the_same_structure(low_thresholds):
    def make(scale):
        ws = [w * scale for w in WEIGHTS]

        def f(x):
            for w in ws:
                x = jnp.tanh(w @ x)
            return x
        return f

    x = jnp.linspace(0.1, 1.2, 6)
    f1, f2 = make(1.0), make(-0.5)
    assert_jac_equal(ccjax.jacve(f1)(x), jax.jacrev(f1)(x))
    assert len(trace._rollings.data) == 1
    assert_jac_equal(ccjax.jacve(f2)(x), jax.jacrev(f2)(x))  # same rolling, the new weights stacked
    assert_jac_equal(ccjax.jacve(f1)(x), jax.jacrev(f1)(x))
    assert len(trace._rollings.data) == 1


def test_stacked_weights_are_made_once_while_the_same_arrays_come_in(low_thresholds):
    closed = _closed(mlp_relu, jnp.ones(6))
    rolling = roll.roll_loops(closed)
    first = rolling.closed(closed.consts).consts
    again = rolling.closed(closed.consts).consts
    stacked = [k for k, src in enumerate(rolling.sources) if src[0] == "stack"]
    assert stacked and all(first[k] is again[k] for k in stacked)
    fresh = [jnp.array(c) for c in closed.consts]
    other = rolling.closed(fresh).consts
    assert all(other[k] is not first[k] for k in stacked)
    assert all(np.array_equal(other[k], first[k]) for k in stacked)


def test_small_programs_and_programs_without_loops_are_not_rolled():
    x = jnp.linspace(0.1, 1.2, 6)
    short = lambda x: rk4(x, steps=3)
    assert _jaxpr.equation_count(_closed(short, x).jaxpr) < roll.ROLL_MIN_EQUATIONS
    assert roll.roll_loops(_closed(short, x)) is None
    def no_loop(x):
        for k in range(400):
            x = getattr(jnp, ("sin", "cos", "tanh")[k % 3])(x) * (1 + (k % 7))
        return x
    # a long program whose blocks differ from step to step in their literals only rolls with them as xs
    rolling = roll.roll_loops(_closed(no_loop, x), min_equations=100, min_removed=50)
    assert rolling is not None
    np.testing.assert_allclose(_run(rolling, _closed(no_loop, x), x)[0], no_loop(x), rtol=1e-14)


def lorenz63_rk4(x, steps=3):
    """RK4 steps of Lorenz-63 on its three scalar components (73 equations a step)."""
    rhs = lambda u, v, w: (10.0 * (v - u), u * (28.0 - w) - v, u * v - 8.0 / 3.0 * w)
    y, h = (x[0], x[1], x[2]), 0.01
    for _ in range(steps):
        stages = [rhs(*y)]
        for c in (0.5, 0.5, 1.0):
            stages.append(rhs(*(a + c * h * d for a, d in zip(y, stages[-1]))))
        y = tuple(a + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4) for a, k1, k2, k3, k4 in zip(y, *stages))
    return jnp.stack(y)


def test_three_long_blocks_roll_in_a_long_program_only():
    """Three repeats roll where the program has FEW_REPEATS_MIN_EQUATIONS
    equations or more (three scalar RK4 steps: 220); two do not, and
    neither do three in a shorter program (three 33-equation RK4 steps)."""
    x = jnp.asarray([1.0, 1.0, 1.0])
    three = _closed(lorenz63_rk4, x)
    assert _jaxpr.equation_count(three.jaxpr) >= roll.FEW_REPEATS_MIN_EQUATIONS
    rolling = roll.roll_loops(three)
    assert rolling is not None and _scans(rolling.closed(three.consts).jaxpr) == 1
    np.testing.assert_allclose(_run(rolling, three, x)[0], lorenz63_rk4(x), rtol=1e-14)
    for f in (ccjax.jacve(lorenz63_rk4), jax.jit(ccjax.jacve(lorenz63_rk4))):
        assert_jac_equal(f(x), jax.jacrev(lorenz63_rk4)(x))
    xs = jnp.asarray(np.random.default_rng(3).normal(size=(4, 3)))
    assert_jac_equal(jax.vmap(ccjax.jacve(lorenz63_rk4))(xs), jax.vmap(jax.jacrev(lorenz63_rk4))(xs))
    assert roll.roll_loops(_closed(functools.partial(lorenz63_rk4, steps=2), x)) is None
    y = jnp.linspace(0.1, 1.2, 6)
    short = _closed(lambda y: rk4(y, steps=3), y)
    assert roll.roll_loops(short, min_equations=0) is None


def test_a_loop_with_effects_is_not_rolled(low_thresholds):
    def f(x):
        for _ in range(10):
            x = jnp.sin(x)
            jax.debug.callback(lambda v: None, x)
        return x

    assert roll.roll_loops(_closed(f, jnp.ones(3))) is None


# ---------------------------------------------------------------- property test
_OPS = {
    "sin": jnp.sin,
    "tanh": jnp.tanh,
    "square": lambda v: v * v,
    "matmul": lambda v: jnp.asarray(A[:v.shape[0], :v.shape[0]]) @ v,
    "roll": lambda v: jnp.roll(v, 2),
    "cumsum": lambda v: jnp.cumsum(v) / 5,
    "reverse": lambda v: v[::-1],
    "pad_slice": lambda v: jnp.pad(v[1:], (0, 1)),
    "scale": lambda v: 0.7 * v,
}


@st.composite
def loops(draw):
    ops = draw(st.lists(st.sampled_from(sorted(_OPS)), min_size=1, max_size=4))
    repeats = draw(st.integers(4, 9))
    second_order = draw(st.booleans())
    per_step = draw(st.sampled_from(["none", "weight", "literal", "window", "entry"]))
    collect = draw(st.booleans())
    jit_body = draw(st.booleans())
    prologue = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 16))
    return ops, repeats, second_order, per_step, collect, jit_body, prologue, seed


def _loop_program(ops, repeats, second_order, per_step, collect, jit_body, prologue, seed):
    rng = np.random.default_rng(seed)
    weights = [jnp.asarray(rng.normal(size=6) / 2) for _ in range(repeats)]

    def body(x, k, drive):
        for name in ops:
            x = _OPS[name](x) + 0.1 * x
        if per_step == "weight":
            x = x * weights[k]
        elif per_step == "literal":
            x = x + 0.25 * k
        elif per_step == "window":  # a static slice starting elsewhere each step
            x = x + 0.2 * jnp.sin(drive[k:k + x.shape[0]])
        elif per_step == "entry":  # one entry of the input each step
            x = x * (1 + 0.1 * drive[k % x.shape[0]])
        return x

    step = jax.jit(body, static_argnums=1) if jit_body else body

    def f(x):
        drive = jnp.tile(x, 3)
        if prologue:
            x = jnp.cos(x) + x
        prev, states = x, []
        for k in range(repeats):
            new = step(x, k, drive)
            if second_order:
                new = new + 0.3 * prev
            prev, x = x, new
            states.append(x)
        return (jnp.stack(states).sum(0) if collect else 0.0) + x * 2
    return f


@settings(max_examples=20, deadline=None)
@given(loops())
def test_random_loops_roll_exactly(spec):
    f = _loop_program(*spec)
    x = jnp.asarray(np.random.default_rng(spec[-1]).normal(size=6))
    closed = _closed(f, x)
    rolling = roll.roll_loops(closed, min_equations=0, min_removed=4)
    if rolling is None:
        # A value read two blocks after it is made (second order) rolls only
        # as blocks of two steps, which needs 8 steps; tiny programs remove
        # fewer than min_removed equations.
        second_order, repeats = spec[2], spec[1]
        assert (second_order and repeats < 8) or _jaxpr.equation_count(closed.jaxpr) < 40
        return
    np.testing.assert_allclose(_run(rolling, closed, x)[0], f(x), rtol=1e-13, atol=1e-13)
    if spec[3] in ("window", "entry"):  # the input is read at each step's own start
        bodies = [e.params["jaxpr"].jaxpr for e in rolling.jaxpr.eqns if e.primitive.name == "scan"]
        assert any(e.primitive.name == "dynamic_slice" for body in bodies for e in body.eqns)
    rolled = jex.jaxpr_as_fun(rolling.closed(closed.consts))
    expected = jax.jacrev(f)(x)
    # Rolled and unrolled sum their products in different orders: rounding on
    # the scale of the Jacobian's largest entry, not of each entry.
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(jax.jacrev(lambda v: rolled(v)[0])(x), expected, rtol=1e-12, atol=1e-13 * scale)
    with mock.patch.object(roll, "ROLL_MIN_EQUATIONS", 0), mock.patch.object(roll, "MIN_REMOVED", 4):
        assert_jac_equal(ccjax.jacve(f)(x), expected)


def test_order_searches_store_for_the_graph_auto_plans(low_thresholds, tmp_path):
    from ccjax.cache import OrderCache

    x = jnp.linspace(0.1, 1.2, 6)
    store = OrderCache(tmp_path)
    result = ccjax.search_order(rk4, x, time_budget=0.5, cache=store)
    rolled = trace.auto_graph(rk4, x)
    assert _scans_in_graph(rolled) and store.get(rolled).order == tuple(result.order)
    assert store.get(ccjax.graph(rk4, x)) is None
    assert_jac_equal(ccjax.jacve(rk4)(x), jax.jacrev(rk4)(x))


def _scans_in_graph(g) -> bool:
    return any(node.name == "scan" for node in g.program.nodes)
