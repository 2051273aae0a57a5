"""Orders from a trained policy: greedy (``order="learned"``) and MCTS search.

The greedy order plays the vertex game on the graph's
:class:`~ccjax.orders.incremental.Evaluator` state, one compiled network
call per step.  MCTS encodes the graph (:func:`~ccjax.search.tables.encode`)
at the smallest capacity bucket that holds it and plays the game in JAX.
Positions map back to vertex ids and orders are re-costed with the
Evaluator (the cost ``ccjax.cost`` reports), so what is returned never
rests on the game alone.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ccjax.graph import Graph
from ccjax.orders.incremental import Evaluator, State
from ccjax.search import game, network
from ccjax.search.network import NetworkConfig
from ccjax.search.policy import Policy, default_policy
from ccjax.search.tables import (DEFAULT_STRUCTURES, INPUT, INTERMEDIATE, OUTPUT, STRUCT_FEATURES,
                                 VERTEX_FEATURES, EncodedGraph, GameTables, encode, stack,
                                 structure_features)

#: Vertex capacities MCTS is compiled for (one executable per bucket and
#: batch size): fine, since every simulation costs the capacity squared.
CAPACITY_BUCKETS = (32, 64, 96, 128, 160, 192, 256, 320, 384, 512)

#: Vertex capacities of the greedy order's network (``order="learned"``):
#: coarse, since compiling one takes a second or two while a step costs
#: milliseconds at any of them; every paper task fits the first.
GREEDY_BUCKETS = (192, 256, 384, 512)


def capacity_for(graph: Graph, buckets: tuple[int, ...] = CAPACITY_BUCKETS) -> int:
    """The smallest of ``buckets`` holding the graph's live vertices."""
    n = len(_live(graph))
    for c in buckets:
        if n <= c:
            return c
    raise ValueError(f"graph {graph.fingerprint} has {n} vertices; learned orders support up to "
                     f"{buckets[-1]}")


def _live(graph: Graph) -> list[int]:
    """The vertices on some edge, by increasing id: the game's positions."""
    return sorted({u for e in graph.edges for u in e})


def encode_for_policy(graph: Graph, num_structures: int = DEFAULT_STRUCTURES) -> EncodedGraph:
    return encode(graph, capacity_for(graph), num_structures)


def _tables(enc: EncodedGraph):
    return jax.tree_util.tree_map(jnp.asarray, stack([enc.tables]))


def learned_order(graph: Graph, policy: Optional[Policy] = None) -> tuple[int, ...]:
    """The policy's greedy order (argmax at every step) for ``graph``.

    Played on the Evaluator's state rather than on encoded tables: the
    greedy path needs the products and sums of its own steps only, while
    :func:`~ccjax.search.tables.encode` closes over those of every order
    (seconds on the Encoder task) and caps the number of structures.

    ``jacve(order="learned")`` asks for it while tracing the user's function
    (under ``jit``, ``scan``, ``vmap``...), where JAX would stage the policy's
    computation into that trace and hand back tracers.  Nothing here runs a
    JAX operation but a compiled executable, which runs at once under any
    trace (:func:`_logits_executable`); the policy loads as NumPy arrays.
    """
    if not graph.eliminable:
        return ()
    policy = default_policy() if policy is None else policy
    board = _Board.start(graph, capacity_for(graph, GREEDY_BUCKETS))
    order = []
    while board.remaining.any():
        position = int(np.argmax(board.logits(policy)))
        if not board.remaining[position]:
            raise RuntimeError("the learned policy produced an invalid order (please report this)")
        order.append(board.eliminate(position))
    return tuple(order)


