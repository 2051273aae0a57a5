"""Runtime of jitted sparse Jacobians: ``ccjax.jacve(vmap(f), output="sparse")``
against asdex's sparse output (``asdex.jacobian(..., output_format="bcoo")``),
per task and batch size.

    python -m benchmarks.sparse [--tasks ...] [--batch 16 128 512] [--out docs/] [--smoke]

Both return ``jax.jacrev``'s pytree layout with every block a
``jax.experimental.sparse.BCOO``.  Before timing, every block of both is
densified (in NumPy) and checked against the dense reference of
``benchmarks.runtime``: eager ``vmap(jax.jacrev(f))`` scattered into that
layout (rtol 1e-4, atol 1e-4 x max|J|; where float32 AD disagrees,
agreement with eager float64 AD is accepted and noted).  Then both are
timed in interleaved rounds; asdex's sparsity detection and coloring (done
once, outside ``jit``) and both compile times are reported separately, as
are the stored entries (``nse``) of each output.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any

import jax
import numpy as np
from jax.experimental import sparse

import ccjax
from benchmarks.common import (Progress, add_timing_args, apply_smoke, begin, command_line, environment,
                               fmt_time, geomean, markdown_table, print_summary, save_results,
                               time_interleaved, timed)
from benchmarks.runtime import Setting, _err, check_tree, eager_reference

CCJAX, ASDEX = "ccjax auto (sparse)", "asdex (bcoo)"
METHODS = (CCJAX, ASDEX)


def _is_bcoo(x) -> bool:
    return isinstance(x, sparse.BCOO)


def sparse_leaves(jac) -> list:
    return jax.tree_util.tree_leaves(jac, is_leaf=_is_bcoo)


def to_numpy_dense(block) -> np.ndarray:
    """A BCOO block as a dense NumPy array (duplicates summed, as ``todense``)."""
    data, idx = np.asarray(block.data), np.asarray(block.indices)
    out = np.zeros(block.shape, data.dtype)
    if data.size:
        np.add.at(out, tuple(idx[:, k] for k in range(idx.shape[1])), data)
    return out


def nse(jac) -> int:
    return int(sum(b.nse for b in sparse_leaves(jac)))


def build(st: Setting, name: str) -> tuple[Any, dict]:
    """The jittable function of the task's arguments, and extra record fields."""
    if name == CCJAX:
        return ccjax.jacve(st.fn, argnums=st.argnums, order="auto", output="sparse"), {}
    import asdex

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", asdex.DenseColoringWarning)
        fn = asdex.jacobian(st.fn, *st.args, argnums=st.argnums, output_format="bcoo")
    return fn, {"setup_s": time.perf_counter() - t0}


def check(st: Setting, out, ref, ref64) -> tuple[bool, str]:
    """Every densified block against the dense reference; where float32 AD
    disagrees, eager float64 AD decides (``f`` not differentiable within
    float32 rounding there)."""
    got = [to_numpy_dense(b) for b in sparse_leaves(out)]
    ok, d, msg = check_tree(got, jax.tree_util.tree_leaves(ref))
    if ok:
        return True, ""
    ok64, d64, _ = check_tree([g.astype(np.float64) for g in got], jax.tree_util.tree_leaves(ref64()))
    if ok64:
        return True, f"differs from float32 AD ({msg}) but agrees with float64 AD (max abs diff {d64:.2g})"
    return False, msg


