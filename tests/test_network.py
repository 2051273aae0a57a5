"""The policy-value network: permutation equivariance, independence of the
capacity, masking of illegal actions, and the value transform."""
import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

jax.config.update("jax_enable_x64", True)

from ccjax.orders import HEURISTICS  # noqa: E402
from ccjax.search import game, network  # noqa: E402
from ccjax.search.corpus import task_graph  # noqa: E402
from ccjax.search.network import ILLEGAL_LOGIT, NetworkConfig  # noqa: E402
from ccjax.search.tables import encode  # noqa: E402

NET = NetworkConfig(dim=16, heads=2, layers=2, edge_dim=4)


@functools.lru_cache(maxsize=None)
def _encoded(name, n):
    return encode(task_graph(name), n, 64)


@functools.lru_cache(maxsize=None)
def _params(seed=0):
    obs = game.observe(_encoded("g", 64).tables, game.initial_state(_encoded("g", 64).tables))
    return jax.jit(network.PolicyValueNet(NET).init)(jax.random.PRNGKey(seed), obs)


_step = jax.jit(game.step)


@jax.jit
def _net(params, tables, state):
    obs = game.observe(tables, state)
    logits, value = network.PolicyValueNet(NET).apply(params, obs)
    return logits, value, obs.legal


def _midgame(enc, steps):
    """The state after eliminating the first ``steps`` vertices of Markowitz's order."""
    s = game.initial_state(enc.tables)
    order = enc.positions_from_order(HEURISTICS["markowitz"](task_graph("g")))
    for p in order[:steps]:
        s = _step(enc.tables, s, p).state
    return s


def _permuted(tables, state, perm):
    """Tables and state with real position ``i`` moved to ``perm[i]`` (padding stays)."""
    n = tables.edges.shape[0]
    full = np.concatenate([perm, np.arange(len(perm), n)])  # old position -> new position
    inv = np.argsort(full)  # new position -> old position
    ptab = tables._replace(edges=np.asarray(tables.edges)[np.ix_(inv, inv)], kind=np.asarray(tables.kind)[inv],
                           eliminable=np.asarray(tables.eliminable)[inv],
                           vertex_feat=np.asarray(tables.vertex_feat)[inv])
    pstate = state._replace(edges=jnp.asarray(state.edges)[jnp.ix_(inv, inv)], remaining=state.remaining[inv])
    return ptab, pstate, full


@pytest.mark.parametrize("steps", [0, 10])
def test_permutation_equivariance(steps):
    enc = _encoded("g", 64)
    state = _midgame(enc, steps)
    params = _params()
    logits, value, legal = _net(params, enc.tables, state)
    rng = np.random.default_rng(steps)
    perm = rng.permutation(enc.num_vertices)
    assert not np.array_equal(perm, np.arange(enc.num_vertices))
    ptab, pstate, full = _permuted(enc.tables, state, perm)
    plogits, pvalue, plegal = _net(params, ptab, pstate)
    np.testing.assert_array_equal(np.asarray(plegal)[full], legal)
    np.testing.assert_allclose(np.asarray(plogits)[full], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pvalue, value, rtol=1e-4, atol=1e-5)
    # The logits do differ between positions (the check above has teeth).
    live = np.asarray(logits)[np.asarray(legal)]
    assert np.ptp(live) > 1e-3


@pytest.mark.parametrize("steps", [0, 6])
def test_edge_table_is_the_edge_mlp_on_every_pair(steps):
    """The attention biases gathered from the ``2K + 1`` rows of the edge
    table equal the edge MLP run on (features of ``u -> w``, features of
    ``w -> u``) at every pair, zeros for a missing edge, on a board whose
    positions are permuted (edges point both ways in position order)."""
    enc = _encoded("g", 64)
    state = _midgame(enc, steps)
    perm = np.random.default_rng(steps).permutation(enc.num_vertices)
    tables, state, _ = _permuted(enc.tables, state, perm)
    obs = game.observe(tables, state)
    ids, feat = np.asarray(obs.edge_ids), np.asarray(obs.struct_feat)
    present = ids >= 0
    assert present.any() and not (present & present.T).any()
    assert np.tril(present).any() and np.triu(present).any()
    p = _params()["params"]

    def mlp(x):
        h = jax.nn.gelu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
        return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]

    per_edge = np.where(present[..., None], feat[np.maximum(ids, 0)], 0.0)
    every_pair = mlp(np.concatenate([per_edge, per_edge.transpose(1, 0, 2)], axis=-1))
    gathered = mlp(network._edge_rows(obs.struct_feat))[network._edge_row_index(obs.edge_ids, len(feat))]
    np.testing.assert_allclose(gathered, every_pair, rtol=1e-6, atol=1e-6)


def test_same_params_any_capacity():
    small, big = _encoded("g", 64), _encoded("g", 128)
    n = small.num_vertices
    params = _params()
    for steps in (0, 7):
        l64, v64, _ = _net(params, small.tables, _midgame(small, steps))
        l128, v128, legal128 = _net(params, big.tables, _midgame(big, steps))
        np.testing.assert_allclose(l128[:n], l64[:n], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(v128, v64, rtol=1e-4, atol=1e-5)
        assert not bool(jnp.any(legal128[n:]))
        assert bool(jnp.all(l128[n:] == ILLEGAL_LOGIT))


def test_illegal_positions_get_illegal_logit():
    enc = _encoded("g", 64)
    state = _midgame(enc, 5)
    params = _params(1)
    logits, _, legal = _net(params, enc.tables, state)
    logits, legal = np.asarray(logits), np.asarray(legal)
    np.testing.assert_array_equal(legal, np.asarray(state.remaining))
    assert legal.sum() == len(task_graph("g").eliminable) - 5
    assert np.all(logits[~legal] == ILLEGAL_LOGIT)
    assert np.all(logits[legal] > ILLEGAL_LOGIT / 2)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32)))
    assert np.all(probs[~legal] == 0.0)


def test_batched_apply_matches_single():
    enc = _encoded("g", 64)
    params = _params()
    states = [_midgame(enc, k) for k in (0, 3, 9)]
    batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)
    obs = jax.vmap(game.observe, (None, 0))(enc.tables, batch)
    logits, value = network.apply(NET, params, obs)
    for b, s in enumerate(states):
        l1, v1, _ = _net(params, enc.tables, s)
        np.testing.assert_allclose(logits[b], l1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(value[b], v1, rtol=1e-5, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(x=st.floats(-1e5, 1e5, allow_nan=False))
def test_inverse_value_transform(x):
    y = network.value_transform(jnp.float64(x))
    back = float(network.inverse_value_transform(y))
    assert back == pytest.approx(x, rel=1e-9, abs=1e-9)


def test_value_transform_is_monotone_and_compressive():
    x = jnp.linspace(-1000.0, 1000.0, 2001, dtype=jnp.float64)
    y = network.value_transform(x)
    assert bool(jnp.all(jnp.diff(y) > 0))
    assert float(network.value_transform(1000.0)) < 40.0
    np.testing.assert_allclose(network.inverse_value_transform(y), x, rtol=1e-9, atol=1e-9)
