"""Partials that move data by indices known only when the program runs.

A gather reads, for every output element, one operand element (or none:
a fill); a scatter-add adds every update element to one output element
(or drops it); a sort reads every output element from the permuted input.
Their partials are selections: with flat (row-major) indices ``m`` of the
out shape and ``n`` of the in shape, and ``k < width``,

* ``pick``: ``J[m, n] = sum_k v[m, k] [n == idx[m, k]]`` (arrays ``(M, width)``),
* ``put``:  ``J[m, n] = sum_k v[n, k] [m == idx[n, k]]`` (arrays ``(N, width)``),

where ``idx`` is an int32 array computed at run time and always in range
(an element read or written nowhere has ``v = 0``), and ``v`` is stored
only when :attr:`Selection.val` is set (else every entry is ``sign``).
Where a put follows a pick (a scatter-add of gathered rows: a graph
network's message passing), the two are kept as their ``K`` entries,

* ``pairs``: ``J[m, n] = sum_k v[k] [m == rows[k]] [n == cols[k]]``
  (``idx`` is ``(K, 2)``, rows and columns side by side; ``v`` ``(K, 1)``),

the COO format: a put of width 1 after a pick of width 1 through ``K``
intermediate entries, and every product with it is planned as the product
with those two factors (:func:`_pairs_factors`).
A gather is a pick of width 1; a sum of ``width`` gathers of one array
(``u[nbr[:, 0]] + u[nbr[:, 1]] - 2 u``, a mesh or graph Laplacian) is a pick
of that width, the ELLPACK sparse format.  The index array is the *value*
of such a partial: ``(idx,)`` or ``(idx, v)``.  Each column ``k`` has a
key (:attr:`Selection.keys`): columns with equal keys have equal indices
when they run (a key names the index operand and the parameters that turn
it into flat indices), so a sum adds the values of columns with one key
(``x[i] ** 2 + sin(x[i])``) and appends the others.

Products with elementwise partials (diagonal on the flat index) and with
selections of the same kind stay selections and cost one multiplication per
stored entry at most; sums of selections of one kind concatenate their
entries; an elementwise partial joins a sum as a selection at ``iota``.
Any other product or sum, and any selection that would store more than
half the dense block, is carried out densely, as a gather or scatter-add of
rows or columns, and counts what it multiplies.  Every plan has ``result``,
``mults``, ``additions`` and ``apply``, as the plans of
:mod:`ccjax.structure.core` do, so the cost model and the executor agree
here too.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Hashable, Optional

import jax.numpy as jnp
import numpy as np
from jax import lax

from ccjax._jaxpr import is_known
from ccjax.structure import bands, core

KINDS = ("pick", "put", "pairs")


@core.hash_once
@dataclasses.dataclass(frozen=True)
class Selection:
    """Structure of a selection partial (see module docstring).

    ``kind`` is ``"pick"`` (``width`` in elements per out element),
    ``"put"`` (``width`` out elements per in element) or ``"pairs"``
    (``count`` entries, ``width`` 1); ``keys`` (distinct,
    one per column, ``width = len(keys)``) identify the run-time index
    columns; ``val`` is None for entries ``sign`` and ``("v",)`` for stored
    values (then ``sign`` is 1).  ``bands`` is always empty (the structure
    has no symbols)."""

    out_shape: tuple[int, ...]
    in_shape: tuple[int, ...]
    kind: str
    keys: tuple[Hashable, ...]
    val: Optional[tuple[str, ...]] = None
    sign: int = 1
    count: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown selection kind {self.kind!r}")
        if (self.kind == "pairs") != (self.count > 0) or (self.kind == "pairs" and len(self.keys) != 1):
            raise ValueError("a pairs selection, and only one, has a positive count and one key")
        if self.val is not None and self.sign != 1:
            raise ValueError("a selection with stored values has sign 1 (the values carry it)")
        if not self.keys or len(set(self.keys)) != len(self.keys):
            raise ValueError("a selection has one distinct key per column, and at least one column")

    bands = ()

    @property
    def width(self) -> int:
        """Entries per row of the index array."""
        return len(self.keys)

    @property
    def lead(self) -> int:
        """Rows of the index (and value) array: M for a pick, N for a put, K for pairs."""
        if self.kind == "pairs":
            return self.count
        return math.prod(self.out_shape if self.kind == "pick" else self.in_shape)

    @property
    def nnz_values(self) -> int:
        """Stored entries (indices, and values when stored)."""
        return self.lead * self.width

    @property
    def val_shape(self) -> Optional[tuple[int, ...]]:
        return None if self.val is None else (self.lead, self.width)

    def describe(self) -> str:
        v = ("-" if self.sign < 0 else "+") + "1" if self.val is None else "v"
        return f"{self.kind}{self.lead if self.kind == 'pairs' else self.width}[{v}]({self.out_shape}|{self.in_shape})"


def is_selection(st) -> bool:
    return isinstance(st, Selection)


@dataclasses.dataclass(frozen=True)
class SelectionPlan:
    """A product or sum involving a selection: ``result`` (None: structurally
    zero), the multiplications and additions ``apply`` performs, and
    ``run(a, b, dtype)`` computing the result's value."""

    result: object
    mults: int
    additions: int
    run: Callable = dataclasses.field(compare=False)

    def apply(self, a, b, dtype):
        return self.run(a, b, dtype)


