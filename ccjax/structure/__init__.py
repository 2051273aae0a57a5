"""Structured partial Jacobians: one algebra for execution and for cost.

:mod:`ccjax.structure.core` defines :class:`Structure` (symbols for deltas,
replications and stored values) and plans products, sums and dense forms of
structures without bands; :mod:`ccjax.structure.bands` plans them when a
structure carries bands (shifted data).  The functions here take any
structure and pick the one that applies; their plans all have ``result``,
``mults`` (exactly the multiplications ``apply`` performs) and ``apply``.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp

from ccjax.structure import bands, core, selection
from ccjax.structure.bands import deband_plan
from ccjax.structure.core import (Axes, Band, ProductPlan, ReachMasked, Structure, SumPlan, UnionFind, clip_range,
                                  common_chain, contract, dense, entry_count, entry_indices, make_structure, reshape,
                                  split_sizes, structure_from_labels, transpose, unit)
from ccjax.structure.selection import Selection, is_selection

__all__ = ["Axes", "Band", "ProductPlan", "ReachMasked", "Structure", "SumPlan", "UnionFind", "clip_range",
           "common_chain", "contract", "deband_plan", "dense", "densify_plan", "entry_count", "entry_indices",
           "is_selection", "make_structure", "product_plan", "reshape", "Selection", "split_sizes",
           "structure_from_labels", "sum_plan", "to_bcoo", "to_dense", "transpose", "unit"]


@functools.lru_cache(maxsize=65536)
def product_plan(outer: Structure, inner: Structure):
    """Plan ``outer ∘ inner``; ``outer.in_shape`` must equal ``inner.out_shape``."""
    if outer.in_shape != inner.out_shape:
        raise ValueError(f"shape mismatch in product: {outer.in_shape} vs {inner.out_shape}")
    if is_selection(outer) or is_selection(inner):
        return selection.product(outer, inner)
    plan = bands.product(outer, inner) if outer.bands or inner.bands else core.product_plan(outer, inner)
    if getattr(plan, "on_dense_forms", False) and (outer.val is not None or inner.val is not None):
        return ReachMasked(plan, outer, inner)
    return plan


@functools.lru_cache(maxsize=65536)
def sum_plan(a: Structure, b: Structure):
    """Plan ``a + b`` (same ``out_shape`` and ``in_shape``); ``result`` is None
    when the sum is structurally zero."""
    if a.out_shape != b.out_shape or a.in_shape != b.in_shape:
        raise ValueError(f"cannot add partials of shapes {a.out_shape, a.in_shape} and {b.out_shape, b.in_shape}")
    if is_selection(a) or is_selection(b):
        return selection.sum_(a, b)
    return bands.sum_(a, b) if a.bands or b.bands else core.sum_plan(a, b)


def densify_plan(st: Structure):
    """Plan the fully dense form of ``st`` (size-1 axes stay symbol-free)."""
    return bands.densify(st)


def to_dense(st: Structure, value, dtype=None):
    """The partial as a dense array of shape ``out_shape + in_shape``."""
    if is_selection(st):
        return selection.to_dense(st, value, jnp.result_type(float) if dtype is None else dtype)
    dtype = dtype if dtype is not None else (jnp.result_type(float) if value is None else value.dtype)
    return reshape(densify_plan(st).apply(value, dtype), st.out_shape + st.in_shape)


def to_bcoo(st, value, dtype=None):
    """The partial as a ``jax.experimental.sparse.BCOO`` of shape
    ``out_shape + in_shape`` holding exactly its structural nonzeros."""
    if is_selection(st):
        return selection.to_bcoo(st, value, jnp.result_type(float) if dtype is None else dtype)
    return core.to_bcoo(st, value, dtype)
