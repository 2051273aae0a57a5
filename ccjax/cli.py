"""The ``ccjax`` command line: search, cost and show elimination orders offline; train the policy.

    ccjax search TARGET [--args SPEC] [--argnums N,..] [--method auto|anneal|beam|exact|mcts]
                 [--budget S] [--json FILE] [--policy FILE.msgpack]
    ccjax cost   TARGET --order fwd|rev|markowitz|auto|learned|ID,ID,..|@FILE.json
    ccjax show   TARGET [--output graph.png]
    ccjax cache  list|clear
    ccjax tasks
    ccjax train  --dir DIR [--iterations N] [--max-minutes M] [--games G] [--simulations S]
                 [--config FILE.json] [--export FILE.msgpack]

``TARGET`` is a task name from :mod:`ccjax.tasks` (``ccjax tasks`` lists
them) or ``module:function`` (``package.module:object.attr`` works too),
whose positional arguments are described by ``--args`` as comma-separated
``dtype[shape]`` items, e.g. ``f32[512],f32[3,3],f64[]`` (dtypes ``f16``,
``bf16``, ``f32``, ``f64``, ``i32``, ``i64``, ``bool``; ``f64`` turns on
``jax_enable_x64``, as does ``--x64``).

Exit status: 0 success; 2 bad usage (unknown target, bad ``--args``,
``--argnums`` or order); 3 the function could not be traced with those
arguments; 4 an optional dependency is missing (matplotlib for pictures);
1 anything else.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_TRACE, EXIT_MISSING = 0, 1, 2, 3, 4

DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64", "i8": "int8",
          "i16": "int16", "i32": "int32", "i64": "int64", "u8": "uint8", "u32": "uint32", "bool": "bool",
          "float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float64",
          "int32": "int32", "int64": "int64"}


class CLIError(Exception):
    """A user-facing error with an exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class ArgSpec:
    dtype: str
    shape: tuple[int, ...]

    def __str__(self) -> str:
        short = {v: k for k, v in DTYPES.items() if len(k) <= 4}
        return f"{short.get(self.dtype, self.dtype)}[{','.join(map(str, self.shape))}]"


def parse_args_spec(spec: str) -> list[ArgSpec]:
    """Parse ``"f32[512],f32[3,3]"`` into :class:`ArgSpec` items."""
    items = []
    pos = 0
    text = spec.strip()
    pattern = re.compile(r"\s*([A-Za-z][A-Za-z0-9]*)\s*(?:\[\s*([0-9,\s]*)\])?\s*(,|$)")
    while pos < len(text):
        m = pattern.match(text, pos)
        if m is None or m.end() == pos:
            raise CLIError(f"bad --args {spec!r} near {text[pos:]!r}: expected items like f32[512] or f64[]")
        name, dims = m.group(1).lower(), m.group(2)
        if name not in DTYPES:
            raise CLIError(f"bad --args {spec!r}: unknown dtype {m.group(1)!r}; use one of "
                           f"{', '.join(k for k in DTYPES if len(k) <= 4)}")
        shape: tuple[int, ...] = ()
        if dims is not None and dims.strip():
            parts = [p.strip() for p in dims.split(",")]
            if any(not p.isdigit() for p in parts):
                raise CLIError(f"bad --args {spec!r}: shape [{dims}] must be non-negative integers")
            shape = tuple(int(p) for p in parts)
        items.append(ArgSpec(DTYPES[name], shape))
        pos = m.end()
    if not items:
        raise CLIError("--args is empty; describe each positional argument, e.g. f32[3],f32[3,3]")
    return items


def parse_argnums(text: Optional[str]):
    if text is None:
        return None
    try:
        nums = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise CLIError(f"bad --argnums {text!r}: expected integers like 0 or 0,2") from None
    if not nums:
        raise CLIError("--argnums is empty")
    return nums[0] if len(nums) == 1 and "," not in text else nums


@dataclasses.dataclass
class Target:
    """A resolved TARGET: the function, example arguments, argnums and a name."""

    name: str
    fn: Callable
    args: tuple
    argnums: Any


def _enable_x64() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)


def _make_args(specs: Sequence[ArgSpec]) -> tuple:
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for s in specs:
        if s.dtype == "bool":
            out.append(jnp.asarray(rng.random(s.shape) < 0.5))
        elif s.dtype.startswith(("int", "uint")):
            out.append(jnp.asarray(rng.integers(0, 4, s.shape), dtype=s.dtype))
        else:
            out.append(jnp.asarray(rng.uniform(0.5, 1.5, s.shape), dtype=s.dtype))
    return tuple(out)


