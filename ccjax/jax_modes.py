"""Whole-function JAX AD as a plan: ``jax.jacrev``/``jax.jacfwd`` of the program.

Some derivatives exist only as JAX's reverse pass over the whole function
(see :func:`ccjax.graph.needs_whole_reverse`): a ``custom_vjp`` rule
applied to the real cotangent, a collective's transpose over a named axis.
For those graphs no elimination order reproduces ``jax.jacrev``, so the
plan is JAX's own reverse mode over the flattened program, which follows
custom JVP rules exactly as AD of the original function does.  The report
counts the multiplications of that program beyond the primal evaluation,
summed equation by equation (:mod:`ccjax.counting`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from ccjax import _jaxpr
from ccjax._jaxpr import count_multiplications
from ccjax.coloring import Pattern, coloring, multi_indices, pattern
from ccjax.counting import MODES, Counter
from ccjax.eliminate import CostReport, Plan, dense_entries, execute, sparse_block
from ccjax.graph import Graph, forward_matches_reverse
from ccjax.structure.selection import SelectionPlan


def _outputs_fn(graph: Graph, inputs: Sequence, consts: Sequence):
    """``f(*diff_inputs) -> (outputs, aux outputs)`` over the program as
    written (:attr:`ccjax.graph.Program.as_written`)."""
    prog = graph.program.as_written
    n_out = len(graph.outputs)

    def f(*diff):
        full = list(inputs)
        for leaf, x in zip(graph.diff_leaves, diff):
            full[leaf] = x
        env = prog.evaluate(full, consts, differentiable=True)
        return [env[i] for i in prog.outputs[:n_out]], [env[i] for i in prog.outputs[n_out:]]

    return f


def _jacobian(graph: Graph, mode: str, inputs: Sequence, consts: Sequence):
    f = _outputs_fn(graph, inputs, consts)
    transform = jax.jacrev if mode == "rev" else jax.jacfwd
    argnums = tuple(range(len(graph.diff_leaves)))
    diff = [inputs[leaf] for leaf in graph.diff_leaves]
    return transform(f, argnums=argnums, has_aux=True)(*diff)


def _specs(graph: Graph) -> tuple[list, list]:
    prog = graph.program
    spec = lambda i: jax.ShapeDtypeStruct(prog.avals[i].shape, prog.avals[i].dtype)
    return [spec(i) for i in prog.inputs], [spec(i) for i in prog.top_consts]


def traced_mults(graph: Graph, fn) -> int:
    """Multiplications in the jaxpr of ``fn(inputs, consts)`` on the
    program's input shapes: one whole trace, the reference that
    :class:`ccjax.counting.Counter` sums equation by equation."""
    ins, cs = _specs(graph)
    return count_multiplications(jax.make_jaxpr(fn)(ins, cs).jaxpr)


def traced_mode_mults(graph: Graph, mode: str) -> int:
    """``mode``'s count from the jaxpr of the whole Jacobian program, less the primal's."""
    primal = traced_mults(graph, lambda i, c: graph.program.as_written.evaluate(i, c, differentiable=True))
    return max(0, traced_mults(graph, lambda i, c: _jacobian(graph, mode, i, c)) - primal)


def plan_jax_mode(graph: Graph, mode: str, counter: Optional[Counter] = None) -> Plan:
    """The plan that runs ``jax.jacrev`` (``mode="rev"``) or ``jax.jacfwd``
    of the whole program.  Its report counts every multiplication of that
    program beyond the primal evaluation, equation by equation
    (:class:`ccjax.counting.Counter`, shared with other counts when given)."""
    if mode not in MODES:
        raise ValueError(f"unknown JAX AD mode {mode!r}; use one of {MODES}")
    mults = (counter or Counter(graph)).mode_mults(mode)
    return Plan((), {}, (), CostReport(mults, 0, 0, ()), mode=f"jax-{mode}")


def plan_colored(graph: Graph, elimination: Plan, mode: str, counter: Optional[Counter] = None,
                 pat: Optional[Pattern] = None) -> Optional[Plan]:
    """JAX's ``mode`` over the whole program with compressed seeds, one per
    colour of :func:`ccjax.coloring.coloring` for ``elimination``'s pattern
    (``pat``, else :func:`ccjax.coloring.pattern`): ``"colored-fwd"``
    pushes one tangent per colour of columns, ``"colored-rev"`` pulls one
    cotangent per colour of rows, and each structural nonzero is read
    from the seed of its colour.  Its report counts that program's
    multiplications as :func:`plan_jax_mode`'s does, over ``k`` seeds.
    None where no colouring saves a seed or JAX cannot run ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown JAX AD mode {mode!r}; use one of {MODES}")
    pat = pat if pat is not None else pattern(graph, elimination)
    colors = None if pat is None else coloring(pat, mode)
    if colors is None:
        return None
    try:
        mults = (counter or Counter(graph)).mode_mults(mode, colors.count)
    except (TypeError, ValueError, NotImplementedError):
        return None
    return Plan((), {}, (), CostReport(mults, 0, 0, ()), mode=f"colored-{mode}", coloring=colors)


