"""Run an elimination order: plan it on structures, then execute it on values.

:func:`plan_elimination` walks the order symbolically and records every
product and sum with its plan from :mod:`ccjax.structure`; the plan's
``mults`` is therefore exactly what :func:`execute` performs.  Eliminating
vertex ``v`` replaces every path ``u -> v -> w`` by
``E[u, w] += E[v, w] ∘ E[u, v]`` and deletes ``v``.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp

from ccjax.graph import Graph
from ccjax.structure import ProductPlan, Structure, SumPlan, product_plan, sum_plan, to_bcoo, to_dense

LAYOUTS = ("dense", "sparse")


@dataclasses.dataclass(frozen=True)
class CostReport:
    """What an order costs.  ``mults``: scalar multiplications;
    ``additions``: scalar additions of accumulations; ``peak_values``: the
    largest number of stored partial values alive at once."""

    mults: int
    additions: int
    peak_values: int
    order: tuple[int, ...]

    def __int__(self) -> int:
        return self.mults


@dataclasses.dataclass(frozen=True)
class Plan:
    """A planned elimination.

    ``raw``: slot of each raw partial of the graph (in ``graph.raw`` order);
    ``steps``: ``(kind, dst, a, b, plan)`` with kind 'prod' (``a`` outer,
    ``b`` inner) or 'sum'; ``final``: ``{(input vertex, output vertex): slot}``
    and ``structures`` the structure of every slot.
    """

    steps: tuple
    final: dict
    structures: tuple
    report: CostReport


class OrderError(ValueError):
    """An explicit order that is not a permutation of ``graph.eliminable``."""


def validate_order(graph: Graph, order: Sequence) -> tuple[int, ...]:
    """Check that ``order`` permutes ``graph.eliminable``; name offenders."""
    try:
        ids = [int(v) for v in order]
    except (TypeError, ValueError):
        raise OrderError(f"an order must be a sequence of integer vertex ids, got {order!r}") from None
    if any(int(v) != v for v in order):
        raise OrderError(f"vertex ids must be integers, got {list(order)!r}")
    allowed = set(graph.eliminable)
    problems = []
    kinds = {v.id: v.kind for v in graph.vertices}
    unknown = sorted({v for v in ids if v not in allowed and v not in kinds})
    if unknown:
        problems.append(f"unknown vertex ids {unknown}")
    not_elim = sorted({v for v in ids if v in kinds and v not in allowed})
    if not_elim:
        what = ", ".join(f"{v} ({kinds[v] if kinds[v] != 'intermediate' else 'pruned'})" for v in not_elim)
        problems.append(f"vertices that cannot be eliminated: {what}")
    seen, dups = set(), set()
    for v in ids:
        (dups if v in seen else seen).add(v)
    if dups:
        problems.append(f"duplicate vertex ids {sorted(dups)}")
    missing = sorted(allowed - seen)
    if missing:
        problems.append(f"missing vertex ids {missing}")
    if problems:
        raise OrderError("invalid elimination order: " + "; ".join(problems)
                         + f" (graph {graph.fingerprint} has eliminable vertices {list(graph.eliminable)})")
    return tuple(ids)


def plan_elimination(graph: Graph, order: Sequence[int]) -> Plan:
    """Plan ``order`` (validated) on ``graph``; see :class:`Plan`."""
    order = validate_order(graph, order)
    structures: list[Structure] = []
    steps: list = []
    live_values: dict[int, int] = {}
    peak = [0]

    def new_slot(st: Structure) -> int:
        structures.append(st)
        live_values[len(structures) - 1] = st.nnz_values
        peak[0] = max(peak[0], sum(live_values.values()))
        return len(structures) - 1

    def drop(slot: int) -> None:
        live_values.pop(slot, None)

    mults = additions = 0
    edges: dict[tuple[int, int], int] = {}
    raw_slots = [new_slot(r.partial.structure) for r in graph.raw]  # slot i holds raw partial i
    for r, slot in zip(graph.raw, raw_slots):
        key = (r.src, r.dst)
        if key in edges:
            sp = sum_plan(structures[edges[key]], r.partial.structure)
            dst = new_slot(sp.result) if sp.result is not None else None
            steps.append(("sum", dst, edges[key], slot, sp))
            additions += sp.additions
            drop(edges[key]), drop(slot)
            if dst is None:
                del edges[key]
            else:
                edges[key] = dst
        else:
            edges[key] = slot
    preds: dict[int, set] = {}
    succs: dict[int, set] = {}
    for (u, w) in edges:
        succs.setdefault(u, set()).add(w)
        preds.setdefault(w, set()).add(u)
    for v in order:
        for u in sorted(preds.get(v, ())):
            for w in sorted(succs.get(v, ())):
                pp: ProductPlan = product_plan(structures[edges[(v, w)]], structures[edges[(u, v)]])
                prod = new_slot(pp.result)
                steps.append(("prod", prod, edges[(v, w)], edges[(u, v)], pp))
                mults += pp.mults
                if (u, w) in edges:
                    sp: SumPlan = sum_plan(structures[edges[(u, w)]], pp.result)
                    dst = new_slot(sp.result) if sp.result is not None else None
                    steps.append(("sum", dst, edges[(u, w)], prod, sp))
                    additions += sp.additions
                    drop(edges[(u, w)]), drop(prod)
                    if dst is None:
                        del edges[(u, w)]
                        succs[u].discard(w)
                        preds[w].discard(u)
                    else:
                        edges[(u, w)] = dst
                else:
                    edges[(u, w)] = prod
                    succs.setdefault(u, set()).add(w)
                    preds.setdefault(w, set()).add(u)
        for u in preds.pop(v, set()):
            drop(edges.pop((u, v)))
            succs[u].discard(v)
        for w in succs.pop(v, set()):
            drop(edges.pop((v, w)))
            preds[w].discard(v)
    report = CostReport(mults, additions, peak[0], order)
    return Plan(tuple(steps), dict(edges), tuple(structures), report)


def partial_values(graph: Graph, env: Sequence) -> list:
    """Values of the graph's raw partials (None for unit ones), given the
    evaluated program ``env`` (values by variable id)."""
    nodes = graph.program.nodes
    values = []
    for r in graph.raw:
        if r.partial.values is None:
            values.append(None)
        else:
            node = nodes[r.node]
            values.append(r.partial.values([env[i] for i in node.ins], [env[o] for o in node.outs]))
    return values


def run_plan(graph: Graph, plan: Plan, raw_values: Sequence, layout: str = "dense") -> dict:
    """Multiply and accumulate: the elimination itself.

    Returns ``{(input vertex, output vertex): block}`` with blocks in the
    ``out_shape + in_shape`` layout and the graph's compute dtype: dense
    arrays, or ``jax.experimental.sparse.BCOO`` for ``layout="sparse"``.
    Every scalar multiplication performed here is counted in ``plan.report``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown output layout {layout!r}; use one of {LAYOUTS}")
    dtype = graph.dtype
    values: list = list(raw_values) + [None] * (len(plan.structures) - len(raw_values))
    for kind, dst, a, b, p in plan.steps:
        result = p.apply(values[a], values[b], dtype)
        if dst is not None:
            values[dst] = result
    convert = to_dense if layout == "dense" else to_bcoo
    return {key: convert(plan.structures[slot], values[slot], dtype) for key, slot in plan.final.items()}


def execute(graph: Graph, plan: Plan, env: Sequence, layout: str = "dense") -> dict:
    """:func:`partial_values` then :func:`run_plan`."""
    return run_plan(graph, plan, partial_values(graph, env), layout)


def count_mults(graph: Graph, order: Sequence[int]) -> int:
    """Multiplications of ``order`` (the cost model)."""
    return plan_elimination(graph, order).report.mults
