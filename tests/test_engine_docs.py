"""README.md's settings table is Config's own field list: names, environment variables, defaults, meanings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from roost import docs
from roost.config import CLIENT_VARIABLES, SETTINGS, Config, env_name


def test_readme_settings_table_is_current() -> None:
    text = docs.README.read_text(encoding="utf-8")
    assert docs.replace_table(text) == text, "run: python -m roost.docs --write"


def test_every_field_has_a_one_line_meaning() -> None:
    meanings = docs.field_docs()
    assert set(meanings) == {field.name for field in dataclasses.fields(Config)}
    assert all(meanings.values())


def test_the_table_names_every_setting_its_variable_and_the_admin_credential() -> None:
    table = docs.settings_table()
    for name in SETTINGS:
        assert f"| `{name}` | `{env_name(name)}` |" in table
    assert "| `service_key` | `ROOST_SERVICE_KEY` | (unset) | The admin credential" in table
    assert all(f"`{name}`" in table for name in CLIENT_VARIABLES)


def test_write_and_print(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{docs.BEGIN}\nstale\n{docs.END}\ntail\n", encoding="utf-8")
    assert docs.main(["--write", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == f"# x\n\n{docs.BEGIN}\n{docs.settings_table()}{docs.END}\ntail\n"
    assert docs.main([]) == 0
    assert capsys.readouterr().out == docs.settings_table()
    assert docs.main(["--bogus"]) == 2
    readme.write_text("no markers", encoding="utf-8")
    with pytest.raises(ValueError, match="markers"):
        docs.main(["--write", str(readme)])
