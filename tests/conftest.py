"""Shared test helpers for ccjax.

* float64 is enabled for the whole session (at import time).
* :func:`assert_jac_equal` checks identical pytree structure (dicts stay
  dicts), identical shapes and dtypes per leaf, and allclose values.
* :data:`ORDERS` / the ``order`` fixture: the named elimination orders.
* :func:`random_orders`: seeded random permutations of ``graph.eliminable``.
* ``order="auto"`` runs without its time budget in every test
  (:func:`unbudgeted_quick_order`).
* :func:`check_orders`: compare ``ccjax.jacve`` under every named order and
  a few random orders against a reference (``jax.jacrev`` by default),
  reporting every failing order at once.
"""
from __future__ import annotations

import contextlib
import os

# Tests compile hundreds of small programs: XLA's cheapest CPU pipeline keeps
# that fast (results are unaffected; benchmarks use the default pipeline).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                      "--xla_llvm_disable_expensive_passes=true")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import ccjax  # noqa: E402

ORDERS = ["fwd", "rev", "markowitz", "auto"]


@pytest.fixture(params=ORDERS)
def order(request):
    """Each named elimination order in turn."""
    return request.param


def _describe(tree) -> str:
    return str(jax.tree_util.tree_structure(tree))


def assert_jac_equal(got, want, rtol: float = 1e-10, atol: float = 1e-10, what: str = "") -> None:
    """Same treedef, same shape and dtype per leaf, values allclose."""
    prefix = f"{what}: " if what else ""
    got_leaves, got_def = jax.tree_util.tree_flatten(got)
    want_leaves, want_def = jax.tree_util.tree_flatten(want)
    assert got_def == want_def, f"{prefix}pytree structure differs: got {got_def}, want {want_def}"
    for k, (g, w) in enumerate(zip(got_leaves, want_leaves)):
        g_shape, w_shape = np.shape(g), np.shape(w)
        assert g_shape == w_shape, f"{prefix}leaf {k}: shape {g_shape} != {w_shape}"
        g_dtype, w_dtype = jnp.asarray(g).dtype, jnp.asarray(w).dtype
        assert g_dtype == w_dtype, f"{prefix}leaf {k}: dtype {g_dtype} != {w_dtype}"
        if g_dtype == jax.dtypes.float0:
            continue
        g_np = np.asarray(g, dtype=np.float64) if np.issubdtype(g_dtype, np.bool_) else np.asarray(g)
        w_np = np.asarray(w, dtype=np.float64) if np.issubdtype(w_dtype, np.bool_) else np.asarray(w)
        if not np.allclose(g_np, w_np, rtol=rtol, atol=atol, equal_nan=True):
            diff = np.abs(g_np.astype(np.float64) - w_np.astype(np.float64))
            raise AssertionError(
                f"{prefix}leaf {k} (shape {g_shape}) values differ, max abs diff "
                f"{np.nanmax(diff) if diff.size else 0}\n got={g_np}\nwant={w_np}")


def random_orders(graph, n: int = 2, seed: int = 0) -> list[tuple[int, ...]]:
    """``n`` seeded random permutations of ``graph.eliminable`` (plain ints)."""
    rng = np.random.default_rng(seed)
    elim = [int(v) for v in graph.eliminable]
    return [tuple(int(v) for v in rng.permutation(elim)) for _ in range(n)]


def all_orders(fun, *args, argnums=0, n_random: int = 2, seed: int = 0, **kwargs) -> list:
    """The named orders followed by ``n_random`` random permutations."""
    g = ccjax.graph(fun, *args, argnums=argnums, **kwargs)
    return list(ORDERS) + random_orders(g, n_random, seed)


def check_orders(fun, *args, argnums=0, reference=None, orders=None, n_random: int = 2,
                 seed: int = 0, rtol: float = 1e-10, atol: float = 1e-10, has_aux: bool = False,
                 allow_int: bool = False, **kwargs) -> None:
    """``ccjax.jacve(fun)`` under every order equals ``reference(fun)``.

    All orders are tried; every failure (exception or mismatch) is collected
    and reported together so one run shows which orders are broken.
    """
    reference = jax.jacrev if reference is None else reference
    if reference is jax.jacfwd:
        want = reference(fun, argnums=argnums, has_aux=has_aux)(*args, **kwargs)
    else:
        want = reference(fun, argnums=argnums, has_aux=has_aux, allow_int=allow_int)(*args, **kwargs)
    if orders is None:
        try:
            orders = all_orders(fun, *args, argnums=argnums, n_random=n_random, seed=seed, **kwargs)
        except Exception as e:  # graph construction itself failed
            raise AssertionError(f"ccjax.graph failed: {type(e).__name__}: {e}") from e
    failures = []
    for o in orders:
        try:
            got = ccjax.jacve(fun, argnums=argnums, has_aux=has_aux, allow_int=allow_int,
                              order=o)(*args, **kwargs)
            assert_jac_equal(got, want, rtol=rtol, atol=atol, what=f"order={o!r}")
        except Exception as e:  # noqa: BLE001 - collect every failing order
            failures.append(f"order={o!r}: {type(e).__name__}: {str(e)[:1500]}")
    if failures:
        raise AssertionError(f"{len(failures)}/{len(orders)} orders failed:\n" + "\n".join(failures))


@pytest.fixture(autouse=True)
def unbudgeted_quick_order(monkeypatch):
    """``order="auto"`` without its time budget, so every test sees the same
    order on any machine: a loaded CI runner once stalled past the budget and
    ``auto`` silently fell back to forward mode's order.  Tests of the
    budget pass ``budget=`` explicitly."""
    from ccjax.orders import search

    monkeypatch.setattr(search, "QUICK_BUDGET", None)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@contextlib.contextmanager
def counted_compiles():
    """Yields a list that collects one entry per XLA compilation inside the block."""
    compiles: list = []

    def listener(event, secs, **kw):
        if event.endswith("backend_compile_duration"):
            compiles.append(secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
