"""Max/min derivatives when XLA evaluates one value two ways (docs/known_issues.md).

JAX differentiates ``reduce_max``/``reduce_min``/``max``/``min`` by locating
the chosen element with an exact equality, ``x == max(x)``.  Inside one
jitted program XLA:CPU may compute ``x`` more than once (fused into the
reduction and again into the comparison) and its LLVM backend contracts
``a * b - c`` into an FMA in some of those copies only, so the copies can
differ in the last bit and the equality misses: the derivative of the max
comes out 0, inf or NaN.  ``ccjax.jacve`` always runs jitted, so its rules
must not depend on that equality holding across recomputations: the
``reduce_max``/``reduce_min`` partial always counts the element ``argmax``
picks, and ``max``/``min`` compare the operands with each other.

The inputs are chosen so that ``x0 * x0 - y0`` rounds differently with and
without an FMA (checked below); they are far from any tie.
"""
from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ccjax
from ccjax.tasks import TASKS
from conftest import check_orders

X0 = float.fromhex("0x1.d0dbc74d47003p-1")  # 0.9079...
Y0 = float.fromhex("-0x1.fe990f2ea882ep-1")  # -0.9972...


def _fma(a: float, b: float, c: float) -> float:
    """``a * b + c`` rounded once (exact rational arithmetic)."""
    return float(Fraction(a) * Fraction(b) + Fraction(c))


def test_inputs_round_differently_with_fma():
    assert _fma(X0, X0, -Y0) != X0 * X0 - Y0


CHOOSERS = {
    "reduce_max": lambda x, y: jnp.max(x * x - y),
    "reduce_min": lambda x, y: jnp.min(y - x * x),
    "reduce_max_axis": lambda x, y: jnp.max((x * x - y)[None, :] + jnp.zeros((2, 1)), axis=1),
    "max_then_sum": lambda x, y: jnp.sum(jnp.maximum(x * x - y, 0.5)),
    "min_two_values": lambda x, y: jnp.minimum(x * x - y, 2.0 * y * x),
    "softmax_shift": lambda x, y: jnp.exp((x * x - y) - jnp.max(x * x - y)),
}


@pytest.mark.parametrize("name", sorted(CHOOSERS))
def test_chooser_of_recomputed_value(name):
    """Each order equals eager ``jax.jacrev``; the max is at ``X0`` (margin > 0.8)."""
    x = jnp.asarray([X0, 0.1, 0.2])
    y = jnp.asarray(Y0)
    check_orders(CHOOSERS[name], x, y, argnums=(0, 1))


def test_chooser_under_vmap_and_jit():
    f = CHOOSERS["reduce_max"]
    xs = jnp.asarray([[X0, 0.1, 0.2], [0.3, X0, -0.4]])
    ys = jnp.asarray([Y0, Y0])
    want = jax.vmap(jax.jacrev(f, argnums=(0, 1)))(xs, ys)
    got = jax.jit(jax.vmap(ccjax.jacve(f, argnums=(0, 1), order="markowitz")))(xs, ys)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-12, atol=1e-12)


def _task_f_example(ex: int):
    t = TASKS["f"]
    return t, tuple(jnp.asarray(a[ex], jnp.float64) for a in t.batched_inputs(0, 16))


def _kink_margins(fn, args) -> list[tuple[str, float]]:
    """Eagerly evaluated distance of every max/min/abs to its kink (exact
    ``max(v, v)`` ties by construction excluded)."""
    closed = jax.make_jaxpr(fn)(*args)
    env = dict(zip(closed.jaxpr.invars, args))
    env.update(zip(closed.jaxpr.constvars, closed.consts))

    def read(v):
        return v.val if type(v).__name__ == "Literal" else env[v]

    margins = []
    for eqn in closed.jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        outs = eqn.primitive.bind(*ins, **eqn.params)
        outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
        name = eqn.primitive.name
        if name in ("max", "min") and eqn.invars[0] is not eqn.invars[1]:
            margins.append((name, float(np.min(np.abs(np.asarray(ins[0]) - np.asarray(ins[1]))))))
        elif name in ("reduce_max", "reduce_min"):
            x = np.asarray(ins[0])
            axes = tuple(eqn.params["axes"])
            top2 = np.sort(np.moveaxis(x, axes, tuple(range(len(axes)))).reshape(
                (-1,) + tuple(d for a, d in enumerate(x.shape) if a not in axes)), axis=0)
            if top2.shape[0] > 1:
                gap = top2[-1] - top2[-2] if name == "reduce_max" else top2[1] - top2[0]
                margins.append((name, float(np.min(gap))))
        elif name == "abs":
            margins.append((name, float(np.min(np.abs(np.asarray(ins[0]))))))
    return margins


def test_task_f_example_4_is_not_at_a_tie():
    """The benchmark's failing input is ordinary: every max/min/abs is more
    than 1e-5 (over 1e10 ulps) from its kink, so no rounding difference
    between eager and jitted evaluation flips a branch."""
    t, args = _task_f_example(4)
    margins = _kink_margins(t.fn, args)
    assert any(n == "reduce_max" for n, _ in margins)
    assert min(m for _, m in margins) > 1e-5, margins


def test_task_f_example_4_every_order():
    """The benchmark finding: ``markowitz`` (and, under the test suite's XLA
    flags, every order) lost the derivative of f's ``reduce_max``."""
    t, args = _task_f_example(4)
    check_orders(t.fn, *args, argnums=t.argnums, n_random=1, rtol=1e-9, atol=1e-9)


def test_max_derivative_and_primal_with_aux():
    """The derivative of the max with respect to ``y`` is exactly -1 (not 0,
    inf or NaN) and the primal returned as aux is f's value."""
    f = CHOOSERS["reduce_max"]
    x = jnp.asarray([X0, 0.1, 0.2])
    jac, aux = ccjax.jacve(lambda x, y: (f(x, y), f(x, y)), argnums=(0, 1), has_aux=True)(x, jnp.asarray(Y0))
    assert float(aux) == pytest.approx(float(f(x, jnp.asarray(Y0))), rel=0, abs=4e-16)
    assert float(jac[1]) == -1.0


def test_benchmark_reference_is_eager_ad():
    """benchmarks/runtime.py checks every method against eager AD, not against a
    jitted program: at example 4 of task f the jitted ``jax.jacrev`` is NaN under
    the test suite's XLA flags, the eager reference is not, and ccjax agrees."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.runtime import Setting, check_tree, eager_reference

    t = TASKS["f"]
    seed = int(np.random.default_rng(0).integers(0, 2**31 - 1, size=15)[3])  # example 4 of batched_inputs(0, 16)
    st = Setting(t, None, seed=seed)
    _, args = _task_f_example(4)
    for a, b in zip(st.args, args):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ref = eager_reference(st)
    with jax.disable_jit():
        want = jax.jacrev(t.fn, argnums=t.argnums)(*st.args)
    ok, _, msg = check_tree(ref, want, rtol=1e-12, atol=1e-12)
    assert ok, msg
    ok, _, msg = check_tree(jax.jit(ccjax.jacve(t.fn, argnums=t.argnums, order="markowitz"))(*st.args), ref)
    assert ok, msg
