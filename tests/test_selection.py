"""Gathers, scatter-adds, sorts and ``top_k`` at run-time indices are selections:
the algebra against dense products (with executed multiplications equal to
the plan's), whole programs exact in every order, under jit, vmap and
eagerly, and sparse output holding one entry per selected element."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

jax.config.update("jax_enable_x64", True)

from counting import count_mults
from test_elimination import _executed_mults, _orders
from test_structure import shapes, stencil_shapes, stencils, structures

import ccjax
from ccjax.eliminate import plan_elimination
from ccjax.structure import Selection, dense, entry_count, product_plan, structure_from_labels, sum_plan, to_dense, unit

# -- the algebra -----------------------------------------------------------------------------------

SHAPES = [(4,), (2, 3), (5,), (3,)]


def _selection(rng, kind, out_shape, in_shape, valued, sign, key="k", width=1):
    """A random selection whose columns have keys ``(key, 0), (key, 1)...``
    (pairs: ``2 * width`` entries, some of which may share a position)."""
    if kind == "pairs":
        count = 2 * width
        idx = np.stack([rng.integers(0, math.prod(out_shape), count), rng.integers(0, math.prod(in_shape), count)], 1)
        st = Selection(tuple(out_shape), tuple(in_shape), "pairs", ((key, 0),), ("v",) if valued else None,
                       1 if valued else sign, count)
        idx = jnp.asarray(idx, jnp.int32)
        return st, ((idx, jnp.asarray(rng.normal(size=(count, 1)))) if valued else (idx,))
    lead = math.prod(out_shape if kind == "pick" else in_shape)
    bound = math.prod(in_shape if kind == "pick" else out_shape)
    idx = jnp.asarray(rng.integers(0, bound, (lead, width)), jnp.int32)
    st = Selection(tuple(out_shape), tuple(in_shape), kind, tuple((key, k) for k in range(width)),
                   ("v",) if valued else None, 1 if valued else sign)
    value = (idx, jnp.asarray(rng.normal(size=(lead, width)))) if valued else (idx,)
    return st, value


def _other(rng, kind, out_shape, in_shape):
    """A structure without selection: identity (±), a stored diagonal, a
    diagonal on one of two axes, or dense."""
    if kind in ("unit", "neg") or out_shape != in_shape and kind != "dense":
        if out_shape != in_shape:
            kind = "dense"
        else:
            return unit(out_shape, -1 if kind == "neg" else 1), None
    if kind == "diag":
        labels = list(range(len(out_shape)))
        st, prep = structure_from_labels(out_shape, in_shape, labels, labels, labels, out_shape)
        return st, prep(jnp.asarray(rng.normal(size=out_shape)))
    if kind == "half_diag" and len(out_shape) == 2:  # value over the first axis only
        st, prep = structure_from_labels(out_shape, in_shape, [0, 1], [0, 1], [0], out_shape[:1])
        return st, prep(jnp.asarray(rng.normal(size=out_shape[:1])))
    st, prep = dense(out_shape, in_shape)
    return st, prep(jnp.asarray(rng.normal(size=out_shape + in_shape)))


def _matrix(st, value):
    return np.asarray(to_dense(st, value, jnp.float64)).reshape(math.prod(st.out_shape), math.prod(st.in_shape))


SIDES = hs.sampled_from(["pick", "put", "pairs", "unit", "neg", "diag", "half_diag", "dense"])
SELECTIONS = ("pick", "put", "pairs")


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(outer=SIDES, inner=SIDES, valued=hs.tuples(hs.booleans(), hs.booleans()),
       signs=hs.tuples(hs.sampled_from([1, -1]), hs.sampled_from([1, -1])),
       widths=hs.tuples(hs.integers(1, 3), hs.integers(1, 3)),
       shapes=hs.tuples(*[hs.sampled_from(SHAPES)] * 3), seed=hs.integers(0, 1000))
def test_products_with_selections_equal_dense_products_and_count_what_they_execute(outer, inner, valued, signs,
                                                                                     widths, shapes, seed):
    if outer not in SELECTIONS and inner not in SELECTIONS:
        outer = "pick"
    rng = np.random.default_rng(seed)
    p, m, n = shapes
    if outer in SELECTIONS:
        a = _selection(rng, outer, p, m, valued[0], signs[0], width=widths[0])
    else:
        a = _other(rng, outer, p if outer == "dense" else m, m)
    if inner in SELECTIONS:
        b = _selection(rng, inner, a[0].in_shape, n, valued[1], signs[1], key="other", width=widths[1])
    else:
        b = _other(rng, inner, a[0].in_shape, a[0].in_shape if inner != "dense" else n)
    plan = product_plan(a[0], b[0])
    got = _matrix(plan.result, plan.apply(a[1], b[1], jnp.float64))
    np.testing.assert_allclose(got, _matrix(*a) @ _matrix(*b), rtol=1e-12, atol=1e-12)
    assert count_mults(lambda x, y: plan.apply(x, y, jnp.float64), a[1], b[1]) == plan.mults
    if isinstance(plan.result, Selection):
        assert plan.mults <= plan.result.nnz_values
    if (outer == "put" and inner == "pick" and min(widths) == 1
            and 2 * widths[0] * widths[1] * math.prod(m) <= math.prod(p) * math.prod(n)):
        assert plan.result.kind == "pairs"  # a scatter-add of gathered rows keeps its entries


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(other=SIDES, pairs_first=hs.booleans(), valued=hs.tuples(hs.booleans(), hs.booleans()),
       signs=hs.tuples(hs.sampled_from([1, -1]), hs.sampled_from([1, -1])), widths=hs.tuples(hs.integers(1, 4),
                                                                                           hs.integers(1, 2)),
       shape=hs.sampled_from([(2, 3), (4,), (3, 3)]), seed=hs.integers(0, 1000))
def test_sums_with_pairs_equal_dense_sums(other, pairs_first, valued, signs, widths, shape, seed):
    """Pairs plus pairs, a pick, a put, a diagonal or a dense block: the
    entries side by side (no addition) while they fill at most half of the
    dense block, else the dense sum; equal to the dense sum either way."""
    rng = np.random.default_rng(seed)
    pairs = _selection(rng, "pairs", shape, shape, valued[0], signs[0], width=widths[0])
    if other in SELECTIONS:
        b = _selection(rng, other, shape, shape, valued[1], signs[1], key="other", width=widths[1])
    else:
        b = _other(rng, other, shape, shape)
    a, b = (pairs, b) if pairs_first else (b, pairs)
    plan = sum_plan(a[0], b[0])
    want = _matrix(*a) + _matrix(*b)
    np.testing.assert_allclose(_matrix(plan.result, plan.apply(a[1], b[1], jnp.float64)), want, rtol=1e-12,
                               atol=1e-12)
    assert count_mults(lambda x, y: plan.apply(x, y, jnp.float64), a[1], b[1]) == plan.mults == 0
    entries = sum(st.nnz_values if isinstance(st, Selection) else entry_count(st) for st in (a[0], b[0]))
    if other != "dense" and 2 * entries <= math.prod(shape) ** 2:
        assert isinstance(plan.result, Selection) and plan.result.kind == "pairs"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=hs.data(), kind=hs.sampled_from(SELECTIONS), selection_outer=hs.booleans(), valued=hs.booleans(),
       sign=hs.sampled_from([1, -1]), width=hs.integers(1, 3), seed=hs.integers(0, 1000))
def test_selections_times_banded_structures_equal_dense_products(data, kind, selection_outer, valued, sign, width,
                                                                 seed):
    """A slice, pad, shift, stencil or replication next to a selection is read
    as a selection with constant indices (``selection.static_selection``)
    where the two then compose: the product equals the dense one and
    multiplies what the plan counts."""
    rng = np.random.default_rng(seed)
    if data.draw(hs.booleans()):
        rank = data.draw(hs.integers(1, 2))
        v, u = data.draw(stencil_shapes(rank)), data.draw(stencil_shapes(rank))
        other, other_value = data.draw(stencils(v, u) if selection_outer else stencils(u, v))
    else:
        v, u = data.draw(shapes(2)), data.draw(shapes(2))
        shape_pair = (v, u) if selection_outer else (u, v)
        other, other_value = data.draw(structures(*shape_pair, bands=True))
    p = data.draw(hs.sampled_from(SHAPES))
    if selection_outer:
        sel = _selection(rng, kind, p, v, valued, sign, width=width)
        a, b = sel, (other, other_value)
    else:
        sel = _selection(rng, kind, v, p, valued, sign, width=width)
        a, b = (other, other_value), sel
    plan = product_plan(a[0], b[0])
    got = _matrix(plan.result, plan.apply(a[1], b[1], jnp.float64))
    np.testing.assert_allclose(got, _matrix(*a) @ _matrix(*b), rtol=1e-12, atol=1e-12)
    assert count_mults(lambda x, y: plan.apply(x, y, jnp.float64), a[1], b[1]) == plan.mults


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(start=hs.integers(0, 3), step=hs.integers(1, 4), count=hs.integers(1, 4), spare=hs.integers(0, 3),
       other=hs.sampled_from(["unit", "neg", "diag", "dense"]), valued=hs.booleans(), sign=hs.sampled_from([1, -1]),
       selection_outer=hs.booleans(), seed=hs.integers(0, 1000))
def test_slices_at_constant_indices_write_by_one_pad_and_equal_dense_products(start, step, count, spare, other,
                                                                              valued, sign, selection_outer, seed):
    """A strided (or plain) slice's columns, ``dense ∘ pick``, and rows,
    ``put ∘ dense``, at constant indices are one interior pad, not a
    scatter-add into zeros: XLA fuses a pad into the sum it feeds."""
    rng = np.random.default_rng(seed)
    size = start + step * (count - 1) + 1 + spare
    idx = start + step * np.arange(count, dtype=np.int32)[:, None]
    kind = "put" if selection_outer else "pick"
    st = Selection((size,) if selection_outer else (count,), (count,) if selection_outer else (size,), kind,
                   (("k", 0),), ("v",) if valued else None, 1 if valued else sign)
    sel = (st, (idx, jnp.asarray(rng.normal(size=(count, 1)))) if valued else (idx,))
    rest = _other(rng, other, (count,), (count,))
    a, b = (sel, rest) if selection_outer else (rest, sel)
    plan = product_plan(a[0], b[0])

    def run(value):  # the indices stay constants, as in a planned program
        return plan.apply(sel[1], value, jnp.float64) if selection_outer else plan.apply(value, sel[1], jnp.float64)

    np.testing.assert_allclose(_matrix(plan.result, run(rest[1])), _matrix(*a) @ _matrix(*b), rtol=1e-12,
                               atol=1e-12)
    assert count_mults(run, rest[1]) == plan.mults
    if not isinstance(plan.result, Selection):  # densified: the slice wrote its rows or columns
        primitives = {e.primitive.name for e in jax.make_jaxpr(run)(rest[1]).eqns}
        assert "pad" in primitives and not any(p.startswith("scatter") for p in primitives), primitives


def test_a_selection_after_a_slice_stays_a_selection():
    x_to_slice, _ = structure_from_labels((3,), (5,), ["o"], ["i"], bands=[("o", "i", 1)])  # x[1:4]
    gather = Selection((4,), (3,), "pick", (("k", 0),))
    scatter = Selection((6,), (3,), "put", (("k", 0),))
    for outer in (gather, scatter):
        plan = product_plan(outer, x_to_slice)
        assert isinstance(plan.result, Selection) and plan.result.in_shape == (5,), outer.kind


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(kinds=hs.tuples(SIDES, SIDES), valued=hs.tuples(hs.booleans(), hs.booleans()),
       signs=hs.tuples(hs.sampled_from([1, -1]), hs.sampled_from([1, -1])), same_key=hs.booleans(),
       widths=hs.tuples(hs.integers(1, 3), hs.integers(1, 3)), seed=hs.integers(0, 1000))
def test_sums_with_selections_equal_dense_sums(kinds, valued, signs, same_key, widths, seed):
    rng = np.random.default_rng(seed)
    shape = (2, 3)
    if kinds[0] not in ("pick", "put"):
        kinds = ("pick", kinds[1])
    a = _selection(rng, kinds[0], shape, shape, valued[0], signs[0], width=widths[0])
    if kinds[1] in ("pick", "put"):
        b = _selection(np.random.default_rng(seed + 1), kinds[1], shape, shape, valued[1], signs[1],
                       key="k" if same_key else "other", width=widths[0] if same_key else widths[1])
        if same_key and kinds[0] == kinds[1]:  # equal keys promise equal indices
            b = (b[0], (a[1][0],) + b[1][1:])
    else:
        b = _other(rng, kinds[1], shape, shape)
    plan = sum_plan(a[0], b[0])
    want = _matrix(*a) + _matrix(*b)
    if plan.result is None:
        np.testing.assert_allclose(want, 0.0, atol=1e-12)
        return
    np.testing.assert_allclose(_matrix(plan.result, plan.apply(a[1], b[1], jnp.float64)), want, rtol=1e-12,
                               atol=1e-12)
    # entries concatenate while they fill at most half of the 6 x 6 block (an elementwise partial: width 1)
    if kinds[0] == kinds[1]:
        assert isinstance(plan.result, Selection) == (same_key or widths[0] + widths[1] <= 3)
    elif kinds[1] in ("unit", "neg", "diag", "half_diag"):
        assert isinstance(plan.result, Selection) == (widths[0] + 1 <= 3)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=hs.data(), kind=hs.sampled_from(["pick", "put"]), selection_first=hs.booleans(), valued=hs.booleans(),
       sign=hs.sampled_from([1, -1]), width=hs.integers(1, 3), seed=hs.integers(0, 1000))
def test_sums_of_selections_and_banded_structures_equal_dense_sums(data, kind, selection_first, valued, sign, width,
                                                                  seed):
    """A slice, shift, stencil or replication added to a selection joins it
    at its constant indices (``jnp.interp``'s end values beside its run-time
    gathers), while that stores at most half the dense block: the sum
    equals the dense one and multiplies nothing."""
    if data.draw(hs.booleans()):
        rank = data.draw(hs.integers(1, 2))
        v, u = data.draw(stencil_shapes(rank)), data.draw(stencil_shapes(rank))
        other = data.draw(stencils(v, u))
    else:
        v, u = data.draw(shapes(2)), data.draw(shapes(2))
        other = data.draw(structures(v, u, bands=True))
    sel = _selection(np.random.default_rng(seed), kind, v, u, valued, sign, width=width)
    a, b = (sel, other) if selection_first else (other, sel)
    plan = sum_plan(a[0], b[0])
    want = _matrix(*a) + _matrix(*b)
    if plan.result is None:
        np.testing.assert_allclose(want, 0.0, atol=1e-12)
        return
    got = plan.apply(a[1], b[1], jnp.float64)
    np.testing.assert_allclose(_matrix(plan.result, got), want, rtol=1e-12, atol=1e-12)
    assert count_mults(lambda x, y: plan.apply(x, y, jnp.float64), a[1], b[1]) == 0


# -- whole programs -------------------------------------------------------------------------------

def gather_twice(x, idx):
    """The same indices read twice: the two picks sum to one."""
    return x[idx] ** 2 + jnp.sin(x[idx])


def gather_matvec(x, idx):
    """A dense partial after a pick, and a pick after a dense partial."""
    A = jnp.arange(12.0).reshape(6, 2) / 7.0
    B = jnp.cos(jnp.arange(35.0).reshape(7, 5))
    y = jnp.tanh(B @ x[: 5])
    return jnp.concatenate([A @ jnp.sin(x[idx[:2]]), y[idx % 7] * x[idx]])


def rows_and_columns(x, idx):
    X = x[:12].reshape(3, 4)
    return jnp.sin(X[:, idx % 4]).sum(0) + jnp.cos(X[idx % 3, :]).sum(1) * x[idx]


def sort_pair(x, idx):
    keys = jnp.sin(3.0 * x) * x
    k, v = jax.lax.sort_key_val(keys, jnp.exp(x))
    return jnp.concatenate([k * v, jnp.sort(x.reshape(2, -1) ** 2, axis=0).ravel()])


def sort_rows(x, idx):
    k, v = jax.lax.sort_key_val(jnp.sin(3.0 * x) * x, jnp.exp(x))
    return k * v + jnp.sort(x.reshape(3, 4) ** 2, axis=1).ravel()


def argsort_take(x, idx):
    order = jnp.argsort(x)
    return jnp.take(x * x, order) + jnp.take_along_axis(jnp.tanh(x), order, axis=0)


def top_k(x, idx):
    """``lax.top_k`` along rows and of a vector: values read where its
    indices output says (a run-time pick), ties as ``top_k`` breaks them."""
    v, _ = jax.lax.top_k(jnp.sin(x.reshape(3, 4)) * x.reshape(3, 4)[::-1], 2)
    return jnp.concatenate([jax.nn.softmax(v).ravel(), jax.lax.top_k(jnp.round(x) + x ** 2, 3)[0] * x[idx][:3]])


def segment_sum(x, idx):
    """Scatter-adds with repeated and dropped indices (puts), then a gather of them."""
    s = jax.ops.segment_sum(jnp.sin(x[idx]) * x[idx], idx % 4, num_segments=4)
    t = jnp.zeros(5).at[idx - 3].add(x[idx] ** 2)  # some negative: wrapped or dropped
    return jnp.concatenate([s * s, t, s[idx % 4] * x[idx]])


def out_of_range(x, idx):
    far = idx * 3 - 5
    return (x.at[far].get(mode="fill", fill_value=0.5) * x.at[far].get(mode="clip")
            + jnp.sin(x[jnp.clip(far, -x.shape[0], x.shape[0] - 1)])
            + jnp.zeros(x.shape[0]).at[far].add(x[idx], mode="clip")[idx])


def embedding(x, idx):
    W = x[:12].reshape(4, 3)
    e = W[idx % 4]  # (k, 3) rows of a matrix
    return jnp.tanh(e @ jnp.ones(3) + e[:, 0] * e[:, 2])


def interpolate(x, idx):
    """``jnp.interp``: table reads at run-time indices (``searchsorted``) beside
    the end values ``where`` picks for queries outside the table (a selection
    summed with replications)."""
    return jnp.interp(1.2 * jnp.sin(x[:8]), jnp.linspace(-1.0, 1.0, 4), x[8:12] ** 2) * x[idx]


MIXING = np.random.default_rng(18).normal(size=(3, 3))


def message_passing(x, idx):
    """A graph-network layer on 4 nodes of 3 features, edges from the
    indices: rows gathered at the sources, mixed, scatter-added at the
    targets (a put after a pick: pairs), plus a residual."""
    h = x.reshape(4, 3)
    src, dst = idx % 4, (idx // 3) % 4
    return jnp.tanh(jnp.zeros((4, 3)).at[dst].add(jnp.tanh(h[src] @ MIXING)) + h)


PROGRAMS = {f.__name__: f for f in (gather_twice, gather_matvec, rows_and_columns, sort_pair, sort_rows, argsort_take,
                                    top_k, segment_sum, out_of_range, embedding, interpolate, message_passing)}
X = np.random.default_rng(0).normal(size=12)
IDX = np.array([3, 0, 7, 3, 11, 5, 0, 2], np.int32)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_programs_with_run_time_indices_match_jacrev_in_every_order_and_cost_is_executed(name):
    fn = PROGRAMS[name]
    want = jax.jacrev(fn)(X, IDX)
    g = ccjax.graph(fn, X, IDX)
    assert any(isinstance(st, Selection) for st in g.edges.values())
    for order in _orders(g, np.random.default_rng(1)):
        got = jax.jit(ccjax.jacve(fn, order=order))(X, jnp.asarray(IDX))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        plan = plan_elimination(g, order)
        assert _executed_mults(g, plan, fn, (X, IDX), 0) == plan.report.mults
    for order in ("fwd", "rev", "auto"):
        np.testing.assert_allclose(ccjax.jacve(fn, order=order)(X, IDX), want, rtol=1e-12, atol=1e-12)


def _count_primitive(jaxpr, name: str, where=lambda eqn: True) -> int:
    """Equations of primitive ``name`` (for which ``where`` holds) in ``jaxpr`` and its sub-jaxprs."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name and where(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _count_primitive(sub, name, where)
    return count


