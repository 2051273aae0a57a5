"""The vertex game (``ccjax.search.game``) is the cost model: its multiplications
equal ``ccjax.cost`` step by step, it never reads an unreachable table entry,
and illegal actions change nothing."""
import dataclasses
import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax.eliminate import plan_elimination  # noqa: E402
from ccjax.orders import HEURISTICS  # noqa: E402
from ccjax.orders.incremental import Evaluator  # noqa: E402
from ccjax.search import game  # noqa: E402
from ccjax.search.corpus import random_graph  # noqa: E402
from ccjax.search.tables import (INPUT, INTERMEDIATE, OUTPUT, PAD, CapacityError, encode,  # noqa: E402
                                 stack, structure_features)
from ccjax.structure import is_terms  # noqa: E402
from ccjax.tasks import TASKS, random_function, random_input_shapes, random_inputs  # noqa: E402

# Vertex capacities are multiples of 64 with room for at least one padding
# position (a few compiled programs); one structure capacity for all.
N, K = 128, 512


@functools.lru_cache(maxsize=None)
def _task_graph(name):
    task = TASKS[name]
    fn, args = task.graph_fn_and_inputs(0)
    return ccjax.graph(fn, *args, argnums=task.argnums)


def _capacity(g):
    live = len({u for e in g.edges for u in e})
    return 64 * (live // 64 + 1)


@functools.lru_cache(maxsize=None)
def _encoded(name, n=None, k=K):
    g = _task_graph(name)
    enc = encode(g, _capacity(g) if n is None else n, k)
    return dataclasses.replace(enc, tables=jax.tree_util.tree_map(jnp.asarray, enc.tables))


def _random_fn_graph(seed):
    shapes = random_input_shapes(seed)
    fn = random_function(seed, shapes, n_ops=int(np.random.default_rng(seed).integers(3, 25)))
    return ccjax.graph(fn, *random_inputs(seed, shapes), argnums=tuple(range(len(shapes))))


@jax.jit
def _play(tables, actions):
    return game.play(tables, game.initial_state(tables), actions)


_step = jax.jit(game.step)


def _padded_positions(enc, order):
    """Positions of ``order`` followed by the last (padding) position up to
    the capacity: the tail is a run of illegal actions."""
    pos = list(enc.positions_from_order(order))
    assert enc.num_vertices < enc.capacity
    return jnp.asarray(pos + [enc.capacity - 1] * (enc.capacity - len(pos)), jnp.int32)


def _check_order(g, enc, order):
    final, mults, legal = jax.device_get(_play(enc.tables, _padded_positions(enc, order)))
    n = len(order)
    want = plan_elimination(g, order).report.mults
    assert int(final.mults) == want, f"game {int(final.mults)} != cost model {want} for order {order}"
    assert not final.broken
    assert legal[:n].all() and not legal[n:].any()
    assert not mults[n:].any() and int(mults.sum()) == want
    assert not final.remaining.any()


@pytest.mark.parametrize("name", list(TASKS))
def test_game_cost_equals_cost_model_on_tasks(name):
    g, enc = _task_graph(name), _encoded(name)
    rng = np.random.default_rng(0)
    orders = [HEURISTICS[h](g) for h in ("rev", "markowitz")]
    orders += [[int(v) for v in rng.permutation(np.array(g.eliminable))] for _ in range(2)]
    for order in orders:
        _check_order(g, enc, order)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10**6), order_seed=st.integers(0, 2**32 - 1), corpus_style=st.booleans())
def test_game_cost_equals_cost_model_on_random_functions(seed, order_seed, corpus_style):
    g = random_graph(seed)[1] if corpus_style else _random_fn_graph(seed)
    try:
        enc = encode(g, N, K)
    except CapacityError:
        assume(False)
    assume(enc.num_vertices < N)
    order = [int(v) for v in np.random.default_rng(order_seed).permutation(np.array(g.eliminable, np.int64))]
    _check_order(g, enc, order)


@pytest.mark.parametrize("name", ["row_and_total_norms", "constraint_added_to_a_row"])
def test_game_cost_equals_cost_model_where_sums_are_kept_as_terms(name):
    """A band plus a dense row: the game plays lazy sums (``Terms``) with
    the executor's algebra.  (Stencils along two axes need more structures
    than the capacity, with or without terms.)"""
    from test_bands import PROGRAMS

    fn, shape = PROGRAMS[name]
    g = ccjax.graph(fn, jnp.asarray(np.random.default_rng(0).normal(size=shape)))
    enc = encode(g, _capacity(g), K)
    rng = np.random.default_rng(1)
    orders = [HEURISTICS[h](g) for h in ("fwd", "rev", "markowitz")]
    orders += [[int(v) for v in rng.permutation(np.array(g.eliminable))] for _ in range(3)]
    assert any(is_terms(st) for order in orders for st in plan_elimination(g, order).structures)
    for order in orders:
        _check_order(g, enc, order)


def test_encoding_stops_at_the_structure_capacity_while_summing_bands():
    # Found by the property test above: sums of this graph's banded partials
    # made ever new structures (unit unions of diagonals repeating one
    # diagonal), and the closure once ran out of memory before it looked at
    # the capacity.  Diagonals that meet now take the valued sum, which
    # merges them, so the closure ends (254 structures); the capacity is
    # still checked as sums appear.
    g = _random_fn_graph(9372)
    with pytest.raises(CapacityError):
        encode(g, N, 200)
    assert encode(g, N, K).num_structures <= K


