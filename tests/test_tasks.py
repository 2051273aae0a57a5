"""Tests of the benchmark tasks (``ccjax.tasks``) and the random-function generator."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccjax.tasks import (
    ELEMENTWISE_FAMILIES,
    OP_FAMILIES,
    TASKS,
    Task,
    get_task,
    random_function,
    random_input_shapes,
    random_inputs,
    task_names,
)
from ccjax.tasks import _nn, encoder, finance, minpack, mlp, robot, roe

PAPER_ORDER = (
    "RoeFlux_1d",
    "RoeFlux_3d",
    "RobotArm_6DOF",
    "HumanHeartDipole",
    "PropaneCombustion",
    "BlackScholes_Jacobian",
    "MLP",
    "Encoder",
    "f",
    "g",
)


@pytest.fixture(autouse=True)
def x64() -> Iterator[None]:
    with jax.enable_x64(True):
        yield


# ------------------------------------------------------------------ helpers
# XLA's default CPU pipeline spends seconds compiling graphs of a few hundred ops;
# these options cut that about five-fold and do not change results.
FAST_COMPILE = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}



def _supported(options: dict) -> dict | None:
    """``options`` if this jaxlib accepts them, else ``None`` (default pipeline)."""
    try:
        jax.jit(lambda x: x + 1.0, compiler_options=options)(1.0)
        return options
    except Exception:  # noqa: BLE001 - unknown option names differ between XLA versions
        return None


FAST_COMPILE = _supported(FAST_COMPILE)


def fast_jit(fn: Callable) -> Callable:
    return jax.jit(fn, compiler_options=FAST_COMPILE)


def value_and_jacobian(fn: Callable, argnums: tuple[int, ...]) -> Callable:
    """One compiled function returning ``(fn(*args), jacrev(fn)(*args))``."""
    return fast_jit(lambda *a: (fn(*a), jax.jacrev(fn, argnums=argnums)(*a)))

def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def all_finite(tree) -> bool:
    return all(np.all(np.isfinite(x)) for x in leaves(tree))


def assert_trees_close(a, b, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def _sub_jaxprs(eqn) -> Iterator:
    for p in eqn.params.values():
        for q in p if isinstance(p, (tuple, list)) else (p,):
            inner = getattr(q, "jaxpr", q)  # ClosedJaxpr -> Jaxpr
            if hasattr(inner, "eqns"):
                yield inner


def primitives(jaxpr) -> set[str]:
    """Names of all primitives of a (closed) jaxpr, nested jaxprs included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names: set[str] = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in _sub_jaxprs(eqn):
            names |= primitives(sub)
    return names


