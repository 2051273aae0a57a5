"""``output="sparse"`` leaves out the structural zeros inside stored values.

Some partials store a 0/1 matrix (cumsum's triangle, a reversal, a strided
slice, an interior pad, a reshape that permutes entries), a cond's partial
stores the union of its branches, and a scan's dense local Jacobian is zero
where causality says so; their zeros survive products and sums.  The sparse output must hold exactly the structural nonzeros, in every
order, eagerly and jitted, and still equal ``jax.jacrev``; ``order="auto"``
must not trade them for JAX's plain modes, which store every entry."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

jax.config.update("jax_enable_x64", True)

import ccjax
from ccjax import api
from ccjax.eliminate import dense_entries, plan_elimination, stored_entries
from ccjax.orders import HEURISTICS
from conftest import counted_compiles

N = 12
W = np.random.default_rng(7).normal(size=(N, N))
MASK = np.array([0.0, 1, 1, 0, 0, 0, 1, 0, 2, 0, 0, 1])
#: A second-difference matrix built dense, as users write it (its zeros are values of a constant).
DIFF = np.diag(-2.0 * np.ones(N)) + np.diag(np.ones(N - 1), 1) + np.diag(np.ones(N - 1), -1)
#: A constant with zeros on both sides of a matrix product, and a batch axis.
SPARSE_4x3 = np.array([[1.0, 0, 0], [0, 0, 2], [0, 3, 0], [0, 0, 0]])


def _branchy(x):
    return lax_switch(x, [jnp.cumsum, jnp.sin, lambda y: y[::-1] * y])


def lax_switch(x, fns):
    return jax.lax.switch((x[0] > 0).astype(np.int32) + (x[1] > 0).astype(np.int32), fns, x)


def _rnn(x, reverse=False, carry_too=False):
    w = W[:3, :3]

    def step(h, xt):
        h = jnp.tanh(w @ h + w.T @ xt)
        return h, jnp.sin(h) * jnp.sum(xt)

    final, ys = jax.lax.scan(step, jnp.ones(3), x.reshape(4, 3), reverse=reverse)
    out = ys.reshape(-1)
    return jnp.concatenate([final, out]) if carry_too else out


PROGRAMS = {
    "cumsum": lambda x: jnp.sin(jnp.cumsum(x)),
    "reversed_cumsum": lambda x: jax.lax.cumsum(x[::-1] ** 2, reverse=True) * jnp.cos(x),
    "cumsum_2d": lambda x: jnp.exp(jnp.cumsum(x.reshape(3, 4), axis=1)).reshape(-1),
    "strided": lambda x: jnp.sin(x[::3]) * x[1::3],
    "interior_pad": lambda x: jax.lax.pad(jnp.sin(x), 2.0, [(1, 2, 1)]) ** 2,
    "transpose_reshape": lambda x: jnp.tanh(x.reshape(3, 4).T.reshape(2, 6)[:, ::2]).reshape(-1),
    "cumsum_of_cumsum": lambda x: jnp.cumsum(jnp.sin(jnp.cumsum(x))),
    "signed_paths": lambda x: jnp.cumsum(x) * jnp.sin(x) - jnp.cumsum(x) * jnp.cos(x),
    "switch": _branchy,
    "switch_then_dense": lambda x: jnp.tanh(W @ _branchy(x)),
    "scan": _rnn,
    "scan_reverse": lambda x: _rnn(x, reverse=True),
    "scan_carry_and_ys": lambda x: _rnn(x, carry_too=True),
    "scan_xs_twice": lambda x: jax.lax.scan(lambda c, ab: (c * jnp.sin(ab[0]), c + ab[1] ** 2), 1.0, (x, x))[1],
    "cond_both_cumsum": lambda x: jax.lax.cond(x[0] > 0, jnp.cumsum, lambda y: jnp.cumsum(y[::-1]), x) * x,
    "triangular_masks": lambda x: (jnp.triu(x.reshape(3, 4).T @ x.reshape(3, 4))
                                   - jnp.tril(jnp.outer(x[:4], jnp.sin(x[4:8])), -1)).reshape(-1),
    "constant_mask_factors": lambda x: jnp.sin(x * MASK) + jnp.cos(x) * MASK[::-1] + jnp.where(MASK > 0, 0.0, x ** 2),
    "dense_difference_matrix": lambda x: DIFF @ jnp.sin(x) + (jnp.cos(x) @ DIFF.T) * x,
    "constant_sparse_factors": lambda x: jnp.concatenate([(x.reshape(3, 4) @ SPARSE_4x3).reshape(-1),
                                                          (SPARSE_4x3 @ jnp.tanh(x.reshape(3, 4))).reshape(-1),
                                                          jnp.einsum("bij,jk->bik", x.reshape(2, 2, 3),
                                                                     SPARSE_4x3[:3, :2]).reshape(-1)]),
    "diagonal_and_trace": lambda x: jnp.concatenate([jnp.diag(jnp.diagonal(x.reshape(3, 4) @ jnp.tanh(x.reshape(4, 3)))),
                                                     jnp.trace(x.reshape(3, 4)[:, 1:]) * x.reshape(3, 4)], 1).reshape(-1),
}


def _structural_count(fn, x) -> int:
    """Nonzeros of the Jacobian at a random point; for these programs (no
    value-dependent zeros) the structural nonzeros of the taken branches."""
    return int(np.count_nonzero(np.asarray(jax.jacrev(fn)(x))))


def _union_count(fn, x) -> int:
    """Nonzeros of the Jacobian over inputs that take every branch."""
    rng = np.random.default_rng(3)
    points = [x] + [x.at[:2].set(jnp.asarray(s)) for s in ((1.0, 1.0), (-1.0, -1.0), (1.0, -1.0))]
    total = np.zeros(np.asarray(jax.jacrev(fn)(x)).shape, bool)
    for p in points:
        total |= np.asarray(jax.jacrev(fn)(p + 0.01 * rng.normal(size=p.shape))) != 0
    return int(total.sum())


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("order", ["auto", "fwd", "rev"])  # random orders: the property test below
def test_sparse_output_stores_exactly_the_structural_nonzeros(name, order):
    fn = PROGRAMS[name]
    x = jnp.asarray(np.random.default_rng(1).normal(size=N))
    want = np.asarray(jax.jacrev(fn)(x))
    branches = name.startswith(("switch", "cond"))
    count = _union_count(fn, x) if branches else _structural_count(fn, x)
    for run in (ccjax.jacve(fn, order=order, output="sparse"), jax.jit(ccjax.jacve(fn, order=order, output="sparse"))):
        got = run(x)
        np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
        assert got.nse == count, (name, order, got.nse, count)


@pytest.mark.parametrize("name", ["cumsum", "switch", "scan"])
def test_vmapped_sparse_output_keeps_the_structural_nonzeros(name):
    """Under ``vmap`` the stand-in run still finds the zeros: each example's
    block stores the structural count (a switch: the union of its branches),
    and the batch equals ``vmap(jax.jacrev)``."""
    fn = PROGRAMS[name]
    xs = jnp.asarray(np.random.default_rng(8).normal(size=(3, N)))
    want = np.asarray(jax.vmap(jax.jacrev(fn))(xs))
    count = _union_count(fn, xs[0]) if name == "switch" else _structural_count(fn, xs[0])
    for run in (jax.vmap(ccjax.jacve(fn, output="sparse")), jax.jit(jax.vmap(ccjax.jacve(fn, output="sparse")))):
        got = run(xs)
        np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
        assert got.nse == count, (name, got.nse, count)


def test_masks_and_kernels_from_constants_are_found_without_compiling():
    """A ``jnp.triu`` mask (iotas and a comparison), ``jnp.diagonal``'s
    gather indices and a constant kernel scaled by a division are computed
    in NumPy when the graph is built (``ccjax.numpy_eval.run_nodes``), equal
    to what XLA computes, with no compilation (each cost about 80 ms)."""
    import importlib

    graph_module = importlib.import_module("ccjax.graph")
    kernel = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    fn = lambda a: (jnp.triu(a @ a) + jax.scipy.signal.convolve2d(a, jnp.asarray(kernel) / 3.0, mode="same")
                    + jnp.diag(jnp.diagonal(a)))
    a = np.random.default_rng(4).normal(size=(5, 5))
    evaluated = []
    run_nodes = graph_module.run_nodes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(graph_module, "run_nodes",
                      lambda *args, **kwargs: evaluated.append(run_nodes(*args, **kwargs)) or evaluated[-1])
        with counted_compiles() as compiles:
            ccjax.graph(fn, a)
    assert evaluated and all(found is not None for found in evaluated) and not compiles
    got = ccjax.jacve(fn, output="sparse")(a)
    want = np.asarray(jax.jacrev(fn)(a))
    np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
    assert got.nse == np.count_nonzero(want)


def test_a_platform_dependent_cond_is_its_portable_branch():
    """``jnp.diagonal`` is a ``lax.platform_dependent`` cond (Mosaic: an
    identity mask and a sum; elsewhere: a gather): the graph takes the
    gather, a selection, not the union of both branches."""
    fn = lambda A: jnp.sin(jnp.diagonal(A))
    g = ccjax.graph(fn, np.ones((4, 4)))
    names = [node.name for node in g.program.nodes]
    assert "cond" not in names and "gather" in names
    A = np.random.default_rng(2).normal(size=(4, 4))
    np.testing.assert_allclose(jax.jit(ccjax.jacve(fn))(A), jax.jacrev(fn)(A), rtol=1e-12, atol=1e-12)


def test_a_dense_jacobian_keeps_every_entry():
    fn = lambda x: jnp.tanh(W @ jnp.cumsum(x))
    x = jnp.asarray(np.random.default_rng(2).normal(size=N))
    got = ccjax.jacve(fn, output="sparse")(x)
    assert got.nse == N * N
    np.testing.assert_allclose(np.asarray(got.todense()), np.asarray(jax.jacrev(fn)(x)), rtol=1e-12, atol=1e-12)


def test_cancelling_paths_leave_an_empty_block():
    """Two paths of opposite sign through the same values cancel at every
    input: the entries are zero polynomials and are left out."""
    fn = lambda x: jnp.cumsum(x) - jnp.cumsum(x)
    x = jnp.asarray(np.random.default_rng(4).normal(size=N))
    got = jax.jit(ccjax.jacve(fn, output="sparse"))(x)
    assert got.nse == 0
    np.testing.assert_array_equal(np.asarray(got.todense()), np.zeros((N, N)))


def test_auto_keeps_the_elimination_when_a_plain_mode_would_store_more():
    """For ``cumsum_of_cumsum`` ``auto`` runs JAX's reverse mode (fewer
    multiplications than two triangles of 0/1 products); the sparse output
    still comes from the elimination, which stores only the structural
    nonzeros (78 of 144 entries)."""
    fn = PROGRAMS["cumsum_of_cumsum"]
    x = jnp.asarray(np.random.default_rng(5).normal(size=N))
    g = ccjax.graph(fn, x)
    assert api._plan(g, "auto", "dense").mode.startswith("jax-")
    sparse_plan = api._plan(g, "auto", "sparse")
    assert sparse_plan.mode == "eliminate"
    assert stored_entries(g, sparse_plan) == _structural_count(fn, x) == 78 < dense_entries(g) == N * N


def test_auto_keeps_a_plain_mode_for_a_dense_jacobian():
    fn = lambda x: jnp.tanh(W @ jnp.tanh(W @ x))
    x = jnp.asarray(np.random.default_rng(6).normal(size=N))
    g = ccjax.graph(fn, x)
    assert api._plan(g, "auto", "sparse") is api._plan(g, "auto", "sparse")
    assert stored_entries(g, plan_elimination(g, HEURISTICS["markowitz"](g))) == dense_entries(g)


UNARY = {"sin": jnp.sin, "exp": lambda v: jnp.exp(jnp.sin(v)), "sq": lambda v: v * jnp.cos(v)}  # no overflow
LINEAR = {
    "cumsum": jnp.cumsum,
    "rcumsum": lambda v: jax.lax.cumsum(v, reverse=True),
    "rev": lambda v: v[::-1],
    "stride": lambda v: jnp.concatenate([v[::2], v[1::2]]),
    "pad": lambda v: jax.lax.pad(v, 0.0, [(0, 0, 1)])[::2],
    "roll": lambda v: jnp.roll(v, 2),
}


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(UNARY)), st.sampled_from(sorted(LINEAR)),
                          st.sampled_from(["+", "-", "*"])), min_size=1, max_size=4),
       st.integers(0, 2**31 - 1))
def test_random_chains_of_selections_store_exactly_the_nonzeros(steps, seed):
    """Random chains of 0/1-matrix partials and elementwise work, combined
    with earlier values by +, - or *, in a random order.  The structural
    nonzeros are those of the Jacobian at this point or at two points of
    magnitude 1 to 2: at one point an entry may round to 0 (``x - sin(x)``
    applied twice to a small ``x`` leaves ``cos(v) - 1 == 0``)."""
    def fn(x):
        v = x
        for unary, linear, op in steps:
            w = LINEAR[linear](UNARY[unary](v))
            v = {"+": v + w, "-": w - v, "*": v * w}[op]
        return v

    x = jnp.asarray(np.random.default_rng(seed).normal(size=N))
    g = ccjax.graph(fn, x)
    order = list(g.eliminable)
    np.random.default_rng(seed).shuffle(order)
    got = ccjax.jacve(fn, order=[int(v) for v in order], output="sparse")(x)
    want = np.asarray(jax.jacrev(fn)(x))
    np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-10, atol=1e-10)
    rng = np.random.default_rng(seed + 1)
    away = [rng.uniform(1.0, 2.0, N) * rng.choice([-1.0, 1.0], N) for _ in range(2)]
    structural = (want != 0) | np.any([np.asarray(jax.jacrev(fn)(jnp.asarray(p))) != 0 for p in away], axis=0)
    assert got.nse == np.count_nonzero(structural)


def test_nan_partials_leave_the_left_out_entries_at_zero():
    """A NaN partial reaches every entry of a stored 0/1 matrix in the dense
    output (``0 * nan``); the sparse output leaves the matrix's zeros out,
    so they read exactly 0 and every stored entry equals the dense one."""
    fn = PROGRAMS["cumsum_of_cumsum"]
    x = jnp.asarray(np.random.default_rng(8).normal(size=N)).at[3].set(jnp.nan)
    dense = np.asarray(ccjax.jacve(fn)(x))
    got = ccjax.jacve(fn, output="sparse")(x)
    lower = np.tril(np.ones((N, N), bool))
    assert got.nse == lower.sum()
    np.testing.assert_array_equal(np.asarray(got.todense())[lower], dense[lower])
    np.testing.assert_array_equal(np.asarray(got.todense())[~lower], 0.0)


def _lorenz96(x):
    return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + 8.0


@pytest.mark.parametrize("n", [6, 16])
def test_nested_jacobians_store_exactly_the_nonzeros(n):
    """The inner ``jacve`` writes its band by a scatter-add at constant
    indices of its diagonals, padding zeros included: the outer one finds
    the padding's zeros (constant selections are probed as they are) and
    stores each second derivative once, in every order."""
    x = jnp.asarray(8.0 + np.random.default_rng(n).normal(size=n))
    want = np.asarray(jax.jacrev(jax.jacrev(_lorenz96))(x))
    assert np.count_nonzero(want) == 4 * n
    inner = ccjax.jacve(_lorenz96)
    for order in ("auto", "fwd", "rev"):
        for run in (ccjax.jacve(inner, order=order, output="sparse"),
                    jax.jit(ccjax.jacve(inner, order=order, output="sparse"))):
            got = run(x)
            np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
            assert got.nse == 4 * n, (order, got.nse)
    xs = jnp.stack([x, 8.0 - x])
    want_batch = np.asarray(jax.vmap(jax.jacrev(jax.jacrev(_lorenz96)))(xs))
    batched = jax.jit(jax.vmap(ccjax.jacve(inner, output="sparse")))(xs)
    np.testing.assert_allclose(np.asarray(batched.todense()), want_batch, rtol=1e-12, atol=1e-12)
    assert batched.nse == 4 * n
    np.testing.assert_allclose(jax.vmap(ccjax.jacve(inner))(xs), want_batch, rtol=1e-12, atol=1e-12)


def test_the_probe_runs_in_numpy_or_compiles_one_program_also_inside_an_outer_trace_or_without_jit():
    """The probe that finds structural zeros runs the plan in NumPy, with no
    compilation (``eliminate._probe_in_numpy``); where it cannot, as one
    compiled program, the arithmetic on constant selections' indices staged
    with the rest (evaluated op by op it compiled about 80 small programs,
    1.4 s of the nested Hessian's first sparse call).  Both keep the same
    entries.  Under ``jax.disable_jit`` it still runs and stores the same
    (inside an outer ``jit``: the test above)."""
    from ccjax import eliminate
    from ccjax.resolve import resolve_order

    x = jnp.linspace(7.0, 9.0, 16)
    g = ccjax.graph(ccjax.jacve(_lorenz96), x)
    plan = plan_elimination(g, resolve_order(g, "rev"))
    with counted_compiles() as compiles:
        in_numpy = eliminate.probe_finals(g, plan, selections=True)
    assert in_numpy is not None and not compiles
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(eliminate, "_probe_in_numpy", lambda run, draws: None)
        with counted_compiles() as compiles:
            compiled = eliminate.probe_finals(g, plan, selections=True)
    assert 1 <= len(compiles) <= 2, compiles
    assert in_numpy.keys() == compiled.keys()
    for slot in in_numpy:
        for mine, theirs in zip(jax.tree.leaves(in_numpy[slot]), jax.tree.leaves(compiled[slot]), strict=True):
            assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
            np.testing.assert_allclose(mine, theirs, rtol=1e-12)
            np.testing.assert_array_equal(mine == 0, theirs == 0)
    assert stored_entries(g, plan) == 4 * 16
    want = np.asarray(jax.hessian(_lorenz96)(x))
    with jax.disable_jit():
        got = ccjax.jacve(ccjax.jacve(_lorenz96), output="sparse")(x)
    np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
    assert got.nse == 4 * 16


def test_cholesky_pattern_check_compiles_one_program_inside_a_constant_mask():
    """The check of cholesky's nonzero pattern against JAX's own derivative
    runs where masks are built (under ``ensure_compile_time_eval``, which
    ran the constants of the JVP op by op: 26 compiles) as one program."""
    from ccjax.rules import linalg
    from ccjax.rules.base import constant_mask

    linalg._cholesky_pattern_holds.cache_clear()
    with counted_compiles() as compiles:
        mask = constant_mask(lambda: linalg._cholesky_reads((3, 3)))()
    assert len(compiles) <= 2, compiles
    np.testing.assert_array_equal(mask, linalg._cholesky_pattern((3, 3)))


def test_paths_onto_one_entry_of_a_constant_scatter_are_stored_once():
    """Two scatter-adds at overlapping constant indices reach some entries
    twice (a selection of width 2 repeats their index): the sparse output
    sums them into one entry, and entries no update reaches are left out."""
    idx_a, idx_b = np.array([0, 2, 2, 5, 1, 3]), np.array([0, 4, 2, 1, 1, 3])

    def fn(x):
        base = jnp.zeros(8, x.dtype)
        return jnp.sin(base.at[idx_a].add(jnp.exp(x)) + base.at[idx_b].add(x ** 3))

    x = jnp.asarray(np.random.default_rng(9).normal(size=6))
    want = np.asarray(jax.jacrev(fn)(x))
    for order in ("auto", "fwd", "rev", "markowitz"):
        for run in (ccjax.jacve(fn, order=order, output="sparse"), jax.jit(ccjax.jacve(fn, order=order, output="sparse"))):
            got = run(x)
            np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-12, atol=1e-12)
            assert got.nse == np.count_nonzero(want) == 8, (order, got.nse)


def test_interpolation_stores_two_table_reads_and_the_end_values_per_query():
    """``jnp.interp`` reads the table at run-time indices (a selection of
    width 2) and at its two ends (constant indices, chosen by ``where``):
    the ends join the selection instead of making the block dense, so each
    query stores 4 table entries, not the whole table."""
    nq, nf = 16, 9
    xp = np.linspace(0.0, 1.0, nf)
    fn = lambda xq, fp: jnp.interp(xq, xp, fp)
    rng = np.random.default_rng(5)
    xq, fp = jnp.asarray(rng.uniform(-0.1, 1.1, nq)), jnp.asarray(np.sin(6 * xp))
    want = jax.jacrev(fn, argnums=(0, 1))(xq, fp)
    for order in ("auto", "fwd", "rev"):
        for run in (ccjax.jacve(fn, argnums=(0, 1), order=order, output="sparse"),
                    jax.jit(ccjax.jacve(fn, argnums=(0, 1), order=order, output="sparse"))):
            d_xq, d_fp = run(xq, fp)
            for got, ref in zip((d_xq, d_fp), want):
                np.testing.assert_allclose(np.asarray(got.todense()), np.asarray(ref), rtol=1e-12, atol=1e-12)
            assert (d_xq.nse, d_fp.nse) == (nq, 4 * nq), order


def _cholesky_of_gram(m):
    return jnp.linalg.cholesky(m @ m.T + m.shape[0] * jnp.eye(m.shape[0]))


def _batched_cholesky(m):
    s = jnp.einsum("bij,bkj->bik", m, m) + 4 * jnp.eye(4)
    return jax.lax.linalg.cholesky(s, symmetrize_input=False)


@pytest.mark.parametrize("fn, shape, stored", [(_cholesky_of_gram, (6, 6), 546), (_batched_cholesky, (3, 4, 4), 360)])
@pytest.mark.parametrize("order", ["auto", "fwd", "rev"])
def test_cholesky_declares_the_zeros_of_jax_derivative(fn, shape, stored, order):
    """``dL[i, j]`` reads ``dS[a, b]`` only for ``j <= i``, ``a <= i``,
    ``b <= j``: the sparse output stores that pattern through the Gram
    matrix (546 of 1296 entries; 468 are nonzero at this point), and one
    matrix of a batch never reads another."""
    m = jnp.asarray(np.random.default_rng(9).normal(size=shape))
    want = np.asarray(jax.jacrev(fn)(m))
    got = jax.jit(ccjax.jacve(fn, order=order, output="sparse"))(m)
    np.testing.assert_allclose(np.asarray(got.todense()), want, rtol=1e-10, atol=1e-10)
    assert np.count_nonzero(want) <= got.nse == stored < want.size


def test_a_cholesky_pattern_jax_contradicts_is_not_declared(monkeypatch):
    """The pattern is checked against JAX's derivative first: one that
    misses entries JAX computes is not declared, and every entry of the
    triangle is kept."""
    from ccjax.rules import linalg

    right = linalg._cholesky_pattern  # without the entries reading dS[a, 0]:
    monkeypatch.setattr(linalg, "_cholesky_pattern", lambda shape: right(shape) & (np.arange(shape[-1]) > 0))
    linalg._cholesky_pattern_holds.cache_clear()
    try:
        m = jnp.asarray(np.random.default_rng(10).normal(size=(5, 5)))
        assert linalg._cholesky_reads((5, 5)) is None
        got = ccjax.jacve(_cholesky_of_gram, order="rev", output="sparse")(m)
        assert got.nse == 15 * 5 ** 2  # each entry of L's lower triangle (jnp.linalg.cholesky's tril) reads all of m
        np.testing.assert_allclose(np.asarray(got.todense()), np.asarray(jax.jacrev(_cholesky_of_gram)(m)),
                                   rtol=1e-10, atol=1e-10)
    finally:
        linalg._cholesky_pattern_holds.cache_clear()


def test_work_run_apart_keeps_the_callers_x64_setting():
    """``run_apart``'s thread sees the caller's ``jax.enable_x64`` (a
    thread-local setting), so the probe's float64 stand-ins stay float64."""
    from ccjax.rules.base import run_apart

    assert run_apart(lambda: jnp.zeros(1).dtype) == jnp.float64
    with jax.enable_x64(False):
        assert run_apart(lambda: jnp.zeros(1).dtype) == jnp.float32