@pytest.mark.parametrize("name", ["f", "MLP", "RoeFlux_3d", "Encoder"])
def test_steps_match_evaluator_steps(name):
    """Per step: the mults and the resulting edge set (with the structures'
    features) are those of ``Evaluator.eliminate``."""
    g, enc = _task_graph(name), _encoded(name)
    ev = Evaluator(g)
    pos = {v: p for p, v in enumerate(enc.vertex_ids)}
    order = [int(v) for v in np.random.default_rng(1).permutation(np.array(g.eliminable))]
    s, es = game.initial_state(enc.tables), ev.root
    feat = np.asarray(enc.tables.struct_feat)
    for v in order:
        r = _step(enc.tables, s, pos[v])
        es, cost = ev.eliminate(es, v)
        assert bool(r.legal) and int(r.mults) == cost, f"step {v}: game {int(r.mults)} != evaluator {cost}"
        s = r.state
        E = np.asarray(s.edges)
        want_edges = {(pos[u], pos[w]): sid for w, ps in es.preds.items() for u, sid in ps.items()}
        assert set(zip(*np.nonzero(E >= 0))) == set(want_edges), f"edge sets differ after eliminating {v}"
        for (pu, pw), sid in want_edges.items():
            np.testing.assert_allclose(feat[E[pu, pw]], structure_features(ev.structures[sid]), rtol=1e-6)
    assert not bool(s.broken) and int(s.mults) == ev.cost(order)


def test_stacked_tables_play_each_graph():
    names = ["g", "PropaneCombustion", "MLP", "f"]
    encs = [_encoded(name, 128, K) for name in names]
    tables = stack([e.tables for e in encs])
    rng = np.random.default_rng(2)
    orders = [[int(v) for v in rng.permutation(np.array(_task_graph(n).eliminable))] for n in names]
    actions = jnp.stack([_padded_positions(e, o) for e, o in zip(encs, orders)])

    @jax.jit
    def play_all(tables, graph_ids, actions):
        states = jax.vmap(lambda gid: game.initial_state(tables, gid))(graph_ids)
        return jax.vmap(game.play, (None, 0, 0))(tables, states, actions)

    # Each game on its own graph, and the same orders on shuffled graph slots.
    final, _, _ = play_all(tables, jnp.arange(len(names)), actions)
    for k, (name, order) in enumerate(zip(names, orders)):
        assert int(final.mults[k]) == plan_elimination(_task_graph(name), order).report.mults
    assert not bool(jnp.any(final.broken))
    s0 = game.initial_state(tables, 2)
    np.testing.assert_array_equal(s0.edges, encs[2].tables.edges)
    np.testing.assert_array_equal(s0.remaining, encs[2].tables.eliminable)
    one = game.observe(encs[2].tables, game.initial_state(encs[2].tables))
    many = game.observe(tables, s0)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)


def _position_of_kind(enc, kind):
    return int(np.nonzero(np.asarray(enc.tables.kind) == kind)[0][0])


def test_illegal_actions_change_nothing():
    g, enc = _task_graph("g"), _encoded("g", 64, 16)
    tables = enc.tables
    elim = enc.positions_from_order(HEURISTICS["markowitz"](g))
    s = game.initial_state(tables)
    for p in elim[:5]:
        s = _step(tables, s, p).state
    illegal = {"eliminated": elim[0], "padding": enc.capacity - 1, "input": _position_of_kind(enc, INPUT),
               "output": _position_of_kind(enc, OUTPUT)}
    assert np.asarray(tables.kind)[enc.capacity - 1] == PAD
    for what, p in illegal.items():
        r = _step(tables, s, p)
        assert not bool(r.legal), what
        assert int(r.mults) == 0, what
        for a, b in zip(r.state, s):
            np.testing.assert_array_equal(a, b, err_msg=what)
    # A legal step does change the state (the check above can fail).
    r = _step(tables, s, elim[5])
    assert bool(r.legal) and not np.array_equal(r.state.edges, s.edges)
    assert np.asarray(tables.kind)[elim[5]] == INTERMEDIATE


def test_vmap_step_matches_single_steps():
    g, enc = _task_graph("g"), _encoded("g", 64, 16)
    tables = enc.tables
    elim = enc.positions_from_order(g.eliminable)
    s = game.initial_state(tables)
    batch = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 4), s)
    actions = jnp.asarray([elim[0], elim[3], elim[-1], enc.capacity - 1])
    res = jax.jit(jax.vmap(game.step, (None, 0, 0)))(tables, batch, actions)
    for b in range(4):
        one = _step(tables, s, actions[b])
        assert bool(res.legal[b]) == bool(one.legal) and int(res.mults[b]) == int(one.mults)
        for x, y in zip(res.state, one.state):
            np.testing.assert_array_equal(x[b], y)
    assert res.legal.tolist() == [True, True, True, False]


def test_capacity_errors():
    g = _task_graph("f")
    n = len(_encoded("f").vertex_ids)
    encode(g, n, K)  # exactly fits
    with pytest.raises(CapacityError, match="vertices"):
        encode(g, n - 1, K)
    k = _encoded("f").num_structures
    with pytest.raises(CapacityError, match="structures"):
        encode(g, N, k - 1)
    # Structures present before any elimination count too.
    small = _task_graph("g")
    with pytest.raises(CapacityError, match="structures"):
        encode(small, 64, _encoded("g").num_structures - 1)


def test_capacity_error_without_eliminable_vertices():
    g = ccjax.graph(lambda x: (2 * x, jnp.sum(x)), jnp.ones(3))
    assert not g.eliminable and len(g.edges) == 2
    with pytest.raises(CapacityError, match="structures"):
        encode(g, 8, 1)
    enc = encode(g, 8, 2)
    final, mults, legal = _play(enc.tables, jnp.arange(8))
    assert not bool(jnp.any(legal)) and int(final.mults) == 0
