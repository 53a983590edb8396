"""The shape of the code, read from its imports (every ``import`` in a module, at its top or inside a
function): no cycle between privedge's modules, and the layout's rules of who may import whom."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "gateway", "workers", "sensors", "privedge", "broker", "models", "schemas", "bench")


def import_graph() -> dict[str, set[str]]:
    """module -> the privedge modules it imports."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_broker_schemas_and_common_import_no_service_or_cli():
    graph = import_graph()
    for name, deps in graph.items():
        top = name.split(".")[0]
        if top == "broker":
            assert not {d for d in deps if d.split(".")[0] == "privedge"}, (name, deps)
        if top == "schemas":
            assert all(d.split(".")[0] == "schemas" for d in deps), (name, deps)
        if top == "common":  # what both services share: beside them, never above them
            assert all(d.split(".")[0] in ("common", "schemas") for d in deps), (name, deps)
        if top in ("gateway", "workers"):
            other = "workers" if top == "gateway" else "gateway"
            assert not {d for d in deps if d.split(".")[0] == other}, (name, deps)
