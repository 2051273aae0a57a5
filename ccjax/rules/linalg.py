"""``dot_general``: the other operand on contracted and own-free axes,
Kronecker pairs on batch axes and the differentiated operand's free axes.

``cholesky``: JAX's dense local Jacobian (:mod:`.opaque`) with the zeros
of JAX's derivative declared, for ``output="sparse"``: ``L = chol(S)`` has
``dL = L Φ(L⁻¹ dS L⁻ᴴ)`` with ``Φ`` the lower triangle (diagonal halved),
so ``dL[i, j]`` reads ``dS[a, b]`` only where ``j <= i``, ``a <= i`` and
``b <= j`` (``L⁻¹`` is lower triangular), within one matrix of a batch.
The pattern is checked against JAX's own derivative on a small random
matrix first; where they disagree (a JAX whose rule differs) none is
declared.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import numpy as np

from ccjax.rules import opaque
from ccjax.rules.base import Partial, RuleContext, labelled, run_apart


def _dot_general(ctx: RuleContext):
    (lc, rc), (lb, rb) = ctx.params["dimension_numbers"]
    lhs, rhs = ctx.in_avals
    lfree = [k for k in range(lhs.ndim) if k not in lc and k not in lb]
    rfree = [k for k in range(rhs.ndim) if k not in rc and k not in rb]
    out_labels = ([("b", j) for j in range(len(lb))] + [("lf", k) for k in lfree]
                  + [("rf", k) for k in rfree])

    def operand_labels(ndim, contract, batch, tag):
        labels = []
        for k in range(ndim):
            if k in batch:
                labels.append(("b", list(batch).index(k)))
            elif k in contract:
                labels.append(("c", list(contract).index(k)))
            else:
                labels.append((tag, k))
        return labels

    l_labels = operand_labels(lhs.ndim, lc, lb, "lf")
    r_labels = operand_labels(rhs.ndim, rc, rb, "rf")
    dtype = ctx.out_avals[0].dtype
    parts = []
    if 0 in ctx.active:
        parts.append(labelled(0, 0, ctx, out_labels, l_labels, r_labels, tuple(rhs.shape),
                              lambda ins, outs: ins[1].astype(dtype)))
    if 1 in ctx.active:
        parts.append(labelled(0, 1, ctx, out_labels, r_labels, l_labels, tuple(lhs.shape),
                              lambda ins, outs: ins[0].astype(dtype)))
    return parts


def _cholesky(ctx: RuleContext) -> list[Partial]:
    return opaque.dense_partials(ctx, nonzero=lambda j, slot: _cholesky_reads(tuple(ctx.in_avals[0].shape)))


def _cholesky_pattern(shape: tuple) -> np.ndarray:
    """The boolean ``shape + shape`` pattern of the module docstring."""
    batch, n = int(np.prod(shape[:-2])), shape[-1]
    i, j, a, b = np.ix_(*[np.arange(n)] * 4)
    one = (j <= i) & (a <= i) & (b <= j)
    same = np.eye(batch, dtype=bool)[:, None, None, :, None, None]
    return (same & one[None, :, :, None, :, :]).reshape(shape + shape)


@functools.lru_cache(maxsize=64)
def _cholesky_reads(shape: tuple) -> Optional[np.ndarray]:
    """:func:`_cholesky_pattern` of ``shape`` when it holds JAX's
    derivative on a random 5x5 matrix, else None."""
    n = 5
    m = np.random.default_rng(0).normal(size=(n, n))
    spd = m @ m.T + n * np.eye(n)
    jacobian = jax.jit(jax.jacfwd(lambda s: jax.lax.linalg.cholesky(s, symmetrize_input=False)))
    jac = run_apart(lambda: np.asarray(jacobian(spd)))  # one compile, not 26 op by op (0.6 s)
    if np.any((jac != 0) & ~_cholesky_pattern((n, n))):
        return None
    return _cholesky_pattern(shape)


RULES = {"dot_general": _dot_general, "cholesky": _cholesky}
