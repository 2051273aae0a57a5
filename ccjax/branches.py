"""The branches of a ``cond`` as graphs of their own, eliminated.

:mod:`ccjax.rules.control` joins the branches' final partials into the
cond's partials; it receives :func:`eliminate_branch` through
``RuleContext.eliminate_branch`` (rules sit below graphs and plans, so a
rule cannot build or plan a graph itself).  A branch's graph gets the same
callback, so conds nested in branches are eliminated too.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import numpy as np

from ccjax.eliminate import Plan, final_values, partial_values, plan_elimination, probe_finals
from ccjax.graph import Graph, build_program


@dataclasses.dataclass(frozen=True, eq=False)
class EliminatedBranch:
    """A branch's graph (operands ``diff`` differentiated), the plan of its
    cheaper of forward and reverse order, and its constants."""

    graph: Graph
    plan: Plan
    consts: tuple

    def final(self, k: int, j: int):
        """The structure of the partial from differentiated operand ``k`` to
        output ``j``: None when structurally zero, False when the output is
        the operand itself (no elimination carries it)."""
        src, dst = self.graph.inputs[k], self.graph.outputs[j]
        if src is None or dst is None:
            return None
        if src == dst:
            return False
        slot = self.plan.final.get((src, dst))
        return None if slot is None else self.plan.structures[slot]

    def run(self, operands: Sequence) -> dict:
        """``{(k, j): value}`` of every final partial at ``operands`` (all
        of the branch's operands, values or tracers)."""
        g, plan = self.graph, self.plan
        return self._by_pair(final_values(g, plan, partial_values(
            g, g.program.evaluate(list(operands), list(self.consts)))))

    def nonzero(self, k: int, j: int) -> Optional[np.ndarray]:
        """Where the value of the final partial from operand ``k`` to output
        ``j`` can be nonzero, as a boolean array (see
        :func:`ccjax.eliminate.structural_keep`); None when anywhere."""
        found = self._probes
        if found is None or found.get((k, j)) is None:
            return None
        return (found[(k, j)] != 0).any(axis=0)

    @functools.cached_property
    def _probes(self) -> Optional[dict]:
        found = probe_finals(self.graph, self.plan)
        return None if found is None else self._by_pair({slot: values for slot, (values, _) in found.items()})

    def _by_pair(self, finals: dict) -> dict:
        g = self.graph
        ins = {v: k for k, v in enumerate(g.inputs) if v is not None}
        outs = {v: j for j, v in enumerate(g.outputs) if v is not None}
        return {(ins[src], outs[dst]): finals[slot] for (src, dst), slot in self.plan.final.items()
                if src in ins and dst in outs}


def eliminate_branch(closed_jaxpr, diff: Sequence[int], n_outputs: int) -> Optional[EliminatedBranch]:
    """Build and plan one branch (a closed jaxpr over all of the cond's
    operands but the index); None when its derivative exists only as JAX's
    reverse pass over the whole function (a ``custom_vjp`` inside)."""
    g = Graph(build_program(closed_jaxpr, diff), diff, n_outputs, closed_jaxpr.consts,
              eliminate_branch=eliminate_branch, in_branch=True)
    if g.whole_reverse:
        return None
    forward = tuple(sorted(g.eliminable))
    # The cond's rule joins one structure per final partial: no terms kept apart.
    plans = [plan_elimination(g, order, lazy_sums=False) for order in (forward, forward[::-1])]
    plan = min(plans, key=lambda p: p.report.mults)
    return EliminatedBranch(g, plan, tuple(closed_jaxpr.consts))
