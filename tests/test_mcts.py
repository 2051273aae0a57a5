"""Gumbel MuZero over the vertex game, the learned orders and policy files:
legal moves only, rewards are the game's multiplications, illegal moves in
the tree are penalised, and ``order="learned"`` gives exact Jacobians."""
import functools
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax.eliminate import plan_elimination  # noqa: E402
from ccjax.orders.search import quick_order  # noqa: E402
from ccjax.resolve import search_graph  # noqa: E402
from ccjax.search import api as search_api  # noqa: E402
from ccjax.search import game, mcts  # noqa: E402
from ccjax.search import policy as policy_lib  # noqa: E402
from ccjax.search.api import learned_order, mcts_search  # noqa: E402
from ccjax.search.corpus import task_graph  # noqa: E402
from ccjax.search.mcts import MCTSConfig  # noqa: E402
from ccjax.search.network import NetworkConfig, PolicyValueNet  # noqa: E402
from ccjax.search.policy import Policy, PolicyError, load_policy, save_policy  # noqa: E402
from ccjax.search.tables import INPUT, OUTPUT, DEFAULT_STRUCTURES, encode, stack  # noqa: E402
from ccjax.tasks import TASKS, random_function, random_input_shapes, random_inputs  # noqa: E402
from conftest import assert_jac_equal  # noqa: E402

NET = NetworkConfig(dim=16, heads=2, layers=1, edge_dim=4)
SEARCH = MCTSConfig(num_simulations=4, max_num_considered_actions=4)


@functools.lru_cache(maxsize=None)
def _encoded(name, n=64, k=DEFAULT_STRUCTURES):
    return encode(task_graph(name), n, k)


@functools.lru_cache(maxsize=None)
def _tables(names=("g", "MLP"), n=64):
    return jax.tree_util.tree_map(jnp.asarray, stack([_encoded(name, n).tables for name in names]))


@functools.lru_cache(maxsize=None)
def _params(seed=0):
    tables = _tables()
    obs = game.observe(tables, game.initial_state(tables, 0))
    return jax.jit(PolicyValueNet(NET).init)(jax.random.PRNGKey(seed), obs)


def _tiny_policy(seed=0):
    return Policy(NET, _params(seed), SEARCH, {"note": "untrained"})


_steps = jax.jit(jax.vmap(game.step, (None, 0, 0)))


def test_act_plays_legal_moves_with_game_rewards():
    names = ("g", "MLP")
    tables = _tables(names)
    states = mcts.initial_states(tables, [0, 1])
    key = jax.random.PRNGKey(0)
    orders = [[], []]
    total_reward = np.zeros(2)
    for move in range(200):
        key, sub = jax.random.split(key)
        res = jax.device_get(mcts.act(NET, SEARCH, _params(), tables, states, sub))
        before = jax.device_get(states)
        active = ~before.remaining.any(axis=1)
        np.testing.assert_array_equal(res.active, ~active)
        if not res.active.any():
            break
        want = jax.device_get(_steps(tables, states, jnp.asarray(res.action)))
        scale = np.asarray(tables.scale)[before.graph]
        for b in range(2):
            if res.active[b]:
                assert before.remaining[b, res.action[b]], f"move {move}: illegal action {res.action[b]}"
                assert bool(want.legal[b])
                assert res.reward[b] == pytest.approx(-want.mults[b] / scale[b], rel=1e-6)
                np.testing.assert_array_equal(res.states.edges[b], want.state.edges[b])
                orders[b].append(int(res.action[b]))
                assert np.all(res.action_weights[b][~before.remaining[b]] == 0)  # the policy target
            else:  # a finished game stays as it is
                assert res.reward[b] == 0.0
                np.testing.assert_array_equal(res.states.edges[b], before.edges[b])
        total_reward += np.where(res.active, res.reward, 0.0)
        states = res.states
    else:
        pytest.fail("the games did not end")
    final = jax.device_get(states)
    assert not final.broken.any()
    for b, name in enumerate(names):
        enc = _encoded(name)
        order = enc.order_from_positions(orders[b])
        cost = plan_elimination(task_graph(name), order).report.mults
        assert sorted(order) == sorted(task_graph(name).eliminable)
        assert int(final.mults[b]) == cost
        assert total_reward[b] == pytest.approx(-cost / float(enc.tables.scale), rel=1e-5)


