"""Batch axes of one equation: a conservative dependence analysis.

An equation is *separable* along an axis of size ``B`` when, for every
``b``, entry ``b`` of each output along its batch axis reads only entry
``b`` of its batched operands (and any part of the others): ``vmap`` of a
solve, of a factorization, of a sort.  Its partial with respect to a
batched operand is then block diagonal, one local Jacobian per batch entry
(:func:`ccjax.rules.opaque.dense_partials` stores it so, and computes all
``B`` blocks with one JVP or VJP per entry of a single slice).

:func:`batch_axes` walks the equation's jaxpr.  Each variable is either
unbatched (it reads no batched operand; any value) or batched along one
axis.  A primitive whose batch behaviour is not listed here, or whose
operands could mix batch entries (a contraction or reduction over the
batch axis, a gather across it, a loop, a user's custom derivative), makes
the equation not separable: the answer is None, never a guess.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from ccjax import _jaxpr

Axis = Optional[int]  # None: unbatched

#: Primitives acting entry by entry on operands of the output's shape (or scalars).
ELEMENTWISE = frozenset({
    "add", "add_any", "sub", "mul", "div", "rem", "pow", "max", "min", "neg", "sign", "floor", "ceil",
    "round", "is_finite", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan",
    "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh", "acosh", "atanh", "sqrt", "rsqrt", "cbrt",
    "abs", "integer_pow", "square", "erf", "erfc", "erf_inv", "lgamma", "digamma", "select_n", "eq", "ne",
    "lt", "le", "gt", "ge", "and", "or", "not", "xor", "convert_element_type", "stop_gradient", "clamp",
    "nextafter", "real", "imag", "conj", "complex", "copy", "copy_p", "reduce_precision", "shift_left",
    "shift_right_logical", "shift_right_arithmetic", "population_count",
})

#: Linear-algebra primitives batched over their leading axes, with the
#: number of trailing (core) axes of their first operand (an ``fft``'s are
#: its ``fft_lengths``).
LINALG_CORE = {
    "lu": 2, "cholesky": 2, "eigh": 2, "eig": 2, "triangular_solve": 2, "lu_pivots_to_permutation": 1,
    "geqrf": 2, "householder_product": 2, "qr": 2, "svd": 2, "schur": 2, "hessenberg": 2, "tridiagonal": 2,
    "tridiagonal_solve": 1,
}


def batch_axes(jaxpr, in_axes: Sequence[Axis], uniform: bool = False) -> Optional[list[Axis]]:
    """The batch axis of each output of ``jaxpr`` (open or closed; None:
    unbatched) given the batch axis of each input, or None where the jaxpr
    is not separable (see the module docstring).  Its constants are unbatched.

    ``uniform``: also None unless the jaxpr maps every batch entry by the
    same function: each unbatched operand is read whole by every entry (a
    matrix times batched columns, indices shared by a batched gather), never
    entry by entry along the batch axis (an elementwise product with an
    unbatched array of the batch size, a batched matrix per entry), so
    permuting the batch entries of the inputs permutes the outputs'."""
    if _jaxpr.is_closed_jaxpr(jaxpr):
        jaxpr = jaxpr.jaxpr
    env: dict = {v: None for v in jaxpr.constvars}
    env.update(zip(jaxpr.invars, in_axes))

    def read(v) -> Axis:
        return None if _jaxpr.is_literal(v) else env[v]

    for eqn in jaxpr.eqns:
        axes = [read(v) for v in eqn.invars]
        if all(a is None for a in axes):
            outs: Optional[list] = [None] * len(eqn.outvars)
        elif uniform and not _reads_unbatched_whole(eqn, axes):
            outs = None
        else:
            outs = _equation(eqn, axes, uniform)
        if outs is None:
            return None
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _shape(v) -> tuple:
    return tuple(v.aval.shape)


