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

import contextlib
import functools
import gc
from typing import Callable, Sequence, Union

import jax
from jax.experimental import sparse

from ccjax._jaxpr import as_weakly_typed, is_weakly_typed
from ccjax.eliminate import LAYOUTS, CostReport, Plan, dense_entries, plan_elimination, stored_entries, validate_order
from ccjax.graph import Graph
from ccjax.jax_modes import cheapest, jacobian_runner, plan_jax_mode
from ccjax.resolve import OrderSpec, order_spec, resolve_order
from ccjax.trace import Traced, as_input, auto_graph_of, check_inputs, check_outputs, graph, graph_of, trace
from ccjax.tuning import tuned_plan

__all__ = ["jacve", "graph", "cost", "cost_report"]


def _order_key(g: Graph, order: OrderSpec):
    spec = order_spec(order)
    if spec == "learned":
        from ccjax.search.policy import policy_version

        return ("learned", policy_version())  # a new policy file gives a new order
    return spec if isinstance(spec, str) else validate_order(g, spec)


def _plan(g: Graph, order: OrderSpec, layout: str = "dense") -> Plan:
    """The plan of ``order`` on ``g`` for output ``layout``.  For
    ``"auto"`` and ``"sparse"``, JAX's plain modes (which store every
    entry) and compressed modes (which store their pattern, whose probe of
    structural zeros may not have run) stand in for the elimination only
    when it would store as many."""
    order = order_spec(order)  # once: an iterator of ids is read here only
    key = _order_key(g, order)
    table_key = (key, layout) if key == "auto" and layout == "sparse" else key
    plan = g.plans.get(table_key)
    if plan is None:
        if g.whole_reverse:
            if not isinstance(order, str):
                validate_order(g, order)  # a wrong order is still an error
            plan = plan_jax_mode(g, "rev")
        else:
            elimination = plan = plan_elimination(g, resolve_order(g, order))
            if key == "auto":
                plan = tuned_plan(g, elimination) or cheapest(g, elimination)
                if layout == "sparse" and plan.mode != "eliminate":
                    # a compressed mode stores its pattern, a plain mode every entry
                    stores = dense_entries(g) if plan.coloring is None else len(plan.coloring.pattern.rows)
                    if stored_entries(g, elimination) < stores:
                        plan = elimination
        g.plans[table_key] = plan
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
    run = jacobian_runner(g, _plan(g, order, layout), layout)
    if g.program.cacheable:
        run = jax.jit(run)
        g.runners[key] = run
    return run


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
    cheapest built-in heuristic; or JAX's own reverse/forward mode over the
    whole function when that multiplies less, see
    :func:`ccjax.jax_modes.cheapest`), ``"learned"`` (the greedy order of the
    shipped policy network, see ``ccjax.search``, or the cheapest quick
    heuristic when that is cheaper), or a sequence of integer vertex
    ids permuting ``ccjax.graph(fun, *args, argnums=argnums, has_aux=has_aux).eliminable``.
    A bad name, bytes, a set or a non-integer id is a ``ccjax.OrderError``
    here already; ids are checked against the graph when it is traced.

    Blocks have their input's dtype and weak type, as in ``jax.jacrev``.

    ``output="sparse"`` returns every block as a
    ``jax.experimental.sparse.BCOO`` holding only its structural nonzeros
    (e.g. ``B`` entries for the batch diagonal of a ``vmap``-ed function)
    instead of a dense array; the pytree layout is unchanged.
    """
    if output not in LAYOUTS:
        raise ValueError(f"output must be one of {LAYOUTS}, got {output!r}")
    # Checked now, like ``output``: a bad name or id type is an error at creation.
    order = order_spec(order)

    @functools.wraps(fun)
    def jac_fun(*args, **kwargs):
        t, nums, single = trace(fun, args, kwargs, argnums, has_aux)
        check_inputs(t.leaves, t.diff_leaves, holomorphic, allow_int)
        out_avals = [v.aval for v in t.closed.jaxpr.outvars[:t.n_out]]
        check_outputs(out_avals, holomorphic)
        with _collection_paused():
            g, t = _graph_for(t, holomorphic, order)
            run = _runner(g, order, output)
        prog = g.program
        inputs = [as_input(x, prog.avals[i]) for x, i in zip(t.leaves, prog.inputs)]
        blocks, aux = run(inputs, list(t.closed.consts))
        n_in = len(t.diff_leaves)
        blocks = _match_weak_types(blocks, [t.leaves[k] for k in t.diff_leaves])
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


@contextlib.contextmanager
def _collection_paused():
    """Python's cyclic garbage collector off while a graph is built and
    planned, as it was before afterwards.  Planning allocates many small
    acyclic objects (structures, plans; reference counting frees them), so
    the collector would run dozens of young-generation passes (9 for a
    12x12 periodic stencil), each tenth a pass over the middle generation,
    and each tenth of those may be a full pass over the whole process's
    objects (65-90 ms with JAX loaded) in the middle of a first call.
    Paused, they are one young pass after the plan."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _graph_for(t: Traced, holomorphic: bool, order: OrderSpec) -> tuple[Graph, Traced]:
    """The graph ``order`` is planned on, and the traced program it comes
    from: ``"auto"`` rolls unrolled loops of large programs first
    (:func:`ccjax.trace.auto_graph_of`); any other order runs on the
    graph ``ccjax.graph`` gives, whose vertex ids an explicit order names."""
    if isinstance(order, str) and order == "auto":
        return auto_graph_of(t, holomorphic)
    return graph_of(t, holomorphic), t


def _match_weak_types(blocks: list, diff_inputs: list) -> list:
    """Blocks of weakly typed inputs (Python scalars, ``jnp.asarray(1.0)``)
    made weakly typed too: ``jax.jacrev`` casts every block to its input's
    type, weak flag included, and that flag decides later type promotion.
    ``blocks`` is output-major: block ``k`` belongs to input ``k % n_in``."""
    weak = [is_weakly_typed(x) for x in diff_inputs]
    if not any(weak):
        return blocks
    n_in = len(diff_inputs)
    return [as_weakly_typed(b) if weak[k % n_in] and not isinstance(b, sparse.BCOO) else b
            for k, b in enumerate(blocks)]


def _unflatten_inputs(row: list, args: tuple, nums: tuple, single: bool):
    trees, pos = [], 0
    for num in nums:
        leaves, tree = jax.tree_util.tree_flatten(args[num])
        trees.append(jax.tree_util.tree_unflatten(tree, row[pos:pos + len(leaves)]))
        pos += len(leaves)
    return trees[0] if single else tuple(trees)


def cost_report(fun: Callable, *args, argnums: Union[int, Sequence[int]] = 0,
                order: OrderSpec = "auto", has_aux: bool = False, holomorphic: bool = False,
                **kwargs) -> CostReport:
    """Multiplications, additions and peak stored values of ``order``
    (``has_aux``, ``holomorphic``: as for ``jacve``)."""
    order = order_spec(order)
    t, _, _ = trace(fun, args, kwargs, argnums, has_aux)
    g, _ = _graph_for(t, holomorphic, order)
    return _plan(g, order).report


def cost(fun: Callable, *args, argnums: Union[int, Sequence[int]] = 0, order: OrderSpec = "auto",
         has_aux: bool = False, holomorphic: bool = False, **kwargs) -> int:
    """Number of scalar multiplications ``jacve(fun, order=order)`` performs."""
    return cost_report(fun, *args, argnums=argnums, order=order, has_aux=has_aux, holomorphic=holomorphic,
                       **kwargs).mults

