"""Public transforms: :func:`jacve`, :func:`graph`, :func:`cost`.

``jacve`` mirrors ``jax.jacrev`` call for call: same arguments, same checks,
same output pytree layout, shapes and dtypes.  Internally it traces the
function to a jaxpr, builds (or finds in a bounded cache) the
:class:`~ccjax.graph.Graph` and the elimination :class:`~ccjax.eliminate.Plan`
for the requested order, evaluates the primal program and runs the plan.
Everything after tracing is ordinary JAX, so the result composes with
``jit``, ``vmap``, ``grad`` and nested ``jacve``.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ccjax.eliminate import LAYOUTS, CostReport, OrderError, Plan, execute, plan_elimination, validate_order
from ccjax._jaxpr import is_jax_value, structural_key
from ccjax.graph import Graph, build_program
from ccjax.orders import resolve_order

OrderSpec = Union[str, Sequence[int]]

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


@dataclasses.dataclass
class _Traced:
    closed: Any
    leaves: list
    in_tree: Any
    diff_leaves: tuple[int, ...]
    out_tree: Any
    n_out: int
    aux_tree: Any
    aux_static: dict


def _normalize_argnums(argnums, n_args: int) -> tuple[tuple[int, ...], bool]:
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    if not nums:
        raise ValueError("argnums must not be empty")
    out = []
    for a in nums:
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
            raise TypeError(f"argnums must be an int or a tuple of ints, got {argnums!r}")
        if not -n_args <= a < n_args:
            raise ValueError(f"argnums {argnums!r} out of range for a function called with {n_args} "
                             f"positional arguments")
        out.append(int(a) % n_args)
    return tuple(out), single


def _check_inputs(leaves, diff_leaves, holomorphic: bool, allow_int: bool) -> None:
    for k in diff_leaves:
        dtype = jnp.result_type(leaves[k]) if not hasattr(leaves[k], "dtype") else leaves[k].dtype
        if holomorphic:
            if not jnp.issubdtype(dtype, jnp.complexfloating):
                raise TypeError(f"jacve with holomorphic=True requires inputs with complex dtype, but got {dtype}.")
        elif jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(f"jacve requires real-valued inputs (got {dtype}); for holomorphic functions "
                            f"pass holomorphic=True.")
        elif not jnp.issubdtype(dtype, jnp.inexact) and not allow_int:
            raise TypeError(f"jacve requires real-valued inputs (input dtype that is a sub-dtype of "
                            f"np.inexact), but got {dtype}. If you want to use Boolean- or integer-valued "
                            f"inputs, use vjp or set allow_int to True.")


def _check_outputs(out_avals, holomorphic: bool) -> None:
    for aval in out_avals:
        if holomorphic:
            if not jnp.issubdtype(aval.dtype, jnp.complexfloating):
                raise TypeError(f"jacve with holomorphic=True requires complex outputs, but got {aval.dtype}.")
        elif not jnp.issubdtype(aval.dtype, jnp.floating):
            raise TypeError(f"jacve requires real-valued outputs (output dtype that is a sub-dtype of "
                            f"np.floating), but got {aval.dtype}. For differentiation of functions with "
                            f"integer outputs, use jax.vjp directly.")


def _trace(fun: Callable, args: tuple, kwargs: dict, argnums, has_aux: bool) -> tuple[_Traced, tuple, bool]:
    nums, single = _normalize_argnums(argnums, len(args))
    if len(set(nums)) != len(nums):
        raise ValueError(f"argnums must not repeat an argument, got {argnums!r}")
    # As in jax.jacrev, arguments not in argnums are closed over as they are
    # (a Python int may be a shape); only the differentiated ones are traced.
    leaves, in_tree = jax.tree_util.tree_flatten(tuple(args[k] for k in nums))
    diff_leaves = tuple(range(len(leaves)))
    store: dict = {}

    def flat_fun(*flat):
        full = list(args)
        for k, a in zip(nums, jax.tree_util.tree_unflatten(in_tree, flat)):
            full[k] = a
        # Work on concrete values is done now, not staged: like jax.jacrev,
        # a non-differentiated array may drive Python control flow.
        with jax.ensure_compile_time_eval():
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

    closed = jax.make_jaxpr(flat_fun)(*leaves)
    traced = _Traced(closed, leaves, in_tree, diff_leaves, store["out"], store["n_out"], store.get("aux"),
                     store.get("aux_static", {}))
    return traced, nums, single


def _graph_of(t: _Traced) -> Graph:
    key = (structural_key(t.closed.jaxpr), t.diff_leaves, t.n_out)
    g = _graphs.get(key)
    if g is None:
        g = Graph(build_program(t.closed, t.diff_leaves), t.diff_leaves, t.n_out)
        if g.program.cacheable:
            _graphs.put(key, g)
    return g


def _order_key(g: Graph, order: OrderSpec):
    if isinstance(order, str) and order.lower() == "learned":
        from ccjax.search.policy import policy_version

        return ("learned", policy_version())  # a new policy file gives a new order
    return order if isinstance(order, str) else validate_order(g, order)


def _plan(g: Graph, order: OrderSpec) -> Plan:
    key = _order_key(g, order)
    plan = g.plans.get(key)
    if plan is None:
        plan = plan_elimination(g, resolve_order(g, order))
        g.plans[key] = plan
    return plan


def _runner(g: Graph, order: OrderSpec, layout: str = "dense") -> Callable:
    """``run(inputs, consts) -> (blocks, aux)`` for graph ``g`` and ``order``.

    ``blocks`` lists the Jacobian blocks output-major in the ``jax.jacrev``
    layout and dtype (dense arrays or BCOO, per ``layout``).  For a reusable
    graph the function is jitted once and kept with the graph, so eager calls
    compile once rather than per primitive, and repeated calls do no planning.
    """
    key = (_order_key(g, order), layout)
    run = g.runners.get(key)
    if run is not None:
        return run
    plan = _plan(g, order)
    prog = g.program

    def run(inputs, consts):
        env = prog.evaluate(inputs, consts)
        return execute(g, plan, env, layout), [env[i] for i in prog.outputs[len(g.outputs):]]

    if prog.cacheable:
        run = jax.jit(run)
        g.runners[key] = run
    return run


def _as_value(x, aval):
    if isinstance(x, (jax.Array, jax.core.Tracer)):
        return x
    return jnp.asarray(x, dtype=aval.dtype)


def jacve(fun: Callable, argnums: Union[int, Sequence[int]] = 0, has_aux: bool = False,
          holomorphic: bool = False, allow_int: bool = False, *, order: OrderSpec = "auto",
          output: str = "dense") -> Callable:
    """Jacobian of ``fun`` by cross-country vertex elimination.

    A drop-in replacement for ``jax.jacrev`` with the same arguments and the
    identical output layout: for output leaf shape ``O`` and input leaf
    shape ``I`` the block has shape ``O + I``; the result has the output
    pytree's structure with each leaf replaced by the input pytree (a tuple
    of them when ``argnums`` is a tuple).

    ``order``: ``"fwd"``/``"forward"``, ``"rev"``/``"reverse"``,
    ``"markowitz"``, ``"auto"`` (best known order: the order cache, else the
    cheapest built-in heuristic), ``"learned"`` (the greedy order of the
    shipped policy network, see ``ccjax.search``), or a sequence of vertex ids permuting
    ``ccjax.graph(fun, *args).eliminable``.

    ``output="sparse"`` returns every block as a
    ``jax.experimental.sparse.BCOO`` holding only its structural nonzeros
    (e.g. ``B`` entries for the batch diagonal of a ``vmap``-ed function)
    instead of a dense array; the pytree layout is unchanged.
    """
    if output not in LAYOUTS:
        raise ValueError(f"output must be one of {LAYOUTS}, got {output!r}")
    if not isinstance(order, str):
        try:
            order = tuple(order)
        except TypeError:
            raise OrderError(f"order must be a name or a sequence of vertex ids, got {order!r}") from None

    @functools.wraps(fun)
    def jac_fun(*args, **kwargs):
        t, nums, single = _trace(fun, args, kwargs, argnums, has_aux)
        _check_inputs(t.leaves, t.diff_leaves, holomorphic, allow_int)
        out_avals = [v.aval for v in t.closed.jaxpr.outvars[:t.n_out]]
        _check_outputs(out_avals, holomorphic)
        g = _graph_of(t)
        run = _runner(g, order, output)
        prog = g.program
        inputs = [_as_value(x, prog.avals[i]) for x, i in zip(t.leaves, prog.inputs)]
        blocks, aux = run(inputs, list(t.closed.consts))
        n_in = len(t.diff_leaves)
        jac_leaves = [_unflatten_inputs(blocks[k * n_in:(k + 1) * n_in], args, nums, single)
                      for k in range(t.n_out)]
        jac = jax.tree_util.tree_unflatten(t.out_tree, jac_leaves)
        if has_aux:
            traced_aux = iter(aux)
            n_aux = t.aux_tree.num_leaves
            aux = [t.aux_static[k] if k in t.aux_static else next(traced_aux) for k in range(n_aux)]
            return jac, jax.tree_util.tree_unflatten(t.aux_tree, aux)
        return jac

    return jac_fun


def _unflatten_inputs(row: list, args: tuple, nums: tuple, single: bool):
    trees, pos = [], 0
    for num in nums:
        leaves, tree = jax.tree_util.tree_flatten(args[num])
        trees.append(jax.tree_util.tree_unflatten(tree, row[pos:pos + len(leaves)]))
        pos += len(leaves)
    return trees[0] if single else tuple(trees)


def graph(fun: Callable, *args, argnums: Union[int, Sequence[int]] = 0, **kwargs) -> Graph:
    """The computational :class:`~ccjax.graph.Graph` of ``fun`` at ``args``."""
    t, _, _ = _trace(fun, args, kwargs, argnums, False)
    return _graph_of(t)


def cost_report(fun: Callable, *args, argnums: Union[int, Sequence[int]] = 0,
                order: OrderSpec = "auto", **kwargs) -> CostReport:
    """Multiplications, additions and peak stored values of ``order``."""
    return _plan(graph(fun, *args, argnums=argnums, **kwargs), order).report


def cost(fun: Callable, *args, argnums: Union[int, Sequence[int]] = 0, order: OrderSpec = "auto",
         **kwargs) -> int:
    """Number of scalar multiplications ``jacve(fun, order=order)`` performs."""
    return cost_report(fun, *args, argnums=argnums, order=order, **kwargs).mults

