"""Two single-head post-LN transformer encoder blocks with a dense head.

Per block, on ``X (L, D) = (4, 4)``::

    A   = softmax(X Wq (X Wk)^T / sqrt(D))          row-wise, (L, L)
    X   = LN1(X + A (X Wv) Wo)
    X   = LN2(X + max(X Wf1 + bf1, 0) Wf2 + bf2)     feed-forward, hidden width D

then ``logits = X Wh + bh`` and the loss is the mean over rows of the softmax
cross-entropy against a one-hot target ``Y (L, D)``. Softmax, layer norm and
ReLU are written with plain primitives (``_nn``, ``jnp.maximum``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ._nn import layer_norm, softmax, softmax_cross_entropy
from ._util import to_jax

Array = jax.Array

SEQ_LEN, DIM, N_BLOCKS = 4, 4, 2
#: Parameters of one block, in argument order, with their shapes.
BLOCK_PARAMS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Wq", (DIM, DIM)),
    ("Wk", (DIM, DIM)),
    ("Wv", (DIM, DIM)),
    ("Wo", (DIM, DIM)),
    ("ln1_gain", (DIM,)),
    ("ln1_bias", (DIM,)),
    ("Wf1", (DIM, DIM)),
    ("bf1", (DIM,)),
    ("Wf2", (DIM, DIM)),
    ("bf2", (DIM,)),
    ("ln2_gain", (DIM,)),
    ("ln2_bias", (DIM,)),
)
HEAD_PARAMS: tuple[tuple[str, tuple[int, ...]], ...] = (("Wh", (DIM, DIM)), ("bh", (DIM,)))
#: All positional arguments of :func:`encoder_loss`, in order.
ARG_NAMES: tuple[str, ...] = (
    tuple(f"block{b}.{name}" for b in range(N_BLOCKS) for name, _ in BLOCK_PARAMS)
    + tuple(name for name, _ in HEAD_PARAMS)
    + ("X", "Y")
)
N_PARAMS = len(ARG_NAMES) - 2


def encoder_block(x: Array, *p: Array) -> Array:
    """One encoder block; ``x (L, D)``, ``p`` as in :data:`BLOCK_PARAMS`; returns ``(L, D)``."""
    wq, wk, wv, wo, g1, be1, wf1, bf1, wf2, bf2, g2, be2 = p
    q, k, v = x @ wq, x @ wk, x @ wv
    scores = jnp.einsum("id,jd->ij", q, k) * (1.0 / math.sqrt(x.shape[-1]))
    attn = softmax(scores, axis=-1) @ v @ wo
    x = layer_norm(x + attn, g1, be1)
    ff = jnp.maximum(x @ wf1 + bf1, 0.0) @ wf2 + bf2
    return layer_norm(x + ff, g2, be2)


def encoder_loss(*args: Array) -> Array:
    """Loss of the two-block encoder.

    Args: the 26 parameters named in :data:`ARG_NAMES`, then ``X (4, 4)`` and the
    one-hot target ``Y (4, 4)``. Returns: scalar loss.
    """
    if len(args) != len(ARG_NAMES):
        raise TypeError(f"encoder_loss takes {len(ARG_NAMES)} arrays, got {len(args)}")
    n = len(BLOCK_PARAMS)
    x, y = args[-2], args[-1]
    for b in range(N_BLOCKS):
        x = encoder_block(x, *args[b * n : (b + 1) * n])
    wh, bh = args[N_BLOCKS * n : N_BLOCKS * n + 2]
    return softmax_cross_entropy(x @ wh + bh, y)


def encoder_inputs(seed: int) -> tuple[Array, ...]:
    """Scaled-normal weights, ``gain ~ 1``, small biases, ``X ~ N(0, 1)``, one-hot rows ``Y``."""
    rng = np.random.default_rng(seed)
    arrays: list[np.ndarray] = []
    for name, shape in BLOCK_PARAMS * N_BLOCKS + HEAD_PARAMS:
        if name.endswith("gain"):
            arrays.append(1.0 + 0.1 * rng.normal(size=shape))
        elif len(shape) == 1:
            arrays.append(0.1 * rng.normal(size=shape))
        else:
            arrays.append(rng.normal(size=shape) / math.sqrt(shape[0]))
    arrays.append(rng.normal(size=(SEQ_LEN, DIM)))
    arrays.append(np.eye(DIM)[rng.integers(DIM, size=SEQ_LEN)])
    return to_jax(arrays)
