"""``dot_general``: the other operand on contracted and own-free axes,
Kronecker pairs on batch axes and the differentiated operand's free axes;
a constant operand's zeros are structural zeros of the other's partial.

``cholesky``: JAX's dense local Jacobian (:mod:`.opaque`) with the zeros
of JAX's derivative declared, for ``output="sparse"``: ``L = chol(S)`` has
``dL = L Φ(L⁻¹ dS L⁻ᴴ)`` with ``Φ`` the lower triangle (diagonal halved),
so ``dL[i, j]`` reads ``dS[a, b]`` only where ``j <= i``, ``a <= i`` and
``b <= j`` (``L⁻¹`` is lower triangular), within one matrix of a batch.
The pattern is checked against JAX's own derivative on a small random
matrix first; where they disagree (a JAX whose rule differs) none is
declared.

``triangular_solve``: ``x = op(a)⁻¹ b`` (or ``b op(a)⁻¹``) is linear in
``b``, so its partial with respect to ``b`` is a ``dot_general`` with
``M = op(a)⁻¹`` (one solve against the identity, ``m`` right-hand sides
per matrix of a batch): ``M`` on the solved axis, a Kronecker identity on
the other.  ``M`` is triangular, which ``output="sparse"`` keeps.  The
partial with respect to ``a`` stays JAX's dense local Jacobian.

``custom_linear_solve`` (``jnp.linalg.solve``, ``inv``, and the solve in
the JVP that the graph writes for them: :func:`ccjax.graph._solve_by_jvp`)
with respect to its right-hand side alone: ``x = A⁻¹ b`` is linear in
``b``.  Where every function of the solve maps the columns of ``b`` one at
a time by the same map (``inv``'s identity, a matrix right-hand side;
proved by :func:`ccjax.rules.batching.batch_axes` with ``uniform``), the
partial is ``A⁻¹`` on the axes the solve mixes and a Kronecker identity on
the others: ``A⁻¹`` stored once, from solves against basis vectors packed
side by side along the separate axes (one solve for ``inv``).  Otherwise
(``vmap(jnp.linalg.solve)``: one matrix per column; a vector right-hand
side) JAX's blocks (:mod:`.opaque`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ccjax.rules import batching, opaque
from ccjax.rules.base import Partial, RuleContext, constant_nonzero, labelled, run_apart


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
                              lambda ins, outs: ins[1].astype(dtype), nonzero=constant_nonzero(ctx, 1)))
    if 1 in ctx.active:
        parts.append(labelled(0, 1, ctx, out_labels, r_labels, l_labels, tuple(lhs.shape),
                              lambda ins, outs: ins[0].astype(dtype), nonzero=constant_nonzero(ctx, 0)))
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


def _cholesky_reads(shape: tuple) -> Optional[np.ndarray]:
    """:func:`_cholesky_pattern` of ``shape`` when it holds JAX's
    derivative (:func:`_cholesky_pattern_holds`), else None."""
    return _cholesky_pattern(shape) if _cholesky_pattern_holds() else None


@functools.lru_cache(maxsize=1)
def _cholesky_pattern_holds() -> bool:
    """Whether JAX's derivative of ``cholesky`` on a random 5x5 matrix is
    zero outside :func:`_cholesky_pattern` (once a process: the pattern
    follows from the rule, not from the shape)."""
    n = 5
    m = np.random.default_rng(0).normal(size=(n, n))
    spd = m @ m.T + n * np.eye(n)
    jacobian = jax.jit(jax.jacfwd(lambda s: jax.lax.linalg.cholesky(s, symmetrize_input=False)))
    jac = run_apart(lambda: np.asarray(jacobian(spd)))  # one compile, not 26 op by op (0.6 s)
    return not np.any((jac != 0) & ~_cholesky_pattern((n, n)))


def _triangular_solve(ctx: RuleContext) -> list[Partial]:
    if 1 not in ctx.active:
        return opaque.dense_partials(ctx)
    p = ctx.params
    a, b = ctx.in_avals
    m = a.shape[-1]
    batch = [("b", k) for k in range(a.ndim - 2)]
    if p["left_side"]:  # x[i, j] = sum_k M[i, k] b[k, j]
        out_labels, in_labels, val_labels = batch + ["i", "j"], batch + ["k", "j"], batch + ["i", "k"]
    else:  # x[j, i] = sum_k b[j, k] M[k, i]
        out_labels, in_labels, val_labels = batch + ["j", "i"], batch + ["j", "k"], batch + ["k", "i"]
    dtype = ctx.out_avals[0].dtype

    def inverse(ins, outs):
        eye = jnp.broadcast_to(jnp.eye(m, dtype=ins[0].dtype), a.shape)
        return jax.lax.linalg.triangular_solve(ins[0], eye, left_side=True, lower=p["lower"],
                                               transpose_a=p["transpose_a"], conjugate_a=p["conjugate_a"],
                                               unit_diagonal=p["unit_diagonal"]).astype(dtype)

    inverse_pattern = _triangle(m, p["lower"] != p["transpose_a"])  # M's, like op(a)'s
    nonzero = lambda: np.broadcast_to(inverse_pattern, a.shape)
    parts = [labelled(0, 1, ctx, out_labels, in_labels, val_labels, tuple(a.shape), inverse, nonzero=nonzero)]
    if 0 in ctx.active:  # its own partial, also where ``a`` is ``b``: the edge sums them
        reads = lambda j, slot: _triangular_solve_reads(tuple(a.shape), tuple(b.shape), p)
        parts += opaque.dense_partials(dataclasses.replace(ctx, active=(0,), same_var=()), nonzero=reads)
    return parts


def _triangle(m: int, lower: bool) -> np.ndarray:
    return np.tri(m, dtype=bool) if lower else np.tri(m, dtype=bool).T


def _triangular_solve_reads(a_shape: tuple, b_shape: tuple, p: dict) -> np.ndarray:
    """Where ``∂x/∂a`` (shape ``b_shape + a_shape``) can be nonzero.  With
    ``M = op(a)⁻¹``, ``dx = -M op(da) x`` (left side) or ``-x op(da) M``:
    ``x[i, j]`` reads ``op(a)[r, c]`` where ``M[i, r]`` (``M[c, i]`` on the
    right) can be nonzero, and only the triangle of ``a`` that the solve
    reads (less the diagonal when it is taken as ones), in one matrix of a
    batch."""
    m = a_shape[-1]
    read = _triangle(m, p["lower"]) & ~(np.eye(m, dtype=bool) & p["unit_diagonal"])  # [k, l]
    pattern = _triangle(m, p["lower"] != p["transpose_a"])
    read_op = read.T if p["transpose_a"] else read  # op(a)[r, c] = a[c, r] when transposed
    if p["left_side"]:
        one = pattern[:, :, None] & read_op[None, :, :]  # [i, r, c]: M[i, r] and op(a)[r, c] read
        one = np.broadcast_to(one[:, None], (m, b_shape[-1], m, m))  # [i, j, r, c]
    else:
        one = pattern.T[:, :, None] & read_op.T[None, :, :]  # [i, c, r]
        one = np.broadcast_to(one.transpose(0, 2, 1)[None], (b_shape[-2], m, m, m))  # [j, i, r, c]
    if p["transpose_a"]:
        one = np.swapaxes(one, -1, -2)  # back to a[k, l] = op(a)[l, k]
    batch = int(np.prod(a_shape[:-2]))
    same = np.eye(batch, dtype=bool).reshape((batch, 1, 1, batch, 1, 1))
    full = same & one.reshape((1,) + one.shape[:2] + (1,) + one.shape[2:])
    return full.reshape(b_shape + a_shape)


def _custom_linear_solve(ctx: RuleContext) -> list[Partial]:
    n_consts = sum(ctx.params["const_lengths"])
    b, x = ctx.in_avals[-1], ctx.out_avals[0]
    if (ctx.active != (n_consts,) or len(ctx.in_avals) != n_consts + 1 or len(ctx.out_avals) != 1
            or b.shape != x.shape):
        return opaque.dense_partials(ctx)
    # Axes every column of which one matrix solves (``inv``'s columns); an
    # axis solved apart by one matrix per entry (``vmap``) leaves JAX's blocks.
    unbatched = [None] * n_consts
    apart = [k for k in range(b.ndim) if batching.solves_apart(ctx.params, unbatched, k, uniform=True)]
    mixed = [k for k in range(b.ndim) if k not in apart]
    if not apart or not mixed or any(batching.solves_apart(ctx.params, unbatched, k) for k in mixed):
        return opaque.dense_partials(ctx)  # a vector, or one matrix per entry of some axis
    n_mixed = math.prod(b.shape[k] for k in mixed)
    n_apart = math.prod(b.shape[k] for k in apart)
    dtype = x.dtype
    val_shape = tuple(x.shape[k] for k in mixed) * 2

    def inverse(ins, outs):
        """``A⁻¹`` as ``(mixed out..., mixed in...)``: basis vector ``r *
        n_apart + s`` of the mixed axes sits at entry ``s`` of the separate
        axes of right-hand side ``r``."""
        rounds = -(-n_mixed // n_apart)
        col = np.arange(rounds * n_apart).reshape(rounds, n_apart)  # [r, s]
        basis = (np.arange(n_mixed)[None, :, None] == col[:, None, :]).astype(b.dtype)  # [r, t, s]
        basis = basis.reshape((rounds,) + tuple(b.shape[k] for k in mixed + apart))
        basis = np.moveaxis(basis, range(1, b.ndim + 1), [1 + k for k in mixed + apart])
        solved = jax.vmap(lambda rhs: ctx.eval(*ins[:n_consts], rhs)[0])(jnp.asarray(basis))  # [r, *x]
        solved = jnp.moveaxis(solved, [1 + k for k in mixed + apart], range(1, b.ndim + 1))
        solved = solved.reshape(rounds, n_mixed, n_apart)  # [r, t_out, s]
        columns = jnp.moveaxis(solved, 1, 2).reshape(rounds * n_apart, n_mixed)[:n_mixed]  # [t_in, t_out]
        return columns.T.reshape(val_shape).astype(dtype)

    out_labels = [("s", k) if k in apart else ("o", k) for k in range(b.ndim)]
    in_labels = [("s", k) if k in apart else ("i", k) for k in range(b.ndim)]
    val_labels = [("o", k) for k in mixed] + [("i", k) for k in mixed]
    return [labelled(0, n_consts, ctx, out_labels, in_labels, val_labels, val_shape, inverse)]


RULES = {"dot_general": _dot_general, "cholesky": _cholesky, "triangular_solve": _triangular_solve,
         "custom_linear_solve": _custom_linear_solve}
