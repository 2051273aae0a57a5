"""Run an elimination order: plan it on structures, then execute it on values.

:func:`plan_elimination` walks the order symbolically and records every
product and sum with its plan from :mod:`ccjax.structure`; the plan's
``mults`` is therefore exactly what :func:`execute` performs.  Eliminating
vertex ``v`` replaces every path ``u -> v -> w`` by
``E[u, w] += E[v, w] ∘ E[u, v]`` and deletes ``v``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import sparse

from ccjax._jaxpr import is_tracer
from ccjax.graph import Graph, run_in_numpy
from ccjax.rules.base import run_apart
from ccjax.structure import (ProductPlan, Structure, SumPlan, deband_plan, entry_count, entry_indices,
                             entry_positions, is_selection, is_terms, parts_of, product_plan, reshape, sum_plan,
                             to_bcoo, to_dense, transpose, values_of)

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
    and ``structures`` the structure of every slot.  ``mode`` is
    ``"eliminate"``, ``"jax-rev"``/``"jax-fwd"`` for JAX's AD of the
    whole program, or ``"colored-fwd"``/``"colored-rev"`` for that AD over
    compressed seeds, whose :class:`ccjax.coloring.Coloring` is
    ``coloring`` (:mod:`ccjax.jax_modes`; no steps).  A structure may be
    a :class:`~ccjax.structure.Terms` (a sum that would store more entries
    than its terms together, such as a band plus a dense row, or bands
    along two axes); a final block of terms is written as their sum.
    """

    steps: tuple
    final: dict
    structures: tuple
    report: CostReport
    mode: str = "eliminate"
    coloring: Optional[object] = None


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


#: Plans of this many recent orders are kept with their graph (``order="auto"``
#: plans the order it picks while picking it, then runs it).
KEPT_PLANS = 4


def plan_elimination(graph: Graph, order: Sequence[int], lazy_sums: bool = True) -> Plan:
    """Plan ``order`` (validated) on ``graph``; see :class:`Plan`.  With
    ``lazy_sums`` off, every sum is one structure (no
    :class:`~ccjax.structure.Terms`).  The last :data:`KEPT_PLANS` plans
    are kept with the graph and returned again for the same order."""
    order = validate_order(graph, order)
    key = (order, lazy_sums)
    plan = graph.eliminations.get(key)
    if plan is None:
        plan = _plan_elimination(graph, order, lazy_sums)
        graph.eliminations[key] = plan
        while len(graph.eliminations) > KEPT_PLANS:
            del graph.eliminations[next(iter(graph.eliminations))]
    return plan


def _plan_elimination(graph: Graph, order: tuple[int, ...], lazy_sums: bool) -> Plan:
    structures: list[Structure] = []
    steps: list = []
    live_values: dict[int, int] = {}
    live = [0, 0]  # values stored now, and the peak; a running total keeps planning linear

    def new_slot(st: Structure) -> int:
        structures.append(st)
        live_values[len(structures) - 1] = st.nnz_values
        live[0] += st.nnz_values
        live[1] = max(live[1], live[0])
        return len(structures) - 1

    def drop(slot: int) -> None:
        live[0] -= live_values.pop(slot, 0)

    mults = additions = 0
    edges: dict[tuple[int, int], int] = {}
    raw_slots = [new_slot(r.partial.structure) for r in graph.raw]  # slot i holds raw partial i
    for r, slot in zip(graph.raw, raw_slots):
        key = (r.src, r.dst)
        if key in edges:
            sp = sum_plan(structures[edges[key]], r.partial.structure, lazy=lazy_sums)
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
                    sp: SumPlan = sum_plan(structures[edges[(u, w)]], pp.result, lazy=lazy_sums)
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
    for slot in edges.values():  # a block of terms adds them when it is written
        additions += sum(entry_count(part) for part in parts_of(structures[slot])[1:])
    report = CostReport(mults, additions, live[1], order)
    return Plan(tuple(steps), dict(edges), tuple(structures), report)


