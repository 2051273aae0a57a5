"""Types shared by all rules."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from ccjax.structure import Structure, structure_from_labels

ValueFn = Callable[[Sequence[Any], Sequence[Any]], Any]


@dataclasses.dataclass(frozen=True)
class RuleContext:
    """One equation as a rule sees it.

    ``in_avals``/``out_avals``: abstract values of operands and results;
    ``active``: operand slots whose partials are wanted; ``eval``: calls the
    primitive on concrete operands (used by rules that lean on JAX's AD);
    ``reverse_only``: the equation supports reverse-mode AD only;
    ``same_var``: the active slots grouped by the variable they read (a rule
    may give each slot its own partial; they are summed on the edge);
    ``forward_exact``: JAX's forward mode of the equation equals its reverse
    mode at every input (see :func:`ccjax.graph.forward_matches_reverse`);
    ``static(slot)``: the operand's value when it is known when the graph is
    built (a constant, or computed from constants only), else None; the
    graph is then valid only for that value (see :class:`ccjax.graph.Graph`);
    ``zeros(slot)``: where that value is zero (a boolean array), else None;
    it pins the graph only where it finds a zero, since a partial built
    without one is valid for every value;
    ``same_value(slot)``: a key of the operand's value (equal keys, equal
    values: a selection's key names its index operand by it; asked only by
    the rules that need it, since keying a build-time value pins it);
    ``eliminate_branch(closed_jaxpr, diff, n_outputs)``: a branch of the
    equation built as a graph and eliminated
    (:func:`ccjax.branches.eliminate_branch`; None where the graph was built
    without it); ``in_branch``: the equation lies in a branch of a ``cond``,
    whose rule joins the branches' final partials only where they are
    structures (not selections).
    """

    name: str
    params: dict
    in_avals: tuple
    out_avals: tuple
    active: tuple[int, ...]
    eval: Callable[..., list]
    reverse_only: bool = False
    same_var: tuple[tuple[int, ...], ...] = ()  # groups of active slots reading one variable
    forward_exact: bool = False
    static: Callable[[int], Optional[np.ndarray]] = lambda slot: None
    same_value: Optional[Callable[[int], Any]] = None
    eliminate_branch: Optional[Callable[..., Any]] = None
    in_branch: bool = False
    zeros: Callable[[int], Optional[np.ndarray]] = lambda slot: None


#: The name of a node that evaluates a group of equations on complex values
#: as one real-to-real function (:func:`ccjax.graph.fuse_complex`).
REGION = "ccjax_complex_region"


@dataclasses.dataclass(frozen=True)
class Partial:
    """``∂out[out]/∂in[slot]``: its structure and how to compute its values.

    ``values(invals, outvals)`` returns an array laid out as
    ``structure.val`` (or None for a unit partial).  Partials of one
    equation computed together (e.g. one forward-mode Jacobian of every
    output) share ``shared``: ``values`` is then ``pick(shared(...))``, and
    an executor evaluating several of them calls ``shared`` once.

    ``nonzero()``, when given, returns a boolean array laid out as the values
    that is False where a stored value is zero at every input (a 0/1
    selection matrix, a union of branches), or None: the structural zeros
    that ``output="sparse"`` leaves out
    (:func:`ccjax.eliminate.structural_keep`).  Without it, or where it
    returns None, every stored value may be nonzero.  ``ones``: the values
    are exactly ``nonzero()`` as 0/1 numbers at every input (a selection
    matrix), not only zero where it is False.  ``constant``: ``values``
    does not read the operands (a selection at indices known when the graph
    is built), so a probe of the plan may run it as it is.  ``indices()``,
    for a selection at indices known when the graph is built whose stored
    values are not (a convolution's kernel entries), returns its index
    arrays, so a probe may stand in for the values alone.
    """

    out: int
    slot: int
    structure: Structure
    values: Optional[ValueFn]
    shared: Optional[ValueFn] = None
    pick: Optional[Callable[[Any], Any]] = None
    nonzero: Optional[Callable[[], np.ndarray]] = None
    ones: bool = False
    constant: bool = False
    indices: Optional[Callable[[], tuple]] = None


Rule = Callable[[RuleContext], list]


def labelled(out: int, slot: int, ctx: RuleContext, out_labels, in_labels, val_labels=None,
             val_shape=None, values: Optional[ValueFn] = None, sign: int = 1, bands=(),
             nonzero: Optional[Callable[[], Any]] = None, ones: bool = False) -> Partial:
    """Make a :class:`Partial` from one label per axis (see
    :func:`ccjax.structure.structure_from_labels`); ``values`` returns the
    value array in its natural shape ``val_shape``, ``nonzero()`` (optional,
    same shape) where it can be nonzero, ``ones`` whether the values are
    just that (see :class:`Partial`)."""
    out_shape = tuple(ctx.out_avals[out].shape)
    in_shape = tuple(ctx.in_avals[slot].shape)
    st, prepare = structure_from_labels(out_shape, in_shape, out_labels, in_labels, val_labels,
                                        val_shape, sign, bands)
    if prepare is None:
        return Partial(out, slot, st, None)
    return Partial(out, slot, st, lambda ins, outs: prepare(values(ins, outs)),
                   nonzero=None if nonzero is None else constant_mask(lambda: prepare(nonzero())), ones=ones)


def constant_nonzero(ctx: RuleContext, slot: int) -> Optional[Callable[[], np.ndarray]]:
    """Where operand ``slot``, a constant with zeros (a mask, a difference
    matrix built dense), is nonzero: the ``nonzero`` of a partial whose
    values it is (see :class:`Partial`); None when it is no constant or has
    no zero."""
    zeros = ctx.zeros(slot)
    return None if zeros is None or not zeros.any() else (lambda: ~zeros)


def constant_mask(fn: Callable[[], Any]) -> Callable[[], Optional[np.ndarray]]:
    """``fn`` computed once, eagerly (also inside an outer trace), as a NumPy
    boolean array (None stays None)."""
    @functools.cache
    def mask():
        with jax.ensure_compile_time_eval():
            found = fn()
            return None if found is None else np.asarray(found).astype(bool)

    return mask


def run_apart(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a thread of its own, so outside the caller's traces,
    ``jax.ensure_compile_time_eval`` and ``jax.disable_jit`` (all
    thread-local in JAX): a jitted program inside ``fn`` is staged and
    compiled whole and runs now, where under ``ensure_compile_time_eval``
    every operation on constants would be compiled and run on its own.
    The caller's ``jax.enable_x64`` setting (thread-local too) is kept;
    other thread-local settings (default device, matmul precision) are
    not, so ``fn`` serves structural checks, not values a Jacobian uses."""
    x64 = bool(jax.config.jax_enable_x64)

    def apart_fn():
        with jax.enable_x64(x64):
            return fn()

    with concurrent.futures.ThreadPoolExecutor(1) as apart:
        return apart.submit(apart_fn).result()


def identity_labels(ndim: int) -> list:
    return [("ax", k) for k in range(ndim)]
