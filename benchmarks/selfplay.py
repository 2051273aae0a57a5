"""Self-play throughput: episodes per second of Gumbel MuZero with the policy network.

    python -m benchmarks.selfplay [--tasks RoeFlux_1d f g] [--games 8] [--simulations 16]
                                  [--capacity 128] [--policy FILE] [--baseline FILE] [--out docs/] [--smoke]

One *episode* is one game played to the end, every move chosen by a full
MCTS (:func:`ccjax.search.mcts.act`), as in training
(:func:`ccjax.search.train.self_play`).  Per task: a batch of ``--games``
games at the training capacity, timed after a first (compiling) batch;
episodes per wall-clock second and per CPU-second (process CPU time, all
threads), and a breakdown of one simulation's work (observation, network,
game step) measured on the batch's start position.  The network is the
policy's (``--policy``, default the shipped one); ``--baseline`` adds the
full board with another policy's network (e.g. the one shipped before), the
"before" of a before/after comparison in one run.  Nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import command_line, environment, markdown_table, save_results

DEFAULT_TASKS = ("RoeFlux_1d", "RoeFlux_3d", "BlackScholes_Jacobian", "f", "g")
SMOKE_TASKS = ("g",)


def _median_seconds(fn, reps: int = 5) -> float:
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(task: str, games: int, simulations: int, capacity: int, num_structures: int, seed: int,
            policy_path=None, baseline_path=None) -> dict:
    import dataclasses

    import jax
    import jax.numpy as jnp

    from ccjax.search import game, mcts, network
    from ccjax.search.compact import FINE_LADDER, LADDER
    from ccjax.search.corpus import task_graph
    from ccjax.search.policy import default_policy
    from ccjax.search.tables import encode, stack
    from ccjax.search.train import self_play

    policy = default_policy(policy_path)
    search = dataclasses.replace(policy.search, num_simulations=simulations)
    enc = encode(task_graph(task), capacity, num_structures)
    tables = jax.tree_util.tree_map(jnp.asarray, stack([enc.tables]))
    params = jax.tree_util.tree_map(jnp.asarray, policy.params)
    ids = [0] * games
    key = jax.random.PRNGKey(seed)
    runs = [("full", False, LADDER, policy.network, params), ("shrink", True, LADDER, policy.network, params),
            ("fine", True, FINE_LADDER, policy.network, params)]
    if baseline_path is not None:
        baseline = default_policy(baseline_path)
        runs.append(("baseline", False, LADDER, baseline.network, jax.tree_util.tree_map(jnp.asarray, baseline.params)))
    row = {}
    for label, shrink, ladder, net, pars in runs:
        t0 = time.perf_counter()
        self_play(net, search, pars, tables, ids, key, shrink=shrink, ladder=ladder)  # compiles
        first = time.perf_counter() - t0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        episode = self_play(net, search, pars, tables, ids, jax.random.fold_in(key, 1), shrink=shrink, ladder=ladder)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        row[label] = {"first_batch_s": first, "batch_s": wall, "batch_cpu_s": cpu, "episodes_per_s": games / wall,
                      "episodes_per_cpu_s": games / cpu, "mean_cost": float(np.mean(episode.costs))}
    moves = len(enc.tables.eliminable.nonzero()[0])

    states = mcts.initial_states(tables, ids)
    observe = jax.jit(jax.vmap(game.observe, (None, 0)))
    obs = observe(tables, states)
    apply = jax.jit(lambda p, o: network.apply(policy.network, p, o))
    step = jax.jit(lambda s, a: mcts._play(tables, s, a))
    first_legal = jnp.argmax(states.remaining, axis=1)
    if "baseline" in row:
        row["over_baseline_per_cpu_s"] = row["fine"]["episodes_per_cpu_s"] / row["baseline"]["episodes_per_cpu_s"]
    return {
        "task": task, "vertices": enc.num_vertices, "moves": moves, "games": games, "simulations": simulations,
        "capacity": capacity, "network": policy.network.to_dict(), **row,
        "speedup_per_cpu_s": row["shrink"]["episodes_per_cpu_s"] / row["full"]["episodes_per_cpu_s"],
        "fine_speedup_per_cpu_s": row["fine"]["episodes_per_cpu_s"] / row["full"]["episodes_per_cpu_s"],
        "observe_ms": 1e3 * _median_seconds(lambda: observe(tables, states)),
        "network_ms": 1e3 * _median_seconds(lambda: apply(params, obs)),
        "step_ms": 1e3 * _median_seconds(lambda: step(states, first_legal)),
        "move_ms": 1e3 * row["shrink"]["batch_s"] / moves,
    }


def report(rows: list, env: dict, command: str) -> str:
    head = ["task", "vertices", "moves", "games x simulations", "first batch (s): full / search / training",
            "batch (s): full / search / training", "episodes / CPU-s: full", "search ladder", "training ladder",
            "speedup: search / training", "per move (ms), search ladder", "observe (ms)", "network (ms)",
            "step (ms)"]
    boards = ("full", "shrink", "fine")
    baseline = all("baseline" in r for r in rows)
    if baseline:
        head += ["baseline: episodes / CPU-s, full", "training ladder over baseline full"]
    body = [[r["task"], r["vertices"], r["moves"], f'{r["games"]} x {r["simulations"]}',
             " / ".join(f'{r[b]["first_batch_s"]:.1f}' for b in boards),
             " / ".join(f'{r[b]["batch_s"]:.2f}' for b in boards),
             *(f'{r[b]["episodes_per_cpu_s"]:.3f}' for b in boards),
             f'{r["speedup_per_cpu_s"]:.2f}x / {r["fine_speedup_per_cpu_s"]:.2f}x', f'{r["move_ms"]:.1f}',
             f'{r["observe_ms"]:.2f}', f'{r["network_ms"]:.2f}', f'{r["step_ms"]:.2f}']
            + ([f'{r["baseline"]["episodes_per_cpu_s"]:.3f}', f'{r["over_baseline_per_cpu_s"]:.2f}x'] if baseline else [])
            for r in rows]
    net = rows[0]["network"] if rows else {}
    before = (" *baseline*: the full board with the `--baseline` policy's network, in the same run; the last "
              "column is the training ladder's episodes per CPU-second over it." if baseline else "")
    return "\n".join([
        f"# Self-play throughput ({env['backend']}, {env['cpu_count']} cores)", "",
        f"Generated by `{command}` on {env['backend']} ({env['cpu_count']} cores), JAX {env['jax']}, {env['time']}. "
        "One episode is one game played to the end with a full Gumbel MuZero search per move (the "
        f"policy's network: {net.get('dim')} wide, {net.get('layers')} blocks of {net.get('heads')} heads); a batch plays the games side by side (vmap), after a first batch that compiles. "
        "*full*: every move on the board at the training capacity; *search ladder* and *training ladder*: "
        "the board drops its dead positions whenever the live ones fit a smaller capacity "
        "(`ccjax.search.compact`), of `LADDER` (16, 24, 32, 48, 64, 96, 128, ...: `self_play`'s default, used "
        "by MCTS searches) or of `FINE_LADDER` (16, 20, 24, 28, 32, 40, ...: used by training); a first batch "
        "compiles one search per capacity it visits. The speedup is in episodes per CPU-second over the full "
        "board. The last three columns time one batched evaluation of each part of a "
        "simulation at the start position, at the training capacity (every simulation runs a game step, an "
        f"observation and a network pass).{before}", "",
        markdown_table(head, body), ""])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--games", type=int, default=8)
    parser.add_argument("--simulations", type=int, default=16)
    parser.add_argument("--capacity", type=int, default=128)
    parser.add_argument("--structures", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--policy", default=None, help="policy file whose network plays (default: the shipped one)")
    parser.add_argument("--baseline", default=None, help="policy file timed on the full board as the 'before'")
    parser.add_argument("--smoke", action="store_true", help="one small task, two games")
    opts = parser.parse_args(argv)
    tasks = opts.tasks or (SMOKE_TASKS if opts.smoke else DEFAULT_TASKS)
    games = 2 if opts.smoke else opts.games
    rows = []
    for task in tasks:
        row = measure(task, games, opts.simulations, opts.capacity, opts.structures, opts.seed, opts.policy,
                      opts.baseline)
        print(f'{task:24s} full {row["full"]["episodes_per_cpu_s"]:.3f} episodes/CPU-s, shrinking '
              f'{row["shrink"]["episodes_per_cpu_s"]:.3f} ({row["speedup_per_cpu_s"]:.2f}x), fine ladder '
              f'{row["fine"]["episodes_per_cpu_s"]:.3f} ({row["fine_speedup_per_cpu_s"]:.2f}x), '
              f'{row["move_ms"]:.1f} ms per move; observe {row["observe_ms"]:.2f} ms, network '
              f'{row["network_ms"]:.2f} ms, step {row["step_ms"]:.2f} ms'
              + (f', {row["over_baseline_per_cpu_s"]:.2f}x the baseline\'s full board' if "baseline" in row else ""),
              flush=True)
        rows.append(row)
    env = environment()
    command = command_line("benchmarks.selfplay", argv)
    save_results(opts.out, "selfplay", {"meta": {"env": env, "command": command}, "results": rows},
                 report(rows, env, command))


if __name__ == "__main__":
    main()
