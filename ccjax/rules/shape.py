"""Data movement: broadcasts, reshapes, transposes, slices, pads, concatenation.

Pure relabelings (``broadcast_in_dim``, ``reshape``, ``squeeze``,
``transpose``, ``convert_element_type``, ``copy``, ``optimization_barrier``,
``tile``, and ``stack``/``unstack`` of one) are unit partials: no stored
values, no multiplications; ``stack`` and ``unstack`` of several are
one-row bands.  Index shifts (``slice``, ``pad``,
``rev``, ``concatenate``, ``split``, ``dynamic_slice``,
``dynamic_update_slice``, ``cumsum``) keep untouched axes as Kronecker
pairs.  A moved axis read at a static offset (unit-stride slices, pads
without interior, concatenation, split, dynamic slices at known starts) is a
band (:class:`ccjax.structure.Band`: no stored numbers), and so are a
gather and a scatter-add along one axis at known indices with few distinct
offsets, and a scatter or scatter-add writing one window at known starts.
A strided slice, a reversal or an interior pad is a selection at constant
flat indices where 0/1 matrices on its moved axes would store more numbers
than it has elements (outside ``cond`` branches); any other moved axis
stores a small 0/1 selection matrix.  Other gathers
and scatter-adds are selections at run-time indices (:mod:`.selection`);
other scatters get the dense local Jacobian of :mod:`.opaque`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from ccjax.rules import opaque, selection
from ccjax.rules.base import Partial, RuleContext, constant_mask, identity_labels, labelled
from ccjax.structure import common_chain, dense, make_structure, split_sizes


def _shape(aval) -> tuple[int, ...]:
    return tuple(aval.shape)


def _flat_positions(shape) -> np.ndarray:
    """Each element's flat (row-major) index, laid out as ``shape``."""
    return np.arange(math.prod(shape)).reshape(shape)


def _unit_map(ctx: RuleContext, out_of_in: dict, out: int = 0, slot: int = 0) -> Partial:
    """Unit partial where in axis ``k`` is out axis ``out_of_in[k]`` (or replicated)."""
    out_ndim = len(_shape(ctx.out_avals[out]))
    in_labels = [("ax", out_of_in[k]) if k in out_of_in else ("in", k)
                 for k in range(len(_shape(ctx.in_avals[slot])))]
    return labelled(out, slot, ctx, identity_labels(out_ndim), in_labels)


def _broadcast_in_dim(ctx):
    if 0 not in ctx.active:
        return []
    in_shape, out_shape = _shape(ctx.in_avals[0]), _shape(ctx.out_avals[0])
    dims = ctx.params["broadcast_dimensions"]
    mapping = {k: d for k, d in enumerate(dims) if in_shape[k] == out_shape[d]}
    return [_unit_map(ctx, mapping)]


def _identity(ctx):
    if 0 not in ctx.active:
        return []
    ndim = len(_shape(ctx.in_avals[0]))
    return [_unit_map(ctx, {k: k for k in range(ndim)})]


def _optimization_barrier(ctx):
    """``lax.optimization_barrier``: each result is its operand."""
    return [_unit_map(ctx, {k: k for k in range(len(_shape(ctx.in_avals[s])))}, out=s, slot=s) for s in ctx.active
            if jnp.issubdtype(ctx.out_avals[s].dtype, jnp.inexact)]


def _squeeze(ctx):
    if 0 not in ctx.active:
        return []
    in_shape = _shape(ctx.in_avals[0])
    dims = {d % len(in_shape) for d in ctx.params["dimensions"]}
    kept = [k for k in range(len(in_shape)) if k not in dims]
    return [_unit_map(ctx, {k: i for i, k in enumerate(kept)})]


def _transpose(ctx):
    if 0 not in ctx.active:
        return []
    perm = ctx.params["permutation"]
    return [_unit_map(ctx, {k: d for d, k in enumerate(perm)})]