def _integer_gathers(jaxpr) -> int:
    """Gathers from integer arrays (index arithmetic) in ``jaxpr`` and its sub-jaxprs."""
    return _count_primitive(jaxpr, "gather", lambda eqn: jnp.issubdtype(eqn.invars[0].aval.dtype, jnp.integer))


#: Programs whose gathers and scatters all read or write single elements at
#: indices that do not depend on ``x`` (the others take rows, or sort ``x``).
POINT_GATHERS = ("gather_twice", "gather_matvec", "segment_sum", "out_of_range")


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_constant_indices_are_composed_when_tracing(name):
    """Indices fixed in the function: the selections' index arithmetic is
    done in NumPy when the Jacobian program is traced (no integer gather
    left for XLA where every gather reads single elements), and the
    Jacobian is still exact in every order, eagerly, jitted and under
    ``vmap`` over ``x``."""
    fn = lambda x: PROGRAMS[name](x, IDX)
    want = jax.jacrev(fn)(X)
    xs = jnp.stack([X, np.cos(X)])
    want_batch = jax.vmap(jax.jacrev(fn))(xs)
    g = ccjax.graph(fn, X)
    for order in ["fwd", "rev", "markowitz", "auto"] + _orders(g, np.random.default_rng(2))[3:]:
        jac = ccjax.jacve(fn, order=order)
        np.testing.assert_allclose(jax.jit(jac)(X), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(jac(X), want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(jax.jit(jax.vmap(jac))(xs), want_batch, rtol=1e-12, atol=1e-12)
        if order in ("fwd", "rev", "markowitz") and name in POINT_GATHERS:
            assert _integer_gathers(jax.make_jaxpr(jac)(X).jaxpr) == 0, order


def _start_indices(data, rank: int, least: int) -> tuple:
    """``(start_index_map, batch shape, indices)`` of a random gather from a
    rank-``rank`` operand mapping at least ``least`` of its dimensions, with
    out-of-range and negative indices."""
    mapped = data.draw(hs.permutations(range(rank)))
    mapped = tuple(mapped[:data.draw(hs.integers(least, rank))])
    batch = tuple(data.draw(hs.lists(hs.integers(1, 3), min_size=0, max_size=2)))
    size = math.prod(batch) * len(mapped)
    idx = np.asarray(data.draw(hs.lists(hs.integers(-6, 6), min_size=size, max_size=size)), np.int32)
    return mapped, batch, idx.reshape(batch + (len(mapped),))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.data())
def test_point_gathers_read_what_xla_reads(data):
    """The arithmetic reading of a gather of single elements
    (``rules.selection._element_reads``), in NumPy (constant indices) and in
    JAX (run-time indices, jitted), against XLA's gather of a flat iota
    (``clip``) and of ones (``fill``), out-of-range and negative indices too."""
    from jax import lax

    from ccjax.rules.selection import _element_reads, _single_elements

    operand = tuple(data.draw(hs.lists(hs.integers(1, 4), min_size=0, max_size=3)))
    mapped, batch, idx = _start_indices(data, len(operand), 0)
    dn = lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=tuple(range(len(operand))),
                                    start_index_map=mapped)
    sizes = (1,) * len(operand)
    assert _single_elements(operand, idx.shape, dn, sizes)
    iota = jnp.arange(math.prod(operand), dtype=jnp.int32).reshape(operand)
    want_flat = lax.gather(iota, idx, dn, sizes, mode=lax.GatherScatterMode.CLIP)
    want_valid = lax.gather(jnp.ones(operand), idx, dn, sizes, mode=lax.GatherScatterMode.FILL_OR_DROP, fill_value=0)
    traced = jax.jit(lambda i: _element_reads(operand, i, dn, jnp))(idx)
    for flat, valid in (_element_reads(operand, idx.astype(np.int64), dn), traced):
        np.testing.assert_array_equal(np.asarray(flat).reshape(batch), want_flat)
        np.testing.assert_array_equal(np.asarray(valid).reshape(batch), np.asarray(want_valid) == 1)
    if operand:  # a window wider than one element is not read this way
        wide = lax.GatherDimensionNumbers(offset_dims=(len(batch),), collapsed_slice_dims=tuple(range(1, len(operand))),
                                          start_index_map=mapped)
        assert not _single_elements(operand, idx.shape, wide, (operand[0],) + sizes[1:])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.data())
