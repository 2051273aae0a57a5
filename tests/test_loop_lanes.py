"""A loop (``lax.scan``, ``fori_loop`` with static bounds, ``while_loop``)
whose body keeps leading axes apart (lanes: every axis of an elementwise
body, the rows of independent particles or a batched RNN) gets partials
that are diagonals over the lanes
(``ccjax.rules.control._lane_loop_partials``), not a dense block.

Checked against ``jax.jacrev`` in every order, eagerly and jitted; the
partials' structures are diagonals (per step for ``ys`` and ``xs``) over
the lanes; the sparse output of elementwise bodies stores exactly the
nonzeros; bodies that mix lanes keep the dense block; cost equals the
executed multiplications; random elementwise bodies and random bodies that
mix within rows (hypothesis) in random orders.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax.eliminate import plan_elimination  # noqa: E402
from ccjax.orders.heuristics import HEURISTICS  # noqa: E402
from test_elimination import _executed_mults  # noqa: E402

R = np.random.default_rng(0)
W3 = R.normal(size=(3, 3)) / 2


def _newton_sqrt(a):
    """Five Newton steps for sqrt(a), elementwise (a fori_loop: a scan)."""
    return lax.fori_loop(0, 5, lambda i, y: 0.5 * (y + a / y), a)


@jax.custom_jvp
def _sin_scaled_by_norm(y):
    return jnp.sin(y)


@_sin_scaled_by_norm.defjvp
def _sin_scaled_by_norm_jvp(primals, tangents):
    (y,), (dy,) = primals, tangents
    return jnp.sin(y), jnp.cos(y) * dy * (1.0 + 0.1 * jnp.sum(y * y))  # mixes primals only: lanes hold


@jax.custom_jvp
def _tangent_mixes_lanes(y):
    return 2.0 * y


@_tangent_mixes_lanes.defjvp
def _tangent_mixes_lanes_jvp(primals, tangents):
    (y,), (dy,) = primals, tangents
    return 2.0 * y, 2.0 * dy + 0.1 * jnp.sum(dy)  # elementwise primal, mixing rule: JAX follows the rule


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _scaled_tanh(x, s):
    return jnp.tanh(x) * s


@_scaled_tanh.defjvp
def _scaled_tanh_jvp(s, primals, tangents):
    (x,), (dx,) = primals, tangents
    return jnp.tanh(x) * s, dx * s * (1 - jnp.tanh(x) ** 2)


@jax.custom_jvp
def _sin_cos_doubled(x):
    return jnp.sin(x), jnp.cos(x)


@_sin_cos_doubled.defjvp
def _sin_cos_doubled_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return _sin_cos_doubled(x), (jnp.cos(x) * dx, -2.0 * jnp.sin(x) * dx)  # not cos' on purpose: JAX follows the rule


#: name -> (function, arguments, whether the scan's partials are structured: True for
#: diagonals, whose sparse output stores exactly the nonzeros; "lanes" for
#: a diagonal over independent rows of dense blocks, which may store zeros)
PROGRAMS = {
    "fori_carry": (lambda x: lax.fori_loop(0, 5, lambda i, y: y * jnp.cos(y) + i, x), (R.normal(size=6),), True),
    "newton_sqrt_const": (_newton_sqrt, (np.abs(R.normal(size=5)) + 1.0,), True),
    "ys_from_carry": (lambda x: lax.scan(lambda c, _: (c * 0.9 + jnp.sin(c) * c, c ** 2), x, None, length=4)[1],
                      (R.normal(size=3),), True),
    "xs_and_carry": (lambda x, xs: lax.scan(lambda c, v: (c * jnp.tanh(v) + v, c * v), x, xs),
                     (R.normal(size=3), R.normal(size=(5, 3))), True),
    "reverse_xs": (lambda xs: lax.scan(lambda c, v: (c * 0.5 + v ** 2, jnp.sin(c + v)), jnp.zeros(2), xs,
                                       reverse=True)[1], (R.normal(size=(4, 2)),), True),
    "const_and_carry": (lambda a, x: lax.fori_loop(0, 3, lambda i, y: y * a + jnp.exp(-a * y), x),
                        (R.normal(size=4), R.normal(size=4)), True),
    "scalar_carry": (lambda x: lax.fori_loop(0, 3, lambda i, y: y * jnp.sin(y), x), (np.float64(0.3),), True),
    "matrix_where": (lambda x: lax.fori_loop(0, 3, lambda i, y: jnp.where(y > 0, y * 2, jnp.tanh(y)), x),
                     (R.normal(size=(3, 4)),), True),
    "unrolled_two_carries": (lambda x: lax.scan(lambda c, _: ((c[0] * c[1], jnp.sin(c[0])), c[0] - c[1]),
                                                (x, 2.0 * x), None, length=3, unroll=2)[1], (R.normal(size=4),), True),
    # a comparison of the whole carry gates an elementwise update: still elementwise
    "gated_by_reduction": (lambda x: lax.fori_loop(0, 3, lambda i, y: jnp.where(jnp.all(y > -5.0), y * y, y), x),
                           (R.normal(size=5),), True),
    # lanes: independent rows mixed within each row
    "particles_3d": (lambda x: lax.fori_loop(0, 4, lambda i, p: p + 0.1 * jnp.cross(p, jnp.array([0.0, 0.0, 1.0]))
                                             * jnp.linalg.norm(p, axis=1, keepdims=True), x),
                     (R.normal(size=(5, 3)),), "lanes"),
    "rows_matmul": (lambda x: lax.scan(lambda h, v: (jnp.tanh(h @ W3 + v), h.sum(1)), x[0], x)[1],
                    (R.normal(size=(4, 5, 3)),), "lanes"),
    "batched_rnn": (lambda h0, xs: lax.scan(lambda h, v: (lambda n: (n, n))(jnp.tanh(h @ W3 + v @ W3.T)), h0, xs)[1],
                    (R.normal(size=(5, 3)), R.normal(size=(4, 5, 3))), "lanes"),
    "lanes_reshape_pad": (lambda x: lax.fori_loop(0, 3, lambda i, y: jnp.pad(y[:, 1:] * y[:, :-1], ((0, 0), (0, 1)))
                                                  .reshape(2, 3, 4).reshape(2, 12) + y, x), (R.normal(size=(2, 12)),), "lanes"),
    # mixing bodies: the dense block
    "reversal_mixes": (lambda x: lax.fori_loop(0, 3, lambda i, y: y[::-1] * y, x), (R.normal(size=4),), False),
    "sum_mixes": (lambda x: lax.fori_loop(0, 3, lambda i, y: y * jnp.sum(y), x), (R.normal(size=4),), False),
    # ys emitted before the update read the xs of earlier steps only (two steps earlier through two carries)
    "ys_before_update": (lambda c0, xs: lax.scan(lambda c, v: (c * jnp.cos(v) + v, c * c), c0, xs)[1],
                         (R.normal(size=3), R.normal(size=(5, 3))), True),
    "ys_two_steps_late": (lambda xs: lax.scan(lambda c, v: ((jnp.sin(v), c[0] * 2.0), c[1] ** 2),
                                              (jnp.zeros(2), jnp.zeros(2)), xs, reverse=True)[1],
                          (R.normal(size=(5, 2)),), True),
    # lax.cond in the body: each branch keeps the lanes; a predicate from a float reduction carries no derivative
    "cond_in_body": (lambda x: lax.fori_loop(0, 4, lambda i, y: lax.cond(i % 2 == 0, lambda v: v + 0.1 * jnp.sin(v),
                                                                         lambda v: v * 0.9 + 0.1 * v ** 3, y), x),
                     (R.normal(size=6),), True),
    "adaptive_cond": (lambda x: lax.fori_loop(0, 4, lambda i, y: lax.cond(jnp.max(jnp.abs(y)) > 0.8, lambda v: v * 0.7,
                                                                          lambda v: jnp.zeros_like(v) + jnp.tanh(v), y), x),
                      (R.normal(size=6),), True),
    "norm_gated_where": (lambda x: lax.fori_loop(0, 3, lambda i, y: jnp.where(jnp.linalg.norm(y) > 1.0, y * jnp.cos(y), y),
                                                 x), (R.normal(size=(2, 3)),), True),
    "switch_rows": (lambda x: lax.fori_loop(0, 3, lambda i, y: lax.switch(i % 3, [lambda v: jnp.tanh(v @ W3), lambda v: v * v,
                                                                             lambda v: v[:, ::-1] + 1.0], y), x),
                    (R.normal(size=(4, 3)),), "lanes"),
    "cond_branch_mixes": (lambda x: lax.fori_loop(0, 3, lambda i, y: lax.cond(i == 1, lambda v: jnp.roll(v, 1) * v,
                                                                              lambda v: v * 2.0, y), x),
                          (R.normal(size=4),), False),
    # custom_jvp calls: the lanes are where the custom rule puts the tangents
    "relu_softplus": (lambda x: lax.fori_loop(0, 3, lambda i, y: jax.nn.relu(y) + jax.nn.softplus(y) * y, x),
                      (R.normal(size=4),), True),
    "rule_mixes_primals": (lambda x: lax.fori_loop(0, 3, lambda i, y: _sin_scaled_by_norm(y) + y, x),
                           (R.normal(size=(2, 3)),), True),
    "relu_rnn_rows": (lambda h0, xs: lax.scan(lambda h, v: (lambda n: (n, n))(jax.nn.relu(h @ W3 + v)), h0, xs)[1],
                      (R.normal(size=(5, 3)), R.normal(size=(4, 5, 3))), "lanes"),
    "nondiff_argnums_rule": (lambda x: lax.fori_loop(0, 3, lambda i, y: _scaled_tanh(y, 0.7) + 0.1 * y, x),
                             (R.normal(size=5),), True),
    "two_output_rule": (lambda x: lax.fori_loop(0, 3, lambda i, y: jnp.prod(jnp.stack(_sin_cos_doubled(y)), 0) + y, x),
                        (R.normal(size=5),), True),
    "rule_mixes_tangents": (lambda x: lax.fori_loop(0, 3, lambda i, y: _tangent_mixes_lanes(y) * y, x),
                            (R.normal(size=4),), False),
}

#: while loops: JAX has no reverse mode through them, so the reference is jax.jacfwd.
WHILE_PROGRAMS = {
    "newton_until_converged": (lambda a: lax.while_loop(
        lambda c: (c[1] < 30) & (jnp.max(jnp.abs(c[0] * c[0] - a)) > 1e-12),
        lambda c: (0.5 * (c[0] + a / c[0]), c[1] + 1), (a, 0))[0], (1.0 + np.abs(R.normal(size=6)),), True),
    "two_carries": (lambda x: lax.while_loop(lambda c: c[2] < 4, lambda c: (c[0] * jnp.cos(c[1]), c[1] + c[0], c[2] + 1),
                                             (x, x ** 2, 0))[:2], (R.normal(size=(2, 3)),), True),
    "mixing": (lambda x: lax.while_loop(lambda c: c[1] < 3, lambda c: (jnp.roll(c[0], 1) * c[0], c[1] + 1),
                                        (x, 0))[0], (R.normal(size=5),), False),
}


def _argnums(args):
    return tuple(range(len(args)))


def _close(got, want):
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-12)


def _scan_structures(f, args):
    g = ccjax.graph(f, *args, argnums=_argnums(args))
    return g, [r.partial.structure for r in g.raw if g.program.nodes[r.node].name == "scan"]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_scans_match_jacrev_in_every_order(name):
    f, args, _ = PROGRAMS[name]
    nums = _argnums(args)
    g = ccjax.graph(f, *args, argnums=nums)
    want = jax.jacrev(f, argnums=nums)(*args)
    orders = ["auto", "fwd", "rev", "markowitz", tuple(np.random.default_rng(1).permutation(g.eliminable))]
    for order in orders:
        jac = ccjax.jacve(f, argnums=nums, order=order)
        _close(jac(*args), want)
        _close(jax.jit(jac)(*args), want)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_elementwise_bodies_give_diagonals_and_a_sparse_output_of_the_nonzeros(name):
    f, args, structured = PROGRAMS[name]
    nums = _argnums(args)
    _, structures = _scan_structures(f, args)
    assert structures
    dense = [_size(s.out_shape) * _size(s.in_shape) for s in structures]
    if not structured:
        assert [s.nnz_values for s in structures] == dense
        return
    if max(dense) > 1:
        assert sum(s.nnz_values for s in structures) < sum(dense)
    want = jax.jacrev(f, argnums=nums)(*args)
    got = jax.jit(ccjax.jacve(f, argnums=nums, output="sparse"))(*args)
    blocks = jax.tree_util.tree_leaves(got, is_leaf=lambda b: hasattr(b, "todense"))
    _close([b.todense() for b in blocks], want)
    nnz = sum(int(np.count_nonzero(np.asarray(w))) for w in jax.tree_util.tree_leaves(want))
    stored = sum(int(b.nse) for b in blocks)
    if structured == "lanes":
        assert nnz <= stored < sum(_size(w.shape) for w in jax.tree_util.tree_leaves(want))
    else:
        assert stored == nnz


def _size(shape):
    return int(np.prod(shape)) if shape else 1


def test_ys_emitted_before_the_update_store_the_earlier_steps_only():
    """A body that mixes its carry (the dense block) and emits it before the
    update: step ``t`` of ``ys`` reads the ``xs`` of steps before ``t``, so the
    sparse output stores T(T-1)/2 blocks of n x n, not T(T+1)/2 (of those,
    the blocks one step back are diagonal in value: the mixing of the carry
    needs a step to reach them)."""
    T, n = 5, 3
    f = lambda xs: lax.scan(lambda c, v: (jnp.roll(c, 1) * jnp.tanh(v) + jnp.sum(c) * v, c), jnp.ones(n), xs)[1]
    xs = R.normal(size=(T, n))
    want = jax.jacrev(f)(xs)
    got = jax.jit(ccjax.jacve(f, output="sparse"))(xs)
    _close(got.todense(), want)
    assert got.nse == T * (T - 1) // 2 * n * n
    assert np.count_nonzero(want) == (T - 1) * n + (T - 1) * (T - 2) // 2 * n * n


def test_the_fori_loop_partial_is_one_diagonal():
    _, (st_,) = _scan_structures(*PROGRAMS["fori_carry"][:2])
    assert st_.out_shape == st_.in_shape == (6,) and st_.nnz_values == 6


def test_xs_partials_are_a_diagonal_per_step_and_causal_pairs_of_steps():
    f, args, _ = PROGRAMS["xs_and_carry"]
    g, structures = _scan_structures(f, args)
    by_edge = {(r.partial.out, r.partial.slot): r.partial for r in g.raw if g.program.nodes[r.node].name == "scan"}
    sizes = {k: p.structure.nnz_values for k, p in by_edge.items()}
    # slots: (carry init, xs); outputs: (final carry, ys)
    assert sizes == {(0, 0): 3, (1, 0): 5 * 3, (0, 1): 5 * 3, (1, 1): 5 * 5 * 3}
    assert by_edge[(1, 1)].nonzero is not None and by_edge[(1, 1)].nonzero().sum() == 15 * 3


@pytest.mark.parametrize("name", sorted(n for n in PROGRAMS if PROGRAMS[n][2]))
def test_cost_is_the_executed_multiplications(name):
    f, args, _ = PROGRAMS[name]
    if len(args) > 1:
        return  # the counting helper differentiates one argument
    g = ccjax.graph(f, *args)
    for order in [HEURISTICS[h](g) for h in ("fwd", "rev", "markowitz")]:
        plan = plan_elimination(g, order)
        assert _executed_mults(g, plan, f, args, 0) == plan.report.mults


UNARY = [jnp.sin, jnp.cos, jnp.tanh, lambda v: v * v, jnp.exp, lambda v: 1.0 / (1.0 + v * v), jnp.abs,
         jax.nn.relu, jax.nn.softplus]  # (the last two are custom_jvp calls)
BINARY = [jnp.add, jnp.subtract, jnp.multiply, lambda a, b: a / (1.0 + b * b), jnp.maximum]


def _random_body(seed: int, n_ops: int):
    """An elementwise step ``(carry, x) -> (carry, y)`` of random unary and
    binary operations on the carry, the step's ``x`` and a constant."""
    rng = np.random.default_rng(seed)
    plan = [(int(rng.integers(2)), int(rng.integers(len(UNARY))), int(rng.integers(len(BINARY))),
             int(rng.integers(3)), int(rng.integers(3))) for _ in range(n_ops)]

    def body(a, c, x):
        vals = [c, x, a]
        for binary, u, b, i, j in plan:
            if binary:
                vals.append(BINARY[b](vals[-1 - i % len(vals)], vals[-1 - j % len(vals)]))
            else:
                vals.append(0.5 * UNARY[u](vals[-1 - i % len(vals)]))
        return jnp.tanh(vals[-1]) + 0.5 * c, vals[-2] * x

    return body


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10 ** 6), steps=st.integers(1, 4), reverse=st.booleans(),
       shape=st.sampled_from([(), (3,), (2, 3)]))
