"""Small programs of index arithmetic and data movement, run in NumPy.

Compiling a program with XLA costs about 80 ms on a CPU, whatever its size.
Two kinds of program ccjax runs only once, while it builds a graph or plans
a sparse output, are cheaper to run here, equation by equation:

- the constants of a program (masks from iotas and comparisons, gather
  indices, a constant kernel's scaling), which must equal XLA's result bit
  for bit (``exact=True``: every operation is exact or rounds once, as XLA
  does);
- the probes of structural zeros (:func:`ccjax.eliminate.probe_finals`),
  which only ask which entries are zero, so sums and products may round in
  another order (``exact=False`` adds ``dot_general``, ``reduce_sum``, a
  floating-point ``scatter-add`` and complex products and quotients).

- with ``transcendental=True``, constants made of products, quotients,
  elementwise ``exp``, ``log``, ``sqrt``... and ``reduce_prod``
  (:data:`APPROXIMATE`), which NumPy computes
  within a few ulps of XLA but not bit for bit: only
  for asking whether every entry is far from zero (a constant factor
  ``sqrt(T)`` or ``exp(-r * T)``), where a compilation cost 40-50 ms.

An equation this module cannot run as XLA would raises
``NotImplementedError`` (or a NumPy ``TypeError``/``ValueError``), and
:func:`run_nodes` answers None: the caller compiles instead.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np

#: Equations that sum in an order XLA may not share: run only for ``exact=False``
#: when they sum floating-point values.
ROUNDING_SUMS = frozenset({"dot_general", "reduce_sum", "scatter-add"})
#: Equations whose complex arithmetic may round otherwise than XLA's (a complex
#: product is two products and a sum): run only for ``exact=False`` on complex values.
COMPLEX_ROUNDING = frozenset({"mul", "div"})


#: How far from zero (times the dtype's smallest normal number) a value
#: NumPy computes within a few ulps of XLA must be for XLA's to be nonzero
#: too (a few ulps cannot make it zero, nor flushing subnormals to zero).
ZERO_MARGIN = 2.0 ** 24


def zero_floor(dtype) -> float:
    """The smallest magnitude :data:`ZERO_MARGIN` allows for ``dtype``."""
    return float(np.finfo(dtype).tiny) * ZERO_MARGIN


def _elementwise(fn: Callable) -> Callable:
    return lambda params, *args: [fn(*args)]


def _reduce_prod_in_range(params, x):
    """``reduce_prod``, where no partial product in any order can overflow
    or come near underflow (XLA multiplies in another order than NumPy):
    per result, the product of the factors' magnitudes clipped below at 1
    is finite and the one clipped above at 1 is at least :func:`zero_floor`."""
    axes = tuple(params["axes"])
    if x.dtype.kind != "f":
        raise NotImplementedError("reduce_prod of non-floating values")
    size = np.abs(x.astype(np.float64))
    high = np.prod(np.maximum(size, 1.0), axis=axes)
    low = np.prod(np.minimum(size, 1.0), axis=axes)
    if not (np.all(high <= float(np.finfo(x.dtype).max) / 2) and np.all(low >= zero_floor(x.dtype))):
        raise ValueError("a partial product may leave the floating-point range")
    return [np.prod(x, axis=axes)]


#: Equations NumPy computes within a few ulps of XLA (not bit for bit): run
#: only for ``transcendental=True``.  Elementwise functions each with a
#: relative error bounded away from its zeros (no ``sin``: its zeros are not
#: representable, and near one the two may differ in every digit), and
#: ``reduce_prod``, which multiplies in another order than XLA.
APPROXIMATE: dict[str, Callable] = {
    **{name: _elementwise(fn) for name, fn in {
        "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "rsqrt": lambda x: 1 / np.sqrt(x), "cbrt": np.cbrt,
        "tanh": np.tanh, "logistic": lambda x: 1 / (1 + np.exp(-x)), "exp2": np.exp2, "log1p": np.log1p,
        "expm1": np.expm1, "pow": np.power}.items()},
    "reduce_prod": _reduce_prod_in_range,
}


def run_nodes(nodes: Sequence[Any], env: dict, avals: Sequence[Any], exact: bool = True,
              transcendental: bool = False) -> Optional[dict]:
    """``env`` extended by the outputs of ``nodes`` (program order; each with
    ``name``, ``params``, ``ins`` and ``outs``, variable ids into ``env`` and
    ``avals``), or None where one equation cannot be run here or gives
    another shape or dtype than its ``aval``.  ``transcendental``: also
    run :data:`APPROXIMATE` (see the module docstring)."""
    env = dict(env)
    try:
        for node in nodes:
            args = [np.asarray(env[i]) for i in node.ins]
            if exact and ((node.name in ROUNDING_SUMS and any(a.dtype.kind in "fc" for a in args))
                          or (node.name in COMPLEX_ROUNDING and any(a.dtype.kind == "c" for a in args))):
                return None
            with np.errstate(all="ignore"):  # IEEE results (1 / 0 = inf) are XLA's too: no warnings
                table = APPROXIMATE if transcendental and node.name in APPROXIMATE else _NUMPY
                outs = table[node.name](node.params, *args)
            for o, x in zip(node.outs, outs):
                x = np.asarray(x)
                if x.shape != tuple(avals[o].shape) or x.dtype != np.dtype(avals[o].dtype):
                    return None
                env[o] = x
    except (KeyError, NotImplementedError, TypeError, ValueError, IndexError):
        return None
    return env


def _iota(params):
    shape, dim = tuple(params["shape"]), params["dimension"]
    line = np.arange(shape[dim], dtype=np.dtype(params["dtype"]))
    return [np.broadcast_to(line.reshape([-1 if k == dim else 1 for k in range(len(shape))]), shape)]


def _broadcast(params, x):
    shape, dims = tuple(params["shape"]), tuple(params["broadcast_dimensions"])
    expanded = np.reshape(x, [x.shape[dims.index(k)] if k in dims else 1 for k in range(len(shape))])
    return [np.broadcast_to(expanded, shape)]


def _convert(params, x):
    to = np.dtype(params["new_dtype"])
    if x.dtype.kind in "fc" and to.kind not in "fc":
        raise NotImplementedError  # NaN and out-of-range conversions differ
    if x.dtype.kind == "c" and to.kind != "c":
        raise NotImplementedError
    return [x.astype(to)]


def _div(params, a, b):
    if a.dtype.kind in "fc":
        return [np.divide(a, b)]
    if a.dtype.kind in "iu" and np.all(b != 0) and not _overflows(a, b):
        return [(a - np.fmod(a, b)) // b]  # XLA's integer division truncates toward zero
    raise NotImplementedError  # division by zero: XLA's answer is its own


def _overflows(a, b) -> bool:
    """Whether some quotient is the one a signed type cannot hold (``min / -1``)."""
    return a.dtype.kind == "i" and bool(np.any((a == np.iinfo(a.dtype).min) & (b == -1)))


def _rem(params, a, b):
    if a.dtype.kind in "iu" and np.all(b != 0):
        return [np.fmod(a, b)]  # the sign of the dividend, as C and XLA
    raise NotImplementedError


def _select(params, pred, *cases):
    out = cases[0]
    for k, case in enumerate(cases[1:], 1):
        out = np.where(pred == k if pred.dtype != np.bool_ else pred, case, out)
    return [out]


def _reshape(params, x):
    if params.get("dimensions") is not None:
        raise NotImplementedError
    return [np.reshape(x, params["new_sizes"])]


def _sign(params, x):
    if x.dtype.kind == "c":
        raise NotImplementedError
    return [np.sign(x)]


def _dot_general(params, a, b):
    """``lax.dot_general``: batch dimensions first, then ``a``'s free
    dimensions, then ``b``'s (the result in ``preferred_element_type``)."""
    (ca, cb), (ba, bb) = params["dimension_numbers"]
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    sa = [""] * a.ndim
    sb = [""] * b.ndim
    for i, j in zip(ba, bb):
        sa[i] = sb[j] = next(letters)
    for i, j in zip(ca, cb):
        sa[i] = sb[j] = next(letters)
    for s in (sa, sb):
        for k, c in enumerate(s):
            if not c:
                s[k] = next(letters)
    free_a = [sa[k] for k in range(a.ndim) if k not in ca and k not in ba]
    free_b = [sb[k] for k in range(b.ndim) if k not in cb and k not in bb]
    out = "".join([sa[i] for i in ba] + free_a + free_b)
    dtype = params.get("preferred_element_type") or np.result_type(a, b)
    return [np.einsum(f"{''.join(sa)},{''.join(sb)}->{out}", a, b).astype(dtype)]


