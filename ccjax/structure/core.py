"""Structured partial Jacobians without bands: one algebra for execution and for cost.

(:mod:`ccjax.structure.bands` extends every operation to structures with
bands; :mod:`ccjax.structure` dispatches between the two.)

A partial ``J = ∂v/∂u`` has the ``jax.jacrev`` layout ``v.shape + u.shape``.
Its :class:`Structure` describes it with *symbols*: every full axis of ``J``
(out axes, then in axes) is written row-major as a tuple of symbols, each
symbol standing for an index range of size ``sizes[s] >= 2`` (axes of size 1
carry no symbol).  Then

    J[idx] = value[val symbols] * prod_s [all occurrences of s agree]

so a symbol that occurs on an out axis and an in axis is a Kronecker delta
(a diagonal pair when it also indexes ``value``), a symbol that occurs once
and not in ``value`` is a replication (broadcast), and ``value is None``
means the whole partial is ``sign * (structural ones)`` with no stored
numbers at all (identity, ``add``, ``neg``, ``reshape``, ``transpose``...).

Every operation here is split in two halves: a *plan*, computed from
structures alone (hashable, cached), that fixes the result structure and
the exact number of scalar multiplications, and an *execution* of that plan
on arrays.  The cost model and the executor therefore cannot disagree: the
cost of a product is the size of the iteration space of the single
``mul``/``dot_general`` the plan executes.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Hashable, Optional, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

Axes = tuple[tuple[int, ...], ...]


def hash_once(cls):
    """Class decorator for a frozen dataclass used as (part of) a memo key:
    its hash is computed on first use and kept.  Structures nest (bands in
    structures, structures in selection keys, keys in keys along a path), so
    the generated ``__hash__`` re-hashed the whole tree at every memo
    lookup: 165,000 nested hashes in one plan of the nested Lorenz-96
    Hessian.  Equality is the dataclass's, over the same fields; the kept
    hash is left out of pickles (string hashes differ between processes)."""
    names = tuple(f.name for f in dataclasses.fields(cls))

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, n) for n in names))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    cls.__hash__ = __hash__
    cls.__getstate__ = __getstate__
    return cls


@hash_once
@dataclasses.dataclass(frozen=True)
class Band:
    """Shifted data between out symbol ``out`` and in symbol ``inn``.

    The partial carries the factor ``sum_k [lo_k <= i < hi_k] [j == i + offsets[k]]``
    (``i`` the index of ``out``, ``j`` that of ``inn``, ``(lo_k, hi_k) =
    ranges[k]``): one diagonal per offset, present on a range of rows.  With
    more than one diagonal, symbol ``slot`` (size ``len(offsets)``) indexes
    them; it occurs on no axis, and in the value when the diagonals carry
    different numbers (a slot not in the value is summed).  Slices, pads and
    concatenations are single unit diagonals; stencils sum a few of them.

    Invariants: ``out`` occurs once on the out axes and ``inn`` once on the
    in axes, nowhere else; ``inn`` is never stored; one of them may have
    size 1 (a single element read or written: the only symbols of size 1,
    never stored, so that a slice of one element composes with the
    concatenation that puts it back); an end of size 1 may occur on no axis
    when its side has no axis of size 1 to hold it (a slice summed to a
    scalar: ``J[j] = [j == offset]``); ``slot`` is None exactly
    when there is one diagonal; ``0 <= lo_k <= hi_k <= n_out`` (``(0, 0)``:
    an empty diagonal) and the range only holds rows whose ``i + offsets[k]``
    is a valid in index.
    """

    out: int
    inn: int
    slot: Optional[int]
    offsets: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]


def clip_range(lo: int, hi: int, offset: int, n_out: int, n_in: int) -> tuple[int, int]:
    """The rows of ``[lo, hi)`` whose diagonal entry ``i + offset`` is a valid
    in index (empty ranges come back as ``(0, 0)``)."""
    lo, hi = max(lo, 0, -offset), min(hi, n_out, n_in - offset)
    return (lo, hi) if lo < hi else (0, 0)


@hash_once
@dataclasses.dataclass(frozen=True)
class Structure:
    """Symbolic structure of a partial Jacobian (see module docstring).

    Invariants: symbols are ``0..len(sizes)-1`` numbered by first occurrence
    on the axes, then band ends on no axis, then the bands' slots; every
    symbol but a slot or a band end of size 1 occurs on at least one axis;
    ``val`` lists distinct symbols of size >= 2 in
    increasing order (the axes of the stored value array); ``bands`` are
    ordered by their out symbol.
    """

    out_axes: Axes
    in_axes: Axes
    sizes: tuple[int, ...]
    val: Optional[tuple[int, ...]]
    sign: int = 1
    bands: tuple[Band, ...] = ()

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(math.prod(self.sizes[s] for s in ax) for ax in self.out_axes)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(math.prod(self.sizes[s] for s in ax) for ax in self.in_axes)

    @property
    def val_shape(self) -> Optional[tuple[int, ...]]:
        return None if self.val is None else tuple(self.sizes[s] for s in self.val)

    @property
    def nnz_values(self) -> int:
        """Number of stored values (0 for a unit partial)."""
        return 0 if self.val is None else math.prod(self.val_shape)

    def describe(self) -> str:
        """Short human-readable form, e.g. ``diag[a](a|a)``."""
        letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

        def name(s: int) -> str:
            return letters[s] if s < len(letters) else f"s{s}"

        def axes(group: Axes) -> str:
            return ",".join("".join(map(name, ax)) or "1" for ax in group)

        v = ("-" if self.sign < 0 else "+") + "1" if self.val is None else "".join(map(name, self.val))
        bands = "".join(f"{{{name(b.out)}>{name(b.inn)}{list(b.offsets)}}}" for b in self.bands)
        return f"[{v}]({axes(self.out_axes)}|{axes(self.in_axes)}){bands}"


def make_structure(
    out_axes: Sequence[Sequence[Hashable]],
    in_axes: Sequence[Sequence[Hashable]],
    sizes: dict,
    val: Optional[Sequence[Hashable]],
    sign: int = 1,
    bands: Sequence[tuple] = (),
) -> tuple[Structure, tuple[int, ...]]:
    """Canonicalise a structure written with arbitrary hashable labels.

    Labels whose size is 1 are dropped everywhere but at band ends.  ``bands`` holds
    ``(out_label, in_label, slot_label, offsets, ranges)`` (see :class:`Band`;
    ``slot_label`` None for one diagonal; ranges are clipped to valid rows).
    Symbols are numbered by first occurrence on the axes, then slots in band
    order.  Returns the structure and the permutation ``perm`` such that
    ``value.transpose(perm)`` (after squeezing size-1 axes of the value) is
    laid out as ``structure.val``; rules use :func:`structure_from_labels`
    which applies it for them.
    """
    numbering: dict = {}
    ends = {label for b in bands for label in b[:2]}
    for ax in list(out_axes) + list(in_axes):
        for label in ax:
            if (sizes[label] > 1 or label in ends) and label not in numbering:
                numbering[label] = len(numbering)
    for b in bands:  # band ends on no axis (a single element of a scalar side)
        for label in b[:2]:
            if label not in numbering:
                if sizes[label] != 1:
                    raise ValueError("a band end on no axis has size 1")
                numbering[label] = len(numbering)
    bands = sorted(bands, key=lambda b: numbering[b[0]])
    for out_label, in_label, slot, offsets, _ in bands:
        if sizes[out_label] < 2 and sizes[in_label] < 2:
            raise ValueError("a band links a symbol of size >= 2 to another symbol")
        if (slot is None) != (len(offsets) == 1) or (slot is not None and sizes[slot] != len(offsets)):
            raise ValueError("a band has a slot symbol exactly when it has several diagonals")
        if slot is not None:
            numbering[slot] = len(numbering)
    canon_sizes = [0] * len(numbering)
    for label, s in numbering.items():
        canon_sizes[s] = int(sizes[label])
    canon = lambda group: tuple(tuple(numbering[l] for l in ax if l in numbering) for ax in group)
    canon_bands = tuple(
        Band(numbering[o], numbering[i], None if k is None else numbering[k], tuple(int(d) for d in offsets),
             tuple(clip_range(int(lo), int(hi), int(d), sizes[o], sizes[i]) for (lo, hi), d in zip(ranges, offsets)))
        for o, i, k, offsets, ranges in bands)
    if val is None:
        return Structure(canon(out_axes), canon(in_axes), tuple(canon_sizes), None, 1 if sign >= 0 else -1,
                         canon_bands), ()
    kept = [l for l in val if sizes[l] > 1]
    if len(set(kept)) != len(kept):
        raise ValueError("value labels must be distinct")
    missing = [l for l in kept if l not in numbering]
    if missing:
        raise ValueError(f"value labels {missing} do not occur on any axis")
    symbols = [numbering[l] for l in kept]
    perm = tuple(int(i) for i in np.argsort(symbols, kind="stable"))
    return Structure(canon(out_axes), canon(in_axes), tuple(canon_sizes), tuple(sorted(symbols)), 1,
                     canon_bands), perm


def structure_from_labels(out_shape, in_shape, out_labels, in_labels, val_labels=None, val_shape=None, sign=1,
                          bands=()):
    """Build a structure from one label per axis (``None`` = fresh label).

    ``bands`` are unit diagonals: ``(out_label, in_label, offset)`` (in
    index = out index + offset on every row), or ``(out_label, in_label,
    offsets, ranges)`` for a sum of diagonals, each on its rows ``[lo, hi)``
    (see :class:`Band`).

    ``val_labels`` labels the axes of the value array as the rule produces it
    (natural shape ``val_shape``).  Returns ``(structure, prepare)`` where
    ``prepare(value)`` squeezes size-1 axes and orders axes as the structure
    expects; ``prepare`` is ``None`` for a unit partial.
    """
    sizes: dict = {}
    fresh = iter(range(10**9))

    def lab(group, shape):
        out = []
        for label, n in zip(group, shape):
            if label is None:
                label = ("fresh", next(fresh))
            if label in sizes and sizes[label] != n:
                raise ValueError(f"label {label!r} used with sizes {sizes[label]} and {n}")
            sizes[label] = n
            out.append((label,))
        return out

    oa = lab(out_labels, out_shape)
    ia = lab(in_labels, in_shape)
    canon_bands = []
    for band in bands:
        for end in band[:2]:
            sizes.setdefault(end, 1)  # an end on no axis (a single element of a side without one)
        if len(band) == 3:
            o, i, d = band
            canon_bands.append((o, i, None, (d,), ((0, sizes[o]),)))
            continue
        o, i, offsets, ranges = band
        slot = None
        if len(offsets) > 1:
            slot = ("slot", o)
            sizes[slot] = len(offsets)
        canon_bands.append((o, i, slot, tuple(offsets), tuple(ranges)))
    bands = canon_bands
    if val_labels is None:
        return make_structure(oa, ia, sizes, None, sign, bands)[0], None
    for label, n in zip(val_labels, val_shape):
        if sizes.get(label, n) != n:
            raise ValueError(f"value label {label!r} has size {n}, axis says {sizes[label]}")
        sizes.setdefault(label, n)
    structure, perm = make_structure(oa, ia, sizes, list(val_labels), sign, bands)
    squeeze_shape = tuple(n for n in val_shape if n > 1)

    def prepare(value):
        return transpose(reshape(value, squeeze_shape), perm)

    return structure, prepare


def unit(shape: tuple[int, ...], sign: int = 1) -> Structure:
    """``sign * identity`` on a vertex of the given shape."""
    labels = list(range(len(shape)))
    return structure_from_labels(shape, shape, labels, labels, sign=sign)[0]


def dense(out_shape: tuple[int, ...], in_shape: tuple[int, ...]):
    """A fully dense partial; returns ``(structure, prepare)``."""
    n_out = len(out_shape)
    labels = list(range(n_out + len(in_shape)))
    return structure_from_labels(out_shape, in_shape, labels[:n_out], labels[n_out:], labels,
                                 tuple(out_shape) + tuple(in_shape))


# ---------------------------------------------------------------------------
# Working space used while planning: a mutable namespace of symbols.
# ---------------------------------------------------------------------------


class _Work:
    """Symbols of one or two structures in one namespace, with splitting."""

    def __init__(self):
        self.sizes: list[int] = []
        self.groups: list[list[list[int]]] = []  # groups of axes (lists of symbol lists)
        self.vals: list[Optional[list[int]]] = []
        self.bands: list[list[Band]] = []  # per structure, symbols renumbered
        self.split_band = False  # a band symbol had to be split: no aligned form keeps the band

    def add(self, st: Structure) -> int:
        """Add a structure: returns its index; its axes are groups 2i, 2i+1."""
        off = len(self.sizes)
        self.sizes.extend(st.sizes)
        self.groups.append([[s + off for s in ax] for ax in st.out_axes])
        self.groups.append([[s + off for s in ax] for ax in st.in_axes])
        self.vals.append(None if st.val is None else [s + off for s in st.val])
        self.bands.append([dataclasses.replace(b, out=b.out + off, inn=b.inn + off,
                                               slot=None if b.slot is None else b.slot + off) for b in st.bands])
        return len(self.vals) - 1

    def split(self, s: int, subs: list[int]) -> None:
        if any(s in (b.out, b.inn) for bands in self.bands for b in bands):
            self.split_band = True
        new = list(range(len(self.sizes), len(self.sizes) + len(subs)))
        self.sizes.extend(subs)
        for group in self.groups:
            for ax in group:
                if s in ax:
                    i = ax.index(s)
                    ax[i:i + 1] = new
        for v in self.vals:
            if v is not None and s in v:
                i = v.index(s)
                v[i:i + 1] = new

    def align(self, pairs: list[tuple[tuple[int, int], tuple[int, int]]]) -> bool:
        """Split symbols until each pair of axes has equal factor sizes.

        ``pairs`` holds ``((group, axis), (group, axis))``.  Returns False
        when two factorisations have no common refinement.
        """
        for _ in range(4 * len(pairs) + 4):
            changed = False
            for (ga, ka), (gb, kb) in pairs:
                # Band ends of size 1 are the only symbols of size 1; they
                # do not factor an axis.
                a = [s for s in self.groups[ga][ka] if self.sizes[s] > 1]
                b = [s for s in self.groups[gb][kb] if self.sizes[s] > 1]
                fa, fb = [self.sizes[s] for s in a], [self.sizes[s] for s in b]
                if fa == fb:
                    continue
                chain = common_chain(fa, fb)
                if chain is None:
                    return False
                for ax, f in ((a, fa), (b, fb)):
                    for s, subs in zip(ax, split_sizes(f, chain)):
                        if len(subs) > 1:
                            self.split(s, subs)
                if self.split_band:
                    return False
                changed = True
            if not changed:
                return True
        return False


def _bounds(factors: list[int]) -> set[int]:
    out, c = {1}, 1
    for f in reversed(factors):
        c *= f
        out.add(c)
    return out


def common_chain(fa: list[int], fb: list[int]) -> Optional[list[int]]:
    """The common refinement of two row-major factorisations of one index range.

    ``fa``/``fb`` are factor sizes (outermost first) with equal products.
    Returns the sorted strides (``1 .. product``) at which either splits, or
    None when no factorisation refines both (e.g. ``(2, 3)`` and ``(3, 2)``).
    """
    chain = sorted(_bounds(fa) | _bounds(fb))
    if any(y % x for x, y in zip(chain, chain[1:])):
        return None
    return chain


def split_sizes(factors: list[int], chain: list[int]) -> list[list[int]]:
    """For each factor of ``factors``, its sub-factors (outermost first) in the
    refinement ``chain`` returned by :func:`common_chain`."""
    result, c = [], 1
    for f in reversed(factors):
        lo, hi = c, c * f
        inside = [v for v in chain if lo <= v <= hi]
        result.append([y // x for x, y in reversed(list(zip(inside, inside[1:])))])
        c = hi
    return list(reversed(result))


class UnionFind:
    """Disjoint sets over ``0..n-1``; a set's root is its smallest member."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


