"""Self-play training of the policy-value network (AlphaZero style).

Each iteration plays a batch of games with Gumbel MuZero
(:func:`ccjax.search.mcts.act`) on graphs drawn from the corpus, stores
every move (state, the search's action weights, the return to go) in a
replay buffer, and takes several AdamW steps on minibatches drawn from it:
cross-entropy to the action weights plus the squared error of the
transformed value.

Checkpoints (a directory) are written after every iteration, atomically
(temporary file + rename), in safe formats: the parameters and optimiser
state with ``flax.serialization`` (msgpack), the replay buffer as ``.npz``
(loaded with ``allow_pickle=False``), the history and config as JSON.  A
run started again on the same directory resumes after the last finished
iteration; a corrupt file raises :class:`CheckpointError` naming it
rather than silently starting over.

When several devices exist the games of an iteration are sharded across
them (``jax.sharding``); parameters and tables are replicated.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; ``ValueError`` for anything else."""
        try:
            d = dict(d)
            d["network"] = NetworkConfig(**d["network"])
            d["search"] = MCTSConfig(**d["search"])
            for k in ("train_tasks", "random_seeds"):
                d[k] = tuple(d[k])
            return cls(**d)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a training configuration: {e!r}") from e


# ---------------------------------------------------------------------------
# Replay buffer
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Replay:
    """A ring buffer of moves.  ``size`` entries are valid, ``next`` is the
    slot written next; arrays have ``capacity`` rows."""

    edges: np.ndarray  # (C, N, N) int16
    remaining: np.ndarray  # (C, N) bool
    graph: np.ndarray  # (C,) int32
    policy: np.ndarray  # (C, N) float32
    value: np.ndarray  # (C,) float32, return to go
    size: int = 0
    next: int = 0

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
        _atomic(path, lambda f: np.savez(f, edges=self.edges[:self.size], remaining=self.remaining[:self.size],
                                         graph=self.graph[:self.size], policy=self.policy[:self.size],
                                         value=self.value[:self.size], next=np.int64(self.next)))

    @classmethod
    def load(cls, path: str, capacity: Optional[int], n: int) -> "Replay":
        """Read a saved buffer; ``capacity`` None means exactly its rows."""
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in ("edges", "remaining", "graph", "policy", "value", "next")}
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
            raise CheckpointError(f"replay buffer {path} is unreadable: {e}") from e
        size = len(data["graph"])
        capacity = max(size, 1) if capacity is None else capacity
        if size > capacity or data["edges"].shape[1:] != (n, n):
            raise CheckpointError(f"replay buffer {path} does not match the configuration")
        r = cls.empty(capacity, n)
        r.edges[:size], r.remaining[:size], r.graph[:size] = data["edges"], data["remaining"], data["graph"]
        r.policy[:size], r.value[:size] = data["policy"], data["value"]
        r.size, r.next = size, int(data["next"]) % capacity
        return r


# ---------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------


def _atomic(path: str, write: Callable) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: str, obj) -> None:
    _atomic(path, lambda f: f.write(json.dumps(obj, indent=1, sort_keys=True).encode()))


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable: {e}") from e