def _reduce_sum(params, x):
    return [np.sum(x, axis=tuple(params["axes"]), dtype=x.dtype)]


def _mode(params) -> str:
    return getattr(params["mode"], "name", str(params["mode"]))


def _fill_value(params, dtype: np.dtype):
    fill = params.get("fill_value")
    if fill is not None:
        return fill
    if dtype.kind in "fc":
        return np.nan
    if dtype.kind == "i":
        return np.iinfo(dtype).min
    if dtype.kind == "u":
        return np.iinfo(dtype).max
    return True


def _window_starts(starts: np.ndarray, dims: Sequence[int], shape: Sequence[int], sizes: Sequence[int]):
    """(starts clamped so each window fits, whether each window fit unclamped);
    ``starts``: (batch..., len(dims)) for operand dimensions ``dims``."""
    starts = starts.astype(np.int64)
    upper = np.array([shape[d] - sizes[d] for d in dims], np.int64)
    fits = np.all((starts >= 0) & (starts <= upper), axis=-1)
    return np.clip(starts, 0, upper), fits


def _window_grids(starts: np.ndarray, dims: Sequence[int], batch_shape: tuple, sizes: Sequence[int]) -> tuple:
    """Index arrays (one per operand dimension, broadcasting to ``batch_shape
    + sizes``) of the window of ``sizes`` at each start (``starts``:
    ``batch_shape + (len(dims),)`` for operand dimensions ``dims``; 0 for
    the others)."""
    ndim = len(sizes)
    grids = []
    for d in range(ndim):
        offset = np.arange(sizes[d]).reshape([1] * len(batch_shape) + [-1 if k == d else 1 for k in range(ndim)])
        if d in dims:
            start = starts[..., list(dims).index(d)]
            offset = start.reshape(batch_shape + (1,) * ndim) + offset
        grids.append(offset)
    return tuple(grids)