# Execution uses lax directly: jax.numpy's operators and ``where`` are
# jitted functions, each staged as a nested trace, which adds 10-25% to the
# time to lower an elimination of thousands of steps.


def reshape(x, shape: Sequence[int]):
    """``x`` with shape ``shape``, staged only when the shape changes.

    The executor reshapes and transposes a few values per step; at thousands
    of steps ``jnp.reshape``'s argument handling is a measurable part of the
    time to lower (about 0.1-0.2 s of 1.7 s at 5k equations)."""
    shape = tuple(shape)
    if np.shape(x) == shape:
        return x
    if isinstance(x, (np.ndarray, np.generic)):
        return np.reshape(x, shape)  # a constant stays a constant, no staged equation
    return lax.reshape(x, shape)


def transpose(x, perm: Sequence[int]):
    """``x`` with axes permuted by ``perm``, staged only when it moves one."""
    perm = tuple(perm)
    if perm == tuple(range(len(perm))):
        return x
    if isinstance(x, (np.ndarray, np.generic)):
        return np.transpose(x, perm)
    return lax.transpose(x, perm)


def _broadcast(x, shape: tuple):
    """``x`` (same rank as ``shape``, size-1 axes where it replicates) broadcast to ``shape``."""
    shape = tuple(shape)
    return x if x.shape == shape else lax.broadcast_in_dim(x, shape, tuple(range(len(shape))))


