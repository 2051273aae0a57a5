"""Order search on the ten paper tasks: searched cost vs the best heuristic.

    python benchmarks/search.py [--budget 60] [--exact-budget 60] [--tasks A,B] [--jobs 2] [--seed 0]
    python benchmarks/search.py --random 40 [--exact-budget 20]

For each task: the costs of fwd, rev and Markowitz on our graph and cost
model; the cost found by ``search_graph(method="auto")`` within ``--budget``
seconds; the ratio searched / best heuristic next to the paper's AlphaGrad
ratio (AlphaGrad / best of the paper's fwd, rev, Markowitz); then a separate
exact search started from the searched order, with ``--exact-budget``
seconds, for the best certified lower bound and the remaining gap.  Prints
a Markdown table.  Each task runs single-threaded; ``--jobs`` runs tasks in
parallel processes (one core each).

``--random N``: instead, exact search on scalar random functions (seeds
``0..N-1``, elementwise ops) whose graphs have 12 to 20 intermediates: how
many are proven optimal within ``--exact-budget`` seconds, and how much the
optimum improves on the best greedy variant.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python benchmarks/search.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.paper import PAPER_MULTS  # noqa: E402


def paper_ratio(name: str) -> float:
    fwd, rev, mark, ag = PAPER_MULTS[name]
    return ag / min(fwd, rev, mark)


def run_task(name: str, budget: float, exact_budget: float, seed: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import ccjax
    from ccjax.orders.exact import exact_search
    from ccjax.orders.incremental import Evaluator
    from ccjax.orders.search import search_graph
    from ccjax.tasks import TASKS

    task = TASKS[name]
    fn, args = task.graph_fn_and_inputs(0)
    g = ccjax.graph(fn, *args, argnums=task.argnums)
    r = search_graph(g, "auto", budget, seed)
    ev = Evaluator(g)
    t0 = time.perf_counter()
    ex = exact_search(ev, r.order, deadline=t0 + exact_budget) if exact_budget > 0 else None
    lb = r.lower_bound if ex is None else max(ex.lower_bound, r.lower_bound or 0)
    cost = r.cost if ex is None else min(r.cost, ex.cost)
    return dict(name=name, n=len(g.eliminable), fwd=r.baselines["fwd"], rev=r.baselines["rev"],
                markowitz=r.baselines["markowitz"], searched=cost, method=r.method, elapsed=r.elapsed,
                lower_bound=lb, optimal=lb is not None and lb >= cost,
                exact_time=0.0 if ex is None else time.perf_counter() - t0)


def table(rows: list[dict], budget: float, exact_budget: float) -> str:
    out = [f"| task | elim. | fwd | rev | Markowitz | searched ({budget:g} s) | ratio | paper ratio | "
           f"lower bound ({exact_budget:g} s) | gap |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        best = min(r["fwd"], r["rev"], r["markowitz"])
        ratio = r["searched"] / best
        pr = paper_ratio(r["name"])
        mark = "" if ratio <= pr + 1e-9 else " (above)"
        lb = r["lower_bound"]
        gap = "-" if lb is None else ("0 (optimal)" if r["optimal"] else f"{100 * (r['searched'] - lb) / r['searched']:.1f}%")
        out.append(f"| {r['name']} | {r['n']} | {r['fwd']} | {r['rev']} | {r['markowitz']} | {r['searched']} | "
                   f"{r['searched']}/{best} = {ratio:.3f}{mark} | {pr:.3f} | {'-' if lb is None else lb} | {gap} |")
    return "\n".join(out)


def run_random(seed: int, exact_budget: float) -> dict | None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import ccjax
    from ccjax.orders.exact import exact_search
    from ccjax.orders.greedy import best_variant
    from ccjax.orders.incremental import Evaluator
    from ccjax.tasks import ELEMENTWISE_FAMILIES, random_function, random_inputs

    n_in = 3 + seed % 4
    shapes = [()] * n_in
    fn = random_function(seed, shapes, n_ops=12 + seed % 6, ops=ELEMENTWISE_FAMILIES, n_outputs=2, nested=False)
    g = ccjax.graph(fn, *random_inputs(seed, shapes), argnums=tuple(range(n_in)))
    n = len(g.eliminable)
    if not 12 <= n <= 20:
        return None
    ev = Evaluator(g)
    _, order, heur = best_variant(ev)
    t0 = time.perf_counter()
    r = exact_search(ev, order, deadline=t0 + exact_budget)
    return dict(seed=seed, n=n, heuristic=heur, cost=r.cost, lower_bound=r.lower_bound, optimal=r.optimal,
                seconds=time.perf_counter() - t0)


def random_table(rows: list[dict], exact_budget: float) -> str:
    out = [f"| seed | intermediates | best greedy | exact ({exact_budget:g} s) | lower bound | proven | seconds |",
           "|---:|---:|---:|---:|---:|:---:|---:|"]
    for r in rows:
        out.append(f"| {r['seed']} | {r['n']} | {r['heuristic']} | {r['cost']} | {r['lower_bound']} | "
                   f"{'yes' if r['optimal'] else 'no'} | {r['seconds']:.1f} |")
    proven = [r for r in rows if r["optimal"]]
    out.append("")
    out.append(f"proven optimal: {len(proven)}/{len(rows)} (largest proven: "
               f"{max((r['n'] for r in proven), default=0)} intermediates)")
    return "\n".join(out)


def main() -> None:
    from ccjax.tasks import TASKS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=60.0, help="search seconds per task")
    p.add_argument("--exact-budget", type=float, default=60.0, help="exact-search seconds per task (0: skip)")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random", type=int, default=0, help="exact search on N scalar random functions instead")
    ns = p.parse_args()
    if ns.random:
        with cf.ProcessPoolExecutor(max_workers=ns.jobs) as pool:
            rows = [r for r in pool.map(run_random, range(ns.random), [ns.exact_budget] * ns.random) if r]
        print(random_table(rows, ns.exact_budget))
        return
    names = [n for n in ns.tasks.split(",") if n]
    with cf.ProcessPoolExecutor(max_workers=ns.jobs) as pool:
        futures = [pool.submit(run_task, n, ns.budget, ns.exact_budget, ns.seed) for n in names]
        rows = []
        for f in futures:
            rows.append(f.result())
            r = rows[-1]
            print(f"# {r['name']}: searched {r['searched']} ({r['method']}, {r['elapsed']:.1f}s), "
                  f"lower bound {r['lower_bound']}", flush=True)
    print(table(rows, ns.budget, ns.exact_budget))


if __name__ == "__main__":
    main()
