"""Data safety: no file on disk, however damaged, turns into a crash or a
silently wrong result.

* The order cache: every unreadable, corrupt or foreign entry is a
  ``CacheWarning`` naming the file plus a miss, through the public API too,
  and the next write rebuilds it atomically without touching other entries.
* Training checkpoints: every bad or missing file is a ``CheckpointError``
  naming it, a bad configuration names the field, stale temporaries are
  cleaned, and a run killed anywhere resumes from exactly the last finished
  iteration.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax.cache import ENV_VAR, CacheWarning, OrderCache, graph_key  # noqa: E402
from ccjax.eliminate import plan_elimination  # noqa: E402
from ccjax.orders.heuristics import HEURISTICS  # noqa: E402

# ---------------------------------------------------------------------------
# Order cache
# ---------------------------------------------------------------------------


def _fun(x):
    y = jnp.sin(x) * jnp.cos(x).sum()
    return jnp.tanh(y) + y * x


X = jnp.linspace(0.1, 1.0, 3)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv(ENV_VAR, str(d))
    return d


def _record(g, **changes) -> dict:
    order = HEURISTICS["rev"](g)
    rec = {"format": "ccjax-order-cache", "version": 1, "key": graph_key(g), "fingerprint": g.fingerprint,
           "diff_leaves": list(g.diff_leaves), "order": list(order),
           "cost": plan_elimination(g, order).report.mults}
    return {**rec, **changes}


def _json(**changes):
    return lambda g: json.dumps(_record(g, **changes)).encode()


#: name -> the bytes of a damaged entry for graph ``g``.
CORRUPT = {
    "invalid utf-8": lambda g: b'{"format": "\xff\xfe\xc3\x28"}',
    "utf-8 cut mid-character": lambda g: json.dumps(_record(g, label="\u00e9t\u00e9")).encode()[:-4],
    "deep nesting": lambda g: b"[" * 100_000,
    "deep nesting closed": lambda g: b"[" * 50_000 + b"]" * 50_000,
    "truncated": lambda g: json.dumps(_record(g)).encode()[:40],
    "empty": lambda g: b"",
    "not an object": lambda g: b"[1, 2, 3]",
    "order of strings": _json(order=["a", "b"]),
    "order a string": _json(order="12345"),
    "order of floats": lambda g: json.dumps(_record(g, order=[v + 0.5 for v in _record(g)["order"]])).encode(),
    "order of bools": lambda g: json.dumps(_record(g, order=[True] * len(g.eliminable))).encode(),
    "cost a string": _json(cost="12"),
    "created overflows": lambda g: json.dumps(_record(g, created=10 ** 400)).encode(),
    "huge integer": lambda g: json.dumps(_record(g)).encode()[:-1] + b', "n_eliminable": ' + b"9" * 5000 + b"}",
    "diff_leaves a number": _json(diff_leaves=0),
    # (a different stored fingerprint is no damage: the key leaves dtypes out, so a
    # float32 search serves a float64 graph; the fingerprint is only displayed)
    "other argnums": _json(diff_leaves=[1]),
    "wrong key": _json(key="something-else"),
    "key a list": _json(key=[1, 2]),
    "wrong version": _json(version=2),
    "order missing a vertex": lambda g: json.dumps(_record(g, order=_record(g)["order"][:-1])).encode(),
    "order with a duplicate": lambda g: json.dumps(
        _record(g, order=_record(g)["order"][:-1] + _record(g)["order"][:1])).encode(),
    "order of unknown vertices": lambda g: json.dumps(_record(g, order=[10 ** 9] * len(g.eliminable))).encode(),
    "impossible lower bound": lambda g: json.dumps(_record(g, lower_bound=10 ** 9)).encode(),
    "negative lower bound": _json(lower_bound=-1),
}


def _entry_path(store: OrderCache, g):
    return store.directory / f"{graph_key(g)}.json"


def _plant(store: OrderCache, g, data: bytes):
    store.directory.mkdir(parents=True, exist_ok=True)
    _entry_path(store, g).write_bytes(data)


def _other_entry(store: OrderCache):
    """A valid entry of another graph, which no repair may touch."""
    other = ccjax.graph(lambda x: jnp.exp(jnp.sin(x)) * x, X)
    store.put(other, HEURISTICS["fwd"](other), label="keep me")
    return other, _entry_path(store, other).read_bytes()


@pytest.mark.parametrize("damage", sorted(CORRUPT))
def test_corrupt_entry_is_a_named_warning_and_a_miss(damage, tmp_path):
    g = ccjax.graph(_fun, X)
    store = OrderCache(tmp_path)
    other, other_bytes = _other_entry(store)
    _plant(store, g, CORRUPT[damage](g))
    path = _entry_path(store, g)
    with pytest.warns(CacheWarning, match=str(path).replace(".", r"\.")):
        assert store.get(g) is None
    assert graph_key(other) in [e.key for e in store.entries()]  # listing neither warns nor raises
    best = HEURISTICS["markowitz"](g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        stored = store.put(g, best, label="rebuilt")
    assert stored is not None and stored.order == tuple(best)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.get(g).order == tuple(best)
        assert store.get(other).label == "keep me"
    assert _entry_path(store, other).read_bytes() == other_bytes
    assert sorted(p.suffix for p in store.directory.iterdir()) == [".json", ".json", ".lock", ".lock"]


def test_directory_in_place_of_an_entry(tmp_path):
    g = ccjax.graph(_fun, X)
    store = OrderCache(tmp_path)
    _entry_path(store, g).mkdir(parents=True)
    with pytest.warns(CacheWarning, match="cannot read"):
        assert store.get(g) is None
    assert store.entries() == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        assert store.put(g, HEURISTICS["rev"](g)) is not None  # the empty directory is replaced
    assert _entry_path(store, g).is_file()
    assert store.get(g).order == tuple(HEURISTICS["rev"](g))


def test_directory_with_content_in_place_of_an_entry_is_kept(tmp_path):
    g = ccjax.graph(_fun, X)
    store = OrderCache(tmp_path)
    (_entry_path(store, g) / "user-file").mkdir(parents=True)
    with pytest.warns(CacheWarning):
        assert store.put(g, HEURISTICS["rev"](g)) is None
    assert (_entry_path(store, g) / "user-file").is_dir()
    assert [p.name for p in store.directory.iterdir() if ".tmp" in p.name] == []


def test_unreadable_entry(tmp_path, monkeypatch):
    """A permission error on read (simulated: the tests may run as root)."""
    g = ccjax.graph(_fun, X)
    store = OrderCache(tmp_path)
    store.put(g, HEURISTICS["fwd"](g))
    path = _entry_path(store, g)
    read_bytes = type(path).read_bytes

    def denied(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(type(path), "read_bytes", denied)
    with pytest.warns(CacheWarning, match="cannot read"):
        assert store.get(g) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        assert store.put(g, HEURISTICS["rev"](g)).order == tuple(HEURISTICS["rev"](g))
    monkeypatch.undo()
    assert store.get(g).order == tuple(HEURISTICS["rev"](g))


def _assert_jacobian(fun):
    got = ccjax.jacve(fun, order="auto")(X)
    np.testing.assert_allclose(got, jax.jacrev(fun)(X), rtol=1e-12, atol=1e-12)


API_DAMAGE = ["invalid utf-8", "deep nesting", "order of unknown vertices", "truncated"]
API_CALLS = ["jacve", "cost", "search_order"]


def _distinct_fun(index: int):
    """A function of its own structure, so that no graph or plan kept in
    memory by an earlier test answers without reading the cache."""

    def fun(x):
        y = _fun(x)
        for _ in range(index + 1):
            y = jnp.sin(y)
        return y

    return fun


@pytest.mark.parametrize("call", API_CALLS)
@pytest.mark.parametrize("damage", API_DAMAGE)
def test_public_api_survives_a_corrupt_entry(damage, call, cache_dir):
    """``jacve(order="auto")``, ``cost`` and ``search_order`` warn naming
    the file, fall back to the heuristics, and the search rewrites it."""
    fun = _distinct_fun(API_DAMAGE.index(damage) * len(API_CALLS) + API_CALLS.index(call))
    g = ccjax.graph(fun, X)
    store = OrderCache()
    _plant(store, g, CORRUPT[damage](g))
    quick = min(plan_elimination(g, HEURISTICS[h](g)).report.mults for h in ("fwd", "rev", "markowitz"))
    with pytest.warns(CacheWarning, match=graph_key(g)):
        if call == "jacve":
            _assert_jacobian(fun)
        elif call == "cost":
            assert ccjax.cost(fun, X, order="auto") <= quick
        else:
            assert ccjax.search_order(fun, X, method="beam", time_budget=0.2).cost <= quick
    if call != "search_order":
        with pytest.warns(CacheWarning, match=graph_key(g)):
            ccjax.search_order(fun, X, method="beam", time_budget=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entry = store.get(g)  # rewritten
        assert entry.cost <= quick
        assert ccjax.cost(fun, X, order="auto") == entry.cost
        _assert_jacobian(fun)


def test_search_order_with_explicit_cache_rewrites_a_corrupt_entry(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "off")  # only the explicit cache is used

    def fun(x):
        return _fun(x) + 1.0

    g = ccjax.graph(fun, X)
    store = OrderCache(tmp_path)
    other, other_bytes = _other_entry(store)
    _plant(store, g, b"\xff" + b"[" * 100_000)
    with pytest.warns(CacheWarning, match=graph_key(g)):
        r = ccjax.search_order(fun, X, method="beam", time_budget=0.2, cache=store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = store.get(g)
    assert e.order == r.order and e.cost == r.cost
    assert json.loads(_entry_path(store, g).read_text())["order"] == list(r.order)
    assert _entry_path(store, other).read_bytes() == other_bytes
    assert [p.name for p in store.directory.iterdir() if ".tmp" in p.name] == []


# ---------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------

from ccjax.search import train  # noqa: E402
from ccjax.search.mcts import MCTSConfig  # noqa: E402
from ccjax.search.network import NetworkConfig  # noqa: E402
from ccjax.search.train import CheckpointError, Replay, TrainConfig  # noqa: E402

# The tiny run of tests/test_train.py.
TINY = TrainConfig(iterations=2, games_per_iteration=2, num_vertices=64, num_structures=64, train_tasks=("g",),
                   random_seeds=(), replay_capacity=512, batch_size=8, updates_per_iteration=2, warmup_steps=1,
                   network=NetworkConfig(dim=16, heads=2, layers=1, edge_dim=4),
                   search=MCTSConfig(num_simulations=2, max_num_considered_actions=2))
ONE = dataclasses.replace(TINY, iterations=1)
FILES = (train.STATE_FILE, train.REPLAY_FILE, train.HISTORY_FILE, train.CONFIG_FILE)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``one``: a checkpoint after iteration 1 of TINY (copy it before
    changing it); ``two``: that checkpoint trained on, uninterrupted, to
    iteration 2, the reference for every interrupted run."""
    root = tmp_path_factory.mktemp("runs")
    one, two = str(root / "one"), str(root / "two")
    train.train(one, ONE)
    shutil.copytree(one, two)
    train.train(two, TINY)
    return {"one": one, "two": two}