def _add(a, b):
    return lax.add(a, b) if a.dtype == b.dtype else a + b


# ---------------------------------------------------------------------------
# Embedding: write one operand's values in a coarser (or dense) layout.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EmbedPlan:
    """Lay a value out over ``classes`` (result value axes).

    ``split_shape``: reshape of the source value (symbol splits).
    ``source_pos``: for each source value axis, its target axis.
    ``masks``: pairs of target axes whose indices must agree (deltas).
    ``shape``: target shape.  ``sign`` is used for a unit source.
    """

    split_shape: Optional[tuple[int, ...]]
    source_pos: tuple[int, ...]
    masks: tuple[tuple[int, int], ...]
    shape: tuple[int, ...]
    sign: int

    def apply(self, value, dtype):
        if self.split_shape is None:
            value = jnp.asarray(self.sign, dtype)
        rank_src = 0 if self.split_shape is None else len(self.split_shape)
        order = sorted(range(rank_src), key=lambda i: self.source_pos[i])
        if order != list(range(rank_src)):  # split, move, then add the axes of size 1
            value = transpose(reshape(value, self.split_shape), order)
        # (else the split and the added axes are one reshape)
        expanded = [1] * len(self.shape)
        for i in order:
            expanded[self.source_pos[i]] = self.split_shape[i]
        value = _broadcast(reshape(value, expanded), self.shape)
        if self.masks:
            keep = None
            iota = lambda axis: lax.broadcasted_iota(np.int32, self.shape, axis)
            for a, b in self.masks:
                eq = lax.eq(iota(a), iota(b))
                keep = eq if keep is None else lax.bitwise_and(keep, eq)
            value = lax.select(keep, value, lax.full(self.shape, 0, value.dtype))
        return value