def test_random_elementwise_scans_match_jacrev_in_random_orders(seed, steps, reverse, shape):
    body = _random_body(seed, 6)
    rng = np.random.default_rng(seed)
    a, c0, xs = rng.normal(size=shape), rng.normal(size=shape), rng.normal(size=(steps,) + shape)

    def f(a, c0, xs):
        c, ys = lax.scan(lambda c, x: body(a, c, x), c0, xs, reverse=reverse)
        return c, ys

    nums = (0, 1, 2)
    g, structures = _scan_structures(f, (a, c0, xs))
    assert structures and all(s.nnz_values <= steps * steps * max(1, int(np.prod(shape))) for s in structures)
    want = jax.jacrev(f, argnums=nums)(a, c0, xs)
    for order in ["fwd", "rev", tuple(rng.permutation(g.eliminable))]:
        jac = ccjax.jacve(f, argnums=nums, order=order)
        _close(jax.jit(jac)(a, c0, xs), want)


@pytest.mark.parametrize("name", sorted(WHILE_PROGRAMS))
def test_while_loops_match_jacfwd_and_elementwise_ones_are_diagonal(name):
    f, args, structured = WHILE_PROGRAMS[name]
    g = ccjax.graph(f, *args)
    structures = [r.partial.structure for r in g.raw if g.program.nodes[r.node].name == "while"]
    assert structures
    dense = sum(_size(s.out_shape) * _size(s.in_shape) for s in structures)
    assert (sum(s.nnz_values for s in structures) < dense) == structured
    want = jax.jacfwd(f)(*args)
    for order in ["auto", "fwd", "rev", "markowitz"]:
        jac = ccjax.jacve(f, order=order)
        _close(jac(*args), want)
        _close(jax.jit(jac)(*args), want)
    if structured:
        got = jax.jit(ccjax.jacve(f, output="sparse"))(*args)
        blocks = jax.tree_util.tree_leaves(got, is_leaf=lambda b: hasattr(b, "todense"))
        _close([b.todense() for b in blocks], want)
        assert sum(int(b.nse) for b in blocks) == sum(
            int(np.count_nonzero(np.asarray(w))) for w in jax.tree_util.tree_leaves(want))


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10 ** 6), carries=st.integers(1, 3), steps=st.integers(1, 7), reverse=st.booleans(),
       mixing=st.booleans())
