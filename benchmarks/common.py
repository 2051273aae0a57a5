"""Helpers shared by the benchmarks: paper numbers, task selection, order-cache
isolation, progress display, XLA cost analysis and table writing.

Nothing here asserts on timings; the benchmarks only measure and report.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np

from ccjax.tasks import TASKS, Task

#: The paper's published multiplication counts: (fwd, rev, Markowitz, AlphaGrad).
PAPER_MULTS: dict[str, tuple[int, int, int, int]] = {
    "RoeFlux_1d": (620, 364, 407, 320),
    "RoeFlux_3d": (1556, 979, 938, 811),
    "RobotArm_6DOF": (397, 301, 288, 231),
    "HumanHeartDipole": (240, 172, 194, 148),
    "PropaneCombustion": (151, 90, 111, 88),
    "BlackScholes_Jacobian": (545, 572, 350, 312),
    "MLP": (10930, 392, 4796, 389),
    "Encoder": (135010, 4688, 51869, 4656),
    "f": (17728, 8859, 12083, 6374),
    "g": (632, 566, 451, 417),
}

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
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def geomean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x is not None and x > 0 and math.isfinite(x)]
    return float(math.exp(sum(math.log(x) for x in xs) / len(xs))) if xs else math.nan
