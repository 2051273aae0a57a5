"""``jax.experimental.sparse`` products, rewritten for the graph.

A ``bcoo_dot_general`` (``A @ x`` with ``A`` a BCOO matrix; a BCSR
matrix's ``bcsr_dot_general`` alike, its rows found from ``indptr``) has no
structured partial: as one opaque equation its local Jacobian with respect
to ``x`` is dense, ``(out size) x (x size)``, although it is ``A`` itself,
with ``nse`` entries.  The graph inlines the same product written as
JAX primitives instead (:func:`decomposition`):

    out[i_free, r_free] = sum_k data[k] * rhs[idx[k, contracted], r_free]

over the stored entries ``k``, i.e. a gather of ``rhs`` at the contracted
indices, a product with ``data`` and a scatter-add at the free indices.
With the indices known at trace time (a matrix closed over by the
function), the gather and the scatter-add keep their selection structure,
so the elimination multiplies and stores ``nse`` entries per column,
not a dense block.  The values are the product's, up to the order of the
additions; the derivative with respect to ``data`` and ``rhs`` is JAX's
(the product is bilinear).  Out-of-range indices (BCOO padding) read
zeros and write nothing, as JAX's own lowering does.

Only the plain layout is rewritten: no batch dimensions in the indices, no
dense dimensions in the data, no batch dimensions in the product; any
other layout stays one opaque equation (an exact dense partial).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _bcoo_dot_general(params: dict, in_avals: Sequence) -> Optional[Callable]:
    data, indices, rhs = in_avals
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = params["dimension_numbers"]
    shape = tuple(params["lhs_spinfo"].shape)
    if lhs_batch or rhs_batch or data.ndim != 1 or indices.ndim != 2 or indices.shape[1] != len(shape):
        return None
    lhs_contract, rhs_contract = tuple(lhs_contract), tuple(rhs_contract)
    lhs_free = [d for d in range(len(shape)) if d not in lhs_contract]
    rhs_free = [d for d in range(rhs.ndim) if d not in rhs_contract]
    out_dtype = params.get("preferred_element_type") or np.result_type(data.dtype, rhs.dtype)
    out_shape = tuple(shape[d] for d in lhs_free) + tuple(rhs.shape[d] for d in rhs_free)

    contract_shape = tuple(shape[d] for d in lhs_contract)
    free_shape = tuple(shape[d] for d in lhs_free)
    width = math.prod(rhs.shape[d] for d in rhs_free)  # entries of rhs each stored entry multiplies

    def product(data, indices, rhs):
        # Element indices (no gather or scatter windows), so that both keep their selection structure
        # (a row-window gather times a dense block would densify).
        within = jnp.arange(width, dtype=indices.dtype)
        read = _flat(indices, lhs_contract, contract_shape)[:, None] * width + within  # (nse, width)
        moved = lax.transpose(rhs, (*rhs_contract, *rhs_free)).reshape(-1)
        picked = moved.at[read].get(mode="fill", fill_value=0)
        terms = data.astype(out_dtype)[:, None] * picked.astype(out_dtype)
        if not lhs_free:
            return jnp.sum(terms, axis=0).reshape(out_shape)
        write = _flat(indices, lhs_free, free_shape)[:, None] * width + within
        return jnp.zeros(math.prod(out_shape), out_dtype).at[write].add(terms, mode="drop").reshape(out_shape)

    return product


def _bcsr_dot_general(params: dict, in_avals: Sequence) -> Optional[Callable]:
    """A BCSR matrix's product: its rows from ``indptr`` (entry ``k`` lies
    in row ``#{i >= 1: indptr[i] <= k}``), then the BCOO product."""
    data, indices, indptr, rhs = in_avals
    if data.ndim != 1 or indices.ndim != 1 or indptr.ndim != 1 or len(params["lhs_spinfo"].shape) != 2:
        return None
    coo = _bcoo_dot_general(params, (data, jax.ShapeDtypeStruct((indices.shape[0], 2), indices.dtype), rhs))
    if coo is None:
        return None

    def product(data, indices, indptr, rhs):
        starts = jnp.zeros(indices.shape, indices.dtype).at[indptr[1:-1]].add(1, mode="drop")
        rows = jnp.cumsum(starts)
        return coo(data, jnp.stack([rows, indices], axis=1), rhs)

    return product


def _flat(indices, dims: Sequence[int], shape: tuple):
    """Row-major flat positions of ``indices[:, dims]`` in ``shape``; an
    entry out of range in any dimension (BCOO padding) gets ``prod(shape)``,
    out of range for every read and write."""
    flat = jnp.zeros(indices.shape[:1], indices.dtype)
    valid = jnp.ones(indices.shape[:1], bool)
    for d, size in zip(dims, shape):
        flat = flat * size + indices[:, d]
        valid = valid & (indices[:, d] >= 0) & (indices[:, d] < size)
    return jnp.where(valid, flat, math.prod(shape))


_DECOMPOSITIONS = {"bcoo_dot_general": _bcoo_dot_general, "bcsr_dot_general": _bcsr_dot_general}


def decomposition(name: str, params: dict, in_avals: Sequence) -> Optional[Callable]:
    """A function of the equation's operands computing its result with
    primitives that have structured rules, or None (keep the equation)."""
    build = _DECOMPOSITIONS.get(name)
    return None if build is None else build(params, in_avals)
