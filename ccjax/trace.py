"""Trace a function into its computational :class:`~ccjax.graph.Graph`.

The function-facing half of the graph layer: argument handling exactly as
``jax.jacrev`` does it (``argnums``, ``has_aux``, pytrees, dtype checks),
``jax.make_jaxpr`` of the flattened function, and a bounded cache of graphs
keyed by the jaxpr's structure, so repeated calls reuse the graph, its plans
and its compiled runners.  Everything above (plans, orders, the public API)
starts from :func:`trace` or :func:`graph`; nothing here knows about orders.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ccjax._jaxpr import is_jax_value, structural_key
from ccjax.branches import eliminate_branch
from ccjax.graph import Graph, build_program
from ccjax.roll import roll_loops

_GRAPH_CACHE_SIZE = 256


class _LRU:
    """A small bounded mapping (the only state ccjax keeps between calls)."""

    def __init__(self, size: int):
        self.size = size
        self.data: collections.OrderedDict = collections.OrderedDict()

    def get(self, key):
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        return None

    def put(self, key, value) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)


_graphs = _LRU(_GRAPH_CACHE_SIZE)
_rollings = _LRU(_GRAPH_CACHE_SIZE)  # structural key -> Rolling, or False where nothing rolls


@dataclasses.dataclass
class Traced:
    closed: Any
    leaves: list
    in_tree: Any
    diff_leaves: tuple[int, ...]
    out_tree: Any
    n_out: int
    aux_tree: Any
    aux_static: dict

    @functools.cached_property
    def key(self) -> tuple:
        """The jaxpr's :func:`~ccjax._jaxpr.structural_key` (computed once)."""
        return structural_key(self.closed.jaxpr)


def _is_index(a) -> bool:
    """A Python or NumPy integer (not a bool): what JAX's transforms take as an argnum."""
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))


def _normalize_argnums(argnums, n_args: int) -> tuple[tuple[int, ...], bool]:
    # A NumPy integer is a single argnum, as for jax.grad and jax.jacfwd (JAX 0.10's
    # jax.jacrev alone wraps its result in a 1-tuple then, by an isinstance(int) check).
    single = _is_index(argnums)
    if single:
        nums = (argnums,)
    else:
        try:
            nums = tuple(argnums)
        except TypeError:
            raise TypeError(f"argnums must be an int or a tuple of ints, got {argnums!r}") from None
    if not nums:
        raise ValueError("argnums must not be empty")
    out = []
    for a in nums:
        if not _is_index(a):
            raise TypeError(f"argnums must be an int or a tuple of ints, got {argnums!r}")
        if not -n_args <= a < n_args:
            raise ValueError(f"argnums {argnums!r} out of range for a function called with {n_args} "
                             f"positional arguments")
        out.append(int(a) % n_args)
    return tuple(out), single


def check_inputs(leaves, diff_leaves, holomorphic: bool, allow_int: bool) -> None:
    """The input dtype checks of ``jax.jacrev``.

    Complex inputs without ``holomorphic`` are accepted, as ``jax.jacrev``
    accepts them: :func:`check_outputs` then requires real outputs, and the
    Jacobian of such a C -> R function is complex (JAX's convention).
    """
    for k in diff_leaves:
        dtype = jnp.result_type(leaves[k]) if not hasattr(leaves[k], "dtype") else leaves[k].dtype
        if holomorphic:
            if not jnp.issubdtype(dtype, jnp.complexfloating):
                raise TypeError(f"jacve with holomorphic=True requires inputs with complex dtype, but got {dtype}.")
        elif not jnp.issubdtype(dtype, jnp.inexact) and not allow_int:
            raise TypeError(f"jacve requires real-valued inputs (input dtype that is a sub-dtype of "
                            f"np.inexact), but got {dtype}. If you want to use Boolean- or integer-valued "
                            f"inputs, use vjp or set allow_int to True.")