def resolve_target(target: str, args_spec: Optional[str], argnums_text: Optional[str], x64: bool) -> Target:
    """Turn the command line's TARGET, ``--args`` and ``--argnums`` into a :class:`Target`."""
    from ccjax.tasks import TASKS

    if x64:
        _enable_x64()
    argnums = parse_argnums(argnums_text)
    if target in TASKS:
        task = TASKS[target]
        if args_spec is not None:
            raise CLIError(f"{target} is a task with fixed inputs; --args is only for module:function targets")
        fn, args = task.graph_fn_and_inputs(0)
        return Target(target, fn, tuple(args), task.argnums if argnums is None else argnums)
    if ":" not in target:
        close = [t for t in TASKS if t.lower() == target.lower()]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise CLIError(f"unknown target {target!r}{hint}: use a task name ({', '.join(TASKS)}) "
                       f"or module:function")
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise CLIError(f"bad target {target!r}: expected module:function")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise CLIError(f"cannot import module {module_name!r} for target {target!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIError(f"target {target!r} is not callable (got {type(obj).__name__})")
    if args_spec is None:
        raise CLIError(f"target {target!r} needs --args describing its positional arguments, "
                       f"e.g. --args f32[512],f32[3,3]")
    specs = parse_args_spec(args_spec)
    if any(s.dtype == "float64" for s in specs):
        _enable_x64()
    return Target(target, obj, _make_args(specs), 0 if argnums is None else argnums)


def build_graph(t: Target):
    """The graph of a target; tracing failures become :class:`CLIError` (exit 3)."""
    import ccjax

    try:
        return ccjax.graph(t.fn, *t.args, argnums=t.argnums)
    except (ValueError, TypeError) as e:
        if "argnums" in str(e):
            raise CLIError(f"bad --argnums for {t.name}: {e}") from None
        raise CLIError(f"cannot trace {t.name} with arguments {_describe_args(t.args)}: "
                       f"{type(e).__name__}: {e}", EXIT_TRACE) from None
    except Exception as e:  # noqa: BLE001 - any failure inside the user's function
        raise CLIError(f"cannot trace {t.name} with arguments {_describe_args(t.args)}: "
                       f"{type(e).__name__}: {e}", EXIT_TRACE) from None


def _describe_args(args: tuple) -> str:
    import numpy as np

    return ",".join(f"{np.dtype(a.dtype).name}[{','.join(map(str, a.shape))}]" for a in args)


def _cache(ns):
    from ccjax.cache import OrderCache

    if getattr(ns, "no_cache", False):
        return None
    return OrderCache(ns.cache_dir) if getattr(ns, "cache_dir", None) else OrderCache()


# -- progress -----------------------------------------------------------------------------------


class _ProgressBar:
    """A one-line progress bar on stderr, redrawn by a timer thread."""

    def __init__(self, budget: Optional[float], stream=None, width: int = 30):
        self.budget = budget
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.info = None
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, info) -> None:
        self.info = info

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        if self.budget:
            frac = min(1.0, elapsed / self.budget)
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            head = f"[{bar}] {elapsed:5.1f}/{self.budget:.0f}s"
        else:
            head = f"{elapsed:6.1f}s"
        if self.info is None:
            return head + " starting"
        lb = "" if self.info.lower_bound is None else f" lb {self.info.lower_bound}"
        return f"{head} best {self.info.best_cost}{lb} ({self.info.phase})"

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self.stream.write("\r" + self._line().ljust(72))
            self.stream.flush()

    def __enter__(self):
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()


# -- commands -----------------------------------------------------------------------------------


