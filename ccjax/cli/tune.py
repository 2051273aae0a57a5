"""``ccjax tune``: time the programs ``order="auto"`` may run and store the fastest."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ccjax.cli.common import (EXIT_OK, EXIT_TRACE, CLIError, _cache_options, _describe_args, _positive,
                              _target_options, build_graph, resolve_target)


def cmd_tune(ns) -> int:
    from ccjax.cache import ENV_VAR

    if ns.cache_dir:
        os.environ[ENV_VAR] = str(Path(ns.cache_dir).expanduser())  # tune writes where jacve reads
    import ccjax

    t = resolve_target(ns.target, ns.args, ns.argnums, ns.x64)
    g = build_graph(t)  # tracing errors: exit 3, before anything is compiled
    try:
        r = ccjax.tune(t.fn, *t.args, argnums=t.argnums, rounds=ns.rounds, margin=ns.margin)
    except Exception as e:  # noqa: BLE001 - a candidate program that fails to compile or run
        raise CLIError(f"cannot time {t.name} with arguments {_describe_args(t.args)}: "
                       f"{type(e).__name__}: {e}", EXIT_TRACE) from None
    lines = [f"{t.name}: graph {g.fingerprint}, {len(g.eliminable)} eliminable vertices"]
    lines += [f"  {name:10s} {1e6 * s:12.1f} us/call" for name, s in sorted(r.times.items(), key=lambda kv: kv[1])]
    moved = "" if r.choice == r.counted else f" (the multiplication counts pick {r.counted}; {r.speedup:.2f}x faster)"
    lines.append(f"order=\"auto\" runs {r.choice}{moved}")
    lines.append(f"saved to {r.path}" if r.path is not None else "not saved: the cache is disabled")
    if ns.json:
        record = {"target": t.name, "args": _describe_args(t.args), "argnums": t.argnums,
                  "fingerprint": g.fingerprint, "times": r.times, "counted": r.counted, "choice": r.choice,
                  "path": None if r.path is None else str(r.path)}
        Path(ns.json).write_text(json.dumps(record, indent=1) + "\n")
        lines.append(f"wrote {ns.json}")
    print("\n".join(lines) if not ns.quiet else r.choice)
    return EXIT_OK


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="time auto's candidate programs on this machine and store the fastest")
    _target_options(p)
    p.add_argument("--rounds", type=_positive(int, "number of rounds"), default=7,
                   help="interleaved timing rounds (default 7)")
    p.add_argument("--margin", type=_fraction, default=0.05,
                   help="how much faster another program must be than the counts' choice (default 0.05)")
    p.add_argument("--json", help="also write the result to this JSON file")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the chosen program")
    _cache_options(p)
    p.set_defaults(func=cmd_tune)