def _basis(plan: Plan) -> tuple[str, Optional[int]]:
    """``(mode, seeds)`` of a plan of JAX's AD: all basis vectors (None)
    or the colours of its compressed seeds."""
    if plan.coloring is not None:
        return plan.coloring.mode, plan.coloring.count
    return plan.mode.removeprefix("jax-"), None


def program_mults(graph: Graph, plan: Plan, counter: Optional[Counter] = None) -> int:
    """Every multiplication the compiled Jacobian program of ``plan``
    performs beyond the primal evaluation: for an elimination, the partials'
    values (a dense local Jacobian costs what JAX's AD of its equation does)
    as well as the products that ``plan.report`` counts."""
    if plan.mode != "eliminate":
        return plan.report.mults
    return (counter or Counter(graph)).elimination_mults(plan.report.mults)


#: Time of one multiplication in a product with a selection (a pick or put,
#: whose operand rows are gathered or scattered), or of one addition in a sum
#: with one (a scatter-add), in units of one multiplication in dense work, for
#: choosing between an elimination and JAX's modes (only; every count
#: reported stays the count of multiplications).  Measured on CPU:
#: ``flax_cnn_input``'s elimination, nearly all convolution picks, ran 3x
#: slower than ``jax.jacrev`` with 3x fewer multiplications, and
#: ``conv2d_scalar``'s 1.8x slower with as many; the reverse-order
#: elimination of a 256-entry ``lax.associative_scan`` (66k multiplications,
#: 131k additions in 15 scatter-adds) ran 1.35x slower than ``jax.jacrev``'s
#: 194k multiplications.  Dense additions are not charged: they fuse with
#: the products around them.
SELECTION_MULT_WEIGHT = 8


def selection_mults(plan: Plan) -> int:
    """The multiplications of ``plan``'s products and sums with a selection."""
    return sum(step[4].mults for step in plan.steps if isinstance(step[4], SelectionPlan))


def selection_additions(plan: Plan) -> int:
    """The additions of ``plan``'s sums (and products) with a selection."""
    return sum(step[4].additions for step in plan.steps if isinstance(step[4], SelectionPlan))


#: Time of one entry a scatter of JAX's Jacobian programs writes (the
#: transpose of a gather in reverse mode, the JVP of a scatter-add in forward
#: mode, vmapped over the basis), in units of one multiplication, for the
#: same choice.  Measured on CPU at n = 1,024: ``0.5 * (v[p] + v[q])`` with
#: static permutations ran 33 ms by ``jax.jacrev`` (2.1M entries scattered)
#: against 0.23 ms by ``jax.jacfwd`` at equal multiplication counts (4.2M),
#: five such sweeps in a ``fori_loop`` 180 ms against 3.7 ms (10.5M
#: entries; 15.7M multiplications each): 16-17 ns an entry, 70-270
#: multiplications' time.  Only scatters of
#: :data:`ccjax.counting.LARGE_SCATTER` updates or more count (smaller ones
#: ran fast enough that reverse mode still won its ties), and the weight
#: stays low.
SCATTER_WEIGHT = 16


