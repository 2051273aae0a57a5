"""Multiplication counts of whole Jacobian programs, equation by equation.

``order="auto"`` compares an elimination with JAX's reverse and forward
modes over the whole function by the multiplications each program
performs beyond the primal evaluation (:mod:`ccjax.jax_modes`).  Reading
that from the jaxpr of the whole Jacobian program costs a full trace per
candidate, about a millisecond per equation.  JAX's AD is compositional,
so the same count is the sum, over the program's equations (those JAX's AD
of the program runs, ``Program.ad_nodes``), of the count
of each equation's own Jacobian program: ``vmap`` of its JVP over the
``n_in`` tangent basis (forward mode) or of its VJP over the ``n_out``
cotangent basis (reverse mode), with the same symbolic zeros the whole
program has (inactive operands, outputs that reach no result).  Equations
with the same signature (primitive, parameters, operand types, which
operands are constants, active or live) count the same, so each signature
is traced once per mode; an unrolled integrator or a deep network has a few
dozen.  That trace runs at a prime seed count and splits what runs once
from what runs per seed (:func:`ccjax._jaxpr.seed_split`), so the count at
``n_in`` tangents, ``n_out`` cotangents or ``k`` compressed seeds
(:mod:`ccjax.coloring`) is read off it without another.

An elimination's program multiplies in its partials' values and in the
products and sums its plan counts (``plan.report.mults``); the partials
are counted per equation the same way.

``tests/test_plain_modes.py`` checks every sum against the count of the
whole program's jaxpr.
"""
from __future__ import annotations

import math
from typing import Hashable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ccjax._jaxpr import (MOVES_DATA, MULTIPLYING, NotSeedLinear, SeedSplit, count_multiplications, hashable,
                          inner_dims, own_multiplications, scattered_entries, seed_split, staged_alone,
                          tangent_multiplications)
from ccjax.eliminate import evaluate_partial
from ccjax.graph import Graph, Node, Program

MODES = ("rev", "fwd")

#: Fewest updates of one scatter that :meth:`Counter.node_scattered` and
#: :meth:`Counter.partial_scattered` count.  XLA:CPU's scatter of a batch of
#: (co)tangents takes about 5 ns an entry up to 65k entries and 10-17 ns
#: from 262k to 8M, while the gathers of the other mode stay near 0.3 ns:
#: ``0.5 * (v[p] + v[q])`` with static permutations ran 4x faster by
#: ``jax.jacfwd`` than by ``jax.jacrev`` at n = 128 (16,384 entries a
#: scatter), 10x at 256, 150x at 1,024; at n = 64 (4,096 entries) and in
#: ten RK4 steps of Lorenz-96 by index vectors at n = 64 reverse mode ran
#: 2x and 10x faster.
LARGE_SCATTER = 1 << 14


def split_seeds(prog: Program, node: Node) -> int:
    """The seed count :meth:`Counter._mode_split` traces ``node`` at: the
    least prime above four times its largest dimension (of its operands,
    results and sub-jaxprs' variables), so that no dimension of its Jacobian
    program other than those holding the seeds is a multiple of it (those
    are products and sums of smaller ones)."""
    dims = [d for i in (*node.ad_reads, *node.outs) for d in prog.avals[i].shape]
    if isinstance(node.params, dict):
        dims.extend(inner_dims(node.params))
    n = 4 * max(dims, default=1) + 16
    while not _is_prime(n):
        n += 1
    return n


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % k for k in range(2, math.isqrt(n) + 1))


def _inexact(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.inexact)


class Counter:
    """Counts for one graph, memoised per equation signature (over
    ``program``, else the graph's).

    ``live``: the variables whose cotangent is not a symbolic zero in JAX's
    reverse pass (an active path leads from them to an output).
    """

    def __init__(self, graph: Graph, program: Optional[Program] = None):
        self.graph = graph
        prog = program or graph.program
        self.prog = prog
        self._as_written = None
        self.n_in = sum(int(np.prod(prog.avals[prog.inputs[leaf]].shape)) for leaf in graph.diff_leaves)
        outputs = prog.outputs[:len(graph.outputs)]
        self.n_out = sum(int(np.prod(prog.avals[i].shape)) for i in outputs)
        live = {i for i in outputs if prog.active[i]}
        for node in reversed(prog.ad_nodes):
            if any(o in live for o in node.outs):
                live.update(i for i in node.ad_reads if prog.active[i])
        self.live = live
        self.memo: dict = {}
        self.scattered: dict = {}  # memo keys -> scattered entries of the same trace
        self.splits: dict = {}  # (mode, signature) -> SeedSplit, or None where it does not apply
        self.signatures: dict = {}

    @property
    def as_written(self) -> "Counter":
        """The counter of JAX's whole-function modes: over the program as
        written (:attr:`ccjax.graph.Program.as_written`), whose scans the
        graph may have unrolled."""
        if self.prog.rolled is None:
            return self
        if self._as_written is None:
            self._as_written = Counter(self.graph, self.prog.rolled)
        return self._as_written

    # -- one equation ------------------------------------------------------

    def _signature(self, node: Node) -> Hashable:
        key = id(node)  # nodes live as long as the graph, so ids stay unique
        if key not in self.signatures:
            self.signatures[key] = self._make_signature(node)
        return self.signatures[key]

    def _make_signature(self, node: Node) -> Hashable:
        prog = self.prog
        if node.primitive is None or not isinstance(node.params, dict):
            params: Hashable = ("node", id(node))  # internal nodes: never shared
        else:
            params = tuple((k, hashable(v)) for k, v in sorted(node.params.items()))
        reads = tuple((tuple(prog.avals[i].shape), str(prog.avals[i].dtype),
                       bool(getattr(prog.avals[i], "weak_type", False)),
                       i in prog.consts, bool(prog.active[i])) for i in node.ad_reads)
        # operands reading one variable stay tied (``x * x``)
        ties = tuple(node.ad_reads.index(i) for i in node.ad_reads)
        outs = tuple(o in self.live for o in node.outs)
        return node.name, params, reads, ties, outs

    def _env(self, node: Node, traced: Sequence) -> dict:
        """Values by variable id: constants concrete (as in the whole
        program, where operations on them alone are folded), the others
        from ``traced`` in the order of :meth:`_traced_ids`."""
        env = {i: self.prog.consts[i] for i in node.ad_reads if i in self.prog.consts}
        env.update(zip(self._traced_ids(node), traced))
        return env

    def _traced_ids(self, node: Node) -> list[int]:
        return [i for i in dict.fromkeys(node.ad_reads) if i not in self.prog.consts]

    def _specs(self, ids: Sequence[int]) -> list:
        return [jax.ShapeDtypeStruct(self.prog.avals[i].shape, self.prog.avals[i].dtype) for i in ids]

    def _count(self, key: Hashable, fn, ids: Sequence[int], extra: Sequence = ()) -> int:
        """Multiplications of ``fn``'s jaxpr, memoised under ``key`` with its
        scattered entries (``self.scattered``)."""
        if key not in self.memo:
            self.memo[key], self.scattered[key] = self._trace(fn, ids, extra)
        return self.memo[key]

    def _trace(self, fn, ids: Sequence[int], extra: Sequence = ()) -> tuple[int, int]:
        """Multiplications and scattered entries (:data:`LARGE_SCATTER`) of ``fn``'s jaxpr."""
        jaxpr = jax.make_jaxpr(fn)(self._specs(ids), list(extra)).jaxpr
        return count_multiplications(jaxpr), scattered_entries(jaxpr, LARGE_SCATTER)

    def _seeds(self, mode: str, seeds: Optional[int]) -> int:
        """Basis vectors pushed through ``mode``'s program: all (``n_in``
        tangents, ``n_out`` cotangents), or ``seeds`` compressed ones."""
        return (self.n_in if mode == "fwd" else self.n_out) if seeds is None else seeds

    def _mode_key(self, node: Node, mode: str, seeds: Optional[int]) -> Hashable:
        return (mode, self._signature(node)) if seeds is None else (mode, seeds, self._signature(node))

    def node_mults(self, node: Node, mode: str, seeds: Optional[int] = None) -> int:
        """Multiplications of ``node``'s part of ``jax.jacrev``/``jax.jacfwd``
        of the whole program beyond its primal evaluation (with ``seeds``:
        of the same program vmapped over that many seeds)."""
        if not self._differentiates(node):
            return 0
        key = self._mode_key(node, mode, seeds)
        if key not in self.memo:
            batch = self._seeds(mode, seeds)
            split = self._mode_split(node, mode)
            if split is None:
                mults, scattered = self._trace(self._mode_program(node, mode, batch), self._traced_ids(node))
            else:
                mults, scattered = split.mults(batch), split.scattered(batch, LARGE_SCATTER)
            self.memo[key] = max(0, mults - self.primal_mults(node))
            self.scattered[key] = max(0, scattered - self._primal_scattered(node))
        return self.memo[key]

    def _differentiates(self, node: Node) -> bool:
        """Whether JAX's modes differentiate ``node`` with arithmetic: an
        active operand, and not an equation that only moves data."""
        return (any(self.prog.active[i] for i in self._traced_ids(node))
                and not (node.primitive is not None and node.name in MOVES_DATA))

    def _mode_split(self, node: Node, mode: str) -> Optional[SeedSplit]:
        """``node``'s mode program traced once at a prime seed count,
        :func:`~ccjax._jaxpr.seed_split` into what runs once and per seed
        (so its count at every seed count, plain or compressed, costs one
        trace); None where the program's counts are not read that way."""
        key = (mode, self._signature(node))
        if key not in self.splits:
            seeds = split_seeds(self.prog, node)
            jaxpr = jax.make_jaxpr(self._mode_program(node, mode, seeds))(self._specs(self._traced_ids(node)), []).jaxpr
            try:
                self.splits[key] = seed_split(jaxpr, seeds)
            except NotSeedLinear:
                self.splits[key] = None
        return self.splits[key]

    def _mode_program(self, node: Node, mode: str, batch: int):
        """``node``'s Jacobian program in ``mode``: ``vmap`` of its JVP over
        ``batch`` tangents, or of its VJP over ``batch`` cotangents, with the
        whole program's symbolic zeros (inactive operands, dead outputs)."""
        prog = self.prog
        ids = self._traced_ids(node)
        active = [i for i in ids if prog.active[i]]

        def on_active(values, act):
            env = self._env(node, values)
            env.update(zip(active, act))
            return node.ad_eval(env)

        pos = [ids.index(i) for i in active]
        if mode == "fwd":
            def jac(values, _):
                def outs(*act):
                    return [o for o, k in zip(on_active(values, act), node.outs) if _inexact(prog.avals[k])]

                basis = [jnp.zeros((batch,) + tuple(prog.avals[i].shape), prog.avals[i].dtype) for i in active]
                return jax.vmap(lambda *t: jax.jvp(outs, [values[p] for p in pos], list(t))[1])(*basis)
            return jac
        # an output no result depends on gets no cotangent, but its
        # residuals are still computed by the linearisation
        live_outs = [k for k in node.outs if k in self.live and _inexact(prog.avals[k])]

        def jac(values, _):
            def outs(*act):
                res = dict(zip(node.outs, on_active(values, act)))
                return [res[k] for k in live_outs]

            _, pullback = jax.vjp(outs, *[values[p] for p in pos])
            if not live_outs:
                return []
            basis = [jnp.zeros((batch,) + tuple(prog.avals[k].shape), prog.avals[k].dtype) for k in live_outs]
            return jax.vmap(lambda *c: pullback(list(c)))(*basis)
        return jac

    def primal_mults(self, node: Node) -> int:
        """Multiplications of ``node``'s own evaluation (traced unless the
        equation stages alone: :func:`~ccjax._jaxpr.staged_alone`)."""
        if node.primitive is not None and staged_alone(node.name, node.params):
            if node.name not in MULTIPLYING:
                return 0
            shape = lambda i: self.prog.avals[i].shape
            return own_multiplications(node.name, node.params, shape(node.ins[0]), shape(node.outs[0]),
                                       shape(node.ins[-1]))
        key = ("primal", self._signature(node))
        return self._count(key, lambda values, _: node.ad_eval(self._env(node, values)), self._traced_ids(node))

    def _primal_scattered(self, node: Node) -> int:
        if node.primitive is not None and staged_alone(node.name, node.params):
            size = int(np.prod(self.prog.avals[node.ins[2]].shape)) if node.name.startswith("scatter") else 0
            return size if size >= LARGE_SCATTER else 0
        self.primal_mults(node)
        return self.scattered[("primal", self._signature(node))]

    def node_scattered(self, node: Node, mode: str, seeds: Optional[int] = None) -> int:
        """Update entries the scatters of ``node``'s part of
        ``jax.jacrev``/``jax.jacfwd`` write beyond its primal evaluation
        (scatters of :data:`LARGE_SCATTER` updates or more):
        in reverse mode a gather's transpose scatter-adds every cotangent
        (``n_out`` of them), in forward mode a scatter-add's JVP scatters
        every tangent; other equations as their traced Jacobian programs
        write."""
        prog = self.prog
        active = [i for i in self._traced_ids(node) if prog.active[i]]
        if not active:
            return 0
        if node.primitive is not None and node.name in MOVES_DATA:
            size = 0
            if mode == "rev" and node.name == "gather" and prog.active[node.ins[0]] and node.outs[0] in self.live:
                size = int(np.prod(prog.avals[node.outs[0]].shape)) * self._seeds(mode, seeds)
            if mode == "fwd" and node.name == "scatter-add":
                size = int(np.prod(prog.avals[node.ins[2]].shape)) * self._seeds(mode, seeds)
            return size if size >= LARGE_SCATTER else 0
        self.node_mults(node, mode, seeds)
        return self.scattered[self._mode_key(node, mode, seeds)]

    # -- whole programs ----------------------------------------------------

    def mode_mults(self, mode: str, seeds: Optional[int] = None) -> int:
        """What :func:`ccjax.jax_modes.plan_jax_mode` reports for ``mode``
        (with ``seeds``: for ``mode`` vmapped over that many compressed
        seeds, :mod:`ccjax.colored`)."""
        if mode not in MODES:
            raise ValueError(f"unknown JAX AD mode {mode!r}; use one of {MODES}")
        if self.as_written is not self:
            return self.as_written.mode_mults(mode, seeds)
        prog = self.prog
        ends = (prog.outputs[:len(self.graph.outputs)] if mode == "rev"
                else [prog.inputs[leaf] for leaf in self.graph.diff_leaves])
        if not all(jnp.issubdtype(prog.avals[i].dtype, jnp.floating) for i in ends):
            raise TypeError(f"jax.jac{mode} of this program needs real-valued "
                            f"{'outputs' if mode == 'rev' else 'inputs'}")
        return sum(self.node_mults(node, mode, seeds) for node in self.prog.ad_nodes)

    def mode_scattered(self, mode: str, seeds: Optional[int] = None) -> int:
        """Update entries the scatters of ``mode``'s Jacobian program write
        beyond the primal's (:meth:`node_scattered`)."""
        if self.as_written is not self:
            return self.as_written.mode_scattered(mode, seeds)
        return sum(self.node_scattered(node, mode, seeds) for node in self.prog.ad_nodes)

    def mode_entries(self, mode: str, seeds: Optional[int] = None) -> int:
        """Tangent (``fwd``) or cotangent (``rev``) entries ``mode`` writes:
        per basis vector, one per entry of each inexact variable that
        carries one (active for ``fwd``, live for ``rev``)."""
        if mode not in MODES:
            raise ValueError(f"unknown JAX AD mode {mode!r}; use one of {MODES}")
        if self.as_written is not self:
            return self.as_written.mode_entries(mode, seeds)
        prog = self.prog
        carries = (lambda i: prog.active[i]) if mode == "fwd" else (lambda i: i in self.live)
        per_seed = sum(int(np.prod(prog.avals[o].shape)) for node in prog.ad_nodes for o in node.outs
                       if carries(o) and _inexact(prog.avals[o]))
        return per_seed * self._seeds(mode, seeds)

    def mode_lower_bound(self, mode: str, seeds: Optional[int] = None) -> int:
        """A lower bound of :meth:`mode_mults` read off the program without
        tracing.  JAX's JVP of a ``mul`` or ``dot_general`` repeats that
        operation on the tangent of each active operand, and its
        transpose on the cotangent of a live result, so in ``vmap`` over the
        ``n_in`` tangents (``n_out`` cotangents) each such equation costs at
        least that many times its own multiplications; an elementwise
        function of :data:`~ccjax._jaxpr.TANGENT_MULTIPLYING` (``sin``,
        ``exp``, ``tanh``...) costs at least its output size each time."""
        if mode not in MODES:
            raise ValueError(f"unknown JAX AD mode {mode!r}; use one of {MODES}")
        if self.as_written is not self:
            return self.as_written.mode_lower_bound(mode, seeds)
        prog = self.prog
        own = 0
        for node in prog.ad_nodes:
            if not node.outs or not _inexact(prog.avals[node.outs[0]]):
                continue
            out_shape = prog.avals[node.outs[0]].shape
            if node.name in MULTIPLYING:
                # Each active factor has its own term in the JVP and in the transpose.
                factors = sum(bool(prog.active[i]) for i in node.ins[:2])
                mults = factors * own_multiplications(node.name, node.params, prog.avals[node.ins[0]].shape,
                                                      out_shape, prog.avals[node.ins[-1]].shape)
            else:
                mults = tangent_multiplications(node.name, node.params, out_shape)
            if not mults or not any(prog.active[i] for i in self._traced_ids(node)):
                continue
            if mode == "rev" and node.outs[0] not in self.live:
                continue
            own += mults
        return own * self._seeds(mode, seeds)

    def partial_mults(self) -> int:
        """Multiplications computing the values of the graph's partials (an
        equation's partials together: some share one computation)."""
        return sum(self._count(*args) for args in self._partial_programs())

    def partial_scattered(self) -> int:
        """Update entries the scatters computing the partials' values write."""
        total = 0
        for key, *program in self._partial_programs():
            self._count(key, *program)
            total += self.scattered[key]
        return total

    def _partial_programs(self) -> list[tuple]:
        """``(memo key, fn, ids, extra)`` computing each equation's partials
        together (some share one computation)."""
        nodes = self.prog.nodes
        by_node: dict[int, list] = {}
        for r in self.graph.raw:
            if r.partial.values is not None:
                by_node.setdefault(r.node, []).append(r.partial)
        programs = []
        for n, parts in by_node.items():
            node = nodes[n]
            key = ("partials", self._signature(node), tuple((p.out, p.slot, p.structure) for p in parts))

            def values(vals, outs, node=node, parts=parts):
                env = self._env(node, vals)
                shared: dict = {}
                return [evaluate_partial(p, [env[i] for i in node.ins], outs, shared) for p in parts]

            programs.append((key, values, self._traced_ids(node), self._specs(node.outs)))
        return programs

    def elimination_mults(self, report_mults: int) -> int:
        """An elimination program's multiplications: partials and products."""
        return self.partial_mults() + report_mults