def _with_batch_coordinates(indices: np.ndarray, index_batching_dims: Sequence[int]) -> np.ndarray:
    """``indices`` (``batch_shape + (k,)``) with the coordinate along each
    of ``index_batching_dims`` appended to every index vector: a batching
    dimension pair reads (writes) the operand at the index's own position
    along it, as a start index into a collapsed (inserted) dimension would."""
    batch_shape = indices.shape[:-1]
    coords = [np.broadcast_to(np.arange(batch_shape[d]).reshape([-1 if k == d else 1 for k in range(len(batch_shape))]),
                              batch_shape) for d in index_batching_dims]
    return np.concatenate([indices.astype(np.int64)] + [c[..., None] for c in coords], axis=-1)


def gather(params, operand, indices):
    """``lax.gather``: the slice of ``slice_sizes`` at each start index,
    offset dimensions at ``offset_dims``.  Batching dimensions are read as
    collapsed dimensions started at the index's own batch coordinate."""
    dn = params["dimension_numbers"]
    if dn.operand_batching_dims:
        indices = _with_batch_coordinates(indices, dn.start_indices_batching_dims)
        dn = dn._replace(start_index_map=tuple(dn.start_index_map) + tuple(dn.operand_batching_dims),
                         collapsed_slice_dims=tuple(dn.collapsed_slice_dims) + tuple(dn.operand_batching_dims),
                         operand_batching_dims=(), start_indices_batching_dims=())
    sizes = tuple(params["slice_sizes"])
    batch_shape = indices.shape[:-1]
    starts, fits = _window_starts(indices, dn.start_index_map, operand.shape, sizes)
    grids = _window_grids(starts, dn.start_index_map, batch_shape, sizes)
    window = np.broadcast_to(operand[grids], batch_shape + sizes)
    if _mode(params) == "FILL_OR_DROP" and not fits.all():
        fill = np.asarray(_fill_value(params, operand.dtype), operand.dtype)
        window = np.where(fits.reshape(batch_shape + (1,) * operand.ndim), window, fill)
    nb = len(batch_shape)
    window = window.reshape(batch_shape + tuple(s for d, s in enumerate(sizes) if d not in dn.collapsed_slice_dims))
    offsets = iter(range(nb, window.ndim))
    batches = iter(range(nb))
    order = [next(offsets) if k in dn.offset_dims else next(batches) for k in range(window.ndim)]
    return [np.transpose(window, order)]


