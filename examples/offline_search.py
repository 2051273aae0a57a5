"""Search an elimination order offline, store it, and reuse it later.

Step 1 ("search", done once, offline): ``ccjax.search_order`` looks for a
cheaper order than forward/reverse/Markowitz and stores it in an order cache
(``ccjax.cache.OrderCache``) keyed by the graph's structure
(``ccjax.cache.graph_key``: vertices, shapes and edge structures, not the
float dtype).  Step 2
("reuse", in any later process): look the order up for a freshly traced graph
and pass it to ``ccjax.jacve(f, order=...)``; the Jacobian is checked against
``jax.jacrev``.  With ``CCJAX_CACHE_DIR`` pointing at the cache, plain
``order="auto"`` picks the stored order up by itself.

    python examples/offline_search.py                    # both steps, temporary cache
    python examples/offline_search.py --cache-dir DIR --step search --budget 30
    python examples/offline_search.py --cache-dir DIR --step reuse

Orders are tied to a graph, not to a function object: any function with the
same structure (same primitives, shapes and argnums) reuses it.
"""
import argparse
import json
import os
import tempfile

import jax
import numpy as np

import ccjax
from ccjax.orders import HEURISTICS
from ccjax.tasks import get_task

TASK = "RoeFlux_1d"


# ------------------------------------------------------------------ the order store
class _JsonStore:
    """Fallback store (one JSON file, fingerprint -> order) for a ccjax
    without ``ccjax.cache.OrderCache``."""

    def __init__(self, root):
        self.path = os.path.join(root, "orders.json")

    def _load(self):
        if not os.path.exists(self.path):
            return {}
        with open(self.path) as fh:
            return json.load(fh)

    def put(self, graph, order, method="", label=""):
        data = self._load()
        data[f"{graph.fingerprint}-{list(graph.diff_leaves)}"] = {"order": [int(v) for v in order],
                                                                    "method": method, "label": label}
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "w") as fh:
            json.dump(data, fh)

    def get(self, graph):
        rec = self._load().get(f"{graph.fingerprint}-{list(graph.diff_leaves)}")
        return None if rec is None else tuple(rec["order"])


def order_store(root):
    """ccjax's persistent order cache if this ccjax has one, else a JSON file."""
    try:
        from ccjax.cache import OrderCache
    except ImportError:
        print("(ccjax.cache.OrderCache not available: storing orders in a plain JSON file)")
        return _JsonStore(root)
    return OrderCache(root)


def stored_order(store, graph):
    entry = store.get(graph)
    if entry is None or isinstance(entry, tuple):
        return entry
    return tuple(entry.order)


# ------------------------------------------------------------------ the two steps
def problem():
    task = get_task(TASK)
    fn, args = task.graph_fn_and_inputs(seed=0)
    return fn, args, task.argnums


def search(root, budget):
    fn, args, argnums = problem()
    heur = {o: ccjax.cost(fn, *args, argnums=argnums, order=o) for o in ("fwd", "rev", "markowitz")}
    print(f"{TASK}: multiplications fwd {heur['fwd']}, rev {heur['rev']}, markowitz {heur['markowitz']}")
    graph = ccjax.graph(fn, *args, argnums=argnums)
    store = order_store(root)
    if hasattr(ccjax, "search_order"):
        kwargs = {"cache": store} if not isinstance(store, _JsonStore) else {"cache": False}
        result = ccjax.search_order(fn, *args, argnums=argnums, method="auto", time_budget=budget, **kwargs)
        order, cost = tuple(int(v) for v in result.order), int(result.cost)
        method = str(getattr(result, "method", "search_order"))
        bound = getattr(result, "lower_bound", None)
        print(f"ccjax.search_order ({budget:g} s budget): {cost} multiplications ({method})"
              + (f", certified lower bound {bound}" if bound is not None else ""))
        if isinstance(store, _JsonStore):
            store.put(graph, order, method=method, label=TASK)  # search_order stored it otherwise
    else:
        print("ccjax.search_order is not available in this ccjax version; storing the best "
              "built-in heuristic instead (the reuse step works the same way).")
        name = min(heur, key=heur.get)
        order, cost, method = tuple(HEURISTICS[name](graph)), heur[name], name
        store.put(graph, order, method=method, label=TASK)
    print(f"stored under {root} for graph {graph.fingerprint}")
    return cost


def reuse(root):
    fn, args, argnums = problem()  # a fresh trace, as in a new process
    graph = ccjax.graph(fn, *args, argnums=argnums)
    order = stored_order(order_store(root), graph)
    if order is None:
        raise SystemExit(f"no stored order for graph {graph.fingerprint} under {root}: run --step search first")
    jac_fn = jax.jit(ccjax.jacve(fn, argnums=argnums, order=order))
    jac = jac_fn(*args)
    ref = jax.jacrev(fn, argnums=argnums)(*args)
    same = all(np.allclose(a, b, rtol=1e-5, atol=1e-5)
               for a, b in zip(jax.tree_util.tree_leaves(jac), jax.tree_util.tree_leaves(ref)))
    cost = ccjax.cost(fn, *args, argnums=argnums, order=order)
    print(f"reused the stored order: {cost} multiplications; Jacobian equal to jax.jacrev: {same}")
    assert same
    if not isinstance(order_store(root), _JsonStore):
        # With the cache directory in CCJAX_CACHE_DIR, order="auto" (the default) finds it too.
        os.environ["CCJAX_CACHE_DIR"] = str(root)
        auto = ccjax.cost(fn, *args, argnums=argnums, order="auto")
        print(f"with CCJAX_CACHE_DIR={root}: order=\"auto\" costs {auto} multiplications")
        assert auto <= cost
    return cost


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", default=None, help="order store (default: a temporary directory)")
    ap.add_argument("--step", choices=("search", "reuse", "both"), default="both")
    ap.add_argument("--budget", type=float, default=3.0, help="search time budget in seconds")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = a.cache_dir or tmp
        found = search(root, a.budget) if a.step in ("search", "both") else None
        used = reuse(root) if a.step in ("reuse", "both") else None
        if found is not None and used is not None:
            assert used == found, (used, found)


if __name__ == "__main__":
    main()