def test_recurrent_fn_penalises_illegal_actions():
    tables = _tables()
    enc = _encoded("g")
    kind = np.asarray(enc.tables.kind)
    legal = int(np.nonzero(enc.tables.eliminable)[0][0])
    done = mcts.initial_states(tables, [0])
    for p in np.nonzero(enc.tables.eliminable)[0]:
        done = _steps(tables, done, jnp.asarray([p]))[0]
    assert bool(game.is_terminal(jax.tree_util.tree_map(lambda x: x[0], done)))
    fresh = mcts.initial_states(tables, [0] * 5)
    states = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), fresh, done)
    actions = jnp.asarray([int(np.nonzero(kind == INPUT)[0][0]), int(np.nonzero(kind == OUTPUT)[0][0]),
                           enc.capacity - 1, legal, legal, legal], jnp.int32)
    config = MCTSConfig(num_simulations=4, illegal_penalty=7.5)
    # A state where ``legal`` was eliminated already: eliminating it again is illegal.
    again = _steps(tables, jax.tree_util.tree_map(lambda x: x[:1], fresh), jnp.asarray([legal]))[0]
    states = jax.tree_util.tree_map(lambda s, a: s.at[4].set(a[0]), states, again)
    recurrent = jax.jit(mcts._recurrent_fn(NET, config))
    out, nxt = recurrent((_params(), tables), jax.random.PRNGKey(0), actions, states)
    out, nxt, states = jax.device_get((out, nxt, states))
    step_mults = int(_steps(tables, jax.tree_util.tree_map(lambda x: x[:1], fresh), jnp.asarray([legal])).mults[0])
    for b in (0, 1, 2, 4):  # input, output, padding, eliminated
        assert out.reward[b] == -7.5 and out.discount[b] == 0.0 and out.value[b] == 0.0, b
        np.testing.assert_array_equal(nxt.edges[b], states.edges[b])
    assert out.reward[3] == pytest.approx(-step_mults / float(enc.tables.scale), rel=1e-6) and step_mults > 0
    assert out.discount[3] == 1.0
    assert out.reward[5] == 0.0 and out.discount[5] == 0.0  # the game was over
    assert np.all(out.prior_logits[3][~nxt.remaining[3]] <= -1e8)


@functools.partial(jax.jit, static_argnums=(0,))
def _game_greedy(net, params, tables):
    """Reference for ``learned_order``: the policy's argmax at every step,
    played in the JAX game on encoded tables (graph 0 of ``tables``)."""

    def body(states, _):
        logits, _ = mcts.evaluate(net, params, tables, states)
        action = jnp.argmax(logits, axis=-1)
        active = ~jax.vmap(game.is_terminal)(states)
        return _steps(tables, states, action).state, (action, active)

    start = mcts.initial_states(tables, [0])
    return jax.lax.scan(body, start, None, length=tables.edges.shape[-1])


@pytest.mark.parametrize("name", ["g", "MLP", "RoeFlux_3d"])
def test_learned_order_is_the_games_greedy_play(name):
    """``learned_order`` plays on the Evaluator, not on encoded tables; the
    network must see what the JAX game shows it, so the orders agree."""
    g = task_graph(name)
    enc = encode(g, search_api.capacity_for(g, search_api.GREEDY_BUCKETS))
    final, (actions, active) = jax.device_get(_game_greedy(NET, _params(), _tables((name,), enc.capacity)))
    played = [int(a) for a, on in zip(actions[:, 0], active[:, 0]) if on]
    order = learned_order(g, _tiny_policy())
    assert order == enc.order_from_positions(played)
    assert sorted(order) == sorted(g.eliminable)
    assert not final.remaining[0].any() and not final.broken[0]
    assert int(final.mults[0]) == plan_elimination(g, order).report.mults