def test_random_carry_wirings_store_the_steps_ys_can_read(seed, carries, steps, reverse, mixing):
    """Random wirings of carries: each carry's update and the ``ys`` read a
    random subset of the carries and the step's ``x``, so ``ys`` may read
    ``xs`` at delays from 0 steps to never, periodically.  The sparse output
    equals ``jax.jacrev`` and stores exactly its nonzeros for elementwise
    bodies (lanes), and for bodies that mix entries (a dense block) whole
    blocks where some step-to-step path exists, against a brute-force count
    of the paths."""
    rng = np.random.default_rng(seed)
    n = 3
    reads = rng.random((carries + 1, carries + 1)) < 0.45  # row k: what update k (last row: ys) reads
    c0, xs = tuple(rng.normal(size=n) + 2.0 for _ in range(carries)), rng.normal(size=(steps, n))

    def term(v, k):
        return jnp.roll(v, 1) * 0.7 + jnp.sum(v) if mixing and k % 2 == 0 else jnp.sin(v) + 1.5

    def body(c, x):
        vals = list(c) + [x]
        outs = []
        for k in range(carries + 1):
            picked = [term(v, k + i) for i, v in enumerate(vals) if reads[k, i]]
            outs.append(functools.reduce(jnp.multiply, picked) if picked else jnp.full(n, 0.5 + k))
        return tuple(outs[:carries]), outs[carries]

    f = lambda xs: lax.scan(body, c0, xs, reverse=reverse)[1]
    want = np.asarray(jax.jacrev(f)(xs))
    got = jax.jit(ccjax.jacve(f, output="sparse"))(xs)
    _close(got.todense(), want)
    # brute force: carries reached after d steps from x, then whether ys reads one (or x at d = 0)
    level, delays = {k for k in range(carries) if reads[k, carries]}, [bool(reads[carries, carries])]
    for _ in range(1, steps):
        delays.append(any(reads[carries, c] for c in level))
        level = {k for k in range(carries) if any(reads[k, c] for c in level)}
    t = np.arange(steps)
    ahead = t[None, :] - t[:, None] if reverse else t[:, None] - t[None, :]
    blocks = int(sum(delays[a] for a in ahead.ravel() if a >= 0))
    if not mixing:
        assert got.nse == np.count_nonzero(want) <= blocks * n
    else:
        assert np.count_nonzero(want) <= got.nse <= blocks * n * n