def weighted_mults(graph: Graph, plan: Plan, counter: Optional[Counter] = None) -> int:
    """What :func:`cheapest` compares: :func:`program_mults`, with the
    elimination's multiplications in products with selections counted
    :data:`SELECTION_MULT_WEIGHT` times, and its additions in sums with
    selections as many times (a plain mode has neither), plus
    :data:`SCATTER_WEIGHT` per entry a scatter of JAX's AD writes (in a
    plain mode's program, or where an elimination's partials come from
    JAX's AD of their equations); a compressed mode's structural nonzeros,
    read from their colours' results and scattered into the dense block,
    weigh :data:`SELECTION_MULT_WEIGHT` each (``cross_entropy_logits``'s
    2,560, read from one cotangent, ran 134 µs against the elimination's
    90 µs at 1/8 of its multiplications)."""
    counter = counter or Counter(graph)
    if plan.mode != "eliminate":
        written = 0 if plan.coloring is None else SELECTION_MULT_WEIGHT * len(plan.coloring.pattern.rows)
        return plan.report.mults + SCATTER_WEIGHT * counter.mode_scattered(*_basis(plan)) + written
    return (program_mults(graph, plan, counter) + (SELECTION_MULT_WEIGHT - 1) * selection_mults(plan)
            + SELECTION_MULT_WEIGHT * selection_additions(plan) + SCATTER_WEIGHT * counter.partial_scattered())


#: Matrix factorizations: a program that factors a matrix runs JAX's forward
#: mode faster than its reverse mode when both multiply alike (see
#: :func:`plain_modes`).
FACTORIZATIONS = frozenset({"lu", "cholesky", "eigh", "eig", "qr", "geqrf", "householder_product", "svd",
                            "schur", "hessenberg", "tridiagonal"})


#: Counts of JAX's two plain modes closer than this fraction tie (the order
#: of :func:`plain_modes` decides): a count this close says nothing about
#: time.  ``jax.scipy.linalg.expm`` of an 8x8 matrix (Padé with an LU
#: solve) counts 1,786,944 multiplications forward and 1,785,856 reverse
#: (0.06% apart); forward mode ran 0.63x of reverse mode's time.
PLAIN_TIE = 0.01


def plain_modes(graph: Graph) -> tuple[str, ...]:
    """JAX's whole-function modes that may stand in for an elimination:
    both, unless forward mode could differ from ``jax.jacrev`` somewhere
    (:func:`ccjax.graph.forward_matches_reverse`); then reverse mode only.
    (A mode JAX cannot run, e.g. reverse mode through a ``while_loop``,
    fails when planned.)

    The order breaks ties in :func:`cheapest`: reverse mode first, but
    forward mode first in a program that factors a matrix
    (:data:`FACTORIZATIONS`).  No count tells the two apart when they
    multiply alike (XLA's cost analysis, liveness, kernel counts were
    tried); measured on CPU (``docs/benchmarks.md``, "Ties"), forward mode
    ran 0.47-0.95x of reverse mode's time on 12 of 14 such ties (Newton
    steps with ``solve``, Cholesky, ``eigh`` matrix functions, a Kalman
    update, ``lu_solve``, an implicit Euler step); the exception is the
    inverse of a matrix (1.2x).  Without a factorization, reverse mode won
    most ties: ``scan`` loops, gathers (an unrolled RK4: 5x), cumulative
    sums (3x)."""
    nodes = graph.program.as_written.nodes
    if not all(forward_matches_reverse(node) for node in nodes):
        return ("rev",)
    factors = any(_jaxpr.primitive_names(node.name, node.params if isinstance(node.params, dict) else None)
                  & FACTORIZATIONS for node in nodes)
    return ("fwd", "rev") if factors else MODES


def runnable_mode(graph: Graph, mode: str, counter: Optional[Counter] = None) -> Optional[Plan]:
    """:func:`plan_jax_mode`, or None where JAX cannot run ``mode`` here
    (e.g. no reverse mode through a ``while_loop``)."""
    try:
        return plan_jax_mode(graph, mode, counter)
    except (TypeError, ValueError, NotImplementedError):
        return None


