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
rolled by :mod:`ccjax.roll`, and ``while``) whose body keeps leading axes of
its differentiated values apart (*lanes*: every axis of an elementwise
Newton iteration or integrator, the particle axis of independent particles,
the batch axis of a batched RNN) gets partials that are diagonals over the
lanes, from JVPs of the loop seeded along the lanes all at once: a lane's
block's work where the dense local Jacobian costs it once per lane.  Any other
``scan`` keeps JAX's dense local Jacobian and declares the zeros that
causality gives (the outputs of step ``t`` never read the inputs of later
steps, nor those of steps no path through the carries leads from: a ``ys``
emitted before the update reads earlier steps only), so ``output="sparse"``
leaves them out; any other ``while`` keeps the dense local Jacobian.
"""
from __future__ import annotations

import functools
import math
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
    """The partials of a scan with lanes (:func:`_lane_loop_partials`),
    else its dense local Jacobians (:mod:`.opaque`), with the zeros
    causality gives: the ``ys`` of step ``t`` read the ``xs`` of steps up to
    ``t`` only (from ``t`` on for ``reverse=True``), and of those only the
    steps a path through the body leads from (:func:`_step_reads`)."""
    params = ctx.params
    found = _lane_loop_partials(ctx, params["jaxpr"].jaxpr, 0, params["num_consts"], params["num_carry"],
                                params["length"], params["reverse"])
    if found is not None:
        return found
    return opaque.dense_partials(ctx, nonzero=functools.partial(_scan_causality, ctx))


def scan_has_lanes(params: dict, active: list) -> bool:
    """Whether :func:`scan_partials` gives a scan with these parameters and
    differentiated operands (``active``, one flag per operand) its lanes'
    partials rather than its dense local Jacobians."""
    return _loop_lanes(params["jaxpr"].jaxpr, params["num_consts"], params["num_carry"], list(active),
                       len(active) > params["num_consts"] + params["num_carry"]) is not None


def while_partials(ctx: RuleContext) -> list[Partial]:
    """The partials of a ``while_loop`` with lanes (:func:`_lane_loop_partials`;
    the loop condition's operands decide the trip count only, which has no
    derivative), else its dense local Jacobians (:mod:`.opaque`)."""
    params = ctx.params
    body = params["body_jaxpr"].jaxpr
    found = _lane_loop_partials(ctx, body, params["cond_nconsts"], params["body_nconsts"], len(body.outvars))
    return opaque.dense_partials(ctx) if found is None else found


#: Equations a loop body may apply to differentiated values and stay elementwise.
_ELEMENTWISE_BODY = ELEMENTWISE | {"copy", "copy_p"}
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod"})
_CUMULATIVE = frozenset({"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})


def _loop_lanes(jaxpr, n_consts: int, n_carry: int, wanted: list, has_xs: bool) -> Optional[tuple[tuple, set, bool]]:
    """The *lanes* of a loop body (invars: ``n_consts`` consts, ``n_carry``
    carries, then a scan's slices of ``xs``; outvars: the carries, then a
    scan's ``ys``): the most leading axes (shape ``B``) of the differentiated
    invars and outvars such that every equation reading a differentiated
    value keeps them apart (:func:`_lanes_through`), so that lane ``b`` of
    every result reads lane ``b`` of the differentiated inputs only; the
    positions of the outvars that are differentiated; and whether no carry
    is differentiated, so that the steps are apart too (``lax.map``: step
    ``t`` of ``ys`` reads step ``t`` of ``xs`` only; then ``B`` may be
    ``()``, given ``has_xs``).  Inside the body a lane axis may move (a
    broadcast, a transpose) but must lead again in the outvars.  None where
    neither lanes nor steps are apart or a differentiated value is not real.
    An elementwise body's lanes are all of its axes.  A carry the body makes
    differentiated is differentiated from the first step on (the fixed point
    JAX's own JVP of the loop finds)."""
    ranks = [len(v.aval.shape) for v, w in zip(jaxpr.invars, wanted) if w]
    for k in range(min(ranks, default=0), -1 if has_xs else 0, -1):
        found = _lanes_of_rank(jaxpr, n_consts, n_carry, list(wanted), k)
        if found is not None and (k or found[2]):
            return found
    return None


def _lanes_of_rank(jaxpr, nc: int, nk: int, wanted: list, k: int) -> Optional[tuple[tuple, set, bool]]:
    """:func:`_loop_lanes` for ``k`` lane axes, or None where they are not lanes."""
    lead = tuple(range(k))
    while True:
        lanes = {v: lead for v, w in zip(jaxpr.invars, wanted) if w}
        if not _lane_eqns(jaxpr, lanes):
            return None
        carried = [not _jaxpr.is_literal(v) and v in lanes for v in jaxpr.outvars[:nk]]
        now = wanted[:nc] + [a or b for a, b in zip(wanted[nc:nc + nk], carried)] + wanted[nc + nk:]
        if now == wanted:
            break
        wanted = now
    reached = {j for j, v in enumerate(jaxpr.outvars) if not _jaxpr.is_literal(v) and v in lanes}
    if any(lanes[jaxpr.outvars[j]] != lead for j in reached):
        return None
    sizes = {tuple(v.aval.shape[p] for p in pos) for v, pos in lanes.items()}
    if len(sizes) != 1 or not all(jnp.issubdtype(v.aval.dtype, jnp.floating) for v in lanes):
        return None
    return sizes.pop(), reached, not any(wanted[nc:nc + nk])


def _lane_eqns(jaxpr, lanes: dict) -> bool:
    """Add to ``lanes`` (differentiated variable -> positions of its lane
    axes) the variables of ``jaxpr`` its members reach; whether every
    equation that reads one keeps the lanes apart or has no floating-point
    result.  Equations whose floating-point results reach no outvar of
    ``jaxpr`` by floating-point values (a norm that only feeds a
    convergence test) carry no derivative out and may read anything."""
    relevant = _derivative_relevant(jaxpr)
    for eqn in jaxpr.eqns:
        reads = [None if _jaxpr.is_literal(v) else lanes.get(v) for v in eqn.invars]
        if all(r is None for r in reads):
            continue
        if not any(v in relevant and _inexact(v.aval) for v in eqn.outvars):
            continue  # no derivative out (a comparison, a norm feeding one) may read anything
        name = eqn.primitive.name
        if name in _jaxpr.CALL_PRIMITIVES:
            body, _ = _jaxpr.call_body(eqn)
            found = _lanes_of_bodies([body], reads, eqn.outvars)
        elif name == "cond":  # operand 0 is the branch index
            found = _lanes_of_bodies([b.jaxpr for b in eqn.params["branches"]], reads[1:], eqn.outvars)
        elif _jaxpr.is_custom_jvp(eqn):
            found = _custom_jvp_lanes(eqn, reads)
        else:
            out = _lanes_through(name, eqn.params, [v.aval.shape for v in eqn.invars], reads,
                                 [v.aval.shape for v in eqn.outvars])
            found = None if out is None else {o: out for o in eqn.outvars}
        if found is None:
            return False
        lanes.update(found)
    return True


def _derivative_relevant(jaxpr) -> set:
    """The variables of ``jaxpr`` whose values may reach an outvar through
    floating-point values only, hence carry a derivative there: the
    outvars, and the floating-point operands of every equation with such a
    result (a comparison's result is not floating-point, so what only
    feeds comparisons is not relevant; a superset otherwise)."""
    relevant = {v for v in jaxpr.outvars if not _jaxpr.is_literal(v)}
    for eqn in reversed(jaxpr.eqns):
        if any(v in relevant and _inexact(v.aval) for v in eqn.outvars):
            relevant.update(v for v in eqn.invars if not _jaxpr.is_literal(v) and _inexact(v.aval))
    return relevant


def _lanes_of_bodies(bodies: list, reads: list, outvars: list, ins_at: int = 0, outs_at: int = 0
                     ) -> Optional[dict]:
    """The lanes of ``outvars``, the results of a call (one body), a
    ``cond`` (one body per branch) or a ``custom_jvp`` rule (its tangents:
    the invars from ``ins_at`` and the outvars from ``outs_at`` on) whose
    operands have lanes ``reads``: each body must keep them, and bodies
    that reach a result must put its lanes in the same place."""
    found: dict = {}
    for body in bodies:
        inner = {v: r for v, r in zip(body.invars[ins_at:], reads) if r is not None}
        if not _lane_eqns(body, inner):
            return None
        for o, v in zip(outvars, body.outvars[outs_at:]):
            if not _jaxpr.is_literal(v) and v in inner:
                if found.setdefault(o, inner[v]) != inner[v]:
                    return None  # branches disagree on where the lanes are
    return found


def _custom_jvp_lanes(eqn, reads: list) -> Optional[dict]:
    """The lanes of a ``custom_jvp`` call's results (``reads``: as for
    :func:`_lane_eqns`), where its custom rule puts them: JAX differentiates
    the call by that rule, so lane ``b`` of a result's tangent must read lane
    ``b`` of the operands' tangents only.  The rule may mix the primal
    values across lanes (they only scale tangents).  None where it does not
    keep the lanes, or its jaxpr is not the primals and tangents in and out."""
    rule, _ = _jaxpr.custom_jvp_rule(eqn)
    n, m = len(eqn.invars), len(eqn.outvars)
    if eqn.params["num_consts"] or len(rule.invars) != 2 * n or len(rule.outvars) != 2 * m:
        return None
    return _lanes_of_bodies([rule], reads, eqn.outvars, ins_at=n, outs_at=m)


def _lanes_through(name: str, params: dict, in_shapes: list, reads: list, out_shapes: list) -> Optional[tuple]:
    """Where equation ``name`` puts the lane axes of its differentiated
    operands (``reads``: each operand's lane positions, None for one that
    carries no derivative) in its results, if each result's lane reads the
    same lane of those operands only; else None."""
    pos = next(r for r in reads if r is not None)
    if pos == ():
        return ()  # no lanes to keep
    if any(r is not None and r != pos for r in reads) and name != "dot_general":
        return None  # operands disagree on where their lanes are
    if name in _ELEMENTWISE_BODY:  # operands may broadcast along size-1 axes, never along a lane
        out = out_shapes[0]
        return pos if all(len(s) == len(out) and all(s[p] == out[p] for p in pos)
                          for s, r in zip(in_shapes, reads) if r is not None) else None
    if name == "broadcast_in_dim":
        return tuple(params["broadcast_dimensions"][p] for p in pos)
    if name == "transpose":
        return tuple(params["permutation"].index(p) for p in pos)
    if name in _REDUCTIONS or name in ("squeeze", "unstack"):
        dropped = params["axes"] if name in _REDUCTIONS else (
            params["dimensions"] if name == "squeeze" else (params["axis"],))
        if set(dropped) & set(pos):
            return None
        return tuple(p - sum(d < p for d in dropped) for p in pos)
    if name == "stack":
        return tuple(p + (p >= params["axis"]) for p in pos)
    if name in _CUMULATIVE or name in ("concatenate", "split"):
        axis = params["dimension" if name == "concatenate" else "axis"]
        return None if axis in pos else pos
    if name == "rev":
        return None if set(params["dimensions"]) & set(pos) else pos
    if name == "slice":
        strides = params["strides"] or (1,) * len(in_shapes[0])
        whole = all(params["start_indices"][p] == 0 and params["limit_indices"][p] == in_shapes[0][p]
                    and strides[p] == 1 for p in pos)
        return pos if whole else None
    if name == "pad":
        return pos if reads[1] is None and all(tuple(params["padding_config"][p]) == (0, 0, 0) for p in pos) else None
    if name == "reshape":
        lead = tuple(range(len(pos)))
        keeps = (params.get("dimensions") is None and pos == lead
                 and tuple(out_shapes[0][:len(pos)]) == tuple(in_shapes[0][:len(pos)]))
        return lead if keeps else None
    if name == "dot_general":
        return _lanes_through_dot(params["dimension_numbers"], in_shapes, reads)
    return None


def _lanes_through_dot(dimension_numbers, in_shapes: list, reads: list) -> Optional[tuple]:
    """:func:`_lanes_through` for ``dot_general``, whose result has the batch
    axes, then the lhs's free axes, then the rhs's.  A lane axis must be a
    batch axis (at the same batch position in both operands where both are
    differentiated) or a free axis of the one differentiated operand."""
    (lc, rc), (lb, rb) = dimension_numbers
    free = [[a for a in range(len(in_shapes[0])) if a not in lc and a not in lb],
            [a for a in range(len(in_shapes[1])) if a not in rc and a not in rb]]
    offsets = (len(lb), len(lb) + len(free[0]))
    found = []
    for side, (batch, r) in enumerate(((lb, reads[0]), (rb, reads[1]))):
        if r is None:
            continue
        out = []
        for p in r:
            if p in batch:
                out.append(list(batch).index(p))
            elif p in free[side] and reads[1 - side] is None:
                out.append(offsets[side] + free[side].index(p))
            else:
                return None  # contracted, or free while the other operand is differentiated too
        found.append(tuple(out))
    return found[0] if len(set(found)) == 1 else None


def _lane_loop_partials(ctx: RuleContext, body, first: int, n_consts: int, n_carry: int,
                        length: Optional[int] = None, reverse: bool = False) -> Optional[list[Partial]]:
    """The partials of a loop whose ``body`` keeps lanes apart
    (:func:`_loop_lanes`; its invars are the loop's operands from slot
    ``first`` on; a scan of ``length`` steps has ``xs`` and ``ys``, a
    ``while_loop``, ``length=None``, neither), or None where it does not, or
    where JAX's forward mode of the loop is not its reverse mode.

    Each output lane then reads the same lane of each input, so a partial is
    a diagonal over the lanes (shape ``B``) times a dense block over the
    other axes (``R_in`` of the input, ``R_out`` of the output; none for an
    elementwise body), per step for ``xs`` and ``ys``.  Its values come from
    JVPs of the loop, one per entry of ``R_in`` (and per step of ``xs``),
    each with a tangent that is one-hot there and ones over the lanes: one
    JVP in all for an elementwise body, where the dense block takes one per
    input entry.  For ``ys`` from ``xs``, the zeros causality gives are
    declared; where no carry is differentiated (``lax.map``) the steps are
    one more lane: step ``t`` of ``ys`` reads step ``t`` of ``xs`` only, and
    the seeds are ones along the steps.  The operands before ``first`` (a
    ``while_loop``'s condition) get no partial: they decide the trip count
    only."""
    if ctx.reverse_only or not ctx.forward_exact:
        return None
    wanted = [first + k in ctx.active for k in range(len(body.invars))]
    has_xs = any(s >= first + n_consts + n_carry for s in ctx.active)
    found = _loop_lanes(body, n_consts, n_carry, wanted, has_xs)
    if found is None:
        return None
    lanes, reached, steps_apart = found
    reached = sorted(reached)  # the outputs each JVP returns (real ones: no float0 tangents)
    k = len(lanes)
    lane_labels = [("ax", a) for a in range(k)]
    parts = []
    for s in ctx.active:
        if s < first:
            continue
        over_steps = s >= first + n_consts + n_carry
        seeded_steps = over_steps and not steps_apart  # else the steps are one more lane
        in_shape = tuple(ctx.in_avals[s].shape)
        rest_in = in_shape[k + over_steps:]
        seeds = ((length,) if seeded_steps else ()) + rest_in  # one JVP per entry

        def tangents(ins, _outs, s=s, over_steps=over_steps, seeded_steps=seeded_steps, seeds=seeds,
                     rest_in=rest_in):
            def run(x):
                args = list(ins)
                args[s] = x
                outs = ctx.eval(*args)
                return [outs[j] for j in reached]

            x = ins[s]
            n = math.prod(seeds)
            if n == 1:
                return [o[None] for o in jax.jvp(run, (x,), (jnp.ones_like(x),))[1]]
            # seed q: one-hot at (step, rest) = q, ones over the lanes
            steps = ((length,) if seeded_steps else (1,)) if over_steps else ()
            eye = jnp.eye(n, dtype=x.dtype).reshape((n,) + steps + (1,) * k + rest_in)
            basis = jnp.broadcast_to(eye, (n,) + x.shape)
            return jax.vmap(lambda t: jax.jvp(run, (x,), (t,))[1])(basis)

        for j, aval in enumerate(ctx.out_avals):
            if j not in reached:
                continue  # no differentiated value reaches it: a zero partial
            is_ys = j >= n_carry
            rest_out = tuple(aval.shape)[k + is_ys:]
            step = [("step", 0)] if is_ys else []
            source = ([("from", 0)] if seeded_steps else [("step", 0)]) if over_steps else []
            ins_ = [("in", a) for a in range(len(rest_in))]
            outs_ = [("out", a) for a in range(len(rest_out))]
            out_labels = step + lane_labels + outs_
            in_labels = source + lane_labels + ins_
            val_labels = (source if seeded_steps else []) + ins_ + step + lane_labels + outs_
            val_shape = seeds + tuple(aval.shape)
            st, prepare = structure_from_labels(tuple(aval.shape), in_shape, out_labels, in_labels, val_labels,
                                                val_shape)

            def pick(result, at=reached.index(j), prepare=prepare, dtype=aval.dtype, val_shape=val_shape):
                return prepare(jnp.reshape(result[at], val_shape).astype(dtype))

            nonzero = None
            if seeded_steps and is_ys:  # values laid out (from, ..., step, ...)
                shape = (length,) + (1,) * len(rest_in) + (length,) + (1,) * (len(aval.shape) - 1)
                reads = _step_reads(body, n_consts, n_carry, s - first, j, length, reverse)
                mask = np.broadcast_to(reads.T.reshape(shape), val_shape)
                nonzero = constant_mask(lambda mask=mask, prepare=prepare: prepare(mask))
            parts.append(Partial(j, s, st, lambda ins, o, pick=pick, tangents=tangents: pick(tangents(ins, o)),
                                 tangents, pick, nonzero))
    return parts


def _scan_causality(ctx: RuleContext, j: int, slot: int) -> Optional[np.ndarray]:
    """Where ``∂out[j]/∂in[slot]`` of a scan can be nonzero; None for
    anywhere (a constant or initial carry operand, a final carry output)."""
    params = ctx.params
    nc, nk = params["num_consts"], params["num_carry"]
    if slot < nc + nk or j < nk:
        return None
    out_shape, in_shape = tuple(ctx.out_avals[j].shape), tuple(ctx.in_avals[slot].shape)
    length = params["length"]
    reads = _step_reads(params["jaxpr"].jaxpr, nc, nk, slot, j, length, params["reverse"])
    reads = reads.reshape((length,) + (1,) * (len(out_shape) - 1) + (length,) + (1,) * (len(in_shape) - 1))
    return np.broadcast_to(reads, out_shape + in_shape)


def _step_reads(body, n_consts: int, n_carry: int, slot: int, j: int, length: int, reverse: bool) -> np.ndarray:
    """``[t, u]``: whether step ``t`` of a scan's ``ys`` output ``j`` can read
    step ``u`` of its ``xs`` operand ``slot`` (``body``'s outvar and invar
    positions): at ``u = t`` where the body reads that ``xs`` into that
    ``ys`` directly, and ``d`` steps earlier (later for ``reverse=True``)
    where a path of ``d`` steps through the carries leads from one to the
    other (:func:`_carry_delays`).  A ``ys`` emitted before the carry is
    updated reads the ``xs`` of earlier steps only."""
    deps = _dependencies(body)
    delays = _carry_delays(deps, n_consts, n_carry, slot, j, length)
    delays[0] = slot in deps[j]
    steps = np.arange(length)
    ahead = steps[None, :] - steps[:, None] if reverse else steps[:, None] - steps[None, :]
    return (ahead >= 0) & delays[np.clip(ahead, 0, length - 1)]


def _carry_delays(deps: list, n_consts: int, n_carry: int, slot: int, j: int, length: int) -> np.ndarray:
    """``[d]`` for ``d < length``: whether a path of exactly ``d >= 1`` steps
    leads from a body's invar ``slot`` through the carries to its outvar
    ``j`` (``deps``: :func:`_dependencies`): one step into each carry whose
    update reads ``slot``, one more per carry update on the way.  The sets
    of carries reached after ``d`` steps repeat with some period, which
    fills the rest without walking every step of a long scan."""
    read_by_j = {c for c in range(n_carry) if n_consts + c in deps[j]}
    delays = np.zeros(max(length, 1), bool)
    level = frozenset(k for k in range(n_carry) if slot in deps[k])
    seen: dict[frozenset, int] = {}
    d = 1
    while d < length and level not in seen:
        seen[level] = d
        delays[d] = bool(level & read_by_j)
        level = frozenset(k for k in range(n_carry) if any(n_consts + c in deps[k] for c in level))
        d += 1
    if d < length:  # level repeats the one at step first: period d - first
        first = seen[level]
        period = d - first
        rest = np.arange(d, length)
        delays[d:] = delays[first + (rest - first) % period]
    return delays


def _dependencies(jaxpr) -> list[frozenset]:
    """For each outvar of ``jaxpr``, the positions of the invars it may read
    (every result of an equation reads every operand: a superset)."""
    reads = {v: frozenset((k,)) for k, v in enumerate(jaxpr.invars)}
    for eqn in jaxpr.eqns:
        ins = frozenset().union(*(reads.get(v, frozenset()) for v in eqn.invars if not _jaxpr.is_literal(v)))
        reads.update((o, ins) for o in eqn.outvars)
    return [frozenset() if _jaxpr.is_literal(v) else reads.get(v, frozenset()) for v in jaxpr.outvars]


RULES = {"cond": cond_partials, "scan": scan_partials, "while": while_partials}