@dataclasses.dataclass
class _Board:
    """The vertex game on one graph as the network sees it, NumPy side.

    ``edges (N, N)``: structure id (the Evaluator's) of every edge or -1;
    ``struct_feat (K, 8)``: features of the first ``described`` structures
    of the Evaluator;
    ``kind``, ``vertex_feat``, ``remaining``: as in
    :func:`~ccjax.search.tables.encode`.  :func:`~ccjax.search.game.observe`
    reads nothing else, so the network sees what the JAX game would show.
    """

    ev: Evaluator
    state: State
    live: list[int]
    where: dict[int, int]
    edges: np.ndarray
    remaining: np.ndarray
    kind: np.ndarray
    vertex_feat: np.ndarray
    struct_feat: np.ndarray
    described: int = 0

    @classmethod
    def start(cls, graph: Graph, capacity: int) -> "_Board":
        ev, live = Evaluator(graph), _live(graph)
        board = cls(ev, ev.root, live, {v: p for p, v in enumerate(live)},
                    np.full((capacity, capacity), -1, np.int32), np.zeros(capacity, bool),
                    np.zeros(capacity, np.int8), np.zeros((capacity, VERTEX_FEATURES), np.float32),
                    np.zeros((0, STRUCT_FEATURES), np.float32))
        eliminable = set(graph.eliminable)
        inputs = {i for i in graph.inputs if i is not None}
        outputs = {o for o in graph.outputs if o is not None}
        for p, v in enumerate(live):
            kind = INTERMEDIATE if v in eliminable else INPUT if v in inputs else OUTPUT if v in outputs else INPUT
            board.kind[p], board.remaining[p] = kind, v in eliminable
            board.vertex_feat[p] = [kind == INPUT, kind == INTERMEDIATE, kind == OUTPUT,
                                    math.log1p(math.prod(graph.vertices[v].shape)), 1.0]
        board.write_edges(live)
        return board

    def write_edges(self, vertices) -> None:
        """Copy the out-edges of ``vertices`` from the Evaluator's state."""
        for u in vertices:
            row = self.edges[self.where[u]]
            row[:] = -1
            for w, sid in self.state.succs.get(u, {}).items():
                row[self.where[w]] = sid

    def eliminate(self, position: int) -> int:
        """Eliminate the vertex at ``position``; returns its id.  Only the
        rows of ``v`` and of its predecessors (whose edges into ``v``
        became edges into its successors) change."""
        v = self.live[position]
        preds = list(self.state.preds[v])
        self.state, _ = self.ev.eliminate(self.state, v)
        self.remaining[position] = False
        self.write_edges(preds + [v])
        return v

    def logits(self, policy: Policy) -> np.ndarray:
        """The policy's logits of every position (illegal ones very negative)."""
        self._describe_structures()
        args = (self.edges, self.remaining, self.kind, self.vertex_feat, self.struct_feat)
        return np.asarray(_logits_executable(policy.network, policy.params, *args)(policy.params, *args))

    def _describe_structures(self) -> None:
        """Features of the structures the Evaluator met since the last call;
        the table's capacity doubles when full, so few shapes are compiled."""
        structures, known = self.ev.structures, self.described
        if len(structures) > len(self.struct_feat):
            grown = np.zeros((max(DEFAULT_STRUCTURES, 2 ** math.ceil(math.log2(len(structures)))),
                              STRUCT_FEATURES), np.float32)
            grown[:known] = self.struct_feat[:known]
            self.struct_feat = grown
        for sid in range(known, len(structures)):
            self.struct_feat[sid] = structure_features(structures[sid])
        self.described = len(structures)


@functools.partial(jax.jit, static_argnums=(0,))
def _logits(net: NetworkConfig, params, edges, remaining, kind, vertex_feat, struct_feat) -> jax.Array:
    """The network's logits for one :class:`_Board` position, through
    :func:`~ccjax.search.game.observe` (the structure algebra tables, which
    only the game's steps read, are left empty)."""
    empty = jnp.zeros((0, 0), jnp.int32)
    tables = GameTables(edges, remaining, kind, vertex_feat, empty, empty, empty, struct_feat, jnp.float32(1))
    state = game.GameState(edges, remaining, jnp.int32(0), jnp.int32(0), jnp.bool_(False))
    obs = game.observe(tables, state)
    logits, _ = network.apply(net, params, jax.tree_util.tree_map(lambda x: x[None], obs))
    return logits[0]


#: Compiled :func:`_logits` by network and argument shapes: one per
#: capacity bucket (and structure capacity), for the life of the process.
_EXECUTABLES: dict = {}


