"""``ccjax cost``: the multiplications of an elimination order."""
from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import Optional, Sequence

from ccjax.cli.common import (EXIT_OK, CLIError, _cache, _output_options, _target_options, auto_choice, build_graph,
                              resolve_target)

#: Ids an order message shows of each kind of problem.
EXCERPT = 5


def _read_order_file(path: Path) -> tuple[list, dict]:
    """``(order, record)`` of an order file: a record written by ``ccjax
    search --json`` (``record`` names the graph it was made for) or a bare
    JSON list (``record`` empty)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CLIError(f"cannot read order file {path}: {e}") from None
    order = data.get("order") if isinstance(data, dict) else data
    if not isinstance(order, list):
        raise CLIError(f"order file {path} holds no order list")
    return order, data if isinstance(data, dict) else {}


def _check_made_for(path: Path, record: dict, graph) -> None:
    """Refuse an order file made for another graph, naming both graphs,
    before its ids are checked (which would only list strange ids).  Files
    with a ``graph_key`` compare it (free of dtypes: a float32 search serves
    a float64 run), older ones their ``fingerprint``."""
    from ccjax.cache import graph_key

    if "graph_key" in record:
        same = record["graph_key"] == graph_key(graph)
    elif "fingerprint" in record:
        same = record["fingerprint"] == graph.fingerprint
    else:
        return
    if not same:
        made = ", ".join(f"{k} {record[k]}" for k in ("target", "args") if record.get(k) is not None)
        raise CLIError(f"order file {path}: this order was made for graph {record.get('fingerprint')}"
                       f"{f' ({made})' if made else ''}, the target's graph is {graph.fingerprint}; "
                       f"search an order for this target (ccjax search ... --json FILE)")


def parse_order(text: str, graph=None):
    """An order option: a name, ``ID,ID,...`` or ``@file.json`` (a file
    written by ``ccjax search --json`` or a JSON list).  With ``graph``, an
    order file made for another graph is refused."""
    text = text.strip()
    if text.startswith("@"):
        path = Path(text[1:])
        order, record = _read_order_file(path)
        if graph is not None:
            _check_made_for(path, record, graph)
        return order
    if re.fullmatch(r"[A-Za-z]+", text):
        return text.lower()
    try:
        return [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise CLIError(f"bad --order {text!r}: a name (fwd, rev, markowitz, auto), ids like 5,3,4 "
                       f"or @file.json") from None


def _excerpt(ids: Sequence[int]) -> str:
    shown = ", ".join(map(str, ids[:EXCERPT]))
    return f"{len(ids)} ({shown}{', ...' if len(ids) > EXCERPT else ''})"


def order_problems(graph, ids: Sequence[int]) -> str:
    """What is wrong with the explicit order ``ids`` for ``graph``, in
    counts and a few ids each (``validate_order``'s message lists every
    vertex, twice: about 90 ids for a small task)."""
    allowed = set(graph.eliminable)
    kinds = {v.id: v.kind for v in graph.vertices}
    counts = collections.Counter(ids)
    problems = {
        "unknown": sorted(v for v in counts if v not in kinds),
        "not eliminable (inputs, outputs or pruned)": sorted(v for v in counts if v in kinds and v not in allowed),
        "duplicate": sorted(v for v, c in counts.items() if c > 1),
        "missing": sorted(allowed - set(counts)),
    }
    found = "; ".join(f"{what} {_excerpt(vs)}" for what, vs in problems.items() if vs)
    span = f", ids {min(allowed)}..{max(allowed)}" if allowed else ""
    return (f"invalid elimination order: {len(ids)} ids given, graph {graph.fingerprint} has "
            f"{len(allowed)} eliminable vertices{span}: {found}")


def _resolve(ns, graph, spec) -> tuple[tuple[int, ...], Optional[str]]:
    """The order to price and, for ``auto``, the line saying where it came from."""
    from ccjax.eliminate import OrderError
    from ccjax.resolve import resolve_order

    if spec == "auto":
        return auto_choice(graph, _cache(ns))
    try:
        return resolve_order(graph, spec), None
    except OrderError as e:
        if isinstance(spec, list) and all(type(v) is int for v in spec):
            raise CLIError(order_problems(graph, spec)) from None
        raise CLIError(str(e)) from None
    except ValueError as e:
        raise CLIError(str(e)) from None


def cmd_cost(ns) -> int:
    from ccjax.eliminate import plan_elimination

    t = resolve_target(ns.target, ns.args, ns.argnums, ns.x64)
    g = build_graph(t, auto=ns.order.strip().lower() == "auto")
    spec = parse_order(ns.order, g)
    order, note = _resolve(ns, g, spec)
    plan = plan_elimination(g, order)
    chosen = _what_runs(g, plan, spec == "auto")
    report = chosen.report
    if ns.quiet:
        print(report.mults)
        return EXIT_OK
    if note is not None:
        print(note)
    if chosen is not plan:
        seeds = "" if chosen.coloring is None else f" over {chosen.coloring.count} compressed seeds"
        mode = chosen.mode.removeprefix("jax-").removeprefix("colored-")
        print(f"{t.name} order {ns.order}: runs JAX's {mode} mode over the whole function{seeds}, "
              f"{report.mults} multiplications beyond the primal (the best elimination's program: "
              f"{_program_mults(g, plan)}; its products alone: {plan.report.mults})")
        return EXIT_OK
    print(f"{t.name} order {ns.order}: {report.mults} multiplications, {report.additions} additions, "
          f"peak {report.peak_values} stored values")
    return EXIT_OK


def _what_runs(graph, plan, auto: bool):
    """What ``jacve`` runs for ``plan``: JAX's reverse pass when the graph
    needs it (``graph.whole_reverse``), for ``auto`` possibly a JAX plain
    mode (``ccjax.jax_modes.cheapest``), else ``plan`` itself."""
    from ccjax.jax_modes import cheapest, plan_jax_mode

    if graph.whole_reverse:
        return plan_jax_mode(graph, "rev")
    return cheapest(graph, plan) if auto else plan


def _program_mults(graph, plan) -> int:
    from ccjax.jax_modes import program_mults

    return program_mults(graph, plan)


def add_parser(sub) -> None:
    p = sub.add_parser("cost", help="multiplications of an order")
    _target_options(p)
    p.add_argument("--order", default="auto",
                   help="fwd, rev, markowitz, auto, learned, ids like 5,3,4, or @file.json")
    _output_options(p, no_cache="auto: ignore the order cache", quiet="print only the number")
    p.set_defaults(func=cmd_cost)