def run_setting(st: Setting, methods, opts, prog: Progress) -> dict:
    res: dict[str, dict] = {}
    where = f"{st.task.name} B={st.batch}"
    ref = eager_reference(st)
    cache: list = []

    def ref64():
        if not cache:
            cache.append(eager_reference(st, x64=True))
        return cache[0]

    compiled = {}
    for name in methods:
        rec: dict = {"status": "ok"}
        res[name] = rec
        try:
            fn, extra = build(st, name)
            rec.update(extra)
            t0 = time.perf_counter()
            lowered = jax.jit(fn).lower(*st.args)
            rec["trace_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            exe = lowered.compile()
            rec["compile_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = jax.block_until_ready(exe(*st.args))
            rec["first_call_s"] = time.perf_counter() - t0
            rec["nse"] = nse(out)
            ok, msg = check(st, out, ref, ref64)
            del out
        except Exception as e:  # noqa: BLE001 - recorded in the table
            if opts.verbose:
                import traceback
                traceback.print_exception(e)
            res[name] = {"status": "error", "error": _err(e)}
            print(f"\n!!! ERROR {where} {name}: {_err(e)}\n", file=sys.stderr, flush=True)
            prog.update(f"{where} {name} (error)")
            continue
        if not ok:
            rec.update({"status": "mismatch", "error": f"differs from the dense reference: {msg}"})
            print(f"\n!!! MISMATCH {where} {name}: {msg}\n", file=sys.stderr, flush=True)
        elif msg:
            rec["note"] = msg
        compiled[name] = exe
        prog.update(f"{where} {name}")
    del ref
    for n, s in time_interleaved(compiled, st.args, {n: res[n]["first_call_s"] for n in compiled}, opts).items():
        s.pop("single")
        res[n].update(s)
    return res


def summarize(data: dict, batch: str) -> dict:
    rows, speedups, speedups_min = [], [], []
    for task, per in data["results"].items():
        r = per.get(batch)
        if r is None:
            continue
        c, a = r.get(CCJAX), r.get(ASDEX)
        sp = a["median_s"] / c["median_s"] if timed(c) and timed(a) else None
        sp_min = a["min_s"] / c["min_s"] if timed(c) and timed(a) else None
        if sp:
            speedups.append(sp)
            speedups_min.append(sp_min)
        rows.append({"task": task, "ccjax": c, "asdex": a, "speedup": sp, "speedup_min": sp_min})
    return {"batch": int(batch), "rows": rows, "geomean_speedup": geomean(speedups) if speedups else None,
            "geomean_speedup_min": geomean(speedups_min) if speedups_min else None, "n_tasks": len(speedups)}


def _time_cell(rec) -> str:
    if rec is None:
        return "–"
    if rec.get("status") == "mismatch":
        return f"MISMATCH {fmt_time(rec.get('median_s'))}"
    if not timed(rec):
        return rec.get("status", "–")
    return f"{fmt_time(rec['median_s'])} ±{fmt_time(rec['iqr_s'] / 2)}"


def render(data: dict) -> str:
    meta, env = data["meta"], data["meta"]["env"]
    lines = ["# Sparse Jacobians: ccjax against asdex", "",
             f"Generated by `{meta['command']}` on {env['device']} ({env['backend']}, {env['cpu_count']} cores, "
             f"{env['platform']}), JAX {env['jax']}, asdex {meta.get('asdex', '?')}, {env['time']}; "
             f"{meta['wall_s']:.0f} s wall. float32.", "",
             "`jit(ccjax.jacve(vmap(f), order=\"auto\", output=\"sparse\"))` against "
             "`jit(asdex.jacobian(vmap(f), output_format=\"bcoo\"))`: both return `jax.jacrev`'s pytree "
             "layout with BCOO blocks. Every block of both was densified and checked against eager "
             "`vmap(jax.jacrev(f))` scattered into the dense layout before timing. Times: median of single "
             "blocked calls of the compiled executable after warm-up ± half the IQR, and the fastest call "
             "(min); the two methods were timed in interleaved rounds. Speedup = asdex / ccjax. "
             "nse = stored entries over all blocks. asdex setup = its sparsity detection and coloring, "
             "done once outside `jit`.", ""]
    for b in meta["batches"]:
        s = summarize(data, str(b))
        lines += [f"## B = {b}", ""]
        body = []
        for r in s["rows"]:
            c, a = r["ccjax"] or {}, r["asdex"] or {}
            body.append([r["task"], _time_cell(c), fmt_time(c.get("min_s")), _time_cell(a), fmt_time(a.get("min_s")),
                         f"{r['speedup']:.2f}x" if r["speedup"] else "–",
                         f"{r['speedup_min']:.2f}x" if r["speedup_min"] else "–",
                         c.get("nse", "–"), a.get("nse", "–"),
                         f"{c['compile_s']:.2f} s" if "compile_s" in c else "–",
                         f"{a['compile_s']:.2f} s" if "compile_s" in a else "–",
                         f"{a['setup_s']:.2f} s" if "setup_s" in a else "–"])
        lines.append(markdown_table(["task", "ccjax", "ccjax min", "asdex", "asdex min", "speedup", "speedup (min)",
                                     "nse ccjax", "nse asdex", "compile ccjax", "compile asdex", "asdex setup"],
                                    body))
        if s["geomean_speedup"]:
            lines.append(f"Geometric-mean speedup of ccjax over asdex at B = {b}: **{s['geomean_speedup']:.2f}x** "
                         f"by median, {s['geomean_speedup_min']:.2f}x by fastest call, over {s['n_tasks']} tasks.\n")
        notes = [f"- {r['task']} {m}: {rec.get('error') or rec.get('note')}"
                 for r in s["rows"] for m, rec in ((CCJAX, r["ccjax"]), (ASDEX, r["asdex"]))
                 if rec and (rec.get("error") or rec.get("note"))]
        if notes:
            lines += notes + [""]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_args(ap, "16 128 512")
    a = ap.parse_args(argv)
    apply_smoke(a, [16, 128, 512])
    return a


def main(argv=None) -> dict:
    opts = parse_args(argv)
    t_start, tasks = begin(opts)
    try:
        import importlib.metadata

        import asdex  # noqa: F401
        methods, asdex_version = METHODS, importlib.metadata.version("asdex")
    except ImportError:
        print("asdex not installed: timing ccjax alone", file=sys.stderr)
        methods, asdex_version = (CCJAX,), None
    prog = Progress(len(tasks) * len(opts.batch) * len(methods), "sparse", enabled=not opts.quiet)
    results: dict[str, dict] = {}
    for task in tasks:
        results[task.name] = {str(b): run_setting(Setting(task, b), methods, opts, prog) for b in opts.batch}
    prog.close()
    data = {"meta": {"env": environment(), "ccjax": ccjax.__version__, "asdex": asdex_version,
                     "batches": list(opts.batch), "methods": list(methods), "repeats": opts.repeats,
                     "rounds": opts.rounds, "time_budget": opts.time_budget,
                     "order_cache": "user" if opts.use_cache else "empty temporary",
                     "command": command_line("benchmarks.sparse", argv),
                     "wall_s": time.perf_counter() - t_start},
            "results": results}
    data["summary"] = {str(b): summarize(data, str(b)) for b in opts.batch}
    text = render(data)
    save_results(opts.out, "sparse", data, text)
    if not opts.quiet:
        for b, s in data["summary"].items():
            print_summary(f"B = {b}: ccjax sparse vs asdex bcoo", s,
                          lambda r: f"ccjax {_time_cell(r['ccjax']):>22s}   asdex {_time_cell(r['asdex']):>22s}")
        print(f"wall time {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    return data


if __name__ == "__main__":
    main()
