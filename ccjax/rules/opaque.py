"""Fallback for primitives without a structured rule.

The partial of each floating output with respect to each differentiated
operand is the dense local Jacobian of that single equation, computed by
JAX's own AD: exact for ``cond``, ``scan``, ``while``, ``sort``,
``gather``... never a silent zero.  Forward mode when the equation has no
more differentiated input entries than output entries and its forward
derivative is exactly the one reverse mode transposes (a ``sort``'s
forward Jacobian is a gather of the identity, its reverse one a slow
scatter-add); reverse mode otherwise, as ``jax.jacrev`` does, or forward
mode for equations without a reverse rule.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ccjax.rules.base import Partial, RuleContext, constant_mask
from ccjax.structure import dense


def dense_partials(ctx: RuleContext, nonzero: Optional[Callable[[int, int], Optional[np.ndarray]]] = None
                   ) -> list[Partial]:
    """One dense partial per (floating output, differentiated variable).

    ``nonzero(j, slot)``, when given, returns where the local Jacobian of
    output ``j`` with respect to operand ``slot`` can be nonzero (a boolean
    array of shape ``out_shape + in_shape``) or None (anywhere); see
    :attr:`Partial.nonzero`.  It is called only when the sparse output
    asks.

    Every differentiated variable is differentiated in one joint call, as
    JAX's AD of the enclosing function would: a variable read by several
    operand slots through all of them at once, and the variables together
    (some rules, e.g. ``custom_linear_solve`` with a pytree right-hand
    side, fail on a symbolic-zero tangent for one of their operands).  In
    forward mode one call also gives every output (the partials share it);
    in reverse mode each output is its own call of ``out_size`` passes."""
    outs = [j for j, a in enumerate(ctx.out_avals) if jnp.issubdtype(a.dtype, jnp.inexact)]
    groups = ctx.same_var or tuple((s,) for s in ctx.active)
    reverse = _has_reverse_mode(ctx)
    n_in = sum(ctx.in_avals[g[0]].size for g in groups)
    n_out = sum(ctx.out_avals[j].size for j in outs)
    forward = not reverse or (ctx.forward_exact and n_in <= n_out)
    transforms = {_jacobian_transform(ctx.in_avals[g[0]].dtype, ctx.out_avals[j].dtype, not forward)
                  for j in outs for g in groups}
    where = functools.partial(_where, nonzero) if nonzero is not None else lambda j, slots, prepare: None
    if forward and len(transforms) == 1:
        return _joint_forward(ctx, outs, groups, transforms.pop(), where)
    parts = []
    for j in outs:
        out_aval = ctx.out_avals[j]
        transforms = [_jacobian_transform(ctx.in_avals[g[0]].dtype, out_aval.dtype, reverse) for g in groups]
        joint = all(t == transforms[0] for t in transforms)
        for k, slots in enumerate(groups):
            in_aval = ctx.in_avals[slots[0]]
            dtype = jnp.result_type(in_aval.dtype, out_aval.dtype)
            st, prepare = dense(tuple(out_aval.shape), tuple(in_aval.shape))
            together = groups if joint else (slots,)

            def values(ins, _outs, together=together, k=k if joint else 0, j=j, prepare=prepare,
                       jac=transforms[k], dtype=dtype):
                jacobian = jac(_on(ctx, ins, together, (j,)), argnums=tuple(range(len(together))))
                return prepare(jacobian(*[ins[g[0]] for g in together])[0][k].astype(dtype))

            parts.append(Partial(j, slots[0], st, values, nonzero=where(j, slots, prepare)))
    return parts


def _where(nonzero: Callable, j: int, slots: tuple, prepare: Callable) -> Callable:
    """The ``Partial.nonzero`` of the dense partial of output ``j`` with
    respect to the variable read by ``slots`` (the union over them), built
    when first asked for."""
    def mask():
        masks = [nonzero(j, s) for s in slots]
        return None if any(m is None for m in masks) else prepare(functools.reduce(np.logical_or, masks))

    return constant_mask(mask)


def _on(ctx: RuleContext, ins, groups, outs):
    """The equation at operands ``ins`` as a function of one value per
    group of operand slots, returning its outputs ``outs``."""
    def f(*xs):
        args = list(ins)
        for g, x in zip(groups, xs):
            for s in g:
                args[s] = x
        results = ctx.eval(*args)
        return [results[j] for j in outs]

    return f


def _joint_forward(ctx: RuleContext, outs, groups, jac, where: Callable) -> list[Partial]:
    """Every (output, variable) partial from one forward-mode Jacobian."""
    def joint(ins, _outs):
        f = _on(ctx, ins, groups, outs)
        return jac(f, argnums=tuple(range(len(groups))))(*[ins[g[0]] for g in groups])

    parts = []
    for jj, j in enumerate(outs):
        out_aval = ctx.out_avals[j]
        for k, slots in enumerate(groups):
            in_aval = ctx.in_avals[slots[0]]
            dtype = jnp.result_type(in_aval.dtype, out_aval.dtype)
            st, prepare = dense(tuple(out_aval.shape), tuple(in_aval.shape))

            def pick(result, jj=jj, k=k, prepare=prepare, dtype=dtype):
                return prepare(result[jj][k].astype(dtype))

            parts.append(Partial(j, slots[0], st, lambda ins, o, pick=pick: pick(joint(ins, o)), joint, pick,
                                 where(j, slots, prepare)))
    return parts


def _has_reverse_mode(ctx: RuleContext) -> bool:
    """Whether JAX can differentiate the equation in reverse mode (a
    ``while_loop`` over differentiated values cannot), checked on shapes."""
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)

    def f(*xs):
        return [o for o, a in zip(ctx.eval(*xs), ctx.out_avals) if jnp.issubdtype(a.dtype, jnp.inexact)]

    try:
        primals = [spec(a) for a in ctx.in_avals]
        jax.eval_shape(lambda *xs: jax.vjp(lambda *d: f(*_with(xs, ctx.active, d)),
                                          *[xs[s] for s in ctx.active])[1](f(*xs)), *primals)
        return True
    except Exception:  # noqa: BLE001 - any refusal of JAX's reverse mode
        return False


def _with(args, slots, values) -> list:
    args = list(args)
    for s, v in zip(slots, values):
        args[s] = v
    return args


def _jacobian_transform(in_dtype, out_dtype, reverse: bool):
    """JAX's AD transform for one local Jacobian: reverse mode when asked
    (``jax.jacrev``'s answer is the one to match where the two modes
    disagree: a gather at an out-of-range index, whose forward rule follows
    the clamped read while the transpose drops it), forward mode otherwise
    (the caller asks for it only where the modes agree or reverse mode
    does not exist).  Complex to complex is the
    complex derivative (the graph is holomorphic; elsewhere complex values
    are fused into real regions); complex to real is ``jax.jacrev``'s
    convention, the only one JAX defines.
    """
    if jnp.issubdtype(in_dtype, jnp.complexfloating) and jnp.issubdtype(out_dtype, jnp.complexfloating):
        return _HOLOMORPHIC[reverse]
    return jax.jacrev if reverse or jnp.issubdtype(in_dtype, jnp.complexfloating) else jax.jacfwd


#: The complex-derivative transforms, made once so that equal choices compare equal.
_HOLOMORPHIC = {True: functools.partial(jax.jacrev, holomorphic=True),
                False: functools.partial(jax.jacfwd, holomorphic=True)}