def cmd_search(ns) -> int:
    from ccjax.orders.search import search_graph

    if ns.policy is not None and ns.method != "mcts":
        raise CLIError("--policy is only used by --method mcts")
    t = resolve_target(ns.target, ns.args, ns.argnums, ns.x64)
    g = build_graph(t)
    store = _cache(ns)
    entry = store.get(g) if store is not None else None
    bar = _ProgressBar(ns.budget)
    if not ns.quiet:
        print(f"{t.name}: {len(g.vertices)} vertices, {len(g.eliminable)} eliminable, "
              f"{len(g.edges)} edges (graph {g.fingerprint})")
    if ns.method == "mcts":
        from ccjax.search.policy import PolicyError

        policy_errors: tuple = (PolicyError,)
    else:
        policy_errors = ()
    try:
        with bar, _policy_file(ns.policy):
            r = search_graph(g, ns.method, ns.budget, ns.seed, bar.update,
                             None if entry is None else entry.order)
    except policy_errors as e:
        raise CLIError(f"cannot use the learned policy: {e}", EXIT_ERROR) from None
    base = r.best_baseline
    lines = ["  ".join(f"{k} {v}" for k, v in r.baselines.items())]
    ratio = f", {r.cost / base:.3f} of the best of fwd/rev/markowitz" if base else ""
    lines.append(f"searched {r.cost} ({r.method}, {r.elapsed:.1f}s){ratio}")
    if r.lower_bound is not None:
        status = "optimal" if r.optimal else f"gap {100 * r.gap:.1f}%"
        lines.append(f"lower bound {r.lower_bound} ({status})")
    saved = None
    if store is not None:
        saved = store.put(g, r.order, r.cost, r.method, r.lower_bound, t.name)
        for table in (g.plans, g.runners):
            table.pop("auto", None)
    if saved is not None:
        note = "" if saved.cost == r.cost else f" (kept the cached order, cost {saved.cost})"
        lines.append(f"saved to cache {store.directory / (saved.key + '.json')}{note}")
    if ns.json:
        record = {"target": t.name, "args": _describe_args(t.args), "argnums": t.argnums,
                  "fingerprint": r.fingerprint, "order": list(r.order), "cost": r.cost, "method": r.method,
                  "lower_bound": r.lower_bound, "baselines": r.baselines, "elapsed": r.elapsed, "seed": ns.seed}
        Path(ns.json).write_text(json.dumps(record, indent=1) + "\n")
        lines.append(f"wrote {ns.json}")
    if not ns.quiet:
        print("\n".join(lines))
    else:
        print(r.cost)
    return EXIT_OK


