"""From a jaxpr to the computational graph of cross-country elimination.

Two layers:

* :class:`Program`: the jaxpr flattened into a list of :class:`Node` over
  integer variable ids.  Calls (``jit``, ``closed_call``, ``remat``) are
  inlined, no-op converts and copies dropped, and ``custom_jvp`` calls on
  differentiated values replaced by the JVP of their custom rule, whose
  tangent half is linear and enters the graph with ordinary rules (so the
  custom rule is followed exactly and its structure kept); so is a linear
  solve whose matrix is differentiated (:func:`_solve_by_jvp`).  A short
  ``scan`` with a large dense block is inlined step by step (:func:`_unrolls`).  A BCOO or
  BCSR matrix product (``bcoo_dot_general``, ``bcsr_dot_general``) is
  inlined as the gather, product and scatter-add it computes
  (:mod:`ccjax.rules.sparse`).
* :class:`Graph`: the vertices (differentiated inputs, intermediate values,
  outputs) and the structured partial on every edge, after pruning what does
  not depend on the differentiated inputs or does not reach an output.

Vertex ids are canonical (inputs, then intermediates in evaluation order,
then output aliases), so an order of ids stays valid for every function
with the same :attr:`Graph.fingerprint`.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ccjax import _jaxpr
from ccjax.numpy_eval import APPROXIMATE, run_nodes, zero_floor
from ccjax.rules import Partial, RuleContext, ZERO_DERIVATIVE, partials, sparse
from ccjax.rules import control
from ccjax.rules.base import REGION
from ccjax.rules.elementwise import ELEMENTWISE
from ccjax.structure import Structure, UnionFind, sum_plan, unit

STOP = "ccjax_stop"  # internal: identity value, no derivative (primal half of a custom JVP)
TANGENT_OF = "ccjax_tangent_of"  # internal: value of operand 0, derivative of operand 1


@dataclasses.dataclass(frozen=True)
class Node:
    """One equation over variable ids.  ``primitive`` is None for internal nodes."""

    name: str
    primitive: Any
    params: Any
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    reverse_only: bool = False

    @property
    def reads(self) -> tuple[int, ...]:
        """Every variable :meth:`ad_eval` reads: ``ins``, plus the operands
        of the original call for a ``TANGENT_OF`` node."""
        return self.ins + (self.params[2] if self.name == TANGENT_OF else ())

    @property
    def ad_reads(self) -> tuple[int, ...]:
        """The variables :meth:`ad_eval` reads: ``ins``, except for a
        ``TANGENT_OF`` node the operands of the original call only."""
        return self.params[2] if self.name == TANGENT_OF else self.ins

    def ad_eval(self, env) -> list:
        """Like :meth:`eval` on ``env`` (values by variable id), but JAX's AD
        of it is JAX's AD of the original program: a ``TANGENT_OF`` node
        rebinds its original call (``custom_jvp``, a solve), so differentiating it
        (to any order) follows the custom rule."""
        if self.name == TANGENT_OF:
            primitive, params, operands, k = self.params
            return [_jaxpr.bind(primitive, params, [env[i] for i in operands])[k]]
        return self.eval(*[env[i] for i in self.ins])

    def eval(self, *args) -> list:
        if self.name == REGION:
            return self.params(*args)
        if self.primitive is None:
            return [args[0]]
        return _jaxpr.bind(self.primitive, self.params, args)


@dataclasses.dataclass(frozen=True, eq=False)
class Region:
    """Nodes evaluated as one: ``ins`` (variable ids read from outside) to
    ``outs`` (ids used outside).  JAX's AD of :meth:`__call__` is the exact
    local Jacobian, with custom JVP rules inside still followed.
    ``elementwise``: every node is elementwise and every differentiated
    value has one shape, so each output element reads the same element of
    each input only (a diagonal local Jacobian)."""

    nodes: tuple
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    elementwise: bool = False

    def __call__(self, *args) -> list:
        env = dict(zip(self.ins, args))
        for node in self.nodes:
            env.update(zip(node.outs, node.ad_eval(env)))
        return [env[o] for o in self.outs]


@dataclasses.dataclass
class Program:
    """A flat list of nodes; ``consts`` are concrete values baked in at
    trace time, ``top_consts`` the ids fed by the closed jaxpr's constants."""

    avals: list
    active: list
    nodes: list
    inputs: list
    outputs: list
    consts: dict
    top_consts: list
    cacheable: bool = True
    #: The same function with its scans kept as written, where this program
    #: unrolled some (:func:`_unrolls`): what JAX's own modes run
    #: (:attr:`as_written`).
    rolled: Optional["Program"] = None

    @property
    def as_written(self) -> "Program":
        """The program JAX's whole-function modes differentiate: loops as
        the function wrote them.  XLA:CPU ran ``jax.jacfwd`` of five Jacobi
        sweeps (``jnp.roll``, n = 1,024) in 8 ms as a ``fori_loop`` and 22 ms
        unrolled, ``jax.jacrev`` 2.4 ms against 25 ms."""
        return self.rolled or self

    def evaluate(self, input_values: Sequence, top_const_values: Sequence, differentiable: bool = False) -> list:
        """Values of every variable.  ``differentiable``: JAX's AD of the
        evaluation follows custom JVP rules, as JAX's AD of the original
        function does (plain evaluation only needs the values)."""
        env: list = [None] * len(self.avals)
        for i, v in zip(self.inputs, input_values):
            env[i] = v
        for i, v in zip(self.top_consts, top_const_values):
            env[i] = v
        for i, v in self.consts.items():
            env[i] = v
        if differentiable:
            # A custom rule may index a constant with a tracer (odeint's
            # reverse pass reads ``ts[i]``); JAX's own trace hands it a jax
            # array there, the jaxpr a NumPy one.
            env = [jnp.asarray(v) if isinstance(v, np.ndarray) and v.ndim else v for v in env]
        for node in self.ad_nodes if differentiable else self.nodes:
            outs = node.ad_eval(env) if differentiable else node.eval(*[env[i] for i in node.ins])
            for i, v in zip(node.outs, outs):
                env[i] = v
        return env

    @functools.cached_property
    def ad_nodes(self) -> list:
        """The nodes a differentiable :meth:`evaluate` runs: ``nodes`` less
        the expansion of custom JVP rules that only ``TANGENT_OF`` nodes
        read.  :meth:`Node.ad_eval` of a ``TANGENT_OF`` node rebinds the
        original call, so JAX's AD of the program is JAX's AD of the
        original function, without tracing and linearising the rule's
        expansion beside it (``jnp.linalg.det``'s lowering: 0.12 -> 0.02 s).
        Nodes no variable leads from to an output (kept for their effects)
        stay."""
        by_reads, by_ad_reads = set(self.outputs), set(self.outputs)
        kept = []
        for node in reversed(self.nodes):
            if any(o in by_reads for o in node.outs):
                by_reads.update(node.reads)
            if any(o in by_ad_reads for o in node.outs):
                by_ad_reads.update(node.ad_reads)
            elif any(o in by_reads for o in node.outs):
                continue  # read by a custom rule's expansion only
            kept.append(node)
        return kept[::-1]


