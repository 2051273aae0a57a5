"""The programs of ``benchmarks.programs``: functions a scientist or an ML
engineer differentiates, each with its inputs at a full and a quick size.

A :class:`Program` is a function, its arguments (NumPy: floating arrays in
float64, index arrays in int32; the benchmark casts the floating ones to
float32 for timing and keeps float64 for the correctness check), which of them
are differentiated, and how a Jacobian method is applied to it
(``transform``):

* ``"plain"``: ``M(fn, argnums)`` — the Jacobian of ``fn``;
* ``"vmap"``: ``vmap(M(fn, argnums), in_axes)`` — per-example Jacobians;
* ``"nested"``: ``M(M(fn))`` — the Hessian of a scalar ``fn`` (the second
  derivatives of a vector one) by the method applied twice
  (``jacve(jacve(f))``, ``jacrev(jacrev(f))``, ...).

``ref`` names the eager float64 AD mode of the reference Jacobian: ``"rev"``
(``jax.jacrev``) unless JAX cannot reverse the program (``lax.while_loop``:
``"fwd"``, ``jax.jacfwd``).

Every function is written dtype-generically (Python float literals, dtypes
taken from the arguments), so one definition serves float32 and float64.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


@dataclasses.dataclass
class Program:
    name: str
    category: str
    fn: Callable
    args: tuple
    argnums: int | tuple[int, ...] = 0
    transform: str = "plain"
    in_axes: Any = None
    ref: str = "rev"
    what: str = ""

    def __post_init__(self):
        assert self.transform in ("plain", "vmap", "nested"), self.transform
        assert self.ref in ("rev", "fwd"), self.ref


def _rng(name: str) -> np.random.Generator:
    """A generator seeded by the name (deterministic across runs)."""
    return np.random.default_rng(sum(ord(c) * 31 ** k for k, c in enumerate(name)) % (2 ** 32))


def _f64_tree(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


# ====================================================================== PDE residuals
def burgers_residual(u, u_old):
    """Implicit-Euler residual of viscous Burgers, first-order upwind
    convection (u > 0), Dirichlet zeros; neighbours by concatenate + slices."""
    n = u.shape[0]
    dx, dt, nu = 1.0 / (n + 1), 1e-3, 0.01
    zero = jnp.zeros((1,), u.dtype)
    ul = jnp.concatenate([zero, u[:-1]])
    ur = jnp.concatenate([u[1:], zero])
    return (u - u_old) / dt + u * (u - ul) / dx - nu * (ur - 2.0 * u + ul) / dx ** 2


def bratu2d_residual(U):
    """Bratu problem -Δu - λ e^u = 0 on the unit square, 5-point stencil,
    Dirichlet zeros by jnp.pad, neighbours by slicing."""
    n = U.shape[0]
    h, lam = 1.0 / (n + 1), 6.0
    P = jnp.pad(U, 1)
    lap = (P[:-2, 1:-1] + P[2:, 1:-1] + P[1:-1, :-2] + P[1:-1, 2:] - 4.0 * U) / h ** 2
    return lap + lam * jnp.exp(U)


def heat2d_conv_residual(U):
    """Implicit-Euler residual of a reaction–diffusion equation on an n x n
    grid, the 5-point Laplacian by jax.scipy.signal.convolve2d (zero
    boundary from mode='same')."""
    n = U.shape[0]
    h, dt = 1.0 / (n + 1), 1e-4
    lap = jnp.asarray([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], U.dtype) / h ** 2
    U_old = 0.5 * jnp.ones_like(U)
    return U - U_old - dt * (jax.scipy.signal.convolve2d(U, lap, mode="same") + U * (1.0 - U))


def bratu1d_residual(u):
    """Periodic 1D Bratu, tridiagonal via jnp.roll."""
    n = u.shape[0]
    h, lam = 1.0 / n, 2.0
    return (jnp.roll(u, 1) - 2.0 * u + jnp.roll(u, -1)) / h ** 2 + lam * jnp.exp(u)


def allen_cahn_residual(u):
    """Allen–Cahn ε²u'' + u - u³ with Neumann boundaries (jnp.pad mode="edge")
    and fluxes by jnp.diff."""
    n = u.shape[0]
    h, eps2 = 1.0 / n, 1e-3
    flux = jnp.diff(jnp.pad(u, 1, mode="edge")) / h
    return eps2 * jnp.diff(flux) / h + u - u ** 3


def restricted_residual(u):
    """Multigrid: the residual of -u'' + u³ = 1 on the fine grid (Dirichlet
    zeros by jnp.pad), restricted to the coarse grid by full weighting
    (strided slices: coarse point i reads fine points 2i, 2i+1, 2i+2)."""
    n = u.shape[0]
    h = 1.0 / (n + 1)
    P = jnp.pad(u, 1)
    r = 1.0 - (2.0 * u - P[:-2] - P[2:]) / h ** 2 - u ** 3
    return 0.25 * r[0:-2:2] + 0.5 * r[1:-1:2] + 0.25 * r[2::2]


def laplacian_bcoo(m: int):
    """The 5-point Laplacian of an ``m x m`` grid (Dirichlet zeros) as BCOO
    indices and values, the way a finite-element or finite-volume code
    assembles its stiffness matrix."""
    k = np.arange(m * m).reshape(m, m)
    rows, cols, vals = [k.ravel()], [k.ravel()], [np.full(m * m, 4.0)]
    for a, b in ((k[1:], k[:-1]), (k[:-1], k[1:]), (k[:, 1:], k[:, :-1]), (k[:, :-1], k[:, 1:])):
        rows.append(a.ravel())
        cols.append(b.ravel())
        vals.append(np.full(a.size, -1.0))
    return np.stack([np.concatenate(rows), np.concatenate(cols)], 1).astype(np.int32), np.concatenate(vals) * (m + 1) ** 2


def sparse_matrix_residual(u, m: int):
    """Nonlinear Poisson -Δu + exp(u) = 1 with the Laplacian a
    ``jax.experimental.sparse`` BCOO matrix (``bcoo_dot_general``)."""
    from jax.experimental import sparse

    idx, vals = laplacian_bcoo(m)
    A = sparse.BCOO((jnp.asarray(vals, u.dtype), jnp.asarray(idx)), shape=(m * m, m * m))
    return A @ u + jnp.exp(u) - 1.0


def euler1d_rusanov(U):
    """Finite-volume residual of the 1D Euler equations (ideal gas), Rusanov
    (local Lax–Friedrichs) flux between neighbouring cells; ``U``: (3, n)
    conserved variables (density, momentum, energy)."""
    rho, mom, E = U[0], U[1], U[2]
    u = mom / rho
    p = 0.4 * (E - 0.5 * rho * u ** 2)
    c = jnp.sqrt(1.4 * p / rho)
    F = jnp.stack([mom, mom * u + p, (E + p) * u])
    speed = jnp.maximum(jnp.abs(u[:-1]) + c[:-1], jnp.abs(u[1:]) + c[1:])
    flux = 0.5 * (F[:, :-1] + F[:, 1:]) - 0.5 * speed * (U[:, 1:] - U[:, :-1])
    return flux[:, 1:] - flux[:, :-1]


def fem1d_residual(u):
    """Nonlinear diffusion -(k(u) u')' = 1 by linear finite elements on
    (0, 1) with zero boundary values, ``k(u) = 1 + u²`` at each element's
    midpoint: the element fluxes assembled into the nodes by two
    scatter-adds (``.at[].add``), as an assembly loop is written."""
    n = u.shape[0]
    h = 1.0 / (n + 1)
    zero = jnp.zeros((1,), u.dtype)
    nodes = jnp.concatenate([zero, u, zero])
    k = 1.0 + (0.5 * (nodes[:-1] + nodes[1:])) ** 2
    flux = k * (nodes[1:] - nodes[:-1]) / h
    residual = jnp.zeros((n + 2,), u.dtype).at[np.arange(n + 1)].add(flux).at[np.arange(1, n + 2)].add(-flux)
    return residual[1:-1] - h


def gray_scott_rhs(U):
    """Gray–Scott reaction–diffusion right-hand side, two species on a
    periodic grid (5-point Laplacian by ``jnp.roll`` on both axes);
    ``U``: (2, n, n)."""
    u, v = U[0], U[1]
    lap = lambda a: jnp.roll(a, 1, 0) + jnp.roll(a, -1, 0) + jnp.roll(a, 1, 1) + jnp.roll(a, -1, 1) - 4.0 * a
    uvv = u * v * v
    return jnp.stack([0.16 * lap(u) - uvv + 0.06 * (1.0 - u), 0.08 * lap(v) + uvv - 0.122 * v])


def heat2d_wrap_residual(u):
    """Periodic reaction–diffusion residual on an ``(n, n)`` grid: the
    halo by ``jnp.pad(mode="wrap")``, the 5-point Laplacian by slices."""
    p = jnp.pad(u, 1, mode="wrap")
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * u + 0.1 * u ** 3


def biharmonic1d_residual(u):
    """1D beam equation (fourth derivative of u) + exp(u) = 0, the 5-point
    fourth difference with a mirrored halo (``jnp.pad(mode="reflect")``):
    a pentadiagonal Jacobian."""
    p = jnp.pad(u, 2, mode="reflect")
    return p[:-4] - 4.0 * p[1:-3] + 6.0 * u - 4.0 * p[3:-1] + p[4:] + jnp.exp(u)


def shallow_water_lax_friedrichs(U):
    """One Lax–Friedrichs step of the 1D shallow-water equations on a
    periodic grid, ``U = (h, hu)``: (2, n); the neighbours by ``jnp.roll``."""
    h, q = U[0], U[1]
    F = jnp.stack([q, q * q / h + 0.5 * 9.81 * h * h])
    return 0.5 * (jnp.roll(U, -1, 1) + jnp.roll(U, 1, 1)) - 0.1 * (jnp.roll(F, -1, 1) - jnp.roll(F, 1, 1))


# ====================================================================== Newton
def broyden_F(x):
    """Broyden's tridiagonal system."""
    zero = jnp.zeros((1,), x.dtype)
    xm = jnp.concatenate([zero, x[:-1]])
    xp = jnp.concatenate([x[1:], zero])
    return (3.0 - 2.0 * x) * x - xm - 2.0 * xp + 1.0


def broyden_J(x):
    n = x.shape[0]
    return jnp.diag(3.0 - 4.0 * x) - jnp.eye(n, k=-1, dtype=x.dtype) - 2.0 * jnp.eye(n, k=1, dtype=x.dtype)


def newton_step(x):
    """One Newton step with the analytic Jacobian: x - J(x)⁻¹F(x) (jnp.linalg.solve)."""
    return x - jnp.linalg.solve(broyden_J(x), broyden_F(x))


def newton_jacfwd_3(x):
    """Three Newton steps whose Jacobian comes from jax.jacfwd inside f."""
    for _ in range(3):
        x = x - jnp.linalg.solve(jax.jacfwd(broyden_F)(x), broyden_F(x))
    return x


# ====================================================================== least squares
def damped_cosine_residual(p, t, y):
    """Residuals of a damped cosine ``a exp(-k t) cos(w t + phi)`` against
    data: the Jacobian a Gauss-Newton or Levenberg-Marquardt step needs,
    with the parameters read as scalars ``p[0]``..``p[3]``."""
    return p[0] * jnp.exp(-p[1] * t) * jnp.cos(p[2] * t + p[3]) - y


def gaussian_peaks_residual(p, t, y):
    """Residuals of a sum of Gaussian peaks, parameters interleaved
    ``(amplitude, centre, width)`` per peak and read by strided slices."""
    a, m, s = p[0::3], p[1::3], p[2::3]
    return jnp.sum(a[:, None] * jnp.exp(-0.5 * ((t[None, :] - m[:, None]) / s[:, None]) ** 2), axis=0) - y


def bspline_curve(c, index, t):
    """A uniform cubic B-spline with control points ``c`` evaluated at
    points whose knot interval is ``index`` and local coordinate ``t``:
    four gathers of ``c`` at fixed indices (a 4-banded Jacobian)."""
    b0 = (1 - t) ** 3 / 6
    b1 = (3 * t ** 3 - 6 * t ** 2 + 4) / 6
    b2 = (-3 * t ** 3 + 3 * t ** 2 + 3 * t + 1) / 6
    b3 = t ** 3 / 6
    return c[index] * b0 + c[index + 1] * b1 + c[index + 2] * b2 + c[index + 3] * b3


# ====================================================================== finance
def black_scholes_call(S, K, sigma, T, rate=0.01):
    """Black–Scholes call prices of a book of options, elementwise in the
    spot, strike, volatility and maturity (the greeks are the diagonals of
    the four Jacobian blocks)."""
    from jax.scipy.stats import norm

    sqrt_t = jnp.sqrt(T)
    d1 = (jnp.log(S / K) + (rate + 0.5 * sigma ** 2) * T) / (sigma * sqrt_t)
    d2 = d1 - sigma * sqrt_t
    return S * norm.cdf(d1) - K * jnp.exp(-rate * T) * norm.cdf(d2)


def monte_carlo_calls(theta, Z, strikes):
    """Monte Carlo prices of calls at several strikes under geometric
    Brownian motion, w.r.t. ``theta = (spot, volatility, rate, maturity)``
    read as scalars; ``Z``: the fixed normal draws."""
    spot, sigma, rate, T = theta[0], theta[1], theta[2], theta[3]
    terminal = spot * jnp.exp((rate - 0.5 * sigma ** 2) * T + sigma * jnp.sqrt(T) * Z)
    return jnp.exp(-rate * T) * jnp.mean(jax.nn.relu(terminal[None, :] - strikes[:, None]), axis=1)


# ====================================================================== flax
def _flax_models():
    import flax.linen as nn

    class MLP(nn.Module):
        features: Sequence[int]

        @nn.compact
        def __call__(self, x):
            for f in self.features[:-1]:
                x = nn.gelu(nn.Dense(f)(x))
            return nn.Dense(self.features[-1])(x)

    class CNN(nn.Module):
        width: int = 8
        classes: int = 10

        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(self.width, (3, 3))(x))
            x = nn.relu(nn.Conv(self.width, (3, 3), strides=(2, 2))(x))
            x = x.reshape((x.shape[0], -1))
            return nn.Dense(self.classes)(x)

    class Attention(nn.Module):
        features: int

        @nn.compact
        def __call__(self, x):
            y = nn.MultiHeadDotProductAttention(num_heads=1, qkv_features=self.features)(x, x)
            return nn.LayerNorm()(x + y)

    return MLP, CNN, Attention


