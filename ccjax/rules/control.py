"""Partials of ``cond`` (``lax.cond``, ``lax.switch``), each branch eliminated on its own, of ``scan`` and ``while``.

The local Jacobian of a ``cond`` is the Jacobian of the branch it takes.
Each branch is a graph of its own, eliminated when the outer graph is built
(the cheaper of forward and reverse order,
:func:`ccjax.branches.eliminate_branch`, which the graph passes in
``RuleContext.eliminate_branch``): its final partials are structures,
usually far from dense (a branch of elementwise work gives a diagonal, a
``roll`` a band).  The
cond's partial from operand ``k`` to output ``j`` has the union of the
branches' structures (their sum), and its values come from one
``lax.switch`` over the branches, each running its own elimination and
writing its result into the union (a sum with the zero partial of the union).
Only the branch taken runs, as in JAX's AD of the cond.

The rule gives up to the dense local Jacobian (:mod:`.opaque`) where this
would not be exact or not structured: complex values, a branch whose
derivative only JAX's reverse pass gives, selections (their index keys are
meaningful within one graph only), an output that is an input unchanged,
a union the branches cannot be written into, or a graph built without
``eliminate_branch``.

A loop (``scan``, so ``fori_loop`` with static bounds and Python loops
rolled by :mod:`ccjax.roll`, and ``while``) whose body is elementwise in its
differentiated values (a Newton iteration or an explicit integrator applied
entry by entry) gets diagonal partials from JVPs of the loop with ones
tangents: O(n) work where the dense local Jacobian costs O(n²).  Any other
``scan`` keeps JAX's dense local Jacobian and declares the zeros that
causality gives (the outputs of step ``t`` never read the inputs of later
steps), so ``output="sparse"`` leaves them out; any other ``while`` keeps
the dense local Jacobian.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ccjax import _jaxpr
from ccjax.rules import opaque
from ccjax.rules.base import Partial, RuleContext, constant_mask
from ccjax.rules.elementwise import ELEMENTWISE
from ccjax.structure import entry_positions, entry_values, is_selection, structure_from_labels, sum_plan


def _inexact(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.inexact)


def _complex(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.complexfloating)


def cond_partials(ctx: RuleContext) -> list[Partial]:
    slots = tuple(s for s in ctx.active if s > 0)  # operand 0 is the branch index
    outs = tuple(j for j, a in enumerate(ctx.out_avals) if _inexact(a))
    if (ctx.eliminate_branch is None or not slots or not outs or ctx.reverse_only
            or any(_complex(ctx.in_avals[s]) for s in slots) or any(_complex(ctx.out_avals[j]) for j in outs)):
        return opaque.dense_partials(ctx)
    diff = [s - 1 for s in slots]
    branches = [ctx.eliminate_branch(closed, diff, len(ctx.out_avals)) for closed in ctx.params["branches"]]
    if any(b is None for b in branches):
        return opaque.dense_partials(ctx)
    pairs = []
    for k in range(len(slots)):
        for j in outs:
            found = [b.final(k, j) for b in branches]
            if any(st is False or is_selection(st) for st in found if st is not None):
                return opaque.dense_partials(ctx)
            present = [st for st in found if st is not None]
            if not present:
                continue
            union = functools.reduce(lambda a, b: None if a is None else sum_plan(a, b, lazy=False).result, present)
            embeds = [_embedding(union, st) for st in found] if union is not None else [False]
            if any(e is False for e in embeds):
                return opaque.dense_partials(ctx)
            pairs.append((k, j, union, tuple(embeds)))
    if not pairs:
        return []
    compute = _switch(ctx, slots, branches, pairs)
    if compute is None:
        return opaque.dense_partials(ctx)
    parts = []
    for n, (k, j, union, embeds) in enumerate(pairs):
        if union.val is None:  # the same constant partial in every branch
            parts.append(Partial(j, slots[k], union, None))
            continue
        pick = lambda result, n=n: result[n]
        parts.append(Partial(j, slots[k], union, lambda ins, o, pick=pick: pick(compute(ins, o)), compute, pick,
                             constant_mask(functools.partial(_union_nonzero, branches, k, j, union, embeds))))
    return parts


def _union_nonzero(branches: list, k: int, j: int, union, embeds: tuple) -> np.ndarray:
    """Where the union's value can be nonzero: where some branch stores an
    entry that can be (its own structural zeros, and the entries of the
    union outside its structure, stay False)."""
    reached = np.zeros((int(np.prod(union.out_shape)), int(np.prod(union.in_shape))), bool)
    for branch, embed in zip(branches, embeds):
        if embed == "zero":
            continue
        st, found = branch.final(k, j), branch.nonzero(k, j)
        rows, cols = entry_positions(st)
        if found is not None and st.val is not None:
            keep = found.reshape(-1)[entry_values(st)]
            rows, cols = rows[keep], cols[keep]
        reached[rows, cols] = True
    mask = np.zeros(int(np.prod(union.val_shape)), bool)
    np.logical_or.at(mask, entry_values(union), reached[entry_positions(union)])
    return mask.reshape(union.val_shape)


def _embedding(union, st):
    """How a branch's value of structure ``st`` (None: a zero partial) is
    written into ``union``: None (it is ``union``'s value as it is), a sum
    plan (``apply(zeros of union, value)``), ``"zero"``, or False (not
    possible)."""
    if st == union:
        return None
    if union.val is None:
        return False  # no zero value to add to
    if st is None:
        return "zero"
    plan = sum_plan(union, st, lazy=False)
    return plan if plan.result == union else False


def _zeros(st, dtype):
    return jnp.zeros(tuple(st.sizes[s] for s in st.val), dtype)


def _switch(ctx: RuleContext, slots: tuple, branches: list, pairs: list):
    """``compute(ins, outs)``: every pair's union value from one
    ``lax.switch`` over the eliminated branches; None when the branches'
    results do not agree in shape and dtype."""
    dtypes = [jnp.result_type(ctx.in_avals[slots[k]].dtype, ctx.out_avals[j].dtype) for k, j, _, _ in pairs]

    def branch(b):
        def run(operands):
            finals = branches[b].run(operands)
            results = []
            for (k, j, union, embeds), dtype in zip(pairs, dtypes):
                if union.val is None:  # constant: the partial has no value
                    results.append(jnp.zeros((0,), dtype))
                elif embeds[b] == "zero":
                    results.append(_zeros(union, dtype))
                else:
                    value = finals[(k, j)]
                    if embeds[b] is not None:
                        value = embeds[b].apply(_zeros(union, dtype), value, dtype)
                    results.append(jnp.asarray(value).astype(dtype))
            return tuple(results)

        return run

    fns = [branch(b) for b in range(len(branches))]
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in ctx.in_avals[1:]]
    try:
        results = {tuple((x.shape, x.dtype) for x in jax.eval_shape(fn, specs)) for fn in fns}
    except Exception:  # noqa: BLE001 - a branch this rule cannot run: the dense partial instead
        return None
    if len(results) != 1:
        return None

    def compute(ins, _outs):
        return lax.switch(ins[0], fns, list(ins[1:]))

    return compute


def scan_partials(ctx: RuleContext) -> list[Partial]:
    """An elementwise scan's partials (:func:`_elementwise_loop_partials`),
    else its dense local Jacobians (:mod:`.opaque`), with the zeros
    causality gives: the ``ys`` of step ``t`` read the ``xs`` of steps up to
    ``t`` only (from ``t`` on for ``reverse=True``)."""
    params = ctx.params
    found = _elementwise_loop_partials(ctx, params["jaxpr"].jaxpr, 0, params["num_consts"], params["num_carry"],
                                       params["length"], params["reverse"])
    if found is not None:
        return found
    return opaque.dense_partials(ctx, nonzero=functools.partial(_scan_causality, ctx))


def while_partials(ctx: RuleContext) -> list[Partial]:
    """An elementwise ``while_loop``'s partials (:func:`_elementwise_loop_partials`;
    the loop condition's operands decide the trip count only, which has no
    derivative), else its dense local Jacobians (:mod:`.opaque`)."""
    params = ctx.params
    body = params["body_jaxpr"].jaxpr
    found = _elementwise_loop_partials(ctx, body, params["cond_nconsts"], params["body_nconsts"],
                                       len(body.outvars))
    return opaque.dense_partials(ctx) if found is None else found


#: Equations a loop body may apply to differentiated values and stay elementwise.
_ELEMENTWISE_BODY = ELEMENTWISE | {"copy", "copy_p"}


def _elementwise_body(jaxpr, n_consts: int, n_carry: int, wanted: list) -> Optional[tuple[tuple, set]]:
    """The shape ``S`` of every differentiated value of a loop body (invars:
    ``n_consts`` consts, ``n_carry`` carries, then a scan's slices of
    ``xs``; outvars: the carries, then a scan's ``ys``), and the positions
    of the outvars that are differentiated, when the body is elementwise in
    them: each is real, of shape ``S``, made by elementwise equations
    (:data:`_ELEMENTWISE_BODY`, ``jit`` calls of such) from the invars
    ``wanted`` marks; else None.  A carry the body makes differentiated is
    differentiated from the first step on (the fixed point JAX's own JVP of
    the loop finds)."""
    nc, nk = n_consts, n_carry
    while True:
        differentiated = {v for v, w in zip(jaxpr.invars, wanted) if w}
        if not _elementwise_eqns(jaxpr, differentiated):
            return None
        carried = [not _jaxpr.is_literal(v) and v in differentiated for v in jaxpr.outvars[:nk]]
        now = wanted[:nc] + [a or b for a, b in zip(wanted[nc:nc + nk], carried)] + wanted[nc + nk:]
        if now == wanted:
            break
        wanted = now
    avals = [v.aval for v in differentiated]
    shapes = {tuple(a.shape) for a in avals}
    if len(shapes) != 1 or not all(jnp.issubdtype(a.dtype, jnp.floating) for a in avals):
        return None
    reached = {j for j, v in enumerate(jaxpr.outvars) if not _jaxpr.is_literal(v) and v in differentiated}
    return shapes.pop(), reached


def _elementwise_eqns(jaxpr, differentiated: set) -> bool:
    """Add to ``differentiated`` the variables of ``jaxpr`` its members reach;
    whether every equation that reads one is elementwise or has no
    floating-point result."""
    for eqn in jaxpr.eqns:
        reads = [not _jaxpr.is_literal(v) and v in differentiated for v in eqn.invars]
        if not any(reads):
            continue
        name = eqn.primitive.name
        if name in _jaxpr.CALL_PRIMITIVES:
            body, _ = _jaxpr.call_body(eqn)
            inner = {v for v, r in zip(body.invars, reads) if r}
            if not _elementwise_eqns(body, inner):
                return False
            differentiated.update(o for o, v in zip(eqn.outvars, body.outvars)
                                  if not _jaxpr.is_literal(v) and v in inner)
        elif name in _ELEMENTWISE_BODY:
            differentiated.update(eqn.outvars)
        elif any(jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in eqn.outvars):
            return False  # (a comparison, whose result carries no derivative, may read anything)
    return True


def _elementwise_loop_partials(ctx: RuleContext, body, first: int, n_consts: int, n_carry: int,
                               length: Optional[int] = None, reverse: bool = False) -> Optional[list[Partial]]:
    """The partials of a loop whose ``body`` is elementwise
    (:func:`_elementwise_body`; its invars are the loop's operands from slot
    ``first`` on; a scan of ``length`` steps has ``xs`` and ``ys``, a
    ``while_loop``, ``length=None``, neither), or None where it is not, or
    where JAX's forward mode of the loop is not its reverse mode.

    Its outputs then read its inputs element by element: from a const or
    carry (shape ``S``) a final carry's partial is a diagonal and a ``ys``'s
    a diagonal per step, both from one JVP of the loop with a ones tangent;
    from ``xs`` (``(length,) + S``), one JVP per step of ``xs`` (one-hot in
    time, ones over ``S``), giving a diagonal per step and, for ``ys``, per
    pair of steps (zero where causality says so).  The operands before
    ``first`` (a ``while_loop``'s condition) get no partial: they decide the
    trip count only."""
    if ctx.reverse_only or not ctx.forward_exact:
        return None
    wanted = [first + k in ctx.active for k in range(len(body.invars))]
    found = _elementwise_body(body, n_consts, n_carry, wanted)
    if found is None:
        return None
    shape, reached = found
    space = [("ax", k) for k in range(len(shape))]
    parts = []
    for s in ctx.active:
        if s < first:
            continue
        over_steps = s >= first + n_consts + n_carry

        def tangents(ins, _outs, s=s, over_steps=over_steps):
            def run(x):
                args = list(ins)
                args[s] = x
                return ctx.eval(*args)

            ones = jnp.ones_like(ins[s])
            if not over_steps:
                return jax.jvp(run, (ins[s],), (ones,))[1]
            steps = jnp.eye(length, dtype=ones.dtype).reshape((length, length) + (1,) * len(shape)) * ones
            return jax.vmap(lambda t: jax.jvp(run, (ins[s],), (t,))[1])(steps)

        for j, aval in enumerate(ctx.out_avals):
            if j not in reached:
                continue  # no differentiated value reaches it: a zero partial
            is_ys = j >= n_carry
            out_labels = ([("step", 0)] if is_ys else []) + space
            in_labels = ([("from", 0)] if over_steps else []) + space
            val_labels = ([("from", 0)] if over_steps else []) + ([("step", 0)] if is_ys else []) + space
            val_shape = ((length,) if over_steps else ()) + ((length,) if is_ys else ()) + shape
            st, prepare = structure_from_labels(tuple(aval.shape), tuple(ctx.in_avals[s].shape), out_labels,
                                                in_labels, val_labels, val_shape)

            def pick(result, j=j, prepare=prepare, dtype=aval.dtype):
                return prepare(result[j].astype(dtype))

            nonzero = None
            if over_steps and is_ys:
                steps = np.arange(length)
                reads = steps[:, None] >= steps[None, :] if reverse else steps[:, None] <= steps[None, :]
                mask = np.broadcast_to(reads.reshape((length, length) + (1,) * len(shape)), val_shape)
                nonzero = constant_mask(lambda mask=mask, prepare=prepare: prepare(mask))
            parts.append(Partial(j, s, st, lambda ins, o, pick=pick, tangents=tangents: pick(tangents(ins, o)),
                                 tangents, pick, nonzero))
    return parts


def _scan_causality(ctx: RuleContext, j: int, slot: int) -> Optional[np.ndarray]:
    """Where ``∂out[j]/∂in[slot]`` of a scan can be nonzero; None for
    anywhere (a constant or initial carry operand, a final carry output)."""
    params = ctx.params
    if slot < params["num_consts"] + params["num_carry"] or j < params["num_carry"]:
        return None
    out_shape, in_shape = tuple(ctx.out_avals[j].shape), tuple(ctx.in_avals[slot].shape)
    steps = np.arange(params["length"])
    reads = steps[:, None] <= steps[None, :] if params["reverse"] else steps[:, None] >= steps[None, :]
    reads = reads.reshape((len(steps),) + (1,) * (len(out_shape) - 1) + (len(steps),) + (1,) * (len(in_shape) - 1))
    return np.broadcast_to(reads, out_shape + in_shape)


RULES = {"cond": cond_partials, "scan": scan_partials, "while": while_partials}
