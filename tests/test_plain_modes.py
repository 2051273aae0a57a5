"""``order="auto"`` against JAX's own plain modes over the whole program.

The plan of ``auto`` is the cheaper of the best elimination and
``jax.jacrev``/``jax.jacfwd`` of the whole (flattened) program, by every
multiplication the compiled program performs beyond the primal; the counts
are summed equation by equation and equal the count read from the jaxpr of
the whole program, so they are what runs.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

import ccjax  # noqa: E402
from ccjax._jaxpr import (MOVES_DATA, TANGENT_MULTIPLYING, SeedSplit, count_multiplications,  # noqa: E402
                          scattered_entries, staged_alone)
from ccjax.counting import LARGE_SCATTER  # noqa: E402
from ccjax.api import _plan  # noqa: E402
from ccjax.eliminate import plan_elimination  # noqa: E402
from ccjax.counting import Counter  # noqa: E402
from ccjax.eliminate import partial_values  # noqa: E402
from ccjax import jax_modes  # noqa: E402
from ccjax.jax_modes import (STAGED_RATIO, cheapest, plan_jax_mode, program_mults, staged_equations,  # noqa: E402
                             traced_mode_mults, traced_mults)
from ccjax.tasks.random_fn import random_function, random_inputs  # noqa: E402
from ccjax.resolve import resolve_order  # noqa: E402
from ccjax.tasks import TASKS  # noqa: E402


def nested_sums(u):
    """A running sum of a running sum: two triangles of 0/1 products for the
    elimination, a cheap linear pass for JAX."""
    return jnp.cumsum(jnp.sin(jnp.cumsum(u)))


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CCJAX_CACHE_DIR", str(tmp_path))


def test_auto_takes_a_plain_mode_when_elimination_multiplies_more():
    u = jnp.linspace(0.0, 1.0, 128)
    g = ccjax.graph(nested_sums, u)
    plan = _plan(g, "auto")
    assert plan.mode in ("jax-rev", "jax-fwd")
    assert plan.report.mults < program_mults(g, plan_elimination(g, resolve_order(g, "auto")))
    np.testing.assert_allclose(ccjax.jacve(nested_sums)(u), jax.jacrev(nested_sums)(u), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(ccjax.jacve(nested_sums))(u), jax.jacrev(nested_sums)(u), rtol=1e-12)
    assert ccjax.cost(nested_sums, u, order="auto") == plan.report.mults
    # named orders still eliminate
    assert _plan(g, "rev").mode == "eliminate"


def test_auto_weighs_the_scatter_adds_of_sums_with_selections():
    """``lax.associative_scan``: the elimination multiplies less than JAX's
    modes, but most of its work is additions in sums with selections
    (scatter-adds, :data:`ccjax.jax_modes.SELECTION_MULT_WEIGHT` each), so
    ``auto`` runs a plain mode (measured 1.35x faster on CPU); without the
    additions' weight it would eliminate."""
    from ccjax.jax_modes import SELECTION_MULT_WEIGHT, selection_additions, weighted_mults

    fn = lambda x: jax.lax.associative_scan(lambda a, b: a * 0.9 + b, x) ** 2
    u = np.random.default_rng(0).normal(size=256)
    g = ccjax.graph(fn, u)
    counter = Counter(g)
    elimination = plan_elimination(g, resolve_order(g, "rev"))  # the quick variant that multiplies least
    weighted = weighted_mults(g, elimination, counter)
    unweighted_additions = weighted - SELECTION_MULT_WEIGHT * selection_additions(elimination)
    assert unweighted_additions < counter.mode_mults("rev") < weighted
    assert _plan(g, "auto").mode in ("jax-rev", "jax-fwd")
    np.testing.assert_allclose(jax.jit(ccjax.jacve(fn))(u), jax.jacrev(fn)(u), rtol=1e-12, atol=1e-12)


def jacobi_sweeps(n: int):
    """Three Jacobi sweeps of a periodic grid, neighbours by static
    permutations (gathers inside a ``fori_loop``)."""
    left, right = np.roll(np.arange(n), 1), np.roll(np.arange(n), -1)
    return lambda u: jax.lax.fori_loop(0, 3, lambda i, v: 0.5 * (v[left] + v[right]) + 0.1 * jnp.sin(u), u)


def scatter_squares(n: int):
    idx = np.arange(n)[::-1] // 2
    return lambda u: jnp.zeros(n).at[idx].add(u ** 2) * u


