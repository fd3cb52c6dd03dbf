"""Imports point downstream only: ``roost.protocol`` is sans-IO and imports nothing outside itself.

Installed, the folders are one package (pyproject.toml maps them): ``engine/`` is ``roost``,
``protocol/`` is ``roost.protocol``, ``bench/`` is ``roost.bench``. A file that imported the folder
names (``import protocol``) would work only from a checkout, and beside ``roost.protocol`` it would
load a second copy of every module (two ``ErrorCode`` enums that compare unequal): nothing may.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {"trio", "trio_websocket", "socket", "asyncio", "lmdb", "selectors", "ssl", "http", "urllib"}
FOLDER_NAMES = {"engine", "protocol", "bench"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports of a file (relative imports stay inside its package)."""
    return {name.split(".")[0] for name in absolute_imports(path)}


def absolute_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_protocol_imports_only_itself_relatively_and_does_no_io() -> None:
    for path in sorted((ROOT / "protocol").glob("*.py")):
        names = imported_modules(path)
        assert not names & (FOLDER_NAMES | {"roost", "tests"}), (path, "relative imports only inside protocol/")
        assert not names & IO_MODULES, (path, names & IO_MODULES)


def test_the_client_imports_only_the_protocol() -> None:
    """``roost.client`` (engine/client.py) is I/O beside the sans-IO protocol: it uses the wire, never the
    server's internals, so it imports no ``roost`` module but ``roost.protocol...`` and nothing relative."""
    path = ROOT / "engine" / "client.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level], "no relative imports"
    ours = {name for name in absolute_imports(path) if name.split(".")[0] in FOLDER_NAMES | {"roost", "tests"}}
    assert ours and all(name.startswith("roost.protocol.") for name in ours), ours


def test_nothing_imports_the_folder_names() -> None:
    for folder in ("engine", "protocol", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            assert not imported_modules(path) & FOLDER_NAMES, (path, "import roost... instead")


def test_engine_imports_its_own_modules_relatively() -> None:
    """One style: inside engine/, ``from .x`` for its own modules, ``roost.protocol`` absolute."""
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for name in absolute_imports(path):
            if name.split(".")[0] == "roost":
                assert name == "roost.protocol" or name.startswith("roost.protocol."), (path, name)


def test_tests_and_bench_are_not_imported_by_the_product() -> None:
    for package in ("protocol", "engine"):
        for path in sorted((ROOT / package).rglob("*.py")):
            names = absolute_imports(path)
            assert not {name.split(".")[0] for name in names} & {"tests"}, path
            assert not [name for name in names if name == "roost.bench" or name.startswith("roost.bench.")], path


# engine modules, upstream first: a module may import only modules listed after it.
ENGINE_ORDER = [
    "docs", "cli", "admin_cli", "workers", "serve", "devsite", "tictactoe", "testing", "app", "gateway", "reader", "connection", "guests", "http", "admin", "operations", "inbox", "router", "supervisor", "scheduler",
    "room", "logic", "state", "presence", "chat", "receipts", "bus", "revocations", "users", "store", "websocket", "outbox", "packing", "peer", "metrics", "placement", "codes", "config",
    "keys", "errors", "logs", "client",
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
            elif node.level == 0 and node.module and node.module.startswith("roost."):
                names.add(node.module.split(".")[1])  # roost.protocol is not an engine module: not ranked
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
