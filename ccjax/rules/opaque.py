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
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ccjax import _jaxpr
from ccjax.rules import batching
from ccjax.rules.base import Partial, RuleContext, constant_mask
from ccjax.structure import dense, structure_from_labels


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
    blocks = _block_diagonal(ctx, outs, groups, reverse, nonzero)
    if blocks is not None:
        return blocks
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


def _block_diagonal(ctx: RuleContext, outs: list, groups: tuple, reverse: bool,
                    nonzero: Optional[Callable]) -> Optional[list[Partial]]:
    """The partials as one dense block per batch entry, where every
    differentiated operand is batched along its first axis (one size ``B >
    1``), every floating output along some axis, and the equation is
    separable (:func:`ccjax.rules.batching.batch_axes`): ``vmap`` of a
    solve or a factorization.  The values, ``(B, out..., in...)`` without
    the batch axes, come from one JVP per entry of a single operand slice
    (a tangent broadcast along the batch axis) or one VJP per entry of a
    single output slice, not ``B`` times as many.  None where that does not
    apply (complex values, unbatched operands, a primitive the analysis
    does not know): the caller's dense partials."""
    ins = [ctx.in_avals[g[0]] for g in groups]
    sizes = {a.shape[0] if a.ndim else 1 for a in ins}
    avals = ins + [ctx.out_avals[j] for j in outs]
    if len(sizes) != 1 or sizes == {1} or not all(jnp.issubdtype(a.dtype, jnp.floating) for a in avals):
        return None
    size = sizes.pop()
    in_axes = [0 if any(s in g for g in groups) else None for s in range(len(ctx.in_avals))]
    try:
        closed = jax.make_jaxpr(lambda *xs: list(ctx.eval(*xs)))(*map(_jaxpr.spec, ctx.in_avals))
    except Exception:  # noqa: BLE001 - an equation that does not trace alone keeps its dense partials
        return None
    found = batching.batch_axes(closed, in_axes)
    if found is None:
        return None
    out_axes = {j: found[j] for j in outs}
    if any(k is None or ctx.out_avals[j].shape[k] != size for j, k in out_axes.items()):
        return None
    rest = [tuple(a.shape[1:]) for a in ins]
    out_rest = {j: tuple(d for a, d in enumerate(ctx.out_avals[j].shape) if a != out_axes[j]) for j in outs}
    n_in, n_out = sum(map(math.prod, rest)), sum(math.prod(r) for r in out_rest.values())
    forward = not reverse or (ctx.forward_exact and n_in <= n_out)
    offsets = np.cumsum([0] + [math.prod(r) for r in rest])

    def forward_blocks(values, _outs):
        """Per output, ``(n_in, *out_shape)``: the tangents of every basis
        entry of every operand slice, broadcast along the batch axis."""
        xs = [values[g[0]] for g in groups]
        seeds = []
        for k, (x, r) in enumerate(zip(xs, rest)):
            seed = np.zeros((n_in, math.prod(r)), x.dtype)
            seed[offsets[k]:offsets[k + 1]] = np.eye(math.prod(r), dtype=x.dtype)
            seeds.append(seed.reshape((n_in,) + r))
        f = _on(ctx, values, groups, outs)

        def push(*ts):
            lifted = [jnp.broadcast_to(t[None], x.shape) for t, x in zip(ts, xs)]
            return jax.jvp(f, xs, lifted)[1]

        return jax.vmap(push)(*seeds)

    def reverse_blocks(j, values, _outs):
        """Per operand, ``(n_out_j, *in_shape)``: the cotangents of every
        basis entry of one slice of output ``j``, broadcast along its batch axis."""
        xs = [values[g[0]] for g in groups]
        primal, pull = jax.vjp(_on(ctx, values, groups, outs), *xs)
        where_j, r = outs.index(j), out_rest[j]
        basis = np.eye(math.prod(r), dtype=ctx.out_avals[j].dtype).reshape((-1,) + r)

        def pull_one(e):
            cts = [jnp.zeros_like(y) for y in primal]
            cts[where_j] = jnp.broadcast_to(jnp.expand_dims(e, out_axes[j]), primal[where_j].shape)
            return pull(cts)

        return jax.vmap(pull_one)(basis)

    parts = []
    for j in outs:
        out_shape, k_out = tuple(ctx.out_avals[j].shape), out_axes[j]
        if not forward:
            shared_j = functools.partial(reverse_blocks, j)
        for k, slots in enumerate(groups):
            out_labels = ["batch" if a == k_out else ("out", a) for a in range(len(out_shape))]
            in_labels = ["batch"] + [("in", a) for a in range(1, len(ins[k].shape))]
            val_labels = ["batch"] + [lab for lab in out_labels if lab != "batch"] + in_labels[1:]
            val_shape = (size,) + out_rest[j] + rest[k]
            st, prepare = structure_from_labels(out_shape, tuple(ins[k].shape), out_labels, in_labels,
                                                val_labels, val_shape)
            dtype = jnp.result_type(ins[k].dtype, ctx.out_avals[j].dtype)
            if forward:
                def pick(result, jj=outs.index(j), k=k, k_out=k_out, val_shape=val_shape, prepare=prepare,
                         dtype=dtype):
                    block = result[jj][offsets[k]:offsets[k + 1]]  # (n_k, *out_shape)
                    block = jnp.moveaxis(block, 1 + k_out, 0)  # (B, n_k, *out_rest)
                    block = jnp.moveaxis(block.reshape(block.shape[:2] + (-1,)), 1, 2)
                    return prepare(block.reshape(val_shape).astype(dtype))
                shared = forward_blocks
            else:
                def pick(result, k=k, val_shape=val_shape, prepare=prepare, dtype=dtype):
                    block = jnp.moveaxis(result[k], 1, 0)  # (B, n_out_j, *in_rest)
                    return prepare(block.reshape(val_shape).astype(dtype))
                shared = shared_j
            mask = None if nonzero is None else _block_where(nonzero, j, slots, k_out, len(out_shape), prepare)
            parts.append(Partial(j, slots[0], st, lambda values, o, pick=pick, shared=shared: pick(shared(values, o)),
                                 shared, pick, mask))
    return parts


def _block_where(nonzero: Callable, j: int, slots: tuple, k_out: int, n_out_dims: int, prepare: Callable) -> Callable:
    """The ``Partial.nonzero`` of a block-diagonal partial: the blocks on the
    diagonal of the whole local Jacobian's pattern (``nonzero(j, slot)``,
    the batch axis first among the inputs)."""
    def mask():
        full = [nonzero(j, s) for s in slots]
        if any(m is None for m in full):
            return None
        union = functools.reduce(np.logical_or, full)
        return prepare(np.moveaxis(np.diagonal(union, axis1=k_out, axis2=n_out_dims), -1, 0))

    return constant_mask(mask)


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
    def f(*xs):
        return [o for o, a in zip(ctx.eval(*xs), ctx.out_avals) if jnp.issubdtype(a.dtype, jnp.inexact)]

    try:
        primals = [_jaxpr.spec(a) for a in ctx.in_avals]
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
