"""Every MQTT topic, Redis key and stream field is built in ``schemas/names.py`` and nowhere else.

The test reads the source of every package (AST string constants, f-string parts included, docstrings
left out) and fails on a literal that spells a piece of a topic or key: a key segment (``:features:``,
``:results:``, ``:cursor``...), a topic segment (``/status``, ``/+/``, ``/gateway/``...) or the stream
field ``m``. A name that needs building goes through :class:`schemas.names.Names` instead.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "gateway", "workers", "sensors", "privedge", "broker", "models", "schemas")
ONE_PLACE = REPO / "schemas" / "names.py"
PIECES = re.compile(r":(features|results|dead|media):|:(cursor|seen)\b|privedge[:/][A-Za-z0-9_{+]"
                    r"|/(status|stats|result|errors|image|audio)\b|/\+/|/gateway/|homeassistant/")
"""Key segments, topic segments and the default prefix used as a key or topic."""
FIELDS = ("m",)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        # attribute docstrings: a bare string right after an assignment
        body = getattr(node, "body", None)
        for i, stmt in enumerate(body if isinstance(body, list) else []):
            if i and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                ids.add(id(stmt.value))
    return ids


def literal_names(path: Path) -> list[tuple[int, str]]:
    """(line, literal) of every string constant in ``path`` that spells a piece of a topic or key."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in skip:
            continue
        value = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
        if not isinstance(value, str):
            continue
        if value in FIELDS or PIECES.search(value):
            found.append((node.lineno, value))
    return found


def test_no_topic_key_or_field_literal_outside_schemas_names():
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path == ONE_PLACE:
                continue
            offenders += [f"{path.relative_to(REPO)}:{line}: {value!r}" for line, value in literal_names(path)]
    assert not offenders, "build these through schemas.names.Names:\n" + "\n".join(offenders)


def test_the_check_finds_what_it_looks_for(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('"""doc /status"""\nx = "privedge:results:" + gw\ny = f"{p}/+/image"\nz = {b"m": 1}\n'
                   'w = "privedge: unknown command"\nv = t.endswith("/result")\n')
    assert [v for _, v in literal_names(src)] == ["privedge:results:", "/+/image", "m", "/result"]
