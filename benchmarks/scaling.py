"""How ccjax's phases grow with program size, beside jit(jax.jacrev) and jit(jax.jacfwd).

    python -m benchmarks.scaling --out docs            # sizes 100, 1k, 5k, 20k equations
    python -m benchmarks.scaling --quick               # a smoke run: two tiny sizes

Programs (sizes are counted in jaxpr equations; the scan's are its unrolled
equivalent, body equations times steps, since its jaxpr stays a few lines):

* ``rk4``: an unrolled RK4 integrator of 8 coupled pendulums
  (``-sin(y) + 0.1 A y``; a scalar-written integrator is avoided on
  purpose: past ~8 steps XLA's CPU fusion recomputes shared scalar
  subexpressions exponentially, and the *primal* ``jit(f)`` alone takes
  15 s a call at 8 steps, which no Jacobian tool can fix downstream);
* ``mlp``: a deep tanh MLP of width 16, Jacobian with respect to the input;
* ``scan``: the same integrator as a ``lax.scan`` over the steps.

Each (program, size, tool) runs in a fresh interpreter with a wall-clock
limit (``--limit``), so nothing is cached between measurements and a peer
whose XLA compile runs away is cut off and reported as over the limit;
after that the tool's larger sizes of the program are skipped.  ccjax's
phases: graph build (trace, rolling of unrolled loops into scans
(:mod:`ccjax.roll`) + graph: what ``jacve(order="auto")`` pays), plan per
order (``auto`` on that graph, ``rev`` and ``markowitz`` on the unrolled
graph, which named orders eliminate), lowering and XLA compile of the executor for ``auto``
(with the executor's jaxpr size), first call (build + plan + lower +
compile + run, the sum a fresh ``jacve`` call pays), steady median, the
compiled program's temp + output bytes and the interpreter's peak RSS.
Every ccjax result is checked against float64 forward-mode AD.  Growth
exponents are least-squares slopes of log(time) on log(equations).
Timings are float32 on this machine; nothing here asserts on them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import environment, fmt_time, memory_bytes, pyplot, save_figure, write_json, write_text

PROGRAMS = ("rk4", "mlp", "scan")
TOOLS = ("ccjax", "jacrev", "jacfwd")
ORDERS = ("auto", "rev", "markowitz")
SIZES = (100, 1000, 5000, 20000)
QUICK_SIZES = (100, 300)
#: ccjax's timed phases, in the order a first call pays them, then the steady call.
PHASES = ("build", "plan_auto", "plan_rev", "plan_markowitz", "lower", "compile", "first", "steady")


# ------------------------------------------------------------------ programs
_COUPLING = np.eye(8, k=1) + np.eye(8, k=-1) - 2 * np.eye(8)


def _pendulums(y):
    import jax.numpy as jnp

    return -jnp.sin(y) + 0.1 * (jnp.asarray(_COUPLING, y.dtype) @ y)


def _rk4_step(rhs, y, h=0.01):
    k1 = rhs(y)
    k2 = rhs(y + h / 2 * k1)
    k3 = rhs(y + h / 2 * k2)
    k4 = rhs(y + h * k3)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def make(program: str, n: int):
    """``(f, x)`` of ``program`` with size parameter ``n`` (steps or layers)."""
    import jax
    import jax.numpy as jnp

    if program == "rk4":
        def f(x):
            for _ in range(n):
                x = _rk4_step(_pendulums, x)
            return x
        return f, jnp.linspace(0.1, 1.0, 8, dtype=jnp.float32)
    if program == "mlp":
        rng = np.random.default_rng(0)
        ws = [jnp.asarray(rng.normal(size=(16, 16)) / 4, jnp.float32) for _ in range(n)]
        bs = [jnp.asarray(rng.normal(size=16) / 10, jnp.float32) for _ in range(n)]

        def f(x):
            for w, b in zip(ws, bs):
                x = jnp.tanh(w @ x + b)
            return x
        return f, jnp.linspace(-1.0, 1.0, 16, dtype=jnp.float32)
    if program == "scan":
        def f(x):
            y, _ = jax.lax.scan(lambda y, _: (_rk4_step(_pendulums, y), None), x, None, length=n)
            return y
        return f, jnp.linspace(0.1, 1.0, 8, dtype=jnp.float32)
    raise ValueError(program)


def equations(program: str, n: int) -> int:
    """Jaxpr equations of ``program`` at size ``n`` (the scan: unrolled equivalent)."""
    import jax

    if program == "scan":
        f, x = make(program, 1)
        body = jax.make_jaxpr(f)(x).jaxpr.eqns[0].params["jaxpr"].jaxpr
        return len(body.eqns) * n
    f, x = make(program, n)
    return len(jax.make_jaxpr(f)(x).jaxpr.eqns)


def size_param(program: str, target: int) -> int:
    """The size parameter whose program has about ``target`` equations."""
    per = equations(program, 4) / 4 if program != "scan" else equations(program, 1)
    return max(1, round(target / per))


# ------------------------------------------------------------------ one measurement (child process)
def _median_call(fn, args, budget: float = 1.0, most: int = 50) -> float:
    import jax

    times = []
    t_end = time.perf_counter() + budget
    while len(times) < most and (len(times) < 3 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _reference(f, x) -> np.ndarray:
    """float64 Jacobian by forward mode: one JVP batched over the inputs (eager: no compile)."""
    import jax
    import jax.numpy as jnp

    x64 = x.astype(jnp.float64)
    # One batched JVP: every primitive dispatches once, not once per column.
    with jax.disable_jit():
        cols = jax.vmap(lambda e: jax.jvp(f, (x64,), (e,))[1])(jnp.eye(x.size, dtype=jnp.float64))
    return np.moveaxis(np.asarray(cols), 0, -1)


class Record(dict):
    """A measurement's fields, each printed as soon as it is known, so a
    run stopped at the time limit still reports the phases it finished."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        print("FIELD " + json.dumps([key, value]), flush=True)


