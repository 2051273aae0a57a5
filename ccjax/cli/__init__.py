"""The ``ccjax`` command line: search, cost and show elimination orders offline; train the policy.

    ccjax search TARGET [--args SPEC] [--argnums N,..] [--method auto|anneal|beam|exact|mcts]
                 [--budget S] [--json FILE] [--policy FILE.msgpack]
    ccjax tune   TARGET [--args SPEC] [--argnums N,..] [--rounds R] [--margin F] [--json FILE]
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
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ccjax.cache import default_cache_dir
from ccjax.cli import cache, cost, search, show, tasks, train, tune
from ccjax.cli.common import (DTYPES, EXIT_ERROR, EXIT_MISSING, EXIT_OK, EXIT_TRACE, EXIT_USAGE, ArgSpec, CLIError,
                              Target, build_graph, parse_argnums, parse_args_spec, resolve_target)
from ccjax.cli.cache import cmd_cache
from ccjax.cli.cost import cmd_cost, parse_order
from ccjax.cli.search import cmd_search
from ccjax.cli.show import cmd_show, draw_graph
from ccjax.cli.tasks import cmd_tasks
from ccjax.cli.train import cmd_train
from ccjax.cli.tune import cmd_tune

__all__ = ["main", "run", "enable_compilation_cache", "make_parser", "CLIError", "EXIT_OK", "EXIT_ERROR",
           "EXIT_USAGE", "EXIT_TRACE", "EXIT_MISSING", "DTYPES", "ArgSpec", "Target", "parse_args_spec", "parse_argnums", "parse_order", "resolve_target",
           "build_graph", "draw_graph", "cmd_search", "cmd_tune", "cmd_cost", "cmd_show", "cmd_cache", "cmd_tasks", "cmd_train"]

#: The command modules, in the order ``ccjax --help`` lists them; each has ``add_parser(sub)``.
COMMANDS = (search, tune, cost, show, cache, tasks, train)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccjax", description="Find, price and inspect elimination orders.",
                                     epilog="exit status: 0 ok, 2 bad usage, 3 tracing failed, "
                                            "4 missing optional dependency, 1 other errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


#: Folder under the ccjax cache root (:func:`ccjax.cache.default_cache_dir`)
#: where the command line keeps JAX's persistent compilation cache.
XLA_CACHE = "xla"


def enable_compilation_cache() -> Optional[Path]:
    """Point JAX's persistent compilation cache at ``<ccjax cache root>/xla``
    for this process; returns the folder, or None when the user chose one
    (``JAX_COMPILATION_CACHE_DIR``) or disabled the ccjax cache
    (``CCJAX_CACHE_DIR=off``).

    Why: ``ccjax search --method mcts`` and ``ccjax train`` compile one
    search executable per board capacity a game shrinks through, about
    3.5 s each on a 2-core CPU, in every new process: the first batch of
    8 self-play games on RoeFlux_1d took 38 s in a new process, 14 s with
    this cache warm.  Only programs that took JAX's threshold (1 s by
    default) to compile are stored.  Done by the console script, not by
    :func:`main`, so programs that call :func:`main` keep their own JAX
    configuration.
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    root = default_cache_dir()
    if root is None:
        return None
    import jax

    path = root / XLA_CACHE
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def run() -> int:
    """The ``ccjax`` console script: :func:`main` with JAX's persistent
    compilation cache on (:func:`enable_compilation_cache`)."""
    enable_compilation_cache()
    return main()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the
    exit status.  The ``ccjax`` console script is :func:`run`."""
    ns = make_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except CLIError as e:
        print(f"ccjax: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("ccjax: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