ROW_OPS = [
    lambda c, W: jnp.tanh(c @ W),
    lambda c, W: c * jnp.tanh(jnp.sum(c * c, axis=1, keepdims=True)),  # bounded: a cube overflowed in 3 steps
    lambda c, W: jnp.roll(c, 1, axis=1) * c,
    lambda c, W: c[:, ::-1] + jnp.sin(c),
    lambda c, W: jnp.einsum("br,rs->bs", c, W) - c,
    lambda c, W: jnp.concatenate([c[:, 1:], c[:, :1] ** 2], axis=1),
    lambda c, W: jnp.swapaxes(jnp.swapaxes(c, 0, 1) * 0.5, 0, 1) + jnp.max(c, axis=1, keepdims=True),
    lambda c, W: jnp.cumsum(c, axis=1) / (1.0 + c * c),
]


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10 ** 6), steps=st.integers(1, 3), reverse=st.booleans(),
       ops=st.lists(st.integers(0, len(ROW_OPS) - 1), min_size=1, max_size=4))
def test_random_bodies_mixing_within_rows_match_jacrev_and_keep_rows_apart(seed, steps, reverse, ops):
    """Rows (the lane axis) never meet; each step mixes within a row (matmul,
    row sums, rolls, reversals, cumsums): a diagonal over rows of dense
    row blocks, exact in random orders."""
    rng = np.random.default_rng(seed)
    B, n = 3, 4
    W = rng.normal(size=(n, n)) / 2
    c0, xs = rng.normal(size=(B, n)), rng.normal(size=(steps, B, n))

    def body(c, x):
        for k in ops:
            c = ROW_OPS[k](c, W) * 0.5 + x
        return c, jnp.sin(c)

    def f(c0, xs):
        return lax.scan(body, c0, xs, reverse=reverse)

    nums = (0, 1)
    g, structures = _scan_structures(f, (c0, xs))
    for s in structures:  # the diagonal over rows stores a B-th of the dense block
        assert s.nnz_values * B == _size(s.out_shape) * _size(s.in_shape)
    want = jax.jacrev(f, argnums=nums)(c0, xs)
    for order in ["fwd", "rev", tuple(rng.permutation(g.eliminable))]:
        jac = ccjax.jacve(f, argnums=nums, order=order)
        _close(jax.jit(jac)(c0, xs), want)