def _inexact(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.inexact)


def _default_platform_branch(params: dict):
    """The branch of a ``lax.platform_dependent`` cond (its index a
    ``platform_index``) for platforms without their own (``jnp.diagonal``:
    a gather; its other branch, for Pallas' Mosaic, multiplies by an
    identity mask and sums).  The branches are one function written for
    different compilers, so the graph takes the portable one on every
    platform: its structure (here a selection) rather than the union of
    all, and its primal values, which are the same."""
    platforms = params.get("branches_platforms") or ()
    branches = params["branches"]
    k = next((k for k, p in enumerate(platforms) if p is None), len(branches) - 1)
    return branches[k]


class _ProgramBuilder:
    def __init__(self, unroll: bool = True):
        self.unroll = unroll  # inline short scans step by step (:func:`_unrolls`)
        self.unrolled = False  # some scan was
        self.avals: list = []
        self.active: list = []
        self.nodes: list = []
        self.consts: dict = {}
        self.cacheable = True
        self.effectful: set[int] = set()  # nodes kept even when no output reads them
        self.platform_indices: set[int] = set()  # results of ``platform_index``

    def var(self, aval, active: bool) -> int:
        self.avals.append(aval)
        self.active.append(bool(active))
        return len(self.avals) - 1

    def const(self, value, aval, stable: bool = True) -> int:
        """A trace-time constant; ``stable`` ones are implied by the jaxpr's
        structural key, so a graph holding only those can be reused."""
        if _jaxpr.is_tracer(value) or not stable:
            self.cacheable = False
        i = self.var(aval, False)
        self.consts[i] = value
        return i

    def node(self, name, primitive, params, ins, out_avals, active_out=None, reverse_only=False,
             effectful=False) -> list:
        if effectful:
            self.effectful.add(len(self.nodes))
        if active_out is None:
            any_in = any(self.active[i] for i in ins)
            active_out = [any_in and name not in ZERO_DERIVATIVE and _inexact(a.dtype) for a in out_avals]
        outs = [self.var(a, act) for a, act in zip(out_avals, active_out)]
        self.nodes.append(Node(name, primitive, params, tuple(ins), tuple(outs), reverse_only))
        return outs

    def inline(self, jaxpr, const_ids: Sequence[int], in_ids: Sequence[int]) -> list:
        env: dict = {}
        for v, i in zip(jaxpr.constvars, const_ids):
            env[v] = i
        for v, i in zip(jaxpr.invars, in_ids):
            env[v] = i

        def read(atom) -> int:
            if _jaxpr.is_literal(atom):
                aval = atom.aval
                return self.const(np.asarray(_jaxpr.literal_value(atom), dtype=aval.dtype), aval)
            return env[atom]

        for eqn in jaxpr.eqns:
            ins = [read(a) for a in eqn.invars]
            name = eqn.primitive.name
            out_avals = [v.aval for v in eqn.outvars]
            if name in _jaxpr.CALL_PRIMITIVES:
                body, consts = _jaxpr.call_body(eqn)
                cids = [self.const(c, v.aval, stable=False) for c, v in zip(consts, body.constvars)]
                outs = self.inline(body, cids, ins)
            elif name == "cond" and ins[0] in self.platform_indices:
                branch = _default_platform_branch(eqn.params)
                cids = [self.const(c, v.aval, stable=False) for c, v in zip(branch.consts, branch.jaxpr.constvars)]
                outs = self.inline(branch.jaxpr, cids, ins[1:])
            elif (_jaxpr.is_custom_jvp(eqn) and any(self.active[i] for i in ins)) or (
                    name == "custom_linear_solve" and _solve_by_jvp(eqn, [self.active[i] for i in ins])):
                outs = self._by_jvp(eqn, ins)
            elif (name == "scan" and self.unroll and any(self.active[i] for i in ins)
                  and _unrolls(eqn, [self.active[i] for i in ins])):
                outs = self._unrolled_scan(eqn, ins)
                self.unrolled = True
            elif any(self.active[i] for i in ins) and (
                    rewrite := sparse.decomposition(name, eqn.params, [self.avals[i] for i in ins])) is not None:
                outs = self._inline_traced(rewrite, ins)
            elif name in ("copy", "copy_p") or (
                    name == "convert_element_type" and self.avals[ins[0]].dtype == out_avals[0].dtype):
                outs = ins[:1]
            else:
                outs = self.node(name, eqn.primitive, eqn.params, ins, out_avals,
                                 reverse_only=_jaxpr.reverse_only(eqn), effectful=bool(eqn.effects))
                if name == "platform_index":
                    self.platform_indices.update(outs)
            for v, i in zip(eqn.outvars, outs):
                if not _jaxpr.is_dropvar(v):
                    env[v] = i
        return [read(a) for a in jaxpr.outvars]

    def _inline_traced(self, fn, ins: list) -> list:
        """Inline the jaxpr of ``fn`` traced at the avals of ``ins``, applied to ``ins``."""
        closed = jax.make_jaxpr(fn)(*[_jaxpr.spec(self.avals[i]) for i in ins])
        cids = [self.const(c, v.aval) for c, v in zip(closed.consts, closed.jaxpr.constvars)]
        return self.inline(closed.jaxpr, cids, ins)

    def _unrolled_scan(self, eqn, ins: list) -> list:
        """A short ``scan`` (:func:`_unrolls`) inlined step by step: the
        body's equations once per step, each step's slice of the scanned
        operands a static ``slice``, the stacked outputs a concatenation,
        so the elimination sees the structure of every step where the
        ``scan`` equation alone has a dense local Jacobian."""
        p = eqn.params
        body, consts = _jaxpr.call_body(eqn)
        n_consts, n_carry, length = p["num_consts"], p["num_carry"], p["length"]
        body_consts = [self.const(c, v.aval, stable=False) for c, v in zip(consts, body.constvars)]
        carry, xs = list(ins[n_consts:n_consts + n_carry]), ins[n_consts + n_carry:]
        ys: list = [None] * length
        for t in (reversed(range(length)) if p["reverse"] else range(length)):
            step_xs = [self._inline_traced(functools.partial(jax.lax.index_in_dim, index=t, keepdims=False), [x])[0]
                       for x in xs]
            outs = self.inline(body, body_consts, list(ins[:n_consts]) + carry + step_xs)
            carry, ys[t] = outs[:n_carry], outs[n_carry:]
        stacked = [self._inline_traced(lambda *column: jnp.stack(column), list(column))[0]
                   for column in zip(*ys)]
        return carry + stacked

    def _by_jvp(self, eqn, ins: list) -> list:
        """Replace a call by its JVP: a ``custom_jvp`` call's custom rule, a
        ``custom_linear_solve``'s JAX rule (:func:`_solve_by_jvp`).

        The primal half sees the operands through a ``STOP`` node (their
        values, no derivative); the tangent half reads the operands
        themselves, so the graph differentiates exactly the custom rule.
        """
        n = len(ins)
        tangent_idx = [k for k in range(n) if self.active[ins[k]]]

        def jvp_fn(*args):
            primals, tangents = list(args[:n]), args[n:]

            def g(*xs):
                full = list(primals)
                for k, x in zip(tangent_idx, xs):
                    full[k] = x
                return _jaxpr.bind(eqn.primitive, eqn.params, full)

            out, t_out = jax.jvp(g, [primals[k] for k in tangent_idx], list(tangents))
            return list(out) + list(t_out)

        stopped = [self.node(STOP, None, None, [i], [self.avals[i]], [False])[0] if self.active[i] else i
                   for i in ins]
        outs = self._inline_traced(jvp_fn, stopped + [ins[k] for k in tangent_idx])
        m = len(eqn.outvars)
        result = []
        for k, (p, t, v) in enumerate(zip(outs[:m], outs[m:], eqn.outvars)):
            if self.active[t] and _inexact(v.aval.dtype):
                original = (eqn.primitive, eqn.params, tuple(ins), k)
                result.append(self.node(TANGENT_OF, None, original, [p, t], [v.aval], [True])[0])
            else:
                result.append(p)
        return result


