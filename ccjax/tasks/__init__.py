"""The ten benchmark tasks of the cross-country elimination paper, as plain JAX functions.

Each :class:`Task` holds an unbatched function of positional arrays and a seeded
input generator. ``task.graph_fn_and_inputs(seed)`` gives the (function, inputs)
pair whose jaxpr is the paper's computational graph: ``jax.vmap(fn, in_axes)``
on a batch of one for the tasks the paper vmaps, ``fn`` itself otherwise.

>>> from ccjax.tasks import get_task
>>> task = get_task("RoeFlux_1d")
>>> fn, args = task.graph_fn_and_inputs(seed=0)
>>> jac = jax.jacrev(fn, argnums=task.argnums)(*args)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from . import encoder, finance, minpack, mlp, random_fn, robot, roe
from ._util import float_dtype
from .random_fn import (
    ELEMENTWISE_FAMILIES,
    OP_FAMILIES,
    PAPER_FAMILIES,
    random_function,
    random_input_shapes,
    random_inputs,
)

InAxes = Union[int, tuple[Union[int, None], ...]]

__all__ = [
    "Task",
    "TASKS",
    "get_task",
    "task_names",
    "random_function",
    "random_inputs",
    "random_input_shapes",
    "OP_FAMILIES",
    "ELEMENTWISE_FAMILIES",
    "PAPER_FAMILIES",
]


@dataclass(frozen=True)
class Task:
    """One benchmark task.

    Attributes:
      name: registry key, e.g. ``"RoeFlux_1d"``.
      fn: the unbatched function; positional array arguments; returns an array or
        a tuple of arrays.
      make_inputs: ``seed -> tuple`` of unbatched example inputs (the default float
        dtype, i.e. float64 under ``jax_enable_x64``).
      batched: whether the paper's graph is that of ``jax.vmap(fn, in_axes)``.
      argnums: the arguments the Jacobian is taken with respect to.
      description: one line.
      in_axes: ``jax.vmap`` ``in_axes`` for batching ``fn`` (``None`` marks shared
        arguments such as parameters); used for ``batched`` tasks and for runtime
        benchmarks of any task.
    """

    name: str
    fn: Callable[..., Any]
    make_inputs: Callable[[int], tuple[jax.Array, ...]]
    batched: bool
    argnums: tuple[int, ...]
    description: str
    in_axes: InAxes = 0

    def _axes(self, n_args: int) -> tuple[int | None, ...]:
        return (self.in_axes,) * n_args if isinstance(self.in_axes, int) else tuple(self.in_axes)

    def vmapped_fn(self) -> Callable[..., Any]:
        """``jax.vmap(fn, in_axes=self.in_axes)``."""
        return jax.vmap(self.fn, in_axes=self.in_axes)

    def batched_inputs(self, seed: int, batch_size: int) -> tuple[jax.Array, ...]:
        """Inputs for :meth:`vmapped_fn`: a leading axis of ``batch_size`` on batched arguments.

        Example 0 is ``make_inputs(seed)``; the others use seeds drawn from ``seed``.
        Shared (``in_axes`` ``None``) arguments are those of example 0.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        extra = np.random.default_rng(seed).integers(0, 2**31 - 1, size=batch_size - 1)
        examples = [self.make_inputs(seed)] + [self.make_inputs(int(s)) for s in extra]
        axes = self._axes(len(examples[0]))
        dtype = float_dtype()
        out = []
        for i, ax in enumerate(axes):
            if ax is None:
                out.append(examples[0][i])
            else:
                stacked = np.stack([np.asarray(ex[i]) for ex in examples], axis=ax)
                out.append(jnp.asarray(stacked, dtype=dtype))
        return tuple(out)

    def graph_fn_and_inputs(self, seed: int = 0) -> tuple[Callable[..., Any], tuple[jax.Array, ...]]:
        """The (function, inputs) whose jaxpr is the paper's graph (batch 1 if vmapped)."""
        if self.batched:
            return self.vmapped_fn(), self.batched_inputs(seed, 1)
        return self.fn, self.make_inputs(seed)