def _reshape(ctx):
    """Unit partial of a reshape: a relabeling when a common factorisation of
    the two shapes exists, else an exact dense 0/1 matrix.

    ``dimensions`` (``lax.reshape(x, shape, dimensions)``) transposes the
    operand first: the factor labels are computed for the transposed shape
    and handed back to the operand axes they came from, so the transpose
    costs nothing."""
    if 0 not in ctx.active:
        return []
    in_shape, out_shape = _shape(ctx.in_avals[0]), _shape(ctx.out_avals[0])
    dims = ctx.params.get("dimensions")
    perm = tuple(range(len(in_shape))) if dims is None else tuple(dims)
    moved_shape = tuple(in_shape[k] for k in perm)  # the operand after the transpose
    fa = [n for n in moved_shape if n > 1]
    fb = [n for n in out_shape if n > 1]
    chain = common_chain(fa, fb)
    if chain is None:
        return [_dense_reshape(in_shape, out_shape, perm)]
    factors = [y // x for x, y in reversed(list(zip(chain, chain[1:])))]

    def axes(shape):
        subs = iter(split_sizes([n for n in shape if n > 1], chain))
        result, nxt = [], 0
        for n in shape:
            if n == 1:
                result.append(())
                continue
            count = len(next(subs))
            result.append(tuple(range(nxt, nxt + count)))
            nxt += count
        return result

    moved_axes = axes(moved_shape)
    in_axes = [None] * len(in_shape)
    for pos, k in enumerate(perm):
        in_axes[k] = moved_axes[pos]
    st, _ = make_structure(axes(out_shape), in_axes, dict(enumerate(factors)), None)
    return [Partial(0, 0, st, None)]


def _dense_reshape(in_shape: tuple, out_shape: tuple, perm: tuple) -> Partial:
    """Exact dense partial of ``reshape(transpose(x, perm), out_shape)`` when
    no factorisation is common: row ``o`` is one-hot at the operand entry
    that output entry ``o`` reads (a permutation of entries)."""
    st, prepare = dense(out_shape, in_shape)
    n = int(np.prod(in_shape))
    source = _flat_positions(in_shape).transpose(perm).reshape(-1)
    eye = np.eye(n, dtype=bool)[source].reshape(out_shape + in_shape)
    return Partial(0, 0, st, lambda ins, outs: prepare(jnp.asarray(eye, outs[0].dtype)),
                   nonzero=constant_mask(lambda: prepare(eye)), ones=True)


# ---------------------------------------------------------------------------
# Selection matrices
# ---------------------------------------------------------------------------


def _selection(ctx: RuleContext, mats: dict, out: int = 0, slot: int = 0, shifts: Optional[dict] = None,
               constant: bool = False) -> Partial:
    """Partial that is a Kronecker pair on every axis except those in ``mats``
    and ``shifts``.

    ``mats[k](ins)`` returns the ``(out_k, in_k)`` 0/1 matrix of axis ``k``
    (``constant``: the same for every operand, ``mats[k](None)``, so its
    zeros are structural); ``shifts[k] = d`` makes axis ``k`` a band: out
    index ``i`` reads in index ``i + d`` (no stored numbers).
    """
    out_shape, in_shape = _shape(ctx.out_avals[out]), _shape(ctx.in_avals[slot])
    shifts = {k: d for k, d in (shifts or {}).items() if out_shape[k] > 1 or in_shape[k] > 1}
    moved = sorted(mats)
    out_labels = [("o", k) if k in mats or k in shifts else ("ax", k) for k in range(len(out_shape))]
    in_labels = [("i", k) if k in mats or k in shifts else ("ax", k) for k in range(len(in_shape))]
    bands = [(("o", k), ("i", k), d) for k, d in sorted(shifts.items())]
    if not moved:
        return labelled(out, slot, ctx, out_labels, in_labels, bands=bands)
    val_labels = [lab for k in moved for lab in (("o", k), ("i", k))]
    val_shape = tuple(n for k in moved for n in (out_shape[k], in_shape[k]))
    dtype = ctx.out_avals[out].dtype

    def matrix(ins):
        mask = None
        for k in moved:
            m = jnp.asarray(mats[k](ins), bool)
            mask = m if mask is None else mask[..., None, None] & m
        return mask

    return labelled(out, slot, ctx, out_labels, in_labels, val_labels, val_shape,
                    lambda ins, outs: matrix(ins).astype(dtype), bands=bands,
                    nonzero=(lambda: matrix(None)) if constant else None, ones=constant)


def _iotas(n_out: int, n_in: int):
    return lax.broadcasted_iota(np.int32, (n_out, n_in), 0), lax.broadcasted_iota(np.int32, (n_out, n_in), 1)


def _embed_matrix(n_out: int, n_in: int, offset, stride: int = 1):
    """``M[o, i] = (o == offset + stride * i)``: input ``i`` lands at ``o``."""
    o, i = _iotas(n_out, n_in)
    return o == offset + stride * i


def _take_matrix(n_out: int, n_in: int, offset, stride: int = 1):
    """``M[o, i] = (i == offset + stride * o)``: output ``o`` reads ``i``."""
    o, i = _iotas(n_out, n_in)
    return i == offset + stride * o


def _as_constant_selection(ctx, moved: Sequence[int], lead: int) -> bool:
    """Whether a strided, reversed or interior-padded access is better
    planned as a selection at constant flat indices (``lead`` of them, one
    per element on its lead side) than as 0/1 matrices on the ``moved``
    axes: when the matrices would store more numbers than the selection
    lists indices.  The matrices keep the other axes as Kronecker pairs,
    which a flat selection does not, so they stay where they are small
    (a short axis moved beside long untouched ones), and inside a ``cond``'s
    branch, whose final partials join the other branches' only as structures."""
    in_shape, out_shape = _shape(ctx.in_avals[0]), _shape(ctx.out_avals[0])
    matrices = math.prod(out_shape[k] * in_shape[k] for k in moved)
    fits = max(math.prod(in_shape), math.prod(out_shape)) <= selection.MAX_FLAT
    return (bool(moved) and fits and not ctx.in_branch and 0 < lead < matrices
            and lead <= selection.MAX_CONSTANT_SELECTION)


def _slice(ctx):
    if 0 not in ctx.active:
        return []
    in_shape, out_shape = _shape(ctx.in_avals[0]), _shape(ctx.out_avals[0])
    strides = ctx.params["strides"] or (1,) * len(in_shape)
    strided = [k for k, stride in enumerate(strides) if stride != 1]
    if _as_constant_selection(ctx, strided, math.prod(out_shape)):
        reads = _flat_positions(in_shape)[
            tuple(slice(start, limit, stride) for start, limit, stride
                  in zip(ctx.params["start_indices"], ctx.params["limit_indices"], strides))]
        return [selection.constant_selection(ctx, "pick", reads)]
    mats, shifts = {}, {}
    for k, (start, stride, n_in, n_out) in enumerate(zip(ctx.params["start_indices"], strides, in_shape, out_shape)):
        if start == 0 and stride == 1 and n_in == n_out:
            continue
        if stride == 1:
            shifts[k] = start
        else:
            mats[k] = (lambda a: lambda ins: _take_matrix(*a))((n_out, n_in, start, stride))
    return [_selection(ctx, mats, shifts=shifts, constant=True)]


def _pad(ctx):
    parts = []
    in_shape, out_shape = _shape(ctx.in_avals[0]), _shape(ctx.out_avals[0])
    config = ctx.params["padding_config"]
    interiors = [k for k, (_, _, interior) in enumerate(config) if interior]
    if 0 in ctx.active and _as_constant_selection(ctx, interiors, math.prod(in_shape)):
        parts.append(selection.constant_selection(ctx, "put", *_pad_targets(in_shape, out_shape, config)))
    elif 0 in ctx.active:
        mats = {k: (lambda a: lambda ins: _embed_matrix(*a))((out_shape[k], in_shape[k], lo, interior + 1))
                for k, (lo, hi, interior) in enumerate(config) if interior}
        shifts = {k: -lo for k, (lo, hi, interior) in enumerate(config) if not interior and (lo or hi)}
        parts.append(_selection(ctx, mats, shifts=shifts, constant=True))
    if 1 in ctx.active:
        def padding(dtype):
            return 1 - lax.pad(jnp.ones(in_shape, dtype), jnp.zeros((), dtype), config)

        parts.append(labelled(0, 1, ctx, identity_labels(len(out_shape)), [], identity_labels(len(out_shape)),
                              out_shape, lambda ins, outs: padding(outs[0].dtype),
                              nonzero=lambda: padding(np.int32), ones=True))
    return parts


def _pad_targets(in_shape, out_shape, config) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(flat, valid)`` over the operand: the flat out element each operand
    element lands on, and whether it lands at all (a negative low or high
    padding crops); ``valid`` None when every element lands."""
    grids = np.meshgrid(*[np.arange(n) for n in in_shape], indexing="ij")
    at = [lo + i * (interior + 1) for i, (lo, _, interior) in zip(grids, config)]
    flat, valid = selection.clamped_flat(at, out_shape, in_shape)
    return flat, None if valid.all() else valid


def _rev(ctx):
    if 0 not in ctx.active:
        return []
    shape = _shape(ctx.in_avals[0])
    flipped = sorted({k for k in ctx.params["dimensions"] if shape[k] > 1})
    if _as_constant_selection(ctx, flipped, math.prod(shape)):
        return [selection.constant_selection(ctx, "pick", np.flip(_flat_positions(shape), flipped))]
    mats = {k: (lambda n: lambda ins: np.eye(n, dtype=bool)[::-1])(shape[k]) for k in ctx.params["dimensions"]}
    return [_selection(ctx, mats, constant=True)]


def _concatenate(ctx):
    axis = ctx.params["dimension"]
    offsets = np.cumsum([0] + [a.shape[axis] for a in ctx.in_avals])
    return [_selection(ctx, {}, slot=s, shifts={axis: -int(offsets[s])}) for s in ctx.active]


def _stack(ctx):
    """``lax.stack`` (``jnp.stack``): operand ``s`` lands on row ``s`` of the
    new axis (a one-row band from an end on no axis), the identity on the
    others."""
    axis = ctx.params["axis"]
    ndim = len(_shape(ctx.in_avals[0]))
    if len(ctx.in_avals) == 1:  # a new axis of size 1: a relabeling
        return [_unit_map(ctx, {k: k + (k >= axis) for k in range(ndim)})] if ctx.active else []
    out_labels = [("ax", k) for k in range(axis)] + [("new",)] + [("ax", k) for k in range(axis, ndim)]
    return [labelled(0, s, ctx, out_labels, identity_labels(ndim), bands=[(("new",), ("end",), (-s,), ((s, s + 1),))])
            for s in ctx.active]


def _unstack(ctx):
    """``lax.unstack`` (``jnp.unstack``): output ``j`` reads row ``j`` of the
    operand's axis (a one-row band to an end on no axis)."""
    if 0 not in ctx.active:
        return []
    axis = ctx.params["axis"]
    ndim = len(_shape(ctx.in_avals[0]))
    if len(ctx.out_avals) == 1:  # an axis of size 1 dropped: a relabeling
        return [_unit_map(ctx, {k: k - (k > axis) for k in range(ndim) if k != axis})]
    in_labels = [("ax", k) if k != axis else ("gone",) for k in range(ndim)]
    out_labels = [("ax", k) for k in range(ndim) if k != axis]
    return [labelled(j, 0, ctx, out_labels, in_labels, bands=[(("end",), ("gone",), (j,), ((0, 1),))])
            for j in range(len(ctx.out_avals))]


def _tile(ctx):
    """``lax.tile`` (``jnp.tile``): out axis ``k`` of size ``reps[k] * n`` is
    the pair (repeat, element): the operand replicated along the repeats, a
    relabeling like a broadcast followed by a reshape (no stored numbers)."""
    if 0 not in ctx.active:
        return []
    sizes, out_axes, in_axes = {}, [], []
    for k, (n, r) in enumerate(zip(_shape(ctx.in_avals[0]), ctx.params["reps"])):
        factors = [(label, size) for label, size in ((("rep", k), r), (("ax", k), n)) if size > 1]
        sizes.update(factors)
        out_axes.append(tuple(label for label, _ in factors))
        in_axes.append(((("ax", k),) if n > 1 else ()))
    st, _ = make_structure(out_axes, in_axes, sizes, None)
    return [Partial(0, 0, st, None)]


def _split(ctx):
    if 0 not in ctx.active:
        return []
    axis = ctx.params["axis"]
    offsets = np.cumsum([0] + list(ctx.params["sizes"]))
    parts = []
    for j, aval in enumerate(ctx.out_avals):
        if aval.size == 0:
            continue
        parts.append(_selection(ctx, {}, out=j, shifts={axis: int(offsets[j])}))
    return parts


def _clamped_starts(ins, operand_shape, window_shape, first: int):
    starts = []
    for k, (n, w) in enumerate(zip(operand_shape, window_shape)):
        starts.append(jnp.clip(jnp.asarray(ins[first + k]).astype(np.int32), 0, n - w))
    return starts


def _known_starts(ctx, operand_shape, window_shape, first: int) -> Optional[list[int]]:
    """:func:`_clamped_starts` when every start is known when the graph is
    built (Python ints), else None."""
    starts = [ctx.static(first + k) for k in range(len(operand_shape))]
    if any(s is None for s in starts):
        return None
    return [int(np.clip(int(s), 0, n - w)) for s, n, w in zip(starts, operand_shape, window_shape)]


def _dynamic_slice(ctx):
    if 0 not in ctx.active:
        return []
    in_shape, sizes = _shape(ctx.in_avals[0]), tuple(ctx.params["slice_sizes"])
    starts = _known_starts(ctx, in_shape, sizes, 1)
    if starts is not None:  # a slice
        return [_selection(ctx, {}, shifts={k: d for k, d in enumerate(starts) if in_shape[k] != sizes[k]})]
    mats = {}
    for k, (n, w) in enumerate(zip(in_shape, sizes)):
        if n != w:
            mats[k] = (lambda k, n, w: lambda ins: _take_matrix(
                w, n, _clamped_starts(ins, in_shape, sizes, 1)[k]))(k, n, w)
    return [_selection(ctx, mats)]


def _dynamic_update_slice(ctx):
    parts = []
    op_shape, up_shape = _shape(ctx.in_avals[0]), _shape(ctx.in_avals[1])
    starts = _known_starts(ctx, op_shape, up_shape, 2)
    if starts is not None:  # one window
        return _window_partials(ctx, starts, list(up_shape), (), overwrite=True, update=1)
    if 0 in ctx.active:
        def keep(ins, outs):
            zeros = jnp.zeros(up_shape, outs[0].dtype)
            return lax.dynamic_update_slice(jnp.ones(op_shape, outs[0].dtype), zeros,
                                            _clamped_starts(ins, op_shape, up_shape, 2))

        labels = identity_labels(len(op_shape))
        parts.append(labelled(0, 0, ctx, labels, labels, labels, op_shape, keep))
    if 1 in ctx.active:
        mats = {}
        for k, (n, w) in enumerate(zip(op_shape, up_shape)):
            if n != w:
                mats[k] = (lambda k, n, w: lambda ins: _embed_matrix(
                    n, w, _clamped_starts(ins, op_shape, up_shape, 2)[k]))(k, n, w)
        parts.append(_selection(ctx, mats, slot=1))
    return parts


def _cumsum(ctx):
    if 0 not in ctx.active:
        return []
    axis = ctx.params["axis"]
    n = _shape(ctx.in_avals[0])[axis]
    tri = np.tril(np.ones((n, n), bool)) if not ctx.params.get("reverse") else np.triu(np.ones((n, n), bool))
    return [_selection(ctx, {axis: lambda ins: tri}, constant=True)]


#: Most diagonals a gather or scatter-add at known indices becomes; beyond,
#: its partial is dense.
MAX_INDEX_DIAGONALS = 8


def _index_runs(ctx, slot: int, n_target: int) -> Optional[list[tuple[int, int, int]]]:
    """The known index vector of operand ``slot`` (shape ``(m, 1)``) as runs
    ``(d, lo, hi)``: positions ``lo <= i < hi`` address ``i + d``, one run
    per offset ``d``; None when the indices are not known when the graph is
    built, leave ``[0, n_target)`` (whose treatment depends on the mode), or
    need more than :data:`MAX_INDEX_DIAGONALS` runs."""
    if len(ctx.in_avals[slot].shape) != 2 or ctx.in_avals[slot].shape[1] != 1:
        return None
    idx = ctx.static(slot)
    if idx is None:
        return None
    idx = np.asarray(idx, np.int64).reshape(-1)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= n_target:
        return None
    shift = idx - np.arange(idx.size)
    runs = []
    for d in dict.fromkeys(shift.tolist()):
        at = np.flatnonzero(shift == d)
        if at[-1] - at[0] + 1 != at.size or len(runs) == MAX_INDEX_DIAGONALS:
            return None  # positions at one offset not one run, or too many diagonals
        runs.append((int(d), int(at[0]), int(at[-1]) + 1))
    return runs


def _one_axis_labels(n_axes: int, axis: int, window_dims, axis_label, index_label) -> tuple[list, list]:
    """Labels of an array indexed along ``axis`` (that axis ``axis_label``,
    the others ``("ax", k)``) and of the array of its whole slices along the
    other axes (at positions ``window_dims``; the remaining position, which
    runs over the indices, ``index_label``)."""
    full = [("ax", k) for k in range(n_axes)]
    full[axis] = axis_label
    slices: list = [None] * n_axes
    for p, k in zip(sorted(window_dims), [k for k in range(n_axes) if k != axis]):
        slices[p] = ("ax", k)
    slices[slices.index(None)] = index_label
    return full, slices


def _gather(ctx):
    """``x[idx]`` along one axis with indices known when the graph is built
    (constants such as ``x[(i + 1) % n]``): a band whose diagonals are the
    runs of rows reading at one offset ``idx[i] - i``.  Other gathers (indices
    computed from the inputs, several indexed axes, scattered or
    out-of-range indices) get the exact dense local Jacobian."""
    if 0 not in ctx.active:
        return []
    dn, operand = ctx.params["dimension_numbers"], _shape(ctx.in_avals[0])
    axis, runs = None, None
    if (len(dn.start_index_map) == 1 and tuple(dn.collapsed_slice_dims) == tuple(dn.start_index_map)
            and not dn.operand_batching_dims and not dn.start_indices_batching_dims):
        axis = dn.start_index_map[0]
        whole = tuple(1 if k == axis else n for k, n in enumerate(operand))
        if tuple(ctx.params["slice_sizes"]) == whole:
            runs = _index_runs(ctx, 1, operand[axis])
    if runs is None:
        pick = selection.gather_partial(ctx)
        return [pick] if pick is not None else opaque.dense_partials(ctx)
    in_labels, out_labels = _one_axis_labels(len(operand), axis, dn.offset_dims, ("i",), ("o",))
    if operand[axis] == 1:  # every row reads the one element: a replication
        return [labelled(0, 0, ctx, out_labels, in_labels)]
    band = (("o",), ("i",), tuple(d for d, _, _ in runs), tuple((lo, hi) for _, lo, hi in runs))
    return [labelled(0, 0, ctx, out_labels, in_labels, bands=[band])]


def _known_window(ctx) -> Optional[tuple[list[int], list[int], Sequence[int]]]:
    """``(starts, window, inserted)`` of a scatter writing one window
    (``x.at[0].set(v)``, ``x.at[2:5].add(y)``) at known starts that keep it
    in range (out of range, the modes differ): per operand axis, and the
    operand axes the update lacks; else None."""
    dn, operand, updates = ctx.params["dimension_numbers"], _shape(ctx.in_avals[0]), _shape(ctx.in_avals[2])
    if (dn.operand_batching_dims or dn.scatter_indices_batching_dims or len(ctx.in_avals[1].shape) != 1
            or tuple(dn.update_window_dims) != tuple(range(len(updates)))):
        return None
    kept = [k for k in range(len(operand)) if k not in dn.inserted_window_dims]
    idx = ctx.static(1)
    if len(kept) != len(updates) or idx is None:
        return None
    window, starts = [1] * len(operand), [0] * len(operand)
    for k, n in zip(kept, updates):
        window[k] = n
    for k, s in zip(dn.scatter_dims_to_operand_dims, np.asarray(idx, np.int64).reshape(-1)):
        starts[k] = int(s)
    if any(s < 0 or s + w > n for s, w, n in zip(starts, window, operand)):
        return None
    return starts, window, dn.inserted_window_dims


def _window_partials(ctx, starts: list[int], window: list[int], inserted: Sequence[int], overwrite: bool,
                     update: int = 2) -> list[Partial]:
    """Partials of writing one window at known ``starts`` (a scatter, or a
    ``dynamic_update_slice`` whose update is operand ``update``): on the
    operand the identity (an add) or the identity outside the window (a set,
    stored as a 0/1 mask); on the update a shift into the window (a band on
    each partly covered axis, and a one-row band from an end on no axis on
    each axis ``inserted`` that the update lacks: no stored numbers)."""
    operand = _shape(ctx.in_avals[0])
    parts = []
    if 0 in ctx.active:
        labels = identity_labels(len(operand))
        if not overwrite:
            parts.append(labelled(0, 0, ctx, labels, labels))
        else:
            keep = np.ones(operand, bool)
            keep[tuple(slice(s, s + w) for s, w in zip(starts, window))] = False
            parts.append(labelled(0, 0, ctx, labels, labels, labels, operand,
                                  lambda ins, outs: jnp.asarray(keep, outs[0].dtype)))
    if update in ctx.active:
        out_labels, in_labels, bands = [], [], []
        for k, (n, s, w) in enumerate(zip(operand, starts, window)):
            if k in inserted:  # the update has no axis here: it lands on row s (a band end on no axis)
                out_labels.append(("o", k))
                bands.append((("o", k), ("end", k), (-s,), ((s, s + 1),)))
            elif w == n:
                out_labels.append(("ax", k))
                in_labels.append(("ax", k))
            else:  # out row i reads update row i - s
                out_labels.append(("o", k))
                in_labels.append(("i", k))
                bands.append((("o", k), ("i", k), -s))
        parts.append(labelled(0, update, ctx, out_labels, in_labels, bands=bands))
    return parts


def _scatter(ctx):
    """``x.at[...].set(y)`` writing one window at known starts (boundary
    values such as ``r.at[0].set(u[0] - 1)``): see :func:`_window_partials`.
    Other scatters get the exact dense local Jacobian."""
    window = _known_window(ctx)
    if window is None:
        return opaque.dense_partials(ctx)
    return _window_partials(ctx, *window, overwrite=True)


def _scatter_add(ctx):
    """``x.at[idx].add(y)`` along one axis with known in-range indices: the
    identity on ``x`` and, on ``y``, a band whose diagonals are the runs of
    rows of ``y`` added at one offset (the transpose of :func:`_gather`'s);
    one window at known starts (``x.at[2:5].add(y)``) is a shift.  Other
    scatter-adds get the exact dense local Jacobian."""
    window = _known_window(ctx)
    if window is not None:
        return _window_partials(ctx, *window, overwrite=False)
    dn, operand, updates = ctx.params["dimension_numbers"], _shape(ctx.in_avals[0]), _shape(ctx.in_avals[2])
    axis, runs = None, None
    if (len(dn.scatter_dims_to_operand_dims) == 1
            and tuple(dn.inserted_window_dims) == tuple(dn.scatter_dims_to_operand_dims)
            and not dn.operand_batching_dims and not dn.scatter_indices_batching_dims
            and len(updates) == len(operand)):
        axis = dn.scatter_dims_to_operand_dims[0]
        slice_sizes = [updates[p] for p in sorted(dn.update_window_dims)]
        if slice_sizes == [n for k, n in enumerate(operand) if k != axis]:
            runs = _index_runs(ctx, 1, operand[axis])
    put = selection.scatter_add_partial(ctx) if runs is None and 2 in ctx.active else None
    if runs is None and 2 in ctx.active and put is None:
        return opaque.dense_partials(ctx)
    parts = []
    if 0 in ctx.active:
        labels = identity_labels(len(operand))
        parts.append(labelled(0, 0, ctx, labels, labels))
    if put is not None:
        parts.append(put)
    elif 2 in ctx.active:
        out_labels, in_labels = _one_axis_labels(len(operand), axis, dn.update_window_dims, ("o",), ("i",))
        if operand[axis] == 1:  # every row is added to the one element: a sum
            parts.append(labelled(0, 2, ctx, out_labels, in_labels))
        else:  # update row i lands on out row i + d: out row j reads j - d
            band = (("o",), ("i",), tuple(-d for d, _, _ in runs), tuple((lo + d, hi + d) for d, lo, hi in runs))
            parts.append(labelled(0, 2, ctx, out_labels, in_labels, bands=[band]))
    return parts


RULES = {
    "gather": _gather,
    "scatter": _scatter,
    "scatter-add": _scatter_add,
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape,
    "squeeze": _squeeze,
    "transpose": _transpose,
    "convert_element_type": _identity,
    "copy": _identity,
    "copy_p": _identity,
    "optimization_barrier": _optimization_barrier,
    "slice": _slice,
    "pad": _pad,
    "rev": _rev,
    "concatenate": _concatenate,
    "split": _split,
    "stack": _stack,
    "unstack": _unstack,
    "tile": _tile,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice,
    "cumsum": _cumsum,
}
