"""Whole-graph properties: random functions x random orders against jax.jacrev,
and the cost model against an independent count of what the executor runs."""
import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

jax.config.update("jax_enable_x64", True)

from counting import count_mults

import ccjax
from ccjax.trace import trace
from ccjax.eliminate import partial_values, plan_elimination, run_plan
from ccjax.orders import HEURISTICS
from ccjax.tasks import TASKS, random_function, random_input_shapes, random_inputs


def _close(got, want):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def _orders(g, rng, n_random=2):
    orders = [HEURISTICS[name](g) for name in ("fwd", "rev", "markowitz")]
    for _ in range(n_random):
        orders.append(tuple(int(v) for v in rng.permutation(np.array(g.eliminable, dtype=int))))
    return orders


def _random_case(seed):
    shapes = random_input_shapes(seed)
    fn = random_function(seed, shapes, n_ops=int(np.random.default_rng(seed).integers(5, 30)))
    args = random_inputs(seed, shapes)
    argnums = tuple(range(len(shapes)))
    return fn, args, argnums


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10**6))
def test_random_functions_random_orders_match_jacrev(seed):
    fn, args, argnums = _random_case(seed)
    want = jax.jacrev(fn, argnums=argnums)(*args)
    g = ccjax.graph(fn, *args, argnums=argnums)
    for order in _orders(g, np.random.default_rng(seed)):
        _close(jax.jit(ccjax.jacve(fn, argnums=argnums, order=order))(*args), want)


# 30+ diverse functions x {fwd, rev, markowitz, 2 random orders}: zero mismatches.
DIVERSE_SEEDS = list(range(1000, 1032))


@pytest.mark.parametrize("seed", DIVERSE_SEEDS)
def test_diverse_functions_all_orders(seed):
    fn, args, argnums = _random_case(seed)
    want = jax.jacrev(fn, argnums=argnums)(*args)
    g = ccjax.graph(fn, *args, argnums=argnums)
    for order in _orders(g, np.random.default_rng(seed)):
        _close(jax.jit(ccjax.jacve(fn, argnums=argnums, order=order))(*args), want)


def _executed_mults(g, plan, fn, args, argnums):
    """Multiplications in the jaxpr of the elimination alone, with the
    partials' values fed in as inputs."""
    traced, _, _ = trace(fn, args, {}, argnums, False)
    env = g.program.evaluate(traced.leaves, list(traced.closed.consts))
    return count_mults(lambda raw: run_plan(g, plan, raw), partial_values(g, env))


def check_cost_is_executed(fn, args, argnums=0, seed=0, n_random=2):
    """In the named orders and ``n_random`` random ones, the cost model's
    count equals the multiplications of the elimination's jaxpr."""
    g = ccjax.graph(fn, *args, argnums=argnums)
    for order in _orders(g, np.random.default_rng(seed), n_random):
        plan = plan_elimination(g, order)
        assert _executed_mults(g, plan, fn, args, argnums) == plan.report.mults


@pytest.mark.parametrize("seed", range(2000, 2012))
def test_cost_model_equals_executed_mults_random(seed):
    fn, args, argnums = _random_case(seed)
    check_cost_is_executed(fn, args, argnums, seed)


@pytest.mark.parametrize("name", ["RoeFlux_1d", "RobotArm_6DOF", "HumanHeartDipole", "PropaneCombustion",
                                  "BlackScholes_Jacobian", "MLP", "g"])
def test_cost_model_equals_executed_mults_tasks(name):
    task = TASKS[name]
    fn, args = task.graph_fn_and_inputs(0)
    g = ccjax.graph(fn, *args, argnums=task.argnums)
    for order in _orders(g, np.random.default_rng(0), n_random=1):
        plan = plan_elimination(g, order)
        assert _executed_mults(g, plan, fn, args, task.argnums) == plan.report.mults
        assert ccjax.cost(fn, *args, argnums=task.argnums, order=order) == plan.report.mults


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tasks_match_jacrev(name):
    task = TASKS[name]
    fn, args = task.graph_fn_and_inputs(0)
    want = jax.jacrev(fn, argnums=task.argnums)(*args)
    for order in ("fwd", "rev", "markowitz"):
        _close(jax.jit(ccjax.jacve(fn, argnums=task.argnums, order=order))(*args), want)
