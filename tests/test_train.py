"""Self-play training: checkpoints resume without losing work, refuse other
configurations and corrupt files, the replay buffer round-trips, self-play
shards its games over devices, and a checkpoint exports a policy."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import flax.serialization
import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

from ccjax.search import train  # noqa: E402
from ccjax.search.mcts import MCTSConfig  # noqa: E402
from ccjax.search.network import NetworkConfig  # noqa: E402
from ccjax.search.policy import load_policy  # noqa: E402
from ccjax.search.train import CheckpointError, Replay, TrainConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = TrainConfig(iterations=2, games_per_iteration=2, num_vertices=64, num_structures=64, train_tasks=("g",),
                   random_seeds=(), replay_capacity=512, batch_size=8, updates_per_iteration=2, warmup_steps=1,
                   network=NetworkConfig(dim=16, heads=2, layers=1, edge_dim=4),
                   search=MCTSConfig(num_simulations=2, max_num_considered_actions=2))


def _read_state(d):
    with open(os.path.join(d, train.STATE_FILE), "rb") as f:
        return flax.serialization.msgpack_restore(f.read())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint directory after 2 iterations of TINY (copy it before changing it)."""
    d = str(tmp_path_factory.mktemp("ckpt") / "run")
    records = []

    def progress(record):
        records.append(record)
        if record["iteration"] == 1:  # keep the state of iteration 1 (see test_interrupted_save)
            shutil.copy(os.path.join(d, train.STATE_FILE), os.path.join(os.path.dirname(d), "state-1.msgpack"))

    history = train.train(d, TINY, progress=progress)
    assert [r["iteration"] for r in records] == [1, 2]
    assert [r["iteration"] for r in history["iterations"]] == [1, 2]
    return d, history, records


def _copy(trained, tmp_path):
    d = str(tmp_path / "run")
    shutil.copytree(trained[0], d)
    return d


def test_checkpoint_files(trained):
    d, history, records = trained
    assert sorted(os.listdir(d)) == sorted([train.STATE_FILE, train.REPLAY_FILE, train.HISTORY_FILE,
                                            train.CONFIG_FILE, train.SELECTED_FILE])  # no temporaries left
    state = _read_state(d)
    assert int(state["iteration"]) == 2 and int(state["updates"]) == 2 * TINY.updates_per_iteration
    assert TrainConfig.from_dict(json.load(open(os.path.join(d, train.CONFIG_FILE)))) == TINY
    moves = 2 * 2 * 42  # two iterations of two games on task g (42 eliminable vertices)
    assert history["iterations"][-1]["replay"] == moves
    assert history["corpus"] == ["g"]
    assert records[-1]["best"]["g"] == history["best"]["g"][0] > 0
    assert all(r["mean_ratio"] > 0 and np.isfinite(r["loss"]) for r in history["iterations"])


def test_resume_continues_where_it_stopped(trained, tmp_path):
    d = _copy(trained, tmp_path)
    old = Replay.load(os.path.join(d, train.REPLAY_FILE), TINY.replay_capacity, TINY.num_vertices)
    old_history = json.load(open(os.path.join(d, train.HISTORY_FILE)))
    records = []
    history = train.train(d, dataclasses.replace(TINY, iterations=3), progress=records.append)
    assert [r["iteration"] for r in records] == [3]  # resumed at iteration 2
    assert [r["iteration"] for r in history["iterations"]] == [1, 2, 3]
    assert history["iterations"][:2] == old_history["iterations"]
    assert history["elapsed"] > old_history["elapsed"]
    state = _read_state(d)
    assert int(state["iteration"]) == 3 and int(state["updates"]) == 3 * TINY.updates_per_iteration
    new = Replay.load(os.path.join(d, train.REPLAY_FILE), TINY.replay_capacity, TINY.num_vertices)
    assert new.size == old.size + 2 * 42
    for field in ("edges", "remaining", "graph", "policy", "value"):
        np.testing.assert_array_equal(getattr(new, field)[:old.size], getattr(old, field)[:old.size])
    # Nothing left to do: no iteration runs, the history is unchanged.
    records.clear()
    again = train.train(d, dataclasses.replace(TINY, iterations=3), progress=records.append)
    assert records == [] and len(again["iterations"]) == 3
    # Without a config the saved one is used.
    assert len(train.train(d, None)["iterations"]) == 3


def test_other_configuration_is_refused(trained, tmp_path):
    d = _copy(trained, tmp_path)
    before = {f: open(os.path.join(d, f), "rb").read() for f in os.listdir(d)}
    for change in ({"games_per_iteration": 3}, {"network": NetworkConfig(dim=32, heads=2, layers=1, edge_dim=4)},
                   {"train_tasks": ("f",)}, {"seed": 1}):
        with pytest.raises(CheckpointError, match="another configuration"):
            train.train(d, dataclasses.replace(TINY, **change))
    assert {f: open(os.path.join(d, f), "rb").read() for f in os.listdir(d)} == before