@pytest.mark.parametrize("make", [jacobi_sweeps, scatter_squares])
@pytest.mark.parametrize("n", [32, 128])
def test_scattered_entries_are_those_of_the_whole_program(make, n):
    """The scatters' entries, summed equation by equation, are those of the
    jaxpr of ``jax.jacrev``/``jax.jacfwd`` of the whole function beyond the
    primal's (scatters of ``LARGE_SCATTER`` updates or more)."""
    from ccjax._jaxpr import scattered_entries
    from ccjax.counting import LARGE_SCATTER

    f, u = make(n), np.linspace(0.1, 1.0, n)
    counter = Counter(ccjax.graph(f, u))
    primal = scattered_entries(jax.make_jaxpr(f)(u).jaxpr, LARGE_SCATTER)
    for mode, transform in (("rev", jax.jacrev), ("fwd", jax.jacfwd)):
        whole = scattered_entries(jax.make_jaxpr(transform(f))(u).jaxpr, LARGE_SCATTER) - primal
        assert counter.mode_scattered(mode) == whole, mode
    big = n * n >= LARGE_SCATTER
    assert (counter.mode_scattered("rev" if make is jacobi_sweeps else "fwd") > 0) is big


def test_auto_weighs_the_scatters_of_a_plain_mode():
    """Gathers in a loop transpose to scatter-adds of every cotangent in
    reverse mode: at n = 128 both modes multiply alike, but the scatters
    (:data:`ccjax.jax_modes.SCATTER_WEIGHT` per entry) send ``auto`` to
    forward mode (measured 4x faster at this size, 47x at n = 1,024)."""
    from ccjax.jax_modes import weighted_mults

    f, u = jacobi_sweeps(128), np.linspace(0.1, 1.0, 128)
    g = ccjax.graph(f, u)
    counter = Counter(g)
    rev, fwd = plan_jax_mode(g, "rev", counter), plan_jax_mode(g, "fwd", counter)
    assert abs(rev.report.mults - fwd.report.mults) <= jax_modes.PLAIN_TIE * fwd.report.mults
    assert weighted_mults(g, fwd, counter) == fwd.report.mults < weighted_mults(g, rev, counter)
    assert _plan(g, "auto").mode == "jax-fwd"
    assert ccjax.cost(f, u, order="auto") == fwd.report.mults  # reported counts stay multiplications
    np.testing.assert_allclose(jax.jit(ccjax.jacve(f))(u), jax.jacrev(f)(u), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["RoeFlux_1d", "HumanHeartDipole", "f"])
def test_auto_keeps_the_elimination_where_it_is_cheaper(name):
    task = TASKS[name]
    fn, args = task.graph_fn_and_inputs(0)
    g = ccjax.graph(fn, *args, argnums=task.argnums)
    plan = _plan(g, "auto")
    assert plan.mode == "eliminate"
    for mode in ("rev", "fwd"):
        assert program_mults(g, plan) <= plan_jax_mode(g, mode).report.mults


def test_jax_mode_count_is_the_jaxpr_count():
    f = lambda x: jnp.sin(x) * x ** 2 @ jnp.ones((3, 2))
    x = jnp.arange(1.0, 4.0)
    g = ccjax.graph(f, x)
    rev = plan_jax_mode(g, "rev")
    primal = count_multiplications(jax.make_jaxpr(f)(x).jaxpr)
    total = count_multiplications(jax.make_jaxpr(jax.jacrev(f))(x).jaxpr)
    # the flattened program may order its ops differently, not multiply more or less
    assert rev.report.mults == total - primal


def test_a_plain_mode_differentiates_custom_rules_as_jax_does():
    """JAX's modes run over the program without the expansion of a custom
    JVP rule, which only the elimination reads: they multiply as much as
    ``jax.jacrev``/``jax.jacfwd`` of the original function, no more."""
    f = lambda A: jnp.linalg.det(A) * jax.nn.softplus(A)
    A = jnp.eye(4) + 0.1 * jnp.arange(16.0).reshape(4, 4)
    g = ccjax.graph(f, A)
    assert len(g.program.ad_nodes) < len(g.program.nodes)
    primal = count_multiplications(jax.make_jaxpr(f)(A).jaxpr)
    for mode, transform in (("rev", jax.jacrev), ("fwd", jax.jacfwd)):
        want = count_multiplications(jax.make_jaxpr(transform(f))(A).jaxpr) - primal
        assert plan_jax_mode(g, mode).report.mults == traced_mode_mults(g, mode) == want, mode


