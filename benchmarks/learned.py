"""The shipped policy on the ten paper tasks: greedy order, MCTS, classical search.

    python -m benchmarks.learned [--budget 60] [--classical-budget 60] [--tasks ...]
                                 [--policy FILE] [--history DIR/history.json] [--out docs/] [--smoke]

Per task (the paper's graph, ``task.graph_fn_and_inputs``):

* the classical orders (fwd, rev, Markowitz) and the best of them;
* ``learned``: the policy's greedy order (``jacve(order="learned")``) and
  the seconds it took (compilation included);
* ``mcts``: the best order of :func:`ccjax.search.api.mcts_search` within
  ``--budget`` seconds (Gumbel MuZero with the policy, the greedy order
  included), on its own, never mixed with classical results;
* ``classical``: :func:`ccjax.orders.search.search_graph` (``method="auto"``:
  greedy variants, beam, annealing, branch and bound) within
  ``--classical-budget`` seconds;
* ``learned start``: the same search with the policy's greedy order as one
  more start (:func:`ccjax.resolve.search_graph` with ``learned_start=True``,
  ``ccjax search --learned-start``), within the same budget, the greedy
  order's compilation included;
* ratios to the best of fwd/rev/Markowitz, next to the paper's AlphaGrad ratio.

``--random-seeds A B`` adds unseen random functions (``corpus.random_graph``
of seeds ``A..B-1``; training uses seeds 1000-1047) at ``--random-budget``
seconds each: the classical search alone, the same search with the greedy
order as a start, and MCTS with the policy, each within that budget, with
their cost ratios to the classical search alone (the mean ratio is the
issue's measure of whether learning helps at equal time).

Every cost is ``ccjax.cost``'s count for the order (the search results are
re-costed with the elimination planner).  ``--history`` adds the training
curves plot (``training.png``) from a training run's ``history.json``.
Writes ``learned.md`` and ``learned.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import ccjax
from benchmarks.common import (PAPER_MULTS, Progress, environment, isolate_order_cache, markdown_table,
                               save_figure, select_tasks, write_json, write_text)

SMOKE_TASKS = ("g",)


def paper_ratio(name: str) -> float:
    fwd, rev, mark, alphagrad = PAPER_MULTS[name]
    return alphagrad / min(fwd, rev, mark)


def measure(task, policy, budget: float, classical_budget: float, games: int, seed: int) -> dict:
    from ccjax.eliminate import plan_elimination
    from ccjax.resolve import resolve_order
    from ccjax.resolve import search_graph as resolve_search_graph
    from ccjax.orders.search import search_graph
    from ccjax.search.api import learned_order, mcts_search
    from ccjax.search.corpus import HELD_OUT

    fn, args = task.graph_fn_and_inputs(0)
    g = ccjax.graph(fn, *args, argnums=task.argnums)
    cost = lambda order: int(plan_elimination(g, tuple(order)).report.mults)
    row = {"task": task.name, "eliminable": len(g.eliminable), "held_out": task.name in HELD_OUT}
    for name in ("fwd", "rev", "markowitz"):
        row[name] = cost(resolve_order(g, name))
    row["best_classical_order"] = min(row["fwd"], row["rev"], row["markowitz"])
    t0 = time.perf_counter()
    row["learned"] = cost(learned_order(g, policy))
    row["learned_seconds"] = time.perf_counter() - t0
    res = mcts_search(g, time_budget=budget, policy=policy, games=games, seed=seed)
    row["mcts"] = cost(res["order"])
    row["mcts_episodes"] = res["episodes"]
    row["mcts_seconds"] = res["elapsed"]
    if classical_budget > 0:
        r = search_graph(g, method="auto", time_budget=classical_budget, seed=seed)
        row["classical"] = cost(r.order)
        row["classical_method"] = r.method
        row["classical_optimal"] = bool(r.optimal)
        r = resolve_search_graph(g, "auto", classical_budget, seed, policy=policy, learned_start=True)
        row["learned_search"] = cost(r.order)
        row["learned_search_method"] = r.method
    base = row["best_classical_order"]
    for k in ("learned", "mcts", "classical", "learned_search"):
        if k in row:
            row[f"{k}_ratio"] = row[k] / base if base else 1.0
    row["paper_ratio"] = paper_ratio(task.name)
    return row


def measure_random(seed: int, policy, budget: float, games: int) -> dict:
    """One unseen random function (see the module docstring)."""
    from ccjax.eliminate import plan_elimination
    from ccjax.orders.search import search_graph
    from ccjax.resolve import resolve_order
    from ccjax.resolve import search_graph as resolve_search_graph
    from ccjax.search.api import learned_order, mcts_search
    from ccjax.search.corpus import random_graph

    name, g = random_graph(seed)
    cost = lambda order: int(plan_elimination(g, tuple(order)).report.mults)
    row = {"seed": seed, "eliminable": len(g.eliminable),
           "best_classical_order": min(cost(resolve_order(g, o)) for o in ("fwd", "rev", "markowitz")),
           "learned": cost(learned_order(g, policy))}
    row["classical"] = cost(search_graph(g, method="auto", time_budget=budget, seed=0).order)
    row["learned_search"] = cost(resolve_search_graph(g, "auto", budget, 0, policy=policy, learned_start=True).order)
    row["mcts"] = cost(mcts_search(g, time_budget=budget, policy=policy, games=games, seed=0)["order"])
    for k in ("learned", "learned_search", "mcts"):
        row[f"{k}_vs_classical"] = row[k] / row["classical"] if row["classical"] else 1.0
    return row


def render_random(rows: list[dict], budget: float) -> list[str]:
    import numpy as np

    header = ["seed", "eliminable", "best of fwd/rev/Markowitz", "learned (greedy)", f"classical search ({budget:g} s)",
              "search + learned start", "MCTS", "search + learned start / classical", "MCTS / classical"]
    body = [[r["seed"], r["eliminable"], r["best_classical_order"], r["learned"], r["classical"],
             r["learned_search"], r["mcts"], _fmt_ratio(r["learned_search_vs_classical"]),
             _fmt_ratio(r["mcts_vs_classical"])] for r in rows]
    mean = {k: float(np.mean([r[f"{k}_vs_classical"] for r in rows])) for k in ("learned_search", "mcts", "learned")}
    better = {k: sum(r[k] < r["classical"] for r in rows) for k in ("learned_search", "mcts", "learned")}
    worse = {k: sum(r[k] > r["classical"] for r in rows) for k in ("learned_search", "mcts", "learned")}
    return ["", f"## Unseen random functions (seeds {rows[0]['seed']}-{rows[-1]['seed']}, {budget:g} s each)", "",
            "Never in training (its random functions are seeds 1000-1047). Each search gets the same budget; "
            "ratios are to the classical search alone.", "",
            markdown_table(header, body), "",
            f"Mean ratio to the classical search: search + learned start {mean['learned_search']:.3f} "
            f"(better on {better['learned_search']}, worse on {worse['learned_search']}), MCTS "
            f"{mean['mcts']:.3f} (better on {better['mcts']}, worse on {worse['mcts']}), greedy order alone "
            f"{mean['learned']:.3f} (better on {better['learned']}, worse on {worse['learned']}).", ""]


def plot_history(history_path: str, out_png: str) -> dict:
    """Training curves: loss terms and mean cost ratio per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with open(history_path) as f:
        hist = json.load(f)
    its = hist["iterations"]
    x = [r["iteration"] for r in its]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(x, [r["policy_loss"] for r in its])
    axes[0].set_title("policy loss (cross-entropy to MCTS weights)")
    axes[1].plot(x, [r["value_loss"] for r in its])
    axes[1].set_title("value loss (transformed MSE)")
    ratio = np.array([r["mean_ratio"] for r in its])
    axes[2].plot(x, ratio, alpha=0.35, label="per iteration")
    k = min(10, len(ratio))
    if k > 1:
        axes[2].plot(x[k - 1:], np.convolve(ratio, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
    scored = [(r["iteration"], r["selection_score"]) for r in its if "selection_score" in r]
    if scored:
        axes[2].plot(*zip(*scored), "o", ms=3, label="greedy order, training tasks (selection)")
    axes[2].axhline(1.0, color="gray", lw=0.8, ls="--")
    axes[2].set_title("self-play cost / best classical order")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("iteration")
    fig.tight_layout()
    save_figure(plt, fig, out_png)
    best = min(scored, key=lambda t: t[1]) if scored else None
    return {"iterations": len(its), "train_seconds": hist.get("elapsed"), "corpus_size": len(hist["corpus"]),
            "selected_iteration": None if best is None else best[0],
            "selection_score": None if best is None else best[1], "evaluations": len(scored),
            "first_ratio_mean10": float(np.mean(ratio[:10])) if len(ratio) else None,
            "last_ratio_mean10": float(np.mean(ratio[-10:])) if len(ratio) else None}


def _fmt_ratio(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def render(rows: list[dict], env: dict, args, training: dict | None, random_rows: list[dict]) -> str:
    header = ["task", "held out", "fwd", "rev", "Markowitz", "learned (greedy)", "MCTS", "classical search",
              "search + learned start", "learned ratio", "MCTS ratio", "classical ratio",
              "search + learned start ratio", "paper AlphaGrad ratio"]
    body = []
    for r in rows:
        body.append([r["task"], "yes" if r["held_out"] else "", r["fwd"], r["rev"], r["markowitz"], r["learned"],
                     f'{r["mcts"]} ({r["mcts_episodes"]} batches)',
                     f'{r.get("classical", "–")}' + (" (optimal)" if r.get("classical_optimal") else ""),
                     f'{r.get("learned_search", "–")}', _fmt_ratio(r.get("learned_ratio")),
                     _fmt_ratio(r.get("mcts_ratio")), _fmt_ratio(r.get("classical_ratio")),
                     _fmt_ratio(r.get("learned_search_ratio")), _fmt_ratio(r["paper_ratio"])])
    lines = [
        "# The learned policy on the paper's tasks",
        "",
        f"Generated by `python -m benchmarks.learned --budget {args.budget:g} --classical-budget "
        f"{args.classical_budget:g}"
        + (f" --random-seeds {args.random_seeds[0]} {args.random_seeds[1]} --random-budget {args.random_budget:g}"
           if args.random_seeds else "")
        + f"` on {env['device']} ({env['cpu_count']} cores), JAX {env['jax']}, "
        f"{env['time']}.",
        "",
        "Multiplications (`ccjax.cost`'s count). Ratios are to the best of fwd/rev/Markowitz on our graph; the "
        "paper's ratio is AlphaGrad over the best of its fwd/rev/Markowitz. 'learned': the policy's greedy order "
        "(`jacve(order=\"learned\")`); 'MCTS': the best order of Gumbel MuZero with the policy within the budget "
        f"({args.games} games per batch); 'classical search': `search_order(method=\"auto\")` (greedy variants, "
        "beam, annealing, branch and bound) with its budget; 'search + learned start': the same search with the "
        "greedy order as one more start, in the same budget. MCTS and classical results are reported separately; "
        "neither sees the other's orders. Held-out tasks were never trained on. MCTS plays on shrinking boards "
        "(`ccjax.search.compact`) since 2026-12-02.",
        "",
        markdown_table(header, body),
    ]
    if random_rows:
        lines += render_random(random_rows, args.random_budget)
    if training:
        lines += ["", "## Training", "",
                  f"{training['iterations']} iterations, {training['train_seconds'] / 60:.1f} min on this CPU, "
                  f"corpus of {training['corpus_size']} graphs. Mean self-play cost ratio (MCTS during training, "
                  f"against the best classical order): first 10 iterations {training['first_ratio_mean10']:.3f}, "
                  f"last 10 {training['last_ratio_mean10']:.3f}. Curves: `docs/training.png`."
                  + ("" if training.get("selected_iteration") is None else
                     f" The run's selected network (what `ccjax train --export` ships) is iteration "
                     f"{training['selected_iteration']}'s, the best of "
                     f"{training['evaluations']} evaluations of the greedy order on the training tasks (geometric "
                     f"mean {training['selection_score']:.3f} of the best of fwd/rev/Markowitz)."), ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=60.0, help="MCTS seconds per task")
    p.add_argument("--classical-budget", type=float, default=60.0, help="classical search seconds per task")
    p.add_argument("--games", type=int, default=8)
    p.add_argument("--tasks", nargs="*")
    p.add_argument("--policy", default=None, help="policy file (default: the shipped one)")
    p.add_argument("--history", default=None, help="a training run's history.json, for the curves plot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--random-seeds", type=int, nargs=2, metavar=("FIRST", "END"), default=None,
                   help="also unseen random functions of seeds FIRST..END-1")
    p.add_argument("--random-budget", type=float, default=10.0, help="seconds per search on a random function")
    p.add_argument("--smoke", action="store_true", help="one small task, tiny budgets")
    args = p.parse_args(argv)
    if args.smoke:
        args.tasks, args.budget, args.classical_budget, args.games = list(SMOKE_TASKS), 1.0, 1.0, 2
        if args.random_seeds:
            args.random_seeds, args.random_budget = [args.random_seeds[0], args.random_seeds[0] + 1], 1.0
    isolate_order_cache()
    from ccjax.search.policy import default_policy

    policy = default_policy(args.policy)
    tasks = select_tasks(args.tasks)
    prog = Progress(len(tasks), "learned")
    rows = []
    for task in tasks:
        rows.append(measure(task, policy, args.budget, args.classical_budget, args.games, args.seed))
        prog.update(task.name)
    prog.close()
    random_rows = []
    if args.random_seeds:
        seeds = range(*args.random_seeds)
        prog = Progress(len(seeds), "random functions")
        for seed in seeds:
            random_rows.append(measure_random(seed, policy, args.random_budget, args.games))
            prog.update(f"random_{seed}")
        prog.close()
    env = environment()
    training = None
    if args.history and args.out:
        training = plot_history(args.history, os.path.join(args.out, "training.png"))
    text = render(rows, env, args, training, random_rows)
    print(text)
    if args.out:
        write_json(os.path.join(args.out, "learned.json"), {"environment": env, "rows": rows,
                                                            "random_rows": random_rows, "training": training,
                                                            "policy": policy.info})
        write_text(os.path.join(args.out, "learned.md"), text)


if __name__ == "__main__":
    main()
