"""``ccjax cost``: the multiplications of an elimination order."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ccjax.cli.common import EXIT_OK, CLIError, _cache, _output_options, _target_options, build_graph, resolve_target


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
    from ccjax.resolve import auto_order, resolve_order

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


def add_parser(sub) -> None:
    p = sub.add_parser("cost", help="multiplications of an order")
    _target_options(p)
    p.add_argument("--order", default="auto",
                   help="fwd, rev, markowitz, auto, learned, ids like 5,3,4, or @file.json")
    _output_options(p, no_cache="auto: ignore the order cache", quiet="print only the number")
    p.set_defaults(func=cmd_cost)
