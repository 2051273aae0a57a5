"""Black--Scholes call price and its reverse-mode gradient.

``C = S N(d1) - K exp(-r T) N(d2)`` with
``d1 = (log(S / K) + (r + sigma^2 / 2) T) / (sigma sqrt(T))``, ``d2 = d1 - sigma sqrt(T)``
and ``N(x) = (1 + erf(x / sqrt(2))) / 2``.

The task function is ``jax.grad`` of the price w.r.t. all five arguments (the
first-order greeks delta, dC/dK, rho, vega, dC/dT); its Jacobian is the matrix of
second-order greeks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._util import to_jax

Array = jax.Array


def normal_cdf(x: Array) -> Array:
    """Standard normal CDF via ``erf`` (a plain primitive with a JVP rule)."""
    return 0.5 * (1.0 + lax.erf(x * (1.0 / math.sqrt(2.0))))


def black_scholes_call(s: Array, k: Array, r: Array, sigma: Array, t: Array) -> Array:
    """European call price; all arguments and the result have shape ``()``."""
    sig_sqrt_t = sigma * jnp.sqrt(t)
    d1 = (jnp.log(s / k) + (r + 0.5 * sigma * sigma) * t) / sig_sqrt_t
    d2 = d1 - sig_sqrt_t
    return s * normal_cdf(d1) - k * jnp.exp(-r * t) * normal_cdf(d2)


def black_scholes_gradient(
    s: Array, k: Array, r: Array, sigma: Array, t: Array
) -> tuple[Array, Array, Array, Array, Array]:
    """``jax.grad`` of :func:`black_scholes_call` w.r.t. ``(S, K, r, sigma, T)``.

    Args: five scalars (shape ``()``). Returns: five scalars
    ``(dC/dS, dC/dK, dC/dr, dC/dsigma, dC/dT)``.
    """
    return jax.grad(black_scholes_call, argnums=(0, 1, 2, 3, 4))(s, k, r, sigma, t)


def black_scholes_inputs(seed: int) -> tuple[Array, ...]:
    """``(S, K, r, sigma, T)``: S, K in [80, 120], r in [0, 0.05], sigma in [0.1, 0.5], T in [0.25, 2]."""
    rng = np.random.default_rng(seed)
    return to_jax(
        [
            rng.uniform(80.0, 120.0),
            rng.uniform(80.0, 120.0),
            rng.uniform(0.0, 0.05),
            rng.uniform(0.1, 0.5),
            rng.uniform(0.25, 2.0),
        ]
    )
