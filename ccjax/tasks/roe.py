"""Roe's approximate Riemann solver (Roe 1981) for the Euler equations.

Conserved state ``U = (rho, m = rho*u, E)``; ideal gas with constant ``GAMMA``:
``p = (GAMMA - 1) (E - |m|^2 / (2 rho))``, total enthalpy ``H = (E + p) / rho``.
Physical x-flux ``F(U) = (m_x, m_x u + p e_x, u_x (E + p))``.

Roe flux: ``F* = (F(U_L) + F(U_R)) / 2 - sum_k |lambda_k| alpha_k r_k / 2`` with
the Roe averages (weights ``sqrt(rho_L)``, ``sqrt(rho_R)``) of ``u`` and ``H``,
``c^2 = (GAMMA - 1) (H - |u|^2 / 2)``, eigenvalues ``u - c, u, u + c``, wave
strengths ``alpha_{1,3} = (dp -/+ rho c du) / (2 c^2)``, ``alpha_2 = drho - dp / c^2``
(plus ``rho dv``, ``rho dw`` for the shear waves in 3D). No entropy fix: the
plain ``|lambda|`` is used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._util import to_jax

GAMMA = 1.4

Array = jax.Array


# --------------------------------------------------------------------------- 1D
def _primitives_1d(rho: Array, m: Array, e: Array) -> tuple[Array, Array, Array]:
    """Velocity, pressure and total enthalpy of a 1D state (all scalars)."""
    u = m / rho
    p = (GAMMA - 1.0) * (e - 0.5 * m * u)
    h = (e + p) / rho
    return u, p, h


def roe_flux_1d(
    rho_l: Array, m_l: Array, e_l: Array, rho_r: Array, m_r: Array, e_r: Array
) -> tuple[Array, Array, Array]:
    """Roe flux of the 1D Euler equations.

    Args: six scalars (shape ``()``): left and right ``rho, rho*u, E``.
    Returns: the three flux components ``(F_rho, F_m, F_E)``, each shape ``()``.
    """
    u_l, p_l, h_l = _primitives_1d(rho_l, m_l, e_l)
    u_r, p_r, h_r = _primitives_1d(rho_r, m_r, e_r)

    s_l = jnp.sqrt(rho_l)
    s_r = jnp.sqrt(rho_r)
    s_sum = s_l + s_r
    u = (s_l * u_l + s_r * u_r) / s_sum
    h = (s_l * h_l + s_r * h_r) / s_sum
    rho = s_l * s_r
    c2 = (GAMMA - 1.0) * (h - 0.5 * u * u)
    c = jnp.sqrt(c2)

    d_rho = rho_r - rho_l
    d_u = u_r - u_l
    d_p = p_r - p_l
    rc_du = rho * c * d_u
    w1 = jnp.abs(u - c) * (d_p - rc_du) / (2.0 * c2)
    w2 = jnp.abs(u) * (d_rho - d_p / c2)
    w3 = jnp.abs(u + c) * (d_p + rc_du) / (2.0 * c2)

    uc = u * c
    diss_rho = w1 + w2 + w3
    diss_m = w1 * (u - c) + w2 * u + w3 * (u + c)
    diss_e = w1 * (h - uc) + w2 * (0.5 * u * u) + w3 * (h + uc)

    f_rho = 0.5 * (m_l + m_r) - 0.5 * diss_rho
    f_m = 0.5 * (m_l * u_l + p_l + m_r * u_r + p_r) - 0.5 * diss_m
    f_e = 0.5 * (u_l * (e_l + p_l) + u_r * (e_r + p_r)) - 0.5 * diss_e
    return f_rho, f_m, f_e


def euler_flux_1d(rho: Array, m: Array, e: Array) -> tuple[Array, Array, Array]:
    """Physical flux ``F(U)`` of the 1D Euler equations (for checks)."""
    u, p, _ = _primitives_1d(rho, m, e)
    return m, m * u + p, u * (e + p)


def _sample_state_1d(rng: np.random.Generator) -> list[float]:
    """A physical state: rho in [0.5, 1.5], u in [-1, 1], p in [0.5, 1.5]."""
    rho = rng.uniform(0.5, 1.5)
    u = rng.uniform(-1.0, 1.0)
    p = rng.uniform(0.5, 1.5)
    return [rho, rho * u, p / (GAMMA - 1.0) + 0.5 * rho * u * u]


def roe_1d_inputs(seed: int) -> tuple[Array, ...]:
    """Six scalars ``(rho_L, m_L, E_L, rho_R, m_R, E_R)`` of two random physical states."""
    rng = np.random.default_rng(seed)
    return to_jax(_sample_state_1d(rng) + _sample_state_1d(rng))


# --------------------------------------------------------------------------- 3D
def _pad_to3(x: Array, before: int, after: int) -> Array:
    """Zero-pads a 1D array (e.g. ``(1,) -> (3,)``), i.e. embeds it in R^3."""
    return lax.pad(x, jnp.zeros((), x.dtype), [(before, after, 0)])


def _primitives_3d(rho: Array, m: Array, e: Array) -> tuple[Array, Array, Array]:
    """Velocity ``(3,)``, pressure ``(1,)`` and enthalpy ``(1,)`` of a 3D state."""
    vel = m / rho
    p = (GAMMA - 1.0) * (e - 0.5 * jnp.sum(m * vel, keepdims=True))
    h = (e + p) / rho
    return vel, p, h


def _physical_flux_3d(
    rho: Array, m: Array, e: Array, vel: Array, p: Array
) -> tuple[Array, Array, Array]:
    del rho
    u_n = vel[0:1]
    return m[0:1], m * u_n + _pad_to3(p, 0, 2), u_n * (e + p)


def roe_flux_3d(
    rho_l: Array, m_l: Array, e_l: Array, rho_r: Array, m_r: Array, e_r: Array
) -> tuple[Array, Array, Array]:
    """Roe flux (x-direction) of the 3D Euler equations, one example.

    Args: ``rho_l (1,), m_l (3,), e_l (1,), rho_r (1,), m_r (3,), e_r (1,)``.
    Returns: ``(F_rho (1,), F_m (3,), F_E (1,))`` -- five flux components.
    """
    vel_l, p_l, h_l = _primitives_3d(rho_l, m_l, e_l)
    vel_r, p_r, h_r = _primitives_3d(rho_r, m_r, e_r)

    s_l = jnp.sqrt(rho_l)
    s_r = jnp.sqrt(rho_r)
    s_sum = s_l + s_r
    vel = (s_l * vel_l + s_r * vel_r) / s_sum  # (3,)
    h = (s_l * h_l + s_r * h_r) / s_sum  # (1,)
    rho = s_l * s_r  # (1,)
    q2 = jnp.sum(vel * vel, keepdims=True)  # (1,)
    c2 = (GAMMA - 1.0) * (h - 0.5 * q2)
    c = jnp.sqrt(c2)
    u = vel[0:1]

    d_rho = rho_r - rho_l
    d_vel = vel_r - vel_l
    d_p = p_r - p_l
    rc_du = rho * c * d_vel[0:1]
    abs_u = jnp.abs(u)
    w1 = jnp.abs(u - c) * (d_p - rc_du) / (2.0 * c2)  # acoustic u - c
    w2 = abs_u * (d_rho - d_p / c2)  # entropy
    w3 = jnp.abs(u + c) * (d_p + rc_du) / (2.0 * c2)  # acoustic u + c
    shear = abs_u * rho * _pad_to3(d_vel[1:3], 1, 0)  # (0, |u| rho dv, |u| rho dw)

    c_ex = _pad_to3(c, 0, 2)  # c * e_x
    uc = u * c
    diss_rho = w1 + w2 + w3
    diss_m = w1 * (vel - c_ex) + w2 * vel + w3 * (vel + c_ex) + shear
    diss_e = (
        w1 * (h - uc)
        + w2 * (0.5 * q2)
        + w3 * (h + uc)
        + jnp.sum(vel * shear, keepdims=True)
    )

    fl = _physical_flux_3d(rho_l, m_l, e_l, vel_l, p_l)
    fr = _physical_flux_3d(rho_r, m_r, e_r, vel_r, p_r)
    f_rho = 0.5 * (fl[0] + fr[0]) - 0.5 * diss_rho
    f_m = 0.5 * (fl[1] + fr[1]) - 0.5 * diss_m
    f_e = 0.5 * (fl[2] + fr[2]) - 0.5 * diss_e
    return f_rho, f_m, f_e


def euler_flux_3d(rho: Array, m: Array, e: Array) -> tuple[Array, Array, Array]:
    """Physical x-flux ``F(U)`` of the 3D Euler equations: ``((1,), (3,), (1,))``."""
    vel, p, _ = _primitives_3d(rho, m, e)
    return _physical_flux_3d(rho, m, e, vel, p)


def _sample_state_3d(rng: np.random.Generator) -> list[np.ndarray]:
    rho = rng.uniform(0.5, 1.5, size=(1,))
    vel = rng.uniform(-1.0, 1.0, size=(3,))
    p = rng.uniform(0.5, 1.5, size=(1,))
    e = p / (GAMMA - 1.0) + 0.5 * rho * np.sum(vel * vel)
    return [rho, rho * vel, e]


def roe_3d_inputs(seed: int) -> tuple[Array, ...]:
    """``(rho_L (1,), m_L (3,), E_L (1,), rho_R (1,), m_R (3,), E_R (1,))``, physical states."""
    rng = np.random.default_rng(seed)
    return to_jax(_sample_state_3d(rng) + _sample_state_3d(rng))
