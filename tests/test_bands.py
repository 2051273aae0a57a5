"""Shifted data (slices, pads, concatenation, roll, gathers and scatter-adds
at constant indices) kept as bands end to end:
exact Jacobians in every order, executed multiplications equal to the cost
model, and sparse output holding exactly the structural nonzeros."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

jax.config.update("jax_enable_x64", True)

from test_elimination import _executed_mults, _orders

import ccjax
from ccjax.eliminate import plan_elimination
from ccjax.orders import HEURISTICS
from ccjax.structure import Selection, entry_count, is_terms


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


def laplacian3d(U):
    """A 7-point stencil by jnp.roll (periodic): bands along three axes."""
    lap = sum(jnp.roll(U, s, axis=a) for a in range(3) for s in (-1, 1)) - 6 * U
    return (lap * jnp.sin(U)).ravel()


def split_mix(x):
    a, b, c = jnp.split(x, [3, 7])
    return jnp.concatenate([b * a[0], c[::-1], jnp.cumsum(a)]) + x[2:2 + 9].sum()


def negative_pad(x):
    return jax.lax.pad(x * x, 0.0, [(-2, 3, 0)]) + jax.lax.pad(jnp.tanh(x), 0.0, [(2, -1, 0)])


def smoothness_energy(u):
    """A scalar energy of differences: its gradient sums bands away (reverse order)."""
    return jnp.sum((u[1:] - u[:-1]) ** 2) + jnp.sum(u[2:] * u[:-2]) + jnp.sum(jnp.pad(u, 1, mode="edge") ** 3)


def lorenz96_indexed(x):
    """Periodic neighbours taken by constant index vectors (gathers)."""
    i = np.arange(x.shape[0])
    return (x[(i + 1) % x.shape[0]] - x[(i - 2) % x.shape[0]]) * x[(i - 1) % x.shape[0]] - x


def take_columns(X):
    """Columns by a constant index vector, repeated and out of order."""
    return (jnp.sin(X)[:, np.array([3, 0, 1, 1, 4])] * X[:, :5]).ravel()


def known_dynamic_slices(x):
    """``dynamic_slice`` at constant starts, one beyond the end (clamped)."""
    return jax.lax.dynamic_slice(jnp.tanh(x), (2,), (5,)) * jax.lax.dynamic_slice(x, (7,), (5,))


def scattered_gather(x):
    """A permutation with more offsets than a band keeps: a selection."""
    return jnp.cos(x)[np.array([5, 0, 7, 2, 9, 1, 4, 8, 3, 6, 10])] * x


def scatter_rows(v):
    """``x.at[idx].add(y)`` at constant indices (a repeated one) is a band on ``y``."""
    return v[:6].at[np.array([0, 1, 2, 2, 5])].add(jnp.sin(v[6:11])) * v[:6]


def scatter_columns(v):
    return v[:12].reshape(4, 3).at[:, np.array([2, 0])].add(jnp.cos(v[8:16].reshape(4, 2))).ravel()


def scattered_scatter(v):
    """More offsets than a band keeps: a dense partial."""
    return v[:8].at[np.array([5, 0, 7, 2, 1, 4, 3, 6, 1, 0])].add(jnp.tanh(v[:10]))


def boundary_sets(u):
    """Boundary rows by ``.at[i].set`` (a scatter of one element at a known index)."""
    r = jnp.pad(u[2:] - 2 * u[1:-1] + u[:-2], 1)
    return r.at[0].set(u[0] - 1.0).at[-1].set(u[-1] ** 2) + jnp.exp(u)


def window_scatters(v):
    """Windows written at known starts: a set, an add, a row, an element, a
    block, and a ``dynamic_update_slice``."""
    a = v[:10].at[2:5].set(jnp.sin(v[10:13])) * v[:10]
    b = v[:10].at[2:5].add(jnp.sin(v[10:13])) * v[:10]
    grid = v[:12].reshape(3, 4)
    c = grid.at[1].set(jnp.cos(v[12:16])).at[2, 1].set(v[13] * v[0]).at[1:, 1:3].add(v[4:8].reshape(2, 2))
    d = jax.lax.dynamic_update_slice(grid, jnp.tanh(v[:4]).reshape(2, 2), (1, 5))  # start clamped to 2
    return jnp.concatenate([a, b, c.ravel(), d.ravel()])


def stacked_columns(x):
    """Columns stacked by ``concatenate`` and taken back by slices (as a
    nested ``jacve`` lays out its diagonals): a column's slice of the other
    columns' pieces is empty, of its own the piece itself."""
    cols = jnp.concatenate([jnp.roll(x, 1)[:, None], (jnp.roll(x, -2) - x)[:, None], jnp.sin(x)[:, None]], axis=1)
    return jnp.concatenate([cols[:, 1][1:] * x[1:], cols[:, 0] + cols[:, 2], cols[2:, 2:].ravel()])


