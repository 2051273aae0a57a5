"""Reductions: Kronecker pairs on kept axes, replication or values on reduced ones.

Cumulative reductions other than ``cumsum`` (``cumprod``, ``cummax``,
``cummin``, ``cumlogsumexp``) run along one axis, each lane on its own:
Kronecker pairs on the other axes and an ``n × n`` triangle of values per
lane (``out[i]`` reads ``in[j]`` for ``j <= i``, ``j >= i`` reversed),
found by ``n`` VJPs of the whole equation, each seeding output position
``i`` of every lane at once (lanes do not mix), with JAX's own derivative
rules.  (``n`` JVPs cost as many multiplications, but ran 1.3-1.4x slower
on CPU for a 256-entry ``cumprod``, ``cummax`` or ``cumlogsumexp``: the
columns they give must be transposed into rows.)
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ccjax.rules.base import RuleContext, labelled


def _labels(ctx: RuleContext):
    in_shape = tuple(ctx.in_avals[0].shape)
    axes = {a % max(len(in_shape), 1) for a in ctx.params["axes"]}
    kept = [k for k in range(len(in_shape)) if k not in axes]
    in_labels = [("r", k) if k in axes else ("ax", kept.index(k)) for k in range(len(in_shape))]
    out_labels = [("ax", i) for i in range(len(kept))]
    return out_labels, in_labels, in_shape, sorted(axes)


def _reduce_sum(ctx):
    if 0 not in ctx.active:
        return []
    out_labels, in_labels, _, _ = _labels(ctx)
    return [labelled(0, 0, ctx, out_labels, in_labels)]


def _picked(x, axes, kind: str):
    """One-hot (bool, ``x``'s shape) of the element ``argmax``/``argmin`` picks
    over ``axes``: a single pass, so it agrees with itself however ``x`` is
    computed."""
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = jnp.transpose(x, kept + list(axes))
    flat = moved.reshape(moved.shape[:len(kept)] + (math.prod(x.shape[a] for a in axes),))
    if flat.size == 0:
        return jnp.zeros(x.shape, bool)
    idx = (jnp.argmax if kind == "reduce_max" else jnp.argmin)(flat, axis=-1)
    hot = jnp.arange(flat.shape[-1]) == idx[..., None]
    return jnp.transpose(hot.reshape(moved.shape), tuple(int(i) for i in np.argsort(kept + list(axes))))


def _reduce_chooser(ctx):
    """max/min: ties share the derivative equally, as in JAX.

    JAX finds the chosen elements by ``x == max(x)``.  Inside one jitted
    program XLA may compute ``x`` once for the max and again (fused) for the
    comparison, and XLA:CPU contracts ``a * b - c`` into an FMA in some copies
    only, so the equality can miss the maximum by one ulp and the derivative
    comes out 0, inf or NaN (docs/known_issues.md).  The element that
    ``argmax`` picks therefore always counts; other elements count where they
    equal the max, as in JAX (a NaN max still gives NaN).
    """
    if 0 not in ctx.active:
        return []
    out_labels, in_labels, in_shape, axes = _labels(ctx)

    def values(ins, outs):
        x = ins[0]
        m = jnp.expand_dims(outs[0], axes)
        location = (x == m) | (_picked(x, axes, ctx.name) & (m == m))
        # XLA may recompute the comparison in the numerator's fusion and
        # again in the count's, where the two copies of ``x`` can round
        # apart (an FMA in one only): two tied copies of a min then got 1
        # each (seed 87 of the random functions, at XLA's optimisation
        # level 0).  XLA:CPU drops the barrier late, but fusion before that
        # keeps the locations in one place (that program: 58 comparisons
        # compiled instead of 63, and the shares sum to 1).
        location = lax.optimization_barrier(location.astype(outs[0].dtype))
        return location / jnp.sum(location, axis=tuple(axes), keepdims=True)

    return [labelled(0, 0, ctx, out_labels, in_labels, in_labels, in_shape, values)]


def _reduce_prod(ctx):
    """Each output depends on its own slice only, so a VJP with ones gives
    every nonzero of the partial exactly (and JAX's handling of zeros)."""
    if 0 not in ctx.active:
        return []
    out_labels, in_labels, in_shape, _ = _labels(ctx)

    def values(ins, outs):
        out, vjp = jax.vjp(lambda x: ctx.eval(x)[0], ins[0])
        return vjp(jnp.ones_like(out))[0]

    return [labelled(0, 0, ctx, out_labels, in_labels, in_labels, in_shape, values)]


def _cumulative(ctx):
    if 0 not in ctx.active:
        return []
    shape, axis = tuple(ctx.in_avals[0].shape), ctx.params["axis"]
    n = shape[axis]
    others = [("ax", k) for k in range(len(shape)) if k != axis]
    out_labels = [("ax", k) if k != axis else ("o",) for k in range(len(shape))]
    in_labels = [("ax", k) if k != axis else ("i",) for k in range(len(shape))]
    val_shape = tuple(m for k, m in enumerate(shape) if k != axis) + (n, n)
    dtype = ctx.out_avals[0].dtype

    def values(ins, outs):
        _, pull = jax.vjp(lambda x: ctx.eval(x)[0], ins[0])
        one_hot = jnp.eye(n, dtype=dtype).reshape((n,) + (1,) * axis + (n,) + (1,) * (len(shape) - axis - 1))
        seeds = jnp.broadcast_to(one_hot, (n,) + shape)  # seed i: output position i of every lane
        rows = jax.vmap(lambda t: pull(t)[0])(seeds)  # (i,) + shape, position j on ``axis``
        return jnp.moveaxis(jnp.moveaxis(rows, 0, -1), axis, -1).astype(dtype)  # others + (i, j)

    triangle = np.tri(n, dtype=bool)
    triangle = triangle.T if ctx.params["reverse"] else triangle
    return [labelled(0, 0, ctx, out_labels, in_labels, others + [("o",), ("i",)], val_shape, values,
                     nonzero=lambda: np.broadcast_to(triangle, val_shape))]


RULES = {
    "cumprod": _cumulative,
    "cummax": _cumulative,
    "cummin": _cumulative,
    "cumlogsumexp": _cumulative,
    "reduce_sum": _reduce_sum,
    "reduce_max": _reduce_chooser,
    "reduce_min": _reduce_chooser,
    "reduce_prod": _reduce_prod,
}