def partial_values(graph: Graph, env: Sequence) -> list:
    """Values of the graph's raw partials (None for unit ones), given the
    evaluated program ``env`` (values by variable id)."""
    nodes = graph.program.nodes
    shared: dict = {}
    values = []
    for r in graph.raw:
        if r.partial.values is None:
            values.append(None)
            continue
        node = nodes[r.node]
        values.append(evaluate_partial(r.partial, [env[i] for i in node.ins], [env[o] for o in node.outs],
                                       shared))
    return values


def evaluate_partial(partial, ins: Sequence, outs: Sequence, shared: dict):
    """``partial``'s values from its equation's operands and results; a
    computation shared with other partials of that equation runs once per
    ``shared`` memo (the computation -> its result)."""
    if partial.shared is None:
        return partial.values(ins, outs)
    if partial.shared not in shared:
        shared[partial.shared] = partial.shared(ins, outs)
    return partial.pick(shared[partial.shared])


def run_plan(graph: Graph, plan: Plan, raw_values: Sequence, layout: str = "dense") -> list:
    """Multiply and accumulate (the elimination itself), then write the Jacobian:
    :func:`final_values` then :func:`write_jacobian`.

    Returns every block of the Jacobian, output-major (for each output leaf,
    one block per differentiated input leaf), each in the ``jax.jacrev``
    layout ``out_shape + in_shape`` and the input leaf's dtype: dense
    arrays, or ``jax.experimental.sparse.BCOO`` for ``layout="sparse"``.
    Every scalar multiplication performed here is counted in
    ``plan.report``; writing the blocks (:func:`dense_block`) multiplies
    nothing.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown output layout {layout!r}; use one of {LAYOUTS}")
    return write_jacobian(graph, plan, final_values(graph, plan, raw_values), layout)


def final_values(graph: Graph, plan: Plan, raw_values: Sequence) -> dict:
    """Run the plan's products and sums: the compact stored values of the
    remaining input->output edges, ``{slot: value}`` for the slots of
    ``plan.final`` (None for a unit partial)."""
    dtype = graph.dtype
    values: list = list(raw_values) + [None] * (len(plan.structures) - len(raw_values))
    for kind, dst, a, b, p in plan.steps:
        result = p.apply(values[a], values[b], dtype)
        if dst is not None:
            values[dst] = result
    return {slot: values[slot] for slot in plan.final.values()}


def write_jacobian(graph: Graph, plan: Plan, finals: dict, layout: str = "dense") -> list:
    """Every block of the Jacobian from the final compact values (see
    :func:`run_plan`), zero blocks included."""
    prog = graph.program
    kept = structural_keep(graph, plan) if layout == "sparse" else {}
    blocks = []
    for k, out_vertex in enumerate(graph.outputs):
        out_shape = tuple(prog.avals[prog.outputs[k]].shape)
        for leaf, in_vertex in zip(graph.diff_leaves, graph.inputs):
            aval = prog.avals[prog.inputs[leaf]]
            shape = out_shape + tuple(aval.shape)
            slot = plan.final.get((in_vertex, out_vertex))
            st, value = (None, None) if slot is None else (plan.structures[slot], finals[slot])
            if layout == "sparse":
                blocks.append(sparse_block(st, value, shape, aval.dtype, kept.get(slot)))
            else:
                blocks.append(dense_block(st, value, shape, aval.dtype, tag=len(blocks)))
    return blocks


def execute(graph: Graph, plan: Plan, env: Sequence, layout: str = "dense") -> list:
    """:func:`partial_values` then :func:`run_plan`."""
    return run_plan(graph, plan, partial_values(graph, env), layout)


# ---------------------------------------------------------------------------
# Writing the Jacobian.
# ---------------------------------------------------------------------------


def dense_block(st: Optional[Structure], value, shape: tuple, dtype, tag: Optional[int] = None):
    """The block of structure ``st`` (None: structurally zero) as a dense array
    of ``shape`` (``st.out_shape + st.in_shape``) and ``dtype``, written by a
    single ``broadcast``/``select`` in the final shape.

    The stored values stay compact to the last step: they are cast, laid out
    over the axes they index and broadcast, and the Kronecker deltas (e.g. the
    batch diagonal of a ``vmap``-ed function) are applied by one ``where``
    on ``iota`` comparisons, so XLA writes each output buffer once, in one
    fusion. Four details matter for that on XLA:CPU (measured in
    ``docs/benchmarks.md``):

    * The ``where`` is taken in the final shape, size-1 axes included, and
      a factored axis (``[ef]``) whose symbols are all stored and occur
      nowhere else is one axis of the value (a reshape of the compact value).
      Taking it on the axes split into symbols and reshaping afterwards made
      XLA pick a non-default layout and copy the whole block into the output
      layout, or fuse the broadcast into the producer of the value and
      materialise it before the ``where``.  Only a factored axis with a
      delta or a replication inside is still split (and reshaped at the end).
    * When the broadcast expands the value (a delta or a replication), the
      compact value passes through an always-true ``where`` first.  XLA:CPU's
      YNNPACK fusion otherwise takes the broadcast into the fusion that
      computes the value (``add``/``mul`` chains) and materialises the
      expanded array (201 MB for task ``f`` at B = 512) before the ``where``.
    * Blocks that are the same computation (zero blocks, ``±I`` and other
      constant blocks, equal values) are merged by XLA's CSE, and the output
      then gets one ``copy`` per duplicate.  ``tag`` (distinct per block)
      offsets both sides of the ``iota`` comparisons by the same amount, or,
      for a zero block or a constant block without a delta, adds a
      comparison that is always false or true; each block's fusion stays
      distinct and no value changes.  (Equal non-constant blocks without a
      delta are still copied: they are not broadcast, so the copy costs what
      writing them costs.)
    """
    dtype = jnp.dtype(dtype)
    if _written_by_entries(st, shape):
        return _write_entries(st, value, shape, dtype, tag)
    if is_terms(st):
        parts = [dense_block(p, v, shape, dtype, tag) for p, v in zip(st.parts, values_of(st, value))]
        return functools.reduce(lambda a, b: a + b, parts)
    if st is None:
        if tag is None or not shape:
            return jnp.zeros(shape, dtype)
        never = lax.broadcasted_iota(np.int32, shape, 0) == -1 - tag  # false everywhere
        return jnp.where(never, jnp.ones((), dtype), jnp.zeros((), dtype))
    if is_selection(st):  # one comparison with the run-time indices
        return reshape(to_dense(st, value, dtype), shape)
    if st.bands:
        deband = deband_plan(st)
        st, value = deband.result, deband.apply(value, dtype)
    axes = st.out_axes + st.in_axes
    stored = set(st.val or ())
    count: dict = {}
    for ax in axes:
        for s in ax:
            count[s] = count.get(s, 0) + 1
    if all(len(ax) < 2 or all(s in stored and count[s] == 1 for s in ax) for ax in axes):
        units = [tuple(ax) for ax in axes]  # one unit per final axis
    else:  # a factored axis with a delta or replication inside: split it
        units = [u for ax in axes for u in ([()] if not ax else [(s,) for s in ax])]
    unit_shape = tuple(math.prod(st.sizes[s] for s in u) for u in units)
    first: dict = {}
    pairs = []  # (unit, unit) whose (single-symbol) indices must agree
    for k, u in enumerate(units):
        for s in u:
            if s in first:
                pairs.append((first[s], k))
            else:
                first[s] = k
    if st.val is None:
        v = jnp.asarray(st.sign, dtype)
    else:
        v = jnp.reshape(jnp.asarray(value), tuple(st.sizes[s] for s in st.val)).astype(dtype)
        where_of = {s: (first[s], units[first[s]].index(s)) for s in st.val}
        perm = sorted(range(len(st.val)), key=lambda i: where_of[st.val[i]])
        v = transpose(v, perm)
        v = reshape(v, [math.prod(st.sizes[s] for s in st.val if first[s] == k) for k in range(len(units))])
        if v.ndim and v.size < math.prod(unit_shape):
            # The broadcast expands: keep the compact value materialised (see above).
            v = jnp.where(_always(v.shape, 0), v, jnp.zeros((), dtype))
    v = jnp.broadcast_to(v, unit_shape)
    offset = 0 if tag is None else tag + 1
    iota = lambda k: lax.broadcasted_iota(np.int32, unit_shape, k) + offset
    keep = None
    for a, b in pairs:
        eq = iota(a) == iota(b)
        keep = eq if keep is None else keep & eq
    if keep is None and tag is not None and unit_shape and (st.val is None or not is_tracer(value)):
        keep = _always(unit_shape, offset)  # a constant block without delta
    if keep is not None:
        v = jnp.where(keep, v, jnp.zeros((), dtype))
    return reshape(v, shape)


#: A banded block of more than two axes is written entry by entry when it
#: stores at most this fraction of its entries.  Writing its bands one
#: diagonal at a time selects over the whole block once per diagonal and
#: term: the 1D Euler residual's (3, 254, 3, 256) block of four terms (6,858
#: entries) took 55 more equations and 0.33 MB of temporaries against
#: 0.08 MB, at the same time per call.
ENTRY_WRITE_FRACTION = 0.25


def _written_by_entries(st, shape: tuple) -> bool:
    """Whether :func:`dense_block` writes ``st`` by :func:`_write_entries`."""
    if st is None or len(shape) <= 2 or math.prod(shape) >= 2 ** 31:
        return False
    parts = parts_of(st)
    return (not any(is_selection(p) for p in parts) and any(p.bands for p in parts)
            and entry_count(st) <= ENTRY_WRITE_FRACTION * math.prod(shape))


def _write_entries(st, value, shape: tuple, dtype, tag: Optional[int] = None):
    """The dense block of ``st``: its structural nonzeros (each term's, an
    entry two terms store added up) scattered into zeros at indices known
    now.  One gather of the stored values per term, one scatter-add; no
    multiplication.  ``tag``: as for :func:`dense_block` (the zeros are a
    comparison that is always false)."""
    data, flat = [], []
    for part, v in zip(parts_of(st), values_of(st, value)):
        data.append(to_bcoo(part, v, dtype).data)
        rows, cols = entry_positions(part)
        flat.append(rows * math.prod(part.in_shape) + cols)
    flat = np.concatenate(flat)
    data = data[0] if len(data) == 1 else lax.concatenate(data, 0)
    size = math.prod(shape)
    zeros = lax.full((size,), 0, dtype)
    if tag is not None:
        zeros = lax.select(lax.eq(lax.iota(np.int32, size), np.int32(-1 - tag)), lax.full((size,), 1, dtype), zeros)
    numbers = lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
                                          scatter_dims_to_operand_dims=(0,))
    # Every index is in range; CLIP (not PROMISE_IN_BOUNDS) keeps JAX's
    # forward mode of this program equal to its reverse mode (see write_diagonals).
    out = lax.scatter_add(zeros, jnp.asarray(flat[:, None], np.int32), data,
                          numbers, indices_are_sorted=bool(np.all(flat[1:] >= flat[:-1])),
                          unique_indices=len(np.unique(flat)) == len(flat), mode=lax.GatherScatterMode.CLIP)
    return reshape(out, shape)


def _always(shape: tuple, k: int):
    """An all-true mask of ``shape`` that XLA does not fold to a constant
    (``iota + k + 1 > 0``, ``k >= 0``)."""
    return lax.broadcasted_iota(np.int32, shape, 0) + (k + 1) > 0


def sparse_block(st: Optional[Structure], value, shape: tuple, dtype, kept: Optional[tuple] = None):
    """The block as a ``BCOO`` of ``shape`` and ``dtype`` holding its structural
    nonzeros (none for a zero block); ``kept``: ``(positions, indices,
    segments)`` of :func:`structural_keep` (the entries of ``to_bcoo`` to
    store, their indices, and for entries at one index the one each adds
    into), else all."""
    if st is None:
        return sparse.BCOO((jnp.zeros((0,), dtype), jnp.zeros((0, len(shape)), np.int32)), shape=shape)
    block = to_bcoo(st, value, dtype)
    if kept is None:
        return sparse.BCOO((block.data, block.indices), shape=tuple(shape))
    positions, indices, segments = kept
    data = block.data[positions]
    if segments is not None:
        data = jax.ops.segment_sum(data, segments, num_segments=len(indices), indices_are_sorted=False)
    return sparse.BCOO((data, jnp.asarray(indices, np.int32)), shape=tuple(shape))


def dense_entries(graph: Graph) -> int:
    """Entries of the whole Jacobian (every block dense)."""
    prog = graph.program
    outs = sum(math.prod(prog.avals[prog.outputs[k]].shape) for k in range(len(graph.outputs)))
    return outs * sum(math.prod(prog.avals[prog.inputs[leaf]].shape) for leaf in graph.diff_leaves)


def stored_entries(graph: Graph, plan: Plan) -> int:
    """How many entries the ``output="sparse"`` Jacobian of the elimination
    ``plan`` stores (after :func:`structural_keep`)."""
    kept = structural_keep(graph, plan)
    return sum(len(kept[slot][1]) if slot in kept else final_entries(plan.structures[slot])
               for slot in plan.final.values())


def final_entries(st) -> int:
    """Entries a final structure stores before :func:`structural_keep`
    drops any: a selection's values, else :func:`entry_count`."""
    return st.nnz_values if is_selection(st) else entry_count(st)


