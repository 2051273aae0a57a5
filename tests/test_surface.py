"""A sweep over the JAX API a user differentiates: every program is
``jax.jacrev``'s Jacobian in ``order="auto"`` (jitted) and Markowitz order
(eager), in float64.  The programs are one-liners over the numpy, lax,
nn, scipy, linalg, FFT and control-flow surface; they caught odeint's
reverse pass indexing a NumPy constant with a tracer (an error) and
``reduce_precision``'s rounded cotangents (a silent difference)."""
import jax
import jax.experimental.ode  # noqa: F401
import jax.numpy as jnp
import jax.scipy as jsp
import numpy as np
import pytest
from jax import lax

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402

_rng = np.random.default_rng(0)
X6 = _rng.normal(size=6)
P6 = np.abs(_rng.normal(size=6)) + 0.5
U6 = _rng.uniform(0.1, 0.9, size=6)
X36 = _rng.normal(size=36)
M = _rng.normal(size=(4, 5))
S = _rng.normal(size=(4, 4))
SPD = S @ S.T + 4 * np.eye(4)
K = _rng.normal(size=(2, 1, 3, 3))


def _pairwise_rows(x):
    """Softened inverse-cube forces and an RBF kernel over all pairs of three points."""
    p = x.reshape(3, 2)
    d = p[None] - p[:, None]
    r2 = jnp.sum(d ** 2, -1)
    return jnp.concatenate([jnp.sum(d / (r2[..., None] + 0.1) ** 1.5, axis=1).ravel(), jnp.exp(-r2).ravel()])


def _sinkhorn_loop(x):
    """Sinkhorn-style scalings: a loop of matrix-vector products with ``exp(-x)``."""
    kernel = jnp.exp(-x.reshape(2, 3))
    return lax.fori_loop(0, 4, lambda i, v: 1.0 / (kernel.T @ (1.0 / (kernel @ v))), jnp.ones(3))


