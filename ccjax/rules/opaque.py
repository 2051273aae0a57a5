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
    outs = [j for j, a in enumerate(ctx.out_avals) if jnp.issubdtype(a.dtype, jnp.inexact)]
    jac = jax.jacrev if ctx.reverse_only else jax.jacfwd
    parts = []
    for slot in ctx.active:
        for j in outs:
            st, prepare = dense(tuple(ctx.out_avals[j].shape), tuple(ctx.in_avals[slot].shape))

            def values(ins, _outs, slot=slot, j=j, prepare=prepare):
                def f(x):
                    args = list(ins)
                    args[slot] = x
                    return ctx.eval(*args)[j]

                return prepare(jac(f)(ins[slot]).astype(ctx.out_avals[j].dtype))

            parts.append(Partial(j, slot, st, values))
    return parts
