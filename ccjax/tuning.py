"""Measured choice of the program ``order="auto"`` runs, stored per graph and backend.

``order="auto"`` picks among the elimination of the best known order and
JAX's reverse and forward mode over the whole function by the
multiplications each performs (:func:`ccjax.jax_modes.cheapest`).  Where
those counts are close, which program is faster is decided by how XLA
compiles it (fusion, gathers and scatters, memory traffic), and no count
predicts that: on the programs benchmark, among nine programs whose two
plain modes' counts differ by under 5%, ``jax.jacfwd`` ran 1.1-1.6x faster
than ``jax.jacrev`` on five and 11x slower on another.

:func:`tune` therefore *measures*: it compiles every candidate program on
the caller's arguments, times them, and stores the fastest.  Every
candidate is exact (each is a program ``order="auto"`` may run), so a
measurement only ever changes speed.  ``order="auto"`` then runs the stored
choice while it still applies: same graph (fingerprint, dtypes included),
same differentiated inputs, same backend and device kind, same JAX version,
and the same elimination order as when it was measured (a better order
found since by ``ccjax search`` makes the record stale: it is ignored
until tuned again).

Records live in ``<cache root>/tuned/<key>.json`` beside the order cache
(:mod:`ccjax.cache`, same root, same rules): atomic writes, and a file that
cannot be read, is corrupt, foreign or names a program that cannot run here
gives a :class:`~ccjax.cache.CacheWarning` and counts as a miss.
"""
from __future__ import annotations

import dataclasses
import hashlib
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import jax

from ccjax.cache import OrderCache, PathLike, clear_records, read_record, short, warn, write_json_atomic
from ccjax.eliminate import Plan, plan_elimination
from ccjax.graph import Graph
from ccjax.counting import Counter
from ccjax.jax_modes import (candidates, cheapest, jacobian_program, plain_modes, plan_colored, plan_jax_mode,
                             runnable_mode)
from ccjax.resolve import forget_order, resolve_order
from ccjax.trace import as_input, auto_graph_of, check_inputs, trace

FORMAT = "ccjax-tuning"
VERSION = 1

#: A candidate must be at least this much faster than the count's choice to
#: replace it: single timings on a shared machine vary by a few percent.
DEFAULT_MARGIN = 0.05

__all__ = ["Tuning", "TuneResult", "TuningStore", "tune", "tuned_plan", "measure", "backend_id"]


def backend_id() -> tuple[str, str]:
    """``(platform, device kind)`` of JAX's default device, e.g. ``("cpu", "cpu")``."""
    device = jax.devices()[0]
    return device.platform, str(getattr(device, "device_kind", device.platform))


@dataclasses.dataclass(frozen=True)
class Tuning:
    """One measurement.  ``choice`` is the plan name ``order="auto"`` runs;
    ``order`` the elimination order measured (its candidate's program);
    ``times`` the median seconds per call of every candidate measured."""

    key: str
    fingerprint: str
    diff_leaves: tuple[int, ...]
    platform: str
    device_kind: str
    jax_version: str
    choice: str
    order: tuple[int, ...]
    times: dict
    created: float = 0.0

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["diff_leaves"], d["order"] = list(self.diff_leaves), list(self.order)
        return {"format": FORMAT, "version": VERSION, **d}

    @staticmethod
    def from_json(d: dict) -> "Tuning":
        """Parse a record; ``ValueError`` for anything that is not one."""
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError("not a ccjax tuning record")
        try:
            times = d["times"]
            if not isinstance(times, dict) or not all(isinstance(k, str) and _is_number(v)
                                                      for k, v in times.items()):
                raise ValueError(f"bad times {times!r}")
            ints = [d["diff_leaves"], d["order"]]
            if not all(isinstance(xs, list) and all(type(x) is int for x in xs) for xs in ints):
                raise ValueError("diff_leaves and order must be lists of integers")
            return Tuning(key=str(d["key"]), fingerprint=str(d["fingerprint"]),
                          diff_leaves=tuple(d["diff_leaves"]), platform=str(d["platform"]),
                          device_kind=str(d["device_kind"]), jax_version=str(d["jax_version"]),
                          choice=str(d["choice"]), order=tuple(d["order"]),
                          times={k: float(v) for k, v in times.items()}, created=float(d.get("created", 0.0)))
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed record: {e!r}") from None


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def tuning_key(graph: Graph, platform: str, device_kind: str) -> str:
    """File stem of ``graph``'s record on a backend under this JAX version."""
    parts = (graph.fingerprint, tuple(graph.diff_leaves), platform, device_kind, jax.__version__)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


