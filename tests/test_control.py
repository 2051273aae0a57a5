"""``cond``/``switch``: each branch eliminated on its own, the partial a
structured union written by one ``lax.switch`` (``ccjax.rules.control``).

Checked against ``jax.jacrev`` in every order, eagerly and jitted, at inputs
taking each branch; under ``vmap`` with a batched predicate; cost equal to
the executed multiplications; sparse output storing the union of the
branches' structures; fallbacks where the rule must not apply.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax.eliminate import plan_elimination  # noqa: E402
from ccjax.orders.heuristics import HEURISTICS  # noqa: E402
from ccjax.tasks.random_fn import random_function, random_input_shapes, random_inputs  # noqa: E402
from test_elimination import _executed_mults  # noqa: E402

X = jnp.asarray(np.random.default_rng(0).normal(size=8))


@jax.custom_vjp
def _clip_grad(x):
    return x


_clip_grad.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -0.1, 0.1),))

PROGRAMS = {
    "diag_or_band": lambda x: lax.cond(jnp.sum(x) > 0, lambda x: jnp.sin(x) * x + jnp.roll(x, 1),
                                       lambda x: jnp.cos(x) + x ** 2, x),
    "switch_three": lambda x: lax.switch(jnp.clip((jnp.abs(x[0]) * 3.0).astype(jnp.int32), 0, 2),
                                         [lambda x: jnp.tanh(x) * 2.0, lambda x: x * jnp.exp(-x ** 2),
                                          lambda x: jnp.cumsum(x) * 0.1], x),
    "two_operands_two_outputs": lambda x: lax.cond(x[0] > 0, lambda a, b: (a * b, jnp.sin(b)),
                                                   lambda a, b: (a + b, b ** 2), jnp.tanh(x), x[::-1])[0]
    + lax.cond(x[1] > 0, lambda a, b: (a * b, jnp.sin(b)), lambda a, b: (a + b, b ** 2), x, x)[1],
    "identity_branch": lambda x: lax.cond(x[0] > 0, lambda a: a, lambda a: a * 2.0, x) * x,
    "zero_branch": lambda x: lax.cond(x[0] > 0, lambda a: jnp.zeros_like(a), jnp.sin, x) + x,
    "operand_unused_in_a_branch": lambda x: lax.cond(x[0] > 0, lambda a, b: a * 3.0, lambda a, b: a * b,
                                                     x, jnp.exp(x)),
    "matvec_and_reduction": lambda x: lax.cond(x[2] > 0, lambda v: jnp.outer(v, v) @ v,
                                               lambda v: jnp.full_like(v, jnp.sum(v ** 2)), x),
    "closed_over_constant": lambda x: lax.cond(x[3] > 0, lambda v: v * jnp.arange(8.0),
                                               lambda v: v @ jnp.ones((8, 8)) * 0.1, x),
    "nested": lambda x: lax.cond(x[0] > 0, lambda v: lax.cond(v[1] > 0, jnp.sin, jnp.cos, v) * v,
                                 lambda v: v ** 3, x),
    "integer_output": lambda x: lax.cond(x[0] > 0, lambda v: (v * 2.0, jnp.int32(1)),
                                         lambda v: (jnp.sin(v), jnp.int32(2)), x)[0],
    "traced_index_gather": lambda x: lax.cond(x[0] > 0, lambda v: v[jnp.argsort(v)] * v, jnp.sin, x),
    "custom_vjp_inside": lambda x: lax.cond(x[0] > 0, lambda v: _clip_grad(v) * v, jnp.sin, x),
    "complex_inside": lambda x: lax.cond(x[0] > 0, lambda v: jnp.abs(jnp.exp(1j * v) * v), jnp.sin, x),
}
POINTS = (X, -X, X.at[0].set(-1.0).at[1].set(0.7), X * 0.1)


def _close(got, want):
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_programs_with_branches_match_jacrev_in_every_order(name):
    f = PROGRAMS[name]
    g = ccjax.graph(f, X)
    orders = ["auto", "fwd", "rev", "markowitz", tuple(np.random.default_rng(1).permutation(g.eliminable))]
    for x in POINTS:
        want = jax.jacrev(f)(x)
        for order in orders:
            jac = ccjax.jacve(f, order=order)
            _close(jac(x), want)
            _close(jax.jit(jac)(x), want)


@pytest.mark.parametrize("name", ["diag_or_band", "switch_three", "nested", "zero_branch"])
def test_vmap_with_a_batched_predicate(name):
    f = PROGRAMS[name]
    xs = jnp.stack(POINTS)
    _close(jax.jit(jax.vmap(ccjax.jacve(f)))(xs), jax.vmap(jax.jacrev(f))(xs))


@pytest.mark.parametrize("name", sorted(set(PROGRAMS) - {"custom_vjp_inside"}))
def test_cost_is_the_executed_multiplications(name):
    f = PROGRAMS[name]
    g = ccjax.graph(f, X)
    for order in [HEURISTICS[h](g) for h in ("fwd", "rev", "markowitz")]:
        plan = plan_elimination(g, order)
        assert _executed_mults(g, plan, f, (X,), 0) == plan.report.mults


def _cond_partials(f):
    g = ccjax.graph(f, X)
    return [r.partial.structure for r in g.raw if g.program.nodes[r.node].name == "cond"]


def test_branch_structures_are_kept():
    """A diagonal in one branch and diagonal + roll in the other: a band of
    two diagonals, not a dense block; the sparse output stores exactly the
    union of the two branches' nonzeros."""
    (st_,) = _cond_partials(PROGRAMS["diag_or_band"])
    assert st_.nnz_values < X.size ** 2
    for x in (X, -X):
        sparse = ccjax.jacve(PROGRAMS["diag_or_band"], output="sparse")(x)
        assert sparse.nse == 2 * X.size
        _close(sparse.todense(), jax.jacrev(PROGRAMS["diag_or_band"])(x))


@pytest.mark.parametrize("name", ["traced_index_gather", "custom_vjp_inside"])
def test_rule_falls_back_to_the_dense_partial(name):
    (st_,) = _cond_partials(PROGRAMS[name])
    assert st_.nnz_values == X.size ** 2


def test_an_elementwise_complex_branch_keeps_its_diagonal():
    """``abs(exp(1j * v) * v)`` is a fused complex region that is elementwise,
    so a diagonal; joined with ``sin``'s, the cond's partial is a diagonal."""
    (st_,) = _cond_partials(PROGRAMS["complex_inside"])
    assert st_.nnz_values == X.size


@settings(max_examples=7, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10 ** 6))
def test_random_branches_match_jacrev(seed):
    """Two random functions as branches (the second reshaped into the
    first's output shape), each branch taken."""
    shapes = random_input_shapes(seed)
    f1 = random_function(seed, shapes, n_ops=12, n_outputs=1)
    f2 = random_function(seed + 1, shapes, n_ops=12, n_outputs=1)
    args = random_inputs(seed, shapes)
    out_shape = jnp.shape(f1(*args))

    def f2_like(*a):
        y = jnp.ravel(f2(*a))
        return jnp.resize(jnp.sin(y) * jnp.sum(y), out_shape)

    argnums = tuple(range(len(shapes)))
    for take in (True, False):
        def f(*a, take=take):
            return lax.cond(take, f1, f2_like, *a) * 2.0

        want = jax.jacrev(f, argnums=argnums)(*args)
        for order in ("fwd", "rev", "markowitz"):
            _close(jax.jit(ccjax.jacve(f, argnums=argnums, order=order))(*args), want)
