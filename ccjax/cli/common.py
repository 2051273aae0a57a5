"""What the ``ccjax`` commands share: errors and exit codes, ``TARGET`` and
``--args`` parsing, the graph of a target, the order cache and the common
argparse options."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import math
import re
import sys
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
        close = suggest(target, TASKS)
        hint = f" (did you mean {close}?)" if close else ""
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


def _normalised(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def suggest(name: str, choices: Sequence[str]) -> Optional[str]:
    """The choice ``name`` most likely misspells, or None: names compare
    without case and underscores (``RoeFlux1d``, ``roeflux_1d`` ->
    ``RoeFlux_1d``), then by :func:`difflib.get_close_matches`."""
    by_form = {_normalised(c): c for c in choices}
    close = difflib.get_close_matches(_normalised(name), list(by_form), n=1, cutoff=0.75)
    return by_form[close[0]] if close else None


def build_graph(t: Target, auto: bool = False):
    """The graph of a target (``auto``: the one ``order="auto"`` plans, with
    unrolled loops rolled, see :func:`ccjax.trace.auto_graph`); tracing
    failures become :class:`CLIError` (exit 3)."""
    import ccjax
    from ccjax.trace import auto_graph

    try:
        return (auto_graph if auto else ccjax.graph)(t.fn, *t.args, argnums=t.argnums)
    except (ValueError, TypeError) as e:
        if "argnums" in str(e):
            raise CLIError(f"bad --argnums for {t.name}: {e}") from None
        raise CLIError(f"cannot trace {t.name} with arguments {_describe_args(t.args)}: "
                       f"{type(e).__name__}: {e}", EXIT_TRACE) from None
    except Exception as e:  # noqa: BLE001 - any failure inside the user's function
        raise CLIError(f"cannot trace {t.name} with arguments {_describe_args(t.args)}: "
                       f"{type(e).__name__}: {e}", EXIT_TRACE) from None


def auto_choice(graph, store) -> tuple[tuple[int, ...], str]:
    """The order ``order="auto"`` takes for ``graph`` with the order cache
    ``store`` (None: no cache), picked as :func:`ccjax.resolve.auto_order`
    does (the cached order unless a quick greedy variant is cheaper), and a
    line naming the cached entry used (key, label, method, cost) or saying
    that none was: a search stored for other inputs or argnums is a miss,
    and the user should see it."""
    from ccjax.cache import graph_key
    from ccjax.orders.search import quick_order

    entry = store.get(graph) if store is not None else None
    order, cost, name = quick_order(graph, None if entry is None else entry.order)
    heuristic = f"heuristic {name} ({cost} multiplications)"
    if store is None or not store.enabled:
        return order, f"auto: order cache not used; {heuristic}"
    if entry is None:
        return order, f"auto: no cached order for key {graph_key(graph)} in {store.directory}; {heuristic}"
    cached = (f"cached order {entry.key} (label {entry.label or '-'}, method {entry.method or '-'}, "
              f"cost {entry.cost})")
    return order, f"auto: {cached}" if name == "cache" else f"auto: {heuristic} beats the {cached}"


def _describe_args(args: tuple) -> str:
    import numpy as np

    return ",".join(f"{np.dtype(a.dtype).name}[{','.join(map(str, a.shape))}]" for a in args)


def _cache(ns):
    from ccjax.cache import OrderCache

    if getattr(ns, "no_cache", False):
        return None
    return OrderCache(ns.cache_dir) if getattr(ns, "cache_dir", None) else OrderCache()


# -- shared options -----------------------------------------------------------------------------


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


def _positive(kind: Callable, what: str = ""):
    """An argparse type: a positive finite number of ``kind`` (``what``
    names it in the message, e.g. "number of seconds").  Its errors are
    argparse errors of the subcommand, so they print that command's usage."""
    expected = f"expected a positive {what or kind.__name__}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse
