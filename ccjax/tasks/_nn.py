"""Neural-network building blocks written with plain ``jnp`` primitives.

``jax.nn.softmax``/``log_softmax``/``relu`` are ``custom_jvp`` functions; these
helpers are the textbook formulas instead, so the traced jaxpr contains only
ordinary primitives (``reduce_max``, ``sub``, ``exp``, ``reduce_sum``, ``log``,
``div``, ``sqrt``, ...).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LAYER_NORM_EPS = 1e-5


def log_softmax(z: jax.Array, axis: int = -1) -> jax.Array:
    """``z - max(z) - log(sum(exp(z - max(z))))`` along ``axis`` (same shape as ``z``).

    The max is *not* stop-gradiented: its contributions cancel exactly.
    """
    shifted = z - jnp.max(z, axis=axis, keepdims=True)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def softmax(z: jax.Array, axis: int = -1) -> jax.Array:
    """``exp(z - max) / sum(exp(z - max))`` along ``axis`` (same shape as ``z``)."""
    e = jnp.exp(z - jnp.max(z, axis=axis, keepdims=True))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over leading axes of ``-sum(targets * log_softmax(logits), -1)``; a scalar.

    logits, targets: ``(..., C)``; targets are one-hot (or any distribution).
    """
    per_row = -jnp.sum(targets * log_softmax(logits, axis=-1), axis=-1)
    return jnp.mean(per_row)


def layer_norm(x: jax.Array, gain: jax.Array, bias: jax.Array) -> jax.Array:
    """Layer norm over the last axis: ``gain * (x - mean) / sqrt(var + eps) + bias``.

    x: ``(..., D)``; gain, bias: ``(D,)``.
    """
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    return gain * (centred / jnp.sqrt(var + LAYER_NORM_EPS)) + bias