# ---------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------


def _flat_symbols(st: core.Structure) -> Optional[list[int]]:
    """The symbols of ``st``'s flat index when ``st`` is elementwise on it
    (out and in axes read the same distinct symbols in the same order, no
    bands): ``J[m, n] = d[m] [m == n]``; else None."""
    if not isinstance(st, core.Structure) or st.bands:
        return None
    out = [s for ax in st.out_axes for s in ax]
    if out != [s for ax in st.in_axes for s in ax] or len(set(out)) != len(out):
        return None
    return out


def _diagonal(st: core.Structure, value, dtype):
    """The flat diagonal of an elementwise structure (None when it stores no
    values: every entry is ``st.sign``)."""
    if st.val is None:
        return None
    syms = _flat_symbols(st)
    v = core.reshape(jnp.asarray(value, dtype), tuple(st.sizes[s] for s in st.val))
    v = core.transpose(v, sorted(range(len(st.val)), key=lambda k: syms.index(st.val[k])))
    v = core.reshape(v, tuple(st.sizes[s] if s in st.val else 1 for s in syms))
    return jnp.broadcast_to(v, tuple(st.sizes[s] for s in syms)).reshape(-1)


def _parts(st: Selection, value, dtype):
    """``(idx, v)`` of a selection's value (both ``(lead, width)``), ``v``
    None when not stored."""
    idx = value[0]
    return idx, (None if st.val is None else jnp.asarray(value[1], dtype))