class TuningStore:
    """The records under ``<root>/tuned`` (root: as :class:`~ccjax.cache.OrderCache`'s,
    disabled with it)."""

    def __init__(self, path: Optional[PathLike] = None):
        self.root: Optional[Path] = OrderCache(path).root

    @property
    def enabled(self) -> bool:
        return self.root is not None

    @property
    def directory(self) -> Optional[Path]:
        return OrderCache(self.root).tuned_directory if self.enabled else None

    def get(self, graph: Graph) -> Optional[Tuning]:
        """The record for ``graph`` on the current backend, or None (a miss,
        or a record that cannot be trusted: warned)."""
        if not self.enabled:
            return None
        platform, kind = backend_id()
        path = self.directory / f"{tuning_key(graph, platform, kind)}.json"
        record = read_record(path, Tuning.from_json, "ccjax tuning")
        if record is None:
            return None
        mine = (path.stem, graph.fingerprint, tuple(graph.diff_leaves), platform, kind, jax.__version__)
        theirs = (record.key, record.fingerprint, record.diff_leaves, record.platform, record.device_kind,
                  record.jax_version)
        if mine != theirs:
            warn(f"ccjax tuning: {path} was written for another graph or backend; ignoring it")
            return None
        return record

    def put(self, record: Tuning) -> Optional[Path]:
        """Write ``record`` (replacing any older one); None when disabled or
        not writable (warned)."""
        if not self.enabled:
            return None
        try:
            return write_json_atomic(self.directory, record.key, record.to_json())
        except OSError as e:
            warn(f"ccjax tuning: cannot write to {self.directory}: {e}")
            return None

    def clear(self) -> int:
        """Delete every record; returns how many there were."""
        return clear_records(self.directory)


