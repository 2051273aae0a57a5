"""Seeded random JAX functions: benchmark tasks ``f``/``g`` and a property-test source.

:func:`random_function` draws, with ``numpy.random.default_rng(seed)`` and at
construction time only, a random DAG of array operations. Each operation takes
its operands from the values computed so far (inputs included), preferring
values not used yet and recent values, and sometimes the same value twice
(``x * x``, ``x @ x.T``). The returned function is pure JAX: it can be traced,
jitted, vmapped and differentiated.

Operation families (names accepted by ``ops``):

``unary``          sin, cos, tanh, logistic, exp(tanh x), log1p(x*x), log1p|x|,
                   sqrt(x*x + 1), neg, abs, x**2, x**3 (``integer_pow``), square
``binary``         add, sub, mul, x / (1 + y*y), maximum, minimum, atan2(x, 1 + y*y),
                   with NumPy broadcasting between compatible shapes
``reduce``         sum, max, min, prod over random axes, keepdims or not
``reshape``        to random factorisations of the size (flatten, unflatten,
                   non-nesting ones like (6, 4) -> (4, 6))
``transpose``      random axis permutations
``broadcast``      ``jnp.broadcast_to``: new leading axis or size-1 axis expanded
``slice``          strided slices and integer indexing (``slice`` + ``squeeze``)
``concatenate``    of compatible values (often a value with itself)
``dot``            ``@`` / ``jnp.einsum`` with contractions and batch axes (``dot_general``)
``cumsum``         along a random axis, either direction
``where``          ``jnp.where``/``lax.select_n`` of a comparison
``clip``           ``jnp.clip`` / ``lax.clamp`` with constant bounds
``dynamic_slice``  ``lax.dynamic_slice`` with constant start indices
``gather``         indexing with a constant integer array (repeated indices)
``scatter_add``    ``x.at[idx].add(y)`` with repeated indices
``pad``            ``jnp.pad`` / ``lax.pad`` (negative and interior padding too)

Values stay finite and moderate: every value carries an upper bound on its
magnitude (inputs are assumed in ``[-INPUT_SCALE, INPUT_SCALE]``); an operation
whose result bound would exceed ``BOUND_LIMIT`` first squashes its operands with
``tanh``. Division is only by ``1 + y^2``, logarithms only of ``1 + x^2`` or
``1 + |x|``, square roots only of ``x^2 + 1``.

With ``nested=True`` some operations use ``jnp`` functions that JAX wraps in an
inner ``jit`` (``jnp.where``, ``jnp.clip``, ``jnp.cumsum``, ``jnp.pad``), so the
jaxpr contains nested ``jit`` equations; ``nested=False`` uses the flat ``lax``
forms only. Every value computed feeds some output (leftover values are folded
into the outputs), so the jaxpr has no dead equations and every input matters.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._util import float_dtype

Array = jax.Array
Shape = tuple[int, ...]

OP_FAMILIES: tuple[str, ...] = (
    "unary",
    "binary",
    "reduce",
    "reshape",
    "transpose",
    "broadcast",
    "slice",
    "concatenate",
    "dot",
    "cumsum",
    "where",
    "clip",
    "dynamic_slice",
    "gather",
    "scatter_add",
    "pad",
)
#: Program classes where JAX's own AD semantics are easy to miss: complex
#: intermediates of a real function, custom_vjp rules nonlinear in the
#: cotangent, custom_jvp rules, gathers and scatters at out-of-range indices
#: in every index mode.  Not in the default mix (which the paper's task ``f``
#: and the training corpus are drawn from); ask for them with ``ops=``.
FIDELITY_FAMILIES: tuple[str, ...] = ("complex", "custom_vjp", "custom_jvp", "gather_oob", "scatter_oob")
#: ``jnp.stack``, ``jnp.unstack`` and ``jnp.tile``, primitives of their own
#: in recent JAX (``stack``, ``unstack``, ``tile``).  Not in the default mix
#: either, so the default mix draws the functions it always drew.
STACKING_FAMILIES: tuple[str, ...] = ("stack",)
#: Families that apply to shape-``()`` values (used by task ``g``).
ELEMENTWISE_FAMILIES: tuple[str, ...] = ("unary", "binary", "where", "clip")
#: The paper's mix for task ``f``: elementwise, reduction, reshape-like and dot_general.
PAPER_FAMILIES: tuple[str, ...] = (
    "unary",
    "binary",
    "reduce",
    "reshape",
    "transpose",
    "broadcast",
    "dot",
)

_FAMILY_WEIGHTS: dict[str, float] = {
    "unary": 3.0,
    "binary": 4.0,
    "reduce": 1.5,
    "reshape": 1.0,
    "transpose": 0.8,
    "broadcast": 1.0,
    "slice": 1.0,
    "concatenate": 0.8,
    "dot": 2.0,
    "cumsum": 0.6,
    "where": 1.0,
    "clip": 0.6,
    "dynamic_slice": 0.6,
    "gather": 0.8,
    "scatter_add": 0.6,
    "pad": 0.6,
    "complex": 1.5,
    "custom_vjp": 1.0,
    "custom_jvp": 1.0,
    "gather_oob": 1.0,
    "scatter_oob": 1.0,
    "stack": 1.0,
}

MAX_SIZE = 64  # largest number of elements of any value
MAX_RANK = 4
BOUND_LIMIT = 64.0  # largest tracked magnitude bound of any value
INPUT_SCALE = 1.5  # random_inputs draws from U(-INPUT_SCALE, INPUT_SCALE)


# ------------------------------------------------------------------ builder
@dataclass
class _Value:
    shape: Shape
    bound: float
    uses: int = 0

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class _Step:
    label: str
    fn: Callable[..., Array]
    args: tuple[int, ...]


def _broadcast(*shapes: Shape) -> Shape | None:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


class _Builder:
    """Accumulates the random program; all randomness comes from ``rng``."""

    def __init__(self, rng: np.random.Generator, input_shapes: Sequence[Shape], nested: bool):
        self.rng = rng
        self.nested = nested
        self.n_inputs = len(input_shapes)
        self.values = [_Value(tuple(int(d) for d in s), INPUT_SCALE) for s in input_shapes]
        self.steps: list[_Step] = []

    # -- bookkeeping
    def emit(self, label: str, fn: Callable[..., Array], args: Sequence[int], shape: Shape, bound: float) -> int:
        for a in args:
            self.values[a].uses += 1
        idx = len(self.values)
        self.values.append(_Value(tuple(shape), float(bound)))
        names = ", ".join(f"v{a}" for a in args)
        self.steps.append(_Step(f"v{idx}{list(shape)} = {label}({names})", fn, tuple(args)))
        return idx

    def pick(self, pred: Callable[[_Value], bool] = lambda v: True) -> int | None:
        """A random value satisfying ``pred``; unused and recent values are likelier."""
        n = len(self.values)
        cands = [i for i, v in enumerate(self.values) if pred(v)]
        if not cands:
            return None
        w = np.array([(8.0 if self.values[i].uses == 0 else 1.0) * (1.0 + 2.0 * i / n) for i in cands])
        return int(cands[self.rng.choice(len(cands), p=w / w.sum())])

    def tame(self, i: int, limit: float) -> int:
        """``i`` itself if its bound is ``<= limit``, else a new ``tanh(v_i)``."""
        v = self.values[i]
        if v.bound <= limit:
            return i
        return self.emit("tanh", jnp.tanh, (i,), v.shape, 1.0)

    def tame_pair(self, x: int, y: int, limit: float) -> tuple[int, int]:
        """:meth:`tame` of both operands (one ``tanh`` when ``x == y``)."""
        tx = self.tame(x, limit)
        return tx, (tx if y == x else self.tame(y, limit))

    def coin(self, p: float = 0.5) -> bool:
        return bool(self.rng.random() < p)

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in ``[lo, hi]`` (inclusive)."""
        return int(self.rng.integers(lo, hi + 1))

    def pick_partner(self, x: int) -> int | None:
        """A value broadcast-compatible with ``x`` (possibly ``x`` itself)."""
        sx = self.values[x].shape

        def ok(v: _Value) -> bool:
            out = _broadcast(sx, v.shape)
            return out is not None and math.prod(out) <= MAX_SIZE and len(out) <= MAX_RANK

        return self.pick(ok)


