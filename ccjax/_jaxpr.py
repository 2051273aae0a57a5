"""Every use of JAX's jaxpr data structures lives here.

Only names exported by ``jax.extend.core`` and ``jax.core`` are used, plus
``Primitive.get_bind_params`` (a method of the public ``Primitive`` class,
the way ``jax.core.eval_jaxpr`` itself rebinds an equation).  Keeping them
in one module means a JAX upgrade breaks one file, which
``tests/test_jaxpr_compat.py`` exercises directly.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import math
from typing import Any, Optional, Sequence

import numpy as np

import jax
from jax.extend import core as jex

#: Primitives whose body is inlined into the graph.
CALL_PRIMITIVES = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint", "remat2"})


def is_literal(atom) -> bool:
    return isinstance(atom, jex.Literal)


def is_dropvar(var) -> bool:
    return isinstance(var, jex.DropVar)


def is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def is_known(x) -> bool:
    """Whether ``x`` is an array whose values are known while tracing: a
    NumPy array, or a JAX array that is no tracer."""
    return isinstance(x, (np.ndarray, jax.Array)) and not is_tracer(x)


def is_jax_value(x) -> bool:
    """Whether ``x`` can be a jaxpr input or output (arrays, scalars, tracers)."""
    return jex.valid_jaxtype(x) or is_tracer(x)


def literal_value(atom):
    return atom.val


def is_closed_jaxpr(x) -> bool:
    return isinstance(x, jex.ClosedJaxpr)


def is_open_jaxpr(x) -> bool:
    return isinstance(x, jex.Jaxpr)


def restage(jaxpr, constvars: Sequence, invars: Sequence, debug_info):
    """``jaxpr``'s equations, outputs and effects over new ``constvars`` and ``invars``."""
    return jex.Jaxpr(list(constvars), list(invars), jaxpr.outvars, jaxpr.eqns, jaxpr.effects, debug_info)


def close(jaxpr, consts: Sequence):
    """``jaxpr`` closed over ``consts`` (one value per constvar)."""
    return jex.ClosedJaxpr(jaxpr, list(consts))


def spec(aval) -> jax.ShapeDtypeStruct:
    """``aval`` as an argument to ``jax.make_jaxpr``, weak type included."""
    return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=bool(getattr(aval, "weak_type", False)))


def bind(primitive, params: dict, args: Sequence[Any], raw: bool = False) -> list:
    """Apply one equation's primitive to ``args`` (values or tracers).

    A gather whose out-of-range reads JAX's two AD modes treat differently
    is applied with the derivative ``jax.jacrev`` gives it in both modes
    (:func:`_gather_dropping_tangents`), also inside the bodies of loops,
    branches and calls (:data:`REBINDS_GATHERS`: those are bound with the
    bodies restaged that way), unless ``raw``: then the equation is bound
    as it is (to restage it unchanged)."""
    if not raw:
        if primitive.name == "gather" and not _checked_gather(params):
            return [_gather_dropping_tangents(primitive, params)(*args)]
        params = _with_dropping_gathers(primitive.name, params)
    return _bind(primitive, params, args)


#: Primitives and their closed-jaxpr parameters that :func:`bind` restages
#: with every unchecked gather inside applied as ``jax.jacrev``
#: differentiates it, so that JAX's forward mode of the equation is the
#: linear map its reverse mode transposes (:func:`forward_matches_reverse`).
#: Measured: five sweeps ``v[perm]`` of a 1,024-point grid in a
#: ``fori_loop`` ran 174 ms by ``jax.jacrev`` (the gathers transpose to
#: scatter-adds) and 3.8 ms by ``jax.jacfwd``, which was not allowed to run.
REBINDS_GATHERS = {"scan": ("jaxpr",), "while": ("cond_jaxpr", "body_jaxpr"), "cond": ("branches",),
                   "jit": ("jaxpr",), "pjit": ("jaxpr",), "closed_call": ("call_jaxpr",)}


