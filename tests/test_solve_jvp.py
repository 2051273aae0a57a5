"""A linear solve whose matrix is differentiated (``jnp.linalg.solve``,
``inv``) enters the graph as its JVP, ``dx = A⁻¹ (db - dA x)``: the
matrix's partial becomes a product of ``A⁻¹``'s and a matrix product's
instead of one solve per matrix entry.  Exact in every order, cost =
executed, and every transformation sees JAX's derivative of the solve."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

jax.config.update("jax_enable_x64", True)

from conftest import check_orders
from test_elimination import check_cost_is_executed

import ccjax
from ccjax.graph import SOLVE_BY_JVP_MIN_ENTRIES, TANGENT_OF
from ccjax.rules.batching import batch_axes

RNG = np.random.default_rng(5)
N = 8
A = RNG.normal(size=(N, N)) + 4.0 * np.eye(N)
B = RNG.normal(size=(N, 5))
V = RNG.normal(size=4 * N)
BIG = RNG.normal(size=(4 * N, 4 * N)) + 6.0 * np.eye(4 * N)


PROGRAMS = {
    # name: (fn, args, argnums)
    "inv": (lambda a: jnp.linalg.inv(a), (A,), 0),
    "inv_of_a_function": (lambda a: jnp.tanh(jnp.linalg.inv(a * a + 3.0 * jnp.eye(N))), (A,), 0),
    "solve_matrix_rhs": (lambda a, b: jnp.linalg.solve(a, jnp.sin(b)), (A, B), (0, 1)),
    "solve_same_variable": (lambda x: jnp.linalg.solve(BIG + jnp.diag(x * x), jnp.cos(x)), (V,), 0),
    "newton_step": (lambda x: x - jnp.linalg.solve(BIG + jnp.outer(jnp.sin(x), jnp.cos(x)) / 8.0, jnp.tanh(x)),
                    (V,), 0),
    "vmap_inv": (lambda a: jax.vmap(jnp.linalg.inv)(a + 3.0 * jnp.eye(N)), (RNG.normal(size=(3, N, N)),), 0),
    "vmap_solve": (lambda a, b: jax.vmap(jnp.linalg.solve)(a + 3.0 * jnp.eye(N), b),
                   (RNG.normal(size=(5, N, N)), RNG.normal(size=(5, N))), (0, 1)),
}


def _names(fn, args, argnums):
    return [node.name for node in ccjax.graph(fn, *args, argnums=argnums).program.nodes]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_solves_by_their_jvp_are_exact_in_every_order_and_cost_is_executed(name):
    fn, args, argnums = PROGRAMS[name]
    assert TANGENT_OF in _names(fn, args, argnums)  # the rewrite applies
    check_orders(fn, *args, argnums=argnums, n_random=2, rtol=1e-9, atol=1e-10)
    check_cost_is_executed(fn, args, argnums, seed=1, n_random=1)


def test_a_solve_of_many_columns_stores_its_inverse_once():
    """One matrix for every column (``inv``, a matrix right-hand side, with
    the matrix constant or differentiated): the solve's partial with respect
    to its right-hand side is ``A⁻¹`` with a Kronecker identity over the
    columns, ``n²`` stored numbers; exact in every order, cost = executed."""
    rhs_only = lambda b: jnp.linalg.solve(A, jnp.sin(b))
    for fn, arg in [(rhs_only, B), (PROGRAMS["inv"][0], A)]:
        g = ccjax.graph(fn, arg)
        solves = [(src, dst) for (src, dst) in g.edges if g.vertices[dst].label.startswith("custom_linear_solve")]
        assert solves and all(g.edges[e].nnz_values == N * N for e in solves)
    check_orders(rhs_only, B, n_random=2, rtol=1e-10, atol=1e-11)
    check_cost_is_executed(rhs_only, (B,), 0, seed=2, n_random=1)


def test_small_systems_keep_the_solve_as_one_equation():
    """Below ``SOLVE_BY_JVP_MIN_ENTRIES`` right-hand-side entries the solve
    stays one equation with its dense local Jacobian; exact either way."""
    small = A[:4, :4]
    fn = lambda a: jnp.linalg.solve(a, jnp.arange(4.0))
    assert 4 < SOLVE_BY_JVP_MIN_ENTRIES
    names = _names(fn, (small,), 0)
    assert TANGENT_OF not in names and "custom_linear_solve" in names
    check_orders(fn, small, n_random=1, rtol=1e-10, atol=1e-11)


def test_the_inverse_costs_one_product_per_jacobian_entry():
    """``inv`` of an n x n matrix: the graph multiplies ``A⁻¹``'s blocks by
    ``X``'s (n⁴, one per Jacobian entry), where the solve's own local
    Jacobian takes a solve of n right-hand sides per matrix entry (n⁵)."""
    fn = PROGRAMS["inv"][0]
    assert ccjax.cost(fn, A, order="forward") == ccjax.cost(fn, A, order="reverse") == N ** 4
    assert ccjax.cost_report(fn, A, order="auto").mults <= N ** 4


def test_solves_by_their_jvp_under_jit_vmap_grad_nesting_and_sparse_output():
    fn = PROGRAMS["inv_of_a_function"][0]
    want = jax.jacrev(fn)(A)
    np.testing.assert_allclose(jax.jit(ccjax.jacve(fn))(A), want, rtol=1e-10, atol=1e-11)
    sparse = jax.jit(ccjax.jacve(fn, output="sparse"))(A)
    np.testing.assert_allclose(np.asarray(sparse.todense()), want, rtol=1e-10, atol=1e-11)
    batch = np.stack([A, A.T, A + np.eye(N)])
    np.testing.assert_allclose(jax.vmap(ccjax.jacve(fn))(batch), jax.vmap(jax.jacrev(fn))(batch),
                               rtol=1e-10, atol=1e-11)
    loss = lambda a: jnp.sum(jnp.sin(ccjax.jacve(fn)(a)))
    np.testing.assert_allclose(jax.grad(loss)(A), jax.grad(lambda a: jnp.sum(jnp.sin(jax.jacrev(fn)(a))))(A),
                               rtol=1e-9, atol=1e-10)
    step = PROGRAMS["newton_step"][0]
    np.testing.assert_allclose(jax.jit(ccjax.jacve(ccjax.jacve(step)))(V), jax.jacfwd(jax.jacrev(step))(V),
                               rtol=1e-8, atol=1e-9)


def test_a_singular_matrix_gives_what_jax_gives():
    """No finite Jacobian where JAX's has none: a singular matrix's inverse."""
    singular = np.ones((N, N))
    fn = lambda a: jnp.linalg.inv(a) * 1.0
    want = np.asarray(jax.jacrev(fn)(singular))
    got = np.asarray(ccjax.jacve(fn)(singular))
    assert not np.all(np.isfinite(want))
    assert not np.all(np.isfinite(got))


def test_a_python_scalar_times_the_matrix():
    fn = lambda s: jnp.linalg.inv(s * A)
    np.testing.assert_allclose(ccjax.jacve(fn)(2.0), jax.jacrev(fn)(2.0), rtol=1e-10, atol=1e-12)


def test_an_iterative_solve_keeps_its_own_derivative():
    """``custom_linear_solve`` with a user's solve (not separable by the
    analysis): the rewrite still follows JAX's rule exactly."""
    def fn(x):
        m = BIG + jnp.diag(jnp.sin(x))
        matvec = lambda v: m @ v
        solve = lambda mv, r: jnp.linalg.solve(lax.stop_gradient(m), r)
        return lax.custom_linear_solve(matvec, jnp.cos(x), solve, symmetric=False,
                                       transpose_solve=lambda vm, r: jnp.linalg.solve(lax.stop_gradient(m).T, r))

    assert TANGENT_OF in _names(fn, (V,), 0)
    check_orders(fn, V, n_random=1, rtol=1e-9, atol=1e-10)


