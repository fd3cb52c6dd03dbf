"""PROTOCOL.md stays true: its frame tables are the codec's own field table."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost.protocol import docs
from roost.protocol.errors import CloseCode, ErrorCode
from roost.protocol.frames import CLIENT_FRAMES, SERVER_FRAMES

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "PROTOCOL.md"


def test_protocol_md_tables_are_current() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    assert docs.replace_tables(text) == text, "run: python -m roost.protocol.docs PROTOCOL.md"


def test_protocol_md_names_every_frame_error_and_close_code() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    for frame_type in [*CLIENT_FRAMES, *SERVER_FRAMES]:
        assert f"`{frame_type}`" in text
    for error in ErrorCode:
        assert f"`{error.value}`" in text, error
    for close in CloseCode:
        assert f"{int(close)}" in text, close


def test_tables_list_every_field() -> None:
    tables = docs.frame_tables()
    for cls in [*CLIENT_FRAMES.values(), *SERVER_FRAMES.values(), *docs.RECORDS]:
        for name, *_ in cls.fields_table():
            assert f"| `{name}` |" in tables


def test_replace_tables_needs_markers() -> None:
    with pytest.raises(ValueError, match="markers"):
        docs.replace_tables("no markers here")


def test_docs_command_rewrites_a_file(tmp_path: Path) -> None:
    target = tmp_path / "P.md"
    target.write_text(f"intro\n{docs.BEGIN}\nstale\n{docs.END}\noutro\n", encoding="utf-8")
    assert docs.main([str(target)]) == 0
    text = target.read_text(encoding="utf-8")
    assert "stale" not in text
    assert text.startswith("intro\n") and text.endswith(f"{docs.END}\noutro\n")
    assert docs.main([]) == 2


def test_tables_show_defaults_as_protocol_values_and_limits_as_numbers() -> None:
    """A client author reads msgpack/JSON values, not Python reprs or the server's setting names."""
    tables = docs.frame_tables()
    for row in [
        "| `public` | bool | no | `false` |",
        '| `inactive` | one of none\\|reset\\|end | no | `"none"` |',
        "| `join` | array (max 1000) of Member | no | `[]` |",
        '| `message` | str 0..512 | no | `""` |',
        "| `sessions` | int 0..1000 | no | `0` |",
        "| `text` | str 1..4096 | yes |  |",
        "| `text` | str 0..4096 | yes |  |",
    ]:
        assert row in tables, row
    for python_only in ["`False`", "`True`", "`()`", "`''`", "<InactivePolicy", "max_chat_chars"]:
        assert python_only not in tables, python_only
