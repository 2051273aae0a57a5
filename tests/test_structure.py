"""The structure algebra against dense einsum, on random structures."""
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

jax.config.update("jax_enable_x64", True)

from counting import count_mults

from ccjax.structure import (Structure, dense, densify_plan, entry_count, is_terms, make_structure, parts_of,
                             product_plan, structure_from_labels, sum_plan, to_bcoo, to_dense, unit)
from ccjax.structure.core import pattern

SIZES = [1, 2, 3, 4, 6]


@st.composite
def shapes(draw, max_rank=3):
    return tuple(draw(st.sampled_from(SIZES)) for _ in range(draw(st.integers(0, max_rank))))


@st.composite
def diagonals(draw, n_out, n_in):
    """1 to 3 random band diagonals: offsets and row ranges."""
    k = draw(st.integers(1, 3))
    offsets = tuple(draw(st.integers(-n_out + 1, n_in - 1)) for _ in range(k))
    ranges = []
    for _ in range(k):
        lo = draw(st.integers(0, n_out - 1))
        ranges.append((lo, draw(st.integers(lo + 1, n_out))))
    return offsets, tuple(ranges)


@st.composite
def structures(draw, out_shape, in_shape, bands=False):
    """A random structure over out_shape + in_shape, possibly with factored
    axes (reshape-like), shared, replicated and stored symbols and (with
    ``bands``) banded pairs of axes with random diagonals and row ranges."""
    sizes: dict = {}
    pool: list = []

    def factorise(n):
        if n == 1:
            return ()
        options = [(n,)]
        for a in range(2, n):
            if n % a == 0:
                options.append((a, n // a))
        return draw(st.sampled_from(options))

    def axis(n):
        labels = []
        for f in factorise(n):
            same = [l for l in pool if sizes[l] == f]
            if same and draw(st.booleans()):
                labels.append(draw(st.sampled_from(same)))
            else:
                label = len(sizes)
                sizes[label] = f
                pool.append(label)
                labels.append(label)
        return labels

    out_axes = [axis(n) for n in out_shape]
    in_axes = [axis(n) for n in in_shape]
    band_list, columns = [], set()
    if bands:
        once = [l for l, c in _label_counts(out_axes + in_axes).items() if c == 1]
        rows = [ax[0] for ax in out_axes if len(ax) == 1 and ax[0] in once]
        cols = [ax[0] for ax in in_axes if len(ax) == 1 and ax[0] in once]
        for row in rows:
            if not cols or not draw(st.booleans()):
                continue
            col = draw(st.sampled_from(cols))
            cols.remove(col)
            offsets, ranges = draw(diagonals(sizes[row], sizes[col]))
            k = len(offsets)
            slot = None
            if k > 1:
                slot = ("slot", row)
                sizes[slot] = k
            band_list.append((row, col, slot, offsets, ranges))
            columns.add(col)
        # Band ends on no axis: a single element read (a column) or written (a row).
        banded_rows = {b[0] for b in band_list}
        for label, (n_out, n_in) in ([(c, (1, sizes[c])) for c in cols]
                                     + [(r, (sizes[r], 1)) for r in rows if r not in banded_rows]):
            if draw(st.integers(0, 3)):
                continue
            end = ("end", label)
            sizes[end] = 1
            offsets, ranges = draw(diagonals(n_out, n_in))
            slot = None
            if len(offsets) > 1:
                slot = ("slot", end)
                sizes[slot] = len(offsets)
            if n_out == 1:
                band_list.append((end, label, slot, offsets, ranges))
                columns.add(label)
            else:
                band_list.append((label, end, slot, offsets, ranges))
    used = list(dict.fromkeys(l for ax in out_axes + in_axes for l in ax if l not in columns))
    used += [b[2] for b in band_list if b[2] is not None]
    if draw(st.integers(0, 3)) == 0:
        return make_structure(out_axes, in_axes, sizes, None, draw(st.sampled_from([1, -1])), band_list)[0], None
    val = draw(st.permutations(used))
    val = [l for l in val if draw(st.booleans())]
    structure, perm = make_structure(out_axes, in_axes, sizes, val, 1, band_list)
    shape = tuple(sizes[l] for l in val)
    seed = draw(st.integers(0, 2**31 - 1))
    value = np.random.default_rng(seed).normal(size=shape)
    return structure, jnp.transpose(jnp.asarray(value), perm)


def _label_counts(axes):
    count = {}
    for ax in axes:
        for l in ax:
            count[l] = count.get(l, 0) + 1
    return count


# Structures and plans are static: one compiled program per check of the
# larger random structures runs several times faster than op-by-op dispatch,
# which compiles every op of every new shape (the small ones of the terms and
# single-element tests stay eager: there compiling a program costs more).
def _dense(s, v):
    return np.asarray(jax.jit(lambda value: to_dense(s, value, jnp.float64))(v))


def _eager_dense(s, v):
    return np.asarray(to_dense(s, v, jnp.float64))


def _apply(plan, *values):
    """``plan.apply(*values, float64)``, compiled as one program."""
    return jax.jit(lambda *xs: plan.apply(*xs, jnp.float64))(*values)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_product_matches_dense(data):
    w, v, u = data.draw(shapes()), data.draw(shapes()), data.draw(shapes())
    a, va = data.draw(structures(w, v))
    b, vb = data.draw(structures(v, u))
    plan = product_plan(a, b)
    got = _dense(plan.result, _apply(plan, va, vb))
    want = np.tensordot(_dense(a, va), _dense(b, vb), axes=len(v))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert plan.result.out_shape == w and plan.result.in_shape == u


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_sum_matches_dense(data):
    w, v = data.draw(shapes()), data.draw(shapes())
    a, va = data.draw(structures(w, v))
    b, vb = data.draw(structures(w, v))
    plan = sum_plan(a, b)
    want = _dense(a, va) + _dense(b, vb)
    if plan.result is None:
        np.testing.assert_array_equal(want, 0)
    else:
        np.testing.assert_allclose(_dense(plan.result, _apply(plan, va, vb)), want, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_product_cost_is_what_runs(data):
    w, v, u = data.draw(shapes()), data.draw(shapes()), data.draw(shapes())
    a, va = data.draw(structures(w, v))
    b, vb = data.draw(structures(v, u))
    plan = product_plan(a, b)
    if va is None or vb is None:
        args = [x for x in (va, vb) if x is not None]
        fn = lambda *xs: plan.apply(va if va is None else xs[0], vb if vb is None else xs[-1], jnp.float64)
        assert count_mults(fn, *args) == plan.mults
    else:
        assert count_mults(lambda x, y: plan.apply(x, y, jnp.float64), va, vb) == plan.mults


@st.composite
def stencils(draw, out_shape, in_shape, bands_only=False):
    """A structure pairing out axis k with in axis k as a delta, a band, a
    dense block or a replication (the partials of shifted-data programs);
    with ``bands_only``, a band wherever the pair has more than one entry."""
    sizes, out_labels, in_labels, stored, band_list = {}, [], [], [], []
    for k, (n_out, n_in) in enumerate(zip(out_shape, in_shape)):
        kinds = (["band"] if max(n_out, n_in) > 1 else []) + ["dense", "replicate"] + (["delta"] if n_out == n_in else [])
        kind = draw(st.sampled_from(kinds[:1] if bands_only else kinds))
        row, col = ("o", k), ("i", k)
        sizes[row], sizes[col] = n_out, n_in
        out_labels.append([row])
        if kind == "delta":
            in_labels.append([row])
            stored += [row]
        elif kind == "band":
            in_labels.append([col])
            offsets, ranges = draw(diagonals(n_out, n_in))
            n = len(offsets)
            slot = ("slot", k) if n > 1 else None
            if slot:
                sizes[slot] = n
                stored.append(slot)
            band_list.append((row, col, slot, offsets, ranges))
            stored.append(row)
        else:
            in_labels.append([col])
            stored += [row, col] if kind == "dense" else [row]
    if draw(st.integers(0, 2)) == 0:
        return make_structure(out_labels, in_labels, sizes, None, draw(st.sampled_from([1, -1])), band_list)[0], None
    val = [l for l in draw(st.permutations(stored)) if sizes[l] > 1 and draw(st.booleans())]
    structure, perm = make_structure(out_labels, in_labels, sizes, val, 1, band_list)
    value = np.random.default_rng(draw(st.integers(0, 2**31 - 1))).normal(size=tuple(sizes[l] for l in val))
    return structure, jnp.transpose(jnp.asarray(value), perm)


@st.composite
def stencil_shapes(draw, rank):
    return tuple(draw(st.sampled_from([1, 2, 3, 5, 6])) for _ in range(rank))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_banded_product_matches_dense_and_cost_is_what_runs(data):
    if data.draw(st.booleans()):
        rank = data.draw(st.integers(1, 2))
        w, v, u = (data.draw(stencil_shapes(rank)) for _ in range(3))
        a, va = data.draw(stencils(w, v))
        b, vb = data.draw(stencils(v, u))
    else:
        w, v, u = data.draw(shapes()), data.draw(shapes()), data.draw(shapes())
        a, va = data.draw(structures(w, v, bands=True))
        b, vb = data.draw(structures(v, u, bands=True))
    plan = product_plan(a, b)
    got = _dense(plan.result, _apply(plan, va, vb))
    want = np.tensordot(_dense(a, va), _dense(b, vb), axes=len(v))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    args = [x for x in (va, vb) if x is not None]
    fn = lambda *xs: plan.apply(va if va is None else xs[0], vb if vb is None else xs[-1], jnp.float64)
    assert count_mults(fn, *args) == plan.mults


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_banded_sum_and_sparse_form_match_dense(data):
    if data.draw(st.booleans()):
        rank = data.draw(st.integers(1, 2))
        w, v = data.draw(stencil_shapes(rank)), data.draw(stencil_shapes(rank))
        a, va = data.draw(stencils(w, v))
        b, vb = data.draw(stencils(w, v))
    else:
        w, v = data.draw(shapes()), data.draw(shapes())
        a, va = data.draw(structures(w, v, bands=True))
        b, vb = data.draw(structures(w, v, bands=True))
    _check_sum_matches_dense(a, va, b, vb)


def _check_sum_matches_dense(a, va, b, vb):
    """``sum_plan(a, b)`` against the dense sum, densely and as a BCOO."""
    plan = sum_plan(a, b)
    want = _dense(a, va) + _dense(b, vb)
    if plan.result is None:
        np.testing.assert_array_equal(want, 0)
        return
    got = _apply(plan, va, vb)
    np.testing.assert_allclose(_dense(plan.result, got), want, atol=1e-12)
    bcoo = jax.jit(lambda value: to_bcoo(plan.result, value, jnp.float64).todense())(got)
    np.testing.assert_allclose(np.asarray(bcoo), want, atol=1e-12)


@pytest.mark.parametrize("layered_from", [0, None])
@settings(max_examples=80, deadline=None)
@given(st.data())
def test_sums_of_bands_on_the_same_axes_match_dense(layered_from, data):
    """Both operands banded on every axis pair, diagonals drawn apart: the
    sum merges each operand's diagonals into the union's (entries both
    reach added, or the operands side by side when none is shared); by
    layers of slot runs at every size (``layered_from=0``) or only on
    values of ``LAYERED_MIN_SIZE`` entries."""
    from ccjax.structure import bands
    default = bands.LAYERED_MIN_SIZE
    bands.LAYERED_MIN_SIZE = default if layered_from is None else layered_from
    try:
        _check_sum_of_bands_on_the_same_axes(data)
    finally:
        bands.LAYERED_MIN_SIZE = default


def _check_sum_of_bands_on_the_same_axes(data):
    rank = data.draw(st.integers(1, 3))
    w, v = data.draw(stencil_shapes(rank)), data.draw(stencil_shapes(rank))
    a, va = data.draw(stencils(w, v, bands_only=True))
    b, vb = data.draw(stencils(w, v, bands_only=True))
    _check_sum_matches_dense(a, va, b, vb)


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_nan_partials_never_reach_structural_zeros_of_a_product(data):
    """The NaN rule in the algebra: with every value of one operand NaN, the
    product's entries that no path reaches (``pattern(a) @ pattern(b)`` is
    0) are exactly 0 -- whether the plan keeps bands, unshifts a band onto
    its columns, or multiplies dense forms (structural zeros then meet the
    NaN)."""
    kind = data.draw(st.sampled_from(["stencil", "scalar", "general"]))
    if kind == "general":
        w, v, u = data.draw(shapes()), data.draw(shapes()), data.draw(shapes())
        a, va = data.draw(structures(w, v, bands=True))
        b, vb = data.draw(structures(v, u, bands=True))
    else:
        rank = data.draw(st.integers(1, 2))
        v, u = data.draw(stencil_shapes(rank)), data.draw(stencil_shapes(rank))
        # "scalar": a reduction of a stencil to one number (band ends on no axis)
        a, va = data.draw(structures((), v) if kind == "scalar" else stencils(data.draw(stencil_shapes(rank)), v))
        b, vb = data.draw(stencils(v, u))
    plan = product_plan(a, b)
    reach = (pattern(a).astype(np.float32) @ pattern(b).astype(np.float32)) > 0
    poisoned = lambda x: None if x is None else jnp.full(jnp.shape(x), jnp.nan)
    for x, y in ((poisoned(va), vb), (va, poisoned(vb))):
        got = _dense(plan.result, _apply(plan, x, y)).reshape(reach.shape)
        assert (got[~reach] == 0).all(), (a.describe(), b.describe(), plan.result.describe())


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_bands_between_single_elements_compose_exactly(data):
    """A column taken by a slice of a concatenation of columns: bands from a
    single element through a wider axis back to a single element compose
    to one entry or none (then the product stores nothing), keeping the
    other axes' bands.  Dense equality, cost = executed, and NaN values
    never reach an entry no path reaches."""
    rank = data.draw(st.integers(1, 2))
    v = tuple(data.draw(st.sampled_from([2, 3, 5])) for _ in range(rank))
    narrow = data.draw(st.integers(0, rank - 1))  # this axis is a single element on both outer sides
    w = tuple(1 if k == narrow else data.draw(st.sampled_from([1, 3, 5])) for k in range(rank))
    u = tuple(1 if k == narrow else data.draw(st.sampled_from([1, 3, 5])) for k in range(rank))
    a, va = data.draw(stencils(w, v))
    b, vb = data.draw(stencils(v, u))
    plan = product_plan(a, b)
    want = np.tensordot(_eager_dense(a, va), _eager_dense(b, vb), axes=len(v))
    np.testing.assert_allclose(_eager_dense(plan.result, plan.apply(va, vb, jnp.float64)), want, rtol=1e-12, atol=1e-12)
    args = [x for x in (va, vb) if x is not None]
    fn = lambda *xs: plan.apply(va if va is None else xs[0], vb if vb is None else xs[-1], jnp.float64)
    assert count_mults(fn, *args) == plan.mults
    reach = (pattern(a).astype(np.float32) @ pattern(b).astype(np.float32)) > 0
    if not reach.any() and max(w) > 1 and max(u) > 1:  # an axis each side to hold an empty band
        assert entry_count(plan.result) == 0, (a.describe(), b.describe(), plan.result.describe())
    poisoned = lambda x: None if x is None else jnp.full(jnp.shape(x), jnp.nan)
    for x, y in ((poisoned(va), vb), (va, poisoned(vb))):
        got = _eager_dense(plan.result, plan.apply(x, y, jnp.float64)).reshape(reach.shape)
        assert (got[~reach] == 0).all(), (a.describe(), b.describe(), plan.result.describe())


def _summed(data, draw_one, most: int = 2):
    """A lazy sum (``sum_plan``) of one to ``most + 1`` drawn structures:
    ``(structure, value, dense value)``."""
    s, v = draw_one()
    want = _dense(s, v)
    for _ in range(data.draw(st.integers(0, most))):
        t, tv = draw_one()
        plan = sum_plan(s, t)
        if plan.result is not None:
            s, v, want = plan.result, plan.apply(v, tv, jnp.float64), want + _dense(t, tv)
    return s, v, want


def _pattern(s):
    return np.logical_or.reduce([pattern(p) for p in parts_of(s)])


@settings(max_examples=70, deadline=None)
@given(st.data())
def test_sums_kept_as_terms_multiply_add_and_store_like_dense(data):
    """Lazy sums (:class:`~ccjax.structure.Terms`): sums of stencils and
    banded structures, multiplied from either side and added again, match
    the dense arithmetic; the plans multiply exactly ``mults``; the sparse
    form stores each structural nonzero once; a NaN operand never reaches
    an entry no path reaches."""
    rank = data.draw(st.integers(1, 2))
    w, v, u = (data.draw(stencil_shapes(rank)) for _ in range(3))
    a, va, da = _summed(data, lambda: data.draw(stencils(w, v)))
    b, vb, db = _summed(data, lambda: data.draw(st.one_of(stencils(v, u), structures(v, u, bands=True))))
    np.testing.assert_allclose(_eager_dense(a, va), da, atol=1e-12)
    bcoo = to_bcoo(a, va, jnp.float64)
    np.testing.assert_allclose(np.asarray(bcoo.todense()), da, atol=1e-12)
    assert bcoo.nse == entry_count(a) <= sum(entry_count(p) for p in parts_of(a))
    plan = product_plan(a, b)
    want = np.tensordot(da, db, axes=len(v))
    np.testing.assert_allclose(_eager_dense(plan.result, plan.apply(va, vb, jnp.float64)), want, rtol=1e-12, atol=1e-12)
    (leaves_a, tree_a), (leaves_b, tree_b) = jax.tree_util.tree_flatten(va), jax.tree_util.tree_flatten(vb)
    n_a = len(leaves_a)
    fn = lambda *xs: plan.apply(jax.tree_util.tree_unflatten(tree_a, xs[:n_a]),
                                jax.tree_util.tree_unflatten(tree_b, xs[n_a:]), jnp.float64)
    assert count_mults(fn, *leaves_a, *leaves_b) == plan.mults
    c, vc, dc = _summed(data, lambda: data.draw(stencils(w, v)), most=1)
    total = sum_plan(a, c)
    if total.result is not None:
        np.testing.assert_allclose(_eager_dense(total.result, total.apply(va, vc, jnp.float64)), da + dc, atol=1e-12)
    reach = (_pattern(a).astype(np.float32) @ _pattern(b).astype(np.float32)) > 0
    # The NaN check is of the terms' own choices: a product of two plain
    # structures can already store entries it does not reach (a band whose
    # symbol is contracted comes out dense), and NaN reaches those there too.
    reach_of = lambda p, q: (_pattern(p).astype(np.float32) @ _pattern(q).astype(np.float32)) > 0
    if any(entry_count(product_plan(p, q).result) > np.count_nonzero(reach_of(p, q))
           for p in parts_of(a) for q in parts_of(b) if product_plan(p, q).result is not None):
        return
    poisoned = lambda x: jax.tree_util.tree_map(lambda y: jnp.full(jnp.shape(y), jnp.nan), x)
    for x, y in ((poisoned(va), vb), (va, poisoned(vb))):
        got = _eager_dense(plan.result, plan.apply(x, y, jnp.float64)).reshape(reach.shape)
        assert (got[~reach] == 0).all(), (a.describe(), b.describe(), plan.result.describe())


def test_terms_are_not_added_up_into_stored_zeros_a_nan_would_reach():
    """``(t1 + t2) @ b`` with ``t1 = [[1, 1], [0, 0]]``, ``t2 = [[1, 0], [0, 0]]``
    (row 1 structurally zero in both) and ``b`` a replicated scalar.  Added
    up first, the terms are stored as a block with zeros in row 1, so a NaN
    ``b`` reached row 1 of the product (``0 * nan``), where no path leads;
    the products of the terms keep it at exactly 0, as ``jax.jacrev`` does.
    (Found by ``test_sums_kept_as_terms_multiply_add_and_store_like_dense``.)"""
    from ccjax.structure import Band, Terms

    first_row = lambda out, inn: Band(out=out, inn=inn, slot=None, offsets=(0,), ranges=((0, 1),))
    t1 = Structure(out_axes=((0,), ()), in_axes=((1,), (2,)), sizes=(2, 1, 2), val=None,
                   bands=(first_row(0, 1),))
    t2 = Structure(out_axes=((0,), (1,)), in_axes=((2,), (3,)), sizes=(2, 1, 1, 2), val=None,
                   bands=(first_row(0, 2), first_row(1, 3)))
    b = Structure(out_axes=((), (0,)), in_axes=((), ()), sizes=(2,), val=())
    terms = Terms(parts=(t1, t2))
    np.testing.assert_array_equal(_dense(terms, (None, None)).reshape(2, 2), [[2, 1], [0, 0]])
    plan = product_plan(terms, b)
    got = _dense(plan.result, plan.apply((None, None), jnp.asarray(np.nan), jnp.float64)).reshape(2)
    assert np.isnan(got[0]) and got[1] == 0


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_entry_comparison_by_bounds_is_the_exact_comparison(data):
    """``terms._more_entries`` (which forms a union of terms only when the
    largest term and the sum of the terms do not decide) answers as the
    comparison of exact entry counts, for lazy sums and plain structures on
    either side."""
    from ccjax.structure import core
    from ccjax.structure.terms import _more_entries

    rank = data.draw(st.integers(1, 2))
    w, v = (data.draw(stencil_shapes(rank)) for _ in range(2))
    draw = lambda: data.draw(st.one_of(stencils(w, v), structures(w, v, bands=True)))
    a, _, _ = _summed(data, draw, most=3)
    b, _, _ = _summed(data, draw, most=3)
    for x, y in ((a, b), (b, a), (a, a)):
        assert _more_entries(x, y, entry_count) == (entry_count(x) > entry_count(y))
    for part in parts_of(a) + parts_of(b):  # the lower bound's premise
        if core.entries_are_distinct(part):
            assert len(np.unique(core.entry_indices(part), axis=0)) == core.entry_count(part)


def test_entry_comparison_forms_the_union_only_between_its_bounds(monkeypatch):
    """With terms of 3 and 5 entries at distinct positions whose union is 6:
    ``count(a) > 6`` is decided by the bounds outside (5, 8], and only
    inside is the union counted."""
    from ccjax.structure import core
    from ccjax.structure.terms import Terms, _more_entries

    monkeypatch.setattr(core, "entries_are_distinct", lambda st: True)

    small, large = "small term", "large term"
    union = Terms((small, large))
    counted = []

    def count(x):
        counted.append(x)
        return {small: 3, large: 5, union: 6}[x] if not isinstance(x, int) else x

    for n in range(2, 10):
        counted.clear()
        assert _more_entries(n, union, count) == (n > 6), n
        assert (union in counted) == (5 < n <= 8), n


def test_a_five_point_stencil_is_two_terms_of_three_diagonals():
    """Bands along two axes: kept as two terms (5 diagonals in all, not the
    9 of one structure holding both); a diagonal joins the term that has
    its offset; a product with a diagonal multiplies each term's values."""
    n = 6
    band = lambda axis: make_structure([["r0"], ["r1"]], [["c0"] if axis == 0 else ["r0"], ["c1"] if axis else ["r1"]],
                                       {"r0": n, "r1": n, "c0": n, "c1": n, "k": 3},
                                       ["k", "r0", "r1"], 1,
                                       [("r0" if axis == 0 else "r1", "c0" if axis == 0 else "c1", "k", (-1, 0, 1),
                                         ((1, n), (0, n), (0, n - 1)))])[0]
    stencil = sum_plan(band(0), band(1))
    assert is_terms(stencil.result) and entry_count(stencil.result) == 5 * n * n - 4 * n
    eager = sum_plan(band(0), band(1), lazy=False)
    assert not is_terms(eager.result) and entry_count(eager.result) == (3 * n - 2) ** 2
    diag = make_structure([["a"], ["b"]], [["a"], ["b"]], {"a": n, "b": n}, ["a", "b"])[0]
    with_diag = sum_plan(stencil.result, diag)
    assert len(with_diag.result.parts) == 2 and entry_count(with_diag.result) == 5 * n * n - 4 * n
    scaled = product_plan(diag, stencil.result)
    assert is_terms(scaled.result) and scaled.mults == 2 * 3 * n * n


def test_a_slice_summed_to_a_scalar_keeps_its_band():
    """``sum(x[:, 1:2])``: the band end of size 1 has no axis in the scalar
    output, so it stays on none, and the Jacobian row keeps one entry per row
    of ``x`` instead of a dense ``(3, 2)`` block."""
    total, _ = structure_from_labels((), (3, 1), [], ["r", "one"])
    slice_, _ = structure_from_labels((3, 1), (3, 2), ["r", "e"], ["r", "c"], bands=[("e", "c", 1)])
    plan = product_plan(total, slice_)
    assert plan.result.bands and plan.mults == 0
    np.testing.assert_array_equal(pattern(plan.result), [[False, True] * 3])
    np.testing.assert_array_equal(_dense(plan.result, plan.apply(None, None, jnp.float64)).reshape(6), [0, 1] * 3)


def test_unit_times_unit_costs_nothing():
    eye = unit((5, 3))
    plan = product_plan(eye, eye)
    assert plan.mults == 0 and plan.result.val is None and plan.result.sign == 1
    neg = unit((5, 3), sign=-1)
    assert product_plan(neg, eye).result.sign == -1


def test_diagonal_times_diagonal_is_elementwise():
    d, prep = structure_from_labels((4,), (4,), ["a"], ["a"], ["a"], (4,))
    plan = product_plan(d, d)
    assert plan.mults == 4 and plan.result == d


def test_dense_chain_cost_is_matrix_product():
    a, _ = dense((2,), (3,))
    b, _ = dense((3,), (5,))
    assert product_plan(a, b).mults == 2 * 3 * 5


def test_reduce_of_broadcast_counts_multiplicity():
    # sum over a replicated axis: factor n without stored values
    bcast, _ = structure_from_labels((4,), (), [None], [])
    red, _ = structure_from_labels((), (4,), [], [None])
    plan = product_plan(red, bcast)
    assert plan.result.val == ()
    assert float(plan.apply(None, None, jnp.float64)) == 4.0


def test_square_shapes_are_not_paired_by_size():
    # transpose of a square matrix: axes of equal size must not be confused
    t, _ = structure_from_labels((3, 3), (3, 3), ["a", "b"], ["b", "a"])
    x = np.arange(9.0).reshape(3, 3)
    dense_t = _dense(t, None)
    np.testing.assert_array_equal(np.einsum("ijkl,kl->ij", dense_t, x), x.T)


def test_x_plus_x_is_two_identity_and_x_minus_x_vanishes():
    eye = unit((3,))
    two = sum_plan(eye, eye)
    assert two.result.val == () and float(two.apply(None, None, jnp.float64)) == 2.0
    assert sum_plan(eye, unit((3,), -1)).result is None


def test_densify_round_trip():
    s, _ = make_structure([(0, 1)], [(0,), (1,)], {0: 2, 1: 3}, None)
    d = densify_plan(s)
    np.testing.assert_array_equal(
        np.asarray(to_dense(d.result, d.apply(None, jnp.float64), jnp.float64)).reshape(6, 6), np.eye(6))


def test_structure_is_hashable_and_canonical():
    a, _ = structure_from_labels((3,), (3,), ["x"], ["x"], ["x"], (3,))
    b, _ = structure_from_labels((3,), (3,), ["y"], ["y"], ["y"], (3,))
    assert a == b and hash(a) == hash(b)
    assert isinstance(a, Structure)


def test_diagonal_extraction_costs_nothing():
    # found by the property test: jnp.diagonal multiplies by a mask
    outer, _ = dense((), (2, 2))
    inner, _ = structure_from_labels((2, 2), (), ["a", "a"], [])
    plan = product_plan(outer, inner)
    value = jnp.arange(4.0).reshape(2, 2)
    assert plan.mults == count_mults(lambda v: plan.apply(v, None, jnp.float64), value) == 0
    assert float(plan.apply(value, None, jnp.float64)) == 0.0 + 3.0


@pytest.mark.parametrize("shape", [(3, 4, 5), (7,), (2, 1, 3, 4), (64, 64, 64, 6)])
@pytest.mark.parametrize("n", [0, 1, 500])
def test_unique_rows_by_flat_positions_is_numpys_unique(shape, n):
    from ccjax.structure.terms import _unique_rows

    rng = np.random.default_rng(n + len(shape))
    rows = np.stack([rng.integers(0, k, n) for k in shape], 1) if n else np.zeros((0, len(shape)), np.int64)
    rows = np.concatenate([rows, rows[: n // 3]])  # repeats
    want, inverse = np.unique(rows, axis=0, return_inverse=True)
    got, got_inverse = _unique_rows(rows, shape, return_inverse=True)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.array_equal(got_inverse.reshape(-1), inverse.reshape(-1))
    assert np.array_equal(_unique_rows(rows, shape), want)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_structures_keep_a_hash_equal_structures_share(data):
    """``hash_once``: the kept hash is the dataclass's over the fields, so
    equal structures built apart hash alike, and a pickle leaves it out."""
    import dataclasses
    import pickle

    out_shape, in_shape = data.draw(shapes()), data.draw(shapes())
    a, _ = data.draw(structures(out_shape, in_shape, bands=True))
    b = dataclasses.replace(a)  # equal, built apart
    assert a == b and a is not b
    assert hash(a) == hash(b) == hash(tuple(getattr(a, f.name) for f in dataclasses.fields(a)))
    assert "_hash" in a.__dict__
    c = pickle.loads(pickle.dumps(a))
    assert "_hash" not in c.__dict__ and c == a and hash(c) == hash(a)
