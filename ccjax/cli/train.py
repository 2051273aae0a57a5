"""``ccjax train``: train the elimination policy by self-play (resumable)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ccjax.cli.common import EXIT_ERROR, EXIT_OK, CLIError, _positive


def _config_file(text: str, base):
    """``base`` (a TrainConfig) updated with the settings of ``--config``:
    the path of a JSON file, or the JSON object itself when ``text`` starts
    with ``{`` (no file name does; ``network`` and ``search`` may give only
    some of their fields)."""
    inline = text.lstrip().startswith("{")
    what = "the inline --config" if inline else f"--config {text}"
    try:
        given = json.loads(text if inline else Path(text).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CLIError(f"cannot read {what}: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(given, dict):
        raise CLIError(f"{what} must hold a JSON object of training settings")
    try:
        return base.updated(given)
    except (TypeError, ValueError) as e:
        raise CLIError(f"{what}: {e}") from None


def _train_config(ns):
    """The run's configuration: the one saved in ``--dir`` (or the defaults,
    updated by ``--config``, for a new run) with the command line's changes."""
    from ccjax.search import train as train_lib

    try:
        saved = train_lib.read_config(ns.dir)
    except train_lib.CheckpointError as e:
        raise CLIError(str(e), EXIT_ERROR) from None
    base = saved if saved is not None else train_lib.TrainConfig()
    if ns.config is not None:
        base = _config_file(ns.config, base)
    changes: dict = {}
    if ns.iterations is not None:
        changes["iterations"] = ns.iterations
    if ns.games is not None:
        changes["games_per_iteration"] = ns.games
    if ns.simulations is not None:
        changes["search"] = dataclasses.replace(base.search, num_simulations=ns.simulations)
    config = dataclasses.replace(base, **changes)
    if saved is not None:
        old, new = saved.to_dict(), dataclasses.replace(config, iterations=saved.iterations).to_dict()
        differ = [k for k in old if old[k] != new[k]]
        if differ:
            raise CLIError(f"{ns.dir} holds a run with other settings ({', '.join(differ)} differ); only "
                           f"--iterations may change when resuming (or use a new --dir)")
    return config


class _TrainProgress:
    """Per-iteration progress of ``ccjax train``: a live table on a terminal
    (rich), one line per iteration otherwise."""

    def __init__(self, total: int, quiet: bool):
        self.total = total
        self.quiet = quiet
        self.rows: list[dict] = []
        self.best: dict = {}
        self.live = None
        try:
            from rich.console import Console
        except ImportError:  # rich is optional
            self.console = None
        else:
            self.console = Console()

    def __enter__(self):
        if not self.quiet and self.console is not None and self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=self.console, refresh_per_second=2)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)

    def __call__(self, record: dict) -> None:
        self.rows.append(record)
        self.best = dict(record.get("best", {}))
        if self.quiet:
            return
        if self.live is not None:
            self.live.update(self._render())
        else:
            print(f"iteration {record['iteration']}/{self.total}  loss {record['loss']:.4f}  "
                  f"mean ratio {record['mean_ratio']:.3f}  replay {record['replay']}  {record['seconds']:.1f}s  "
                  f"best {self._best_text()}", flush=True)

    def _best_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.best.items()))

    def _render(self):
        from rich.console import Group
        from rich.table import Table

        it = Table(title="ccjax train", expand=False)
        for col in ("iteration", "loss", "policy", "value", "mean ratio", "replay", "seconds"):
            it.add_column(col, justify="right")
        for r in self.rows[-12:]:
            it.add_row(f"{r['iteration']}/{self.total}", f"{r['loss']:.4f}", f"{r['policy_loss']:.4f}",
                       f"{r['value_loss']:.4f}", f"{r['mean_ratio']:.3f}", str(r["replay"]), f"{r['seconds']:.1f}")
        return Group(it, self.best_table())

    def best_table(self):
        from rich.table import Table

        table = Table(title="best per graph")
        table.add_column("graph")
        table.add_column("best cost", justify="right")
        for name, cost in sorted(self.best.items()):
            table.add_row(name, str(cost))
        return table


def cmd_train(ns) -> int:
    from ccjax.search import train as train_lib

    config = _train_config(ns)
    max_seconds = None if ns.max_minutes is None else 60.0 * ns.max_minutes
    if not ns.quiet:
        print(f"training in {ns.dir}: up to {config.iterations} iterations of {config.games_per_iteration} games, "
              f"{config.search.num_simulations} simulations a move, on {len(config.train_tasks)} tasks and "
              f"{len(config.random_seeds)} random functions", flush=True)
    try:
        with _TrainProgress(config.iterations, ns.quiet) as progress:
            history = train_lib.train(ns.dir, config, progress, max_seconds)
    except train_lib.CheckpointError as e:
        raise CLIError(str(e), EXIT_ERROR) from None
    done = len(history["iterations"])
    if not ns.quiet and progress.best:
        if progress.console is not None and progress.live is None:
            progress.console.print(progress.best_table())
    print(f"{done}/{config.iterations} iterations in {ns.dir} ({len(progress.rows)} this run, "
          f"{history.get('elapsed', 0.0) / 60:.1f} min in all)")
    if ns.export:
        if not done:
            raise CLIError(f"nothing to export: {ns.dir} holds no finished iteration", EXIT_ERROR)
        try:
            info = train_lib.export_policy(ns.dir, ns.export)
        except train_lib.CheckpointError as e:
            raise CLIError(str(e), EXIT_ERROR) from None
        score = info.get("selection_score")
        print(f"wrote {ns.export}: the network of iteration {info['network_iteration']}"
              + ("" if score is None else f" (the best greedy cost ratio on the training tasks, {score:.3f})"))
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the elimination policy by self-play (resumes a run in --dir)")
    p.add_argument("--dir", required=True, help="checkpoint directory (created, or resumed when it holds a run)")
    p.add_argument("--iterations", type=_positive(int), metavar="N",
                   help="train until this many iterations are done (default: the run's setting, 200 for a new run)")
    p.add_argument("--max-minutes", type=_positive(float), metavar="M",
                   help="stop after this many minutes (checkpoints are written after every iteration; "
                        "run again to resume)")
    p.add_argument("--games", type=_positive(int), metavar="G", help="self-play games per iteration (new runs only)")
    p.add_argument("--simulations", type=_positive(int), metavar="S", help="MCTS simulations per move (new runs only)")
    p.add_argument("--config", metavar="FILE",
                   help="path to a JSON file of training settings for a new run, holding e.g. "
                        '{"train_tasks": ["g"], "random_seeds": [], "num_vertices": 64, "network": {"layers": 1}} '
                        "(a value starting with { is read as that JSON object itself)")
    p.add_argument("--export", metavar="FILE", help="write the trained network to this policy file at the end")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-iteration progress")
    p.set_defaults(func=cmd_train)
