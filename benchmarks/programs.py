"""Jacobians of real programs: ccjax against ``jax.jacrev``, ``jax.jacfwd`` and
asdex, one row per program (PDE residuals, Newton steps, flax models, linear
algebra, control flow, gather/scatter, conv, sort, FFT, ODEs, Hessians, ...;
the programs are in ``benchmarks/programs_suite.py``).

    python -m benchmarks.programs [--programs NAME ...] [--out docs/] [--quick]

Methods, each the jitted Jacobian of the program (``jax.jit(M(f))``; for a
``vmap`` program ``jax.jit(vmap(M(f)))``, for a ``nested`` one
``jax.jit(M(M(f)))``):

* ``ccjax``: ``ccjax.jacve(f, order="auto")`` (an empty temporary order
  cache, which no method writes to);
* ``ccjax sparse``: the same with ``output="sparse"`` (BCOO blocks);
* ``ccjax tuned``: ``ccjax`` after ``ccjax.tune`` of the program (float32,
  before the first call, as a user runs it once offline: its seconds are
  reported beside the choice, not in the first call; the float64 check
  runs the same choice; its records go to a temporary cache of their own);
* ``jacrev``, ``jacfwd``: ``jax.jacrev`` / ``jax.jacfwd``;
* ``asdex dense`` / ``asdex sparse``: ``asdex.jacobian(f, *args,
  output_format="dense" | "bcoo")`` (for nested programs ``asdex.hessian``
  of a scalar, ``asdex.jacobian`` applied twice otherwise), its sparsity
  detection and coloring done once outside ``jit`` (reported as setup and
  included in its first call);
* ``f``: the jitted program itself (a reference, not a method).

Per program and method:

1. **First call**, cold: JAX's caches (``jax.clear_caches()``) and ccjax's
   (the graph and loop-rolling LRUs in ``ccjax.trace``, with plans and runners, and the plan
   memos of ``ccjax.structure``) are cleared, then ``jax.jit(fn)`` is lowered
   (trace, ccjax's graph and plan), compiled and called once, in float32;
   first call = the sum (+ asdex's setup), which is what the first call of a
   fresh jitted function costs; the median of ``--first-calls`` (3) such
   cold calls, since one is at the mercy of the machine's load (a single
   call slower than ``FIRST_CALL_REPEAT_LIMIT`` is not repeated).  Before
   the first calls of a program, ccjax
   (dense and sparse), jacrev and jacfwd each run one untimed first call
   (:func:`warm_process`; ``--cold-process`` skips it), so that the
   process's one-time costs do not all fall on the method measured first.
   A method whose first call takes longer than
   ``--first-call-limit`` seconds is skipped (a Python-level alarm also stops a
   trace that runs over; XLA's compilation is only checked once it returns).
   The compiled program's ``memory_analysis()`` gives temp + output bytes.
2. **Correctness**, in float64: the method jitted on float64 arguments
   (``jax_enable_x64``) against eager float64 AD (``jax.jacrev``, or
   ``jax.jacfwd`` where JAX cannot reverse the program, run op by op under
   ``jax.disable_jit``), rtol = atol·max(1, max|J|) = 1e-6.  A disagreement
   is a MISMATCH.  The float32 output is compared to the same reference too
   (relative error reported; over 1e-2 is flagged).  The reference's nonzero
   entries at this random point are the "true nnz" that ``output="sparse"``'s
   stored entries (nse) are compared with.
3. **Steady state**, float32: all compiled methods of the program timed in
   interleaved rounds (``benchmarks.common.time_interleaved``), median.

Nothing fails the run: errors, mismatches and skips are recorded per cell.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import ccjax
from ccjax.cache import ENV_VAR
from benchmarks.common import (Progress, command_line, environment, fastest, fmt_time, geomean, isolate_order_cache,
                               markdown_table, memory_bytes, print_summary, pyplot, save_figure, save_results,
                               time_interleaved, timed)
from benchmarks.programs_suite import NAMES, Program, build

CCJAX, CCJAX_SPARSE, JACREV, JACFWD, ASDEX_DENSE, ASDEX_SPARSE, CCJAX_TUNED, PRIMAL = (
    "ccjax", "ccjax sparse", "jacrev", "jacfwd", "asdex dense", "asdex sparse", "ccjax tuned", "f")
#: ``ccjax tuned`` comes last: its record (``ccjax.tune``) must not reach the untuned methods' plans.
METHODS = (CCJAX, CCJAX_SPARSE, JACREV, JACFWD, ASDEX_DENSE, ASDEX_SPARSE, CCJAX_TUNED)
CCJAX_METHODS = (CCJAX, CCJAX_SPARSE, CCJAX_TUNED)
SPARSE_METHODS = (CCJAX_SPARSE, ASDEX_SPARSE)
#: The peers ccjax's ratio is taken against.
BASELINES = (JACREV, JACFWD)
RTOL64 = 1e-6
#: Seconds above which a method's first call is not repeated (``--first-calls``).
FIRST_CALL_REPEAT_LIMIT = 5.0
#: A median this many times the fastest call marks a row as bimodal.
BIMODAL = 4.0
#: ccjax, jacrev and jacfwd medians all within this factor mark a row as a plateau.
PLATEAU = 1.05
F32_FLAG = 1e-2

#: The quick programs the smoke test runs by default.
QUICK_DEFAULT = ("burgers1d_upwind", "lj_hessian_nested")


# ------------------------------------------------------------------ arguments and methods
def cast_args(args: tuple, dtype) -> tuple:
    """Floating leaves to ``dtype`` (complex to the matching complex type),
    integer leaves to int32; call under ``jax.enable_x64`` for float64."""
    cdt = jnp.complex128 if dtype == jnp.float64 else jnp.complex64

    def one(a):
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating):
            return jnp.asarray(a, dtype)
        if np.issubdtype(a.dtype, np.complexfloating):
            return jnp.asarray(a, cdt)
        return jnp.asarray(a, jnp.int32 if np.issubdtype(a.dtype, np.integer) else a.dtype)

    return jax.tree_util.tree_map(one, args)


def first_example(p: Program, args: tuple) -> tuple:
    """The arguments of one example of a ``vmap`` program (batched ones at index 0)."""
    return tuple(a if ax is None else jax.tree_util.tree_map(lambda v: v[0], a) for a, ax in zip(args, p.in_axes))


def _asdex(method: str, p: Program, args: tuple) -> Callable:
    import asdex

    fmt = "dense" if method == ASDEX_DENSE else "bcoo"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if p.transform == "nested":
            if math.prod(jax.eval_shape(p.fn, *args).shape) == 1:
                return asdex.hessian(p.fn, *args, argnums=p.argnums, output_format=fmt)
            inner = asdex.jacobian(p.fn, *args, argnums=p.argnums, output_format="dense")
            return asdex.jacobian(inner, *args, argnums=p.argnums, output_format=fmt)
        if p.transform == "vmap":
            return jax.vmap(asdex.jacobian(p.fn, *first_example(p, args), argnums=p.argnums, output_format=fmt),
                            in_axes=p.in_axes)
        return asdex.jacobian(p.fn, *args, argnums=p.argnums, output_format=fmt)


def method_fn(method: str, p: Program, args: tuple) -> tuple[Callable, float]:
    """The (unjitted) Jacobian function of ``method`` on program ``p`` and
    the seconds spent building it (asdex's detection and coloring)."""
    if method == PRIMAL:
        return (jax.vmap(p.fn, in_axes=p.in_axes) if p.transform == "vmap" else p.fn), 0.0
    if method in (ASDEX_DENSE, ASDEX_SPARSE):
        t0 = time.perf_counter()
        fn = _asdex(method, p, args)
        return fn, time.perf_counter() - t0
    if method in CCJAX_METHODS:
        out = "sparse" if method == CCJAX_SPARSE else "dense"

        def M(f, argnums=p.argnums, outer=True):
            return ccjax.jacve(f, argnums=argnums, order="auto", output=out if outer else "dense")
    else:
        tr = jax.jacrev if method == JACREV else jax.jacfwd

        def M(f, argnums=p.argnums, outer=True):
            return tr(f, argnums=argnums)
    if p.transform == "nested":
        return M(M(p.fn, outer=False)), 0.0
    if p.transform == "vmap":
        return jax.vmap(M(p.fn), in_axes=p.in_axes), 0.0
    return M(p.fn), 0.0


def tune_program(p: Program, args: tuple, choice: str | None = None):
    """``ccjax.tune`` of the graph ``jax.jit(M(f))`` plans for ``M =
    jacve(order="auto")``: ``f`` itself (per example for ``vmap`` programs),
    or the inner Jacobian ``jacve(f)`` for ``nested`` ones (the outer graph)."""
    if p.transform == "vmap":
        args = first_example(p, args)
    fn = ccjax.jacve(p.fn, argnums=p.argnums) if p.transform == "nested" else p.fn
    return ccjax.tune(fn, *args, argnums=p.argnums, choice=choice)


def reference(p: Program, args64: tuple):
    """Eager float64 AD (call under ``jax.enable_x64``): every primitive its
    own computation (``jax.disable_jit``), so no fusion can evaluate a value
    twice (docs/known_issues.md)."""
    tr = jax.jacrev if p.ref == "rev" else jax.jacfwd
    with jax.disable_jit():
        if p.transform == "nested":
            out = tr(tr(p.fn))(*args64)
        elif p.transform == "vmap":
            out = jax.vmap(tr(p.fn, argnums=p.argnums), in_axes=p.in_axes)(*args64)
        else:
            out = tr(p.fn, argnums=p.argnums)(*args64)
    return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(jax.device_get(out))]


