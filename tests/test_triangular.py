"""``triangular_solve`` is linear in its right-hand side: the partial with
respect to ``b`` is ``op(a)⁻¹`` on the solved axis and an identity on the
other (a ``dot_general``'s structure), the one with respect to ``a`` JAX's
dense local Jacobian with the zeros of ``-M op(da) x`` declared.  Exact in
every order and side, triangle, transposition and unit diagonal; cost =
executed multiplications; the sparse output holds the nonzeros only."""
import itertools

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import pytest
from jax import lax

jax.config.update("jax_enable_x64", True)

from conftest import check_orders
from test_elimination import check_cost_is_executed

import ccjax
from ccjax import api
from ccjax.counting import Counter
from ccjax.jax_modes import program_mults

RNG = np.random.default_rng(11)
A = 2.0 * np.eye(6) + 0.3 * RNG.normal(size=(6, 6))
B = RNG.normal(size=(6, 4))


def _solve(left, lower, transpose, unit):
    def fn(b):
        rhs = jnp.sin(b) * b
        return lax.linalg.triangular_solve(A, rhs if left else rhs.T, left_side=left, lower=lower,
                                           transpose_a=transpose, unit_diagonal=unit)

    return fn


SOLVES = {f"left{l}_lower{lo}_transpose{t}_unit{u}": _solve(l, lo, t, u)
          for l, lo, t, u in itertools.product((True, False), repeat=4)}

PROGRAMS = {
    # name: (fn, args, argnums)
    "a_and_b": (lambda a, b: jsl.solve_triangular(a @ a.T + 6.0 * jnp.eye(6), jnp.tanh(b), lower=True),
                (A, B), (0, 1)),
    "upper_a_and_b_right": (lambda a, b: lax.linalg.triangular_solve(jnp.triu(a) + 3.0 * jnp.eye(6), b * b,
                                                                     left_side=False, lower=False,
                                                                     transpose_a=True), (A, B.T), (0, 1)),
    "one_variable_both_operands": (lambda a: lax.linalg.triangular_solve(a, a, lower=True), (A,), 0),
    "cosine_of_the_matrix": (lambda a: lax.linalg.triangular_solve(a, jnp.cos(a), lower=True), (A,), 0),
    "batched": (lambda b: lax.linalg.triangular_solve(jnp.stack([A, A.T + 1.0]), jnp.sin(b), left_side=True,
                                                      lower=True), (RNG.normal(size=(2, 6, 3)),), 0),
    "cho_solve": (lambda b: jsl.cho_solve((jnp.linalg.cholesky(A @ A.T + jnp.eye(6)), True), b ** 2), (B,), 0),
    "vector": (lambda b: jsl.solve_triangular(A, jnp.exp(b), lower=False, trans=1), (B[:, 0],), 0),
}
PROGRAMS.update({name: (fn, (B,), 0) for name, fn in SOLVES.items()})


def _nonzeros(tree) -> int:
    return sum(int(np.count_nonzero(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_triangular_solves_are_exact_in_every_order_and_cost_is_executed(name):
    fn, args, argnums = PROGRAMS[name]
    check_orders(fn, *args, argnums=argnums, n_random=2, rtol=1e-11, atol=1e-12)
    check_cost_is_executed(fn, args, argnums, seed=5, n_random=1)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_triangular_solves_jitted_and_sparse_store_the_nonzeros(name):
    fn, args, argnums = PROGRAMS[name]
    want = jax.jacrev(fn, argnums=argnums)(*args)
    got = jax.jit(ccjax.jacve(fn, argnums=argnums))(*args)
    jax.tree_util.tree_map(lambda w, v: np.testing.assert_allclose(v, w, rtol=1e-11, atol=1e-12), want, got)
    sparse = jax.jit(ccjax.jacve(fn, argnums=argnums, output="sparse"))(*args)
    blocks = jax.tree_util.tree_leaves(sparse, is_leaf=lambda x: hasattr(x, "todense"))
    for block, w in zip(blocks, jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(block.todense()), w, rtol=1e-11, atol=1e-12)
    stored = sum(block.nse for block in blocks)
    if name == "one_variable_both_operands":
        # x = a tril(a)⁻¹ (right side) has last row e₅ᵀ at every a (a's last
        # row lies in the triangle): there the partials through ``a`` and
        # ``b`` cancel, which no structure sees
        assert stored == _nonzeros(want) + 6
    else:
        assert stored == _nonzeros(want)


def test_triangular_solve_under_vmap():
    fn = SOLVES["leftTrue_lowerTrue_transposeFalse_unitFalse"]
    batch = np.stack([B, -B, 2.0 * B])
    np.testing.assert_allclose(jax.jit(jax.vmap(ccjax.jacve(fn)))(batch), jax.vmap(jax.jacrev(fn))(batch),
                               rtol=1e-11, atol=1e-12)


def test_a_solve_against_a_constant_matrix_multiplies_far_less_than_plain_modes():
    """The right-hand side's partial is a structured product with ``op(a)⁻¹``,
    so ``auto`` eliminates (as a dense local Jacobian it re-solved the whole
    identity basis, slower than ``jax.jacfwd``)."""
    fn = SOLVES["leftTrue_lowerTrue_transposeFalse_unitFalse"]
    g = ccjax.graph(fn, B)
    plan = api._plan(g, "auto")
    assert plan.mode == "eliminate"
    counter = Counter(g)
    assert 10 * program_mults(g, plan, counter) < min(counter.mode_mults("rev"), counter.mode_mults("fwd"))
