"""Products, sums and dense forms of structures with bands (shifted data).

A :class:`~ccjax.structure.Band` stores a slice, pad or concatenation as a
diagonal at an offset, and a stencil as a few of them, so an elimination
through shifted data multiplies ``rows x diagonals`` numbers instead of a
dense ``rows x columns`` block.  Every plan here has the interface of the
plain plans in :mod:`ccjax.structure` (``result``, ``mults``,
``additions``, ``apply``) and the same contract: ``mults`` is exactly what
``apply`` multiplies.  Shifts are pads and static slices, merges of equal
diagonals are additions, and the dense form is a ``select``: none of them
multiplies.

Cases the band algebra does not cover (a band symbol that a reshape would
split, a band summed against a dense block or one whose end is on no axis)
fall back to the band's dense form, which is exact; the product of dense
forms is masked to the entries some path reaches
(:class:`~ccjax.structure.core.ReachMasked`), so a NaN partial never lands
on a structural zero.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from ccjax.structure.core import (Band, Structure, UnionFind, WrappedPlan, _add, _embed_plan, _Operand, _Work,
                                  clip_range, contract, densify_plan, make_structure, product_plan, reshape, sum_plan,
                                  transpose)


#: Most rows an element broadcast into a band may spread over (one diagonal each).
MAX_SPREAD = 8

# ---------------------------------------------------------------------------
# Array steps: shift rows onto diagonals, merge equal diagonals.
# ---------------------------------------------------------------------------


def shift_rows(x, axis: int, n_rows: int, offsets: Sequence[int]):
    """``y[..., i, k, ...] = x[..., i + offsets[k], ...]`` (zero outside ``x``).

    Axis ``axis`` of ``x`` (the band's in side) becomes the out rows
    (``n_rows``) followed by one axis of diagonals when there are several.
    Pads and static slices only."""
    n = x.shape[axis]
    lo, hi = max(0, -min(offsets)), max(0, max(offsets) + n_rows - n)
    if lo or hi:
        config = [(0, 0, 0)] * x.ndim
        config[axis] = (lo, hi, 0)
        x = lax.pad(x, lax.full((), 0, x.dtype), config)
    pieces = [lax.slice_in_dim(x, d + lo, d + lo + n_rows, axis=axis) for d in offsets]
    if len(pieces) == 1:
        return pieces[0]
    return lax.concatenate([reshape(p, p.shape[:axis + 1] + (1,) + p.shape[axis + 1:]) for p in pieces], axis + 1)


def merge_slots(x, axis: int, groups: Sequence[Sequence[tuple]], rows: Optional[int] = None):
    """``y[..., g, ...] = sum_{k in groups[g]} x[..., k, ...]``; a single group
    drops the axis, except that every slot in its own group, in order, is
    ``x`` unchanged.  A member ``(k, lo, hi)`` with ``lo`` not None keeps
    only rows ``[lo, hi)`` of axis ``rows`` (a diagonal merged into a wider
    one).  See :func:`sum_slots`."""
    if [list(g) for g in groups] == [[(k, None, None)] for k in range(x.shape[axis])]:
        return x
    out = sum_slots(x, axis, groups, rows) if x.size >= LAYERED_MIN_SIZE else _sum_members(x, axis, groups, rows)
    return lax.squeeze(out, (axis,)) if len(groups) == 1 else out


#: Fewest entries of a value whose slots :func:`merge_slots` sums by layers
#: (:func:`sum_slots`) and :class:`BandedSumPlan` merges per operand.  On
#: smaller values a slice per member ran faster, though it stages more
#: equations: a robot arm's 4x4 transforms (values of 4 to 64 entries)
#: took 65-70 µs a call by layers against 36-40 µs member by member
#: (fastest tenths of 2,000 calls, alternating runs); the 1D Euler flux
#: (values of 762 to 9,000 entries) 220 µs against 330 µs and 0.15 s less
#: to compile by layers.
LAYERED_MIN_SIZE = 256


def _sum_members(x, axis: int, groups: Sequence[Sequence[tuple]], rows: Optional[int]):
    """:func:`sum_slots` one member at a time: a slice per member, a
    ``select`` per masked member, the groups concatenated."""
    merged = []
    for group in groups:
        part = None
        for k, lo, hi in group:
            term = lax.slice_in_dim(x, k, k + 1, axis=axis)
            if lo is not None:
                i = lax.broadcasted_iota(np.int32, term.shape, rows)
                keep = lax.bitwise_and(lax.ge(i, np.int32(lo)), lax.lt(i, np.int32(hi)))
                term = lax.select(keep, term, lax.full(term.shape, 0, term.dtype))
            part = term if part is None else _add(part, term)
        if part is None:
            part = lax.full(x.shape[:axis] + (1,) + x.shape[axis + 1:], 0, x.dtype)
        merged.append(part)
    return merged[0] if len(merged) == 1 else lax.concatenate(merged, axis)


def sum_slots(x, axis: int, groups: Sequence[Sequence[tuple]], rows: Optional[int] = None):
    """:func:`merge_slots` keeping the axis (``len(groups)`` slots); a slot may
    be a member of several groups, and an empty group is zeros.

    The sum goes by layers: layer ``r`` holds every group's ``r``-th member
    (zero where a group has fewer), read as runs of consecutive slots, so
    the op count grows with the runs, not with the slots.  Static slices,
    pads, selects and additions only (a reduction over the slots would be
    a kernel of its own; slices and additions fuse into the consumer)."""
    width = len(groups)
    if [list(g) for g in groups] == [[(k, None, None)] for k in range(x.shape[axis])]:
        return x
    if not any(groups):
        return lax.full(x.shape[:axis] + (width,) + x.shape[axis + 1:], 0, x.dtype)
    out = None
    for r in range(max(len(g) for g in groups)):
        layer = [g[r] if r < len(g) else None for g in groups]
        term = _take_slots(x, axis, [None if m is None else m[0] for m in layer])
        if any(m is not None and m[1] is not None for m in layer):
            keep = np.ones((x.shape[rows], width), bool)
            for g, m in enumerate(layer):
                if m is not None and m[1] is not None:
                    keep[:m[1], g] = keep[m[2]:, g] = False
            keep = lax.broadcast_in_dim(keep, term.shape, (rows, axis))
            term = lax.select(keep, term, lax.full(term.shape, 0, term.dtype))
        out = term if out is None else _add(out, term)
    return out


def _take_slots(x, axis: int, slots: Sequence[Optional[int]]):
    """``y[..., g, ...] = x[..., slots[g], ...]``, zero where ``slots[g]`` is
    None (not all are): one slice per run of consecutive slots, pads for
    the zeros."""
    runs: list = []  # [first slot or None, length]
    for s in slots:
        last = runs[-1] if runs else None
        if last is not None and (s is None and last[0] is None
                                 or s is not None and last[0] is not None and s == last[0] + last[1]):
            last[1] += 1
        else:
            runs.append([s, 1])
    zero = lax.full((), 0, x.dtype)
    lead = runs.pop(0)[1] if runs[0][0] is None else 0
    trail = runs.pop()[1] if runs and runs[-1][0] is None else 0
    pieces = []
    for s, n in runs:
        if s is None:
            shape = x.shape[:axis] + (n,) + x.shape[axis + 1:]
            pieces.append(lax.full(shape, 0, x.dtype))
        elif (s, n) == (0, x.shape[axis]):
            pieces.append(x)
        else:
            pieces.append(lax.slice_in_dim(x, s, s + n, axis=axis))
    out = pieces[0] if len(pieces) == 1 else lax.concatenate(pieces, axis)
    if lead or trail:
        config = [(0, 0, 0)] * x.ndim
        config[axis] = (lead, trail, 0)
        out = lax.pad(out, zero, config)
    return out


def _groups(keys: Sequence) -> list[list[int]]:
    """Indices of equal keys, in order of first occurrence."""
    index: dict = {}
    for k, key in enumerate(keys):
        index.setdefault(key, []).append(k)
    return list(index.values())


def fold(offsets: Sequence[int], ranges: Sequence[tuple[int, int]], maskable: bool):
    """Merge diagonals at one offset into as few as possible.

    Equal ``(offset, range)`` always merge; with ``maskable`` (the value has
    the row axis) diagonals at one offset whose ranges overlap or touch
    merge into their hull, each member keeping its own rows.  Returns the
    groups for :func:`merge_slots` and the merged offsets and ranges.
    """
    if not maskable:
        groups = _groups(list(zip(offsets, ranges)))
        return ([tuple((k, None, None) for k in g) for g in groups], tuple(offsets[g[0]] for g in groups),
                tuple(ranges[g[0]] for g in groups))
    clusters: list = []  # [offset, lo, hi, members]
    for k in sorted(range(len(offsets)), key=lambda k: (offsets[k], ranges[k])):
        d, (lo, hi) = offsets[k], ranges[k]
        last = clusters[-1] if clusters else None
        if last is not None and last[0] == d and lo <= last[2]:
            last[2] = max(last[2], hi)
            last[3].append(k)
        else:
            clusters.append([d, lo, hi, [k]])
    clusters.sort(key=lambda c: min(c[3]))  # keep the diagonals' first order
    groups = [tuple((k, None, None) if ranges[k] == (lo, hi) else (k,) + tuple(ranges[k]) for k in members)
              for _, lo, hi, members in clusters]
    return groups, tuple(c[0] for c in clusters), tuple((c[1], c[2]) for c in clusters)


# ---------------------------------------------------------------------------
# Dense form: every band becomes an ordinary (row, column) pair in the value.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DebandPlan:
    """``st`` with its bands written out as stored ``(row, column)`` pairs."""

    source: Structure
    result: Structure
    perm: tuple[int, ...]

    def apply(self, value, dtype):
        st = self.source
        if st.val is None:
            value, letters = jnp.asarray(st.sign, dtype), []
        else:
            value, letters = jnp.reshape(jnp.asarray(value, dtype), tuple(st.sizes[s] for s in st.val)), list(st.val)
        if (len(st.bands) == 1 and st.bands[0].slot is not None
                and sorted(letters) == sorted((st.bands[0].out, st.bands[0].slot))):
            band = st.bands[0]
            stacked = value if letters[0] == band.out else jnp.transpose(value)
            value = write_stacked_diagonals(stacked, band.offsets, band.ranges, st.sizes[band.inn], dtype)
            return transpose(_squeeze(value), self.perm)
        for band in st.bands:
            # Each diagonal is sliced off before the rows of a replicated
            # value are broadcast: XLA then reads a diagonal of a value built
            # by ``concatenate`` (a sum's) as that operand, and fuses the write
            # into uniform code (a 4-parameter curve fit on 4,096 points: 90
            # against 45 µs with the broadcast first).
            pieces = [value if band.slot not in letters
                      else lax.index_in_dim(value, k, letters.index(band.slot), keepdims=False)
                      for k in range(len(band.offsets))]
            if band.slot in letters:
                letters.remove(band.slot)
            if band.out not in letters:  # rows of a replicated value
                pieces = [lax.broadcast_in_dim(p, p.shape + (st.sizes[band.out],), tuple(range(p.ndim)))
                          for p in pieces]
                letters.append(band.out)
            value = write_diagonals(pieces, band.offsets, band.ranges, letters.index(band.out),
                                    st.sizes[band.inn], dtype)
            letters.append(band.inn)
        value = _squeeze(value)
        return transpose(value, self.perm)


def write_diagonals(pieces: Sequence, offsets: Sequence[int], ranges: Sequence[tuple[int, int]], rows: int,
                    n_in: int, dtype):
    """``out[..., i, ..., i + offsets[k]] = pieces[k][..., i, ...]`` for ``i``
    in ``ranges[k]``, zero elsewhere; ``out`` has the pieces' shape plus a
    last axis of ``n_in`` columns, and axis ``rows`` of the pieces is ``i``.
    Diagonals that share an offset (on rows apart) add up, as the band's
    sum says.  No multiplication.

    A matrix of several diagonals (vector pieces) is one scatter-add of the
    entries the band holds into zeros; anything else is one select per
    diagonal over the block.  Measured on XLA:CPU (``docs/benchmarks.md``):
    the selects test every entry once per diagonal and, at several
    diagonals, the write gets split across threads whose hand-off costs
    more than the write (a 64x64 block of 7 diagonals: 120 µs median
    against 20-30 µs), while a scatter with windows (pieces with more axes,
    e.g. a 2-D stencil's second band) is several times slower than the
    selects."""
    live = [(p, d, lo, hi) for p, d, (lo, hi) in zip(pieces, offsets, ranges) if lo < hi]
    shape = tuple(pieces[0].shape) + (n_in,)
    zeros = lax.full(shape, 0, dtype)
    if len(live) > 1 and len(shape) == 2:
        # The diagonals side by side (ascending offsets), each padded with
        # zeros to the rows any of them covers, then flattened: the entries
        # row by row, columns ascending, so the indices are sorted as built
        # (sorted indices compile faster: 0.11 s against 0.17 s at 64x64),
        # and there is no gather, so a nested jacve reads this write as a
        # scatter of pads of slices and keeps it sparse.  A padded entry
        # adds 0 in its row, at the column nearest its diagonal's.
        live = sorted(live, key=lambda e: e[1])
        first, last = min(lo for *_, lo, _ in live), max(hi for *_, hi in live)
        zero = lax.full((), 0, dtype)
        columns = [lax.pad(lax.slice_in_dim(p, lo, hi).astype(dtype), zero, [(lo - first, last - hi, 0)])
                   for p, _, lo, hi in live]
        updates = lax.concatenate([reshape(c, c.shape + (1,)) for c in columns], 1)
        updates = reshape(updates, (updates.size,))
        return _scatter_diagonals(zeros, updates, np.arange(first, last), [d for _, d, _, _ in live], True)
    iota = lambda axis: lax.broadcasted_iota(np.int32, shape, axis)
    i, j = iota(rows), iota(len(shape) - 1)
    # Diagonals at distinct offsets never meet, so one select each writes
    # them all, and a row range is tested only where it is narrower than
    # the rows the diagonal crosses the block on.
    shared = {d for d, n in Counter(offsets).items() if n > 1}
    out = zeros
    for piece, d, lo, hi in live:
        keep = lax.eq(j, lax.add(i, np.int32(d)))
        if d in shared or (lo, hi) != clip_range(0, shape[rows], d, shape[rows], n_in):
            keep = lax.bitwise_and(keep, lax.bitwise_and(lax.ge(i, np.int32(lo)), lax.lt(i, np.int32(hi))))
        spread = lax.broadcast_in_dim(piece.astype(dtype), shape, tuple(range(piece.ndim)))
        out = _add(out, lax.select(keep, spread, zeros)) if d in shared else lax.select(keep, spread, out)
    return out


def write_stacked_diagonals(stacked, offsets: Sequence[int], ranges: Sequence[tuple[int, int]], n_in: int, dtype):
    """:func:`write_diagonals` of a band stored as one ``(rows, diagonals)``
    value, a matrix: one ``select`` keeps each diagonal's rows, one
    scatter-add writes them all, where slicing the diagonals apart first
    stages five equations per diagonal (five Jacobi sweeps of a periodic
    grid: a band of 21 diagonals, 68 fusions and 0.83 s to compile the
    Jacobian program)."""
    rows, width = stacked.shape
    live = [k for k, (lo, hi) in enumerate(ranges) if lo < hi]
    if not live:
        return lax.full((rows, n_in), 0, dtype)
    first, last = min(ranges[k][0] for k in live), max(ranges[k][1] for k in live)
    i = np.arange(first, last)
    keep = np.stack([(lo <= i) & (i < hi) for lo, hi in ranges], 1)
    window = lax.slice_in_dim(stacked.astype(dtype), first, last)
    if not keep.all():
        window = lax.select(jnp.asarray(keep), window, lax.full(window.shape, 0, dtype))
    # A row's entries in storage order: the indices are sorted (faster to
    # compile) when the offsets ascend.  A kept-out entry adds 0 in its row.
    return _scatter_diagonals(lax.full((rows, n_in), 0, dtype), reshape(window, (window.size,)), i, offsets,
                              list(offsets) == sorted(offsets))


def _scatter_diagonals(zeros, updates, rows: np.ndarray, offsets: Sequence[int], in_order: bool):
    """``zeros`` (a matrix) plus ``updates``: entry
    ``r * len(offsets) + k`` at row ``rows[r]``, column ``rows[r] +
    offsets[k]`` (clipped into the columns: a padded entry adds 0 in its
    row, at the column nearest its diagonal's), one scatter-add.
    ``in_order``: the indices come sorted (ascending offsets)."""
    i = np.repeat(rows, len(offsets))
    j = np.clip(i + np.tile(np.asarray(offsets), len(rows)), 0, zeros.shape[1] - 1)
    # Every index is in range, so CLIP changes nothing here; unlike
    # PROMISE_IN_BOUNDS it keeps JAX's forward mode of the Jacobian
    # program equal to its reverse mode
    # (``ccjax._jaxpr.forward_matches_reverse``), which nested Jacobians use.
    numbers = lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0, 1),
                                          scatter_dims_to_operand_dims=(0, 1))
    return lax.scatter_add(zeros, jnp.asarray(np.stack([i, j], 1), np.int32), updates,
                           numbers, indices_are_sorted=in_order,
                           unique_indices=len(set(zip(i.tolist(), j.tolist()))) == len(i),
                           mode=lax.GatherScatterMode.CLIP)


def _deband_letters(st: Structure) -> list[int]:
    """Value letters of :meth:`DebandPlan.apply`'s output, in its order."""
    letters = [] if st.val is None else list(st.val)
    for band in st.bands:
        if band.out not in letters:
            letters.append(band.out)
        if band.slot in letters:
            letters.remove(band.slot)
        letters.append(band.inn)
    return letters


def deband_plan(st: Structure) -> DebandPlan:
    """Plan the band-free form of ``st`` (same partial, bands stored densely)."""
    sizes = dict(enumerate(st.sizes))
    letters = [s for s in _deband_letters(st) if st.sizes[s] > 1]
    result, perm = make_structure(st.out_axes, st.in_axes, sizes, letters, 1)
    return DebandPlan(st, result, perm)


def _squeeze(x):
    """Drop axes of size 1 (band ends of size 1; values have no others)."""
    shape = tuple(n for n in x.shape if n != 1)
    return reshape(x, shape)


@dataclasses.dataclass(frozen=True)
class Chain:
    """Two preparation steps, one after the other (``apply(value, dtype)``)."""

    first: Any
    second: Optional[Any]

    @property
    def result(self) -> Structure:
        return (self.second or self.first).result

    def apply(self, value, dtype):
        value = self.first.apply(value, dtype)
        return value if self.second is None else self.second.apply(value, dtype)


def densify(st: Structure):
    """Plan the fully dense form of a structure, with bands or without."""
    if not st.bands:
        return densify_plan(st)
    deband = deband_plan(st)
    return Chain(deband, densify_plan(deband.result))


# ---------------------------------------------------------------------------
# Product.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Merge:
    """Diagonal pairs ``(k1, k2)`` of a composed band folded into its slot."""

    parts: int  # how many of (k1, k2) index the value (1 or 2)
    groups: tuple[tuple[tuple, ...], ...]  # see merge_slots
    rows: int  # the band's row letter


def unshift_rows(x, axis: int, slot_axis: Optional[int], n_cols: int, offsets: Sequence[int],
                 ranges: Sequence[tuple[int, int]]):
    """``y[..., j, k, ...] = x[..., j - offsets[k], ...]`` where that row is in
    ``ranges[k]``, else 0: a band's rows summed away, its value moved onto
    its columns (axis ``axis`` becomes the columns, followed by the
    diagonals when there are several; an existing diagonal axis
    ``slot_axis`` is used per diagonal).  One static slice and one pad per
    diagonal, and a concatenation of the diagonals."""
    if slot_axis is not None:
        order = [a for a in range(x.ndim) if a != slot_axis]
        order.insert(order.index(axis) + 1, slot_axis)
        x = transpose(x, order)
        axis = order.index(axis)
    elif len(offsets) > 1:  # every diagonal reads x: a slot axis of size 1 to slice them from
        x = reshape(x, x.shape[:axis + 1] + (1,) + x.shape[axis + 1:])
    has_slot = slot_axis is not None or len(offsets) > 1
    zero = lax.full((), 0, x.dtype)
    pieces = []
    for k, (d, (lo, hi)) in enumerate(zip(offsets, ranges)):
        if lo >= hi:  # an empty diagonal
            shape = list(x.shape)
            shape[axis] = n_cols
            if has_slot:
                shape[axis + 1] = 1
            pieces.append(lax.full(shape, 0, x.dtype))
            continue
        start, limit = [0] * x.ndim, list(x.shape)
        start[axis], limit[axis] = lo, hi
        if slot_axis is not None:
            start[axis + 1], limit[axis + 1] = k, k + 1
        elif has_slot:
            start[axis + 1], limit[axis + 1] = 0, 1
        config = [(0, 0, 0)] * x.ndim
        config[axis] = (lo + d, n_cols - hi - d, 0)
        pieces.append(lax.pad(lax.slice(x, start, limit), zero, config))
    out = pieces[0] if len(pieces) == 1 else lax.concatenate(pieces, axis + 1)
    return lax.squeeze(out, (axis + 1,)) if has_slot and len(pieces) == 1 else out


@dataclasses.dataclass(frozen=True)
class _Steps:
    """Array steps on one operand's value, after :class:`_Operand`, with the
    value letters they leave (``letters``)."""

    steps: tuple
    letters: tuple

    def apply(self, value, dtype):
        for step in self.steps:
            kind = step[0]
            if kind == "ones":
                value = jnp.ones((step[1],), dtype) if value is None else lax.broadcast_in_dim(
                    value, (step[1],) + value.shape, tuple(range(1, value.ndim + 1)))
            elif kind == "shift":
                value = shift_rows(value, *step[1:])
            elif kind == "unshift":
                value = unshift_rows(value, *step[1:])
            elif kind == "sum":
                value = jnp.sum(value, axis=step[1])
            else:  # squeeze
                value = _squeeze(value)
        return value


def _plan_steps(letters: list, sizes, shifts: dict, unshifts: dict, ones: Optional[int]) -> tuple:
    """Steps and resulting letters for one operand (before the final sums).

    ``shifts[r] = band`` (outer band fixing root ``r``: ``r`` -> rows,
    diagonals); ``unshifts[r] = band`` (inner band whose rows ``r`` are summed:
    ``r`` -> columns, diagonals); ``ones``: a root to add in front as ones."""
    steps, letters = [], list(letters)
    if ones is not None:
        steps.append(("ones", sizes[ones]))
        letters.insert(0, ones)
    for r, b in shifts.items():
        if r in letters:
            axis = letters.index(r)
            steps.append(("shift", axis, sizes[b.out], b.offsets))
            letters[axis:axis + 1] = [b.out] + ([b.slot] if b.slot is not None else [])
    for r, b in unshifts.items():
        if r in letters:
            axis = letters.index(r)
            slot_axis = letters.index(b.slot) if b.slot in letters else None
            steps.append(("unshift", axis, slot_axis, sizes[b.inn], b.offsets, b.ranges))
            if slot_axis is not None:
                letters.remove(b.slot)
            axis = letters.index(r)
            letters[axis:axis + 1] = [b.inn] + ([b.slot] if b.slot is not None else [])
    if any(sizes[r] == 1 for r in letters):
        steps.append(("squeeze",))
        letters = [r for r in letters if sizes[r] > 1]
    return steps, letters


@dataclasses.dataclass(frozen=True)
class BandedProductPlan:
    """``outer @ inner`` where either carries bands (see :func:`product`).

    Each operand's value is prepared (:class:`_Operand`), moved through the
    bands (:class:`_Steps`: shifts onto an outer band's rows, unshifts onto
    an inner band's columns), multiplied in one ``mul``/``dot_general``
    over ``out_letters``, and composed diagonals are folded (``merges``)."""

    result: Structure
    mults: int
    outer: Optional[_Operand]
    inner: Optional[_Operand]
    outer_steps: Optional[_Steps]  # None: the operand is a unit
    inner_steps: Optional[_Steps]
    out_letters: tuple[int, ...]  # before merges
    merges: tuple[tuple[int, _Merge], ...]  # (first axis in out_letters, merge)
    factor: int
    sign: int
    # Columns of an unshifted band that no row reaches: (letter, reached).
    # The unshift pads them with zeros, and the product multiplies those
    # by the outer's value; the NaN rule keeps them at exactly 0.
    unreached: tuple[tuple[Any, tuple[bool, ...]], ...] = ()

    def apply(self, v_outer, v_inner, dtype):
        if self.outer_steps is None and self.inner_steps is None:
            return None if self.result.val is None else jnp.asarray(self.sign * self.factor, dtype)
        prepared = []
        for op, steps, v in ((self.outer, self.outer_steps, v_outer), (self.inner, self.inner_steps, v_inner)):
            if steps is not None:
                v = op.apply(jnp.asarray(v, dtype)) if op is not None else None
                prepared.append((steps.apply(v, dtype), steps.letters))
        if len(prepared) == 2:
            (a, la), (b, lb) = prepared
            out = contract(a, la, b, lb, self.out_letters)
            for letter, reached in self.unreached:
                if letter in self.out_letters:
                    axis = self.out_letters.index(letter)
                    keep = lax.broadcast_in_dim(np.asarray(reached), out.shape, (axis,))
                    out = lax.select(keep, out, lax.full(out.shape, 0, out.dtype))
                else:  # a single column (squeezed away) that no row reaches
                    out = lax.full(out.shape, 0, out.dtype)
        else:
            (out, letters), = prepared
            out = transpose(out, [list(letters).index(r) for r in self.out_letters])
        for axis, merge in reversed(self.merges):
            if merge.parts == 2:
                out = reshape(out, out.shape[:axis] + (out.shape[axis] * out.shape[axis + 1],) + out.shape[axis + 2:])
            rows = self.out_letters.index(merge.rows) if merge.rows in self.out_letters else None
            out = merge_slots(out, axis, merge.groups, rows)
        if self.sign < 0:
            out = lax.neg(out)
        if self.factor != 1:
            out = out * jnp.asarray(self.factor, out.dtype)
        return out


def _banded_product(outer: Structure, inner: Structure) -> Optional[BandedProductPlan]:
    """The product keeping bands, or None when a band meets a case the band
    algebra does not cover (the caller then uses the dense form)."""
    work = _Work()
    io, ii = work.add(outer), work.add(inner)
    if not work.align([((1, k), (2, k)) for k in range(len(outer.in_axes))]):
        return None
    uf = UnionFind(len(work.sizes))
    for ax_o, ax_i in zip(work.groups[1], work.groups[2]):
        wide = lambda ax: [s for s in ax if work.sizes[s] > 1]
        for so, si in zip(wide(ax_o), wide(ax_i)):
            uf.union(so, si)
        ends_o, ends_i = [s for s in ax_o if work.sizes[s] == 1], [s for s in ax_i if work.sizes[s] == 1]
        if len(ends_o) > 1 or len(ends_i) > 1:
            return None
        if ends_o and ends_i:
            uf.union(ends_o[0], ends_i[0])
    members: dict = {}
    for side, group in ((0, 1), (1, 2)):
        for ax in work.groups[group]:
            for s in ax:
                members.setdefault(uf.find(s), ([], []))[side].append(s)
    occ_o = Counter(s for group in work.groups[0:2] for ax in group for s in ax)
    occ_i = Counter(s for group in work.groups[2:4] for ax in group for s in ax)
    out_syms_o = {s for ax in work.groups[0] for s in ax}
    in_syms_i = {s for ax in work.groups[3] for s in ax}
    inner_band_of = {b.out: b for b in work.bands[ii]}
    sizes = {s: n for s, n in enumerate(work.sizes)}
    result_bands = []  # label tuples for make_structure
    combined: dict = {}  # result slot label -> (outer band, inner band, diagonal pairs)
    subst: dict = {}  # root -> outer band whose rows fix it
    composed = set()

    def single(r):
        mo, mi = members[r]
        return (mo[0], mi[0]) if len(mo) == 1 and len(mi) == 1 else None

    # A band end of size 1 facing an axis without symbols (the other
    # operand reads or writes that single element): the end moves to a free
    # axis of size 1 of the result, if there is one.
    free = {0: [k for k, ax in enumerate(work.groups[0]) if not ax],
            3: [k for k, ax in enumerate(work.groups[3]) if not ax]}
    moved: dict = {}  # (group, axis) -> new end symbol

    def move_end(group):
        end = ("end", len(sizes))
        sizes[end] = 1
        if free[group]:
            moved[(group, free[group].pop(0))] = end
        # else the end stays on no axis: the side it indexes is a single
        # element the result has no axis for (a scalar)
        return end

    outer_rows = {b.out for b in work.bands[io]}
    unshift: dict = {}  # root -> inner band whose rows the outer sums

    def compose(b, b2):
        n_a, n_c = sizes[b.out], sizes[b2.inn]
        combos = []
        for k1, (d1, (lo1, hi1)) in enumerate(zip(b.offsets, b.ranges)):
            for k2, (d2, (lo2, hi2)) in enumerate(zip(b2.offsets, b2.ranges)):
                rng = clip_range(max(lo1, lo2 - d1), min(hi1, hi2 - d1), d1 + d2, n_a, n_c)
                if rng[0] < rng[1]:
                    combos.append((k1, k2, d1 + d2, rng))
        if not combos:  # no row reaches the inner band's rows: an empty diagonal
            combos = [(0, 0, 0, (0, 0))]
        label = ("slot", len(combined))
        combined[label] = (b, b2, combos)
        result_bands.append([b.out, b2.inn, label, None, None])
        composed.add(b2.out)
    for b in work.bands[io]:
        r = uf.find(b.inn)
        if members.get(r, ([b.inn], [])) == ([b.inn], []) and work.sizes[b.inn] == 1:
            end = move_end(3)
            result_bands.append([b.out, end, b.slot, b.offsets, b.ranges])
            continue
        pair = single(r)
        if pair is None:
            return None
        si = pair[1]
        if si in inner_band_of:  # band after band: compose the diagonals
            compose(b, inner_band_of[si])
        elif occ_i.get(si) == 2 and si in in_syms_i:  # band after a delta: the band moves to its column
            result_bands.append([b.out, r, b.slot, b.offsets, b.ranges])
        elif (occ_i.get(si) == 1 and si not in (work.vals[ii] or ()) and si not in inner_band_of
              and sizes[si] <= MAX_SPREAD and free[3]):
            # The band reads a broadcast element (the adjoint of an edge
            # pad): the broadcast is a band of one-row diagonals into a free
            # axis of size 1 (row j at offset -j), composed as above.
            n = sizes[si]
            slot = ("spread", si) if n > 1 else None
            sizes[slot] = n
            b2 = Band(si, move_end(3), slot, tuple(-j for j in range(n)), tuple((j, j + 1) for j in range(n)))
            compose(b, b2)
        else:
            return None
        subst[r] = b
    for b2 in work.bands[ii]:
        if b2.out in composed:
            continue
        r = uf.find(b2.out)
        if members.get(r, ([], [b2.out])) == ([], [b2.out]) and work.sizes[b2.out] == 1:
            # The element is broadcast to m rows (an edge pad): row i reads
            # it at offset d - i, a band of m one-row diagonals.
            row = next((s for ax in work.groups[0] for s in ax
                        if occ_o.get(s) == 1 and 1 < sizes[s] <= MAX_SPREAD and s not in outer_rows), None)
            if row is not None and b2.slot is None and b2.ranges[0][0] < b2.ranges[0][1]:
                outer_rows.add(row)
                m, d = sizes[row], b2.offsets[0]
                slot = ("spread", row)
                sizes[slot] = m
                result_bands.append([row, b2.inn, slot, tuple(d - i for i in range(m)),
                                     tuple((i, i + 1) for i in range(m))])
                continue
            end = move_end(0)
            result_bands.append([end, b2.inn, b2.slot, b2.offsets, b2.ranges])
            continue
        pair = single(r)
        if pair is None:
            return None
        if occ_o.get(pair[0]) == 2 and pair[0] in out_syms_o:  # a delta: the band moves to its row
            result_bands.append([r, b2.inn, b2.slot, b2.offsets, b2.ranges])
        elif occ_o.get(pair[0]) == 1:  # the outer sums the band's rows: values move onto its columns
            unshift[r] = b2
        else:
            return None

    for band in [band for band in result_bands if sizes[band[0]] == 1 and sizes[band[1]] == 1]:
        # A band between two single elements is a factor 0 or 1 of every
        # entry when one pair of diagonals at most reaches it: no path
        # (zero), or the one path (the band goes, its ends are size-1
        # labels the result drops).
        if not _reaches(band, combined):
            return _zero_product(outer.out_shape, inner.in_shape)
        stored = {uf.find(x) for side in (io, ii) for x in (work.vals[side] or ())}
        if not _one_path(band, combined, stored, uf):
            return None  # a sum of diagonals onto one entry: its dense form is one number
        result_bands.remove(band)
        combined.pop(band[2], None)
    res_out = [(moved[(0, k)],) if (0, k) in moved else tuple(uf.find(s) for s in ax)
               for k, ax in enumerate(work.groups[0])]
    res_in = [(moved[(3, k)],) if (3, k) in moved else tuple(uf.find(s) for s in ax)
              for k, ax in enumerate(work.groups[3])]
    order = list(dict.fromkeys(r for ax in res_out + res_in for r in ax))
    slot_letters: dict = {}  # result slot label -> value letters it gathers
    for label, (b, b2, _) in combined.items():
        slot_letters[label] = [x for x in (b.slot, b2.slot) if x is not None]
    for band in result_bands:
        if band[2] is not None and band[2] not in combined:
            slot_letters[band[2]] = [band[2]]
    in_result = set(order) | {x for xs in slot_letters.values() for x in xs}

    vo = None if work.vals[io] is None else [uf.find(s) for s in work.vals[io]]
    vi = None if work.vals[ii] is None else [uf.find(s) for s in work.vals[ii]]

    set_o, set_i = set(vo or ()), set(vi or ())
    # Rows an unshifted band sums that neither value holds: the inner gets ones there.
    missing = [r for r in unshift if r not in set_o and r not in set_i]
    if len(missing) > 1:
        return None
    ones = missing[0] if missing else None
    steps_of = lambda letters, shifts, ones_: _plan_steps(letters, sizes, shifts, unshift, ones_)
    all_o = set(steps_of(vo or [], {}, None)[1])
    all_i = set(steps_of(vi or [], subst, ones)[1])
    moved_roots = set(subst) | set(unshift)
    kept_slots = {b.slot for b in unshift.values() if b.slot is not None}  # an unshift reads them

    def prepared(val_syms, letters, keep_if, shifts, ones_):
        """(_Operand or None, letters after its steps, steps)."""
        op = None
        if letters is not None:
            keep = list(dict.fromkeys(r for r in letters if r in moved_roots or r in kept_slots or r in in_result
                                      or keep_if(r)))
            op = _Operand(tuple(work.sizes[s] for s in val_syms), tuple(letters), tuple(keep))
        if op is None and ones_ is None:
            return None, None, None
        steps, after = steps_of(list(op.keep) if op is not None else [], shifts, ones_)
        return op, after, steps

    op_o, lo_, steps_o = prepared(work.vals[io], vo, lambda r: r in all_i, {}, None)
    op_i, li_, steps_i = prepared(work.vals[ii], vi, lambda r: r in all_o, subst, ones)
    # Letters only one operand has after its steps, and the result does not
    # keep, are summed before the product.
    operand_steps = []
    for after, steps, other in ((lo_, steps_o, li_), (li_, steps_i, lo_)):
        if after is None:
            operand_steps.append(None)
            continue
        summed = tuple(k for k, r in enumerate(after) if r not in in_result and r not in (other or ()))
        if summed:
            steps = steps + [("sum", summed)]
            after = [r for k, r in enumerate(after) if k not in summed]
        operand_steps.append(_Steps(tuple(steps), tuple(after)))
    present = set(operand_steps[0].letters if operand_steps[0] else ()) | set(
        operand_steps[1].letters if operand_steps[1] else ())
    v_roots = {uf.find(s) for ax in work.groups[1] for s in ax}
    factor = math.prod(work.sizes[r] for r in v_roots - in_result - set_o - set_i - moved_roots)

    # Result slots: composed bands fold equal diagonals when the value
    # depends on them; otherwise every diagonal pair stays a diagonal.
    merges_by_label = {}
    for label, (b, b2, combos) in combined.items():
        parts = [x for x in slot_letters[label] if x in present]
        if parts:
            k2_count = len(b2.offsets)

            def index(k1, k2):
                if len(parts) == 2:
                    return k1 * k2_count + k2
                return k1 if parts[0] == b.slot else k2

            groups, offsets, ranges = fold([c[2] for c in combos], [c[3] for c in combos], b.out in present)
            groups = tuple(tuple((index(*combos[k][:2]), lo, hi) for k, lo, hi in g) for g in groups)
            merges_by_label[label] = _Merge(len(parts), groups, b.out)
        else:
            offsets = tuple(d for _, _, d, _ in combos)
            ranges = tuple(rng for _, _, _, rng in combos)
        sizes[label] = len(offsets)
        for band in result_bands:
            if band[2] == label:
                band[2] = label if len(offsets) > 1 else None
                band[3], band[4] = offsets, ranges

    final = [r for r in order if r in present]
    final += [label for label, letters in slot_letters.items()
              if any(x in present for x in letters) and sizes[label] > 1]
    sign = (outer.sign if vo is None else 1) * (inner.sign if vi is None else 1)
    bands = [tuple(band) for band in result_bands]
    if operand_steps == [None, None]:
        if factor == 1:
            st, _ = make_structure(res_out, res_in, sizes, None, sign, bands)
        else:
            st, _ = make_structure(res_out, res_in, sizes, [], 1, bands)
        return BandedProductPlan(st, 0, None, None, None, None, (), (), factor, sign)
    st, perm = make_structure(res_out, res_in, sizes, final, 1, bands)
    final = [final[p] for p in perm]
    out_letters, merges = [], []
    for label in final:
        if label in combined:
            parts = [x for x in slot_letters[label] if x in present]
            merges.append((len(out_letters), merges_by_label[label]))
            out_letters += parts
        else:
            out_letters.append(label)
    # A composed slot that folds into one diagonal leaves the value: its
    # merge squeezes the axis away.
    for label, (b, b2, combos) in combined.items():
        if sizes[label] == 1 and label in merges_by_label:
            parts = [x for x in slot_letters[label] if x in present]
            merges.append((len(out_letters), merges_by_label[label]))
            out_letters += parts
    merges.sort(key=lambda m: m[0])
    mults = math.prod(sizes[r] for r in present) if None not in operand_steps else 0
    if factor != 1:
        mults += st.nnz_values
    unreached = []
    for b2 in unshift.values():
        reached = np.zeros(sizes[b2.inn], bool)
        for d, (lo, hi) in zip(b2.offsets, b2.ranges):
            reached[lo + d:hi + d] = lo < hi
        if not reached.all():
            unreached.append((b2.inn, tuple(bool(r) for r in reached)))
    return BandedProductPlan(st, mults, op_o, op_i, operand_steps[0], operand_steps[1], tuple(out_letters),
                             tuple(merges), factor, sign, tuple(unreached))


def _reaches(band: list, combined: dict) -> bool:
    """Whether a result band (label list of :func:`_banded_product`) has a
    diagonal with an entry."""
    if band[2] in combined:
        return any(lo < hi for *_, (lo, hi) in combined[band[2]][2])
    return any(lo < hi for lo, hi in band[4])


def _one_path(band: list, combined: dict, stored: set, uf: UnionFind) -> bool:
    """Whether a result band between two single elements is one unit
    entry: a single pair of diagonals reaches it, and no value is laid out
    along the axis between them or either operand's diagonals (``stored``:
    the roots of the operands' value symbols), so leaving the band out
    changes no value."""
    if band[2] in combined:
        b, b2, combos = combined[band[2]]
        return len(combos) == 1 and not {uf.find(b.inn), b.slot, b2.slot} & stored
    return band[2] is None


def _zero_product(out_shape: tuple, in_shape: tuple) -> Optional[BandedProductPlan]:
    """The product of operands that no path joins (bands that do not meet
    on an axis between them, such as the column a slice takes of the
    concatenation's other piece) as a structure with no entry: an empty
    band between an out and an in axis (None where a side has no axis of
    size 2 or more to hold it; the caller then multiplies the dense forms,
    whose product is exactly 0)."""
    wide_out = [k for k, n in enumerate(out_shape) if n > 1]
    wide_in = [k for k, n in enumerate(in_shape) if n > 1]
    if not wide_out or not wide_in:
        return None
    sizes = {("o", k): n for k, n in enumerate(out_shape)} | {("i", k): n for k, n in enumerate(in_shape)}
    band = (("o", wide_out[0]), ("i", wide_in[0]), None, (0,), ((0, 0),))
    st, _ = make_structure([(("o", k),) for k in range(len(out_shape))],
                           [(("i", k),) for k in range(len(in_shape))], sizes, None, 1, [band])
    return BandedProductPlan(st, 0, None, None, None, None, (), (), 1, 1)


@dataclasses.dataclass(frozen=True)
class Prepared(WrappedPlan):
    """A plain plan run on the dense forms of banded operands."""

    pre_a: Optional[DebandPlan]
    pre_b: Optional[DebandPlan]

    on_dense_forms = True

    def apply(self, va, vb, dtype):
        if self.pre_a is not None:
            va = self.pre_a.apply(va, dtype)
        if self.pre_b is not None:
            vb = self.pre_b.apply(vb, dtype)
        return self.plan.apply(va, vb, dtype)


def _dense_forms(plain_plan, a: Structure, b: Structure) -> Prepared:
    pre_a = deband_plan(a) if a.bands else None
    pre_b = deband_plan(b) if b.bands else None
    plan = plain_plan(pre_a.result if pre_a else a, pre_b.result if pre_b else b)
    return Prepared(plan, pre_a, pre_b)


def product(outer: Structure, inner: Structure):
    """Plan ``outer ∘ inner`` when either has bands."""
    if _disjoint_on_a_middle_axis(outer, inner):
        zero = _zero_product(outer.out_shape, inner.in_shape)
        if zero is not None:
            return zero
    plan = _banded_product(outer, inner)
    return plan if plan is not None else _dense_forms(product_plan, outer, inner)


def _band_on(st: Structure, axes, k: int, side: str) -> Optional[Band]:
    """The band of ``st`` whose ``side`` end (``"out"``/``"inn"``) is the
    only symbol of axis ``k`` of ``axes``, if any."""
    if len(axes[k]) != 1:
        return None
    return next((b for b in st.bands if getattr(b, side) == axes[k][0]), None)


def _meet(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> bool:
    """Whether two unions of half-open intervals intersect."""
    return any(max(lo, lo2) < min(hi, hi2) for lo, hi in a for lo2, hi2 in b)


def _disjoint_on_a_middle_axis(outer: Structure, inner: Structure) -> bool:
    """Whether the product is structurally zero: an operand has an empty
    band, or on some axis between the two the outer's band reads only
    indices where the inner's band has no row (the slice of one column of
    a concatenation's other piece).  ``_banded_product`` finds such a zero
    only where it composes the two bands."""
    if any(all(lo >= hi for lo, hi in b.ranges) for b in outer.bands + inner.bands):
        return True  # an operand without entries
    for k in range(len(outer.in_axes)):
        b, b2 = _band_on(outer, outer.in_axes, k, "inn"), _band_on(inner, inner.out_axes, k, "out")
        if b is None or b2 is None:
            continue
        columns = [(lo + d, hi + d) for d, (lo, hi) in zip(b.offsets, b.ranges)]
        if not _meet(columns, b2.ranges):
            return True
    return False


# ---------------------------------------------------------------------------
# Sum.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BandedSumPlan:
    """``a + b`` with bands: each operand laid out over the result's value
    axes with its own diagonals, padded onto the union of diagonals, added,
    equal diagonals merged (with one band, the two sets of diagonals are
    concatenated instead: the same array, without a pad and an addition
    per entry).  ``const``: both unit with equal bands."""

    result: Optional[Structure]
    a: Any  # EmbedPlan or None
    b: Any
    pads: tuple[tuple[tuple[int, int, int], ...], ...]  # per operand: lax.pad config
    merges: tuple[tuple[int, tuple, Optional[int]], ...]  # (slot axis, groups, row axis): see merge_slots
    const: Optional[int]
    additions: int
    concat: Optional[int] = None  # with one band position: its slot axis, where a's and b's diagonals meet

    def apply(self, va, vb, dtype):
        if self.result is None:
            return None
        if self.const is not None:
            return jnp.asarray(self.const, dtype)
        if self.a is None:  # unit + unit: the diagonals are the sum
            return None
        ea, eb = self.a.apply(va, dtype), self.b.apply(vb, dtype)
        # Slot k of a band position's union is a's slot k, or b's slot
        # k - (a's slots) (see pads).
        mixed = any(len({k < ea.shape[axis] for k, *_ in g}) > 1 for axis, groups, _ in self.merges for g in groups)
        if mixed:
            single = [axis for axis, groups, _ in self.merges if len(groups) == 1]  # merge_slots drops these
            drop_single = lambda x: reshape(x, [n for axis, n in enumerate(x.shape) if axis not in single])
            owns = [[(axis, [[(k - side * ea.shape[axis], lo, hi) for k, lo, hi in g if (k >= ea.shape[axis]) == side]
                              for g in groups], rows) for axis, groups, rows in self.merges] for side in (0, 1)]
            side_by_side = _side_by_side(owns, ea.shape, eb.shape)
            if side_by_side is not None:  # no entry gets both: a's diagonals, then b's
                return drop_single(lax.concatenate([ea, eb], side_by_side))
            if max(ea.size, eb.size) >= LAYERED_MIN_SIZE:
                # Each operand's diagonals merged into the union's, then one addition.
                sides = []
                for e, own in zip((ea, eb), owns):
                    for axis, groups, rows in reversed(own):
                        e = sum_slots(e, axis, groups, rows)
                    sides.append(drop_single(e))
                return _add(*sides)
        if self.concat is not None:  # one band: a's diagonals, then b's
            out = lax.concatenate([ea, eb], self.concat)
        else:
            zero = lax.full((), 0, dtype)
            out = _add(lax.pad(ea, zero, self.pads[0]), lax.pad(eb, zero, self.pads[1]))
        for axis, groups, rows in reversed(self.merges):
            out = merge_slots(out, axis, groups, rows)
        return out


def _placement(groups: Sequence[Sequence[tuple]], n_slots: int) -> Optional[tuple[int, int]]:
    """``(lead, trail)`` when merging ``n_slots`` slots into ``groups`` only
    places them, in order and unmasked, at groups ``lead`` to
    ``len(groups) - trail`` (the others empty); else None."""
    if any(len(g) > 1 or any(lo is not None for _, lo, _ in g) for g in groups):
        return None
    taken = [g for g, members in enumerate(groups) if members]
    lead = taken[0] if taken else 0
    if [groups[g][0][0] for g in taken] != list(range(n_slots)) or taken != list(range(lead, lead + n_slots)):
        return None
    return lead, len(groups) - lead - n_slots


def _side_by_side(owns: Sequence, shape_a: tuple, shape_b: tuple) -> Optional[int]:
    """The slot axis along which a banded sum is the concatenation of its
    operands' merged values, or None: each operand's merges (``owns``, one
    ``(axis, groups, rows)`` list per operand) only place its diagonals,
    on that axis a's before b's, and on every other axis each fills all."""
    axes = []
    for (axis, groups_a, _), (_, groups_b, _) in zip(*owns):
        pa, pb = _placement(groups_a, shape_a[axis]), _placement(groups_b, shape_b[axis])
        if pa is None or pb is None:
            return None
        if pa != (0, 0) or pb != (0, 0):
            if pa != (0, shape_b[axis]) or pb != (shape_a[axis], 0):
                return None
            axes.append(axis)
    return axes[0] if len(axes) == 1 else None


def _banded_sum(a: Structure, b: Structure) -> Optional[BandedSumPlan]:
    """The sum keeping bands, or None when a band of one operand meets
    neither a band nor a delta in the other (the caller uses dense forms)."""
    work = _Work()
    ia, ib = work.add(a), work.add(b)
    pairs = [((g, k), (g + 2, k)) for g in (0, 1) for k in range(len(work.groups[g]))]
    if not work.align(pairs):
        return None
    syms = ([s for g in (0, 1) for ax in work.groups[g] for s in ax],
            [s for g in (2, 3) for ax in work.groups[g] for s in ax])
    # Band ends on no axis take places after the axes' symbols: out ends,
    # then in ends, each in band order; both operands must have as many.
    loose = []
    for side, idx in ((0, ia), (1, ib)):
        on_axes = set(syms[side])
        loose.append(([b.out for b in work.bands[idx] if b.out not in on_axes],
                      [b.inn for b in work.bands[idx] if b.inn not in on_axes]))
    if [len(x) for x in loose[0]] != [len(x) for x in loose[1]]:
        return None
    for side in (0, 1):
        syms[side].extend(loose[side][0] + loose[side][1])
    if [work.sizes[s] for s in syms[0]] != [work.sizes[s] for s in syms[1]]:
        return None  # band ends of size 1 at different places
    where = [{}, {}]
    for side in (0, 1):
        for j, s in enumerate(syms[side]):
            where[side].setdefault(s, []).append(j)
    band_at = [{where[side][band.out][0]: band for band in work.bands[idx]} for side, idx in ((0, ia), (1, ib))]
    # Per band position (rows j, columns jq): the diagonals of each operand;
    # a delta there is the diagonal at offset 0.
    band_pos = []
    for j in sorted(set(band_at[0]) | set(band_at[1])):
        some = band_at[0].get(j) or band_at[1].get(j)
        jq = where[0 if j in band_at[0] else 1][some.inn][0]
        sides = []
        for side in (0, 1):
            band, sym = band_at[side].get(j), syms[side]
            if band is not None and where[side][band.inn] == [jq]:
                sides.append(band)
            elif band is None and sym[j] == sym[jq] and where[side][sym[j]] == sorted([j, jq]):
                sides.append(Band(sym[j], sym[j], None, (0,), ((0, work.sizes[sym[j]]),)))
            else:
                return None
        band_pos.append((j, jq, sides[0], sides[1]))
    in_positions = {jq for _, jq, _, _ in band_pos}
    # Classes: one per (a symbol, b symbol) pair; a band's rows are a class,
    # its columns a class of their own that is never stored.
    key_to_class: dict = {}
    class_of_pos = [key_to_class.setdefault(("in", j) if j in in_positions else (sa, sb), len(key_to_class))
                    for j, (sa, sb) in enumerate(zip(*syms))]
    n_classes = len(key_to_class)
    a_of, b_of = [None] * n_classes, [None] * n_classes
    for j, c in enumerate(class_of_pos):
        a_of[c], b_of[c] = syms[0][j], syms[1][j]
    in_classes = {class_of_pos[jq] for jq in in_positions}
    result_axes, pos = [], 0
    for g in (0, 1):
        group = []
        for ax in work.groups[g]:
            group.append(tuple(class_of_pos[pos + k] for k in range(len(ax))))
            pos += len(ax)
        result_axes.append(tuple(group))
    sizes: dict = {c: work.sizes[a_of[c]] for c in range(n_classes)}
    stored = [c for c in range(n_classes) if c not in in_classes]
    count_a = Counter(a_of[c] for c in stored)
    count_b = Counter(b_of[c] for c in stored)
    same_partition = len(count_a) == len(stored) == len(count_b)
    slot_of = {j: ("slot", j) for j, *_ in band_pos}

    def make(val, sign, diagonals):
        labels = []
        for (j, jq, _, _), (offsets, ranges) in zip(band_pos, diagonals):
            sizes[slot_of[j]] = len(offsets)
            labels.append((class_of_pos[j], class_of_pos[jq], slot_of[j] if len(offsets) > 1 else None, offsets,
                           ranges))
        return make_structure(result_axes[0], result_axes[1], sizes, val, sign, labels)

    unit = a.val is None and b.val is None
    if unit and same_partition and all((da.offsets, da.ranges) == (db.offsets, db.ranges) for *_, da, db in band_pos):
        total = a.sign + b.sign
        if total == 0:
            return BandedSumPlan(None, None, None, (), (), None, 0)
        st, _ = make([], 1, [(da.offsets, da.ranges) for *_, da, _ in band_pos])
        return BandedSumPlan(st, None, None, (), (), total, 0)
    union = [(da.offsets + db.offsets, da.ranges + db.ranges) for *_, da, db in band_pos]
    differ = [k for k, (*_, da, db) in enumerate(band_pos) if (da.offsets, da.ranges) != (db.offsets, db.ranges)]
    if unit and same_partition and a.sign == b.sign and len(differ) == 1 and _disjoint(*band_pos[differ[0]][2:]):
        # One band differs: the union of its diagonals, no numbers.  (With
        # two, the union would add cross terms of one's diagonals with the
        # other's; where two diagonals meet, an entry is 2, which needs a
        # number.)
        diagonals = [union[k] if k in differ else (da.offsets, da.ranges) for k, (*_, da, _) in enumerate(band_pos)]
        st, _ = make(None, a.sign, diagonals)
        return BandedSumPlan(st, None, None, (), (), None, 0)
    val_a, val_b = set(work.vals[ia] or ()), set(work.vals[ib] or ())
    plain = [c for c in stored if a_of[c] in val_a or b_of[c] in val_b or count_a[a_of[c]] > 1
             or count_b[b_of[c]] > 1]
    classes = plain + [slot_of[j] for j, *_ in band_pos]
    embeds, pads = [], []
    for side, (idx, sym_of) in enumerate(((ia, a_of), (ib, b_of))):
        mapping = {c: sym_of[c] for c in plain}
        own = {}
        for j, _, da, db in band_pos:
            diag = (da, db)[side]
            mapping[slot_of[j]] = diag.slot if diag.slot is not None else ("none", j)
            own[slot_of[j]] = len(diag.offsets)
        embeds.append(_embed_plan(work, idx, mapping, classes, lambda c: own[c] if c in own else sizes[c],
                                  (a, b)[side].sign))
        config = [(0, 0, 0)] * len(classes)
        for j, _, da, db in band_pos:
            other = len((db, da)[side].offsets)
            config[classes.index(slot_of[j])] = (0, other, 0) if side == 0 else (other, 0, 0)
        pads.append(tuple(config))
    merges, merged = [], []
    for (j, *_), (offsets, ranges) in zip(band_pos, union):
        rows = classes.index(class_of_pos[j]) if class_of_pos[j] in plain else None
        groups, offsets, ranges = fold(offsets, ranges, rows is not None)
        merges.append((classes.index(slot_of[j]), tuple(groups), rows))
        merged.append((offsets, ranges))
    st, perm = make(classes, 1, merged)
    if perm != tuple(range(len(perm))):
        raise AssertionError("sum classes are laid out in symbol order")
    summed_shape = [n + lo + hi for n, (lo, hi, _) in zip(embeds[0].shape, pads[0])]
    if len(band_pos) == 1:  # the diagonals side by side: no addition before the merges
        return BandedSumPlan(st, embeds[0], embeds[1], tuple(pads), tuple(merges), None, 0,
                             classes.index(slot_of[band_pos[0][0]]))
    return BandedSumPlan(st, embeds[0], embeds[1], tuple(pads), tuple(merges), None, math.prod(summed_shape))


def _disjoint(da: Band, db: Band) -> bool:
    """Whether no diagonal of ``da`` shares an entry with one of ``db``."""
    return not any(d1 == d2 and max(lo1, lo2) < min(hi1, hi2)
                   for d1, (lo1, hi1) in zip(da.offsets, da.ranges) for d2, (lo2, hi2) in zip(db.offsets, db.ranges))


def sum_(a: Structure, b: Structure):
    """Plan ``a + b`` when either has bands."""
    plan = _banded_sum(a, b)
    return plan if plan is not None else _dense_forms(sum_plan, a, b)