# -- the analysis that makes A⁻¹'s partial block diagonal --------------------------------------------------


def _axes(fn, *args, in_axes):
    return batch_axes(jax.make_jaxpr(fn)(*args), in_axes)


def test_the_analysis_follows_reshapes_that_keep_the_batch_axis_whole():
    x = np.ones((3, 4, 5))
    assert _axes(lambda x: x.reshape(3, 1, 20), x, in_axes=[0]) == [0]
    assert _axes(lambda x: x.reshape(12, 5), x, in_axes=[2]) == [1]
    assert _axes(lambda x: x.reshape(3, 4, 1, 5), x, in_axes=[2]) == [3]
    assert _axes(lambda x: x.reshape(1, 12, 5), x, in_axes=[1]) is None  # merged with another axis
    assert _axes(lambda x: x.reshape(3, 20), x, in_axes=[1]) is None


def test_the_analysis_of_triangular_solves():
    low = np.tril(A) + 3.0 * np.eye(N)
    b = np.ones((N, 5))
    solve = lambda b, left=True: lax.linalg.triangular_solve(low if left else low[:5, :5], b, left_side=left,
                                                             lower=True)
    assert _axes(solve, b, in_axes=[1]) == [1]  # columns of a⁻¹ b are solved apart
    assert _axes(solve, b, in_axes=[0]) is None  # rows are mixed
    assert _axes(lambda b: solve(b, left=False), b, in_axes=[0]) == [0]  # rows of b a⁻¹
    assert _axes(lambda b: solve(b, left=False), b, in_axes=[1]) is None
    assert _axes(lambda a: lax.linalg.triangular_solve(a, b, left_side=True, lower=True), low,
                 in_axes=[1]) is None  # the matrix itself along a core axis
