"""Two nonlinear systems of the MINPACK-2 test collection (Averick, Carter, More, Xue 1992).

* Human heart dipole (``dhhd``, data set 1): 8 unknowns ``(a, b, c, d, t, u, v, w)``,
  8 residuals.
* Combustion of propane, full formulation (``dcpf``, Meintjes & Morgan): 11 unknowns,
  11 residuals, pressure ``p = 40``, ratio ``R = 10``.

Example inputs are the problems' standard starting points, each coordinate scaled
by ``1 + 0.1 u``, ``u ~ U(-1, 1)`` (signs, hence positivity, are kept).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._util import perturb, to_jax

Array = jax.Array

# ----------------------------------------------------------------- heart dipole
#: ``(sigma_mx, sigma_my, sigma_A, sigma_B, sigma_C, sigma_D, sigma_E, sigma_F)``, data set 1.
HHD_SIGMA: tuple[float, ...] = (0.485, -0.0019, -0.0581, 0.015, 0.105, 0.0406, 0.167, -0.399)
#: Standard starting point of data set 1.
HHD_START: tuple[float, ...] = (0.299, 0.186, -0.0273, 0.0254, -0.474, 0.474, -0.0892, 0.0892)


def human_heart_dipole(
    a: Array, b: Array, c: Array, d: Array, t: Array, u: Array, v: Array, w: Array
) -> tuple[Array, ...]:
    """Residuals of the human heart dipole system.

    Args: eight scalars (shape ``()``).
    Returns: eight residuals, shape ``()`` each.
    """
    smx, smy, sa, sb, sc, sd, se, sf = HHD_SIGMA
    tt, vv, uu, ww = t * t, v * v, u * u, w * w
    tv, uw = t * v, u * w
    t_m_v = tt - vv  # t^2 - v^2
    u_m_w = uu - ww
    t3v = tt - 3.0 * vv  # t^2 - 3 v^2
    v3t = vv - 3.0 * tt
    u3w = uu - 3.0 * ww
    w3u = ww - 3.0 * uu
    at, bu, cv, dw = a * t, b * u, c * v, d * w
    ct, du, av, bw = c * t, d * u, a * v, b * w
    return (
        a + b - smx,
        c + d - smy,
        at + bu - cv - dw - sa,
        av + bw + ct + du - sb,
        a * t_m_v - 2.0 * c * tv + b * u_m_w - 2.0 * d * uw - sc,
        c * t_m_v + 2.0 * a * tv + d * u_m_w + 2.0 * b * uw - sd,
        at * t3v + cv * v3t + bu * u3w + dw * w3u - se,
        ct * t3v - av * v3t + du * u3w - bw * w3u - sf,
    )


def hhd_inputs(seed: int) -> tuple[Array, ...]:
    """Eight scalars near the standard starting point."""
    return to_jax(list(perturb(np.random.default_rng(seed), HHD_START, 0.1)))


# ------------------------------------------------------------ propane combustion
PROPANE_P = 40.0
PROPANE_R = 10.0
#: Equilibrium constants ``K5 .. K10``.
PROPANE_K: tuple[float, ...] = (1.930e-1, 2.597e-3, 3.448e-3, 1.799e-5, 2.155e-4, 3.846e-5)


def _propane_start() -> tuple[float, ...]:
    k5, k6, k7, k8, k9, k10 = PROPANE_K
    p, sp = PROPANE_P, np.sqrt(PROPANE_P)
    return (
        5.0, 2.5, 5.0, 0.1, 0.05 * k5, k6 / sp, 50.0 * k7 / sp,
        1e3 * k8 / p, 5e2 * k9 / sp, 5e4 * k10 / p, 20.0,
    )  # fmt: skip


#: Standard starting point (all coordinates positive).
PROPANE_START: tuple[float, ...] = _propane_start()


def propane_combustion(*x: Array) -> tuple[Array, ...]:
    """Residuals of the full propane combustion system.

    Args: eleven positive scalars ``x1 .. x11`` (shape ``()``).
    Returns: eleven residuals, shape ``()`` each.
    """
    if len(x) != 11:
        raise TypeError(f"propane_combustion takes 11 scalars, got {len(x)}")
    x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11 = x
    k5, k6, k7, k8, k9, k10 = PROPANE_K
    pdx = PROPANE_P / x11
    sqpdx = jnp.sqrt(pdx)
    x_total = x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10
    return (
        x1 + x4 - 3.0,
        2.0 * x1 + x2 + x4 + x7 + x8 + x9 + 2.0 * x10 - PROPANE_R,
        2.0 * x2 + 2.0 * x5 + x6 + x7 - 8.0,
        2.0 * x3 + x9 - 4.0 * PROPANE_R,
        k5 * x2 * x4 - x1 * x5,
        k6 * jnp.sqrt(x2 * x4) - jnp.sqrt(x1) * x6 * sqpdx,
        k7 * jnp.sqrt(x1 * x2) - jnp.sqrt(x4) * x7 * sqpdx,
        k8 * x1 - x4 * x8 * pdx,
        k9 * x1 * jnp.sqrt(x3) - x4 * x9 * sqpdx,
        k10 * x1 * x1 - x4 * x4 * x10 * pdx,
        x11 - x_total,
    )


def propane_inputs(seed: int) -> tuple[Array, ...]:
    """Eleven positive scalars near the standard starting point."""
    return to_jax(list(perturb(np.random.default_rng(seed), PROPANE_START, 0.1)))
