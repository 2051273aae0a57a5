"""``ccjax cache``: list or clear the order cache."""
from __future__ import annotations

from ccjax.cli.common import EXIT_OK, _cache_options


def cmd_cache(ns) -> int:
    from ccjax.cache import OrderCache

    store = OrderCache(ns.cache_dir) if ns.cache_dir else OrderCache()
    if not store.enabled:
        print("the order cache is disabled (CCJAX_CACHE_DIR)")
        return EXIT_OK
    if ns.action == "clear":
        n = store.clear()
        print(f"removed {n} cached order{'s' if n != 1 else ''} from {store.directory}")
        return EXIT_OK
    entries = store.entries()
    print(f"{len(entries)} cached order{'s' if len(entries) != 1 else ''} in {store.directory}")
    if entries:
        print(f"{'key':34s} {'label':22s} {'elim':>5s} {'cost':>9s} {'bound':>9s}  method")
        for e in entries:
            lb = "-" if e.lower_bound is None else str(e.lower_bound)
            print(f"{e.key[:34]:34s} {e.label[:22]:22s} {e.n_eliminable:5d} {e.cost:9d} {lb:>9s}  {e.method}")
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="list or clear the order cache")
    p.add_argument("action", choices=("list", "clear"))
    _cache_options(p)
    p.set_defaults(func=cmd_cache)
