"""Gumbel MuZero search (mctx) over the vertex game, with the game as the model.

All functions work on a batch of games over *stacked*
:class:`~ccjax.search.tables.GameTables` (``tables.edges`` is ``(G, N, N)``)
and states with a leading batch axis; ``GameState.graph`` says which graph
each game plays.  Rewards are ``-mults / scale`` per step (``scale``: the
graph's best classical cost), so a return of ``-1`` means "as good as the
best of fwd/rev/Markowitz".  An illegal action inside the tree ends that
branch with a penalty of :attr:`MCTSConfig.illegal_penalty`, never a free
no-op.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import mctx

from ccjax.search import game, network
from ccjax.search.network import NetworkConfig
from ccjax.search.tables import GameTables


@dataclasses.dataclass(frozen=True)
class MCTSConfig:
    """Search settings (the paper's: 50 simulations, 5 considered actions,
    Gumbel scale 1)."""

    num_simulations: int = 32
    max_num_considered_actions: int = 8
    gumbel_scale: float = 1.0
    illegal_penalty: float = 10.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate(net: NetworkConfig, net_params, tables: GameTables, states: game.GameState):
    """``(logits (B, N), value (B,))`` with the value in return units."""
    obs = jax.vmap(game.observe, (None, 0))(tables, states)
    logits, value = network.apply(net, net_params, obs)
    return logits, network.inverse_value_transform(value)


def _recurrent_fn(net: NetworkConfig, config: MCTSConfig):
    def recurrent_fn(params, rng_key, action, states):
        del rng_key
        net_params, tables = params
        res, reward = _play(tables, states, action)
        was_terminal = jax.vmap(game.is_terminal)(states)
        reward = jnp.where(res.legal, reward, -config.illegal_penalty)
        reward = jnp.where(was_terminal, 0.0, reward)
        ended = was_terminal | ~res.legal | jax.vmap(game.is_terminal)(res.state)
        logits, value = evaluate(net, net_params, tables, res.state)
        out = mctx.RecurrentFnOutput(
            reward=reward,
            discount=jnp.where(ended, 0.0, 1.0),
            prior_logits=logits,
            value=jnp.where(ended, 0.0, value),
        )
        return out, res.state

    return recurrent_fn


class ActResult(NamedTuple):
    """One move of a batch of games: ``states`` after it, the chosen
    ``action (B,)``, the search's ``action_weights (B, N)`` (policy target),
    ``reward (B,)``, ``active (B,)`` (the game was not over before the move)
    and the root ``value (B,)``."""

    states: game.GameState
    action: jax.Array
    action_weights: jax.Array
    reward: jax.Array
    active: jax.Array
    value: jax.Array


@functools.partial(jax.jit, static_argnums=(0, 1))
def act(net: NetworkConfig, config: MCTSConfig, net_params, tables: GameTables, states: game.GameState,
        rng_key) -> ActResult:
    """Run Gumbel MuZero at every game of the batch and play its action."""
    logits, value = evaluate(net, net_params, tables, states)
    root = mctx.RootFnOutput(prior_logits=logits, value=value, embedding=states)
    out = mctx.gumbel_muzero_policy(
        params=(net_params, tables),
        rng_key=rng_key,
        root=root,
        recurrent_fn=_recurrent_fn(net, config),
        num_simulations=config.num_simulations,
        invalid_actions=~states.remaining,
        max_num_considered_actions=config.max_num_considered_actions,
        gumbel_scale=config.gumbel_scale,
    )
    active = ~jax.vmap(game.is_terminal)(states)
    res, reward = _play(tables, states, out.action)
    return ActResult(res.state, out.action, out.action_weights, reward, active, value)


def _play(tables: GameTables, states: game.GameState, actions) -> tuple[game.StepResult, jax.Array]:
    """Step every game; the reward is ``-mults / scale``.  A finished game
    has no legal action, so its step changes nothing and earns 0."""
    res = jax.vmap(game.step, (None, 0, 0))(tables, states, actions)
    return res, -res.mults.astype(jnp.float32) / jnp.asarray(tables.scale)[states.graph]


def initial_states(tables: GameTables, graph_ids) -> game.GameState:
    """A batch of fresh games on the given graphs of stacked ``tables``."""
    return jax.vmap(lambda g: game.initial_state(tables, g))(jnp.asarray(graph_ids, jnp.int32))
