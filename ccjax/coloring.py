"""Compressed seeds for JAX's modes: colouring a known sparsity pattern.

Two columns of a Jacobian whose nonzeros share no row can be pushed through
forward mode as one tangent, their sum: each row of the compressed result
holds the entry of the one column of that colour it has (Curtis, Powell
and Reid, 1974).  Alike, rows that share no column pull back as one
cotangent in reverse mode.  With ``k`` colours the mode pushes ``k`` seeds
instead of ``n_in`` (``n_out``): a band of 11 diagonals on a periodic grid
of 1,024 points takes 12.

The pattern is an elimination plan's: the structural nonzeros of its final
blocks (less the entries :func:`ccjax.eliminate.structural_keep` finds
always zero), which the elimination computes exactly, so every entry
outside it is zero in the Jacobian and the compressed mode reads each
entry alone.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from ccjax.eliminate import Plan, final_entries, structural_keep
from ccjax.graph import Graph
from ccjax.structure import entry_indices, is_selection
from ccjax.structure.core import flat_positions

#: Patterns of more structural nonzeros than this are not coloured: listing
#: them takes time at every first call (a ``cumsum`` of 1,024 entries,
#: 524,800 nonzeros and no colouring that saves a seed: 0.4 s), and the
#: compressed modes pay off where few entries are written (the benchmark's
#: coloured programs have 1,000-33,000).
MAX_ENTRIES = 1 << 16


@dataclasses.dataclass(frozen=True, eq=False)
class Pattern:
    """Where a Jacobian may be nonzero.

    ``blocks``: per Jacobian block, output-major as
    :func:`ccjax.eliminate.write_jacobian` lists them, the flat ``(row,
    column)`` positions of its structural nonzeros in the block seen as a
    matrix (``prod(out_shape) x prod(in_shape)``; row-major order,
    distinct), or None for a zero block; ``rows``, ``cols``: the same
    entries in the whole Jacobian (outputs and differentiated inputs
    flattened and concatenated in order); ``shape``: its ``(rows,
    columns)``."""

    blocks: tuple
    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]

    def least_colors(self, mode: str) -> int:
        """A lower bound of the colours of ``mode``: the most nonzeros of
        one row (``"fwd"``) or column (``"rev"``)."""
        lines = self.rows if mode == "fwd" else self.cols
        return int(np.bincount(lines).max()) if len(lines) else 0


@dataclasses.dataclass(frozen=True, eq=False)
class Coloring:
    """Seeds of one compressed mode: ``mode`` ``"fwd"`` (columns coloured)
    or ``"rev"`` (rows); ``colors``: the colour of each column (row) of the
    whole Jacobian (:class:`Pattern`); ``count``: how many colours;
    ``pattern``: the entries read."""

    mode: str
    colors: np.ndarray
    count: int
    pattern: Pattern


def pattern(graph: Graph, plan: Plan) -> Optional[Pattern]:
    """The structural nonzeros of the elimination ``plan``'s final blocks,
    less the entries :func:`~ccjax.eliminate.structural_keep` finds always
    zero where its probe runs without compiling; None when some block's
    entries are known only at run time (a selection at computed indices,
    or at constant ones the probe did not run) or there are more than
    :data:`MAX_ENTRIES`."""
    if sum(final_entries(plan.structures[slot]) for slot in set(plan.final.values())) > MAX_ENTRIES:
        return None  # before the probe: it runs the plan
    kept = structural_keep(graph, plan, compile=False) or {}
    prog = graph.program
    out_sizes = [math.prod(prog.avals[prog.outputs[k]].shape) for k in range(len(graph.outputs))]
    in_shapes = [tuple(prog.avals[prog.inputs[leaf]].shape) for leaf in graph.diff_leaves]
    out_offsets = np.cumsum([0] + out_sizes)
    in_offsets = np.cumsum([0] + [math.prod(s) for s in in_shapes])
    blocks, rows, cols = [], [], []
    for k, out_vertex in enumerate(graph.outputs):
        for leaf, in_vertex in enumerate(graph.inputs):
            slot = plan.final.get((in_vertex, out_vertex))
            if slot is None:
                blocks.append(None)
                continue
            st = plan.structures[slot]
            if slot in kept:
                indices = kept[slot][1]
            elif is_selection(st):
                return None
            else:
                indices = entry_indices(st)
            indices = np.asarray(indices, np.int64)
            n_out_axes = len(st.out_shape)
            width = int(in_offsets[leaf + 1] - in_offsets[leaf])
            flat = np.unique(flat_positions(indices[:, :n_out_axes], st.out_shape) * width
                             + flat_positions(indices[:, n_out_axes:], st.in_shape))
            block_rows, block_cols = flat // width, flat % width
            blocks.append((block_rows, block_cols))
            rows.append(out_offsets[k] + block_rows)
            cols.append(in_offsets[leaf] + block_cols)
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return Pattern(tuple(blocks), rows, cols, (int(out_offsets[-1]), int(in_offsets[-1])))


def greedy_colors(rows: np.ndarray, cols: np.ndarray, n_cols: int) -> np.ndarray:
    """A colour per column, ``0 <= colour < k``, such that no two columns
    with a nonzero in one row share one: each column in turn takes the
    smallest colour no column before it in one of its rows has.  ``rows``,
    ``cols``: the nonzeros (distinct pairs)."""
    order = np.lexsort((rows, cols))
    rows, cols = rows[order].tolist(), np.asarray(cols)[order]
    bounds = np.searchsorted(cols, np.arange(n_cols + 1)).tolist()
    used: dict = {}  # row -> bit mask of the colours its columns took so far
    colors = []
    for j in range(n_cols):
        mine = rows[bounds[j]:bounds[j + 1]]
        taken = 0
        for r in mine:
            taken |= used.get(r, 0)
        color = (~taken & (taken + 1)).bit_length() - 1  # the lowest clear bit
        bit = 1 << color
        for r in mine:
            used[r] = used.get(r, 0) | bit
        colors.append(color)
    return np.asarray(colors, np.int64)


def is_coloring(colors: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> bool:
    """Whether no row holds two columns of one colour (``rows``, ``cols``:
    distinct nonzeros)."""
    keys = rows.astype(np.int64) * (int(colors.max()) + 1) + colors[cols]
    return len(np.unique(keys)) == len(keys)


#: Cyclic colourings tried below the greedy one's count.
CYCLIC_TRIES = 64


def coloring(pat: Pattern, mode: str) -> Optional[Coloring]:
    """A colouring of ``pat``'s columns (``mode="fwd"``) or rows
    (``"rev"``): the greedy one (:func:`greedy_colors`), or the cyclic one
    (column ``j`` takes ``j mod k``) of fewest colours that is one.  On a
    periodic band greedy colours pile up where the band wraps around (a
    band of 7 diagonals on 256 points: 11 colours, cyclic 8).  None where
    no colouring saves a seed."""
    rows, cols = (pat.rows, pat.cols) if mode == "fwd" else (pat.cols, pat.rows)
    n = pat.shape[1] if mode == "fwd" else pat.shape[0]
    least = max(1, pat.least_colors(mode))
    if n == 0 or least >= n:
        return None
    colors = greedy_colors(rows, cols, n)
    count = int(colors.max()) + 1
    for k in range(least, min(count, least + CYCLIC_TRIES)):
        cyclic = np.arange(n) % k
        if is_coloring(cyclic, rows, cols):
            colors, count = cyclic, k
            break
    return Coloring(mode, colors, count, pat) if count < n else None


def multi_indices(flat: np.ndarray, shape: tuple) -> np.ndarray:
    """The ``(n, len(shape))`` indices of row-major flat positions in
    ``shape`` (the inverse of :func:`ccjax.structure.core.flat_positions`)."""
    return np.stack(np.unravel_index(flat, shape), axis=1) if shape else np.zeros((len(flat), 0), np.int64)
