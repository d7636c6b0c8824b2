"""The package's shape: no import cycle, one-way layers, modules of a readable size.

These read the source with `ast`, so they see imports made inside functions too (a
lazy import hides a cycle from the interpreter, not from a reader); imports under
`if TYPE_CHECKING:` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "styxcache"
MAX_LINES = 500
# A longer module says why in its docstring, after this marker.
LONG_MARKER = "Why this module is long:"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> set[str]:
    """Every styxcache module `name` imports at run time."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:
                    found.add(submodule)
                elif target in MODULES:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(GRAPH[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            connect(node)
    return found


def _is_package_init(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def test_no_import_cycle() -> None:
    # A package's __init__ re-exporting its children is not a cycle of logic.
    cycles = [c for c in _cycles() if not any(_is_package_init(m) for m in c)]
    assert cycles == []


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        # The library never imports its command line.
        ("styxcache", "styxcache.cli"),
        # The cache knows nothing of the scheduler beside it.
        ("styxcache", "styxcache.scheduler"),
        # Nor of the demo.
        ("styxcache", "styxcache.demo"),
    ],
)
def test_layers_point_one_way(lower: str, higher: str) -> None:
    offenders = []
    for name, targets in GRAPH.items():
        if name == lower or not name.startswith(lower + "."):
            continue
        if name == higher or name.startswith(higher + "."):
            continue
        # The CLI and the demo sit on top of everything; they may import anything.
        if name.startswith(("styxcache.cli", "styxcache.demo", "styxcache.scheduler")):
            continue
        bad = sorted(t for t in targets if t == higher or t.startswith(higher + "."))
        if bad:
            offenders.append(f"{name} -> {', '.join(bad)}")
    assert offenders == []


def test_scheduler_never_imports_the_cli() -> None:
    offenders = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if name.startswith("styxcache.scheduler")
        for target in targets
        if target.startswith("styxcache.cli")
    ]
    assert offenders == []


def test_store_layer_knows_no_runner() -> None:
    # Data flows runner -> execution -> key -> store: the store side never looks up.
    upper = {"styxcache.runner", "styxcache.execution"}
    for name in ("styxcache.store", "styxcache.key", "styxcache.manifest"):
        if name in GRAPH:
            assert not (GRAPH[name] & upper), name


def test_modules_are_a_readable_size() -> None:
    too_long = []
    for name, path in MODULES.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if LONG_MARKER not in doc:
            too_long.append(f"{name}: {lines} lines")
    assert too_long == []
