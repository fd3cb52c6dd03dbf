"""Installed, Roost is one package of its own, ``roost``: built as a wheel, installed into a fresh venv.

The repository keeps its folders (``engine/``, ``protocol/``, ``bench/``), mapped by pyproject.toml's
``package-dir`` onto ``roost``, ``roost.protocol`` and ``roost.bench``. The trap this guards: from a
checkout (or an editable install) the folder names are importable too, so a stray ``import protocol``
or a package missing from ``packages`` passes every other test and breaks only for the people who
``pip install roost``, and a generic top-level ``engine``/``protocol`` in site-packages collides with
an embedding app's own. So this test builds the wheel from a copy of the tracked sources, reads its
file list, installs it (dependencies from PyPI or pip's cache: the one test that may use the network)
into a new venv, and imports from a directory outside the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "engine", "protocol", "bench")
INSTALL_TIMEOUT = 300  # seconds for each pip step: bounded even if an index is slow


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH or venv of the caller leaks into the fresh interpreter."""
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(argv: list[str | Path], cwd: Path, timeout: float = INSTALL_TIMEOUT) -> str:
    result = subprocess.run(argv, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{argv}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _build_wheel(tmp_path: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the tracked sources (an in-tree build would leave ``build/``
    and ``*.egg-info`` in the checkout, and untracked files must not reach the wheel)."""
    tracked = subprocess.run(["git", "ls-files", *SOURCES], cwd=ROOT, capture_output=True, text=True, check=True)
    source = tmp_path / "src"
    for name in tracked.stdout.split():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out, source], cwd=tmp_path)
    (wheel,) = out.glob("roost-*.whl")
    return wheel


def test_the_wheel_installs_one_package_roost_and_nothing_else(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)

    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert "roost" in tops and all(top == "roost" or re.fullmatch(r"roost-[^/]+\.dist-info", top) for top in tops), tops
    for expected in ("roost/__init__.py", "roost/client.py", "roost/testing.py", "roost/cli.py", "roost/store/lmdb.py",
                     "roost/protocol/__init__.py", "roost/protocol/vectors/frames.json",
                     "roost/bench/__main__.py", "roost/bench/autobahn-requirements.txt"):
        assert expected in names, expected
    assert "roost/protocol/client.py" not in names, "the I/O client lives beside the sans-IO protocol, not inside it"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    assert b"roost = roost.cli:main" in entry_points

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, timeout=120)
    python = venv / "bin" / "python"
    # [test]: roost.testing is a pytest plugin, so it needs pytest and pytest-trio, as an app's suite would.
    _run([python, "-m", "pip", "install", "--quiet", f"{wheel}[test]"], cwd=tmp_path)

    outside = tmp_path / "elsewhere"  # not the checkout: its folders must not be what gets imported
    outside.mkdir()
    check = (
        "import importlib.util, pathlib, sys\n"
        "import roost, roost.client, roost.testing, roost.protocol, roost.bench, roost.store.lmdb\n"
        "from roost import Engine, Config, RoomLogic\n"
        "from roost.client import open_client\n"
        "from roost.protocol.errors import ErrorCode\n"
        "assert roost.protocol.errors.ErrorCode is ErrorCode\n"
        f"assert not pathlib.Path(roost.__file__).is_relative_to({str(ROOT)!r}), roost.__file__\n"
        "print(sorted(name for name in ('engine', 'protocol', 'bench') if importlib.util.find_spec(name)))\n"
    )
    assert _run([python, "-c", check], cwd=outside, timeout=60).strip() == "[]", "a generic top-level module leaked"
    for name in ("engine", "protocol", "bench"):
        result = subprocess.run([python, "-c", f"import {name}"], cwd=outside, env=_clean_env(), capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr, (name, result.stderr)
    assert "serve" in _run([venv / "bin" / "roost", "--help"], cwd=outside, timeout=60)