def test_window_gathers_at_known_indices_read_what_xla_reads(data):
    """A gather of windows at indices known when the graph is built
    (``rules.selection._window_reads``, run in NumPy) against XLA's gather of
    a flat iota (``clip``) and of ones (``fill``): windows of any size,
    collapsed or kept dimensions, out-of-range and negative starts."""
    from jax import lax

    from ccjax.rules.selection import _window_reads

    operand = tuple(data.draw(hs.lists(hs.integers(1, 4), min_size=1, max_size=3)))
    sizes = tuple(data.draw(hs.integers(1, n)) for n in operand)
    collapsed = tuple(d for d in range(len(operand)) if sizes[d] == 1 and data.draw(hs.booleans()))
    mapped, batch, idx = _start_indices(data, len(operand), 1)
    kept = len(operand) - len(collapsed)
    dn = lax.GatherDimensionNumbers(offset_dims=tuple(range(len(batch), len(batch) + kept)),
                                    collapsed_slice_dims=collapsed, start_index_map=mapped)
    iota = jnp.arange(math.prod(operand), dtype=jnp.int32).reshape(operand)
    want_flat = lax.gather(iota, idx, dn, sizes, mode=lax.GatherScatterMode.CLIP)
    want_valid = lax.gather(jnp.ones(operand), idx, dn, sizes, mode=lax.GatherScatterMode.FILL_OR_DROP, fill_value=0)
    flat, valid = _window_reads(operand, idx.astype(np.int64), dn, sizes)
    np.testing.assert_array_equal(flat.reshape(want_flat.shape), want_flat)
    np.testing.assert_array_equal(valid.reshape(want_valid.shape), np.asarray(want_valid) == 1)


