"""Partials kept as a sum of structures (lazy sums).

Some sums store more entries than their terms together: a band along one
axis plus a band along another (the two halves of a 2-D stencil) is, as
one structure, the band of every pair of offsets (9 diagonals for a
5-point stencil), and a band plus a dense row (row norms and the total
norm) is a dense block.  Such a sum is kept as :class:`Terms`:

* a sum adds a term into a kept one when that stores no more entries than
  the two apart (equal diagonals merge, a diagonal joins a band), and keeps
  it apart otherwise; more than :data:`MAX_TERMS` apart are added up;
* a product distributes over the terms, or adds them up first, whichever
  multiplies less (ties: the result that stores fewer values);
* the Jacobian block is the sum of the terms' dense forms, or the union of
  their sparse entries.

Every plan here has ``result``, ``mults`` (exactly what ``apply``
multiplies: the terms' products and nothing else) and ``additions``.  A
value of a :class:`Terms` is the tuple of its terms' values (None for a
unit term).  Selections are never terms: a sum or product with one adds
the terms up first.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from ccjax.structure import core
from ccjax.structure.selection import is_selection

#: Most terms a partial keeps apart; a sum that would keep more adds them up.
MAX_TERMS = 4


@core.hash_once
@dataclasses.dataclass(frozen=True)
class Terms:
    """A partial that is the sum of ``parts`` (two to :data:`MAX_TERMS`
    structures of one shape, none a selection or a :class:`Terms`, no two
    of which add up without storing more entries), in a canonical order."""

    parts: tuple

    bands = ()
    sign = 1

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.parts[0].out_shape

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.parts[0].in_shape

    @property
    def val(self) -> Optional[tuple]:
        """None when every term is a ±unit pattern (no run-time value)."""
        return None if all(p.val is None for p in self.parts) else ()

    @property
    def nnz_values(self) -> int:
        return sum(p.nnz_values for p in self.parts)

    def describe(self) -> str:
        return " + ".join(p.describe() for p in self.parts)


def is_terms(st) -> bool:
    return isinstance(st, Terms)


def parts_of(st) -> tuple:
    """The terms of ``st`` (``(st,)`` for one structure)."""
    return st.parts if is_terms(st) else (st,)


def values_of(st, value) -> tuple:
    """The terms' values of ``st``'s ``value``, in :func:`parts_of` order."""
    if not is_terms(st):
        return (value,)
    return tuple(value) if value is not None else (None,) * len(st.parts)


def _key(st) -> tuple:
    return st.describe(), repr(st)


# ---------------------------------------------------------------------------
# Adding terms.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FoldPlan:
    """Sum a list of terms into normal form: ``steps`` ``(i, k, plan)`` add
    term ``k`` into term ``i`` (eager sum ``plan``; a None result cancels
    both), then the surviving terms ``keep`` form ``result`` (a structure, a
    :class:`Terms`, or None when everything cancelled)."""

    result: Any
    steps: tuple
    keep: tuple
    additions: int
    mults: int = 0

    def apply_list(self, values: Sequence, dtype):
        values = list(values)
        for i, k, plan in self.steps:
            values[i] = plan.apply(values[i], values[k], dtype)
        if self.result is None:
            return None
        kept = tuple(values[i] for i in self.keep)
        return kept if len(kept) > 1 else kept[0]


def fold(parts: Sequence, eager_sum: Callable, merge_all: bool = False) -> FoldPlan:
    """Normal form of the sum of ``parts`` (structures, no :class:`Terms`).

    Each term is added into the first kept term it fits (their sum stores no
    more entries than the two apart, or cancels), else kept apart; with
    ``merge_all``, or more than :data:`MAX_TERMS` apart, all are added up."""
    slots: list = list(parts)
    alive = [True] * len(slots)
    steps, additions = [], 0

    def add(i: int, k: int, plan) -> None:
        nonlocal additions
        steps.append((i, k, plan))
        additions += plan.additions
        alive[k] = False
        if plan.result is None:
            alive[i] = False
        else:
            slots[i] = plan.result

    for k in range(1, len(slots)):
        for i in range(k):
            if not alive[i]:
                continue
            plan = eager_sum(slots[i], slots[k])
            if plan.result is None or is_selection(slots[i]) or is_selection(slots[k]) or core.entry_count(
                    plan.result) <= core.entry_count(slots[i]) + core.entry_count(slots[k]):
                add(i, k, plan)
                break
    kept = [i for i in range(len(slots)) if alive[i]]
    if len(kept) > 1 and (merge_all or len(kept) > MAX_TERMS):
        first = kept[0]
        for k in kept[1:]:
            if alive[first]:
                add(first, k, eager_sum(slots[first], slots[k]))
            else:  # everything so far cancelled: start again from k
                first = k
        kept = [i for i in range(len(slots)) if alive[i]]
    kept.sort(key=lambda i: _key(slots[i]))
    if not kept:
        result = None
    elif len(kept) == 1:
        result = slots[kept[0]]
    else:
        result = Terms(tuple(slots[i] for i in kept))
    return FoldPlan(result, tuple(steps), tuple(kept), additions)


@dataclasses.dataclass(frozen=True)
class KeepPlan:
    """``a + b`` where one side has no entries (an empty band): the other
    side, unchanged (``first``: ``a``)."""

    result: Any
    first: bool
    mults = 0
    additions = 0

    def apply(self, va, vb, dtype):
        return va if self.first else vb


@dataclasses.dataclass(frozen=True)
class TermsSumPlan:
    """``a + b`` with a :class:`Terms` on either side or as the result."""

    a: Any
    b: Any
    folded: FoldPlan

    @property
    def result(self):
        return self.folded.result

    mults = 0

    @property
    def additions(self) -> int:
        return self.folded.additions

    def apply(self, va, vb, dtype):
        return self.folded.apply_list(values_of(self.a, va) + values_of(self.b, vb), dtype)


@dataclasses.dataclass(frozen=True)
class CollapsedPlan(core.WrappedPlan):
    """A plain plan (``plan``) on operands whose terms are added up first."""

    outer: Optional[FoldPlan]
    inner: Optional[FoldPlan]
    outer_st: Any
    inner_st: Any

    @property
    def additions(self) -> int:
        return self.plan.additions + sum(f.additions for f in (self.outer, self.inner) if f is not None)

    def apply(self, va, vb, dtype):
        if self.outer is not None:
            va = self.outer.apply_list(values_of(self.outer_st, va), dtype)
        if self.inner is not None:
            vb = self.inner.apply_list(values_of(self.inner_st, vb), dtype)
        return self.plan.apply(va, vb, dtype)


def collapse(st, eager_sum: Callable) -> Optional[FoldPlan]:
    """The plan adding up the terms of ``st`` (None for one structure)."""
    return fold(st.parts, eager_sum, merge_all=True) if is_terms(st) else None


def collapsed(outer, inner, eager_sum: Callable, plain: Callable) -> Optional[CollapsedPlan]:
    """``plain(outer', inner')`` on the operands with their terms added up;
    None when the terms of one cancel (the caller then keeps them)."""
    fo, fi = collapse(outer, eager_sum), collapse(inner, eager_sum)
    o = outer if fo is None else fo.result
    i = inner if fi is None else fi.result
    if o is None or i is None:
        return None
    return CollapsedPlan(plain(o, i), fo, fi, outer, inner)


def sum_(a, b, eager_sum: Callable):
    """Plan ``a + b``: the eager sum when it stores no more entries than the
    two apart (or a selection is involved), else the two kept as terms."""
    if not is_terms(a) and not is_terms(b):
        plan = eager_sum(a, b)
        if (plan.result is None or is_selection(a) or is_selection(b)
                or core.entry_count(plan.result) <= core.entry_count(a) + core.entry_count(b)):
            return plan
    elif is_selection(a) or is_selection(b):
        cp = collapsed(a, b, eager_sum, eager_sum)
        if cp is not None:
            return cp
    return TermsSumPlan(a, b, fold(parts_of(a) + parts_of(b), eager_sum))


# ---------------------------------------------------------------------------
# Products.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
    """``outer ∘ inner`` as the sum of the products of their terms."""

    outer: Any
    inner: Any
    products: tuple  # ((outer term, inner term, plan), ...)
    folded: FoldPlan

    @property
    def result(self):
        return self.folded.result

    @property
    def mults(self) -> int:
        return sum(p.mults for _, _, p in self.products)

    @property
    def additions(self) -> int:
        return sum(p.additions for _, _, p in self.products) + self.folded.additions

    def apply(self, va, vb, dtype):
        vo, vi = values_of(self.outer, va), values_of(self.inner, vb)
        return self.folded.apply_list([p.apply(vo[i], vi[j], dtype) for i, j, p in self.products], dtype)


def product(outer, inner, plain: Callable, eager_sum: Callable, count: Callable):
    """Plan ``outer ∘ inner`` with a :class:`Terms` on either side: the
    products of the terms, or the product of the added-up operands,
    whichever multiplies less (ties: the result storing fewer values).
    ``plain`` plans a product of two structures, ``count`` counts a
    result's structural nonzeros.

    Adding up first is only an option when the added-up operands store no
    entry their terms do not have, and its result no entry the terms'
    products do not reach: an added-up operand stores zeros where no term
    has an entry, and a product multiplies into them, so a NaN or infinite
    partial would reach an entry no path reaches (where ``jax.jacrev`` has
    a zero) -- even where the products' sum stores that entry (as an exact
    zero) too."""
    if is_selection(outer) or is_selection(inner):
        return collapsed(outer, inner, eager_sum, plain)
    po, pi = parts_of(outer), parts_of(inner)
    products = tuple((i, j, plain(o, n)) for i, o in enumerate(po) for j, n in enumerate(pi))
    dist = DistributedPlan(outer, inner, products, fold([p.result for _, _, p in products], eager_sum))
    col = collapsed(outer, inner, eager_sum, plain)
    if (col is None or dist.result is None or _more_entries(col.result, dist.result, count)
            or any(f is not None and _more_entries(f.result, st, count)
                   for f, st in ((col.outer, outer), (col.inner, inner)))):
        return dist
    if (col.mults, _stored(col.result)) < (dist.mults, _stored(dist.result)):
        return col
    return dist


def _more_entries(a, b, count: Callable) -> bool:
    """``count(a) > count(b)``, where ``b``'s count, the union of its terms'
    entries, is only formed when its bounds do not decide: at most the sum
    of the terms' entries, at least the entries of a term whose entries sit
    at distinct positions.  The union materialises every entry, over a
    million on a nested Hessian, at every step of an order search."""
    n = count(a)
    if is_terms(b):
        sizes = [count(p) for p in b.parts]
        if n > sum(sizes):
            return True
        if n <= max((k for p, k in zip(b.parts, sizes) if core.entries_are_distinct(p)), default=-1):
            return False
    return n > count(b)


def _stored(st) -> int:
    return 0 if st is None else st.nnz_values


# ---------------------------------------------------------------------------
# Entries and dense forms.
# ---------------------------------------------------------------------------


def _unique_rows(indices: np.ndarray, shape: tuple, return_inverse: bool = False):
    """``np.unique(indices, axis=0)`` (rows sorted, optionally the inverse),
    by the rows' flat positions in ``shape``: sorting one integer per entry
    instead of rows takes a second off a million entries, which order
    searches ask for at every step on sums of large terms."""
    if not shape or math.prod(shape) >= 2 ** 62:
        return np.unique(indices, axis=0, return_inverse=return_inverse)
    flat = np.ravel_multi_index(tuple(indices.T), shape)
    order = np.argsort(flat, kind="stable")  # NumPy's hashing unique is slower at these sizes
    ranked = flat[order]
    first = np.empty(len(ranked), bool)
    first[:1] = True
    first[1:] = ranked[1:] != ranked[:-1]
    rows = np.stack(np.unravel_index(ranked[first], shape), axis=1).astype(indices.dtype)
    if not return_inverse:
        return rows
    inverse = np.empty(len(flat), np.intp)
    inverse[order] = np.cumsum(first) - 1
    return rows, inverse


def entry_indices(st: Terms, part_indices: Callable) -> np.ndarray:
    """The union of the terms' entries, sorted (the order of :func:`to_bcoo`)."""
    return _unique_rows(np.concatenate([part_indices(p) for p in st.parts]), st.out_shape + st.in_shape)


def to_bcoo(st: Terms, value, dtype, part_bcoo: Callable, part_indices: Callable):
    """The union of the terms' sparse entries, each index once (an index
    several terms store holds their sum)."""
    from jax.experimental import sparse

    blocks = [part_bcoo(p, v, dtype) for p, v in zip(st.parts, values_of(st, value))]
    indices = np.concatenate([part_indices(p) for p in st.parts])
    data = jnp.concatenate([b.data for b in blocks])
    unique, where = _unique_rows(indices, st.out_shape + st.in_shape, return_inverse=True)
    data = jnp.zeros((len(unique),), data.dtype).at[where.reshape(-1)].add(data)
    return sparse.BCOO((data, jnp.asarray(unique, np.int32)), shape=st.out_shape + st.in_shape)


def to_dense(st: Terms, value, dtype, part_dense: Callable):
    """The sum of the terms' dense forms."""
    out = None
    for p, v in zip(st.parts, values_of(st, value)):
        d = part_dense(p, v, dtype)
        out = d if out is None else out + d
    return out


@functools.lru_cache(maxsize=4096)  # a union of indices; plans ask again during order searches
def entry_count(st: Terms, part_indices: Callable) -> int:
    return len(entry_indices(st, part_indices))
