"""ccjax.jacve as a decorator-style transform on a flax model.

``@functools.partial(ccjax.jacve, argnums=...)`` turns a model's forward pass
into its Jacobian, exactly like ``jax.jacrev`` would: w.r.t. the input
(argnums=1) or w.r.t. the parameter pytree (argnums=0; the result keeps
flax's nested dict layout).  Both compose with ``jax.jit`` and ``jax.vmap``
and are checked against ``jax.jacrev``.

    python examples/model_decorator.py
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

import ccjax


class MLP(nn.Module):
    """3 -> 16 (gelu) -> 16 (tanh) -> 2."""

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(16)(x))
        x = jnp.tanh(nn.Dense(16)(x))
        return nn.Dense(2)(x)


model = MLP()


@jax.jit
@functools.partial(ccjax.jacve, argnums=1)
def input_jacobian(params, x):
    """d model(x) / d x: shape (2, 3) for one example."""
    return model.apply(params, x)


@jax.jit
@functools.partial(ccjax.jacve, argnums=0, order="rev")
def param_jacobian(params, x):
    """d model(x) / d params: the params pytree with (2,) + leaf shape blocks."""
    return model.apply(params, x)


def main() -> None:
    x = jax.random.normal(jax.random.key(0), (3,))
    params = model.init(jax.random.key(1), x)

    J = input_jacobian(params, x)
    J_ref = jax.jacrev(model.apply, argnums=1)(params, x)
    print("input Jacobian (2 outputs x 3 inputs):")
    print(np.array2string(np.asarray(J), precision=4))
    print("equal to jax.jacrev:", np.allclose(J, J_ref, rtol=1e-5, atol=1e-6))

    # Per-example input Jacobians of a batch: vmap the decorated function.
    xs = jax.random.normal(jax.random.key(2), (5, 3))
    Js = jax.vmap(input_jacobian, in_axes=(None, 0))(params, xs)
    Js_ref = jax.vmap(jax.jacrev(model.apply, argnums=1), in_axes=(None, 0))(params, xs)
    print("batched input Jacobians", Js.shape, "equal to jax.jacrev:", np.allclose(Js, Js_ref, rtol=1e-5, atol=1e-6))

    P = param_jacobian(params, x)
    P_ref = jax.jacrev(model.apply, argnums=0)(params, x)
    same_tree = jax.tree_util.tree_structure(P) == jax.tree_util.tree_structure(P_ref)
    same_vals = all(np.allclose(a, b, rtol=1e-5, atol=1e-6)
                    for a, b in zip(jax.tree_util.tree_leaves(P), jax.tree_util.tree_leaves(P_ref)))
    print("parameter Jacobian blocks:")
    for path, leaf in jax.tree_util.tree_flatten_with_path(P)[0]:
        print(f"  {jax.tree_util.keystr(path):40s} {leaf.shape}")
    print("same pytree layout and values as jax.jacrev:", same_tree and same_vals)

    fn_args = (params, x)
    for order in ("fwd", "rev", "markowitz"):
        print(f"multiplications, input Jacobian, order={order!r}: "
              f"{ccjax.cost(model.apply, *fn_args, argnums=1, order=order)}")
    assert np.allclose(J, J_ref, rtol=1e-5, atol=1e-6) and np.allclose(Js, Js_ref, rtol=1e-5, atol=1e-6)
    assert same_tree and same_vals


if __name__ == "__main__":
    main()