def measure_ccjax(program: str, n: int, compile: bool = True) -> dict:
    import jax

    from ccjax.api import _plan, _runner
    from ccjax._jaxpr import equation_count
    from ccjax.trace import auto_graph_of, graph_of, trace

    f, x = make(program, n)
    rec = Record()
    t0 = time.perf_counter()
    unrolled, *_ = trace(f, (x,), {}, 0, False)
    g, t = auto_graph_of(unrolled, False)  # what jacve(order="auto") plans: loops rolled
    rec["build"] = time.perf_counter() - t0
    rec["vertices"] = len(g.vertices)
    rec["planned_eqns"] = equation_count(t.closed.jaxpr)
    t0 = time.perf_counter()
    plain = graph_of(unrolled, False)  # named orders eliminate the unrolled graph
    rec["build_unrolled"] = time.perf_counter() - t0
    rec["vertices_unrolled"] = len(plain.vertices)
    for order in ORDERS:
        t0 = time.perf_counter()
        plan = _plan(g if order == "auto" else plain, order)
        rec[f"plan_{order}"] = time.perf_counter() - t0
        rec[f"mults_{order}"] = plan.report.mults
        if order == "auto":
            rec["auto_mode"] = plan.mode
            rec["eliminations"] = len(plan.steps)
    run = _runner(g, "auto")
    args = ([x], list(t.closed.consts))
    # What ``jax.jit(ccjax.jacve(f))`` runs: the program's constants are
    # closed over, so XLA embeds them as jit(jacrev(f)) does; passing them
    # as arguments would charge every steady call for hundreds of buffers.
    executor = jax.jit(lambda x: run([x], args[1])[0][0])
    t0 = time.perf_counter()
    lowered = executor.lower(x)
    rec["lower"] = time.perf_counter() - t0
    rec["executor_eqns"] = sum(len(e.params["jaxpr"].jaxpr.eqns) if "jaxpr" in e.params else 1
                               for e in jax.make_jaxpr(run)(*args).jaxpr.eqns)
    if not compile:
        return rec
    t0 = time.perf_counter()
    compiled = lowered.compile()
    rec["compile"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jac = np.asarray(jax.block_until_ready(compiled(x)))
    rec["first_run"] = time.perf_counter() - t0
    rec["first"] = rec["build"] + rec["plan_auto"] + rec["lower"] + rec["compile"] + rec["first_run"]
    rec["steady"] = _median_call(compiled, (x,))
    rec["mem_bytes"] = memory_bytes(compiled).get("mem_bytes")
    ref = _reference(f, x)
    err = float(np.max(np.abs(jac - ref)) / max(1e-30, float(np.max(np.abs(ref)))))
    rec["max_rel_err"] = err
    rec["exact"] = bool(err < 1e-4)
    return rec


def measure_peer(program: str, n: int, tool: str) -> dict:
    import jax

    f, x = make(program, n)
    jf = jax.jit({"jacrev": jax.jacrev, "jacfwd": jax.jacfwd}[tool](f))
    rec = Record()
    t0 = time.perf_counter()
    lowered = jf.lower(x)
    rec["lower"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    rec["compile"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(x))
    rec["first"] = rec["lower"] + rec["compile"] + time.perf_counter() - t0
    rec["steady"] = _median_call(compiled, (x,))
    rec["mem_bytes"] = memory_bytes(compiled).get("mem_bytes")
    return rec


def _child(program: str, n: int, tool: str) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)  # for the float64 reference; timed values stay float32
    if tool.startswith("ccjax"):
        rec = measure_ccjax(program, n, compile=tool != "ccjax-lower")
    else:
        rec = measure_peer(program, n, tool)
    rec["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("DONE", flush=True)


def _fields(stdout) -> dict:
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    rec = {}
    for line in (stdout or "").splitlines():
        if line.startswith("FIELD "):
            key, value = json.loads(line[len("FIELD "):])
            rec[key] = value
    return rec


def run_one(program: str, n: int, tool: str, limit: float) -> dict:
    """One measurement in a fresh interpreter.  A failed run, or one past
    ``limit``, has an ``"error"`` besides the fields it measured before."""
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--child", program, str(n), tool]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=root, env=env)
    except subprocess.TimeoutExpired as e:
        return {**_fields(e.stdout), "error": f"over the {limit:g} s limit", "over_limit": True}
    rec = _fields(proc.stdout)
    rec["wall"] = time.perf_counter() - t0
    if "DONE" not in proc.stdout.splitlines():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        rec["error"] = f"exit {proc.returncode}: {tail[0][:300]}"
    return rec


# ------------------------------------------------------------------ report
def exponent(sizes: list, times: list) -> float | None:
    """Least-squares slope of log(time) on log(size) over the measured points."""
    pts = [(math.log(s), math.log(t)) for s, t in zip(sizes, times) if t and t > 0]
    if len(pts) < 2:
        return None
    xs, ys = np.array(pts).T
    return float(np.polyfit(xs, ys, 1)[0])


def growth(data: dict) -> dict:
    out = {}
    for program, rows in data["rows"].items():
        out[program] = {}
        for ph in PHASES:
            have = [r for r in rows if r["ccjax"].get(ph) is not None]
            out[program][ph] = exponent([r["equations"] for r in have], [r["ccjax"][ph] for r in have])
    return out


def _peer(rec: dict, key: str) -> str:
    if "error" in rec:
        return "over limit" if rec.get("over_limit") else "skipped" if rec.get("skipped") else "failed"
    return fmt_time(rec.get(key))


def _mb(b) -> str:
    return "-" if b is None else f"{b / 2**20:.2f}"


def render(data: dict) -> str:
    meta = data["meta"]
    lines = [f"# Scaling: ccjax beside jit(jax.jacrev) and jit(jax.jacfwd) ({meta['backend']}, "
             f"{meta['cpu_count']} cores, float32)", "",
             f"`python -m benchmarks.scaling --out docs`; {meta['limit']:g} s limit per measurement, "
             f"each in a fresh interpreter; total {meta['wall_s']:.0f} s. First call = build + plan "
             "(`auto`) + lower + compile + first run. A peer marked *over limit* was stopped there and "
             "not run at larger sizes of that program (*skipped*). *planned eqns*: the equations of the "
             "program `order=\"auto\"` plans, after unrolled loops are rolled into scans (`ccjax.roll`, "
             "programs of 500 equations or more); *vertices*: its graph's; `rev` and `markowitz` plan the "
             "unrolled graph.", ""]
    for program, rows in data["rows"].items():
        lines += [f"## {program}", "",
                  "| equations | planned eqns (rolled) | vertices | build | plan auto | plan rev | plan markowitz | "
                  "auto picks | executor eqns | lower | compile | first call | steady | jacrev first | "
                  "jacrev steady | jacfwd first | jacfwd steady | exact | mem MB (ccjax/rev/fwd) | peak RSS MB |",
                  "|" + "|".join(["---:"] * 17 + [":---:", "---:", "---:"]) + "|"]
        for r in rows:
            c, rv, fw = r["ccjax"], r["jacrev"], r["jacfwd"]
            mode = c.get("auto_mode", "-")
            if mode == "eliminate":
                mode = f"eliminate ({c['eliminations']} steps)"
            exact = "-" if "exact" not in c else f"{'yes' if c['exact'] else 'NO'} ({c['max_rel_err']:.0e})"
            first = fmt_time(c["first"]) if "first" in c else (
                "not compiled" if c.get("lower_only") else "over limit" if c.get("over_limit") else "failed")
            t = lambda key: fmt_time(c.get(key))
            lines.append(
                f"| {r['equations']} | {c.get('planned_eqns', '-')} | {c.get('vertices', '-')} | {t('build')} | {t('plan_auto')} | "
                f"{t('plan_rev')} | {t('plan_markowitz')} | {mode} | {c.get('executor_eqns', '-')} | "
                f"{t('lower')} | {t('compile')} | **{first}** | {t('steady')} | "
                f"{_peer(rv, 'first')} | {_peer(rv, 'steady')} | {_peer(fw, 'first')} | {_peer(fw, 'steady')} | "
                f"{exact} | {_mb(c.get('mem_bytes'))}/{_mb(rv.get('mem_bytes'))}/{_mb(fw.get('mem_bytes'))} | "
                f"{_mb(c.get('peak_rss_bytes'))} |")
        lines.append("")
    lines += ["## Growth exponents (slope of log time on log equations)", "",
              "| program | build | plan auto | plan rev | plan markowitz | lower | compile | first call | steady |",
              "|---|" + "---:|" * 8]
    for program, ex in data["growth"].items():
        cells = " | ".join("-" if ex[k] is None else f"{ex[k]:.2f}" for k in PHASES)
        lines.append(f"| {program} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    programs = list(data["rows"])
    fig, axes = plt.subplots(1, len(programs), figsize=(5 * len(programs), 4), squeeze=False)
    for ax, program in zip(axes[0], programs):
        rows = data["rows"][program]
        eq = [r["equations"] for r in rows]
        series = (("ccjax", "build", "build", ":", "o"), ("ccjax", "plan_auto", "plan auto", ":", "o"),
                  ("ccjax", "lower", "lower", "--", "o"), ("ccjax", "compile", "compile", "--", "o"),
                  ("ccjax", "first", "ccjax first call", "-", "o"),
                  ("jacrev", "first", "jit(jacrev) first call", "-", "x"),
                  ("jacfwd", "first", "jit(jacfwd) first call", "-", "x"))
        for tool, key, label, style, mark in series:
            ys = [r[tool].get(key) for r in rows]
            if any(y for y in ys):
                ax.plot(eq, [np.nan if not y else y for y in ys], style, marker=mark, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("jaxpr equations")
        ax.set_ylabel("seconds")
        ax.set_title(program)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(plt, fig, path)
    return True


# ------------------------------------------------------------------ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", nargs="*", default=list(PROGRAMS), choices=PROGRAMS)
    ap.add_argument("--sizes", nargs="*", type=int, default=None, help=f"target equations (default {SIZES})")
    ap.add_argument("--tools", nargs="*", default=list(TOOLS), choices=TOOLS)
    ap.add_argument("--limit", type=float, default=300.0, help="seconds per measurement (fresh interpreter)")
    ap.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}: a smoke run")
    ap.add_argument("--out", default=None, help="directory for scaling_<backend>.{md,json,png}")
    ap.add_argument("--child", nargs=3, metavar=("PROGRAM", "N", "TOOL"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.sizes = a.sizes or list(QUICK_SIZES if a.quick else SIZES)
    return a


def main(argv=None) -> dict | None:
    opts = parse_args(argv)
    if opts.child:
        program, n, tool = opts.child
        _child(program, int(n), tool)
        return None
    import jax

    t_start = time.perf_counter()
    data: dict = {"rows": {}}
    for program in opts.programs:
        rows, stopped = [], set()
        for target in opts.sizes:
            n = size_param(program, target)
            row = {"target": target, "n": n, "equations": equations(program, n)}
            for tool in TOOLS:
                if tool not in opts.tools:
                    row[tool] = {"error": "not run", "skipped": True}
                elif tool == "ccjax" and tool in stopped:  # the phases before XLA still say how ccjax scales
                    row[tool] = {**run_one(program, n, "ccjax-lower", opts.limit), "lower_only": True}
                elif tool in stopped:
                    row[tool] = {"error": "skipped after a smaller size passed the limit", "skipped": True}
                else:
                    row[tool] = run_one(program, n, tool, opts.limit)
                    if row[tool].get("over_limit") and "compile" not in row[tool]:
                        stopped.add(tool)
                rec = row[tool]
                print(f"{program:5s} {row['equations']:6d} eqns {tool:7s} "
                      + " ".join(f"{k} {fmt_time(rec[k])}" for k in PHASES if k in rec)
                      + (f" [{rec['error']}]" if "error" in rec else ""),
                      flush=True)
            rows.append(row)
        data["rows"][program] = rows
    env = environment()
    data["meta"] = {"env": env, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
                    "limit": opts.limit, "wall_s": time.perf_counter() - t_start, "sizes": opts.sizes}
    data["growth"] = growth(data)
    text = render(data)
    print(text)
    if opts.out:
        os.makedirs(opts.out, exist_ok=True)
        stem = os.path.join(opts.out, f"scaling_{data['meta']['backend']}")
        write_json(stem + ".json", data)
        write_text(stem + ".md", text)
        plot(data, stem + ".png")
    return data


if __name__ == "__main__":
    main()
