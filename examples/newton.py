"""Newton's method with ccjax.jacve in place of jax.jacrev.

Solves the MINPACK-2 propane combustion system (11 equations, 11 unknowns;
``ccjax.tasks.minpack``) from its standard starting point.  Each step is one
jitted function: residual, Jacobian by cross-country elimination, linear solve
and a backtracking line search on the residual norm.  The only change from a
``jax.jacrev`` Newton solver is the one marked line.

    python examples/newton.py
"""
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax.tasks import minpack  # noqa: E402


def residual(x):
    """The 11 propane residuals as one vector function of one vector."""
    return jnp.stack(minpack.propane_combustion(*x))


jacobian = ccjax.jacve(residual, order="auto")  # was: jax.jacrev(residual)


@jax.jit
def newton_step(x):
    r = residual(x)
    dx = jnp.linalg.solve(jacobian(x), -r)
    norm = jnp.linalg.norm(r)

    # Halve the step until the residual norm decreases (at most 30 halvings).
    def too_long(state):
        t, k = state
        return (k < 30) & ~(jnp.linalg.norm(residual(x + t * dx)) < norm)

    t, _ = jax.lax.while_loop(too_long, lambda s: (0.5 * s[0], s[1] + 1), (1.0, 0))
    return x + t * dx, norm, t


def solve(x0, tol=1e-12, max_steps=50):
    x = jnp.asarray(x0, dtype=jnp.float64)
    history = []
    for _ in range(max_steps):
        x_new, norm, t = newton_step(x)
        history.append((float(norm), float(t)))
        if norm < tol:
            break
        x = x_new
    return x, history


def main() -> None:
    x0 = np.asarray(minpack.PROPANE_START)
    print("propane combustion (MINPACK-2 dcpf): 11 equations, Newton with ccjax.jacve")

    x, history = solve(x0)
    print(" step   ||F(x)||      step length")
    for k, (norm, t) in enumerate(history):
        print(f" {k:4d}   {norm:.3e}     {t:g}")
    final = float(jnp.linalg.norm(residual(x)))
    same = np.allclose(jacobian(x), jax.jacrev(residual)(x), rtol=1e-12, atol=1e-12)
    print(f"converged in {len(history) - 1} steps: ||F(x*)|| = {final:.2e}")
    print(f"Jacobian at the solution equal to jax.jacrev: {same}")
    print("x* =", np.array2string(np.asarray(x), precision=6, max_line_width=100))
    assert final < 1e-10 and same


if __name__ == "__main__":
    main()