#: A ``scan`` of at most this many equations over all its steps enters the
#: graph unrolled (:meth:`_ProgramBuilder._unrolled_scan`): five Jacobi
#: sweeps of a 1024-point grid written as a ``fori_loop`` (60 equations)
#: had a dense local Jacobian, so ``output="sparse"`` stored all 1,048,576
#: entries of a Jacobian with 11,264 nonzeros.  Programs this short stay
#: cheap to plan (:data:`ccjax.roll.ROLL_MIN_EQUATIONS` rolls nothing below
#: 100 equations); longer loops keep the ``scan`` (its lanes or its dense
#: local Jacobian: :mod:`ccjax.rules.control`).
UNROLL_MAX_EQUATIONS = 64
#: ... and whose dense local Jacobian has at least this many entries
#: (differentiated operands x results).  Smaller loops are bound by
#: kernels, not by the dense block: the Jacobi sweeps at 64 points ran 122
#: µs unrolled against 55 µs as a scan (first call 0.67 s against 0.19 s),
#: at 256 points 156 against 309 µs, at 4,096 points 20 against 137 ms
#: (first calls 0.57 and 0.79 s against 0.14 and 0.30 s).
UNROLL_MIN_ENTRIES = 1 << 16


def _reads(eqn, variables: set) -> bool:
    return any(not _jaxpr.is_literal(v) and v in variables for v in eqn.invars)


def _dependents(jaxpr, active: Sequence[bool]) -> set:
    """The variables of ``jaxpr`` that depend on an input flagged in ``active``."""
    reached = {v for v, a in zip(jaxpr.invars, active) if a}
    for e in jaxpr.eqns:
        if _reads(e, reached):
            reached.update(e.outvars)
    return reached


def _unrolled_size(jaxpr, active: Optional[Sequence[bool]] = None) -> int:
    """Equations of ``jaxpr`` with calls counted by their bodies and
    ``scan`` bodies once per step; given ``active`` (per input), only those
    reading a value that depends on an active input (the others stay in the
    primal evaluation and are no vertex of the graph)."""
    reached = None if active is None else _dependents(jaxpr, active)
    total = 0
    for e in jaxpr.eqns:
        if reached is not None and not _reads(e, reached):
            continue
        if e.primitive.name == "scan":
            total += e.params["length"] * _unrolled_size(e.params["jaxpr"].jaxpr)
        elif e.primitive.name in _jaxpr.CALL_PRIMITIVES:
            total += _unrolled_size(_jaxpr.call_body(e)[0])
        else:
            total += 1
    return total


def _body_activity(params: dict, active: Sequence[bool]) -> list[bool]:
    """Which inputs of a ``scan`` body depend on an active operand: its
    constants and ``xs`` as given, a carry also where the body makes it
    depend on one (to a fixed point)."""
    body = params["jaxpr"].jaxpr
    n_consts, n_carry = params["num_consts"], params["num_carry"]
    act = list(active)
    while True:
        reached = _dependents(body, act)
        carried = [not _jaxpr.is_literal(v) and v in reached for v in body.outvars[:n_carry]]
        carry = slice(n_consts, n_consts + n_carry)
        new = list(act)
        new[carry] = [a or c for a, c in zip(act[carry], carried)]
        if new == act:
            return act
        act = new


def _unrolls(eqn, active: list) -> bool:
    """Whether a ``scan`` enters the graph unrolled: at least one step, no
    effects, no differentiated ``xs`` (a scan over them declares its
    causality's zeros, which the unrolled steps' partials do not all
    keep), at most :data:`UNROLL_MAX_EQUATIONS` equations on active values
    in all (index arithmetic on constants is not counted), a dense
    local Jacobian of :data:`UNROLL_MIN_ENTRIES` entries or more, and no
    lanes (:func:`ccjax.rules.control.scan_has_lanes`: their
    partials are diagonals already, from one JVP of the loop, which
    compiles faster than the steps unrolled: an elementwise Newton
    iteration of 8 steps took 0.25 s to a first Jacobian unrolled against
    0.11 s, at the same speed)."""
    p = eqn.params
    first_xs = p["num_consts"] + p["num_carry"]
    entries = sum(v.aval.size for v, a in zip(eqn.invars, active) if a) * sum(v.aval.size for v in eqn.outvars)
    return (p["length"] >= 1 and not eqn.effects and not any(active[first_xs:]) and entries >= UNROLL_MIN_ENTRIES
            and p["length"] * _unrolled_size(p["jaxpr"].jaxpr, _body_activity(p, active)) <= UNROLL_MAX_EQUATIONS
            and not control.scan_has_lanes(p, active))