def _init(model, x) -> dict:
    return _f64_tree(model.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))["params"])


def flax_embedding_params(quick: bool) -> Program:
    import flax.linen as nn

    class Embedder(nn.Module):
        vocab: int
        dim: int
        out: int

        @nn.compact
        def __call__(self, tokens):
            return jnp.tanh(nn.Dense(self.out)(nn.Embed(self.vocab, self.dim)(tokens)))

    vocab, dim, out, n = (20, 4, 3, 5) if quick else (256, 16, 8, 32)
    model = Embedder(vocab, dim, out)
    tokens = _rng("embed").integers(0, vocab, n).astype(np.int32)
    params = _f64_tree(model.init(jax.random.PRNGKey(0), jnp.asarray(tokens))["params"])

    def f(params, tokens):
        return model.apply({"params": params}, tokens)

    return Program("flax_embedding_params", "flax", f, (params, tokens), 0,
                   what=f"linen Embed({vocab}, {dim}) + Dense({out}) + tanh on {n} tokens, w.r.t. the parameter dict")


def flax_mlp_params(quick: bool) -> Program:
    MLP, _, _ = _flax_models()
    feats, b, d = ((8, 4), 2, 4) if quick else ((64, 64, 10), 4, 32)
    model = MLP(feats)
    x = _rng("mlp").standard_normal((b, d))
    params = _init(model, x)

    def f(params, x):
        return model.apply({"params": params}, x)

    return Program("flax_mlp_params", "flax", f, (params, x), 0,
                   what=f"linen MLP {d}-{'-'.join(map(str, feats))}, batch {b}: logits w.r.t. the parameter dict")


def flax_mlp_input(quick: bool) -> Program:
    MLP, _, _ = _flax_models()
    feats, b, d = ((8, 4), 2, 4) if quick else ((64, 64, 10), 8, 32)
    model = MLP(feats)
    x = _rng("mlpx").standard_normal((b, d))
    params = _init(model, x)

    def f(x, params):
        return model.apply({"params": params}, x)

    return Program("flax_mlp_input", "flax", f, (x, params), 0,
                   what=f"linen MLP {d}-{'-'.join(map(str, feats))}: logits w.r.t. a batch of {b} inputs")


