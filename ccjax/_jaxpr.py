"""Every use of JAX's jaxpr data structures lives here.

Only names exported by ``jax.extend.core`` and ``jax.core`` are used, plus
``Primitive.get_bind_params`` (a method of the public ``Primitive`` class,
the way ``jax.core.eval_jaxpr`` itself rebinds an equation).  Keeping them
in one module means a JAX upgrade breaks one file, which
``tests/test_jaxpr_compat.py`` exercises directly.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
from jax.extend import core as jex

#: Primitives whose body is inlined into the graph.
CALL_PRIMITIVES = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint", "remat2"})


def is_literal(atom) -> bool:
    return isinstance(atom, jex.Literal)


def is_dropvar(var) -> bool:
    return isinstance(var, jex.DropVar)


def is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def is_jax_value(x) -> bool:
    """Whether ``x`` can be a jaxpr input or output (arrays, scalars, tracers)."""
    return jex.valid_jaxtype(x) or is_tracer(x)


def literal_value(atom):
    return atom.val


def bind(primitive, params: dict, args: Sequence[Any]) -> list:
    """Apply one equation's primitive to ``args`` (values or tracers)."""
    bind_params = primitive.get_bind_params(params)
    if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
        subfuns, bind_params = bind_params
        args = (*subfuns, *args)
    out = primitive.bind(*args, **bind_params)
    return list(out) if primitive.multiple_results else [out]


def call_body(eqn) -> tuple[Any, list]:
    """The inner jaxpr and its constants of a call-like equation."""
    inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if isinstance(inner, jex.ClosedJaxpr):
        return inner.jaxpr, list(inner.consts)
    return inner, []


def is_custom_jvp(eqn) -> bool:
    return eqn.primitive.name == "custom_jvp_call"


def is_custom_vjp(eqn) -> bool:
    return eqn.primitive.name.startswith("custom_vjp_call")


def structural_key(jaxpr) -> tuple:
    """A key equal for two jaxprs that build the same graph.

    The printed jaxpr fixes primitives, parameters, shapes and dtypes; the
    identities of callables held in parameters (custom JVP/VJP rules), which
    printing elides, are added so two rules never share a cached graph.
    """
    ids = []

    def walk(jx):
        for eqn in jx.eqns:
            for value in eqn.params.values():
                if isinstance(value, jex.ClosedJaxpr):
                    walk(value.jaxpr)
                elif isinstance(value, jex.Jaxpr):
                    walk(value)
                elif callable(value) and not isinstance(value, (type, jex.Primitive)):
                    ids.append(id(value))

    walk(jaxpr)
    return str(jaxpr), tuple(ids)