def parse_order(text: str):
    """An order option: a name, ``ID,ID,...`` or ``@file.json`` (a file
    written by ``ccjax search --json`` or a JSON list)."""
    text = text.strip()
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CLIError(f"cannot read order file {path}: {e}") from None
        order = data.get("order") if isinstance(data, dict) else data
        if not isinstance(order, list):
            raise CLIError(f"order file {path} holds no order list")
        return order
    if re.fullmatch(r"[A-Za-z]+", text):
        return text.lower()
    try:
        return [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise CLIError(f"bad --order {text!r}: a name (fwd, rev, markowitz, auto), ids like 5,3,4 "
                       f"or @file.json") from None


def cmd_cost(ns) -> int:
    from ccjax.eliminate import OrderError, plan_elimination
    from ccjax.orders import auto_order, resolve_order

    t = resolve_target(ns.target, ns.args, ns.argnums, ns.x64)
    g = build_graph(t)
    spec = parse_order(ns.order)
    try:
        if spec == "auto":
            store = _cache(ns)
            if store is None:
                from ccjax.orders.search import quick_order

                order = quick_order(g)[0]
            else:
                order = auto_order(g, store)
        else:
            order = resolve_order(g, spec)
    except (OrderError, ValueError) as e:
        raise CLIError(str(e)) from None
    report = plan_elimination(g, order).report
    if ns.quiet:
        print(report.mults)
    else:
        print(f"{t.name} order {ns.order}: {report.mults} multiplications, {report.additions} additions, "
              f"peak {report.peak_values} stored values")
    return EXIT_OK


def cmd_show(ns) -> int:
    t = resolve_target(ns.target, ns.args, ns.argnums, ns.x64)
    g = build_graph(t)
    print(g.summary())
    if ns.no_picture:
        return EXIT_OK
    out = Path(ns.output) if ns.output else Path(re.sub(r"[^A-Za-z0-9_.-]+", "_", t.name) + ".png")
    try:
        draw_graph(g, out, title=f"{t.name} ({g.fingerprint})")
    except ImportError as e:
        print(f"ccjax: cannot draw the graph: {e}; install matplotlib (pip install matplotlib)",
              file=sys.stderr)
        return EXIT_MISSING
    print(f"wrote {out}")
    return EXIT_OK


def draw_graph(g, path: Path, title: str = "") -> None:
    """Draw ``g`` to ``path`` with matplotlib: one column per layer (longest
    path from the inputs), inputs blue, outputs orange, valued edges solid
    and unit edges (no stored numbers) dashed, vertex ids as labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    live = sorted({u for e in g.edges for u in e})
    kinds = {v.id: v.kind for v in g.vertices}
    preds: dict[int, list[int]] = {v: [] for v in live}
    for (u, w) in g.edges:
        preds[w].append(u)
    depth: dict[int, int] = {}
    for v in live:  # ids are topological
        depth[v] = max((depth[u] + 1 for u in preds[v]), default=0)
    layers: dict[int, list[int]] = {}
    for v in live:
        layers.setdefault(depth[v], []).append(v)
    pos = {}
    for d, vs in layers.items():
        for k, v in enumerate(vs):
            pos[v] = (d, k - (len(vs) - 1) / 2)
    n_layers = max(layers) + 1 if layers else 1
    height = max((len(vs) for vs in layers.values()), default=1)
    fig, ax = plt.subplots(figsize=(min(40, 2 + 0.9 * n_layers), min(40, 2 + 0.5 * height)))
    for (u, w), st in g.edges.items():
        unit = st.val is None
        ax.add_patch(FancyArrowPatch(pos[u], pos[w], arrowstyle="-|>", mutation_scale=7, shrinkA=7, shrinkB=7,
                                     linewidth=0.7, linestyle="--" if unit else "-",
                                     color="#999999" if unit else "#333333"))
    colors = {"input": "#4c9be8", "intermediate": "#dddddd", "output": "#f28e2b"}
    xs = [pos[v][0] for v in live]
    ys = [pos[v][1] for v in live]
    ax.scatter(xs, ys, s=200, c=[colors.get(kinds[v], "#dddddd") for v in live], edgecolors="#555555",
               linewidths=0.5, zorder=3)
    for v in live:
        ax.text(pos[v][0], pos[v][1], str(v), fontsize=6, ha="center", va="center", zorder=4)
    ax.set_title(title or f"graph {g.fingerprint}")
    ax.set_xlim(-0.7, n_layers - 0.3)
    ax.set_ylim(-height / 2 - 0.7, height / 2 + 0.7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_cache(ns) -> int:
    from ccjax.cache import OrderCache

    store = OrderCache(ns.cache_dir) if ns.cache_dir else OrderCache()
    if not store.enabled:
        print("the order cache is disabled (CCJAX_CACHE_DIR)")
        return EXIT_OK
    if ns.action == "clear":
        n = store.clear()
        print(f"removed {n} cached order{'s' if n != 1 else ''} from {store.directory}")
        return EXIT_OK
    entries = store.entries()
    print(f"{len(entries)} cached order{'s' if len(entries) != 1 else ''} in {store.directory}")
    if entries:
        print(f"{'key':34s} {'label':22s} {'elim':>5s} {'cost':>9s} {'bound':>9s}  method")
        for e in entries:
            lb = "-" if e.lower_bound is None else str(e.lower_bound)
            print(f"{e.key[:34]:34s} {e.label[:22]:22s} {e.n_eliminable:5d} {e.cost:9d} {lb:>9s}  {e.method}")
    return EXIT_OK


def cmd_tasks(ns) -> int:
    from ccjax.tasks import TASKS

    for name, task in TASKS.items():
        print(f"{name:22s} {task.description}")
    return EXIT_OK


@contextlib.contextmanager
def _policy_file(path: Optional[str]):
    """Use the policy file ``path`` (checked first) as the shipped policy for the duration."""
    if path is None:
        yield
        return
    from ccjax.search import policy as policy_lib

    try:
        policy_lib.load_policy(path)
    except policy_lib.PolicyError as e:
        raise CLIError(str(e)) from None
    saved = policy_lib.SHIPPED_POLICY
    policy_lib.SHIPPED_POLICY = str(Path(path).resolve())
    try:
        yield
    finally:
        policy_lib.SHIPPED_POLICY = saved


def _config_file(path: str, base):
    """``base`` (a TrainConfig) updated with the fields of the JSON file ``path``
    (``network`` and ``search`` may give only some of their fields)."""
    from ccjax.search import train as train_lib

    try:
        given = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot read --config {path}: {e}") from None
    d = base.to_dict()
    if not isinstance(given, dict):
        raise CLIError(f"--config {path} must hold a JSON object of training settings")
    unknown = sorted(set(given) - set(d))
    if unknown:
        raise CLIError(f"--config {path}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(d))}")
    for k, v in given.items():
        if k in ("network", "search") and isinstance(v, dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    try:
        return train_lib.TrainConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CLIError(f"--config {path}: {e}") from None


def _train_config(ns):
    """The run's configuration: the one saved in ``--dir`` (or the defaults,
    updated by ``--config``, for a new run) with the command line's changes."""
    from ccjax.search import train as train_lib

    path = Path(ns.dir) / train_lib.CONFIG_FILE
    saved = None
    if path.exists():
        try:
            saved = train_lib.TrainConfig.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise CLIError(f"{path} is not a training configuration: {e}", EXIT_ERROR) from None
    base = saved if saved is not None else train_lib.TrainConfig()
    if ns.config is not None:
        base = _config_file(ns.config, base)
    changes: dict = {}
    if ns.iterations is not None:
        changes["iterations"] = ns.iterations
    if ns.games is not None:
        changes["games_per_iteration"] = ns.games
    if ns.simulations is not None:
        changes["search"] = dataclasses.replace(base.search, num_simulations=ns.simulations)
    config = dataclasses.replace(base, **changes)
    if saved is not None:
        old, new = saved.to_dict(), dataclasses.replace(config, iterations=saved.iterations).to_dict()
        differ = [k for k in old if old[k] != new[k]]
        if differ:
            raise CLIError(f"{ns.dir} holds a run with other settings ({', '.join(differ)} differ); only "
                           f"--iterations may change when resuming (or use a new --dir)")
    return config


