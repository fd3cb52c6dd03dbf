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