def _with_dropping_gathers(name: str, params: dict) -> dict:
    """``params`` with each closed jaxpr of :data:`REBINDS_GATHERS` that holds
    an unchecked gather restaged by :func:`_dropping_gathers`."""
    fields = REBINDS_GATHERS.get(name, ())
    if not fields or not any(_has_unchecked_gather(params[f]) for f in fields if f in params):
        return params
    new = dict(params)
    for f in fields:
        if f in params:
            v = params[f]
            new[f] = tuple(map(_dropping_gathers, v)) if isinstance(v, tuple) else _dropping_gathers(v)
    return new


def _has_unchecked_gather(jaxprs) -> bool:
    for cj in jaxprs if isinstance(jaxprs, tuple) else (jaxprs,):
        jaxpr = cj.jaxpr if is_closed_jaxpr(cj) else cj
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "gather" and not _checked_gather(eqn.params):
                return True
            if any(_has_unchecked_gather(sub) for sub in jex.jaxprs_in_params(eqn.params)):
                return True
    return False


def _restageable(jaxpr) -> bool:
    """Whether :func:`_dropping_gathers` restages a body: not one with
    effects (a callback inside a loop), whose order a restaging could change."""
    return not jaxpr.effects


@functools.lru_cache(maxsize=256)
def _dropping_gathers(closed_jaxpr):
    """``closed_jaxpr`` restaged through :func:`bind` (same inputs, outputs
    and values; its gathers' derivatives those of ``jax.jacrev``), or
    itself where it has effects."""
    jaxpr = closed_jaxpr.jaxpr
    if not is_closed_jaxpr(closed_jaxpr) or not _restageable(jaxpr):
        return closed_jaxpr

    def run(*args):
        env = dict(zip(jaxpr.constvars, closed_jaxpr.consts))
        env.update(zip(jaxpr.invars, args))
        read = lambda a: literal_value(a) if is_literal(a) else env[a]
        for eqn in jaxpr.eqns:
            outs = bind(eqn.primitive, eqn.params, [read(a) for a in eqn.invars])
            env.update(zip(eqn.outvars, outs))
        return [read(a) for a in jaxpr.outvars]

    return jax.make_jaxpr(run)(*[spec(v.aval) for v in jaxpr.invars])


def _bind(primitive, params: dict, args: Sequence[Any]) -> list:
    bind_params = primitive.get_bind_params(params)
    if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
        subfuns, bind_params = bind_params
        args = (*subfuns, *args)
    out = primitive.bind(*args, **bind_params)
    return list(out) if primitive.multiple_results else [out]


def call_body(eqn) -> tuple[Any, list]:
    """The inner jaxpr and its constants of a call-like equation."""
    inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if isinstance(inner, jex.ClosedJaxpr):
        return inner.jaxpr, list(inner.consts)
    return inner, []


def is_custom_jvp(eqn) -> bool:
    return eqn.primitive.name == "custom_jvp_call"


def is_custom_vjp(eqn) -> bool:
    return eqn.primitive.name.startswith("custom_vjp_call")


#: Primitives whose reverse-mode derivative JAX does not take as the
#: transpose of the forward one: JAX applies ``reduce_precision`` to
#: cotangents as to tangents, so ``jax.jacrev`` rounds every accumulated
#: cotangent where ``jax.jacfwd`` (and any product of partials) rounds a unit.
ROUNDS_COTANGENTS = ("reduce_precision",)


def reverse_only(eqn) -> bool:
    """Whether only JAX's reverse pass over the whole function gives
    ``jax.jacrev``'s derivative of ``eqn``: a ``custom_vjp`` call, or an
    equation that rounds cotangents (:data:`ROUNDS_COTANGENTS`, also inside
    the sub-jaxprs JAX differentiates)."""
    return is_custom_vjp(eqn) or _rounds_cotangents(eqn.primitive.name, eqn.params)


def _rounds_cotangents(name: str, params: Any) -> bool:
    if name in ROUNDS_COTANGENTS:
        return True
    return isinstance(params, dict) and any(_rounds_cotangents(e.primitive.name, e.params)
                                            for sub in _differentiated_jaxprs(name, params) for e in sub.eqns)


