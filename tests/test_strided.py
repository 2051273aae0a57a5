"""Strided slices, reversals and interior pads read or write elements at
flat indices known when the graph is built: where their per-axis 0/1
matrices would store more numbers than there are elements, they are
selections at constant indices (:func:`ccjax.rules.selection.constant_selection`),
exact in every order, eagerly, jitted and under ``vmap``, with cost equal to
the executed multiplications and a sparse output holding the nonzeros only."""
import jax
import jax.numpy as jnp
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
from ccjax.structure import Selection


def restrict(u):
    """Multigrid full-weighting restriction (three strided reads)."""
    return 0.25 * u[0:-2:2] + 0.5 * jnp.sin(u[1:-1:2]) + 0.25 * u[2::2] ** 2


def downsample(u):
    """Every other pixel of an image, both axes strided."""
    U = u.reshape(8, 8)
    return jnp.tanh(U[::2, ::2] * U[1::2, 1::2]).reshape(-1)


def red_black(u):
    even, odd = u[::2], u[1::2]
    return jnp.concatenate([even * (even - odd), (odd - even) * odd * 2.0])[::-1]


def reflect(u):
    return jnp.sin(u) * u[::-1] + jnp.cumsum(u[::-3])[0]


def upsample(u):
    """Zeros between the elements (an interior pad), then squared."""
    return lax.pad(jnp.sin(u), 0.5, [(1, 2, 1)]) ** 2


def cropped_upsample(u):
    """Negative low and high padding with interior: the ends are cropped."""
    return jnp.exp(lax.pad(u * u, 0.0, [(-3, -2, 2)]))


def short_axis_reversed(u):
    """A short reversed axis beside a long untouched one: its 3 x 3 matrix is
    smaller than a flat selection of 48 elements, so it stays a matrix."""
    return jnp.sin(u[:48].reshape(16, 3)[:, ::-1]).reshape(-1) * u[:48]


PROGRAMS = {f.__name__: f for f in (restrict, downsample, red_black, reflect, upsample, cropped_upsample,
                                    short_axis_reversed)}
FLAT = ("restrict", "downsample", "red_black", "reflect", "upsample", "cropped_upsample")
U = np.random.default_rng(3).normal(size=64)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_strided_access_is_a_selection_where_it_stores_less(name):
    g = ccjax.graph(PROGRAMS[name], U)
    selections = [st for st in g.edges.values() if isinstance(st, Selection)]
    assert bool(selections) == (name in FLAT), [type(st).__name__ for st in g.edges.values()]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_strided_programs_are_exact_in_every_order_and_cost_is_executed(name):
    fn = PROGRAMS[name]
    check_orders(fn, U, n_random=3, rtol=1e-12, atol=1e-12)
    check_cost_is_executed(fn, (U,), seed=4)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_strided_programs_under_jit_and_vmap_and_sparse(name):
    fn = PROGRAMS[name]
    want = np.asarray(jax.jacrev(fn)(U))
    np.testing.assert_allclose(jax.jit(ccjax.jacve(fn))(U), want, rtol=1e-12, atol=1e-12)
    batch = np.stack([U, U[::-1], 2 * U])
    np.testing.assert_allclose(jax.jit(jax.vmap(ccjax.jacve(fn)))(batch), jax.vmap(jax.jacrev(fn))(batch),
                               rtol=1e-12, atol=1e-12)
    for run in (ccjax.jacve(fn, output="sparse"), jax.jit(ccjax.jacve(fn, output="sparse"))):
        got = run(U)
        np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
        assert got.nse == np.count_nonzero(want)


@pytest.mark.parametrize("name", ["restrict", "downsample", "upsample"])
def test_auto_eliminates_strided_access_below_both_plain_modes(name):
    """With 0/1 matrices these programs multiplied more than JAX's modes
    (``auto`` ran ``jax.jacrev``); as selections the elimination multiplies
    less than either."""
    g = ccjax.graph(PROGRAMS[name], U)
    plan = api._plan(g, "auto")
    assert plan.mode == "eliminate"
    counter = Counter(g)
    assert program_mults(g, plan, counter) < min(counter.mode_mults("rev"), counter.mode_mults("fwd"))


def test_a_strided_slice_inside_a_cond_branch_joins_the_union_of_branches():
    """Inside a branch the matrix form is kept, so the cond's partial is the
    union of the branches' structures, not a dense block."""
    fn = lambda u: lax.cond(u[0] > 0, lambda v: v[::2] * v[1::2], lambda v: jnp.sin(v[::-2]), u)
    union = (np.asarray(jax.jacrev(fn)(U)) != 0) | (np.asarray(jax.jacrev(fn)(-U)) != 0)
    assert union.sum() == 96  # two entries per row in one branch, another one in the other
    for x in (U, -U):
        want = np.asarray(jax.jacrev(fn)(x))
        got = ccjax.jacve(fn, output="sparse")(x)
        np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
        assert got.nse == union.sum()