# ------------------------------------------------------------------ tasks f, g
F_SEED, F_SHAPES, F_N_OPS = 16, ((4,), (2, 3), (4, 4), (4, 1)), 60
G_SEED, G_N_INPUTS, G_N_OPS = 2, 15, 30

_f = random_function(F_SEED, F_SHAPES, n_ops=F_N_OPS, ops=PAPER_FAMILIES, n_outputs=3, nested=False)
_g = random_function(
    G_SEED, [()] * G_N_INPUTS, n_ops=G_N_OPS, ops=ELEMENTWISE_FAMILIES, n_outputs=3, nested=False
)


def _f_inputs(seed: int) -> tuple[jax.Array, ...]:
    return random_inputs(seed, F_SHAPES)


def _g_inputs(seed: int) -> tuple[jax.Array, ...]:
    return random_inputs(seed, [()] * G_N_INPUTS)


def _all(n: int) -> tuple[int, ...]:
    return tuple(range(n))


_TASK_LIST: tuple[Task, ...] = (
    Task(
        "RoeFlux_1d",
        roe.roe_flux_1d,
        roe.roe_1d_inputs,
        batched=False,
        argnums=_all(6),
        description="Roe flux, 1D Euler: (rho, rho u, E) left/right scalars -> 3 flux components",
    ),
    Task(
        "RoeFlux_3d",
        roe.roe_flux_3d,
        roe.roe_3d_inputs,
        batched=True,
        argnums=_all(6),
        description="Roe flux, 3D Euler: rho (1,), m (3,), E (1,) left/right -> flux (1,), (3,), (1,)",
    ),
    Task(
        "RobotArm_6DOF",
        robot.robot_arm_6dof,
        robot.robot_inputs,
        batched=False,
        argnums=_all(6),
        description="6-joint arm forward kinematics: joint angles -> position (3) + ZYX angles (3)",
    ),
    Task(
        "HumanHeartDipole",
        minpack.human_heart_dipole,
        minpack.hhd_inputs,
        batched=False,
        argnums=_all(8),
        description="MINPACK-2 human heart dipole (dhhd, data set 1): 8 scalars -> 8 residuals",
    ),
    Task(
        "PropaneCombustion",
        minpack.propane_combustion,
        minpack.propane_inputs,
        batched=False,
        argnums=_all(11),
        description="MINPACK-2 propane combustion, full formulation (dcpf): 11 scalars -> 11 residuals",
    ),
    Task(
        "BlackScholes_Jacobian",
        finance.black_scholes_gradient,
        finance.black_scholes_inputs,
        batched=True,
        argnums=_all(5),
        description="jax.grad of the Black-Scholes call price w.r.t. (S, K, r, sigma, T); 5 -> 5 scalars",
    ),
    Task(
        "MLP",
        mlp.mlp_loss,
        mlp.mlp_inputs,
        batched=True,
        argnums=_all(6),
        description="MLP 4 -> 8 (tanh, layer norm) -> 4 (tanh), softmax cross-entropy; d/d(parameters)",
        in_axes=(None,) * 6 + (0, 0),
    ),
    Task(
        "Encoder",
        encoder.encoder_loss,
        encoder.encoder_inputs,
        batched=False,
        argnums=_all(encoder.N_PARAMS),
        description="two single-head transformer encoder blocks on (4, 4), dense head, cross-entropy",
        in_axes=(None,) * encoder.N_PARAMS + (0, 0),
    ),
    Task(
        "f",
        _f,
        _f_inputs,
        batched=False,
        argnums=_all(len(F_SHAPES)),
        description=f"random function (seed {F_SEED}) of (4,), (2, 3), (4, 4), (4, 1)",
    ),
    Task(
        "g",
        _g,
        _g_inputs,
        batched=True,
        argnums=_all(G_N_INPUTS),
        description=f"random scalar function (seed {G_SEED}) of 15 scalars, vmapped",
    ),
)

#: Registry: task name -> :class:`Task`, in the paper's order.
TASKS: dict[str, Task] = {t.name: t for t in _TASK_LIST}


def task_names() -> tuple[str, ...]:
    """Names of all tasks, in the paper's order."""
    return tuple(TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
