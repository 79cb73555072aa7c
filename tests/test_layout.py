"""The package's structure, read from the source with ``ast``: no import cycles, no stage importing
another stage, ``core`` importing nothing else from geobuild."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "geobuild"


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the geobuild modules it imports (anywhere in the file, lazy imports included)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_ancestor(pkg: str, mod: str) -> bool:
    return mod.startswith(pkg + ".")


def test_the_graph_sees_imports():
    g = import_graph()
    assert "geobuild.core.errors" in g["geobuild.core.runner"]
    assert "geobuild.core.runner" in g["geobuild.commands.embed"]  # a lazy import inside a function


def test_no_import_cycles():
    g = import_graph()
    # a package __init__ that re-exports its own modules is not a cycle with them
    pruned = {m: {t for t in ts if not (_is_ancestor(t, m))} for m, ts in g.items()}
    assert _cycles(pruned) == []


def test_no_stage_imports_another_stage():
    g = import_graph()

    def stage_of(m: str) -> str | None:
        parts = m.split(".")
        return parts[2] if len(parts) > 2 and parts[1] == "stages" else None

    bad = [(m, t) for m, ts in g.items() for t in ts if stage_of(m) and stage_of(t) and stage_of(m) != stage_of(t)]
    assert bad == []


def test_core_imports_nothing_else_from_geobuild():
    g = import_graph()
    bad = [(m, t) for m, ts in g.items() if m.startswith("geobuild.core") for t in ts if not t.startswith("geobuild.core")]
    assert bad == []


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
