"""``ccjax cache``: list or clear the order cache (clearing also drops ``ccjax tune``'s records)."""
from __future__ import annotations

from ccjax.cli.common import EXIT_OK, _cache_options


def cmd_cache(ns) -> int:
    from ccjax.cache import OrderCache, clear_records

    store = OrderCache(ns.cache_dir) if ns.cache_dir else OrderCache()
    if not store.enabled:
        print("the order cache is disabled (CCJAX_CACHE_DIR)")
        return EXIT_OK
    if ns.action == "clear":
        n = store.clear()
        tuned = clear_records(store.tuned_directory)
        print(f"removed {n} cached order{'s' if n != 1 else ''} from {store.directory}"
              + (f" and {tuned} tuning record{'s' if tuned != 1 else ''} (ccjax tune)" if tuned else ""))
        return EXIT_OK
    entries = store.entries()
    print(f"{len(entries)} cached order{'s' if len(entries) != 1 else ''} in {store.directory}")
    if entries:
        print(_table(entries))
    return EXIT_OK


#: The columns of ``ccjax cache list``: header, cell of an entry, right-aligned.
_COLUMNS = (("key", lambda e: e.key, False), ("elim", lambda e: str(e.n_eliminable), True),
            ("cost", lambda e: str(e.cost), True),
            ("bound", lambda e: "-" if e.lower_bound is None else str(e.lower_bound), True),
            ("method", lambda e: e.method or "-", False), ("label", lambda e: e.label or "-", False))


def _table(entries) -> str:
    """The entries as a table whose columns fit their widest cell: keys in
    full (they name the files, and ``ccjax cost``/``show`` name the entry
    ``auto`` used by them), the free-text label last."""
    rows = [[h for h, _, _ in _COLUMNS]] + [[cell(e) for _, cell, _ in _COLUMNS] for e in entries]
    widths = [max(len(r[k]) for r in rows) for k in range(len(_COLUMNS))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if right else c.ljust(w) for c, w, (_, _, right) in zip(r, widths, _COLUMNS)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="list or clear the order cache")
    p.add_argument("action", choices=("list", "clear"))
    _cache_options(p)
    p.set_defaults(func=cmd_cache)