# ------------------------------------------------------------ op families
_UNARY: dict[str, tuple[Callable[[Array], Array], Callable[[float], float]]] = {
    "sin": (jnp.sin, lambda m: min(m, 1.0)),
    "cos": (jnp.cos, lambda m: 1.0),
    "tanh": (jnp.tanh, lambda m: min(m, 1.0)),
    "logistic": (lax.logistic, lambda m: 1.0),
    "exp_tanh": (lambda x: jnp.exp(jnp.tanh(x)), lambda m: math.e),
    "log1p_sq": (lambda x: jnp.log1p(x * x), lambda m: math.log1p(m * m)),
    "log1p_abs": (lambda x: jnp.log1p(jnp.abs(x)), lambda m: math.log1p(m)),
    "sqrt_sq1": (lambda x: jnp.sqrt(x * x + 1.0), lambda m: math.sqrt(m * m + 1.0)),
    "neg": (lambda x: -x, lambda m: m),
    "abs": (jnp.abs, lambda m: m),
    "pow2": (lambda x: x**2, lambda m: m**2),
    "pow3": (lambda x: x**3, lambda m: m**3),
    "square": (jnp.square, lambda m: m * m),
}


def _emit_from_table(b: _Builder, x: int, table: dict) -> None:
    """Apply a random shape-preserving function of ``table`` (name -> (fn, bound of |fn|)) to ``x``."""
    name = str(b.rng.choice(sorted(table)))
    fn, bound = table[name]
    if bound(b.values[x].bound) > BOUND_LIMIT:
        x = b.tame(x, 1.0)
    b.emit(name, fn, (x,), b.values[x].shape, bound(b.values[x].bound))


def _op_unary(b: _Builder) -> None:
    _emit_from_table(b, b.pick(), _UNARY)


_BINARY: dict[str, tuple[Callable[[Array, Array], Array], Callable[[float, float], float]]] = {
    "add": (lambda x, y: x + y, lambda p, q: p + q),
    "sub": (lambda x, y: x - y, lambda p, q: p + q),
    "mul": (lambda x, y: x * y, lambda p, q: p * q),
    "div_1p_sq": (lambda x, y: x / (1.0 + y * y), lambda p, q: p),
    "maximum": (jnp.maximum, max),
    "minimum": (jnp.minimum, max),
    "atan2_1p_sq": (lambda x, y: jnp.arctan2(x, 1.0 + y * y), lambda p, q: math.pi / 2),
}


def _op_binary(b: _Builder) -> None:
    x = b.pick()
    y = b.pick_partner(x)
    if y is None:
        return
    name = str(b.rng.choice(sorted(_BINARY)))
    fn, bound = _BINARY[name]
    if bound(b.values[x].bound, b.values[y].bound) > BOUND_LIMIT:
        x, y = b.tame_pair(x, y, 1.0)
    out = _broadcast(b.values[x].shape, b.values[y].shape)
    b.emit(name, fn, (x, y), out, bound(b.values[x].bound, b.values[y].bound))


def _reducer(kind: str, axes: tuple[int, ...] | None, keepdims: bool) -> Callable[[Array], Array]:
    red = {"sum": jnp.sum, "max": jnp.max, "min": jnp.min, "prod": jnp.prod}[kind]
    return lambda x: red(x, axis=axes, keepdims=keepdims)


def _op_reduce(b: _Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 1)
    if x is None:
        return
    shape = b.values[x].shape
    if b.coin(0.2):
        axes = None
        red_axes = tuple(range(len(shape)))
    else:
        k = b.randint(1, len(shape))
        red_axes = tuple(sorted(int(a) for a in b.rng.choice(len(shape), size=k, replace=False)))
        axes = red_axes
    keepdims = b.coin(0.4)
    n = math.prod(shape[a] for a in red_axes)
    kind = str(b.rng.choice(["sum", "max", "min", "prod"], p=[0.4, 0.2, 0.2, 0.2]))
    if kind == "sum" and n * b.values[x].bound > BOUND_LIMIT:
        x = b.tame(x, 1.0)
    if kind == "prod":
        x = b.tame(x, 1.0)
    bnd = b.values[x].bound
    bound = {"sum": n * bnd, "max": bnd, "min": bnd, "prod": bnd**n}[kind]
    out = tuple(1 if a in red_axes else d for a, d in enumerate(shape)) if keepdims else tuple(
        d for a, d in enumerate(shape) if a not in red_axes
    )
    b.emit(f"reduce_{kind}[axes={axes}, keepdims={keepdims}]", _reducer(kind, axes, keepdims), (x,), out, bound)


def _random_factorisation(b: _Builder, n: int) -> Shape:
    """A random shape of size ``n`` with rank 1..3, sometimes with size-1 axes."""
    rank = b.randint(1, 3)
    factors: list[int] = []
    rest = n
    for _ in range(rank - 1):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        d = int(b.rng.choice(divisors))
        factors.append(d)
        rest //= d
    factors.append(rest)
    b.rng.shuffle(factors)
    return tuple(factors)


def _op_reshape(b: _Builder) -> None:
    x = b.pick(lambda v: v.size >= 2)
    if x is None:
        return
    shape = b.values[x].shape
    for _ in range(10):
        target = (b.values[x].size,) if b.coin(0.2) else _random_factorisation(b, b.values[x].size)
        if target != shape:
            b.emit(f"reshape{list(target)}", lambda v, t=target: v.reshape(t), (x,), target, b.values[x].bound)
            return


def _op_transpose(b: _Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 2)
    if x is None:
        return
    shape = b.values[x].shape
    perm = tuple(int(p) for p in b.rng.permutation(len(shape)))
    if perm == tuple(range(len(shape))):
        perm = perm[1:] + perm[:1]
    out = tuple(shape[p] for p in perm)
    b.emit(f"transpose{list(perm)}", lambda v, p=perm: jnp.transpose(v, p), (x,), out, b.values[x].bound)


def _op_broadcast(b: _Builder) -> None:
    x = b.pick(lambda v: 2 * v.size <= MAX_SIZE)
    if x is None:
        return
    shape = b.values[x].shape
    k = b.randint(2, 4)
    ones = [a for a, d in enumerate(shape) if d == 1]
    if ones and b.coin(0.6):
        a = int(b.rng.choice(ones))
        target = shape[:a] + (k,) + shape[a + 1 :]
    elif len(shape) < MAX_RANK:
        target = (k,) + shape
    else:
        return
    if math.prod(target) > MAX_SIZE:
        return
    b.emit(f"broadcast_to{list(target)}", lambda v, t=target: jnp.broadcast_to(v, t), (x,), target, b.values[x].bound)


def _op_slice(b: _Builder) -> None:
    x = b.pick(lambda v: any(d >= 2 for d in v.shape))
    if x is None:
        return
    shape = b.values[x].shape
    axis = int(b.rng.choice([a for a, d in enumerate(shape) if d >= 2]))
    n = shape[axis]
    if b.coin(0.25):  # integer index: slice + squeeze
        i = b.randint(0, n - 1)
        index: tuple = (slice(None),) * axis + (i,)
        out = shape[:axis] + shape[axis + 1 :]
        label = f"index[axis={axis}, {i}]"
    else:
        start = b.randint(0, n - 1)
        stop = b.randint(start + 1, n)
        step = 2 if (stop - start >= 3 and b.coin(0.3)) else 1
        if (start, stop, step) == (0, n, 1):
            start = 1
        index = (slice(None),) * axis + (slice(start, stop, step),)
        out = shape[:axis] + (len(range(start, stop, step)),) + shape[axis + 1 :]
        label = f"slice[axis={axis}, {start}:{stop}:{step}]"
    b.emit(label, lambda v, ix=index: v[ix], (x,), out, b.values[x].bound)


def _op_concatenate(b: _Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 1)
    if x is None:
        return
    shape = b.values[x].shape
    axis = b.randint(0, len(shape) - 1)

    def compatible(v: _Value) -> bool:
        return v.ndim == len(shape) and all(d == e for a, (d, e) in enumerate(zip(v.shape, shape)) if a != axis)

    parts = [x]
    for _ in range(b.randint(1, 2)):
        y = b.pick(compatible)
        if y is not None:
            parts.append(y)
    b.rng.shuffle(parts)
    total = sum(b.values[p].shape[axis] for p in parts)
    out = shape[:axis] + (total,) + shape[axis + 1 :]
    if math.prod(out) > MAX_SIZE:
        return
    bound = max(b.values[p].bound for p in parts)
    b.emit(f"concatenate[axis={axis}]", lambda *vs, a=axis: jnp.concatenate(vs, axis=a), parts, out, bound)


def _op_dot(b: _Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 1)
    if x is None:
        return
    sx = b.values[x].shape
    y = b.pick(lambda v: v.ndim >= 1 and bool(set(v.shape) & set(sx)))
    if y is None:
        return
    sy = b.values[y].shape
    contract: list[tuple[int, int]] = []
    batch: list[tuple[int, int]] = []
    used_y: set[int] = set()
    for ax in (int(a) for a in b.rng.permutation(len(sx))):
        free_y = [ay for ay in range(len(sy)) if ay not in used_y and sy[ay] == sx[ax]]
        if free_y and b.coin(0.7):
            ay = int(b.rng.choice(free_y))
            used_y.add(ay)
            (contract if b.coin(0.7) else batch).append((ax, ay))
    if not contract and not batch:
        return
    letters = iter("abcdefghijklmnop")
    lx = [next(letters) for _ in sx]
    ly = [next(letters) for _ in sy]
    for ax, ay in contract + batch:
        ly[ay] = lx[ax]
    paired_x = {ax for ax, _ in contract + batch}
    out_letters = [lx[ax] for ax, _ in batch]
    out_letters += [lx[a] for a in range(len(sx)) if a not in paired_x]
    out_letters += [ly[a] for a in range(len(sy)) if a not in used_y]
    sizes = dict(zip(lx, sx)) | dict(zip(ly, sy))
    out = tuple(sizes[c] for c in out_letters)
    if math.prod(out) > MAX_SIZE or len(out) > MAX_RANK:
        return
    k = math.prod(sx[ax] for ax, _ in contract)
    if k * b.values[x].bound * b.values[y].bound > BOUND_LIMIT:
        x, y = b.tame_pair(x, y, 1.0)
    bound = k * b.values[x].bound * b.values[y].bound
    spec = f"{''.join(lx)},{''.join(ly)}->{''.join(out_letters)}"
    if len(sx) == 2 and len(sy) == 2 and spec == "ab,bd->ad":
        fn: Callable[..., Array] = lambda u, v: u @ v
    elif len(sx) == 2 and len(sy) == 1 and spec == "ab,b->a":
        fn = jnp.dot
    else:
        fn = lambda u, v, s=spec: jnp.einsum(s, u, v)
    b.emit(f"einsum[{spec}]", fn, (x, y), out, bound)


def _op_cumsum(b: _Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 1)
    if x is None:
        return
    shape = b.values[x].shape
    axis = b.randint(0, len(shape) - 1)
    if shape[axis] * b.values[x].bound > BOUND_LIMIT:
        x = b.tame(x, 1.0)
    reverse = b.coin(0.3)
    if b.nested and not reverse and b.coin(0.5):
        fn: Callable[..., Array] = lambda v, a=axis: jnp.cumsum(v, axis=a)
    else:
        fn = lambda v, a=axis, r=reverse: lax.cumsum(v, axis=a, reverse=r)
    b.emit(f"cumsum[axis={axis}, reverse={reverse}]", fn, (x,), shape, shape[axis] * b.values[x].bound)