PROGRAMS = {
    "cumprod": (lambda x: jnp.cumprod(x), X6),
    "cummax": (lambda x: lax.cummax(x), X6),
    "cumlogsumexp": (lambda x: lax.cumlogsumexp(x), X6),
    "clip": (lambda x: jnp.clip(x, -0.3, 0.7) * x, X6),
    "remainder": (lambda x: jnp.remainder(x, 0.7), X6),
    "atan2_hypot": (lambda x: jnp.arctan2(x, x[::-1] + 2) + jnp.hypot(x, 2 * x), X6),
    "special": (lambda x: jsp.special.erf(x) + jsp.special.gammaln(x ** 2 + 1) + jsp.special.digamma(x ** 2 + 1), X6),
    "igamma": (lambda x: jsp.special.gammainc(2.5, x) + jsp.special.gammainc(x, 2.0), P6),
    "ndtri": (lambda x: jsp.special.ndtri(x), U6),
    "nn_zoo": (lambda x: jax.nn.gelu(x) + jax.nn.silu(x) + jax.nn.relu6(4 * x) + jax.nn.elu(x) + jax.nn.softplus(x)
               + jax.nn.celu(x) + jax.nn.selu(x) + jax.nn.mish(x) + jax.nn.hard_swish(x), X6),
    "softmax_where": (lambda x: jax.nn.softmax(x, where=x > -0.5), X6),
    "standardize": (lambda x: jax.nn.standardize(x), X6),
    "max_min_axis": (lambda x: jnp.max(M * x[:5]) + jnp.min(M * x[:5], axis=1).sum() * x, X6),
    "top_k": (lambda x: lax.top_k(x, 3)[0], X6),
    "median_quantile": (lambda x: jnp.median(x) * jnp.quantile(x, 0.3) * x, X6),
    "prod_var": (lambda x: jnp.prod(M * x[:5], axis=0).sum() + jnp.var(M * x[:5], axis=1), X6),
    "einsum": (lambda x: jnp.einsum("ij,j,i->i", M, x[:5], x[:4]), X6),
    "kron_outer": (lambda x: jnp.kron(x[:2], x[2:4]).sum() * jnp.outer(x, x).ravel(), X6),
    "triu_diag": (lambda x: jnp.triu(jnp.outer(x, x)).ravel() + jnp.diag(jnp.outer(x, x[::-1])).sum(), X6),
    "tile_repeat": (lambda x: jnp.tile(x, 2) * jnp.repeat(x, 2), X6),
    "roll2d_flip": (lambda x: jnp.roll(jnp.flip(x.reshape(2, 3), 1), (1, 2), (0, 1)).ravel(), X6),
    "pad_modes": (lambda x: jnp.concatenate([jnp.pad(x, 2, mode="reflect"), jnp.pad(x, 2, mode="wrap"),
                                             lax.pad(x, 0.0, [(-1, 2, 1)])]), X6),
    "dynamic_update_traced": (lambda x: lax.dynamic_update_slice(x, x[:2] ** 2, (jnp.argmin(x),)), X6),
    "at_ops": (lambda x: x.at[2].set(x[0] * x[1]).at[jnp.array([1, 1, 3])].max(x[:3])
               .at[jnp.array([0, 2])].min(x[3:5]), X6),
    "segment_max": (lambda x: jax.ops.segment_max(x, jnp.array([0, 0, 1, 1, 2, 2]), 3), X6),
    "take_modes": (lambda x: jnp.concatenate([jnp.take(x, jnp.array([0, 7, -9]), mode="clip"),
                                              jnp.take(x, jnp.array([0, 7, -1]), mode="fill", fill_value=0.0)]), X6),
    "sort_family": (lambda x: jnp.concatenate([x[jnp.argsort(x)] * x, jnp.sort(x.reshape(2, 3), axis=0).ravel(),
                                               x[jnp.lexsort((x, -x))], jnp.partition(x, 2)]), X6),
    "nonzero_size": (lambda x: x[jnp.nonzero(x > 0, size=3, fill_value=0)[0]], X6),
    "linalg_small": (lambda x: jnp.concatenate([jnp.linalg.det(SPD + jnp.outer(x[:4], x[:4]))[None],
                                                jnp.linalg.slogdet(SPD + jnp.diag(x[:4]))[1][None],
                                                jnp.linalg.inv(SPD + jnp.diag(x[:4])).ravel(),
                                                jnp.linalg.solve(SPD + jnp.diag(x[:4]), x[2:])]), X6),
    "factorizations": (lambda x: jnp.concatenate([jnp.linalg.cholesky(SPD + jnp.diag(x[:4] ** 2)).ravel(),
                                                  jnp.linalg.qr(M + x[:5])[1].ravel(),
                                                  jnp.linalg.svd(M + x[:5], compute_uv=False),
                                                  jnp.linalg.eigh(SPD + jnp.diag(x[:4]))[0]]), X6),
    "pinv_lstsq": (lambda x: jnp.concatenate([jnp.linalg.pinv(M + x[:5]).ravel(),
                                              jnp.linalg.lstsq(M + x[:5], x[:4])[0]]), X6),
    "expm_triangular": (lambda x: jnp.concatenate([jsp.linalg.expm(S * 0.1 + jnp.diag(x[:4])).ravel(),
                                                   jsp.linalg.solve_triangular(jnp.tril(SPD) + jnp.diag(x[:4]), x[2:],
                                                                               lower=True)]), X6),
    "lu_cho_solve": (lambda x: jsp.linalg.lu_solve(jsp.linalg.lu_factor(SPD + jnp.diag(x[:4])), x[2:])
                     + jsp.linalg.cho_solve((jnp.linalg.cholesky(SPD + jnp.diag(x[:4] ** 2)), True), x[2:]), X6),
    "cg": (lambda x: jsp.sparse.linalg.cg(lambda v: SPD @ v + x[:4] ** 2 * v, x[2:], tol=1e-12, maxiter=100)[0], X6),
    "custom_root": (lambda x: lax.custom_root(lambda y: y ** 3 - x, jnp.ones(6),
                                              lambda f, y0: lax.fori_loop(0, 60, lambda i, y: y - f(y) / (3 * y ** 2),
                                                                          jnp.abs(x) + 1.0),
                                              lambda g, y: y / 3.0), X6 ** 2 + 1.0),
    "tridiagonal_solve": (lambda x: lax.linalg.tridiagonal_solve(
        jnp.array([0.0, 1, 1, 1, 1, 1]), jnp.full(6, 4.0) + x, jnp.array([1.0, 1, 1, 1, 1, 0]), (x ** 2)[:, None])[:, 0],
        X6),
    "fft_family": (lambda x: jnp.concatenate([jnp.abs(jnp.fft.fft(x)), jnp.fft.irfft(jnp.fft.rfft(x) * 0.5, n=6),
                                              jnp.real(jnp.fft.fft2(x.reshape(2, 3))).ravel()]), X6),
    "complex_real_out": (lambda x: jnp.real((x + 1j * x[::-1]) ** 2) + jnp.angle(x + 1j * (x[::-1] + 0.1)), X6),
    "convolve_interp": (lambda x: jnp.convolve(x, jnp.array([1.0, -2.0, 1.0]), mode="same")
                        + jnp.interp(x, jnp.linspace(-2, 2, 7), jnp.sin(jnp.linspace(-2, 2, 7))), X6),
    "pooling": (lambda x: jnp.concatenate([
        lax.reduce_window(x.reshape(6, 6), -jnp.inf, lax.max, (2, 2), (2, 2), "VALID").ravel(),
        lax.reduce_window(x.reshape(6, 6), 0.0, lax.add, (3, 3), (1, 1), "SAME").ravel()]), X36),
    "conv": (lambda x: lax.conv_general_dilated(x.reshape(1, 1, 6, 6), K, (2, 1), "SAME", rhs_dilation=(1, 2)).ravel(),
             X36),
    "image_resize": (lambda x: jax.image.resize(x.reshape(6, 6), (4, 9), "linear").ravel(), X36),
    "assoc_scan": (lambda x: lax.associative_scan(jnp.multiply, x) + lax.associative_scan(jnp.add, x * x, reverse=True),
                   X6),
    "scan_fori_map": (lambda x: lax.scan(lambda c, xi: (c * xi, c), 1.0, x)[1]
                      + lax.fori_loop(0, 3, lambda i, c: jnp.sin(c) * x, x)
                      + jnp.repeat(lax.map(lambda r: jnp.sum(r ** 2), x.reshape(3, 2)), 2), X6),
    "inner_transforms": (lambda x: jax.grad(lambda y: jnp.sum(jnp.sin(y) * y))(x)
                         + jax.hessian(lambda y: jnp.sum(y ** 3))(x).sum(0)
                         + jax.jvp(jnp.sin, (x,), (x ** 2,))[1] + jax.vjp(lambda y: y ** 3, x)[1](jnp.cos(x))[0], X6),
    "checkpoint_named": (lambda x: jax.checkpoint(lambda y: jnp.sin(y) ** 2)(x) * jax.named_call(jnp.cos, name="c")(x),
                         X6),
    "stop_gradient_where": (lambda x: x * lax.stop_gradient(x) + jnp.where(x > 0, x ** 2, jnp.sin(x)), X6),
    "odeint": (lambda x: jax.experimental.ode.odeint(lambda y, t: -y * x[:2], jnp.ones(2), jnp.array([0.0, 0.5]))[-1],
               X6),
    "reduce_precision": (lambda x: lax.reduce_precision(x, 8, 7) * x, X6),
    "cond_switch": (lambda x: lax.cond(x[0] > 0, jnp.sin, jnp.cos, x) + lax.switch(1, [jnp.sin, jnp.cos, jnp.tanh], x),
                    X6),
    "random_scale": (lambda x: jax.random.normal(jax.random.PRNGKey(0), (6,)) * x, X6),
    "pairwise_rows": (_pairwise_rows, X6),
    "row_normalizers": (lambda x: jnp.concatenate([jax.nn.softmax(x.reshape(2, 3), axis=-1).ravel(),
                                                   jax.nn.standardize(x.reshape(3, 2), axis=-1).ravel()]), X6),
    "sinkhorn_loop": (_sinkhorn_loop, X6),
    "spline_gathers": (lambda x: x[jnp.array([0, 0, 1, 2, 2, 3])] * U6 + x[jnp.array([1, 1, 2, 3, 3, 4])] * (1 - U6)
                       + x[jnp.array([2, 2, 3, 4, 4, 5])] ** 2, X6),
    "roll_stacked_rows": (lambda x: (0.5 * (jnp.roll(x.reshape(2, 3), -1, 1) + jnp.roll(x.reshape(2, 3), 1, 1))
                                     - jnp.roll(jnp.stack([x[3:], x[3:] ** 2 / (x[:3] ** 2 + 1)]), 1, 1)).ravel(), X6),
    "named_axis": (lambda x: jax.vmap(lambda r: r - lax.pmean(r, "i"), axis_name="i")(x.reshape(3, 2)).ravel(), X6),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_matches_jacrev(name):
    f, x = PROGRAMS[name]
    want = np.asarray(jax.jacrev(f)(x))
    for got in (jax.jit(ccjax.jacve(f))(x), ccjax.jacve(f, order="markowitz")(x)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-9)
