"""Orders from a trained policy: greedy (``order="learned"``) and MCTS search.

Both encode the graph (:func:`~ccjax.search.tables.encode`) at the smallest
capacity bucket that holds it, play the vertex game with the policy, map
positions back to vertex ids and re-cost the order with
:class:`~ccjax.orders.incremental.Evaluator` (the cost ``ccjax.cost``
reports), so what is returned never rests on the game alone.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ccjax.graph import Graph
from ccjax.orders.incremental import Evaluator
from ccjax.search import mcts
from ccjax.search.policy import Policy, default_policy
from ccjax.search.tables import DEFAULT_STRUCTURES, EncodedGraph, encode, stack

#: Vertex capacities compiled for (one executable per bucket and batch size).
CAPACITY_BUCKETS = (32, 64, 96, 128, 160, 192, 256, 320, 384, 512)


def capacity_for(graph: Graph) -> int:
    """The smallest bucket holding the graph's live vertices."""
    n = len({u for e in graph.edges for u in e})
    for c in CAPACITY_BUCKETS:
        if n <= c:
            return c
    raise ValueError(f"graph {graph.fingerprint} has {n} vertices; learned orders support up to "
                     f"{CAPACITY_BUCKETS[-1]}")


def encode_for_policy(graph: Graph, num_structures: int = DEFAULT_STRUCTURES) -> EncodedGraph:
    return encode(graph, capacity_for(graph), num_structures)


def _tables(enc: EncodedGraph):
    return jax.tree_util.tree_map(jnp.asarray, stack([enc.tables]))


def _order_of(enc: EncodedGraph, actions: np.ndarray, active: np.ndarray) -> tuple[int, ...]:
    return enc.order_from_positions([int(a) for a, on in zip(actions, active) if on])


def learned_order(graph: Graph, policy: Optional[Policy] = None) -> tuple[int, ...]:
    """The policy's greedy order (argmax at every step) for ``graph``.

    ``jacve(order="learned")`` asks for it while tracing the user's function
    (under ``jit``, ``scan``, ``vmap``...), where JAX would stage the policy's
    computation into that trace and hand back tracers.  The order depends on
    the graph and the policy only, both concrete, so it is computed eagerly
    (``jax.ensure_compile_time_eval``), loading the policy included: the
    cached policy must never hold tracers of some trace.
    """
    if not graph.eliminable:
        return ()
    with jax.ensure_compile_time_eval():
        policy = default_policy() if policy is None else policy
        return _greedy_order(graph, encode_for_policy(graph), policy)


def _greedy_order(graph: Graph, enc: EncodedGraph, policy: Policy) -> tuple[int, ...]:
    tables = _tables(enc)
    actions, active, final = mcts.greedy_rollout(policy.network, policy.params, tables,
                                                 mcts.initial_states(tables, [0]))
    order = _order_of(enc, np.asarray(actions[:, 0]), np.asarray(active[:, 0]))
    if bool(final.broken[0]) or sorted(order) != sorted(graph.eliminable):
        raise RuntimeError("the learned policy produced an invalid order (please report this)")
    return order


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
    enc = encode_for_policy(graph)
    greedy = _greedy_order(graph, enc, policy)
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
