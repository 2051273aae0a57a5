"""Smaller boards as a game goes on: drop the positions that can no longer matter.

Every per-simulation cost of self-play (the observation, the network's
edge MLP and attention, the game step, the search tree's copies of the
board) grows with the square of the vertex capacity ``N``, while every
move removes a vertex for good.  A position is *dead* when it is padding,
or when it is not a remaining eliminable vertex and no edge touches it.
A dead position never gains an edge again (an elimination only joins the
eliminated vertex's existing predecessors to its existing successors), it
is masked out of the network's attention and pooled value, and it is
never a legal action.  So a board without its dead positions, at a
smaller capacity, gives the search exactly the same game: the same legal
moves, the same multiplications, the same network outputs at the kept
positions (the network is permutation-equivariant and capacity-free).

:func:`compact` re-encodes a batch of games onto the live positions, in
their original (topological) order, at a capacity from a ladder of a few
sizes (:data:`LADDER`, :data:`FINE_LADDER`), so the search compiles for few
shapes.  The compact tables hold one slice per game (positions differ
between games), and the game's ``graph`` field becomes the game's index.  :func:`expand` maps a
compact board back to the original layout, for the replay buffer and for
the orders reported.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ccjax.search.game import GameState
from ccjax.search.tables import GameTables

#: Capacities a board may shrink to (powers of two and one and a half times
#: them): few rungs, so a search in a new process compiles few executables.
LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)

#: Finer rungs (steps of a quarter of a power of two) for training, which
#: compiles once per process and then plays for hours: about twice the
#: compilations of :data:`LADDER` for 7-38% less time per batch of 8 games
#: (``docs/selfplay_cpu.md``).
FINE_LADDER = (16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512,
               640, 768, 896, 1024)


class Board(NamedTuple):
    """A batch of games on their own tables.

    ``tables``: per-graph (``states.graph`` indexes them) or per-game;
    ``states``: a leading batch axis ``B``; ``positions (B, n) int``: the
    original position of every position of this board, ``-1`` on padding.
    """

    tables: GameTables
    states: GameState
    positions: np.ndarray


def start(tables: GameTables, states: GameState) -> Board:
    """The board of games that have not been compacted (every position is itself)."""
    batch, n = np.shape(states.remaining)
    return Board(tables, states, np.broadcast_to(np.arange(n), (batch, n)))


def live(tables: GameTables, states: GameState) -> np.ndarray:
    """``(B, n) bool``: the positions of each game that are not dead (see the module docstring)."""
    edges = np.asarray(states.edges) >= 0
    kind = np.asarray(tables.kind)[np.asarray(states.graph)]
    return (kind > 0) & (np.asarray(states.remaining) | edges.any(axis=1) | edges.any(axis=2))


def fitting_capacity(count: int, current: int, ladder: Sequence[int] = LADDER) -> int:
    """The smallest capacity of ``ladder`` that holds ``count`` positions,
    or ``current`` when that is not smaller."""
    smaller = [c for c in ladder if count <= c < current]
    return smaller[0] if smaller else current


def compact(board: Board, capacity: int) -> Board:
    """``board`` with only its live positions, at ``capacity`` (which must hold them)."""
    tables, states = board.tables, board.states
    keep = live(tables, states)
    batch = keep.shape[0]
    counts = keep.sum(axis=1)
    if counts.max(initial=0) > capacity:
        raise ValueError(f"{int(counts.max())} live positions do not fit capacity {capacity}")
    index = np.zeros((batch, capacity), np.int64)
    valid = np.arange(capacity)[None, :] < counts[:, None]
    for b in range(batch):
        index[b, :counts[b]] = np.flatnonzero(keep[b])
    rows = np.arange(batch)[:, None]
    graph = np.asarray(states.graph)

    def per_game(name):
        return np.asarray(getattr(tables, name))[graph]

    def positional(name, fill):
        values = per_game(name)[rows, index]
        mask = valid.reshape(valid.shape + (1,) * (values.ndim - 2))
        return np.where(mask, values, fill).astype(values.dtype)

    pair = valid[:, :, None] & valid[:, None, :]
    edges = np.where(pair, np.asarray(states.edges)[rows[:, :, None], index[:, :, None], index[:, None, :]],
                     -1).astype(np.int16)
    remaining = np.asarray(states.remaining)[rows, index] & valid
    new_tables = GameTables(
        edges=edges, eliminable=positional("eliminable", False), kind=positional("kind", 0),
        vertex_feat=positional("vertex_feat", 0.0), prod_id=per_game("prod_id"), prod_mults=per_game("prod_mults"),
        sum_id=per_game("sum_id"), struct_feat=per_game("struct_feat"), scale=per_game("scale"))
    new_states = GameState(edges=edges, remaining=remaining, mults=np.asarray(states.mults),
                           graph=np.arange(batch, dtype=np.int32), broken=np.asarray(states.broken))
    positions = np.where(valid, np.asarray(board.positions)[rows, index], -1)
    return Board(new_tables, new_states, positions)


def expand(positions: np.ndarray, capacity: int, edges, remaining, weights):
    """A compact batch in the original layout of ``capacity`` positions.

    ``edges (B, n, n)``, ``remaining (B, n)``, ``weights (B, n)`` (e.g. the
    search's action weights) become ``(B, N, N)``, ``(B, N)``, ``(B, N)``;
    dead positions get no edge, ``False`` and weight 0, as they had.
    """
    positions = np.asarray(positions)
    batch = positions.shape[0]
    full_edges = np.full((batch, capacity, capacity), -1, np.int16)
    full_remaining = np.zeros((batch, capacity), bool)
    full_weights = np.zeros((batch, capacity), np.asarray(weights).dtype)
    edges, remaining, weights = np.asarray(edges), np.asarray(remaining), np.asarray(weights)
    for b in range(batch):
        valid = positions[b] >= 0
        p = positions[b][valid]
        full_edges[b][np.ix_(p, p)] = edges[b][np.ix_(valid, valid)]
        full_remaining[b, p] = remaining[b, valid]
        full_weights[b, p] = weights[b, valid]
    return full_edges, full_remaining, full_weights