def _embed_plan(work: _Work, idx: int, sym_of_class: list[int], classes: list[int], class_size,
                sign: int) -> EmbedPlan:
    """Plan the layout of operand ``idx`` over target value axes ``classes``.

    ``sym_of_class[c]`` is the operand's symbol at class ``c``.
    """
    pos_of = {c: i for i, c in enumerate(classes)}
    by_sym: dict[int, list[int]] = {}
    for c in classes:
        by_sym.setdefault(sym_of_class[c], []).append(c)
    val = work.vals[idx]
    source_pos = () if val is None else tuple(pos_of[by_sym[s][0]] for s in val)
    masks = tuple((pos_of[cs[0]], pos_of[c]) for cs in by_sym.values() for c in cs[1:])
    split_shape = None if val is None else tuple(work.sizes[s] for s in val)
    shape = tuple(class_size(c) for c in classes)
    return EmbedPlan(split_shape, source_pos, masks, shape, sign)


# ---------------------------------------------------------------------------
# Sum of two partials of the same edge.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SumPlan:
    """``a + b``.  ``result`` is None when the sum is structurally zero."""

    result: Optional[Structure]
    a: Optional[EmbedPlan]
    b: Optional[EmbedPlan]
    pre_a: Optional["DensifyPlan"]
    pre_b: Optional["DensifyPlan"]
    const: Optional[int]  # unit + unit with equal structure: the constant
    additions: int

    def apply(self, va, vb, dtype):
        if self.result is None:
            return None
        if self.const is not None:
            return jnp.asarray(self.const, dtype)
        if self.pre_a is not None:
            va = self.pre_a.apply(va, dtype)
        if self.pre_b is not None:
            vb = self.pre_b.apply(vb, dtype)
        return _add(self.a.apply(va, dtype), self.b.apply(vb, dtype))


