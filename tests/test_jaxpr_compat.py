"""The JAX surface ccjax relies on (``ccjax/_jaxpr.py``), exercised directly.

ccjax reads and rebinds jaxprs through public names only; a JAX upgrade
that changes what those names do should fail here, by name, before it
shows up as a wrong Jacobian elsewhere.
"""
from __future__ import annotations

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import ccjax
from ccjax import _jaxpr

PRIVATE_MODULES = ("jax._src", "jax.interpreters", "jaxlib")


def test_ccjax_imports_no_private_jax_module():
    root = pathlib.Path(ccjax.__file__).parent
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        assert "jax._src" not in source, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(PRIVATE_MODULES), (path.name, name)


@jax.custom_vjp
def _clipped(x):
    return jnp.clip(x, -1.0, 1.0)


_clipped.defvjp(lambda x: (_clipped(x), x), lambda x, g: (g * 0.5,))


def _program(x, y):
    """One equation of each kind ccjax rebinds: elementwise, dot, scan, cond,
    a jitted call, custom_jvp (relu), custom_vjp and a gather."""
    a = jnp.sin(x) * y
    b = lax.scan(lambda c, t: (c * t + 1.0, c), a.sum(), x)[1]
    c = lax.cond(a.sum() > 0, jnp.cos, jnp.tanh, x)
    d = jax.jit(lambda u: u @ u.T)(jnp.outer(x, y)).sum(0)
    return a + b + c + d + jax.nn.relu(x - 0.5) + _clipped(y), x[jnp.array([2, 0, 5])]


X = jnp.linspace(0.1, 1.7, 6)
Y = jnp.linspace(-0.8, 0.9, 6)


def _rebind(closed, args, raw: bool) -> list:
    env = dict(zip(closed.jaxpr.constvars, closed.consts))
    env.update(zip(closed.jaxpr.invars, args))
    read = lambda a: _jaxpr.literal_value(a) if _jaxpr.is_literal(a) else env[a]
    for eqn in closed.jaxpr.eqns:
        outs = _jaxpr.bind(eqn.primitive, eqn.params, [read(a) for a in eqn.invars], raw=raw)
        assert len(outs) == len(eqn.outvars), eqn.primitive.name
        env.update((v, o) for v, o in zip(eqn.outvars, outs) if not _jaxpr.is_dropvar(v))
    return [read(v) for v in closed.jaxpr.outvars]


@pytest.mark.parametrize("raw", [False, True])
def test_rebinding_every_equation_computes_the_program_and_its_derivative(raw):
    closed = jax.make_jaxpr(_program)(X, Y)
    names = {e.primitive.name for e in closed.jaxpr.eqns}
    assert {"scan", "cond", "custom_jvp_call", "gather"} <= names and any(_jaxpr.is_custom_vjp(e)
                                                                          for e in closed.jaxpr.eqns)
    for got, want in zip(_rebind(closed, (X, Y), raw), jax.tree_util.tree_leaves(_program(X, Y))):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    # JAX's AD of the rebound equations is JAX's AD of the program (custom rules followed)
    rebound = lambda x, y: _rebind(closed, (x, y), raw)
    got = jax.tree_util.tree_leaves(jax.jacrev(rebound, argnums=(0, 1))(X, Y))
    want = jax.tree_util.tree_leaves(jax.jacrev(_program, argnums=(0, 1))(X, Y))
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_call_bodies_custom_rules_and_equation_kinds():
    closed = jax.make_jaxpr(_program)(X, Y)
    calls = [e for e in closed.jaxpr.eqns if e.primitive.name in _jaxpr.CALL_PRIMITIVES]
    assert calls, "jax.jit inside a traced function is a call equation"
    body, consts = _jaxpr.call_body(calls[0])
    assert len(body.invars) == len(calls[0].invars) and isinstance(consts, list)
    (relu,) = [e for e in closed.jaxpr.eqns if _jaxpr.is_custom_jvp(e)]
    rule, rule_consts = _jaxpr.custom_jvp_rule(relu)
    # the JVP jaxpr takes the primals, then the tangents
    assert len(rule.invars) == 2 * (len(relu.invars) - relu.params["num_consts"])
    assert isinstance(rule_consts, tuple)
    assert any(_jaxpr.reverse_only(e) for e in closed.jaxpr.eqns)  # the custom_vjp call


def test_structural_keys_are_stable_across_traces_and_tell_shapes_apart():
    key = lambda *args: _jaxpr.structural_key(jax.make_jaxpr(_program)(*args).jaxpr)
    assert key(X, Y) == key(X + 1.0, Y * 2.0)
    assert key(X, Y) != key(X[:5], Y[:5])
    assert hash(key(X, Y)) == hash(key(X, Y))


def test_multiplications_are_read_off_mul_dot_general_and_scan_bodies():
    W = jnp.ones((4, 3))

    def f(x):
        y = W @ x  # 12
        z = y * y  # 4
        return lax.scan(lambda c, _: (c * 1.5, None), z, None, length=5)[0]  # 5 x 4

    jaxpr = jax.make_jaxpr(f)(jnp.ones(3)).jaxpr
    assert _jaxpr.count_multiplications(jaxpr) == 12 + 4 + 20
    dot = next(e for e in jaxpr.eqns if e.primitive.name == "dot_general")
    assert _jaxpr.own_multiplications("dot_general", dot.params, (4, 3), (4,)) == 12


def test_weak_types_specs_and_constant_keys():
    assert _jaxpr.is_weakly_typed(1.0) and not _jaxpr.is_weakly_typed(jnp.ones(2))
    weak = _jaxpr.as_weakly_typed(jnp.ones(2, jnp.float32))
    assert _jaxpr.is_weakly_typed(weak) and weak.dtype == jnp.float32
    aval = jax.make_jaxpr(lambda s: s * 2)(1.0).jaxpr.invars[0].aval
    assert _jaxpr.spec(aval).weak_type and _jaxpr.spec(aval).shape == ()
    assert _jaxpr.const_key(np.arange(3.0)) == _jaxpr.const_key(np.arange(3.0))
    assert _jaxpr.const_key(np.arange(3.0)) != _jaxpr.const_key(np.arange(3, dtype=np.float32))
    values = [1, 2]
    key = _jaxpr.hashable(values)
    assert hash(key) == hash(_jaxpr.hashable(values)) and _jaxpr.hashable((1, 2)) == (1, 2)
    assert _jaxpr.is_jax_value(jnp.ones(2)) and _jaxpr.is_jax_value(1.0) and not _jaxpr.is_jax_value("a")


def test_a_jaxpr_restaged_over_new_constvars_and_closed_again():
    from jax.extend import core as jex

    w = np.linspace(0.5, 1.5, 6)
    closed = jax.make_jaxpr(lambda x, v: jnp.tanh(x * w) + v)(X, Y)  # w is a constvar
    jx = closed.jaxpr
    assert _jaxpr.is_closed_jaxpr(closed) and _jaxpr.is_open_jaxpr(jx) and not _jaxpr.is_open_jaxpr(closed)
    # the second input becomes a constant
    moved = _jaxpr.restage(jx, list(jx.constvars) + [jx.invars[1]], jx.invars[:1], jx.debug_info)
    again = _jaxpr.close(moved, list(closed.consts) + [Y * 3.0])
    np.testing.assert_allclose(jex.jaxpr_as_fun(again)(X)[0], jnp.tanh(X * w) + Y * 3.0, rtol=1e-14)