@pytest.mark.parametrize("name", ["gather_twice", "sort_pair", "segment_sum", "out_of_range", "interpolate",
                                  "message_passing"])
def test_selections_under_vmap_over_values_and_indices(name):
    fn = PROGRAMS[name]
    xs = jnp.stack([X, np.cos(X)])
    idxs = jnp.stack([IDX, IDX[::-1]])
    want = jax.vmap(jax.jacrev(fn))(xs, idxs)
    for order in ("fwd", "rev", "markowitz"):
        np.testing.assert_allclose(jax.jit(jax.vmap(ccjax.jacve(fn, order=order)))(xs, idxs), want,
                                   rtol=1e-12, atol=1e-12)


def test_two_gathers_at_one_index_stay_one_selection():
    g = ccjax.graph(gather_twice, X, IDX)
    plan = plan_elimination(g, ccjax.orders.HEURISTICS["rev"](g))
    final = [plan.structures[s] for s in plan.final.values()]
    assert final and all(isinstance(st, Selection) for st in final)
    assert plan.report.mults <= 3 * IDX.size  # squares, cosines, sum: no dense product


# gather_twice: one entry per index.  sort_rows: two permutations (the key-value sort's and the row
# sort's), so two entries per row, which may meet.  argsort_take reads x at one permutation through
# jnp.take (int64 indices) and take_along_axis (int32): two keys, two entries per row.  Never a dense block.
@pytest.mark.parametrize("name,nse", [("gather_twice", 8), ("sort_rows", 24), ("argsort_take", 24)])
def test_sparse_output_stores_one_entry_per_selected_element(name, nse):
    fn = PROGRAMS[name]
    want = np.asarray(jax.jacrev(fn)(X, IDX))
    assert np.count_nonzero(want) <= nse
    for order in ("fwd", "rev", "markowitz"):
        sparse = jax.jit(ccjax.jacve(fn, order=order, output="sparse"))(X, jnp.asarray(IDX))
        np.testing.assert_allclose(np.asarray(sparse.todense()), want, rtol=1e-12, atol=1e-12)
        assert sparse.nse == nse, order