def tuned_plan(graph: Graph, elimination: Plan, store: Optional[TuningStore] = None) -> Optional[Plan]:
    """The plan a record stored for ``graph`` chose, if it still applies:
    it was measured against this very elimination order and its choice is a
    program that can run here.  None otherwise (then the counts decide)."""
    record = (store or TuningStore()).get(graph)
    if record is None or record.order != tuple(elimination.report.order):
        return None
    if record.choice == elimination.mode:
        return elimination
    kind, _, mode = record.choice.partition("-")
    if kind in ("jax", "colored") and mode in plain_modes(graph):
        plan = runnable_mode(graph, mode) if kind == "jax" else plan_colored(graph, elimination, mode)
        if plan is not None:
            return plan
    warn(f"ccjax tuning: the record for graph {graph.fingerprint} chose {short(repr(record.choice))}, "
         f"which cannot run for this graph; ignoring it")
    return None


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` measured: ``times`` (median seconds per call of each
    candidate, by plan name), ``counted`` (the plan the multiplication
    counts pick), ``choice`` (the plan ``order="auto"`` now runs) and
    ``path`` (the record written; None when the cache is disabled, or
    for a graph only JAX's reverse mode can differentiate exactly, where
    there is nothing to choose)."""

    times: dict
    counted: str
    choice: str
    path: Optional[Path]

    @property
    def speedup(self) -> float:
        """Time of the counted choice over time of the chosen one (>= 1;
        NaN when nothing was measured)."""
        if self.counted not in self.times or self.choice not in self.times:
            return float("nan")
        return self.times[self.counted] / self.times[self.choice]


def _time_calls(fn: Callable, args: tuple, budget: float) -> float:
    """Seconds per call of ``fn(*args)`` (blocked), over at least ``budget``
    seconds after one untimed call (the previous program measured may have
    left the caches cold)."""
    jax.block_until_ready(fn(*args))
    number, elapsed = 0, 0.0
    start = time.perf_counter()
    while elapsed < budget or number == 0:
        jax.block_until_ready(fn(*args))
        number += 1
        elapsed = time.perf_counter() - start
    return elapsed / number


def measure(graph: Graph, plans: Sequence[Plan], inputs: list, consts: list, rounds: int = 7,
            round_seconds: float = 0.05) -> dict:
    """Median seconds per call of each plan's compiled program (dense
    output), the plans interleaved round by round so a change of machine
    load hits all alike."""
    # Once, as a jitted caller's closure would: NumPy constants passed per
    # call would be copied to the device on every call.
    inputs, consts = jax.device_put((list(inputs), list(consts)))
    compiled = {}
    for plan in plans:
        fn = jax.jit(jacobian_program(graph, plan))  # called through jit's fast dispatch, as users do
        for _ in range(2):
            jax.block_until_ready(fn(inputs, consts))
        compiled[plan.mode] = fn
    samples = {name: [] for name in compiled}
    for _ in range(rounds):
        for name, fn in compiled.items():
            samples[name].append(_time_calls(fn, (inputs, consts), round_seconds))
    return {name: statistics.median(ts) for name, ts in samples.items()}


def tune(fun: Callable, *args, argnums: Union[int, Sequence[int]] = 0, has_aux: bool = False,
         holomorphic: bool = False, rounds: int = 7, margin: float = DEFAULT_MARGIN, choice: Optional[str] = None,
         **kwargs) -> TuneResult:
    """Time every program ``jacve(fun, order="auto")`` may run at ``args``
    on the current backend, and store the fastest for ``order="auto"``.

    The candidates: JAX's reverse and forward mode over the whole function
    where they apply, with compressed seeds where a colouring saves some
    (see :func:`ccjax.jax_modes.candidates`), and the
    elimination of ``"auto"``'s order when the counts choose it.  An
    elimination that multiplies more than a plain mode is not compiled:
    XLA can take minutes over a large one (409 eliminations of an unrolled
    RK4 integrator: 9 minutes on a 2-core CPU), while the plain modes
    compile as ``jax.jacrev``/``jax.jacfwd`` do.  The counts' choice
    (:func:`ccjax.jax_modes.cheapest`) is kept unless another candidate's
    median time per call is more than ``margin`` below it.  The record goes
    to the cache root ``order="auto"`` reads (:func:`ccjax.cache.default_cache_dir`);
    with the cache disabled nothing is stored and ``path`` is None.

    ``choice`` (``"eliminate"``, ``"jax-rev"``, ``"jax-fwd"``, or
    ``"colored-rev"``/``"colored-fwd"`` where a colouring applies) stores that
    program without measuring anything, e.g. to apply a choice measured in
    float32 to the float64 graph (``times`` is then empty).

    Example::

        ccjax.tune(residual, u0)                  # once, e.g. in a setup script
        J = jax.jit(ccjax.jacve(residual))(u)     # runs the fastest program
    """

    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if not (_is_number(margin) and 0 <= margin < 1):
        raise ValueError(f"margin must be a fraction in [0, 1), got {margin!r}")
    t, _, _ = trace(fun, args, kwargs, argnums, has_aux)
    check_inputs(t.leaves, t.diff_leaves, holomorphic, False)
    g, t = auto_graph_of(t, holomorphic)
    prog = g.program
    inputs = [as_input(x, prog.avals[i]) for x, i in zip(t.leaves, prog.inputs)]
    consts = list(t.closed.consts)
    if g.whole_reverse:  # only JAX's reverse mode reproduces jax.jacrev here: nothing to choose
        plan = plan_jax_mode(g, "rev")
        times = measure(g, [plan], inputs, consts, rounds)
        return TuneResult(times, plan.mode, plan.mode, None)
    elimination = plan_elimination(g, resolve_order(g, "auto"))
    counter = Counter(g)  # one memo of per-equation counts for the choice and the candidates
    counted = cheapest(g, elimination, counter).mode
    plans = candidates(g, elimination, counter)
    if choice is not None:
        names = [p.mode for p in plans]
        if choice not in names:
            raise ValueError(f"choice must be one of {names} for this function, got {choice!r}")
        times = {}
    else:
        plans = [p for p in plans if p.mode != "eliminate" or counted == "eliminate"]
        times = measure(g, plans, inputs, consts, rounds)
        fastest = min(times, key=times.get)
        choice = fastest if times[fastest] < (1 - margin) * times[counted] else counted
    platform, kind = backend_id()
    record = Tuning(tuning_key(g, platform, kind), g.fingerprint, tuple(g.diff_leaves), platform, kind,
                    jax.__version__, choice, tuple(elimination.report.order), times, time.time())
    path = TuningStore().put(record)
    forget_order(g, "auto")  # graphs are cached per jaxpr: plan again, read the record
    return TuneResult(times, counted, choice, path)
