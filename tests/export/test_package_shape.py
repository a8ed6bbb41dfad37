"""The shape of the package, held by its source: no import circle anywhere in ``export/`` (module-level,
function-level and type-checking imports alike, read with ``ast``), and no module over 500 lines but the Jetson's
one-file inference script."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"blocks": "blocks_export.blocks", "export": "blocks_export.export", "plugins": "blocks_export.plugins",
            "runtime": "blocks_export.runtime"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for folder in PACKAGES for p in sorted((ROOT / folder).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``path`` imports anywhere in its body (functions and ``TYPE_CHECKING`` blocks too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}  # ``from . import ultralytics``: a module
    return {m for m in found if m in known and m != name}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, set(g)) for g in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    start = min(group)
    path, seen = [start], {start}
    while True:
        nxt = min(w for w in graph[path[-1]] if w in group)
        if nxt in seen:
            return path[path.index(nxt):] + [nxt]
        path.append(nxt)
        seen.add(nxt)


def test_the_cycle_finder_finds_a_circle_and_passes_a_tree() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_relative_imports_inside_functions_are_read(tmp_path: Path) -> None:
    known = {"blocks_export.export.a", "blocks_export.export.b", "blocks_export.export.trt.c",
             "blocks_export.runtime.infer"}
    source = tmp_path / "a.py"
    source.write_text("def f():\n    from .b import x\n    from .trt.c import y\n"
                      "    from ..runtime.infer import z\n")
    assert imports_of("blocks_export.export.a", source, known) == known - {"blocks_export.export.a"}


def test_export_has_no_import_circle() -> None:
    modules = _modules()
    known = set(modules)
    graph = {n: imports_of(n, p, known) for n, p in modules.items() if n.startswith("blocks_export.export")}
    graph = {n: {m for m in deps if m in graph} for n, deps in graph.items()}
    assert len(graph) > 20
    cycles = find_cycles(graph)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


MAX_LINES = 500
# The one file allowed past the limit: the Jetson's inference script stays one file (numpy + onnxruntime only).
EXEMPT = {"runtime/infer.py"}


def test_no_module_is_over_the_line_limit() -> None:
    over = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            lines = len(path.read_text().splitlines())
            if rel not in EXEMPT and lines > MAX_LINES:
                over[rel] = lines
    assert not over, f"modules over {MAX_LINES} lines (split them along their seams): {over}"
