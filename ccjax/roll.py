"""Unrolled loops rolled back into ``lax.scan``.

A Python ``for`` loop traced by ``jax.make_jaxpr`` leaves the same block of
equations once per iteration: 5,000 steps of an integrator or layers of a
network become tens of thousands of equations, and XLA's compile time of a
straight-line program that long grows faster than its length (a 20,000-
equation program takes minutes).  A loop kept a loop compiles once.

:func:`roll_loops` finds the longest run of repeated blocks in a jaxpr and
replaces it by one ``lax.scan`` whose body is the first block:

* every block has the same equations (primitive, parameters, operand and
  result types) and the same wiring: an operand is read from the same
  position of the same block, from the same position of the previous block
  (a *carry*), or from outside the run;
* an operand read from outside is a loop constant when every block reads the
  same value, else the blocks' values stacked (*xs*): different weights per
  layer, a time step written as a Python float;
* a static ``slice`` may start elsewhere in every block (``x[t]`` in step
  ``t``) of a loop that carries a value: the body reads the block's window
  with a ``dynamic_slice`` at its starts, stacked like *xs* (in range by
  construction, so the clamping of ``dynamic_slice`` never moves it).
  Blocks that carry nothing (a sliding window written as a comprehension)
  are not rolled this way: their static slices are selections the
  elimination keeps sparse, where a scan would be planned densely;
* a value of the run used after it is the final carry (last block) or the
  stacked values of the block that made it (*ys*).

The scan evaluates exactly the equations of the original program, in the
same order, on the same values, so the Jacobian of the rolled program is the
Jacobian of the original one; the planner then sees one ``scan`` equation
(JAX's AD of it, or JAX's plain modes over the whole function, whichever
multiplies less: :mod:`ccjax.jax_modes`) instead of the unrolled chain.
Nothing is rolled below :data:`ROLL_MIN_EQUATIONS`, where unrolled
elimination is cheap to plan and compile and can beat the plain modes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ccjax import _jaxpr

#: Jaxprs with fewer equations are never rolled.  Measured (CPU, float32,
#: first call / steady call of ``order="auto"`` unrolled against rolled):
#: 25 heat steps written with ``jnp.roll`` (350 equations) 39 s / 4.3 ms
#: against 0.53 s / 1.1 ms; the scaling benchmark's MLP at 249 equations
#: 0.81 s / 220 µs against 0.24 s / 168 µs, at 129 0.44 s / 114 µs against
#: 0.18 s / 92 µs; its RK4 chain at 132 0.44 s / 66 µs against 0.33 s /
#: 70 µs; eight scalar Lorenz-63 Euler steps (111) 1.17 s / 80 µs against
#: 0.26 s / 23 µs; 20 Hénon steps (105) 0.43 s / 43 µs against 0.16 s /
#: 10 µs.  Below about 100 equations the unrolled elimination is cheap to
#: compile and can beat the plain modes (RK4, 99 equations in 3 steps: 77
#: against ``jax.jacrev``'s 179 µs).
ROLL_MIN_EQUATIONS = 100
#: A run must repeat its block at least this often to be rolled ...
MIN_REPEATS = 4
#: ... or this often in a jaxpr of :data:`FEW_REPEATS_MIN_EQUATIONS` equations
#: or more, where rolling removes :data:`FEW_REPEATS_MIN_REMOVED` or more.
#: Three long blocks unrolled are a long program to compile: three RK4 steps
#: of Lorenz-63 on scalars (220 equations, blocks of 73) took 2.1 s to a
#: first Jacobian and 50-90 µs a call unrolled, 0.36 s and 10 µs rolled
#: (``jax.jacfwd``: 0.38 s, 70 µs).  Shorter programs keep four: three
#: Newton steps with ``jnp.linalg.solve`` (165 equations, blocks of 55) ran
#: 125 µs rolled against 88 µs unrolled (planned as forward mode either way).
FEW_REPEATS = 3
FEW_REPEATS_MIN_EQUATIONS = 200
FEW_REPEATS_MIN_REMOVED = 100
#: Longest block considered (equations per iteration).
MAX_PERIOD = 4096
#: A loop is rolled only if that removes at least this many equations.
MIN_REMOVED = ROLL_MIN_EQUATIONS // 2
#: Loops rolled per jaxpr (one after the other, longest first).
MAX_LOOPS = 4


@dataclasses.dataclass(frozen=True)
class Loop:
    """Equations ``start .. start + period * repeats`` of a jaxpr as
    ``repeats`` copies of the block ``start .. start + period``.

    ``sources[i][m]`` says where operand ``m`` of block equation ``i``
    comes from: ``("internal", j, o)`` output ``o`` of block equation ``j``,
    ``("carry", c)`` carry ``c`` (output ``carries[c]`` of the previous
    block; ``inits[c]`` for the first), ``("xs", q)`` the ``q``-th stacked
    operand (``xs[q]``: one atom per block), ``("const", atom)`` one value
    for all blocks.  ``ys``: ``(j, o)`` outputs used after the run from
    blocks other than the last one's carries.  ``windows``: ``(j,
    starts)`` for a block's static ``slice`` that reads another window in
    each block (``x[k]`` in the ``k``-th iteration): ``starts`` is the
    ``(repeats, rank)`` array of its start indices, and the scan's body
    reads the window with a ``dynamic_slice`` at the block's row.
    """

    start: int
    period: int
    repeats: int
    sources: tuple
    carries: tuple
    inits: tuple
    xs: tuple
    ys: tuple
    windows: tuple = ()

    @property
    def stop(self) -> int:
        return self.start + self.period * self.repeats


# ------------------------------------------------------------------ signatures
def _aval_key(aval) -> tuple:
    return tuple(aval.shape), str(aval.dtype), bool(getattr(aval, "weak_type", False))


class _Signatures:
    """An integer per equation, equal for equations a loop may repeat:
    same primitive, parameters (sub-jaxprs by their printed form, custom
    JVP rules by their JVP jaxpr), operand and result types, and the same
    operands written as literals (their values may differ)."""

    def __init__(self):
        self.ids: dict = {}
        self.printed: dict = {}

    def __call__(self, eqn) -> int:
        if _is_window(eqn):  # x[k] in iteration k: any start, one window size
            params: tuple = (("window", tuple(np.subtract(eqn.params["limit_indices"], eqn.params["start_indices"]))),)
        else:
            params = tuple(sorted((k, self._param(eqn, k, v)) for k, v in eqn.params.items()))
        key = (eqn.primitive.name, params,
               tuple((_jaxpr.is_literal(a), _aval_key(a.aval)) for a in eqn.invars),
               tuple(_aval_key(v.aval) for v in eqn.outvars), bool(eqn.effects))
        return self.ids.setdefault(key, len(self.ids))

    def _param(self, eqn, name: str, value):
        if _jaxpr.is_custom_jvp(eqn) and name == "jvp_jaxpr_fun":
            return self._printed(value, lambda: repr(_jaxpr.custom_jvp_rule(eqn)))
        if _jaxpr.is_closed_jaxpr(value):
            return self._printed(value, lambda: (str(value.jaxpr), tuple(_jaxpr.const_key(c) for c in value.consts)))
        if _jaxpr.is_open_jaxpr(value):
            return self._printed(value, lambda: str(value))
        if isinstance(value, (tuple, list)):
            return tuple(self._param(eqn, name, v) for v in value)
        return _jaxpr.hashable(value)

    def _printed(self, obj, make):
        entry = self.printed.get(id(obj))
        if entry is None:
            entry = self.printed[id(obj)] = (obj, make())  # obj held: its id stays unique
        return entry[1]


def _is_window(eqn) -> bool:
    """A ``slice`` without strides: the same window wherever it starts, so a
    loop may read it at another start in every block."""
    if eqn.primitive.name != "slice":
        return False
    strides = eqn.params.get("strides")
    return strides is None or all(st == 1 for st in strides)


# ------------------------------------------------------------------ finding a loop
def _longest_runs(sig: np.ndarray, max_period: int, min_repeats: int) -> list[tuple[int, int, int, int]]:
    """``(removed, period, first, span)`` for every period: the longest
    stretch where ``sig[i] == sig[i + period]`` makes equations ``first ..
    first + span`` ``min_repeats`` or more repeats of a block, rolling which
    would remove ``removed`` equations; best first (shorter blocks first
    among equals)."""
    n = len(sig)
    found = []
    for p in range(1, min(max_period, n // min_repeats) + 1):
        same = np.concatenate(([False], sig[p:] == sig[:-p], [False]))
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))
        if not len(edges):
            continue
        starts, stops = edges[0::2], edges[1::2]
        k = int(np.argmax(stops - starts))
        length = int(stops[k] - starts[k])
        repeats = (length + p) // p
        if repeats >= min_repeats:
            found.append(((repeats - 1) * p, p, int(starts[k]), length + p))
    found.sort(key=lambda t: (-t[0], t[1]))
    return found


def find_loop(jaxpr, min_removed: int = MIN_REMOVED, candidates: int = 4,
              min_repeats: int = MIN_REPEATS) -> Optional[Loop]:
    """The run of repeated blocks of ``jaxpr`` that removes most equations
    when rolled (None if none repeats ``min_repeats`` times and removes
    ``min_removed`` equations)."""
    eqns = jaxpr.eqns
    signature = _Signatures()
    sig = np.fromiter((signature(e) for e in eqns), dtype=np.int64, count=len(eqns))
    producer = {}
    for idx, eqn in enumerate(eqns):
        for o, v in enumerate(eqn.outvars):
            producer[v] = (idx, o)
    users = _users(jaxpr)
    for removed, period, first, span in _longest_runs(sig, MAX_PERIOD, min_repeats)[:candidates]:
        if removed < min_removed:
            break
        for start in _phases(eqns, producer, first, span, period, min_repeats):
            loop = _wire(eqns, producer, users, start, period, (first + span - start) // period)
            if loop is not None:
                return loop
    return None


def _users(jaxpr) -> dict:
    """For every variable the equation indices reading it (``len(eqns)``
    standing for the jaxpr's outputs)."""
    users: dict = {}
    for idx, eqn in enumerate(jaxpr.eqns):
        for a in eqn.invars:
            if not _jaxpr.is_literal(a):
                users.setdefault(a, []).append(idx)
    for a in jaxpr.outvars:
        if not _jaxpr.is_literal(a):
            users.setdefault(a, []).append(len(jaxpr.eqns))
    return users


def _phases(eqns, producer: dict, first: int, span: int, period: int, min_repeats: int) -> list[int]:
    """Block starts to try within ``first .. first + span``, best first:
    at least ``min_repeats`` blocks, no value crossing two block
    boundaries (produced in one block, read two blocks later), the most
    blocks, then the fewest values cut."""
    pairs = [(producer[a][0], idx) for idx in range(first, first + span) for a in eqns[idx].invars
             if not _jaxpr.is_literal(a) and a in producer and first <= producer[a][0]]
    made, read = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    scored = []
    for offset in range(period):
        start = first + offset
        repeats = (first + span - start) // period
        if repeats < min_repeats:
            break
        crossings = (read - start) // period - (made - start) // period
        inside = (made >= start) & (read < start + repeats * period)
        if np.all(crossings[inside] <= 1):
            scored.append((-repeats, int(np.count_nonzero(crossings[inside] == 1)), start))
    scored.sort()
    return [start for _, _, start in scored[:8]]


def _same_atom(a, b) -> bool:
    if _jaxpr.is_literal(a) or _jaxpr.is_literal(b):
        return (_jaxpr.is_literal(a) and _jaxpr.is_literal(b)
                and np.array_equal(np.asarray(_jaxpr.literal_value(a)), np.asarray(_jaxpr.literal_value(b))))
    return a is b


def _wire(eqns, producer: dict, users: dict, start: int, period: int, repeats: int) -> Optional[Loop]:
    """The :class:`Loop` of ``repeats`` blocks from ``start``, or None when
    the blocks are not wired alike."""
    stop = start + period * repeats
    if any(e.effects for e in eqns[start:stop]):
        return None

    def where(atom, block: int):
        if _jaxpr.is_literal(atom) or atom not in producer or producer[atom][0] < start:
            return ("outside",)
        idx, o = producer[atom]
        made_in, j = divmod(idx - start, period)
        if made_in == block:
            return ("internal", j, o)
        if made_in == block - 1:
            return ("previous", j, o)
        return None

    sources, carries, inits, xs = [], [], [], []
    carry_of: dict = {}
    for i in range(period):
        row = []
        for m in range(len(eqns[start + i].invars)):
            atoms = [eqns[start + k * period + i].invars[m] for k in range(repeats)]
            kinds = [where(a, k) for k, a in enumerate(atoms)]
            later = kinds[1]
            if later is None or any(kd != later for kd in kinds[2:]):
                return None
            if later[0] == "internal":
                if kinds[0] != later:
                    return None
                row.append(later)
            elif later[0] == "previous":
                if kinds[0] != ("outside",):
                    return None
                c = carry_of.get(later[1:])
                if c is None:
                    c = carry_of[later[1:]] = len(carries)
                    carries.append(later[1:])
                    inits.append(atoms[0])
                elif not _same_atom(inits[c], atoms[0]):
                    return None
                row.append(("carry", c))
            elif kinds[0] != ("outside",):
                return None
            elif all(_same_atom(a, atoms[0]) for a in atoms[1:]):
                row.append(("const", atoms[0]))
            else:
                row.append(("xs", len(xs)))
                xs.append(tuple(atoms))
        sources.append(tuple(row))
    windows = []
    for i in range(period):
        if _is_window(eqns[start + i]):
            starts = np.array([eqns[start + k * period + i].params["start_indices"] for k in range(repeats)],
                              dtype=np.int32)  # (repeats, rank): a slice has rank >= 1
            if np.any(starts != starts[0]):
                windows.append((i, starts))
    if windows and not carries:
        return None  # blocks that only read windows (a sliding window, patches): their slices stay selections
    ys = set()
    for k in range(repeats):
        for i in range(period):
            for o, v in enumerate(eqns[start + k * period + i].outvars):
                if any(u >= stop for u in users.get(v, ())) and not (k == repeats - 1 and (i, o) in carry_of):
                    ys.add((i, o))
    return Loop(start, period, repeats, tuple(sources), tuple(carries), tuple(inits), tuple(xs), tuple(sorted(ys)),
                tuple(windows))


# ------------------------------------------------------------------ rolling
def _outer_stacks(jaxpr, loop: Loop, sources: tuple) -> dict:
    """``{xs index: source}`` for the stacked operands made outside the
    rolled program: stacks of the jaxpr's constants (per-layer weights: one
    argument instead of one per layer, which XLA compiles far faster) and
    of literals."""
    const_source = dict(zip(jaxpr.constvars, sources))
    outer = {}
    for q, atoms in enumerate(loop.xs):
        if all(_jaxpr.is_literal(a) for a in atoms):
            dtype = atoms[0].aval.dtype
            outer[q] = ("value", np.stack([np.asarray(_jaxpr.literal_value(a), dtype=dtype) for a in atoms]))
        elif all(not _jaxpr.is_literal(a) and a in const_source for a in atoms):
            outer[q] = ("stack", tuple(const_source[a] for a in atoms))
    return outer


def _rolled_fn(jaxpr, loop: Loop, outer: Sequence[int]):
    """``fn(*invars, *constvars, *stacks)``: the jaxpr with the loop as a
    ``lax.scan``; ``stacks`` are the stacked operands ``outer`` names."""
    eqns = jaxpr.eqns
    n_vars = len(jaxpr.invars) + len(jaxpr.constvars)
    template = eqns[loop.start:loop.start + loop.period]
    carry_index = {c: n for n, c in enumerate(loop.carries)}
    ys_index = {y: n for n, y in enumerate(loop.ys)}
    window_of = {i: len(loop.xs) + w for w, (i, _) in enumerate(loop.windows)}

    def fn(*args):
        env = dict(zip(list(jaxpr.invars) + list(jaxpr.constvars), args[:n_vars]))
        stacks = dict(zip(outer, args[n_vars:]))

        def read(atom):
            value = _jaxpr.literal_value(atom) if _jaxpr.is_literal(atom) else env[atom]
            return value.stacked[value.k] if isinstance(value, _Later) else value

        def run(eqn_list):
            for eqn in eqn_list:
                outs = _jaxpr.bind(eqn.primitive, eqn.params, [read(a) for a in eqn.invars], raw=True)
                env.update(zip(eqn.outvars, outs))

        run(eqns[:loop.start])
        xs = [stacks[q] if q in stacks else jnp.stack([_typed(a, read) for a in atoms])
              for q, atoms in enumerate(loop.xs)]
        xs += [jnp.asarray(starts) for _, starts in loop.windows]
        init = [_typed(a, read) for a in loop.inits]

        def body(carry, x):
            local: dict = {}
            for i, eqn in enumerate(template):
                operands = []
                for source, atom in zip(loop.sources[i], eqn.invars):
                    if source[0] == "internal":
                        operands.append(local[source[1:]])
                    elif source[0] == "carry":
                        operands.append(carry[source[1]])
                    elif source[0] == "xs":
                        value = x[source[1]]
                        operands.append(_jaxpr.as_weakly_typed(value) if atom.aval.weak_type else value)
                    else:
                        operands.append(read(source[1]))
                if i in window_of:
                    starts = x[window_of[i]]
                    outs = [jax.lax.dynamic_slice(operands[0], [starts[d] for d in range(starts.shape[0])],
                                                  eqn.outvars[0].aval.shape)]
                else:
                    outs = _jaxpr.bind(eqn.primitive, eqn.params, operands, raw=True)
                local.update(((i, o), v) for o, v in enumerate(outs))
            return [local[c] for c in loop.carries], [local[y] for y in loop.ys]

        final, ys = jax.lax.scan(body, init, xs, length=loop.repeats)
        for k in range(loop.repeats):
            for i, eqn in enumerate(eqns[loop.start + k * loop.period:loop.start + (k + 1) * loop.period]):
                for o, v in enumerate(eqn.outvars):
                    if k == loop.repeats - 1 and (i, o) in carry_index:
                        env[v] = final[carry_index[i, o]]
                    elif (i, o) in ys_index:
                        env[v] = _Later(ys[ys_index[i, o]], k)
        run(eqns[loop.stop:])
        return [read(a) for a in jaxpr.outvars]

    return fn


def _typed(atom, read):
    """The value of ``atom`` with the type of ``atom.aval``, weak type included."""
    if not _jaxpr.is_literal(atom):
        return read(atom)
    value = jnp.asarray(np.asarray(_jaxpr.literal_value(atom), dtype=atom.aval.dtype))
    return _jaxpr.as_weakly_typed(value) if atom.aval.weak_type else value


@dataclasses.dataclass
class _Later:
    """Block ``k``'s value of a stacked scan output, sliced where it is read."""

    stacked: Any
    k: int


def roll_once(jaxpr, loop: Loop, sources: tuple) -> tuple[Any, tuple]:
    """``jaxpr`` (constants described by ``sources``, see :class:`Rolling`)
    with ``loop`` rolled: the new jaxpr, same invars and outvars, and the
    sources of its constants."""
    outer = _outer_stacks(jaxpr, loop, sources)
    fn = _rolled_fn(jaxpr, loop, tuple(outer))
    stack_specs = [jax.ShapeDtypeStruct((loop.repeats,) + tuple(loop.xs[q][0].aval.shape), loop.xs[q][0].aval.dtype)
                   for q in outer]
    arg_specs = [_jaxpr.spec(v.aval) for v in list(jaxpr.invars) + list(jaxpr.constvars)]
    traced = jax.make_jaxpr(fn)(*arg_specs, *stack_specs)
    return _restaged(jaxpr, traced, list(sources) + list(outer.values()))


def _restaged(jaxpr, traced, arg_sources: list) -> tuple[Any, tuple]:
    """``traced`` (a closed jaxpr over ``jaxpr``'s invars followed by
    arguments with ``arg_sources``) as a jaxpr with ``jaxpr``'s invars,
    its other arguments and constants as constvars, and their sources
    (unread ones dropped)."""
    inner = traced.jaxpr
    n_in = len(jaxpr.invars)
    candidates = list(zip(inner.invars[n_in:], arg_sources))
    candidates += [(v, ("value", c)) for v, c in zip(inner.constvars, traced.consts)]
    used = _users(inner)
    kept = [(v, src) for v, src in candidates if v in used]
    restaged = _jaxpr.restage(inner, [v for v, _ in kept], inner.invars[:n_in], jaxpr.debug_info)
    return restaged, tuple(src for _, src in kept)


@dataclasses.dataclass(frozen=True, eq=False)
class Rolling:
    """A rolled ``jaxpr`` and where its constants come from: ``sources``,
    one per constvar, ``("const", k)`` the original jaxpr's constant
    ``k``, ``("stack", sources)`` those values stacked, ``("value", v)``
    ``v`` itself (stacked literals).  ``reusable``: valid for every jaxpr
    with the original's structural key.  The last stacks made are kept and
    reused while the same constant objects come in (eager calls of a
    function closing over its weights stack them once)."""

    jaxpr: Any
    sources: tuple
    reusable: bool
    _stacked: dict = dataclasses.field(default_factory=dict, repr=False)

    def closed(self, consts: Sequence):
        """The rolled closed jaxpr for the original jaxpr's ``consts``."""
        return _jaxpr.close(self.jaxpr, [self._value(src, consts) for src in self.sources])

    def _value(self, source, consts: Sequence):
        kind, arg = source
        if kind == "const":
            return consts[arg]
        if kind == "value":
            return arg
        parts = [self._value(s, consts) for s in arg]
        if any(_jaxpr.is_tracer(p) for p in parts):
            return jnp.stack(parts)
        last = self._stacked.get(id(source))
        if last is not None and len(last[0]) == len(parts) and all(a is b for a, b in zip(last[0], parts)):
            return last[1]
        # On the host: an eager jnp.stack of many arrays is an XLA program with
        # one parameter per array, which takes seconds to compile.
        stacked = jnp.asarray(np.stack([np.asarray(p) for p in parts]))
        self._stacked[id(source)] = (parts, stacked)
        return stacked


def _inlined(jaxpr, sources: tuple) -> tuple[Any, tuple]:
    """``jaxpr`` with its calls (``jit``, ``closed_call``, ``remat``)
    inlined, as the graph inlines them, so a loop inside a jitted function
    can be found; constants as in :func:`roll_once`."""
    def evaluate(jx, consts, args):
        env = dict(zip(list(jx.constvars) + list(jx.invars), list(consts) + list(args)))
        read = lambda a: _jaxpr.literal_value(a) if _jaxpr.is_literal(a) else env[a]
        for eqn in jx.eqns:
            operands = [read(a) for a in eqn.invars]
            if eqn.primitive.name in _jaxpr.CALL_PRIMITIVES:
                body, body_consts = _jaxpr.call_body(eqn)
                outs = evaluate(body, body_consts, operands)
            else:
                outs = _jaxpr.bind(eqn.primitive, eqn.params, operands, raw=True)
            env.update(zip(eqn.outvars, outs))
        return [read(a) for a in jx.outvars]

    n_in = len(jaxpr.invars)
    fn = lambda *args: evaluate(jaxpr, args[n_in:], args[:n_in])
    traced = jax.make_jaxpr(fn)(*[_jaxpr.spec(v.aval) for v in list(jaxpr.invars) + list(jaxpr.constvars)])
    return _restaged(jaxpr, traced, list(sources))


def roll_loops(closed, min_equations: Optional[int] = None,
               min_removed: Optional[int] = None) -> Optional[Rolling]:
    """``closed`` with its loops rolled, or None when it has fewer than
    ``min_equations`` equations (calls counted by their bodies; default
    :data:`ROLL_MIN_EQUATIONS`) or no loop whose rolling removes
    ``min_removed`` (default :data:`MIN_REMOVED`) and repeats its block
    :data:`MIN_REPEATS` times (:data:`FEW_REPEATS` in long programs); see
    the module docstring."""
    min_equations = ROLL_MIN_EQUATIONS if min_equations is None else min_equations
    min_removed = MIN_REMOVED if min_removed is None else min_removed
    jaxpr, sources = closed.jaxpr, tuple(("const", k) for k in range(len(closed.consts)))
    if len(jaxpr.eqns) < min_equations and _jaxpr.equation_count(jaxpr) < min_equations:
        return None
    if any(e.primitive.name in _jaxpr.CALL_PRIMITIVES for e in jaxpr.eqns):
        jaxpr, sources = _inlined(jaxpr, sources)
    rolled = False
    for _ in range(MAX_LOOPS):
        loop = find_loop(jaxpr, min_removed)
        if loop is None and _jaxpr.equation_count(jaxpr) >= FEW_REPEATS_MIN_EQUATIONS:
            loop = find_loop(jaxpr, max(min_removed, FEW_REPEATS_MIN_REMOVED), min_repeats=FEW_REPEATS)
        if loop is None:
            break
        jaxpr, sources = roll_once(jaxpr, loop, sources)
        rolled = True
    if not rolled:
        return None
    return Rolling(jaxpr, sources, not _holds_values(closed.jaxpr))


def _holds_values(jaxpr) -> bool:
    """Whether an equation's parameters hold constants of their own (a
    sub-jaxpr's), which a structural key does not fix."""
    def holds(value) -> bool:
        if _jaxpr.is_closed_jaxpr(value):
            return bool(value.consts) or _holds_values(value.jaxpr)
        if _jaxpr.is_open_jaxpr(value):
            return _holds_values(value)
        return isinstance(value, (tuple, list)) and any(holds(v) for v in value)

    return any(holds(v) for eqn in jaxpr.eqns for v in eqn.params.values())