#: Seeds of the random stand-in values :func:`structural_keep` runs a plan on.
PROBE_SEEDS = (0, 1)


def probe_values(graph: Graph, seed: int, selections: bool = False) -> Optional[list]:
    """Stand-ins for the graph's raw partial values: uniform in ``[1, 2)``
    where a stored value may be nonzero, 0 at its structural zeros
    (:attr:`ccjax.rules.Partial.nonzero`), the values themselves where they
    are constant 0/1 matrices (``Partial.ones``) and, with ``selections``,
    where they are selections at indices known when the graph is built
    (``Partial.constant``; with ``Partial.indices``, those indices and
    stand-in values); None when some partial cannot be stood in for (a
    selection whose indices exist only at run time).  A selection's
    stand-in comes from the first seed's draw for every seed (its indices
    stay NumPy constants), so its values are drawn once."""
    rng = np.random.default_rng(seed)
    values = []
    for r in graph.raw:
        st = r.partial.structure
        if r.partial.values is None:
            values.append(None)
            continue
        if is_selection(st) and not (selections and (r.partial.constant or r.partial.indices is not None)):
            return None
        if is_selection(st) and r.partial.constant:
            values.append(r.partial.values((), ()))
            continue
        value = rng.uniform(1.0, 2.0, st.val_shape)
        nonzero = None if r.partial.nonzero is None else r.partial.nonzero()
        if nonzero is not None:
            value = nonzero if r.partial.ones else value * nonzero
        value = value.astype(graph.dtype)
        values.append((*r.partial.indices(), value) if is_selection(st) else value)
    return values