_COMPARE: dict[str, Callable[[Array, Array], Array]] = {
    "gt": lambda p, q: p > q,
    "lt": lambda p, q: p < q,
    "ge": lambda p, q: p >= q,
    "le": lambda p, q: p <= q,
}


def _op_where(b: _Builder) -> None:
    x = b.pick()
    y = b.pick_partner(x)
    if y is None:
        return
    out = _broadcast(b.values[x].shape, b.values[y].shape)
    c = b.pick(lambda v: _broadcast(v.shape, out) == out)
    cmp_name = str(b.rng.choice(sorted(_COMPARE)))
    cmp = _COMPARE[cmp_name]
    bound = max(b.values[x].bound, b.values[y].bound)
    nested = b.nested and b.coin(0.5)

    def select(cond: Array, u: Array, v: Array) -> Array:
        if nested:
            return jnp.where(cond, u, v)
        cond = jnp.broadcast_to(cond, out)
        return lax.select_n(cond, jnp.broadcast_to(v, out), jnp.broadcast_to(u, out))

    if b.coin(0.5):  # compare with a constant threshold
        t = float(np.round(b.rng.uniform(-0.5, 0.5), 3))
        fn = lambda cv, u, v: select(cmp(cv, t), u, v)
        b.emit(f"where[{cmp_name} {t}]", fn, (c, x, y), out, bound)
    else:  # compare two values
        d = b.pick(lambda v: _broadcast(v.shape, out) == out)
        fn = lambda cv, dv, u, v: select(cmp(cv, dv), u, v)
        b.emit(f"where[{cmp_name}]", fn, (c, d, x, y), out, bound)


def _op_clip(b: _Builder) -> None:
    x = b.pick()
    lo = float(np.round(b.rng.uniform(-1.2, -0.1), 3))
    hi = float(np.round(b.rng.uniform(0.1, 1.2), 3))
    if b.nested and b.coin(0.5):
        fn: Callable[..., Array] = lambda v: jnp.clip(v, lo, hi)
    else:
        fn = lambda v: lax.clamp(jnp.asarray(lo, v.dtype), v, jnp.asarray(hi, v.dtype))
    b.emit(f"clip[{lo}, {hi}]", fn, (x,), b.values[x].shape, min(b.values[x].bound, max(-lo, hi)))


def _op_dynamic_slice(b: _Builder) -> None:
    x = b.pick(lambda v: any(d >= 2 for d in v.shape))
    if x is None:
        return
    shape = b.values[x].shape
    sizes = [b.randint(1, d) for d in shape]
    if tuple(sizes) == shape:
        a = int(b.rng.choice([a for a, d in enumerate(shape) if d >= 2]))
        sizes[a] -= 1
    starts = tuple(b.randint(0, d - s) for d, s in zip(shape, sizes))
    sz = tuple(sizes)
    b.emit(
        f"dynamic_slice[{list(starts)}, {list(sz)}]",
        lambda v, st=starts, s=sz: lax.dynamic_slice(v, st, s),
        (x,),
        sz,
        b.values[x].bound,
    )


def _op_gather(b: _Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 1)
    if x is None:
        return
    shape = b.values[x].shape
    axis = b.randint(0, len(shape) - 1)
    idx_shape = (b.randint(1, 5),) if b.coin(0.8) else (2, b.randint(1, 3))
    idx = b.rng.integers(0, shape[axis], size=idx_shape).astype(np.int32)
    out = shape[:axis] + idx_shape + shape[axis + 1 :]
    if math.prod(out) > MAX_SIZE or len(out) > MAX_RANK:
        return
    index = (slice(None),) * axis + (idx,)
    b.emit(f"gather[axis={axis}, {idx.tolist()}]", lambda v, ix=index: v[ix], (x,), out, b.values[x].bound)


def _op_scatter_add(b: _Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 1)
    if x is None:
        return
    shape = b.values[x].shape
    rest = shape[1:]

    def as_update(v: _Value) -> bool:  # broadcastable to (k,) + rest for some k
        if v.ndim == len(shape) and v.shape[0] <= 6:
            return _broadcast(v.shape[1:], rest) == rest
        return _broadcast(v.shape, rest) == rest

    y = b.pick(as_update)
    if y is None:
        return
    sy = b.values[y].shape
    k = sy[0] if len(sy) == len(shape) else b.randint(1, 4)
    idx = b.rng.integers(0, shape[0], size=k).astype(np.int32)
    counts = int(np.bincount(idx).max())
    if b.values[x].bound + counts * b.values[y].bound > BOUND_LIMIT:
        x, y = b.tame_pair(x, y, 1.0)
    bound = b.values[x].bound + counts * b.values[y].bound
    b.emit(
        f"scatter_add[{idx.tolist()}]",
        lambda u, v, ix=idx, kk=k, r=rest: u.at[ix].add(jnp.broadcast_to(v, (kk,) + r)),
        (x, y),
        shape,
        bound,
    )