# ------------------------------------------------------------------ checking
def _is_bcoo(x) -> bool:
    from jax.experimental import sparse
    return isinstance(x, sparse.BCOO)


def bcoo_to_numpy(b) -> tuple[np.ndarray, int]:
    """A BCOO block as a dense float64 NumPy array, as ``todense`` computes it:
    duplicates summed, out-of-range (padding) indices dropped, batch and dense
    dimensions honoured.  Also returns the number of padding entries."""
    data, idx = np.asarray(b.data, np.float64), np.asarray(b.indices)
    nb, nd = b.n_batch, b.n_dense
    shape = tuple(b.shape)
    sparse_shape = np.asarray(shape[nb:len(shape) - nd])
    out = np.zeros(shape, np.float64)
    pad = 0
    for bi in np.ndindex(*shape[:nb]):
        ix = idx[tuple(min(i, s - 1) for i, s in zip(bi, idx.shape[:nb]))]
        dv = data[tuple(min(i, s - 1) for i, s in zip(bi, data.shape[:nb]))]
        keep = np.all((ix >= 0) & (ix < sparse_shape), axis=-1)
        pad += int((~keep).sum())
        np.add.at(out[bi], tuple(ix[keep, k] for k in range(ix.shape[-1])), dv[keep])
    return out, pad