@pytest.mark.parametrize("rows", [jnp.tanh, lambda r: jnp.sort(r) * jnp.sum(r ** 2), lambda r: jnp.cumsum(r)[::-1] @ W4])
def test_lax_map_keeps_its_steps_apart(rows):
    """``lax.map`` (a scan without a differentiated carry): step ``t`` of
    ``ys`` reads step ``t`` of ``xs`` only, even where a row mixes (a sort, a
    sum, a matmul): a diagonal over the steps, stored exactly."""
    xs = R.normal(size=(6, 4))
    f = lambda xs: lax.map(rows, xs)
    g, structures = _scan_structures(f, (xs,))
    assert [s.nnz_values for s in structures] == [6 * 4 * 4 if not _is_elementwise(rows) else 6 * 4]
    want = jax.jacrev(f)(xs)
    for order in ["auto", "fwd", "rev"]:
        _close(jax.jit(ccjax.jacve(f, order=order))(xs), want)
    got = ccjax.jacve(f, output="sparse")(xs)
    _close(got.todense(), want)
    assert got.nse <= 6 * 4 * 4


W4 = R.normal(size=(4, 4))


def _is_elementwise(fn):
    return fn is jnp.tanh


@pytest.mark.parametrize("name", ["fori_carry", "newton_sqrt_const", "ys_from_carry", "reverse_xs", "particles_3d",
                                  "matrix_where", "relu_softplus", "rule_mixes_primals", "nondiff_argnums_rule",
                                  "cond_in_body", "adaptive_cond", "norm_gated_where", "switch_rows"])
def test_loops_under_vmap_match_jacrev(name):
    """``vmap`` of the Jacobian over a batch of inputs (the loop then runs
    batched inside each JVP)."""
    f, args, _ = PROGRAMS[name]
    (x,) = args
    xs = np.stack([x, 0.5 * x + 0.25, x * x + 0.1])
    want = jax.vmap(jax.jacrev(f))(xs)
    _close(jax.vmap(ccjax.jacve(f))(xs), want)
    _close(jax.jit(jax.vmap(ccjax.jacve(f, order="rev")))(xs), want)