def flax_nnx_mlp_input(quick: bool) -> Program:
    """An ``nnx`` module is closed over: its parameters are constants of ``f``."""
    from flax import nnx

    d, h, o, b = (4, 8, 3, 2) if quick else (32, 64, 10, 8)

    class MLP(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.l1, self.l2, self.l3 = nnx.Linear(d, h, rngs=rngs), nnx.Linear(h, h, rngs=rngs), nnx.Linear(h, o, rngs=rngs)

        def __call__(self, x):
            return self.l3(jax.nn.relu(self.l2(jax.nn.relu(self.l1(x)))))

    model = MLP(nnx.Rngs(0))
    return Program("flax_nnx_mlp_input", "flax", lambda x: model(x), (_rng("nnx").standard_normal((b, d)),), 0,
                   what=f"nnx MLP {d}-{h}-{h}-{o} (closed over): logits w.r.t. a batch of {b} inputs")


def flax_cnn_input(quick: bool) -> Program:
    _, CNN, _ = _flax_models()
    s, w = (6, 2) if quick else (16, 8)
    model = CNN(width=w)
    x = _rng("cnn").standard_normal((1, s, s, 1))
    params = _init(model, x)

    def f(x, params):
        return model.apply({"params": params}, x)

    return Program("flax_cnn_input", "flax", f, (x, params), 0,
                   what=f"linen conv net (2 conv, {w} channels, stride 2, dense 10) on a {s}x{s} image, w.r.t. the image")


def flax_attention_input(quick: bool) -> Program:
    _, _, Attention = _flax_models()
    L, d = (3, 4) if quick else (16, 32)
    model = Attention(d)
    x = _rng("attn").standard_normal((L, d))
    params = _init(model, x)

    def f(x, params):
        return model.apply({"params": params}, x)

    return Program("flax_attention_input", "flax", f, (x, params), 0,
                   what=f"linen single-head self-attention + residual + LayerNorm, {L} tokens x {d}, w.r.t. tokens")


# ====================================================================== linear algebra
def _wellcond(rng, n, scale=0.3):
    return np.eye(n) + scale * rng.standard_normal((n, n)) / np.sqrt(n)


def linalg_solve(A, b):
    return jnp.linalg.solve(A, b)


def linalg_cholesky(M):
    n = M.shape[0]
    return jnp.linalg.cholesky(M @ M.T + n * jnp.eye(n, dtype=M.dtype))


def linalg_eigh(A):
    """Eigenvalues and the squared first components of the eigenvectors
    (sign-invariant) of the symmetric part."""
    w, V = jnp.linalg.eigh(0.5 * (A + A.T))
    return jnp.concatenate([w, V[0] ** 2])


def linalg_inv(A):
    return jnp.linalg.inv(A)


def linalg_det(A):
    return jnp.linalg.det(A)


def linalg_expm(A):
    return jax.scipy.linalg.expm(A)


def line_implicit_step(U):
    """Semi-implicit Allen–Cahn step on an n x n field, implicit along one
    axis: the reaction explicitly, then a solve with the Cholesky factor of
    the 1-D operator I - dt·D2 (factored once, a constant) by cho_solve."""
    n = U.shape[0]
    dt, r = 1e-3, 1e-3 * (n + 1) ** 2
    K = (1.0 + 2.0 * r) * np.eye(n) - r * (np.eye(n, k=1) + np.eye(n, k=-1))
    L = jnp.asarray(np.linalg.cholesky(K), U.dtype)
    return jax.scipy.linalg.cho_solve((L, True), U + dt * (U - U ** 3))


def cell_solves(x, blocks):
    """Block-Jacobi update of a finite-volume scheme: one small dense system
    per cell, ``vmap`` of ``jnp.linalg.solve``; ``x``: (cells, k)."""
    A = blocks.astype(x.dtype) + jax.vmap(jnp.diag)(x ** 2)
    return jax.vmap(jnp.linalg.solve)(A, jnp.sin(x))


def gp_posterior_mean(x, y, xt):
    """Gaussian-process posterior mean at test points ``xt`` (squared-exponential
    kernel, a nugget), as a function of the training locations ``x``."""
    kernel = lambda a, c: jnp.exp(-((a[:, None] - c[None, :]) ** 2) / 0.1)
    K = kernel(x, x) + 0.01 * jnp.eye(x.shape[0], dtype=x.dtype)
    return kernel(xt, x) @ jnp.linalg.solve(K, y)


def spring_chain_load_cases(k, loads):
    """Displacements of a chain of springs (constants ``k``, both ends fixed)
    under several load cases: ``jnp.linalg.solve`` with a matrix right-hand
    side, w.r.t. the spring constants."""
    K = jnp.diag(k[:-1] + k[1:]) - jnp.diag(k[1:-1], 1) - jnp.diag(k[1:-1], -1)
    return jnp.linalg.solve(K, loads)


def tridiagonal_solve(b, lower, diag, upper):
    """``lax.linalg.tridiagonal_solve`` of a fixed tridiagonal matrix with a
    nonlinear right-hand side ``tanh(b)``."""
    return lax.linalg.tridiagonal_solve(lower, diag, upper, jnp.tanh(b)[:, None])[:, 0]


# ====================================================================== control flow
def scan_rnn(x, W, U, h0):
    """Elman RNN by lax.scan: all hidden states w.r.t. the input sequence."""
    def step(h, xt):
        h = jnp.tanh(W @ h + U @ xt)
        return h, h

    return lax.scan(step, h0, x)[1]


def loop_rnn(x, W, U, h0):
    """The same Elman RNN written as a Python loop reading ``x[t]``: the
    last hidden state w.r.t. the input sequence."""
    h = h0
    for t in range(x.shape[0]):
        h = jnp.tanh(W @ h + U @ x[t])
    return h


def fori_euler(x, W):
    """50 explicit Euler steps of x' = tanh(W x) by lax.fori_loop."""
    return lax.fori_loop(0, 50, lambda i, x: x + 0.02 * jnp.tanh(W @ x), x)


def jacobi_fori(u):
    """Five Jacobi sweeps of a periodic grid with a source term, by lax.fori_loop."""
    return lax.fori_loop(0, 5, lambda i, v: 0.5 * (jnp.roll(v, 1) + jnp.roll(v, -1)) + 0.1 * jnp.sin(u), u)


def jacobi_gather_fori(u):
    """The same sweeps with the neighbours taken by static index vectors
    (gathers inside the loop body)."""
    n = u.shape[0]
    left, right = np.roll(np.arange(n), 1), np.roll(np.arange(n), -1)
    return lax.fori_loop(0, 5, lambda i, v: 0.5 * (v[left] + v[right]) + 0.1 * jnp.sin(u), u)


def while_fixed(x, W):
    """lax.while_loop with a fixed trip count of 20 (JAX cannot reverse it)."""
    def body(c):
        i, x = c
        return i + 1, x + 0.05 * jnp.sin(W @ x)

    return lax.while_loop(lambda c: c[0] < 20, body, (0, x))[1]


def newton_sqrt_elementwise(a):
    """Eight Newton steps for sqrt(a) on every entry (lax.fori_loop): a loop
    whose body is elementwise, so a diagonal Jacobian."""
    return lax.fori_loop(0, 8, lambda i, y: 0.5 * (y + a / y), a)


def particles_euler(x):
    """50 explicit Euler steps of independent particles, x' = sin x - x³,
    the trajectory's mean (lax.scan with ys)."""
    def step(c, _):
        c = c + 0.01 * (jnp.sin(c) - c ** 3)
        return c, c

    return lax.scan(step, x, None, length=50)[1].mean(0)


def charged_particles(x):
    """20 explicit steps of independent charged particles in a magnetic field
    with a cubic drag (lax.scan over (N, 3) positions): each particle's three
    coordinates mix, particles never meet."""
    field = jnp.asarray([0.0, 0.3, 1.0], x.dtype)

    def step(p, _):
        return p + 0.01 * jnp.cross(p, field) - 0.01 * p * jnp.sum(p * p, axis=1, keepdims=True), None

    return lax.scan(step, x, None, length=20)[0]


def relu_fixed_point(X, W):
    """20 steps of h <- relu(h W + X) for a batch of rows (lax.fori_loop; a
    deep-equilibrium-style layer): rows never meet, and ReLU is a custom_jvp."""
    return lax.fori_loop(0, 20, lambda i, h: jax.nn.relu(h @ W + X), X)


def damped_fixed_point(x):
    """30 damped steps towards y = cos(y) + x, each step's damping chosen by
    lax.cond on the residual's norm (lax.fori_loop): entries never meet."""
    def body(i, y):
        r = jnp.cos(y) + x - y
        return lax.cond(jnp.linalg.norm(r) > 1.0, lambda: y + 0.3 * r, lambda: y + 0.8 * r)

    return lax.fori_loop(0, 30, body, x)


def cond_branch(x):
    return lax.cond(jnp.sum(x) > 0, lambda x: jnp.sin(x) * x + jnp.roll(x, 1),
                    lambda x: jnp.cos(x) + x ** 2, x)


def switch_branch(x):
    k = jnp.clip((jnp.abs(x[0]) * 3.0).astype(jnp.int32), 0, 2)
    return lax.switch(k, [lambda x: jnp.tanh(x) * 2.0, lambda x: x * jnp.exp(-x ** 2),
                          lambda x: jnp.cumsum(x) * 0.1], x)


def sinkhorn_plan(C, iterations: int = 20, eps: float = 0.5):
    """Entropic optimal transport between two uniform histograms: the
    transport plan after ``iterations`` Sinkhorn scalings
    (``lax.fori_loop``), w.r.t. the cost matrix ``C`` (n, n)."""
    n = C.shape[0]
    K = jnp.exp(-C / eps)
    a = jnp.full((n,), 1.0 / n, C.dtype)

    def body(_, uv):
        u, v = uv
        u = a / (K @ v)
        return u, a / (K.T @ u)

    u, v = lax.fori_loop(0, iterations, body, (jnp.ones((n,), C.dtype), jnp.ones((n,), C.dtype)))
    return u[:, None] * K * v[None, :]


def kalman_filter(x0, F, H, ys):
    """A Kalman filter over a measurement sequence by ``lax.scan`` (predict,
    gain by ``jnp.linalg.inv`` of the innovation covariance, update): the
    filtered states w.r.t. the initial state."""
    n, m = F.shape[0], H.shape[0]

    def step(c, y):
        x, P = c
        x, P = F @ x, F @ P @ F.T + 0.01 * jnp.eye(n, dtype=x.dtype)
        K = P @ H.T @ jnp.linalg.inv(H @ P @ H.T + 0.1 * jnp.eye(m, dtype=x.dtype))
        x = x + K @ (y - H @ x)
        return (x, (jnp.eye(n, dtype=x.dtype) - K @ H) @ P), x

    return lax.scan(step, (x0, jnp.eye(n, dtype=x0.dtype)), ys)[1]


# ====================================================================== gather / scatter, conv, sort, FFT
def gather_big(x, idx):
    return x[idx] ** 2 + jnp.sin(x[idx])


def scatter_add(x, idx, nbins: int):
    return jnp.zeros((nbins,), x.dtype).at[idx].add(x ** 2)


def cross_entropy(logits, labels):
    """Per-example cross-entropy of a classifier, w.r.t. its logits: the
    label's log-probability picked by ``take_along_axis``."""
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]