#: The probe runs once: XLA's cheapest optimization level halves its
#: compile time on large plans (cumsum at n = 1024: 0.18 -> 0.08 s).
PROBE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def probe_finals(graph: Graph, plan: Plan, selections: bool = False, compile: bool = True) -> Optional[dict]:
    """``{slot: (values, entries)}`` for the final slots of ``plan`` run on
    :func:`probe_values`, one row per seed of :data:`PROBE_SEEDS`: the
    stacked final values and the stacked data of their ``to_bcoo``, and for
    a final selection (with ``selections``) a third item, its ``to_bcoo``'s
    indices (the same for every seed); computed now (also inside an outer
    trace), as one compiled program; None where no raw partial declares
    zeros or is such a selection (every value may be nonzero), or there are
    no stand-ins, or (without ``compile``) where the probe cannot run in
    NumPy."""
    if not _declares_zeros(graph, selections):
        return None
    raws = [probe_values(graph, seed, selections) for seed in PROBE_SEEDS]
    if raws[0] is None:
        return None
    fixed = {i: value for i, (r, value) in enumerate(zip(graph.raw, raws[0])) if is_selection(r.partial.structure)}
    stacked = [None if draws[0] is None or i in fixed else np.stack(draws) for i, draws in enumerate(zip(*raws))]
    slots = sorted(set(plan.final.values()))

    def run(raw):
        finals = final_values(graph, plan, [fixed.get(i, value) for i, value in enumerate(raw)])
        found = {}
        for slot in slots:
            st = plan.structures[slot]
            block = to_bcoo(st, finals[slot], graph.dtype)
            found[slot] = (finals[slot], block.data) + ((block.indices,) if is_selection(st) else ())
        return found

    def probe():
        found = _probe_in_numpy(run, [[None if s is None else s[k] for s in stacked] for k in range(len(PROBE_SEEDS))])
        if found is not None or not compile:
            return found
        compiled = jax.jit(jax.vmap(run, axis_size=len(PROBE_SEEDS))).lower(stacked).compile(PROBE_COMPILER_OPTIONS)
        return jax.tree.map(np.asarray, compiled(stacked))

    return run_apart(probe)