#: Collectives over named axes (``vmap``/``shard_map`` axis names): their
#: reverse-mode derivative mixes the cotangents of all members of the axis.
COLLECTIVES = frozenset({"psum", "pmax", "pmin", "ppermute", "all_gather", "all_to_all", "reduce_scatter",
                         "ragged_all_to_all", "psum_invariant", "pbroadcast", "pvary", "pgather"})


#: The primitives whose own scalar multiplications the cost model counts.
MULTIPLYING = frozenset({"mul", "dot_general", "conv_general_dilated", "fft"})

#: Primitives that only move, add, negate or select data: neither they nor
#: JAX's JVP of them nor its transpose multiply, in any mode or ``vmap``
#: (``tests/test_plain_modes.py`` traces each to check), so counting the
#: multiplications of JAX's Jacobian programs needs no trace of them.
MOVES_DATA = frozenset({
    "slice", "pad", "concatenate", "reshape", "squeeze", "broadcast_in_dim", "transpose", "rev", "neg", "add",
    "add_any", "sub", "convert_element_type", "reduce_sum", "cumsum", "gather", "scatter-add", "dynamic_slice",
    "dynamic_update_slice", "select_n", "split", "stack", "unstack", "tile", "optimization_barrier",
})


def own_multiplications(name: str, params: dict, lhs_shape: Sequence[int], out_shape: Sequence[int],
                        rhs_shape: Sequence[int] = ()) -> int:
    """Scalar multiplications of one ``mul`` (its output size),
    ``dot_general`` (its whole iteration space), ``conv_general_dilated``
    (per output element, the kernel's taps for one output feature, padding
    included: ``rhs_shape`` is needed) or ``fft`` (:func:`fft_multiplications`)
    equation, 0 for any other primitive (sub-jaxprs not included)."""
    if name == "fft":
        return fft_multiplications(params, lhs_shape)
    if name == "mul":
        return math.prod(out_shape)
    if name == "dot_general":
        (contract, _), _ = params["dimension_numbers"]
        return math.prod(out_shape) * math.prod(lhs_shape[k] for k in contract)
    if name == "conv_general_dilated":
        out_features = rhs_shape[params["dimension_numbers"].rhs_spec[0]]
        return math.prod(out_shape) * (math.prod(rhs_shape) // max(out_features, 1))
    return 0


def fft_multiplications(params: dict, in_shape: Sequence[int]) -> int:
    """Multiplications of one ``fft`` equation, as a radix-2 transform does
    them: per transform of ``n`` points (the product of ``fft_lengths``),
    ``n/2 log2 n`` complex products, half as many for a real transform
    (``RFFT``, ``IRFFT``).  Without this term an FFT would count as free and
    an elimination through its dense Jacobian (``n`` transforms, then dense
    products) would look cheaper than JAX's modes, which transform each
    tangent."""
    n = math.prod(params["fft_lengths"])
    if n <= 1:
        return 0
    transforms = math.prod(in_shape[:len(in_shape) - len(params["fft_lengths"])])
    per = (n // 2) * math.ceil(math.log2(n))
    real = jax.lax.FftType(params["fft_type"]).name in ("RFFT", "IRFFT")
    return transforms * (per // 2 if real else per)


#: Elementwise primitives whose JVP multiplies every tangent element by a
#: factor of the primal (``t * cos(x)``, ``t * (1 - y * y)``...) and whose
#: transpose multiplies every cotangent element by it: at least one
#: multiplication per output element and (co)tangent in either of JAX's
#: modes (``tests/test_plain_modes.py`` checks each on JAX's own rules).
#: Not here: ``log``/``log1p``/``atan`` (a division), binary primitives
#: (which operand is active decides).
TANGENT_MULTIPLYING = frozenset({
    "sin", "cos", "tan", "exp", "exp2", "expm1", "tanh", "logistic", "sqrt", "rsqrt", "cbrt", "square",
    "integer_pow", "sinh", "cosh", "asin", "acos", "asinh", "atanh", "erf", "erf_inv", "lgamma", "digamma",
})


def tangent_multiplications(name: str, params: dict, out_shape: Sequence[int]) -> int:
    """Multiplications JAX's JVP (or its transpose) of one such equation
    performs per (co)tangent at least: its output size, or 0 for a
    primitive outside :data:`TANGENT_MULTIPLYING` (and ``x ** 0``, ``x ** 1``)."""
    if name not in TANGENT_MULTIPLYING or (name == "integer_pow" and params.get("y") in (0, 1)):
        return 0
    return int(np.prod(out_shape))


def staged_alone(name: str, params: dict) -> bool:
    """Whether :func:`bind` of this equation stages exactly itself: a
    primitive without sub-jaxprs in its parameters, other than a gather
    (which :func:`bind` may wrap in its own derivative rule).  Its
    multiplications are then :func:`own_multiplications`, without a trace."""
    return name != "gather" and not any(True for _ in jex.jaxprs_in_params(params))


def as_function(closed_jaxpr):
    """The function ``closed_jaxpr`` stages: flat arguments in, a list of its outputs out."""
    return jex.jaxpr_as_fun(closed_jaxpr)


def equation_count(jaxpr) -> int:
    """Equations of ``jaxpr`` with calls counted by their bodies."""
    return sum(equation_count(call_body(e)[0]) if e.primitive.name in CALL_PRIMITIVES else 1 for e in jaxpr.eqns)


def count_multiplications(jaxpr) -> int:
    """Scalar multiplications in ``jaxpr``: a ``mul`` costs its output size, a
    ``dot_general`` its whole iteration space; sub-jaxprs are counted once
    per run (a ``scan`` body ``length`` times, a ``while`` body once)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in MULTIPLYING:
            total += own_multiplications(name, eqn.params, eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape,
                                         eqn.invars[-1].aval.shape)
        repeat = int(eqn.params.get("length", 1)) if name == "scan" else 1
        for sub in jex.jaxprs_in_params(eqn.params):
            total += repeat * count_multiplications(sub)
    return total


def inner_dims(params: dict) -> list[int]:
    """The dimensions of every variable of the jaxprs in ``params``, sub-jaxprs included."""
    dims = []
    for sub in jex.jaxprs_in_params(params):
        for eqn in sub.eqns:
            for v in (*eqn.invars, *eqn.outvars):
                dims.extend(d for d in getattr(v.aval, "shape", ()) if isinstance(d, int))
            dims.extend(inner_dims(eqn.params))
        dims.extend(d for v in sub.invars for d in v.aval.shape if isinstance(d, int))
    return dims


class NotSeedLinear(ValueError):
    """A jaxpr's count is not read as linear in its seeds (:func:`seed_split`)."""


@dataclasses.dataclass(frozen=True)
class SeedSplit:
    """Counts of a jaxpr traced under ``jax.vmap`` over ``seeds`` (co)tangent
    seeds, split by whether an equation works on the seeds: ``fixed``
    multiplications run once, ``per_seed`` once per seed, and each scatter
    as ``(updates, batched, repeat)``: that many update entries (per seed
    where ``batched``), run ``repeat`` times.  Read at any seed count
    :meth:`mults` and :meth:`scattered` equal :func:`count_multiplications`
    and :func:`scattered_entries` of the same program traced at that count."""

    fixed: int
    per_seed: int
    scatters: tuple

    def mults(self, seeds: int) -> int:
        return self.fixed + seeds * self.per_seed

    def scattered(self, seeds: int, least: int = 0) -> int:
        total = 0
        for updates, batched, repeat in self.scatters:
            size = updates * seeds if batched else updates
            total += repeat * size if size >= least else 0
        return total


def seed_split(jaxpr, seeds: int) -> SeedSplit:
    """:class:`SeedSplit` of ``jaxpr``, traced under ``jax.vmap`` over
    ``seeds`` seeds, where ``seeds`` is a prime that divides no dimension of
    the program before batching (a dimension that is a multiple of it holds
    the seeds, alone or merged with another by a batching rule).  An
    equation on the seeds multiplies ``seeds`` times its count per seed
    (``vmap`` adds the seeds as a dimension of its operands and results,
    never one it contracts or reduces), so one trace gives the count at
    every seed count.  Raises :class:`NotSeedLinear` where a count on the
    seeds is not a multiple of ``seeds``."""
    fixed = per_seed = 0
    scatters = []
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        counts = []  # (kind, count, the shape that holds the seeds if any)
        if name in MULTIPLYING:
            out = eqn.outvars[0].aval.shape
            counts.append(("mults", own_multiplications(name, eqn.params, eqn.invars[0].aval.shape, out,
                                                        eqn.invars[-1].aval.shape), out))
        if name.startswith("scatter"):
            updates = eqn.invars[2].aval.shape
            counts.append(("scatter", math.prod(updates), updates))
        for kind, count, shape in counts:
            batched = any(d % seeds == 0 for d in shape if d)
            if batched and count % seeds:
                raise NotSeedLinear(f"{name}: {count} is not a multiple of {seeds} seeds")
            unit = count // seeds if batched else count
            if kind == "scatter":
                scatters.append((unit, batched, 1))
            elif batched:
                per_seed += unit
            else:
                fixed += unit
        repeat = int(eqn.params.get("length", 1)) if name == "scan" else 1
        for sub in jex.jaxprs_in_params(eqn.params):
            inner = seed_split(sub, seeds)
            fixed += repeat * inner.fixed
            per_seed += repeat * inner.per_seed
            scatters.extend((u, b, r * repeat) for u, b, r in inner.scatters)
    return SeedSplit(fixed, per_seed, tuple(scatters))


def scattered_entries(jaxpr, least: int = 0) -> int:
    """Update entries the scatters of ``jaxpr`` write (``scatter``,
    ``scatter-add``, ...) counting only scatters of at least ``least``
    updates, sub-jaxprs counted as in :func:`count_multiplications`."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name.startswith("scatter"):
            size = int(np.prod(eqn.invars[2].aval.shape))
            total += size if size >= least else 0
        repeat = int(eqn.params.get("length", 1)) if name == "scan" else 1
        for sub in jex.jaxprs_in_params(eqn.params):
            total += repeat * scattered_entries(sub, least)
    return total


#: Gather modes whose derivative is the same in both of JAX's modes at every
#: index.  Under ``PROMISE_IN_BOUNDS`` (``x[idx]``'s default) an out-of-range
#: read follows XLA's clamped start in forward mode while the transpose, a
#: scatter, drops the window, so ``jax.jacfwd`` and ``jax.jacrev`` disagree.
_CHECKED_GATHER_MODES = frozenset({"CLIP", "FILL_OR_DROP"})


#: Scatters whose forward-mode derivative differs from ``jax.jacrev``'s at
#: an out-of-range index, by index mode: the JVP of ``scatter-max``/``-min``
#: reads the clamped window (``CLIP``, ``PROMISE_IN_BOUNDS``) where the
#: transpose drops it, and ``scatter-add``'s does under
#: ``PROMISE_IN_BOUNDS`` (plain ``scatter``'s never: checked against
#: ``jax.jacfwd``/``jax.jacrev`` in ``tests/test_fidelity.py``);
#: ``scatter-sub``/``-mul`` are taken to follow ``scatter-add``.
_SCATTER_MODES_FORWARD_DIFFERS = {
    "scatter-max": frozenset({"CLIP", "PROMISE_IN_BOUNDS"}),
    "scatter-min": frozenset({"CLIP", "PROMISE_IN_BOUNDS"}),
    "scatter-add": frozenset({"PROMISE_IN_BOUNDS"}),
    "scatter-sub": frozenset({"PROMISE_IN_BOUNDS"}),
    "scatter-mul": frozenset({"PROMISE_IN_BOUNDS"}),
}


def _scatter_forward_differs(name: str, params: dict) -> bool:
    mode = params.get("mode")
    return getattr(mode, "name", str(mode)) in _SCATTER_MODES_FORWARD_DIFFERS.get(name, ())


def _checked_gather(params: dict) -> bool:
    mode = params.get("mode")
    return getattr(mode, "name", str(mode)) in _CHECKED_GATHER_MODES


def _gather_dropping_tangents(primitive, params: dict):
    """The gather of ``params`` whose JVP reads tangents in ``FILL_OR_DROP``
    mode (filled with 0): the linear map ``jax.jacrev`` transposes, since
    the scatter that transposes the gather drops out-of-range windows.
    In range it is the gather's own derivative."""
    tangent_params = dict(params, mode=jax.lax.GatherScatterMode.FILL_OR_DROP, fill_value=0)

    @jax.custom_jvp
    def gather(operand, indices):
        return _bind(primitive, params, [operand, indices])[0]

    @gather.defjvp
    def gather_jvp(primals, tangents):
        operand, indices = primals
        return gather(operand, indices), _bind(primitive, tangent_params, [tangents[0], indices])[0]

    return gather


def forward_matches_reverse(name: str, params: Any, top_level: bool = True) -> bool:
    """Whether JAX's forward-mode derivative of an equation (``name``,
    ``params``) is, at every input, the linear map its reverse mode
    transposes, so a Jacobian may be built either way and still equal
    ``jax.jacrev``'s.  False for a ``custom_vjp`` call (no forward mode),
    parameters this cannot read, a gather in an unchecked index mode
    that :func:`bind` does not apply with ``jax.jacrev``'s derivative in
    both modes (``top_level`` False: inside a sub-jaxpr other than those of
    :data:`REBINDS_GATHERS`, such as a ``custom_jvp`` function's, or inside
    one with effects, which :func:`bind` leaves as it is), or a
    scatter in an index mode where an out-of-range index splits the two
    (:data:`_SCATTER_MODES_FORWARD_DIFFERS`)."""
    if not isinstance(params, dict) or name.startswith("custom_vjp_call") or name in ROUNDS_COTANGENTS:
        return False
    if name == "gather" and not top_level and not _checked_gather(params):
        return False
    if _scatter_forward_differs(name, params):
        return False
    rebound = top_level and name in REBINDS_GATHERS
    return all(forward_matches_reverse(e.primitive.name, e.params, top_level=rebound and _restageable(sub))
               for sub in _differentiated_jaxprs(name, params) for e in sub.eqns)


def _differentiated_jaxprs(name: str, params: dict) -> list:
    """The sub-jaxprs of an equation that JAX's AD differentiates or
    transposes.  A ``custom_linear_solve``'s ``solve`` and
    ``transpose_solve`` are not among them: JAX applies them to tangents and
    cotangents as given ("this function need not be differentiable"), and
    only ``matvec``/``vecmat`` are differentiated; so a gather inside an LU
    solve (its pivot permutation) cannot make forward and reverse mode
    differ, as long as the solves invert ``matvec`` and its transpose, which
    ``lax.custom_linear_solve`` requires."""
    if name == "custom_linear_solve":
        jaxprs = params.get("jaxprs")
        fields = ("matvec", "vecmat")
        if all(hasattr(jaxprs, f) for f in fields):
            return [j.jaxpr if hasattr(j, "jaxpr") else j for f in fields if (j := getattr(jaxprs, f)) is not None]
    return list(jex.jaxprs_in_params(params))


class _Identity:
    """Compares by identity and holds a reference, so the id cannot be reused."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Identity) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


def hashable(value):
    """``value`` where it is hashable, else a key comparing by its identity
    (holding a reference, so the id cannot be reused)."""
    try:
        hash(value)
        return value
    except TypeError:
        return _Identity(value)


_PRINTED = (int, float, complex, bool, str, bytes, type(None), np.dtype, np.generic, enum.Enum, type)


def const_key(value):
    """A constant by value (shape, dtype, bytes); a tracer by identity."""
    if is_tracer(value):
        return _Identity(value)
    array = np.asarray(value)
    return array.shape, array.dtype.str, array.tobytes()


def custom_jvp_rule(eqn) -> tuple:
    """The custom rule of a ``custom_jvp_call``: ``(JVP jaxpr, keys of the
    values it closes over)``.  With every tangent nonzero the jaxpr's
    invars are the primals followed by the tangents."""
    n = len(eqn.invars) - eqn.params["num_consts"]
    jaxpr, consts, _ = eqn.params["jvp_jaxpr_fun"].call_wrapped(*[False] * n)
    return jaxpr, tuple(const_key(c) for c in consts)


def structural_key(jaxpr) -> tuple:
    """A key equal for two jaxprs that build the same graph.

    The printed jaxpr fixes primitives, parameters, shapes and dtypes.
    Parameter objects that printing elides are added themselves: compared
    by equality where hashable, else by identity (with a reference held),
    so two different rules never share a graph.

    Except ``custom_jvp`` rules: JAX wraps a rule in a new function object
    at every trace, so keyed by that object a function using ``jax.nn.relu``
    would never share a graph between calls.  With ``symbolic_zeros=False``
    (the default) a rule only ever sees instantiated tangents, so the
    printed JVP jaxpr of the rule with every tangent nonzero, and the
    values it closes over, fix it; that jaxpr is walked in turn from its
    tangents.  Only calls whose operands may carry a derivative (depend on
    an input of the jaxpr, or on a tangent inside a rule) are keyed by
    their rule: the graph expands no other (``relu``'s rule calls ``relu``
    on the primal, ``jnp.sinc``'s a new rule of a series), and evaluating
    one never runs its rule.
    """
    extra = []

    def walk(jx, live: set) -> None:
        for eqn in jx.eqns:
            flags = [not is_literal(a) and a in live for a in eqn.invars]
            if any(flags):
                live.update(eqn.outvars)
            custom_jvp = is_custom_jvp(eqn) and not eqn.params["symbolic_zeros"]
            for name, value in eqn.params.items():
                if custom_jvp and name == "jvp_jaxpr_fun":
                    if any(flags):
                        rule, consts = custom_jvp_rule(eqn)
                        extra.append((str(rule), consts))
                        walk(rule, set(rule.invars[len(rule.invars) // 2:]))
                else:
                    param(value, flags, eqn.primitive.name in CALL_PRIMITIVES or is_custom_jvp(eqn))

    def param(value, flags: list, one_to_one: bool) -> None:
        """``flags``: which operands of the equation may carry a derivative;
        ``one_to_one``: a sub-jaxpr's invars are the operands (a call)."""
        if isinstance(value, (jex.ClosedJaxpr, jex.Jaxpr)):
            jx = value.jaxpr if isinstance(value, jex.ClosedJaxpr) else value
            if one_to_one:
                walk(jx, {v for v, f in zip(jx.invars, flags) if f})
            else:  # loops and branches: every invar when any operand is live
                walk(jx, set(jx.invars) if any(flags) else set())
        elif isinstance(value, (tuple, list)):
            for v in value:
                param(v, flags, one_to_one)
        elif not isinstance(value, _PRINTED):
            extra.append(hashable(value))

    walk(jaxpr, set(jaxpr.invars))
    return str(jaxpr), tuple(extra)


def is_weakly_typed(x) -> bool:
    """Whether ``x`` (a Python scalar, array or tracer) has a weak type."""
    return bool(getattr(jax.typeof(x), "weak_type", False))


def as_weakly_typed(x):
    """``x`` with the same values and dtype but a weak type.

    ``jax.jacrev`` returns weakly typed blocks for weakly typed inputs (it
    casts each cotangent to its input's type); no public function sets the
    flag, so the public ``convert_element_type`` primitive is bound with it,
    as ``jax.lax`` itself does.
    """
    if is_weakly_typed(x):
        return x
    return jax.lax.convert_element_type_p.bind(x, new_dtype=x.dtype, weak_type=True, sharding=None)


def primitive_names(name: str, params: Optional[dict]) -> set[str]:
    """``name`` and the names of every primitive in the equation's
    sub-jaxprs (a loop body, a branch, a linear solve's functions)."""
    names = {name}
    for sub in jex.jaxprs_in_params(params or {}):
        for eqn in sub.eqns:
            names |= primitive_names(eqn.primitive.name, eqn.params)
    return names