def message_passing(h, edges, mix):
    """One graph-network layer on a fixed graph: messages from the edge
    sources' rows (gathered), mixed by a weight matrix, summed at the edge
    targets (scatter-add), with a residual connection."""
    src, dst = edges
    messages = jnp.tanh(h[src] @ mix)
    return jnp.tanh(jnp.zeros_like(h).at[dst].add(messages) + h)


def pool_features(img, kernel):
    """A feature map: 3x3 convolution (constant kernel), ReLU, 2x2 max pool
    and a 3x3 average pool (stride 1, same padding); NHWC."""
    feats = jax.nn.relu(lax.conv_general_dilated(img, kernel, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")))
    pooled = lax.reduce_window(feats, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return lax.reduce_window(pooled, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME") / 9.0


def conv2d_scalar(img, kernel):
    y = lax.conv_general_dilated(img, kernel, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return jnp.sum(jnp.tanh(y) ** 2)


def sort_values(x):
    return jnp.sort(jnp.sin(3.0 * x) * x)


def fft_filter(x, H):
    """Low-pass filter by rfft / irfft (complex intermediates, real output)."""
    return jnp.fft.irfft(jnp.fft.rfft(jnp.tanh(x)) * H, n=x.shape[0])


def fft_filter_rows(x, H):
    """The same filter along the last axis of a batch of signals."""
    return jnp.fft.irfft(jnp.fft.rfft(jnp.tanh(x), axis=-1) * H, n=x.shape[-1], axis=-1)


def conv1d_same(x, taps):
    """A 1D filter by ``jnp.convolve(mode="same")`` followed by ``tanh``."""
    return jnp.tanh(jnp.convolve(x, taps, mode="same"))


# ====================================================================== ODEs
def lorenz96(x):
    return (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + 8.0


def lorenz96_indexed(x):
    """Lorenz-96 with the neighbours taken by constant index vectors (gathers)."""
    n = x.shape[0]
    i = np.arange(n)
    return (x[(i + 1) % n] - x[(i - 2) % n]) * x[(i - 1) % n] - x + 8.0


def rk4_lorenz96(x):
    """10 unrolled RK4 steps of Lorenz-96.  The right-hand side takes its
    neighbours by index: with jnp.roll (slices + concatenate) XLA:CPU needs
    over a minute to compile the Jacobian of every method (jacrev 94 s, ccjax
    178 s at n = 8 on the shared 2-core machine; 18 s for jacrev at 4 steps),
    so that variant would only measure the first-call limit."""
    dt = 0.01
    for _ in range(10):
        k1 = lorenz96_indexed(x)
        k2 = lorenz96_indexed(x + 0.5 * dt * k1)
        k3 = lorenz96_indexed(x + 0.5 * dt * k2)
        k4 = lorenz96_indexed(x + dt * k3)
        x = x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x


def lorenz63(u, v, w):
    return 10.0 * (v - u), u * (28.0 - w) - v, u * v - 8.0 / 3.0 * w


def rk4_lorenz63_scalars(x, steps=4):
    """RK4 steps of Lorenz-63 written on the three scalar components (the
    state transition matrix of a short trajectory).  XLA:CPU's compiled
    ``jax.jacrev`` of this straight-line scalar code takes about 90 ms a
    call at 4 steps (1.5 ms at 3; its fusions recompute shared values);
    ccjax rolls the steps into a scan."""
    h = 0.01
    y = (x[0], x[1], x[2])
    for _ in range(steps):
        k1 = lorenz63(*y)
        k2 = lorenz63(*(a + h / 2 * k for a, k in zip(y, k1)))
        k3 = lorenz63(*(a + h / 2 * k for a, k in zip(y, k2)))
        k4 = lorenz63(*(a + h * k for a, k in zip(y, k3)))
        y = tuple(a + h / 6 * (p + 2 * q + 2 * r + s) for a, p, q, r, s in zip(y, k1, k2, k3, k4))
    return jnp.stack(y)


def quaternion_rotation(q):
    """The rotation matrix of a quaternion, normalized first: nine entries
    written with ``jnp.array`` of scalar expressions."""
    w, x, y, z = q / jnp.linalg.norm(q)
    return jnp.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def arm_position(q, lengths):
    """End-effector position of a planar serial arm: one 4x4 homogeneous
    transform per joint (rotation about z, then the link along x), each
    built by ``jnp.array`` of scalars and chained by matrix products."""
    pose = jnp.eye(4, dtype=q.dtype)
    for k in range(q.shape[0]):
        c, s, a = jnp.cos(q[k]), jnp.sin(q[k]), lengths[k]
        zero, one = jnp.zeros_like(c), jnp.ones_like(c)
        pose = pose @ jnp.array([[c, -s, zero, a * c], [s, c, zero, a * s], [zero, zero, one, zero],
                                 [zero, zero, zero, one]])
    return pose[:3, 3]


# ====================================================================== physics and ML layers
def nbody_accelerations(x):
    """Softened gravitational accelerations of ``n`` bodies from all pairs
    (broadcast differences), w.r.t. the flattened positions (3n,)."""
    x = x.reshape(-1, 3)
    d = x[None, :, :] - x[:, None, :]
    r2 = jnp.sum(d * d, -1) + 0.1
    return jnp.sum(d / r2[..., None] ** 1.5, axis=1).reshape(-1)


def rbf_kernel_matrix(X):
    """The Gaussian-process RBF kernel matrix of ``n`` points (n, 2) w.r.t. the points."""
    d2 = jnp.sum((X[:, None, :] - X[None, :, :]) ** 2, -1)
    return jnp.exp(-0.5 * d2)


def layer_norm_rows(x):
    """Layer normalisation of each row (no affine part)."""
    m = jnp.mean(x, -1, keepdims=True)
    v = jnp.mean((x - m) ** 2, -1, keepdims=True)
    return (x - m) / jnp.sqrt(v + 1e-5)


def causal_attention(q, K, V):
    """Causal (lower-triangular) softmax attention of queries ``q`` over
    fixed keys and values: the outputs w.r.t. the queries."""
    scores = q @ K.T / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    mask = jnp.tril(jnp.ones((q.shape[0], K.shape[0]), bool))
    return jax.nn.softmax(jnp.where(mask, scores, -1e9), axis=-1) @ V


# ====================================================================== Hessians
def lj_energy(x):
    """Lennard-Jones energy of the particles at x (flat, 3 per particle)."""
    p = x.reshape(-1, 3)
    n = p.shape[0]
    d = p[:, None, :] - p[None, :, :]
    r2 = jnp.sum(d * d, -1) + jnp.eye(n, dtype=x.dtype)
    inv6 = 1.0 / r2 ** 3
    mask = jnp.triu(jnp.ones((n, n), x.dtype), 1)
    return jnp.sum(4.0 * (inv6 * inv6 - inv6) * mask)


def _lj_positions(quick: bool) -> np.ndarray:
    shape = (2, 2, 1) if quick else (2, 2, 4)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in shape], indexing="ij"), -1).reshape(-1, 3) * 1.12
    return (grid + 0.05 * _rng("lj").standard_normal(grid.shape)).reshape(-1)


# ====================================================================== good cases
def mlp_single(x, W1, b1, W2, b2):
    return W2 @ jnp.tanh(W1 @ x + b1) + b2


def cumsum_sq(x):
    return jnp.cumsum(x * x)


def logsumexp_rows(X):
    return jax.nn.logsumexp(X, axis=1)


def norms(X):
    return jnp.concatenate([jnp.linalg.norm(X, axis=1), jnp.linalg.norm(X)[None]])


def interp(xq, fp, xp):
    return jnp.interp(xq, xp, fp)


def lagrange_interp(y, nodes, queries):
    """Barycentric Lagrange interpolation of values ``y`` at fixed nodes,
    read at fixed queries (weights ``1 / prod_j (x_i - x_j)``)."""
    diff = nodes[:, None] - nodes[None, :] + jnp.eye(nodes.shape[0], dtype=nodes.dtype)
    w = 1.0 / jnp.prod(diff, axis=1)
    t = w / (queries[:, None] - nodes[None, :])
    return (t @ y) / t.sum(1)


def remat_blocks(x, W):
    block = jax.checkpoint(lambda x: jnp.tanh(W @ x) + x)
    for _ in range(4):
        x = block(x)
    return x


# ====================================================================== the registry
def _builders() -> dict[str, Callable[[bool], Program]]:
    B: dict[str, Callable[[bool], Program]] = {}

    def reg(fn):
        B[fn.__name__[2:]] = fn
        return fn

    @reg
    def p_burgers1d_upwind(q):
        n = 32 if q else 1024
        r = _rng("burgers")
        u = 0.5 + 0.1 * r.random(n)
        return Program("burgers1d_upwind", "PDE", burgers_residual, (u, u + 0.01 * r.standard_normal(n)), 0,
                       what=f"implicit-Euler Burgers residual, upwind, concatenate/slices, n={n}")

    @reg
    def p_bratu2d_5pt(q):
        n = 6 if q else 32
        return Program("bratu2d_5pt", "PDE", bratu2d_residual, (0.1 * _rng("bratu2").random((n, n)),), 0,
                       what=f"2D Bratu 5-point stencil, jnp.pad + slices, {n}x{n}")

    @reg
    def p_heat2d_conv(q):
        n = 6 if q else 32
        return Program("heat2d_conv", "PDE", heat2d_conv_residual, (0.5 + 0.1 * _rng("heat2d").random((n, n)),), 0,
                       what=f"2D reaction–diffusion residual, 5-point Laplacian by convolve2d, {n}x{n}")

    @reg
    def p_bratu1d_roll(q):
        n = 32 if q else 4096
        return Program("bratu1d_roll", "PDE", bratu1d_residual, (0.1 * _rng("bratu1").random(n),), 0,
                       what=f"periodic 1D Bratu, tridiagonal by jnp.roll, n={n}")

    @reg
    def p_allen_cahn1d(q):
        n = 16 if q else 256
        return Program("allen_cahn1d", "PDE", allen_cahn_residual, (_rng("ac").standard_normal(n),), 0,
                       what=f"Allen–Cahn residual, jnp.pad(mode='edge') + jnp.diff, n={n}")

    @reg
    def p_multigrid_restrict(q):
        n = 17 if q else 2049
        return Program("multigrid_restrict", "PDE", restricted_residual, (_rng("mg").standard_normal(n),), 0,
                       what=f"fine residual restricted by full weighting (strided slices), n={n} -> {(n - 1) // 2}")

    @reg
    def p_sparse_matrix_residual(q):
        m = 4 if q else 32
        return Program("sparse_matrix_residual", "PDE", lambda u: sparse_matrix_residual(u, m),
                       (0.1 * _rng("bcoo").random(m * m),), 0,
                       what=f"nonlinear Poisson, 5-point Laplacian as a BCOO matrix (A @ u), {m}x{m}")

    @reg
    def p_euler1d_rusanov(q):
        n = 8 if q else 256
        r = _rng("euler1d")
        U = np.stack([1.0 + 0.1 * r.random(n), 0.1 * r.standard_normal(n), 2.5 + 0.1 * r.random(n)])
        return Program("euler1d_rusanov", "PDE", euler1d_rusanov, (U,), 0,
                       what=f"1D Euler equations, finite volumes, Rusanov flux, (3, {n}) cells")

    @reg
    def p_fem1d_assembly(q):
        n = 16 if q else 1024
        return Program("fem1d_assembly", "PDE", fem1d_residual, (0.1 * _rng("fem1d").standard_normal(n),), 0,
                       what=f"nonlinear diffusion by linear finite elements, element fluxes assembled by "
                            f"scatter-add, n={n}")

    @reg
    def p_gray_scott2d(q):
        n = 4 if q else 32
        r = _rng("grayscott")
        return Program("gray_scott2d", "PDE", gray_scott_rhs, (np.stack([1.0 - 0.1 * r.random((n, n)),
                                                                          0.1 * r.random((n, n))]),), 0,
                       what=f"Gray–Scott reaction–diffusion, two species, periodic 5-point Laplacian by "
                            f"jnp.roll, (2, {n}, {n})")

    @reg
    def p_heat2d_wrap(q):
        n = 6 if q else 48
        return Program("heat2d_wrap", "PDE", heat2d_wrap_residual, (_rng("heatwrap").standard_normal((n, n)),), 0,
                       what=f"periodic reaction–diffusion, jnp.pad(mode='wrap') + slices, {n}x{n}")

    @reg
    def p_biharmonic1d_reflect(q):
        n = 16 if q else 512
        return Program("biharmonic1d_reflect", "PDE", biharmonic1d_residual,
                       (0.1 * _rng("biharmonic").standard_normal(n),), 0,
                       what=f"1D beam equation, 5-point fourth difference, jnp.pad(mode='reflect'), n={n}")

    @reg
    def p_shallow_water1d(q):
        n = 8 if q else 256
        r = _rng("swe")
        return Program("shallow_water1d", "PDE", shallow_water_lax_friedrichs,
                       (np.stack([2.0 + r.random(n), 0.1 * r.standard_normal(n)]),), 0,
                       what=f"1D shallow water, one Lax–Friedrichs step, jnp.roll, (2, {n})")

    @reg
    def p_newton_step(q):
        n = 6 if q else 64
        return Program("newton_step", "Newton", newton_step, (-0.5 + 0.1 * _rng("newton").random(n),), 0,
                       what=f"one Newton step x - solve(J(x), F(x)), Broyden tridiagonal, n={n}")

    @reg
    def p_newton_jacfwd_3(q):
        n = 4 if q else 16
        return Program("newton_jacfwd_3", "Newton", newton_jacfwd_3, (-0.5 + 0.1 * _rng("newton3").random(n),), 0,
                       what=f"3 Newton steps, J = jax.jacfwd(F) inside f, jnp.linalg.solve, n={n}")

    @reg
    def p_curve_fit(q):
        n = 16 if q else 4096
        t = np.linspace(0.0, 5.0, n)
        y = 2.0 * np.exp(-0.7 * t) * np.cos(3.0 * t) + 0.05 * _rng("curvefit").standard_normal(n)
        return Program("curve_fit", "least squares",
                       lambda p: damped_cosine_residual(p, t.astype(p.dtype), y.astype(p.dtype)),
                       (np.array([1.8, 0.6, 2.9, 0.1]),), 0,
                       what=f"residuals of a damped cosine fit w.r.t. its 4 parameters (p[0]..p[3]), {n} points")

    @reg
    def p_peaks_fit(q):
        n, peaks = (16, 2) if q else (4096, 3)
        t = np.linspace(0.0, 5.0, n)
        p0 = np.array([1.0, 1.0, 0.5, 0.7, 2.5, 0.3, 0.4, 4.0, 0.6])[:3 * peaks]
        y = np.asarray(gaussian_peaks_residual(p0, t, np.zeros(n))) + 0.05 * _rng("peaksfit").standard_normal(n)
        return Program("peaks_fit", "least squares",
                       lambda p: gaussian_peaks_residual(p, t.astype(p.dtype), y.astype(p.dtype)),
                       (p0 * 1.1,), 0,
                       what=f"residuals of a sum of {peaks} Gaussian peaks w.r.t. their {3 * peaks} parameters "
                            f"(strided slices), {n} points")

    @reg
    def p_bspline_fit(q):
        points, controls = (16, 8) if q else (512, 32)
        s = np.linspace(0.0, 1.0, points) * (controls - 3)
        index = np.clip(s.astype(np.int32), 0, controls - 4)
        return Program("bspline_fit", "least squares",
                       lambda c: bspline_curve(c, index, (s - index).astype(c.dtype)),
                       (_rng("bspline").standard_normal(controls),), 0,
                       what=f"cubic B-spline at {points} points w.r.t. its {controls} control points "
                            f"(gathers at fixed indices)")

    @reg
    def p_black_scholes_greeks(q):
        n = 8 if q else 1024
        r = _rng("blackscholes")
        return Program("black_scholes_greeks", "finance", black_scholes_call,
                       (100.0 + 10.0 * r.standard_normal(n), 100.0 + 10.0 * r.standard_normal(n),
                        0.2 + 0.1 * r.random(n), 0.25 + r.random(n)), (0, 1, 2, 3),
                       what=f"Black–Scholes call prices of {n} options w.r.t. spot, strike, volatility and "
                            f"maturity (four diagonal blocks)")

    @reg
    def p_monte_carlo_greeks(q):
        paths, strikes = (64, 3) if q else (4096, 9)
        Z = _rng("montecarlo").standard_normal(paths)
        K = np.linspace(80.0, 120.0, strikes)
        return Program("monte_carlo_greeks", "finance",
                       lambda theta: monte_carlo_calls(theta, Z.astype(theta.dtype), K.astype(theta.dtype)),
                       (np.array([100.0, 0.2, 0.01, 1.0]),), 0,
                       what=f"Monte Carlo call prices at {strikes} strikes, {paths} paths, w.r.t. spot, volatility, "
                            f"rate and maturity (read as scalars)")

    B["flax_mlp_params"] = flax_mlp_params
    B["flax_embedding_params"] = flax_embedding_params
    B["flax_mlp_input"] = flax_mlp_input
    B["flax_nnx_mlp_input"] = flax_nnx_mlp_input
    B["flax_cnn_input"] = flax_cnn_input
    B["flax_attention_input"] = flax_attention_input

    @reg
    def p_linalg_solve(q):
        n = 4 if q else 32
        r = _rng("solve")
        return Program("linalg_solve", "linalg", linalg_solve, (_wellcond(r, n), r.standard_normal(n)), (0, 1),
                       what=f"jnp.linalg.solve(A, b) w.r.t. A and b, n={n}")

    @reg
    def p_linalg_cholesky(q):
        n = 4 if q else 16
        return Program("linalg_cholesky", "linalg", linalg_cholesky, (_rng("chol").standard_normal((n, n)),), 0,
                       what=f"cholesky(M Mᵀ + nI), {n}x{n}")

    @reg
    def p_linalg_eigh(q):
        n = 4 if q else 16
        return Program("linalg_eigh", "linalg", linalg_eigh, (_rng("eigh").standard_normal((n, n)),), 0,
                       what=f"eigh of the symmetric part: eigenvalues and squared first eigenvector components, {n}x{n}")

    @reg
    def p_linalg_inv(q):
        n = 4 if q else 16
        return Program("linalg_inv", "linalg", linalg_inv, (_wellcond(_rng("inv"), n),), 0,
                       what=f"jnp.linalg.inv, {n}x{n}")

    @reg
    def p_linalg_det(q):
        n = 4 if q else 16
        return Program("linalg_det", "linalg", linalg_det, (_wellcond(_rng("det"), n),), 0,
                       what=f"jnp.linalg.det, {n}x{n} -> scalar")

    @reg
    def p_linalg_expm(q):
        n = 3 if q else 8
        return Program("linalg_expm", "linalg", linalg_expm, (0.3 * _rng("expm").standard_normal((n, n)),), 0,
                       what=f"jax.scipy.linalg.expm, {n}x{n}")

    @reg
    def p_line_implicit(q):
        n = 4 if q else 32
        return Program("line_implicit", "linalg", line_implicit_step, (_rng("imex").standard_normal((n, n)),), 0,
                       what=f"semi-implicit Allen–Cahn step, cho_solve with a constant factor along one axis, "
                            f"{n}x{n}")

    @reg
    def p_linalg_cell_solves(q):
        cells, k = (4, 3) if q else (256, 5)
        r = _rng("cells")
        blocks = r.standard_normal((cells, k, k)) + 2.0 * k * np.eye(k)
        return Program("linalg_cell_solves", "linalg", lambda x: cell_solves(x, blocks),
                       (r.standard_normal((cells, k)),), 0,
                       what=f"vmap(jnp.linalg.solve): one {k}x{k} system per cell, {cells} cells")

    @reg
    def p_gp_posterior_mean(q):
        n, nt = (4, 3) if q else (64, 32)
        r = _rng("gp")
        x = np.sort(r.uniform(size=n))
        return Program("gp_posterior_mean", "linalg", gp_posterior_mean,
                       (x, np.sin(3.0 * x), np.linspace(0.0, 1.0, nt)), 0,
                       what=f"Gaussian-process posterior mean (jnp.linalg.solve of the {n}x{n} kernel matrix) "
                            f"at {nt} points w.r.t. the {n} training locations")

    @reg
    def p_spring_chain_load_cases(q):
        n, m = (4, 2) if q else (64, 6)
        r = _rng("springs")
        return Program("spring_chain_load_cases", "linalg", spring_chain_load_cases,
                       (1.0 + r.uniform(size=n + 1), r.standard_normal((n, m))), 0,
                       what=f"spring chain, {n} nodes, {m} load cases (jnp.linalg.solve, matrix right-hand side) "
                            "w.r.t. the spring constants")

    def rnn_args(seed: str, T: int, d: int, h: int) -> tuple:
        """(inputs x (T, d), W (h, h), U (h, d), h0) of an Elman RNN."""
        r = _rng(seed)
        return (r.standard_normal((T, d)), r.standard_normal((h, h)) / np.sqrt(h),
                r.standard_normal((h, d)) / np.sqrt(d), np.zeros(h))

    @reg
    def p_tridiagonal_solve(q):
        n = 8 if q else 256
        lower, upper = np.r_[0.0, -np.ones(n - 1)], np.r_[-np.ones(n - 1), 0.0]
        return Program("tridiagonal_solve", "linalg",
                       lambda b: tridiagonal_solve(b, *(jnp.asarray(a, b.dtype) for a in (lower, 4.0 * np.ones(n), upper))),
                       (_rng("tridiag").standard_normal(n),), 0,
                       what=f"lax.linalg.tridiagonal_solve with right-hand side tanh(b), n={n}")

    @reg
    def p_scan_rnn(q):
        T, d, h = (3, 2, 4) if q else (20, 8, 32)
        return Program("scan_rnn", "control flow", scan_rnn, rnn_args("rnn", T, d, h), 0,
                       what=f"lax.scan Elman RNN, T={T}, d={d}, h={h}: all hidden states w.r.t. the inputs")

    @reg
    def p_kalman_filter(q):
        T, n, m = (3, 2, 1) if q else (30, 4, 2)
        r = _rng("kalman")
        return Program("kalman_filter", "control flow", kalman_filter,
                       (r.standard_normal(n), np.eye(n) + 0.1 * r.standard_normal((n, n)),
                        r.standard_normal((m, n)), r.standard_normal((T, m))), 0,
                       what=f"lax.scan Kalman filter with jnp.linalg.inv, T={T}, state {n}, measurement {m}: "
                            "filtered states w.r.t. the initial state")

    @reg
    def p_loop_rnn(q):
        T, d, h = (6, 2, 4) if q else (200, 4, 16)
        return Program("loop_rnn", "control flow", loop_rnn, rnn_args("looprnn", T, d, h), 0,
                       what=f"Elman RNN as a Python loop over x[t], T={T}, d={d}, h={h}: the last hidden "
                            f"state w.r.t. the inputs")

    @reg
    def p_fori_euler(q):
        n = 4 if q else 32
        r = _rng("fori")
        return Program("fori_euler", "control flow", fori_euler,
                       (r.standard_normal(n), r.standard_normal((n, n)) / np.sqrt(n)), 0,
                       what=f"lax.fori_loop, 50 Euler steps of x' = tanh(Wx), n={n}")

    @reg
    def p_jacobi_fori(q):
        n = 16 if q else 1024
        return Program("jacobi_fori", "control flow", jacobi_fori, (_rng("jacobi").standard_normal(n),), 0,
                       what=f"lax.fori_loop, 5 Jacobi sweeps of a periodic grid (a band of 11 diagonals), n={n}")

    @reg
    def p_jacobi_gather_fori(q):
        n = 16 if q else 1024
        return Program("jacobi_gather_fori", "control flow", jacobi_gather_fori,
                       (_rng("jacobi_gather").standard_normal(n),), 0,
                       what=f"the same sweeps, neighbours by index vectors (gathers in the loop body), n={n}")

    @reg
    def p_while_fixed(q):
        n = 4 if q else 32
        r = _rng("while")
        return Program("while_fixed", "control flow", while_fixed,
                       (r.standard_normal(n), r.standard_normal((n, n)) / np.sqrt(n)), 0, ref="fwd",
                       what=f"lax.while_loop, fixed 20 trips, n={n} (not reversible: reference jacfwd)")

    @reg
    def p_newton_sqrt_elementwise(q):
        n = 16 if q else 1024
        return Program("newton_sqrt_elementwise", "control flow", newton_sqrt_elementwise,
                       (1.0 + np.abs(_rng("newton_sqrt").standard_normal(n)),), 0,
                       what=f"lax.fori_loop, 8 Newton steps for sqrt(a) entry by entry, n={n}")

    @reg
    def p_particles_euler(q):
        n = 16 if q else 1024
        return Program("particles_euler", "control flow", particles_euler, (_rng("particles").standard_normal(n),), 0,
                       what=f"lax.scan, 50 Euler steps of independent particles, mean of the trajectory, n={n}")

    @reg
    def p_charged_particles(q):
        n = 8 if q else 256
        return Program("charged_particles", "control flow", charged_particles,
                       (_rng("charged").standard_normal((n, 3)),), 0,
                       what=f"lax.scan, 20 steps of {n} independent particles in 3-D (coordinates mix within a particle)")

    @reg
    def p_relu_fixed_point(q):
        b, h = (4, 3) if q else (64, 16)
        r = _rng("relu_fixed_point")
        return Program("relu_fixed_point", "control flow", relu_fixed_point,
                       (r.standard_normal((b, h)), 0.9 * r.standard_normal((h, h)) / np.sqrt(h)), 0,
                       what=f"lax.fori_loop, 20 steps of h = relu(h W + X), {b} rows of {h}, w.r.t. X")

    @reg
    def p_damped_fixed_point(q):
        n = 16 if q else 1024
        return Program("damped_fixed_point", "control flow", damped_fixed_point,
                       (_rng("damped").standard_normal(n),), 0,
                       what=f"lax.fori_loop, 30 damped fixed-point steps, damping by lax.cond on the residual norm, n={n}")

    @reg
    def p_cond(q):
        n = 8 if q else 64
        return Program("cond", "control flow", cond_branch, (_rng("cond").standard_normal(n) + 0.3,), 0,
                       what=f"lax.cond on the sign of sum(x), n={n}")

    @reg
    def p_switch(q):
        n = 8 if q else 64
        x = _rng("switch").standard_normal(n)
        x[0] = 0.5  # branch 1
        return Program("switch", "control flow", switch_branch, (x,), 0,
                       what=f"lax.switch on an index computed from x, 3 branches, n={n}")

    @reg
    def p_sinkhorn(q):
        n = 4 if q else 16
        return Program("sinkhorn", "control flow", sinkhorn_plan, (_rng("sinkhorn").random((n, n)),), 0,
                       what=f"entropic transport plan, 20 Sinkhorn iterations (fori_loop), w.r.t. the "
                            f"{n}x{n} cost matrix")

    @reg
    def p_gather_big_index(q):
        n, k = (16, 64) if q else (1024, 4096)
        r = _rng("gather")
        return Program("gather_big_index", "gather/scatter", gather_big,
                       (r.standard_normal(n), r.integers(0, n, k).astype(np.int32)), 0,
                       what=f"x[idx]: {n} values, {k} indices")

    @reg
    def p_scatter_add(q):
        n, bins = (32, 8) if q else (2048, 256)
        r = _rng("scatter")
        idx = r.integers(0, bins, n).astype(np.int32)
        return Program("scatter_add", "gather/scatter", lambda x, idx: scatter_add(x, idx, bins),
                       (r.standard_normal(n), idx), 0, what=f"zeros({bins}).at[idx].add(x²), {n} values")

    @reg
    def p_cross_entropy_logits(q):
        batch, classes = (8, 4) if q else (256, 10)
        r = _rng("xent")
        labels = r.integers(0, classes, batch).astype(np.int32)
        return Program("cross_entropy_logits", "gather/scatter", lambda z: cross_entropy(z, labels),
                       (r.standard_normal((batch, classes)),), 0,
                       what=f"per-example cross-entropy w.r.t. the logits (take_along_axis), {batch} x {classes}")

    def gnn(q):
        """Sizes, node features, edges (int32, sources then targets) and weights of both graph programs."""
        nodes, edges, d = (12, 32, 3) if q else (256, 1024, 4)
        r = _rng("gnn")
        graph = r.integers(0, nodes, (2, edges)).astype(np.int32)
        mix = r.standard_normal((d, d)) / np.sqrt(d)
        return f"{nodes} nodes x {d} features, {edges} edges", r.standard_normal((nodes, d)), graph, mix

    @reg
    def p_gnn_message_passing(q):
        sizes, h, graph, mix = gnn(q)
        return Program("gnn_message_passing", "gather/scatter",
                       lambda h: message_passing(h, graph, mix.astype(h.dtype)), (h,), 0,
                       what=f"graph-network layer, rows gathered at the edge sources and scatter-added at their "
                            f"targets (graph fixed in the function), {sizes}")

    @reg
    def p_gnn_edges_as_input(q):
        sizes, h, graph, mix = gnn(q)
        return Program("gnn_edges_as_input", "gather/scatter",
                       lambda h, edges: message_passing(h, edges, mix.astype(h.dtype)), (h, graph), 0,
                       what=f"the same layer with the edges an argument (jraph style: indices known only at run "
                            f"time), {sizes}")

    @reg
    def p_conv2d_scalar(q):
        s, c = (8, 2) if q else (64, 4)
        r = _rng("conv")
        return Program("conv2d_scalar", "conv", conv2d_scalar,
                       (r.standard_normal((1, 1, s, s)), 0.3 * r.standard_normal((c, 1, 3, 3))), (0, 1),
                       what=f"lax.conv_general_dilated 3x3, {c} channels, {s}x{s} image -> scalar, w.r.t. image and kernel")

    @reg
    def p_pool_features(q):
        s, c = (8, 2) if q else (32, 4)
        r = _rng("pool")
        kernel = 0.5 * r.standard_normal((3, 3, 1, c))
        return Program("pool_features", "conv", lambda img: pool_features(img, jnp.asarray(kernel, img.dtype)),
                       (r.standard_normal((1, s, s, 1)),), 0,
                       what=f"conv 3x3 ({c} channels, constant kernel), ReLU, 2x2 max pool, 3x3 average pool, "
                            f"{s}x{s} image -> feature map")

    @reg
    def p_conv1d_same(q):
        n = 32 if q else 1024
        taps = _rng("conv1d_taps").standard_normal(7)
        return Program("conv1d_same", "conv", lambda x: conv1d_same(x, taps.astype(x.dtype)),
                       (_rng("conv1d").standard_normal(n),), 0,
                       what=f"jnp.convolve(mode='same') with 7 taps, then tanh, n={n}")

    @reg
    def p_sort(q):
        n = 16 if q else 256
        return Program("sort", "sort/FFT", sort_values, (_rng("sort").standard_normal(n),), 0,
                       what=f"jnp.sort(sin(3x)·x), n={n}")

    @reg
    def p_fft_filter(q):
        n = 16 if q else 256
        k = np.arange(n // 2 + 1)
        return Program("fft_filter", "sort/FFT", fft_filter, (_rng("fft").standard_normal(n), np.exp(-(k / (n / 8)) ** 2)),
                       0, what=f"irfft(rfft(tanh x)·H), n={n}")

    @reg
    def p_fft_filter_rows(q):
        rows, n = (3, 16) if q else (32, 128)
        k = np.arange(n // 2 + 1)
        return Program("fft_filter_rows", "sort/FFT", fft_filter_rows,
                       (_rng("fftrows").standard_normal((rows, n)), np.exp(-(k / (n / 8)) ** 2)), 0,
                       what=f"the same filter on each row of a ({rows}, {n}) batch of signals")

    @reg
    def p_quaternion_rotation(q):
        return Program("quaternion_rotation", "robotics", quaternion_rotation, (np.array([0.3, -0.5, 0.8, 0.1]),), 0,
                       what="rotation matrix of a normalized quaternion (jnp.array of scalar expressions)")

    @reg
    def p_robot_arm_chain(q):
        joints = 3 if q else 7
        r = _rng("arm")
        lengths = 0.3 + 0.1 * np.arange(joints)
        return Program("robot_arm_chain", "robotics", lambda x: arm_position(x, lengths.astype(x.dtype)),
                       (r.standard_normal(joints),), 0,
                       what=f"planar arm forward kinematics, {joints} 4x4 homogeneous transforms chained by matmul")

    @reg
    def p_lorenz96_rhs(q):
        n = 8 if q else 64
        return Program("lorenz96_rhs", "ODE", lorenz96, (8.0 + _rng("l96").standard_normal(n),), 0,
                       what=f"Lorenz-96 right-hand side (jnp.roll), n={n}")

    @reg
    def p_lorenz96_nested(q):
        n = 8 if q else 64
        return Program("lorenz96_nested", "Hessian", lorenz96, (8.0 + _rng("l96").standard_normal(n),), 0,
                       transform="nested",
                       what=f"M(M(f)): second derivatives of Lorenz-96 (constant: a program that only moves data), n={n}")

    @reg
    def p_rk4_lorenz96(q):
        n = 8 if q else 64
        return Program("rk4_lorenz96", "ODE", rk4_lorenz96, (8.0 + _rng("rk4").standard_normal(n),), 0,
                       what=f"10 unrolled RK4 steps of Lorenz-96 (neighbours by index vectors), n={n}")

    @reg
    def p_rk4_lorenz63(q):
        steps = 1 if q else 4
        return Program("rk4_lorenz63", "ODE", functools.partial(rk4_lorenz63_scalars, steps=steps),
                       (np.array([1.0, 1.0, 1.0]),), 0,
                       what=f"{steps} RK4 steps of Lorenz-63 on its three scalar components (Python loop)")

    @reg
    def p_lj_hessian_grad(q):
        x = _lj_positions(q)
        return Program("lj_hessian_grad", "Hessian", jax.grad(lj_energy), (x,), 0,
                       what=f"M(jax.grad(E)): Lennard-Jones energy of {x.size // 3} particles")

    @reg
    def p_lj_hessian_nested(q):
        x = _lj_positions(q)
        return Program("lj_hessian_nested", "Hessian", lj_energy, (x,), 0, transform="nested",
                       what=f"M(M(E)) (jacve(jacve(E)), jacrev(jacrev(E)), ...): Lennard-Jones, {x.size // 3} particles")

    @reg
    def p_nbody(q):
        n = 4 if q else 64
        return Program("nbody", "physics", nbody_accelerations, (_rng("nbody").standard_normal(3 * n),), 0,
                       what=f"softened gravity of {n} bodies from all pairs, w.r.t. their positions")

    @reg
    def p_rbf_kernel(q):
        n = 6 if q else 32
        return Program("rbf_kernel", "ML layers", rbf_kernel_matrix, (_rng("rbf").standard_normal((n, 2)),), 0,
                       what=f"Gaussian-process RBF kernel matrix of {n} points w.r.t. the points")

    @reg
    def p_causal_attention(q):
        L, d = (4, 3) if q else (64, 16)
        r = _rng("causal")
        return Program("causal_attention", "ML layers", causal_attention,
                       (r.standard_normal((L, d)), r.standard_normal((L, d)), r.standard_normal((L, d))), 0,
                       what=f"causal softmax attention, {L} queries x {d} over fixed keys and values, "
                            "w.r.t. the queries")

    @reg
    def p_softmax_rows(q):
        n = 4 if q else 32
        return Program("softmax_rows", "ML layers", lambda z: jax.nn.softmax(z, axis=-1),
                       (_rng("softmax").standard_normal((n, n)),), 0,
                       what=f"jax.nn.softmax over the rows of a {n}x{n} matrix of logits")

    @reg
    def p_layer_norm_rows(q):
        m, n = (4, 3) if q else (64, 16)
        return Program("layer_norm_rows", "ML layers", layer_norm_rows, (_rng("layernorm").standard_normal((m, n)),), 0,
                       what=f"layer normalisation of each row of a {m}x{n} matrix")

    @reg
    def p_vmap_jac_mlp(q):
        B, d, h, o = (4, 3, 4, 2) if q else (128, 16, 32, 8)
        r = _rng("vmapmlp")
        return Program("vmap_jac_mlp", "good cases", mlp_single,
                       (r.standard_normal((B, d)), r.standard_normal((h, d)) / np.sqrt(d), r.standard_normal(h),
                        r.standard_normal((o, h)) / np.sqrt(h), r.standard_normal(o)), 0,
                       transform="vmap", in_axes=(0, None, None, None, None),
                       what=f"vmap(M(mlp)): per-example input Jacobians of a {d}-{h}-{o} MLP, batch {B}")

    @reg
    def p_cumsum(q):
        n = 16 if q else 1024
        return Program("cumsum", "good cases", cumsum_sq, (_rng("cumsum").standard_normal(n),), 0,
                       what=f"jnp.cumsum(x²), n={n}")

    @reg
    def p_logsumexp(q):
        n = 4 if q else 64
        return Program("logsumexp", "good cases", logsumexp_rows, (_rng("lse").standard_normal((n, n)),), 0,
                       what=f"jax.nn.logsumexp over rows, {n}x{n}")

    @reg
    def p_norms(q):
        m, n = (4, 3) if q else (128, 32)
        return Program("norms", "good cases", norms, (_rng("norms").standard_normal((m, n)),), 0,
                       what=f"row norms and the Frobenius norm of a {m}x{n} matrix")

    @reg
    def p_interp(q):
        nq, nf = (8, 6) if q else (512, 128)
        r = _rng("interp")
        xp = np.linspace(0.0, 1.0, nf)
        return Program("interp", "good cases", interp, (r.uniform(0.01, 0.99, nq), np.sin(6 * xp), xp), (0, 1),
                       what=f"jnp.interp, {nq} queries on a {nf}-point table, w.r.t. queries and table values")

    @reg
    def p_lagrange_interp(q):
        n, nq = (4, 5) if q else (16, 64)
        return Program("lagrange_interp", "good cases", lagrange_interp,
                       (_rng("lagrange").standard_normal(n), np.linspace(-1.0, 1.0, n),
                        np.linspace(-0.9, 0.9, nq)), 0,
                       what=f"barycentric Lagrange interpolation, {n} nodes, {nq} queries, w.r.t. the values")

    @reg
    def p_remat(q):
        n = 4 if q else 128
        r = _rng("remat")
        return Program("remat", "good cases", remat_blocks,
                       (r.standard_normal(n), r.standard_normal((n, n)) / np.sqrt(n)), 0,
                       what=f"4 residual tanh blocks under jax.checkpoint, n={n}")

    return B


BUILDERS = _builders()
#: Program names in table order.
NAMES = tuple(BUILDERS)


def build(names: Sequence[str] | None, quick: bool) -> list[Program]:
    if not names:
        names = NAMES
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise SystemExit(f"unknown program(s) {unknown}; known: {', '.join(NAMES)}")
    return [BUILDERS[n](quick) for n in names]
