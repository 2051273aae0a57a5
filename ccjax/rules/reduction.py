"""Reductions: Kronecker pairs on kept axes, replication or values on reduced ones."""
from __future__ import annotations

import jax
import jax.numpy as jnp

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


def _reduce_chooser(ctx):
    """max/min: ties share the derivative equally, as in JAX."""
    if 0 not in ctx.active:
        return []
    out_labels, in_labels, in_shape, axes = _labels(ctx)

    def values(ins, outs):
        x = ins[0]
        location = (x == jnp.expand_dims(outs[0], axes)).astype(outs[0].dtype)
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


RULES = {
    "reduce_sum": _reduce_sum,
    "reduce_max": _reduce_chooser,
    "reduce_min": _reduce_chooser,
    "reduce_prod": _reduce_prod,
}