def test_mcts_search_order_costs_what_ccjax_cost_says():
    task = TASKS["g"]
    fn, args = task.graph_fn_and_inputs(0)
    g = ccjax.graph(fn, *args, argnums=task.argnums)
    calls = []
    r = mcts_search(g, time_budget=None, policy=_tiny_policy(), games=2, num_simulations=2, max_episodes=1,
                    progress=lambda *a: calls.append(a))
    assert r["episodes"] == 1
    assert sorted(r["order"]) == sorted(g.eliminable)
    assert r["cost"] == ccjax.cost(fn, *args, argnums=task.argnums, order=r["order"])
    assert r["greedy_cost"] == ccjax.cost(fn, *args, argnums=task.argnums, order=r["greedy_order"])
    assert r["greedy_order"] == learned_order(g, _tiny_policy())
    assert r["cost"] <= r["greedy_cost"] and calls and calls[0][2] == "greedy"


@pytest.fixture
def tiny_policy_file(tmp_path, monkeypatch):
    """A random tiny policy saved as the shipped one; ``"learned"`` plans
    cached on graphs are dropped before and after (they depend on the policy)."""
    path = str(tmp_path / "tiny.msgpack")
    save_policy(path, NET, _params(3), SEARCH, {"iterations": 0})
    monkeypatch.setattr(policy_lib, "SHIPPED_POLICY", path)
    graphs = []
    yield path, graphs
    for g in graphs:
        for table in (g.plans, g.runners):
            for key in [k for k in table if k == "learned" or (isinstance(k, tuple) and k[0] == "learned")]:
                del table[key]


def _random_case(seed):
    shapes = random_input_shapes(seed)
    fn = random_function(seed, shapes, n_ops=int(np.random.default_rng(seed).integers(3, 20)))
    return fn, random_inputs(seed, shapes), tuple(range(len(shapes)))


@pytest.mark.parametrize("case", ["MLP", "PropaneCombustion", "random_3"])
def test_jacve_learned_matches_jacrev(case, tiny_policy_file):
    _, graphs = tiny_policy_file
    if case in TASKS:
        task = TASKS[case]
        fn, args = task.graph_fn_and_inputs(0)
        argnums = task.argnums
    else:
        fn, args, argnums = _random_case(int(case.split("_")[1]))
    g = ccjax.graph(fn, *args, argnums=argnums)
    graphs.append(g)
    assert not any(k == "learned" for k in g.plans)
    want = jax.jacrev(fn, argnums=argnums)(*args)
    got = ccjax.jacve(fn, argnums=argnums, order="learned")(*args)
    assert_jac_equal(got, want, what=case)
    learned = plan_elimination(g, learned_order(g, _tiny_policy(3))).report.mults
    quick = quick_order(g)[1]  # "learned" never costs more than the quick heuristics
    assert ccjax.cost(fn, *args, argnums=argnums, order="learned") == min(learned, quick)


def test_search_graph_mcts_uses_the_policy(tiny_policy_file):
    x = jnp.array([0.3, 0.7, 1.1])
    g = ccjax.graph(lambda x: jnp.sin(x[0] * x[1]) * jnp.exp(x[2] + x[0]) + jnp.log(x[1] * x[2]), x)
    assert 4 <= len(g.eliminable) <= 20
    r = search_graph(g, "mcts", None, 0)
    assert sorted(r.order) == sorted(g.eliminable)
    assert r.cost == plan_elimination(g, r.order).report.mults
    assert r.cost <= min(r.baselines.values())


def test_auto_and_anneal_can_start_from_the_learned_order():
    g = task_graph("g")
    policy = _tiny_policy()
    learned_cost = plan_elimination(g, learned_order(g, policy)).report.mults
    for method in ("auto", "anneal"):
        r = search_graph(g, method, 2.0, 0, anneal_runs=0, policy=policy, learned_start=True)
        assert r.starts == {"learned": learned_cost}
        assert r.cost <= learned_cost and r.cost == plan_elimination(g, r.order).report.mults
    assert search_graph(g, "anneal", None, 0, anneal_runs=0, policy=policy).starts == {}  # off by default
    assert search_graph(g, "beam", 1.0, 0, policy=policy, learned_start=True).starts == {}


# -- policy files --------------------------------------------------------------------------------

