"""A graph as fixed-size arrays for the vertex game: edges and algebra tables.

The vertex game (:mod:`ccjax.search.game`) must count multiplications with
the *same* structure algebra as :func:`ccjax.cost`.  That algebra is
symbolic (:mod:`ccjax.structure`), so it cannot run inside ``jit``; but on
one graph it only ever meets finitely many structures.  :func:`encode`
enumerates them: starting from the graph's edge structures it closes, per
vertex pair ``(u, w)``, the set of structures an edge ``u -> w`` can carry
under any elimination order (products along ``u -> v -> w`` and sums of
the structures already possible on ``u -> w``), evaluating every product
and sum with :func:`~ccjax.structure.product_plan` /
:func:`~ccjax.structure.sum_plan` through
:class:`~ccjax.orders.incremental.Evaluator`.  The results become three
integer tables indexed by structure id, and the game is array lookups:

* ``prod_id[b, a]``, ``prod_mults[b, a]``: structure and multiplications of
  ``b ∘ a`` (``a = ∂v/∂u``, ``b = ∂w/∂v``);
* ``sum_id[x, y]``: structure of ``x + y`` (``-1`` when it cancels).

Entries no elimination can reach hold :data:`UNREACHABLE`; the game flags a
step that reads one (it cannot happen when the closure is right, and
``tests/test_game.py`` checks it never does).

Layout (``N`` = vertex capacity, ``K`` = structure capacity): vertex
positions ``0..n-1`` are the graph's live vertices by increasing id (a
topological order), positions ``n..N-1`` are padding; structure ids
``0..k-1`` are real, the rest padding.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Sequence

import numpy as np

from ccjax.graph import Graph
from ccjax.orders.incremental import Evaluator
from ccjax.structure import Structure, is_selection, is_terms

#: Table entry for a (structure, structure) pair no elimination can produce.
UNREACHABLE = -2

#: Default capacities: vertices (inputs, intermediates and outputs) and structures.
DEFAULT_VERTICES = 192
DEFAULT_STRUCTURES = 512

#: Kinds of vertex position.
PAD, INPUT, INTERMEDIATE, OUTPUT = 0, 1, 2, 3

STRUCT_FEATURES = 8
VERTEX_FEATURES = 5


class CapacityError(ValueError):
    """A graph does not fit the game's vertex or structure capacity."""


class GameTables(NamedTuple):
    """The arrays of one encoded graph (stackable along a leading axis).

    Shapes: ``edges (N, N) int16`` (structure id of edge ``u -> w`` or -1),
    ``eliminable (N,) bool``, ``kind (N,) int8``, ``vertex_feat (N, 5)``,
    ``prod_id (K, K) int16``, ``prod_mults (K, K) int32``,
    ``sum_id (K, K) int16``, ``struct_feat (K, 8) float32``,
    ``scale () float32`` (cost of the best classical order, at least 1; the
    game's rewards are multiplications divided by it).
    """

    edges: np.ndarray
    eliminable: np.ndarray
    kind: np.ndarray
    vertex_feat: np.ndarray
    prod_id: np.ndarray
    prod_mults: np.ndarray
    sum_id: np.ndarray
    struct_feat: np.ndarray
    scale: np.ndarray


@dataclasses.dataclass(frozen=True)
class EncodedGraph:
    """An encoded graph: its tables and how positions map to vertex ids.

    ``vertex_ids[p]`` is the graph vertex at position ``p < num_vertices``;
    ``baselines`` the costs of the classical orders used for ``scale``.
    """

    tables: GameTables
    vertex_ids: tuple[int, ...]
    num_structures: int
    fingerprint: str
    baselines: dict

    @property
    def num_vertices(self) -> int:
        return len(self.vertex_ids)

    @property
    def capacity(self) -> int:
        return int(self.tables.edges.shape[0])

    def order_from_positions(self, positions: Sequence[int]) -> tuple[int, ...]:
        """Vertex ids of a sequence of positions."""
        return tuple(self.vertex_ids[int(p)] for p in positions)

    def positions_from_order(self, order: Sequence[int]) -> tuple[int, ...]:
        """Positions of a sequence of vertex ids."""
        where = {v: p for p, v in enumerate(self.vertex_ids)}
        return tuple(where[int(v)] for v in order)


def _diagonal_and_values(st) -> tuple[int, int]:
    """The size of ``st``'s diagonal symbols and its stored values (a sum
    kept apart: its widest term's diagonal, all its terms' values)."""
    if is_terms(st):
        return max(_diagonal_and_values(p)[0] for p in st.parts), st.nnz_values
    if is_selection(st):  # a few entries per row, like a diagonal
        return st.lead, (st.nnz_values if st.val is not None else 0)
    out_syms = {s for ax in st.out_axes for s in ax}
    in_syms = {s for ax in st.in_axes for s in ax}
    return math.prod(st.sizes[s] for s in out_syms & in_syms), st.nnz_values


def structure_features(st: Structure) -> np.ndarray:
    """Size-independent descriptors of a structure (log scale).

    ``[present, unit, sign, log1p(stored values), log1p(out size),
    log1p(in size), log1p(diagonal symbols' size), stored/dense fraction]``.
    """
    out_size = math.prod(st.out_shape)
    in_size = math.prod(st.in_shape)
    diag, nnz = _diagonal_and_values(st)
    dense = max(out_size * in_size, 1)
    return np.array([1.0, float(st.val is None), float(st.sign), math.log1p(nnz), math.log1p(out_size),
                     math.log1p(in_size), math.log1p(diag), nnz / dense], np.float32)