def test_message_passing_at_run_time_edges_stores_its_pairs():
    """Rows gathered at run-time sources, mixed and scatter-added at run-time
    targets, plus a residual: in every order the Jacobian is kept as pairs,
    one entry per (edge, feature pair) and per residual entry, never the
    dense block (16 nodes x 2 features: 1,024 entries; 10 edges x 4 + 32 = 72),
    and the multiplications executed are those counted."""
    rng = np.random.default_rng(19)
    mix = rng.normal(size=(2, 2))

    def layer(h, edges):
        return jnp.tanh(jnp.zeros((16, 2)).at[edges[1]].add(jnp.tanh(h[edges[0]] @ mix)) + h)

    h, edges = rng.normal(size=(16, 2)), rng.integers(0, 16, (2, 10)).astype(np.int32)
    want = np.asarray(jax.jacrev(layer)(h, edges))
    g = ccjax.graph(layer, h, edges)
    for order in _orders(g, np.random.default_rng(4)):  # forward, reverse, Markowitz and random orders
        plan = plan_elimination(g, order)
        (final,) = [plan.structures[slot] for slot in set(plan.final.values())]
        assert isinstance(final, Selection) and final.kind == "pairs", (order, final)
        assert _executed_mults(g, plan, layer, (h, edges), 0) == plan.report.mults
        np.testing.assert_allclose(jax.jit(ccjax.jacve(layer, order=order))(h, edges), want, rtol=1e-12, atol=1e-12)
        sparse = jax.jit(ccjax.jacve(layer, order=order, output="sparse"))(h, jnp.asarray(edges))
        np.testing.assert_allclose(np.asarray(sparse.todense()), want, rtol=1e-12, atol=1e-12)
        assert sparse.nse == 10 * 4 + 32 >= np.count_nonzero(want), order
    batch_h, batch_edges = np.stack([h, np.cos(h)]), np.stack([edges, edges[::-1]])
    for order in ("fwd", "rev", "markowitz"):
        jac = ccjax.jacve(layer, order=order)
        np.testing.assert_allclose(jac(h, edges), want, rtol=1e-12, atol=1e-12)  # eager
        np.testing.assert_allclose(jax.jit(jax.vmap(jac))(batch_h, batch_edges),
                                   jax.vmap(jax.jacrev(layer))(batch_h, batch_edges), rtol=1e-12, atol=1e-12)