def n_eqns(jaxpr) -> int:
    """Number of equations, nested jaxprs included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    return sum(1 + sum(n_eqns(s) for s in _sub_jaxprs(e)) for e in jaxpr.eqns)


def graph_jaxpr(task: Task, seed: int = 0):
    fn, args = task.graph_fn_and_inputs(seed)
    return jax.make_jaxpr(fn)(*args)


# ------------------------------------------------------------------ registry
def test_registry_names_and_lookup() -> None:
    assert task_names() == PAPER_ORDER
    assert tuple(TASKS) == PAPER_ORDER
    for name in PAPER_ORDER:
        assert get_task(name) is TASKS[name]
        assert get_task(name).name == name
    with pytest.raises(KeyError, match="RoeFlux_1d"):
        get_task("no_such_task")


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_task_fields(name: str) -> None:
    task = get_task(name)
    args = task.make_inputs(0)
    assert isinstance(args, tuple)
    assert task.argnums and all(0 <= a < len(args) for a in task.argnums)
    assert len(set(task.argnums)) == len(task.argnums)
    assert task.description
    if not isinstance(task.in_axes, int):
        assert len(task.in_axes) == len(args)


# ------------------------------------------------------------------ every task
@pytest.mark.parametrize("name", PAPER_ORDER)
def test_runs_eager_and_jit_finite(name: str) -> None:
    task = get_task(name)
    args = task.make_inputs(1)
    assert all(a.dtype == jnp.float64 for a in args)
    eager = task.fn(*args)
    jitted = fast_jit(task.fn)(*args)
    assert all_finite(eager)
    assert_trees_close(eager, jitted, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_jacrev_finite(name: str) -> None:
    task = get_task(name)
    fn, args = task.graph_fn_and_inputs(2)
    out, jac = value_and_jacobian(fn, task.argnums)(*args)
    assert all_finite(out)
    assert leaves(jac) and all_finite(jac)


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_vmap_batch_of_three(name: str) -> None:
    task = get_task(name)
    batch = task.batched_inputs(3, 3)
    out = fast_jit(task.vmapped_fn())(*batch)
    assert all(x.shape[0] == 3 for x in leaves(out))
    assert all_finite(out)
    # example 0 is make_inputs(seed); every example matches the unbatched function
    axes = (task.in_axes,) * len(batch) if isinstance(task.in_axes, int) else task.in_axes
    assert_trees_close(batch, task.batched_inputs(3, 3))
    single = fast_jit(task.fn)
    for i in range(3):
        ex = tuple(b if ax is None else b[i] for b, ax in zip(batch, axes))
        if i == 0:
            assert_trees_close(ex, task.make_inputs(3))
        assert_trees_close(jax.tree.map(lambda x: x[i], out), single(*ex), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_graph_fn_and_inputs(name: str) -> None:
    task = get_task(name)
    fn, args = task.graph_fn_and_inputs(0)
    unbatched = task.make_inputs(0)
    if task.batched:
        axes = (task.in_axes,) * len(args) if isinstance(task.in_axes, int) else task.in_axes
        for a, u, ax in zip(args, unbatched, axes):
            assert a.shape == (u.shape if ax is None else (1,) + u.shape)
    else:
        assert fn is task.fn
        assert_trees_close(args, unbatched)


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_inputs_follow_default_dtype(name: str) -> None:
    task = get_task(name)
    with jax.enable_x64(False):
        args32 = task.make_inputs(0)
        assert all(a.dtype == jnp.float32 for a in args32)
        assert all_finite(fast_jit(task.fn)(*args32))
    assert all(a.dtype == jnp.float64 for a in task.make_inputs(0))
    assert all(a.dtype == jnp.float64 for a in task.batched_inputs(0, 2))


EXPECTED_PRIMITIVES: dict[str, set[str]] = {
    "RoeFlux_1d": {"sqrt", "div", "abs", "mul", "add", "sub"},
    "RoeFlux_3d": {"sqrt", "div", "abs", "mul", "reduce_sum", "slice", "pad"},
    "RobotArm_6DOF": {"sin", "cos", "atan2", "sqrt", "mul", "add"},
    "HumanHeartDipole": {"mul", "add", "sub"},
    "PropaneCombustion": {"sqrt", "div", "mul", "add", "sub"},
    "BlackScholes_Jacobian": {"erf", "log", "exp", "sqrt", "div", "mul"},
    "MLP": {"dot_general", "tanh", "exp", "log", "reduce_max", "reduce_sum", "sqrt", "div"},
    "Encoder": {"dot_general", "exp", "log", "reduce_max", "reduce_sum", "sqrt", "max", "div"},
    "f": {"dot_general", "reshape", "transpose", "broadcast_in_dim", "reduce_sum", "reduce_max", "tanh"},
    "g": {"select_n", "clamp", "add", "mul"},
}
FORBIDDEN_PRIMITIVES = {"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "pjit", "jit"}


@pytest.mark.parametrize("name", PAPER_ORDER)
def test_graph_primitives(name: str) -> None:
    jaxpr = graph_jaxpr(get_task(name))
    prims = primitives(jaxpr)
    assert EXPECTED_PRIMITIVES[name] <= prims, EXPECTED_PRIMITIVES[name] - prims
    assert not prims & FORBIDDEN_PRIMITIVES


def test_g_is_scalar_graph() -> None:
    jaxpr = graph_jaxpr(get_task("g")).jaxpr
    assert len(jaxpr.invars) == 15
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            assert v.aval.shape == (1,), eqn


def test_report_equation_counts(capsys) -> None:
    counts = {name: n_eqns(graph_jaxpr(get_task(name))) for name in PAPER_ORDER}
    with capsys.disabled():
        print("\njaxpr equations per task graph:", counts)
    assert 50 <= counts["f"] <= 150
    assert 20 <= counts["g"] <= 100


# ------------------------------------------------------------------ Roe flux
def _state_1d(rho: float, u: float, p: float) -> list[jax.Array]:
    return [jnp.asarray(v) for v in (rho, rho * u, p / (roe.GAMMA - 1) + 0.5 * rho * u * u)]


def _state_3d(rho: float, vel, p: float) -> list[jax.Array]:
    vel = np.asarray(vel, dtype=np.float64)
    e = p / (roe.GAMMA - 1) + 0.5 * rho * vel @ vel
    return [jnp.asarray([rho]), jnp.asarray(rho * vel), jnp.asarray([e])]


@pytest.mark.parametrize("seed", range(5))
def test_roe_1d_consistency(seed: int) -> None:
    u = roe.roe_1d_inputs(seed)
    assert_trees_close(roe.roe_flux_1d(*u[:3], *u[:3]), roe.euler_flux_1d(*u[:3]))
    assert_trees_close(roe.roe_flux_1d(*u[3:], *u[3:]), roe.euler_flux_1d(*u[3:]))


def test_roe_1d_upwinds_supersonic_flow() -> None:
    # Roe's property A(U_L, U_R)(U_R - U_L) = F(U_R) - F(U_L): with all eigenvalues
    # of one sign the Roe flux is the upwind physical flux.
    left, right = _state_1d(1.0, 3.0, 1.0), _state_1d(0.8, 3.4, 0.9)
    assert_trees_close(roe.roe_flux_1d(*left, *right), roe.euler_flux_1d(*left))
    left, right = _state_1d(1.0, -3.0, 1.0), _state_1d(0.8, -3.4, 0.9)
    assert_trees_close(roe.roe_flux_1d(*left, *right), roe.euler_flux_1d(*right))


def test_roe_1d_subsonic_differs_from_average() -> None:
    left, right = _state_1d(1.0, 0.1, 1.0), _state_1d(0.125, 0.0, 0.1)  # Sod-like
    flux = np.array(roe.roe_flux_1d(*left, *right))
    avg = 0.5 * (np.array(roe.euler_flux_1d(*left)) + np.array(roe.euler_flux_1d(*right)))
    assert np.all(np.isfinite(flux)) and not np.allclose(flux, avg)
    assert flux[0] > 0  # mass flows from high to low pressure


@pytest.mark.parametrize("seed", range(5))
def test_roe_3d_consistency(seed: int) -> None:
    u = roe.roe_3d_inputs(seed)
    assert_trees_close(roe.roe_flux_3d(*u[:3], *u[:3]), roe.euler_flux_3d(*u[:3]))


def test_roe_3d_upwinds_supersonic_flow() -> None:
    left = _state_3d(1.0, [3.0, 0.5, -0.2], 1.0)
    right = _state_3d(0.7, [3.5, -0.3, 0.4], 0.8)
    assert_trees_close(roe.roe_flux_3d(*left, *right), roe.euler_flux_3d(*left))
    left = _state_3d(1.0, [-3.0, 0.5, -0.2], 1.0)
    right = _state_3d(0.7, [-3.5, -0.3, 0.4], 0.8)
    assert_trees_close(roe.roe_flux_3d(*left, *right), roe.euler_flux_3d(*right))


@pytest.mark.parametrize("seed", range(3))
def test_roe_3d_reduces_to_1d(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rl, pl, rr, pr = rng.uniform(0.5, 1.5, 4)
    ul, ur = rng.uniform(-1.0, 1.0, 2)
    left3, right3 = _state_3d(rl, [ul, 0, 0], pl), _state_3d(rr, [ur, 0, 0], pr)
    f_rho, f_m, f_e = roe.roe_flux_3d(*left3, *right3)
    f1 = roe.roe_flux_1d(*_state_1d(rl, ul, pl), *_state_1d(rr, ur, pr))
    assert_trees_close((f_rho[0], f_m[0], f_e[0]), f1)
    np.testing.assert_allclose(f_m[1:], 0.0, atol=1e-14)


def test_roe_3d_shear_waves_are_upwinded() -> None:
    # Contact/shear discontinuity moving right (u > 0, same p and u): the tangential
    # momentum flux is carried from the left state only.
    left = _state_3d(1.0, [0.5, 0.7, -0.4], 1.0)
    right = _state_3d(0.6, [0.5, -0.2, 0.9], 1.0)
    f_rho, f_m, f_e = roe.roe_flux_3d(*left, *right)
    np.testing.assert_allclose(f_m[1:], 0.5 * np.array([0.7, -0.4]), rtol=1e-12)
    np.testing.assert_allclose(f_rho, [0.5], rtol=1e-12)


# ------------------------------------------------------------------ robot arm
def _dh_numpy(q: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    for theta, (d, a, alpha) in zip(q, robot.DH_PARAMS):
        ct, st, ca, sa = np.cos(theta), np.sin(theta), np.cos(alpha), np.sin(alpha)
        t = t @ np.array(
            [[ct, -st * ca, st * sa, a * ct], [st, ct * ca, -ct * sa, a * st], [0, sa, ca, d], [0, 0, 0, 1]]
        )
    return t


def test_robot_zero_pose() -> None:
    out = np.array(robot.robot_arm_6dof(*[jnp.asarray(0.0)] * 6))
    # UR5 home: x = a2 + a3, y = -(d4 + d6), z = d1 - d5; flange rotated +90 deg about x.
    np.testing.assert_allclose(out[:3], [-0.81725, -0.19145, 0.089159 - 0.09465], atol=1e-12)
    np.testing.assert_allclose(out[3:], [np.pi / 2, 0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_robot_matches_matrix_product(seed: int) -> None:
    q = robot.robot_inputs(seed)
    out = np.array(robot.robot_arm_6dof(*q))
    t = _dh_numpy(np.array(q))
    np.testing.assert_allclose(out[:3], t[:3, 3], atol=1e-12)
    roll, pitch, yaw = out[3:]
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    ry = np.array([[np.cos(pitch), 0, np.sin(pitch)], [0, 1, 0], [-np.sin(pitch), 0, np.cos(pitch)]])
    rx = np.array([[1, 0, 0], [0, np.cos(roll), -np.sin(roll)], [0, np.sin(roll), np.cos(roll)]])
    np.testing.assert_allclose(rz @ ry @ rx, t[:3, :3], atol=1e-12)


# ------------------------------------------------------------------ MINPACK-2
def _hhd_jacobian(x: np.ndarray) -> np.ndarray:
    a, b, c, d, t, u, v, w = x
    tt, vv, uu, ww, tv, uw = t * t, v * v, u * u, w * w, t * v, u * w
    tsv, usw = tt - vv, uu - ww
    t3v, v3t, u3w, w3u = tt - 3 * vv, vv - 3 * tt, uu - 3 * ww, ww - 3 * uu
    return np.array(
        [
            [1, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 0, 0, 0, 0],
            [t, u, -v, -w, a, b, -c, -d],
            [v, w, t, u, c, d, a, b],
            [tsv, usw, -2 * tv, -2 * uw, 2 * (a * t - c * v), 2 * (b * u - d * w), -2 * (a * v + c * t), -2 * (b * w + d * u)],
            [2 * tv, 2 * uw, tsv, usw, 2 * (c * t + a * v), 2 * (d * u + b * w), 2 * (a * t - c * v), 2 * (b * u - d * w)],
            [t * t3v, u * u3w, v * v3t, w * w3u, 3 * (a * tsv - 2 * c * tv), 3 * (b * usw - 2 * d * uw), -3 * (c * tsv + 2 * a * tv), -3 * (d * usw + 2 * b * uw)],
            [-v * v3t, -w * w3u, t * t3v, u * u3w, 3 * (c * tsv + 2 * a * tv), 3 * (d * usw + 2 * b * uw), 3 * (a * tsv - 2 * c * tv), 3 * (b * usw - 2 * d * uw)],
        ]
    )  # fmt: skip


def _propane_jacobian(x: np.ndarray) -> np.ndarray:
    k5, k6, k7, k8, k9, k10 = minpack.PROPANE_K
    p = minpack.PROPANE_P
    x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11 = x
    pdx, sq = p / x11, np.sqrt(p / x11)
    dsq = -0.5 * sq / x11  # d sqrt(p/x11) / dx11
    j = np.zeros((11, 11))
    j[0, [0, 3]] = 1
    j[1, [0, 1, 3, 6, 7, 8, 9]] = [2, 1, 1, 1, 1, 1, 2]
    j[2, [1, 4, 5, 6]] = [2, 2, 1, 1]
    j[3, [2, 8]] = [2, 1]
    j[4, [0, 1, 3, 4]] = [-x5, k5 * x4, k5 * x2, -x1]
    j[5, [0, 1, 3, 5, 10]] = [
        -0.5 * x6 * sq / np.sqrt(x1), 0.5 * k6 * np.sqrt(x4 / x2), 0.5 * k6 * np.sqrt(x2 / x4),
        -np.sqrt(x1) * sq, -np.sqrt(x1) * x6 * dsq,
    ]  # fmt: skip
    j[6, [0, 1, 3, 6, 10]] = [
        0.5 * k7 * np.sqrt(x2 / x1), 0.5 * k7 * np.sqrt(x1 / x2), -0.5 * x7 * sq / np.sqrt(x4),
        -np.sqrt(x4) * sq, -np.sqrt(x4) * x7 * dsq,
    ]  # fmt: skip
    j[7, [0, 3, 7, 10]] = [k8, -x8 * pdx, -x4 * pdx, x4 * x8 * p / x11**2]
    j[8, [0, 2, 3, 8, 10]] = [k9 * np.sqrt(x3), 0.5 * k9 * x1 / np.sqrt(x3), -x9 * sq, -x4 * sq, -x4 * x9 * dsq]
    j[9, [0, 3, 9, 10]] = [2 * k10 * x1, -2 * x4 * x10 * pdx, -(x4**2) * pdx, x4**2 * x10 * p / x11**2]
    j[10, :10] = -1
    j[10, 10] = 1
    return j


def _jac_matrix(fn: Callable, args: tuple) -> np.ndarray:
    jac = jax.jacrev(fn, argnums=tuple(range(len(args))))(*args)
    return np.array([[float(jac[i][j]) for j in range(len(args))] for i in range(len(jac))])


@pytest.mark.parametrize("seed", range(3))
def test_heart_dipole_jacobian_matches_analytic(seed: int) -> None:
    args = minpack.hhd_inputs(seed)
    np.testing.assert_allclose(_jac_matrix(minpack.human_heart_dipole, args), _hhd_jacobian(np.array(args)), atol=1e-12)


def test_heart_dipole_residuals_at_start() -> None:
    args = [jnp.asarray(v) for v in minpack.HHD_START]
    res = np.array(minpack.human_heart_dipole(*args))
    a, b, c, d, *_ = minpack.HHD_START
    np.testing.assert_allclose(res[:2], [a + b - 0.485, c + d + 0.0019], atol=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_propane_jacobian_matches_analytic(seed: int) -> None:
    args = minpack.propane_inputs(seed)
    assert all(float(a) > 0 for a in args)
    np.testing.assert_allclose(
        _jac_matrix(minpack.propane_combustion, args), _propane_jacobian(np.array(args)), rtol=1e-10, atol=1e-14
    )


def test_propane_start_point() -> None:
    np.testing.assert_allclose(minpack.PROPANE_START[:5], [5.0, 2.5, 5.0, 0.1, 0.05 * 0.193])
    res = np.array(minpack.propane_combustion(*[jnp.asarray(v) for v in minpack.PROPANE_START]))
    np.testing.assert_allclose(res[0], 5.0 + 0.1 - 3.0)
    np.testing.assert_allclose(res[10], 20.0 - sum(minpack.PROPANE_START[:10]))


# ------------------------------------------------------------------ Black-Scholes
def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _ncdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("seed", range(4))
def test_black_scholes_greeks(seed: int) -> None:
    args = finance.black_scholes_inputs(seed)
    s, k, r, sig, t = (float(a) for a in args)
    d1 = (math.log(s / k) + (r + 0.5 * sig**2) * t) / (sig * math.sqrt(t))
    d2 = d1 - sig * math.sqrt(t)
    disc = math.exp(-r * t)
    np.testing.assert_allclose(
        float(finance.black_scholes_call(*args)), s * _ncdf(d1) - k * disc * _ncdf(d2), rtol=1e-12
    )
    grad = np.array(finance.black_scholes_gradient(*args))
    expected = [
        _ncdf(d1),  # delta
        -disc * _ncdf(d2),
        k * t * disc * _ncdf(d2),  # rho
        s * _phi(d1) * math.sqrt(t),  # vega
        s * _phi(d1) * sig / (2 * math.sqrt(t)) + r * k * disc * _ncdf(d2),  # -theta
    ]
    np.testing.assert_allclose(grad, expected, rtol=1e-10)
    hess = _jac_matrix(finance.black_scholes_gradient, args)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hess[0, 0], _phi(d1) / (s * sig * math.sqrt(t)), rtol=1e-10)  # gamma
    np.testing.assert_allclose(hess[0, 3], -_phi(d1) * d2 / sig, rtol=1e-10)  # vanna


# ------------------------------------------------------------------ MLP, encoder
def test_nn_helpers_match_jax_nn() -> None:
    z = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)))
    np.testing.assert_allclose(_nn.softmax(z), jax.nn.softmax(z, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(_nn.log_softmax(z), jax.nn.log_softmax(z, axis=-1), rtol=1e-12)
    g, b = jnp.arange(5.0), jnp.ones(5)
    ref = (z - z.mean(-1, keepdims=True)) / jnp.sqrt(z.var(-1, keepdims=True) + _nn.LAYER_NORM_EPS) * g + b
    np.testing.assert_allclose(_nn.layer_norm(z, g, b), ref, rtol=1e-12)


def _ref_layer_norm(x, g, b):
    return (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5) * g + b


def test_mlp_loss_reference() -> None:
    w1, b1, w2, b2, g, be, x, y = mlp.mlp_inputs(0)
    assert (w1.shape, b1.shape, w2.shape, b2.shape, g.shape, be.shape) == ((8, 4), (8,), (4, 8), (4,), (8,), (8,))
    h = _ref_layer_norm(jnp.tanh(w1 @ x + b1), g, be)
    ref = -jnp.sum(y * jax.nn.log_softmax(jnp.tanh(w2 @ h + b2)))
    np.testing.assert_allclose(mlp.mlp_loss(w1, b1, w2, b2, g, be, x, y), ref, rtol=1e-12)
    assert float(np.sum(y)) == 1.0


def test_encoder_loss_reference() -> None:
    args = encoder.encoder_inputs(0)
    x, y = args[-2], args[-1]
    n = len(encoder.BLOCK_PARAMS)
    for blk in range(2):
        wq, wk, wv, wo, g1, b1, wf1, bf1, wf2, bf2, g2, b2 = args[blk * n : (blk + 1) * n]
        att = jax.nn.softmax((x @ wq) @ (x @ wk).T / 2.0, axis=-1)
        x = _ref_layer_norm(x + att @ (x @ wv) @ wo, g1, b1)
        x = _ref_layer_norm(x + jax.nn.relu(x @ wf1 + bf1) @ wf2 + bf2, g2, b2)
    logits = x @ args[2 * n] + args[2 * n + 1]
    ref = -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits, axis=-1), axis=-1))
    np.testing.assert_allclose(encoder.encoder_loss(*args), ref, rtol=1e-12)
    assert len(args) == 28 and get_task("Encoder").argnums == tuple(range(26))


def test_mlp_parameter_jacobian_shapes() -> None:
    task = get_task("MLP")
    fn, args = task.graph_fn_and_inputs(0)
    jac = jax.eval_shape(jax.jacrev(fn, argnums=task.argnums), *args)
    assert [j.shape for j in jac] == [(1, 8, 4), (1, 8), (1, 4, 8), (1, 4), (1, 8), (1, 8)]


# ------------------------------------------------------------------ random functions
SHAPES = ((4,), (2, 3), (4, 4), (4, 1))


def test_random_function_is_deterministic() -> None:
    f1 = random_function(7, SHAPES, n_ops=40)
    f2 = random_function(7, SHAPES, n_ops=40)
    assert f1.program == f2.program
    args = random_inputs(7, SHAPES)
    assert str(jax.make_jaxpr(f1)(*args)) == str(jax.make_jaxpr(f2)(*args))
    assert_trees_close(args, random_inputs(7, SHAPES), rtol=0, atol=0)


def test_random_function_differs_across_seeds() -> None:
    programs = {random_function(s, SHAPES, n_ops=20).program for s in range(30)}
    assert len(programs) == 30
    assert not np.allclose(np.asarray(random_inputs(0, [(5,)])[0]), np.asarray(random_inputs(1, [(5,)])[0]))


@pytest.mark.parametrize("chunk", range(5))
def test_random_functions_finite_with_finite_jacobians(chunk: int) -> None:
    for seed in range(10 * chunk, 10 * chunk + 10):  # 50 seeds in all
        shapes = random_input_shapes(seed)
        fn = random_function(seed, shapes, n_ops=5 + seed % 20)
        args = random_inputs(seed, shapes)
        out, jac = value_and_jacobian(fn, tuple(range(len(shapes))))(*args)
        outs = out if isinstance(out, tuple) else (out,)
        assert tuple(o.shape for o in outs) == fn.output_shapes, fn.program
        assert all_finite(outs), fn.program
        assert all_finite(jac), fn.program


def test_random_function_jaxpr_structure() -> None:
    """All inputs used, no dead equations, same value twice in one equation somewhere."""
    reused = 0
    for seed in range(20):
        shapes = random_input_shapes(seed)
        fn = random_function(seed, shapes, n_ops=25)
        jaxpr = jax.make_jaxpr(fn)(*random_inputs(seed, shapes)).jaxpr
        used = {id(v) for e in jaxpr.eqns for v in e.invars} | {id(v) for v in jaxpr.outvars}
        assert all(id(v) in used for v in jaxpr.invars), fn.program
        assert all(any(id(o) in used for o in e.outvars) for e in jaxpr.eqns), fn.program
        reused += any(
            len({id(v) for v in e.invars if hasattr(v, "aval") and not hasattr(v, "val")})
            < len([v for v in e.invars if not hasattr(v, "val")])
            for e in jaxpr.eqns
        )
    assert reused >= 5


FAMILY_PRIMITIVES: dict[str, set[str]] = {
    "unary": {"sin", "cos", "tanh", "logistic", "exp", "log1p", "sqrt", "neg", "abs", "integer_pow", "square"},
    "binary": {"add", "sub", "mul", "div", "max", "min", "atan2"},
    "reduce": {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod"},
    "reshape": {"reshape"},
    "transpose": {"transpose"},
    "broadcast": {"broadcast_in_dim"},
    "slice": {"slice", "squeeze"},
    "concatenate": {"concatenate"},
    "dot": {"dot_general"},
    "cumsum": {"cumsum"},
    "where": {"select_n", "gt", "lt", "ge", "le"},
    "clip": {"clamp"},
    "dynamic_slice": {"dynamic_slice"},
    "gather": {"gather"},
    "scatter_add": {"scatter-add"},
    "pad": {"pad"},
}


def test_random_functions_cover_every_op_family() -> None:
    assert set(FAMILY_PRIMITIVES) == set(OP_FAMILIES)
    seen: set[str] = set()
    for seed in range(40):
        shapes = random_input_shapes(seed)
        fn = random_function(seed, shapes, n_ops=30)
        seen |= primitives(jax.make_jaxpr(fn)(*random_inputs(seed, shapes)))
    missing = set().union(*FAMILY_PRIMITIVES.values()) - seen
    assert not missing
    assert "jit" in seen or "pjit" in seen  # nested=True draws jnp.where/clip/cumsum/pad


@pytest.mark.parametrize("family", OP_FAMILIES)
def test_each_op_family_alone(family: str) -> None:
    prims: set[str] = set()
    for seed in range(2):
        fn = random_function(seed, SHAPES, n_ops=6, ops=[family], nested=False)
        args = random_inputs(seed, SHAPES)
        jaxpr = jax.make_jaxpr(fn)(*args)
        prims |= primitives(jaxpr)
        assert not prims & {"jit", "pjit"}
        assert all_finite(value_and_jacobian(fn, (0, 1, 2, 3))(*args))
    assert prims & FAMILY_PRIMITIVES[family], (family, prims)


def test_scalar_inputs_and_output_count() -> None:
    fn = random_function(0, [()] * 15, n_ops=30, ops=ELEMENTWISE_FAMILIES, n_outputs=1)
    out = jax.eval_shape(fn, *random_inputs(0, [()] * 15))
    assert isinstance(out, jax.ShapeDtypeStruct) and out.shape == ()
    fn3 = random_function(1, [(), ()], n_ops=20, n_outputs=3)  # all families from scalars
    out3 = jax.eval_shape(fn3, *random_inputs(1, [(), ()]))
    assert isinstance(out3, tuple) and len(out3) == 3
    with pytest.raises(ValueError, match="unknown op families"):
        random_function(0, SHAPES, ops=["nope"])


@settings(max_examples=8, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_function_vmap_matches_loop(seed: int) -> None:
    shapes = random_input_shapes(seed)
    fn = random_function(seed, shapes, n_ops=12)
    batch = [random_inputs(seed + i, shapes) for i in range(3)]
    stacked = [jnp.stack(xs) for xs in zip(*batch)]
    out = fast_jit(jax.vmap(fn))(*stacked)
    single = fast_jit(fn)
    for i in range(3):
        assert_trees_close(jax.tree.map(lambda x: x[i], out), single(*batch[i]), rtol=1e-9, atol=1e-11)