def dense_leaves(out) -> list[np.ndarray]:
    """The output's leaves as float64 NumPy arrays (BCOO blocks densified)."""
    return [bcoo_to_numpy(leaf)[0] if _is_bcoo(leaf) else np.asarray(leaf, np.float64)
            for leaf in jax.tree_util.tree_leaves(out, is_leaf=_is_bcoo)]


def nse_of(out) -> int | None:
    """Stored values of all BCOO blocks (``data.size``: padding included);
    None for a dense output."""
    leaves = [x for x in jax.tree_util.tree_leaves(out, is_leaf=_is_bcoo) if _is_bcoo(x)]
    if not leaves:
        return None
    return int(sum(int(np.prod(b.data.shape)) for b in leaves))


def compare(got: list[np.ndarray], want: list[np.ndarray], rtol: float) -> tuple[bool, float, str]:
    """``(ok, max relative error, message)``: leaf by leaf (same shapes; equal
    total size is accepted where a method returns another pytree layout),
    entries within ``rtol·|want| + rtol·max(1, max|want|)``; NaN == NaN."""
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        gs, ws = [g.shape for g in got], [w.shape for w in want]
        if sum(g.size for g in got) != sum(w.size for w in want):
            return False, math.inf, f"shapes {gs} != reference {ws}"
        got = [np.concatenate([g.ravel() for g in got])]
        want = [np.concatenate([w.ravel() for w in want])]
    worst, msg = 0.0, ""
    scale = max([1.0] + [float(np.nanmax(np.abs(w))) for w in want if w.size])
    for k, (g, w) in enumerate(zip(got, want)):
        if not w.size:
            continue
        diff = np.abs(g - w)
        both_nan = np.isnan(g) & np.isnan(w)
        diff = np.where(both_nan, 0.0, diff)
        bad = ~(diff <= rtol * scale + rtol * np.abs(w))
        rel = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff))) / scale
        worst = max(worst, rel)
        if bad.any() and not msg:
            i = np.unravel_index(int(np.argmax(np.where(bad, diff if not np.isnan(diff).any() else 1, -1))), w.shape)
            msg = (f"leaf {k} {w.shape}: {int(bad.sum())} of {w.size} entries differ, max abs diff "
                   f"{float(np.nanmax(diff)):.3g} (max|J| {scale:.3g}); e.g. at {tuple(int(j) for j in i)}: "
                   f"got {g[i]:.6g}, want {w[i]:.6g}")
    return not msg, worst, msg


def _err(e: BaseException) -> str:
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    return f"{type(e).__name__}: {lines[0][:240] if lines else ''}"