def _op_pad(b: _Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 1)
    if x is None:
        return
    shape = b.values[x].shape
    value = 0.0 if b.coin(0.6) else float(np.round(b.rng.uniform(-1.0, 1.0), 3))
    use_jnp = b.nested and b.coin(0.5)
    config = []
    for d in shape:
        lo, hi = b.randint(0, 2), b.randint(0, 1)
        interior = 0
        if not use_jnp:
            interior = 1 if (d >= 2 and b.coin(0.2)) else 0
            if d >= 3 and b.coin(0.2):
                lo = -1  # negative padding crops
        config.append((lo, hi, interior))
    out = tuple(lo + hi + d + max(d - 1, 0) * it for d, (lo, hi, it) in zip(shape, config))
    if out == shape or math.prod(out) > MAX_SIZE or min(out) < 1:
        return
    cfg = tuple(config)
    if use_jnp:
        widths = tuple((lo, hi) for lo, hi, _ in cfg)
        fn: Callable[..., Array] = lambda v: jnp.pad(v, widths, constant_values=value)
    else:
        fn = lambda v: lax.pad(v, jnp.asarray(value, v.dtype), cfg)
    b.emit(f"pad[{list(cfg)}, {value}]", fn, (x,), out, max(b.values[x].bound, abs(value)))


# ------------------------------------------------------------ fidelity families
_COMPLEX: dict[str, tuple[Callable[[Array], Array], Callable[[float], float]]] = {
    "imag_exp_i": (lambda x: jnp.imag(jnp.exp(1j * x)), lambda m: 1.0),
    "abs_complex": (lambda x: jnp.abs(x + 1j * jnp.sin(x)), lambda m: math.sqrt(m * m + 1.0)),
    "angle": (lambda x: jnp.angle(x + 1j * (1.0 + 0.5 * jnp.cos(x))), lambda m: math.pi),
    "real_conj_prod": (lambda x: jnp.real(jnp.conj(x + 1j * x * x) * (x - 0.5j)), lambda m: m * m + m * m * m),
}


def _op_complex(b: _Builder) -> None:
    x = b.pick()
    if b.values[x].ndim >= 1 and b.values[x].shape[-1] >= 2 and b.coin(0.3):
        n = b.values[x].shape[-1]
        x = b.tame(x, 1.0)
        b.emit("abs_rfft_sq", lambda v: jnp.abs(jnp.fft.rfft(v, axis=-1)) ** 2, (x,),
               b.values[x].shape[:-1] + (n // 2 + 1,), (n * b.values[x].bound) ** 2)
        return
    _emit_from_table(b, x, _COMPLEX)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def clip_gradient(lo: float, hi: float, x: Array) -> Array:
    """Identity whose reverse rule clips the cotangent (JAX's documented example):
    nonlinear in the cotangent."""
    return x


clip_gradient.defvjp(lambda lo, hi, x: (x, None), lambda lo, hi, _, g: (jnp.clip(g, lo, hi),))


@jax.custom_vjp
def sin_with_rule(x: Array) -> Array:
    """``sin`` with a hand-written (linear) reverse rule."""
    return jnp.sin(x)


sin_with_rule.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))


def _op_custom_vjp(b: _Builder) -> None:
    x = b.pick()
    if b.coin():
        b.emit("clip_gradient[-0.4,0.3]", lambda v: clip_gradient(-0.4, 0.3, v), (x,), b.values[x].shape,
               b.values[x].bound)
    else:
        b.emit("sin_with_rule", sin_with_rule, (x,), b.values[x].shape, min(b.values[x].bound, 1.0))


_CUSTOM_JVP: dict[str, tuple[Callable[[Array], Array], Callable[[float], float]]] = {
    "relu": (jax.nn.relu, lambda m: m),
    "softplus": (jax.nn.softplus, lambda m: m + 1.0),
    "silu": (jax.nn.silu, lambda m: m),
    "logsumexp": (lambda x: jax.nn.logsumexp(x, axis=-1 if x.ndim else None, keepdims=True) * jnp.ones_like(x),
                  lambda m: m + 4.2),
}


def _op_custom_jvp(b: _Builder) -> None:
    _emit_from_table(b, b.pick(), _CUSTOM_JVP)


_GATHER_MODES = ("clip", "fill", "wrap", None)


def _oob_indices(b: _Builder, n: int, k: int) -> np.ndarray:
    """``k`` indices into an axis of size ``n``, some out of range both ways."""
    return b.rng.integers(-2 * n, 2 * n, size=k).astype(np.int32)


def _op_gather_oob(b: _Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 1)
    if x is None:
        return
    shape = b.values[x].shape
    k = b.randint(1, 5)
    out = (k,) + shape[1:]
    if math.prod(out) > MAX_SIZE:
        return
    idx = _oob_indices(b, shape[0], k)
    mode = _GATHER_MODES[b.randint(0, len(_GATHER_MODES) - 1)]
    fill = float(np.round(b.rng.uniform(-1.0, 1.0), 3))
    if mode == "fill":
        fn: Callable[..., Array] = lambda v, ix=idx: v.at[ix].get(mode="fill", fill_value=fill)
    elif mode is None:
        fn = lambda v, ix=idx: v[ix]
    else:
        fn = lambda v, ix=idx, m=mode: jnp.take(v, ix, axis=0, mode=m)
    b.emit(f"gather[{mode}, {idx.tolist()}]", fn, (x,), out, max(b.values[x].bound, abs(fill)))