def test_transforms_of_a_jacobian_written_through_a_barrier():
    """A one-entry-per-row selection with values is written densely with its
    values behind ``lax.optimization_barrier``: ``grad``, ``jacfwd``,
    ``vmap`` and a nested ``jacve`` of that Jacobian equal JAX's."""
    idx = jnp.asarray(IDX)
    jac = ccjax.jacve(gather_twice, order="rev")  # the elimination (auto runs jax.jacrev at this size)
    want = jax.jacrev(gather_twice)
    total = lambda j: lambda x, i: jnp.sum(jnp.sin(j(x, i)))
    np.testing.assert_allclose(jax.jit(jax.grad(total(jac)))(X, idx), jax.grad(total(want))(X, idx), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(jac))(X, idx), jax.jacfwd(want)(X, idx), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.jit(ccjax.jacve(jac))(X, idx), jax.jacrev(want)(X, idx), rtol=1e-12, atol=1e-12)
    xs = jnp.stack([X, np.cos(X)])
    np.testing.assert_allclose(jax.jit(jax.vmap(jac, (0, None)))(xs, idx), jax.vmap(want, (0, None))(xs, idx),
                               rtol=1e-12, atol=1e-12)
    assert _count_primitive(jax.make_jaxpr(jac)(X, idx).jaxpr, "optimization_barrier") >= 1


