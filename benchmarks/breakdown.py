"""Where the time of ``jit(ccjax.jacve(vmap(f)))`` goes, per task at one batch size.

    python -m benchmarks.breakdown [--tasks ...] [--batch 512] [--out docs/]

Times, in interleaved rounds (``benchmarks.common.time_interleaved``):

* ``ccjax auto``: the whole jitted Jacobian (dense output), as in ``benchmarks.runtime``;
* ``elimination``: the same program up to the compact values of the final
  input->output edges (primal, partials, products and sums; no dense output);
* ``writing``: the dense output written from those compact values alone
  (``ccjax.eliminate.write_jacobian`` on precomputed values);
* ``zeros``: the same output buffers written with zeros (distinct blocks, as
  ``write_jacobian`` writes structurally zero blocks): the floor any method
  producing this output pays;
* the peers of ``benchmarks.runtime`` (``--peers``).

XLA's ``bytes accessed`` (``cost_analysis``) of each compiled program is listed
next to its time.  ``elimination`` and ``writing`` are two compiled programs, so
their sum also pays one more dispatch and the compact values' round trip through
memory; the whole program can be faster than the sum.
"""
from __future__ import annotations

import argparse
import sys
import time

import jax

from benchmarks.common import (Progress, add_timing_args, apply_smoke, begin, command_line, environment,
                               fmt_time, markdown_table, save_results, time_interleaved)
from benchmarks.runtime import ASDEX, JACFWD, JACREV, SCATTER, Setting, _err, check_tree
from ccjax.api import _plan
from ccjax.trace import graph_of, trace
from ccjax.eliminate import dense_block, final_values, partial_values, write_jacobian

AUTO, ELIM, WRITE, ZEROS = "ccjax auto", "elimination", "writing", "zeros"


def _bytes(exe) -> float | None:
    try:
        ca = exe.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return float(ca.get("bytes accessed")) if ca else None
    except Exception:  # noqa: BLE001 - backends may not report it
        return None


def pieces(st: Setting):
    """``(elim, write, zeros, diff_leaves)``: jittable functions of the
    differentiated leaves (arguments not differentiated are baked in), of the
    compact final values, and of nothing."""
    t, _, _ = trace(st.fn, st.args, {}, st.argnums, False)
    g = graph_of(t)
    plan = _plan(g, "auto")
    prog, consts = g.program, list(t.closed.consts)

    def elim(*leaves):
        return final_values(g, plan, partial_values(g, prog.evaluate(list(leaves), consts)))

    def write(finals):
        return write_jacobian(g, plan, finals, "dense")

    def zeros():
        shapes = [(tuple(b.shape), b.dtype) for b in jax.eval_shape(write, jax.eval_shape(elim, *t.leaves))]
        return [dense_block(None, None, s, d, tag=k) for k, (s, d) in enumerate(shapes)]

    return elim, write, zeros, tuple(t.leaves)


def run_setting(st: Setting, peers, opts, prog: Progress) -> dict:
    where = f"{st.task.name} B={st.batch}"
    elim, write, zeros, leaves = pieces(st)
    finals = jax.block_until_ready(jax.jit(elim)(*leaves))
    programs = {AUTO: (jax.jit(st.ccjax("auto")), st.args), ELIM: (jax.jit(elim), leaves),
                WRITE: (jax.jit(write), (finals,)), ZEROS: (jax.jit(zeros), ())}
    for p in peers:
        fn = st.asdex()[0] if p == ASDEX else {JACREV: st.jacrev, JACFWD: st.jacfwd, SCATTER: st.scattered}[p]()
        programs[p] = (jax.jit(fn), st.args)
    res, compiled, first, ref = {}, {}, {}, None
    for name, (fn, args) in programs.items():
        try:
            exe = fn.lower(*args).compile()
            t0 = time.perf_counter()
            out = jax.block_until_ready(exe(*args))
            first[name] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - recorded
            res[name] = {"status": "error", "error": _err(e)}
            print(f"!!! {where} {name}: {_err(e)}", file=sys.stderr)
            prog.update(f"{where} {name} (error)")
            continue
        if name == AUTO:
            ref = out
        elif name == WRITE:  # writing the compact values gives ccjax's Jacobian
            ok, _, msg = check_tree(out, jax.tree_util.tree_leaves(ref))
            if not ok:
                raise AssertionError(f"{where}: write_jacobian(final_values) differs from jacve: {msg}")
        del out
        res[name] = {"status": "ok", "bytes_accessed": _bytes(exe)}
        compiled[name] = (exe, args)
        prog.update(f"{where} {name}")
    del ref
    # time_interleaved calls each executable on one argument tuple: bind them.
    bound = {n: (lambda exe=exe, args=args: exe(*args)) for n, (exe, args) in compiled.items()}
    for n, s in time_interleaved(bound, (), first, opts).items():
        s.pop("single")
        res[n].update(s)
    return res


def render(data: dict) -> str:
    meta, env = data["meta"], data["meta"]["env"]
    cols = [AUTO, ELIM, WRITE, ZEROS] + list(meta["peers"])
    lines = ["# Where the time of ccjax's dense Jacobian goes", "",
             f"Generated by `{meta['command']}` on {env['device']} ({env['backend']}, {env['cpu_count']} cores), "
             f"JAX {env['jax']}, {env['time']}; {meta['wall_s']:.0f} s wall. float32. "
             "Median of single blocked calls (interleaved rounds) / fastest call; MB = XLA's bytes accessed. "
             "See the module docstring of `benchmarks/breakdown.py` for the columns.", ""]
    for b in meta["batches"]:
        lines += [f"## B = {b}", ""]
        body = []
        for task, per in data["results"].items():
            r = per[str(b)]
            row = [task]
            for c in cols:
                rec = r.get(c)
                if not rec or rec.get("status") != "ok":
                    row.append("–" if not rec else rec["status"])
                    continue
                mb = rec.get("bytes_accessed")
                row.append(f"{fmt_time(rec['median_s'])} / {fmt_time(rec['min_s'])}"
                           + (f" ({mb / 1e6:.0f} MB)" if mb else ""))
            body.append(row)
        lines.append(markdown_table(["task"] + cols, body))
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_timing_args(ap, "512")
    ap.add_argument("--peers", nargs="*", default=[SCATTER, JACFWD], help="peer methods of benchmarks.runtime")
    opts = ap.parse_args(argv)
    apply_smoke(opts, [512])
    t_start, tasks = begin(opts)
    prog = Progress(len(tasks) * len(opts.batch) * (4 + len(opts.peers)), "breakdown", enabled=not opts.quiet)
    results = {task.name: {str(b): run_setting(Setting(task, b), opts.peers, opts, prog) for b in opts.batch}
               for task in tasks}
    prog.close()
    data = {"meta": {"env": environment(), "batches": list(opts.batch), "peers": list(opts.peers),
                     "command": command_line("benchmarks.breakdown", argv),
                     "wall_s": time.perf_counter() - t_start}, "results": results}
    text = render(data)
    save_results(opts.out, "breakdown", data, text)
    if not opts.quiet:
        print(text)
    return data


if __name__ == "__main__":
    main()
