"""Quickstart: the Jacobian of Roe's 1D flux by cross-country elimination.

Prints the Jacobian, checks it against jax.jacrev, and shows how many
multiplications forward, reverse and Markowitz elimination orders need.
Then it searches a cheaper order for a few seconds: the search stores it
in the order cache (``ccjax cache list``), so ``order="auto"`` uses it from
then on, in this process and in later ones (the cache ignores float dtypes:
``ccjax search RoeFlux_1d``, which runs in float32, serves this float64
script too).
"""
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import ccjax
from ccjax.tasks import get_task

#: Seconds of order search (anytime: longer finds cheaper orders, 60 s about 161).
SEARCH_SECONDS = 5.0


def same_as_jacrev(jac, ref) -> bool:
    return all(np.allclose(a, b, rtol=1e-12, atol=1e-12)
               for a, b in zip(jax.tree_util.tree_leaves(jac), jax.tree_util.tree_leaves(ref)))


def main() -> None:
    task = get_task("RoeFlux_1d")
    fn, args = task.graph_fn_and_inputs(seed=0)
    argnums = task.argnums

    jac = jax.jit(ccjax.jacve(fn, argnums=argnums, order="auto"))(*args)
    ref = jax.jacrev(fn, argnums=argnums)(*args)

    # Stack the (3 outputs) x (6 scalar inputs) blocks into one matrix for display.
    matrix = jnp.stack([jnp.stack([jnp.ravel(b)[0] for b in row]) for row in jac])
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    print(f"{task.name}: {task.description}")
    print("Jacobian (flux components x input states):")
    print(np.asarray(matrix))
    print(f"equal to jax.jacrev: {same_as_jacrev(jac, ref)}")
    g = ccjax.graph(fn, *args, argnums=argnums)
    print(f"graph: {g.num_vertices} vertices, {len(g.eliminable)} eliminable, fingerprint {g.fingerprint}")
    print("multiplications per elimination order:")
    for order in ("fwd", "rev", "markowitz", "auto"):
        print(f"  {order:10s} {ccjax.cost(fn, *args, argnums=argnums, order=order):6d}")

    r = ccjax.search_order(fn, *args, argnums=argnums, time_budget=SEARCH_SECONDS, label=task.name)
    print(f"after a {SEARCH_SECONDS:.0f} s order search ({r.method}, stored in the order cache):")
    print(f"  {'auto':10s} {ccjax.cost(fn, *args, argnums=argnums, order='auto'):6d}")
    jac = jax.jit(ccjax.jacve(fn, argnums=argnums, order="auto"))(*args)
    print(f"equal to jax.jacrev with the searched order: {same_as_jacrev(jac, ref)}")


if __name__ == "__main__":
    main()