@functools.lru_cache(maxsize=65536)
def sum_plan(a: Structure, b: Structure) -> SumPlan:
    """Plan ``a + b`` (same ``out_shape`` and ``in_shape``)."""
    if a.out_shape != b.out_shape or a.in_shape != b.in_shape:
        raise ValueError(f"cannot add partials of shapes {a.out_shape, a.in_shape} and {b.out_shape, b.in_shape}")
    pre_a = pre_b = None
    work = _Work()
    ia, ib = work.add(a), work.add(b)
    pairs = [((g, k), (g + 2, k)) for g in (0, 1) for k in range(len(work.groups[g]))]
    if not work.align(pairs):
        pre_a, pre_b = densify_plan(a), densify_plan(b)
        a, b = pre_a.result, pre_b.result
        work = _Work()
        ia, ib = work.add(a), work.add(b)
        if not work.align(pairs):  # dense axes are single symbols: always refinable
            raise AssertionError("dense structures failed to align")
    sym_a = [s for g in (0, 1) for ax in work.groups[g] for s in ax]
    sym_b = [s for g in (2, 3) for ax in work.groups[g] for s in ax]
    key_to_class: dict = {}
    class_of_pos = []
    for sa, sb in zip(sym_a, sym_b):
        class_of_pos.append(key_to_class.setdefault((sa, sb), len(key_to_class)))
    n_classes = len(key_to_class)
    a_of = [0] * n_classes
    b_of = [0] * n_classes
    for (sa, sb), c in key_to_class.items():
        a_of[c], b_of[c] = sa, sb
    count_a: dict = {}
    count_b: dict = {}
    for c in range(n_classes):
        count_a[a_of[c]] = count_a.get(a_of[c], 0) + 1
        count_b[b_of[c]] = count_b.get(b_of[c], 0) + 1
    val_a = set(work.vals[ia] or ())
    val_b = set(work.vals[ib] or ())
    # result structure axes
    result_axes = []
    pos = 0
    for g in (0, 1):
        group = []
        for ax in work.groups[g]:
            group.append(tuple(class_of_pos[pos + j] for j in range(len(ax))))
            pos += len(ax)
        result_axes.append(tuple(group))
    class_size = lambda c: work.sizes[a_of[c]]
    sizes = {c: class_size(c) for c in range(n_classes)}
    same_partition = len(count_a) == n_classes and len(count_b) == n_classes
    if a.val is None and b.val is None and same_partition:
        total = a.sign + b.sign
        if total == 0:
            return SumPlan(None, None, None, None, None, None, 0)
        st, _ = make_structure(result_axes[0], result_axes[1], sizes, [], 1)
        return SumPlan(st, None, None, None, None, total, 0)
    classes = [c for c in range(n_classes)
               if a_of[c] in val_a or b_of[c] in val_b or count_a[a_of[c]] > 1 or count_b[b_of[c]] > 1]
    plan_a = _embed_plan(work, ia, a_of, classes, class_size, a.sign)
    plan_b = _embed_plan(work, ib, b_of, classes, class_size, b.sign)
    st, perm = make_structure(result_axes[0], result_axes[1], sizes, classes, 1)
    if perm != tuple(range(len(perm))):
        raise AssertionError("classes are numbered by first occurrence")
    return SumPlan(st, plan_a, plan_b, pre_a, pre_b, None, math.prod(plan_a.shape))


# ---------------------------------------------------------------------------
# Densify: every full axis one symbol, every symbol stored.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DensifyPlan:
    result: Structure
    embed: EmbedPlan
    merged_shape: tuple[int, ...]

    def apply(self, value, dtype):
        return reshape(self.embed.apply(value, dtype), self.merged_shape)


@functools.lru_cache(maxsize=16384)
def densify_plan(st: Structure) -> DensifyPlan:
    """Plan the fully dense form of ``st`` (size-1 axes stay symbol-free)."""
    work = _Work()
    work.add(st)
    positions = [s for g in (0, 1) for ax in work.groups[g] for s in ax]
    classes = list(range(len(positions)))
    plan = _embed_plan(work, 0, positions, classes, lambda c: work.sizes[positions[c]], st.sign)
    shapes = [n for n in st.out_shape + st.in_shape if n > 1]
    labels = list(range(len(st.out_shape) + len(st.in_shape)))
    n_out = len(st.out_shape)
    result, _ = structure_from_labels(st.out_shape, st.in_shape, labels[:n_out], labels[n_out:], labels,
                                      st.out_shape + st.in_shape)
    return DensifyPlan(result, plan, tuple(shapes))


def _band_symbols(st: Structure) -> set:
    """The symbols a band of ``st`` indexes (its ends and slots)."""
    return {b.out for b in st.bands} | {b.inn for b in st.bands} | {b.slot for b in st.bands}


@functools.lru_cache(maxsize=8)  # a sparse output asks three times (probe, kept entries, output); 1M entries take 0.1 s
def _entries(st: Structure) -> tuple[np.ndarray, dict]:
    """The structural nonzeros of ``st``: their ``(nse, n_axes)`` indices
    into ``out_shape + in_shape`` (one entry per combination of symbol
    indices, and per row and diagonal of a band) and, per symbol, each
    entry's index along it (read-only arrays: they are shared)."""
    banded = _band_symbols(st)
    plain = [s for s in range(len(st.sizes)) if s not in banded]
    # Entries: the grid of the plain symbols times, per band, its (row, diagonal) list.
    factors = [np.arange(st.sizes[s])[None, :] for s in plain]
    for b in st.bands:
        rows = np.concatenate([np.arange(lo, hi) for lo, hi in b.ranges]).astype(np.int64)
        slots = np.concatenate([np.full(hi - lo, k) for k, (lo, hi) in enumerate(b.ranges)]).astype(np.int64)
        cols = rows + np.asarray(b.offsets, np.int64)[slots]
        factors.append(np.stack([rows, cols, slots]))
    counts = [f.shape[1] for f in factors]
    grid = np.indices(counts).reshape(len(counts), -1) if counts else np.zeros((0, 1), np.int64)
    nse = grid.shape[1]
    index = {}
    for s, g in zip(plain, grid):
        index[s] = g
    for b, f, g in zip(st.bands, factors[len(plain):], grid[len(plain):]):
        index[b.out], index[b.inn], index[b.slot] = f[0][g], f[1][g], f[2][g]
    columns = []
    for ax in st.out_axes + st.in_axes:
        column = np.zeros(nse, np.int64)
        for s in ax:
            column = column * st.sizes[s] + index[s]
        columns.append(column)
    indices = np.stack(columns, axis=1) if columns else np.zeros((nse, 0), np.int64)
    for array in (indices, *index.values()):
        array.flags.writeable = False
    return indices, index


