"""Structured partial Jacobians: one algebra for execution and for cost.

:mod:`ccjax.structure.core` defines :class:`Structure` (symbols for deltas,
replications and stored values) and plans products, sums and dense forms of
structures without bands; :mod:`ccjax.structure.bands` plans them when a
structure carries bands (shifted data); :mod:`ccjax.structure.terms` keeps
a sum as its terms when adding them up would store more entries.  The
functions here take any structure and pick the one that applies; their
plans all have ``result``, ``mults`` (exactly the multiplications ``apply``
performs) and ``apply``.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp

from ccjax.structure import bands, core, selection, terms
from ccjax.structure.bands import deband_plan
from ccjax.structure.core import (Axes, Band, ProductPlan, ReachMasked, Structure, SumPlan, UnionFind, clip_range,
                                  common_chain, contract, dense, entry_positions, entry_values, make_structure, reshape,
                                  split_sizes, structure_from_labels, transpose, unit)
from ccjax.structure.selection import Selection, is_selection
from ccjax.structure.terms import Terms, is_terms, parts_of, values_of

__all__ = ["Axes", "Band", "ProductPlan", "ReachMasked", "Structure", "SumPlan", "UnionFind", "clip_range",
           "common_chain", "contract", "deband_plan", "dense", "densify_plan", "eager_sum_plan", "entry_count",
           "entry_indices", "entry_positions", "entry_values", "is_selection", "is_terms", "make_structure",
           "parts_of", "product_plan", "reshape", "Selection", "split_sizes", "structure_from_labels", "sum_plan",
           "Terms", "to_bcoo", "to_dense", "transpose", "unit", "values_of"]


@functools.lru_cache(maxsize=65536)
def product_plan(outer, inner):
    """Plan ``outer ∘ inner``; ``outer.in_shape`` must equal ``inner.out_shape``."""
    if outer.in_shape != inner.out_shape:
        raise ValueError(f"shape mismatch in product: {outer.in_shape} vs {inner.out_shape}")
    if is_terms(outer) or is_terms(inner):
        return terms.product(outer, inner, product_plan, eager_sum_plan, entry_count)
    if is_selection(outer) or is_selection(inner):
        return selection.product(outer, inner, product_plan)
    plan = bands.product(outer, inner) if outer.bands or inner.bands else core.product_plan(outer, inner)
    if getattr(plan, "on_dense_forms", False) and (outer.val is not None or inner.val is not None):
        return ReachMasked(plan, outer, inner)
    return plan


@functools.lru_cache(maxsize=65536)
def sum_plan(a, b, lazy: bool = True):
    """Plan ``a + b`` (same ``out_shape`` and ``in_shape``); ``result`` is None
    when the sum is structurally zero.  With ``lazy``, a sum that would
    store more entries than its terms keeps them apart
    (:class:`~ccjax.structure.terms.Terms`); without, no :class:`Terms`
    is made."""
    if a.out_shape != b.out_shape or a.in_shape != b.in_shape:
        raise ValueError(f"cannot add partials of shapes {a.out_shape, a.in_shape} and {b.out_shape, b.in_shape}")
    if lazy:
        return terms.sum_(a, b, eager_sum_plan)
    if is_terms(a) or is_terms(b):
        return terms.collapsed(a, b, eager_sum_plan, eager_sum_plan)
    return eager_sum_plan(a, b)


@functools.lru_cache(maxsize=65536)
def eager_sum_plan(a, b):
    """Plan ``a + b`` of two structures (no :class:`Terms`) as one structure."""
    if is_selection(a) or is_selection(b):
        return selection.sum_(a, b)
    empty_a, empty_b = core.entry_count(a) == 0, core.entry_count(b) == 0
    if empty_a or empty_b:  # an empty band: a sum would store its zeros
        return terms.KeepPlan(a if empty_b else b, empty_b)
    return bands.sum_(a, b) if a.bands or b.bands else core.sum_plan(a, b)


def densify_plan(st: Structure):
    """Plan the fully dense form of ``st`` (size-1 axes stay symbol-free)."""
    return bands.densify(st)


def to_dense(st, value, dtype=None):
    """The partial as a dense array of shape ``out_shape + in_shape``."""
    if is_terms(st):
        return terms.to_dense(st, value, dtype, to_dense)
    if is_selection(st):
        return selection.to_dense(st, value, jnp.result_type(float) if dtype is None else dtype)
    dtype = dtype if dtype is not None else (jnp.result_type(float) if value is None else value.dtype)
    return reshape(densify_plan(st).apply(value, dtype), st.out_shape + st.in_shape)


def to_bcoo(st, value, dtype=None):
    """The partial as a ``jax.experimental.sparse.BCOO`` of shape
    ``out_shape + in_shape`` holding exactly its structural nonzeros."""
    if is_terms(st):
        return terms.to_bcoo(st, value, dtype, to_bcoo, core.entry_indices)
    if is_selection(st):
        return selection.to_bcoo(st, value, jnp.result_type(float) if dtype is None else dtype)
    return core.to_bcoo(st, value, dtype)


def entry_indices(st):
    """The ``(nse, n_axes)`` indices of ``st``'s structural nonzeros, in the
    order :func:`to_bcoo` stores them (not for selections: their indices
    are known at run time)."""
    return terms.entry_indices(st, core.entry_indices) if is_terms(st) else core.entry_indices(st)


def entry_count(st) -> int:
    """How many structural nonzeros ``st`` has (the ``nse`` of :func:`to_bcoo`)."""
    return terms.entry_count(st, core.entry_indices) if is_terms(st) else core.entry_count(st)
