"""The vertex elimination game in pure JAX (jit- and vmap-able).

A :class:`GameState` is one partially eliminated graph at fixed capacity
``N``; eliminating vertex ``v`` looks every product ``∂w/∂v ∘ ∂v/∂u`` and
every accumulation up in the graph's :class:`~ccjax.search.tables.GameTables`,
which were filled by the structure algebra of :func:`ccjax.cost`, so
the multiplications of a whole order equal ``ccjax.cost`` exactly
(``tests/test_game.py`` checks it on random orders of every task).

Functions take one game (no batch axis); ``jax.vmap`` them over a batch.
The tables are passed separately (in ``mctx`` they ride in ``params``, not
in the search tree's embeddings).  Illegal actions (eliminated, padding,
input and output positions) are never free: :func:`step` leaves the edges
unchanged, reports ``legal=False`` and the callers end the episode with a
penalty.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ccjax.search.tables import GameTables


class GameState(NamedTuple):
    """``edges (N, N) int16``: structure id of ``u -> w`` or -1;
    ``remaining (N,) bool``: eliminable and not yet eliminated;
    ``mults () int32``: multiplications so far; ``graph () int32``: which
    graph of a stacked :class:`GameTables` this game plays; ``broken () bool``:
    a step read an unreachable table entry (a bug, never expected)."""

    edges: jax.Array
    remaining: jax.Array
    mults: jax.Array
    graph: jax.Array
    broken: jax.Array


class StepResult(NamedTuple):
    state: GameState
    mults: jax.Array  # () int32, multiplications of this step (0 if illegal)
    legal: jax.Array  # () bool


def _lookup(tables: GameTables, name: str, graph, *index):
    """``tables.<name>[index]`` for one graph; with stacked tables (one more
    leading axis) ``graph`` picks the slice inside the same gather, without
    copying the table."""
    array = jnp.asarray(getattr(tables, name))
    return array[(graph,) + index] if _stacked(tables) else array[index]


def _stacked(tables: GameTables) -> bool:
    return tables.edges.ndim == 3


def initial_state(tables: GameTables, graph=0) -> GameState:
    """The start of a game on graph ``graph`` of (possibly stacked) ``tables``."""
    if _stacked(tables):
        edges, eliminable = jnp.asarray(tables.edges)[graph], jnp.asarray(tables.eliminable)[graph]
    else:
        edges, eliminable = tables.edges, tables.eliminable
    return GameState(jnp.asarray(edges, jnp.int16), jnp.asarray(eliminable, bool), jnp.int32(0),
                     jnp.asarray(graph, jnp.int32), jnp.bool_(False))


def step(tables: GameTables, state: GameState, action) -> StepResult:
    """Eliminate the vertex at position ``action``.

    Every ``u -> action -> w`` becomes ``u -> w`` (added to an existing edge,
    which may cancel); row and column ``action`` are cleared.  Work is
    ``O(N^2)``: one gathered product and one gathered sum per vertex pair.
    """
    g = state.graph
    E = state.edges.astype(jnp.int32)
    inner = E[:, action]  # ∂v/∂u for every u
    outer = E[action, :]  # ∂w/∂v for every w
    pair = (inner >= 0)[:, None] & (outer >= 0)[None, :]
    a = jnp.maximum(inner, 0)[:, None]
    b = jnp.maximum(outer, 0)[None, :]
    prod = _lookup(tables, "prod_id", g, b, a).astype(jnp.int32)
    mults = jnp.where(pair, _lookup(tables, "prod_mults", g, b, a), 0)
    summed = _lookup(tables, "sum_id", g, jnp.maximum(E, 0), jnp.maximum(prod, 0)).astype(jnp.int32)
    new = jnp.where(E >= 0, summed, prod)
    broken = jnp.any(pair & ((prod < -1) | ((E >= 0) & (summed < -1))))
    E2 = jnp.where(pair, new, E)
    E2 = E2.at[action, :].set(-1).at[:, action].set(-1)
    legal = state.remaining[action]
    step_mults = jnp.where(legal, jnp.sum(mults), 0).astype(jnp.int32)
    nxt = GameState(
        edges=jnp.where(legal, E2, E).astype(jnp.int16),
        remaining=state.remaining.at[action].set(False),
        mults=state.mults + step_mults,
        graph=state.graph,
        broken=state.broken | (legal & broken),
    )
    return StepResult(nxt, step_mults, legal)


def is_terminal(state: GameState) -> jax.Array:
    """No eliminable vertex is left."""
    return ~jnp.any(state.remaining)


def play(tables: GameTables, state: GameState, actions) -> tuple[GameState, jax.Array, jax.Array]:
    """Play a sequence of actions; returns ``(final state, mults per step, legal per step)``."""

    def body(s, act):
        r = step(tables, s, act)
        return r.state, (r.mults, r.legal)

    final, (mults, legal) = jax.lax.scan(body, state, actions)
    return final, mults, legal


class Observation(NamedTuple):
    """What the network sees of a state.

    ``vertex (N, F_v)``: static vertex features, remaining flag, log1p of
    in/out degrees, of the stored values on in/out edges, of the Markowitz
    degree and of its count over valued edges only;
    ``edge_ids (N, N) int32``: the structure on ``u -> w``, ``-1`` without
    an edge (a DAG: never both ``u -> w`` and ``w -> u``);
    ``struct_feat (K, F_s)``: the features of every structure id;
    ``real (N,)``: not padding and not isolated;
    ``legal (N,)``: positions that may be eliminated.
    """

    vertex: jax.Array
    edge_ids: jax.Array
    struct_feat: jax.Array
    real: jax.Array
    legal: jax.Array


def observe(tables: GameTables, state: GameState) -> Observation:
    g = state.graph
    E = state.edges.astype(jnp.int32)
    present = E >= 0
    struct_feat = _lookup(tables, "struct_feat", g, slice(None))
    ids = jnp.maximum(E, 0)
    # Per structure first, then gathered onto the N * N pairs (the same values, fewer transcendentals).
    stored = jnp.where(present, jnp.expm1(struct_feat[:, 3])[ids], 0.0)
    indeg = jnp.sum(present, axis=0)
    outdeg = jnp.sum(present, axis=1)
    valued = present & (struct_feat[:, 1] == 0)[ids]  # edges that store numbers (not ±unit)
    # For scalar vertices this product is exactly the cost of eliminating now.
    valued_pairs = (jnp.sum(valued, axis=0) * jnp.sum(valued, axis=1)).astype(jnp.float32)
    kind = _lookup(tables, "kind", g, slice(None))
    vertex_feat = _lookup(tables, "vertex_feat", g, slice(None))
    real = (kind > 0) & ((indeg + outdeg) > 0)
    dynamic = jnp.stack([
        state.remaining.astype(jnp.float32),
        jnp.log1p(indeg.astype(jnp.float32)),
        jnp.log1p(outdeg.astype(jnp.float32)),
        jnp.log1p(jnp.sum(stored, axis=0)),
        jnp.log1p(jnp.sum(stored, axis=1)),
        jnp.log1p((indeg * outdeg).astype(jnp.float32)),
        jnp.log1p(valued_pairs),
    ], axis=-1)
    vertex = jnp.concatenate([vertex_feat, dynamic], axis=-1) * real[:, None]
    return Observation(vertex, E, struct_feat, real, state.remaining)