def _copy(src: str, tmp_path) -> str:
    d = str(tmp_path / "run")
    shutil.copytree(src, d)
    return d


def _contents(d: str) -> dict:
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))}


def _snapshot(d: str) -> dict:
    """What a resume restores, without the wall-clock timings."""
    with open(os.path.join(d, train.STATE_FILE), "rb") as f:
        state = flax.serialization.msgpack_restore(f.read())
    history = json.load(open(os.path.join(d, train.HISTORY_FILE)))
    history.pop("elapsed")
    for record in history["iterations"]:
        record.pop("seconds")
    replay = Replay.load(os.path.join(d, train.REPLAY_FILE), TINY.replay_capacity, TINY.num_vertices)
    return {"state": state, "history": history,
            "replay": {k: getattr(replay, k)[:replay.size] for k in ("edges", "remaining", "graph", "policy",
                                                                      "value")}
            | {"size": replay.size, "next": replay.next, "iteration": replay.iteration}}


def _assert_same(a: dict, b: dict) -> None:
    flat_a, tree_a = jax.tree_util.tree_flatten(a)
    flat_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_array_equal(x, y)


def _assert_untouched(d: str, before: dict) -> None:
    assert _contents(d) == before


# -- missing files ------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_missing_checkpoint_file_is_named_and_nothing_is_overwritten(runs, tmp_path, name):
    """Starting over beside the other files would overwrite the history and
    replay of the finished iterations."""
    d = _copy(runs["two"], tmp_path)
    os.unlink(os.path.join(d, name))
    before = _contents(d)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + " missing"):
        train.train(d, dataclasses.replace(TINY, iterations=3))
    _assert_untouched(d, before)