@pytest.mark.parametrize("name, damage", [
    (train.STATE_FILE, "truncate"), (train.STATE_FILE, "garbage"), (train.REPLAY_FILE, "truncate"),
    (train.REPLAY_FILE, "garbage"), (train.HISTORY_FILE, "truncate"), (train.HISTORY_FILE, "garbage"),
    (train.CONFIG_FILE, "garbage"), (train.CONFIG_FILE, "{}"), (train.HISTORY_FILE, "[]")])
def test_corrupt_checkpoint_file_is_named(trained, tmp_path, name, damage):
    d = _copy(trained, tmp_path)
    path = os.path.join(d, name)
    data = open(path, "rb").read()
    garbage = {"truncate": data[:len(data) // 2], "garbage": b"\x93\x00not a checkpoint{" * 7}
    with open(path, "wb") as f:
        f.write(garbage.get(damage, damage.encode()))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        train.train(d, dataclasses.replace(TINY, iterations=3))
    assert open(path, "rb").read() != data  # not silently overwritten by a fresh start


def test_state_of_another_iteration_is_refused(trained, tmp_path):
    """The state of iteration 1 beside the replay and history of iteration 2
    (what a kill between the files of the old, unjournalled save left) would
    resume with the moves of an unfinished iteration: refused, naming the
    files, and nothing is overwritten.  Kills during a save are covered by
    tests/test_data_safety.py."""
    d = _copy(trained, tmp_path)
    shutil.copy(os.path.join(os.path.dirname(trained[0]), "state-1.msgpack"), os.path.join(d, train.STATE_FILE))
    assert int(_read_state(d)["iteration"]) == 1
    before = {f: open(os.path.join(d, f), "rb").read() for f in os.listdir(d)}
    with pytest.raises(CheckpointError, match=r"state\.msgpack is at iteration 1 but .*history\.json records 2"):
        train.train(d, TINY)
    assert {f: open(os.path.join(d, f), "rb").read() for f in os.listdir(d)} == before


def test_replay_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    r = Replay.empty(8, 4)
    for _ in range(3):  # 12 rows into 8 slots: the ring wraps
        r.add(rng.integers(-1, 5, (4, 4, 4)).astype(np.int16), rng.random((4, 4)) < 0.5,
              rng.integers(0, 3, 4).astype(np.int32), rng.random((4, 4)).astype(np.float32),
              rng.random(4).astype(np.float32))
    assert r.size == 8 and r.next == 4
    path = str(tmp_path / "replay.npz")
    r.save(path)
    back = Replay.load(path, 8, 4)
    assert (back.size, back.next) == (r.size, r.next)
    for field in ("edges", "remaining", "graph", "policy", "value"):
        np.testing.assert_array_equal(getattr(back, field), getattr(r, field))
    half = Replay.empty(8, 4)
    half.add(r.edges[:3], r.remaining[:3], r.graph[:3], r.policy[:3], r.value[:3])
    half.save(path)
    back = Replay.load(path, 8, 4)
    assert (back.size, back.next) == (3, 3)
    np.testing.assert_array_equal(back.edges[:3], r.edges[:3])
    states, policy, value = back.sample(np.random.default_rng(1), 5)
    assert states.edges.shape == (5, 4, 4) and policy.shape == (5, 4) and value.shape == (5,)
    with pytest.raises(CheckpointError):
        Replay.load(path, 8, 5)  # another vertex capacity
    with pytest.raises(CheckpointError):
        Replay.load(path, 2, 4)  # more rows than the capacity
    with pytest.raises(CheckpointError, match="replay"):
        Replay.load(str(tmp_path / "missing.npz"), 8, 4)


def test_export_policy(trained, tmp_path):
    d = trained[0]
    path = str(tmp_path / "exported.msgpack")
    train.export_policy(d, path)
    pol = load_policy(path)
    assert pol.network == TINY.network and pol.search == TINY.search
    assert pol.info["iterations"] == 2 and pol.info["corpus"] == ["g"] and pol.info["num_vertices"] == 64
    want = jax.tree_util.tree_leaves(_read_state(d)["params"])
    got = jax.tree_util.tree_leaves(pol.params)
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def _selection_inputs():
    from ccjax.search import corpus
    from ccjax.search.tables import stack

    items = corpus.build(TINY.train_tasks, TINY.random_seeds, TINY.num_vertices, TINY.num_structures)
    return items, jax.tree_util.tree_map(jax.numpy.asarray, stack([it.encoded.tables for it in items]))


def test_the_last_iteration_is_evaluated_and_selected(trained):
    d, history, records = trained
    params, iteration, score = train.read_selected(d)
    assert iteration == 2 and "selection_score" not in history["iterations"][0]
    assert history["iterations"][1]["selection_score"] == score == records[1]["selection_score"]
    # The score is the greedy order's cost over the best of fwd/rev/Markowitz on task g, recomputed here.
    from ccjax.eliminate import plan_elimination
    from ccjax.resolve import resolve_order
    from ccjax.search.api import learned_order
    from ccjax.search.policy import Policy

    items, tables = _selection_inputs()
    (g,) = [it.graph for it in items]
    best = min(plan_elimination(g, resolve_order(g, o)).report.mults for o in ("fwd", "rev", "markowitz"))
    assert float(tables.scale[0]) == best
    # The game's greedy play (on the training tables) is order="learned"'s, and costs what ccjax.cost counts.
    greedy = plan_elimination(g, learned_order(g, Policy(TINY.network, params, TINY.search, {}))).report.mults
    assert score == pytest.approx(greedy / best)
    assert train.selection_score(TINY, params, items, tables) == score
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(_read_state(d)["params"])):
        np.testing.assert_array_equal(a, b)


def test_export_ships_the_selected_network(trained, tmp_path):
    d = _copy(trained, tmp_path)
    first = flax.serialization.msgpack_restore(
        open(os.path.join(os.path.dirname(trained[0]), "state-1.msgpack"), "rb").read())["params"]
    train._save_selected(d, first, 1, 0.5)  # as if iteration 1 had scored better
    path = str(tmp_path / "selected.msgpack")
    info = train.export_policy(d, path)
    pol = load_policy(path)
    assert pol.info == info
    assert pol.info["network_iteration"] == 1 and pol.info["selection_score"] == 0.5 and pol.info["iterations"] == 2
    for a, b in zip(jax.tree_util.tree_leaves(pol.params), jax.tree_util.tree_leaves(first)):
        np.testing.assert_array_equal(a, b)
    train.export_policy(d, path, selected=False)
    assert load_policy(path).info["network_iteration"] == 2
    # Resuming keeps a better selection: iteration 3 scores worse than 0.5 ... unless it is better.
    history = train.train(d, dataclasses.replace(TINY, iterations=3))
    score = history["iterations"][2]["selection_score"]
    assert train.read_selected(d)[1:] == ((3, score) if score < 0.5 else (1, 0.5))


@pytest.mark.parametrize("content", [b"", b"not msgpack", flax.serialization.msgpack_serialize({"params": {}}),
                                     flax.serialization.msgpack_serialize(
                                         {"params": {"w": np.zeros(3, np.float32)}, "iteration": 1, "score": 0.5})])
def test_a_corrupt_selected_network_is_named(trained, tmp_path, content):
    d = _copy(trained, tmp_path)
    with open(os.path.join(d, train.SELECTED_FILE), "wb") as f:
        f.write(content)
    with pytest.raises(CheckpointError, match="selected.msgpack"):
        train.export_policy(d, str(tmp_path / "p.msgpack"))
    with pytest.raises(CheckpointError, match="selected.msgpack"):
        train.train(d, dataclasses.replace(TINY, iterations=3))
    assert not os.path.exists(tmp_path / "p.msgpack")


SHARDED_SELF_PLAY = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np
    from ccjax.search import corpus, game, mcts, train
    from ccjax.search.network import NetworkConfig, PolicyValueNet
    from ccjax.search.mcts import MCTSConfig
    from ccjax.search.tables import stack

    cfg = train.TrainConfig(num_vertices=64, num_structures=64, train_tasks=("g",), random_seeds=(),
                            network=NetworkConfig(dim=16, heads=2, layers=1, edge_dim=4),
                            search=MCTSConfig(num_simulations=2, max_num_considered_actions=2))
    items = corpus.build(cfg.train_tasks, (), cfg.num_vertices, cfg.num_structures)
    tables = jax.tree_util.tree_map(jnp.asarray, stack([it.encoded.tables for it in items]))
    obs = game.observe(tables, game.initial_state(tables, 0))
    params = jax.jit(PolicyValueNet(cfg.network).init)(jax.random.PRNGKey(0), obs)
    seen = []
    act = mcts.act

    def spy(net, search, params, tables, states, key):
        res = act(net, search, params, tables, states, key)
        seen.append((len(states.edges.sharding.device_set), len(res.states.edges.sharding.device_set)))
        return res

    mcts.act = spy

    def run():
        seen.clear()
        replay = train.Replay.empty(256, cfg.num_vertices)
        ep = train.self_play(cfg.network, cfg.search, params, tables, [0, 0], jax.random.PRNGKey(7), replay)
        return {"orders": ep.orders, "costs": ep.costs, "broken": ep.broken, "devices": sorted(set(seen)),
                "replay_size": replay.size, "replay_policy": float(replay.policy[:replay.size].sum()),
                "replay_edges": int(replay.edges[:replay.size].astype(np.int64).sum())}

    sharded = run()
    train._shard_games = lambda states: states
    single = run()
    print(json.dumps({"n_devices": len(jax.devices()), "sharded": sharded, "single": single}))
""")


def test_self_play_shards_games_over_devices():
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip())
    proc = subprocess.run([sys.executable, "-c", SHARDED_SELF_PLAY], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n_devices"] == 2
    sharded, single = out["sharded"], out["single"]
    assert sharded["devices"] == [[2, 2]], "the games were not spread over both devices"
    assert single["devices"] == [[1, 1]]
    assert not sharded["broken"] and sharded["replay_size"] == 2 * 42
    for key in ("orders", "costs", "replay_size", "replay_edges"):
        assert sharded[key] == single[key], key
    assert sharded["replay_policy"] == pytest.approx(single["replay_policy"], rel=1e-5)