#: Right-hand sides of fewer entries keep a solve whose matrix is
#: differentiated as one equation (a dense local Jacobian).  Its JVP as a
#: graph (:func:`_solve_by_jvp`) has the matrix's partial as a product, not
#: one solve per matrix entry, but also more, smaller kernels: three Newton
#: steps of a 16-entry system (``jax.jacfwd`` of the residual inside) ran
#: 1.6x slower than ``jax.jacfwd`` with it, at 32 entries alike, at 64
#: entries 0.57x; one step of 16 entries alike.
SOLVE_BY_JVP_MIN_ENTRIES = 32


def _solve_by_jvp(eqn, active: list) -> bool:
    """Whether a ``custom_linear_solve`` (``jnp.linalg.solve``, ``inv``)
    whose matrix is differentiated enters the graph as its JVP, as a
    ``custom_jvp`` call does: ``x = A⁻¹ b`` gives ``dx = A⁻¹ (db - dA x)``,
    the matrix's partial the product of ``A⁻¹``'s (a solve against basis
    vectors, block diagonal over the columns it solves apart:
    :mod:`ccjax.rules.opaque`) and a matrix product's (``x`` on the
    contracted axis).  The local Jacobian of the solve itself takes one
    solve per entry of ``A`` (``inv`` of 16x16: 256 solves of 16 right-hand
    sides, where ``A⁻¹`` takes 16).  Right-hand sides of
    :data:`SOLVE_BY_JVP_MIN_ENTRIES` entries or more."""
    n_consts = sum(eqn.params["const_lengths"])
    return any(active[:n_consts]) and sum(v.aval.size for v in eqn.invars[n_consts:]) >= SOLVE_BY_JVP_MIN_ENTRIES


def build_program(closed_jaxpr, diff_inputs: Sequence[int], holomorphic: bool = False,
                  unroll: bool = True) -> Program:
    """Flatten ``closed_jaxpr``; inputs at positions ``diff_inputs`` are
    differentiated.  ``unroll``: short scans enter step by step
    (:func:`_unrolls`); where some did, the program keeps its form with
    the scans as written (``rolled``) for JAX's modes."""
    b = _ProgramBuilder(unroll)
    jaxpr = closed_jaxpr.jaxpr
    diff = set(diff_inputs)
    inputs = [b.var(v.aval, k in diff and _inexact(v.aval.dtype)) for k, v in enumerate(jaxpr.invars)]
    top = [b.var(v.aval, False) for v in jaxpr.constvars]
    outputs = b.inline(jaxpr, top, inputs)
    nodes = _needed_nodes(b.nodes, outputs, b.effectful)
    nodes = nodes if holomorphic else fuse_complex(nodes, b.avals, b.active, outputs)
    rolled = build_program(closed_jaxpr, diff_inputs, holomorphic, unroll=False) if b.unrolled else None
    cacheable = b.cacheable and (rolled is None or rolled.cacheable)
    return Program(b.avals, b.active, nodes, inputs, outputs, b.consts, top, cacheable, rolled)


def _needed_nodes(nodes: list, outputs: Sequence[int], effectful: set[int]) -> list:
    """``nodes`` less those whose results no output (or aux output) reads,
    directly or through other nodes, unless they have effects.  XLA drops
    such code from the compiled Jacobian, so neither the graph nor a count
    of JAX's plain modes may charge for it (a nested ``jacve`` traces the
    inner function's value, which the inner Jacobian never reads)."""
    needed = set(outputs)
    kept = []
    for k in range(len(nodes) - 1, -1, -1):
        node = nodes[k]
        if k in effectful or any(o in needed for o in node.outs):
            needed.update(node.reads)
            kept.append(node)
    return kept[::-1]


def needs_whole_reverse(node: Node) -> tuple[str, ...]:
    """Why ``node``'s derivative exists only as JAX's reverse pass over the
    whole function (empty when it has a local Jacobian): a ``custom_vjp``
    rule may be nonlinear in the cotangent, and a collective's transpose
    mixes the cotangents of all members of a named axis."""
    if node.name == REGION:
        return tuple(sorted({w for n in node.params.nodes for w in needs_whole_reverse(n)}))
    if node.reverse_only or node.name in _jaxpr.COLLECTIVES:
        return (node.name,)
    return ()


def forward_matches_reverse(node: Node) -> bool:
    """Whether JAX's forward mode differentiates ``node`` exactly as its
    reverse mode does (see :func:`ccjax._jaxpr.forward_matches_reverse`);
    a ``TANGENT_OF`` node is the call it stands for."""
    if node.name == REGION:
        return all(forward_matches_reverse(n) for n in node.params.nodes)
    if node.name == TANGENT_OF:
        primitive, params, _, _ = node.params
        return _jaxpr.forward_matches_reverse(primitive.name, params)
    if node.reverse_only:
        return False
    return node.primitive is None or _jaxpr.forward_matches_reverse(node.name, node.params)


def _complex(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.complexfloating)


def fuse_complex(nodes: list, avals: list, active: list, outputs: Sequence[int]) -> list:
    """Fuse every computation on active complex values into real-to-real nodes.

    A complex value is two real values, and a partial through a
    non-holomorphic operation (``real``, ``abs``, ``conj``, ...) is not one
    complex number.  So unless the user declared the function holomorphic,
    the nodes reading or writing an active complex variable are grouped
    (connected through those variables, then closed so that no outside node
    lies on a path between two of their nodes) and each group becomes one
    :data:`REGION` node, whose exact local Jacobian JAX's AD computes.
    The returned list is topologically ordered.
    """
    touches = [any(active[i] and _complex(avals[i]) for i in n.ins + n.outs) for n in nodes]
    if not any(touches):
        return nodes
    producer = {o: k for k, n in enumerate(nodes) for o in n.outs}
    consumers: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in n.reads:
            consumers.setdefault(i, []).append(k)
    sets = UnionFind(len(nodes))
    for k, n in enumerate(nodes):
        if touches[k]:
            for i in n.ins + n.outs:
                if active[i] and _complex(avals[i]):
                    for j in consumers.get(i, []) + ([producer[i]] if i in producer else []):
                        sets.union(j, k)
    groups: dict[int, set[int]] = {}
    for k in range(len(nodes)):
        if touches[k]:
            groups.setdefault(sets.find(k), set()).add(k)
    regions = _convex(list(groups.values()), nodes, producer, consumers)
    return _contract(nodes, regions, set(outputs), avals, active)


