"""An independent multiplication count: read the jaxpr that actually runs."""
import math

import jax
from jax.extend import core as jex

MULTIPLYING = {"div", "integer_pow", "square", "pow", "exp", "log", "sin", "cos", "tanh"}


def count_mults(fn, *args) -> int:
    """Scalar multiplications in the jaxpr of ``fn(*args)``: ``mul`` costs its
    output size, ``dot_general`` its whole iteration space; any other
    arithmetic primitive is an error (the elimination must not hide work)."""
    return _count(jax.make_jaxpr(fn)(*args).jaxpr)


def _count(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        assert name not in MULTIPLYING, f"unexpected arithmetic primitive {name}"
        if name == "mul":
            total += math.prod(eqn.outvars[0].aval.shape)
        elif name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[k] for k in lc)
        for sub in jex.jaxprs_in_params(eqn.params):
            total += _count(sub)
    return total