def row_and_total_norms(x):
    """Row norms and the Frobenius norm, concatenated: a band (block
    diagonal) plus one dense row."""
    X = x.reshape(4, 3)
    return jnp.concatenate([jnp.linalg.norm(X, axis=1), jnp.linalg.norm(X)[None]])


def integral_constraint(u):
    """A stencil residual whose first row is a mass constraint on all of ``u``."""
    interior = u[:-2] - 2 * u[1:-1] + u[2:] + 0.1 * jnp.sin(u[1:-1])
    return jnp.concatenate([jnp.sum(u ** 2)[None] - 1.0, interior, (u[-1] - u[0])[None]])


def constraint_added_to_a_row(u):
    """A dense row added onto a stencil's first row: the two terms of the
    block share entries, which the sparse output stores once."""
    r = u[:-2] - 2 * u[1:-1] + u[2:] + jnp.exp(u[1:-1])
    return r.at[0].add(jnp.sum(u ** 2))


FIT_GRID = np.linspace(0.0, 2.0, 12).reshape(3, 4)


def damped_cosine_fit(p):
    """Residuals of a curve fit with the parameters read as scalars: one-row
    bands (one diagonal per parameter) whose rows replicate over the data's
    two axes, summed into one band."""
    t = jnp.asarray(FIT_GRID, p.dtype)
    return p[0] * jnp.exp(-p[1] * t) * jnp.cos(p[2] * t + p[3]) - 0.5 * t


def peaks_fit(p):
    """Residuals of a sum of two Gaussian peaks, parameters read by strided slices."""
    t = jnp.asarray(FIT_GRID.reshape(-1), p.dtype)
    a, m, s = p[0::3], p[1::3], 1.0 + p[2::3] ** 2
    return jnp.sum(a[:, None] * jnp.exp(-0.5 * ((t[None, :] - m[:, None]) / s[:, None]) ** 2), axis=0) - t


def fem_assembly(u):
    """Finite-element assembly: element fluxes ``k(u) u'`` added into their
    two nodes by scatter-adds at known indices (two bands)."""
    nodes = jnp.pad(u, 1)
    flux = (1.0 + (0.5 * (nodes[:-1] + nodes[1:])) ** 2) * (nodes[1:] - nodes[:-1])
    n = u.shape[0]
    return (jnp.zeros(n + 2, u.dtype).at[np.arange(n + 1)].add(flux).at[np.arange(1, n + 2)].add(-flux))[1:-1]