def cheapest(graph: Graph, elimination: Plan, counter: Optional[Counter] = None) -> Plan:
    """``elimination`` or JAX's reverse or forward mode over the whole
    program, whichever multiplies least by :func:`weighted_mults` (ties keep
    the elimination, whose output keeps its structure, then the first mode
    of :func:`plain_modes`; the plain modes tie within :data:`PLAIN_TIE`).
    This is how ``order="auto"`` is never costlier than the better plain mode.
    The elimination's multiplications in products with selections, and its
    additions in sums with them, count :data:`SELECTION_MULT_WEIGHT` times
    here (they gather or scatter their operands).

    Where none multiplies at all (a program that only moves and adds data,
    such as the Jacobian program of a function whose Jacobian is linear in
    its input), the count cannot tell them apart, and the one that moves
    least runs (:func:`data_movement`): pushing 64 tangents through the
    Jacobian program of Lorenz-96 at n = 64 beats pulling its 4096
    cotangents back, or an elimination that adds 13M entries.  With no
    product there is no ``0 * inf`` either, so NaN and inf cannot differ.

    A mode JAX cannot run (a ``while_loop`` has no reverse mode) is left
    out, and so is forward mode where it could differ from ``jax.jacrev``
    (:func:`plain_modes`).  The counts are summed
    equation by equation with one memo (:mod:`ccjax.counting`; ``counter``
    shares it with other counts), so this costs a trace per distinct
    equation, not per candidate program."""
    counter = counter or Counter(graph)
    best, best_mults = elimination, weighted_mults(graph, elimination, counter)
    if best_mults == 0 and data_movement(graph, elimination, counter) == 0:
        return elimination  # nothing to beat: spare the counts' traces
    free = [elimination]
    for mode in plain_modes(graph):
        bound = counter.mode_lower_bound(mode)
        if bound > best_mults or (bound == best_mults and best_mults > 0):
            continue  # cannot multiply less: spare the count's traces
        plan = runnable_mode(graph, mode, counter)
        if plan is None:
            continue
        weighted = weighted_mults(graph, plan, counter)
        beats = best_mults if best.mode == "eliminate" else (1 - PLAIN_TIE) * best_mults
        if weighted < beats:
            best, best_mults = plan, weighted
        if plan.report.mults == 0:
            free.append(plan)
    if best_mults > 0:
        best, best_mults = _compressed(graph, elimination, best, best_mults, counter)
    if best_mults == 0:
        free = [plan for plan in free if program_mults(graph, plan, counter) == 0]
        return min(free, key=lambda plan: data_movement(graph, plan, counter))  # first of equals
    if (best.mode == "eliminate" and len(graph.program.nodes) <= STAGED_CHECK_MAX_NODES
            and dense_entries(graph) <= STAGED_CHECK_MAX_ENTRIES):
        return _fewer_kernels(graph, best, best_mults, counter)
    return best


#: A compressed reverse mode stands in for the compressed forward mode only
#: when it weighs this fraction less: pulling ``k`` cotangents back
#: scatter-adds them wherever forward mode gathers (a gather's, pad's or
#: slice's transpose), in scatters below :data:`ccjax.counting.LARGE_SCATTER`.
#: Measured on CPU: five Jacobi sweeps by index vectors (n = 1,024, 12
#: colours) ran 821 µs reverse against 210 µs forward, ``conv1d_same`` 570
#: against 222 µs, ``linalg_cell_solves`` 577 against 316 µs; on exact
#: ties forward mode ran 0.7-1.2x of reverse mode's time.
COLORED_TIE = 0.25
#: Where the graph unrolled a loop (:attr:`ccjax.graph.Program.rolled`), a
#: compressed mode multiplying up to this many times as much as the
#: elimination runs instead: it runs the loop as written, where the
#: elimination compiles every step's products.  Five Jacobi sweeps (n =
#: 1,024, 12 colours) weigh 4.1x as much compressed (2.7x the
#: multiplications, and the scatter of 11,264 entries), and ran 263 µs
#: against 386 µs, first call 0.22 s against 0.66 s.
UNROLLED_RATIO = 5