def test_a_large_gather_costs_and_stores_its_length_not_a_dense_block():
    x = np.random.default_rng(2).normal(size=1024)
    idx = np.random.default_rng(3).integers(0, 1024, 4096).astype(np.int32)
    assert ccjax.cost(gather_twice, x, idx, order="rev") <= 3 * idx.size
    sparse = jax.jit(ccjax.jacve(gather_twice, order="auto", output="sparse"))(x, jnp.asarray(idx))
    assert sparse.nse == idx.size
    np.testing.assert_allclose(sparse.todense(), jax.jacrev(gather_twice)(x, idx), rtol=1e-12, atol=1e-12)


# Rows picked from a matrix, then multiplied by a matrix: the product's partial has 16 entries per
# row (a weight matrix's column), read as a static selection, so the picks stay picks.
EMBEDDING = np.random.default_rng(8).normal(size=(40, 16))
WEIGHTS = np.random.default_rng(9).normal(size=(16, 6))
TOKENS = np.random.default_rng(10).integers(0, 40, 12)
PERMUTATION = np.random.default_rng(11).permutation(24)
EDGES = np.random.default_rng(16).integers(0, 24, (2, 40))
MIX = np.random.default_rng(17).normal(size=(16, 16))
LU = jax.scipy.linalg.lu_factor(4.0 * np.eye(16) + np.random.default_rng(12).normal(size=(16, 16)))
WIDE_PROGRAMS = {
    "embedding_rows_times_weights": (lambda E: jnp.tanh(E[TOKENS] @ WEIGHTS), EMBEDDING),
    "row_permutation_times_weights": (lambda X: jnp.sin(X[PERMUTATION] @ WEIGHTS), np.random.default_rng(13).normal(size=(24, 16))),
    # 8 right-hand sides: the solves' partial (16 x 16 per column) stores 1/8 of a dense block; with fewer, a
    # dense product is cheaper (WIDE_DENSITY) and the sparse output stores the dense block.
    # a graph network's message passing: rows gathered at edge sources, mixed, scatter-added at edge targets
    "message_passing": (lambda H: jnp.tanh(jnp.zeros((24, 16)).at[EDGES[1]].add(jnp.tanh(H[EDGES[0]] @ MIX)) + H),
                        np.random.default_rng(15).normal(size=(24, 16))),
    "lu_solve_matrix_rhs": (lambda B: jax.scipy.linalg.lu_solve(LU, jnp.tanh(B)), np.random.default_rng(14).normal(size=(16, 8))),
}


