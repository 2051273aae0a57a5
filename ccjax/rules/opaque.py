"""Fallback for primitives without a structured rule.

The partial of each floating output with respect to each differentiated
operand is the dense local Jacobian of that single equation, computed by
JAX's own AD (forward mode, or reverse mode for ``custom_vjp`` calls): exact
for ``cond``, ``scan``, ``while``, ``sort``, ``gather``... never a silent zero.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ccjax.rules.base import Partial, RuleContext
from ccjax.structure import dense


def dense_partials(ctx: RuleContext) -> list[Partial]:
    """One dense partial per (floating output, differentiated variable).

    A variable read by several operand slots is differentiated through all of
    them at once, as JAX's AD of the enclosing function would (some rules, e.g.
    ``custom_linear_solve``, accept tangents only in that joint form)."""
    outs = [j for j, a in enumerate(ctx.out_avals) if jnp.issubdtype(a.dtype, jnp.inexact)]
    jac = jax.jacrev if ctx.reverse_only else jax.jacfwd
    groups = ctx.same_var or tuple((s,) for s in ctx.active)
    parts = []
    for slots in groups:
        for j in outs:
            st, prepare = dense(tuple(ctx.out_avals[j].shape), tuple(ctx.in_avals[slots[0]].shape))

            def values(ins, _outs, slots=slots, j=j, prepare=prepare):
                def f(x):
                    args = list(ins)
                    for s in slots:
                        args[s] = x
                    return ctx.eval(*args)[j]

                return prepare(jac(f)(ins[slots[0]]).astype(ctx.out_avals[j].dtype))

            parts.append(Partial(j, slots[0], st, values))
    return parts