def _op_scatter_oob(b: _Builder) -> None:
    x = b.pick(lambda v: v.ndim >= 1)
    if x is None:
        return
    shape = b.values[x].shape
    y = b.pick()
    k = b.randint(1, 4)
    idx = _oob_indices(b, shape[0], k)
    kind = str(b.rng.choice(["add", "set", "max"]))
    mode = str(b.rng.choice(["drop", "clip", "promise_in_bounds"]))
    if mode == "promise_in_bounds":
        idx = np.mod(idx, shape[0]).astype(np.int32)
    x, y = b.tame_pair(x, y, 1.0)
    def update(v, kk=k, r=shape[1:]):  # y as updates of shape (k,) + rest
        v = v if v.shape == r or not v.shape else jnp.mean(v)
        return jnp.broadcast_to(v, (kk,) + r)

    fns = {"add": lambda u, v, ix=idx: u.at[ix].add(update(v), mode=mode),
           "set": lambda u, v, ix=idx: u.at[ix].set(update(v), mode=mode),
           "max": lambda u, v, ix=idx: u.at[ix].max(update(v), mode=mode)}
    b.emit(f"scatter_{kind}[{mode}, {idx.tolist()}]", fns[kind], (x, y), shape, (k + 1) * 1.0)


def _op_stack(b: _Builder) -> None:
    """``jnp.stack`` of values of one shape, ``jnp.tile``, or one piece of
    ``jnp.unstack``."""
    x = b.pick()
    shape, bound = b.values[x].shape, b.values[x].bound
    kind = ("stack", "tile", "unstack")[b.randint(0, 2 if shape else 1)]
    if kind == "stack":
        parts = [x] + [y for y in (b.pick(lambda v: v.shape == shape) for _ in range(b.randint(1, 2)))
                       if y is not None]
        axis = b.randint(0, len(shape))
        out = shape[:axis] + (len(parts),) + shape[axis:]
        if math.prod(out) > MAX_SIZE or len(out) > MAX_RANK:
            return
        bound = max(b.values[p].bound for p in parts)
        b.emit(f"stack[axis={axis}]", lambda *vs, a=axis: jnp.stack(vs, axis=a), parts, out, bound)
    elif kind == "tile":
        reps = tuple(b.randint(1, 3) for _ in range(max(len(shape), 1)))
        out = tuple(n * r for n, r in zip(shape or (1,), reps))
        if math.prod(out) > MAX_SIZE:
            return
        b.emit(f"tile[{reps}]", lambda v, r=reps: jnp.tile(v, r), (x,), out, bound)
    else:
        axis = b.randint(0, len(shape) - 1)
        k = b.randint(0, shape[axis] - 1)
        out = shape[:axis] + shape[axis + 1:]
        b.emit(f"unstack[axis={axis}][{k}]", lambda v, a=axis, k=k: jnp.unstack(v, axis=a)[k], (x,), out, bound)


_BUILDERS: dict[str, Callable[[_Builder], None]] = {
    "unary": _op_unary,
    "binary": _op_binary,
    "reduce": _op_reduce,
    "reshape": _op_reshape,
    "transpose": _op_transpose,
    "broadcast": _op_broadcast,
    "slice": _op_slice,
    "concatenate": _op_concatenate,
    "dot": _op_dot,
    "cumsum": _op_cumsum,
    "where": _op_where,
    "clip": _op_clip,
    "dynamic_slice": _op_dynamic_slice,
    "gather": _op_gather,
    "scatter_add": _op_scatter_add,
    "pad": _op_pad,
    "complex": _op_complex,
    "custom_vjp": _op_custom_vjp,
    "custom_jvp": _op_custom_jvp,
    "gather_oob": _op_gather_oob,
    "scatter_oob": _op_scatter_oob,
    "stack": _op_stack,
}


def _fold_leftovers(b: _Builder, outputs: list[int]) -> None:
    """Adds every unused value (reduced to a scalar) into one of the outputs."""
    leftovers = [i for i, v in enumerate(b.values) if v.uses == 0 and i not in outputs]
    for j, i in enumerate(leftovers):
        v = b.values[i]
        o = outputs[j % len(outputs)]
        if v.ndim == 0:
            r = i
        elif v.size * v.bound <= BOUND_LIMIT:
            r = b.emit("reduce_sum", jnp.sum, (i,), (), v.size * v.bound)
        else:
            r = b.emit("mean", jnp.mean, (i,), (), v.bound)
        if b.values[o].bound + b.values[r].bound > BOUND_LIMIT:
            o, r = b.tame_pair(o, r, 1.0)
        new = b.emit("add", lambda p, q: p + q, (o, r), b.values[o].shape, b.values[o].bound + b.values[r].bound)
        outputs[j % len(outputs)] = new