def _compressed(graph: Graph, elimination: Plan, best: Plan, best_mults: int, counter: Counter) -> tuple[Plan, int]:
    """``(best, best_mults)``, or the plan of :func:`plan_colored` that
    stands in for it: compressed forward mode first, reverse where it
    weighs :data:`COLORED_TIE` less; then the one that weighs less than
    ``best`` (:func:`weighted_mults`; a plain mode's tie rule), or, where
    the graph unrolled a loop, :data:`UNROLLED_RATIO` times as much as the
    elimination."""
    if min(counter.n_in, counter.n_out) <= 1:
        # One seed already does (a gradient, a curve): compressing the other
        # mode's needs one colour per nonzero of that row (column), and a
        # pattern costs a probe (conv2d -> scalar: 54 ms of a 0.16 s first call).
        return best, best_mults
    bar = best_mults * (UNROLLED_RATIO if best.mode == "eliminate" and graph.program.rolled is not None else 1)
    modes = [mode for mode in ("fwd", "rev") if mode in plain_modes(graph) and counter.mode_lower_bound(mode, 1) < bar]
    pat = pattern(graph, elimination) if modes else None  # only where one seed could do
    if pat is None:
        return best, best_mults
    chosen, chosen_mults = None, 0
    written = SELECTION_MULT_WEIGHT * len(pat.rows)  # as weighted_mults adds
    for mode in modes:
        if counter.mode_lower_bound(mode, max(1, pat.least_colors(mode))) + written >= bar:
            continue  # cannot weigh less: spare the colouring and its counts
        plan = plan_colored(graph, elimination, mode, counter, pat)
        if plan is None:
            continue
        weighted = weighted_mults(graph, plan, counter)
        if chosen is None or weighted < (1 - COLORED_TIE) * chosen_mults:
            chosen, chosen_mults = plan, weighted
    if chosen is not None and (chosen_mults < (best_mults if best.mode == "eliminate" else (1 - PLAIN_TIE) * best_mults)
                               or (bar > best_mults and chosen_mults <= bar)):
        return chosen, chosen_mults
    return best, best_mults


#: Programs of at most this many equations whose Jacobian has at most
#: ``STAGED_CHECK_MAX_ENTRIES`` entries, where time goes by kernels more than
#: by multiplications, have their elimination's staged equations compared
#: with the plain modes' (:func:`_fewer_kernels`): a trace of each Jacobian
#: program, 10-60 ms at this size.
STAGED_CHECK_MAX_NODES = 100
STAGED_CHECK_MAX_ENTRIES = 4096
#: An elimination yields to a plain mode that multiplies at most
#: ``STAGED_RATIO`` times as much while staging ``STAGED_RATIO`` times fewer
#: equations.
STAGED_RATIO = 2


def staged_equations(graph: Graph, plan: Plan) -> int:
    """Equations of ``plan``'s Jacobian program as staged for XLA (calls inlined)."""
    return _jaxpr.equation_count(_staged(graph, plan)[0].jaxpr)


def _staged(graph: Graph, plan: Plan) -> tuple:
    """``(closed jaxpr, output tree)`` of ``plan``'s dense Jacobian program
    on the program's input shapes, traced once per plan and kept with the
    graph (``graph.staged``) for :func:`jacobian_runner`."""
    hit = graph.staged.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1:]
    ins, cs = _specs(graph)
    closed, shapes = jax.make_jaxpr(jacobian_program(graph, plan), return_shape=True)(ins, cs)
    tree = jax.tree_util.tree_structure(shapes)
    graph.staged[id(plan)] = (plan, closed, tree)
    return closed, tree