def _reach(start: set[int], step) -> set[int]:
    seen, todo = set(), list(start)
    while todo:
        k = todo.pop()
        for j in step(k):
            if j not in seen:
                seen.add(j)
                todo.append(j)
    return seen


def _convex(regions: list, nodes: list, producer: dict, consumers: dict) -> list:
    """Grow each region by the nodes on paths between its nodes, merging
    regions that meet, until stable (then contracting them keeps a DAG)."""
    down = lambda k: [j for o in nodes[k].outs for j in consumers.get(o, [])]
    up = lambda k: [producer[i] for i in nodes[k].reads if i in producer]
    while True:
        grown = []
        for r in regions:
            r = r | (_reach(r, down) & _reach(r, up))
            for g in [g for g in grown if g & r]:
                grown.remove(g)
                r = r | g
            grown.append(r)
        if len(grown) == len(regions) and all(a == b for a, b in zip(grown, regions)):
            return grown
        regions = grown


def _contract(nodes: list, regions: list, outputs: set[int], avals: list, active: list) -> list:
    """Replace each region by one :data:`REGION` node, in topological order."""
    owner = {k: r for r, ks in enumerate(regions) for k in ks}
    units: list = []
    made = set()
    for k in range(len(nodes)):
        if k not in owner:
            units.append(nodes[k])
        elif owner[k] not in made:
            made.add(owner[k])
            units.append(_region_node(nodes, sorted(regions[owner[k]]), outputs, avals, active))
    return _toposort(units)


def _region_node(nodes: list, members: list[int], outputs: set[int], avals: list, active: list) -> Node:
    inner = [nodes[k] for k in members]
    produced = {o for n in inner for o in n.outs}
    ins = tuple(dict.fromkeys(i for n in inner for i in n.reads if i not in produced))
    member_set = set(members)
    read_outside = {i for k, n in enumerate(nodes) if k not in member_set for i in n.reads}
    outs = tuple(o for n in inner for o in n.outs if o in read_outside or o in outputs)
    elementwise = _elementwise(inner, avals, active, ins + outs)
    return Node(REGION, None, Region(tuple(inner), ins, outs, elementwise), ins, outs,
                reverse_only=any(n.reverse_only for n in inner))


def _elementwise(inner: list, avals: list, active: list, ends: Sequence[int]) -> bool:
    """Whether each active value of ``inner`` has one shape, the region reads
    and writes real values only (``ends``: its inputs and outputs; a complex
    input's partial is not the JVP of a real ones tangent), and every node
    is elementwise (a broadcast only of values that carry no derivative), so
    the region's outputs read their inputs element by element."""
    shapes = {tuple(avals[i].shape) for n in inner for i in n.ins + n.outs if active[i]}
    if len(shapes) != 1 or any(active[i] and _complex(avals[i]) for i in ends):
        return False
    for n in inner:
        if n.name == "broadcast_in_dim" and not any(active[i] for i in n.ins):
            continue
        if n.name not in ELEMENTWISE or n.primitive is None:
            return False
    return True


