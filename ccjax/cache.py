"""A persistent store of the best known elimination order per graph.

Layout: one JSON file per graph under ``<root>/orders/<key>.json``, where
``key`` (:func:`graph_key`) hashes what the elimination costs depend on --
every vertex's kind, label and shape, every edge structure, the inputs and
outputs -- joined with the differentiated input leaves (``argnums``).  Float
dtypes are left out: a float32 and a float64 graph of one function have the
same vertices, edges and structures, so an order searched in one (``ccjax
search`` runs in float32 by default) serves the other (a script run with
``jax_enable_x64``).  The graph's ``fingerprint`` (dtypes included) is stored
with the order for display.  ``<root>`` is, in order of precedence, the ``path`` argument,
the ``CCJAX_CACHE_DIR`` environment variable (empty, ``0``, ``off`` or
``none`` disable the cache), or the user cache directory
(``$XDG_CACHE_HOME/ccjax``, ``~/.cache/ccjax``, ``~/Library/Caches/ccjax``
or ``%LOCALAPPDATA%\\ccjax``).

Guarantees:

* writes are atomic (temporary file in the same directory, then
  ``os.replace``) and serialised per key by an advisory file lock, so
  several processes may write at once; a write keeps the better of the
  stored and the new order (lower cost; ties keep the stored one);
* every loaded order is checked: a file that cannot be read (no
  permission, a directory), is not UTF-8 or valid JSON (truncated, nested
  too deeply), is not ours, was written for another key or inputs, whose
  order is not a permutation of the graph's eliminable vertices or whose
  lower bound exceeds the order's cost gives a :class:`CacheWarning` naming
  the file and counts as a miss (the next write replaces it, an empty
  directory in its place included); the cost of a loaded order is
  recomputed with :func:`ccjax.eliminate.plan_elimination` and the recorded
  cost is never trusted;
* no state is kept in memory between calls.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence, TypeVar, Union

if TYPE_CHECKING:
    from ccjax.graph import Graph

ENV_VAR = "CCJAX_CACHE_DIR"
FORMAT = "ccjax-order-cache"
VERSION = 1
_DISABLED = ("", "0", "off", "none", "false", "no")

PathLike = Union[str, os.PathLike]
T = TypeVar("T")


class CacheWarning(UserWarning):
    """A cache file was unreadable, foreign or stale and was ignored."""


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One stored order.  ``cost`` is the recorded cost (recomputed on load
    by :meth:`OrderCache.get`); ``label`` is free text (e.g. a task name);
    ``fingerprint`` is that of the graph the order was stored for (dtypes
    included, so it may differ from the graph that finds it by ``key``)."""

    key: str
    fingerprint: str
    diff_leaves: tuple[int, ...]
    order: tuple[int, ...]
    cost: int
    method: str = ""
    lower_bound: Optional[int] = None
    label: str = ""
    n_eliminable: int = 0
    created: float = 0.0

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["diff_leaves"] = list(self.diff_leaves)
        d["order"] = list(self.order)
        return {"format": FORMAT, "version": VERSION, **d}

    @staticmethod
    def from_json(d: dict) -> "CacheEntry":
        """Parse a record; ``ValueError`` for anything that is not one."""
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError("not a ccjax order-cache record")
        try:
            lb = d.get("lower_bound")
            entry = CacheEntry(
                key=str(d["key"]), fingerprint=str(d["fingerprint"]),
                diff_leaves=tuple(_as_int(x) for x in d["diff_leaves"]),
                order=tuple(_as_int(x) for x in d["order"]), cost=_as_int(d["cost"]),
                method=str(d.get("method", "")), lower_bound=None if lb is None else _as_int(lb),
                label=str(d.get("label", "")), n_eliminable=_as_int(d.get("n_eliminable", 0)),
                created=float(d.get("created", 0.0)))
        except (KeyError, TypeError, OverflowError) as e:
            raise ValueError(f"malformed record: {e!r}") from None
        return entry


def _as_int(x) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"expected an integer, got {x!r}")
    return x


_STRUCTURE_KEYS: weakref.WeakKeyDictionary[Graph, str] = weakref.WeakKeyDictionary()