@pytest.mark.parametrize("name", sorted(WIDE_PROGRAMS))
def test_picked_rows_times_a_matrix_keep_their_selections(name):
    fn, x = WIDE_PROGRAMS[name]
    want = np.asarray(jax.jacrev(fn)(x))
    for order in ("fwd", "rev", "markowitz", "auto"):
        np.testing.assert_allclose(np.asarray(jax.jit(ccjax.jacve(fn, order=order))(x)), want, rtol=1e-12, atol=1e-12)
        sparse = jax.jit(ccjax.jacve(fn, order=order, output="sparse"))(x)
        np.testing.assert_allclose(np.asarray(sparse.todense()), want, rtol=1e-12, atol=1e-12)
        if name == "lu_solve_matrix_rhs" and order in ("fwd", "markowitz"):
            # the two triangular solves' picks (16 per row each) meet the row pick one at a time; their
            # composition would list 16 x 16 reads per row, so the product is planned dense
            continue
        assert sparse.nse == np.count_nonzero(want), (order, sparse.nse)


def test_a_wide_dense_structure_is_not_read_as_a_static_selection():
    from ccjax.structure import selection as sel_lib
    narrow, _ = structure_from_labels((8, 16), (8, 16), [("a", 0), ("o",)], [("a", 0), ("i",)], [("a", 0), ("o",), ("i",)],
                                      (8, 16, 16))
    assert sel_lib.static_selection(narrow, "pick").selection.width == 16  # 16 of 128 per row: 1/8 dense
    wide, _ = structure_from_labels((2, 16), (2, 16), [("a", 0), ("o",)], [("a", 0), ("i",)], [("a", 0), ("o",), ("i",)],
                                    (2, 16, 16))
    assert sel_lib.static_selection(wide, "pick") is None  # 16 of 32 per row: half dense