def _toposort(units: list) -> list:
    """Order nodes so every variable is produced before it is read (stable:
    the original order wherever it already is one)."""
    producer = {o: k for k, n in enumerate(units) for o in n.outs}
    deps = [{producer[i] for i in n.reads if i in producer and producer[i] != k} for k, n in enumerate(units)]
    users: dict[int, list[int]] = {}
    for k, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(k)
    missing = [len(d) for d in deps]
    ready = [k for k, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        k = heapq.heappop(ready)
        out.append(units[k])
        for j in users.get(k, []):
            missing[j] -= 1
            if missing[j] == 0:
                heapq.heappush(ready, j)
    if len(out) != len(units):  # pragma: no cover - _convex guarantees a DAG
        raise AssertionError("complex regions left a cycle")
    return out


# ---------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Vertex:
    """A graph vertex: ``kind`` is 'input', 'intermediate' or 'output'."""

    id: int
    var: int
    kind: str
    label: str
    shape: tuple[int, ...]
    dtype: Any


#: Primitives that index computations use, and whose results are a
#: function of their operands and parameters alone.
_INDEX_ARITHMETIC = frozenset({
    "add", "sub", "mul", "div", "rem", "neg", "abs", "sign", "max", "min", "clamp", "select_n",
    "lt", "le", "gt", "ge", "eq", "ne", "and", "or", "not", "xor", "iota", "broadcast_in_dim", "reshape",
    "squeeze", "expand_dims", "convert_element_type", "concatenate", "slice", "transpose",
    "shift_left", "shift_right_arithmetic", "shift_right_logical", "integer_pow",
})


class _SameValues:
    """A key per variable such that equal keys mean equal values.

    Integer and boolean values known at build time are keyed by value
    (which pins them, see :class:`_Statics`), those computed by the same
    index arithmetic from operands of equal keys share a key, and any other
    variable is its own key.  ``x[i] ** 2 + sin(x[i])`` traces its index
    arithmetic (wrapping negative indices) twice, into variables that a rule
    keying a selection by its index operand must recognise as one.  Keys are
    numbered in the order they are first asked for, which the graph's
    construction fixes, so a graph's fingerprint is the same in every
    process."""

    def __init__(self, program: Program, statics: "_Statics"):
        self.program, self.statics = program, statics
        self.numbers: dict = {}
        self.keys: dict[int, Any] = {}

    def _exact(self, var: int) -> bool:
        dtype = self.program.avals[var].dtype
        return bool(np.issubdtype(dtype, np.integer) or dtype == np.bool_)

    def key(self, var: int):
        stack = [var]
        while stack:  # post-order over the index arithmetic, without recursion
            v = stack[-1]
            if v in self.keys:
                stack.pop()
                continue
            value = self.statics.value(v) if self._exact(v) else None
            node = self.statics.producer.get(v, (None, None))[1]
            if value is not None:
                a = np.asarray(value)
                self.keys[v] = self._number(("value", str(a.dtype), a.shape, a.tobytes()))
            elif (not self._exact(v) or node is None or node.name not in _INDEX_ARITHMETIC
                  or not all(map(self._exact, node.outs))):
                self.keys[v] = v
            elif any(i not in self.keys for i in node.ins):
                stack.extend(i for i in node.ins if i not in self.keys)
                continue
            else:
                base = (node.name, repr(sorted(node.params.items())), tuple(self.keys[i] for i in node.ins))
                self.keys[v] = self._number((base, node.outs.index(v)))
            stack.pop()
        return self.keys[var]

    def _number(self, base) -> tuple:
        return ("same", self.numbers.setdefault(base, len(self.numbers)))


class _Statics:
    """Values known while the graph is built: constants of the program, the
    closed jaxpr's constants, and results of equations on those alone,
    evaluated once at build time.  A value read by :meth:`value` pins the
    closed jaxpr's constants it was computed from (recorded in ``pins``);
    :meth:`zeros` pins them only where it finds a zero, and otherwise
    records them in ``zero_free``: a graph built then is valid for any
    values, but a later constant with zeros may give a sparser one."""

    #: Most equations evaluated for one value, and the largest result kept.
    MAX_EQUATIONS = 64
    MAX_SIZE = 1 << 20

    def __init__(self, program: Program, top_values: Sequence, pins: dict, zero_free: set):
        self.program = program
        self.zero_free = zero_free
        self.top = {var: k for k, var in enumerate(program.top_consts)} if len(top_values) else {}
        self.top_values = top_values
        self.pins = pins
        self.memo: dict[int, Optional[np.ndarray]] = {}
        self.sources: dict[int, frozenset] = {}  # var -> positions of the closed jaxpr's constants it reads

    @functools.cached_property
    def producer(self) -> dict[int, tuple[int, Node]]:
        return {o: (k, node) for k, node in enumerate(self.program.nodes) for o in node.outs}

    def value(self, var: int) -> Optional[np.ndarray]:
        """The value of variable ``var`` when known at build time, else None;
        the graph is then valid only for the constants it was computed from."""
        found = self._known(var)
        if found is not None:
            for k in self.sources.get(var, ()):
                self.pins[k] = self.memo[self.program.top_consts[k]]
        return found

    def zeros(self, var: int) -> Optional[np.ndarray]:
        """Where the value of ``var`` is zero (a boolean array) when it is
        known at build time, else None."""
        if var not in self.memo:
            sources = self._surely_nonzero(var)
            if sources is not None:
                self.zero_free.update(sources)
                return np.zeros(self.program.avals[var].shape, bool)
        found = self._known(var)
        if found is None:
            return None
        mask = np.asarray(found) == 0
        if mask.any():
            self.value(var)
        else:
            self.zero_free.update(self.sources.get(var, ()))
        return mask

    #: Equations through which a value NumPy finds far from zero everywhere
    #: is far from zero in XLA too: no sums (a cancellation in one may be
    #: exact in the other), no comparisons, roundings or selections.  Their
    #: operands may come from any equations NumPy runs exactly (differences
    #: of grid points, masks), which give XLA's values bit for bit.
    NONZERO_PRESERVING = frozenset(APPROXIMATE) | {
        "mul", "div", "neg", "broadcast_in_dim", "reshape", "squeeze", "transpose", "slice", "concatenate",
        "convert_element_type", "rev"}

    def _surely_nonzero(self, var: int) -> Optional[frozenset]:
        """The closed jaxpr's constants ``var`` is computed from, when it is
        a floating constant made by :attr:`NONZERO_PRESERVING` equations (from
        values NumPy computes exactly) that NumPy (:func:`~ccjax.numpy_eval.run_nodes` with
        ``transcendental=True``) finds finite and far from zero at every
        step, so XLA's value, a few ulps away, has no zero either; else
        None.  Spares the compilation of a factor such as ``sqrt(T)`` or
        ``exp(-r * T)`` (40-50 ms each) or the weights ``1 / prod(x_i - x_j)``
        of a Lagrange interpolation (160 ms) that only a zero test reads."""
        needed: dict[int, Node] = {}
        stack = [var]
        while stack:
            v = stack.pop()
            if v in self.memo or self._leaf(v):
                if self.memo[v] is None:
                    return None  # a traced constant, or a value found unknowable
                continue
            k, node = self.producer.get(v, (None, None))
            if (node is None or node.primitive is None or len(needed) >= self.MAX_EQUATIONS
                    or any(self.program.active[o] or self.program.avals[o].size > self.MAX_SIZE
                           for o in node.outs)):
                return None
            if (node.name not in self.NONZERO_PRESERVING
                    or not all(jnp.issubdtype(self.program.avals[o].dtype, jnp.floating) for o in node.outs)):
                # a value NumPy computes bit for bit as XLA does may feed the chain
                if self._known(v, compile=False) is None:
                    return None
                continue
            if k not in needed:
                needed[k] = node
                stack.extend(node.ins)
        if not needed:
            return None  # a constant itself: read as it is, no compilation
        nodes = [node for _, node in sorted(needed.items())]
        produced = {o for node in nodes for o in node.outs}
        leaves = {i for node in nodes for i in node.ins if i not in produced}
        found = run_nodes(nodes, {i: self.memo[i] for i in leaves}, self.program.avals, transcendental=True)
        if found is None or not all(_far_from_zero(found[o]) for o in produced):
            return None
        return frozenset().union(*(self.sources.get(i, ()) for i in leaves))

    def _known(self, var: int, compile: bool = True) -> Optional[np.ndarray]:
        """:meth:`value` without pinning anything; without ``compile``, None
        (nothing recorded) where NumPy cannot compute it as XLA would."""
        if var in self.memo:
            return self.memo[var]
        needed: dict[int, Node] = {}  # program position -> equation, for the values on the way
        stack = [var]
        while stack:
            v = stack.pop()
            if v in self.memo or self._leaf(v):
                continue
            k, node = self.producer.get(v, (None, None))
            if (node is None or node.primitive is None or len(needed) >= self.MAX_EQUATIONS
                    or any(self.program.active[o] for o in node.outs)):
                self.memo[v] = None
            elif k not in needed:
                needed[k] = node
                stack.extend(node.ins)
        runnable, produced = [], set()
        for _, node in sorted(needed.items()):  # program order: operands first
            if (all(i in produced or self.memo.get(i) is not None for i in node.ins)
                    and all(self.program.avals[o].size <= self.MAX_SIZE for o in node.outs)):
                runnable.append(node)
                produced.update(node.outs)
            else:
                self.memo.update((o, None) for o in node.outs)
        if runnable:
            self._evaluate(runnable, produced, compile)
        return self.memo.get(var)

    def _evaluate(self, nodes: list, produced: set, compile: bool = True) -> None:
        """Record the outputs of ``nodes`` (in program order; their operands
        known or produced by earlier ones), computed as one program: op by
        op, index arithmetic such as ``x // 4`` compiled each of its ten
        equations on its own (0.2 s for one ``segment_sum``).  Without
        ``compile``, nothing is recorded where NumPy cannot run them exactly."""
        leaves = sorted({i for node in nodes for i in node.ins if i not in produced})

        def evaluate(*values):
            env = dict(zip(leaves, values))
            for node in nodes:
                env.update(zip(node.outs, node.eval(*[env[i] for i in node.ins])))
            return [env[o] for node in nodes for o in node.outs]

        args = [self.memo[i] for i in leaves]
        found = run_nodes(nodes, dict(zip(leaves, args)), self.program.avals)
        outs = None if found is None else [found[o] for node in nodes for o in node.outs]
        if outs is None:
            if not compile:
                return
            with jax.disable_jit(False):  # compiled ahead: runs now, also inside an outer trace
                outs = jax.jit(evaluate).lower(*args).compile()(*args)
        for node in nodes:
            sources = frozenset().union(*(self.sources.get(i, ()) for i in node.ins))
            self.sources.update((o, sources) for o in node.outs)
        for o, x in zip([o for node in nodes for o in node.outs], outs):
            try:
                self.memo[o] = np.asarray(x)
            except (TypeError, ValueError):  # e.g. PRNG keys: no NumPy value
                self.memo[o] = None

    def _leaf(self, var: int) -> bool:
        """Record ``var``'s value if it is a constant; whether it is one."""
        prog = self.program
        if var in prog.consts:
            v = prog.consts[var]
            self.memo[var] = None if _jaxpr.is_tracer(v) else np.asarray(v)
            return True
        if var in self.top:
            v = self.top_values[self.top[var]]
            if _jaxpr.is_tracer(v):
                self.memo[var] = None
            else:
                # a copy: the constant may be the caller's array, changed in place later
                self.memo[var] = np.array(v, copy=True)
                self.sources[var] = frozenset((self.top[var],))
            return True
        return False


def _far_from_zero(x) -> bool:
    """Every entry of the real floating array ``x`` finite and at least
    :func:`~ccjax.numpy_eval.zero_floor` of its dtype (few ulps of
    difference cannot make it zero, nor flushing subnormals to zero)."""
    x = np.asarray(x)
    try:
        floor = zero_floor(x.dtype)
    except (TypeError, ValueError):
        return False
    size = np.abs(x.astype(np.float64))
    return bool(np.all(np.isfinite(size)) and np.all(size >= floor))


def run_in_numpy(closed_jaxpr, runs: Sequence[Sequence], exact: bool = True) -> Optional[list[list]]:
    """The outputs of ``closed_jaxpr`` on each argument list of ``runs``, run
    in NumPy (:func:`ccjax.numpy_eval.run_nodes`; ``exact``: as XLA computes
    them, bit for bit), or None where some equation cannot be run there.
    The program is flattened once for all runs."""
    prog = build_program(closed_jaxpr, [])
    consts = [*prog.consts.items(), *zip(prog.top_consts, closed_jaxpr.consts)]
    consts = {i: c for i, c in consts if not _jaxpr.is_tracer(c)}  # a tracer's value is unknown
    results = []
    for args in runs:
        env = {i: np.asarray(a) for i, a in zip(prog.inputs, args)}
        found = run_nodes(prog.nodes, {**env, **consts}, prog.avals, exact)
        if found is None:
            return None
        results.append([found[o] for o in prog.outputs])
    return results


@dataclasses.dataclass(frozen=True)
class RawPartial:
    """One rule-produced partial on edge ``src -> dst`` (node ``node``, or an
    output alias when ``node`` is None)."""

    src: int
    dst: int
    node: Optional[int]
    partial: Partial


class Graph:
    """The computational graph of a function (see module docstring).

    Attributes: ``vertices`` (list of :class:`Vertex`), ``edges``
    (``{(src, dst): Structure}``), ``inputs`` (vertex id or None per
    differentiated input leaf), ``outputs`` (vertex id or None per output
    leaf), ``eliminable`` (ids an explicit order must permute),
    ``fingerprint``, and ``whole_reverse``: the primitives (if any) whose
    derivative exists only as JAX's reverse pass over the whole function
    (see :func:`needs_whole_reverse`); such a graph's Jacobian is computed
    that way, whatever the order.
    """

    def __init__(self, program: Program, diff_leaves: Sequence[int], n_outputs: int,
                 top_values: Sequence = (), eliminate_branch: Optional[Callable] = None, in_branch: bool = False):
        self.program = program
        self._eliminate_branch = eliminate_branch  # for rules of branching equations (RuleContext)
        self._in_branch = in_branch  # a branch of a cond (RuleContext)
        self.diff_leaves = tuple(diff_leaves)
        self.pins: dict[int, np.ndarray] = {}
        self.zero_free: set[int] = set()
        self._statics = _Statics(program, top_values, self.pins, self.zero_free)
        self._same_values = _SameValues(program, self._statics)
        self._build(n_outputs)
        del self._statics, self._same_values  # _statics holds the closed jaxpr's constants: keep only the pinned ones
        self.fingerprint = self._fingerprint()
        self.plans: dict = {}  # order key -> Plan, filled by the API
        self.runners: dict = {}  # order key -> jitted executor, filled by the API
        self.probes: dict = {}  # id(plan) -> (plan, structural zeros), filled by ccjax.eliminate
        self.staged: dict = {}  # id(plan) -> (plan, closed jaxpr, output tree), filled by ccjax.jax_modes
        self.eliminations: dict = {}  # order -> its last few Plans, filled by ccjax.eliminate.plan_elimination

    # -- construction -------------------------------------------------------
    def _build(self, n_outputs: int) -> None:
        prog = self.program
        out_vars = prog.outputs[:n_outputs]
        size = lambda i: math.prod(prog.avals[i].shape)
        # useful: active vars that reach an output through active operands
        useful = [False] * len(prog.avals)
        for i in out_vars:
            useful[i] = prog.active[i]
        for node in reversed(prog.nodes):
            if any(useful[o] for o in node.outs):
                for i in node.ins:
                    if prog.active[i]:
                        useful[i] = True
        is_vertex = [useful[i] and size(i) > 0 for i in range(len(prog.avals))]
        input_vars = [prog.inputs[k] for k in self.diff_leaves]

        var_to_vertex: dict[int, int] = {}
        vertices: list[Vertex] = []

        def add_vertex(var, kind, label):
            aval = prog.avals[var]
            vertices.append(Vertex(len(vertices), var, kind, label, tuple(aval.shape), aval.dtype))
            return len(vertices) - 1

        for k, var in zip(self.diff_leaves, input_vars):
            if is_vertex[var] and var not in var_to_vertex:
                var_to_vertex[var] = add_vertex(var, "input", f"input[{k}]")
        raw: list[RawPartial] = []
        whole_reverse: set[str] = set()
        for n_idx, node in enumerate(prog.nodes):
            outs = [o for o in node.outs if is_vertex[o]]
            if not outs:
                continue
            for o in outs:
                var_to_vertex[o] = add_vertex(o, "intermediate", node.name)
            active_slots = tuple(s for s, i in enumerate(node.ins) if is_vertex[i] and i in var_to_vertex)
            if not active_slots:
                continue
            whole_reverse.update(needs_whole_reverse(node))
            for p in self._node_partials(node, active_slots):
                dst = node.outs[p.out]
                if is_vertex[dst]:
                    raw.append(RawPartial(var_to_vertex[node.ins[p.slot]], var_to_vertex[dst], n_idx, p))

        edges: dict[tuple[int, int], Structure] = {}
        for r in raw:
            key = (r.src, r.dst)
            if key in edges:
                summed = sum_plan(edges[key], r.partial.structure).result
                if summed is None:
                    del edges[key]
                else:
                    edges[key] = summed
            else:
                edges[key] = r.partial.structure
        succ = {}
        for (u, v) in edges:
            succ.setdefault(u, set()).add(v)

        outputs: list[Optional[int]] = []
        uses = {var: out_vars.count(var) for var in out_vars}
        for k, var in enumerate(out_vars):
            v = var_to_vertex.get(var)
            if v is None or not is_vertex[var]:
                outputs.append(None)
                continue
            if vertices[v].kind == "input" or succ.get(v) or uses[var] > 1:
                alias = add_vertex(var, "output", f"output[{k}]")
                st = unit(vertices[v].shape)
                edges[(v, alias)] = st
                raw.append(RawPartial(v, alias, None, Partial(0, 0, st, None)))
                outputs.append(alias)
            else:
                vertices[v] = dataclasses.replace(vertices[v], kind="output")
                outputs.append(v)
        self.vertices, self.edges, self.raw = vertices, edges, raw
        self.whole_reverse = tuple(sorted(whole_reverse))
        self.inputs = [var_to_vertex.get(var) for var in input_vars]
        self.outputs = outputs
        self._prune()

    def _node_partials(self, node: Node, active_slots) -> list[Partial]:
        prog = self.program
        if node.name == TANGENT_OF:
            if 1 not in active_slots:
                return []
            return [Partial(0, 1, unit(tuple(prog.avals[node.outs[0]].shape)), None)]
        groups: dict[int, list[int]] = {}
        for s in active_slots:
            groups.setdefault(node.ins[s], []).append(s)
        ctx = RuleContext(node.name, node.params, tuple(prog.avals[i] for i in node.ins),
                          tuple(prog.avals[o] for o in node.outs), active_slots, node.eval,
                          node.reverse_only, tuple(tuple(g) for g in groups.values()),
                          forward_matches_reverse(node), lambda slot: self._statics.value(node.ins[slot]),
                          lambda slot: self._same_values.key(node.ins[slot]), self._eliminate_branch,
                          self._in_branch, lambda slot: self._statics.zeros(node.ins[slot]))
        return partials(ctx)

    def pins_match(self, top_values: Sequence) -> bool:
        """Whether the closed jaxpr's constants ``top_values`` agree with the
        values this graph's structure was built from (:attr:`pins`: the
        position of each constant a rule read, e.g. a gather's index array),
        and have no zeros where a rule found none (:attr:`zero_free`; with a
        zero there, a new graph may store less)."""
        for k, pinned in self.pins.items():
            v = top_values[k]
            if _jaxpr.is_tracer(v):
                return False
            v = np.asarray(v)
            if v.shape != pinned.shape or v.dtype != pinned.dtype or not np.array_equal(v, pinned):
                return False
        for k in self.zero_free:
            v = top_values[k]
            if _jaxpr.is_tracer(v) or not np.all(np.asarray(v) != 0):
                return False
        return True

    def _prune(self) -> None:
        """Drop intermediates without predecessors or successors, repeatedly."""
        while True:
            preds: dict[int, int] = {}
            succs: dict[int, int] = {}
            for (u, v) in self.edges:
                succs[u] = succs.get(u, 0) + 1
                preds[v] = preds.get(v, 0) + 1
            dead = {v for v in set(preds) | set(succs) if self.vertices[v].kind == "intermediate"
                    and (not preds.get(v) or not succs.get(v))}
            if not dead:
                break
            self.edges = {k: s for k, s in self.edges.items() if k[0] not in dead and k[1] not in dead}
        live = {u for e in self.edges for u in e}
        self.raw = [r for r in self.raw if (r.src, r.dst) in self.edges]
        self.eliminable = tuple(v.id for v in self.vertices if v.kind == "intermediate" and v.id in live)
        self.dtype = jnp.result_type(*[v.dtype for v in self.vertices]) if self.vertices else jnp.result_type(float)

    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        for v in self.vertices:
            h.update(repr((v.id, v.kind, v.label, v.shape, str(v.dtype))).encode())
        for (u, w), st in sorted(self.edges.items()):
            h.update(repr((u, w, st)).encode())
        h.update(repr((self.inputs, self.outputs)).encode())
        return h.hexdigest()[:20]

    # -- queries ------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    def predecessors(self, v: int) -> list[int]:
        return sorted(u for (u, w) in self.edges if w == v)

    def successors(self, v: int) -> list[int]:
        return sorted(w for (u, w) in self.edges if u == v)

    def summary(self) -> str:
        """A readable listing: one line per vertex, its producer and partials."""
        lines = [f"Graph {self.fingerprint}: {len(self.vertices)} vertices "
                 f"({len(self.eliminable)} eliminable), {len(self.edges)} edges"]
        incoming: dict[int, list] = {}
        for (u, w), st in sorted(self.edges.items()):
            incoming.setdefault(w, []).append(f"{u}:{st.describe()}")
        live = {u for e in self.edges for u in e} | {i for i in self.inputs if i is not None} | {
            o for o in self.outputs if o is not None}
        for v in self.vertices:
            if v.id not in live:
                continue
            shape = "x".join(map(str, v.shape)) or "scalar"
            lines.append(f"  {v.id:4d} {v.kind:12s} {v.label:20s} {shape:12s} <- "
                         + ", ".join(incoming.get(v.id, [])))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Graph(fingerprint={self.fingerprint!r}, vertices={len(self.vertices)}, "
                f"eliminable={len(self.eliminable)}, edges={len(self.edges)})")