def entry_indices(st: Structure) -> np.ndarray:
    """The ``(nse, n_axes)`` indices of ``st``'s structural nonzeros, in the
    order :func:`to_bcoo` stores them."""
    return _entries(st)[0]


def entry_count(st: Structure) -> int:
    """How many structural nonzeros ``st`` has (the ``nse`` of :func:`to_bcoo`)."""
    banded = _band_symbols(st)
    count = math.prod(n for s, n in enumerate(st.sizes) if s not in banded)
    for b in st.bands:
        count *= sum(hi - lo for lo, hi in b.ranges)
    return count


def entries_are_distinct(st: Structure) -> bool:
    """Whether no two of ``st``'s entries (:func:`entry_indices`) share a
    position, so that :func:`entry_count` is the number of positions it
    covers: every symbol of more than one index is on an axis, except the
    slot of a band whose diagonals have distinct offsets (a band with two
    diagonals at one offset stores that diagonal twice)."""
    on_axes = {s for ax in st.out_axes + st.in_axes for s in ax}
    told_apart = {b.slot for b in st.bands if b.slot is not None and len(set(b.offsets)) == len(b.offsets)}
    return all(n == 1 or s in on_axes or s in told_apart for s, n in enumerate(st.sizes))


def entry_positions(st: Structure) -> tuple[np.ndarray, np.ndarray]:
    """Each structural nonzero's flat row (into ``out_shape``) and column
    (into ``in_shape``), in :func:`entry_indices` order."""
    indices, _ = _entries(st)
    n_out = len(st.out_axes)
    return flat_positions(indices[:, :n_out], st.out_shape), flat_positions(indices[:, n_out:], st.in_shape)


def flat_positions(indices: np.ndarray, shape: tuple) -> np.ndarray:
    """Row-major flat positions in ``shape`` of ``(n, len(shape))`` indices."""
    return np.ravel_multi_index(tuple(indices.T), shape) if shape else np.zeros(len(indices), np.int64)


def entry_values(st: Structure) -> Optional[np.ndarray]:
    """Each structural nonzero's flat index into the stored value (in
    :func:`entry_indices` order); None for a unit partial."""
    if st.val is None:
        return None
    indices, index = _entries(st)
    if not st.val:
        return np.zeros(len(indices), np.int64)
    return np.ravel_multi_index(tuple(index[s] for s in st.val), st.val_shape)


def pattern(st: Structure) -> np.ndarray:
    """Where ``st`` is structurally nonzero: a boolean ``(M, N)`` array,
    ``M = prod(out_shape)`` and ``N = prod(in_shape)``."""
    out = np.zeros((math.prod(st.out_shape), math.prod(st.in_shape)), bool)
    out[entry_positions(st)] = True
    return out


def is_full(st: Structure) -> bool:
    """Whether every entry of ``st`` is a structural nonzero (no band, no delta)."""
    symbols = [s for ax in st.out_axes + st.in_axes for s in ax]
    return not st.bands and len(symbols) == len(set(symbols))


@functools.lru_cache(maxsize=1024)
def reached_values(result: Structure, outer: Structure, inner: Structure) -> Optional[np.ndarray]:
    """Which values of ``result`` (the product ``outer ∘ inner``) some path
    reaches, as a boolean array of ``result.val_shape``; None when all of
    them, or when ``result`` replicates one value over entries that differ
    (then no mask of its value can tell them apart).

    A product of dense forms multiplies every entry of one operand by the
    other's structural zeros, so a NaN or inf partial would reach entries
    no path reaches (``nan * 0``); this mask keeps them at exactly 0.
    Costs at most one boolean ``(M, K) @ (K, N)`` product at trace time
    (none when an operand has no structural zero)."""
    if result.val is None or (is_full(outer) and is_full(inner)):
        return None
    if is_full(outer):  # a column is reached where the inner has an entry in it
        reach = np.broadcast_to(pattern(inner).any(axis=0), (math.prod(outer.out_shape), math.prod(inner.in_shape)))
    elif is_full(inner):
        reach = np.broadcast_to(pattern(outer).any(axis=1)[:, None],
                                (math.prod(outer.out_shape), math.prod(inner.in_shape)))
    else:
        reach = (pattern(outer).astype(np.float32) @ pattern(inner).astype(np.float32)) > 0
    if reach.all():
        return None
    n_sym = len(result.sizes)

    def flat(axes, shape):
        """Each entry's flat index into ``shape``, over the grid of all symbols."""
        at = np.zeros([1] * n_sym, np.int64)
        for ax, n in zip(axes, shape):
            index = np.zeros([1] * n_sym, np.int64)
            for s in ax:
                index = index * result.sizes[s] + np.arange(result.sizes[s]).reshape(
                    [-1 if t == s else 1 for t in range(n_sym)])
            at = at * n + index
        return at

    entries = np.broadcast_to(reach[flat(result.out_axes, result.out_shape), flat(result.in_axes, result.in_shape)],
                              result.sizes)
    for s in reversed(range(n_sym)):
        if s not in result.val:
            first = np.take(entries, [0], axis=s)
            if not (entries == first).all():
                return None
            entries = first
    return np.reshape(entries, result.val_shape)


@dataclasses.dataclass(frozen=True)
class WrappedPlan:
    """A plan that runs ``plan`` with steps around it that multiply nothing:
    its result, multiplications and additions are ``plan``'s."""

    plan: Any

    @property
    def result(self) -> Structure:
        return self.plan.result

    @property
    def mults(self) -> int:
        return self.plan.mults

    @property
    def additions(self) -> int:
        return self.plan.additions


