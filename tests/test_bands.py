"""Shifted data (slices, pads, concatenation, roll) kept as bands end to end:
exact Jacobians in every order, executed multiplications equal to the cost
model, and sparse output holding exactly the structural nonzeros."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from test_elimination import _executed_mults, _orders

import ccjax
from ccjax.eliminate import plan_elimination


def burgers(u):
    """Upwind Burgers residual with Dirichlet ends (slices + concatenate)."""
    flux = 0.5 * u ** 2
    interior = (u[1:-1] - 0.3) + 0.1 * (flux[1:-1] - flux[:-2]) - 0.05 * (u[2:] - 2 * u[1:-1] + u[:-2])
    return jnp.concatenate([u[:1] - 1.0, interior, u[-1:]])


def bratu_roll(u):
    return jnp.roll(u, 1) - 2 * u + jnp.roll(u, -1) + 0.5 * jnp.exp(u)


def pad_modes(u):
    edge = jnp.pad(u, 2, mode="edge")
    wrap = jnp.pad(u, (1, 3), mode="wrap")
    zero = jnp.pad(u * u, (3, 1))
    return edge * wrap + jnp.sin(zero)


def neumann_laplacian(u):
    """Second differences with edge padding of width 2 (a fourth-order stencil)."""
    p = jnp.pad(u, 2, mode="edge")
    return (-p[:-4] + 16 * p[1:-3] - 30 * p[2:-2] + 16 * p[3:-1] - p[4:]) / 12 + jnp.cos(u)


def bratu2d(U):
    P = jnp.pad(U, 1)
    lap = P[:-2, 1:-1] + P[2:, 1:-1] + P[1:-1, :-2] + P[1:-1, 2:] - 4 * U
    return (lap + jnp.exp(U)).ravel()


def split_mix(x):
    a, b, c = jnp.split(x, [3, 7])
    return jnp.concatenate([b * a[0], c[::-1], jnp.cumsum(a)]) + x[2:2 + 9].sum()


def negative_pad(x):
    return jax.lax.pad(x * x, 0.0, [(-2, 3, 0)]) + jax.lax.pad(jnp.tanh(x), 0.0, [(2, -1, 0)])


def smoothness_energy(u):
    """A scalar energy of differences: its gradient sums bands away (reverse order)."""
    return jnp.sum((u[1:] - u[:-1]) ** 2) + jnp.sum(u[2:] * u[:-2]) + jnp.sum(jnp.pad(u, 1, mode="edge") ** 3)


PROGRAMS = {
    "smoothness_energy": (smoothness_energy, (10,)),
    "burgers": (burgers, (12,)),
    "bratu_roll": (bratu_roll, (10,)),
    "pad_modes": (pad_modes, (7,)),
    "neumann_laplacian": (neumann_laplacian, (9,)),
    "bratu2d": (bratu2d, (5, 6)),
    "split_mix": (split_mix, (11,)),
    "negative_pad": (negative_pad, (9,)),
}


def _input(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * 0.5)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_stencils_match_jacrev_in_every_order_and_cost_is_executed(name):
    fn, shape = PROGRAMS[name]
    x = _input(shape)
    want = jax.jacrev(fn)(x)
    g = ccjax.graph(fn, x)
    for order in _orders(g, np.random.default_rng(1)):
        got = jax.jit(ccjax.jacve(fn, order=order))(x)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        plan = plan_elimination(g, order)
        assert _executed_mults(g, plan, fn, (x,), 0) == plan.report.mults
    np.testing.assert_allclose(ccjax.jacve(fn)(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_stencils_under_vmap_and_eagerly_match_jacrev(name):
    fn, shape = PROGRAMS[name]
    xs = jnp.stack([_input(shape, seed) for seed in (5, 6)])
    want = jax.vmap(jax.jacrev(fn))(xs)
    for order in ("fwd", "rev", "markowitz"):
        np.testing.assert_allclose(jax.vmap(ccjax.jacve(fn, order=order))(xs), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ccjax.jacve(fn, order=order)(xs[0]), want[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["burgers", "bratu_roll", "neumann_laplacian", "negative_pad"])
def test_sparse_output_stores_the_structural_nonzeros(name):
    """One-dimensional stencils: nse equals the nonzeros of the Jacobian (at
    a point where no entry cancels numerically)."""
    fn, shape = PROGRAMS[name]
    x = _input(shape, seed=3)
    for order in ("fwd", "rev", "markowitz"):
        sparse = ccjax.jacve(fn, order=order, output="sparse")(x)
        want = np.asarray(jax.jacrev(fn)(x))
        np.testing.assert_allclose(np.asarray(sparse.todense()), want, rtol=1e-12, atol=1e-12)
        assert sparse.nse == np.count_nonzero(want), order


@pytest.mark.parametrize("fn", [burgers, smoothness_energy])
def test_stencil_elimination_costs_rows_times_diagonals(fn):
    """At n = 256 every order multiplies O(n) numbers (bands), not O(n^2)
    (dense selection blocks)."""
    n = 256
    x = _input((n,))
    for order in ("fwd", "rev", "markowitz"):
        assert ccjax.cost(fn, x, order=order) < 20 * n