class _TrainProgress:
    """Per-iteration progress of ``ccjax train``: a live table on a terminal
    (rich), one line per iteration otherwise."""

    def __init__(self, total: int, quiet: bool):
        self.total = total
        self.quiet = quiet
        self.rows: list[dict] = []
        self.best: dict = {}
        self.live = None
        try:
            from rich.console import Console
        except ImportError:  # rich is optional
            self.console = None
        else:
            self.console = Console()

    def __enter__(self):
        if not self.quiet and self.console is not None and self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=self.console, refresh_per_second=2)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)

    def __call__(self, record: dict) -> None:
        self.rows.append(record)
        self.best = dict(record.get("best", {}))
        if self.quiet:
            return
        if self.live is not None:
            self.live.update(self._render())
        else:
            print(f"iteration {record['iteration']}/{self.total}  loss {record['loss']:.4f}  "
                  f"mean ratio {record['mean_ratio']:.3f}  replay {record['replay']}  {record['seconds']:.1f}s  "
                  f"best {self._best_text()}", flush=True)

    def _best_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.best.items()))

    def _render(self):
        from rich.console import Group
        from rich.table import Table

        it = Table(title="ccjax train", expand=False)
        for col in ("iteration", "loss", "policy", "value", "mean ratio", "replay", "seconds"):
            it.add_column(col, justify="right")
        for r in self.rows[-12:]:
            it.add_row(f"{r['iteration']}/{self.total}", f"{r['loss']:.4f}", f"{r['policy_loss']:.4f}",
                       f"{r['value_loss']:.4f}", f"{r['mean_ratio']:.3f}", str(r["replay"]), f"{r['seconds']:.1f}")
        return Group(it, self.best_table())

    def best_table(self):
        from rich.table import Table

        table = Table(title="best per graph")
        table.add_column("graph")
        table.add_column("best cost", justify="right")
        for name, cost in sorted(self.best.items()):
            table.add_row(name, str(cost))
        return table


def cmd_train(ns) -> int:
    from ccjax.search import train as train_lib

    config = _train_config(ns)
    max_seconds = None if ns.max_minutes is None else 60.0 * ns.max_minutes
    if not ns.quiet:
        print(f"training in {ns.dir}: up to {config.iterations} iterations of {config.games_per_iteration} games, "
              f"{config.search.num_simulations} simulations a move, on {len(config.train_tasks)} tasks and "
              f"{len(config.random_seeds)} random functions", flush=True)
    try:
        with _TrainProgress(config.iterations, ns.quiet) as progress:
            history = train_lib.train(ns.dir, config, progress, max_seconds)
    except train_lib.CheckpointError as e:
        raise CLIError(str(e), EXIT_ERROR) from None
    done = len(history["iterations"])
    if not ns.quiet and progress.best:
        if progress.console is not None and progress.live is None:
            progress.console.print(progress.best_table())
    print(f"{done}/{config.iterations} iterations in {ns.dir} ({len(progress.rows)} this run, "
          f"{history.get('elapsed', 0.0) / 60:.1f} min in all)")
    if ns.export:
        if not done:
            raise CLIError(f"nothing to export: {ns.dir} holds no finished iteration", EXIT_ERROR)
        train_lib.export_policy(ns.dir, ns.export)
        print(f"wrote {ns.export}")
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------------


