"""The package's import layers: one way only, and no cycle.

Every ``import ccjax...``/``from ccjax... import`` in the package counts,
at module level or inside a function (a lazy import is still a
dependency).  ``LAYERS`` is written once here and drawn in
``docs/design.md``; a module may import its own layer or lower ones, never
a higher one, and the module graph has no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ccjax"

#: Lowest first.  A module belongs to the first layer one of whose prefixes it starts with.
LAYERS = (
    ("base", ("ccjax._jaxpr", "ccjax.numpy_eval", "ccjax.structure", "ccjax.tasks")),
    ("rules", ("ccjax.rules",)),
    ("graph", ("ccjax.graph", "ccjax.roll")),
    ("plan", ("ccjax.eliminate", "ccjax.branches", "ccjax.trace", "ccjax.counting", "ccjax.coloring",
              "ccjax.jax_modes")),
    ("cache", ("ccjax.cache",)),
    ("orders", ("ccjax.orders",)),
    ("learned", ("ccjax.search",)),
    ("resolve", ("ccjax.resolve", "ccjax.tuning")),
    ("api", ("ccjax.api", "ccjax")),
    ("cli", ("ccjax.cli",)),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best = None
    for k, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                if best is None or len(p) > best[1]:
                    best = (k, len(p))
    if best is None:
        raise AssertionError(f"module {module} is in no layer: add it to LAYERS and docs/design.md")
    return best[0]


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The ccjax modules ``path`` imports (``from ccjax.x import y`` counts
    as ``ccjax.x.y`` when that is a module, else ``ccjax.x``)."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "ccjax" or name.startswith("ccjax."):
                while name not in modules and "." in name:
                    name = name.rpartition(".")[0]
                if name != me:
                    found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imported_modules(p, set(files)) for m, p in files.items()}


def test_every_module_has_a_layer():
    for m in import_graph():
        layer_of(m)


def test_imports_only_go_down():
    wrong = []
    for m, deps in import_graph().items():
        for d in deps:
            if layer_of(d) > layer_of(m):
                wrong.append(f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})")
    assert not wrong, "imports from a lower layer into a higher one:\n" + "\n".join(sorted(wrong))


def find_cycle(graph: dict[str, set[str]]):
    """One cycle of ``graph`` as a list of nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for w in sorted(graph.get(u, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_should():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("ccjax.orders.search") < layer_of("ccjax.search.api") < layer_of("ccjax.resolve")
    assert layer_of("ccjax.resolve") < layer_of("ccjax.api") < layer_of("ccjax.cli.search")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("ccjax_other.module")


def test_layers_are_documented():
    design = (PACKAGE.parent / "docs" / "design.md").read_text()
    for name, prefixes in LAYERS:
        for p in prefixes:
            assert f"`{p}`" in design, f"docs/design.md does not place {p} (layer {name})"


def test_public_names_stay_importable():
    import ccjax

    for name in ccjax.__all__:
        assert hasattr(ccjax, name), name