PROGRAMS = {
    "boundary_sets": (boundary_sets, (12,)),
    "window_scatters": (window_scatters, (16,)),
    "scatter_rows": (scatter_rows, (11,)),
    "scatter_columns": (scatter_columns, (16,)),
    "scattered_scatter": (scattered_scatter, (10,)),
    "lorenz96_indexed": (lorenz96_indexed, (10,)),
    "take_columns": (take_columns, (3, 6)),
    "known_dynamic_slices": (known_dynamic_slices, (10,)),
    "scattered_gather": (scattered_gather, (11,)),
    "smoothness_energy": (smoothness_energy, (10,)),
    "burgers": (burgers, (12,)),
    "bratu_roll": (bratu_roll, (10,)),
    "pad_modes": (pad_modes, (7,)),
    "neumann_laplacian": (neumann_laplacian, (9,)),
    "bratu2d": (bratu2d, (5, 6)),
    "laplacian3d": (laplacian3d, (3, 4, 5)),
    "split_mix": (split_mix, (11,)),
    "negative_pad": (negative_pad, (9,)),
    "row_and_total_norms": (row_and_total_norms, (12,)),
    "stacked_columns": (stacked_columns, (10,)),
    "integral_constraint": (integral_constraint, (9,)),
    "constraint_added_to_a_row": (constraint_added_to_a_row, (9,)),
    "damped_cosine_fit": (damped_cosine_fit, (4,)),
    "peaks_fit": (peaks_fit, (6,)),
    "fem_assembly": (fem_assembly, (9,)),
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


@pytest.mark.parametrize("name", ["burgers", "bratu_roll", "lorenz96_indexed"])
def test_banded_jacobians_are_differentiable(name):
    """The dense form of several diagonals (written by a scatter-add) under
    ``jacve``, ``jax.jacfwd`` and ``jax.grad`` equals JAX's second derivatives."""
    fn, shape = PROGRAMS[name]
    x = _input(shape, seed=4)
    jac = ccjax.jacve(fn)
    np.testing.assert_allclose(ccjax.jacve(jac)(x), jax.jacrev(jax.jacrev(fn))(x), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(jac))(x), jax.jacfwd(jax.jacrev(fn))(x), rtol=1e-10, atol=1e-10)
    loss = lambda j: lambda x: jnp.sum(jnp.sin(j(x)))
    np.testing.assert_allclose(jax.grad(loss(jac))(x), jax.grad(loss(jax.jacrev(fn)))(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["burgers", "bratu_roll", "neumann_laplacian", "negative_pad", "lorenz96_indexed",
                                  "scatter_rows", "row_and_total_norms", "integral_constraint",
                                  "constraint_added_to_a_row", "bratu2d", "laplacian3d", "stacked_columns",
                                  "fem_assembly"])
def test_sparse_output_stores_the_structural_nonzeros(name):
    """Stencils: nse equals the nonzeros of the Jacobian (at a point where no
    entry cancels numerically) in every order.  Bands along two or three
    axes stay one term per axis (5 and 7 diagonals, not 9 and 27).  A band
    plus a dense row (norms, a constraint row) stays two terms
    (:class:`~ccjax.structure.Terms`), also where an order adds them at an
    intermediate vertex: no dense ``rows x columns`` sum."""
    fn, shape = PROGRAMS[name]
    x = _input(shape, seed=3)
    for order in ("fwd", "rev", "markowitz", "auto"):
        sparse = ccjax.jacve(fn, order=order, output="sparse")(x)
        want = np.asarray(jax.jacrev(fn)(x))
        np.testing.assert_allclose(np.asarray(sparse.todense()), want, rtol=1e-12, atol=1e-12)
        assert sparse.nse == np.count_nonzero(want), order


def test_a_point_write_is_a_band_from_an_end_on_no_axis():
    """``r.at[0].add(s)`` with a scalar ``s``: the partial on ``s`` is one
    unit entry, a band whose in end (the scalar) is on no axis, not a
    stored one-hot column."""
    g = ccjax.graph(constraint_added_to_a_row, _input((9,)))
    (point,) = [st for st in g.edges.values() if st.in_shape == () and st.bands]
    assert point.val is None and point.bands[0].inn not in {s for ax in point.in_axes for s in ax}


def test_a_band_plus_a_dense_row_stays_two_terms_in_every_order_unless_sums_are_eager():
    x = _input((12,))
    g = ccjax.graph(row_and_total_norms, x)
    for order in [HEURISTICS[name](g) for name in ("fwd", "rev", "markowitz")] + _orders(g, np.random.default_rng(2)):
        plan = plan_elimination(g, order)
        (block,) = [plan.structures[slot] for slot in plan.final.values()]
        assert is_terms(block) and sum(entry_count(st) for st in block.parts) == 4 * 3 + 12  # the block's nonzeros
        joined = plan_elimination(g, order, lazy_sums=False)
        assert not any(is_terms(st) for st in joined.structures)
        assert entry_count(joined.structures[joined.final[next(iter(joined.final))]]) == 5 * 12  # dense
        assert plan.report.mults <= joined.report.mults


@pytest.mark.parametrize("fn", [burgers, smoothness_energy])
def test_stencil_elimination_costs_rows_times_diagonals(fn):
    """At n = 256 every order multiplies O(n) numbers (bands), not O(n^2)
    (dense selection blocks)."""
    n = 256
    x = _input((n,))
    for order in ("fwd", "rev", "markowitz"):
        assert ccjax.cost(fn, x, order=order) < 20 * n


def test_gathers_and_scatter_adds_at_constant_indices_are_bands():
    x = _input((10,))
    g = ccjax.graph(lorenz96_indexed, x)
    assert all(st.val is None for st in g.edges.values() if st.bands)
    assert sum(bool(st.bands) for st in g.edges.values()) == 3
    scattered = ccjax.graph(scattered_gather, _input((11,)))  # too many offsets for a band: a selection
    assert any(isinstance(st, Selection) for st in scattered.edges.values())
    windows = ccjax.graph(window_scatters, _input((16,)))
    for st in windows.edges.values():  # no dense block: at most one number per row or column
        stored = 1 if st.val is None else int(np.prod([st.sizes[k] for k in st.val]))
        assert stored <= max(np.prod(st.out_shape), np.prod(st.in_shape)), st.describe()
    scatter = ccjax.graph(scatter_rows, _input((11,)))
    assert [st.bands[0].offsets for st in scatter.edges.values() if st.bands and st.bands[0].slot is not None] \
        == [(0, 1, -1)]  # update rows 0-2 in place, row 3 onto 2, row 4 onto 5


def test_a_graph_built_on_constant_indices_is_rebuilt_when_they_change():
    """Same jaxpr structure, other index values: never the old graph's bands."""
    x = _input((6,))
    idx = np.array([1, 2, 3, 0])
    f = lambda v: jnp.sin(v[idx]) * v[:4]
    for new in ([1, 2, 3, 0], [3, 3, 0, 1], [5, 4, 3, 2]):
        idx[:] = new
        for order in ("rev", "auto"):
            np.testing.assert_allclose(ccjax.jacve(f, order=order)(x), jax.jacrev(f)(x), rtol=1e-12, atol=1e-12)
    other = np.array([0, 0, 1, 1])
    g = lambda v: jnp.sin(v[other]) * v[:4]
    np.testing.assert_allclose(ccjax.jacve(g)(x), jax.jacrev(g)(x), rtol=1e-12, atol=1e-12)


def test_gathers_at_traced_indices_are_exact():
    x = _input((7,))
    idx = jnp.array([6, 0, 3, 3])

    @jax.jit
    def closed_over(v, i):
        return ccjax.jacve(lambda u: jnp.sin(u[i]) * u[:4])(v)

    want = jax.jacrev(lambda u: jnp.sin(u[idx]) * u[:4])(x)
    np.testing.assert_allclose(closed_over(x, idx), want, rtol=1e-12, atol=1e-12)
    as_argument = lambda u, i: jnp.sin(u[i]) * u[:4]
    np.testing.assert_allclose(jax.jit(ccjax.jacve(as_argument))(x, idx), want, rtol=1e-12, atol=1e-12)


def _merge_reference(x, axis, groups, rows, squeeze=True):
    """:func:`merge_slots` in NumPy, member by member (``squeeze``: its
    axis rules; else :func:`sum_slots`'s, the axis kept)."""
    if [list(g) for g in groups] == [[(k, None, None)] for k in range(x.shape[axis])]:
        return x
    x = np.moveaxis(np.asarray(x), axis, 0)
    out = []
    for group in groups:
        total = np.zeros_like(x[0])
        for k, lo, hi in group:
            term = x[k].copy()
            if lo is not None:
                r = rows - (rows > axis)
                keep = (np.arange(term.shape[r]) >= lo) & (np.arange(term.shape[r]) < hi)
                term = term * keep.reshape((-1,) + (1,) * (term.ndim - r - 1))
            total = total + term
        out.append(total)
    out = np.stack(out, axis)
    return np.squeeze(out, axis) if squeeze and len(groups) == 1 else out


@settings(max_examples=150, deadline=None)
@given(hs.data())
def test_merge_slots_sums_the_groups_members_with_their_row_ranges(data):
    """By layers of slot runs (:func:`sum_slots`) and member by member
    (small values), and :func:`merge_slots`, which picks one."""
    from ccjax.structure.bands import _sum_members, merge_slots, sum_slots
    n_slots = data.draw(hs.integers(1, 7))
    n_rows = data.draw(hs.integers(1, 6))
    axis, rows = data.draw(hs.sampled_from([(0, 1), (1, 0), (1, 2), (2, 0)]))
    shape = [3, 3, data.draw(hs.sampled_from([3, 40]))]  # 40: above LAYERED_MIN_SIZE
    shape[axis], shape[rows] = n_slots, n_rows
    member = hs.tuples(hs.integers(0, n_slots - 1), hs.one_of(hs.none(), hs.tuples(hs.integers(0, n_rows),
                                                                                  hs.integers(0, n_rows))))
    groups = data.draw(hs.lists(hs.lists(member, min_size=1, max_size=4), min_size=1, max_size=6))
    if data.draw(hs.booleans()):  # the common case: every slot once, in blocks or in order
        groups = [[(k, None)] for k in range(n_slots)]
        if n_slots % 2 == 0 and data.draw(hs.booleans()):
            half = n_slots // 2
            groups = [[(k, None), (k + half, None)] for k in range(half)]
    groups = [tuple((k, None, None) if r is None else (k, min(r), max(r)) for k, r in g) for g in groups]
    x = np.random.default_rng(len(groups) * 31 + n_slots).standard_normal(shape)
    got = np.asarray(merge_slots(jnp.asarray(x), axis, groups, rows))
    np.testing.assert_allclose(got, _merge_reference(x, axis, groups, rows), rtol=1e-12, atol=1e-12)
    kept = _merge_reference(x, axis, groups, rows, squeeze=False)
    for fn in (sum_slots, _sum_members):
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x), axis, groups, rows)), kept, rtol=1e-12, atol=1e-12)
