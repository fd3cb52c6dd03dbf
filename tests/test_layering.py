"""Imports point downstream only: ``protocol`` is sans-IO and never imports ``engine``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The Trio client is the one module of protocol/ allowed to do I/O.
IO_MODULES = {"trio", "trio_websocket", "socket", "asyncio", "lmdb", "selectors"}
IO_ALLOWED = {"client.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_protocol_never_imports_engine_or_io() -> None:
    for path in sorted((ROOT / "protocol").glob("*.py")):
        names = imported_modules(path)
        assert "engine" not in names, path
        if path.name not in IO_ALLOWED:
            assert not names & IO_MODULES, (path, names & IO_MODULES)


def test_tests_and_bench_are_not_imported_by_the_product() -> None:
    for package in ("protocol", "engine"):
        for path in sorted((ROOT / package).rglob("*.py")):
            assert not imported_modules(path) & {"tests", "bench"}, path


# engine modules, upstream first: a module may import only modules listed after it.
ENGINE_ORDER = [
    "docs", "cli", "admin_cli", "serve", "testing", "app", "gateway", "connection", "http", "admin", "operations", "router", "supervisor",
    "room", "logic", "state", "presence", "chat", "revocations", "store", "websocket", "outbox", "peer", "metrics", "codes", "config",
    "keys", "errors", "logs",
]


def engine_imports(path: Path) -> set[str]:
    """Engine modules imported at run time (imports under ``if TYPE_CHECKING:`` are for types only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.level == 0 and node.module and node.module.startswith("engine."):
                names.add(node.module.split(".")[1])
            elif node.level == 2 and node.module:  # from ..x inside engine/store
                names.add(node.module.split(".")[0])
    return names


def test_engine_imports_point_downstream() -> None:
    rank = {name: index for index, name in enumerate(ENGINE_ORDER)}
    for path in sorted((ROOT / "engine").rglob("*.py")):
        if path.name == "__init__.py" and path.parent.name == "engine":
            continue
        module = "store" if path.parent.name == "store" else path.stem
        assert module in rank, f"add engine/{path.name} to ENGINE_ORDER"
        for imported in engine_imports(path):
            if imported == module or imported not in rank:
                continue
            assert rank[imported] > rank[module], f"engine/{path.relative_to(ROOT / 'engine')} imports {imported} (upstream)"
