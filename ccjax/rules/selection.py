"""Gathers, scatter-adds, sorts and ``top_k`` at indices known only at run time.

Their partials are :class:`ccjax.structure.Selection` s: the flat operand
element each output element reads (a gather, a sort) or the flat output
element each update element lands on (a scatter-add), computed when the
program runs by the same primitive applied to an ``iota`` of flat indices.
Where the indices are known when the graph is built (constants of the
function), the reads are computed then, in NumPy, so the plan composes
them as constants and a sparse output can drop the structural zeros.
Out-of-range indices follow ``jax.jacrev``, which differentiates by the
transposed primitive: a gather's transpose is a scatter-add, which XLA
drops out of range unless ``mode=clip`` clamps; a scatter-add's is a
gather, which drops in ``mode=fill`` and clamps otherwise (XLA's gather
clamps).  Dropped entries are a stored 0/1 value.
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ccjax import numpy_eval
from ccjax.rules import opaque
from ccjax.rules.base import Partial, RuleContext
from ccjax.structure import Selection

#: Largest flat size whose indices an int32 holds.
MAX_FLAT = 2**31 - 1
#: Most entries a selection at constant indices lists (NumPy arrays built
#: and composed when the graph is built).
MAX_CONSTANT_SELECTION = 1 << 22


def _flat_iota(shape) -> jnp.ndarray:
    return lax.iota(np.int32, math.prod(shape)).reshape(shape)


def _all_in_range(ctx: RuleContext, valid_of) -> bool:
    """Whether indices known when the graph is built select in range
    everywhere (then the 0/1 value is not needed)."""
    idx = ctx.static(1)
    if idx is None:
        return False
    with jax.ensure_compile_time_eval():  # inside an outer trace too
        return bool(np.all(np.asarray(valid_of(jnp.asarray(idx)))))


def _single_elements(operand, idx_shape, dimension_numbers, slice_sizes) -> bool:
    """Whether the gather reads single elements: every slice size 1, every
    operand dimension collapsed, no batching, an index vector per result
    element."""
    dn = dimension_numbers
    return not (dn.offset_dims or dn.operand_batching_dims or any(s != 1 for s in slice_sizes) or 0 in operand
                or sorted(dn.collapsed_slice_dims) != list(range(len(operand))) or len(idx_shape) == 0
                or idx_shape[-1] != len(dn.start_index_map))


def _element_reads(operand, idx, dimension_numbers, xp=np):
    """``(flat, valid)``, both ``(N, 1)``, of a gather of single elements
    (:func:`_single_elements`) at indices ``idx``: the flat operand index
    each result element reads, start indices clamped as XLA clamps them
    (``clip``), and whether every start was in range (``fill``: the
    element is read, not dropped).  ``xp``: NumPy for indices known when
    the graph is built, ``jax.numpy`` for run-time ones (arithmetic, not
    the gathers of an iota that compile slowly)."""
    lead = idx.shape[:-1]
    starts = [xp.zeros(lead, idx.dtype) for _ in operand]
    for k, d in enumerate(dimension_numbers.start_index_map):
        starts[d] = idx[..., k]
    flat, valid = clamped_flat(starts, operand, lead, xp)
    return flat.reshape(-1, 1).astype(np.int32), valid.reshape(-1, 1)


def _window_reads(operand, idx, dimension_numbers, slice_sizes) -> Optional[tuple]:
    """``(flat, valid)``, both ``(N, 1)``, of a gather of windows at indices
    ``idx`` known when the graph is built: the gather of a flat ``iota``
    (``clip``, as XLA clamps) and of ones (``fill``), run in NumPy; None
    where NumPy cannot run it (batching dimensions) or it would list more
    than :data:`MAX_CONSTANT_SELECTION` entries."""
    params = {"dimension_numbers": dimension_numbers, "slice_sizes": tuple(slice_sizes),
              "mode": lax.GatherScatterMode.CLIP}
    entries = math.prod(idx.shape[:-1]) * math.prod(slice_sizes) if idx.ndim else math.prod(slice_sizes)
    if entries > MAX_CONSTANT_SELECTION:
        return None
    try:
        [flat] = numpy_eval.gather(params, np.arange(math.prod(operand), dtype=np.int32).reshape(operand), idx)
        [valid] = numpy_eval.gather({**params, "mode": lax.GatherScatterMode.FILL_OR_DROP, "fill_value": False},
                                  np.ones(operand, bool), idx)
    except NotImplementedError:
        return None
    return flat.reshape(-1, 1), valid.reshape(-1, 1)


def clamped_flat(coords, shape, lead_shape, xp=np) -> tuple:
    """``(flat, valid)``, both of ``lead_shape``: the flat index into
    ``shape`` of the coordinates ``coords`` (one integer array per axis),
    each clamped into range as XLA clamps it, and whether every coordinate
    was in range (NumPy arrays, or ``jax.numpy`` ones for ``xp=jnp``)."""
    flat = xp.zeros(lead_shape, np.int64 if xp is np else np.int32)
    valid = xp.ones(lead_shape, bool)
    for c, n in zip(coords, shape):
        flat = flat * n + xp.clip(c, 0, n - 1).astype(flat.dtype)
        valid = valid & (c >= 0) & (c < n)
    return flat, valid


def _indexed(ctx: RuleContext, slot: int, kind: str, operand, dimension_numbers, slice_sizes,
             drops: bool) -> Partial:
    """The selection of operand ``slot`` whose flat indices a gather from the
    output-side array ``operand`` (shape) at the equation's indices reads:
    the gather itself (a pick) or a scatter-add's transpose (a put).
    ``drops``: out-of-range windows drop (a stored 0/1 value) rather than clamp."""
    params = ctx.params
    gather = lambda x, idx, **over: lax.gather(x, idx, dimension_numbers, slice_sizes,
                                                indices_are_sorted=params["indices_are_sorted"],
                                                unique_indices=params["unique_indices"], **over)
    valid_of = lambda idx: gather(jnp.ones(operand, np.float32), idx, mode=lax.GatherScatterMode.FILL_OR_DROP,
                                  fill_value=0)
    known = ctx.static(1)
    single = _single_elements(operand, ctx.in_avals[1].shape, dimension_numbers, slice_sizes)
    reads = None
    if known is not None:
        known = np.asarray(known).astype(np.int64)
        reads = (_element_reads(operand, known, dimension_numbers) if single
                 else _window_reads(operand, known, dimension_numbers, slice_sizes))
    if reads is not None:
        stored = drops and not bool(reads[1].all())
    else:
        stored = drops and not _all_in_range(ctx, valid_of)
    text = repr(sorted((k, repr(v)) for k, v in params.items()))
    key = ctx.name, ctx.same_value(1), hashlib.sha256(text.encode()).hexdigest()[:16], tuple(operand)
    out, inn = tuple(ctx.out_avals[0].shape), tuple(ctx.in_avals[slot].shape)
    st = Selection(out, inn, kind, (key,), ("v",) if stored else None)
    dtype = ctx.out_avals[0].dtype

    def values(ins, _outs):
        if reads is not None:  # constants: NumPy arrays the selection algebra keeps composing in NumPy
            return (reads[0],) if not stored else (reads[0], reads[1].astype(dtype))
        if single:
            idx, valid = _element_reads(operand, jnp.asarray(ins[1]), dimension_numbers, jnp)
        else:
            idx = gather(_flat_iota(operand), ins[1], mode=lax.GatherScatterMode.CLIP).reshape(-1, 1)
            valid = None if not stored else valid_of(ins[1]).reshape(-1, 1)
        return (idx,) if not stored else (idx, valid.astype(dtype))

    return Partial(0, slot, st, values, constant=reads is not None)


def constant_selection(ctx: RuleContext, kind: str, idx: np.ndarray, valid: Optional[np.ndarray] = None,
                       out: int = 0, slot: int = 0) -> Partial:
    """A selection at flat indices known when the graph is built: a strided
    or reversed slice (a ``pick``: ``idx`` has one entry per out element,
    the flat in element it reads) or an interior pad (a ``put``: one per in
    element, the flat out element it lands on).  ``valid`` (same shape,
    bool): False where nothing is read or written (a 0/1 stored value),
    None when every entry is.  Equal index arrays get equal keys, so sums
    of reads at the same indices add their values."""
    out_shape, in_shape = tuple(ctx.out_avals[out].shape), tuple(ctx.in_avals[slot].shape)
    idx = np.asarray(idx, np.int32).reshape(-1, 1)
    stored = valid is not None and not bool(np.all(valid))
    digest = hashlib.sha256(idx.tobytes()).hexdigest()[:16]
    key = ("constant", kind, out_shape, in_shape, digest)
    st = Selection(out_shape, in_shape, kind, (key,), ("v",) if stored else None)
    dtype = ctx.out_avals[out].dtype
    value = (idx,) if not stored else (idx, np.asarray(valid, dtype).reshape(-1, 1))
    return Partial(out, slot, st, lambda ins, outs: value, constant=True)


def _fits_int32(*shapes) -> bool:
    return all(math.prod(shape) <= MAX_FLAT for shape in shapes)


def gather_partial(ctx: RuleContext) -> Optional[Partial]:
    """``∂ gather(x, idx) / ∂x`` as a pick, or None when the flat sizes do not
    fit int32 indices or the operand is not differentiated."""
    operand = tuple(ctx.in_avals[0].shape)
    if 0 not in ctx.active or ctx.same_value is None or not _fits_int32(operand, ctx.out_avals[0].shape):
        return None
    mode = lax.GatherScatterMode.from_any(ctx.params["mode"])
    return _indexed(ctx, 0, "pick", operand, ctx.params["dimension_numbers"], ctx.params["slice_sizes"],
                    drops=mode != lax.GatherScatterMode.CLIP)


def scatter_add_partial(ctx: RuleContext) -> Optional[Partial]:
    """``∂ scatter_add(x, idx, y) / ∂y`` as a put: each update element lands
    where the transposed gather (JAX's transpose rule of scatter-add) reads."""
    operand, updates = tuple(ctx.in_avals[0].shape), tuple(ctx.in_avals[2].shape)
    if 2 not in ctx.active or ctx.same_value is None or not _fits_int32(operand, updates):
        return None
    dn = ctx.params["dimension_numbers"]
    gather_dn = lax.GatherDimensionNumbers(
        offset_dims=dn.update_window_dims, collapsed_slice_dims=dn.inserted_window_dims,
        start_index_map=dn.scatter_dims_to_operand_dims, operand_batching_dims=dn.operand_batching_dims,
        start_indices_batching_dims=dn.scatter_indices_batching_dims)
    window = iter(dn.update_window_dims)
    slice_sizes = tuple(1 if k in dn.inserted_window_dims or k in dn.operand_batching_dims
                        else updates[next(window)] for k in range(len(operand)))
    # The transposed gather drops out-of-range windows only in fill mode (XLA's gather clamps).
    mode = lax.GatherScatterMode.from_any(ctx.params["mode"])
    return _indexed(ctx, 2, "put", operand, gather_dn, slice_sizes, drops=mode == lax.GatherScatterMode.FILL_OR_DROP)


def sort_partials(ctx: RuleContext) -> list[Partial]:
    """Every sorted floating operand reads its input at the sort's
    permutation (found as JAX's sort JVP finds it: by sorting an ``iota``
    along with the keys); an output never depends on another operand."""
    shape = tuple(ctx.in_avals[0].shape)
    if not _fits_int32(shape) or ctx.same_value is None:
        return []
    dimension, num_keys = ctx.params["dimension"], ctx.params["num_keys"]
    keys = tuple(ctx.same_value(k) for k in range(num_keys))
    key = ("sort", keys, dimension, num_keys, ctx.params["is_stable"], shape)

    def permutation(ins, _outs):
        ordered = lax.sort((*ins[:num_keys], _flat_iota(shape)), dimension=dimension,
                           is_stable=ctx.params["is_stable"], num_keys=num_keys)
        return ordered[-1].reshape(-1, 1)

    parts = []
    for slot in ctx.active:
        if jnp.issubdtype(ctx.out_avals[slot].dtype, jnp.inexact):
            st = Selection(tuple(ctx.out_avals[slot].shape), shape, "pick", (key,))
            parts.append(Partial(slot, slot, st, lambda ins, outs: (permutation(ins, outs),), permutation,
                                 lambda idx: (idx,)))
    return parts


def top_k_partials(ctx: RuleContext) -> list[Partial]:
    """``lax.top_k``'s values read the operand where its indices output
    says, as JAX's JVP of it gathers the tangent there (ties as ``top_k``
    breaks them); the indices carry no derivative."""
    shape, axis = tuple(ctx.in_avals[0].shape), ctx.params["axis"]
    if 0 not in ctx.active or not _fits_int32(shape) or ctx.same_value is None:
        return opaque.dense_partials(ctx) if 0 in ctx.active else []
    key = ("top_k", ctx.same_value(0), ctx.params["k"], axis, shape)
    st = Selection(tuple(ctx.out_avals[0].shape), shape, "pick", (key,))

    def reads(ins, outs):
        return (jnp.take_along_axis(_flat_iota(shape), outs[1].astype(np.int32), axis).reshape(-1, 1),)

    return [Partial(0, 0, st, reads)]


RULES = {"sort": sort_partials, "top_k": top_k_partials}
