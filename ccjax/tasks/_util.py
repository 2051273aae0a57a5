"""Small helpers shared by the task modules (dtype handling, input sampling)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def float_dtype() -> jnp.dtype:
    """The default JAX float dtype *now* (float64 iff ``jax_enable_x64`` is on)."""
    return jnp.dtype(jnp.result_type(float))


def to_jax(arrays: Sequence[np.ndarray], dtype=None) -> tuple[jax.Array, ...]:
    """Converts NumPy arrays to JAX arrays of ``dtype`` (default: :func:`float_dtype`)."""
    dt = float_dtype() if dtype is None else dtype
    return tuple(jnp.asarray(np.asarray(a), dtype=dt) for a in arrays)


def scalars(values: Sequence[float], dtype=None) -> tuple[jax.Array, ...]:
    """Turns a sequence of Python floats into a tuple of shape-``()`` JAX arrays."""
    return to_jax([np.asarray(v) for v in values], dtype)


def perturb(rng: np.random.Generator, base: Sequence[float], rel: float) -> np.ndarray:
    """``base * (1 + rel * u)`` with ``u ~ U(-1, 1)``: keeps signs, so keeps positivity."""
    b = np.asarray(base, dtype=np.float64)
    return b * (1.0 + rel * rng.uniform(-1.0, 1.0, size=b.shape))
