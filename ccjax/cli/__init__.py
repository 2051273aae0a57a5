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
import sys
from typing import Optional, Sequence

from ccjax.cli import cache, cost, search, show, tasks, train
from ccjax.cli.common import (DTYPES, EXIT_ERROR, EXIT_MISSING, EXIT_OK, EXIT_TRACE, EXIT_USAGE, ArgSpec, CLIError,
                              Target, build_graph, parse_argnums, parse_args_spec, resolve_target)
from ccjax.cli.cache import cmd_cache
from ccjax.cli.cost import cmd_cost, parse_order
from ccjax.cli.search import cmd_search
from ccjax.cli.show import cmd_show, draw_graph
from ccjax.cli.tasks import cmd_tasks
from ccjax.cli.train import cmd_train

__all__ = ["main", "make_parser", "CLIError", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_TRACE", "EXIT_MISSING",
           "DTYPES", "ArgSpec", "Target", "parse_args_spec", "parse_argnums", "parse_order", "resolve_target",
           "build_graph", "draw_graph", "cmd_search", "cmd_cost", "cmd_show", "cmd_cache", "cmd_tasks", "cmd_train"]

#: The command modules, in the order ``ccjax --help`` lists them; each has ``add_parser(sub)``.
COMMANDS = (search, cost, show, cache, tasks, train)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccjax", description="Find, price and inspect elimination orders.",
                                     epilog="exit status: 0 ok, 2 bad usage, 3 tracing failed, "
                                            "4 missing optional dependency, 1 other errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ccjax`` console script; returns the exit status."""
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
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
