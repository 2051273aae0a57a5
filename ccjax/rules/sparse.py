"""``jax.experimental.sparse`` products, rewritten for the graph.

A ``bcoo_dot_general`` (``A @ x`` with ``A`` a BCOO matrix) has no
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

from typing import Callable, Optional, Sequence

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

    def product(data, indices, rhs):
        moved = lax.transpose(rhs, (*rhs_contract, *rhs_free))
        picked = moved.at[tuple(indices[:, d] for d in lhs_contract)].get(mode="fill", fill_value=0)
        terms = (data.astype(out_dtype).reshape(data.shape + (1,) * len(rhs_free))
                 * picked.astype(out_dtype))  # (nse, *rhs free)
        if not lhs_free:
            return jnp.sum(terms, axis=0)
        at = tuple(indices[:, d] for d in lhs_free)
        return jnp.zeros(out_shape, out_dtype).at[at].add(terms, mode="drop")

    return product


_DECOMPOSITIONS = {"bcoo_dot_general": _bcoo_dot_general}


def decomposition(name: str, params: dict, in_avals: Sequence) -> Optional[Callable]:
    """A function of the equation's operands computing its result with
    primitives that have structured rules, or None (keep the equation)."""
    build = _DECOMPOSITIONS.get(name)
    return None if build is None else build(params, in_avals)