def _graphs_to_count():
    for seed in range(12):
        shapes = [(4,), (3, 2)]
        f = random_function(seed, shapes, n_ops=12)
        yield f"random{seed}", ccjax.graph(f, *random_inputs(seed, shapes), argnums=(0, 1))
    for seed in range(4):  # custom JVP rules: the plain modes leave their expansion out
        shapes = [(4,), (3, 2)]
        f = random_function(seed, shapes, n_ops=10, ops=("custom_jvp", "unary", "binary"))
        yield f"custom_jvp{seed}", ccjax.graph(f, *random_inputs(seed, shapes), argnums=(0, 1))
    for name in ("RoeFlux_1d", "RobotArm_6DOF", "BlackScholes_Jacobian", "Encoder"):
        fn, args = TASKS[name].graph_fn_and_inputs(0)
        yield name, ccjax.graph(fn, *args, argnums=TASKS[name].argnums)
    x = jnp.linspace(0.1, 1.0, 6)
    yield "sort_scan", ccjax.graph(
        lambda x: jax.lax.scan(lambda c, y: (jnp.sin(c) * y, c * c), jnp.sort(x) * x, x[:3])[1], x)
    dead = lambda x: (jnp.tanh(x) * 2.0, jnp.tanh(jnp.cos(x)))[0]  # an active output reaching no result
    yield "dead_branch", ccjax.graph(dead, x)

    @jax.custom_vjp
    def clipped(v):
        return jnp.sin(v) * v

    clipped.defvjp(lambda v: (clipped(v), v), lambda v, g: (jnp.clip(g * jnp.cos(v), -1.0, 1.0),))
    yield "custom_vjp", ccjax.graph(lambda x: clipped(x * x) * x, x)
    yield "custom_jvp", ccjax.graph(lambda x: jnp.linalg.det(jnp.outer(x, x[::-1]) + jnp.eye(6)) * jax.nn.relu(x), x)
    yield "cond_gather", ccjax.graph(
        lambda x: jax.lax.cond(x[0] > 0, jnp.sin, jnp.cos, x * x)[jnp.array([5, 1, 7])] * x[:3], x)
    img, kernel = jnp.linspace(-1.0, 1.0, 2 * 36).reshape(2, 1, 6, 6), jnp.linspace(0.5, -0.5, 18).reshape(3, 1, 2, 3)
    yield "conv_pool", ccjax.graph(  # both operands active; feature groups; pools
        lambda x, k: jax.lax.reduce_window(jnp.tanh(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME")), -jnp.inf,
                                           jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        + jax.lax.conv_general_dilated(jnp.concatenate([x, x * x], 1), k[:1].reshape(2, 1, 1, 3), (1, 2), "VALID",
                                       feature_group_count=2)[:, :, ::2, :3].sum(), img, kernel, argnums=(0, 1))
    yield "fft", ccjax.graph(  # real and complex transforms, one of two axes
        lambda x: jnp.fft.irfft(jnp.fft.rfft(jnp.tanh(x)) * 0.5, n=6) + jnp.real(jnp.fft.fft2(
            jnp.outer(x, x[:4]))).sum(1), x)
    yield "while", ccjax.graph(
        lambda x: jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (jnp.sin(c[0]) * c[0], c[1] + 1), (x, 0))[0], x)


@pytest.mark.parametrize("name, g", list(_graphs_to_count()), ids=lambda v: v if isinstance(v, str) else "")
def test_counts_summed_per_equation_equal_the_whole_jaxpr(name, g):
    counter = Counter(g)
    for mode in ("rev", "fwd"):
        try:
            want = traced_mode_mults(g, mode)
        except (TypeError, ValueError, NotImplementedError) as e:  # no reverse mode through a while_loop
            with pytest.raises(type(e)):
                counter.mode_mults(mode)
            continue
        assert counter.mode_mults(mode) == want, (name, mode)
        assert counter.mode_lower_bound(mode) <= want, (name, mode)
    prog = g.program
    primal = traced_mults(g, lambda i, c: prog.evaluate(i, c))
    partials = traced_mults(g, lambda i, c: partial_values(g, prog.evaluate(i, c))) - primal
    assert counter.partial_mults() == partials, name
    plan = plan_elimination(g, resolve_order(g, "markowitz"))
    assert program_mults(g, plan) == partials + plan.report.mults


@pytest.mark.parametrize("name, g", list(_graphs_to_count()), ids=lambda v: v if isinstance(v, str) else "")
def test_counts_at_every_seed_count_come_from_one_trace(name, g):
    """Each equation's mode program is traced once, at a prime seed count,
    and read at any other: what it reads equals the program traced at that
    count (multiplications and scattered entries), for the plain modes and
    for compressed seeds."""
    counter = Counter(g)
    split = 0
    for node in counter.prog.ad_nodes:
        if not counter._differentiates(node):
            continue
        for mode in ("rev", "fwd"):
            if mode == "rev" and name == "while":
                continue  # JAX has no reverse mode through a while_loop
            for seeds in (1, 3, 8, None):
                batch = counter._seeds(mode, seeds)
                try:
                    jaxpr = jax.make_jaxpr(counter._mode_program(node, mode, batch))(
                        counter._specs(counter._traced_ids(node)), []).jaxpr
                except TypeError as e:  # no forward mode through a custom_vjp
                    with pytest.raises(type(e)):
                        counter.node_mults(node, mode, seeds)
                    break
                want = max(0, count_multiplications(jaxpr) - counter.primal_mults(node))
                assert counter.node_mults(node, mode, seeds) == want, (name, node.name, mode, seeds)
                want = max(0, scattered_entries(jaxpr, LARGE_SCATTER) - counter._primal_scattered(node))
                assert counter.node_scattered(node, mode, seeds) == want, (name, node.name, mode, seeds)
            else:
                split += counter._mode_split(node, mode) is not None
    assert split


def test_a_seed_split_reads_scatters_per_seed_against_the_threshold():
    """A scatter of the seeds counts toward ``LARGE_SCATTER`` by its size at
    the seed count read, not at the count traced."""
    split = SeedSplit(fixed=5, per_seed=2, scatters=((100, True, 3), (50, False, 1)))
    assert split.mults(10) == 25
    assert split.scattered(10) == 3 * 1000 + 50
    assert split.scattered(10, least=60) == 3 * 1000
    assert split.scattered(1, least=60) == 3 * 100


@pytest.mark.parametrize("name, g", list(_graphs_to_count()), ids=lambda v: v if isinstance(v, str) else "")
def test_equations_staged_alone_are_counted_without_a_trace(name, g):
    counter = Counter(g)
    checked = 0
    for node in g.program.nodes:
        if node.primitive is None or not staged_alone(node.name, node.params):
            continue
        traced = count_multiplications(jax.make_jaxpr(
            lambda values, node=node: node.ad_eval(counter._env(node, values)))(
                counter._specs(counter._traced_ids(node))).jaxpr)
        assert counter.primal_mults(node) == traced, (name, node.name)
        checked += 1
    assert checked or name == "while"  # the while graph is one loop equation


def test_an_fft_counts_the_products_of_a_radix_2_transform():
    """n/2 log2 n complex products per transform of n points, half for a
    real one; JAX's forward mode transforms each tangent."""
    def fft_mults(fn, *args):
        return count_multiplications(jax.make_jaxpr(fn)(*args).jaxpr)

    x = jnp.ones(256)
    assert fft_mults(jnp.fft.fft, x.astype(jnp.complex64)) == 128 * 8
    assert fft_mults(jnp.fft.rfft, x) == 128 * 8 // 2
    assert fft_mults(lambda v: jnp.fft.fft(v, axis=-1), jnp.ones((3, 16), jnp.complex64)) == 3 * 8 * 4
    assert fft_mults(jnp.fft.fft2, jnp.ones((8, 16), jnp.complex64)) == 64 * 7
    assert fft_mults(jnp.fft.fft, jnp.ones(1, jnp.complex64)) == 0
    filt = lambda v: jnp.fft.irfft(jnp.fft.rfft(v), n=256)
    assert fft_mults(jax.jacfwd(filt), x) == 257 * 2 * (128 * 8 // 2)


def test_counter_traces_each_equation_signature_once():
    def f(x):
        for _ in range(30):
            x = jnp.tanh(x * 1.5) * x
        return x

    g = ccjax.graph(f, jnp.linspace(0.1, 1.0, 5))
    counter = Counter(g)
    counter.mode_mults("rev")
    # mul by a constant, tanh, mul of two active values: three signatures for 90 equations,
    # whose own multiplications need no trace (each stages alone)
    assert len(g.program.nodes) == 90
    assert sorted(kind for kind, _ in counter.memo) == ["rev"] * 3


def quaternion_rotation(q):
    w, x, y, z = q / jnp.linalg.norm(q)
    return jnp.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def test_a_small_elimination_that_stages_far_more_equations_yields_to_a_plain_mode(monkeypatch):
    """The rotation matrix of a quaternion: the elimination multiplies less
    than forward mode, but writes nine scalars into the matrix with more
    than twice forward mode's equations, so ``auto`` runs forward mode."""
    q = jnp.asarray([0.3, -0.5, 0.8, 0.1])
    g = ccjax.graph(quaternion_rotation, q)
    elim = plan_elimination(g, resolve_order(g, "auto"))
    forward = plan_jax_mode(g, "fwd")
    assert program_mults(g, elim) < forward.report.mults <= STAGED_RATIO * program_mults(g, elim)
    assert staged_equations(g, elim) > STAGED_RATIO * staged_equations(g, forward)
    assert _plan(g, "auto").mode == "jax-fwd"
    for fn in (ccjax.jacve(quaternion_rotation), jax.jit(ccjax.jacve(quaternion_rotation))):
        np.testing.assert_allclose(fn(q), jax.jacrev(quaternion_rotation)(q), rtol=1e-12, atol=1e-12)
    qs = jnp.asarray(np.random.default_rng(7).normal(size=(5, 4)))
    np.testing.assert_allclose(jax.vmap(ccjax.jacve(quaternion_rotation))(qs),
                               jax.vmap(jax.jacrev(quaternion_rotation))(qs), rtol=1e-12, atol=1e-12)
    # by the staged equations alone: without that check the elimination wins on its count
    monkeypatch.setattr(jax_modes, "STAGED_CHECK_MAX_NODES", 0)
    assert cheapest(g, elim, Counter(g)) is elim


def test_the_program_staged_to_choose_a_plan_runs_without_a_second_trace(monkeypatch):
    """Choosing between the quaternion's elimination and forward mode
    stages both programs; the graph keeps the chosen one's and the first
    call evaluates it instead of tracing the Jacobian program again, with
    the same result, eagerly, jitted, batched and on a Python-float input."""
    traced = []
    real_program = jax_modes.jacobian_program

    def counting(graph, plan, layout="dense"):
        traced.append(plan.mode)
        return real_program(graph, plan, layout)

    monkeypatch.setattr(jax_modes, "jacobian_program", counting)
    q = jnp.asarray([0.7, 0.2, -0.4, 0.5])
    fn = ccjax.jacve(lambda q: quaternion_rotation(q) * 1.0)
    np.testing.assert_allclose(fn(q), jax.jacrev(quaternion_rotation)(q), rtol=1e-12, atol=1e-12)
    assert sorted(traced) == ["eliminate", "jax-fwd"]  # each staged once to choose; the run traced neither again
    g = ccjax.graph(lambda q: quaternion_rotation(q) * 1.0, q)  # the cached graph
    assert [entry[0].mode for entry in g.staged.values()] == ["jax-fwd"]  # the chosen plan's program only
    np.testing.assert_allclose(jax.jit(fn)(q), jax.jacrev(quaternion_rotation)(q), rtol=1e-12, atol=1e-12)
    qs = jnp.asarray(np.random.default_rng(8).normal(size=(3, 4)))
    np.testing.assert_allclose(jax.vmap(fn)(qs), jax.vmap(jax.jacrev(quaternion_rotation))(qs), rtol=1e-12,
                               atol=1e-12)
    rows = lambda a, b, c, d: quaternion_rotation(jnp.stack([a, b, c, d]))
    want = jax.jacrev(rows, argnums=(0, 1, 2, 3))(0.7, 0.2, -0.4, 0.5)
    got = ccjax.jacve(rows, argnums=(0, 1, 2, 3))(0.7, 0.2, -0.4, 0.5)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.weak_type == b.weak_type
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_cheapest_counts_no_plain_mode_that_cannot_win(monkeypatch):
    # 64 tanh/mul layers on 64 values: JAX's modes multiply each layer's
    # 64 products on 64 (co)tangents; the elimination's diagonals do not
    def f(x):
        for _ in range(64):
            x = jnp.tanh(x) * x
        return x

    g = ccjax.graph(f, jnp.linspace(0.1, 1.0, 64))
    elim = plan_elimination(g, resolve_order(g, "rev"))
    counter = Counter(g)
    assert program_mults(g, elim, counter) <= min(counter.mode_lower_bound(m) for m in ("rev", "fwd"))
    assert counter.mode_lower_bound("rev") <= counter.mode_mults("rev")

    counted = Counter.node_mults

    def no_trace(self, node, mode, seeds=None):
        if seeds is None:
            raise AssertionError("a plain mode was counted")
        return counted(self, node, mode, seeds)  # one compressed seed may count (a diagonal Jacobian)

    monkeypatch.setattr(Counter, "node_mults", no_trace)
    assert cheapest(g, elim) is elim


_ELEMENTWISE = {
    "sin": jnp.sin, "cos": jnp.cos, "tan": jnp.tan, "exp": jnp.exp, "exp2": jnp.exp2, "expm1": jnp.expm1,
    "tanh": jnp.tanh, "logistic": jax.nn.sigmoid, "sqrt": jnp.sqrt, "rsqrt": jax.lax.rsqrt, "cbrt": jnp.cbrt,
    "square": jax.lax.square, "integer_pow": lambda x: x ** 3, "sinh": jnp.sinh, "cosh": jnp.cosh,
    "asin": jnp.arcsin, "acos": jnp.arccos, "asinh": jnp.arcsinh, "atanh": jnp.arctanh,
    "erf": jax.scipy.special.erf, "erf_inv": jax.scipy.special.erfinv, "lgamma": jax.scipy.special.gammaln,
    "digamma": jax.scipy.special.digamma,
}


def test_every_tangent_multiplying_primitive_is_checked():
    assert set(_ELEMENTWISE) == TANGENT_MULTIPLYING


@pytest.mark.parametrize("name", sorted(_ELEMENTWISE))
def test_lower_bound_of_elementwise_functions_holds_and_has_teeth(name):
    """Each primitive's JVP and transpose multiply every (co)tangent element
    at least once, on JAX's own rules: the bound counts exactly that."""
    fn = _ELEMENTWISE[name]
    f = lambda x: fn(x) * x  # a second active factor: the mul counts twice
    x = jnp.linspace(0.1, 0.8, 6)
    g = ccjax.graph(f, x)
    assert name in [node.name for node in g.program.nodes]
    counter = Counter(g)
    for mode in ("fwd", "rev"):
        bound = counter.mode_lower_bound(mode)
        assert bound == (6 + 2 * 6) * 6, (name, mode)
        assert bound <= counter.mode_mults(mode) == traced_mode_mults(g, mode), (name, mode)


_DATA_MOVES = {
    "slice": lambda x: x[1:5:2],
    "pad": lambda x: jax.lax.pad(x, x[0], [(1, -2, 1)]),
    "concatenate": lambda x: jnp.concatenate([x, x[:2]]),
    "reshape": lambda x: x.reshape(2, 3),
    "squeeze": lambda x: jax.lax.squeeze(x[None], (0,)),
    "broadcast_in_dim": lambda x: jnp.broadcast_to(x, (2, 6)),
    "transpose": lambda x: x.reshape(2, 3).T,
    "rev": lambda x: x[::-1],
    "neg": lambda x: -x,
    "add": lambda x: x + x[::-1],
    "add_any": lambda x: jax.grad(lambda y: jnp.sum(jnp.sin(y)) + jnp.sum(y))(x),
    "sub": lambda x: x - 2.0 * x[::-1],
    "convert_element_type": lambda x: x.astype(jnp.float32),
    "reduce_sum": lambda x: jnp.sum(x.reshape(2, 3), 0),
    "cumsum": jnp.cumsum,
    "gather": lambda x: x[jnp.array([3, 1, 1])] + x[jnp.argmax(x)],
    "scatter-add": lambda x: jnp.zeros(4).at[jnp.array([0, 2, 2])].add(x[:3]),
    "dynamic_slice": lambda x: jax.lax.dynamic_slice(x, (jnp.argmin(x),), (2,)),
    "dynamic_update_slice": lambda x: jax.lax.dynamic_update_slice(x, x[:2] * 2.0, (jnp.argmin(x),)),
    "select_n": lambda x: jnp.where(x > 0.3, x, -x),
    "split": lambda x: jnp.split(x, 2)[1],
    "stack": lambda x: jnp.stack([x, x[::-1]]),
    "unstack": lambda x: jnp.unstack(x.reshape(2, 3))[1],
    "tile": lambda x: jnp.tile(x, (2, 1)),
    "optimization_barrier": lambda x: jax.lax.optimization_barrier(x),
}


def test_every_data_moving_primitive_is_checked():
    assert set(_DATA_MOVES) == MOVES_DATA


@pytest.mark.parametrize("name", sorted(_DATA_MOVES))
def test_data_moving_primitives_multiply_in_no_mode(name):
    """The counts skip tracing these (:data:`ccjax._jaxpr.MOVES_DATA`); the
    whole program's jaxpr, traced, must agree that they multiply nowhere."""
    f = lambda x: jnp.sin(_DATA_MOVES[name](x)) * 3.0
    g = ccjax.graph(f, jnp.linspace(0.1, 0.8, 6))
    assert name in [node.name for node in g.program.nodes]
    counter = Counter(g)
    for mode in ("fwd", "rev"):
        assert counter.mode_mults(mode) == traced_mode_mults(g, mode), (name, mode)


def test_lower_bound_skips_x_to_the_power_one():
    g = ccjax.graph(lambda x: jax.lax.integer_pow(x, 1) + x, jnp.ones(4))
    assert Counter(g).mode_lower_bound("fwd") == 0


def test_cheapest_prefers_the_elimination_on_ties():
    f = lambda x: x * 2.0
    x = jnp.ones(3)
    g = ccjax.graph(f, x)
    elim = plan_elimination(g, resolve_order(g, "rev"))
    assert cheapest(g, elim) is elim


def test_where_nothing_multiplies_the_plan_that_moves_least_runs():
    """Lorenz-96's Jacobian is linear in ``x``, so the program of its
    Hessian (``jacve`` of ``jacve``) only moves and adds data: every
    candidate counts 0 multiplications.  Forward mode pushes n tangents,
    reverse mode pulls n * n cotangents (5-7 ms against 0.7 ms at n = 64);
    the elimination, which reads the inner write's scatter of slices as
    selections, adds nothing (0.2 ms), and runs.  A copy needs neither, and
    keeps the elimination."""
    lorenz96 = lambda x: (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - x + 8.0
    x = jnp.linspace(7.0, 9.0, 16)
    inner = ccjax.jacve(lorenz96)
    g = ccjax.graph(inner, x)
    counter = Counter(g)
    assert counter.mode_mults("rev") == counter.mode_mults("fwd") == 0
    assert counter.mode_entries("fwd") * 8 < counter.mode_entries("rev")
    plan = _plan(g, "auto")
    assert plan.mode == "eliminate" and program_mults(g, plan) == 0
    assert plan.report.additions < counter.mode_entries("fwd")
    np.testing.assert_allclose(jax.jit(ccjax.jacve(inner))(x), jax.hessian(lorenz96)(x), atol=1e-12)
    shifted = lambda x: jnp.concatenate([x[1:], x[:1]]) - x  # the elimination writes two diagonals, no sum
    assert _plan(ccjax.graph(shifted, x), "auto").mode == "eliminate"
    np.testing.assert_allclose(ccjax.jacve(shifted)(x), jax.jacrev(shifted)(x), rtol=1e-12)


def test_nodes_no_output_reads_are_left_out():
    """XLA drops them from the compiled Jacobian, so the graph and the
    counts leave them out too (a nested ``jacve`` traces the inner
    primal, which its Jacobian never reads); an effect stays."""
    printed = []

    def f(x):
        jax.debug.callback(lambda v: printed.append(float(v)), x[0])
        jnp.sin(x) * x  # traced, never read
        return jnp.cos(x) * 2.0

    x = jnp.array([0.5, 1.0, 2.0])
    g = ccjax.graph(f, x)
    names = [n.name for n in g.program.nodes]
    assert "sin" not in names and "debug_callback" in names
    for mode in ("fwd", "rev"):
        assert Counter(g).mode_mults(mode) == traced_mode_mults(g, mode)
    np.testing.assert_allclose(ccjax.jacve(f)(x), jax.jacrev(f)(x), rtol=1e-12)
    assert printed


def test_program_mults_counts_dense_partials_too():
    f = lambda x: jnp.sort(x) * x
    x = jnp.array([3.0, 1.0, 2.0])
    g = ccjax.graph(f, x)
    plan = plan_elimination(g, resolve_order(g, "rev"))
    assert program_mults(g, plan) >= plan.report.mults


def test_auto_skips_a_plain_mode_jax_cannot_run():
    def f(x):
        return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (jnp.sin(c[0]) * 1.5, c[1] + 1), (x, 0))[0]

    x = jnp.array([0.3, 0.9])
    got = ccjax.jacve(f)(x)
    np.testing.assert_allclose(got, jax.jacfwd(f)(x), rtol=1e-12)
    assert _plan(ccjax.graph(f, x), "auto").mode in ("eliminate", "jax-fwd", "colored-fwd")


def test_cli_cost_says_when_auto_runs_a_plain_mode(tmp_path, monkeypatch, capsys):
    import sys

    from ccjax.cli import main

    (tmp_path / "stencil_mod.py").write_text(
        "import jax.numpy as jnp\n"
        "def nested_sums(u):\n"
        "    return jnp.cumsum(jnp.sin(jnp.cumsum(u)))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("stencil_mod", None)
    assert main(["cost", "stencil_mod:nested_sums", "--args", "f64[128]", "--order", "auto", "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "runs JAX's" in out and "mode over the whole function" in out
    assert main(["cost", "stencil_mod:nested_sums", "--args", "f64[128]", "--order", "auto", "--no-cache", "-q"]) == 0
    quiet = int(capsys.readouterr().out.strip())
    u = jnp.linspace(0.0, 1.0, 128)
    assert quiet == ccjax.cost(sys.modules["stencil_mod"].nested_sums, u, order="auto")


TIE_A = 3.0 * np.eye(6) + np.random.default_rng(21).normal(size=(6, 6)) / 6


@pytest.mark.parametrize("name, fn, mode", [
    # square programs where no elimination beats the plain modes, which multiply alike
    ("newton_step_with_lu", lambda x: x - jnp.linalg.solve(TIE_A + jnp.diag(jnp.cos(x)), TIE_A @ x + jnp.sin(x)),
     "jax-fwd"),
    ("eigh_matrix_function", lambda x: (lambda w, V: ((V * jnp.sqrt(jnp.abs(w) + 1.0)) @ V.T).ravel())(
        *jnp.linalg.eigh(x.reshape(8, 8) + x.reshape(8, 8).T)), "jax-fwd"),
    ("dense_matrix_loop", lambda x: jax.lax.fori_loop(0, 3, lambda i, y: jnp.tanh(TIE_A @ y), x), "jax-rev"),
])
def test_ties_of_the_plain_modes_go_forward_in_programs_that_factor_a_matrix(name, fn, mode):
    x = np.random.default_rng(22).normal(size=64 if name.startswith("eigh") else 6)
    g = ccjax.graph(fn, x)
    counter = Counter(g)
    rev, fwd = plan_jax_mode(g, "rev", counter), plan_jax_mode(g, "fwd", counter)
    assert rev.report.mults == fwd.report.mults  # a tie
    assert _plan(g, "auto").mode == mode
    np.testing.assert_allclose(ccjax.jacve(fn)(x), jax.jacrev(fn)(x), rtol=1e-10, atol=1e-12)


def test_a_factorization_inside_a_branch_puts_forward_mode_first():
    from ccjax.jax_modes import plain_modes

    def f(x):
        return jax.lax.cond(x[0] > 0, lambda y: jnp.linalg.solve(TIE_A + jnp.diag(y ** 2), y), jnp.sin, x)

    x = np.random.default_rng(23).normal(size=6)
    assert plain_modes(ccjax.graph(f, x)) == ("fwd", "rev")
    assert plain_modes(ccjax.graph(lambda x: jax.lax.cond(x[0] > 0, jnp.cos, jnp.sin, x), x)) == ("rev", "fwd")


def test_plain_modes_within_the_tie_fraction_go_by_the_order(monkeypatch):
    """``expm`` (an LU solve inside) counts 0.06% fewer multiplications in
    reverse mode: a tie, so forward mode runs, as for exact ties; with no
    tie fraction the lower count wins."""
    from ccjax import jax_modes

    fn = lambda a: jax.scipy.linalg.expm(a.reshape(4, 4)).ravel()
    x = 0.3 * np.random.default_rng(24).normal(size=16)
    g = ccjax.graph(fn, x)
    counter = Counter(g)
    rev, fwd = plan_jax_mode(g, "rev", counter), plan_jax_mode(g, "fwd", counter)
    assert rev.report.mults < fwd.report.mults < rev.report.mults / (1 - jax_modes.PLAIN_TIE)
    elimination = plan_elimination(g, resolve_order(g, "auto"))
    assert cheapest(g, elimination, counter).mode == "jax-fwd"
    monkeypatch.setattr(jax_modes, "PLAIN_TIE", 0.0)
    assert cheapest(g, elimination, counter).mode == "jax-rev"
    np.testing.assert_allclose(ccjax.jacve(fn)(x), jax.jacrev(fn)(x), rtol=1e-10, atol=1e-12)


def test_a_plain_mode_cheaper_beyond_the_tie_fraction_still_wins():
    """``solve`` with respect to the matrix and the right-hand side: forward
    mode comes first (an LU factorization), reverse mode counts far fewer."""
    fn = lambda a, b: jnp.linalg.solve(a.reshape(6, 6), b)
    a, b = (TIE_A.ravel(), np.random.default_rng(25).normal(size=6))
    g = ccjax.graph(fn, a, b, argnums=(0, 1))
    counter = Counter(g)
    assert plan_jax_mode(g, "rev", counter).report.mults < 0.5 * plan_jax_mode(g, "fwd", counter).report.mults
    assert _plan(g, "auto").mode in ("jax-rev", "eliminate")
