"""Elementwise primitives: diagonal partials (with NumPy broadcasting).

Binary lax ops broadcast scalars and size-1 axes, so the partial of an
operand shares a label with every output axis where the sizes agree and
replicates over the others.  Values come from JAX's own JVP of the
primitive with a ones tangent, which gives exactly the diagonal and keeps
JAX's conventions (ties of ``max``, ``abs`` at 0, ``pow`` at 0, ...);
linear ops and the common cases have closed forms instead.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ccjax.rules import opaque
from ccjax.rules.base import REGION, Partial, RuleContext, constant_nonzero, labelled

UNARY = (
    "exp", "exp2", "log", "log1p", "expm1", "sin", "cos", "tan", "asin", "acos", "atan",
    "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "sqrt", "rsqrt", "cbrt", "logistic",
    "erf", "erfc", "erf_inv", "lgamma", "digamma", "abs", "integer_pow", "square",
    "reduce_precision", "real", "imag", "conj", "bessel_i0e", "bessel_i1e",
)
BINARY = ("pow", "max", "min", "atan2", "rem", "nextafter", "div", "mul", "add", "sub",
          "add_any", "igamma", "igammac", "random_gamma_grad", "polygamma", "zeta")
#: Primitives whose every output element reads the same element of each
#: operand (scalars aside): the above, and those on complex numbers.
ELEMENTWISE = frozenset(UNARY + BINARY + ("neg", "select_n", "complex", "convert_element_type", "sign"))


def _aligned_labels(out_ndim: int, operand_shape, out_shape) -> list:
    """Labels of an operand's axes under NumPy broadcasting against the output."""
    offset = out_ndim - len(operand_shape)
    return [("ax", k + offset) if n == out_shape[k + offset] else ("bcast", k)
            for k, n in enumerate(operand_shape)]


def _full_labels(ndim: int) -> list:
    return [("ax", k) for k in range(ndim)]


def _jvp_values(ctx: RuleContext, slot: int):
    """Diagonal of ``∂out/∂in[slot]`` in the output's shape, via JAX's JVP."""

    def values(ins, outs):
        def f(x):
            args = list(ins)
            args[slot] = x
            return ctx.eval(*args)[0]

        x = ins[slot]
        return jax.jvp(f, (x,), (jnp.ones_like(x),))[1]

    return values


def _diag(ctx: RuleContext, slot: int, values, val_shape=None, val_labels=None, nonzero=None,
          ones: bool = False) -> Partial:
    out_shape = tuple(ctx.out_avals[0].shape)
    in_shape = tuple(ctx.in_avals[slot].shape)
    if val_labels is None:
        val_labels, val_shape = _full_labels(len(out_shape)), out_shape
    return labelled(0, slot, ctx, _full_labels(len(out_shape)),
                    _aligned_labels(len(out_shape), in_shape, out_shape),
                    val_labels, val_shape, values, nonzero=nonzero, ones=ones)


def _unit(ctx: RuleContext, slot: int, sign: int) -> Partial:
    out_shape = tuple(ctx.out_avals[0].shape)
    in_shape = tuple(ctx.in_avals[slot].shape)
    return labelled(0, slot, ctx, _full_labels(len(out_shape)),
                    _aligned_labels(len(out_shape), in_shape, out_shape), sign=sign)


def _generic(ctx: RuleContext) -> list[Partial]:
    return [_diag(ctx, s, _jvp_values(ctx, s)) for s in ctx.active]


def _shaped_like(ctx: RuleContext, slot: int):
    """Value labels/shape for a value shaped like operand ``slot``."""
    out_shape = tuple(ctx.out_avals[0].shape)
    shape = tuple(ctx.in_avals[slot].shape)
    return dict(val_labels=_aligned_labels(len(out_shape), shape, out_shape), val_shape=shape)


def _add(ctx):
    return [_unit(ctx, s, 1) for s in ctx.active]


def _sub(ctx):
    return [_unit(ctx, s, 1 if s == 0 else -1) for s in ctx.active]


def _neg(ctx):
    return [_unit(ctx, 0, -1)] if ctx.active else []


def _mul(ctx):
    """A constant factor's zeros (a mask, ``x * jnp.tril(ones)``) are
    structural zeros of the other operand's partial."""
    parts = []
    for s in ctx.active:
        parts.append(_diag(ctx, s, lambda ins, outs, o=1 - s: ins[o], **_shaped_like(ctx, 1 - s),
                           nonzero=constant_nonzero(ctx, 1 - s)))
    return parts