def _declares_zeros(graph: Graph, selections: bool) -> bool:
    """Whether some raw partial declares structural zeros (or, with
    ``selections``, is a selection at indices known now)."""
    return any(r.partial.nonzero is not None or (selections and (r.partial.constant or r.partial.indices))
               for r in graph.raw)


def _probe_in_numpy(run, draws: list) -> Optional[dict]:
    """``run`` on each of ``draws`` (its argument per seed), run in NumPy
    (:func:`ccjax.graph.run_in_numpy`), the results stacked seed-major as
    ``jax.vmap`` stacks them; None where some equation of ``run`` cannot be
    run there.  Sums may round in another order than XLA's, which a probe
    of zero polynomials allows (see :func:`structural_keep`), and it
    compiles nothing (an XLA compilation costs about 0.1 s)."""
    closed, shapes = jax.make_jaxpr(run, return_shape=True)(draws[0])
    rows = run_in_numpy(closed, [jax.tree.leaves(draw) for draw in draws], exact=False)
    if rows is None:
        return None
    return jax.tree.unflatten(jax.tree.structure(shapes), [np.stack(column) for column in zip(*rows)])


def structural_keep(graph: Graph, plan: Plan, compile: bool = True) -> Optional[dict]:
    """``{slot: (positions, indices, segments)}``: for each final block that
    stores structural zeros (values built from partials that declare zeros:
    0/1 selection matrices, unions of branches, a scan's causality,
    cholesky, selections at known indices), the positions in ``to_bcoo``'s
    entries of the others and their indices; for a selection at known
    indices, whose entries may repeat an index (two paths onto one entry),
    its distinct indices and ``segments``, the one each kept entry adds
    into (else None).

    Every stored entry of a final value is a polynomial in the raw stored
    values (products and sums of the plan) that are not constant.  An entry
    that is 0 on two independent random draws of them, with structural zeros
    at 0 and constants as they are, is the zero polynomial: it is 0 at
    every input.  Overflow or NaN in a draw only keeps entries.  Runs the
    plan once per draw (:func:`probe_finals`), only where some raw partial
    declares structural zeros, once per plan (kept in ``graph.probes``).
    Without ``compile``, None where that run would compile (about 0.1 s:
    it cannot run in NumPy)."""
    known = graph.probes.get(id(plan))
    if known is not None and known[0] is plan:
        return known[1]
    found = probe_finals(graph, plan, selections=True, compile=compile)
    if (found is None and not compile and _declares_zeros(graph, True)
            and probe_values(graph, PROBE_SEEDS[0], True) is not None):
        return None  # the probe would compile
    kept = {}
    for slot, (_, data, *at) in (found or {}).items():
        nonzero = (data != 0).any(axis=0)
        if not at:  # a structure: its entries sit at distinct indices
            if not nonzero.all():
                kept[slot] = (np.flatnonzero(nonzero), entry_indices(plan.structures[slot])[nonzero], None)
            continue
        indices = at[0][0][nonzero]
        distinct, segments = np.unique(indices, axis=0, return_inverse=True)
        if len(distinct) < len(indices):
            kept[slot] = (np.flatnonzero(nonzero), distinct, segments.reshape(-1))
        elif not nonzero.all():
            kept[slot] = (np.flatnonzero(nonzero), indices, None)
    graph.probes[id(plan)] = (plan, kept)
    return kept


def count_mults(graph: Graph, order: Sequence[int]) -> int:
    """Multiplications of ``order`` (the cost model)."""
    return plan_elimination(graph, order).report.mults
