"""XLA:CPU evaluates one HLO value two ways (FMA in one copy only): ``x == max(x)`` fails.

    z = p * p - q[:, None, None]          p: (2, 3), q: (4,), float64
    m = max(z);  loc = (z == m)           mathematically loc has at least one True

XLA fuses the cheap producer ``p * p - q`` into every consumer, and XLA:CPU's
LLVM backend always allows FP contraction (``AllowFPOpFusion = Fast``), so some
emitted copies compute ``fma(p, p, -q)`` (one rounding) and others
``(p * p) - q`` (two roundings).  At the chosen inputs the two differ by one ulp
at the maximum, so inside one compiled program ``loc`` is all False in one
consumer and one-hot in another.  JAX's derivative of ``max``/``min``
(``_reduce_chooser_jvp_rule``: ``sum(g * loc) / sum(loc)``) then returns 0,
inf or NaN instead of the derivative: here ``jax.jit(jax.jacfwd(...))`` of
``jnp.max(p**2 - q[:, None, None])`` gives 0 instead of -1, with no tie
anywhere (the runner-up is 0.61 below the maximum).

    python docs/repro/xla_fma_recompute.py     # exits 1 while the bug reproduces
    XLA_FLAGS=--xla_backend_optimization_level=0 python docs/repro/xla_fma_recompute.py
        # more cases fail, including jax.jit(jax.grad(...)) of the 1-D version
"""
import sys
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

x0 = float.fromhex("0x1.d0dbc74d47003p-1")   # 0.907...
y0 = float.fromhex("-0x1.fe990f2ea882ep-1")  # -0.997...
two_roundings = x0 * x0 - y0
one_rounding = float(Fraction(x0) * Fraction(x0) - Fraction(y0))  # what an FMA returns
print(f"x0*x0 - y0: two roundings {two_roundings.hex()}, fma {one_rounding.hex()} "
      f"({(one_rounding - two_roundings) / np.spacing(two_roundings):+.0f} ulp)")

p = np.full((2, 3), 0.1)
p[0, 0] = x0
q = np.full(4, 0.5)
q[1] = y0
p, q = jnp.asarray(p), jnp.asarray(q)
tp, tq = jnp.zeros((2, 3)), jnp.zeros(4).at[1].set(1.0)
failures = []


def report(name, got, want):
    ok = np.allclose(np.asarray(got, float), np.asarray(want, float), equal_nan=False)
    print(f"{'ok ' if ok else 'BUG'} {name}: got {got}, want {want}")
    if not ok:
        failures.append(name)


# 1. No AD: one `loc` value, two inconsistent uses.
def c(p, q, tp, tq):
    z = p * p - q[:, None, None]
    loc = z == jnp.max(z)
    dz = 2 * p * tp - tq[:, None, None]
    return jnp.sum(jnp.where(loc, dz, 0.0)), jnp.sum(loc.astype(z.dtype))


eager = [float(v) for v in c(p, q, tp, tq)]
report("jit: (sum(where(z == max z, dz, 0)), count(z == max z))",
       [float(v) for v in jax.jit(c)(p, q, tp, tq)], eager)

# 2. The derivative of jnp.max under jit.
h = lambda p, q: jnp.max(p ** 2 - q[:, None, None])
report("jit(jvp(max(p**2 - q)))[q1]", float(jax.jit(lambda *a: jax.jvp(h, a[:2], a[2:])[1])(p, q, tp, tq)),
       float(jax.jvp(h, (p, q), (tp, tq))[1]))
report("jit(jacfwd(max(p**2 - q), argnums=(0, 1)))[q]",
       np.asarray(jax.jit(jax.jacfwd(h, argnums=(0, 1)))(p, q)[1]).tolist(),
       np.asarray(jax.jacrev(h, argnums=(0, 1))(p, q)[1]).tolist())
report("jit(grad(max(p**2 - q)))[q]", np.asarray(jax.jit(jax.grad(h, argnums=1))(p, q)).tolist(),
       np.asarray(jax.grad(h, argnums=1)(p, q)).tolist())

# 3. One dimension (fails with --xla_backend_optimization_level=0).
x, y = jnp.asarray([x0, 0.1, 0.1]), jnp.asarray(y0)
g = lambda x, y: jnp.max(x * x - y)
report("1-D jit(grad(max(x*x - y)))", np.asarray(jax.jit(jax.grad(g))(x, y)).tolist(),
       np.asarray(jax.grad(g)(x, y)).tolist())

print(f"jax {jax.__version__}: {len(failures)} case(s) wrong")
sys.exit(1 if failures else 0)