def test_policy_round_trip(tmp_path):
    path = str(tmp_path / "sub" / "p.msgpack")
    save_policy(path, NET, _params(), SEARCH, {"iterations": 5, "corpus": ["g"]})
    p = load_policy(path)
    assert p.network == NET and p.search == SEARCH and p.info == {"iterations": 5, "corpus": ["g"]}
    a, b = jax.tree_util.tree_flatten(p.params), jax.tree_util.tree_flatten(_params())
    assert a[1] == b[1]
    for x, y in zip(a[0], b[0]):
        np.testing.assert_array_equal(x, y)
    assert [f for f in os.listdir(tmp_path / "sub")] == ["p.msgpack"]  # no temporary left behind
    assert policy_lib.default_policy(path).network == NET


def test_load_policy_errors(tmp_path):
    with pytest.raises(PolicyError, match="no policy file"):
        load_policy(str(tmp_path / "missing.msgpack"))
    with pytest.raises(PolicyError, match="no policy file"):
        policy_lib.default_policy(str(tmp_path / "missing.msgpack"))
    corrupt = tmp_path / "corrupt.msgpack"
    save_policy(str(corrupt), NET, _params(), SEARCH)
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[:len(data) // 2])
    with pytest.raises(PolicyError, match="corrupt.msgpack"):
        load_policy(str(corrupt))
    garbage = tmp_path / "garbage.msgpack"
    garbage.write_bytes(b"\x00\xffnot msgpack at all" * 10)
    with pytest.raises(PolicyError):
        load_policy(str(garbage))
    other = tmp_path / "other.msgpack"
    other.write_bytes(flax.serialization.msgpack_serialize({"format": "something-else", "params": {}}))
    with pytest.raises(PolicyError, match="unknown format"):
        load_policy(str(other))
    plain = tmp_path / "plain.msgpack"
    plain.write_bytes(flax.serialization.msgpack_serialize({"params": {"w": np.zeros(3)}}))
    with pytest.raises(PolicyError):
        load_policy(str(plain))
    listing = tmp_path / "list.msgpack"
    listing.write_bytes(flax.serialization.msgpack_serialize([1, 2, 3]))
    with pytest.raises(PolicyError):
        load_policy(str(listing))


def test_shipped_policy_on_task_g():
    """The pretrained policy file shipped in the package is readable and its
    greedy order for task g is exact and close to the best classical order."""
    assert os.path.exists(policy_lib.SHIPPED_POLICY), f"missing {policy_lib.SHIPPED_POLICY}"
    pol = load_policy(policy_lib.SHIPPED_POLICY)
    task = TASKS["g"]
    fn, args = task.graph_fn_and_inputs(0)
    g = ccjax.graph(fn, *args, argnums=task.argnums)
    order = learned_order(g, pol)
    assert sorted(order) == sorted(g.eliminable)
    assert_jac_equal(ccjax.jacve(fn, argnums=task.argnums, order=order)(*args),
                     jax.jacrev(fn, argnums=task.argnums)(*args))
    cost = ccjax.cost(fn, *args, argnums=task.argnums, order=order)
    best = min(encode(g, 64).baselines.values())
    assert cost <= 1.1 * best, f"learned order costs {cost}, best classical {best}"


@pytest.mark.parametrize("names", [("g", "RoeFlux_1d", "HumanHeartDipole", "f")], ids=str)
def test_learned_never_worse_than_auto(names, tmp_path, monkeypatch):
    """With an empty order cache, ``order="learned"`` costs at most what
    ``order="auto"`` (the quick heuristics) costs: the shipped policy loses
    to them on RoeFlux_1d and HumanHeartDipole.  Every paper-size graph
    shares one compiled network for the greedy order."""
    from ccjax.resolve import forget_order

    monkeypatch.setenv("CCJAX_CACHE_DIR", str(tmp_path))
    compiled = len(search_api._EXECUTABLES)
    for name in names:
        task = TASKS[name]
        fn, args = task.graph_fn_and_inputs(0)
        g = ccjax.graph(fn, *args, argnums=task.argnums)
        forget_order(g, "auto")  # a plan made with another test's cache
        learned = ccjax.cost(fn, *args, argnums=task.argnums, order="learned")
        auto = ccjax.cost(fn, *args, argnums=task.argnums, order="auto")
        assert learned <= auto, f"{name}: learned {learned} > auto {auto}"
    assert len(search_api._EXECUTABLES) <= compiled + 1