def test_directory_in_place_of_the_state(runs, tmp_path):
    d = _copy(runs["two"], tmp_path)
    os.unlink(os.path.join(d, train.STATE_FILE))
    os.mkdir(os.path.join(d, train.STATE_FILE))
    with pytest.raises(CheckpointError, match=r"state\.msgpack is unreadable"):
        train.train(d, TINY)


def test_export_names_a_missing_state(runs, tmp_path):
    d = _copy(runs["two"], tmp_path)
    os.unlink(os.path.join(d, train.STATE_FILE))
    with pytest.raises(CheckpointError, match=r"state\.msgpack"):
        train.export_policy(d, str(tmp_path / "p.msgpack"))


# -- tampered iteration numbers and other values --------------------------------


def _edit_state(d: str, **changes) -> None:
    path = os.path.join(d, train.STATE_FILE)
    with open(path, "rb") as f:
        state = flax.serialization.msgpack_restore(f.read())
    state.update(changes)
    with open(path, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(state))


def _edit_history(d: str, edit) -> None:
    path = os.path.join(d, train.HISTORY_FILE)
    history = json.load(open(path))
    edit(history)
    json.dump(history, open(path, "w"))


def _edit_replay(d: str, drop=(), **changes) -> None:
    path = os.path.join(d, train.REPLAY_FILE)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k not in drop}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _set_record(i: int, **changes):
    return lambda h: h["iterations"][i].update(changes)


