"""XLA:CPU YNNPACK fusion returns wrong rows for a sum of two broadcast-multiply reductions.

    f(T, Y, Z) = sum(Y[None] * T[:, None], -1) + sum(T[:, None] * Z[None], -1)
               = T @ (Y + Z).T                       T: (R, n), Y, Z: (B, n), float32

Under ``jax.jit`` on CPU, XLA turns the two reductions into one ``kCustom``
``ynn_fusion`` (YNNPACK).  For B = 512 and R not a multiple of 64 the rows past
the last multiple of 64 (R = 68: rows 64..67) are wrong by O(1); eager
evaluation and ``--xla_cpu_experimental_ynn_fusion_type=`` (YNN fusion off)
are right.  ``jax.jit(jax.jacfwd(f))`` builds exactly this pattern (a one-hot
tangent basis T with 4 + 64 rows), so the Jacobian block of an argument the
function does not even use comes out nonzero; see docs/known_issues.md.

    python docs/repro/xla_ynn_fusion_rows.py            # exits 1: bug reproduced
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python docs/repro/xla_ynn_fusion_rows.py   # exits 0
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

rng = np.random.default_rng(0)
R, B, n = 68, 512, 4
T = jnp.asarray(rng.normal(size=(R, n)), jnp.float32)
Y = jnp.asarray(rng.normal(size=(B, n)), jnp.float32)
Z = jnp.asarray(rng.normal(size=(B, n)), jnp.float32)


def f(T, Y, Z):
    return jnp.sum(Y[None] * T[:, None], -1) + jnp.sum(T[:, None] * Z[None], -1)


want = np.asarray(T, np.float64) @ (np.asarray(Y, np.float64) + np.asarray(Z, np.float64)).T
jf = jax.jit(f)
got = np.asarray(jf(T, Y, Z))
eager = np.asarray(f(T, Y, Z))
hlo = jf.lower(T, Y, Z).compile().as_text()
bad_rows = np.unique(np.nonzero(np.abs(got - want) > 1e-4 * (1 + np.abs(want)))[0])
ynn = any("kind=kCustom" in line and "ynn" in line for line in hlo.splitlines())
print(f"jax {jax.__version__}; YNNPACK fusion in the compiled HLO: {ynn}")
print(f"eager: max |err| {np.abs(eager - want).max():.2g}")
print(f"jit:   max |err| {np.abs(got - want).max():.2g}, wrong rows {bad_rows.tolist()}")

# The same through AD: the Jacobian with respect to an unused argument d must be 0.
F = lambda b, d, X, Y: jnp.sum(Y * (X + b), axis=-1) + jnp.sum((X + b) ** 2, axis=-1)
b = jnp.asarray(rng.normal(size=n), jnp.float32)
d = jnp.zeros(64, jnp.float32)
J = jax.jit(jax.jacfwd(F, argnums=(0, 1)))(b, d, Y, Z)
print(f"jit(jacfwd): max |dF/d(unused d)| = {float(np.abs(np.asarray(J[1])).max()):.3g} (should be 0)")
sys.exit(1 if len(bad_rows) or np.abs(np.asarray(J[1])).max() > 0 else 0)