def _scatter_add(params, operand, indices, updates):
    """``lax.scatter_add``: a window that does not fit is dropped
    (``FILL_OR_DROP``, and XLA's own ``PROMISE_IN_BOUNDS``) or moved to fit
    (``CLIP``).  Batching dimensions are written as inserted dimensions
    started at the index's own batch coordinate."""
    dn = params["dimension_numbers"]
    if dn.operand_batching_dims:
        indices = _with_batch_coordinates(indices, dn.scatter_indices_batching_dims)
        dn = dn._replace(
            scatter_dims_to_operand_dims=tuple(dn.scatter_dims_to_operand_dims) + tuple(dn.operand_batching_dims),
            inserted_window_dims=tuple(dn.inserted_window_dims) + tuple(dn.operand_batching_dims),
            operand_batching_dims=(), scatter_indices_batching_dims=())
    window_dims = [d for d in range(operand.ndim) if d not in dn.inserted_window_dims]
    scatter_axes = [k for k in range(updates.ndim) if k not in dn.update_window_dims]
    # updates as (scatter..., window...), the window in operand order
    upd = np.transpose(updates, scatter_axes + list(dn.update_window_dims))
    batch_shape = upd.shape[:len(scatter_axes)]
    sizes = [1] * operand.ndim
    for d, k in zip(window_dims, dn.update_window_dims):
        sizes[d] = updates.shape[k]
    upd = upd.reshape(batch_shape + tuple(sizes))
    starts, fits = _window_starts(indices, dn.scatter_dims_to_operand_dims, operand.shape, sizes)
    if _mode(params) != "CLIP":
        upd = upd[fits]
        starts = starts[fits]
        batch_shape = (len(upd),)
    grids = _window_grids(starts, dn.scatter_dims_to_operand_dims, batch_shape, sizes)
    out = np.array(operand, copy=True)
    np.add.at(out, tuple(np.broadcast_to(g, upd.shape) for g in grids), upd)
    return [out]


def _dynamic_slice(params, x, *starts):
    """``lax.dynamic_slice``: each start clamped so that the slice fits."""
    sizes = params["slice_sizes"]
    at = [int(np.clip(s, 0, n - k)) for s, n, k in zip(starts, x.shape, sizes)]
    return [x[tuple(slice(a, a + k) for a, k in zip(at, sizes))]]


def _dynamic_update_slice(params, x, update, *starts):
    """``lax.dynamic_update_slice``: each start clamped so that the update fits."""
    at = [int(np.clip(s, 0, n - k)) for s, n, k in zip(starts, x.shape, update.shape)]
    out = np.array(x, copy=True)
    out[tuple(slice(a, a + k) for a, k in zip(at, update.shape))] = update
    return [out]


def _pad(params, x, value):
    config = params["padding_config"]
    if any(interior or lo < 0 or hi < 0 for lo, hi, interior in config):
        raise NotImplementedError
    return [np.pad(x, [(lo, hi) for lo, hi, _ in config], constant_values=value)]


_NUMPY: dict[str, Callable[..., list]] = {
    "iota": _iota,
    "broadcast_in_dim": _broadcast,
    "convert_element_type": _convert,
    "reshape": _reshape,
    "select_n": _select,
    "div": _div,
    "rem": _rem,
    "sign": _sign,
    "dot_general": _dot_general,
    "reduce_sum": _reduce_sum,
    "gather": gather,
    "scatter-add": _scatter_add,
    "pad": _pad,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice,
    "add": lambda p, a, b: [a + b], "sub": lambda p, a, b: [a - b], "mul": lambda p, a, b: [a * b],
    "neg": lambda p, a: [-a],
    "eq": lambda p, a, b: [a == b], "ne": lambda p, a, b: [a != b], "lt": lambda p, a, b: [a < b],
    "le": lambda p, a, b: [a <= b], "gt": lambda p, a, b: [a > b], "ge": lambda p, a, b: [a >= b],
    "and": lambda p, a, b: [a & b], "or": lambda p, a, b: [a | b], "not": lambda p, a: [~a],
    "concatenate": lambda p, *xs: [np.concatenate(xs, axis=p["dimension"])],
    "stack": lambda p, *xs: [np.stack(xs, axis=p["axis"])],
    "rev": lambda p, x: [np.flip(x, axis=tuple(p["dimensions"]))],
    "transpose": lambda p, x: [np.transpose(x, p["permutation"])],
    "squeeze": lambda p, x: [np.squeeze(x, axis=tuple(p["dimensions"]))],
    "split": lambda p, x: np.split(x, np.cumsum(p["sizes"])[:-1], axis=p["axis"]),
    "slice": lambda p, x: [x[tuple(slice(lo, hi, step) for lo, hi, step in
                                   zip(p["start_indices"], p["limit_indices"], p["strides"] or [1] * x.ndim))]],
}
