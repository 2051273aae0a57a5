"""Policy-value network over vertex tokens (flax).

A transformer with one token per vertex position whose attention logits
get a learned bias (per block and head) from the structures on the edges
between the two vertices, in both directions.  Nothing depends on the number of vertices
or on the graph: the same parameters score any graph at any capacity, and
a permutation of the positions permutes the policy logits alike (the
features carry no position index).

Outputs for one :class:`~ccjax.search.game.Observation` (vmap for batches):
``logits (N,)`` (illegal positions set to :data:`ILLEGAL_LOGIT`) and a
scalar ``value`` in the transformed space of :func:`value_transform`.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ccjax.search.game import Observation

#: Logit of an illegal action: softmax gives it exactly zero probability in float32.
ILLEGAL_LOGIT = -1e9


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Width ``dim``, ``heads`` attention heads, ``layers`` blocks, and the
    width ``edge_dim`` of the hidden edge embedding shared by all blocks."""

    dim: int = 32
    heads: int = 4
    layers: int = 3
    edge_dim: int = 8

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def value_transform(x):
    """``h(x) = sign(x)(sqrt(|x| + 1) - 1) + 0.001 x`` (compresses large returns)."""
    return jnp.sign(x) * (jnp.sqrt(jnp.abs(x) + 1.0) - 1.0) + 0.001 * x


def inverse_value_transform(y, eps: float = 0.001):
    """The exact inverse of :func:`value_transform`."""
    z = (jnp.sqrt(1.0 + 4.0 * eps * (jnp.abs(y) + 1.0 + eps)) - 1.0) / (2.0 * eps)
    return jnp.sign(y) * (z * z - 1.0)


class _Block(nn.Module):
    dim: int
    heads: int

    @nn.compact
    def __call__(self, x, bias, real):
        n = x.shape[0]
        head_dim = self.dim // self.heads
        h = nn.LayerNorm()(x)
        qkv = nn.Dense(3 * self.dim, use_bias=False)(h).reshape(n, 3, self.heads, head_dim)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        logits = jnp.einsum("qhd,khd->hqk", q, k) / jnp.sqrt(head_dim) + bias
        logits = jnp.where(real[None, None, :], logits, -1e9)
        att = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("hqk,khd->qhd", att, v).reshape(n, self.dim)
        x = x + nn.Dense(self.dim)(out)
        h = nn.LayerNorm()(x)
        x = x + nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(h)))
        return x * real[:, None]


def _edge_rows(struct_feat: jax.Array) -> jax.Array:
    """``(2K + 1, 2 F_s)``: every input the edge MLP can see on a board.

    The MLP reads (features of ``u -> w``, features of ``w -> u``), zeros
    where an edge is absent.  A board is a DAG, so at most one of the two
    exists: the input is a forward edge of structure ``s`` (row ``s``), a
    backward one (row ``K + s``) or none (row ``2K``).  Running the MLP on
    these rows and gathering its outputs (:func:`_edge_row_index`) is the
    same function as running it on all ``N * N`` pairs (bit for bit on
    CPU) for less work: about 1.3x less CPU time per MCTS move at ``N = 128``
    (``docs/benchmarks.md``).
    """
    zeros = jnp.zeros_like(struct_feat)
    return jnp.concatenate([jnp.concatenate([struct_feat, zeros], axis=-1),
                            jnp.concatenate([zeros, struct_feat], axis=-1),
                            jnp.zeros((1, 2 * struct_feat.shape[-1]), struct_feat.dtype)])


def _edge_row_index(edge_ids: jax.Array, num_structures: int) -> jax.Array:
    """``(N, N)``: the row of :func:`_edge_rows` for every pair ``(u, w)``."""
    back = edge_ids.T
    return jnp.where(edge_ids >= 0, edge_ids, jnp.where(back >= 0, num_structures + back, 2 * num_structures))


class PolicyValueNet(nn.Module):
    """See the module docstring."""

    config: NetworkConfig = NetworkConfig()

    @nn.compact
    def __call__(self, obs: Observation):
        c = self.config
        real = obs.real
        # All blocks' attention biases: an MLP of (features of u -> w, features of w -> u), see _edge_rows.
        edge_hidden = nn.gelu(nn.Dense(c.edge_dim)(_edge_rows(obs.struct_feat)))
        table = nn.Dense(c.layers * c.heads)(edge_hidden)  # (2K + 1, layers * heads)
        index = _edge_row_index(obs.edge_ids, obs.struct_feat.shape[0])
        biases = jnp.take(table.T, index, axis=1, mode="clip")  # (layers * heads, N, N); index is in range
        x = nn.Dense(c.dim)(obs.vertex) * real[:, None]
        for layer in range(c.layers):
            x = _Block(c.dim, c.heads)(x, biases[layer * c.heads:(layer + 1) * c.heads], real)
        h = nn.LayerNorm()(x)
        logits = nn.Dense(1)(nn.gelu(nn.Dense(c.dim)(h)))[:, 0]
        logits = jnp.where(obs.legal, logits, ILLEGAL_LOGIT)
        count = jnp.maximum(jnp.sum(real), 1)
        pooled = jnp.sum(h * real[:, None], axis=0) / count
        value = nn.Dense(1)(nn.gelu(nn.Dense(c.dim)(pooled)))[0]
        return logits, value


def init_params(config: NetworkConfig, obs: Observation, seed: int = 0):
    """Parameters for ``config`` (``obs``: one unbatched observation, any capacity)."""
    return PolicyValueNet(config).init(jax.random.PRNGKey(seed), obs)


def apply(config: NetworkConfig, params, obs: Observation):
    """``(logits, value)`` for a batch of observations (leading batch axis)."""
    net = PolicyValueNet(config)
    return jax.vmap(lambda o: net.apply(params, o))(obs)
