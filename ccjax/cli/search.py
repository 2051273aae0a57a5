"""``ccjax search``: search a cheap elimination order and store it in the order cache."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ccjax.cli.common import (EXIT_ERROR, EXIT_OK, CLIError, _cache, _describe_args, _output_options, _positive,
                              _target_options, build_graph, resolve_target)
from ccjax.cli.progress import _ProgressBar


def _load_policy(path: Optional[str]):
    """The policy in the file ``path`` (None: the shipped one, loaded when the search needs it)."""
    if path is None:
        return None
    from ccjax.search import policy as policy_lib

    try:
        return policy_lib.load_policy(path)
    except policy_lib.PolicyError as e:
        raise CLIError(str(e)) from None


def cmd_search(ns) -> int:
    from ccjax.cache import graph_key
    from ccjax.resolve import forget_order, search_graph

    if ns.learned_start and ns.method not in ("auto", "anneal"):
        raise CLIError("--learned-start is only used by --method auto and anneal")
    if ns.policy is not None and ns.method != "mcts" and not ns.learned_start:
        raise CLIError("--policy is only used by --method mcts and by --learned-start")
    t = resolve_target(ns.target, ns.args, ns.argnums, ns.x64)
    g = build_graph(t, auto=True)  # the graph order="auto" reads the cache for
    store = _cache(ns)
    entry = store.get(g) if store is not None else None
    bar = _ProgressBar(ns.budget)
    if not ns.quiet:
        print(f"{t.name}: {len(g.vertices)} vertices, {len(g.eliminable)} eliminable, "
              f"{len(g.edges)} edges (graph {g.fingerprint})")
    if ns.method == "mcts" or ns.policy is not None:
        from ccjax.search.policy import PolicyError

        policy_errors: tuple = (PolicyError,)
    else:
        policy_errors = ()
    policy = _load_policy(ns.policy)
    try:
        with bar:
            r = search_graph(g, ns.method, ns.budget, ns.seed, bar.update,
                             None if entry is None else entry.order, policy=policy,
                             learned_start=ns.learned_start)
    except policy_errors as e:
        raise CLIError(f"cannot use the learned policy: {e}", EXIT_ERROR) from None
    base = r.best_baseline
    lines = ["  ".join(f"{k} {v}" for k, v in {**r.baselines, **r.starts}.items())]
    ratio = f", {r.cost / base:.3f} of the best of fwd/rev/markowitz" if base else ""
    lines.append(f"searched {r.cost} ({r.method}, {r.elapsed:.1f}s){ratio}")
    if r.lower_bound is not None:
        status = "optimal" if r.optimal else f"gap {100 * r.gap:.1f}%"
        lines.append(f"lower bound {r.lower_bound} ({status})")
    saved = None
    if store is not None:
        saved = store.put(g, r.order, r.cost, r.method, r.lower_bound, t.name)
        forget_order(g, "auto")
    if saved is not None:
        note = "" if saved.cost == r.cost else f" (kept the cached order, cost {saved.cost})"
        lines.append(f"saved to cache {store.directory / (saved.key + '.json')}{note}")
    if ns.json:
        record = {"target": t.name, "args": _describe_args(t.args), "argnums": t.argnums,
                  "fingerprint": r.fingerprint, "graph_key": graph_key(g), "order": list(r.order), "cost": r.cost,
                  "method": r.method, "lower_bound": r.lower_bound, "baselines": r.baselines, "starts": r.starts,
                  "elapsed": r.elapsed,
                  "seed": ns.seed}
        Path(ns.json).write_text(json.dumps(record, indent=1) + "\n")
        lines.append(f"wrote {ns.json}")
    if not ns.quiet:
        print("\n".join(lines))
    else:
        print(r.cost)
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search a cheap elimination order and store it in the cache")
    _target_options(p)
    p.add_argument("--method", default="auto", choices=("auto", "anneal", "beam", "exact", "mcts"),
                   help="mcts: Gumbel MuZero guided by the learned policy")
    p.add_argument("--budget", type=_positive(float, "number of seconds"), default=60.0, metavar="SECONDS",
                   help="time budget in seconds (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result to this JSON file")
    p.add_argument("--policy", metavar="FILE",
                   help="--method mcts and --learned-start: a policy file (default: the one shipped with ccjax)")
    p.add_argument("--learned-start", action="store_true",
                   help="--method auto/anneal: also start from the learned policy's greedy order")
    _output_options(p, no_cache="neither read nor write the order cache", quiet="print only the cost")
    p.set_defaults(func=cmd_search)