TAMPERED = {
    "state iteration negative": (train.STATE_FILE, lambda d: _edit_state(d, iteration=-1)),
    "state iteration beyond the history": (train.STATE_FILE, lambda d: _edit_state(d, iteration=5)),
    "state iteration behind the history": (r"state\.msgpack is at iteration 1 but .*history\.json records 2",
                                           lambda d: _edit_state(d, iteration=1)),
    "state iteration a string": (train.STATE_FILE, lambda d: _edit_state(d, iteration="2")),
    "state iteration a float": (train.STATE_FILE, lambda d: _edit_state(d, iteration=2.5)),
    "state iteration a bool": (train.STATE_FILE, lambda d: _edit_state(d, iteration=True)),
    "state updates": (train.STATE_FILE, lambda d: _edit_state(d, updates=3)),
    "state rng": (train.STATE_FILE, lambda d: _edit_state(d, rng=np.zeros(3, np.uint32))),
    "state params reshaped": (train.STATE_FILE, lambda d: _edit_state(d, params=jax.tree_util.tree_map(
        lambda x: np.zeros((2,) + np.shape(x), np.asarray(x).dtype), flax.serialization.msgpack_restore(
            open(os.path.join(d, train.STATE_FILE), "rb").read())["params"]))),
    "history record renumbered": (train.HISTORY_FILE, lambda d: _edit_history(d, _set_record(1, iteration=5))),
    "history record number a string": (train.HISTORY_FILE,
                                       lambda d: _edit_history(d, _set_record(0, iteration="1"))),
    "history record not an object": (train.HISTORY_FILE,
                                      lambda d: _edit_history(d, lambda h: h["iterations"].__setitem__(0, 1))),
    "history one record short": (train.HISTORY_FILE, lambda d: _edit_history(d, lambda h: h["iterations"].pop())),
    "history one record more": (train.HISTORY_FILE, lambda d: _edit_history(
        d, lambda h: h["iterations"].append({**h["iterations"][-1], "iteration": 3}))),
    "history elapsed a string": (train.HISTORY_FILE, lambda d: _edit_history(d, lambda h: h.update(elapsed="x"))),
    "history best malformed": (train.HISTORY_FILE, lambda d: _edit_history(d, lambda h: h.update(best={"g": 3}))),
    "history best of another graph": (train.HISTORY_FILE, lambda d: _edit_history(
        d, lambda h: h.update(best={"nope": [1, [0]]}))),
    "history pretrain malformed": (train.HISTORY_FILE, lambda d: _edit_history(
        d, lambda h: h.update(pretrain={"updates": -4}))),
    "history deeply nested": (train.HISTORY_FILE, lambda d: open(os.path.join(d, train.HISTORY_FILE), "w").write(
        "[" * 100_000)),
    "history invalid utf-8": (train.HISTORY_FILE, lambda d: open(os.path.join(d, train.HISTORY_FILE), "wb").write(
        b'{"iterations": "\xff\xfe"}')),
    "replay of another iteration": (train.REPLAY_FILE, lambda d: _edit_replay(d, iteration=np.int64(1))),
    "replay without an iteration": (train.REPLAY_FILE, lambda d: _edit_replay(d, drop=("iteration",))),
    "replay iteration negative": (train.REPLAY_FILE, lambda d: _edit_replay(d, iteration=np.int64(-1))),
    "replay graph outside the corpus": (train.REPLAY_FILE, lambda d: _edit_replay(
        d, graph=np.full(2 * 2 * 42, 7, np.int32))),
    "replay edge structure outside the corpus": (train.REPLAY_FILE, lambda d: _edit_replay(
        d, edges=np.full((2 * 2 * 42, 64, 64), 999, np.int16))),
    "replay nan policy": (train.REPLAY_FILE, lambda d: _edit_replay(
        d, policy=np.full((2 * 2 * 42, 64), np.nan, np.float32))),
    "replay float edges": (train.REPLAY_FILE, lambda d: _edit_replay(
        d, edges=np.zeros((2 * 2 * 42, 64, 64), np.float64))),
    "replay impossible next slot": (train.REPLAY_FILE, lambda d: _edit_replay(d, next=np.int64(3))),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_checkpoint_is_named(runs, tmp_path, case):
    match, tamper = TAMPERED[case]
    d = _copy(runs["two"], tmp_path)
    tamper(d)
    before = _contents(d)
    with pytest.raises(CheckpointError, match=match.replace(".", r"\.") if match in FILES else match):
        train.train(d, dataclasses.replace(TINY, iterations=3))
    _assert_untouched(d, before)


# -- configurations ---------------------------------------------------------------


@pytest.mark.parametrize("changes, error, field", [
    ({"batch_size": "8"}, TypeError, "batch_size"), ({"batch_size": 0}, ValueError, "batch_size"),
    ({"games_per_iteration": -1}, ValueError, "games_per_iteration"), ({"iterations": 2.0}, TypeError, "iterations"),
    ({"replay_capacity": True}, TypeError, "replay_capacity"), ({"seed": -1}, ValueError, "seed"),
    ({"learning_rate": 0.0}, ValueError, "learning_rate"), ({"learning_rate": float("nan")}, ValueError,
                                                             "learning_rate"),
    ({"weight_decay": -1e-3}, ValueError, "weight_decay"), ({"demo_fraction": 1.0}, ValueError, "demo_fraction"),
    ({"train_tasks": "g"}, TypeError, "train_tasks"), ({"train_tasks": ("g", 3)}, TypeError, r"train_tasks\[1\]"),
    ({"random_seeds": (1, -2)}, ValueError, r"random_seeds\[1\]"),
    ({"train_tasks": (), "random_seeds": ()}, ValueError, "nothing to train on"),
    ({"network": NetworkConfig(dim=0)}, ValueError, "network.dim"),
    ({"network": NetworkConfig(dim=10, heads=4)}, ValueError, "network.heads"),
    ({"network": {"dim": 16}}, TypeError, "network"),
    ({"search": MCTSConfig(num_simulations=-2)}, ValueError, "search.num_simulations"),
    ({"search": MCTSConfig(gumbel_scale="1")}, TypeError, "search.gumbel_scale")])
def test_bad_config_in_code_names_the_field(changes, error, field):
    with pytest.raises(error, match=field):
        dataclasses.replace(TINY, **changes)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(batch_size="8"), "batch_size"), (lambda d: d.update(no_such_setting=1), "no_such_setting"),
    (lambda d: d.pop("seed"), "missing settings seed"), (lambda d: d["network"].update(width=3), "network.width"),
    (lambda d: d["search"].pop("gumbel_scale"), "search.gumbel_scale"), (lambda d: d.update(network=5), "network"),
    (lambda d: d.update(train_tasks="RoeFlux_1d"), "train_tasks"), (lambda d: d.update(num_vertices=-64),
                                                                     "num_vertices")])