@dataclasses.dataclass(frozen=True)
class ReachMasked(WrappedPlan):
    """A product plan that runs on dense forms, with its result's entries
    that no path reaches kept at exactly 0 (see :func:`reached_values`);
    the mask is a ``select``."""

    outer: Structure
    inner: Structure

    def apply(self, v_outer, v_inner, dtype):
        value = self.plan.apply(v_outer, v_inner, dtype)
        reached = reached_values(self.plan.result, self.outer, self.inner)
        if reached is None:
            return value
        value = jnp.reshape(value, reached.shape)
        return lax.select(jnp.asarray(reached), value, lax.full(value.shape, 0, value.dtype))


def take_flat(x, flat: np.ndarray):
    """``x.reshape(-1)[flat]`` for in-range constant indices ``flat``: one
    gather (``jax.numpy`` indexing stages a dozen equations to normalise
    indices it cannot know are in range)."""
    numbers = lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=(0,), start_index_map=(0,))
    return lax.gather(reshape(x, (x.size,)), np.asarray(flat, np.int32)[:, None], numbers, (1,),
                      indices_are_sorted=bool(np.all(flat[1:] >= flat[:-1])), unique_indices=False,
                      mode=lax.GatherScatterMode.CLIP)


def to_bcoo(st: Structure, value, dtype=None):
    """The partial as a ``jax.experimental.sparse.BCOO`` of shape
    ``out_shape + in_shape`` holding exactly its structural nonzeros
    (indices are trace-time constants, so the result stays jittable)."""
    from jax.experimental import sparse

    dtype = dtype if dtype is not None else (jnp.result_type(float) if value is None else value.dtype)
    indices, index = _entries(st)
    nse = len(indices)
    if st.val is None:
        data = jnp.full((nse,), st.sign, dtype)
    elif not st.bands:  # st.val is sorted by symbol, so the value's axes are already in grid order
        shape = [st.sizes[s] if s in st.val else 1 for s in range(len(st.sizes))]
        data = jnp.broadcast_to(jnp.reshape(jnp.asarray(value, dtype), shape), st.sizes).reshape(nse)
    elif not st.val:
        data = jnp.full((nse,), jnp.asarray(value, dtype))
    else:
        data = take_flat(jnp.asarray(value, dtype), entry_values(st))
    return sparse.BCOO((data, jnp.asarray(indices, np.int32)), shape=st.out_shape + st.in_shape)


# ---------------------------------------------------------------------------
# Product of two partials along a chain u -> v -> w.
# ---------------------------------------------------------------------------


def _diagonal(value, i: int, j: int):
    """The diagonal of axes ``i`` and ``j`` (equal sizes), appended last.

    ``jnp.diagonal`` multiplies by a mask; a strided slice of the flattened
    pair does no arithmetic."""
    n = value.shape[i]
    rest = [k for k in range(value.ndim) if k not in (i, j)]
    value = jnp.transpose(value, rest + [i, j])
    return jnp.reshape(value, value.shape[:-2] + (n * n,))[..., ::n + 1]


@dataclasses.dataclass(frozen=True)
class _Operand:
    """How one factor's value is prepared: split, diagonals, reductions."""

    split_shape: tuple[int, ...]
    letters: tuple[int, ...]  # root symbol per split axis (may repeat)
    keep: tuple[int, ...]  # distinct roots kept after diagonal + reduction, in order

    def apply(self, value):
        value = reshape(value, self.split_shape)
        letters = list(self.letters)
        # Diagonals of repeated roots, by a strided slice (no products).
        while len(set(letters)) != len(letters):
            seen = {}
            for i, r in enumerate(letters):
                if r in seen:
                    value = _diagonal(value, seen[r], i)
                    letters = [l for k, l in enumerate(letters) if k not in (i, seen[r])] + [r]
                    break
                seen[r] = i
        summed = tuple(i for i, r in enumerate(letters) if r not in self.keep)
        if summed:
            value = jnp.sum(value, axis=summed)
            letters = [r for r in letters if r in self.keep]
        return transpose(value, [letters.index(r) for r in self.keep])


@dataclasses.dataclass(frozen=True)
class ProductPlan:
    """``outer @ inner`` for ``outer = ∂w/∂v`` and ``inner = ∂v/∂u``.

    ``mults`` is the exact number of scalar multiplications of ``apply``:
    the size of the iteration space of the one ``mul``/``dot_general`` it
    runs, plus the size of the result when a multiplicity factor is applied.
    """

    result: Structure
    mults: int
    pre_outer: Optional[DensifyPlan]
    pre_inner: Optional[DensifyPlan]
    outer: Optional[_Operand]
    inner: Optional[_Operand]
    out_letters: tuple[int, ...]
    factor: int
    sign: int

    @property
    def on_dense_forms(self) -> bool:
        return self.pre_outer is not None or self.pre_inner is not None

    def apply(self, v_outer, v_inner, dtype):
        if self.pre_outer is not None:
            v_outer = self.pre_outer.apply(v_outer, dtype)
        if self.pre_inner is not None:
            v_inner = self.pre_inner.apply(v_inner, dtype)
        if self.outer is None and self.inner is None:
            return None if self.result.val is None else jnp.asarray(self.sign * self.factor, dtype)
        if self.outer is not None and self.inner is not None:
            a, b = self.outer.apply(v_outer), self.inner.apply(v_inner)
            out = contract(a, self.outer.keep, b, self.inner.keep, self.out_letters)
        else:
            op, v = (self.outer, v_outer) if self.outer is not None else (self.inner, v_inner)
            out = op.apply(v)
            out = transpose(out, [op.keep.index(r) for r in self.out_letters])
        if self.sign < 0:
            out = lax.neg(out)
        if self.factor != 1:
            out = out * jnp.asarray(self.factor, out.dtype)
        return out