def _take(x, idx):
    """Rows of ``x`` at indices known to be in range (no wrapping or
    filling): ``x[idx]``, as one ``gather`` (NumPy-style indexing costs
    about 2 ms of tracing per call, which a plan of many selection
    products pays at every first call).  Where both are known while
    tracing (constant indices composed), NumPy takes them: the program
    gets one constant instead of a gather and its index arithmetic."""
    if is_known(x) and is_known(idx):
        return np.take(np.asarray(x), np.asarray(idx), axis=0, mode="clip")
    x, idx = jnp.asarray(x), jnp.asarray(idx)
    rest = tuple(x.shape[1:])
    numbers = lax.GatherDimensionNumbers(offset_dims=tuple(range(idx.ndim, idx.ndim + len(rest))),
                                         collapsed_slice_dims=(0,), start_index_map=(0,))
    return lax.gather(x, idx[..., None], numbers, (1,) + rest, mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _columns(arrays: list, axis: int = 1):
    """Index columns side by side (``axis=0``: one above the other), in NumPy where all are known."""
    return np.concatenate(arrays, axis=axis) if all(map(is_known, arrays)) else jnp.concatenate(arrays, axis=axis)


def _rows_and_columns(kind: str, idx):
    """The flat row and column of every entry of a pick or put whose index
    array is ``idx`` (``(lead, width)``), row-major over it (NumPy where
    ``idx`` is known)."""
    xp = np if is_known(idx) else jnp
    lead = xp.broadcast_to(xp.arange(idx.shape[0], dtype=np.int32)[:, None], idx.shape).reshape(-1)
    flat = idx.reshape(-1)
    return (lead, flat) if kind == "pick" else (flat, lead)


def _times(a, b, sign: int = 1):
    """``sign * a * b`` for optional arrays (None: all ones); the sign is a
    negation, never counted as a multiplication."""
    return _stored(sign, b if a is None else a if b is None else a * b)


def _stored(sign: int, v):
    """``sign * v`` (None stays None: the sign then lives in the structure)."""
    return v if v is None or sign > 0 else -v


def _entries(st: Selection, v, dtype):
    """The stored values, or ``sign`` everywhere when none are stored."""
    return jnp.full((st.lead, st.width), st.sign, dtype) if v is None else v


def _combined(*sides) -> dict:
    """``val`` and ``sign`` of a product or sum's selection: values stored
    when either side stores some (then the sign is folded into them)."""
    sign = math.prod(s.sign for s in sides)
    return {"val": ("v",), "sign": 1} if any(s.val is not None for s in sides) else {"val": None, "sign": sign}


def _selection_value(idx, v):
    """A selection's value; ``v`` broadcast to the index array's ``(lead, width)``."""
    return (idx,) if v is None else (idx, jnp.broadcast_to(v, idx.shape))


def _fits(lead: int, width: int, out_shape, in_shape) -> bool:
    """Whether a selection of ``width`` entries per row stores at most half
    the dense block (else the dense form is kept)."""
    return 2 * lead * width <= math.prod(out_shape) * math.prod(in_shape)


def _matrix(st, value, dtype):
    """Any partial as a dense ``(M, N)`` array."""
    m, n = math.prod(st.out_shape), math.prod(st.in_shape)
    if not is_selection(st):
        return core.reshape(bands.densify(st).apply(value, dtype), (m, n))
    idx, v = _parts(st, value, dtype)
    if st.kind == "pairs":  # entries may share a position: one scatter-add
        return jnp.zeros((m, n), dtype).at[idx[:, 0], idx[:, 1]].add(_entries(st, v, dtype)[:, 0], mode="clip")
    if st.width > 1:  # one scatter-add of the entries (a row's may share a position), not a select per column
        lead = jnp.broadcast_to(lax.iota(np.int32, st.lead)[:, None], idx.shape)
        rows, cols = (lead, idx) if st.kind == "pick" else (idx, lead)
        return jnp.zeros((m, n), dtype).at[rows, cols].add(_entries(st, v, dtype), mode="clip")
    # One entry per row: one select over the block; a scatter into zeros compiled 1.8x slower. The
    # stored values pass a barrier first: XLA would otherwise fuse their computation (a gather, a
    # cosine) into the select and repeat it at each of the m * n positions (7x slower).
    axis = 1 if st.kind == "pick" else 0
    at = jnp.expand_dims(idx[:, 0], axis)
    entry = jnp.asarray(st.sign, dtype) if v is None else jnp.expand_dims(lax.optimization_barrier(v[:, 0]), axis)
    iota = lax.broadcasted_iota(np.int32, (m, n), axis)
    return jnp.where(iota == at, entry, jnp.zeros((), dtype))


def to_dense(st: Selection, value, dtype):
    """The selection as a dense array of shape ``out_shape + in_shape``."""
    return core.reshape(_matrix(st, value, dtype), st.out_shape + st.in_shape)


def to_bcoo(st: Selection, value, dtype):
    """The selection as a BCOO holding one entry per stored index."""
    from jax.experimental import sparse

    idx, v = _parts(st, value, dtype)
    rows, cols = (idx[:, 0], idx[:, 1]) if st.kind == "pairs" else _rows_and_columns(st.kind, idx)
    columns = [c for at, shape in ((rows, st.out_shape), (cols, st.in_shape))
               for c in (jnp.unravel_index(at, shape) if shape else ())]
    nse = st.lead * st.width
    indices = jnp.stack(columns, axis=1).astype(np.int32) if columns else jnp.zeros((nse, 0), np.int32)
    return sparse.BCOO((_entries(st, v, dtype).reshape(-1), indices), shape=st.out_shape + st.in_shape)


def _dense_result(out_shape, in_shape):
    """A dense structure and how to lay a ``(M, N)`` array out as its value."""
    st, prepare = core.dense(tuple(out_shape), tuple(in_shape))
    return st, lambda matrix: prepare(core.reshape(matrix, tuple(out_shape) + tuple(in_shape)))


# ---------------------------------------------------------------------------
# Products.
# ---------------------------------------------------------------------------


def product(outer, inner, plan_product: Callable) -> SelectionPlan:
    """Plan ``outer ∘ inner`` where at least one side is a :class:`Selection`
    (``plan_product``: the planner of products of any two structures, for
    the factors of pairs)."""
    if is_selection(outer) and outer.kind == "pairs":
        return _through_pairs(outer, inner, True, plan_product)
    if is_selection(inner) and inner.kind == "pairs":
        return _through_pairs(inner, outer, False, plan_product)
    if is_selection(outer) and is_selection(inner):
        return _selection_times_selection(outer, inner)
    if is_selection(outer):
        if _flat_symbols(inner) is not None:
            return _scaled(outer, inner, diag_first=False)
        return _through_static(outer, inner, sel_is_outer=True) or _selection_times_dense(outer, inner)
    if _flat_symbols(outer) is not None:
        return _scaled(inner, outer, diag_first=True)
    return _through_static(inner, outer, sel_is_outer=False) or _dense_times_selection(outer, inner)


#: Most entries per row a structure may have to be read as a static selection
#: (an embedding lookup's rows times a weight matrix of 16 rows: width 16).
MAX_STATIC_WIDTH = 32
#: Beyond this width, the structure must also store at most 1/:data:`WIDE_DENSITY`
#: of a dense block's entries: each entry of a selection is gathered or scattered
#: (:data:`ccjax.jax_modes.SELECTION_MULT_WEIGHT` 8 dense multiplications' time).
WIDE_STATIC_WIDTH = 8
WIDE_DENSITY = 8


@dataclasses.dataclass(frozen=True)
class StaticSelection:
    """A structure read as a :class:`Selection` whose indices are known when
    planning: ``selection`` (its keys name the structure), ``idx`` (the
    constant ``(lead, width)`` index array) and either ``entries`` (where
    each stored value of the structure goes: ``(lead, width)`` flat indices
    into it, ``-1`` for padding) or ``padding`` (for a structure without
    stored values: a constant 0/1 mask, None when every row is full; see
    :func:`_through_static`); ``sign``: the structure's, folded into the
    stored values."""

    selection: Selection
    idx: np.ndarray
    entries: Optional[np.ndarray]
    padding: Optional[np.ndarray]
    sign: int = 1

    def value(self, value, dtype):
        """The selection's value from the structure's value (a padded
        structure without stored values: its all-ones reading)."""
        if self.entries is None:
            return (self.idx,)
        flat = jnp.concatenate([jnp.reshape(jnp.asarray(value, dtype), (-1,)), jnp.zeros((1,), dtype)])
        at = np.where(self.entries < 0, flat.shape[0] - 1, self.entries).astype(np.int32)
        return self.idx, _stored(self.sign, _take(flat, at))

    def parts(self, value, dtype):
        """``(idx, v)`` of :attr:`selection` as it declares itself (``v``
        None when it stores no values): unlike :meth:`value`, a padded
        structure without stored values reads its sign, 0 in the padding."""
        if self.entries is not None:
            return self.value(value, dtype)
        if self.padding is not None:
            return self.idx, jnp.asarray(self.padding * self.sign, dtype)
        return self.idx, None


@functools.lru_cache(maxsize=4096)
def static_selection(st: core.Structure, kind: str) -> Optional[StaticSelection]:
    """``st`` (a structure with or without bands) as a selection of ``kind``
    with constant indices: a pick lists, for every out element, the in
    elements it reads; a put, for every in element, the out elements it
    reaches.  None for a block without structural zeros (gathering its rows
    is as good), or when some row has more than :data:`MAX_STATIC_WIDTH`
    entries (or none has any), or more than :data:`WIDE_STATIC_WIDTH` in a
    block denser than 1/:data:`WIDE_DENSITY`.  Reading a structure this way
    moves no value and multiplies nothing."""
    if not isinstance(st, core.Structure) or core.is_full(st):
        return None
    lead = math.prod(st.out_shape if kind == "pick" else st.in_shape)
    count = core.entry_count(st)
    if count == 0 or count > MAX_STATIC_WIDTH * lead:
        return None
    rows, cols = core.entry_positions(st)
    at, other = (rows, cols) if kind == "pick" else (cols, rows)
    order = np.argsort(at, kind="stable")
    at, other = at[order], other[order]
    per_row = np.bincount(at, minlength=lead)
    width = int(per_row.max())
    if width > MAX_STATIC_WIDTH or (width > WIDE_STATIC_WIDTH
                                    and count * WIDE_DENSITY > math.prod(st.out_shape) * math.prod(st.in_shape)):
        return None
    starts = np.concatenate([[0], np.cumsum(per_row)[:-1]])
    column = np.arange(len(at)) - starts[at]
    idx = np.zeros((lead, width), np.int32)
    idx[at, column] = other
    full = bool((per_row == width).all())
    keys = tuple(("static", st, kind, k) for k in range(width))
    if st.val is not None:
        entries = np.full((lead, width), -1, np.int64)
        entries[at, column] = core.entry_values(st)[order]
        return StaticSelection(Selection(st.out_shape, st.in_shape, kind, keys, ("v",)), idx, entries, None, st.sign)
    if full:
        return StaticSelection(Selection(st.out_shape, st.in_shape, kind, keys, None, st.sign), idx, None, None, 1)
    padding = np.zeros((lead, width), np.int8)
    padding[at, column] = 1
    return StaticSelection(Selection(st.out_shape, st.in_shape, kind, keys, ("v",)), idx, None, padding, st.sign)


def _through_static(sel: Selection, st, sel_is_outer: bool) -> Optional[SelectionPlan]:
    """``sel ∘ st`` or ``st ∘ sel`` with ``st`` read as a selection of
    ``sel``'s kind (:func:`static_selection`), when the two then compose
    into one selection; else None (the dense product is planned instead).

    Where ``st`` stores no values but its rows are padded, the padding is
    not multiplied in: the product is planned with ``st`` as all ones, and
    the padding, laid out the same way by the same composition, selects
    which of its entries to keep (a ``select``, no multiplication)."""
    static = static_selection(st, sel.kind)
    if static is None:
        return None
    order = (lambda s, t: (s, t)) if sel_is_outer else (lambda s, t: (t, s))
    if static.padding is None:
        plan = _selection_times_selection(*order(sel, static.selection))
        if not is_selection(plan.result):
            return None

        def run(a, b, dtype):
            sel_value, st_value = order(a, b)
            return plan.run(*order(sel_value, static.value(st_value, dtype)), dtype)

        return SelectionPlan(plan.result, plan.mults, plan.additions, run)
    ones = dataclasses.replace(static.selection, val=None, sign=static.sign)
    plan = _selection_times_selection(*order(sel, ones))
    if not is_selection(plan.result):
        return None
    layout = _selection_times_selection(*order(dataclasses.replace(sel, val=None, sign=1), static.selection))
    result = dataclasses.replace(plan.result, val=("v",), sign=1)

    def run_padded(a, b, dtype):
        sel_value, _ = order(a, b)
        (idx,) = static.value(None, dtype)
        values = plan.run(*order(sel_value, (idx,)), dtype)
        kept = layout.run(*order(sel_value[:1], (idx, jnp.asarray(static.padding, dtype))), dtype)[1]
        v = values[1] if len(values) > 1 else jnp.full(values[0].shape, plan.result.sign, dtype)
        return values[0], jnp.where(kept != 0, v, jnp.zeros((), dtype))

    return SelectionPlan(result, plan.mults + layout.mults, plan.additions + layout.additions, run_padded)


def _both_valued(a, b) -> bool:
    return a.val is not None and b.val is not None


def _scaled(sel: Selection, diag: core.Structure, diag_first: bool) -> SelectionPlan:
    """``diag(d) ∘ sel`` (``diag_first``) or ``sel ∘ diag(d)``: ``d`` scales
    the rows on the selection's lead side and is read at the indices on the
    other side."""
    side = "out_shape" if diag_first else "in_shape"
    result = dataclasses.replace(sel, **{side: getattr(diag, side)}, **_combined(sel, diag))
    mults = sel.nnz_values if _both_valued(sel, diag) else 0
    sign = sel.sign * diag.sign
    read_at_indices = sel.kind == ("put" if diag_first else "pick")

    def run(a, b, dtype):
        (sv, dv) = (b, a) if diag_first else (a, b)
        idx, v = _parts(sel, sv, dtype)
        d = _diagonal(diag, dv, dtype)
        if d is not None:
            d = _take(d, idx) if read_at_indices else d[:, None]
        return _selection_value(idx, _times(v, d, sign))

    return SelectionPlan(result, mults, 0, run)


def _selection_times_selection(outer: Selection, inner: Selection) -> SelectionPlan:
    """Two picks or two puts compose into one (indices composed, widths
    multiplied); a pick after a put, a put after a pick, or a composition
    too wide is carried out densely."""
    out_shape, in_shape = outer.out_shape, inner.in_shape
    width = outer.width * inner.width
    lead = math.prod(out_shape if outer.kind == "pick" else in_shape)
    if outer.kind == inner.kind and _fits(lead, width, out_shape, in_shape):
        # column (j, k): outer column j then inner column k (pick), or inner k then outer j (put)
        keys = (tuple(("compose", a, b) for a in outer.keys for b in inner.keys) if outer.kind == "pick"
                else tuple(("compose", a, b) for b in inner.keys for a in outer.keys))
        result = Selection(out_shape, in_shape, outer.kind, keys, **_combined(outer, inner))
        sign = outer.sign * inner.sign
        mults = result.nnz_values if _both_valued(outer, inner) else 0

        def run(a, b, dtype):
            ia, va = _parts(outer, a, dtype)
            ib, vb = _parts(inner, b, dtype)
            if outer.kind == "pick":  # m reads ia[m, j], which reads ib[ia[m, j], k]
                idx = _take(ib, ia)
                v = _times(None if va is None else va[:, :, None],
                           None if vb is None else _take(vb, ia), sign)
            else:  # n lands on ib[n, k], which lands on ia[ib[n, k], j]
                idx = _take(ia, ib)
                v = _times(None if va is None else _take(va, ib),
                           None if vb is None else vb[:, :, None], sign)
            v = None if v is None else jnp.broadcast_to(v, idx.shape).reshape(lead, width)
            return _selection_value(idx.reshape(lead, width), v)

        return SelectionPlan(result, mults, 0, run)
    if outer.kind == "put" and inner.kind == "pick":
        return _put_after_pick(outer, inner)
    return _dense_times_selection(outer, inner)


def _put_after_pick(outer: Selection, inner: Selection) -> SelectionPlan:
    """``J[m, k] = sum_n sum_ij [m == ia[n, i]] va[n, i] vb[n, j] [k == ib[n, j]]``:
    the ``N * wa * wb`` entries as pairs (one multiplication each where
    both sides store values), or one scatter-add of them into the dense
    block where the pairs would store more than half of it, or where both
    widths exceed 1: a later product with pairs, planned through their
    factors of width 1, would then multiply ``wa * wb`` times per row what
    the put and the pick multiply apart (``wa + wb``)."""
    m, k = math.prod(outer.out_shape), math.prod(inner.in_shape)
    n, wa, wb = outer.lead, outer.width, inner.width
    sign = outer.sign * inner.sign
    mults = n * wa * wb if _both_valued(outer, inner) else 0

    def entries(a, b, dtype):
        ia, va = _parts(outer, a, dtype)
        ib, vb = _parts(inner, b, dtype)
        v = _times(None if va is None else va[:, :, None], None if vb is None else vb[:, None, :], sign)
        xp = np if is_known(ia) and is_known(ib) else jnp  # constant indices stay constants
        rows = xp.broadcast_to(ia[:, :, None], (n, wa, wb)).reshape(-1, 1)
        cols = xp.broadcast_to(ib[:, None, :], (n, wa, wb)).reshape(-1, 1)
        return rows, cols, None if v is None else jnp.broadcast_to(v, (n, wa, wb)).reshape(-1, 1)

    if min(wa, wb) == 1 and _fits(n * wa * wb, 1, outer.out_shape, inner.in_shape):
        result = Selection(outer.out_shape, inner.in_shape, "pairs", (("pairs", outer.keys, inner.keys),),
                           count=n * wa * wb, **_combined(outer, inner))

        def run(a, b, dtype):
            rows, cols, v = entries(a, b, dtype)
            idx = _columns([rows, cols])
            return (idx,) if v is None else (idx, v)

        return SelectionPlan(result, mults, 0, run)
    result, prepare = _dense_result(outer.out_shape, inner.in_shape)

    def run_dense(a, b, dtype):
        rows, cols, v = entries(a, b, dtype)
        v = jnp.full(rows.shape, sign, dtype) if v is None else v
        return prepare(jnp.zeros((m, k), dtype).at[rows[:, 0], cols[:, 0]].add(v[:, 0]))

    return SelectionPlan(result, mults, 0, run_dense)


def _pairs_factors(st: Selection) -> tuple[Selection, Selection]:
    """Pairs as ``put ∘ pick`` through their ``K`` entries: the put (width
    1, the rows, the values and sign) and the pick (width 1, the columns)."""
    (key,) = st.keys
    put = Selection(st.out_shape, (st.count,), "put", (("rows", key),), st.val, st.sign)
    pick = Selection((st.count,), st.in_shape, "pick", (("cols", key),))
    return put, pick


def _factor_values(value) -> tuple[tuple, tuple]:
    """The values of :func:`_pairs_factors` from the pairs' value."""
    idx = value[0]
    return (idx[:, :1],) + tuple(value[1:]), (idx[:, 1:],)


def _through_pairs(pairs: Selection, other, pairs_is_outer: bool, product_plan: Callable) -> SelectionPlan:
    """``pairs ∘ other`` as ``put ∘ (pick ∘ other)``, or ``other ∘ pairs`` as
    ``(other ∘ put) ∘ pick`` (:func:`_pairs_factors`): each step is a
    product this module plans, so the result, its multiplications and its
    additions are theirs (a diagonal or a selection of the same side keeps
    pairs, anything else is dense).  ``product_plan`` plans them: ``other``
    may be any structure."""
    put, pick = _pairs_factors(pairs)
    if pairs_is_outer:
        first = product_plan(pick, other)
        second = product_plan(put, first.result) if first.result is not None else None
    else:
        first = product_plan(other, put)
        second = product_plan(first.result, pick) if first.result is not None else None
    if second is None:
        return SelectionPlan(None, first.mults, first.additions, lambda a, b, dtype: None)

    def run(a, b, dtype):
        if pairs_is_outer:
            put_value, pick_value = _factor_values(a)
            return second.apply(put_value, first.apply(pick_value, b, dtype), dtype)
        put_value, pick_value = _factor_values(b)
        return second.apply(first.apply(a, put_value, dtype), pick_value, dtype)

    return SelectionPlan(second.result, first.mults + second.mults, first.additions + second.additions, run)


def _selection_times_dense(sel: Selection, other) -> SelectionPlan:
    """``sel ∘ other`` for any other structure, densified to ``(N, R)``: a
    pick gathers its rows, a put scatter-adds them."""
    result, prepare = _dense_result(sel.out_shape, other.in_shape)
    m, r = math.prod(sel.out_shape), math.prod(other.in_shape)
    mults = sel.nnz_values * r if sel.val is not None else 0

    def run(a, b, dtype):
        idx, v = _parts(sel, a, dtype)
        rows = _matrix(other, b, dtype)
        if sel.kind == "pick":  # row m: sum_k v[m, k] other[idx[m, k]]
            picked = _scale(_take(rows, idx), v, sel.sign)  # (M, width, R)
            return prepare(picked.sum(axis=1) if sel.width > 1 else picked[:, 0])
        # row n of other, times v[n, k], lands on row idx[n, k]
        return prepare(_rows_to(rows, idx, v, sel.sign, m, dtype))

    return SelectionPlan(result, mults, 0, run)


def _dense_times_selection(other, sel: Selection) -> SelectionPlan:
    """``other ∘ sel`` for any other structure (a selection of the other
    kind included), densified to ``(P, M)``: a pick scatter-adds its
    columns, a put gathers them."""
    result, prepare = _dense_result(other.out_shape, sel.in_shape)
    p, n = math.prod(other.out_shape), math.prod(sel.in_shape)
    mults = p * sel.nnz_values if sel.val is not None else 0

    def run(a, b, dtype):
        idx, v = _parts(sel, b, dtype)
        cols = _matrix(other, a, dtype).T  # (M, P)
        if sel.kind == "put":
            picked = _scale(_take(cols, idx), v, sel.sign)  # (N, width, P)
            return prepare(picked.sum(axis=1).T if sel.width > 1 else picked[:, 0].T)
        return prepare(_rows_to(cols, idx, v, sel.sign, n, dtype).T)

    return SelectionPlan(result, mults, 0, run)


def _rows_to(rows, idx, v, sign: int, size: int, dtype):
    """``(size, R)`` zeros plus row ``l`` of ``rows`` (``(L, R)``) times
    ``v[l, k]`` at row ``idx[l, k]``.  Constant one-column indices in
    steps (a strided or plain slice's) are one interior ``pad``: XLA fuses
    it into the sum or product it feeds, where a scatter-add into zeros
    is a buffer of its own per term (three strided parameter reads of a
    least-squares residual held 3.7x its Jacobian)."""
    progression = _progression(idx, size)
    if progression is not None:
        start, step = progression
        last = start + step * (rows.shape[0] - 1)
        spaced = ((start, size - 1 - last, step - 1), (0, 0, 0))
        return lax.pad(_scale(rows[:, None, :], v, sign)[:, 0], jnp.zeros((), dtype), spaced)
    scaled = _scale(jnp.broadcast_to(rows[:, None, :], idx.shape + rows.shape[1:]), v, sign)
    return jnp.zeros((size,) + rows.shape[1:], dtype).at[idx].add(scaled)


def _progression(idx, size: int) -> Optional[tuple[int, int]]:
    """``(start, step)`` where ``idx`` is known, one column, and
    ``start + step * l`` with ``step >= 1``, all in ``[0, size)``; else None."""
    if not is_known(idx) or np.ndim(idx) != 2 or np.shape(idx)[1] != 1:
        return None
    at = np.asarray(idx)[:, 0].astype(np.int64)
    step = int(at[1] - at[0]) if at.size > 1 else 1
    if at.size == 0 or step < 1 or at[0] < 0 or at[-1] >= size:
        return None
    return (int(at[0]), step) if np.array_equal(at, at[0] + step * np.arange(at.size)) else None


def _scale(rows, v, sign: int):
    """``(lead, width, R)`` rows times the entries ``v`` (``(lead, width)``)."""
    return _stored(sign, rows) if v is None else v[:, :, None] * rows


# ---------------------------------------------------------------------------
# Sums.
# ---------------------------------------------------------------------------


def _as_selection(st, like: Selection):
    """A partial as a selection of ``like``'s kind: an elementwise partial
    at ``iota``, a structure with at most :data:`MAX_STATIC_WIDTH` entries
    per row at its constant indices (:func:`static_selection`: a
    replication, a slice, a band); None for any other."""
    if is_selection(st):
        return st
    if _square_elementwise(st):
        return Selection(st.out_shape, st.in_shape, like.kind, (("iota",),), None if st.val is None else ("v",),
                         st.sign if st.val is None else 1)
    static = static_selection(st, like.kind)
    return None if static is None else static.selection


def _selection_operand(st, sel: Selection, value, dtype):
    """``(idx, v)`` of ``st`` as the selection ``sel`` (see :func:`_as_selection`)."""
    if is_selection(st):
        return _parts(st, value, dtype)
    if _square_elementwise(st):
        idx = np.arange(sel.lead, dtype=np.int32)[:, None]
        d = _diagonal(st, value, dtype)
        return idx, None if d is None else d[:, None]
    return static_selection(st, sel.kind).parts(value, dtype)


def _square_elementwise(st) -> bool:
    """Whether ``st`` is a diagonal over one flat index: ``J[m, n] = d[m] [m == n]``."""
    return _flat_symbols(st) is not None and st.out_shape == st.in_shape


def sum_(a, b) -> SelectionPlan:
    """Plan ``a + b`` where at least one side is a selection.  Selections of
    one kind (an elementwise partial counts as one at ``iota``) stay one:
    columns of one key add their values, the others are appended, while
    that stores at most half the dense block; anything else is the dense
    sum."""
    if any(is_selection(st) and st.kind == "pairs" for st in (a, b)):
        return _pairs_sum(a, b)
    like = a if is_selection(a) else b
    sa, sb = _as_selection(a, like), _as_selection(b, like)
    if sa is not None and sb is not None and sa.kind == sb.kind:
        lead = sa.lead
        keys = sa.keys + tuple(k for k in sb.keys if k not in sa.keys)
        if set(sa.keys) == set(sb.keys) and sa.val is None and sb.val is None and sa.sign != sb.sign:
            return SelectionPlan(None, 0, 0, lambda va, vb, dtype: None)
        if _fits(lead, len(keys), sa.out_shape, sa.in_shape):
            shared = [sb.keys.index(k) for k in sa.keys if k in sb.keys]
            signs_only = not shared and sa.val is None and sb.val is None and sa.sign == sb.sign
            result = Selection(sa.out_shape, sa.in_shape, sa.kind, keys,
                               **({"val": None, "sign": sa.sign} if signs_only else {"val": ("v",), "sign": 1}))
            into = [keys.index(k) for k in sb.keys]  # where each column of b goes
            appended = [j for j, k in enumerate(sb.keys) if k not in sa.keys]

            def run(va, vb, dtype):
                ia, xa = _selection_operand(a, sa, va, dtype)
                ib, xb = _selection_operand(b, sb, vb, dtype)
                idx = _columns([ia] + [ib[:, j:j + 1] for j in appended]) if appended else ia
                if signs_only:
                    return (idx,)
                xa, xb = _entries(sa, xa, dtype), _entries(sb, xb, dtype)
                if not shared:
                    return idx, jnp.concatenate([xa, xb], axis=1)
                if list(into) == list(range(sa.width)):  # the same columns
                    return idx, xa + xb
                source = {c: j for j, c in enumerate(into)}  # column of b added into result column c
                columns = [xa[:, c:c + 1] + xb[:, source[c]:source[c] + 1] if c in source else xa[:, c:c + 1]
                           for c in range(sa.width)] + [xb[:, j:j + 1] for j in appended]
                return idx, jnp.concatenate(columns, axis=1)

            return SelectionPlan(result, 0, lead * len(shared), run)
    return _dense_sum(a, b)


def _dense_sum(a, b) -> SelectionPlan:
    """``a + b`` as dense blocks (every entry added)."""
    result, prepare = _dense_result(a.out_shape, a.in_shape)
    additions = math.prod(a.out_shape) * math.prod(a.in_shape)
    return SelectionPlan(result, 0, additions,
                         lambda va, vb, dtype: prepare(_matrix(a, va, dtype) + _matrix(b, vb, dtype)))


def _as_pairs(st) -> Optional[tuple[Selection, Callable]]:
    """A partial as pairs: the selection (its entries) and how to read
    ``(rows, cols, v)`` (each ``(K, 1)``, ``v`` None when no values are
    stored) from its value; None where it is not a selection, an
    elementwise partial or a static selection (:func:`_as_selection`)."""
    if is_selection(st) and st.kind == "pairs":
        return st, lambda value, dtype: (value[0][:, :1], value[0][:, 1:], _parts(st, value, dtype)[1])
    sel = _as_selection(st, Selection(st.out_shape, st.in_shape, "pick", ("like",)))
    if sel is None:
        return None

    def entries(value, dtype):
        idx, v = _selection_operand(st, sel, value, dtype)
        rows, cols = _rows_and_columns(sel.kind, idx)
        return (rows.reshape(-1, 1), cols.reshape(-1, 1),
                None if v is None else jnp.broadcast_to(v, (sel.lead, sel.width)).reshape(-1, 1))

    pairs = Selection(st.out_shape, st.in_shape, "pairs", (("as pairs", sel.keys),), sel.val, sel.sign,
                      sel.lead * sel.width)
    return pairs, entries


def _pairs_sum(a, b) -> SelectionPlan:
    """``a + b`` with pairs on one side: the entries of both, side by side
    (no addition: entries at one position add up where the pairs are
    densified), while they store at most half the dense block; else the
    dense sum."""
    pa, pb = _as_pairs(a), _as_pairs(b)
    if pa is not None and pb is not None and _fits(pa[0].count + pb[0].count, 1, a.out_shape, a.in_shape):
        (sa, read_a), (sb, read_b) = pa, pb
        signs_only = sa.val is None and sb.val is None and sa.sign == sb.sign
        result = Selection(a.out_shape, a.in_shape, "pairs", (("pairs sum", sa.keys, sb.keys),),
                           **({"val": None, "sign": sa.sign} if signs_only else {"val": ("v",), "sign": 1}),
                           count=sa.count + sb.count)

        def run(va, vb, dtype):
            ra, ca, xa = read_a(va, dtype)
            rb, cb, xb = read_b(vb, dtype)
            idx = _columns([_columns([ra, rb], axis=0), _columns([ca, cb], axis=0)])
            if signs_only:
                return (idx,)
            return idx, jnp.concatenate([_entries(sa, xa, dtype), _entries(sb, xb, dtype)], axis=0)

        return SelectionPlan(result, 0, 0, run)
    return _dense_sum(a, b)

