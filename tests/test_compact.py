"""Shrinking boards (``ccjax.search.compact``): a board without its dead
positions is the same game (same legal moves, multiplications and network
outputs), maps back to the original layout exactly, and self-play on
shrinking boards records exactly the moves of the full-size game."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax.eliminate import plan_elimination  # noqa: E402
from ccjax.search import compact, game, mcts, train  # noqa: E402
from ccjax.search.corpus import task_graph  # noqa: E402
from ccjax.search.mcts import MCTSConfig  # noqa: E402
from ccjax.search.network import NetworkConfig, PolicyValueNet  # noqa: E402
from ccjax.search.tables import encode, stack  # noqa: E402
from ccjax.tasks import random_function, random_input_shapes, random_inputs  # noqa: E402

NET = NetworkConfig(dim=16, heads=2, layers=2, edge_dim=4)
CAPACITY = 96


@functools.lru_cache(maxsize=None)
def _graphs():
    graphs = [task_graph("g"), task_graph("MLP")]
    for seed in (3, 11):
        shapes = random_input_shapes(seed)
        fn = random_function(seed, shapes, n_ops=40)
        graphs.append(ccjax.graph(fn, *random_inputs(seed, shapes), argnums=tuple(range(len(shapes)))))
    return graphs


@functools.lru_cache(maxsize=None)
def _tables():
    return stack([encode(g, CAPACITY, 512).tables for g in _graphs()])


@functools.lru_cache(maxsize=None)
def _params():
    tables = jax.tree_util.tree_map(jnp.asarray, _tables())
    obs = game.observe(tables, game.initial_state(tables, 0))
    return PolicyValueNet(NET).init(jax.random.PRNGKey(1), obs)


_step = jax.jit(jax.vmap(game.step, (None, 0, 0)))
_evaluate = jax.jit(lambda params, tables, states: mcts.evaluate(NET, params, tables, states))


def _random_moves(rng, remaining):
    """One random legal position per game (0 where a game is over)."""
    out = []
    for row in np.asarray(remaining):
        legal = np.flatnonzero(row)
        out.append(rng.choice(legal) if len(legal) else 0)
    return np.asarray(out, np.int32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_shrunk_board_plays_the_same_game(seed):
    """Random games on four graphs at once: after some moves the board
    shrinks; from then on both boards take the same moves and must agree on
    every step's multiplications and edges (mapped back), and the network
    must score the kept positions as on the full board."""
    rng = np.random.default_rng(seed)
    tables = _tables()
    full = mcts.initial_states(tables, [0, 1, 2, 3])
    moves = int(np.asarray(tables.eliminable).sum(axis=1).max())
    for _ in range(int(rng.integers(moves // 3, 2 * moves // 3))):
        full = _step(tables, full, _random_moves(rng, full.remaining)).state
    board = compact.start(tables, jax.device_get(full))
    count = int(compact.live(board.tables, board.states).sum(axis=1).max())
    size = compact.fitting_capacity(count, CAPACITY)
    assert size < CAPACITY
    board = compact.compact(board, size)
    small = board.states
    for move in range(moves):
        edges, remaining, _ = compact.expand(board.positions, CAPACITY, small.edges, small.remaining,
                                             np.zeros(np.shape(small.remaining), np.float32))
        np.testing.assert_array_equal(edges, np.asarray(full.edges))
        np.testing.assert_array_equal(remaining, np.asarray(full.remaining))
        np.testing.assert_array_equal(np.asarray(small.mults), np.asarray(full.mults))
        logits_full, value_full = _evaluate(_params(), tables, full)
        logits_small, value_small = _evaluate(_params(), board.tables, small)
        kept = board.positions >= 0
        for b in range(4):
            np.testing.assert_allclose(np.asarray(logits_small)[b][kept[b]],
                                       np.asarray(logits_full)[b][board.positions[b][kept[b]]], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(value_small, value_full, rtol=1e-5, atol=1e-5)
        if not np.asarray(full.remaining).any():
            break
        action = _random_moves(rng, small.remaining)
        full_res = _step(tables, full, np.take_along_axis(board.positions, action[:, None], 1)[:, 0])
        small_res = _step(board.tables, small, action)
        np.testing.assert_array_equal(np.asarray(small_res.mults), np.asarray(full_res.mults))
        np.testing.assert_array_equal(np.asarray(small_res.legal), np.asarray(full_res.legal))
        full, small = full_res.state, small_res.state
    assert not np.asarray(small.broken).any()


def test_fitting_capacity_takes_the_smallest_rung_below_the_current_size():
    assert compact.fitting_capacity(10, 128) == 16
    assert compact.fitting_capacity(17, 128) == 24
    assert compact.fitting_capacity(97, 128) == 128
    assert compact.fitting_capacity(96, 128) == 96
    assert compact.fitting_capacity(40, 48) == 48
    assert compact.fitting_capacity(40, 40) == 40
    assert compact.fitting_capacity(3000, 4096) == 4096
    assert compact.fitting_capacity(17, 128, compact.FINE_LADDER) == 20
    assert compact.fitting_capacity(97, 128, compact.FINE_LADDER) == 112
    assert all(a < b for a, b in zip(compact.FINE_LADDER, compact.FINE_LADDER[1:]))
    assert set(compact.LADDER) <= set(compact.FINE_LADDER)


def test_compact_refuses_a_capacity_that_does_not_hold_the_live_positions():
    tables = _tables()
    board = compact.start(tables, jax.device_get(mcts.initial_states(tables, [0, 1])))
    count = int(compact.live(board.tables, board.states).sum(axis=1).max())
    with pytest.raises(ValueError, match="do not fit"):
        compact.compact(board, count - 1)


def test_self_play_on_shrinking_boards_records_the_full_games():
    """Every replay row is the full-size game's state before that move, every
    order's cost is the cost model's, and the board did shrink."""
    tables = jax.tree_util.tree_map(jnp.asarray, _tables())
    search = MCTSConfig(num_simulations=4, max_num_considered_actions=4)
    sizes = []
    act = mcts.act

    def spy(net, config, params, tables, states, key):
        sizes.append(int(states.edges.shape[-1]))
        return act(net, config, params, tables, states, key)

    graph_ids = [0, 1, 2, 3, 2]
    replay = train.Replay.empty(1024, CAPACITY)
    mcts.act = spy
    try:
        ep = train.self_play(NET, search, _params(), tables, graph_ids, jax.random.PRNGKey(5), replay,
                             ladder=compact.LADDER)
    finally:
        mcts.act = act
    assert len(set(sizes)) > 2 and sizes == sorted(sizes, reverse=True) and sizes[0] < CAPACITY
    assert not ep.broken
    row = 0
    graphs = _graphs()
    for b, (gid, order) in enumerate(zip(graph_ids, ep.orders)):
        enc = encode(graphs[gid], CAPACITY, 512)
        vertex_order = enc.order_from_positions(order)
        assert sorted(vertex_order) == sorted(graphs[gid].eliminable)
        assert ep.costs[b] == plan_elimination(graphs[gid], vertex_order).report.mults
    # Replay rows are pushed move by move for the games still playing then.
    states = {b: game.initial_state(tables, gid) for b, gid in enumerate(graph_ids)}
    for t in range(max(len(o) for o in ep.orders)):
        for b, order in enumerate(ep.orders):
            if t >= len(order):
                continue
            np.testing.assert_array_equal(replay.edges[row], np.asarray(states[b].edges))
            np.testing.assert_array_equal(replay.remaining[row], np.asarray(states[b].remaining))
            assert replay.graph[row] == graph_ids[b]
            policy = replay.policy[row]
            assert policy.sum() == pytest.approx(1.0, abs=1e-5) and np.all(policy[~replay.remaining[row]] == 0)
            states[b] = game.step(tables, states[b], order[t]).state
            row += 1
    assert replay.size == row == sum(len(o) for o in ep.orders)