def contract(a, la: Sequence[int], b, lb: Sequence[int], lout: Sequence[int]):
    """``einsum(la, lb -> lout)`` with distinct letters per operand and every
    letter of ``la``/``lb`` either in ``lout`` or shared (pre-reduced).

    Runs exactly one ``mul`` (no shared letter summed) or one ``dot_general``;
    either way the number of multiplications is the product of the sizes of
    the union of letters.
    """
    dtype = jnp.result_type(a, b)
    a, b = a.astype(dtype), b.astype(dtype)
    la, lb = list(la), list(lb)
    contracted = [l for l in la if l in lb and l not in lout]
    if not contracted:
        # broadcast multiply: both operands laid out over lout
        def lay(x, letters):
            perm = sorted(range(len(letters)), key=lambda i: lout.index(letters[i]))
            x = transpose(x, perm)
            present = [letters[i] for i in perm]
            shape = [x.shape[present.index(l)] if l in present else 1 for l in lout]
            return reshape(x, shape)

        if not lout:
            return a * b
        a, b = lay(a, la), lay(b, lb)
        shape = tuple(max(m, n) for m, n in zip(a.shape, b.shape))
        return lax.mul(_broadcast(a, shape), _broadcast(b, shape))
    batch = [l for l in la if l in lb and l in lout]
    dims = (([la.index(l) for l in contracted], [lb.index(l) for l in contracted]),
            ([la.index(l) for l in batch], [lb.index(l) for l in batch]))
    out = lax.dot_general(a, b, dims)
    got = batch + [l for l in la if l not in lb] + [l for l in lb if l not in la]
    perm = [got.index(l) for l in lout]
    return transpose(out, perm)


@functools.lru_cache(maxsize=65536)
def product_plan(outer: Structure, inner: Structure) -> ProductPlan:
    """Plan ``outer ∘ inner``; ``outer.in_shape`` must equal ``inner.out_shape``."""
    if outer.in_shape != inner.out_shape:
        raise ValueError(f"shape mismatch in product: {outer.in_shape} vs {inner.out_shape}")
    pre_outer = pre_inner = None
    attempts = [(None, None), ("inner", None), ("inner", "outer")]
    for dens in attempts:
        o = outer if "outer" not in dens else densify_plan(outer).result
        i = inner if "inner" not in dens else densify_plan(inner).result
        work = _Work()
        io, ii = work.add(o), work.add(i)
        pairs = [((1, k), (2, k)) for k in range(len(o.in_axes))]
        if work.align(pairs):
            pre_outer = densify_plan(outer) if "outer" in dens else None
            pre_inner = densify_plan(inner) if "inner" in dens else None
            break
    else:  # pragma: no cover - dense axes always align
        raise AssertionError("product structures failed to align")
    uf = UnionFind(len(work.sizes))
    for ax_o, ax_i in zip(work.groups[1], work.groups[2]):
        for so, si in zip(ax_o, ax_i):
            uf.union(so, si)
    res_out = [tuple(uf.find(s) for s in ax) for ax in work.groups[0]]
    res_in = [tuple(uf.find(s) for s in ax) for ax in work.groups[3]]
    order = []
    for ax in res_out + res_in:
        for r in ax:
            if r not in order:
                order.append(r)
    in_result = set(order)
    v_roots = {uf.find(s) for ax in work.groups[1] for s in ax}
    vo = None if work.vals[io] is None else [uf.find(s) for s in work.vals[io]]
    vi = None if work.vals[ii] is None else [uf.find(s) for s in work.vals[ii]]
    set_o, set_i = set(vo or ()), set(vi or ())
    factor = math.prod(work.sizes[r] for r in v_roots - in_result - set_o - set_i)
    sizes = {r: work.sizes[r] for r in order}

    def operand(val_syms, roots, other):
        if roots is None:
            return None
        keep = []
        for r in roots:
            if (r in in_result or r in other) and r not in keep:
                keep.append(r)
        return _Operand(tuple(work.sizes[s] for s in val_syms), tuple(roots), tuple(keep))

    op_o = operand(work.vals[io], vo, set_i)
    op_i = operand(work.vals[ii], vi, set_o)
    sign = o.sign if vo is None else 1
    sign *= i.sign if vi is None else 1
    if op_o is None and op_i is None:
        if factor == 1:
            st, _ = make_structure(res_out, res_in, sizes, None, sign)
        else:
            st, _ = make_structure(res_out, res_in, sizes, [], 1)
        return ProductPlan(st, 0, pre_outer, pre_inner, None, None, (), factor, sign)
    out_letters = [r for r in order if r in set_o or r in set_i]
    st, perm = make_structure(res_out, res_in, sizes, out_letters, 1)
    out_letters = [out_letters[p] for p in perm]
    n_out = math.prod(work.sizes[r] for r in out_letters)
    if op_o is not None and op_i is not None:
        mults = math.prod(work.sizes[r] for r in set(op_o.keep) | set(op_i.keep))
    else:
        mults = 0
    if factor != 1:
        mults += n_out
    return ProductPlan(st, mults, pre_outer, pre_inner, op_o, op_i, tuple(out_letters), factor, sign)