def structure_key(graph: Graph) -> str:
    """A hash of what an order's validity and cost depend on: vertices (id,
    kind, label, shape), edges with their structures, inputs and outputs.
    Unlike ``graph.fingerprint`` it leaves dtypes out (see module docstring)."""
    key = _STRUCTURE_KEYS.get(graph)
    if key is None:
        h = hashlib.sha256()
        for v in graph.vertices:
            h.update(repr((v.id, v.kind, v.label, v.shape)).encode())
        for (u, w), st in sorted(graph.edges.items()):
            h.update(repr((u, w, st)).encode())
        h.update(repr((graph.inputs, graph.outputs)).encode())
        key = _STRUCTURE_KEYS[graph] = h.hexdigest()[:20]
    return key


def graph_key(graph: Graph) -> str:
    """Cache key of a graph: :func:`structure_key` plus differentiated input leaves."""
    leaves = "_".join(str(i) for i in graph.diff_leaves) or "none"
    return f"{structure_key(graph)}-{leaves}"


def default_cache_dir() -> Optional[Path]:
    """The cache root from ``CCJAX_CACHE_DIR`` or the platform's user cache
    directory; None when disabled by the environment variable."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return None if env.strip().lower() in _DISABLED else Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ccjax"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def warn(msg: str) -> None:
    warnings.warn(msg, CacheWarning, stacklevel=3)


def short(what: object, limit: int = 200) -> str:
    """``str(what)`` cut to ``limit`` characters: a hostile file must not
    flood the warning (and an order error lists every vertex)."""
    text = str(what)
    return text if len(text) <= limit else text[:limit] + "..."


def read_record(path: Path, parse: Callable[[object], T], what: str, quiet: bool = False) -> Optional[T]:
    """``parse`` of the JSON in ``path``: None when the file is missing, and
    None with a warning naming ``what`` (unless ``quiet``) when it cannot be
    read or is not a record ``parse`` accepts (``parse`` raises
    ``ValueError``).  A cache file is never trusted, so no content may turn
    a lookup into an exception."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        if not quiet:
            warn(f"{what}: cannot read {path}: {e}; ignoring it")
        return None
    try:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; deeply
        # nested JSON exhausts the parser's recursion limit.
        return parse(json.loads(data.decode("utf-8")))
    except (ValueError, RecursionError) as e:
        if not quiet:
            warn(f"{what}: {path} is corrupt or foreign ({type(e).__name__}: {short(e)}); "
                 f"ignoring it, it will be rebuilt")
        return None


def clear_records(directory: Optional[Path]) -> int:
    """Delete the ``*.json`` records (and stray lock and temporary files) in
    ``directory``; returns the number of records removed."""
    if directory is None or not directory.is_dir():
        return 0
    n = 0
    for path in directory.iterdir():
        if path.suffix == ".json":
            n += 1
        if path.suffix in (".json", ".lock", ".tmp"):
            with contextlib.suppress(OSError):
                path.unlink()
    return n


