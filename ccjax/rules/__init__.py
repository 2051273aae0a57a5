"""Partial-Jacobian rules, one module per primitive family.

A rule receives a :class:`RuleContext` (avals, params and which operand
slots are differentiated) and returns :class:`Partial` specs: the structure
of ``∂out[k]/∂in[slot]`` (known at trace time) and a function computing its
stored values from the primal operand and result values at run time.
Primitives without a structured rule fall back to :mod:`.opaque`, an exact
dense local Jacobian from JAX's own AD of that one equation.
"""
from __future__ import annotations

from typing import Callable

from ccjax.rules.base import Partial, RuleContext, Rule
from ccjax.rules import control, conv, elementwise, linalg, opaque, reduction, selection, shape, window

RULES: dict[str, Rule] = {}
for _module in (elementwise, shape, reduction, linalg, selection, control, conv, window):
    RULES.update(_module.RULES)

#: Primitives whose outputs never carry a derivative (beyond integer dtypes).
ZERO_DERIVATIVE = frozenset({
    "stop_gradient", "sign", "floor", "ceil", "round", "is_finite", "iota",
    "eq", "ne", "lt", "le", "gt", "ge", "argmax", "argmin", "random_bits",
    "random_seed", "random_wrap", "random_unwrap", "population_count", "clz",
    "shift_left", "shift_right_logical", "shift_right_arithmetic", "and", "or", "not", "xor",
})


def partials(ctx: RuleContext) -> list[Partial]:
    """Structured partials of one equation, or exact dense ones as fallback."""
    if ctx.name in ZERO_DERIVATIVE:
        return []
    rule: Callable | None = RULES.get(ctx.name)
    if rule is None:
        return opaque.dense_partials(ctx)
    return rule(ctx)


def has_structured_rule(name: str) -> bool:
    return name in RULES or name in ZERO_DERIVATIVE


__all__ = ["Partial", "RuleContext", "RULES", "ZERO_DERIVATIVE", "partials", "has_structured_rule"]