def _reads_unbatched_whole(eqn, axes: list) -> bool:
    """Whether every batch entry of ``eqn`` reads its unbatched operands
    (but those of one entry) whole, for :func:`batch_axes`'s ``uniform``."""
    unbatched = [v for v, a in zip(eqn.invars, axes) if a is None and math.prod(_shape(v)) > 1]
    if not unbatched:
        return True
    name, params = eqn.primitive.name, eqn.params
    batched = {a for a in axes if a is not None}
    if name in _jaxpr.CALL_PRIMITIVES or name == "custom_linear_solve":
        return True  # the body is analysed with ``uniform`` itself
    if name in ELEMENTWISE:  # unbatched operands stretched along the batch axis
        (k,) = batched if len(batched) == 1 else (None,)
        return k is not None and all(len(_shape(v)) == len(_shape(eqn.outvars[0])) and _shape(v)[k] == 1
                                     for v in unbatched)
    if name == "dot_general":  # the batched operand's axis free, the other one's matrix whole
        _, (lb, rb) = params["dimension_numbers"]
        ka, kb = axes
        return (ka is not None and ka not in lb) or (kb is not None and kb not in rb)
    if name == "gather":  # shared indices into a batched operand, or batched indices into a whole one
        k = axes[0]
        return k is None or k not in params["dimension_numbers"].operand_batching_dims
    if name == "triangular_solve":  # one matrix for right-hand sides batched along its unmixed axis
        ndim = len(_shape(eqn.invars[1]))
        return axes[0] is None and axes[1] is not None and axes[1] >= ndim - 2
    return False


def _equation(eqn, axes: list, uniform: bool = False) -> Optional[list]:
    name, params = eqn.primitive.name, eqn.params
    batched = {a for a in axes if a is not None}
    if name in ELEMENTWISE:  # operands of the output's shape, or stretched from size 1 along some axes
        out = _shape(eqn.outvars[0])
        k = batched.pop() if len(batched) == 1 else None
        if k is None or any(a is not None and not _stretches(_shape(v), out, k) for v, a in zip(eqn.invars, axes)):
            return None
        return [k] * len(eqn.outvars)
    if name == "custom_linear_solve":
        return _custom_linear_solve(eqn, axes, params, uniform)
    if name in _RULES:
        return _RULES[name](eqn, axes, params)
    if name in LINALG_CORE or name == "fft":
        return _equation_core(eqn, axes, len(params["fft_lengths"]) if name == "fft" else LINALG_CORE[name])
    if name in _jaxpr.CALL_PRIMITIVES:
        return batch_axes(_jaxpr.call_body(eqn)[0], axes, uniform)
    return None


def _equation_core(eqn, axes: list, core: int) -> Optional[list]:
    """A primitive batched over the leading axes of its operands, ``core``
    trailing axes of the first one its own."""
    batched = {a for a in axes if a is not None}
    leading = len(_shape(eqn.invars[0])) - core
    if len(batched) != 1 or min(batched) >= leading:
        return None
    return [batched.pop()] * len(eqn.outvars)


def _stretches(shape: tuple, out: tuple, k: int) -> bool:
    """Whether an operand of ``shape`` meets the output ``out`` entry by
    entry, stretched only along axes of size 1 and never along ``k``."""
    return len(shape) == len(out) and shape[k] == out[k] and all(n in (1, m) for n, m in zip(shape, out))


def _same(axes: list) -> Optional[int]:
    """The batch axis every batched operand shares, or None."""
    batched = {a for a in axes if a is not None}
    return batched.pop() if len(batched) == 1 else None


def _broadcast_in_dim(eqn, axes, params):
    k = axes[0]
    dims = params["broadcast_dimensions"]
    if k is None or _shape(eqn.invars[0])[k] != _shape(eqn.outvars[0])[dims[k]]:
        return None
    return [dims[k]]


def _reshape(eqn, axes, params):
    """The batch axis kept whole: an output axis of its size with as many
    entries before it (row-major order keeps each batch entry's slice)."""
    k, shape, out = axes[0], _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    if k is None or params.get("dimensions") is not None:
        return None
    before = math.prod(shape[:k])
    found = [j for j in range(len(out)) if out[j] == shape[k] and math.prod(out[:j]) == before]
    return found[:1] or None


def _triangular_solve(eqn, axes, params):
    """An unbatched matrix solved against right-hand sides batched along a
    leading axis, or along the axis the solve does not mix (the columns
    of ``a⁻¹ b``, the rows of ``b a⁻¹``)."""
    ka, kb = axes
    ndim = len(_shape(eqn.invars[1]))
    mixed = ndim - 2 if params["left_side"] else ndim - 1
    if ka is not None:
        return _equation_core(eqn, axes, 2)
    return None if kb == mixed else [kb]


def _squeeze(eqn, axes, params):
    k, dims = axes[0], params["dimensions"]
    if k is None or k in dims:
        return None
    return [k - sum(d < k for d in dims)]


def _transpose(eqn, axes, params):
    return None if axes[0] is None else [list(params["permutation"]).index(axes[0])]


def _reduce(eqn, axes, params):
    k = axes[0]
    dims = params["axes"]
    if k is None or len(eqn.invars) != 1 or k in dims:
        return None
    return [k - sum(d < k for d in dims)] * len(eqn.outvars)


def _cumulative(eqn, axes, params):
    k = axes[0]
    return None if k is None or k == params["axis"] else [k]


def _slice(eqn, axes, params):
    k, shape = axes[0], _shape(eqn.invars[0])
    strides = params.get("strides")
    if k is None or params["start_indices"][k] != 0 or params["limit_indices"][k] != shape[k] \
            or (strides is not None and strides[k] != 1):
        return None
    return [k]


def _dynamic_slice(eqn, axes, params):
    k = axes[0]
    if k is None or any(a is not None for a in axes[1:]) or params["slice_sizes"][k] != _shape(eqn.invars[0])[k]:
        return None
    return [k]


def _dynamic_update_slice(eqn, axes, params):
    k = _same(axes[:2])
    operand, update = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    if k is None or axes[0] != k or any(a is not None for a in axes[2:]) or update[k] != operand[k]:
        return None
    return [k]


def _pad(eqn, axes, params):
    k = axes[0]
    if k is None or axes[1] is not None or tuple(params["padding_config"][k]) != (0, 0, 0):
        return None
    return [k]


def _along_other_axis(key: str) -> Callable:
    """Concatenation, split, sort, reversal: every batched operand shares the
    batch axis, which is not the one the primitive works along."""
    def rule(eqn, axes, params):
        k = _same(axes)
        along = params[key]
        along = along if isinstance(along, (tuple, list)) else (along,)
        if k is None or k in along or any(a is not None and a != k for a in axes):
            return None
        return [k] * len(eqn.outvars)

    return rule


def _dot_general(eqn, axes, params):
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    lhs, rhs = _shape(eqn.invars[0]), _shape(eqn.invars[1])
    kl, kr = axes
    if kl is not None and kr is not None:  # both batched: along a shared batch dimension
        if kl not in lb or kr not in rb or list(lb).index(kl) != list(rb).index(kr):
            return None
        return [list(lb).index(kl)]
    k, contract, batch, free_offset = ((kl, lc, lb, len(lb)) if kl is not None
                                       else (kr, rc, rb, len(lb) + len(lhs) - len(lc) - len(lb)))
    if k in contract:
        return None
    if k in batch:
        return [list(batch).index(k)]
    free = [d for d in range(len(lhs if kl is not None else rhs)) if d not in contract and d not in batch]
    return [free_offset + free.index(k)]


