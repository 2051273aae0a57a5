"""Helpers shared by the benchmarks: paper numbers, task selection, order-cache
isolation, progress display, XLA cost analysis and table writing.

Nothing here asserts on timings; the benchmarks only measure and report.
"""
from __future__ import annotations

import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

from benchmarks.paper import PAPER_MULTS  # noqa: F401 - re-exported
from ccjax.tasks import TASKS, Task

#: The two tasks ``--smoke`` runs: one scalar task, one with shared parameters.
SMOKE_TASKS = ("HumanHeartDipole", "MLP")


def select_tasks(names: Sequence[str] | None) -> list[Task]:
    """Tasks by name (all of them, in the paper's order, when ``names`` is empty)."""
    if not names:
        return list(TASKS.values())
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    return [TASKS[n] for n in names]


def begin(opts) -> tuple[float, list[Task]]:
    """Start of a benchmark run: the order cache isolated (unless
    ``opts.use_cache``), the clock started, the tasks of ``opts.tasks``."""
    isolate_order_cache(opts.use_cache)
    return time.perf_counter(), select_tasks(opts.tasks)


# ------------------------------------------------------------------ order cache
def isolate_order_cache(use_user_cache: bool = False) -> str:
    """Point ccjax's order cache (``CCJAX_CACHE_DIR``) at a fresh temporary
    directory, so that ``order="auto"`` means the built-in quick heuristics and
    does not depend on what earlier searches stored on this machine.  Returns
    the cache directory in use (``"user cache"`` when ``use_user_cache``)."""
    if use_user_cache:
        return os.environ.get("CCJAX_CACHE_DIR", "user cache")
    import atexit
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="ccjax-bench-cache-")
    os.environ["CCJAX_CACHE_DIR"] = path
    atexit.register(shutil.rmtree, path, True)
    return path


