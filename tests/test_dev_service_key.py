"""``roost serve --dev`` makes a service key too, so ``roost admin`` works at once (issue 10 item 4)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from roost.serve import SERVICE_KEY_NAME

from .test_cli_errors import one_line_error, prepared


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ROOST_"):
            monkeypatch.delenv(name)


def test_dev_generates_a_private_service_key_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    first = prepared(["--dev", "--data", str(tmp_path)])
    first.store.close()
    key = first.config.service_key
    assert key is not None and re.fullmatch(r"[A-Za-z0-9_-]{43}", key)  # 256 random bits, shell-safe
    assert first.dev_service_key == key  # what serve prints as ROOST_SERVICE_KEY
    path = tmp_path / SERVICE_KEY_NAME
    assert path.read_text() == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    again = prepared(["--dev", "--data", str(tmp_path)])
    again.store.close()
    assert again.config.service_key == again.dev_service_key == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = prepared(["--dev", "--data", str(tmp_path / "other")])
    other.store.close()
    assert other.config.service_key != key


def test_without_dev_there_is_no_service_key(tmp_path: Path) -> None:
    dev = prepared(["--dev", "--data", str(tmp_path)])
    dev.store.close()
    plain = prepared(["--data", str(tmp_path), "--key", str(dev.dev_key.with_name("dev-key.pub.jwk"))])
    plain.store.close()
    assert plain.config.service_key is None and plain.dev_service_key is None  # the admin API stays closed


def test_a_configured_service_key_wins_and_nothing_is_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ROOST_SERVICE_KEY is the env name of the ``service_key`` setting AND what ``roost admin`` reads:
    a shell that sourced one ``serve --dev``'s lines and starts a second serve hands it the same key."""
    monkeypatch.setenv("ROOST_SERVICE_KEY", "from-the-first-server")
    ready = prepared(["--dev", "--data", str(tmp_path)])
    ready.store.close()
    assert ready.config.service_key == "from-the-first-server"
    assert ready.dev_service_key is None  # not printed: the shell already has it
    assert not (tmp_path / SERVICE_KEY_NAME).exists()


def test_a_damaged_service_key_is_refused_not_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / SERVICE_KEY_NAME
    path.write_bytes(b"x" * 43 + b"\n")
    assert one_line_error(capsys, ["serve", "--dev", "--port", "0", "--data", str(tmp_path)]) == (
        f"service key {path} is 44 bytes, not 43: restore it, or delete it to start with a new one "
        "(roost serve --dev prints it)"
    )
    path.write_bytes(b"\xff" * 43)
    assert one_line_error(capsys, ["serve", "--dev", "--port", "0", "--data", str(tmp_path)]) == (
        f"service key {path} is not 43 base64url characters: restore it, or delete it to start with a new one "
        "(roost serve --dev prints it)"
    )
    assert path.read_bytes() == b"\xff" * 43