STATE_FILE, REPLAY_FILE, HISTORY_FILE, CONFIG_FILE = "state.msgpack", "replay.npz", "history.json", "config.json"
DEMO_FILE = "demos.npz"


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
    return TrainState(d["params"], d["opt_state"], int(d["iteration"]), int(d["updates"]), np.asarray(d["rng"]),
                      {})


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
              replay: Optional[Replay] = None, deadline: Optional[float] = None) -> Episode:
    """Play one game per entry of ``graph_ids`` to the end with MCTS; push
    every move to ``replay`` when given.  ``deadline`` (a
    ``time.perf_counter()`` value) stops early with ``finished=False``
    (nothing is pushed then)."""
    states = _shard_games(mcts.initial_states(tables, graph_ids))
    records = []
    while True:
        if deadline is not None and time.perf_counter() > deadline:
            return Episode([], [], False, finished=False)
        key, sub = jax.random.split(key)
        before = states
        res = mcts.act(net, search, params, tables, states, sub)
        if not bool(jnp.any(res.active)):
            break
        records.append((before, res))
        states = res.states
    if not records:
        return Episode([[] for _ in graph_ids], [0] * len(graph_ids), False)
    active = np.stack([np.asarray(r.active) for _, r in records])  # (T, B)
    rewards = np.stack([np.asarray(r.reward) for _, r in records])
    to_go = np.cumsum(rewards[::-1], axis=0)[::-1]
    actions = np.stack([np.asarray(r.action) for _, r in records])
    if replay is not None:
        for t, (before, res) in enumerate(records):
            m = active[t]
            replay.add(np.asarray(before.edges)[m], np.asarray(before.remaining)[m], np.asarray(before.graph)[m],
                       np.asarray(res.action_weights)[m], to_go[t][m])
    orders = [[int(a) for a, on in zip(actions[:, b], active[:, b]) if on] for b in range(len(graph_ids))]
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
    directory holding a different configuration raises
    :class:`CheckpointError`.
    """
    os.makedirs(checkpoint_dir, exist_ok=True)
    cfg_path = os.path.join(checkpoint_dir, CONFIG_FILE)
    if os.path.exists(cfg_path):
        try:
            saved = TrainConfig.from_dict(_read_json(cfg_path))
        except ValueError as e:
            raise CheckpointError(f"{cfg_path}: {e}") from e
        # Only the number of iterations may change on resume (to train longer).
        if config is not None and dataclasses.replace(config, iterations=saved.iterations) != saved:
            raise CheckpointError(f"{checkpoint_dir} holds a run with another configuration; "
                                  f"use a new directory or the same settings")
        config = saved if config is None else config
    config = TrainConfig() if config is None else config
    _write_json(cfg_path, config.to_dict())

    items = corpus_lib.build(config.train_tasks, config.random_seeds, config.num_vertices, config.num_structures)
    names = [it.name for it in items]
    tables = jax.tree_util.tree_map(jnp.asarray, stack([it.encoded.tables for it in items]))
    optimizer = make_optimizer(config)
    obs0 = game.observe(tables, game.initial_state(tables, 0))
    params = network.init_params(config.network, obs0, config.seed)
    state = TrainState(params, optimizer.init(params), 0, 0, np.asarray(jax.random.PRNGKey(config.seed)), {})
    replay = Replay.empty(config.replay_capacity, config.num_vertices)
    history: dict = {"iterations": [], "corpus": names, "elapsed": 0.0}

    state_path = os.path.join(checkpoint_dir, STATE_FILE)
    if os.path.exists(state_path):
        with open(state_path, "rb") as f:
            state = _state_from_bytes(state, f.read(), state_path)
        replay = Replay.load(os.path.join(checkpoint_dir, REPLAY_FILE), config.replay_capacity, config.num_vertices)
        history_path = os.path.join(checkpoint_dir, HISTORY_FILE)
        history = _read_json(history_path)
        if not isinstance(history, dict) or not isinstance(history.get("iterations"), list):
            raise CheckpointError(f"{history_path} is not a training history")
        if history.get("corpus") != names:
            raise CheckpointError(f"{checkpoint_dir}: the corpus changed since the checkpoint was written")
        # A run stopped between writing the history and the state: the state decides.
        history["iterations"] = history["iterations"][:state.iteration]
        state.best = history.get("best", {})

    update = make_update(config, optimizer)
    np_rng = np.random.default_rng([config.seed, state.iteration])
    demos = None
    if config.demo_seconds > 0:
        demo_path = os.path.join(checkpoint_dir, DEMO_FILE)
        if os.path.exists(demo_path):
            demos = Replay.load(demo_path, None, config.num_vertices)
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
        ep = self_play(config.network, config.search, state.params, tables, graph_ids, play_key, replay)
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
        history["iterations"].append(record)
        history["elapsed"] = elapsed0 + time.perf_counter() - start
        history["best"] = state.best
        _save(checkpoint_dir, state, replay, history)
        if progress is not None:
            progress({**record, "best": {k: v[0] for k, v in state.best.items()}})
    return history


def _save(checkpoint_dir: str, state: TrainState, replay: Replay, history: dict) -> None:
    """Replay and history first, the state last: the state's iteration
    count is what a resumed run trusts."""
    replay.save(os.path.join(checkpoint_dir, REPLAY_FILE))
    _write_json(os.path.join(checkpoint_dir, HISTORY_FILE), history)
    data = _state_bytes(state)
    _atomic(os.path.join(checkpoint_dir, STATE_FILE), lambda f: f.write(data))


def export_policy(checkpoint_dir: str, path: str) -> None:
    """Write the checkpoint's network as a policy file (see :mod:`ccjax.search.policy`)."""
    from ccjax.search.policy import save_policy

    try:
        config = TrainConfig.from_dict(_read_json(os.path.join(checkpoint_dir, CONFIG_FILE)))
    except ValueError as e:
        raise CheckpointError(f"{checkpoint_dir}: {e}") from e
    with open(os.path.join(checkpoint_dir, STATE_FILE), "rb") as f:
        raw = flax.serialization.msgpack_restore(f.read())
    history = _read_json(os.path.join(checkpoint_dir, HISTORY_FILE))
    save_policy(path, config.network, raw["params"], config.search,
                {"iterations": len(history["iterations"]), "train_seconds": history["elapsed"],
                 "corpus": history["corpus"], "num_vertices": config.num_vertices})
