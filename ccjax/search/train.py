"""Self-play training of the policy-value network (AlphaZero style).

Each iteration plays a batch of games with Gumbel MuZero
(:func:`ccjax.search.mcts.act`) on graphs drawn from the corpus, stores
every move (state, the search's action weights, the return to go) in a
replay buffer, and takes several AdamW steps on minibatches drawn from it:
cross-entropy to the action weights plus the squared error of the
transformed value.

Checkpoints (a directory) are written after every iteration in safe
formats: the parameters and optimiser state with ``flax.serialization``
(msgpack), the replay buffer as ``.npz`` (loaded with
``allow_pickle=False``), the history and config as JSON.  Each file is
written atomically (temporary file + rename) and the files of one iteration
are staged before any replaces its predecessor (see :func:`_save`), so a
run killed at any moment resumes after exactly the last finished
iteration: nothing finished lost, nothing of the unfinished one kept.
Every file read is checked on its own and against the others; a missing,
corrupt or inconsistent one raises :class:`CheckpointError` naming it
rather than silently starting over.  Temporaries of interrupted writes are
removed when a run opens the directory.

Every :data:`SELECT_EVERY` iterations (and after the last) the policy's
greedy order is costed on the named training tasks
(:func:`selection_score`); the parameters with the best score so far are
kept in ``selected.msgpack``, and :func:`export_policy` ships those, not
merely the last ones (the greedy policy does not improve monotonically:
in the shipped policy's 300-iteration run the score moved between 0.88, at
iteration 90, and 1.28).

When several devices exist the games of an iteration are sharded across
them (``jax.sharding``); parameters and tables are replicated.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from typing import Callable, Optional, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ccjax.search import compact as compact_lib
from ccjax.search import corpus as corpus_lib
from ccjax.search import game, mcts, network
from ccjax.search.mcts import MCTSConfig
from ccjax.search.network import NetworkConfig
from ccjax.search.tables import GameTables, stack


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable or belongs to another configuration."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved with the checkpoint).

    ``demo_seconds > 0`` adds demonstrations: each corpus graph's order from
    the classical search (:func:`ccjax.orders.search.search_graph`, that
    many seconds per graph), replayed through the game into a fixed buffer.
    The network first takes ``pretrain_updates`` steps on them alone, then
    every minibatch draws ``demo_fraction`` of its rows from them.
    """

    iterations: int = 200
    games_per_iteration: int = 8
    num_vertices: int = 128
    num_structures: int = 512
    train_tasks: tuple[str, ...] = ("RoeFlux_1d", "RoeFlux_3d", "PropaneCombustion", "BlackScholes_Jacobian",
                                    "MLP", "f", "g")
    random_seeds: tuple[int, ...] = tuple(range(1000, 1048))
    replay_capacity: int = 4096
    batch_size: int = 64
    updates_per_iteration: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    value_weight: float = 0.5
    demo_seconds: float = 0.0
    demo_fraction: float = 0.25
    pretrain_updates: int = 0
    seed: int = 0
    network: NetworkConfig = NetworkConfig()
    search: MCTSConfig = MCTSConfig(num_simulations=16, max_num_considered_actions=8)

    def __post_init__(self):
        """Refuse a bad setting here, naming it, rather than as a raw error
        deep inside training (or a silently different run)."""
        for name in ("iterations", "games_per_iteration", "num_vertices", "num_structures", "replay_capacity",
                     "batch_size", "updates_per_iteration"):
            _check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "pretrain_updates"):
            _check_int(name, getattr(self, name), 0)
        _check_int("seed", self.seed, 0, 2 ** 32 - 1)
        for name in ("learning_rate", "max_grad_norm"):
            _check_number(name, getattr(self, name), 0.0, inclusive=False)
        for name in ("weight_decay", "value_weight", "demo_seconds", "demo_fraction"):
            _check_number(name, getattr(self, name), 0.0)
        if self.demo_fraction >= 1.0:
            raise ValueError(f"demo_fraction must be below 1, got {self.demo_fraction!r}")
        _check_tuple("train_tasks", self.train_tasks, lambda w, v: _check_type(w, v, str, "a string"))
        _check_tuple("random_seeds", self.random_seeds, lambda w, v: _check_int(w, v, 0))
        if not self.train_tasks and not self.random_seeds:
            raise ValueError("train_tasks and random_seeds are both empty: there is nothing to train on")
        _check_network(self.network)
        _check_search(self.search)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`: every setting must be given, nothing
        else; ``ValueError`` naming the setting for anything else."""
        try:
            fields = _exact_fields(cls, d, "")
            fields["network"] = NetworkConfig(**_exact_fields(NetworkConfig, fields["network"], "network."))
            fields["search"] = MCTSConfig(**_exact_fields(MCTSConfig, fields["search"], "search."))
            for k in ("train_tasks", "random_seeds"):
                if isinstance(fields[k], list):  # JSON has no tuples; a string stays a (refused) string
                    fields[k] = tuple(fields[k])
            return cls(**fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"not a training configuration: {e}") from e

    def updated(self, settings: dict) -> "TrainConfig":
        """This configuration with some settings changed (``network`` and
        ``search`` may give only some of theirs), e.g. from a user's JSON
        file; ``ValueError`` naming an unknown or invalid setting."""
        if not isinstance(settings, dict):
            raise ValueError(f"training settings must be a JSON object, got {type(settings).__name__}")
        d = self.to_dict()
        unknown = sorted(str(k) for k in settings if k not in d)
        if unknown:
            raise ValueError(f"unknown settings {', '.join(unknown)}; known: {', '.join(sorted(d))}")
        for k, v in settings.items():
            d[k] = {**d[k], **v} if k in ("network", "search") and isinstance(v, dict) else v
        return TrainConfig.from_dict(d)


def _exact_fields(cls, d, prefix: str) -> dict:
    """``d`` as keyword arguments of dataclass ``cls``: exactly its fields."""
    if not isinstance(d, dict):
        raise TypeError(f"{prefix.rstrip('.') or 'the configuration'} must be an object, got {d!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in d if k not in names)
    missing = sorted(names - set(d))
    problems = []
    if unknown:
        problems.append(f"unknown settings {', '.join(prefix + k for k in unknown)}")
    if missing:
        problems.append(f"missing settings {', '.join(prefix + k for k in missing)}")
    if problems:
        raise ValueError("; ".join(problems))
    return dict(d)


def _check_type(where: str, value, kind: type, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{where} must be {what}, got {value!r}")


def _check_int(where: str, value, low: int, high: Optional[int] = None) -> None:
    _check_type(where, value, int, "an integer")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{where} must be {bounds}, got {value}")


def _check_number(where: str, value, low: float, inclusive: bool = True) -> None:
    _check_type(where, value, (int, float), "a number")
    if not math.isfinite(value) or value < low or (value == low and not inclusive):
        raise ValueError(f"{where} must be a finite number {'>=' if inclusive else '>'} {low}, got {value!r}")


def _check_tuple(where: str, value, check_item: Callable[[str, object], None]) -> None:
    _check_type(where, value, tuple, "a tuple (a list in JSON)")
    for i, item in enumerate(value):
        check_item(f"{where}[{i}]", item)


def _check_network(net) -> None:
    _check_type("network", net, NetworkConfig, "a NetworkConfig")
    for name in ("dim", "heads", "layers", "edge_dim"):
        _check_int(f"network.{name}", getattr(net, name), 1)
    if net.dim % net.heads:
        raise ValueError(f"network.dim ({net.dim}) must be a multiple of network.heads ({net.heads})")


def _check_search(search) -> None:
    _check_type("search", search, MCTSConfig, "an MCTSConfig")
    for name in ("num_simulations", "max_num_considered_actions"):
        _check_int(f"search.{name}", getattr(search, name), 1)
    for name in ("gumbel_scale", "illegal_penalty"):
        _check_number(f"search.{name}", getattr(search, name), 0.0)


# ---------------------------------------------------------------------------
# Replay buffer
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Replay:
    """A ring buffer of moves.  ``size`` entries are valid, ``next`` is the
    slot written next; arrays have ``capacity`` rows.  ``iteration`` tags a
    checkpointed buffer with the training iteration it ends (None for
    demonstrations), so that a resume can tell it belongs to the state."""

    edges: np.ndarray  # (C, N, N) int16
    remaining: np.ndarray  # (C, N) bool
    graph: np.ndarray  # (C,) int32
    policy: np.ndarray  # (C, N) float32
    value: np.ndarray  # (C,) float32, return to go
    size: int = 0
    next: int = 0
    iteration: Optional[int] = None

    @classmethod
    def empty(cls, capacity: int, n: int) -> "Replay":
        return cls(np.zeros((capacity, n, n), np.int16), np.zeros((capacity, n), bool),
                   np.zeros(capacity, np.int32), np.zeros((capacity, n), np.float32),
                   np.zeros(capacity, np.float32))

    @property
    def capacity(self) -> int:
        return len(self.graph)

    def add(self, edges, remaining, graph, policy, value) -> None:
        for i in range(len(graph)):
            k = self.next
            self.edges[k], self.remaining[k], self.graph[k] = edges[i], remaining[i], graph[i]
            self.policy[k], self.value[k] = policy[i], value[i]
            self.next = (k + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch: int):
        idx = rng.integers(0, self.size, size=batch)
        states = game.GameState(jnp.asarray(self.edges[idx]), jnp.asarray(self.remaining[idx]),
                                jnp.zeros(batch, jnp.int32), jnp.asarray(self.graph[idx]),
                                jnp.zeros(batch, bool))
        return states, jnp.asarray(self.policy[idx]), jnp.asarray(self.value[idx])

    def save(self, path: str) -> None:
        arrays = {k: getattr(self, k)[:self.size] for k in _REPLAY_ARRAYS}
        arrays["next"] = np.int64(self.next)
        if self.iteration is not None:
            arrays["iteration"] = np.int64(self.iteration)
        _atomic(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str, capacity: Optional[int], n: int) -> "Replay":
        """Read a saved buffer; ``capacity`` None means exactly its rows.
        Every array is checked: a bad value would train silently wrong."""
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in _REPLAY_ARRAYS + ("next",)}
                tag = z["iteration"] if "iteration" in z.files else None
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
            raise CheckpointError(f"replay buffer {path} is unreadable: {e}") from e
        size = len(data["graph"])
        capacity = max(size, 1) if capacity is None else capacity
        r = cls.empty(capacity, n)
        problem = _replay_problem(r, data, size)
        if problem:
            raise CheckpointError(f"replay buffer {path} does not match the configuration: {problem}")
        for k in _REPLAY_ARRAYS:
            getattr(r, k)[:size] = data[k]
        r.size, r.next = size, int(data["next"]) % capacity
        if tag is not None:
            if tag.shape != () or tag.dtype.kind not in "iu" or int(tag) < 0:
                raise CheckpointError(f"replay buffer {path} has a bad iteration tag {tag!r}")
            r.iteration = int(tag)
        return r


_REPLAY_ARRAYS = ("edges", "remaining", "graph", "policy", "value")


def _replay_problem(empty: Replay, data: dict, size: int) -> Optional[str]:
    """What is wrong with the saved arrays ``data`` for buffer ``empty``, or None."""
    capacity = empty.capacity
    if size > capacity:
        return f"{size} moves do not fit its capacity {capacity}"
    for k in _REPLAY_ARRAYS:
        want, got = getattr(empty, k), data[k]
        if got.dtype != want.dtype or got.shape != (size,) + want.shape[1:]:
            return f"{k} is {got.dtype}{list(got.shape)}, not {want.dtype}{[size, *want.shape[1:]]}"
    nxt = data["next"]
    if nxt.shape != () or nxt.dtype.kind not in "iu" or not (int(nxt) == size if size < capacity
                                                             else 0 <= int(nxt) < capacity):
        return f"next slot {nxt!r} is impossible for {size} moves in {capacity} slots"
    if not (np.all(np.isfinite(data["policy"])) and np.all(data["policy"] >= 0)
            and np.all(np.isfinite(data["value"]))):
        return "non-finite or negative targets"
    return None


# ---------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------


STATE_FILE, REPLAY_FILE, HISTORY_FILE, CONFIG_FILE = "state.msgpack", "replay.npz", "history.json", "config.json"
DEMO_FILE = "demos.npz"
#: The best network by :func:`selection_score` so far (outside the per-iteration files: it is self-contained).
SELECTED_FILE = "selected.msgpack"
#: Iterations between two evaluations of :func:`selection_score` (the last iteration is evaluated too).
SELECT_EVERY = 10
#: The files of one finished iteration, in the order they are written.
CHECKPOINT_FILES = (REPLAY_FILE, HISTORY_FILE, STATE_FILE)
#: Suffix of a finished iteration's file written whole but not yet in place (see :func:`_save`).
STAGED = ".next"
_TMP = ".tmp-"


def _atomic(path: str, write: Callable) -> None:
    tmp = f"{path}{_TMP}{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: str, obj) -> None:
    _atomic(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CheckpointError(f"{path} is unreadable: {e}") from e


def _read_json(path: str):
    try:
        return json.loads(_read_bytes(path).decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8 and bad JSON are ValueErrors
        raise CheckpointError(f"{path} is unreadable: {type(e).__name__}: {str(e)[:200]}") from e


def read_config(checkpoint_dir: str) -> Optional[TrainConfig]:
    """The configuration saved in ``checkpoint_dir`` (None when there is
    none); :class:`CheckpointError` naming the file when it is bad."""
    path = os.path.join(checkpoint_dir, CONFIG_FILE)
    if not os.path.lexists(path):
        return None
    try:
        return TrainConfig.from_dict(_read_json(path))
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs; assumed on Windows, where probing with
    ``os.kill`` would terminate it."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def _remove_stale_temporaries(checkpoint_dir: str) -> None:
    """Delete the ``NAME.tmp-PID`` files of writes that never finished: a
    dead process's, and this process's own (an earlier call that failed
    mid-write; no write of this process is under way now).  A live other
    process's are left alone."""
    for name in os.listdir(checkpoint_dir):
        stem, sep, pid = name.rpartition(_TMP)
        path = os.path.join(checkpoint_dir, name)
        if not (sep and stem and pid.isdigit() and os.path.isfile(path)):
            continue
        if int(pid) == os.getpid() or not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _sync_directory(path: str) -> None:
    """Make the renames in ``path`` durable (POSIX; elsewhere a no-op)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save(checkpoint_dir: str, state: TrainState, replay: Replay, history: dict) -> None:
    """Write a finished iteration so that a kill at any moment leaves either
    the previous checkpoint or this one, never a mix: each file is first
    written whole as ``NAME.next``, the state last (its staged file marks
    the set complete), then they are renamed into place, the state last.
    :func:`_finish_interrupted_save` completes or discards what a kill left."""
    replay.save(os.path.join(checkpoint_dir, REPLAY_FILE + STAGED))
    _write_json(os.path.join(checkpoint_dir, HISTORY_FILE + STAGED), history)
    data = _state_bytes(state)
    _atomic(os.path.join(checkpoint_dir, STATE_FILE + STAGED), lambda f: f.write(data))
    _publish(checkpoint_dir)


def _publish(checkpoint_dir: str) -> None:
    """Move the staged files of a complete save into place, the state last."""
    for name in CHECKPOINT_FILES:
        path = os.path.join(checkpoint_dir, name)
        if os.path.lexists(path + STAGED):
            os.replace(path + STAGED, path)
    _sync_directory(checkpoint_dir)


def _finish_interrupted_save(checkpoint_dir: str) -> None:
    """Complete a save killed while moving its files into place (its staged
    state exists, so every staged file was whole), or discard one killed
    while staging (the iteration was never finished on disk)."""
    if os.path.lexists(os.path.join(checkpoint_dir, STATE_FILE + STAGED)):
        _publish(checkpoint_dir)
        return
    for name in CHECKPOINT_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(checkpoint_dir, name + STAGED))


def _run_config(checkpoint_dir: str, config: Optional[TrainConfig]) -> TrainConfig:
    """``config``, checked against the one saved in the directory (only the
    number of iterations may change on resume, to train longer); the saved
    one, or the defaults, when None."""
    saved = read_config(checkpoint_dir)
    if saved is None:
        return TrainConfig() if config is None else config
    if config is not None and dataclasses.replace(config, iterations=saved.iterations) != saved:
        raise CheckpointError(f"{checkpoint_dir} holds a run with another configuration; "
                              f"use a new directory or the same settings")
    return saved if config is None else config


def _has_checkpoint(checkpoint_dir: str, config: TrainConfig) -> bool:
    """Whether the directory holds a finished iteration to resume.  Only
    some of the files is an error naming the missing ones: starting over
    would overwrite the finished iterations the others hold."""
    present = [n for n in CHECKPOINT_FILES if os.path.lexists(os.path.join(checkpoint_dir, n))]
    if not present:
        return False
    needed = (CONFIG_FILE,) + CHECKPOINT_FILES + ((DEMO_FILE,) if config.demo_seconds > 0 else ())
    missing = [path for path in (os.path.join(checkpoint_dir, n) for n in needed) if not os.path.lexists(path)]
    if missing:
        raise CheckpointError(f"{', '.join(missing)} missing: the checkpoint in {checkpoint_dir} is incomplete "
                              f"({', '.join(present)} present); restore it, or start over in a new directory")
    return True


@dataclasses.dataclass
class TrainState:
    params: dict
    opt_state: object
    iteration: int
    updates: int
    rng: np.ndarray  # a raw uint32 PRNG key
    best: dict  # corpus name -> [cost, order positions]


def _state_bytes(s: TrainState) -> bytes:
    return flax.serialization.to_bytes({
        "params": s.params, "opt_state": s.opt_state, "iteration": s.iteration, "updates": s.updates,
        "rng": s.rng})


def _state_from_bytes(template: TrainState, data: bytes, path: str) -> TrainState:
    target = {"params": template.params, "opt_state": template.opt_state, "iteration": 0, "updates": 0,
              "rng": template.rng}
    try:
        d = flax.serialization.from_bytes(target, data)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a checkpoint of this configuration: {e}") from e
    for part in ("params", "opt_state", "rng"):
        if not _same_layout(target[part], d[part]):
            raise CheckpointError(f"{path} is not a checkpoint of this configuration: its {part} differ in "
                                  f"shape or type")
    for part in ("iteration", "updates"):
        if not _is_count(d[part]):
            raise CheckpointError(f"{path}: {part} is {d[part]!r}, not a count")
    return TrainState(d["params"], d["opt_state"], int(d["iteration"]), int(d["updates"]), np.asarray(d["rng"]),
                      {})


def _same_layout(template, restored) -> bool:
    """Whether two pytrees have the same structure, leaf shapes and dtypes."""
    a, tree_a = jax.tree_util.tree_flatten(template)
    b, tree_b = jax.tree_util.tree_flatten(restored)
    return tree_a == tree_b and all(np.shape(x) == np.shape(y) and np.asarray(x).dtype == np.asarray(y).dtype
                                    for x, y in zip(a, b))


def _is_count(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0


def _read_history(path: str) -> dict:
    """The history file, every field a resume relies on checked."""
    h = _read_json(path)
    if not isinstance(h, dict) or not isinstance(h.get("iterations"), list):
        raise CheckpointError(f"{path} is not a training history")
    for i, record in enumerate(h["iterations"], 1):
        number = record.get("iteration") if isinstance(record, dict) else None
        if not _is_count(number) or number != i:
            raise CheckpointError(f"{path}: record {i} of the history is numbered {number!r}")
    elapsed = h.get("elapsed")
    if not (isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool) and math.isfinite(elapsed)
            and elapsed >= 0):
        raise CheckpointError(f"{path}: elapsed time {elapsed!r} is not a duration")
    best = h.get("best", {})
    if not (isinstance(best, dict) and all(_is_best(v) for v in best.values())):
        raise CheckpointError(f"{path}: the best orders are not [cost, positions] pairs")
    pretrain = h.get("pretrain", {"updates": 0})
    if not (isinstance(pretrain, dict) and _is_count(pretrain.get("updates"))):
        raise CheckpointError(f"{path}: the pretraining record has no count of updates")
    return h


def _is_best(v) -> bool:
    return (isinstance(v, list) and len(v) == 2 and _is_count(v[0]) and isinstance(v[1], list)
            and all(_is_count(p) for p in v[1]))


def _load_checkpoint(checkpoint_dir: str, config: TrainConfig, template: TrainState,
                     names: list[str]) -> tuple[TrainState, Replay, dict]:
    """The state, replay buffer and history after the last finished
    iteration, each file checked on its own and against the others."""
    state_path, replay_path, history_path = (os.path.join(checkpoint_dir, n)
                                             for n in (STATE_FILE, REPLAY_FILE, HISTORY_FILE))
    state = _state_from_bytes(template, _read_bytes(state_path), state_path)
    history = _read_history(history_path)
    if history.get("corpus") != names:
        raise CheckpointError(f"{history_path}: the corpus changed since the checkpoint was written")
    done = len(history["iterations"])
    if done != state.iteration:
        raise CheckpointError(f"{state_path} is at iteration {state.iteration} but {history_path} records "
                              f"{done}: the files do not belong together")
    updates = history.get("pretrain", {"updates": 0})["updates"] + done * config.updates_per_iteration
    if state.updates != updates:
        raise CheckpointError(f"{state_path} records {state.updates} updates, {history_path} implies {updates}")
    unknown = set(history.get("best", {})) - set(names)
    if unknown:
        raise CheckpointError(f"{history_path}: best orders of graphs outside the corpus: {sorted(unknown)}")
    replay = Replay.load(replay_path, config.replay_capacity, config.num_vertices)
    if replay.iteration != state.iteration:
        raise CheckpointError(f"{replay_path} holds the moves up to iteration {replay.iteration}, {state_path} is "
                              f"at iteration {state.iteration}: the files do not belong together")
    _check_in_corpus(replay, replay_path, len(names), config.num_structures)
    state.best = history.get("best", {})
    return state, replay, history


def _check_in_corpus(replay: Replay, path: str, num_graphs: int, num_structures: int) -> None:
    """Graph and structure ids out of range would be clamped by JAX's
    gathers: a silently wrong training, so an error naming the file."""
    graph, edges = replay.graph[:replay.size], replay.edges[:replay.size]
    if np.any((graph < 0) | (graph >= num_graphs)) or np.any((edges < -1) | (edges >= num_structures)):
        raise CheckpointError(f"replay buffer {path} refers to graphs or edge structures outside the corpus")


def selection_items(config: TrainConfig, items: list) -> list[int]:
    """Indices of the corpus graphs :func:`selection_score` costs: the named
    training tasks (all graphs when the corpus has none)."""
    named = [i for i, it in enumerate(items) if it.name in config.train_tasks]
    return named or list(range(len(items)))


def selection_score(config: TrainConfig, params, items: list, tables: GameTables) -> float:
    """Geometric mean over :func:`selection_items` of the greedy order's
    multiplications (argmax of the policy at every step, as
    ``order="learned"`` plays it; the game's count is ``ccjax.cost``'s) over
    the graph's best of fwd/rev/Markowitz (``tables.scale``); lower is better.
    ``tables``: the corpus's stacked tables."""
    ids = selection_items(config, items)
    mults = np.asarray(_greedy_mults(config.network, params, tables, jnp.asarray(ids, jnp.int32)))
    scales = np.asarray(tables.scale)[ids]
    return math.exp(float(np.mean(np.log(mults / scales))))


@functools.partial(jax.jit, static_argnums=(0,))
def _greedy_mults(net: NetworkConfig, params, tables: GameTables, graph_ids) -> jax.Array:
    """``(G,)`` multiplications of the greedy game on each of ``graph_ids``.
    A finished game has no legal move: its step changes nothing."""
    def body(states, _):
        logits, _ = mcts.evaluate(net, params, tables, states)
        states = jax.vmap(game.step, (None, 0, 0))(tables, states, jnp.argmax(logits, axis=-1)).state
        return states, None

    final, _ = jax.lax.scan(body, mcts.initial_states(tables, graph_ids), None, length=tables.edges.shape[-1])
    return final.mults


def _save_selected(checkpoint_dir: str, params, iteration: int, score: float) -> None:
    data = flax.serialization.msgpack_serialize({"params": jax.tree_util.tree_map(np.asarray, params),
                                                 "iteration": iteration, "score": score})
    _atomic(os.path.join(checkpoint_dir, SELECTED_FILE), lambda f: f.write(data))


def read_selected(checkpoint_dir: str, template=None) -> Optional[tuple[dict, int, float]]:
    """``(params, iteration, score)`` of the selected network, or None when
    the run has none yet.  A file that is not one (or whose parameters do not
    match ``template``'s layout) raises :class:`CheckpointError` naming it."""
    path = os.path.join(checkpoint_dir, SELECTED_FILE)
    if not os.path.lexists(path):
        return None
    try:
        raw = flax.serialization.msgpack_restore(_read_bytes(path))
        params, iteration, score = raw["params"], raw["iteration"], raw["score"]
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{path} is not a selected network: {e!r}") from e
    if not (_is_count(iteration) and isinstance(score, float) and math.isfinite(score) and score > 0):
        raise CheckpointError(f"{path}: iteration {iteration!r} and score {score!r} are not a selection")
    if template is not None and not _same_layout(template, params):
        raise CheckpointError(f"{path} is not a network of this configuration: its parameters differ in shape or type")
    return params, int(iteration), float(score)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    total = max(config.iterations * config.updates_per_iteration, config.warmup_steps + 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps, total,
                                                  end_value=config.learning_rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                       optax.adamw(schedule, weight_decay=config.weight_decay))


def loss_fn(net: NetworkConfig, value_weight: float, params, tables: GameTables, states, policy, value):
    """Cross-entropy to the search's action weights + weighted squared error
    of the transformed value; returns ``(loss, (policy loss, value loss))``."""
    obs = jax.vmap(game.observe, (None, 0))(tables, states)
    logits, v = network.apply(net, params, obs)
    logp = jax.nn.log_softmax(logits, axis=-1)
    policy_loss = -jnp.mean(jnp.sum(jnp.where(policy > 0, policy * logp, 0.0), axis=-1))
    value_loss = jnp.mean((v - network.value_transform(value)) ** 2)
    return policy_loss + value_weight * value_loss, (policy_loss, value_loss)


def make_update(config: TrainConfig, optimizer):
    """A jitted ``update(params, opt_state, tables, states, policy, value)``."""
    @jax.jit
    def update(params, opt_state, tables, states, policy, value):
        grad_fn = jax.value_and_grad(lambda p: loss_fn(config.network, config.value_weight, p, tables, states,
                                                       policy, value), has_aux=True)
        (loss, (pl, vl)), grads = grad_fn(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, pl, vl

    return update


def _shard_games(states: game.GameState) -> game.GameState:
    """Spread the games over the devices (batch axis), when there are several."""
    devices = jax.devices()
    if len(devices) < 2 or states.graph.shape[0] % len(devices):
        return states
    mesh = jax.sharding.Mesh(np.array(devices), ("games",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("games"))
    return jax.device_put(states, spec)


@dataclasses.dataclass
class Episode:
    """One batch of games: per game the positions played and the total
    cost; ``finished`` is False when a deadline cut the batch short."""

    orders: list[list[int]]
    costs: list[int]
    broken: bool
    finished: bool = True


def self_play(net: NetworkConfig, search: MCTSConfig, params, tables: GameTables, graph_ids: Sequence[int], key,
              replay: Optional[Replay] = None, deadline: Optional[float] = None,
              shrink: bool = True, ladder: Sequence[int] = compact_lib.LADDER) -> Episode:
    """Play one game per entry of ``graph_ids`` to the end with MCTS; push
    every move to ``replay`` when given.  ``deadline`` (a
    ``time.perf_counter()`` value) stops early with ``finished=False``
    (nothing is pushed then).

    With ``shrink`` the board drops its dead positions whenever the games'
    live positions fit a smaller capacity of ``ladder`` (the same game, at
    a fraction of the work per move; training passes the finer
    :data:`~ccjax.search.compact.FINE_LADDER`); moves, orders and replay
    rows are always in the layout of ``tables``.
    """
    capacity = int(np.shape(tables.edges)[-1])
    board = compact_lib.start(tables, mcts.initial_states(tables, graph_ids))
    board = board._replace(states=_shard_games(board.states))
    records = []
    while True:
        if deadline is not None and time.perf_counter() > deadline:
            return Episode([], [], False, finished=False)
        if shrink:
            size = compact_lib.fitting_capacity(int(compact_lib.live(board.tables, board.states).sum(1).max()),
                                                board.positions.shape[1], ladder)
            if size < board.positions.shape[1]:
                board = compact_lib.compact(board, size)
                board = board._replace(tables=jax.tree_util.tree_map(jnp.asarray, board.tables),
                                       states=_shard_games(jax.tree_util.tree_map(jnp.asarray, board.states)))
        key, sub = jax.random.split(key)
        res = mcts.act(net, search, params, board.tables, board.states, sub)
        if not bool(jnp.any(res.active)):
            break
        records.append((board.positions, board.states, res))
        board = board._replace(states=res.states)
    if not records:
        return Episode([[] for _ in graph_ids], [0] * len(graph_ids), False)
    active = np.stack([np.asarray(r.active) for _, _, r in records])  # (T, B)
    rewards = np.stack([np.asarray(r.reward) for _, _, r in records])
    to_go = np.cumsum(rewards[::-1], axis=0)[::-1]
    actions = np.stack([np.take_along_axis(positions, np.asarray(r.action)[:, None], 1)[:, 0]
                        for positions, _, r in records])
    if replay is not None:
        graphs = np.asarray(graph_ids, np.int32)
        for t, (positions, before, res) in enumerate(records):
            m = active[t]
            edges, remaining, weights = compact_lib.expand(positions, capacity, before.edges, before.remaining,
                                                           res.action_weights)
            replay.add(edges[m], remaining[m], graphs[m], weights[m], to_go[t][m])
    orders = [[int(a) for a, on in zip(actions[:, b], active[:, b]) if on] for b in range(len(graph_ids))]
    states = board.states
    return Episode(orders, [int(c) for c in np.asarray(states.mults)], bool(np.any(np.asarray(states.broken))))


def demonstrations(items, tables: GameTables, seconds: float, seed: int, num_vertices: int) -> Replay:
    """Moves of the classical search's order on every corpus graph (see
    :class:`TrainConfig`): one-hot policy targets, exact returns to go."""
    from ccjax.orders.search import search_graph

    rows = []
    for gid, item in enumerate(items):
        order = search_graph(item.graph, method="auto", time_budget=seconds, seed=seed).order
        positions = jnp.asarray(item.encoded.positions_from_order(order), jnp.int32)
        start = game.initial_state(tables, gid)
        states, mults = _trajectory(tables, start, positions)
        to_go = -np.cumsum(np.asarray(mults)[::-1])[::-1] / float(np.asarray(tables.scale)[gid])
        policy = np.zeros((len(order), num_vertices), np.float32)
        policy[np.arange(len(order)), np.asarray(positions)] = 1.0
        rows.append((np.asarray(states.edges), np.asarray(states.remaining), np.full(len(order), gid, np.int32),
                     policy, to_go.astype(np.float32)))
    total = sum(len(r[2]) for r in rows)
    demos = Replay.empty(max(total, 1), num_vertices)
    for r in rows:
        demos.add(*r)
    return demos


@jax.jit
def _trajectory(tables: GameTables, state: game.GameState, actions):
    """The states before each action and the multiplications of each step."""

    def body(s, a):
        r = game.step(tables, s, a)
        return r.state, (s, r.mults)

    _, (states, mults) = jax.lax.scan(body, state, actions)
    return states, mults


def _concat(a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), a, b)


def train(checkpoint_dir: str, config: Optional[TrainConfig] = None,
          progress: Optional[Callable[[dict], None]] = None, max_seconds: Optional[float] = None) -> dict:
    """Run (or resume) training in ``checkpoint_dir`` until ``config.iterations``
    iterations are done or ``max_seconds`` pass; returns the history.

    Without ``config`` the directory's saved configuration is used.  A
    directory holding a different configuration, or a missing, corrupt or
    inconsistent checkpoint file, raises :class:`CheckpointError` before
    anything is written.  Opening the directory removes the temporaries of
    interrupted writes and completes (or discards) an interrupted save.
    """
    os.makedirs(checkpoint_dir, exist_ok=True)
    _remove_stale_temporaries(checkpoint_dir)
    _finish_interrupted_save(checkpoint_dir)
    config = _run_config(checkpoint_dir, config)
    resume = _has_checkpoint(checkpoint_dir, config)

    items = corpus_lib.build(config.train_tasks, config.random_seeds, config.num_vertices, config.num_structures)
    names = [it.name for it in items]
    tables = jax.tree_util.tree_map(jnp.asarray, stack([it.encoded.tables for it in items]))
    optimizer = make_optimizer(config)
    obs0 = game.observe(tables, game.initial_state(tables, 0))
    params = network.init_params(config.network, obs0, config.seed)
    state = TrainState(params, optimizer.init(params), 0, 0, np.asarray(jax.random.PRNGKey(config.seed)), {})
    if resume:
        state, replay, history = _load_checkpoint(checkpoint_dir, config, state, names)
    else:
        replay = Replay.empty(config.replay_capacity, config.num_vertices)
        history = {"iterations": [], "corpus": names, "elapsed": 0.0}
    # Only now that everything read is known good (a longer run records its new iteration count).
    _write_json(os.path.join(checkpoint_dir, CONFIG_FILE), config.to_dict())

    update = make_update(config, optimizer)
    np_rng = np.random.default_rng([config.seed, state.iteration])
    selected = read_selected(checkpoint_dir, state.params)
    selected_score = math.inf if selected is None else selected[2]
    demos = None
    if config.demo_seconds > 0:
        demo_path = os.path.join(checkpoint_dir, DEMO_FILE)
        if os.path.exists(demo_path):
            demos = Replay.load(demo_path, None, config.num_vertices)
            _check_in_corpus(demos, demo_path, len(names), config.num_structures)
        else:
            demos = demonstrations(items, tables, config.demo_seconds, config.seed, config.num_vertices)
            demos.save(demo_path)
        if state.iteration == 0 and state.updates == 0:
            pre = []
            for _ in range(config.pretrain_updates):
                state.params, state.opt_state, loss, pl, vl = update(
                    state.params, state.opt_state, tables, *demos.sample(np_rng, config.batch_size))
                pre.append((float(pl), float(vl)))
                state.updates += 1
            history["pretrain"] = {"updates": len(pre), "samples": demos.size,
                                   "first_policy_loss": pre[0][0] if pre else None,
                                   "last_policy_loss": float(np.mean([p for p, _ in pre[-20:]])) if pre else None}
    n_demo = int(round(config.batch_size * config.demo_fraction)) if demos is not None else 0
    start = time.perf_counter()
    elapsed0 = float(history.get("elapsed", 0.0))
    while state.iteration < config.iterations:
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        t0 = time.perf_counter()
        key = jnp.asarray(state.rng, jnp.uint32)
        key, play_key = jax.random.split(key)
        graph_ids = np_rng.integers(0, len(items), size=config.games_per_iteration)
        ep = self_play(config.network, config.search, state.params, tables, graph_ids, play_key, replay,
                       ladder=compact_lib.FINE_LADDER)
        if ep.broken:
            raise RuntimeError("the vertex game read an unreachable table entry (a bug in the tables)")
        ratios = []
        for gid, order, cost in zip(graph_ids, ep.orders, ep.costs):
            name = names[int(gid)]
            scale = float(np.asarray(tables.scale)[int(gid)])
            ratios.append(cost / scale)
            if name not in state.best or cost < state.best[name][0]:
                state.best[name] = [int(cost), [int(p) for p in order]]
        losses = []
        for _ in range(config.updates_per_iteration):
            batch = replay.sample(np_rng, config.batch_size - n_demo)
            if n_demo:
                batch = _concat(batch, demos.sample(np_rng, n_demo))
            state.params, state.opt_state, loss, pl, vl = update(state.params, state.opt_state, tables, *batch)
            losses.append((float(loss), float(pl), float(vl)))
            state.updates += 1
        state.rng = np.asarray(key)
        state.iteration += 1
        loss, pl, vl = np.mean(np.asarray(losses), axis=0)
        record = {"iteration": state.iteration, "loss": float(loss), "policy_loss": float(pl),
                  "value_loss": float(vl), "mean_ratio": float(np.mean(ratios)),
                  "seconds": time.perf_counter() - t0, "replay": replay.size}
        if state.iteration % SELECT_EVERY == 0 or state.iteration == config.iterations:
            record["selection_score"] = score = selection_score(config, state.params, items, tables)
            if score < selected_score:
                _save_selected(checkpoint_dir, state.params, state.iteration, score)
                selected_score = score
        history["iterations"].append(record)
        history["elapsed"] = elapsed0 + time.perf_counter() - start
        history["best"] = state.best
        replay.iteration = state.iteration
        _save(checkpoint_dir, state, replay, history)
        if progress is not None:
            progress({**record, "best": {k: v[0] for k, v in state.best.items()}})
    return history


def export_policy(checkpoint_dir: str, path: str, selected: bool = True) -> dict:
    """Write the run's network as a policy file (see :mod:`ccjax.search.policy`):
    the selected one (best :func:`selection_score`, see :data:`SELECTED_FILE`)
    when ``selected`` and the run has one, else the last iteration's.
    Returns the file's ``info`` (``network_iteration`` says which)."""
    from ccjax.search.policy import save_policy

    config = read_config(checkpoint_dir)
    state_path, history_path = (os.path.join(checkpoint_dir, n) for n in (STATE_FILE, HISTORY_FILE))
    if config is None:
        raise CheckpointError(f"{os.path.join(checkpoint_dir, CONFIG_FILE)} missing: {checkpoint_dir} holds no run")
    data = _read_bytes(state_path)
    try:
        raw = flax.serialization.msgpack_restore(data)
        params, iteration = raw["params"], raw["iteration"]
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{state_path} is not a training state: {e!r}") from e
    history = _read_history(history_path)
    if not _is_count(iteration) or iteration != len(history["iterations"]):
        raise CheckpointError(f"{state_path} is at iteration {iteration!r} but {history_path} records "
                              f"{len(history['iterations'])}: the files do not belong together")
    info = {"iterations": len(history["iterations"]), "train_seconds": history["elapsed"],
            "corpus": history.get("corpus"), "num_vertices": config.num_vertices, "network_iteration": int(iteration)}
    chosen = read_selected(checkpoint_dir, params) if selected else None
    if chosen is not None:
        params, info["network_iteration"], info["selection_score"] = chosen
    save_policy(path, config.network, params, config.search, info)
    return info
