"""The design's two promises, read from the imports: the gateway never needs analyzer weights, and a
worker never sees raw media (the comparison baselines that need both live in bench/baselines/).

Walked: every module of the service package and, transitively, every module of ours that those import
(a shared package, say), except the modules of ``models/`` and ``schemas/``: those hold both halves by
design (a bundle carries the extractor and the analyzer, the wire formats every message family), so at
them the names imported are checked instead. In each walked module the rules look at every ``import``
(at the top or inside a function), every attribute read, every string constant but docstrings, and
every call of ``check_bundle``.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from tests.test_import_graph import PACKAGES, REPO, import_graph
from tests.test_names_in_one_place import _docstrings

BOTH_HALVES = ("models", "schemas")


@dataclass(frozen=True)
class Rules:
    """What the walked modules of one service may not do."""

    modules: tuple[str, ...]            # modules (ours or not) they may not import, with their submodules
    names: frozenset[str]               # names they may not import from anywhere nor read as attributes
    text: tuple[str, ...] = ()          # what no string constant (docstrings aside) may hold
    home_part_only: bool = False        # every check_bundle call says part="home" (never analyzer.*)


def defined_in(*modules: str) -> frozenset[str]:
    """The functions and classes defined at the top of our ``modules``."""
    out = set()
    for m in modules:
        tree = ast.parse((REPO / (m.replace(".", "/") + ".py")).read_text())
        out |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return frozenset(out)


ANALYZER = Rules(
    modules=("workers", "bench", "models.audit", "models.train_cli"),
    names=frozenset({"load_full", "load_analyzer", "Analyzer", "FullModel", "ANALYZER_FILE", "analyze_batch",
                     "predict_batch", "predict_raw"}),
    text=("analyzer.",),
    home_part_only=True)
"""The gateway: no analyzer code, no analyzer.* file, no bundle checked as a whole (that reads analyzer.*)."""

MEDIA_DECODING = Rules(
    modules=("PIL", "cv2", "imageio", "skimage", "torchvision", "soundfile", "librosa", "audioread", "pydub",
             "torchaudio", "av", "wave", "audioop", "scipy.io.wavfile",
             "schemas.media", "schemas.upload", "models.preprocess", "models.speech", "gateway", "bench"),
    names=defined_in("schemas.media", "schemas.upload", "models.preprocess")
    | {"SpeechFrontEnd", "pixels", "media", "wave", "joined", "preprocess"})
"""A worker: no image or audio decoding library, none of our media decoders, frames, chunks or uploads."""


def walked(package: str, graph: dict[str, set[str]]) -> list[str]:
    """``package``'s modules and, transitively, the modules of ours they import, but not into models/
    or schemas/."""
    todo = [m for m in graph if m.split(".")[0] == package]
    seen = set(todo)
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen and dep.split(".")[0] not in BOTH_HALVES:
                seen.add(dep)
                todo.append(dep)
    return sorted(seen)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def offences(path: Path, rules: Rules) -> list[str]:
    """``line: what`` for everything in the module at ``path`` that breaks ``rules``."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    found = []

    def flag(node: ast.AST, what: str) -> None:
        found.append((node.lineno, node.col_offset, what))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _under(a.name, rules.modules):
                    flag(node, f"imports {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                if _under(node.module, rules.modules) or _under(f"{node.module}.{a.name}", rules.modules):
                    flag(node, f"imports {node.module}.{a.name}")
                elif a.name in rules.names:
                    flag(node, f"imports {a.name} from {node.module}")
        elif isinstance(node, ast.Attribute) and node.attr in rules.names:
            flag(node, f"reads .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            for t in rules.text:
                if t in node.value:
                    flag(node, f"string {node.value!r}")
        elif rules.home_part_only and isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func == "check_bundle":
                part = next((k.value for k in node.keywords if k.arg == "part"), None)
                if not (isinstance(part, ast.Constant) and part.value == "home"):
                    flag(node, "check_bundle without part=\"home\" (the whole bundle: analyzer.* too)")
    return [f"{line}: {what}" for line, _, what in sorted(found, key=lambda f: f[:2])]


def _paths() -> dict[str, Path]:
    out = {}
    for path in (p for package in PACKAGES for p in (REPO / package).rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def _check(package: str, rules: Rules) -> list[str]:
    graph, paths = import_graph(), _paths()
    modules = walked(package, graph)
    assert f"{package}.service" in modules  # the walk found the service
    return [f"{m}:{o}" for m in modules for o in offences(paths[m], rules)]


def test_the_gateway_imports_no_analyzer_code_and_loads_no_analyzer_file():
    bad = _check("gateway", ANALYZER)
    assert not bad, "the gateway never needs analyzer weights:\n" + "\n".join(bad)


def test_workers_import_no_image_or_audio_decoding():
    bad = _check("workers", MEDIA_DECODING)
    assert not bad, "a worker never sees raw media:\n" + "\n".join(bad)


def test_the_rules_find_what_they_look_for(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('"""analyzer.pt in a docstring is fine."""\n'
                   "from models.bundle import load_extractor, load_full\n"
                   "import PIL.Image\n"
                   "from schemas import ImageFrame, Names\n"
                   "def f(d, bundles, msg):\n"
                   "    from workers.analysis import top_k\n"
                   "    check_bundle(d, key=None, allow_unsigned=False)\n"
                   "    check_bundle(d, key=None, allow_unsigned=False, part='home')\n"
                   "    return bundles.load_analyzer(d), 'analyzer.onnx', msg.media()\n")
    assert offences(src, ANALYZER) == [
        "2: imports load_full from models.bundle", "6: imports workers.analysis.top_k",
        "7: check_bundle without part=\"home\" (the whole bundle: analyzer.* too)",
        "9: reads .load_analyzer", "9: string 'analyzer.onnx'"]
    assert offences(src, MEDIA_DECODING) == [
        "3: imports PIL.Image", "4: imports ImageFrame from schemas", "9: reads .media"]
    graph = {"gateway.service": {"shared.redis", "models.bundle"}, "shared.redis": {"shared.backoff"},
             "shared.backoff": set(), "models.bundle": {"models.serving"}, "models.serving": set()}
    assert walked("gateway", graph) == ["gateway.service", "shared.backoff", "shared.redis"]