def _logits_executable(net: NetworkConfig, params, *args) -> Callable:
    """The compiled :func:`_logits` for these shapes (compiled on first use).

    Compiled ahead of time rather than called through ``jax.jit``: under an
    outer trace, calling a jitted function is staged into that trace, while a
    compiled executable runs at once on concrete arguments.
    """
    leaves, tree = jax.tree_util.tree_flatten((params, args))
    key = (net, tree, tuple((tuple(x.shape), str(x.dtype)) for x in leaves))
    run = _EXECUTABLES.get(key)
    if run is None:
        run = _EXECUTABLES[key] = _logits.lower(net, params, *args).compile()
    return run


def mcts_search(graph: Graph, time_budget: Optional[float] = 60.0, policy: Optional[Policy] = None,
                games: int = 8, num_simulations: Optional[int] = None, seed: int = 0,
                max_episodes: Optional[int] = None, finetune: bool = False,
                progress: Optional[Callable[[float, int, str], None]] = None) -> dict:
    """Gumbel MuZero episodes with the policy until ``time_budget`` seconds
    (or ``max_episodes`` batches of ``games`` games) are spent.

    ``finetune``: after every batch, train a copy of the network on this
    graph's moves (replay buffer, AdamW steps as in :mod:`ccjax.search.train`),
    so later batches search with a policy adapted to this function.

    Returns ``{"order", "cost", "greedy_order", "greedy_cost", "episodes",
    "elapsed"}``: the best order found (the greedy one included) and the
    greedy order on its own.  ``progress(elapsed, best cost, phase)`` is
    called when the best improves.
    """
    from ccjax.search import train as train_lib

    start = time.perf_counter()
    policy = default_policy() if policy is None else policy
    if not graph.eliminable:
        return {"order": (), "cost": 0, "greedy_order": (), "greedy_cost": 0, "episodes": 0, "elapsed": 0.0}
    ev = Evaluator(graph)
    greedy = learned_order(graph, policy)
    enc = encode_for_policy(graph)
    best_order, best_cost = greedy, ev.cost(greedy)
    greedy_cost = best_cost
    if progress is not None:
        progress(time.perf_counter() - start, best_cost, "greedy")
    tables = _tables(enc)
    search = policy.search if num_simulations is None else dataclasses.replace(policy.search,
                                                                                num_simulations=num_simulations)
    params = policy.params
    if finetune:
        tune = train_lib.TrainConfig(network=policy.network, search=search, num_vertices=enc.capacity,
                                     replay_capacity=2048, batch_size=32, updates_per_iteration=8,
                                     learning_rate=3e-4, warmup_steps=1, iterations=1000)
        optimizer = train_lib.make_optimizer(tune)
        opt_state = optimizer.init(params)
        update = train_lib.make_update(tune, optimizer)
        replay = train_lib.Replay.empty(tune.replay_capacity, enc.capacity)
        np_rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    deadline = None if time_budget is None else start + time_budget
    episodes = 0
    while (max_episodes is None or episodes < max_episodes) and (deadline is None or time.perf_counter() < deadline):
        key, sub = jax.random.split(key)
        ep = train_lib.self_play(policy.network, search, params, tables, [0] * games, sub,
                                 replay if finetune else None, deadline)
        if not ep.finished:
            break
        episodes += 1
        for positions, game_cost in zip(ep.orders, ep.costs):
            order = enc.order_from_positions(positions)
            cost = ev.cost(order)
            if game_cost != cost or ep.broken:
                raise RuntimeError(f"vertex game and cost model disagree ({game_cost} vs {cost})")
            if cost < best_cost:
                best_order, best_cost = order, cost
                if progress is not None:
                    progress(time.perf_counter() - start, best_cost, "mcts")
        if finetune and (deadline is None or time.perf_counter() < deadline):
            for _ in range(tune.updates_per_iteration):
                params, opt_state, *_ = update(params, opt_state, tables, *replay.sample(np_rng, tune.batch_size))
    return {"order": tuple(best_order), "cost": int(best_cost), "greedy_order": tuple(greedy),
            "greedy_cost": int(greedy_cost), "episodes": episodes, "elapsed": time.perf_counter() - start}
