"""The layering, checked from the source: no two parts of proxy/ or backends/ import each other in a
ring, backends/ knows nothing of proxy/ or of HTTP frameworks, domain.py imports nothing of the
server, and the core runs without Starlette or FastAPI loaded.

The parts are proxy's subpackages and top-level modules (proxy.core, proxy.limits, proxy.errors,
...) and backends' modules. Every import that runs counts, also those inside functions; imports
under `if TYPE_CHECKING:` (annotations only) do not."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("proxy", "backends")
HTTP_FRAMEWORKS = ("fastapi", "starlette", "uvicorn")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules (or module attributes) `path` imports."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if node.module:
                found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)  # `from . import x` may be a module
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node, except what sits under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _graph() -> dict[str, set[str]]:
    """module -> the modules of proxy/ and backends/ (and third-party top-level names) it imports."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            parts = imported.split(".")
            # the longest prefix that is one of our modules, else the third-party top-level name
            for i in range(len(parts), 0, -1):
                if ".".join(parts[:i]) in modules:
                    targets.add(".".join(parts[:i]))
                    break
            else:
                targets.add(parts[0])
        graph[name] = targets - {name}
    return graph


def _part(module: str) -> str:
    """proxy.core.gateway -> proxy.core; proxy.errors -> proxy.errors; backends.router stays."""
    return ".".join(module.split(".")[:2])


def _rings(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    rings: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                rings.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return rings


def _ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def test_no_ring_among_the_parts_of_proxy_and_backends():
    graph = _graph()
    parts: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], str] = {}
    for module, targets in graph.items():
        for target in targets:
            if _ours(target) and _part(target) != _part(module) and target != "proxy":
                parts[_part(module)].add(_part(target))
                why.setdefault((_part(module), _part(target)), f"{module} -> {target}")
    rings = _rings(parts)
    described = [[why[(a, b)] for a in ring for b in ring if (a, b) in why] for ring in rings]
    assert not rings, f"packages import each other in a ring: {described}"


def test_no_ring_among_modules():
    graph = _graph()
    rings = _rings({m: {t for t in ts if _ours(t)} for m, ts in graph.items()})
    assert not rings, f"modules import each other in a ring: {rings}"


def test_backends_import_neither_proxy_nor_http_frameworks():
    bad = {m: sorted(t for t in ts if t.split(".")[0] in ("proxy", *HTTP_FRAMEWORKS))
           for m, ts in _graph().items() if m.startswith("backends")}
    assert not {m: ts for m, ts in bad.items() if ts}


def test_domain_imports_nothing_of_the_server():
    assert not {t for t in _graph()["proxy.domain"] if _ours(t)}


def test_the_core_and_the_limiter_load_without_an_http_framework():
    code = ("import sys; import proxy.core, proxy.dialects.openai, proxy.limits.pipe; "
            f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {HTTP_FRAMEWORKS!r}); "
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_the_graph_sees_imports():
    """The checks above are only as good as the graph: it must see known edges of each kind."""
    graph = _graph()
    assert "proxy.core.attempts" in graph["proxy.core.gateway"]  # from .attempts import ...
    assert "proxy.domain" in graph["proxy.core.gateway"]  # from ..domain import ...
    assert "backends.router" in graph["proxy.core.gateway"]  # from backends.router import ...
    assert "backends.errors" in graph["backends.router"]  # from . import errors
    assert "backends.llamacpp" in graph["backends.registry"]  # an import inside a function
    typed_only = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\nimport y\n")
    assert {n.names[0].name for n in _runtime_nodes(typed_only) if isinstance(n, ast.Import)} == {"y"}
    assert _rings({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
