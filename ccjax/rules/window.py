"""Windowed reductions (pooling): selections over each output's window.

``reduce_window_sum`` (``flax.linen.avg_pool``, ``lax.reduce_window`` with
``add``) adds, for every output element, the ``prod(window)`` operand
elements under its window: a pick of that width at flat indices fixed by
the shapes and parameters, value 1 (0 for a tap in the padding).  The
indices are NumPy constants, so the selection algebra composes them when
the graph is built, as for a convolution (:mod:`.conv`).

``reduce_window_max``/``reduce_window_min`` (max pooling) pass on the
derivative of one element per window, the one JAX's JVP selects
(``select_and_gather_add``: ties as XLA's window reduction breaks them):
a pick of width 1 at an index found when the program runs, by that same
JVP applied to a tangent holding each element's flat index, and a stored
value (0 where the window's pick is in the padding, found by the JVP of
a ones tangent).

Base dilation, windows of more than
:data:`ccjax.rules.selection.MAX_CONSTANT_SELECTION` taps in all, index
tangents the dtype cannot hold exactly, and equations inside ``cond``
branches (whose union joins structures only) keep JAX's dense local
Jacobian (:mod:`.opaque`).
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ccjax.rules import opaque, selection
from ccjax.rules.base import Partial, RuleContext
from ccjax.structure import Selection


def _taps(ctx: RuleContext) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(flat, valid)``, both ``(out_size, prod(window))`` in the output's
    flat order and the window's row-major order: the flat operand element
    each tap reads (clamped) and whether it lies inside the operand (not in
    the padding); None where the rule does not cover the equation."""
    p = ctx.params
    shape, out = tuple(ctx.in_avals[0].shape), tuple(ctx.out_avals[0].shape)
    window, strides = p["window_dimensions"], p["window_strides"]
    dilation = p["window_dilation"] or (1,) * len(shape)
    if any(d != 1 for d in (p["base_dilation"] or ())):
        return None
    size, width = math.prod(out), math.prod(window)
    if (size * width > selection.MAX_CONSTANT_SELECTION or size * width == 0
            or max(math.prod(shape), size) > selection.MAX_FLAT):
        return None
    rank = len(shape)
    grid = np.ogrid[tuple(slice(0, n) for n in list(out) + list(window))]
    lead = np.broadcast_shapes(*(g.shape for g in grid))
    coords = [np.broadcast_to(grid[d] * strides[d] + grid[rank + d] * dilation[d] - p["padding"][d][0], lead)
              for d in range(rank)]
    flat, valid = selection.clamped_flat(coords, shape, lead)
    return flat.reshape(size, width).astype(np.int32), valid.reshape(size, width)


def _window_sum(ctx: RuleContext) -> list[Partial]:
    if 0 not in ctx.active:
        return []
    taps = None if ctx.in_branch else _taps(ctx)
    if taps is None:
        return opaque.dense_partials(ctx)
    flat, valid = taps
    out_shape, in_shape = tuple(ctx.out_avals[0].shape), tuple(ctx.in_avals[0].shape)
    digest = hashlib.sha256(flat.tobytes()).hexdigest()[:16]
    keys = tuple(("window", out_shape, in_shape, digest, col) for col in range(flat.shape[1]))
    padded = not bool(valid.all())
    st = Selection(out_shape, in_shape, "pick", keys, ("v",) if padded else None)
    value = (flat, valid.astype(ctx.out_avals[0].dtype)) if padded else (flat,)
    return [Partial(0, 0, st, lambda ins, outs: value, constant=True)]


def _exact_indices(dtype, size: int) -> bool:
    """Whether ``dtype`` holds every flat index below ``size`` exactly."""
    return jnp.issubdtype(dtype, jnp.floating) and size <= 2 ** (jnp.finfo(dtype).nmant + 1)


def _window_chooser(ctx: RuleContext) -> list[Partial]:
    if 0 not in ctx.active:
        return []
    shape, dtype = tuple(ctx.in_avals[0].shape), ctx.in_avals[0].dtype
    if (ctx.in_branch or ctx.same_value is None or any(d != 1 for d in (ctx.params["base_dilation"] or ()))
            or not _exact_indices(dtype, math.prod(shape)) or math.prod(shape) > selection.MAX_FLAT):
        return opaque.dense_partials(ctx)
    text = repr(sorted((k, repr(v)) for k, v in ctx.params.items()))
    key = (ctx.name, ctx.same_value(0), hashlib.sha256(text.encode()).hexdigest()[:16], shape)
    out_shape = tuple(ctx.out_avals[0].shape)
    st = Selection(out_shape, shape, "pick", (key,), ("v",))

    def chosen(ins, _outs):
        tangents = jnp.stack([jnp.arange(math.prod(shape), dtype=dtype).reshape(shape), jnp.ones(shape, dtype)])
        push = jax.vmap(lambda t: jax.jvp(lambda x: ctx.eval(x)[0], (ins[0],), (t,))[1])
        where, read = push(tangents)
        return where.reshape(-1, 1).astype(np.int32), read.reshape(-1, 1).astype(ctx.out_avals[0].dtype)

    return [Partial(0, 0, st, chosen)]


RULES = {
    "reduce_window_sum": _window_sum,
    "reduce_window_max": _window_chooser,
    "reduce_window_min": _window_chooser,
}