def write_json_atomic(directory: Path, stem: str, data: dict) -> Path:
    """Write ``data`` to ``directory/stem.json`` atomically (a temporary file
    in the same directory, synced, then ``os.replace``); an empty directory
    squatting the name is removed first.  Returns the file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        target = directory / f"{stem}.json"
        if target.is_dir() and not target.is_symlink():
            target.rmdir()  # a full directory is left alone (OSError)
        os.replace(tmp, target)
        return target
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class OrderCache:
    """The on-disk order store (see module docstring).

    ``OrderCache()`` uses :func:`default_cache_dir`; ``OrderCache(path)`` a
    given root.  ``enabled`` is False when the environment disabled it, and
    then every lookup misses and every write is skipped.
    """

    def __init__(self, path: Optional[PathLike] = None):
        self.root: Optional[Path] = Path(path).expanduser() if path is not None else default_cache_dir()

    @property
    def enabled(self) -> bool:
        return self.root is not None

    @property
    def directory(self) -> Optional[Path]:
        return None if self.root is None else self.root / "orders"

    @property
    def tuned_directory(self) -> Optional[Path]:
        """Where :mod:`ccjax.tuning` keeps its measurements (same root)."""
        return None if self.root is None else self.root / "tuned"

    def _file(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    # -- reading ---------------------------------------------------------------
    def _read(self, path: Path, quiet: bool = False) -> Optional[CacheEntry]:
        """The record in ``path``, or None (with a warning unless ``quiet``)
        for anything that is not one of ours."""
        entry = read_record(path, CacheEntry.from_json, "ccjax order cache", quiet)
        if entry is not None and entry.key != path.stem:
            if not quiet:
                warn(f"ccjax order cache: {path} holds key {short(repr(entry.key))}; ignoring it")
            return None
        return entry

    def get(self, graph: Graph) -> Optional[CacheEntry]:
        """The stored order for ``graph``, validated, with its cost recomputed;
        None on a miss or when the stored record cannot be trusted."""
        from ccjax.eliminate import OrderError, plan_elimination, validate_order  # JAX: not for `cache list`

        if not self.enabled:
            return None
        path = self._file(graph_key(graph))
        entry = self._read(path)
        if entry is None:
            return None
        if entry.diff_leaves != tuple(graph.diff_leaves):
            warn(f"ccjax order cache: {path} belongs to another graph; ignoring it, it will be rebuilt")
            return None
        try:
            order = validate_order(graph, entry.order)
        except OrderError as e:
            warn(f"ccjax order cache: stale order in {path} ({short(e)}); ignoring it, it will be rebuilt")
            return None
        cost = plan_elimination(graph, order).report.mults
        if entry.lower_bound is not None and not 0 <= entry.lower_bound <= cost:
            # A bound above the order's real cost is impossible; trusting it
            # would let a later search report a false optimum.
            warn(f"ccjax order cache: {path} records the impossible lower bound {entry.lower_bound} "
                 f"(the order costs {cost}); ignoring it, it will be rebuilt")
            return None
        return dataclasses.replace(entry, order=order, cost=cost)

    def entries(self) -> list[CacheEntry]:
        """All readable records (unreadable ones are skipped silently)."""
        if not self.enabled or not self.directory.is_dir():
            return []
        out = []
        for path in sorted(self.directory.glob("*.json")):
            entry = self._read(path, quiet=True)
            if entry is not None:
                out.append(entry)
        return out

    # -- writing ---------------------------------------------------------------
    def put(self, graph: Graph, order: Sequence[int], cost: Optional[int] = None, method: str = "",
            lower_bound: Optional[int] = None, label: str = "") -> Optional[CacheEntry]:
        """Store ``order`` for ``graph`` unless an order at least as cheap is
        stored already.  Returns the entry now stored (None if disabled or
        the directory is not writable, which only warns)."""
        from ccjax.eliminate import plan_elimination, validate_order  # JAX: not for `cache list`

        if not self.enabled:
            return None
        order = validate_order(graph, order)
        real = plan_elimination(graph, order).report.mults
        if cost is not None and cost != real:
            raise ValueError(f"order costs {real} multiplications, not {cost}")
        key = graph_key(graph)
        new = CacheEntry(key, graph.fingerprint, tuple(graph.diff_leaves), order, real, method,
                         lower_bound, label, len(graph.eliminable), time.time())
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with _locked(self.directory / f"{key}.lock"):
                old = self.get(graph)
                if old is not None and old.cost <= new.cost:
                    if lower_bound is not None and (old.lower_bound is None or lower_bound > old.lower_bound):
                        old = dataclasses.replace(old, lower_bound=min(lower_bound, old.cost))
                        self._write(old)
                    return old
                if old is not None and old.lower_bound is not None:
                    best_lb = max(old.lower_bound, lower_bound or 0)
                    new = dataclasses.replace(new, lower_bound=min(best_lb, new.cost))
                if not new.label and old is not None:
                    new = dataclasses.replace(new, label=old.label)
                self._write(new)
                return new
        except OSError as e:
            warn(f"ccjax order cache: cannot write to {self.directory}: {e}")
            return None

    def _write(self, entry: CacheEntry) -> None:
        write_json_atomic(self.directory, entry.key, entry.to_json())

    def remove(self, key: str) -> bool:
        """Delete one record; True if it existed."""
        if not self.enabled:
            return False
        try:
            self._file(key).unlink()
        except FileNotFoundError:
            return False
        with contextlib.suppress(OSError):
            (self.directory / f"{key}.lock").unlink()
        return True

    def clear(self) -> int:
        """Delete every record (and stray temporary/lock files); returns the
        number of records removed."""
        return clear_records(self.directory) if self.enabled else 0