# ------------------------------------------------------------------ progress
class Progress:
    """A progress bar: ``rich`` when it is importable and stderr is a terminal,
    else one printed line per step (to stderr, so piped output stays clean)."""

    def __init__(self, total: int, desc: str = "", enabled: bool = True):
        self.total, self.done, self.desc, self.enabled = total, 0, desc, enabled
        self.t0 = time.perf_counter()
        self._rich = None
        if enabled and sys.stderr.isatty():
            try:
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
                self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                          MofNCompleteColumn(), TimeElapsedColumn(),
                                          TimeRemainingColumn(), transient=False)
                self._rich.start()
                self._task = self._rich.add_task(desc, total=total)
            except ImportError:
                self._rich = None

    def update(self, label: str = "", n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=n, description=f"{self.desc} {label}")
        else:
            el = time.perf_counter() - self.t0
            print(f"[{self.done:4d}/{self.total}] {el:7.1f}s {self.desc} {label}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


# ------------------------------------------------------------------ XLA cost analysis
def xla_flops(compiled) -> float | None:
    """``flops`` from the compiled cost analysis (a dict, or a list of dicts in
    some JAX versions); ``None`` when the backend does not report it."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends may not implement it
        return None
    if ca is None:
        return None
    if isinstance(ca, (list, tuple)):
        dicts = [d for d in ca if isinstance(d, dict)]
    elif isinstance(ca, dict):
        dicts = [ca]
    else:
        return None
    vals = [d.get("flops") for d in dicts if d.get("flops") is not None]
    return float(sum(vals)) if vals else None


# ------------------------------------------------------------------ timing
def time_interleaved(compiled: dict[str, Callable], args: Sequence, first_s: dict[str, float], opts) -> dict[str, dict]:
    """Time every compiled executable on ``args`` (single blocked calls) in
    interleaved rounds, so that load changes on a shared machine hit every
    method alike.  ``first_s``: each one's first (checked) call duration,
    which sets its number of calls: up to ``opts.repeats``, about
    ``opts.time_budget`` seconds, at least ``opts.min_repeats`` (3 for calls
    over 50 ms), and none beyond the first for calls slower than
    ``opts.max_call_s``; ``opts.rounds`` rounds.  Returns per name the median,
    quartiles, IQR, fastest call and count (``single`` when only the first
    call could be used)."""
    calls = {n: functools.partial(_blocked_call, exe, tuple(args)) for n, exe in compiled.items()}
    quota = {}
    for n, t1 in first_s.items():
        if t1 > opts.max_call_s:
            quota[n] = 0  # one (first) call only
        else:
            lo = 3 if t1 > 0.05 else opts.min_repeats
            quota[n] = int(min(opts.repeats, max(lo, opts.time_budget / max(t1, 1e-6))))
    samples: dict[str, list[float]] = {n: [] for n in calls}
    for n, call in calls.items():  # warm-up
        if quota[n] and first_s[n] < 0.05:
            call()
    n_rounds = max(1, min(opts.rounds, max(quota.values(), default=1)))
    for r in range(n_rounds):
        for n, call in calls.items():
            for _ in range(quota[n] * (r + 1) // n_rounds - quota[n] * r // n_rounds):
                t0 = time.perf_counter()
                call()
                samples[n].append(time.perf_counter() - t0)
    stats = {}
    for n in calls:
        xs = samples[n] or [first_s[n]]
        q1, med, q3 = np.percentile(np.asarray(xs), [25, 50, 75])
        stats[n] = {"median_s": float(med), "q1_s": float(q1), "q3_s": float(q3), "iqr_s": float(q3 - q1),
                    "min_s": float(min(xs)), "n": len(xs), "single": not samples[n]}
    return stats


def _blocked_call(exe, args):
    return jax.block_until_ready(exe(*args))


def add_timing_args(ap, batches: str) -> None:
    """The command-line options every runtime benchmark shares."""
    ap.add_argument("--tasks", nargs="*", default=None, help="task names (default: all ten)")
    ap.add_argument("--batch", nargs="*", type=int, default=None, help=f"batch sizes (default {batches})")
    ap.add_argument("--repeats", type=int, default=100, help="most timed calls per measurement")
    ap.add_argument("--min-repeats", type=int, default=5, help="fewest timed calls per measurement")
    ap.add_argument("--time-budget", type=float, default=0.25,
                    help="seconds of timed calls per method and setting (at least --min-repeats calls)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per setting")
    ap.add_argument("--max-call-s", type=float, default=2.0,
                    help="skip a method whose time per call, extrapolated from the previous batch size, "
                         "exceeds this; time only one call of a method slower than this")
    ap.add_argument("--out", default=None, help="directory for the Markdown and JSON results")
    ap.add_argument("--smoke", action="store_true", help="2 tasks, B=4, 3 repeats: a quick check (< 60 s)")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    ap.add_argument("--use-cache", action="store_true",
                    help="let order=\"auto\" use the user's order cache (default: an empty temporary one)")
    ap.add_argument("--verbose", action="store_true", help="print tracebacks of failing methods")


def apply_smoke(a, default_batches: list[int]) -> None:
    """``--smoke``: the smoke tasks at B = 4 with 3 calls each; else the default batch sizes."""
    if a.smoke:
        a.tasks = a.tasks or list(SMOKE_TASKS)
        a.batch = a.batch or [4]
        a.repeats, a.min_repeats, a.time_budget, a.rounds = 3, 3, 0.02, 1
    a.batch = a.batch if a.batch is not None else list(default_batches)


# ------------------------------------------------------------------ output
def environment() -> dict:
    """Where the numbers come from."""
    dev = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(getattr(dev, "device_kind", dev)),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "x64": bool(jax.config.jax_enable_x64),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1, default=_json_default)
        fh.write("\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def command_line(module: str, argv) -> str:
    """How the benchmark was invoked (``argv`` None: the process's own arguments)."""
    args = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    return f"python -m {module} {args}".strip()


def save_results(out_dir: str | None, stem: str, data: dict, text: str) -> str | None:
    """Write ``<stem>_<backend>.json`` and ``.md`` into ``out_dir``; returns the
    path without extension (None when ``out_dir`` is None)."""
    if not out_dir:
        return None
    base = os.path.join(out_dir, f"{stem}_{data['meta']['env']['backend']}")
    write_json(base + ".json", data)
    write_text(base + ".md", text)
    return base


def print_summary(title: str, summary: dict, describe: Callable[[dict], str]) -> None:
    """Print a summary (``rows`` with ``task`` and ``speedup``; ``geomean_speedup``
    and ``geomean_speedup_min``): the title, one line per task (``describe(row)``
    in the middle), the geometric mean."""
    print(f"\n{title}")
    for r in summary["rows"]:
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else "–"
        print(f"  {r['task']:22s} {describe(r)}   speedup {sp}")
    if summary.get("geomean_speedup"):
        print(f"  geometric mean speedup: {summary['geomean_speedup']:.2f}x (median), "
              f"{summary['geomean_speedup_min']:.2f}x (fastest call)")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` is one char per column (l/r)."""
    header = [str(h) for h in header]
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines) + "\n"


def fmt_time(seconds: float | None) -> str:
    """Seconds as a short human string (µs / ms / s)."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if 0.9995 <= seconds < 1.0:  # "1e+03 ms" otherwise
        seconds = 1.0
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def geomean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and x > 0 and math.isfinite(x)]
    return float(math.exp(sum(math.log(x) for x in xs) / len(xs))) if xs else math.nan


def memory_bytes(compiled) -> dict:
    """``temp_bytes``, ``output_bytes`` and their sum ``mem_bytes`` of a
    compiled program, or ``{}`` where the backend does not report them."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        return {}
    if m is None:
        return {}
    return {"temp_bytes": int(m.temp_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
            "mem_bytes": int(m.temp_size_in_bytes) + int(m.output_size_in_bytes)}


def save_figure(plt, fig, path: str) -> None:
    """Write ``fig`` to ``path`` (its folder made if missing) and close it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None (with a note on
    stderr) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return None
    return plt


def timed(rec) -> bool:
    """Whether a method's record holds a successful timing."""
    return rec is not None and rec.get("status") == "ok" and "median_s" in rec


def fastest(results: dict, methods) -> tuple:
    """``(method, median seconds)`` of the fastest timed of ``methods``, or ``(None, None)``."""
    timings = [(results[m]["median_s"], m) for m in methods if timed(results.get(m))]
    if not timings:
        return None, None
    t, m = min(timings)
    return m, t