# ------------------------------------------------------------------ time limit
class FirstCallTimeout(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise :class:`FirstCallTimeout` in the main thread after ``seconds``
    (checked between Python bytecodes: a trace or ccjax's planning stops at
    once, an XLA compilation when it returns)."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise FirstCallTimeout(f"over the {seconds:g} s first-call limit")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def clear_caches() -> None:
    """JAX's in-memory caches and ccjax's (graphs with their plans and
    runners; the structure plan memos), so that a first call is cold."""
    jax.clear_caches()
    from ccjax import structure, trace

    trace._graphs.data.clear()
    trace._rollings.data.clear()
    for obj in vars(structure).values():
        if callable(getattr(obj, "cache_clear", None)):
            obj.cache_clear()


#: Methods :func:`warm_process` runs once, untimed, before the first calls
#: (asdex's first call is mostly its own sparsity detection, and it is
#: measured after these anyway; the tuned method shares ccjax's code).
WARMED = (CCJAX, CCJAX_SPARSE, JACREV, JACFWD)


def use_tuning_store(opts, tuned: bool) -> None:
    """Point the order cache at the store the tuned method fills, or at the
    empty one the other methods read: ``order="auto"`` of ``ccjax`` must
    not take the record tuned for an earlier program of the same graph
    (``lorenz96_rhs`` is the inner graph of ``lorenz96_nested``; its
    tuned forward mode stored 262,144 entries of a sparse Hessian that has
    256).  With ``--use-cache`` every method reads the user's cache."""
    if not opts.use_cache:
        os.environ[ENV_VAR] = opts.tuning_store if tuned else opts.order_cache


def warm_process(p: Program, args: tuple, methods, opts) -> None:
    """One untimed first call of each of ``methods`` on ``p``, caches cleared
    before each, errors ignored.  The process's one-time costs for this
    program (JAX's lazy imports and first uses of a primitive's rules, which
    ``jax.clear_caches`` does not undo) then fall on none of the measured
    first calls; without it they fall on whichever method runs first, which
    is always ``ccjax`` (measured: linalg_det's ccjax lowering 0.35 s first
    in a process, 0.19-0.22 s after a jacrev; jacrev's 0.15 s first, 0.09 s
    after ccjax).  Every measured first call still starts from cleared caches."""
    for method in methods:
        clear_caches()
        try:
            with alarm(opts.first_call_limit):
                fn, _ = method_fn(method, p, args)
                jax.block_until_ready(jax.jit(fn)(*args))
        except Exception:  # noqa: BLE001 - the measured first call reports it
            pass


# ------------------------------------------------------------------ one program
def run_program(p: Program, methods, opts, prog: Progress) -> dict:
    """Every method on one program: first call, check, then interleaved timing."""
    res: dict[str, dict] = {}
    info: dict[str, Any] = {"category": p.category, "what": p.what, "transform": p.transform, "ref": p.ref}
    args32 = cast_args(p.args, jnp.float32)
    try:
        shapes = jax.eval_shape(method_fn(PRIMAL, p, args32)[0], *args32)
        out_n = sum(math.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes))
        nums = (p.argnums,) if isinstance(p.argnums, int) else p.argnums
        in_n = sum(np.size(l) for k in nums for l in jax.tree_util.tree_leaves(p.args[k]))
        info["m"], info["n"] = int(out_n), int(in_n)
        if p.transform == "vmap":  # per example
            B = next(np.shape(a)[0] for a, ax in zip(p.args, p.in_axes) if ax is not None)
            info.update(batch=int(B), m=int(out_n) // B, n=int(in_n) // B)
    except Exception as e:  # noqa: BLE001
        info["shape_error"] = _err(e)

    # ---- the reference: eager float64 AD, its nonzeros
    ref = None
    try:
        t0 = time.perf_counter()
        with jax.enable_x64(True):
            ref = reference(p, cast_args(p.args, jnp.float64))
        info["ref_s"] = time.perf_counter() - t0
        info["jac_entries"] = int(sum(r.size for r in ref))
        info["true_nnz"] = int(sum(np.count_nonzero(r) for r in ref))
    except Exception as e:  # noqa: BLE001
        info["ref_error"] = _err(e)
        print(f"\n!!! reference failed on {p.name}: {_err(e)}\n", file=sys.stderr, flush=True)

    if not opts.cold_process:
        warm_process(p, args32, [m for m in methods if m in WARMED], opts)
    compiled: dict[str, Any] = {}
    run_s: dict[str, float] = {}
    for method in (PRIMAL,) + tuple(methods):
        use_tuning_store(opts, method == CCJAX_TUNED)
        rec: dict[str, Any] = {"status": "ok"}
        res[method] = rec
        if method in (ASDEX_DENSE, ASDEX_SPARSE) and not opts.have_asdex:
            rec.update(status="skipped", error="asdex not installed")
            prog.update(f"{p.name} {method} (skipped)")
            continue
        if method == CCJAX_TUNED:  # offline, as a user runs it once: not part of the first call
            try:
                t0 = time.perf_counter()
                tuned = tune_program(p, args32)
                rec.update(tune_s=time.perf_counter() - t0, tuned=tuned.choice, counted=tuned.counted,
                           tune_times=tuned.times)
            except Exception as e:  # noqa: BLE001 - recorded in the table
                rec.update(status="error", error=f"ccjax.tune failed: {_err(e)}")
                print(f"\n!!! ERROR {p.name} {method}: {rec['error']}\n", file=sys.stderr, flush=True)
                prog.update(f"{p.name} {method} (error)")
                continue
        # ---- 1. first call, cold, float32 (the median of --first-calls cold ones)
        t_first = time.perf_counter()
        try:
            calls = []
            for _ in range(opts.first_calls):
                clear_caches()
                with alarm(opts.first_call_limit):
                    fn, setup = method_fn(method, p, args32)
                    t0 = time.perf_counter()
                    lowered = jax.jit(fn).lower(*args32)
                    t1 = time.perf_counter()
                    exe = lowered.compile()
                    t2 = time.perf_counter()
                    out = jax.block_until_ready(exe(*args32))
                    t3 = time.perf_counter()
                calls.append(dict(setup_s=setup, trace_s=t1 - t0, compile_s=t2 - t1, run1_s=t3 - t2,
                                  first_call_s=setup + t3 - t0))
                if calls[-1]["first_call_s"] > FIRST_CALL_REPEAT_LIMIT:
                    break  # one slow first call says enough
            calls.sort(key=lambda c: c["first_call_s"])
            rec.update(calls[(len(calls) - 1) // 2], first_calls_s=[c["first_call_s"] for c in calls])
            rec.update(memory_bytes(exe))
            if rec["first_call_s"] > opts.first_call_limit:
                raise FirstCallTimeout(f"first call {rec['first_call_s']:.1f} s > the "
                                       f"{opts.first_call_limit:g} s first-call limit")
        except FirstCallTimeout as e:
            rec.update(status="skipped", error=str(e))
            print(f"\n!!! SKIPPED {p.name} {method}: {e}\n", file=sys.stderr, flush=True)
            prog.update(f"{p.name} {method} (skipped)")
            continue
        except Exception as e:  # noqa: BLE001 - recorded in the table
            if opts.verbose:
                traceback.print_exception(e)
            spent = time.perf_counter() - t_first
            if spent >= opts.first_call_limit:  # the alarm fired inside native code (e.g. numba)
                rec.update(status="skipped", error=f"over the {opts.first_call_limit:g} s first-call limit "
                                                   f"({spent:.0f} s; then {_err(e)})")
                print(f"\n!!! SKIPPED {p.name} {method}: {rec['error']}\n", file=sys.stderr, flush=True)
                prog.update(f"{p.name} {method} (skipped)")
                continue
            rec.update(status="error", error=_err(e))
            if method in CCJAX_METHODS or opts.verbose:
                print(f"\n!!! ERROR {p.name} {method}: {_err(e)}\n", file=sys.stderr, flush=True)
            prog.update(f"{p.name} {method} (error)")
            continue
        if method == PRIMAL:
            compiled[method], run_s[method] = exe, rec["run1_s"]
            prog.update(f"{p.name} f")
            continue
        nse = nse_of(out)
        if nse is not None:
            rec["nse"] = nse
        # ---- 2a. the float32 output against the float64 reference (informational)
        if ref is not None:
            try:
                _, rel32, msg32 = compare(dense_leaves(out), ref, F32_FLAG)
                rec["f32_rel_err"] = rel32
                if msg32:
                    rec["f32_note"] = f"float32 output off by more than {F32_FLAG:g}: {msg32}"
            except Exception as e:  # noqa: BLE001
                rec["f32_note"] = f"float32 check failed: {_err(e)}"
        del out
        # ---- 2b. correctness in float64
        if ref is None:
            rec["check"] = "unchecked (no reference)"
        else:
            try:
                with alarm(opts.first_call_limit), jax.enable_x64(True):
                    args64 = cast_args(p.args, jnp.float64)
                    if method == CCJAX_TUNED:  # the float32 choice, checked on the float64 graph
                        tune_program(p, args64, choice=rec["tuned"])
                    fn64, _ = method_fn(method, p, args64)
                    out64 = jax.device_get(jax.jit(fn64)(*args64))
                try:
                    ok, rel, msg = compare(dense_leaves(out64), ref, RTOL64)
                except Exception as e:  # noqa: BLE001 - e.g. a block of the wrong shape
                    ok, rel, msg = False, math.inf, f"comparison failed: {_err(e)}"
                rec["f64_rel_err"] = rel
                rec["check"] = "ok" if ok else "mismatch"
                if not ok:
                    rec.update(status="mismatch", error=f"float64 Jacobian differs from eager float64 AD: {msg}")
                    print(f"\n!!! MISMATCH {p.name} {method}: {msg}\n", file=sys.stderr, flush=True)
                del out64
            except FirstCallTimeout as e:
                rec["check"] = f"unchecked (float64 run {e})"
            except Exception as e:  # noqa: BLE001
                if opts.verbose:
                    traceback.print_exception(e)
                rec["check"] = "error"
                rec.update(status="error", error=f"float64 run failed (the float32 run worked): {_err(e)}")
                print(f"\n!!! ERROR {p.name} {method} (float64 check): {_err(e)}\n", file=sys.stderr, flush=True)
        compiled[method], run_s[method] = exe, rec["run1_s"]
        prog.update(f"{p.name} {method}")

    # ---- 3. steady state, interleaved
    if compiled:
        stats = time_interleaved(compiled, args32, run_s, opts)
        for n, s in stats.items():
            if s.pop("single"):
                res[n]["note"] = f"one call only (slower than --max-call-s {opts.max_call_s:g})"
            res[n].update(s)
    compiled.clear()
    return {"info": info, "methods": res}


# ------------------------------------------------------------------ summary
def summarize(data: dict) -> dict:
    rows, sp, sp_min, sp_sparse, sp_tuned = [], [], [], [], []
    for name, pr in data["results"].items():
        r = pr["methods"]
        base, bt = fastest(r, BASELINES)
        row = {"task": name, "best": base, "best_s": bt}
        mins = [r[m]["min_s"] for m in BASELINES if timed(r.get(m))]
        row["speedup_min"] = row["ratio_min"] = None
        if mins and timed(r.get(CCJAX)):
            row["speedup_min"] = min(mins) / r[CCJAX]["min_s"]
            row["ratio_min"] = 1 / row["speedup_min"]
            sp_min.append(row["speedup_min"])
        # median far above the fastest call: a bimodal distribution (machine load), not the method
        row["bimodal"] = any(r[m]["median_s"] > BIMODAL * r[m]["min_s"] for m in (CCJAX,) + BASELINES
                             if timed(r.get(m)))
        # ccjax, jacrev and jacfwd all within 5%: most likely a floor of the machine, not the methods' cost
        meds = [r[m]["median_s"] for m in (CCJAX,) + BASELINES if timed(r.get(m))]
        f_s = r[PRIMAL]["median_s"] if timed(r.get(PRIMAL)) else None
        row["plateau"] = bool(len(meds) == 3 and max(meds) < PLATEAU * min(meds) and f_s
                              and min(meds) > 20 * f_s)
        for key, m in (("ccjax", CCJAX), ("sparse", CCJAX_SPARSE), ("tuned", CCJAX_TUNED)):
            t = r[m]["median_s"] if timed(r.get(m)) else None
            row[f"{key}_s"] = t
            row[f"{key}_ratio"] = t / bt if (t and bt) else None
        row["speedup"] = 1 / row["ccjax_ratio"] if row["ccjax_ratio"] else None
        row["speedup_sparse"] = 1 / row["sparse_ratio"] if row["sparse_ratio"] else None
        row["speedup_tuned"] = 1 / row["tuned_ratio"] if row["tuned_ratio"] else None
        if row["speedup_tuned"]:
            sp_tuned.append(row["speedup_tuned"])
        if row["speedup"]:
            sp.append(row["speedup"])
        if row["speedup_sparse"]:
            sp_sparse.append(row["speedup_sparse"])
        rows.append(row)
    return {"rows": rows, "geomean_speedup": geomean(sp) if sp else None, "n": len(sp),
            "geomean_speedup_min": geomean(sp_min) if sp_min else None,
            "geomean_speedup_sparse": geomean(sp_sparse) if sp_sparse else None, "n_sparse": len(sp_sparse),
            "geomean_speedup_tuned": geomean(sp_tuned) if sp_tuned else None, "n_tuned": len(sp_tuned),
            "tuned_slower": sum(1 for x in sp_tuned if x < 1 / 1.1),
            "faster": sum(1 for s in sp if s > 1.0), "slower_2x": sum(1 for s in sp if s < 0.5)}


def problems(data: dict) -> list[tuple[str, str, str, str]]:
    """``(program, method, status, message)`` for every error, mismatch and skip."""
    out = []
    for name, pr in data["results"].items():
        for m, rec in pr["methods"].items():
            if rec.get("status") != "ok":
                out.append((name, m, rec["status"], rec.get("error", "")))
        if pr["info"].get("ref_error"):
            out.append((name, "reference", "error", pr["info"]["ref_error"]))
    return out


# ------------------------------------------------------------------ rendering
def _cell(rec: dict | None, method: str = CCJAX) -> str:
    if rec is None:
        return "–"
    st = rec.get("status")
    if st == "error" and method not in CCJAX_METHODS:
        return "n/a"
    if st == "ok" and "median_s" in rec:
        return fmt_time(rec["median_s"])
    if st == "mismatch":
        return f"MISMATCH ({fmt_time(rec.get('median_s'))})"
    if st == "skipped":
        return "skipped"
    return "error"


def _tuned_cell(rec: dict | None) -> str:
    """``counted → chosen (tune seconds)`` for the ccjax tuned method."""
    if not rec or "tuned" not in rec:
        return "–"
    moved = rec["tuned"] if rec["tuned"] == rec["counted"] else f"{rec['counted']} → {rec['tuned']}"
    return f"{moved} ({rec['tune_s']:.1f} s)"


def _mb(rec: dict | None) -> str:
    if not rec or "mem_bytes" not in rec:
        return "–"
    return f"{rec['mem_bytes'] / 1e6:.3g}"


def _first(rec: dict | None, method: str) -> str:
    if not rec or "first_call_s" not in rec:
        return _cell(rec, method) if rec and rec.get("status") != "ok" else "–"
    return f"{rec['first_call_s']:.2f} s"


def _ratio(x: float | None) -> str:
    return f"{x:.2f}" if x else "–"


def _load_note(meta: dict) -> str:
    la0, la1 = meta.get("load_average_start"), meta.get("load_average")
    if not la1:
        return ""
    f = lambda la: "/".join(f"{x:.1f}" for x in la)  # noqa: E731
    return (f"Load average (1/5/15 min) {f(la0)} at the start and {f(la1)} at the end on "
            f"{meta['env']['cpu_count']} cores: a shared machine, so single times are noisy; read ratios "
            f"within ~25% of 1 as ties.")


def render(data: dict) -> str:
    meta, env = data["meta"], data["meta"]["env"]
    s = data["summary"]
    res = data["results"]
    methods = meta["methods"]
    L = ["# Jacobians of real programs (CPU)", "",
         f"Generated by `{meta['command']}` on {env['device']} ({env['backend']}, {env['cpu_count']} cores, "
         f"{env['platform']}), Python {env['python']}, JAX {env['jax']}, flax {meta.get('flax')}, "
         f"asdex {meta.get('asdex')}, ccjax {meta['ccjax']}, {env['time']}; {meta['wall_s']:.0f} s wall. "
         + _load_note(meta), "",
         "Every method is the jitted Jacobian of the program, `jax.jit(M(f))` (`vmap` programs: "
         "`jax.jit(vmap(M(f)))`; `nested`: `jax.jit(M(M(f)))`), with M = `ccjax.jacve(order=\"auto\")` "
         "(dense, and `output=\"sparse\"`), `jax.jacrev`, `jax.jacfwd`, or asdex "
         "(`asdex.jacobian` / `asdex.hessian`, `output_format=\"dense\"` / `\"bcoo\"`). Programs: "
         "`benchmarks/programs_suite.py`; method, protocol and limits: the docstring of `benchmarks/programs.py`.",
         "",
         f"- **Times**: float32, median of single blocked calls of the compiled executable after warm-up, all "
         f"methods of a program in {meta['rounds']} interleaved rounds (up to {meta['repeats']} calls or "
         f"{meta['time_budget']:g} s per method). `f` is the jitted program itself.",
         "- **ratio** = ccjax median / the faster median of jacrev and jacfwd (below 1: ccjax is faster); "
         "**ratio (fastest call)** the same with each method's fastest call (less sensitive to load); "
         "**sparse ratio**: medians, for `output=\"sparse\"`.",
         "- **First call**: JAX's and ccjax's caches cleared, then trace (ccjax: graph, order and plan) + "
         "compile + the first call of `jax.jit(fn)`, float32; asdex includes its sparsity detection and coloring. "
         f"The median of {meta.get('first_calls', 1)} such cold calls (one where a call takes over "
         f"{FIRST_CALL_REPEAT_LIMIT:g} s). "
         f"A method whose first call exceeds {meta['first_call_limit']:g} s is skipped.",
         "- **Memory**: temp + output bytes of the compiled program (`compiled.memory_analysis()`).",
         "- **Correctness**: every method is also run jitted in float64 and compared with eager float64 AD "
         f"(`jax.jacrev`, `jax.jacfwd` for `while_fixed`; op by op under `jax.disable_jit`), tolerance "
         f"{RTOL64:g}·(|J| + max(1, max|J|)); a disagreement is a MISMATCH and never counts as fastest.",
         "- **true nnz**: the nonzero entries of that float64 reference Jacobian at the (random) benchmark "
         "point; nse = values stored by the sparse output (`data.size` of all BCOO blocks, padding included).",
         "- **n/a**: the peer cannot compute this Jacobian (asdex: no handler for a primitive; `jax.jacrev`: "
         "`while_loop`); the message is in the errors table. A ccjax failure shows as error or MISMATCH.", ""]
    if s["geomean_speedup"]:
        L += [f"**Geometric-mean speedup of ccjax (dense) over the faster of jacrev and jacfwd: "
              f"{s['geomean_speedup']:.2f}x** over {s['n']} programs (ratio {1 / s['geomean_speedup']:.2f}); "
              f"ccjax faster on {s['faster']}, more than 2x slower on {s['slower_2x']}. By fastest call: "
              f"{s['geomean_speedup_min']:.2f}x."
              + (f" `output=\"sparse\"`: {s['geomean_speedup_sparse']:.2f}x over {s['n_sparse']} programs."
                 if s["geomean_speedup_sparse"] else ""), ""]
    if s.get("geomean_speedup_tuned"):
        L += [f"**After `ccjax.tune` (ccjax tuned): {s['geomean_speedup_tuned']:.2f}x** over {s['n_tuned']} "
              f"programs; more than 1.1x slower than the faster of jacrev and jacfwd on {s['tuned_slower']}.", ""]
    L += ["## Steady-state time per call (median, float32)", ""]
    head = (["program", "category", "m x n (vmap: B x per example)", PRIMAL] + list(methods)
            + ["ratio", "ratio (fastest call)", "sparse ratio", "tuned ratio", "tuned: counts → measured"])
    body = []
    for row in s["rows"]:
        pr = res[row["task"]]
        info, r = pr["info"], pr["methods"]
        mn = f"{info['m']} x {info['n']}" if "m" in info else "?"
        if "batch" in info:
            mn = f"{info['batch']} x ({mn})"
        body.append([row["task"], info["category"], mn, _cell(r.get(PRIMAL))]
                    + [_cell(r.get(m), m) for m in methods]
                    + [_ratio(row["ccjax_ratio"]) + (" †" if row["bimodal"] else "") + (" ‡" if row["plateau"] else ""),
                       _ratio(row["ratio_min"]),
                       _ratio(row["sparse_ratio"]),
                       _ratio(row.get("tuned_ratio")),
                       _tuned_cell(r.get(CCJAX_TUNED))])
    L.append(markdown_table(head, body, "lll" + "r" * (len(head) - 3)))
    if any(row["bimodal"] for row in s["rows"]):
        L += [f"† median over {BIMODAL:g}x the fastest call for ccjax, jacrev or jacfwd: the call times are bimodal "
              "(on a loaded machine, e.g. XLA:CPU's thread pool waiting for a time slice inside LAPACK-backed "
              "ops), so the median measures the machine more than the method; the ratio by fastest call is the "
              "better comparison for these rows.", ""]
    plateau = [row for row in s["rows"] if row["plateau"]]
    if plateau:
        med = sorted(row["ccjax_s"] for row in plateau)[len(plateau) // 2]
        L += [f"‡ ccjax, jacrev and jacfwd within {100 * (PLATEAU - 1):.0f}% of each other (median of these rows "
              f"{fmt_time(med)}), over 20x the time of `f`: equal times of three different programs "
              "far above `f` most likely measure a floor of the machine under load (calls waiting for a time slice), "
              "not the methods; these ratios say nothing either way.", ""]
    L += ["## First call and compiled memory", "",
          "First call (cold caches, trace + compile + run); memory in MB (temp + output).", ""]
    head = ["program"] + [f"first: {m}" for m in methods] + [f"MB: {m}" for m in methods]
    body = [[name] + [_first(pr["methods"].get(m), m) for m in methods] + [_mb(pr["methods"].get(m)) for m in methods]
            for name, pr in res.items()]
    L.append(markdown_table(head, body))
    L += ["## Sparse output: stored entries against the true nonzeros", "",
          "Dense entries = m·n (per example for `vmap` programs: the batch of compact blocks); true nnz = "
          "nonzeros of the float64 reference at the benchmark point.", ""]
    body = []
    for name, pr in res.items():
        info, r = pr["info"], pr["methods"]
        nnz = info.get("true_nnz")
        cells = [name, info.get("jac_entries", "–"), nnz if nnz is not None else "–"]
        for m in SPARSE_METHODS:
            rec = r.get(m) or {}
            nse = rec.get("nse")
            cells.append(nse if nse is not None else _cell(rec, m) if rec.get("status") != "ok" else "–")
            cells.append(f"{nse / nnz:.2f}" if (nse is not None and nnz) else "–")
        body.append(cells)
    L.append(markdown_table(["program", "dense entries", "true nnz", "nse ccjax", "ccjax nse / nnz",
                             "nse asdex", "asdex nse / nnz"], body))
    probs = problems(data)
    L += ["## Errors, mismatches and skips", ""]
    if probs:
        L.append(markdown_table(["program", "method", "status", "message"],
                                [[a, b, c, d.replace("|", "\\|")] for a, b, c, d in probs], "llll"))
    else:
        L.append("None.\n")
    notes = []
    for name, pr in res.items():
        for m, rec in pr["methods"].items():
            for k in ("f32_note", "note"):
                if rec.get(k):
                    notes.append(f"- {name} / {m}: {rec[k]}")
    if notes:
        L += ["## Notes", ""] + notes + [""]
    L += ["## Programs", ""]
    L.append(markdown_table(["program", "category", "what", "M applied as"],
                            [[n, pr["info"]["category"], pr["info"]["what"],
                              {"plain": "M(f)", "vmap": "vmap(M(f))", "nested": "M(M(f))"}[pr["info"]["transform"]]]
                             for n, pr in res.items()], "llll"))
    return "\n".join(L)


def plot(data: dict, path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    rows = data["summary"]["rows"]
    names = [r["task"] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8.5, 0.28 * len(rows) + 1.8))
    h = 0.38
    for off, key, label, color in ((-h / 2, "ccjax_ratio", "ccjax (dense)", "C3"),
                                   (h / 2, "sparse_ratio", "ccjax output=\"sparse\"", "C1")):
        vals = [r[key] for r in rows]
        ys = [yy + off for yy, v in zip(y, vals) if v]
        vs = [v for v in vals if v]
        # bars from 1: to the left where ccjax is faster, to the right where slower
        ax.barh(ys, [v - 1.0 for v in vs], left=1.0, height=h, color=color, label=label)
        for yy, v in zip(ys, vs):
            ax.text(v * (1.04 if v >= 1 else 0.96), yy, f"{v:.2f}", va="center", ha="left" if v >= 1 else "right",
                    fontsize=5.5, color=color)
        for yy, v, r in zip(y, vals, rows):
            if not v:
                rec = data["results"][r["task"]]["methods"].get(CCJAX if key == "ccjax_ratio" else CCJAX_SPARSE)
                ax.text(1.0, yy + off, f" {(rec or {}).get('status', 'n/a')}", va="center", fontsize=6, color=color)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time / faster of jax.jacrev and jax.jacfwd (log; < 1: ccjax faster)")
    gm = data["summary"].get("geomean_speedup")
    env = data["meta"]["env"]
    ax.set_title(f"ccjax on real programs ({env['backend']}, {env['cpu_count']} cores)"
                 + (f": geomean ratio {1 / gm:.2f}" if gm else ""), fontsize=10)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(plt, fig, path)
    return True


# ------------------------------------------------------------------ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", nargs="*", default=None, help=f"program names (default: all {len(NAMES)})")
    ap.add_argument("--methods", nargs="*", default=None, help=f"subset of {list(METHODS)}")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, one timed call: a smoke check (default programs: "
                         + ", ".join(QUICK_DEFAULT) + "; --programs to choose, --programs all for every one)")
    ap.add_argument("--repeats", type=int, default=30, help="most timed calls per method")
    ap.add_argument("--min-repeats", type=int, default=5, help="fewest timed calls per method")
    ap.add_argument("--time-budget", type=float, default=0.2, help="seconds of timed calls per method")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--max-call-s", type=float, default=2.0, help="time only one call of a method slower than this")
    ap.add_argument("--first-call-limit", type=float, default=60.0,
                    help="skip a method whose first call (trace + compile + run) takes longer (seconds)")
    ap.add_argument("--first-calls", type=int, default=3,
                    help="cold first calls per method, the median reported (one when --quick, or when a first "
                         f"call takes over {FIRST_CALL_REPEAT_LIMIT:g} s)")
    ap.add_argument("--cold-process", action="store_true",
                    help="no untimed warm-up first call per program (the first method measured then also pays "
                         "the process's one-time costs)")
    ap.add_argument("--out", default=None, help="directory for programs_<backend>.{md,json,png}")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    ap.add_argument("--use-cache", action="store_true",
                    help="let order=\"auto\" use the user's order cache (default: an empty temporary one)")
    ap.add_argument("--verbose", action="store_true", help="print tracebacks of failing methods")
    a = ap.parse_args(argv)
    if a.programs in (["all"],):
        a.programs = list(NAMES)
    if a.quick:
        a.programs = a.programs or list(QUICK_DEFAULT)
        a.repeats, a.min_repeats, a.time_budget, a.rounds, a.first_calls = 1, 1, 0.0, 1, 1
    if a.first_calls < 1:
        ap.error("--first-calls must be at least 1")
    return a


def main(argv=None) -> dict:
    opts = parse_args(argv)
    t_start = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    opts.order_cache = isolate_order_cache(opts.use_cache)
    opts.tuning_store = isolate_order_cache(opts.use_cache)  # the tuned method's, apart
    use_tuning_store(opts, False)
    methods = tuple(opts.methods) if opts.methods else METHODS
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown methods {bad}; known: {list(METHODS)}")
    import importlib.metadata

    def version(pkg):
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    opts.have_asdex = version("asdex") is not None
    programs = build(opts.programs, opts.quick)
    prog = Progress(len(programs) * (len(methods) + 1), "programs", enabled=not opts.quiet)
    results = {}
    for p in programs:
        results[p.name] = run_program(p, methods, opts, prog)
    prog.close()
    data = {"meta": {"env": environment(), "ccjax": ccjax.__version__, "asdex": version("asdex"),
                     "flax": version("flax"), "methods": list(methods), "baselines": list(BASELINES),
                     "quick": opts.quick, "repeats": opts.repeats, "min_repeats": opts.min_repeats,
                     "time_budget": opts.time_budget, "rounds": opts.rounds, "max_call_s": opts.max_call_s,
                     "first_call_limit": opts.first_call_limit, "first_calls": opts.first_calls,
                     "rtol64": RTOL64,
                     "order_cache": "user" if opts.use_cache else "empty temporary",
                     "load_average_start": load_start,
                     "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                     "command": command_line("benchmarks.programs", argv),
                     "wall_s": time.perf_counter() - t_start},
            "results": results}
    data["summary"] = summarize(data)
    data["problems"] = [dict(zip(("program", "method", "status", "message"), p)) for p in problems(data)]
    text = render(data)
    base = save_results(opts.out, "programs", data, text)
    if base:
        plot(data, base + ".png")
    if not opts.quiet:
        print_summary("ccjax / faster of jacrev, jacfwd (time ratio; speedup = 1/ratio)", data["summary"],
                      lambda r: f"ccjax {fmt_time(r['ccjax_s']):>10s}  sparse {fmt_time(r['sparse_s']):>10s}  "
                                f"best {fmt_time(r['best_s']):>10s} ({r['best'] or '–':6s}) "
                                f"ratio {_ratio(r['ccjax_ratio']):>6s}")
        for pr in data["problems"]:
            print(f"  !! {pr['program']} / {pr['method']}: {pr['status']}: {pr['message']}")
        print(f"wall time {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return data


if __name__ == "__main__":
    main()
