"""``conv_general_dilated``: selections at constant indices with run-time values.

An output element ``out[b, o, s]`` (batch, feature, spatial position) is
``sum over taps (c, k) of lhs[b, c, s * stride + k * dilation - pad] *
rhs[o, c, k]``, so it reads ``C · prod(window)`` elements of each operand at
flat indices fixed by the shapes and parameters.  Its partial with respect
to ``lhs`` is a pick of that width whose values are the kernel's entries (0
where a tap falls into the padding), and with respect to ``rhs`` a pick of
the same width whose values are the input's entries under the window.  The
indices are NumPy constants, so the selection algebra composes them when
the graph is built: a 3-point stencil written as a convolution is a
3-column selection, not a dense ``n × n`` block.  A constant kernel's zero
entries are structural zeros, and taps zero everywhere are left out.  Stored entries are
``out_size · C · prod(window)`` (the convolution's multiplications): above
:data:`ccjax.rules.selection.MAX_CONSTANT_SELECTION`, with feature or batch
groups, input dilation (transposed convolutions), or inside ``cond``
branches (whose union joins structures only), the partial is JAX's dense
local Jacobian (:mod:`.opaque`).
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional

import jax.numpy as jnp
import numpy as np

from ccjax.rules import opaque, selection
from ccjax.rules.base import Partial, RuleContext
from ccjax.structure import Selection


def _taps(ctx: RuleContext) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(lhs_flat, rhs_flat, valid)``, each ``(out_size, width)`` in the
    output's flat order and the taps' ``(c, k...)`` order: the flat ``lhs``
    and ``rhs`` element each tap of each output element reads, and whether
    the ``lhs`` element lies inside the (unpadded) input; None where the
    convolution is not one this rule covers."""
    p = ctx.params
    lhs, rhs = (tuple(a.shape) for a in ctx.in_avals)
    out = tuple(ctx.out_avals[0].shape)
    if (p["feature_group_count"] != 1 or p["batch_group_count"] != 1
            or any(d != 1 for d in (p["lhs_dilation"] or ()))):
        return None
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    n_spatial = len(lhs_spec) - 2
    strides = p["window_strides"] or (1,) * n_spatial
    dilation = p["rhs_dilation"] or (1,) * n_spatial
    pads = [lo for lo, _ in p["padding"]]
    batch, feats = out[out_spec[0]], out[out_spec[1]]
    spatial = [out[d] for d in out_spec[2:]]
    channels, window = rhs[rhs_spec[1]], [rhs[d] for d in rhs_spec[2:]]
    lead = batch * feats * math.prod(spatial)
    width = channels * math.prod(window)
    if (lead * width > selection.MAX_CONSTANT_SELECTION or lead * width == 0
            or max(math.prod(lhs), math.prod(rhs), math.prod(out)) > selection.MAX_FLAT):
        return None
    # logical axes: b, o, s_1..s_d (lead), then c, k_1..k_d (taps)
    d = n_spatial
    grid = np.ogrid[tuple(slice(0, n) for n in [batch, feats] + spatial + [channels] + window)]
    b, o, s, c, k = grid[0], grid[1], grid[2:2 + d], grid[2 + d], grid[3 + d:]
    shape = np.broadcast_shapes(*(g.shape for g in grid))
    pos = [s[i] * strides[i] + k[i] * dilation[i] - pads[i] for i in range(d)]
    coords = [None] * (d + 2)
    coords[lhs_spec[0]], coords[lhs_spec[1]] = b, c
    for i in range(d):
        coords[lhs_spec[2 + i]] = pos[i]
    lhs_flat, valid = selection.clamped_flat([np.broadcast_to(x, shape) for x in coords], lhs, shape)
    kcoords = [None] * (d + 2)
    kcoords[rhs_spec[0]], kcoords[rhs_spec[1]] = o, c
    for i in range(d):
        kcoords[rhs_spec[2 + i]] = k[i]
    rhs_flat = np.ravel_multi_index([np.broadcast_to(x, shape) for x in kcoords], rhs)
    # lead axes from logical order (b, o, s...) to the output's layout
    lead_perm = [list(out_spec).index(a) for a in range(d + 2)]
    perm = lead_perm + list(range(d + 2, 2 * d + 3))
    as_rows = lambda a: np.ascontiguousarray(np.transpose(a, perm)).reshape(lead, width)
    return as_rows(lhs_flat).astype(np.int32), as_rows(rhs_flat).astype(np.int32), as_rows(valid)


def _pick(ctx: RuleContext, slot: int, flat: np.ndarray, values, nonzero: np.ndarray) -> Partial:
    """A pick of ``flat.shape[1]`` columns from operand ``slot`` with stored
    ``values(ins) -> (out_size, width)``, zero where ``nonzero`` (same
    shape) is False."""
    digest = hashlib.sha256(flat.tobytes()).hexdigest()[:16]
    out_shape, in_shape = tuple(ctx.out_avals[0].shape), tuple(ctx.in_avals[slot].shape)
    keys = tuple(("conv", slot, out_shape, in_shape, digest, col) for col in range(flat.shape[1]))
    st = Selection(out_shape, in_shape, "pick", keys, ("v",))
    dtype = ctx.out_avals[0].dtype
    return Partial(0, slot, st, lambda ins, outs: (flat, values(ins).astype(dtype)), nonzero=lambda: nonzero,
                   indices=lambda: (flat,))


#: Largest constant kernel whose zero taps are looked for when the graph is
#: built (a kernel with zeros pins the graph to its value, checked on every call).
MAX_STATIC_KERNEL = 1 << 16


def _kernel_taps(ctx: RuleContext, lhs_flat: np.ndarray, rhs_flat: np.ndarray, valid: np.ndarray):
    """``(lhs_flat, rhs_flat, reads)`` of the input's partial: where the
    kernel is a constant (or computed from constants), its zero entries are
    structural zeros of that partial, and a tap zero for every output
    element (a 5-point stencil's corners in a 3 x 3 kernel) is left out of
    the pick, so it costs no product and stores no entry.  Only a kernel
    with zeros pins the graph: without them the partial is the same for
    every kernel, so a model's weights closed over in eager calls do not
    rebuild the graph when they change."""
    zeros = ctx.zeros(1) if ctx.in_avals[1].size <= MAX_STATIC_KERNEL else None
    if zeros is None or not zeros.any():
        return lhs_flat, rhs_flat, valid
    reads = valid & ~zeros.reshape(-1)[rhs_flat]
    keep = reads.any(axis=0)
    keep[np.argmax(keep)] = True  # an all-zero kernel still gives one (zero) column
    return lhs_flat[:, keep], rhs_flat[:, keep], reads[:, keep]


def _conv(ctx: RuleContext) -> list[Partial]:
    taps = None if ctx.in_branch else _taps(ctx)
    if taps is None:
        return opaque.dense_partials(ctx)
    lhs_flat, rhs_flat, valid = taps
    parts = []
    if 0 in ctx.active:  # the kernel's entries, 0 in the padding
        lhs_cols, rhs_cols, reads = _kernel_taps(ctx, lhs_flat, rhs_flat, valid)
        parts.append(_pick(ctx, 0, lhs_cols, lambda ins: jnp.where(reads, ins[1].reshape(-1)[rhs_cols], 0), reads))
    if 1 in ctx.active:  # the input's entries under the window, 0 in the padding
        parts.append(_pick(ctx, 1, rhs_flat, lambda ins: jnp.where(valid, ins[0].reshape(-1)[lhs_flat], 0), valid))
    return parts


RULES = {"conv_general_dilated": _conv}