def as_input(x, aval):
    """A traced input leaf as the compiled program takes it: arrays and
    tracers as they are, Python scalars and NumPy values as arrays of the
    traced dtype."""
    if isinstance(x, (jax.Array, jax.core.Tracer)):
        return x
    return jnp.asarray(x, dtype=aval.dtype)


def check_outputs(out_avals, holomorphic: bool) -> None:
    """The output dtype checks of ``jax.jacrev``."""
    for aval in out_avals:
        if holomorphic:
            if not jnp.issubdtype(aval.dtype, jnp.complexfloating):
                raise TypeError(f"jacve with holomorphic=True requires complex outputs, but got {aval.dtype}.")
        elif jnp.issubdtype(aval.dtype, jnp.complexfloating):
            raise TypeError(f"jacve requires real-valued outputs (output dtype that is a sub-dtype of "
                            f"np.floating), but got {aval.dtype}. For holomorphic differentiation, pass "
                            f"holomorphic=True. For differentiation of non-holomorphic functions involving "
                            f"complex outputs, use jax.vjp directly.")
        elif not jnp.issubdtype(aval.dtype, jnp.floating):
            raise TypeError(f"jacve requires real-valued outputs (output dtype that is a sub-dtype of "
                            f"np.floating), but got {aval.dtype}. For differentiation of functions with "
                            f"integer outputs, use jax.vjp directly.")


#: What JAX raises when Python needs the value of a staged (traced) array.
CONCRETIZATION_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError,
                         jax.errors.TracerArrayConversionError, jax.errors.NonConcreteBooleanIndexError)


def trace(fun: Callable, args: tuple, kwargs: dict, argnums, has_aux: bool) -> tuple[Traced, tuple, bool]:
    """``jax.make_jaxpr`` of ``fun`` over the leaves of the ``argnums`` arguments.

    Work on constants (closed-over parameters, flax initialisers, non-
    differentiated arguments) is staged into the jaxpr like everything else:
    it is an inactive part of the graph and runs inside the compiled runner,
    where it costs one XLA computation rather than an eager dispatch per
    operation.  Only when Python needs such a value (``if``, ``int()``,
    ``np.asarray``, boolean indexing on a non-differentiated array, which
    ``jax.jacrev`` allows) is ``fun`` traced again with constant work done
    eagerly (``jax.ensure_compile_time_eval``); ``fun`` then runs twice.
    """
    nums, single = _normalize_argnums(argnums, len(args))
    if len(set(nums)) != len(nums):
        raise ValueError(f"argnums must not repeat an argument, got {argnums!r}")
    # As in jax.jacrev, arguments not in argnums are closed over as they are
    # (a Python int may be a shape); only the differentiated ones are traced.
    leaves, in_tree = jax.tree_util.tree_flatten(tuple(args[k] for k in nums))
    try:
        closed, store = _make_jaxpr(fun, args, kwargs, nums, in_tree, leaves, has_aux, eager=False)
    except CONCRETIZATION_ERRORS:
        closed, store = _make_jaxpr(fun, args, kwargs, nums, in_tree, leaves, has_aux, eager=True)
    traced = Traced(closed, leaves, in_tree, tuple(range(len(leaves))), store["out"], store["n_out"],
                    store.get("aux"), store.get("aux_static", {}))
    return traced, nums, single