def test_bad_config_dict_names_the_field(edit, field):
    d = TINY.to_dict()
    edit(d)
    with pytest.raises(ValueError, match=field):
        TrainConfig.from_dict(d)
    assert TrainConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY


def test_updated_merges_partial_settings_and_validates():
    cfg = TINY.updated({"batch_size": 4, "network": {"dim": 32}})
    assert cfg.batch_size == 4 and cfg.network == NetworkConfig(dim=32, heads=2, layers=1, edge_dim=4)
    for settings, field in (({"width": 3}, "unknown settings width"), ({"network": {"width": 3}}, "network.width"),
                            ({"batch_size": "4"}, "batch_size"), ([1, 2], "JSON object")):
        with pytest.raises(ValueError, match=field):
            TINY.updated(settings)


@pytest.mark.parametrize("content, field", [
    (lambda d: json.dumps({**d, "batch_size": "8"}), "batch_size"),
    (lambda d: json.dumps({**d, "games_per_iteration": -2}), "games_per_iteration"),
    (lambda d: json.dumps({**d, "surprise": 1}), "surprise"),
    (lambda d: "[" * 100_000, "RecursionError"), (lambda d: b"\xff\xfe", "UnicodeDecodeError")])
def test_bad_saved_config_is_named(runs, tmp_path, content, field):
    d = _copy(runs["two"], tmp_path)
    data = content(TINY.to_dict())
    with open(os.path.join(d, train.CONFIG_FILE), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    before = _contents(d)
    for config in (None, TINY):
        with pytest.raises(CheckpointError, match=rf"config\.json.*{field}"):
            train.train(d, config)
        with pytest.raises(CheckpointError, match=r"config\.json"):
            train.read_config(d)
    _assert_untouched(d, before)


# -- temporaries of interrupted writes ----------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed(runs, tmp_path):
    d = _copy(runs["two"], tmp_path)
    dead, own, live = _dead_pid(), os.getpid(), os.getppid()
    names = {"dead": f"{train.STATE_FILE}.tmp-{dead}", "own": f"{train.REPLAY_FILE}.next.tmp-{own}",
             "live": f"{train.HISTORY_FILE}.tmp-{live}", "other": "notes.tmp-abc"}
    for name in names.values():
        with open(os.path.join(d, name), "wb") as f:
            f.write(b"half a file")
    before = _snapshot(d)
    history = train.train(d, TINY)  # nothing left to do: only opens the run
    assert len(history["iterations"]) == 2
    left = set(os.listdir(d))
    assert names["dead"] not in left and names["own"] not in left
    assert names["live"] in left and names["other"] in left  # a running writer's, and not ours
    _assert_same(_snapshot(d), before)


# -- kills -------------------------------------------------------------------------


class Killed(Exception):
    """Stands for the process dying at that point."""


# Each ``_kill_*`` arranges the kill and returns the progress callback to train with.


def _kill_after_self_play(monkeypatch):
    real = train.self_play

    def self_play(*args, **kwargs):
        real(*args, **kwargs)  # the moves are in the replay buffer now
        raise Killed

    monkeypatch.setattr(train, "self_play", self_play)
    return None


def _kill_after_the_updates(monkeypatch):
    real = train.make_update

    def make_update(config, optimizer):
        update, calls = real(config, optimizer), []

        def counted(*args):
            out = update(*args)
            calls.append(1)
            if len(calls) == config.updates_per_iteration:
                raise Killed
            return out

        return counted

    monkeypatch.setattr(train, "make_update", make_update)
    return None


def _kill_writing(monkeypatch, name: str):
    """Die half-way through writing ``name`` (its temporary is left behind)."""
    real = train._atomic

    def atomic(path, write):
        if os.path.basename(path) != name:
            return real(path, write)

        def half(f):
            f.write(b"half")
            raise Killed

        real(path, half)

    monkeypatch.setattr(train, "_atomic", atomic)
    return None


def _kill_before_the_history(monkeypatch):
    """Die between writing the replay and the history of a save, whatever
    the file names."""

    real = train._write_json

    def write_json(path, obj):
        if os.path.basename(path).startswith(train.HISTORY_FILE):
            raise Killed
        real(path, obj)

    monkeypatch.setattr(train, "_write_json", write_json)
    return None


def _kill_before_the_state(monkeypatch):
    """Die between writing the history and the state of a save."""

    def state_bytes(state):
        raise Killed

    monkeypatch.setattr(train, "_state_bytes", state_bytes)
    return None


def _kill_before_moving(monkeypatch):
    def publish(checkpoint_dir):
        raise Killed

    monkeypatch.setattr(train, "_publish", publish)
    return None


def _kill_moving(monkeypatch, name: str):
    """Die after the staged files before ``name`` were moved into place."""
    real = os.replace

    def replace(src, dst):
        if os.path.basename(str(dst)) == name and str(src).endswith(train.STAGED):
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return None


def _kill_in_progress(monkeypatch):
    """Die in the progress callback, after the save."""

    def progress(record):
        raise Killed

    return progress


KILLS = {  # point -> (how, the iteration the directory holds afterwards)
    "after self-play": (_kill_after_self_play, 1),
    "after the updates": (_kill_after_the_updates, 1),
    "between the replay and the history": (_kill_before_the_history, 1),
    "between the history and the state": (_kill_before_the_state, 1),
    "writing the staged replay": (lambda m: _kill_writing(m, train.REPLAY_FILE + train.STAGED), 1),
    "writing the staged history": (lambda m: _kill_writing(m, train.HISTORY_FILE + train.STAGED), 1),
    "writing the staged state": (lambda m: _kill_writing(m, train.STATE_FILE + train.STAGED), 1),
    "before moving the staged files": (_kill_before_moving, 2),
    "after moving the replay": (lambda m: _kill_moving(m, train.HISTORY_FILE), 2),
    "after moving replay and history": (lambda m: _kill_moving(m, train.STATE_FILE), 2),
    "in the progress callback": (_kill_in_progress, 2),
}


@pytest.mark.parametrize("point", list(KILLS))
def test_kill_resumes_after_exactly_the_last_finished_iteration(runs, tmp_path, monkeypatch, point):
    """A run from iteration 1 to 2 killed at ``point`` holds iteration 1 or
    2 whole (never a mix), and resuming ends exactly like the run that was
    never interrupted (training is deterministic on one machine)."""
    how, holds = KILLS[point]
    d = _copy(runs["one"], tmp_path)
    with pytest.raises(Killed):
        train.train(d, TINY, progress=how(monkeypatch))
    monkeypatch.undo()
    records = []
    history = train.train(d, ONE, progress=records.append)  # opening resolves the kill; no iteration runs
    assert records == [] and len(history["iterations"]) == holds
    assert not [f for f in os.listdir(d) if train.STAGED in f or ".tmp-" in f]
    _assert_same(_snapshot(d), _snapshot(runs["one" if holds == 1 else "two"]))
    history = train.train(d, TINY, progress=records.append)
    assert [r["iteration"] for r in records] == [2][:2 - holds]
    assert [r["iteration"] for r in history["iterations"]] == [1, 2]
    _assert_same(_snapshot(d), _snapshot(runs["two"]))


def test_kill_in_the_first_iteration_starts_over(tmp_path, monkeypatch):
    """Before the first save only the configuration is on disk: a fresh start,
    not an incomplete checkpoint."""
    d = str(tmp_path / "run")
    _kill_writing(monkeypatch, train.HISTORY_FILE + train.STAGED)
    with pytest.raises(Killed):
        train.train(d, ONE)
    monkeypatch.undo()
    assert train.REPLAY_FILE + train.STAGED in os.listdir(d)
    history = train.train(d, ONE)
    assert [r["iteration"] for r in history["iterations"]] == [1]
    assert sorted(os.listdir(d)) == sorted(FILES + (train.SELECTED_FILE,))  # the last iteration is scored
