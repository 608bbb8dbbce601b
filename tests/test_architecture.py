"""The shape of the code: imports flow one way (no circles) and no source file grows past about
400 lines. Both read the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "src" / "aepurify"
MAX_LINES = 400

# Edges of known circles, left to their owners (none left). Each entry must still exist (the
# test fails when it goes, so the list only shrinks).
KNOWN_CIRCLE_EDGES: set[tuple[str, str]] = set()
# Files over MAX_LINES before this test existed, left to their owners (none left).
KNOWN_LONG_FILES: set[str] = set()


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the aepurify modules it imports anywhere in its file: at the top, under
    ``if TYPE_CHECKING:`` and inside functions. ``from pkg import name`` counts as an import of
    ``pkg.name`` when that is a module, else of ``pkg``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = here[:len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in modules else target)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_the_import_graph_is_read():
    graph = import_graph()
    assert "aepurify.evaluation.run" in graph["aepurify.evaluation.pipeline"]
    assert "aepurify.evaluation.experiment" in graph["aepurify.evaluation.end_to_end"]  # typing


def test_imports_have_no_circles():
    graph = import_graph()
    for source, target in KNOWN_CIRCLE_EDGES:
        assert target in graph[source], f"{source} -> {target} is gone: drop it from the list"
        graph[source].discard(target)
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None


def test_evaluation_stages_import_one_way():
    """Summaries, checks and the report read rows (and a record), never the planning or run
    stages; the report does not read the config either."""
    graph = import_graph()
    earlier = {f"aepurify.evaluation.{m}" for m in ("run", "plan", "experiment", "pipeline")}
    report = [m for m in graph if m.startswith("aepurify.evaluation.report")]
    assert report
    for module in report:
        assert not graph[module] & (earlier | {"aepurify.evaluation.config"}), module
    for module in ("aepurify.evaluation.summary", "aepurify.evaluation.sanity"):
        assert not graph[module] & earlier, module


def test_no_source_file_passes_400_lines():
    too_long = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES and rel not in KNOWN_LONG_FILES:
            too_long[rel] = lines
        if rel in KNOWN_LONG_FILES:  # the list only shrinks
            assert lines > MAX_LINES, f"{rel} is now {lines} lines: drop it from KNOWN_LONG_FILES"
    assert not too_long, f"split these files (more than {MAX_LINES} lines): {too_long}"


def test_no_file_cites_what_the_project_does_not_hold():
    """Code, docs and configs cite the project's own files (docs/methods.md, docs/*.md) and the
    papers, never the planning notes beside the repository (METHODS.md, DESIGN.md, ../shared)."""
    outside = ("METHODS.md", "DESIGN.md", "../shared")
    found = []
    for folder, pattern in (("src", "*.py"), ("docs", "*.md"), ("configs", "*.yaml"),
                            ("benchmarks", "*.py")):
        for path in (REPO / folder).rglob(pattern):
            text = path.read_text(encoding="utf-8")
            found += [f"{path.relative_to(REPO)}: {name}" for name in outside if name in text]
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found += [f"README.md: {name}" for name in outside if name in text]
    assert not found, found