def _gather(eqn, axes, params):
    dn = params["dimension_numbers"]
    k, ki = axes
    out_ndim = len(_shape(eqn.outvars[0]))
    out_batch = [d for d in range(out_ndim) if d not in dn.offset_dims]  # one per index batch axis
    if k is not None and k in dn.operand_batching_dims:  # vmap's gather: entry b reads operand entry b
        ib = dn.start_indices_batching_dims[list(dn.operand_batching_dims).index(k)]
        return None if ki not in (None, ib) else [out_batch[ib]]
    if k is not None:  # a whole offset axis, read at unbatched indices
        if ki is not None or k in dn.collapsed_slice_dims or k in dn.start_index_map \
                or params["slice_sizes"][k] != _shape(eqn.invars[0])[k]:
            return None
        kept = [d for d in range(len(_shape(eqn.invars[0])))
                if d not in dn.collapsed_slice_dims and d not in dn.operand_batching_dims]
        return [dn.offset_dims[kept.index(k)]]
    # unbatched operand, indices batched along one of their batch axes
    idx_ndim = len(_shape(eqn.invars[1]))
    return None if ki == idx_ndim - 1 else [out_batch[ki]]


def _scatter(eqn, axes, params):
    dn = params["dimension_numbers"]
    k, ki, ku = axes[0], axes[1], axes[2] if len(axes) > 2 else None
    if k is None or k not in dn.operand_batching_dims or len(eqn.invars) != 3:
        return None
    ib = dn.scatter_indices_batching_dims[list(dn.operand_batching_dims).index(k)]
    upd_ndim = len(_shape(eqn.invars[2]))
    upd_scatter = [d for d in range(upd_ndim) if d not in dn.update_window_dims]
    if ki not in (None, ib) or ku not in (None, upd_scatter[ib]):
        return None
    return [k]


def _custom_linear_solve(eqn, axes, params, uniform: bool = False):
    """``x = A⁻¹ b`` with ``A`` given by ``matvec``: separable along an axis
    of ``b`` when each of its functions (the matrix product, its transpose,
    the solves) maps a right-hand side batched along it to a solution
    batched along it, its own operands as they are (an unbatched ``b``,
    such as ``inv``'s identity, may be read as batched along any axis of
    the batch size)."""
    if len(eqn.invars) != sum(params["const_lengths"]) + 1:
        return None  # a pytree right-hand side
    rhs = _shape(eqn.invars[-1])
    if axes[-1] is not None:
        candidates = [axes[-1]]
    else:  # an unbatched right-hand side reads no batch entry: any axis of the batch size will do
        size = {_shape(v)[a] for v, a in zip(eqn.invars, axes) if a is not None}.pop()
        candidates = [k for k, n in enumerate(rhs) if n == size]
    return next(([k] for k in candidates if solves_apart(params, axes[:-1], k, uniform)), None)


def solves_apart(params: dict, const_axes: Sequence[Axis], k: int, uniform: bool = False) -> bool:
    """Whether every function of a ``custom_linear_solve`` (``params``; the
    matrix product, its transpose, the solves) maps a right-hand side
    batched along ``k`` to one batched along ``k``, its constants batched
    along ``const_axes`` (``uniform``: as for :func:`batch_axes`)."""
    start = 0
    for count, fn in zip(params["const_lengths"], params["jaxprs"]):
        if fn is not None and batch_axes(fn, list(const_axes[start:start + count]) + [k], uniform) != [k]:
            return False
        start += count
    return True


_RULES: dict[str, Callable] = {
    "broadcast_in_dim": _broadcast_in_dim, "reshape": _reshape, "squeeze": _squeeze, "transpose": _transpose,
    "reduce_sum": _reduce, "reduce_max": _reduce, "reduce_min": _reduce, "reduce_prod": _reduce,
    "reduce_and": _reduce, "reduce_or": _reduce, "argmax": _reduce, "argmin": _reduce,
    "cumsum": _cumulative, "cumprod": _cumulative, "cummax": _cumulative, "cummin": _cumulative,
    "cumlogsumexp": _cumulative, "slice": _slice, "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice, "pad": _pad,
    "concatenate": _along_other_axis("dimension"), "split": _along_other_axis("axis"),
    "sort": _along_other_axis("dimension"), "rev": _along_other_axis("dimensions"),
    "dot_general": _dot_general, "gather": _gather, "scatter-add": _scatter, "scatter": _scatter,
    "triangular_solve": _triangular_solve,
}
