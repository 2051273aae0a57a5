"""``ccjax.tune``: measured choice of the program ``order="auto"`` runs.

Timing never decides a test here: where a choice matters, ``measure`` is
replaced by fixed times, and every chosen program is checked against
``jax.jacrev``.
"""
from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ccjax
import ccjax.tuning as tuning
from ccjax.api import _plan
from ccjax.cache import CacheWarning
from ccjax.resolve import forget_order

from conftest import assert_jac_equal


def sorted_values(x):
    return jnp.sort(jnp.sin(3.0 * x) * x)


def tridiagonal(x):
    return jnp.tanh(x[1:] - x[:-1]) * x[1:]


X = jnp.linspace(-1.0, 1.0, 8)


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
    """A private cache root: records and orders of other tests stay out."""
    monkeypatch.setenv("CCJAX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fixed_times(times: dict):
    """A stand-in for :func:`ccjax.tuning.measure` that returns ``times``
    for the candidates it is given (and records which they were)."""
    seen = []

    def measure(graph, plans, inputs, consts, rounds=7):
        names = [p.mode for p in plans]
        seen.append(names)
        return {n: times[n] for n in names}

    return measure, seen


def auto_mode(fun, *args, **kw) -> str:
    return _plan(ccjax.graph(fun, *args, **kw), "auto").mode


def test_tune_times_every_candidate_stores_the_fastest_and_auto_runs_it(cache_root):
    before = auto_mode(sorted_values, X)
    result = ccjax.tune(sorted_values, X, rounds=2)
    assert set(result.times) >= {"jax-rev", "jax-fwd"}
    assert all(t > 0 for t in result.times.values())
    assert result.counted == before
    assert result.times[result.choice] <= result.times[result.counted]
    assert result.speedup >= 1.0
    assert result.path is not None and result.path.parent == cache_root / "tuned"
    record = json.loads(result.path.read_text())
    assert record["choice"] == result.choice and record["platform"] == jax.devices()[0].platform
    assert auto_mode(sorted_values, X) == result.choice
    assert_jac_equal(jax.jit(ccjax.jacve(sorted_values))(X), jax.jacrev(sorted_values)(X))


@pytest.mark.parametrize("choice", ["jax-fwd", "jax-rev", "eliminate"])
def test_each_stored_choice_is_run_and_exact(monkeypatch, choice):
    times = {"eliminate": 1.0, "jax-rev": 1.0, "jax-fwd": 1.0, choice: 0.5}
    measure, seen = fixed_times(times)
    monkeypatch.setattr(tuning, "measure", measure)
    result = ccjax.tune(sorted_values, X)
    assert seen == [["eliminate", "jax-rev", "jax-fwd"]]  # sort: the counts pick the elimination
    assert result.choice == choice
    assert auto_mode(sorted_values, X) == choice
    for x in (X, X[::-1], jnp.cos(5 * X)):
        assert_jac_equal(ccjax.jacve(sorted_values)(x), jax.jacrev(sorted_values)(x))
        assert_jac_equal(jax.jit(ccjax.jacve(sorted_values))(x), jax.jacrev(sorted_values)(x))
    sparse = ccjax.jacve(sorted_values, output="sparse")(X)
    np.testing.assert_allclose(sparse.todense(), jax.jacrev(sorted_values)(X))


def test_a_choice_within_the_margin_keeps_the_counted_program(monkeypatch):
    counted = auto_mode(sorted_values, X)
    times = {"eliminate": 1.0, "jax-rev": 1.0, "jax-fwd": 1.0, counted: 1.0}
    other = next(n for n in ("jax-fwd", "jax-rev") if n != counted)
    times[other] = 0.97
    monkeypatch.setattr(tuning, "measure", fixed_times(times)[0])
    assert ccjax.tune(sorted_values, X, margin=0.05).choice == counted
    assert ccjax.tune(sorted_values, X, margin=0.0).choice == other


def test_an_elimination_that_multiplies_more_is_not_compiled(monkeypatch):
    def expm(a):
        return jax.scipy.linalg.expm(a)

    a = 0.3 * jnp.eye(4) + 0.01 * jnp.arange(16.0).reshape(4, 4)
    assert auto_mode(expm, a) != "eliminate"
    measure, seen = fixed_times({"eliminate": 0.1, "jax-rev": 1.0, "jax-fwd": 2.0})
    monkeypatch.setattr(tuning, "measure", measure)
    result = ccjax.tune(expm, a)
    assert "eliminate" not in seen[0] and result.choice != "eliminate"
    assert_jac_equal(ccjax.jacve(expm)(a), jax.jacrev(expm)(a))


def test_a_record_for_another_order_is_stale_and_ignored(monkeypatch):
    monkeypatch.setattr(tuning, "measure", fixed_times({"eliminate": 1.0, "jax-rev": 0.1, "jax-fwd": 1.0})[0])
    result = ccjax.tune(sorted_values, X)
    assert result.choice == "jax-rev" and auto_mode(sorted_values, X) == "jax-rev"
    record = json.loads(result.path.read_text())
    record["order"] = record["order"][::-1] + [10_000]
    result.path.write_text(json.dumps(record))
    forget_order(ccjax.graph(sorted_values, X), "auto")
    assert auto_mode(sorted_values, X) == result.counted


@pytest.mark.parametrize("damage", ["truncated", "foreign", "bad choice", "wrong graph", "directory"])
def test_a_damaged_record_warns_and_the_counts_decide_then_tune_rebuilds_it(monkeypatch, damage):
    monkeypatch.setattr(tuning, "measure", fixed_times({"eliminate": 1.0, "jax-rev": 0.1, "jax-fwd": 1.0})[0])
    result = ccjax.tune(sorted_values, X)
    path, text = result.path, result.path.read_text()
    record = json.loads(text)
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "foreign":
        path.write_text(json.dumps({"format": "something else", "choice": "jax-rev"}))
    elif damage == "bad choice":
        path.write_text(json.dumps(dict(record, choice="jax-sideways")))
    elif damage == "wrong graph":
        path.write_text(json.dumps(dict(record, fingerprint="0" * 20)))
    else:
        path.unlink()
        path.mkdir()
    forget_order(ccjax.graph(sorted_values, X), "auto")
    with pytest.warns(CacheWarning, match="tuning"):
        assert auto_mode(sorted_values, X) == result.counted
    assert_jac_equal(ccjax.jacve(sorted_values)(X), jax.jacrev(sorted_values)(X))
    if damage == "directory":
        path.rmdir()
    again = ccjax.tune(sorted_values, X)
    assert again.choice == "jax-rev" and json.loads(again.path.read_text())["choice"] == "jax-rev"


def test_a_record_serves_only_its_own_dtypes(monkeypatch):
    monkeypatch.setattr(tuning, "measure", fixed_times({"eliminate": 1.0, "jax-rev": 0.1, "jax-fwd": 1.0})[0])
    x32 = X.astype(jnp.float32)
    assert ccjax.tune(sorted_values, x32).choice == "jax-rev"
    assert auto_mode(sorted_values, x32) == "jax-rev"
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert auto_mode(sorted_values, X) == "eliminate"  # float64: never measured


def test_with_the_cache_off_nothing_is_stored(monkeypatch):
    monkeypatch.setenv("CCJAX_CACHE_DIR", "off")
    monkeypatch.setattr(tuning, "measure", fixed_times({"eliminate": 1.0, "jax-rev": 0.1, "jax-fwd": 1.0})[0])
    result = ccjax.tune(sorted_values, X)
    assert result.choice == "jax-rev" and result.path is None
    assert auto_mode(sorted_values, X) == "eliminate"


def test_tune_takes_jacrev_arguments():
    def f(p, x):
        return {"y": tridiagonal(x * p["a"]) + p["b"]}

    p = {"a": jnp.asarray(1.5), "b": jnp.ones(7)}
    result = ccjax.tune(f, p, X, argnums=(0, 1), rounds=1)
    assert result.choice in result.times
    assert_jac_equal(ccjax.jacve(f, argnums=(0, 1))(p, X), jax.jacrev(f, argnums=(0, 1))(p, X))

    def with_aux(x):
        return tridiagonal(x), {"norm": jnp.sum(x**2)}

    ccjax.tune(with_aux, X, has_aux=True, rounds=1)
    got, aux = ccjax.jacve(with_aux, has_aux=True)(X)
    want, aux_want = jax.jacrev(with_aux, has_aux=True)(X)
    assert_jac_equal(got, want)
    assert_jac_equal(aux, aux_want)


def test_a_whole_reverse_graph_is_measured_but_has_nothing_to_choose():
    @jax.custom_vjp
    def clip_grad(x):
        return x

    clip_grad.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -0.5, 0.5),))

    def f(x):
        return jnp.sin(clip_grad(x) * 2.0)

    result = ccjax.tune(f, X, rounds=1)
    assert result.choice == result.counted == "jax-rev" and result.path is None
    assert_jac_equal(ccjax.jacve(f)(X), jax.jacrev(f)(X))


@pytest.mark.parametrize("bad", [{"rounds": 0}, {"rounds": 2.5}, {"rounds": True}, {"margin": -0.1},
                                 {"margin": 1.0}, {"margin": "5%"}])
def test_bad_arguments_are_clear_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ccjax.tune(sorted_values, X, **bad)
    with pytest.raises(TypeError, match="real-valued inputs"):
        ccjax.tune(lambda n: jnp.arange(3.0) * n, 3)


def test_a_choice_can_be_stored_without_measuring(monkeypatch):
    def no_measure(*a, **k):
        raise AssertionError("choice= must not measure")

    monkeypatch.setattr(tuning, "measure", no_measure)
    result = ccjax.tune(sorted_values, X, choice="jax-fwd")
    assert result.choice == "jax-fwd" and result.times == {} and np.isnan(result.speedup)
    assert auto_mode(sorted_values, X) == "jax-fwd"
    assert_jac_equal(ccjax.jacve(sorted_values)(X), jax.jacrev(sorted_values)(X))
    with pytest.raises(ValueError, match="choice must be one of"):
        ccjax.tune(sorted_values, X, choice="jax-sideways")
