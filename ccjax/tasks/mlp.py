"""A small multilayer perceptron with softmax cross-entropy loss.

``x (4,) -> tanh(W1 x + b1) (8,) -> layer norm (gain g, bias beta) ->
tanh(W2 h + b2) (4,) -> softmax cross-entropy against one-hot y (4,)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._nn import layer_norm, softmax_cross_entropy
from ._util import to_jax

Array = jax.Array

IN_DIM, HIDDEN, OUT_DIM = 4, 8, 4
#: Names of the positional arguments of :func:`mlp_loss`.
ARG_NAMES = ("W1", "b1", "W2", "b2", "ln_gain", "ln_bias", "x", "y")


def mlp_loss(
    w1: Array, b1: Array, w2: Array, b2: Array, ln_gain: Array, ln_bias: Array, x: Array, y: Array
) -> Array:
    """Loss of one example.

    Args: ``W1 (8, 4), b1 (8,), W2 (4, 8), b2 (4,), ln_gain (8,), ln_bias (8,)``,
    ``x (4,)``, one-hot ``y (4,)``. Returns: scalar loss.
    """
    h = jnp.tanh(w1 @ x + b1)
    h = layer_norm(h, ln_gain, ln_bias)
    z = jnp.tanh(w2 @ h + b2)
    return softmax_cross_entropy(z, y)


def mlp_inputs(seed: int) -> tuple[Array, ...]:
    """Glorot-scaled weights, small biases, ``gain ~ 1``, ``x ~ N(0, 1)``, random one-hot ``y``."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(HIDDEN, IN_DIM)) * np.sqrt(2.0 / (IN_DIM + HIDDEN))
    w2 = rng.normal(size=(OUT_DIM, HIDDEN)) * np.sqrt(2.0 / (HIDDEN + OUT_DIM))
    b1 = 0.1 * rng.normal(size=HIDDEN)
    b2 = 0.1 * rng.normal(size=OUT_DIM)
    gain = 1.0 + 0.1 * rng.normal(size=HIDDEN)
    bias = 0.1 * rng.normal(size=HIDDEN)
    x = rng.normal(size=IN_DIM)
    y = np.eye(OUT_DIM)[rng.integers(OUT_DIM)]
    return to_jax([w1, b1, w2, b2, gain, bias, x, y])