def _make_jaxpr(fun: Callable, args: tuple, kwargs: dict, nums: tuple, in_tree, leaves: list, has_aux: bool,
                eager: bool) -> tuple[Any, dict]:
    """The closed jaxpr of ``fun`` over ``leaves`` and what tracing learnt of
    its outputs (``out``/``aux`` trees, ``n_out``, static aux leaves).
    ``eager``: work on concrete values is done now, not staged."""
    store: dict = {}

    def flat_fun(*flat):
        full = list(args)
        for k, a in zip(nums, jax.tree_util.tree_unflatten(in_tree, flat)):
            full[k] = a
        with jax.ensure_compile_time_eval() if eager else contextlib.nullcontext():
            out = fun(*full, **kwargs)
        if has_aux:
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise TypeError("a function called with has_aux=True must return a pair (output, aux), "
                                f"got {type(out).__name__}")
            out, aux = out
            aux_leaves, store["aux"] = jax.tree_util.tree_flatten(aux)
            # Non-JAX aux leaves (strings, objects) are passed through untouched.
            store["aux_static"] = {k: a for k, a in enumerate(aux_leaves) if not is_jax_value(a)}
            aux_leaves = [a for a in aux_leaves if is_jax_value(a)]
        else:
            aux_leaves = []
        out_leaves, store["out"] = jax.tree_util.tree_flatten(out)
        store["n_out"] = len(out_leaves)
        return list(out_leaves) + list(aux_leaves)

    return jax.make_jaxpr(flat_fun)(*leaves), store


def graph_of(t: Traced, holomorphic: bool = False) -> Graph:
    """The graph of a traced function (from the bounded graph cache when the
    same jaxpr structure was seen).  ``holomorphic``: complex values are
    single vertices with complex partials (``jacve(holomorphic=True)``);
    otherwise every computation on active complex values is fused into real
    regions (see :func:`ccjax.graph.build_program`)."""
    key = (t.key, t.diff_leaves, t.n_out, bool(holomorphic))
    g = _graphs.get(key)
    if g is None or not g.pins_match(t.closed.consts):
        g = Graph(build_program(t.closed, t.diff_leaves, holomorphic), t.diff_leaves, t.n_out, t.closed.consts,
                  eliminate_branch=eliminate_branch)
        if g.program.cacheable:
            _graphs.put(key, g)
    return g


def auto_graph_of(t: Traced, holomorphic: bool = False) -> tuple[Graph, Traced]:
    """The graph ``order="auto"`` plans: that of ``t`` with its unrolled
    loops rolled into scans (:mod:`ccjax.roll`; programs of
    :data:`~ccjax.roll.ROLL_MIN_EQUATIONS` equations or more), and the
    traced program it comes from (its constants are the ones to run it
    with).  A rolling is reused for jaxprs of the same structure, as graphs
    are, where the graph is reusable too."""
    rolling = _rollings.get(t.key)
    if rolling is None:
        rolling = roll_loops(t.closed) or False
        if rolling is False:
            _rollings.put(t.key, False)
    if rolling is False:
        return graph_of(t, holomorphic), t
    rolled = dataclasses.replace(t, closed=rolling.closed(t.closed.consts))
    g = graph_of(rolled, holomorphic)
    if g.program.cacheable and rolling.reusable:  # else the rolled equations may hold this call's values
        _rollings.put(t.key, rolling)
    return g, rolled


def graph(fun: Callable, *args, argnums: Union[int, Sequence[int]] = 0, has_aux: bool = False,
          holomorphic: bool = False, **kwargs) -> Graph:
    """The computational :class:`~ccjax.graph.Graph` of ``fun`` at ``args``:
    the graph ``jacve(fun, argnums=argnums, has_aux=has_aux,
    holomorphic=holomorphic)`` eliminates, so an explicit order can be built
    from its ``eliminable`` vertices (with ``has_aux`` the aux values are not
    outputs of the graph)."""
    t, _, _ = trace(fun, args, kwargs, argnums, has_aux)
    return graph_of(t, holomorphic)


def auto_graph(fun: Callable, *args, argnums: Union[int, Sequence[int]] = 0, has_aux: bool = False,
               holomorphic: bool = False, **kwargs) -> Graph:
    """The graph ``jacve(fun, order="auto")`` plans at ``args``: that of
    :func:`graph` with unrolled loops rolled (:func:`auto_graph_of`).  Order
    searches run on it, so that ``order="auto"`` finds what they store."""
    t, _, _ = trace(fun, args, kwargs, argnums, has_aux)
    return auto_graph_of(t, holomorphic)[0]
