"""The package's import graph: no cycle anywhere, and no import against the layer order.

Every import counts: top-level, inside functions, under ``TYPE_CHECKING``. A type-only
cycle is still two layers that know each other (docs/design.md, Layout: the lower layer states what
it needs as a Protocol instead).
"""

from __future__ import annotations

import ast
from pathlib import Path

import xinterface

PACKAGE = Path(xinterface.__file__).parent

# Bottom up. A module may import from its own layer and from layers below it, never above.
# The same list is in docs/design.md's Layout section.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("errors", "checks", "_version")),
    ("KVM ABI", ("kvm", "accel", "_fastloop", "_dataplane")),
    ("memory and buses", ("memory", "grace", "iobus")),
    ("kernel fast paths", ("delivery",)),
    ("the VM", ("runstate", "vm")),
    ("xinterface", ("refcount", "maps", "xioevent", "interface")),
    ("loaders", ("loader",)),
    ("runner", ("runner", "gdb")),
    ("devices", ("devices",)),
    ("virtio", ("virtio",)),
    ("vhost-user backend and frontend", ("vhost_user",)),
    ("boards", ("boards", "spec", "build", "snapshot")),
    ("monitoring", ("qmp", "observe")),
    ("front ends", ("console", "frontend", "cli", "launch", "bench", "__main__", "pytest_plugin",
                    "testing", "")),
]


def _module_name(path: Path) -> str:
    parts = ["xinterface", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    # A compiled module is known by its stub (.pyi), whether it is built or not.
    return (any((PACKAGE / rel).with_suffix(ext).is_file() for ext in (".py", ".pyi"))
            or (PACKAGE / rel / "__init__.py").is_file())


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def import_graph() -> dict[str, set[str]]:
    """Module -> the xinterface modules it imports (package inits included)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        is_package = path.name == "__init__.py"
        edges = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "xinterface"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    source = _resolve(module, is_package, node.level, node.module)
                elif node.module and node.module.split(".")[0] == "xinterface":
                    source = node.module
                else:
                    continue
                targets = []
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if _is_module(sub) else source)
            else:
                continue
            edges.update(t for t in targets if t != module)
    return graph


def layer_of(module: str) -> int:
    first = module.split(".")[1] if "." in module else ""
    for index, (_, names) in enumerate(LAYERS):
        if first in names:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/design.md's Layout")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_known_edges() -> None:
    """The walker itself: relative, absolute, function-level and type-only imports."""
    graph = import_graph()
    assert "xinterface.errors" in graph["xinterface.iobus"]
    assert "xinterface.kvm.uapi" in graph["xinterface.runner.vcpu_loop"]
    assert "xinterface.runner.machine" in graph["xinterface"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert find_cycles(import_graph()) == []


def test_imports_follow_the_layers() -> None:
    wrong = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
             for m, targets in import_graph().items() for t in sorted(targets)
             if layer_of(t) > layer_of(m)]
    assert wrong == []