def _target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a task name (see `ccjax tasks`) or module:function")
    p.add_argument("--args", help="argument shapes and dtypes for module:function, e.g. f32[512],f32[3,3]")
    p.add_argument("--argnums", help="differentiated arguments, e.g. 0 or 0,1 (tasks: all)")
    p.add_argument("--x64", action="store_true", help="enable jax_enable_x64 before tracing")


def _cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="order cache root (default: $CCJAX_CACHE_DIR or the user cache dir)")


def _output_options(p: argparse.ArgumentParser, no_cache: str, quiet: str) -> None:
    """``--no-cache``, ``-q/--quiet`` and ``--cache-dir`` of the commands that price orders."""
    p.add_argument("--no-cache", action="store_true", help=no_cache)
    p.add_argument("-q", "--quiet", action="store_true", help=quiet)
    _cache_options(p)


def _positive(kind: Callable):
    """An argparse type: a positive finite number of ``kind``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccjax", description="Find, price and inspect elimination orders.",
                                     epilog="exit status: 0 ok, 2 bad usage, 3 tracing failed, "
                                            "4 missing optional dependency, 1 other errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="search a cheap elimination order and store it in the cache")
    _target_options(p)
    p.add_argument("--method", default="auto", choices=("auto", "anneal", "beam", "exact", "mcts"),
                   help="mcts: Gumbel MuZero guided by the learned policy")
    p.add_argument("--budget", type=float, default=60.0, help="time budget in seconds (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result to this JSON file")
    p.add_argument("--policy", metavar="FILE",
                   help="--method mcts: a policy file (default: the one shipped with ccjax)")
    _output_options(p, no_cache="neither read nor write the order cache", quiet="print only the cost")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("cost", help="multiplications of an order")
    _target_options(p)
    p.add_argument("--order", default="auto",
                   help="fwd, rev, markowitz, auto, learned, ids like 5,3,4, or @file.json")
    _output_options(p, no_cache="auto: ignore the order cache", quiet="print only the number")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("show", help="print the graph summary and draw it to a PNG")
    _target_options(p)
    p.add_argument("-o", "--output", help="picture file (default: TARGET.png)")
    p.add_argument("--no-picture", action="store_true", help="only print the summary")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("cache", help="list or clear the order cache")
    p.add_argument("action", choices=("list", "clear"))
    _cache_options(p)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("tasks", help="list the built-in tasks")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("train", help="train the elimination policy by self-play (resumes a run in --dir)")
    p.add_argument("--dir", required=True, help="checkpoint directory (created, or resumed when it holds a run)")
    p.add_argument("--iterations", type=_positive(int), metavar="N",
                   help="train until this many iterations are done (default: the run's setting, 200 for a new run)")
    p.add_argument("--max-minutes", type=_positive(float), metavar="M",
                   help="stop after this many minutes (checkpoints are written after every iteration; "
                        "run again to resume)")
    p.add_argument("--games", type=_positive(int), metavar="G", help="self-play games per iteration (new runs only)")
    p.add_argument("--simulations", type=_positive(int), metavar="S", help="MCTS simulations per move (new runs only)")
    p.add_argument("--config", metavar="FILE", help="a JSON object of training settings for a new run, e.g. "
                   '{"train_tasks": ["g"], "random_seeds": [], "num_vertices": 64, "network": {"layers": 1}}')
    p.add_argument("--export", metavar="FILE", help="write the trained network to this policy file at the end")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-iteration progress")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ccjax`` console script; returns the exit status."""
    parser = make_parser()
    ns = parser.parse_args(argv)
    if getattr(ns, "budget", None) is not None and not (ns.budget > 0 and math.isfinite(ns.budget)):
        parser.error(f"--budget must be a positive number of seconds, got {ns.budget}")
    try:
        return ns.func(ns)
    except CLIError as e:
        print(f"ccjax: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("ccjax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