def _div(ctx):
    parts = []
    for s in ctx.active:
        if s == 0:
            parts.append(_diag(ctx, 0, lambda ins, outs: 1 / ins[1], **_shaped_like(ctx, 1)))
        else:
            parts.append(_diag(ctx, 1, lambda ins, outs: -outs[0] / ins[1]))
    return parts


def _closed_form(derivative):
    def rule(ctx):
        return [_diag(ctx, 0, lambda ins, outs: derivative(ins[0], outs[0]))] if ctx.active else []

    return rule


def _select_n(ctx):
    """``select_n(pred, *cases)``: case ``i`` passes where ``pred == i``.
    A predicate known when the graph is built (``jnp.triu``'s, a constant
    mask) makes the partials 0/1 matrices with known zeros."""
    pred = ctx.static(0) if len(ctx.active) > (0 in ctx.active) else None
    parts = []
    for s in ctx.active:
        if s == 0:
            continue
        nonzero = None if pred is None else (lambda i=s - 1: pred == i)
        parts.append(_diag(ctx, s, lambda ins, outs, i=s - 1: (ins[0] == i).astype(outs[0].dtype),
                           **_shaped_like(ctx, 0), nonzero=nonzero, ones=pred is not None))
    return parts


def _chooser(ctx):
    """``max``/``min`` with JAX's convention: 1 for the chosen operand, 1/2 each
    at a tie, 0 for both at a NaN.  JAX compares each operand with the result,
    ``x == max(x, y)``, which fails for both operands when XLA computes ``x``
    twice and the copies differ in the last bit (docs/known_issues.md);
    comparing the operands with each other gives the same values without
    that dependence."""
    if any(jnp.issubdtype(a.dtype, jnp.complexfloating) for a in ctx.in_avals):
        return _generic(ctx)
    wins = jnp.greater if ctx.name == "max" else jnp.less

    def values(ins, outs, s):
        mine, other = ins[s], ins[1 - s]
        v = jnp.where(wins(mine, other), 1.0, jnp.where(mine == other, 0.5, 0.0))
        return jnp.broadcast_to(v.astype(outs[0].dtype), outs[0].shape)

    return [_diag(ctx, s, functools.partial(values, s=s)) for s in ctx.active]


def _region(ctx):
    """A group of equations on complex values evaluated as one real-to-real
    function (:func:`ccjax.graph.fuse_complex`): where it is elementwise,
    each output's partial from each input is a diagonal, from the JVP of the
    region with a ones tangent; otherwise JAX's dense local Jacobian."""
    if not getattr(ctx.params, "elementwise", False):
        return opaque.dense_partials(ctx)
    shape = next(tuple(ctx.in_avals[s].shape) for s in ctx.active)
    parts = []
    for s in ctx.active:
        def tangents(ins, outs, s=s):
            def f(x):
                args = list(ins)
                args[s] = x
                return ctx.eval(*args)

            return jax.jvp(f, (ins[s],), (jnp.ones_like(ins[s]),))[1]

        for j, aval in enumerate(ctx.out_avals):
            if jnp.issubdtype(aval.dtype, jnp.inexact) and tuple(aval.shape) == shape:
                parts.append(labelled(j, s, ctx, _full_labels(len(shape)), _full_labels(len(shape)),
                                      _full_labels(len(shape)), shape,
                                      lambda ins, outs, j=j, tangents=tangents: tangents(ins, outs)[j]))
    return parts


RULES = {name: _generic for name in UNARY + BINARY}
RULES[REGION] = _region
RULES.update({
    "add": _add, "add_any": _add, "sub": _sub, "neg": _neg, "mul": _mul, "div": _div,
    "exp": _closed_form(lambda x, y: y),
    "log": _closed_form(lambda x, y: 1 / x),
    "sin": _closed_form(lambda x, y: jnp.cos(x)),
    "cos": _closed_form(lambda x, y: -jnp.sin(x)),
    "tanh": _closed_form(lambda x, y: 1 - y * y),
    "logistic": _closed_form(lambda x, y: y * (1 - y)),
    "select_n": _select_n,
    "max": _chooser, "min": _chooser,
    "clamp": _generic,
})