def _fewer_kernels(graph: Graph, elimination: Plan, mults: int, counter: Counter) -> Plan:
    """``elimination``, or a plain mode that stages :data:`STAGED_RATIO`
    times fewer equations and multiplies at most :data:`STAGED_RATIO` times
    as much.  On a small program the time goes by kernels, not by
    multiplications: a quaternion's rotation matrix (``jnp.array`` of nine
    scalar expressions) eliminates with 195 multiplications against
    forward mode's 248, but its elimination writes the nine entries with
    pads and concatenations of bands, 436 equations against 191, and ran
    144 µs a call against ``jax.jacfwd``'s 16 µs (first call 0.47 s against
    0.17 s).  The paper's tasks stage about as many equations either way
    (at most 1.13x), and keep their eliminations."""
    bound = STAGED_RATIO * mults
    near = []
    for mode in plain_modes(graph):
        if counter.mode_lower_bound(mode) > bound:
            continue  # cannot come within the bound: spare the count's traces
        plan = runnable_mode(graph, mode, counter)
        if plan is not None and plan.report.mults <= bound:
            near.append(plan)
    if not near:
        return elimination
    staged = staged_equations(graph, elimination)
    fewer = [plan for plan in near if STAGED_RATIO * staged_equations(graph, plan) < staged]
    chosen = min(fewer, key=lambda plan: plan.report.mults) if fewer else elimination
    graph.staged = {k: v for k, v in graph.staged.items() if v[0] is chosen}  # the runner's, not the others'
    return chosen


def data_movement(graph: Graph, plan: Plan, counter: Counter) -> int:
    """Entries a plan writes beyond the primal, for comparing plans that
    multiply alike: an elimination's additions, or for JAX's modes one
    tangent (cotangent) entry per basis vector and variable on the way
    from the inputs (to the outputs)."""
    if plan.mode == "eliminate":
        return plan.report.additions
    return counter.mode_entries(*_basis(plan))


def candidates(graph: Graph, elimination: Plan, counter: Optional[Counter] = None) -> list[Plan]:
    """Every program ``order="auto"`` may run for ``graph``: ``elimination``
    first, then each of JAX's plain modes that JAX can run here, then their
    compressed forms (:func:`plan_colored`) where a colouring saves seeds."""
    counter = counter or Counter(graph)
    modes = [runnable_mode(graph, mode, counter) for mode in plain_modes(graph)]
    pat = pattern(graph, elimination)
    colored = ([plan_colored(graph, elimination, mode, counter, pat) for mode in plain_modes(graph)]
               if pat is not None else [])
    return [elimination] + [plan for plan in modes + colored if plan is not None]


def jacobian_runner(graph: Graph, plan: Plan, layout: str = "dense"):
    """:func:`jacobian_program`, or where choosing the plan already staged
    that program (a small program's, :func:`_fewer_kernels`), its staged
    equations evaluated: the same program without a second trace (30-50
    ms of a first call)."""
    hit = graph.staged.get(id(plan))
    if layout != "dense" or hit is None or hit[0] is not plan:
        return jacobian_program(graph, plan, layout)
    _, closed, tree = hit
    staged = _jaxpr.as_function(closed)

    def run(inputs, consts):
        return jax.tree_util.tree_unflatten(tree, staged(*inputs, *consts))

    return run


def jacobian_program(graph: Graph, plan: Plan, layout: str = "dense"):
    """``run(inputs, consts) -> (blocks, aux)``: the Jacobian program of
    ``plan`` over ``graph``'s inputs and constants (not jitted).  ``blocks``
    lists the Jacobian blocks output-major in the ``jax.jacrev`` layout
    (dense arrays or BCOO, per ``layout``)."""
    prog = graph.program

    def run(inputs, consts):
        if plan.coloring is not None:
            return execute_colored(graph, plan, inputs, consts, layout)
        if plan.mode != "eliminate":
            return execute_jax_mode(graph, plan, inputs, consts, layout)
        env = prog.evaluate(inputs, consts)
        return execute(graph, plan, env, layout), [env[i] for i in prog.outputs[len(graph.outputs):]]

    return run