def _closure(ev: Evaluator, graph: Graph, max_structures: int) -> None:
    """Evaluate (and memoise in ``ev``) every product and sum any order can need.

    Fixpoint over vertex pairs: ``S[u, w]`` holds every structure edge
    ``u -> w`` can carry.  When a full pass adds nothing, every product
    ``S[v, w] ∘ S[u, v]`` and every sum within ``S[u, w]`` has been evaluated
    for the final sets, so the evaluator's memo covers every step of
    every order.
    """
    possible: dict[tuple[int, int], set[int]] = {}
    succs: dict[int, set[int]] = {}
    preds: dict[int, set[int]] = {}
    for (u, w), st in graph.edges.items():
        possible.setdefault((u, w), set()).add(ev.intern(st))
        succs.setdefault(u, set()).add(w)
        preds.setdefault(w, set()).add(u)
    changed = True
    while changed:
        changed = False
        for v in graph.eliminable:
            for u in list(preds.get(v, ())):
                for w in list(succs.get(v, ())):
                    target = possible.setdefault((u, w), set())
                    before = len(target)
                    for a in list(possible[(u, v)]):
                        for b in list(possible[(v, w)]):
                            target.add(ev.product(b, a)[0])
                    _check_capacity(ev, graph, max_structures)
                    while True:
                        # Sums of banded structures can make new ones without end (every
                        # union of diagonals): the capacity is checked as they appear.
                        new = set()
                        for x in list(target):
                            new |= {r for y in target if (r := ev.add(x, y)) >= 0} - target
                            _check_capacity(ev, graph, max_structures)
                        if not new:
                            break
                        target |= new
                    if len(target) != before or w not in succs[u]:
                        changed = True
                        succs[u].add(w)
                        preds.setdefault(w, set()).add(u)


def _check_capacity(ev: Evaluator, graph: Graph, max_structures: int) -> None:
    if len(ev.structures) > max_structures:
        raise CapacityError(f"graph {graph.fingerprint} needs more than {max_structures} "
                            f"structures; raise the structure capacity")


def encode(graph: Graph, num_vertices: int = DEFAULT_VERTICES,
           num_structures: int = DEFAULT_STRUCTURES) -> EncodedGraph:
    """Encode ``graph`` for the vertex game with the given capacities.

    Raises :class:`CapacityError` when the graph has more live vertices than
    ``num_vertices`` or needs more than ``num_structures`` structures.
    """
    from ccjax.orders.heuristics import HEURISTICS

    live = sorted({u for e in graph.edges for u in e})
    if len(live) > num_vertices:
        raise CapacityError(f"graph {graph.fingerprint} has {len(live)} vertices; the game holds {num_vertices}")
    pos = {v: p for p, v in enumerate(live)}
    ev = Evaluator(graph)
    _closure(ev, graph, num_structures)
    k = len(ev.structures)
    if k > num_structures:  # the closure only checks while eliminating; a graph without steps lands here
        raise CapacityError(f"graph {graph.fingerprint} needs {k} structures; the game holds {num_structures}")
    if k > 32767:  # int16 ids
        raise CapacityError(f"{k} structures exceed the int16 id range")

    edges = np.full((num_vertices, num_vertices), -1, np.int16)
    for (u, w), st in graph.edges.items():
        edges[pos[u], pos[w]] = ev.intern(st)
    kind = np.zeros(num_vertices, np.int8)
    vertex_feat = np.zeros((num_vertices, VERTEX_FEATURES), np.float32)
    eliminable = np.zeros(num_vertices, bool)
    elim = set(graph.eliminable)
    inputs = {i for i in graph.inputs if i is not None}
    outputs = {o for o in graph.outputs if o is not None}
    for v, p in pos.items():
        kd = INTERMEDIATE if v in elim else INPUT if v in inputs else OUTPUT if v in outputs else INPUT
        kind[p] = kd
        eliminable[p] = v in elim
        size = math.prod(graph.vertices[v].shape)
        vertex_feat[p] = [kd == INPUT, kd == INTERMEDIATE, kd == OUTPUT, math.log1p(size), 1.0]

    prod_id = np.full((num_structures, num_structures), UNREACHABLE, np.int16)
    prod_mults = np.zeros((num_structures, num_structures), np.int32)
    sum_id = np.full((num_structures, num_structures), UNREACHABLE, np.int16)
    for (b, a), (r, m) in ev.evaluated_products().items():
        prod_id[b, a], prod_mults[b, a] = r, m
    for (x, y), r in ev.evaluated_sums().items():
        sum_id[x, y] = r
    struct_feat = np.zeros((num_structures, STRUCT_FEATURES), np.float32)
    for sid, st in enumerate(ev.structures):
        struct_feat[sid] = structure_features(st)

    baselines = {name: ev.cost(HEURISTICS[name](graph)) for name in ("fwd", "rev", "markowitz")}
    scale = np.float32(max(1, min(baselines.values())))
    tables = GameTables(edges, eliminable, kind, vertex_feat, prod_id, prod_mults, sum_id, struct_feat,
                        np.asarray(scale, np.float32))
    return EncodedGraph(tables, tuple(live), k, graph.fingerprint, baselines)


def stack(tables: Sequence[GameTables]) -> GameTables:
    """Stack tables of equal capacities along a new leading axis."""
    return GameTables(*(np.stack(xs) for xs in zip(*tables)))
