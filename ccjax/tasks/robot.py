"""Forward kinematics of a 6-joint serial arm (UR5-like standard DH parameters).

Joint ``i`` contributes ``A_i = Rz(theta_i) Tz(d_i) Tx(a_i) Rx(alpha_i)``; the
end-effector pose is ``T = A_1 ... A_6``. Outputs: position ``T[:3, 3]`` and
ZYX (yaw-pitch-roll) angles of ``R = T[:3, :3]``:
``roll = atan2(R21, R22)``, ``pitch = atan2(-R20, sqrt(R21^2 + R22^2))``,
``yaw = atan2(R10, R00)``.

The product is written with scalar arithmetic; entries that are constant 0/+-1
(from ``alpha in {0, +-pi/2}``) are folded at trace time, so the graph holds
only the genuine scalar operations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from ._util import to_jax

Array = jax.Array
Scalar = Union[float, Array]  # a Python float is a trace-time constant

#: ``(d, a, alpha)`` per joint, metres / radians (UR5 standard DH table).
DH_PARAMS: tuple[tuple[float, float, float], ...] = (
    (0.089159, 0.0, math.pi / 2),
    (0.0, -0.425, 0.0),
    (0.0, -0.39225, 0.0),
    (0.10915, 0.0, math.pi / 2),
    (0.09465, 0.0, -math.pi / 2),
    (0.0823, 0.0, 0.0),
)


def _snap(v: float) -> float:
    """Rounds trig values of multiples of pi/2 to exact 0 / +-1."""
    for exact in (0.0, 1.0, -1.0):
        if abs(v - exact) < 1e-12:
            return exact
    return v


def _mul(x: Scalar, y: Scalar) -> Scalar:
    """Product with constant folding of Python-float 0 and +-1 factors."""
    if isinstance(x, float) and isinstance(y, float):
        return x * y
    if isinstance(x, float):
        x, y = y, x
    if isinstance(y, float):
        if y == 0.0:
            return 0.0
        if y == 1.0:
            return x
        if y == -1.0:
            return -x
    return x * y


def _sum(terms: Sequence[Scalar]) -> Scalar:
    """Sum skipping constant zeros (returns ``0.0`` for an all-zero sum)."""
    live = [t for t in terms if not (isinstance(t, float) and t == 0.0)]
    if not live:
        return 0.0
    total = live[0]
    for t in live[1:]:
        total = total + t
    return total


Pose = tuple[list[list[Scalar]], list[Scalar]]  # (R 3x3, p 3)


def _joint_pose(theta: Array, d: float, a: float, alpha: float) -> Pose:
    """Rotation and translation of one standard-DH link."""
    ct, st = jnp.cos(theta), jnp.sin(theta)
    ca, sa = _snap(math.cos(alpha)), _snap(math.sin(alpha))
    rot = [
        [ct, _mul(-1.0, _mul(st, ca)), _mul(st, sa)],
        [st, _mul(ct, ca), _mul(-1.0, _mul(ct, sa))],
        [0.0, sa, ca],
    ]
    pos = [_mul(a, ct), _mul(a, st), d]
    return rot, pos


def _compose(p1: Pose, p2: Pose) -> Pose:
    """``T1 @ T2`` for homogeneous transforms given as (R, p)."""
    r1, t1 = p1
    r2, t2 = p2
    rot = [[_sum([_mul(r1[i][k], r2[k][j]) for k in range(3)]) for j in range(3)] for i in range(3)]
    pos = [_sum([_mul(r1[i][k], t2[k]) for k in range(3)] + [t1[i]]) for i in range(3)]
    return rot, pos


def robot_arm_6dof(
    q1: Array, q2: Array, q3: Array, q4: Array, q5: Array, q6: Array
) -> tuple[Array, Array, Array, Array, Array, Array]:
    """End-effector pose of the 6-DOF arm.

    Args: six joint angles, shape ``()`` each (radians).
    Returns: ``(x, y, z, roll, pitch, yaw)``, shape ``()`` each.
    """
    pose = None
    for theta, (d, a, alpha) in zip((q1, q2, q3, q4, q5, q6), DH_PARAMS):
        link = _joint_pose(theta, d, a, alpha)
        pose = link if pose is None else _compose(pose, link)
    rot, pos = pose
    roll = jnp.arctan2(rot[2][1], rot[2][2])
    pitch = jnp.arctan2(-rot[2][0], jnp.sqrt(rot[2][1] * rot[2][1] + rot[2][2] * rot[2][2]))
    yaw = jnp.arctan2(rot[1][0], rot[0][0])
    return pos[0], pos[1], pos[2], roll, pitch, yaw


def robot_inputs(seed: int) -> tuple[Array, ...]:
    """Six joint angles uniform in ``[-pi, pi]``."""
    rng = np.random.default_rng(seed)
    return to_jax(list(rng.uniform(-np.pi, np.pi, size=6)))
