"""``ccjax show``: print a target's graph summary and draw the graph to a PNG."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from ccjax.cli.common import (EXIT_MISSING, EXIT_OK, _cache, _cache_options, _target_options, auto_choice,
                              build_graph, resolve_target)


def cmd_show(ns) -> int:
    t = resolve_target(ns.target, ns.args, ns.argnums, ns.x64)
    g = build_graph(t)
    print(g.summary())
    print(auto_choice(g, _cache(ns))[1])
    if ns.no_picture:
        return EXIT_OK
    out = Path(ns.output) if ns.output else Path(re.sub(r"[^A-Za-z0-9_.-]+", "_", t.name) + ".png")
    try:
        draw_graph(g, out, title=f"{t.name} ({g.fingerprint})")
    except ImportError as e:
        print(f"ccjax: cannot draw the graph: {e}; install matplotlib (pip install matplotlib)",
              file=sys.stderr)
        return EXIT_MISSING
    print(f"wrote {out}")
    return EXIT_OK


def draw_graph(g, path: Path, title: str = "") -> None:
    """Draw ``g`` to ``path`` with matplotlib: one column per layer (longest
    path from the inputs), inputs blue, outputs orange, valued edges solid
    and unit edges (no stored numbers) dashed, vertex ids as labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    live = sorted({u for e in g.edges for u in e})
    kinds = {v.id: v.kind for v in g.vertices}
    preds: dict[int, list[int]] = {v: [] for v in live}
    for (u, w) in g.edges:
        preds[w].append(u)
    depth: dict[int, int] = {}
    for v in live:  # ids are topological
        depth[v] = max((depth[u] + 1 for u in preds[v]), default=0)
    layers: dict[int, list[int]] = {}
    for v in live:
        layers.setdefault(depth[v], []).append(v)
    pos = {}
    for d, vs in layers.items():
        for k, v in enumerate(vs):
            pos[v] = (d, k - (len(vs) - 1) / 2)
    n_layers = max(layers) + 1 if layers else 1
    height = max((len(vs) for vs in layers.values()), default=1)
    fig, ax = plt.subplots(figsize=(min(40, 2 + 0.9 * n_layers), min(40, 2 + 0.5 * height)))
    for (u, w), st in g.edges.items():
        unit = st.val is None
        ax.add_patch(FancyArrowPatch(pos[u], pos[w], arrowstyle="-|>", mutation_scale=7, shrinkA=7, shrinkB=7,
                                     linewidth=0.7, linestyle="--" if unit else "-",
                                     color="#999999" if unit else "#333333"))
    colors = {"input": "#4c9be8", "intermediate": "#dddddd", "output": "#f28e2b"}
    xs = [pos[v][0] for v in live]
    ys = [pos[v][1] for v in live]
    ax.scatter(xs, ys, s=200, c=[colors.get(kinds[v], "#dddddd") for v in live], edgecolors="#555555",
               linewidths=0.5, zorder=3)
    for v in live:
        ax.text(pos[v][0], pos[v][1], str(v), fontsize=6, ha="center", va="center", zorder=4)
    ax.set_title(title or f"graph {g.fingerprint}")
    ax.set_xlim(-0.7, n_layers - 0.3)
    ax.set_ylim(-height / 2 - 0.7, height / 2 + 0.7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("show", help="print the graph summary and draw it to a PNG")
    _target_options(p)
    p.add_argument("-o", "--output", help="picture file (default: TARGET.png)")
    p.add_argument("--no-picture", action="store_true", help="only print the summary")
    p.add_argument("--no-cache", action="store_true", help="do not look up which order auto takes in the cache")
    _cache_options(p)
    p.set_defaults(func=cmd_show)