# ------------------------------------------------------------------ public API
def random_function(
    seed: int,
    input_shapes: Sequence[Sequence[int]],
    n_ops: int = 30,
    ops: Sequence[str] | None = None,
    *,
    n_outputs: int | None = None,
    nested: bool = True,
) -> Callable[..., Array | tuple[Array, ...]]:
    """A random pure-JAX function of ``len(input_shapes)`` arrays.

    Args:
      seed: seeds ``numpy.random.default_rng``; the same arguments give the same function.
      input_shapes: shapes of the positional array arguments (``()`` for scalars).
      n_ops: number of random operations drawn (each is one to a few primitives;
        squashing ``tanh``s and the final folding of leftover values come on top).
      ops: operation families to draw from (see :data:`OP_FAMILIES`); default all.
      n_outputs: number of outputs; default random in 1..3 (fewer only if fewer
        values were computed). Unused values are preferred; otherwise an output
        may also feed later operations. One output is returned as an array,
        several as a tuple.
      nested: allow ``jnp`` functions that JAX wraps in an inner ``jit``.

    Returns: the function. Its attribute ``program`` lists the drawn operations and
    ``output_shapes`` the shapes of its outputs (a tuple in either case).
    """
    families = tuple(OP_FAMILIES if ops is None else ops)
    unknown = [f for f in families if f not in _BUILDERS]
    if unknown or not families:
        known = OP_FAMILIES + FIDELITY_FAMILIES + STACKING_FAMILIES
        raise ValueError(f"unknown op families {unknown}; choose from {known}")
    if not input_shapes:
        raise ValueError("random_function needs at least one input")
    if n_ops < 1:
        raise ValueError("n_ops must be >= 1")
    rng = np.random.default_rng(seed)
    b = _Builder(rng, [tuple(s) for s in input_shapes], nested)
    weights = np.array([_FAMILY_WEIGHTS[f] for f in families])
    weights = weights / weights.sum()
    attempts = 0
    while len(b.steps) < n_ops and attempts < 50 * n_ops:
        attempts += 1
        _BUILDERS[families[rng.choice(len(families), p=weights)]](b)
    if not b.steps:
        raise ValueError(f"no operation of {families} applies to inputs of shapes {list(input_shapes)}")

    n_out = int(rng.integers(1, 4)) if n_outputs is None else int(n_outputs)
    # Outputs: the latest unused values first, then (if too few) the latest used
    # ones, which makes some outputs also intermediates.
    computed = range(len(b.values) - 1, b.n_inputs - 1, -1)
    outputs = [i for i in computed if b.values[i].uses == 0][:n_out]
    outputs += [i for i in computed if i not in outputs][: n_out - len(outputs)]
    _fold_leftovers(b, outputs)

    steps = tuple(b.steps)
    out_idx = tuple(outputs)
    n_in = b.n_inputs
    in_shapes = tuple(v.shape for v in b.values[:n_in])

    def fn(*args: Array) -> Array | tuple[Array, ...]:
        if len(args) != n_in:
            raise TypeError(f"random function takes {n_in} arrays, got {len(args)}")
        vals: list[Array] = list(args)
        for step in steps:
            vals.append(step.fn(*(vals[i] for i in step.args)))
        outs = tuple(vals[i] for i in out_idx)
        return outs[0] if len(outs) == 1 else outs

    fn.__name__ = f"random_function_{seed}"
    fn.__qualname__ = fn.__name__
    fn.__doc__ = f"Random function (seed {seed}) of inputs {list(in_shapes)}."
    fn.program = tuple(s.label for s in steps) + (f"outputs: {', '.join(f'v{i}' for i in out_idx)}",)  # type: ignore[attr-defined]
    fn.output_shapes = tuple(b.values[i].shape for i in out_idx)  # type: ignore[attr-defined]
    return fn


def random_inputs(
    seed: int, input_shapes: Sequence[Sequence[int]], dtype=None
) -> tuple[Array, ...]:
    """Arrays of the given shapes, ``U(-INPUT_SCALE, INPUT_SCALE)``, default float dtype."""
    rng = np.random.default_rng(seed)
    dt = float_dtype() if dtype is None else dtype
    return tuple(
        jnp.asarray(rng.uniform(-INPUT_SCALE, INPUT_SCALE, size=tuple(s)), dtype=dt) for s in input_shapes
    )


def random_input_shapes(seed: int, n_inputs: int | None = None, max_rank: int = 3) -> tuple[Shape, ...]:
    """1..4 random input shapes (rank 0..``max_rank``, axes of size 1..4, at most 16 elements)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5)) if n_inputs is None else n_inputs
    shapes: list[Shape] = []
    while len(shapes) < n:
        shape = tuple(int(d) for d in rng.integers(1, 5, size=int(rng.integers(0, max_rank + 1))))
        if math.prod(shape) <= 16:
            shapes.append(shape)
    return tuple(shapes)