def execute_jax_mode(graph: Graph, plan: Plan, inputs: Sequence, consts: Sequence,
                     layout: str = "dense") -> tuple[list, list]:
    """``(blocks, aux)``: the Jacobian blocks output-major in the
    ``jax.jacrev`` layout (dense, or BCOO holding every entry for
    ``layout="sparse"``) and the auxiliary outputs."""
    jac, aux = _jacobian(graph, plan.mode.removeprefix("jax-"), inputs, consts)
    prog = graph.program
    blocks = []
    for row in jac:
        for leaf, block in zip(graph.diff_leaves, row):
            block = block.astype(prog.avals[prog.inputs[leaf]].dtype)
            blocks.append(_every_entry(block) if layout == "sparse" else block)
    return blocks, aux


def _every_entry(block) -> sparse.BCOO:
    """``block`` as a BCOO listing every entry (JAX's modes know no structure)."""
    indices = np.indices(block.shape).reshape(block.ndim, block.size).T.astype(np.int32)
    return sparse.BCOO((block.reshape(-1), jnp.asarray(indices)), shape=block.shape)


def execute_colored(graph: Graph, plan: Plan, inputs: Sequence, consts: Sequence,
                    layout: str = "dense") -> tuple[list, list]:
    """``(blocks, aux)`` of a :func:`plan_colored` plan: JAX's mode vmapped
    over one seed per colour (the sum of the basis vectors of that colour),
    each structural nonzero read from its colour's result, written as
    :func:`execute_jax_mode` writes its blocks (BCOO: the structural
    nonzeros only)."""
    colors = plan.coloring
    prog = graph.program
    f = _outputs_fn(graph, inputs, consts)
    diff = [inputs[leaf] for leaf in graph.diff_leaves]
    out_avals = [prog.avals[prog.outputs[k]] for k in range(len(graph.outputs))]
    in_avals = [prog.avals[prog.inputs[leaf]] for leaf in graph.diff_leaves]
    seeded = in_avals if colors.mode == "fwd" else out_avals
    seeds, start = [], 0
    for aval in seeded:
        size = int(np.prod(aval.shape))
        onehot = colors.colors[start:start + size][None, :] == np.arange(colors.count)[:, None]
        seeds.append(jnp.asarray(onehot.reshape((colors.count,) + tuple(aval.shape)), aval.dtype))
        start += size
    if colors.mode == "fwd":
        def push(*tangents):
            _, out_tangents, aux = jax.jvp(f, diff, list(tangents), has_aux=True)
            return out_tangents, aux

        results, aux = jax.vmap(push, out_axes=(0, None))(*seeds)
    else:
        _, pullback, aux = jax.vjp(f, *diff, has_aux=True)
        results = jax.vmap(lambda *c: pullback(list(c)))(*seeds)
    offsets = np.cumsum([0] + [int(np.prod(a.shape)) for a in seeded])
    blocks = []
    for b, entries in enumerate(colors.pattern.blocks):
        k, leaf = divmod(b, len(in_avals))
        out_shape, in_shape = tuple(out_avals[k].shape), tuple(in_avals[leaf].shape)
        shape, dtype = out_shape + in_shape, in_avals[leaf].dtype
        if entries is None:
            blocks.append(sparse_block(None, None, shape, dtype) if layout == "sparse" else jnp.zeros(shape, dtype))
            continue
        rows, cols = entries
        if colors.mode == "fwd":
            values = results[k].reshape(colors.count, -1)[colors.colors[offsets[leaf] + cols], rows]
        else:
            values = results[leaf].reshape(colors.count, -1)[colors.colors[offsets[k] + rows], cols]
        values = values.astype(dtype)
        if layout == "sparse":
            indices = np.concatenate([multi_indices(rows, out_shape), multi_indices(cols, in_shape)], axis=1)
            blocks.append(sparse.BCOO((values, jnp.asarray(indices, np.int32)), shape=shape))
        else:
            dense = jnp.zeros((int(np.prod(out_shape)), int(np.prod(in_shape))), dtype)
            blocks.append(dense.at[rows, cols].set(values, unique_indices=True, indices_are_sorted=True)
                          .reshape(shape))
    return blocks, aux
