"""Runtime of jitted Jacobians: ccjax (each built-in order and ``auto``) against
``jax.jacrev``, ``jax.jacfwd``, asdex (sparse coloring, dense output) and
``vmap(jax.jacrev(f))`` scattered into the dense layout, per task, unbatched and
vmapped at several batch sizes.

    python -m benchmarks.runtime [--tasks ...] [--batch 16 128 512 2048] [--repeats N]
                                 [--out docs/] [--smoke]

Batched setting (the paper's): ``jit(jacve(vmap(f)))`` against
``jit(jacrev(vmap(f)))`` etc. with ``vmap(f, in_axes=task.in_axes)``; every
method returns ``jax.jacrev``'s dense layout of the vmapped function (asdex: the
same numbers as one (m, n) matrix).  ``vmap(jacrev(f))`` alone (compact
per-example output) and ``f`` itself are timed as reference rows.

Every output is checked before timing (rtol 1e-4, atol 1e-4 x max|J|) against
eager AD: ``jax.jacrev`` (batched: ``vmap(jax.jacrev(f))`` scattered into the
dense layout) run op by op under ``jax.disable_jit``.  Not a jitted reference:
inside one compiled program XLA may compute a value twice with different
rounding, which breaks JAX's ``x == max(x)`` derivatives, so ``jit(jacrev)``
itself can be wrong (docs/known_issues.md).  A float32 result that disagrees is
re-checked against eager float64 AD (ties within float32 rounding); mismatches
are printed loudly and excluded from comparisons.
Times are the median (and IQR) of single blocked calls of the compiled
executable after warm-up; trace and compile times are reported separately, and
XLA's flop count comes from the compiled program's cost analysis.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import ccjax
from benchmarks.common import (Progress, add_timing_args, apply_smoke, begin, command_line, environment, fastest,
                               fmt_time, geomean, markdown_table, print_summary, save_figure, save_results,
                               pyplot, time_interleaved, timed, xla_flops)

CCJAX_ORDERS = ("fwd", "rev", "markowitz", "auto")
AUTO = "ccjax auto"
JACREV, JACFWD, ASDEX, SCATTER, COMPACT, PRIMAL = (
    "jax.jacrev", "jax.jacfwd", "asdex (dense)", "vmap(jacrev)+scatter",
    "vmap(jacrev) compact", "f (primal)")
#: Methods compared against ccjax auto ("the peers").
PEERS = (JACREV, JACFWD, ASDEX, SCATTER)
#: Timed for reference only: not the same output (compact) or not a Jacobian.
REFERENCES = (COMPACT, PRIMAL)
ALL_METHODS = tuple(f"ccjax {o}" for o in CCJAX_ORDERS) + PEERS + REFERENCES


# ------------------------------------------------------------------ building the methods
class Setting:
    """One task at one batch size (``None``: the unbatched function)."""

    def __init__(self, task, batch: int | None, seed: int = 0):
        self.task, self.batch = task, batch
        base = task.make_inputs(seed)
        self.axes = task._axes(len(base))
        self.arg_ndims = [np.ndim(a) for a in base]
        if batch is None:
            self.fn, self.args = task.fn, tuple(base)
        else:
            self.fn, self.args = task.vmapped_fn(), task.batched_inputs(seed, batch)
        self.argnums = tuple(task.argnums)
        outs = jax.eval_shape(self.fn, *self.args)
        self.out_shapes = [tuple(o.shape) for o in jax.tree_util.tree_leaves(outs)]
        self.in_shapes = [tuple(np.shape(self.args[i])) for i in self.argnums]
        m = sum(math.prod(o) for o in self.out_shapes)
        n = sum(math.prod(s) for s in self.in_shapes)
        self.dense_elems = m * n
        self.dense_mb = self.dense_elems * 4 / 1e6
        self.label = "unbatched" if batch is None else f"B={batch}"

    # -- the Jacobian functions, all taking the task's positional arguments
    def ccjax(self, order: str) -> Callable:
        return ccjax.jacve(self.fn, argnums=self.argnums, order=order)

    def jacrev(self) -> Callable:
        return jax.jacrev(self.fn, argnums=self.argnums)

    def jacfwd(self) -> Callable:
        return jax.jacfwd(self.fn, argnums=self.argnums)

    def primal(self) -> Callable:
        return self.fn

    def compact(self) -> Callable:
        """``vmap(jacrev(fn))``: per-example blocks ``(B,) + out + in``."""
        return jax.vmap(jax.jacrev(self.task.fn, argnums=self.argnums), in_axes=self.task.in_axes)

    def _batched_leaves(self, jac, place: Callable) -> Any:
        """``place(leaf, in_ndim)`` on the blocks of batched arguments of a Jacobian
        pytree (``in_ndim``: rank of the unbatched argument); blocks of shared
        arguments (``in_axes`` None) are kept as they are."""
        leaves, tree = jax.tree_util.tree_flatten(jac)
        n_diff = len(self.argnums)
        out = []
        for idx, leaf in enumerate(leaves):
            arg = self.argnums[idx % n_diff]
            out.append(leaf if self.axes[arg] is None else place(leaf, self.arg_ndims[arg]))
        return jax.tree_util.tree_unflatten(tree, out)

    def scatter(self, compact_jac):
        """Compact per-example blocks -> ``jacrev(vmap(fn))``'s dense layout:
        batch-diagonal ``(B,) + out + (B,) + in`` blocks for batched arguments;
        shared arguments (``in_axes`` None) are already ``(B,) + out + param``."""
        B = self.batch
        eye = jnp.eye(B, dtype=bool)

        def place(leaf, in_nd):
            o_nd = leaf.ndim - 1 - in_nd
            mask = eye.reshape((B,) + (1,) * o_nd + (B,) + (1,) * in_nd)
            return jnp.where(mask, jnp.expand_dims(leaf, 1 + o_nd), jnp.zeros((), leaf.dtype))

        return self._batched_leaves(compact_jac, place)

    def diagonal_of(self, dense_jac):
        """The inverse of :meth:`scatter` (NumPy): the per-example blocks of a dense
        batched Jacobian, for checking the compact output."""
        ar = np.arange(self.batch)

        def take(leaf, in_nd):
            leaf = np.asarray(leaf)
            o_nd = leaf.ndim - 2 - in_nd
            return leaf[(ar,) + (slice(None),) * o_nd + (ar,) + (slice(None),) * in_nd]

        return self._batched_leaves(dense_jac, take)

    def scattered(self) -> Callable:
        comp = self.compact()
        return lambda *args: self.scatter(comp(*args))

    def asdex(self) -> tuple[Callable, float]:
        """asdex's dense (m, n) Jacobian of the flattened function; also the
        seconds its sparsity detection and coloring took (done once, outside jit)."""
        import asdex

        diff = self.argnums
        nondiff = tuple(i for i in range(len(self.args)) if i not in diff)
        fn, n_args = self.fn, len(self.args)
        flat0, unravel = ravel_pytree([self.args[i] for i in diff])

        def flat_fn(flat, *nd):
            full = [None] * n_args
            for i, v in zip(diff, unravel(flat)):
                full[i] = v
            for i, v in zip(nondiff, nd):
                full[i] = v
            return ravel_pytree(fn(*full))[0]

        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", asdex.DenseColoringWarning)
            jac = asdex.jacobian(flat_fn, flat0, *[self.args[i] for i in nondiff], argnums=0,
                                 output_format="dense")
        setup = time.perf_counter() - t0

        def run(*args):
            return jac(ravel_pytree([args[i] for i in diff])[0], *[args[i] for i in nondiff])

        return run, setup


# ------------------------------------------------------------------ checking
REFERENCE = "eager AD"


def eager_reference(st: Setting, x64: bool = False):
    """The reference Jacobian in jacrev's dense layout, by eager AD: every
    primitive runs as its own XLA computation (``jax.disable_jit``), so no
    fusion can evaluate a value twice.  ``jax.jacrev`` unbatched; batched,
    ``vmap(jax.jacrev(f))`` scattered into the dense layout (per-example work
    only).  ``x64``: in float64 (the arguments converted)."""
    args = st.args
    with contextlib.ExitStack() as stack:
        if x64:
            stack.enter_context(jax.enable_x64(True))
            args = tuple(jnp.asarray(np.asarray(a), jnp.float64) for a in args)
        stack.enter_context(jax.disable_jit())
        out = st.jacrev()(*args) if st.batch is None else st.scatter(st.compact()(*args))
        return jax.device_get(out)


def _leaf_check(got, want, rtol, atol) -> tuple[float, int]:
    """(max abs diff, number of entries outside rtol/atol x max|want|), in NumPy
    (no compilation per shape), in float64 when the inputs are float64."""
    g, w = np.asarray(got), np.asarray(want)
    dt = np.float64 if np.float64 in (g.dtype, w.dtype) else np.float32
    g, w = g.astype(dt, copy=False), w.astype(dt, copy=False)
    diff = np.abs(g - w)
    scale = max(1.0, float(np.nanmax(np.abs(w))))
    bad = ~(diff <= atol * scale + rtol * np.abs(w)) & ~(np.isnan(g) & np.isnan(w))
    return float(np.nanmax(diff)), int(bad.sum())


def check_tree(got, want, rtol=1e-4, atol=1e-4) -> tuple[bool, float, str]:
    g_leaves, g_def = jax.tree_util.tree_flatten(got)
    w_leaves, w_def = jax.tree_util.tree_flatten(want)
    if g_def != w_def:
        return False, math.inf, f"pytree structure differs: {g_def} vs {w_def}"
    worst = 0.0
    for k, (g, w) in enumerate(zip(g_leaves, w_leaves)):
        if np.shape(g) != np.shape(w):
            return False, math.inf, f"leaf {k}: shape {np.shape(g)} != {np.shape(w)}"
        if np.size(w) == 0:
            continue
        d, bad = _leaf_check(g, w, rtol, atol)
        worst = max(worst, d)
        if bad:
            return False, worst, f"leaf {k} (shape {np.shape(w)}): {bad} entries differ, max abs diff {d:.3g}"
    return True, worst, ""


def check_matrix(mat, want, out_shapes, in_shapes, rtol=1e-4, atol=1e-4) -> tuple[bool, float, str]:
    """asdex's (m, n) matrix against jacrev's blocks, block by block."""
    m = sum(math.prod(o) for o in out_shapes)
    n = sum(math.prod(s) for s in in_shapes)
    if tuple(np.shape(mat)) != (m, n):
        return False, math.inf, f"matrix shape {np.shape(mat)} != {(m, n)}"
    leaves = jax.tree_util.tree_leaves(want)
    got_blocks, r0 = [], 0
    for o in out_shapes:
        c0 = 0
        for s in in_shapes:
            got_blocks.append(np.asarray(mat)[r0:r0 + math.prod(o), c0:c0 + math.prod(s)].reshape(o + s))
            c0 += math.prod(s)
        r0 += math.prod(o)
    return check_tree(got_blocks, leaves, rtol, atol)


# ------------------------------------------------------------------ one setting
def _err(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


def _estimate(prev: dict | None, name: str, batch: int | None) -> float | None:
    """Seconds per call of ``name`` at ``batch`` extrapolated quadratically
    (the dense output has B^2 blocks) from the previous, smaller batch size."""
    if not prev or batch is None or prev.get("batch") is None:
        return None
    rec = prev["results"].get(name)
    if not rec or "median_s" not in rec:
        return None
    return rec["median_s"] * (batch / prev["batch"]) ** 2


def _behind(prev: dict | None, name: str) -> float | None:
    """How many times slower ``name`` was than the fastest dense-output method
    at the previous batch size (None if unknown)."""
    if not prev:
        return None
    times = {m: r["median_s"] for m, r in prev["results"].items()
             if m not in REFERENCES and r.get("status") == "ok" and "median_s" in r}
    if name not in times or not times:
        return None
    return times[name] / min(times.values())


def run_setting(st: Setting, methods: Sequence[str], opts, prog: Progress, prev: dict | None = None) -> dict:
    """Check and time every method on one setting; returns {method: record}.

    Phase 1 compiles each method, calls it once and checks its output against
    the reference.  Phase 2 times all methods in interleaved rounds, so that
    load changes on a shared machine hit every method alike.
    """
    res: dict[str, dict] = {}
    batched = st.batch is not None
    where = f"{st.task.name} {st.label}"
    todo = [m for m in methods if batched or m not in (SCATTER, COMPACT)]

    # Which built-in order does "auto" resolve to?  Identical orders compile to the
    # identical program, so that order reuses auto's measurement.
    alias = None
    if AUTO in todo:
        try:
            from ccjax.resolve import resolve_order
            g = ccjax.graph(st.fn, *st.args, argnums=st.argnums)
            auto_order = resolve_order(g, "auto")
            alias = next((o for o in ("rev", "fwd", "markowitz")
                          if f"ccjax {o}" in todo and resolve_order(g, o) == auto_order), None)
        except Exception:  # noqa: BLE001 - only an optimisation
            alias = None

    def builder(name: str):
        """(function of the task's args, extra record fields)."""
        if name.startswith("ccjax "):
            return st.ccjax(name.split(" ", 1)[1]), {}
        if name == JACREV:
            return st.jacrev(), {}
        if name == JACFWD:
            return st.jacfwd(), {}
        if name == SCATTER:
            return st.scattered(), {}
        if name == COMPACT:
            return st.compact(), {}
        if name == PRIMAL:
            return st.primal(), {}
        if name == ASDEX:
            fn, setup = st.asdex()
            return fn, {"setup_s": setup}
        raise ValueError(name)

    too_big = st.dense_mb > opts.max_dense_mb
    compiled: dict[str, Any] = {}

    def skip(name: str, msg: str, status: str = "skipped", why: str = "") -> None:
        res[name] = {"status": status, "error": msg}
        if why:
            res[name]["why"] = why
        prog.update(f"{where} {name} ({status})")

    def lower(name: str):
        """Build and trace one method; None when skipped or failing."""
        est = _estimate(prev, name, st.batch)
        if too_big and name not in (COMPACT, PRIMAL):
            skip(name, f"dense output {st.dense_mb:.0f} MB > --max-dense-mb {opts.max_dense_mb:g}")
            return None
        if est is not None and est > opts.max_call_s and name not in (AUTO, COMPACT, PRIMAL):
            skip(name, f"~{est:.1f} s per call extrapolated from B={prev['batch']} > --max-call-s {opts.max_call_s:g}",
                 why="slow")
            return None
        prev_rec = (prev or {}).get("results", {}).get(name)
        if prev_rec and prev_rec.get("status") == "skipped" and prev_rec.get("why") in ("slow", "hopeless"):
            skip(name, prev_rec["error"], why=prev_rec["why"])
            return None
        ratio = _behind(prev, name)
        if ratio is not None and ratio > opts.hopeless and name not in (AUTO, COMPACT, PRIMAL):
            skip(name, f"{ratio:.0f}x slower than the fastest method at B={prev['batch']} (> --hopeless "
                       f"{opts.hopeless:g})", why="hopeless")
            return None
        if name == ASDEX:
            try:
                import asdex  # noqa: F401
            except ImportError:
                skip(name, "asdex not installed")
                return None
        rec: dict = {"status": "ok"}
        try:
            fn, extra = builder(name)
            rec.update(extra)
            t0 = time.perf_counter()
            lowered = jax.jit(fn).lower(*st.args)
            rec["trace_s"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - record the failure in the table
            fail(name, e)
            return None
        res[name] = rec
        return lowered

    def fail(name: str, e: BaseException) -> None:
        if opts.verbose:
            traceback.print_exception(e)
        print(f"\n!!! ERROR {where} {name}: {_err(e)}\n", file=sys.stderr, flush=True)
        compiled.pop(name, None)
        skip(name, _err(e), "error")

    def compile_one(item):
        name, lowered = item
        t0 = time.perf_counter()
        try:
            exe = lowered.compile()
        except Exception as e:  # noqa: BLE001
            return name, e, time.perf_counter() - t0
        return name, exe, time.perf_counter() - t0

    def first_call(name: str):
        """Call once (the output is checked); None on failure."""
        try:
            t0 = time.perf_counter()
            out = jax.block_until_ready(compiled[name](*st.args))
            res[name]["first_call_s"] = time.perf_counter() - t0
            return out
        except Exception as e:  # noqa: BLE001
            fail(name, e)
            return None

    ref64_cache: list = []

    def ref64():
        """Eager float64 AD, built lazily to arbitrate float32 disagreements where
        f is not differentiable within float32 rounding (ties)."""
        if not ref64_cache:
            ref64_cache.append(eager_reference(st, x64=True))
        return ref64_cache[0]

    def compare(name: str, out, want):
        if name == ASDEX:
            return check_matrix(out, want, st.out_shapes, st.in_shapes)
        if name == COMPACT:
            return check_tree(out, st.diagonal_of(want))
        return check_tree(out, want)

    def check(name: str, out, ref, ref_name: str) -> None:
        if out is None or ref is None or name == PRIMAL:
            return
        rec = res[name]
        try:
            ok, d, msg = compare(name, out, ref)
            if not ok and not any(np.asarray(a).dtype == np.float64 for a in st.args):
                # float32 results can differ legitimately where f is not differentiable
                # within float32 rounding (a max/min/abs whose operands are closer than
                # the jitted and the eager primal's rounding differences): a method
                # agreeing with eager float64 AD is right, whatever float32 AD says.
                want64 = ref64()
                ok64, d64, _ = compare(name, jax.tree_util.tree_map(
                    lambda x: np.asarray(x, np.float64), jax.device_get(out)), want64)
                ref_ok64, _, _ = check_tree(jax.tree_util.tree_map(
                    lambda x: np.asarray(x, np.float64), ref), want64)
                if ok64:
                    rec["note"] = (f"differs from float32 {ref_name} ({msg}) but agrees with float64 "
                                   f"{ref_name} (max abs diff {d64:.2g}): f is not differentiable "
                                   f"within float32 rounding here")
                    rec["float32_ref_agrees_with_float64"] = ref_ok64
                    print(f"\n(note) {where} {name}: {rec['note']}\n", file=sys.stderr, flush=True)
                    d, ok = d64, True
        except Exception as e:  # noqa: BLE001
            ok, d, msg = False, math.inf, f"check failed: {_err(e)}"
        rec["checked_against"] = ref_name
        rec["max_abs_diff"] = d
        if not ok:
            rec["status"] = "mismatch"
            rec["error"] = f"differs from {ref_name}: {msg}"
            print(f"\n!!! MISMATCH {where} {name} vs {ref_name}: {msg}\n", file=sys.stderr, flush=True)

    # ---- phase 1: trace every method, compile them (in parallel), call each once and
    # check it against the reference (eager AD, see eager_reference)
    lowered: dict[str, Any] = {}
    for name in todo:
        if name.startswith("ccjax ") and alias and name == f"ccjax {alias}":
            prog.update(f"{where} {name} (= auto)")
            continue
        lo = lower(name)
        if lo is not None:
            lowered[name] = lo
    with ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
        for name, exe, secs in pool.map(compile_one, list(lowered.items())):
            if isinstance(exe, BaseException):
                fail(name, exe)
                continue
            res[name]["compile_s"] = secs
            res[name]["xla_flops"] = xla_flops(exe)
            compiled[name] = exe
    lowered.clear()
    ref, ref_name = None, REFERENCE
    if compiled and not too_big:
        try:  # not timed, only the reference
            ref = eager_reference(st)
        except Exception as e:  # noqa: BLE001
            print(f"!!! reference ({REFERENCE}) failed on {where}: {_err(e)}", file=sys.stderr)
    for name in list(compiled):
        out = first_call(name)
        check(name, out, ref, ref_name)
        del out
        prog.update(f"{where} {name}")
    del ref
    ref64_cache.clear()

    # ---- phase 2: interleaved timing rounds
    stats = time_interleaved(compiled, st.args, {n: res[n]["first_call_s"] for n in compiled}, opts)
    for n, s in stats.items():
        if s.pop("single"):
            res[n]["note"] = "single call (slower than --max-call-s)"
        res[n].update(s)
    compiled.clear()

    if alias and AUTO in res:
        res[AUTO]["resolves_to"] = alias
        res[f"ccjax {alias}"] = {k: v for k, v in res[AUTO].items() if k != "resolves_to"}
        res[f"ccjax {alias}"]["same_as"] = AUTO
    return {m: res[m] for m in methods if m in res}


# ------------------------------------------------------------------ reporting
def summarize(data: dict, batch: int) -> dict:
    """Per task at ``batch``: ccjax auto, the best peer and the speedup (by
    median; also by the fastest call, less sensitive to machine load)."""
    rows, speedups, speedups_min = [], [], []
    for task, settings in data["results"].items():
        r = settings.get(str(batch))
        if r is None:
            continue
        peer, pt = fastest(r, PEERS)
        auto = r.get(AUTO)
        ok = timed(auto)
        at = auto["median_s"] if ok else None
        sp = pt / at if (pt and at) else None
        peers_min = [(r[p]["min_s"], p) for p in PEERS if timed(r.get(p))]
        pm, pm_name = min(peers_min) if peers_min else (None, None)
        am = auto.get("min_s") if ok else None
        sp_min = pm / am if (pm and am) else None
        if sp:
            speedups.append(sp)
        if sp_min:
            speedups_min.append(sp_min)
        rows.append({"task": task, "auto_s": at, "auto_iqr_s": auto.get("iqr_s") if ok else None,
                     "auto_min_s": am, "auto_order": (auto or {}).get("resolves_to"),
                     "best_peer": peer, "best_peer_s": pt, "speedup": sp,
                     "best_peer_min": pm_name, "best_peer_min_s": pm, "speedup_min": sp_min,
                     "compact_s": r.get(COMPACT, {}).get("median_s") if timed(r.get(COMPACT)) else None,
                     "primal_s": r.get(PRIMAL, {}).get("median_s") if timed(r.get(PRIMAL)) else None})
    return {"batch": batch, "rows": rows, "geomean_speedup": geomean(speedups) if speedups else None,
            "geomean_speedup_min": geomean(speedups_min) if speedups_min else None,
            "n_tasks": len(speedups)}


def _cell(rec: dict | None) -> str:
    if rec is None:
        return "–"
    st = rec.get("status")
    if st == "ok" and "median_s" in rec:
        s = f"{fmt_time(rec['median_s'])} ±{fmt_time(rec['iqr_s'] / 2)}"
        return s + (" (= auto)" if rec.get("same_as") else "")
    if st == "mismatch":
        return f"MISMATCH {fmt_time(rec.get('median_s'))}"
    if st == "skipped":
        return "skipped"
    return "error"


def render(data: dict) -> str:
    meta = data["meta"]
    env = meta["env"]
    settings = meta["settings"]
    lines = ["# Runtime of jitted Jacobians", "",
             f"Generated by `{meta['command']}` on {env['device']} ({env['backend']}, "
             f"{env['cpu_count']} cores, {env['platform']}), JAX {env['jax']}, {env['time']}; "
             f"{meta['wall_s']:.0f} s wall. float32.", "",
             "Times: median of single blocked calls of the compiled executable after warm-up, "
             "± half the inter-quartile range. Every Jacobian was checked first (rtol 1e-4, "
             "atol 1e-4·max|J|) against eager AD: `jax.jacrev` (batched: `vmap(jax.jacrev(f))` "
             "scattered) run op by op under `jax.disable_jit`, not a jitted reference (see "
             "docs/known_issues.md). 'vmap(jacrev)+scatter' writes the per-example "
             "Jacobians into jacrev's dense layout inside the jitted function; 'vmap(jacrev) compact' "
             "(no dense output) and 'f (primal)' are references, not peers. asdex returns one dense "
             "(m, n) matrix of the flattened function (no block split).", ""]
    sb = meta.get("summary_batch")
    if sb is not None:
        s = summarize(data, sb)
        lines += [f"## Summary at B = {sb}: ccjax `order=\"auto\"` against the best peer", "",
                  "Speedup = best peer time / ccjax auto time, by median and by the fastest call "
                  "(min; less sensitive to the load of a shared machine). Peers: "
                  + ", ".join(PEERS) + ".", ""]
        body = []
        for r in s["rows"]:
            body.append([r["task"], fmt_time(r["auto_s"]) + (f" ({r['auto_order']})" if r["auto_order"] else ""),
                         f"{fmt_time(r['best_peer_s'])} ({r['best_peer'] or '–'})",
                         f"{r['speedup']:.2f}x" if r["speedup"] else "–",
                         fmt_time(r["auto_min_s"]),
                         f"{fmt_time(r['best_peer_min_s'])} ({r['best_peer_min'] or '–'})",
                         f"{r['speedup_min']:.2f}x" if r["speedup_min"] else "–",
                         fmt_time(r["compact_s"]), fmt_time(r["primal_s"])])
        lines.append(markdown_table(["task", "ccjax auto (order)", "best peer", "speedup",
                                     "auto min", "best peer min", "speedup (min)",
                                     "vmap(jacrev) compact", "f"], body))
        if s["geomean_speedup"]:
            lines.append(f"Geometric-mean speedup of ccjax auto over the best peer at B = {sb}: "
                         f"**{s['geomean_speedup']:.2f}x** by median, "
                         f"{s['geomean_speedup_min']:.2f}x by fastest call, over {s['n_tasks']} tasks.\n")
    lines += ["## Median time per call", ""]
    for task, per in data["results"].items():
        lines += [f"### {task}", ""]
        labels = [k for k in settings if k in per]
        header = ["method"] + [("unbatched" if k == "none" else f"B={k}") for k in labels]
        body = []
        for m in ALL_METHODS:
            if not any(m in per[k] for k in labels):
                continue
            body.append([m] + [_cell(per[k].get(m)) for k in labels])
        lines.append(markdown_table(header, body))
        notes = sorted({f"{m} at {'unbatched' if k == 'none' else 'B=' + k}: {rec.get('error')}"
                        for k in labels for m, rec in per[k].items()
                        if rec.get("status") in ("error", "mismatch", "skipped") and rec.get("error")})
        lines += [f"- {n}" for n in notes]
        if notes:
            lines.append("")
    if sb is not None:
        lines += [f"## Trace, compile and XLA flops at B = {sb}", "",
                  "trace = `jax.jit(fn).lower(*args)` (includes ccjax's graph building and planning); "
                  "compile = `.compile()`; flops = the compiled program's `cost_analysis()`.", ""]
        body = []
        for task, per in data["results"].items():
            r = per.get(str(sb), {})
            for m in ALL_METHODS:
                rec = r.get(m)
                if not rec or "trace_s" not in rec or rec.get("same_as"):
                    continue
                fl = rec.get("xla_flops")
                body.append([task, m, f"{rec['trace_s']:.2f} s", f"{rec['compile_s']:.2f} s",
                             "–" if fl is None else f"{fl:.3g}",
                             f"{rec['setup_s']:.2f} s" if "setup_s" in rec else ""])
        lines.append(markdown_table(["task", "method", "trace", "compile", "XLA flops", "asdex setup"], body))
    return "\n".join(lines)


def plot(data: dict, path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    tasks = list(data["results"])
    batches = [k for k in data["meta"]["settings"] if k != "none"]
    if not batches:
        return False
    ncol = min(5, len(tasks))
    nrow = math.ceil(len(tasks) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.0 * nrow), squeeze=False)
    style = {AUTO: dict(color="C3", lw=2.5, marker="o"),
             "ccjax fwd": dict(color="C3", lw=0.8, ls=":"),
             "ccjax rev": dict(color="C3", lw=0.8, ls="--"),
             "ccjax markowitz": dict(color="C3", lw=0.8, ls="-."),
             JACREV: dict(color="C0", marker="s"), JACFWD: dict(color="C1", marker="^"),
             ASDEX: dict(color="C2", marker="D"), SCATTER: dict(color="C4", marker="v"),
             COMPACT: dict(color="grey", ls="--"), PRIMAL: dict(color="black", ls=":", lw=0.8)}
    for ax, task in zip(axes.flat, tasks):
        per = data["results"][task]
        for m in ALL_METHODS:
            xs, ys = [], []
            for k in batches:
                rec = per.get(k, {}).get(m)
                if timed(rec):
                    xs.append(int(k))
                    ys.append(rec["median_s"] * 1e3)
            if xs:
                ax.plot(xs, ys, label=m, ms=4, **style.get(m, {}))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("batch size B")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("ms per call")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    env = data["meta"]["env"]
    fig.suptitle(f"Jacobian of vmap(f): median time per call ({env['backend']}, {env['cpu_count']} cores)")
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    save_figure(plt, fig, path)
    return True


# ------------------------------------------------------------------ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_args(ap, "16 128 512 2048")
    ap.add_argument("--no-unbatched", action="store_true", help="skip the unbatched setting")
    ap.add_argument("--methods", nargs="*", default=None, help=f"subset of {list(ALL_METHODS)}")
    ap.add_argument("--jobs", type=int, default=1,
                    help="parallel XLA compilations (phase 1); >1 only helps on an idle machine")
    ap.add_argument("--hopeless", type=float, default=20.0,
                    help="do not time a method at larger B once it was this many times slower than the "
                         "fastest dense-output method (it scales at least as badly)")
    ap.add_argument("--max-dense-mb", type=float, default=1100.0,
                    help="skip dense methods whose float32 output exceeds this many MB")
    ap.add_argument("--summary-batch", type=int, default=512)
    a = ap.parse_args(argv)
    apply_smoke(a, [16, 128, 512, 2048])
    if a.smoke:
        a.summary_batch = a.batch[-1]
    return a


def main(argv=None) -> dict:
    opts = parse_args(argv)
    t_start, tasks = begin(opts)
    methods = tuple(opts.methods) if opts.methods else ALL_METHODS
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        raise SystemExit(f"unknown methods {bad}; known: {list(ALL_METHODS)}")
    batches: list[int | None] = ([] if opts.no_unbatched else [None]) + list(opts.batch)
    n_unbatched = len([m for m in methods if m not in (SCATTER, COMPACT)])
    n_steps = sum(len(methods) if b is not None else n_unbatched for b in batches) * len(tasks)
    prog = Progress(n_steps, "runtime", enabled=not opts.quiet)
    results: dict[str, dict] = {}
    for task in tasks:
        results[task.name] = {}
        prev = None
        for b in batches:
            st = Setting(task, b)
            r = run_setting(st, methods, opts, prog, prev)
            results[task.name]["none" if b is None else str(b)] = r
            if b is not None:
                prev = {"batch": b, "results": r}
    prog.close()
    settings = (["none"] if not opts.no_unbatched else []) + [str(b) for b in opts.batch]
    summary_batch = opts.summary_batch if opts.summary_batch in opts.batch else (
        opts.batch[-1] if opts.batch else None)
    data = {"meta": {"env": environment(), "ccjax": ccjax.__version__, "settings": settings,
                     "methods": list(methods), "peers": list(PEERS), "summary_batch": summary_batch,
                     "repeats": opts.repeats, "min_repeats": opts.min_repeats,
                     "time_budget": opts.time_budget, "max_dense_mb": opts.max_dense_mb,
                     "rounds": opts.rounds, "max_call_s": opts.max_call_s, "jobs": opts.jobs,
                     "hopeless": opts.hopeless,
                     "order_cache": "user" if opts.use_cache else "empty temporary",
                     "command": command_line("benchmarks.runtime", argv),
                     "wall_s": time.perf_counter() - t_start},
            "results": results}
    if summary_batch is not None:
        data["summary"] = summarize(data, summary_batch)
    text = render(data)
    base = save_results(opts.out, "runtime", data, text)
    if base:
        plot(data, base + ".png")
    if not opts.quiet:
        s = data.get("summary")
        if s:
            print_summary(f"B = {s['batch']}: ccjax auto vs best peer", s,
                          lambda r: f"auto {fmt_time(r['auto_s']):>10s}   best peer "
                                    f"{fmt_time(r['best_peer_s']):>10s} ({r['best_peer']})")
        print(f"wall time {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return data


if __name__ == "__main__":
    main()
